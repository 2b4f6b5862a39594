//! Real peers for the incoming-call end-to-end tests (tests/calls_e2e.rs).
//!
//! ```text
//!  sipp caller ──▶ Kamailio (kamailio/provider.cfg) ──INVITE──▶ sipis shard port
//!                    │ registrar: sipis registers alice, bob       │ push JSON
//!                    └─ bob's calls also fork to a sipp UAS        ▼
//!                                                          Mediator (this file)
//!  sipp phone ──REGISTER (pn-*) / INVITE over that flow──▶ sipis phone port
//! ```
//!
//! - [`Peers::start`] starts, as asked: Kamailio with the provider
//!   configuration (registrar + proxy, [`Provider`]), the [`Mediator`] stub
//!   (an HTTP/1.1 server thread that records every push JSON and answers
//!   `{"id":..,"result":"sent"}`) and sipis as the `sipis serve` binary
//!   ([`Sipis`]; its config is built as TOML text and checked with
//!   `Config::from_toml_str`, so this compiles whether or not sipis knows
//!   `[calls]` and `[push]` yet). Accounts and devices are provisioned through
//!   sipis's admin API ([`Admin`]).
//! - sipp runs the scenarios of `tests/support/sipp/` ([`SippSpec`],
//!   [`Sipp`]), always with `-trace_msg -message_file` and `-trace_err`, a
//!   `-timeout` (`-timeout_error`) and a harness deadline after which it is
//!   killed. [`SippRun`] holds what it sent and received, parsed from its
//!   message log ([`parse_message_log`]): the tests assert on those bytes.
//! - Everything runs on 127.0.0.1 on free ports (bind port 0, release). The
//!   tests of one binary run one at a time ([`Peers::start`] takes a global
//!   lock): the timings they check (3 s device wait) must not depend on how
//!   many Kamailios share the two cores.
//! - Dropping [`Peers`] stops everything (sipp processes also die with
//!   the test through `PR_SET_PDEATHSIG`). If the test is failing, it first
//!   prints every sipp's error log and message transcript, the pushes the
//!   mediator received, and Kamailio's and sipis's log tails, and keeps its
//!   directory.
//!
//! sipp or Kamailio not installed: the test fails saying how to install
//! them (`apt-get install sip-tester kamailio`).

#![allow(dead_code)]

use crate::kamailio::{self, Kamailio, Location};
use serde_json::{json, Value};
use sipis::config::Config;
use sipis::runtime::shard_of;
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The provider's domain: AORs are `sip:<user>@kam.test`.
pub const DOMAIN: &str = "kam.test";
/// The caller's From display name.
pub const CALLER_NAME: &str = "Carol Caller";
/// `pn-param` of the phones: `<TeamID>.<bundle>.voip`.
pub const PN_PARAM: &str = "ABCDE12345.com.example.phone.voip";
/// The APNs topic sipis must derive from [`PN_PARAM`].
pub const APNS_TOPIC: &str = "com.example.phone.voip";
/// `calls.phone_realm`: the digest realm sipis challenges phones in.
pub const PHONE_REALM: &str = "sipis";
/// `calls.device_wait`.
pub const DEVICE_WAIT: Duration = Duration::from_secs(3);
/// `calls.late_wake_window`.
pub const LATE_WAKE_WINDOW: Duration = Duration::from_secs(15);
/// sipis's shards (two: calls cross from the phone port's shard to the
/// account's).
pub const SHARDS: usize = 2;
/// sipp's own `-timeout` (it then exits failing); the harness kills it
/// [`SIPP_GRACE`] later.
pub const SIPP_TIMEOUT: Duration = Duration::from_secs(30);
const SIPP_GRACE: Duration = Duration::from_secs(5);
const ADMIN_TOKEN: &str = "calls-e2e-admin-token-0123456789abcdef";

pub const SIPP_INSTALL_HINT: &str = "sipp is not installed: run `apt-get install sip-tester` \
     (or set SIPIS_SIPP to the sipp binary)";

/// The scenarios' directory.
pub fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/sipp")
}

/// The provider configuration (see its header).
pub const PROVIDER_CONFIG: &str = include_str!("kamailio/provider.cfg");

static SERIAL: Mutex<()> = Mutex::new(());
static INSTANCE: AtomicU32 = AtomicU32::new(0);

// ---- ports and time --------------------------------------------------------

pub fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind a free UDP port");
    s.local_addr().unwrap().port()
}

/// `n` consecutive free UDP ports on loopback (sipis: the phone port and
/// one per shard).
/// `n` consecutive free UDP ports, the first also free for TCP (see
/// `tests/support/ports.rs`).
pub fn free_udp_ports(n: u16) -> u16 {
    crate::ports::free_udp_port_run(n)
}

pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A random push token: 64 hex digits, like an APNs device token.
pub fn random_prid() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("random bytes");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Waits (at most 5 s) until something listens on UDP `port` of
/// 127.0.0.1 (a sipp UAS that just started).
pub fn wait_listening(port: u16) {
    wait_for(
        &format!("a listener on udp:127.0.0.1:{port}"),
        Duration::from_secs(5),
        || UdpSocket::bind(("127.0.0.1", port)).is_err().then_some(()),
    );
}

/// Polls `f` every 50 ms until it returns `Some`, at most `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- the peers of one test ------------------------------------------------

/// Which peers a test needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SipisMode {
    /// No sipis (peer checks with stand-ins).
    None,
    /// sipis as it is configured today: registration on behalf only.
    Registration,
    /// sipis with `[calls]` and `[push]` pointing at the mediator.
    Calls,
}

/// Everything one test runs; dropping it stops everything.
pub struct Peers {
    pub sipis: Option<Sipis>,
    pub mediator: Option<Mediator>,
    pub provider: Option<Provider>,
    pub dir: PathBuf,
    _serial: MutexGuard<'static, ()>,
}

impl Peers {
    /// Waits for the other tests' peers to stop, then starts Kamailio (if
    /// `provider`), the mediator (if sipis runs with calls) and sipis.
    pub fn start(name: &str, provider: bool, sipis: SipisMode) -> Peers {
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let dir = std::env::temp_dir().join(format!(
            "sipis-calls-{name}-{}-{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test's temp dir");
        eprintln!("{name}: files in {}", dir.display());
        let mut peers = Peers {
            sipis: None,
            mediator: None,
            provider: None,
            dir,
            _serial: serial,
        };
        if provider {
            peers.provider = Some(Provider::start());
        }
        if sipis == SipisMode::Calls {
            peers.mediator = Some(Mediator::start());
        }
        if sipis != SipisMode::None {
            let mediator_url = peers.mediator.as_ref().map(Mediator::url);
            peers.sipis = Some(Sipis::start(&peers.dir, mediator_url.as_deref()));
        }
        peers
    }

    pub fn provider(&self) -> &Provider {
        self.provider
            .as_ref()
            .expect("this test started no Kamailio")
    }

    pub fn provider_mut(&mut self) -> &mut Provider {
        self.provider
            .as_mut()
            .expect("this test started no Kamailio")
    }

    pub fn sipis(&self) -> &Sipis {
        self.sipis.as_ref().expect("this test started no sipis")
    }

    pub fn mediator(&self) -> &Mediator {
        self.mediator
            .as_ref()
            .expect("this test started no mediator")
    }

    /// Creates the account `user` (`sip:<user>@kam.test`, password
    /// `pw-<user>`, registrar `sip:kam.test` through the outbound proxy
    /// `sip:127.0.0.1:<Kamailio>`) and waits until Kamailio holds sipis's
    /// binding for it: exactly `sip:<token>@127.0.0.1:<shard port>`.
    pub fn provision(&mut self, user: &str) -> Account {
        let port = self.provider().port();
        let account = self.sipis().add_account(user, port);
        let contact = self.sipis().contact_of(&account);
        let aor = format!("{user}@{DOMAIN}");
        let provider = self.provider_mut();
        let mut last = Location::new();
        let found = (|| {
            let end = Instant::now() + Duration::from_secs(20);
            while Instant::now() < end {
                last = provider.kam.dump();
                if last.get(&aor).is_some_and(|c| !c.is_empty()) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            false
        })();
        assert!(
            found,
            "Kamailio holds no binding for {aor} 20 s after it was provisioned; location: {last:?}; \
             account: {}",
            self.sipis().admin.get(&format!("/accounts/{}", account.id))
        );
        let addresses: Vec<&str> = last[&aor].iter().map(|b| b.address.as_str()).collect();
        assert_eq!(
            addresses,
            [contact.as_str()],
            "{aor}'s bindings at Kamailio: exactly sipis's contact"
        );
        account
    }

    /// Puts a push device through the admin API.
    pub fn put_device(&self, account: &Account, name: &str, prid: &str) -> Value {
        let body = json!({"provider": "apns", "prid": prid, "param": PN_PARAM});
        let (status, v) = self.sipis().admin.send(
            "PUT",
            &format!("/accounts/{}/devices/{name}", account.id),
            &body,
        );
        assert_eq!(status, 200, "PUT device {name}: {v}");
        v
    }

    /// A sipp process of this test (its logs in the test's dir).
    pub fn sipp(&self, spec: SippSpec) -> Sipp {
        Sipp::spawn(spec, &self.dir)
    }

    /// The caller: `scenario` calling `user`@kam.test through Kamailio.
    pub fn caller(&self, name: &str, scenario: &str, user: &str) -> Sipp {
        self.sipp(
            SippSpec::new(name, scenario)
                .remote(self.provider().addr())
                .service(user)
                .key("domain", DOMAIN)
                .key("caller_name", CALLER_NAME),
        )
    }

    /// The phone of `user`: registers at sipis's phone port with the push
    /// token `prid` (digest: `user` / `pw-<user>`), then runs `ooc` (the
    /// INVITE sipis sends it), or exits after the 200 if `ooc` is `None`.
    pub fn phone(&self, name: &str, user: &str, prid: &str, ooc: Option<&str>) -> Sipp {
        let remote = self.sipis().phone_addr();
        phone_spec(name, remote, user, prid, ooc).spawn(&self.dir)
    }

    /// The pushes the mediator received so far.
    pub fn pushes(&self) -> Vec<Push> {
        self.mediator().pushes()
    }

    /// Sipp runs, transcripts and logs of this test, for a failure report.
    fn report(&self) {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        names.sort();
        for p in &names {
            let file = p.file_name().unwrap().to_string_lossy().to_string();
            if file.ends_with(".msg") {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let msgs = parse_message_log(&text);
                eprintln!("--- {file}: what sipp sent (→) and received (←) ---");
                eprintln!("{}", transcript(&msgs));
            } else if file.ends_with(".err") || file.ends_with(".out") {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let text = text.trim();
                if !text.is_empty() {
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    eprintln!("--- {file} (last 15 lines) ---\n{}", tail.join("\n"));
                }
            }
        }
        if let Some(m) = &self.mediator {
            eprintln!("--- pushes the mediator received ---");
            for p in m.pushes() {
                eprintln!("{} {} {}", p.method, p.path, p.body);
            }
            for e in m.errors() {
                eprintln!("mediator error: {e}");
            }
        }
        eprintln!("--- files kept in {} ---", self.dir.display());
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        if failing {
            self.report();
        }
        // sipis first (its log tail), then Kamailio (its own), then the
        // mediator; the fields' order would do the same.
        self.sipis.take();
        self.provider.take();
        self.mediator.take();
        if !failing {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The phone's registration scenario (see [`Peers::phone`]).
pub fn phone_spec(
    name: &str,
    remote: SocketAddr,
    user: &str,
    prid: &str,
    ooc: Option<&str>,
) -> SippSpec {
    let mut spec = SippSpec::new(name, "phone_register.xml")
        .remote(remote)
        .service(user)
        .auth(user, &format!("pw-{user}"))
        // sipp writes uri="sip:<this>": the Request-URI, sip:kam.test.
        .auth_uri(DOMAIN)
        .key("domain", DOMAIN)
        .key("prid", prid)
        .key("pnparam", PN_PARAM);
    spec = match ooc {
        Some(s) => spec.ooc(s),
        None => spec.set("register_only", "1"),
    };
    spec
}

// ---- Kamailio as the provider -----------------------------------------------

/// Kamailio running `kamailio/provider.cfg`.
pub struct Provider {
    pub kam: Kamailio,
    /// Where bob's calls are also forked (a sipp UAS the test starts).
    pub fork_port: u16,
}

impl Provider {
    pub fn start() -> Provider {
        let fork_port = free_udp_port();
        let kam = Kamailio::start_config(
            "provider.cfg",
            PROVIDER_CONFIG,
            &[("@FORK_PORT@", fork_port.to_string())],
        );
        Provider { kam, fork_port }
    }

    pub fn port(&self) -> u16 {
        self.kam.port()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port()))
    }

    /// The `RX-REQ`/`RX-RPL` lines the configuration logs for `call_id`.
    pub fn traffic(&self, call_id: &str) -> Vec<String> {
        let tag = format!("ci=[{call_id}]");
        self.kam
            .log()
            .lines()
            .filter(|l| l.contains("RX-") && l.contains(&tag))
            .map(|l| l[l.find("RX-").unwrap()..].to_string())
            .collect()
    }

    /// Replies Kamailio received for `call_id` from `from` (`ip:port`):
    /// the logged lines, e.g. `RX-RPL 100 Trying from 127.0.0.1:5061 ...`.
    pub fn replies_from(&self, call_id: &str, from: &str) -> Vec<String> {
        let src = format!(" from {from} ");
        self.traffic(call_id)
            .into_iter()
            .filter(|l| l.starts_with("RX-RPL") && l.contains(&src))
            .collect()
    }
}

// ---- sipis -------------------------------------------------------------------

/// A provisioned account.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: u64,
    pub user: String,
    /// `sip:<user>@kam.test`.
    pub aor: String,
    /// The Contact user part sipis registers.
    pub token: String,
}

/// `sipis serve` on a generated configuration.
pub struct Sipis {
    child: Option<Child>,
    pub admin: Admin,
    /// The phones' port; shard `i` listens on `sip_port + 1 + i`.
    pub sip_port: u16,
    log: PathBuf,
}

impl Sipis {
    /// The configuration text: `[server]` on 127.0.0.1 (phone port and
    /// [`SHARDS`] shard ports), the embedded store in `dir`, the admin API;
    /// with `mediator_url`, also `[calls]` (3 s device wait, 15 s late-wake
    /// window, realm "sipis") and `[push]`.
    pub fn config_text(
        dir: &Path,
        sip_port: u16,
        admin_port: u16,
        mediator_url: Option<&str>,
    ) -> String {
        let level = std::env::var("SIPIS_CALLS_LOG").unwrap_or_else(|_| "info".into());
        let mut text = format!(
            r#"
[server]
bind = "127.0.0.1"
public_host = "127.0.0.1"
sip_port = {sip_port}
shards = {SHARDS}
data_dir = "{data}"

[admin]
listen = "127.0.0.1:{admin_port}"
token = "{ADMIN_TOKEN}"

[log]
level = "{level}"
"#,
            data = dir.join("sipis-data").display(),
        );
        if let Some(url) = mediator_url {
            text.push_str(&format!(
                r#"
[calls]
device_wait = "{}s"
late_wake_window = "{}s"
phone_realm = "{PHONE_REALM}"

[push]
mediator_url = "{url}"
"#,
                DEVICE_WAIT.as_secs(),
                LATE_WAKE_WINDOW.as_secs(),
            ));
        }
        text
    }

    pub fn start(dir: &Path, mediator_url: Option<&str>) -> Sipis {
        let sip_port = free_udp_ports(1 + SHARDS as u16);
        let admin_port = free_tcp_port();
        let text = Sipis::config_text(dir, sip_port, admin_port, mediator_url);
        if let Err(e) = Config::from_toml_str(&text) {
            panic!(
                "sipis does not accept the test's configuration{}:\n{e}\n--- configuration ---\n{text}",
                if mediator_url.is_some() {
                    " (are [calls] and [push] — the call engine — on this branch yet?)"
                } else {
                    ""
                }
            );
        }
        let config_path = dir.join("sipis.toml");
        std::fs::write(&config_path, &text).expect("write sipis.toml");
        let log = dir.join("sipis.log");
        let out = std::fs::File::create(&log).expect("create sipis.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sipis"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        // SAFETY: prctl is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("run the sipis binary");
        let mut sipis = Sipis {
            child: Some(child),
            admin: Admin::new(&format!("127.0.0.1:{admin_port}")),
            sip_port,
            log,
        };
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(Ok(Some(status))) = sipis.child.as_mut().map(Child::try_wait) {
                sipis.child = None;
                panic!(
                    "sipis serve exited at start-up ({status}):\n{}",
                    sipis.log_tail(40)
                );
            }
            if sipis.admin.healthy() {
                break;
            }
            assert!(
                Instant::now() < end,
                "sipis serve: admin API not healthy within 15 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "sipis: pid {}, phones on udp:127.0.0.1:{sip_port}, shards on {}..={}",
            sipis.child.as_ref().unwrap().id(),
            sip_port + 1,
            sip_port + SHARDS as u16
        );
        sipis
    }

    /// Where phones register.
    pub fn phone_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.sip_port))
    }

    /// The port of the shard that owns `account`.
    pub fn shard_port(&self, account: &Account) -> u16 {
        self.sip_port + 1 + shard_of(account.id, SHARDS) as u16
    }

    /// The Contact sipis registers for `account`.
    pub fn contact_of(&self, account: &Account) -> String {
        format!(
            "sip:{}@127.0.0.1:{}",
            account.token,
            self.shard_port(account)
        )
    }

    /// `POST /accounts` (see [`Peers::provision`]).
    pub fn add_account(&self, user: &str, provider_port: u16) -> Account {
        let aor = format!("sip:{user}@{DOMAIN}");
        let body = json!({
            "aor": aor,
            "auth_user": user,
            "password": format!("pw-{user}"),
            "registrar": format!("sip:{DOMAIN}"),
            "outbound_proxy": format!("sip:127.0.0.1:{provider_port}"),
            "expires": 600,
        });
        let (status, v) = self.admin.send("POST", "/accounts", &body);
        assert_eq!(status, 201, "POST /accounts ({user}): {v}");
        Account {
            id: v["id"].as_u64().expect("account id"),
            user: user.to_string(),
            aor,
            token: v["token"].as_str().expect("account token").to_string(),
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sipis {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- sipis log (last 60 lines) ---\n{}\n---",
                self.log_tail(60)
            );
        }
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// sipis's admin API.
pub struct Admin {
    agent: ureq::Agent,
    base: String,
    auth: String,
}

impl Admin {
    pub fn new(addr: &str) -> Admin {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Admin {
            agent,
            base: format!("http://{addr}"),
            auth: format!("Bearer {ADMIN_TOKEN}"),
        }
    }

    pub fn healthy(&self) -> bool {
        let resp = self.agent.get(format!("{}/health", self.base)).call();
        matches!(resp, Ok(r) if r.status().as_u16() == 200)
    }

    /// `method path` with a JSON body: status and JSON answer (`null` if
    /// the answer is empty).
    pub fn send(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let data = body.to_string();
        let resp = match method {
            "POST" => self
                .agent
                .post(&url)
                .header("Authorization", &self.auth)
                .header("Content-Type", "application/json")
                .send(data.as_bytes()),
            "PUT" => self
                .agent
                .put(&url)
                .header("Authorization", &self.auth)
                .header("Content-Type", "application/json")
                .send(data.as_bytes()),
            other => panic!("Admin::send: method {other}"),
        };
        Admin::finish(&format!("{method} {path}"), resp)
    }

    pub fn get(&self, path: &str) -> Value {
        let resp = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
            .call();
        let (status, v) = Admin::finish(&format!("GET {path}"), resp);
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    fn finish(
        what: &str,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> (u16, Value) {
        let mut resp = resp.unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"));
        if text.trim().is_empty() {
            return (status, Value::Null);
        }
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{what}: answer is not JSON ({e}): {text:.300}"));
        (status, v)
    }
}

// ---- the mediator stub ---------------------------------------------------------

/// How long the stand-in takes to answer, on top of what a handler asks
/// for: a realistic APNs/FCM round trip. `SIPIS_STANDIN_DELAY_MS`
/// (default 100; 0 for none).
pub fn standin_delay() -> Duration {
    std::env::var("SIPIS_STANDIN_DELAY_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_millis(100), Duration::from_millis)
}

/// One push request the mediator received.
#[derive(Debug, Clone)]
pub struct Push {
    pub at: Instant,
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

impl Push {
    pub fn kind(&self) -> &str {
        self.body["kind"].as_str().unwrap_or("")
    }

    pub fn call_id(&self) -> &str {
        self.body["call"]["call_id"].as_str().unwrap_or("")
    }
}

#[derive(Default)]
struct Received {
    pushes: Vec<Push>,
    errors: Vec<String>,
}

/// The push mediator, as sipis sees it: `POST /push` with a JSON body over
/// HTTP/1.1 (keep-alive, any number of connections), answered `200` with
/// `{"id":"<the push's id>","result":"sent"}`. It records every push; the
/// test decides what the "woken" phone does ([`Mediator::wait_push`]).
pub struct Mediator {
    addr: SocketAddr,
    state: Arc<(Mutex<Received>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Mediator {
    pub fn start() -> Mediator {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the mediator");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Arc<(Mutex<Received>, Condvar)> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("mediator".into())
            .spawn(move || {
                let mut conns = Vec::new();
                while !sp.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (st, sp) = (st.clone(), sp.clone());
                            conns.push(std::thread::spawn(move || serve_conn(stream, &st, &sp)));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) => {
                            record_error(&st, format!("accept: {e}"));
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
                for c in conns {
                    let _ = c.join();
                }
            })
            .expect("spawn the mediator thread");
        Mediator {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// `push.mediator_url`.
    pub fn url(&self) -> String {
        format!("http://{}/push", self.addr)
    }

    pub fn pushes(&self) -> Vec<Push> {
        self.state
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pushes
            .clone()
    }

    /// Problems with requests (not JSON, no Content-Length, ...).
    pub fn errors(&self) -> Vec<String> {
        self.state
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .errors
            .clone()
    }

    /// The first push of `kind` (and, if given, for `call_id`), waiting up
    /// to `timeout` for it.
    pub fn wait_push(&self, kind: &str, call_id: Option<&str>, timeout: Duration) -> Push {
        let end = Instant::now() + timeout;
        let (lock, cv) = &*self.state;
        let mut g = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(p) = g
                .pushes
                .iter()
                .find(|p| p.kind() == kind && call_id.is_none_or(|c| p.call_id() == c))
            {
                return p.clone();
            }
            let now = Instant::now();
            if now >= end {
                let seen: Vec<String> = g.pushes.iter().map(|p| p.body.to_string()).collect();
                panic!(
                    "no {kind:?} push{} reached the mediator within {timeout:?}; it received: {seen:?}; errors: {:?}",
                    call_id.map(|c| format!(" for call {c}")).unwrap_or_default(),
                    g.errors
                );
            }
            g = cv.wait_timeout(g, end - now).unwrap().0;
        }
    }
}

impl Drop for Mediator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn record_error(state: &(Mutex<Received>, Condvar), e: String) {
    state
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .errors
        .push(e);
    state.1.notify_all();
}

/// One keep-alive connection: requests until the peer closes or the
/// mediator stops.
fn serve_conn(mut s: TcpStream, state: &(Mutex<Received>, Condvar), stop: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = s.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    while !stop.load(Ordering::Relaxed) {
        // A whole request in buf?
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(head)) => {
                let hdrs: BTreeMap<String, String> = req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).trim().to_string(),
                        )
                    })
                    .collect();
                let method = req.method.unwrap_or("").to_string();
                let path = req.path.unwrap_or("").to_string();
                let Some(len) = hdrs
                    .get("content-length")
                    .and_then(|v| v.parse::<usize>().ok())
                else {
                    record_error(
                        state,
                        format!("{method} {path} without a Content-Length: {hdrs:?}"),
                    );
                    let _ = s.write_all(
                        b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    return;
                };
                if buf.len() < head + len {
                    // Read the rest of the body.
                } else {
                    let body: Vec<u8> = buf[head..head + len].to_vec();
                    buf.drain(..head + len);
                    let close = hdrs
                        .get("connection")
                        .is_some_and(|c| c.eq_ignore_ascii_case("close"));
                    let answer = match serde_json::from_slice::<Value>(&body) {
                        Ok(v) => {
                            let id = v["id"].as_str().unwrap_or("").to_string();
                            {
                                let mut g = state.0.lock().unwrap_or_else(|p| p.into_inner());
                                g.pushes.push(Push {
                                    at: Instant::now(),
                                    method,
                                    path,
                                    headers: hdrs,
                                    body: v,
                                });
                            }
                            state.1.notify_all();
                            // A realistic push service round trip.
                            std::thread::sleep(standin_delay());
                            let a = json!({"id": id, "result": "sent", "platform_id": format!("e2e-{id}")})
                                .to_string();
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{a}",
                                a.len()
                            )
                        }
                        Err(e) => {
                            record_error(
                                state,
                                format!(
                                    "{method} {path}: body is not JSON ({e}): {:.300}",
                                    String::from_utf8_lossy(&body)
                                ),
                            );
                            "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_string()
                        }
                    };
                    if s.write_all(answer.as_bytes()).is_err() || close {
                        return;
                    }
                    continue;
                }
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => {
                record_error(
                    state,
                    format!(
                        "not an HTTP/1.1 request ({e}): {:.300}",
                        String::from_utf8_lossy(&buf)
                    ),
                );
                let _ = s.write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                return;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

// ---- sipp ----------------------------------------------------------------------------

/// How to run one sipp process.
#[derive(Debug, Clone)]
pub struct SippSpec {
    /// Names its files: `<name>.msg` (message log), `.err`, `.out`.
    pub name: String,
    /// A file of [`scenario_dir`].
    pub scenario: String,
    pub remote: Option<SocketAddr>,
    /// `-p`; 0 = a free port picked when it starts.
    pub local_port: u16,
    pub service: Option<String>,
    pub keys: Vec<(String, String)>,
    pub sets: Vec<(String, String)>,
    pub auth: Option<(String, String)>,
    pub auth_uri: Option<String>,
    pub ooc: Option<String>,
    /// `-d`: the length of a bare `<pause/>`, in ms.
    pub pause_ms: Option<u64>,
    /// `-t`: `u1` (UDP, sipp's default) when `None`; `t1` is one TCP
    /// connection for every call.
    pub transport: Option<String>,
    /// `-recv_timeout`: the longest any `<recv>` without its own timeout
    /// waits before the call fails.
    pub recv_timeout: Option<Duration>,
    pub timeout: Duration,
}

impl SippSpec {
    pub fn new(name: &str, scenario: &str) -> SippSpec {
        SippSpec {
            name: name.to_string(),
            scenario: scenario.to_string(),
            remote: None,
            local_port: 0,
            service: None,
            keys: Vec::new(),
            sets: Vec::new(),
            auth: None,
            auth_uri: None,
            ooc: None,
            pause_ms: None,
            transport: None,
            recv_timeout: None,
            timeout: SIPP_TIMEOUT,
        }
    }
    pub fn remote(mut self, a: SocketAddr) -> Self {
        self.remote = Some(a);
        self
    }
    pub fn port(mut self, p: u16) -> Self {
        self.local_port = p;
        self
    }
    pub fn service(mut self, s: &str) -> Self {
        self.service = Some(s.to_string());
        self
    }
    pub fn key(mut self, k: &str, v: &str) -> Self {
        self.keys.push((k.to_string(), v.to_string()));
        self
    }
    pub fn set(mut self, k: &str, v: &str) -> Self {
        self.sets.push((k.to_string(), v.to_string()));
        self
    }
    pub fn auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Some((user.to_string(), password.to_string()));
        self
    }
    pub fn auth_uri(mut self, uri: &str) -> Self {
        self.auth_uri = Some(uri.to_string());
        self
    }
    pub fn ooc(mut self, scenario: &str) -> Self {
        self.ooc = Some(scenario.to_string());
        self
    }
    pub fn pause_ms(mut self, ms: u64) -> Self {
        self.pause_ms = Some(ms);
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    pub fn transport(mut self, t: &str) -> Self {
        self.transport = Some(t.to_string());
        self
    }
    pub fn recv_timeout(mut self, t: Duration) -> Self {
        self.recv_timeout = Some(t);
        self
    }
    pub fn spawn(self, dir: &Path) -> Sipp {
        Sipp::spawn(self, dir)
    }
}

/// A running sipp.
pub struct Sipp {
    pub name: String,
    pub local_port: u16,
    child: Option<Child>,
    started: Instant,
    deadline: Instant,
    msg: PathBuf,
    err: PathBuf,
    out: PathBuf,
}

/// `SIPIS_SIPP`, else `sipp` on the usual paths or `PATH`.
fn sipp_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SIPIS_SIPP") {
        return PathBuf::from(p);
    }
    for p in ["/usr/bin/sipp", "/usr/local/bin/sipp"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("sipp"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{SIPP_INSTALL_HINT}"))
}

impl Sipp {
    pub fn spawn(spec: SippSpec, dir: &Path) -> Sipp {
        let local_port = if spec.local_port == 0 {
            free_udp_port()
        } else {
            spec.local_port
        };
        let file = |ext: &str| dir.join(format!("{}.{ext}", spec.name));
        let (msg, err, out) = (file("msg"), file("err"), file("out"));
        for p in [&msg, &err, &out] {
            assert!(!p.exists(), "two sipp runs named {} in one test", spec.name);
        }
        let scenarios = scenario_dir();
        let mut cmd = Command::new(sipp_binary());
        cmd.arg("-sf").arg(scenarios.join(&spec.scenario));
        if let Some(ooc) = &spec.ooc {
            cmd.arg("-oocsf").arg(scenarios.join(ooc));
        }
        if let Some(r) = spec.remote {
            cmd.arg(r.to_string());
        }
        cmd.args(["-i", "127.0.0.1", "-p"])
            .arg(local_port.to_string())
            .args(["-m", "1", "-nostdin"])
            .args(["-timeout"])
            .arg(format!("{}s", spec.timeout.as_secs().max(1)))
            .arg("-timeout_error")
            .arg("-trace_msg")
            .arg("-message_file")
            .arg(&msg)
            .arg("-trace_err")
            .arg("-error_file")
            .arg(&err);
        if let Some(s) = &spec.service {
            cmd.arg("-s").arg(s);
        }
        if let Some((u, p)) = &spec.auth {
            cmd.arg("-au").arg(u).arg("-ap").arg(p);
        }
        if let Some(u) = &spec.auth_uri {
            cmd.arg("-auth_uri").arg(u);
        }
        if let Some(d) = spec.pause_ms {
            cmd.arg("-d").arg(d.to_string());
        }
        if let Some(t) = &spec.transport {
            cmd.arg("-t").arg(t);
        }
        if let Some(t) = spec.recv_timeout {
            cmd.arg("-recv_timeout").arg(t.as_millis().to_string());
        }
        for (k, v) in &spec.keys {
            cmd.arg("-key").arg(k).arg(v);
        }
        for (k, v) in &spec.sets {
            cmd.arg("-set").arg(k).arg(v);
        }
        let out_file = std::fs::File::create(&out).expect("create sipp output file");
        cmd.current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out_file.try_clone().unwrap())
            .stderr(out_file);
        // SAFETY: prctl is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run sipp: {e}; {SIPP_INSTALL_HINT}"));
        let started = Instant::now();
        Sipp {
            name: spec.name,
            local_port,
            child: Some(child),
            started,
            deadline: started + spec.timeout + SIPP_GRACE,
            msg,
            err,
            out,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.local_port))
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// What it logged so far (it may still be running).
    pub fn messages(&self) -> Vec<SipMsg> {
        parse_message_log(&std::fs::read_to_string(&self.msg).unwrap_or_default())
    }

    /// Waits for it to exit (killing it at its deadline: its `-timeout`
    /// plus 5 s) and returns what it did.
    pub fn wait(mut self) -> SippRun {
        let mut child = self.child.take().expect("sipp child");
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() >= self.deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("waiting for sipp {}: {e}", self.name),
            }
        };
        self.run(status)
    }

    fn run(&self, status: Option<ExitStatus>) -> SippRun {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        SippRun {
            name: self.name.clone(),
            local_port: self.local_port,
            code: status.and_then(|s| s.code()),
            killed: status.is_none(),
            took: self.started.elapsed(),
            messages: parse_message_log(&read(&self.msg)),
            errors: read(&self.err),
            screen: read(&self.out),
        }
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What one sipp process did.
#[derive(Debug, Clone)]
pub struct SippRun {
    pub name: String,
    pub local_port: u16,
    /// Exit code: 0 = every call succeeded, 1 = a call failed, 255 = a
    /// fatal error or `-timeout`; `None` if the harness killed it.
    pub code: Option<i32>,
    pub killed: bool,
    pub took: Duration,
    pub messages: Vec<SipMsg>,
    pub errors: String,
    pub screen: String,
}

impl SippRun {
    /// Panics, with what it sent and received and its error log, unless
    /// it exited 0.
    pub fn assert_success(&self) {
        assert!(
            self.code == Some(0),
            "sipp {} {} after {:.1?}:\n{}\n--- errors ---\n{}",
            self.name,
            if self.killed {
                "was killed at its deadline".to_string()
            } else {
                format!("exited with {:?} (0 = all calls succeeded)", self.code)
            },
            self.took,
            transcript(&self.messages),
            self.errors.trim()
        );
    }

    pub fn transcript(&self) -> String {
        transcript(&self.messages)
    }

    pub fn sent(&self) -> impl Iterator<Item = &SipMsg> {
        self.messages.iter().filter(|m| m.sent)
    }

    pub fn received(&self) -> impl Iterator<Item = &SipMsg> {
        self.messages.iter().filter(|m| !m.sent)
    }

    /// The first request `method` it received.
    pub fn received_request(&self, method: &str) -> Option<&SipMsg> {
        self.received().find(|m| m.method() == Some(method))
    }

    /// Every request `method` it received (retransmissions included).
    pub fn received_requests(&self, method: &str) -> Vec<&SipMsg> {
        self.received()
            .filter(|m| m.method() == Some(method))
            .collect()
    }

    /// The first response `code` to a `cseq_method` request it received.
    pub fn received_response(&self, code: u16, cseq_method: &str) -> Option<&SipMsg> {
        self.received()
            .find(|m| m.status() == Some(code) && m.cseq_method() == Some(cseq_method))
    }

    pub fn sent_request(&self, method: &str) -> Option<&SipMsg> {
        self.sent().find(|m| m.method() == Some(method))
    }

    pub fn sent_response(&self, code: u16, cseq_method: &str) -> Option<&SipMsg> {
        self.sent()
            .find(|m| m.status() == Some(code) && m.cseq_method() == Some(cseq_method))
    }

    /// Like [`SippRun::received_request`], panicking with the transcript.
    pub fn expect_request(&self, method: &str) -> &SipMsg {
        self.received_request(method).unwrap_or_else(|| {
            panic!(
                "sipp {} received no {method}:\n{}",
                self.name,
                self.transcript()
            )
        })
    }

    /// Like [`SippRun::received_response`], panicking with the transcript.
    pub fn expect_response(&self, code: u16, cseq_method: &str) -> &SipMsg {
        self.received_response(code, cseq_method)
            .unwrap_or_else(|| {
                panic!(
                    "sipp {} received no {code} to {cseq_method}:\n{}",
                    self.name,
                    self.transcript()
                )
            })
    }

    pub fn expect_sent_request(&self, method: &str) -> &SipMsg {
        self.sent_request(method).unwrap_or_else(|| {
            panic!(
                "sipp {} sent no {method}:\n{}",
                self.name,
                self.transcript()
            )
        })
    }

    pub fn expect_sent_response(&self, code: u16, cseq_method: &str) -> &SipMsg {
        self.sent_response(code, cseq_method).unwrap_or_else(|| {
            panic!(
                "sipp {} sent no {code} to {cseq_method}:\n{}",
                self.name,
                self.transcript()
            )
        })
    }

    /// Position of a message in the log (for order checks).
    pub fn index_of(&self, m: &SipMsg) -> usize {
        self.messages
            .iter()
            .position(|x| std::ptr::eq(x, m))
            .expect("a message of this run")
    }
}

// ---- sipp's message log -------------------------------------------------------

/// One message of a sipp message log (`-trace_msg`).
#[derive(Debug, Clone, PartialEq)]
pub struct SipMsg {
    /// When sipp logged it: seconds since the Unix epoch (sipp's clock and
    /// time zone; only differences mean anything).
    pub at: f64,
    /// Sent by this sipp (else received).
    pub sent: bool,
    /// The message exactly as logged.
    pub raw: String,
    pub start_line: String,
    /// In order; names as written.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// Full names of the compact header forms (RFC 3261 §7.3.3 and others).
fn long_name(name: &str) -> &str {
    match name.to_ascii_lowercase().as_str() {
        "i" => "call-id",
        "f" => "from",
        "t" => "to",
        "m" => "contact",
        "v" => "via",
        "l" => "content-length",
        "c" => "content-type",
        "k" => "supported",
        "s" => "subject",
        "e" => "content-encoding",
        "o" => "event",
        "r" => "refer-to",
        "u" => "allow-events",
        "x" => "session-expires",
        _ => name,
    }
}

fn same_header(a: &str, b: &str) -> bool {
    long_name(a).eq_ignore_ascii_case(long_name(b))
}

impl SipMsg {
    /// Parses one message: start line, headers (folded lines joined), body
    /// (Content-Length bytes if given, else the rest).
    pub fn parse(raw: &str, sent: bool, at: f64) -> SipMsg {
        let (head, rest) = match raw.find("\r\n\r\n") {
            Some(i) => (&raw[..i], &raw[i + 4..]),
            None => (raw.trim_end(), ""),
        };
        let mut lines = head.split("\r\n");
        let start_line = lines.next().unwrap_or("").to_string();
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = headers.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
                continue;
            }
            if let Some((n, v)) = line.split_once(':') {
                headers.push((n.trim().to_string(), v.trim().to_string()));
            }
        }
        let mut m = SipMsg {
            at,
            sent,
            raw: raw.to_string(),
            start_line,
            headers,
            body: String::new(),
        };
        let body = match m
            .header("Content-Length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            Some(n) if n <= rest.len() => &rest[..n],
            _ => rest,
        };
        m.body = body.to_string();
        m
    }

    /// The first header `name` (compact forms count), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| same_header(n, name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header `name`, in order.
    pub fn all_headers(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| same_header(n, name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// `INVITE` for `INVITE sip:... SIP/2.0`; `None` for a response.
    pub fn method(&self) -> Option<&str> {
        if self.start_line.starts_with("SIP/") {
            None
        } else {
            self.start_line.split(' ').next()
        }
    }

    /// The Request-URI of a request.
    pub fn request_uri(&self) -> Option<&str> {
        self.method()?;
        self.start_line.split(' ').nth(1)
    }

    pub fn status(&self) -> Option<u16> {
        let rest = self.start_line.strip_prefix("SIP/2.0 ")?;
        rest.get(..3)?.parse().ok()
    }

    pub fn call_id(&self) -> Option<&str> {
        self.header("Call-ID")
    }

    /// The method of the CSeq header.
    pub fn cseq_method(&self) -> Option<&str> {
        self.header("CSeq")?.split_whitespace().nth(1)
    }

    /// The top Via's branch.
    pub fn branch(&self) -> Option<&str> {
        let via = self.header("Via")?;
        via.split(';')
            .filter_map(|p| p.trim().split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("branch"))
            .map(|(_, v)| v.trim())
    }

    /// The display name of a From/To value, unquoted (`"Bob" <sip:..>` →
    /// `Bob`); `None` without one.
    pub fn display_name(value: &str) -> Option<String> {
        let lt = value.find('<')?;
        let name = value[..lt].trim();
        if name.is_empty() {
            return None;
        }
        let unquoted = name
            .strip_prefix('"')
            .and_then(|n| n.strip_suffix('"'))
            .unwrap_or(name);
        Some(unquoted.replace("\\\"", "\"").replace("\\\\", "\\"))
    }

    /// The URI of a From/To/Contact value, without parameters outside `<>`.
    pub fn uri_of(value: &str) -> &str {
        match (value.find('<'), value.find('>')) {
            (Some(a), Some(b)) if a < b => &value[a + 1..b],
            _ => value.split(';').next().unwrap_or(value).trim(),
        }
    }

    /// The `tag` parameter of a From/To value.
    pub fn tag_of(value: &str) -> Option<&str> {
        let params = match value.rfind('>') {
            Some(i) => &value[i + 1..],
            None => value,
        };
        params
            .split(';')
            .filter_map(|p| p.trim().split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("tag"))
            .map(|(_, v)| v.trim())
    }

    /// One line: `→ INVITE sip:.. [Call-ID]` / `← 180 Ringing (INVITE)`.
    pub fn summary(&self) -> String {
        let arrow = if self.sent { "→" } else { "←" };
        match self.status() {
            Some(_) => format!(
                "{arrow} {} ({}) [{}]",
                self.start_line.trim_start_matches("SIP/2.0 "),
                self.header("CSeq").unwrap_or("?"),
                self.call_id().unwrap_or("?")
            ),
            None => format!(
                "{arrow} {} [{}]",
                self.start_line.trim_end_matches(" SIP/2.0"),
                self.call_id().unwrap_or("?")
            ),
        }
    }
}

/// One line per message, with the time since the first.
pub fn transcript(msgs: &[SipMsg]) -> String {
    let t0 = msgs.first().map_or(0.0, |m| m.at);
    if msgs.is_empty() {
        return "(no messages)".into();
    }
    msgs.iter()
        .map(|m| format!("{:>8.3}s {}", m.at - t0, m.summary()))
        .collect::<Vec<_>>()
        .join("\n")
}

const LOG_SEPARATOR: &str = "----------------------------------------------- ";

/// Parses a sipp `-message_file`:
///
/// ```text
/// ----------------------------------------------- 2026-11-22 00:41:35.752260
/// UDP message sent (378 bytes):
///
/// <378 bytes>
///
/// ----------------------------------------------- 2026-11-22 00:41:35.753602
/// UDP message received [329] bytes :
///
/// <329 bytes>
/// ```
pub fn parse_message_log(text: &str) -> Vec<SipMsg> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(found) = text[pos..].find(LOG_SEPARATOR) {
        let start = pos + found;
        let after_sep = start + LOG_SEPARATOR.len();
        let Some(eol) = text[after_sep..].find('\n') else {
            break;
        };
        let stamp = text[after_sep..after_sep + eol].trim();
        let at = parse_stamp(stamp).unwrap_or(0.0);
        let line2_start = after_sep + eol + 1;
        let Some(eol2) = text[line2_start..].find('\n') else {
            break;
        };
        let what = &text[line2_start..line2_start + eol2];
        let sent = what.contains(" sent ");
        let declared = what
            .split(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())
            .and_then(|s| s.parse::<usize>().ok());
        // A blank line, then the message.
        let mut body_start = line2_start + eol2 + 1;
        if text[body_start..].starts_with('\n') {
            body_start += 1;
        }
        let next = text[body_start..]
            .find(&format!("\n{LOG_SEPARATOR}"))
            .map_or(text.len(), |i| body_start + i + 1);
        let raw = match declared {
            Some(n) if body_start + n <= next && text.is_char_boundary(body_start + n) => {
                &text[body_start..body_start + n]
            }
            _ => text[body_start..next].trim_end_matches('\n'),
        };
        if what.contains("message") {
            out.push(SipMsg::parse(raw, sent, at));
        }
        pos = next;
    }
    out
}

/// `2026-11-22 00:41:35.752260` (or with a tab) → seconds since the epoch.
fn parse_stamp(s: &str) -> Option<f64> {
    let mut parts = s.split([' ', '\t']).filter(|p| !p.is_empty());
    let date = parts.next()?;
    let time = parts.next()?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, mo, da) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let h: f64 = t.next()?.parse().ok()?;
    let mi: f64 = t.next()?.parse().ok()?;
    let sec: f64 = t.next()?.parse().ok()?;
    Some(days_from_civil(y, mo, da) as f64 * 86400.0 + h * 3600.0 + mi * 60.0 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// Re-exported for the tests' Kamailio checks.
pub use kamailio::check_config;
