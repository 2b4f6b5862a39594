//! `sipis serve` as a child process for the security end-to-end tests
//! (tests/security_e2e.rs): its configuration written as TOML (checked with
//! `Config::from_toml_str` first), plain-text logs captured to a file, the
//! admin API and `/metrics` over [`Http1`](crate::http1::Http1), its RSS
//! read from `/proc/<pid>/status`; and [`Uac`], a bare UDP SIP client on a
//! chosen loopback address (127.0.0.2, 127.0.0.3… are all local), which
//! builds requests, collects answers and answers digest challenges with
//! `sipis::digest::write_authorization`.

#![allow(dead_code)]

use crate::http1::Http1;
use serde_json::{json, Value};
use sipis::config::Config;
use sipis::digest::{write_authorization, Account as DigestAccount, Challenge, Secret};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const ADMIN_TOKEN: &str = "security-e2e-admin-token-0123456789abcdef";
/// The accounts' domain: AORs are `sip:<user>@sec.test`.
pub const DOMAIN: &str = "sec.test";
/// `calls.phone_realm` (the default).
pub const REALM: &str = "sipis";

static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// A provisioned account (proxy mode: no registrar upstream).
#[derive(Debug, Clone)]
pub struct Account {
    pub id: u64,
    pub user: String,
    pub password: String,
    /// `sip:<user>@sec.test`.
    pub aor: String,
    /// The Contact token (Request-URI user of calls for it).
    pub token: String,
}

/// `sipis serve` on a generated configuration; dropping it stops it.
pub struct Serve {
    child: Option<Child>,
    pub sip_port: u16,
    pub shards: usize,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    log: PathBuf,
}

impl Serve {
    /// Starts sipis with `shards` shards on 127.0.0.1, `[calls]` on, logs
    /// at info in plain text, plus `extra` TOML (whole sections, e.g.
    /// `[sip]\nmax_transactions = 1000`).
    pub fn start(name: &str, shards: usize, extra: &str) -> Serve {
        Serve::start_with(name, shards, "", extra)
    }

    /// As [`Serve::start`], with `server_extra` lines added to `[server]`.
    pub fn start_with(name: &str, shards: usize, server_extra: &str, extra: &str) -> Serve {
        let dir = std::env::temp_dir().join(format!(
            "sipis-sec-{name}-{}-{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test's dir");
        let sip_port = crate::ports::free_udp_port_run(1 + shards as u16);
        let admin = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let text = format!(
            r#"
[server]
bind = "127.0.0.1"
public_host = "127.0.0.1"
sip_port = {sip_port}
shards = {shards}
data_dir = "{data}"
{server_extra}

[admin]
listen = "{admin}"
token = "{ADMIN_TOKEN}"

[log]
level = "info"
format = "text"

[calls]
phone_realm = "{REALM}"
{extra}
"#,
            data = dir.join("data").display(),
        );
        if let Err(e) = Config::from_toml_str(&text) {
            panic!("sipis refuses the test's configuration:\n{e}\n---\n{text}");
        }
        let config = dir.join("sipis.toml");
        std::fs::write(&config, &text).unwrap();
        let log = dir.join("sipis.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sipis"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .env("NO_COLOR", "1")
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
        let mut serve = Serve {
            child: Some(cmd.spawn().expect("run the sipis binary")),
            sip_port,
            shards,
            admin,
            dir,
            log,
        };
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(Ok(Some(status))) = serve.child.as_mut().map(Child::try_wait) {
                serve.child = None;
                panic!(
                    "sipis serve exited at start-up ({status}):\n{}",
                    serve.log()
                );
            }
            if std::net::TcpStream::connect(admin).is_ok() && serve.healthy() {
                break;
            }
            assert!(Instant::now() < end, "sipis: admin API not up within 15 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{name}: sipis pid {} phones on 127.0.0.1:{sip_port}, files in {}",
            serve.pid(),
            serve.dir.display()
        );
        serve
    }

    /// SIGTERM, then waits (up to `timeout`) for sipis to exit: its exit
    /// status and how long it took; `None` if it did not exit in time.
    pub fn stop(&mut self, timeout: Duration) -> Option<(std::process::ExitStatus, Duration)> {
        let mut child = self.child.take()?;
        let start = Instant::now();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = child.try_wait() {
                return Some((status, start.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    fn healthy(&self) -> bool {
        let mut c = Http1::connect(self.admin);
        matches!(c.request("GET", "/health", None, None), Some(r) if r.status == 200)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("sipis runs").id()
    }

    /// The shared phone port.
    pub fn phone_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.sip_port))
    }

    /// Shard `i`'s own port (calls from the provider arrive there).
    pub fn shard_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.sip_port + 1 + i as u16))
    }

    /// The shard that owns `account`.
    pub fn shard_of(&self, account: &Account) -> SocketAddr {
        self.shard_addr(sipis::runtime::shard_of(account.id, self.shards))
    }

    /// VmRSS of the sipis process, in kB.
    pub fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<sipis>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `method path` on the admin API: status and JSON (`null` if empty).
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut c = Http1::connect(self.admin);
        let body = body.map(|b| b.to_string());
        let r = c
            .request(
                method,
                path,
                Some(ADMIN_TOKEN),
                body.as_deref().map(str::as_bytes),
            )
            .expect("admin API answers");
        let v = if r.text().trim().is_empty() {
            Value::Null
        } else {
            r.json()
        };
        (r.status, v)
    }

    /// `POST /accounts`: `sip:<user>@sec.test`, proxy mode.
    pub fn add_account(&self, user: &str, password: &str) -> Account {
        let aor = format!("sip:{user}@{DOMAIN}");
        let (status, v) = self.api(
            "POST",
            "/accounts",
            Some(json!({"aor": aor, "auth_user": user, "password": password})),
        );
        assert_eq!(status, 201, "POST /accounts ({user}): {v}");
        Account {
            id: v["id"].as_u64().expect("account id"),
            user: user.into(),
            password: password.into(),
            aor,
            token: v["token"].as_str().expect("account token").into(),
        }
    }

    /// `POST /accounts`: `sip:<user>@kam.test` registering at `registrar`
    /// with the test Kamailio's credentials (user X's password is `pw-X`,
    /// tests/support/kamailio/registrar.cfg).
    pub fn add_upstream_account(&self, user: &str, registrar: &str, expires: u32) {
        let (status, v) = self.api(
            "POST",
            "/accounts",
            Some(json!({
                "aor": format!("sip:{user}@kam.test"),
                "auth_user": user,
                "password": format!("pw-{user}"),
                "registrar": registrar,
                "expires": expires,
            })),
        );
        assert_eq!(status, 201, "POST /accounts ({user}): {v}");
    }

    /// `GET /metrics` as text.
    pub fn metrics(&self) -> String {
        let mut c = Http1::connect(self.admin);
        let r = c
            .request("GET", "/metrics", Some(ADMIN_TOKEN), None)
            .expect("metrics answer");
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        r.text()
    }

    /// The sum of a metric's samples (all label sets); `None` if absent.
    pub fn metric(&self, name: &str) -> Option<f64> {
        metric_in(&self.metrics(), name)
    }

    /// Waits (up to 5 s) for an account provisioned over the admin API to
    /// reach its shard: a REGISTER with its password and no Contact (a
    /// query, RFC 3261 §10.2.3: binds nothing) from `from` gets 200.
    pub fn wait_account(&self, account: &Account, from: IpAddr) {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let mut uac = Uac::bind(from);
            let (status, last) = uac.register_with(self.phone_addr(), account, &account.password);
            if status == 200 {
                return;
            }
            assert!(
                Instant::now() < end,
                "{} never registered with its password: {last}",
                account.aor
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- sipis log (last 40 lines) ---\n{}\n---",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The sum of `name`'s samples in a Prometheus text exposition.
pub fn metric_in(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

// ---- a bare SIP client -----------------------------------------------------------

/// A UDP SIP user agent client on one socket.
pub struct Uac {
    pub sock: UdpSocket,
    pub addr: SocketAddr,
    seq: u32,
}

/// The status code of a response (`None` for a request or garbage).
pub fn status_of(msg: &str) -> Option<u16> {
    msg.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

/// The first value of header `name` (case-insensitive), trimmed.
pub fn header<'m>(msg: &'m str, name: &str) -> Option<&'m str> {
    msg.split("\r\n\r\n").next()?.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// `(name, unquoted value)` pairs of a `Digest` challenge or credentials.
pub fn digest_params(value: &str) -> Vec<(String, String)> {
    let rest = value.trim().strip_prefix("Digest").unwrap_or(value).trim();
    let mut out = Vec::new();
    let mut s = rest;
    while !s.is_empty() {
        let Some((name, after)) = s.split_once('=') else {
            break;
        };
        let name = name.trim().trim_start_matches(',').trim().to_string();
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            (q[..end].to_string(), &q[(end + 1).min(q.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.push((name, v));
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// The `Authorization` value answering a 401 `resp` for `user` with
/// `password` (right or wrong).
pub fn answer_challenge(resp: &str, user: &str, password: &str, uri: &str) -> String {
    let www = header(resp, "WWW-Authenticate")
        .unwrap_or_else(|| panic!("no WWW-Authenticate in:\n{resp}"));
    let params = digest_params(www);
    let challenge = Challenge::from_params(params.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        .unwrap_or_else(|e| panic!("challenge {www:?}: {e:?}"));
    let mut out = String::new();
    write_authorization(
        &challenge,
        &DigestAccount {
            username: user,
            secret: Secret::Password(password),
        },
        "REGISTER",
        uri,
        "0a4f113b",
        1,
        &mut out,
    )
    .unwrap_or_else(|e| panic!("answering {www:?}: {e:?}"));
    out
}

static CALL: AtomicU32 = AtomicU32::new(0);

/// A fresh random-looking identifier (branches, tags, Call-IDs).
pub fn fresh(prefix: &str) -> String {
    let n = CALL.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}{:08x}{n:06x}{}", t, std::process::id())
}

impl Uac {
    /// A client on `ip` (any free port).
    pub fn bind(ip: IpAddr) -> Uac {
        let sock = UdpSocket::bind(SocketAddr::new(ip, 0))
            .unwrap_or_else(|e| panic!("bind a UDP socket on {ip}: {e}"));
        let addr = sock.local_addr().unwrap();
        Uac { sock, addr, seq: 0 }
    }

    pub fn send(&self, to: SocketAddr, msg: &str) {
        self.sock.send_to(msg.as_bytes(), to).expect("send_to");
    }

    /// Next datagram within `timeout`, as text.
    pub fn recv(&self, timeout: Duration) -> Option<String> {
        self.sock
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 65_535];
        match self.sock.recv_from(&mut buf) {
            Ok((n, _)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => None,
        }
    }

    /// Every answer until the first final one (or `timeout`).
    pub fn until_final(&self, timeout: Duration) -> Vec<String> {
        let end = Instant::now() + timeout;
        let mut got = Vec::new();
        while let Some(m) = self.recv(end.saturating_duration_since(Instant::now())) {
            let final_ = status_of(&m).is_some_and(|s| s >= 200);
            got.push(m);
            if final_ || Instant::now() >= end {
                break;
            }
        }
        got
    }

    /// A request out of dialog: `method ruri`, From/To `to_uri` (From with
    /// a tag), fresh branch and the given Call-ID, `extra` header lines
    /// (each ending in CRLF).
    pub fn request(
        &mut self,
        method: &str,
        ruri: &str,
        to_uri: &str,
        call_id: &str,
        extra: &str,
    ) -> String {
        self.seq += 1;
        format!(
            "{method} {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {me};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <{to_uri}>;tag={tag}\r\n\
             To: <{to_uri}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {seq} {method}\r\n\
             {extra}\
             Content-Length: 0\r\n\r\n",
            me = self.addr,
            branch = fresh("z9hG4bK"),
            tag = fresh("t"),
            seq = self.seq,
        )
    }

    /// A phone's REGISTER for `account`: challenged, answered with
    /// `password`, no Contact (binds nothing). The final status and the
    /// last answer.
    pub fn register_with(
        &mut self,
        to: SocketAddr,
        account: &Account,
        password: &str,
    ) -> (u16, String) {
        let call_id = fresh("reg-");
        let ruri = format!("sip:{DOMAIN}");
        let r = self.request("REGISTER", &ruri, &account.aor, &call_id, "");
        self.send(to, &r);
        let got = self.until_final(Duration::from_secs(2));
        let Some(first) = got
            .last()
            .filter(|m| status_of(m).is_some_and(|s| s >= 200))
        else {
            return (0, format!("no final answer: {got:?}"));
        };
        if status_of(first) != Some(401) {
            return (status_of(first).unwrap_or(0), first.clone());
        }
        let auth = answer_challenge(first, &account.user, password, &ruri);
        let r = self.request(
            "REGISTER",
            &ruri,
            &account.aor,
            &call_id,
            &format!("Authorization: {auth}\r\n"),
        );
        self.send(to, &r);
        let got = self.until_final(Duration::from_secs(2));
        match got
            .last()
            .filter(|m| status_of(m).is_some_and(|s| s >= 200))
        {
            Some(m) => (status_of(m).unwrap_or(0), m.clone()),
            None => (0, format!("no final answer: {got:?}")),
        }
    }
}
