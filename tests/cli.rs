//! The `sipis` binary as an operator runs it: help, check-config exit
//! statuses and messages, and the account commands against a fake admin API.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

const TOKEN: &str = "0123456789abcdef0123";

fn sipis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sipis"))
        .args(args)
        .env_remove("SIPIS_ADMIN_TOKEN")
        .output()
        .expect("run sipis")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/sipis.toml")
}

/// Writes `contents` to a fresh file under the temp dir.
fn temp_file(name: &str, contents: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sipis-cli-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// A configuration whose admin API wants [`TOKEN`].
fn client_config() -> PathBuf {
    temp_file(
        "sipis.toml",
        &format!("[server]\npublic_host = \"sip.example.net\"\n[admin]\ntoken = \"{TOKEN}\"\n"),
    )
}

/// A one-shot HTTP server on 127.0.0.1: answers one request with `status`
/// and `body`, and hands back the request it got (head and body).
fn fake_admin(status: &str, body: &str) -> (String, JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let response = if body.is_empty() {
        format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    } else {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                }
            }
            head.push_str(&line);
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        reader.get_mut().write_all(response.as_bytes()).unwrap();
        head + &String::from_utf8_lossy(&body)
    });
    (url, handle)
}

#[test]
fn version_names_the_binary_and_release() {
    let out = sipis(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out).0.trim(),
        format!("sipis {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_lists_and_explains_the_subcommands() {
    let out = sipis(&["--help"]);
    assert!(out.status.success());
    let help = text(&out).0;
    for cmd in ["serve", "check-config", "account", "device"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(cmd)),
            "{cmd} missing from:\n{help}"
        );
    }
    let out = sipis(&["account", "--help"]);
    let help = text(&out).0;
    for cmd in [
        "add", "list", "show", "update", "disable", "enable", "remove", "import",
    ] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(cmd)),
            "{cmd} missing from:\n{help}"
        );
    }
    assert!(help.contains("SIPIS_ADMIN_TOKEN"), "{help}");
    let help = text(&sipis(&["serve", "--help"])).0;
    assert!(
        help.contains("SO_REUSEPORT") && help.contains("/etc/sipis/sipis.toml"),
        "{help}"
    );
}

#[test]
fn check_config_accepts_the_example() {
    // The example's data_dir is /var/lib/sipis: it must be creatable (root,
    // as in CI).
    let out = sipis(&["check-config", example().to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.starts_with("ok: "), "{stdout}");
    assert!(stdout.contains("phones on 0.0.0.0:5060"), "{stdout}");
}

#[test]
fn check_config_lists_every_problem_by_key() {
    let file = temp_file(
        "bad.toml",
        "[server]\npublic_host = \"sip.example.net\"\nshards = \"many\"\n\n[sip]\nregsiter_rate = 10\n",
    );
    let out = sipis(&["check-config", file.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.starts_with("2 problems in the configuration:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("unknown key \"regsiter_rate\" in [sip] (did you mean \"register_rate\"?)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("server.shards: expected \"auto\" or a number 1..=256, got \"many\""),
        "{stderr}"
    );
    // Each problem line starts with the file, like a compiler's.
    assert!(stderr
        .lines()
        .skip(1)
        .all(|l| l.starts_with(file.to_str().unwrap())));
}

#[test]
fn check_config_reports_missing_files_and_syntax() {
    let out = sipis(&["check-config", "/nonexistent/sipis.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("cannot read /nonexistent/sipis.toml"));

    let file = temp_file("syntax.toml", "[server\n");
    let out = sipis(&["check-config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("not valid TOML"), "{}", text(&out).1);

    let file = temp_file(
        "tls.toml",
        "[server]\npublic_host = \"h.example\"\n[admin]\ntls_cert = \"/nonexistent/c.pem\"\n\
         tls_key = \"/nonexistent/k.pem\"\n",
    );
    let out = sipis(&["check-config", file.to_str().unwrap()]);
    let stderr = text(&out).1;
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("admin.tls_cert: cannot read"), "{stderr}");
    assert!(stderr.contains("admin.tls_key: cannot read"), "{stderr}");
}

#[test]
fn check_config_loads_the_sip_tls_certificate_and_key() {
    use rcgen::{CertificateParams, KeyPair};
    let cert_key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["sip.example".to_string()])
        .unwrap()
        .self_signed(&cert_key)
        .unwrap();
    let other_key = KeyPair::generate().unwrap();
    let cert_file = temp_file("sip.crt", &cert.pem());
    let key_file = temp_file("sip.key", &cert_key.serialize_pem());
    let wrong_key = temp_file("other.key", &other_key.serialize_pem());
    let config = |key: &std::path::Path| {
        format!(
            "[server]\npublic_host = \"h.example\"\ndata_dir = \"{}\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            std::env::temp_dir().display(),
            cert_file.display(),
            key.display()
        )
    };
    let good = temp_file("tls-good.toml", &config(&key_file));
    let out = sipis(&["check-config", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));

    // The key of another certificate: named by key.
    let bad = temp_file("tls-bad.toml", &config(&wrong_key));
    let out = sipis(&["check-config", bad.to_str().unwrap()]);
    let stderr = text(&out).1;
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tls.key:"), "{stderr}");
    assert!(stderr.contains("unusable key for certificate"), "{stderr}");

    // A key file that is not PEM.
    let junk = temp_file("junk.key", "not a key\n");
    let bad = temp_file("tls-junk.toml", &config(&junk));
    let out = sipis(&["check-config", bad.to_str().unwrap()]);
    let stderr = text(&out).1;
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tls.key:"), "{stderr}");
}

#[test]
fn serve_refuses_a_bad_configuration() {
    let file = temp_file("serve.toml", "[sip]\nt1 = \"0ms\"\n");
    let out = sipis(&["serve", "--config", file.to_str().unwrap()]);
    let stderr = text(&out).1;
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("sip.t1: \"0ms\" must be at least 1ms"),
        "{stderr}"
    );
    assert!(stderr.contains("server.public_host: required"), "{stderr}");
}

#[test]
fn account_list_prints_a_table() {
    let body = r#"{"accounts":[
        {"id":1,"aor":"sip:alice@provider.example","auth_user":"alice","registrar":"sip:provider.example",
         "outbound_proxy":null,"expires":3600,"enabled":true,"token":"t1",
         "status":{"state":"registered","expires_in":1800,"retry_in":null,"last_error":null}},
        {"id":7,"aor":"sip:bob@other.example","auth_user":"bob","registrar":null,
         "outbound_proxy":null,"expires":600,"enabled":false,"token":"t7",
         "status":{"state":"disabled","expires_in":null,"retry_in":null,"last_error":null}}
    ],"next_after":7}"#;
    let (url, server) = fake_admin("200 OK", body);
    let config = client_config();
    let out = sipis(&[
        "account",
        "list",
        "--after",
        "0",
        "--limit",
        "2",
        "--admin",
        &url,
        "--config",
        config.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let request = server.join().unwrap();
    assert!(
        request.starts_with("GET /accounts?after=0&limit=2 HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.contains(&format!("authorization: Bearer {TOKEN}\r\n"))
            || request.contains(&format!("Authorization: Bearer {TOKEN}\r\n")),
        "{request}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(
        lines[0],
        "ID  AOR                         AUTH USER  REGISTRAR             EXPIRES  ENABLED  STATE"
    );
    assert_eq!(
        lines[1],
        "1   sip:alice@provider.example  alice      sip:provider.example  3600     yes      registered (1800s left)"
    );
    assert_eq!(
        lines[2],
        "7   sip:bob@other.example       bob        -                     600      no       disabled"
    );
    assert!(stderr.contains("--after 7"), "{stderr}");
}

#[test]
fn account_add_posts_json_and_prints_the_new_account() {
    let view = r#"{"id":42,"aor":"sip:carol@provider.example","auth_user":"carol","registrar":"sip:provider.example",
        "outbound_proxy":"sip:edge.provider.example;lr","expires":300,"enabled":true,"token":"k3yT0ken",
        "status":{"state":"pending","expires_in":null,"retry_in":null,"last_error":null}}"#;
    let (url, server) = fake_admin("201 Created", view);
    let config = client_config();
    let out = sipis(&[
        "account",
        "--admin",
        &url,
        "--config",
        config.to_str().unwrap(),
        "add",
        "--aor",
        "sip:carol@provider.example",
        "--auth-user",
        "carol",
        "--password",
        "s3cret",
        "--registrar",
        "sip:provider.example",
        "--outbound-proxy",
        "sip:edge.provider.example;lr",
        "--expires",
        "300",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let request = server.join().unwrap();
    assert!(
        request.starts_with("POST /accounts HTTP/1.1\r\n"),
        "{request}"
    );
    let json: serde_json::Value =
        serde_json::from_str(request.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "aor": "sip:carol@provider.example",
            "auth_user": "carol",
            "password": "s3cret",
            "registrar": "sip:provider.example",
            "outbound_proxy": "sip:edge.provider.example;lr",
            "expires": 300,
            "enabled": true
        })
    );
    assert!(
        stdout.starts_with("created account 42 sip:carol@provider.example"),
        "{stdout}"
    );
    assert!(stdout.contains("contact token: k3yT0ken"), "{stdout}");
    assert!(stdout.contains("state: pending"), "{stdout}");
}

#[test]
fn account_remove_prints_the_api_error_and_fails() {
    let (url, server) = fake_admin("404 Not Found", r#"{"error":"no account 9"}"#);
    let config = client_config();
    let out = sipis(&[
        "account",
        "remove",
        "9",
        "--admin",
        &url,
        "--config",
        config.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(server
        .join()
        .unwrap()
        .starts_with("DELETE /accounts/9 HTTP/1.1\r\n"));
    assert_eq!(stderr.trim(), "error: no account 9 (HTTP 404)");
}

#[test]
fn account_remove_succeeds_on_204() {
    let (url, server) = fake_admin("204 No Content", "");
    let config = client_config();
    let out = sipis(&[
        "account",
        "remove",
        "3",
        "--admin",
        &url,
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    server.join().unwrap();
    assert_eq!(text(&out).0.trim(), "removed account 3");
}

#[test]
fn account_import_posts_csv() {
    let csv = "aor,auth_user,password,registrar\nsip:a@p.example,a,pw,sip:p.example\n";
    let file = temp_file("accounts.csv", csv);
    let (url, server) = fake_admin("200 OK", r#"{"imported":1}"#);
    let config = client_config();
    let out = sipis(&[
        "account",
        "import",
        file.to_str().unwrap(),
        "--admin",
        &url,
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let request = server.join().unwrap();
    assert!(
        request.starts_with("POST /accounts/import?on_conflict=fail HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request
            .to_ascii_lowercase()
            .contains("content-type: text/csv\r\n"),
        "{request}"
    );
    assert!(request.ends_with(csv), "{request}");
    assert_eq!(text(&out).0.trim(), "imported 1 accounts");
}

#[test]
fn account_commands_say_when_the_api_is_unreachable() {
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = client_config();
    let out = sipis(&[
        "account",
        "list",
        "--admin",
        &format!("http://127.0.0.1:{port}"),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out).1;
    assert!(
        stderr.starts_with(&format!(
            "error: cannot reach the admin API at http://127.0.0.1:{port}"
        )),
        "{stderr}"
    );
}

/// Runs `sipis <args> --admin URL --config FILE` against `url`.
fn against(url: &str, args: &[&str]) -> Output {
    let config = client_config();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--admin", url, "--config", config.to_str().unwrap()]);
    sipis(&all)
}

/// The JSON body of a recorded request.
fn body_of(request: &str) -> serde_json::Value {
    serde_json::from_str(request.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

const VIEW_42: &str = r#"{"id":42,"aor":"sip:carol@provider.example","auth_user":"carol",
    "registrar":"sip:provider.example","outbound_proxy":null,"expires":600,"enabled":true,
    "token":"k3yT0ken","status":{"state":"registered","expires_in":590,"retry_in":null,"last_error":null}}"#;

/// A fake API answering several requests in turn: (status, body) each.
fn fake_admin_seq(answers: Vec<(&'static str, &'static str)>) -> (String, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for (status, body) in answers {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                head.push_str(&line);
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            reader.get_mut().write_all(response.as_bytes()).unwrap();
            seen.push(head);
        }
        seen
    });
    (url, handle)
}

#[test]
fn account_show_prints_fields_and_devices() {
    let devices = r#"{"devices":[{"device":"iphone","provider":"apns","prid":"0a1b2c",
        "param":"TEAM.com.example.voip","updated_unix":1700000000}]}"#;
    let (url, server) = fake_admin_seq(vec![("200 OK", VIEW_42), ("200 OK", devices)]);
    let out = against(&url, &["account", "show", "42"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let seen = server.join().unwrap();
    assert!(
        seen[0].starts_with("GET /accounts/42 HTTP/1.1\r\n"),
        "{}",
        seen[0]
    );
    assert!(
        seen[1].starts_with("GET /accounts/42/devices HTTP/1.1\r\n"),
        "{}",
        seen[1]
    );
    assert_eq!(
        stdout,
        "id:             42\n\
         aor:            sip:carol@provider.example\n\
         auth user:      carol\n\
         registrar:      sip:provider.example\n\
         outbound proxy: -\n\
         expires:        600\n\
         enabled:        yes\n\
         contact token:  k3yT0ken\n\
         state:          registered (590s left)\n\
         DEVICE  PROVIDER  PRID    PARAM                  UPDATED\n\
         iphone  apns      0a1b2c  TEAM.com.example.voip  1700000000\n"
    );
}

#[test]
fn account_update_patches_only_what_is_given() {
    let (url, server) = fake_admin("200 OK", VIEW_42);
    let out = against(
        &url,
        &[
            "account",
            "update",
            "42",
            "--password",
            "n3w",
            "--expires",
            "600",
            "--no-outbound-proxy",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let request = server.join().unwrap();
    assert!(
        request.starts_with("PATCH /accounts/42 HTTP/1.1\r\n"),
        "{request}"
    );
    assert_eq!(
        body_of(&request),
        serde_json::json!({"password": "n3w", "expires": 600, "outbound_proxy": null})
    );
    assert_eq!(
        stdout,
        "updated account 42 sip:carol@provider.example\n  state: registered (590s left)\n"
    );

    // Nothing to change: refused before any request.
    let out = against("http://127.0.0.1:9", &["account", "update", "42"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("nothing to update"),
        "{:?}",
        text(&out)
    );
    // --registrar and --no-registrar exclude each other (usage: 2).
    let out = against(
        "http://127.0.0.1:9",
        &[
            "account",
            "update",
            "42",
            "--registrar",
            "sip:x",
            "--no-registrar",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn account_disable_and_enable_patch_enabled() {
    for (cmd, enabled) in [("disable", false), ("enable", true)] {
        let (url, server) = fake_admin("200 OK", VIEW_42);
        let out = against(&url, &["account", cmd, "42"]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
        let request = server.join().unwrap();
        assert!(
            request.starts_with("PATCH /accounts/42 HTTP/1.1\r\n"),
            "{request}"
        );
        assert_eq!(body_of(&request), serde_json::json!({ "enabled": enabled }));
        assert!(
            stdout.starts_with(&format!("{cmd}d account 42 ")),
            "{stdout}"
        );
    }
    let (url, server) = fake_admin("404 Not Found", r#"{"error":"no account 5"}"#);
    let out = against(&url, &["account", "disable", "5"]);
    server.join().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out).1.trim(), "error: no account 5 (HTTP 404)");
}

#[test]
fn device_commands_call_the_device_api() {
    let list = r#"{"devices":[
        {"device":"iphone","provider":"apns","prid":"0a1b2c","param":"TEAM.com.example.voip","updated_unix":1700000000},
        {"device":"pixel","provider":"fcm","prid":"fcm-token-1","param":null,"updated_unix":1700000100}]}"#;
    let (url, server) = fake_admin("200 OK", list);
    let out = against(&url, &["device", "list", "7"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(server
        .join()
        .unwrap()
        .starts_with("GET /accounts/7/devices HTTP/1.1\r\n"));
    assert_eq!(
        stdout,
        "DEVICE  PROVIDER  PRID         PARAM                  UPDATED\n\
         iphone  apns      0a1b2c       TEAM.com.example.voip  1700000000\n\
         pixel   fcm       fcm-token-1  -                      1700000100\n"
    );

    let view =
        r#"{"device":"my phone","provider":"fcm","prid":"tok","param":"proj-1","updated_unix":1}"#;
    let (url, server) = fake_admin("200 OK", view);
    let out = against(
        &url,
        &[
            "device",
            "put",
            "7",
            "my phone",
            "--provider",
            "fcm",
            "--prid",
            "tok",
            "--param",
            "proj-1",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let request = server.join().unwrap();
    assert!(
        request.starts_with("PUT /accounts/7/devices/my%20phone HTTP/1.1\r\n"),
        "{request}"
    );
    assert_eq!(
        body_of(&request),
        serde_json::json!({"provider": "fcm", "prid": "tok", "param": "proj-1"})
    );
    assert_eq!(
        stdout.trim(),
        "device my phone of account 7: fcm tok (proj-1)"
    );
    // An unknown provider never reaches the API.
    let out = against(
        "http://127.0.0.1:9",
        &[
            "device",
            "put",
            "7",
            "x",
            "--provider",
            "gcm",
            "--prid",
            "t",
        ],
    );
    assert_eq!(out.status.code(), Some(2));

    let (url, server) = fake_admin("404 Not Found", r#"{"error":"no such device"}"#);
    let out = against(&url, &["device", "remove", "7", "ipad"]);
    assert!(server
        .join()
        .unwrap()
        .starts_with("DELETE /accounts/7/devices/ipad HTTP/1.1\r\n"));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out).1.trim(), "error: no such device (HTTP 404)");
    let (url, server) = fake_admin("204 No Content", "");
    let out = against(&url, &["device", "remove", "7", "ipad"]);
    server.join().unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    assert_eq!(text(&out).0.trim(), "removed device ipad of account 7");
}

#[test]
fn account_import_on_conflict_goes_to_the_query() {
    let file = temp_file("dup.csv", "aor,auth_user,password\nsip:a@p.example,a,pw\n");
    let answer =
        r#"{"imported":1,"created":1,"updated":0,"skipped":1,"skipped_aors":["sip:b@p.example"]}"#;
    let (url, server) = fake_admin("200 OK", answer);
    let out = against(
        &url,
        &[
            "account",
            "import",
            file.to_str().unwrap(),
            "--on-conflict",
            "skip",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let request = server.join().unwrap();
    assert!(
        request.starts_with("POST /accounts/import?on_conflict=skip HTTP/1.1\r\n"),
        "{request}"
    );
    assert_eq!(
        stdout,
        "imported 1 accounts: 1 created, 0 updated, 1 skipped\n  skipped (exists): sip:b@p.example\n"
    );
    let (url, server) = fake_admin(
        "409 Conflict",
        r#"{"error":"conflict: aor already provisioned: sip:a@p.example"}"#,
    );
    let out = against(&url, &["account", "import", file.to_str().unwrap()]);
    assert!(server
        .join()
        .unwrap()
        .starts_with("POST /accounts/import?on_conflict=fail HTTP/1.1\r\n"));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out).1.trim(),
        "error: conflict: aor already provisioned: sip:a@p.example (HTTP 409)"
    );
    let out = against(
        "http://127.0.0.1:9",
        &["account", "import", "x.csv", "--on-conflict", "merge"],
    );
    assert_eq!(out.status.code(), Some(2));
}
