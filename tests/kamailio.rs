//! End to end against a real Kamailio registrar (tests/support/kamailio.rs):
//! 10 000 accounts provisioned through the admin API register with digest
//! auth; Kamailio's own location table (read through its RPC) must hold
//! exactly those AoRs, each with the one Contact the admin API's token
//! names; a restart of sipis must refresh every binding with the same
//! Call-ID and a higher CSeq (no duplicates); an account with a wrong
//! password must end `failed` without a retry storm.
//!
//! It prints (stderr; run with `--nocapture`) the REGISTER rate sipis
//! sustained and the CPU time both sides spent, for `bench/RESULTS.md`.
//!
//! sipis runs as the `sipis serve` binary when that works (its CPU time is
//! then its own process's), else in this process (`Server::start`; CPU time
//! = this process minus the test thread).
//!
//! Environment:
//! - `SIPIS_KAM_INPROCESS=1`: run sipis in this process even so.
//! - `SIPIS_KAM_RATE=N`: `sip.register_rate` per shard (default 2000; the
//!   rate limiter then bounds the waves at 2 x 2000 REGISTERs/s).
//! - `SIPIS_KAMAILIO=PATH`: the `kamailio` binary to run.
//!
//! Kamailio not installed: the test fails saying `apt-get install kamailio`.
//! Run time: about 20 s (2 cores, test profile).

#[path = "support/kamailio.rs"]
mod kamailio;
#[path = "support/ports.rs"]
mod ports;

use kamailio::{Kamailio, Location};
use serde_json::{json, Value};
use sipis::config::Config;
use sipis::runtime::{shard_of, Server};
use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Accounts that must register.
const ACCOUNTS: usize = 10_000;
/// Of those, created one by one with `POST /accounts` (the rest by CSV).
const POSTED: usize = 5;
const DOMAIN: &str = "kam.test";
const SHARDS: usize = 2;
const EXPIRES: u32 = 600;
const ADMIN_TOKEN: &str = "kamailio-e2e-admin-token-0123456789";

/// REGISTERs per second per shard: `SIPIS_KAM_RATE`, default 2000 (the
/// rate limiter, not the CPU, is then what bounds the initial wave).
fn register_rate() -> u32 {
    std::env::var("SIPIS_KAM_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Bounds of the waits.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(120);
const FAILED_TIMEOUT: Duration = Duration::from_secs(30);

// ---- admin API client ---------------------------------------------------

struct Admin {
    agent: ureq::Agent,
    base: String,
    auth: String,
}

impl Admin {
    fn new(addr: &str) -> Admin {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Admin {
            agent,
            base: format!("http://{addr}"),
            auth: format!("Bearer {ADMIN_TOKEN}"),
        }
    }

    fn finish(
        what: &str,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> (u16, String) {
        let mut resp = resp.unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"));
        (status, body)
    }

    fn get_text(&self, path: &str) -> (u16, String) {
        let resp = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
            .call();
        Admin::finish(&format!("GET {path}"), resp)
    }

    fn get(&self, path: &str) -> Value {
        let (status, body) = self.get_text(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body:.300}"))
    }

    fn post(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let resp = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
            .header("Content-Type", content_type)
            .send(body);
        let (status, body) = Admin::finish(&format!("POST {path}"), resp);
        let v =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("POST {path}: {e}: {body:.300}"));
        (status, v)
    }

    fn healthy(&self) -> bool {
        let resp = self.agent.get(format!("{}/health", self.base)).call();
        matches!(resp, Ok(r) if r.status().as_u16() == 200)
    }

    /// Every account, paging through `GET /accounts`.
    fn list_all(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0u64;
        for _ in 0..100 {
            let page = self.get(&format!("/accounts?after={after}&limit=1000"));
            let accounts = page["accounts"].as_array().expect("accounts array");
            out.extend(accounts.iter().cloned());
            match page["next_after"].as_u64() {
                Some(n) if !accounts.is_empty() => after = n,
                _ => return out,
            }
        }
        panic!("GET /accounts did not end within 100 pages");
    }

    /// `GET /metrics`.
    fn metrics(&self) -> String {
        let (status, text) = self.get_text("/metrics");
        assert_eq!(status, 200, "GET /metrics: {text:.300}");
        text
    }
}

// ---- sipis, as a binary or in this process ------------------------------

enum Running {
    Binary(Child),
    InProcess(Server),
}

struct Sipis {
    running: Option<Running>,
    admin: Admin,
    /// Output of `sipis serve`.
    log: PathBuf,
}

impl Sipis {
    /// Starts sipis on `config_path` (whose text is `config`) and waits
    /// for its admin API.
    fn start(config_path: &Path, config: &Config, log: &Path) -> Sipis {
        let admin = Admin::new(&config.admin.listen.to_string());
        let in_process = std::env::var("SIPIS_KAM_INPROCESS").is_ok_and(|v| v == "1");
        if !in_process {
            if let Some(child) = start_binary(config_path, log, &admin) {
                eprintln!("sipis: `sipis serve` binary, pid {}", child.id());
                return Sipis {
                    running: Some(Running::Binary(child)),
                    admin,
                    log: log.to_path_buf(),
                };
            }
        }
        let server = Server::start(config).unwrap_or_else(|e| panic!("sipis does not start: {e}"));
        eprintln!("sipis: in this process (Server::start)");
        let end = Instant::now() + Duration::from_secs(10);
        while !admin.healthy() {
            assert!(
                Instant::now() < end,
                "sipis admin API not healthy within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Sipis {
            running: Some(Running::InProcess(server)),
            admin,
            log: log.to_path_buf(),
        }
    }

    fn is_binary(&self) -> bool {
        matches!(self.running, Some(Running::Binary(_)))
    }

    /// Where sipis's CPU time is read.
    fn cpu(&self) -> Cpu {
        match &self.running {
            Some(Running::Binary(c)) => Cpu::Process(c.id()),
            _ => Cpu::ThisProcess,
        }
    }

    /// Stops sipis without unregistering its accounts.
    fn stop(&mut self) {
        match self.running.take() {
            Some(Running::InProcess(server)) => server.stop(false),
            Some(Running::Binary(mut child)) => {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                let end = Instant::now() + Duration::from_secs(30);
                loop {
                    match child.try_wait() {
                        Ok(Some(status)) => {
                            assert!(
                                status.success(),
                                "sipis serve exited with {status} on SIGTERM"
                            );
                            break;
                        }
                        _ if Instant::now() > end => {
                            let _ = child.kill();
                            let _ = child.wait();
                            panic!("sipis serve did not stop within 30 s of SIGTERM");
                        }
                        _ => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
            None => {}
        }
    }
}

impl Drop for Sipis {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!("--- sipis log (last 40 lines) ---\n{tail}\n---");
        }
        match self.running.take() {
            Some(Running::Binary(mut c)) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            Some(Running::InProcess(s)) => s.stop(false),
            None => {}
        }
    }
}

/// `sipis serve --config FILE`; `None` if this build's `serve` does not
/// run the server yet.
fn start_binary(config_path: &Path, log: &Path, admin: &Admin) -> Option<Child> {
    let out = std::fs::File::create(log).expect("create sipis log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sipis"));
    cmd.arg("serve")
        .arg("--config")
        .arg(config_path)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork
    // and exec.
    unsafe {
        cmd.pre_exec(|| {
            // Stop sipis if the test dies without running Drop.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("run the sipis binary");
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains("runtime not built yet") {
                eprintln!(
                    "sipis: `sipis serve` does not run the server yet; starting it in-process"
                );
                return None;
            }
            panic!("sipis serve exited at start-up ({status}):\n{text}");
        }
        if admin.healthy() {
            return Some(child);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "sipis serve: admin API not healthy within 15 s:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_ticks(path: impl AsRef<Path>) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| kamailio::stat_cpu_ticks(&s))
        .unwrap_or(0)
}

/// Where sipis's CPU time is: the `sipis serve` process, or this process
/// minus the test's own thread.
#[derive(Clone, Copy)]
enum Cpu {
    Process(u32),
    ThisProcess,
}

impl Cpu {
    /// Total CPU ticks, and per thread name (threads that exited are only
    /// in the total, shown as "(exited threads)").
    fn ticks(self) -> (u64, BTreeMap<String, u64>) {
        let (dir, skip) = match self {
            Cpu::Process(pid) => (PathBuf::from(format!("/proc/{pid}")), None),
            Cpu::ThisProcess => {
                let me = std::fs::read_link("/proc/thread-self").ok();
                let tid =
                    me.and_then(|p| p.file_name().and_then(|f| f.to_str()).map(str::to_string));
                (PathBuf::from("/proc/self"), tid)
            }
        };
        let mut total = read_ticks(dir.join("stat"));
        let mut threads = BTreeMap::new();
        let mut live = 0;
        for e in std::fs::read_dir(dir.join("task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let tid = e.file_name().to_string_lossy().to_string();
            let t = read_ticks(e.path().join("stat"));
            if skip.as_deref() == Some(tid.as_str()) {
                total = total.saturating_sub(t);
                continue;
            }
            let name = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            *threads.entry(name.trim().to_string()).or_insert(0) += t;
            live += t;
        }
        threads.insert("(exited threads)".into(), total.saturating_sub(live));
        (total, threads)
    }
}

// ---- helpers --------------------------------------------------------------

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `n` consecutive free UDP ports on loopback.
fn free_udp_ports(n: u16) -> u16 {
    ports::free_udp_port_run(n)
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn user(i: usize) -> String {
    format!("u{i}")
}

/// Polls `f` every `every` until it returns `Some`, at most `timeout`.
fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(every);
    }
}

/// Compares Kamailio's location table with the expected AoR → Contact
/// map: the same AoRs, one contact each, that contact. Returns the
/// problems (at most a few of each kind).
fn location_problems(loc: &Location, expected: &BTreeMap<String, String>) -> Vec<String> {
    let have: BTreeSet<&String> = loc.keys().collect();
    let want: BTreeSet<&String> = expected.keys().collect();
    let mut problems = Vec::new();
    let missing: Vec<_> = want.difference(&have).collect();
    let extra: Vec<_> = have.difference(&want).collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} AoRs missing, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    if !extra.is_empty() {
        problems.push(format!(
            "{} unexpected AoRs, e.g. {:?}",
            extra.len(),
            &extra[..extra.len().min(5)]
        ));
    }
    let mut multi = 0;
    let mut wrong = 0;
    for (aor, contacts) in loc {
        let Some(want) = expected.get(aor) else {
            continue;
        };
        if contacts.len() != 1 {
            multi += 1;
            if multi <= 3 {
                problems.push(format!(
                    "{aor} has {} contacts: {contacts:?}",
                    contacts.len()
                ));
            }
        } else if &contacts[0].address != want {
            wrong += 1;
            if wrong <= 3 {
                problems.push(format!(
                    "{aor}: contact {:?}, expected {want:?}",
                    contacts[0].address
                ));
            }
        }
    }
    if multi > 3 || wrong > 3 {
        problems.push(format!(
            "in all: {multi} AoRs without exactly one contact, {wrong} wrong contacts"
        ));
    }
    problems
}

fn secs(ticks: u64) -> f64 {
    ticks as f64 / kamailio::ticks_per_second() as f64
}

/// Counters at one instant, to measure a registration wave.
struct Mark {
    at: Instant,
    /// REGISTERs Kamailio received.
    registers: i64,
    /// Kamailio's CPU ticks: SIP processes, RPC processes.
    kam: (u64, u64),
    /// sipis's CPU ticks, and per thread.
    sipis: (u64, BTreeMap<String, u64>),
}

impl Mark {
    fn take(kam: &mut Kamailio, sipis: Option<Cpu>) -> Mark {
        Mark {
            at: Instant::now(),
            registers: kam.stat("core:rcv_requests_register"),
            kam: kam.cpu_ticks(),
            sipis: sipis.map(Cpu::ticks).unwrap_or_default(),
        }
    }
}

/// sipis's CPU time between two marks, per thread.
fn by_thread(m0: &Mark, m1: &Mark) -> String {
    let threads: Vec<String> = m1
        .sipis
        .1
        .iter()
        .map(|(name, t)| {
            (
                name,
                t.saturating_sub(m0.sipis.1.get(name).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, t)| *t > 0)
        .map(|(name, t)| format!("{name} {:.2} s", secs(t)))
        .collect();
    threads.join(", ")
}

/// Prints what the wave between two marks cost.
fn print_wave(what: &str, m0: &Mark, m1: &Mark) {
    let seconds = m1.at.duration_since(m0.at).as_secs_f64();
    let registers = m1.registers - m0.registers;
    let kam = secs(m1.kam.0 - m0.kam.0);
    let kam_rpc = secs(m1.kam.1 - m0.kam.1);
    let sip = secs(m1.sipis.0.saturating_sub(m0.sipis.0));
    let per = |s: f64| s * 1e6 / registers.max(1) as f64;
    eprintln!(
        "RESULT {what}: {ACCOUNTS} accounts bound in {seconds:.2} s = {:.0} accounts/s; \
         Kamailio received {registers} REGISTERs ({:.0}/s, {:.2} per account); \
         CPU: Kamailio {kam:.2} s = {:.1} us/REGISTER (plus {kam_rpc:.2} s answering the test's RPC), \
         sipis {sip:.2} s = {:.1} us/REGISTER",
        ACCOUNTS as f64 / seconds,
        registers as f64 / seconds,
        registers as f64 / ACCOUNTS as f64,
        per(kam),
        per(sip),
    );
    eprintln!("  sipis CPU by thread: {}", by_thread(m0, m1));
}

/// A sample of a Prometheus text exposition (summed over its labels).
fn metric(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, v) = l.rsplit_once(' ')?;
            (key.split('{').next()? == name).then(|| v.parse().ok())?
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

fn print_sipis_metrics(admin: &Admin, label: &str) {
    // The shards publish their counters every second.
    std::thread::sleep(Duration::from_millis(1100));
    let text = admin.metrics();
    let parts: Vec<String> = [
        "sipis_register_sent_total",
        "sipis_register_ok_total",
        "sipis_register_failed_total",
        "sipis_client_tx_timeouts_total",
        "sipis_stray_responses_total",
        "sipis_parse_errors_total",
        "sipis_store_failed_writes_total",
    ]
    .iter()
    .map(|n| {
        let v = metric(&text, n).map_or("?".into(), |v| v.to_string());
        format!("{}={v}", n.trim_start_matches("sipis_"))
    })
    .collect();
    eprintln!("sipis metrics ({label}): {}", parts.join(" "));
}

/// Waits until the account is `failed`; returns its view.
fn wait_failed(admin: &Admin, id: u64) -> Value {
    let mut last = Value::Null;
    let view = (|| {
        let end = Instant::now() + FAILED_TIMEOUT;
        while Instant::now() < end {
            let v = admin.get(&format!("/accounts/{id}"));
            if v["status"]["state"] == "failed" {
                return Some(v);
            }
            last = v;
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    })();
    view.unwrap_or_else(|| {
        panic!("the wrong-password account is not `failed` within {FAILED_TIMEOUT:?}: {last}")
    })
}

// ---- the test ---------------------------------------------------------------

#[test]
fn ten_thousand_accounts_register_at_kamailio_and_survive_a_restart() {
    let test_start = Instant::now();
    let mut kam = Kamailio::start();
    let data = TempDir::new("sipis-kam-data");
    let sip_port = free_udp_ports(1 + SHARDS as u16);
    let admin_port = free_tcp_port();
    let config_text = format!(
        r#"
[server]
bind = "127.0.0.1"
public_host = "127.0.0.1"
sip_port = {sip_port}
shards = {SHARDS}
data_dir = "{data}"
unregister_on_shutdown = false

[sip]
register_rate = {rate}

[admin]
listen = "127.0.0.1:{admin_port}"
token = "{ADMIN_TOKEN}"

[log]
level = "warn"
"#,
        data = data.0.display(),
        rate = register_rate(),
    );
    let config =
        Config::from_toml_str(&config_text).unwrap_or_else(|e| panic!("test config: {e:?}"));
    let config_path = data.0.join("sipis.toml");
    std::fs::write(&config_path, &config_text).unwrap();
    let shard_port = |id: u64| sip_port + 1 + shard_of(id, SHARDS) as u16;
    let registrar = format!("sip:127.0.0.1:{}", kam.port());

    let mut sipis = Sipis::start(&config_path, &config, &data.0.join("sipis-1.log"));

    // ---- 1. provision 10 000 accounts and one with a wrong password -------
    let m0 = Mark::take(&mut kam, Some(sipis.cpu()));
    let start = m0.at;
    let mut tokens: BTreeMap<String, (u64, String)> = BTreeMap::new(); // aor → (id, token)
    for i in 1..=POSTED {
        let body = json!({
            "aor": format!("sip:{}@{DOMAIN}", user(i)),
            "auth_user": user(i),
            "password": format!("pw-{}", user(i)),
            "registrar": registrar,
            "expires": EXPIRES,
        });
        let (status, v) = sipis.admin.post(
            "/accounts",
            "application/json",
            body.to_string().into_bytes(),
        );
        assert_eq!(status, 201, "POST /accounts: {v}");
        let id = v["id"].as_u64().expect("id");
        let token = v["token"].as_str().expect("token").to_string();
        assert!(v["status"]["state"].is_string(), "{v}");
        tokens.insert(format!("{}@{DOMAIN}", user(i)), (id, token));
    }
    let mut csv =
        String::from("aor,auth_user,password,ha1,registrar,outbound_proxy,expires,enabled\n");
    for i in POSTED + 1..=ACCOUNTS {
        let u = user(i);
        csv.push_str(&format!(
            "sip:{u}@{DOMAIN},{u},pw-{u},,{registrar},,{EXPIRES},true\n"
        ));
    }
    let (status, v) = sipis
        .admin
        .post("/accounts/import", "text/csv", csv.into_bytes());
    assert_eq!(status, 200, "POST /accounts/import: {v}");
    assert_eq!(
        v["imported"].as_u64(),
        Some((ACCOUNTS - POSTED) as u64),
        "{v}"
    );
    let bad = json!({
        "aor": format!("sip:bad@{DOMAIN}"),
        "auth_user": "bad",
        "password": "not-the-password",
        "registrar": registrar,
        "expires": EXPIRES,
    });
    let (status, v) = sipis.admin.post(
        "/accounts",
        "application/json",
        bad.to_string().into_bytes(),
    );
    assert_eq!(status, 201, "POST /accounts (bad): {v}");
    let bad_id = v["id"].as_u64().expect("id");
    let provisioned = start.elapsed();

    // ---- 2. wait for Kamailio to hold 10 000 bindings ------------------------
    let mut last_report = Instant::now();
    wait_for(
        "10 000 bindings at Kamailio",
        REGISTER_TIMEOUT,
        Duration::from_millis(50),
        || {
            let n = kam.stat("usrloc:location_contacts");
            if last_report.elapsed() > Duration::from_secs(5) {
                eprintln!("  {:.1} s: {n} bindings", start.elapsed().as_secs_f64());
                last_report = Instant::now();
            }
            (n >= ACCOUNTS as i64).then_some(())
        },
    );
    let m1 = Mark::take(&mut kam, Some(sipis.cpu()));
    eprintln!(
        "provisioning (5 POSTs, CSV import of {}, 1 POST) took {provisioned:.2?}",
        ACCOUNTS - POSTED
    );
    print_wave("initial registration", &m0, &m1);
    // Kamailio really challenged: one 401 per account (two for `bad`).
    let challenges = kam.stat("sl:401_replies");
    assert!(
        challenges > ACCOUNTS as i64,
        "Kamailio sent {challenges} 401 challenges for {ACCOUNTS} accounts"
    );
    print_sipis_metrics(&sipis.admin, "after the initial registration");

    // Tokens of the imported accounts, from the admin API.
    let listed = sipis.admin.list_all();
    assert_eq!(
        listed.len(),
        ACCOUNTS + 1,
        "GET /accounts lists every account"
    );
    for a in &listed {
        let aor = a["aor"].as_str().expect("aor");
        let key = aor.trim_start_matches("sip:").to_string();
        let id = a["id"].as_u64().expect("id");
        let token = a["token"].as_str().expect("token").to_string();
        if let Some((pid, ptok)) = tokens.get(&key) {
            assert_eq!((pid, ptok), (&id, &token), "{aor}: POST and GET disagree");
        }
        tokens.insert(key, (id, token));
    }
    let expected: BTreeMap<String, String> = tokens
        .iter()
        .filter(|(aor, _)| !aor.starts_with("bad@"))
        .map(|(aor, (id, token))| {
            (
                aor.clone(),
                format!("sip:{token}@127.0.0.1:{}", shard_port(*id)),
            )
        })
        .collect();
    assert_eq!(expected.len(), ACCOUNTS);
    let distinct: BTreeSet<&String> = expected.values().collect();
    assert_eq!(
        distinct.len(),
        ACCOUNTS,
        "every account has its own contact (token)"
    );

    let t = Instant::now();
    let loc = kam.dump();
    eprintln!("ul.dump of {} AoRs took {:.2?}", loc.len(), t.elapsed());
    let problems = location_problems(&loc, &expected);
    assert!(
        problems.is_empty(),
        "Kamailio's location table after the initial registration:\n{}",
        problems.join("\n")
    );
    assert_eq!(kam.stat("usrloc:location_contacts"), ACCOUNTS as i64);

    // ---- 4a. the wrong password: failed, not retried --------------------------
    let v = wait_failed(&sipis.admin, bad_id);
    let err = v["status"]["last_error"].as_str().unwrap_or("").to_string();
    assert!(
        err.contains("401") || err.contains("rejected"),
        "last_error of the wrong-password account should say it was rejected: {v}"
    );
    let bad_run1 = kam.shv("bad_registers");
    eprintln!(
        "wrong-password account: {:?}, {bad_run1} REGISTERs at Kamailio",
        err
    );
    assert!(
        (2..=3).contains(&bad_run1),
        "REGISTERs of the wrong-password account: {bad_run1}"
    );

    // What sipis costs with nothing to send (no refresh is due for 60 s).
    let idle0 = Mark::take(&mut kam, Some(sipis.cpu()));
    std::thread::sleep(Duration::from_secs(2));
    let idle1 = Mark::take(&mut kam, Some(sipis.cpu()));
    let idle_s = idle1.at.duration_since(idle0.at).as_secs_f64();
    eprintln!(
        "idle for {idle_s:.1} s ({} REGISTERs): sipis CPU {:.2} s = {:.1}% of a core ({})",
        idle1.registers - idle0.registers,
        secs(idle1.sipis.0 - idle0.sipis.0),
        secs(idle1.sipis.0 - idle0.sipis.0) * 100.0 / idle_s,
        by_thread(&idle0, &idle1),
    );

    // ---- 3. restart sipis: same Call-IDs, higher CSeqs, no duplicates --------
    sipis.stop();
    // Nothing was unregistered; this dump is the reference: what the first
    // instance left, after its last REGISTER.
    let before = kam.dump();
    let problems = location_problems(&before, &expected);
    assert!(
        problems.is_empty(),
        "after stopping sipis (no unregister):\n{}",
        problems.join("\n")
    );
    for (aor, c) in &before {
        assert_eq!(
            c[0].call_id, loc[aor][0].call_id,
            "{aor}: Call-ID changed while sipis ran"
        );
    }
    let call_ids: BTreeSet<&String> = before.values().map(|c| &c[0].call_id).collect();
    assert_eq!(call_ids.len(), ACCOUNTS, "one Call-ID per binding");

    let accepted0 = kam.stat("registrar:accepted_regs");
    // A new sipis process starts from zero; in this process, from now.
    let in_process = matches!(sipis.cpu(), Cpu::ThisProcess);
    let m0 = Mark::take(&mut kam, in_process.then_some(Cpu::ThisProcess));
    let restart = m0.at;
    sipis = Sipis::start(&config_path, &config, &data.0.join("sipis-2.log"));
    let mut last_report = Instant::now();
    wait_for(
        "10 000 refreshes after the restart",
        REGISTER_TIMEOUT,
        Duration::from_millis(50),
        || {
            let n = kam.stat("registrar:accepted_regs") - accepted0;
            if last_report.elapsed() > Duration::from_secs(5) {
                eprintln!(
                    "  {:.1} s after restart: {n} REGISTERs accepted",
                    restart.elapsed().as_secs_f64()
                );
                last_report = Instant::now();
            }
            (n >= ACCOUNTS as i64).then_some(())
        },
    );
    let m1 = Mark::take(&mut kam, Some(sipis.cpu()));
    print_wave(
        "re-registration after restart (start-up included)",
        &m0,
        &m1,
    );

    // Every binding refreshed: same Call-ID, higher CSeq. The accepted
    // count can include a binding twice, so re-read until all are (bounded).
    let mut after = Location::new();
    let mut stale: Vec<String> = Vec::new();
    for attempt in 0..30 {
        after = kam.dump();
        let problems = location_problems(&after, &expected);
        assert!(
            problems.is_empty(),
            "after the restart:\n{}",
            problems.join("\n")
        );
        stale.clear();
        for (aor, c) in &after {
            let old = &before[aor][0];
            assert_eq!(
                c[0].call_id, old.call_id,
                "{aor}: the restarted sipis registered a new Call-ID (was {:?}, CSeq {})",
                old.call_id, old.cseq
            );
            if c[0].cseq <= old.cseq {
                stale.push(format!("{aor} (CSeq {} → {})", old.cseq, c[0].cseq));
            }
        }
        if stale.is_empty() {
            break;
        }
        eprintln!(
            "  dump {attempt}: {} bindings not refreshed yet",
            stale.len()
        );
        assert!(
            restart.elapsed() < REGISTER_TIMEOUT,
            "bindings not refreshed in time"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        stale.is_empty(),
        "{} bindings not refreshed after the restart, e.g. {:?}",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
    assert_eq!(after.len(), ACCOUNTS);
    assert_eq!(
        kam.stat("usrloc:location_contacts"),
        ACCOUNTS as i64,
        "no duplicate bindings"
    );
    let steps: BTreeMap<u64, usize> = after.iter().fold(BTreeMap::new(), |mut m, (aor, c)| {
        *m.entry(c[0].cseq - before[aor][0].cseq).or_default() += 1;
        m
    });
    eprintln!("CSeq steps across the restart (step: bindings): {steps:?}");
    print_sipis_metrics(&sipis.admin, "after the restart");

    // ---- 4b. the wrong password after the restart ---------------------------
    let v = wait_failed(&sipis.admin, bad_id);
    let bad_total = kam.shv("bad_registers");
    eprintln!(
        "wrong-password account after the restart: {:?}; REGISTERs at Kamailio: {bad_run1} before, {} after the restart",
        v["status"]["last_error"],
        bad_total - bad_run1
    );
    assert!(
        bad_total - bad_run1 <= 3,
        "the restarted sipis sent the wrong-password account {} REGISTERs",
        bad_total - bad_run1
    );
    assert_eq!(kam.stat("usrloc:location_contacts"), ACCOUNTS as i64);

    let mode = if sipis.is_binary() {
        "the sipis binary"
    } else {
        "in this process"
    };
    sipis.stop();
    eprintln!("sipis ran {mode}; whole test {:.1?}", test_start.elapsed());
    // Every REGISTER sipis sent passed Kamailio's sanity checks and was
    // saved (the script logs both failures).
    let log = kam.log();
    let rejected: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("sanity check failed") || l.contains("save(location) failed"))
        .take(5)
        .collect();
    assert!(
        rejected.is_empty(),
        "Kamailio refused REGISTERs:\n{}",
        rejected.join("\n")
    );
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARNING") || l.contains("ERROR"))
        .take(10)
        .collect();
    if !warnings.is_empty() {
        eprintln!(
            "Kamailio warnings/errors (first 10):\n{}",
            warnings.join("\n")
        );
    }
}
