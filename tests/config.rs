//! The configuration file: defaults, the documented example, and that every
//! wrong value is reported with its key.

use sipis::config::{
    format_duration, parse_duration, AdminToken, Config, ConfigError, LogFormat, LogLevel, Shards,
    StoreConfig, TlsFiles,
};
use sipis::push::client::PushConfig;
use sipis::push::mediator::{ApnsConfig, FcmConfig, MediatorConfig};
use sipis::CallConfig;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const EXAMPLE: &str = include_str!("../tuning/sipis.toml");
/// A valid minimal file: everything else defaults.
const MINIMAL: &str = "[server]\npublic_host = \"sip.example.net\"\n";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text)
}

/// Every problem of a bad file, as displayed.
fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(c) => panic!("expected errors, parsed {c:?}"),
        Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
    }
}

fn one_problem(text: &str) -> String {
    let p = problems(text);
    assert_eq!(p.len(), 1, "expected one problem, got {p:#?}");
    p.into_iter().next().unwrap()
}

fn with_minimal(extra: &str) -> String {
    format!("{MINIMAL}{extra}")
}

/// A fresh directory under the system temp dir (removed by the caller).
fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sipis-config-test-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

// --- defaults and the example -------------------------------------------

#[test]
fn example_file_parses_to_the_defaults() {
    let parsed = parse(EXAMPLE).expect("tuning/sipis.toml is valid");
    // public_host is the one key without a default (bind is 0.0.0.0).
    let mut expected = Config::default();
    expected.server.public_host = Some("sip.example.net".into());
    assert_eq!(parsed, expected);
}

#[test]
fn defaults_are_the_documented_ones() {
    let c = Config::default();
    assert_eq!(c.server.bind, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert_eq!(c.server.sip_port, 5060);
    assert_eq!(c.server.shards, Shards::Auto);
    assert_eq!(c.server.data_dir, PathBuf::from("/var/lib/sipis"));
    assert!(!c.server.unregister_on_shutdown);
    assert_eq!(c.server.max_message_bytes, 65535);
    assert_eq!(c.sip.t1, Duration::from_millis(500));
    assert_eq!(c.sip.t2, Duration::from_secs(4));
    assert_eq!(c.sip.t4, Duration::from_secs(5));
    assert_eq!((c.sip.register_rate, c.sip.register_burst), (200, 10));
    assert_eq!(c.sip.retry_base, Duration::from_secs(2));
    assert_eq!(c.sip.retry_max, Duration::from_secs(300));
    assert_eq!(
        c.sip.user_agent,
        format!("sipis/{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(c.sip.default_expires, 3600);
    assert_eq!(c.store, StoreConfig::Embedded { path: None });
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.admin.token, AdminToken::None);
    assert_eq!(c.admin.tls, None);
    assert_eq!(c.admin.max_connections, 64);
    assert_eq!(c.log.level, LogLevel::Info);
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(
        c.embedded_db_path(),
        Some(PathBuf::from("/var/lib/sipis/sipis.db"))
    );
}

#[test]
fn example_file_documents_every_key() {
    let keys = Config::known_keys();
    assert_eq!(keys.len(), 94, "{keys:?}");
    // Subsections contribute their keys, not themselves.
    assert!(keys.contains(&"mediator.apns.key_id".to_owned()));
    assert!(keys.contains(&"mediator.fcm.send_url".to_owned()));
    assert!(!keys.contains(&"mediator.apns".to_owned()));
    let mut section = String::new();
    let mut documented = Vec::new();
    for line in EXAMPLE.lines() {
        // `key = value` or `[section]`, possibly commented out (no default
        // to set, or an optional subsection such as `# [mediator.apns]`).
        let l = line.trim().trim_start_matches('#').trim();
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_owned();
            continue;
        }
        if let Some((k, _)) = l.split_once(" = ") {
            if k.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                documented.push(format!("{section}.{k}"));
            }
        }
    }
    for k in &keys {
        assert!(
            documented.contains(k),
            "{k} is missing from tuning/sipis.toml"
        );
    }
    for k in &documented {
        assert!(
            keys.contains(k),
            "tuning/sipis.toml documents unknown key {k}"
        );
    }
}

#[test]
fn example_file_with_its_commented_keys_set_is_valid() {
    // The commented-out lines are real syntax: uncomment the store path and
    // the user agent and the file must still parse.
    let text = EXAMPLE
        .replace("# user_agent = ", "user_agent = ")
        .replace("# path = ", "path = ");
    let c = parse(&text).unwrap();
    assert_eq!(
        c.store,
        StoreConfig::Embedded {
            path: Some("/var/lib/sipis/sipis.db".into())
        }
    );
    assert_eq!(c.sip.user_agent, "sipis/0.1.0");
}

#[test]
fn empty_file_needs_public_host_when_binding_every_interface() {
    let p = one_problem("");
    assert!(
        p.starts_with("server.public_host: required when server.bind is \"0.0.0.0\""),
        "{p}"
    );
}

#[test]
fn specific_bind_is_the_public_host_by_default() {
    let c = parse("[server]\nbind = \"192.0.2.10\"\n").unwrap();
    assert_eq!(c.server.public_host, None);
    assert_eq!(c.public_host(), "192.0.2.10");
    assert_eq!(c.engine_config(0).via, "192.0.2.10:5061");
}

// --- messages name the key ----------------------------------------------

#[test]
fn zero_t1_names_key_and_minimum() {
    assert_eq!(
        one_problem(&with_minimal("[sip]\nt1 = \"0ms\"\n")),
        "sip.t1: \"0ms\" must be at least 1ms"
    );
}

#[test]
fn bad_shards_names_key_and_choices() {
    assert_eq!(
        one_problem(&with_minimal("shards = \"many\"\n")),
        "server.shards: expected \"auto\" or a number 1..=256, got \"many\""
    );
    assert_eq!(
        one_problem(&with_minimal("shards = 0\n")),
        "server.shards: expected \"auto\" or a number 1..=256, got 0"
    );
    assert_eq!(
        one_problem(&with_minimal("shards = 257\n")),
        "server.shards: expected \"auto\" or a number 1..=256, got 257"
    );
}

#[test]
fn postgres_without_url_names_store_url() {
    let p = one_problem(&with_minimal("[store]\nkind = \"postgres\"\n"));
    assert!(
        p.starts_with("store.url: required when store.kind = \"postgres\""),
        "{p}"
    );
}

#[test]
fn typo_in_key_suggests_the_real_one() {
    assert_eq!(
        one_problem(&with_minimal("[sip]\nregsiter_rate = 100\n")),
        "unknown key \"regsiter_rate\" in [sip] (did you mean \"register_rate\"?)"
    );
    assert_eq!(
        one_problem(&with_minimal("shard = 4\n")),
        "unknown key \"shard\" in [server] (did you mean \"shards\"?)"
    );
}

#[test]
fn typo_in_section_suggests_the_real_one() {
    assert_eq!(
        one_problem(&with_minimal("[admn]\nlisten = \"127.0.0.1:9000\"\n")),
        "unknown section [admn] (did you mean [admin]?)"
    );
    let p = one_problem(&with_minimal("[tlss]\ncert = \"x\"\n"));
    assert_eq!(p, "unknown section [tlss] (did you mean [tls]?)");
    // [tls] exists: a lone cert names the key it lacks.
    assert_eq!(
        one_problem(&with_minimal("[tls]\ncert = \"x\"\n")),
        "tls.key: required when tls.cert is set"
    );
}

#[test]
fn key_in_the_wrong_section_says_where_it_belongs() {
    assert_eq!(
        one_problem(&with_minimal("t1 = \"1s\"\n")),
        "unknown key \"t1\" in [server] (it belongs in [sip])"
    );
    let p = one_problem(&format!("sip_port = 5070\n{MINIMAL}"));
    assert_eq!(
        p,
        "unknown key \"sip_port\" at the top level (it belongs in [server])"
    );
}

#[test]
fn unknown_key_error_carries_its_dotted_key() {
    let e = parse(&with_minimal("[log]\nlevle = \"debug\"\n")).unwrap_err();
    assert_eq!(e.key().as_deref(), Some("log.levle"));
    assert!(e.to_string().contains("did you mean \"level\"?"), "{e}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = "\
[server]
public_host = \"sip.example.net\"
sip_port = 70000
shards = \"many\"

[sip]
registar = \"sip:x\"
t1 = \"fast\"
register_burst = 0

[log]
level = \"verbose\"
";
    let e = parse(text).unwrap_err();
    let keys: Vec<String> = e.problems().iter().filter_map(|p| p.key()).collect();
    assert_eq!(
        keys,
        [
            "sip.registar",
            "server.sip_port",
            "server.shards",
            "sip.t1",
            "sip.register_burst",
            "log.level"
        ]
    );
    let all = e.to_string();
    assert_eq!(all.lines().count(), 6, "{all}");
    assert!(all.contains("server.sip_port: expected a port 1..=65535, got 70000"));
    assert!(all.contains(
        "sip.t1: expected a duration such as \"500ms\", \"32s\", \"5m\" or \"1h\" \
         (a bare integer is milliseconds), got \"fast\""
    ));
    assert!(all.contains("sip.register_burst: expected a count 1..=100000, got 0"));
    assert!(all.contains(
        "log.level: expected one of \"trace\", \"debug\", \"info\", \"warn\", \"error\", got \"verbose\""
    ));
}

#[test]
fn wrong_types_name_the_key() {
    assert_eq!(
        one_problem(&with_minimal("sip_port = \"5060\"\n")),
        "server.sip_port: expected a port 1..=65535, got \"5060\""
    );
    assert_eq!(
        one_problem(&with_minimal("unregister_on_shutdown = \"yes\"\n")),
        "server.unregister_on_shutdown: expected true or false, got \"yes\""
    );
    assert_eq!(
        one_problem(&with_minimal("data_dir = 5\n")),
        "server.data_dir: expected a string, got 5"
    );
    assert_eq!(
        one_problem(&with_minimal("[log]\nformat = \"xml\"\n")),
        "log.format: expected \"text\" or \"json\", got \"xml\""
    );
    assert_eq!(
        one_problem(&format!("sip = 5\n{MINIMAL}")),
        "sip: expected a section [sip], got 5"
    );
}

#[test]
fn syntax_errors_give_the_line() {
    let e = parse("[server]\npublic_host = \n").unwrap_err();
    assert!(matches!(e, ConfigError::Syntax(_)), "{e:?}");
    let msg = e.to_string();
    assert!(msg.starts_with("not valid TOML"), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");
}

#[test]
fn missing_file_names_the_path() {
    let e = Config::load("/nonexistent/sipis.toml").unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(
        e.to_string()
            .starts_with("cannot read /nonexistent/sipis.toml: "),
        "{e}"
    );
}

// --- durations ----------------------------------------------------------

#[test]
fn durations_accept_units_sums_and_milliseconds() {
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("32s"), Some(Duration::from_secs(32)));
    assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration("1h 30m"), Some(Duration::from_secs(5400)));
    for bad in [
        "",
        "500",
        "ms",
        "5 parsecs",
        "-1s",
        "1.5s",
        "99999999999999999999h",
    ] {
        assert_eq!(parse_duration(bad), None, "{bad:?}");
    }
    let c = parse(&with_minimal(
        "[sip]\nt1 = 750\nretry_base = \"1m30s\"\nretry_max = \"1h\"\n",
    ))
    .unwrap();
    assert_eq!(c.sip.t1, Duration::from_millis(750));
    assert_eq!(c.sip.retry_base, Duration::from_secs(90));
    assert_eq!(c.sip.retry_max, Duration::from_secs(3600));
}

#[test]
fn durations_format_back_to_the_short_form() {
    for (d, s) in [
        (Duration::from_millis(500), "500ms"),
        (Duration::from_millis(1500), "1500ms"),
        (Duration::from_secs(32), "32s"),
        (Duration::from_secs(300), "5m"),
        (Duration::from_secs(3600), "1h"),
        (Duration::ZERO, "0ms"),
    ] {
        assert_eq!(format_duration(d), s);
        assert_eq!(parse_duration(s), Some(d));
    }
}

#[test]
fn duration_ranges_are_checked() {
    assert_eq!(
        one_problem(&with_minimal("[sip]\nt1 = \"1m\"\n")),
        "sip.t1: \"1m\" must be at most 10s"
    );
    assert_eq!(
        one_problem(&with_minimal("[sip]\nretry_base = 10\n")),
        "sip.retry_base: 10 must be at least 100ms"
    );
}

// --- keys that go together ----------------------------------------------

#[test]
fn t2_below_t1_is_refused() {
    assert_eq!(
        one_problem(&with_minimal("[sip]\nt1 = \"5s\"\nt2 = \"1s\"\n")),
        "sip.t2: \"1s\" must be at least sip.t1 (5s)"
    );
    // A t1 that is itself wrong is reported once, without a made-up t2 error.
    assert_eq!(
        problems(&with_minimal("[sip]\nt1 = \"1h\"\nt2 = \"1s\"\n")),
        ["sip.t1: \"1h\" must be at most 10s"]
    );
}

#[test]
fn retry_max_below_retry_base_is_refused() {
    assert_eq!(
        one_problem(&with_minimal(
            "[sip]\nretry_base = \"1m\"\nretry_max = \"30s\"\n"
        )),
        "sip.retry_max: \"30s\" must be at least sip.retry_base (1m)"
    );
}

#[test]
fn shard_ports_must_fit_below_65536() {
    let p = one_problem(&with_minimal("sip_port = 65530\nshards = 8\n"));
    assert_eq!(
        p,
        "server.sip_port: 65530 leaves no room for 8 shard ports (shard i listens on \
         sip_port + 1 + i, at most 65535)"
    );
    assert!(parse(&with_minimal("sip_port = 65527\nshards = 8\n")).is_ok());
}

#[test]
fn admin_port_may_not_be_a_sip_port() {
    let p = one_problem(&with_minimal(
        "shards = 2\n[admin]\nlisten = \"127.0.0.1:5062\"\n",
    ));
    assert_eq!(p, "admin.listen: port 5062 is shard 1's SIP port");
    let p = one_problem(&with_minimal("[admin]\nlisten = \"127.0.0.1:5060\"\n"));
    assert_eq!(
        p,
        "admin.listen: port 5060 is the phones' SIP port (server.sip_port)"
    );
    // Different addresses do not collide.
    let ok = "[server]\nbind = \"192.0.2.10\"\nshards = 2\n[admin]\nlisten = \"127.0.0.1:5061\"\n";
    assert!(parse(ok).is_ok());
}

#[test]
fn admin_token_rules() {
    let token = "0123456789abcdef0123";
    // Neither: fine on loopback, refused elsewhere.
    assert!(parse(MINIMAL).is_ok());
    let p = one_problem(&with_minimal("[admin]\nlisten = \"0.0.0.0:8080\"\n"));
    assert!(
        p.starts_with("admin.token: required (or admin.token_file) when admin.listen is not loopback (\"0.0.0.0:8080\")"),
        "{p}"
    );
    let c = parse(&with_minimal(&format!(
        "[admin]\nlisten = \"0.0.0.0:8080\"\ntoken = \"{token}\"\n"
    )))
    .unwrap();
    assert_eq!(c.admin.token, AdminToken::Inline(token.into()));
    assert_eq!(c.admin_token().unwrap().as_deref(), Some(token));
    assert_eq!(c.admin_url(), "http://127.0.0.1:8080");
    // Both.
    assert_eq!(
        one_problem(&with_minimal(&format!(
            "[admin]\ntoken = \"{token}\"\ntoken_file = \"/etc/sipis/token\"\n"
        ))),
        "admin.token_file: set admin.token or admin.token_file, not both"
    );
    // Too short, and the message does not echo the secret.
    let p = one_problem(&with_minimal("[admin]\ntoken = \"hunter2\"\n"));
    assert!(
        p.starts_with("admin.token: is too short (7 characters, at least 16)"),
        "{p}"
    );
    assert!(!p.contains("hunter2"));
    // Debug output never shows it either.
    let c = parse(&with_minimal(&format!("[admin]\ntoken = \"{token}\"\n"))).unwrap();
    assert!(!format!("{c:?}").contains(token));
}

#[test]
fn tls_files_come_in_pairs() {
    assert_eq!(
        one_problem(&with_minimal(
            "[admin]\ntls_cert = \"/etc/sipis/cert.pem\"\n"
        )),
        "admin.tls_key: required when admin.tls_cert is set"
    );
    assert_eq!(
        one_problem(&with_minimal("[admin]\ntls_key = \"/etc/sipis/key.pem\"\n")),
        "admin.tls_cert: required when admin.tls_key is set"
    );
    let c = parse(&with_minimal(
        "[admin]\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\nlisten = \"[::]:8443\"\ntoken = \"0123456789abcdef\"\n",
    ))
    .unwrap();
    assert_eq!(
        c.admin.tls,
        Some(TlsFiles {
            cert: "/c.pem".into(),
            key: "/k.pem".into()
        })
    );
    assert_eq!(c.admin_url(), "https://[::1]:8443");
}

#[test]
fn store_keys_match_the_kind() {
    let c = parse(&with_minimal(
        "[store]\nkind = \"postgres\"\nurl = \"postgres://sipis:secret@db.example/sipis\"\n",
    ))
    .unwrap();
    assert_eq!(
        c.store,
        StoreConfig::Postgres {
            url: "postgres://sipis:secret@db.example/sipis".into()
        }
    );
    assert_eq!(c.embedded_db_path(), None);
    assert!(!format!("{c:?}").contains("secret"));
    assert!(!c.summary().contains("secret"));
    assert!(c
        .summary()
        .contains("postgres://sipis:***@db.example/sipis"));

    assert_eq!(
        one_problem(&with_minimal("[store]\nurl = \"postgres://db/sipis\"\n")),
        "store.url: only used when store.kind = \"postgres\" (store.kind is \"embedded\")"
    );
    assert_eq!(
        one_problem(&with_minimal(
            "[store]\nkind = \"postgres\"\nurl = \"postgres://db/sipis\"\npath = \"/x.db\"\n"
        )),
        "store.path: only used when store.kind = \"embedded\" (store.kind is \"postgres\")"
    );
    assert_eq!(
        one_problem(&with_minimal(
            "[store]\nkind = \"postgres\"\nurl = \"mysql://u:pw@db/sipis\"\n"
        )),
        "store.url: expected a postgres:// or postgresql:// URL, got \"mysql://u:***@db/sipis\""
    );
    let p = one_problem(&with_minimal("[store]\nkind = \"sqlite\"\n"));
    assert!(
        p.starts_with("store.kind: expected \"embedded\" or \"postgres\", got \"sqlite\""),
        "{p}"
    );
    let c = parse(&with_minimal("[store]\npath = \"/srv/sipis.db\"\n")).unwrap();
    assert_eq!(c.embedded_db_path(), Some(PathBuf::from("/srv/sipis.db")));
}

#[test]
fn public_host_is_a_host_without_port() {
    let p = one_problem("[server]\npublic_host = \"sip.example.net:5060\"\n");
    assert!(
        p.starts_with(
            "server.public_host: \"sip.example.net:5060\" must be a host or IP without a port"
        ),
        "{p}"
    );
    let p = one_problem("[server]\npublic_host = \"sip_example\"\n");
    assert!(
        p.starts_with("server.public_host: expected a host name or IP address"),
        "{p}"
    );
    let p = one_problem("[server]\npublic_host = \"0.0.0.0\"\n");
    assert!(p.contains("cannot be reached"), "{p}");
    let c = parse("[server]\npublic_host = \"[2001:db8::1]\"\n").unwrap();
    assert_eq!(c.public_host(), "2001:db8::1");
    assert_eq!(c.engine_config(2).contact_host, "[2001:db8::1]:5063");
}

#[test]
fn bad_addresses_name_the_key() {
    let p = one_problem("[server]\npublic_host = \"h\"\nbind = \"localhost\"\n");
    assert!(p.starts_with("server.bind: expected an IP address"), "{p}");
    let p = one_problem(&with_minimal("[admin]\nlisten = \"127.0.0.1\"\n"));
    assert!(p.starts_with("admin.listen: expected IP:port"), "{p}");
}

#[test]
fn register_rate_takes_a_number_or_per_second_string() {
    let c = parse(&with_minimal("[sip]\nregister_rate = \"50/s\"\n")).unwrap();
    assert_eq!(c.sip.register_rate, 50);
    let p = one_problem(&with_minimal("[sip]\nregister_rate = 0\n"));
    assert!(
        p.starts_with("sip.register_rate: expected REGISTERs per second 1..=100000"),
        "{p}"
    );
}

// --- conversions used by the runtime ------------------------------------

#[test]
fn engine_config_carries_the_sip_section_and_shard_address() {
    let c = parse(
        "[server]\npublic_host = \"sip.example.net\"\nsip_port = 6000\nshards = 4\n\
         [sip]\nt1 = \"250ms\"\nt2 = \"2s\"\nt4 = \"3s\"\nregister_rate = 50\nregister_burst = 5\n\
         retry_base = \"1s\"\nretry_max = \"2m\"\nuser_agent = \"acme/1\"\n",
    )
    .unwrap();
    assert_eq!(c.shard_count(), 4);
    assert_eq!(c.shard_port(0), 6001);
    assert_eq!(c.shard_port(3), 6004);
    let e = c.engine_config(3);
    assert_eq!(e.via, "sip.example.net:6004");
    assert_eq!(e.contact_host, "sip.example.net:6004");
    assert_eq!(e.timers.t1, Duration::from_millis(250));
    assert_eq!(e.timers.t2, Duration::from_secs(2));
    assert_eq!(e.timers.t4, Duration::from_secs(3));
    assert_eq!((e.register_rate, e.register_burst), (50, 5));
    assert_eq!(e.registration.retry_base, Duration::from_secs(1));
    assert_eq!(e.registration.retry_max, Duration::from_secs(120));
    assert_eq!(e.registration.user_agent, "acme/1");
    // The seed is the caller's business.
    assert_eq!(e.seed, sipis::EngineConfig::default().seed);
}

#[test]
fn auto_shards_follow_the_cores() {
    let c = parse(MINIMAL).unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(c.shard_count(), cores.min(256));
    let s = c.summary();
    assert!(
        s.starts_with(&format!("{} shards (auto)", c.shard_count())),
        "{s}"
    );
    assert!(s.contains("phones on 0.0.0.0:5060"), "{s}");
    assert!(
        s.contains(&format!(
            "upstream 0.0.0.0:5061..={}",
            5060 + c.shard_count()
        )),
        "{s}"
    );
}

#[test]
fn validate_applies_cross_key_checks_to_built_configs() {
    let mut c = Config::default();
    assert_eq!(
        c.validate().unwrap_err().key().as_deref(),
        Some("server.public_host")
    );
    c.server.public_host = Some("sip.example.net".into());
    assert!(c.validate().is_ok());
    c.sip.t2 = Duration::from_millis(100);
    assert_eq!(c.validate().unwrap_err().key().as_deref(), Some("sip.t2"));
}

// --- file checks ------------------------------------------------------------

#[test]
fn check_accepts_a_creatable_data_dir_and_readable_files() {
    let dir = temp_dir("ok");
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    std::fs::write(dir.join("cert.pem"), pem).unwrap();
    std::fs::write(
        dir.join("key.pem"),
        pem.replace("CERTIFICATE", "PRIVATE KEY"),
    )
    .unwrap();
    std::fs::write(dir.join("token"), "  0123456789abcdef0123\n").unwrap();
    let text = format!(
        "[server]\npublic_host = \"h.example\"\ndata_dir = {}\n\
         [admin]\ntls_cert = {}\ntls_key = {}\ntoken_file = {}\n",
        toml_path(&dir.join("not/yet/there")),
        toml_path(&dir.join("cert.pem")),
        toml_path(&dir.join("key.pem")),
        toml_path(&dir.join("token")),
    );
    let c = parse(&text).unwrap();
    let problems = c.check();
    assert!(problems.is_empty(), "{problems:?}");
    // Nothing was created, and the probe file is gone.
    assert!(!dir.join("not").exists());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
    assert_eq!(
        c.admin_token().unwrap().as_deref(),
        Some("0123456789abcdef0123")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_reports_every_unusable_file_by_key() {
    let dir = temp_dir("bad");
    std::fs::write(dir.join("a-file"), "x").unwrap();
    std::fs::write(dir.join("not-pem"), "hello").unwrap();
    std::fs::write(dir.join("short-token"), "abc\n").unwrap();
    let text = format!(
        "[server]\npublic_host = \"h.example\"\ndata_dir = {}\n\
         [store]\npath = {}\n\
         [admin]\ntls_cert = {}\ntls_key = {}\ntoken_file = {}\n",
        toml_path(&dir.join("a-file/data")),
        toml_path(&dir),
        toml_path(&dir.join("missing.pem")),
        toml_path(&dir.join("not-pem")),
        toml_path(&dir.join("short-token")),
    );
    let c = parse(&text).unwrap();
    let problems: Vec<String> = c.check().iter().map(|p| p.to_string()).collect();
    let keys: Vec<&str> = problems
        .iter()
        .map(|p| p.split(':').next().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "server.data_dir",
            "store.path",
            "admin.tls_cert",
            "admin.tls_key",
            "admin.token_file"
        ],
        "{problems:#?}"
    );
    assert!(
        problems[0].contains("cannot be created")
            && problems[0].contains("a-file\" is not a directory"),
        "{}",
        problems[0]
    );
    assert!(problems[1].contains("is a directory"), "{}", problems[1]);
    assert!(
        problems[2].contains("cannot read") && problems[2].contains("missing.pem"),
        "{}",
        problems[2]
    );
    assert!(problems[3].contains("is not PEM"), "{}", problems[3]);
    assert!(problems[4].contains("too short"), "{}", problems[4]);
    std::fs::remove_dir_all(&dir).unwrap();

    let c = parse(&format!(
        "{MINIMAL}[admin]\ntoken_file = \"/nonexistent/token\"\n"
    ))
    .unwrap();
    let e = c.admin_token().unwrap_err();
    assert_eq!(e.key().as_deref(), Some("admin.token_file"));
    assert!(
        e.to_string().contains("cannot read \"/nonexistent/token\""),
        "{e}"
    );
}

// --- [calls] ----------------------------------------------------------------

#[test]
fn calls_defaults_match_the_engine_and_the_design() {
    let c = Config::default();
    assert_eq!(c.calls, CallConfig::default());
    assert_eq!(c.calls.device_wait, Duration::from_secs(30));
    assert_eq!(c.calls.late_wake_window, Duration::from_secs(15));
    assert_eq!(c.calls.late_wake_guard, Duration::from_secs(1));
    assert!(c.calls.push_status_header);
    assert_eq!(c.calls.phone_realm, "sipis");
    assert_eq!(
        (c.calls.phone_min_expires, c.calls.phone_max_expires),
        (60, 3600)
    );
    assert_eq!(c.calls.pnsreg, 121);
    // MD5 alone: every common softphone answers that 401.
    assert_eq!(
        c.calls.phone_digest_algorithms,
        vec![sipis::digest::Algorithm::Md5]
    );
}

#[test]
fn calls_section_takes_every_key() {
    let c = parse(&with_minimal(
        "[calls]\ndevice_wait = \"2m\"\nlate_wake_window = \"20s\"\nlate_wake_guard = 750\n\
         push_status_header = false\nphone_realm = \"phones.example.net\"\n\
         phone_min_expires = 30\nphone_max_expires = 7200\npnsreg = 300\n\
         phone_digest_algorithms = [\"SHA-256\", \"MD5\"]\nmax_calls = 500\n\
         auth_failures_per_account = 3\nauth_failures_per_source = 10\nauth_block_max = \"1m\"\n",
    ))
    .unwrap();
    assert_eq!(
        c.calls,
        CallConfig {
            device_wait: Duration::from_secs(120),
            late_wake_window: Duration::from_secs(20),
            late_wake_guard: Duration::from_millis(750),
            push_status_header: false,
            phone_realm: "phones.example.net".into(),
            phone_min_expires: 30,
            phone_max_expires: 7200,
            pnsreg: 300,
            phone_digest_algorithms: vec![
                sipis::digest::Algorithm::Sha256,
                sipis::digest::Algorithm::Md5
            ],
            max_calls: 500,
            guard: sipis::engine::GuardConfig {
                failures_per_account: 3,
                failures_per_source: 10,
                max_block: Duration::from_secs(60),
                ..sipis::engine::GuardConfig::default()
            },
            ..CallConfig::default()
        }
    );
}

#[test]
fn calls_bad_values_name_their_keys() {
    for (line, expected) in [
        (
            "device_wait = \"0s\"",
            "calls.device_wait: \"0s\" must be at least 1s",
        ),
        (
            "device_wait = \"11m\"",
            "calls.device_wait: \"11m\" must be at most 10m",
        ),
        (
            "late_wake_window = \"soon\"",
            "calls.late_wake_window: expected a duration such as \"500ms\", \"32s\", \"5m\" or \
             \"1h\" (a bare integer is milliseconds), got \"soon\"",
        ),
        (
            "late_wake_guard = \"10ms\"",
            "calls.late_wake_guard: \"10ms\" must be at least 50ms",
        ),
        (
            "push_status_header = 1",
            "calls.push_status_header: expected true or false, got 1",
        ),
        ("phone_realm = \"\"", "calls.phone_realm: must not be empty"),
        (
            "auth_failures_per_account = 0",
            "calls.auth_failures_per_account: expected a count 1..=1000, got 0",
        ),
        (
            "phone_digest_algorithms = []",
            "calls.phone_digest_algorithms: expected at least one algorithm",
        ),
        (
            "phone_digest_algorithms = [\"MD4\"]",
            "calls.phone_digest_algorithms: unknown algorithm \"MD4\": expected \"MD5\", \
             \"SHA-256\" or \"SHA-512-256\"",
        ),
        (
            "phone_digest_algorithms = [\"MD5\", \"md5\"]",
            "calls.phone_digest_algorithms: MD5 is listed twice",
        ),
        (
            "phone_realm = \"my realm\"",
            "calls.phone_realm: \"my realm\" must be at most 128 visible ASCII characters \
             without spaces, quotes or backslashes (it is sent as a quoted string)",
        ),
        (
            "phone_realm = 'say \"hi\"'",
            "calls.phone_realm: \"say \\\"hi\\\"\" must be at most 128 visible ASCII characters \
             without spaces, quotes or backslashes (it is sent as a quoted string)",
        ),
        (
            "phone_min_expires = 5",
            "calls.phone_min_expires: expected seconds 10..=86400, got 5",
        ),
        (
            "phone_max_expires = \"1h\"",
            "calls.phone_max_expires: expected seconds 10..=604800, got \"1h\"",
        ),
        (
            "pnsreg = 0",
            "calls.pnsreg: expected seconds 1..=86400, got 0",
        ),
    ] {
        assert_eq!(
            one_problem(&with_minimal(&format!("[calls]\n{line}\n"))),
            expected,
            "{line}"
        );
    }
    let long = "r".repeat(129);
    let p = one_problem(&with_minimal(&format!(
        "[calls]\nphone_realm = \"{long}\"\n"
    )));
    assert!(p.starts_with("calls.phone_realm: "), "{p}");
}

#[test]
fn phone_min_expires_above_max_is_refused() {
    assert_eq!(
        one_problem(&with_minimal(
            "[calls]\nphone_min_expires = 600\nphone_max_expires = 300\npnsreg = 60\n"
        )),
        "calls.phone_max_expires: 300 must be at least calls.phone_min_expires (600)"
    );
    // Equal is fine.
    assert!(parse(&with_minimal(
        "[calls]\nphone_min_expires = 600\nphone_max_expires = 600\n"
    ))
    .is_ok());
}

#[test]
fn pnsreg_must_be_below_phone_max_expires() {
    let p = one_problem(&with_minimal(
        "[calls]\nphone_max_expires = 120\npnsreg = 121\n",
    ));
    assert!(
        p.starts_with("calls.pnsreg: 121 must be below calls.phone_max_expires (120)"),
        "{p}"
    );
    // A wrong phone_max_expires is reported once, without a pnsreg error.
    assert_eq!(
        problems(&with_minimal("[calls]\nphone_max_expires = 1\n")),
        ["calls.phone_max_expires: expected seconds 10..=604800, got 1"]
    );
}

// --- [push] -----------------------------------------------------------------

const PUSH_TOKEN: &str = "push-token-0123456789abcdef";

#[test]
fn push_defaults() {
    let c = Config::default();
    assert_eq!(c.push, PushConfig::default());
    assert_eq!(c.push.mediator_url, None);
    assert_eq!(c.push.token, None);
    assert_eq!(c.push.timeout, Duration::from_secs(5));
    assert_eq!(
        (c.push.retries, c.push.connections, c.push.queue),
        (2, 512, 10_000)
    );
    assert_eq!(c.push.max_in_flight, 2_000);
    assert!(c
        .summary()
        .contains("pushes off (push.mediator_url not set)"));
}

#[test]
fn push_section_takes_every_key() {
    let c = parse(&with_minimal(&format!(
        "[push]\nmediator_url = \"https://mediator.example.net:8443/v1/push?x=1\"\n\
         token = \"{PUSH_TOKEN}\"\ntimeout = \"1500ms\"\nretries = 0\nconnections = 64\n\
         max_in_flight = 300\nqueue = 1\n"
    )))
    .unwrap();
    assert_eq!(
        c.push,
        PushConfig {
            mediator_url: Some("https://mediator.example.net:8443/v1/push?x=1".into()),
            token: Some(PUSH_TOKEN.into()),
            timeout: Duration::from_millis(1500),
            retries: 0,
            connections: 64,
            max_in_flight: 300,
            queue: 1,
        }
    );
    assert!(c
        .summary()
        .contains("pushes to https://mediator.example.net:8443/v1/push?x=1"));
    // The token never shows in Debug output (of the section or the whole).
    assert!(!format!("{:?}", c.push).contains(PUSH_TOKEN));
    assert!(!format!("{c:?}").contains(PUSH_TOKEN));
    for url in [
        "http://127.0.0.1:8090/push",
        "http://[::1]:8090/push",
        "http://[::1]/push",
        "http://mediator",
        "https://mediator.example.net",
    ] {
        let c = parse(&with_minimal(&format!(
            "[push]\nmediator_url = \"{url}\"\n"
        )))
        .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(c.push.mediator_url.as_deref(), Some(url));
    }
}

#[test]
fn push_bad_values_name_their_keys() {
    for (line, expected) in [
        (
            "mediator_url = \"ftp://m/push\"",
            "push.mediator_url: expected an http:// or https:// URL, got \"ftp://m/push\"",
        ),
        (
            "mediator_url = \"127.0.0.1:8090\"",
            "push.mediator_url: expected an http:// or https:// URL, got \"127.0.0.1:8090\"",
        ),
        (
            "mediator_url = \"http:///push\"",
            "push.mediator_url: the URL has no host, got \"http:///push\"",
        ),
        (
            "mediator_url = \"http://m:0/push\"",
            "push.mediator_url: \"0\" is not a port 1..=65535, got \"http://m:0/push\"",
        ),
        (
            "mediator_url = \"http://m:99999/push\"",
            "push.mediator_url: \"99999\" is not a port 1..=65535, got \"http://m:99999/push\"",
        ),
        (
            "mediator_url = \"http://bad_host/push\"",
            "push.mediator_url: \"bad_host\" is not a host name or IP address, got \
             \"http://bad_host/push\"",
        ),
        (
            "mediator_url = \"http://[::1/push\"",
            "push.mediator_url: unclosed '[' in the URL's host, got \"http://[::1/push\"",
        ),
        (
            "mediator_url = \"http://m/push now\"",
            "push.mediator_url: the URL must not contain spaces or control characters, got \
             \"http://m/push now\"",
        ),
        (
            "mediator_url = \"http://m/push#x\"",
            "push.mediator_url: the URL must not have a #fragment, got \"http://m/push#x\"",
        ),
        (
            "mediator_url = 8090",
            "push.mediator_url: expected a string, got 8090",
        ),
        (
            "timeout = \"50ms\"",
            "push.timeout: \"50ms\" must be at least 100ms",
        ),
        (
            "timeout = \"2m\"",
            "push.timeout: \"2m\" must be at most 1m",
        ),
        (
            "retries = 11",
            "push.retries: expected a count 0..=10, got 11",
        ),
        (
            "retries = -1",
            "push.retries: expected a count 0..=10, got -1",
        ),
        (
            "connections = 0",
            "push.connections: expected a count 1..=10000, got 0",
        ),
        (
            "connections = 10001",
            "push.connections: expected a count 1..=10000, got 10001",
        ),
        (
            "max_in_flight = 0",
            "push.max_in_flight: expected a count 1..=1000000, got 0",
        ),
        (
            "queue = 0",
            "push.queue: expected a count 1..=1000000, got 0",
        ),
        (
            "token = \"short\"",
            "push.token: is too short (5 characters, at least 16): generate one with \
             `openssl rand -hex 32`",
        ),
    ] {
        assert_eq!(
            one_problem(&with_minimal(&format!("[push]\n{line}\n"))),
            expected,
            "{line}"
        );
    }
    // Credentials in the URL are refused, and the message does not echo
    // the password.
    let p = one_problem(&with_minimal(
        "[push]\nmediator_url = \"http://sipis:hunter2@m/push\"\n",
    ));
    assert_eq!(
        p,
        "push.mediator_url: the URL must not carry credentials (user@): tokens have their own \
         keys, got \"http://sipis:***@m/push\""
    );
}

#[test]
fn push_token_file_is_read_and_checked() {
    let dir = temp_dir("push-token");
    let good = dir.join("good");
    std::fs::write(&good, format!("\n  {PUSH_TOKEN}  \n")).unwrap();
    let short = dir.join("short");
    std::fs::write(&short, "abc\n").unwrap();

    let c = parse(&with_minimal(&format!(
        "[push]\ntoken_file = {}\n",
        toml_path(&good)
    )))
    .unwrap();
    assert_eq!(c.push.token.as_deref(), Some(PUSH_TOKEN));

    let p = one_problem(&with_minimal(&format!(
        "[push]\ntoken_file = {}\n",
        toml_path(&short)
    )));
    assert!(
        p.starts_with(&format!(
            "push.token_file: {:?}: the token is too short (3 characters",
            short.display().to_string()
        )),
        "{p}"
    );
    let missing = dir.join("missing");
    let p = one_problem(&with_minimal(&format!(
        "[push]\ntoken_file = {}\n",
        toml_path(&missing)
    )));
    assert!(
        p.starts_with(&format!(
            "push.token_file: cannot read {:?}: ",
            missing.display().to_string()
        )),
        "{p}"
    );
    assert_eq!(
        one_problem(&with_minimal(&format!(
            "[push]\ntoken = \"{PUSH_TOKEN}\"\ntoken_file = {}\n",
            toml_path(&good)
        ))),
        "push.token_file: set push.token or push.token_file, not both"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// --- [mediator] -------------------------------------------------------------

const MEDIATOR_TOKEN: &str = "mediator-token-0123456789abcdef";

const APNS: &str = "[mediator.apns]\nkey_file = \"/etc/sipis/AuthKey.p8\"\n\
                    key_id = \"ABC123DEFG\"\nteam_id = \"DEF123GHIJ\"\n";

#[test]
fn mediator_defaults() {
    let c = Config::default();
    assert_eq!(c.mediator, MediatorConfig::default());
    assert_eq!(c.mediator.listen.to_string(), "127.0.0.1:8090");
    assert_eq!(c.mediator.token, None);
    assert!(!c.mediator.in_process);
    assert_eq!(
        (c.mediator.apns.clone(), c.mediator.fcm.clone()),
        (None, None)
    );
    assert_eq!(c.mediator.request_timeout, Duration::from_secs(2));
    assert_eq!(c.mediator.deadline, Duration::from_secs(4));
    assert_eq!(c.mediator.concurrency, 2_000);
}

#[test]
fn mediator_section_with_apns_and_fcm() {
    let c = parse(&with_minimal(&format!(
        "[mediator]\nlisten = \"0.0.0.0:9443\"\ntoken = \"{MEDIATOR_TOKEN}\"\nin_process = true\n\
         request_timeout = \"2s\"\ndeadline = \"2s\"\nconcurrency = 32\n\
         [mediator.apns]\nkey_file = \"/k.p8\"\nkey_id = \"ABC123DEFG\"\nteam_id = \"DEF123GHIJ\"\n\
         default_topic = \"com.example.phone.voip\"\nproduction_url = \"http://127.0.0.1:4431\"\n\
         sandbox_url = \"http://[::1]:4432\"\nca_file = \"/ca.pem\"\n\
         [mediator.fcm]\nservice_account_file = \"/sa.json\"\nproject_id = \"my-project-123\"\n\
         send_url = \"http://127.0.0.1:4433/v1/projects/{{project}}/messages:send\"\n\
         token_url = \"http://127.0.0.1:4433/token\"\nca_file = \"/ca2.pem\"\n\
         [push]\ntoken = \"{MEDIATOR_TOKEN}\"\n"
    )))
    .unwrap();
    assert_eq!(
        c.mediator,
        MediatorConfig {
            listen: "0.0.0.0:9443".parse().unwrap(),
            token: Some(MEDIATOR_TOKEN.into()),
            in_process: true,
            apns: Some(ApnsConfig {
                key_file: "/k.p8".into(),
                key_id: "ABC123DEFG".into(),
                team_id: "DEF123GHIJ".into(),
                default_topic: Some("com.example.phone.voip".into()),
                production_url: "http://127.0.0.1:4431".into(),
                sandbox_url: "http://[::1]:4432".into(),
                ca_file: Some("/ca.pem".into()),
            }),
            fcm: Some(FcmConfig {
                service_account_file: "/sa.json".into(),
                project_id: Some("my-project-123".into()),
                send_url: "http://127.0.0.1:4433/v1/projects/{project}/messages:send".into(),
                token_url: Some("http://127.0.0.1:4433/token".into()),
                ca_file: Some("/ca2.pem".into()),
            }),
            request_timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(2),
            concurrency: 32,
            tls: None,
        }
    );
    let s = c.summary();
    assert!(
        s.contains(
            "pushes to the in-process mediator on 0.0.0.0:9443; mediator in process (APNs, FCM)"
        ),
        "{s}"
    );
    assert!(!format!("{c:?}").contains(MEDIATOR_TOKEN));
}

#[test]
fn apns_and_fcm_endpoints_default_to_the_real_services() {
    let c = parse(&with_minimal(&format!(
        "{APNS}[mediator.fcm]\nservice_account_file = \"/sa.json\"\n"
    )))
    .unwrap();
    let apns = c.mediator.apns.unwrap();
    assert_eq!(apns.production_url, "https://api.push.apple.com");
    assert_eq!(apns.sandbox_url, "https://api.sandbox.push.apple.com");
    assert_eq!((apns.default_topic, apns.ca_file), (None, None));
    let fcm = c.mediator.fcm.unwrap();
    assert_eq!(
        fcm.send_url,
        "https://fcm.googleapis.com/v1/projects/{project}/messages:send"
    );
    assert_eq!(
        (fcm.project_id, fcm.token_url, fcm.ca_file),
        (None, None, None)
    );
}

#[test]
fn subsection_without_its_required_keys_names_each() {
    assert_eq!(
        problems(&with_minimal(
            "[mediator.apns]\ndefault_topic = \"a.b.voip\"\n"
        )),
        [
            "mediator.apns.key_file: required in [mediator.apns]",
            "mediator.apns.key_id: required in [mediator.apns]",
            "mediator.apns.team_id: required in [mediator.apns]",
        ]
    );
    assert_eq!(
        one_problem(&with_minimal("[mediator.fcm]\nproject_id = \"p-1\"\n")),
        "mediator.fcm.service_account_file: required in [mediator.fcm]"
    );
    // An empty inline table is the section too.
    assert_eq!(
        one_problem(&with_minimal("[mediator]\nfcm = {}\n")),
        "mediator.fcm.service_account_file: required in [mediator.fcm]"
    );
}

#[test]
fn mediator_bad_values_name_their_keys() {
    for (text, expected) in [
        (
            "[mediator]\nlisten = \"8090\"\n",
            "mediator.listen: expected IP:port such as \"127.0.0.1:8080\" or \"[::1]:8080\", got \"8090\"",
        ),
        (
            "[mediator]\nin_process = \"yes\"\n",
            "mediator.in_process: expected true or false, got \"yes\"",
        ),
        (
            "[mediator]\nrequest_timeout = \"0s\"\n",
            "mediator.request_timeout: \"0s\" must be at least 100ms",
        ),
        (
            "[mediator]\ndeadline = \"1h\"\n",
            "mediator.deadline: \"1h\" must be at most 10m",
        ),
        (
            "[mediator]\nconcurrency = 0\n",
            "mediator.concurrency: expected a count 1..=65536, got 0",
        ),
        (
            "[mediator]\ntoken = \"x\"\n",
            "mediator.token: is too short (1 characters, at least 16): generate one with \
             `openssl rand -hex 32`",
        ),
        (
            "[mediator]\ntoken = \"0123456789abcdef\"\ntoken_file = \"/t\"\n",
            "mediator.token_file: set mediator.token or mediator.token_file, not both",
        ),
        (
            &APNS.replace("ABC123DEFG", "ABC123DEF"),
            "mediator.apns.key_id: expected 10 characters of letters, digits, '.', '-' or '_' \
             (such as \"ABC123DEFG\"), got \"ABC123DEF\"",
        ),
        (
            &APNS.replace("DEF123GHIJ", "DEF 123GHI"),
            "mediator.apns.team_id: expected 10 characters of letters, digits, '.', '-' or '_' \
             (such as \"DEF123GHIJ\"), got \"DEF 123GHI\"",
        ),
        (
            &APNS.replace("\"/etc/sipis/AuthKey.p8\"", "\"\""),
            "mediator.apns.key_file: must not be empty",
        ),
        (
            &format!("{APNS}default_topic = \"com.example/voip\"\n"),
            "mediator.apns.default_topic: expected 1..=255 characters of letters, digits, '.', \
             '-' or '_' (such as \"com.example.phone.voip\"), got \"com.example/voip\"",
        ),
        (
            &format!("{APNS}production_url = \"api.push.apple.com\"\n"),
            "mediator.apns.production_url: expected an http:// or https:// URL, got \
             \"api.push.apple.com\"",
        ),
        (
            &format!("{APNS}sandbox_url = \"https://:443\"\n"),
            "mediator.apns.sandbox_url: \"\" is not a host name or IP address, got \"https://:443\"",
        ),
        (
            "[mediator.fcm]\nservice_account_file = \"/sa.json\"\nsend_url = \"fcm\"\n",
            "mediator.fcm.send_url: expected an http:// or https:// URL, got \"fcm\"",
        ),
        (
            "[mediator.fcm]\nservice_account_file = \"/sa.json\"\ntoken_url = \"http://t:0/\"\n",
            "mediator.fcm.token_url: \"0\" is not a port 1..=65535, got \"http://t:0/\"",
        ),
        (
            "[mediator.fcm]\nservice_account_file = \"/sa.json\"\nproject_id = \"a/b\"\n",
            "mediator.fcm.project_id: expected 1..=64 characters of letters, digits, '.', '-' or \
             '_' (such as \"my-project-123\"), got \"a/b\"",
        ),
        (
            "[mediator.fcm]\nservice_account_file = 3\n",
            "mediator.fcm.service_account_file: expected a string, got 3",
        ),
    ] {
        assert_eq!(one_problem(&with_minimal(text)), expected, "{text}");
    }
}

#[test]
fn mediator_deadline_below_request_timeout_is_refused() {
    assert_eq!(
        one_problem(&with_minimal(
            "[mediator]\nrequest_timeout = \"5s\"\ndeadline = \"4s\"\n"
        )),
        "mediator.deadline: \"4s\" must be at least mediator.request_timeout (5s): the \
         deadline covers every attempt of a push"
    );
}

#[test]
fn mediator_on_a_public_address_needs_a_token() {
    let p = one_problem(&with_minimal("[mediator]\nlisten = \"0.0.0.0:8090\"\n"));
    assert!(
        p.starts_with(
            "mediator.token: required (or mediator.token_file) when mediator.listen is not \
             loopback (\"0.0.0.0:8090\")"
        ),
        "{p}"
    );
    assert!(parse(&with_minimal(&format!(
        "[mediator]\nlisten = \"0.0.0.0:8090\"\ntoken = \"{MEDIATOR_TOKEN}\"\n"
    )))
    .is_ok());
}

#[test]
fn in_process_mediator_needs_a_service_and_the_push_token() {
    assert_eq!(
        one_problem(&with_minimal("[mediator]\nin_process = true\n")),
        "mediator.in_process: needs [mediator.apns] or [mediator.fcm]: the mediator would \
         have nowhere to send pushes"
    );
    // A subsection that is itself wrong is reported once, not again as
    // missing.
    assert_eq!(
        problems(&with_minimal(
            "[mediator]\nin_process = true\n[mediator.fcm]\nproject_id = \"p\"\n"
        )),
        ["mediator.fcm.service_account_file: required in [mediator.fcm]"]
    );
    let with_token = format!("[mediator]\nin_process = true\ntoken = \"{MEDIATOR_TOKEN}\"\n{APNS}");
    assert_eq!(
        one_problem(&with_minimal(&with_token)),
        "push.token: must be the same token as mediator.token when pushes go to the \
         in-process mediator (push.mediator_url not set): it would refuse every push"
    );
    let same = format!("{with_token}[push]\ntoken = \"{MEDIATOR_TOKEN}\"\n");
    let c = parse(&with_minimal(&same)).unwrap();
    assert_eq!(c.push.token, c.mediator.token);
    // With its own URL the push client goes elsewhere: no comparison.
    let elsewhere = format!("{with_token}[push]\nmediator_url = \"http://10.0.0.5:8090/push\"\n");
    assert!(parse(&with_minimal(&elsewhere)).is_ok());
}

#[test]
fn in_process_mediator_may_not_take_the_admin_or_a_sip_port() {
    let in_process = |listen: &str| {
        with_minimal(&format!(
            "shards = 2\n[mediator]\nin_process = true\nlisten = \"{listen}\"\n{APNS}"
        ))
    };
    assert_eq!(
        one_problem(&in_process("127.0.0.1:8080")),
        "mediator.listen: port 8080 is admin.listen's"
    );
    assert_eq!(
        one_problem(&in_process("127.0.0.1:5061")),
        "mediator.listen: port 5061 is shard 0's SIP port"
    );
    // A mediator run on its own (`sipis mediator`) may live on another
    // host: its port is not compared.
    assert!(parse(&with_minimal(
        "shards = 2\n[mediator]\nlisten = \"127.0.0.1:5061\"\n"
    ))
    .is_ok());
    // Other addresses do not collide.
    assert!(parse(&format!(
        "[server]\nbind = \"192.0.2.10\"\n[admin]\nlisten = \"127.0.0.1:8080\"\n\
         [mediator]\nin_process = true\nlisten = \"127.0.0.2:8080\"\n{APNS}"
    ))
    .is_ok());
}

#[test]
fn unknown_keys_and_sections_under_mediator_name_their_place() {
    assert_eq!(
        one_problem(&with_minimal(&format!("{APNS}key_fle = \"/k.p8\"\n"))),
        "unknown key \"key_fle\" in [mediator.apns] (did you mean \"key_file\"?)"
    );
    assert_eq!(
        one_problem(&with_minimal("[mediator.apn]\nkey_id = \"ABC123DEFG\"\n")),
        "unknown section [mediator.apn] (did you mean [mediator.apns]?)"
    );
    assert_eq!(
        one_problem(&with_minimal("[apns]\nkey_id = \"ABC123DEFG\"\n")),
        "unknown section [apns] (did you mean [mediator.apns]?)"
    );
    assert_eq!(
        one_problem(&with_minimal("[mediator]\nkey_id = \"ABC123DEFG\"\n")),
        "unknown key \"key_id\" in [mediator] (it belongs in [mediator.apns])"
    );
    assert_eq!(
        one_problem(&with_minimal("[push]\ndevice_wait = \"30s\"\n")),
        "unknown key \"device_wait\" in [push] (it belongs in [calls])"
    );
    assert_eq!(
        one_problem(&with_minimal("[mediator]\napns = 5\n")),
        "mediator.apns: expected a section [mediator.apns], got 5"
    );
    let e = parse(&with_minimal(
        "[mediator.fcm]\nservice_account_file = \"/s\"\nsend = 1\n",
    ))
    .unwrap_err();
    assert_eq!(e.key().as_deref(), Some("mediator.fcm.send"));
    let p = one_problem(&with_minimal("[server.tls]\ncert = \"x\"\n"));
    assert!(
        p.starts_with("unknown section [server.tls] (sections: [server], [sip], [calls], [push], [mediator], [mediator.apns], [mediator.fcm], [store]"),
        "{p}"
    );
}

#[test]
fn example_file_with_its_push_sections_uncommented_is_valid() {
    // The commented [mediator.apns] and [mediator.fcm] blocks are real
    // syntax with the documented defaults.
    let mut text = String::new();
    let mut inside = false;
    for line in EXAMPLE.lines() {
        let header = |l: &str| l.starts_with('[') && l.ends_with(']');
        let commented_header = line.strip_prefix("# ").is_some_and(header);
        if commented_header {
            inside = true;
        } else if header(line) {
            inside = false;
        }
        let uncomment = inside && (commented_header || line.contains(" = "));
        text.push_str(if uncomment { &line[2..] } else { line });
        text.push('\n');
    }
    let c = parse(&text).unwrap();
    assert_eq!(
        c.mediator.apns,
        Some(ApnsConfig {
            key_file: "/etc/sipis/AuthKey_ABC123DEFG.p8".into(),
            key_id: "ABC123DEFG".into(),
            team_id: "DEF123GHIJ".into(),
            default_topic: Some("com.example.phone.voip".into()),
            production_url: ApnsConfig::PRODUCTION_URL.into(),
            sandbox_url: ApnsConfig::SANDBOX_URL.into(),
            ca_file: Some("/etc/sipis/test-ca.pem".into()),
        })
    );
    let fcm = c.mediator.fcm.unwrap();
    assert_eq!(fcm.send_url, FcmConfig::SEND_URL);
    assert_eq!(fcm.project_id.as_deref(), Some("my-project-123"));
    assert_eq!(
        fcm.token_url.as_deref(),
        Some("https://oauth2.googleapis.com/token")
    );
}

#[test]
fn check_reports_unusable_push_files_by_key() {
    let dir = temp_dir("push-files");
    std::fs::write(dir.join("key.p8"), "not a key").unwrap();
    std::fs::write(
        dir.join("sa.json"),
        r#"{"type":"service_account","client_email":"x@p.iam.gserviceaccount.com"}"#,
    )
    .unwrap();
    std::fs::write(dir.join("bad.json"), "{").unwrap();
    let text = format!(
        "[server]\npublic_host = \"h.example\"\ndata_dir = {}\n\
         [mediator.apns]\nkey_file = {}\nkey_id = \"ABC123DEFG\"\nteam_id = \"DEF123GHIJ\"\n\
         ca_file = {}\n\
         [mediator.fcm]\nservice_account_file = {}\n",
        toml_path(&dir),
        toml_path(&dir.join("key.p8")),
        toml_path(&dir.join("missing-ca.pem")),
        toml_path(&dir.join("sa.json")),
    );
    let c = parse(&text).unwrap();
    let problems: Vec<String> = c.check().iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(
        problems[0].starts_with("mediator.apns.key_file: ") && problems[0].contains("is not PEM"),
        "{}",
        problems[0]
    );
    assert!(
        problems[1].starts_with("mediator.apns.ca_file: cannot read"),
        "{}",
        problems[1]
    );
    assert!(
        problems[2].starts_with("mediator.fcm.service_account_file: ")
            && problems[2].contains("lacks private_key, project_id"),
        "{}",
        problems[2]
    );

    // Not JSON at all; and a complete file passes (project_id from config).
    let c = parse(&format!(
        "[server]\npublic_host = \"h.example\"\ndata_dir = {}\n\
         [mediator.fcm]\nservice_account_file = {}\n",
        toml_path(&dir),
        toml_path(&dir.join("bad.json")),
    ))
    .unwrap();
    let p: Vec<String> = c.check().iter().map(|p| p.to_string()).collect();
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].contains("is not a service-account JSON file"),
        "{}",
        p[0]
    );
    std::fs::write(
        dir.join("sa.json"),
        r#"{"client_email":"x@p.iam.gserviceaccount.com","private_key":"-----BEGIN PRIVATE KEY-----\n"}"#,
    )
    .unwrap();
    let c = parse(&format!(
        "[server]\npublic_host = \"h.example\"\ndata_dir = {}\n\
         [mediator.fcm]\nservice_account_file = {}\nproject_id = \"p-1\"\n",
        toml_path(&dir),
        toml_path(&dir.join("sa.json")),
    ))
    .unwrap();
    assert!(c.check().is_empty(), "{:?}", c.check());
    std::fs::remove_dir_all(&dir).unwrap();
}
