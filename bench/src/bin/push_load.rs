//! Pushed-call load: how many calls per second sipis pushes with
//! INVITE → push accepted within the push service's latency + 20 ms.
//!
//! ```text
//!  caller (UDP, this process) ──INVITE──▶ sipis (Server::start, 2 shards)
//!      ◀── 100, 180 Push-Notification-Sent ──   │ push client
//!      ── CANCEL (ends the call), ACK of 487 ──▶ │   in process: Mediator::send
//!                                                │   external: HTTP/1.1 → mediator front
//!                                                ▼
//!                      APNs stand-in (HTTP/2, h2c, answers 200 after --delay)
//! ```
//!
//! Everything runs in this process on loopback; sipis's own threads
//! (`sipis-*`) are told apart from the caller's and the stand-in's in
//! `/proc/self/task`, which gives sipis's CPU per push. Each rate step is
//! bounded in calls and time.
//!
//! ```sh
//! cargo run --release -p sipis-bench --bin push_load -- --mode in-process
//! cargo run --release -p sipis-bench --bin push_load -- --mode external --rates 500,1000,2000
//! ```

#[path = "../../../tests/support/h2stub.rs"]
mod h2stub;

use anyhow::{bail, Context, Result};
use clap::Parser;
use h2stub::{Answer, Stub};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use sipis::config::Config;
use sipis::push::mediator::{start, ApnsConfig, MediatorConfig};
use sipis::runtime::Server;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "push-load-admin-token-0123456789abcdef";
const PUSH_TOKEN: &str = "push-load-mediator-token-0123456789";

#[derive(Parser)]
struct Args {
    /// `in-process` (mediator called directly) or `external` (HTTP/1.1 to
    /// a mediator front on loopback).
    #[arg(long, default_value = "in-process")]
    mode: String,
    /// The APNs stand-in's answer time, ms.
    #[arg(long, default_value_t = 100)]
    delay_ms: u64,
    /// Call rates to try, calls/s (one push each).
    #[arg(long, default_value = "500,1000,2000,3000")]
    rates: String,
    /// Seconds per rate step.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Accounts the calls are spread over.
    #[arg(long, default_value_t = 500)]
    accounts: usize,
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// Also print CPU per push by thread (sipis's and the rest).
    #[arg(long)]
    threads: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let external = match args.mode.as_str() {
        "in-process" => false,
        "external" => true,
        m => bail!("--mode: in-process or external, not {m:?}"),
    };
    std::env::set_var("SIPIS_STANDIN_DELAY_MS", args.delay_ms.to_string());
    let apns = Stub::start_plain(|s| {
        Answer::status(200).header("apns-id", format!("load-{}", s.connection))
    });
    let dir = std::env::temp_dir().join(format!("sipis-push-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let p8 = dir.join("AuthKey_KEYID12345.p8");
    std::fs::write(&p8, key.serialize_pem())?;
    let apns_toml = format!(
        "[mediator.apns]\nkey_file = \"{}\"\nkey_id = \"KEYID12345\"\nteam_id = \"TEAM123456\"\n\
         production_url = \"{}\"\nsandbox_url = \"{}\"\n",
        p8.display(),
        apns.url(),
        apns.url()
    );
    // External: a mediator front of its own (as `sipis mediator` would be).
    let mediator = if external {
        Some(start(&MediatorConfig {
            listen: "127.0.0.1:0".parse()?,
            token: Some(PUSH_TOKEN.into()),
            apns: Some(ApnsConfig {
                key_file: p8.clone(),
                key_id: "KEYID12345".into(),
                team_id: "TEAM123456".into(),
                default_topic: None,
                production_url: apns.url(),
                sandbox_url: apns.url(),
                ca_file: None,
            }),
            ..MediatorConfig::default()
        })?)
    } else {
        None
    };
    let sip_port = free_udp_run(args.shards as u16 + 1);
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let push = match &mediator {
        Some(m) => format!(
            "[push]\nmediator_url = \"http://{}/push\"\ntoken = \"{PUSH_TOKEN}\"\n",
            m.local_addr()
        ),
        None => format!(
            "[push]\ntoken = \"{PUSH_TOKEN}\"\n[mediator]\nin_process = true\n\
             listen = \"127.0.0.1:{}\"\ntoken = \"{PUSH_TOKEN}\"\n{apns_toml}",
            std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port()
        ),
    };
    let toml = format!(
        "[server]\nbind = \"127.0.0.1\"\nsip_port = {sip_port}\nshards = {}\ndata_dir = \"{}\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"{ADMIN_TOKEN}\"\n\
         [log]\nlevel = \"error\"\n{push}",
        args.shards,
        dir.display()
    );
    let cfg = Config::from_toml_str(&toml).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let server = Server::start(&cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
    let api = server.admin_addr().context("admin API")?;

    // Accounts in proxy mode, one APNs device each.
    let mut tokens = Vec::with_capacity(args.accounts);
    for i in 0..args.accounts {
        let (status, acct) = admin(
            api,
            "POST",
            "/accounts",
            Some(
                json!({"aor": format!("sip:u{i}@load.example"), "auth_user": format!("u{i}"),
                        "password": "pw-load"}),
            ),
        )?;
        if status != 201 {
            bail!("POST /accounts: {status} {acct}");
        }
        let id = acct["id"].as_u64().context("id")?;
        let prid = format!("{:064x}", i + 1);
        let (status, dev) = admin(
            api,
            "PUT",
            &format!("/accounts/{id}/devices/iphone"),
            Some(json!({"provider": "apns", "prid": prid,
                        "param": "ABCDE12345.com.example.phone.voip"})),
        )?;
        if status != 200 {
            bail!("PUT device: {status} {dev}");
        }
        tokens.push(acct["token"].as_str().context("token")?.to_owned());
    }
    std::thread::sleep(Duration::from_millis(500));
    let target: SocketAddr = format!("127.0.0.1:{sip_port}").parse()?;
    println!(
        "mode {} | stand-in delay {} ms | {} shards | {} accounts | {} s per step",
        args.mode, args.delay_ms, args.shards, args.accounts, args.seconds
    );
    println!(
        "{:>7} {:>9} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>11}",
        "rate", "calls", "180", "480", "p50 ms", "p99 ms", "max ms", "pushes/s", "sipis µs/push"
    );
    let goal = Duration::from_millis(args.delay_ms + 20);
    let mut best = 0.0f64;
    for (step, rate) in args.rates.split(',').enumerate() {
        let rate: u64 = rate.trim().parse().context("--rates")?;
        let cpu0 = sipis_cpu();
        let threads0 = cpu_by_thread();
        let before = apns.count();
        let t0 = Instant::now();
        let r = run_step(target, &tokens, rate, args.seconds, step)?;
        let took = t0.elapsed().as_secs_f64();
        let cpu = sipis_cpu() - cpu0;
        let pushes = apns.count() - before;
        let per_push = if pushes > 0 {
            cpu / pushes as f64 * 1e6
        } else {
            0.0
        };
        let q = |p: f64| r.latency.value_at_quantile(p) as f64 / 1000.0;
        println!(
            "{:>7} {:>9} {:>7} {:>7} {:>8.1} {:>8.1} {:>8.1} {:>8.0} {:>11.0}",
            rate,
            r.sent,
            r.ringing,
            r.unavailable,
            q(0.5),
            q(0.99),
            r.latency.max() as f64 / 1000.0,
            pushes as f64 / took,
            per_push
        );
        if args.threads && pushes > 0 {
            for (name, secs) in cpu_by_thread() {
                let d = secs - threads0.get(&name).copied().unwrap_or(0.0);
                if d > 0.0 {
                    println!(
                        "        {name:<28} {:>6.0} µs/push",
                        d / pushes as f64 * 1e6
                    );
                }
            }
        }
        let ok = r.ringing == r.sent && q(0.99) <= goal.as_secs_f64() * 1000.0;
        if ok {
            best = best.max(rate as f64);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    println!(
        "highest rate with every call pushed and INVITE → 180 p99 ≤ {} ms: {best} calls/s",
        goal.as_millis()
    );
    server.stop(false);
    if let Some(m) = mediator {
        m.shutdown();
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

struct StepResult {
    sent: u64,
    ringing: u64,
    unavailable: u64,
    /// INVITE sent → `180` with `Push-Notification-Sent`, µs.
    latency: Histogram<u64>,
}

/// `rate` calls/s for `seconds`, then waits (at most 5 s) for the last
/// answers. Each call: INVITE, on 180 a CANCEL, on 487 an ACK.
fn run_step(
    target: SocketAddr,
    tokens: &[String],
    rate: u64,
    seconds: u64,
    step: usize,
) -> Result<StepResult> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(8 << 20);
    let me = sock.local_addr()?;
    let total = rate * seconds;
    let sent_at: Arc<Mutex<HashMap<u64, (Instant, usize)>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (sock, sent_at, done) = (sock.try_clone()?, sent_at.clone(), done.clone());
        let tokens = tokens.to_vec();
        std::thread::spawn(move || {
            let mut r = StepResult {
                sent: 0,
                ringing: 0,
                unavailable: 0,
                latency: Histogram::new(3).expect("valid"),
            };
            let mut buf = [0u8; 65_535];
            let mut quiet_since = None::<Instant>;
            loop {
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        quiet_since = None;
                        let m = String::from_utf8_lossy(&buf[..n]);
                        let Some(call) = call_no(&m, step) else {
                            continue;
                        };
                        if m.starts_with("SIP/2.0 180") && m.contains("Push-Notification-Sent") {
                            if let Some((t, acct)) = sent_at.lock().unwrap().remove(&call) {
                                let _ = r.latency.record(t.elapsed().as_micros() as u64);
                                r.ringing += 1;
                                let cancel =
                                    request("CANCEL", &tokens[acct], from, me, call, step, 1, None);
                                let _ = sock.send_to(cancel.as_bytes(), from);
                            }
                        } else if m.starts_with("SIP/2.0 487") || m.starts_with("SIP/2.0 480") {
                            if m.starts_with("SIP/2.0 480") {
                                r.unavailable += 1;
                                sent_at.lock().unwrap().remove(&call);
                            }
                            let to_tag = header(&m, "To").unwrap_or_default();
                            let acct = (call as usize) % tokens.len();
                            let ack = request(
                                "ACK",
                                &tokens[acct],
                                from,
                                me,
                                call,
                                step,
                                1,
                                Some(&to_tag),
                            );
                            let _ = sock.send_to(ack.as_bytes(), from);
                        }
                    }
                    Err(_) => {
                        if done.load(Ordering::Relaxed) {
                            let q = *quiet_since.get_or_insert_with(Instant::now);
                            if sent_at.lock().unwrap().is_empty()
                                || q.elapsed() > Duration::from_secs(5)
                            {
                                return r;
                            }
                        }
                    }
                }
            }
        })
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds + 2);
    let mut sent = 0u64;
    while sent < total && Instant::now() < deadline {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due.min(total) {
            let acct = (sent as usize) % tokens.len();
            let invite = request("INVITE", &tokens[acct], target, me, sent, step, 1, None);
            sent_at.lock().unwrap().insert(sent, (Instant::now(), acct));
            sock.send_to(invite.as_bytes(), target)?;
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    done.store(true, Ordering::Relaxed);
    let mut r = receiver.join().expect("receiver");
    r.sent = sent;
    Ok(r)
}

/// The call number in `Call-ID: load-<step>-<n>@caller`.
fn call_no(m: &str, step: usize) -> Option<u64> {
    let v = header(m, "Call-ID")?;
    let rest = v.strip_prefix(&format!("load-{step}-"))?;
    rest.split('@').next()?.parse().ok()
}

fn header(m: &str, name: &str) -> Option<String> {
    m.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

#[allow(clippy::too_many_arguments)]
fn request(
    method: &str,
    token: &str,
    target: SocketAddr,
    me: SocketAddr,
    call: u64,
    step: usize,
    cseq: u32,
    to: Option<&str>,
) -> String {
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
    let body = if method == "INVITE" { sdp } else { "" };
    let ctype = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    let to = to.map_or_else(|| "<sip:callee@load.example>".to_owned(), str::to_owned);
    format!(
        "{method} sip:{token}@{target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bK-load-{step}-{call};rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Load\" <sip:caller@load.example>;tag=c{call}\r\n\
         To: {to}\r\n\
         Call-ID: load-{step}-{call}@caller\r\n\
         CSeq: {cseq} {method}\r\n\
         Contact: <sip:caller@{me}>\r\n\
         {ctype}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// CPU seconds (user + system) of this process's `sipis-*` threads.
fn sipis_cpu() -> f64 {
    cpu_by_thread()
        .iter()
        .filter(|(name, _)| name.starts_with("sipis"))
        .map(|(_, s)| s)
        .sum()
}

/// CPU seconds (user + system) by thread name (digits dropped, so the
/// shards add up), every thread of this process.
fn cpu_by_thread() -> std::collections::BTreeMap<String, f64> {
    let hz = 100.0; // CLK_TCK on Linux
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name: String = stat[open + 1..close]
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .collect();
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        // Fields 14 and 15 (utime, stime) are 11 and 12 after the state.
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        *out.entry(name).or_insert(0.0) += (n(11) + n(12)) as f64 / hz;
    }
    out
}

fn free_udp_run(n: u16) -> u16 {
    for _ in 0..50 {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let base = s.local_addr().unwrap().port();
        drop(s);
        if base > 65_000 {
            continue;
        }
        if (base..base + n).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no run of {n} free UDP ports");
}

/// One admin API request (HTTP/1.1, `Connection: close`).
fn admin(api: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut s = TcpStream::connect(api)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("status")?;
    let text = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v = serde_json::from_str(text).unwrap_or(Value::Null);
    Ok((status, v))
}
