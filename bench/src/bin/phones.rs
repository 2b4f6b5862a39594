//! `phones`: the push mediator and the phone fleet of the answered-call
//! load benchmark (`bench/calls_load.sh`, `bench/RESULTS.md` "Answered-call
//! load").
//!
//! `phones run` is, in one process (one current-thread tokio runtime):
//!
//! - **the mediator**: an HTTP/1.1 keep-alive server taking sipis's unified
//!   push JSON (`POST <push.mediator_url>`, [`sipis::push::PushRequest`])
//!   and answering every push `200 {"id":…,"result":"sent"}`;
//! - **the phones**: for each `incoming_call` push, the phone holding that
//!   push token (`pn-prid`) wakes after `--wake-delay`, binds a new UDP
//!   socket (a woken app gets a new port) and REGISTERs to sipis's shared
//!   phone port with its RFC 8599 Contact, answering the digest challenge;
//!   the INVITE sipis then places is answered 180 then 200 with SDP, the ACK
//!   absorbed, the caller's BYE (relayed by sipis) answered 200. Then the
//!   app goes back to sleep: `Contact: *`, `Expires: 0` (its SIP binding
//!   goes, its push target stays), so the next call pushes again.
//!   REGISTERs are retransmitted per Timer E and the 200 to the INVITE until
//!   the ACK (RFC 3261 §17.1.2.2, §13.3.1.4).
//!
//! `--mode awake` instead registers every phone at start and keeps it
//! registered (the baseline: no wake-up). sipis still pushes such a phone
//! (RFC 8599 §4.1.2) and INVITEs it after the REGISTER the push triggers:
//! an app that is up answers the push at once with a REGISTER on the socket
//! it has — so does a woken phone still lingering after its call.
//!
//! At the end (`--duration`, `--calls`, SIGTERM or SIGINT) it prints the
//! calls answered, the failures by kind and hdrhistogram quantiles of the
//! push → REGISTER → INVITE → ACK timings, and writes them as JSON with
//! `--report`.
//!
//! `phones provision` creates the accounts of a run through sipis's admin
//! API (CSV import in proxy mode, then one APNs device each with
//! `PUT /accounts/{id}/devices/iphone`) and writes the phone list for `run`
//! and the sipp injection file (account token; shard port) for the caller.

use anyhow::{anyhow, bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use sipis::digest::{self, Account, Challenge, DigestClient, Secret};
use sipis::parser::{self, parse, HeaderName, Message, Method, EMPTY_HEADER};
use sipis::push::{PushAnswer, PushKind, PushRequest, PushResult};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, Instant};

// ---- command line ---------------------------------------------------------

#[derive(Parser)]
#[command(
    name = "phones",
    about = "Push mediator + phone fleet simulator for sipis's answered-call load benchmark"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the mediator and the phones until --duration, --calls or SIGTERM.
    Run(RunArgs),
    /// Provision accounts + devices through the admin API; write phones.csv
    /// (for `run`) and calls.csv (sipp injection file).
    Provision(ProvisionArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Phones sleep; each incoming_call push wakes one.
    Push,
    /// Every phone registers at start and stays registered (no pushes).
    Awake,
}

#[derive(clap::Args, Debug, Clone)]
struct RunArgs {
    /// phones.csv from `phones provision` (prid,auth_user,password,aor).
    #[arg(long)]
    phones: PathBuf,
    /// sipis's shared phone port (`server.sip_port`).
    #[arg(long)]
    sipis: SocketAddr,
    /// Where the mediator listens (`push.mediator_url` points here).
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Bearer token sipis must present (`push.token`); unchecked if unset.
    #[arg(long)]
    token: Option<String>,
    #[arg(long, value_enum, default_value = "push")]
    mode: Mode,
    /// Push received → the phone's first REGISTER.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    wake_delay: Duration,
    /// INVITE received → 180.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    ring_delay: Duration,
    /// 180 → 200 (answer).
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    answer_delay: Duration,
    /// How long the mediator takes to answer a push (APNs round trip).
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    push_delay: Duration,
    /// Expires of the phones' REGISTERs (sipis grants 60..=3600 by default).
    #[arg(long, default_value_t = 600)]
    expires: u32,
    /// Keep the digest nonce across wakes (a phone whose app process
    /// survived): the REGISTER then goes without a 401 round trip.
    #[arg(long)]
    reuse_nonce: bool,
    /// After the call, stay registered instead of `Contact: *` (the next
    /// call then finds the phone up and is not pushed).
    #[arg(long)]
    stay_registered: bool,
    /// RFC 3261 T1 and T2 of the phones' retransmissions.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    t1: Duration,
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    t2: Duration,
    /// REGISTER accepted → INVITE: longer is a failure (invite_timeout).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    invite_timeout: Duration,
    /// ACK → BYE: longer is a failure (bye_timeout).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    bye_timeout: Duration,
    /// A woken phone keeps its socket this long after going back to sleep
    /// (answers retransmissions).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    linger: Duration,
    /// Awake mode: REGISTERs per second at start.
    #[arg(long, default_value_t = 500)]
    register_rate: u32,
    /// Hard bound of the run.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop once this many calls ended (answered and hung up, or failed),
    /// and the phones are back to sleep (at most --grace more).
    #[arg(long)]
    calls: Option<u64>,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    grace: Duration,
    /// Write the report as JSON here too.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
struct ProvisionArgs {
    /// sipis's admin API address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    admin: String,
    #[arg(long)]
    admin_token: Option<String>,
    /// Accounts to create (b1..bN@domain, proxy mode).
    #[arg(long, default_value_t = 2000)]
    accounts: usize,
    #[arg(long, default_value = "bench.test")]
    domain: String,
    /// sipis's `server.sip_port` and shard count: shard i listens on
    /// sip_port + 1 + i, and sipp must call an account on its shard's port.
    #[arg(long)]
    sip_port: u16,
    #[arg(long)]
    shards: usize,
    /// RFC 8599 pn-param of every device (APNs `<TeamID>.<bundle>.voip`).
    #[arg(long, default_value = PN_PARAM)]
    pn_param: String,
    /// Parallel admin API connections for the device PUTs.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Directory for phones.csv and calls.csv.
    #[arg(long)]
    out: PathBuf,
}

const PN_PARAM: &str = "ABCDE12345.com.example.voip";
const DEVICE: &str = "iphone";

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "ms"), |i| (&s[..i], &s[i..]));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (us, ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Run(args) => run(args),
        Cmd::Provision(args) => provision(args),
    }
}

// ---- statistics -------------------------------------------------------------

/// Counters, failures by kind, timing histograms (µs), phases in flight.
#[derive(Default)]
struct Stats {
    counts: BTreeMap<&'static str, u64>,
    failures: BTreeMap<&'static str, u64>,
    hist: BTreeMap<&'static str, Histogram<u64>>,
    phases: BTreeMap<&'static str, i64>,
    /// Calls ended: answered and hung up, or failed.
    calls_done: u64,
}

/// The timings reported, in order, with their labels.
const TIMINGS: [(&str, &str); 9] = [
    (
        "push_delivery",
        "push created in sipis → received (wall clock, ms res.)",
    ),
    ("mediator", "push request read → answer written"),
    (
        "push_to_register",
        "push → first REGISTER sent (wake delay)",
    ),
    ("register", "first REGISTER → 200 (401 round trip incl.)"),
    ("register_to_invite", "REGISTER 200 → INVITE received"),
    ("push_to_invite", "push → INVITE received"),
    ("invite_to_200", "INVITE received → 200 sent"),
    ("ok_to_ack", "200 sent → ACK received"),
    ("invite_to_bye", "INVITE received → BYE received (call)"),
];

impl Stats {
    fn count(&mut self, k: &'static str) {
        *self.counts.entry(k).or_default() += 1;
    }

    fn fail(&mut self, k: &'static str) {
        *self.failures.entry(k).or_default() += 1;
    }

    fn record(&mut self, k: &'static str, d: Duration) {
        let h = self.hist.entry(k).or_insert_with(|| {
            Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
        });
        h.saturating_record((d.as_micros() as u64).max(1));
    }

    fn phase(&mut self, from: Option<&'static str>, to: Option<&'static str>) {
        if let Some(f) = from {
            *self.phases.entry(f).or_default() -= 1;
        }
        if let Some(t) = to {
            *self.phases.entry(t).or_default() += 1;
        }
    }

    fn get(&self, k: &str) -> u64 {
        self.counts.get(k).copied().unwrap_or(0)
    }

    fn in_flight(&self) -> i64 {
        self.phases.values().sum()
    }
}

fn quantiles(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |v: u64| (v as f64 / 1000.0 * 1000.0).round() / 1000.0;
    serde_json::json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
        "mean_ms": ms(h.mean() as u64),
    })
}

// ---- shared state -----------------------------------------------------------

/// One simulated phone (one account's device).
struct Phone {
    prid: String,
    auth_user: String,
    password: String,
    /// `sip:user@domain`.
    aor: String,
    /// The domain: the REGISTER's Request-URI.
    domain: String,
    /// Kept across wakes (RFC 3261 §10.2.4: same Call-ID, rising CSeq).
    reg_call_id: String,
    from_tag: String,
    cseq: Cell<u32>,
    /// The live session (socket) of this phone: pushes for it go there.
    session: RefCell<Option<mpsc::UnboundedSender<Wake>>>,
    digest: RefCell<DigestClient>,
}

struct Ctx {
    args: RunArgs,
    phones: HashMap<String, Rc<Phone>>,
    stats: RefCell<Stats>,
    rng: Cell<u64>,
}

impl Ctx {
    fn rand(&self) -> u64 {
        // xorshift64*
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn hex(&self, n: usize) -> String {
        let mut s = String::with_capacity(n);
        while s.len() < n {
            let _ = write!(s, "{:016x}", self.rand());
        }
        s.truncate(n);
        s
    }

    fn stats(&self) -> std::cell::RefMut<'_, Stats> {
        self.stats.borrow_mut()
    }
}

fn load_phones(path: &PathBuf, seed: u64) -> Result<HashMap<String, Rc<Phone>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut phones = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (n == 0 && line.starts_with("prid,")) {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let [prid, auth_user, password, aor] = f[..] else {
            bail!(
                "{}:{}: expected prid,auth_user,password,aor",
                path.display(),
                n + 1
            );
        };
        let domain = aor
            .split_once('@')
            .map(|(_, d)| d.to_string())
            .ok_or_else(|| anyhow!("{}:{}: aor without @", path.display(), n + 1))?;
        let mut cnonce_seed = [0u8; 32];
        cnonce_seed[..8].copy_from_slice(&seed.to_le_bytes());
        cnonce_seed[8..16].copy_from_slice(&(n as u64).to_le_bytes());
        phones.insert(
            prid.to_string(),
            Rc::new(Phone {
                prid: prid.to_string(),
                auth_user: auth_user.to_string(),
                password: password.to_string(),
                aor: aor.to_string(),
                domain,
                reg_call_id: format!("reg-{auth_user}-{seed:08x}@phones"),
                from_tag: format!("{:x}", seed ^ (n as u64)),
                cseq: Cell::new(1),
                session: RefCell::new(None),
                digest: RefCell::new(DigestClient::new(cnonce_seed)),
            }),
        );
    }
    if phones.is_empty() {
        bail!("{}: no phones", path.display());
    }
    Ok(phones)
}

// ---- run ------------------------------------------------------------------------

fn run(args: RunArgs) -> Result<()> {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let phones = load_phones(&args.phones, seed)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let ctx = Rc::new(Ctx {
            args: args.clone(),
            phones,
            stats: RefCell::new(Stats::default()),
            rng: Cell::new(seed),
        });
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("mediator: cannot listen on {}", args.listen))?;
        tokio::task::spawn_local(accept_loop(ctx.clone(), listener));
        let start = Instant::now();
        if args.mode == Mode::Awake {
            register_all(&ctx).await;
        }
        println!(
            "READY mode={:?} phones={} mediator=http://{} sipis={}",
            args.mode,
            ctx.phones.len(),
            args.listen,
            args.sipis
        );
        let stopped = wait_end(&ctx, start).await;
        let elapsed = start.elapsed();
        let report = report(&ctx, elapsed, stopped);
        if let Some(p) = &args.report {
            std::fs::write(p, serde_json::to_vec_pretty(&report)?)
                .with_context(|| format!("writing {}", p.display()))?;
        }
        Ok::<_, anyhow::Error>(())
    })
}

/// Waits for the end of the run; says why it ended.
async fn wait_end(ctx: &Rc<Ctx>, start: Instant) -> &'static str {
    let args = &ctx.args;
    let end = start + args.duration;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    let mut done_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = sleep(Duration::from_millis(100)) => {}
            Some(_) = async { match term.as_mut() { Some(t) => t.recv().await, None => std::future::pending().await } } => return "SIGTERM",
            Some(_) = async { match int.as_mut() { Some(t) => t.recv().await, None => std::future::pending().await } } => return "SIGINT",
        }
        let now = Instant::now();
        if now >= end {
            return "duration";
        }
        if let Some(n) = args.calls {
            let (done, busy) = {
                let s = ctx.stats();
                (s.calls_done, s.in_flight())
            };
            if done >= n {
                let at = *done_at.get_or_insert(now);
                let asleep = args.mode == Mode::Awake || busy <= 0;
                if asleep || now >= at + args.grace {
                    return "calls";
                }
            }
        }
    }
}

/// Prints the report; returns it as JSON.
fn report(ctx: &Ctx, elapsed: Duration, why: &str) -> serde_json::Value {
    let s = ctx.stats();
    let failed: u64 = s.failures.values().sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "phones: mode {:?}, {} phones, ran {:.1} s (ended by {why})",
        ctx.args.mode,
        ctx.phones.len(),
        elapsed.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "pushes: incoming_call {}, call_cancelled {}, missed_call {}; answered by the mediator {}",
        s.get("push_incoming_call"),
        s.get("push_call_cancelled"),
        s.get("push_missed_call"),
        s.get("push_answered"),
    );
    let _ = writeln!(
        out,
        "calls: INVITEs {}, answered (200 sent) {}, ACKed {}, hung up (BYE answered) {}",
        s.get("invites"),
        s.get("answered"),
        s.get("acked"),
        s.get("completed"),
    );
    let _ = writeln!(
        out,
        "sip: REGISTERs sent {} (retransmissions {}), 401 {}, registered {}, unregistered {}, 200 retransmissions {}, datagrams in {} out {}",
        s.get("register_sent"),
        s.get("register_retransmit"),
        s.get("register_401"),
        s.get("registered"),
        s.get("unregistered"),
        s.get("ok_retransmit"),
        s.get("dgram_in"),
        s.get("dgram_out"),
    );
    if failed == 0 {
        let _ = writeln!(out, "failures: none");
    } else {
        let list: Vec<String> = s.failures.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(out, "failures: {failed} ({})", list.join(", "));
    }
    let busy: Vec<String> = s
        .phases
        .iter()
        .filter(|(_, v)| **v != 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !busy.is_empty() {
        let _ = writeln!(out, "in flight at the end: {}", busy.join(", "));
    }
    let _ = writeln!(
        out,
        "{:<56} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "timing (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    let mut timings = serde_json::Map::new();
    for (k, label) in TIMINGS {
        let Some(h) = s.hist.get(k) else { continue };
        let q = |v: u64| v as f64 / 1000.0;
        let _ = writeln!(
            out,
            "{:<56} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            label,
            h.len(),
            q(h.value_at_quantile(0.5)),
            q(h.value_at_quantile(0.9)),
            q(h.value_at_quantile(0.99)),
            q(h.value_at_quantile(0.999)),
            q(h.max()),
        );
        timings.insert(k.to_string(), quantiles(h));
    }
    let _ = writeln!(
        out,
        "RESULT phones answered={} completed={} failed={failed}",
        s.get("answered"),
        s.get("completed")
    );
    print!("{out}");
    serde_json::json!({
        "mode": format!("{:?}", ctx.args.mode).to_lowercase(),
        "phones": ctx.phones.len(),
        "elapsed_s": elapsed.as_secs_f64(),
        "ended_by": why,
        "counts": s.counts,
        "failures": s.failures,
        "failed": failed,
        "in_flight": s.phases.iter().filter(|(_, v)| **v != 0).collect::<BTreeMap<_, _>>(),
        "timings": timings,
    })
}

// ---- the mediator ---------------------------------------------------------------

async fn accept_loop(ctx: Rc<Ctx>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                ctx.stats().count("http_connections");
                tokio::task::spawn_local(http_conn(ctx.clone(), s));
            }
            Err(e) => {
                eprintln!("mediator: accept: {e}");
                sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A parsed request head: what the connection loop needs.
struct Head {
    len: usize,
    content_length: usize,
    authorized: bool,
    close: bool,
    chunked: bool,
}

fn parse_head(buf: &[u8], token: Option<&str>) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if req.method != Some("POST") {
        return Err(format!("method {:?}", req.method));
    }
    let mut head = Head {
        len,
        content_length: 0,
        authorized: token.is_none(),
        close: req.version == Some(0),
        chunked: false,
    };
    for h in req.headers.iter() {
        let v = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            head.content_length = v.parse().map_err(|_| "bad Content-Length".to_string())?;
        } else if h.name.eq_ignore_ascii_case("connection") {
            head.close = v.eq_ignore_ascii_case("close");
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = true;
        } else if h.name.eq_ignore_ascii_case("authorization") {
            if let Some(t) = token {
                head.authorized = v.strip_prefix("Bearer ").map(str::trim) == Some(t);
            }
        }
    }
    Ok(Some(head))
}

async fn respond(s: &mut TcpStream, status: &str, body: &[u8], close: bool) -> bool {
    let mut out = Vec::with_capacity(160 + body.len());
    let _ = write!(
        VecWriter(&mut out),
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    );
    out.extend_from_slice(body);
    s.write_all(&out).await.is_ok()
}

struct VecWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

async fn http_conn(ctx: Rc<Ctx>, mut s: TcpStream) {
    const MAX: usize = 1 << 20;
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 16384];
    loop {
        // Head.
        let head = loop {
            match parse_head(&buf, ctx.args.token.as_deref()) {
                Ok(Some(h)) => break h,
                Ok(None) if buf.len() < MAX => match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                },
                Ok(None) => {
                    ctx.stats().fail("http_oversized");
                    respond(&mut s, "431 Request Header Fields Too Large", b"{}", true).await;
                    return;
                }
                Err(e) => {
                    ctx.stats().fail("http_malformed");
                    eprintln!("mediator: bad request: {e}");
                    respond(&mut s, "400 Bad Request", b"{}", true).await;
                    return;
                }
            }
        };
        if head.chunked {
            ctx.stats().fail("http_chunked");
            respond(&mut s, "411 Length Required", b"{}", true).await;
            return;
        }
        let t0 = Instant::now();
        let end = head.len + head.content_length;
        if end > MAX {
            ctx.stats().fail("http_oversized");
            respond(&mut s, "413 Content Too Large", b"{}", true).await;
            return;
        }
        while buf.len() < end {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let (status, body) = if !head.authorized {
            ctx.stats().fail("push_unauthorized");
            ("401 Unauthorized", b"{\"error\":\"bad token\"}".to_vec())
        } else {
            match serde_json::from_slice::<PushRequest>(&buf[head.len..end]) {
                Ok(req) => {
                    let answer = on_push(&ctx, req);
                    ("200 OK", serde_json::to_vec(&answer).unwrap_or_default())
                }
                Err(e) => {
                    ctx.stats().fail("push_bad_json");
                    eprintln!("mediator: bad push JSON: {e}");
                    ("400 Bad Request", b"{\"error\":\"bad json\"}".to_vec())
                }
            }
        };
        buf.drain(..end);
        if !ctx.args.push_delay.is_zero() {
            sleep(ctx.args.push_delay).await;
        }
        if !respond(&mut s, status, &body, head.close).await || head.close {
            return;
        }
        let mut st = ctx.stats();
        st.count("push_answered");
        st.record("mediator", t0.elapsed());
    }
}

/// One push: counted, answered `sent`; an incoming call wakes its phone.
fn on_push(ctx: &Rc<Ctx>, req: PushRequest) -> PushAnswer {
    let now = Instant::now();
    {
        let mut st = ctx.stats();
        st.count(match req.kind {
            PushKind::IncomingCall => "push_incoming_call",
            PushKind::CallCancelled => "push_call_cancelled",
            PushKind::MissedCall => "push_missed_call",
        });
        if req.timestamp_ms > 0 {
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            st.record(
                "push_delivery",
                Duration::from_millis(wall.saturating_sub(req.timestamp_ms)),
            );
        }
    }
    let answer = |result| PushAnswer {
        id: req.id.clone(),
        result,
        platform_id: Some(format!("sim-{}", req.id)),
        environment: None,
        error: None,
    };
    if req.kind != PushKind::IncomingCall {
        return answer(PushResult::Sent);
    }
    let Some(phone) = ctx.phones.get(&req.device.token).cloned() else {
        ctx.stats().fail("push_unknown_token");
        return answer(PushResult::Sent);
    };
    let wake = Wake {
        push_at: now,
        call_id: req.call.call_id.clone(),
    };
    // RFC 8599 §4.1.2: sipis pushes a device even while it is registered
    // and INVITEs it after the REGISTER the push triggers. A phone whose
    // app is up (awake mode, or still lingering after a call) answers the
    // push on the socket it has.
    let live = phone.session.borrow().clone();
    let wake = match live {
        Some(tx) => match tx.send(wake) {
            Ok(()) => {
                ctx.stats().count("push_to_live_phone");
                return answer(PushResult::Sent);
            }
            Err(mpsc::error::SendError(w)) => w,
        },
        None => wake,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    *phone.session.borrow_mut() = Some(tx);
    tokio::task::spawn_local(wake_phone(ctx.clone(), phone, wake, rx));
    answer(PushResult::Sent)
}

// ---- the phones ---------------------------------------------------------------

/// Why a phone is up: a push for a call.
struct Wake {
    push_at: Instant,
    call_id: String,
}

async fn wake_phone(ctx: Rc<Ctx>, phone: Rc<Phone>, wake: Wake, rx: mpsc::UnboundedReceiver<Wake>) {
    ctx.stats().phase(None, Some("waking"));
    sleep_until(wake.push_at + ctx.args.wake_delay).await;
    ctx.stats().phase(Some("waking"), None);
    let sock = match UdpSocket::bind("127.0.0.1:0").await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("phone {}: bind: {e}", phone.auth_user);
            let mut st = ctx.stats();
            st.fail("socket");
            st.calls_done += 1;
            *phone.session.borrow_mut() = None;
            return;
        }
    };
    if !ctx.args.reuse_nonce {
        phone.digest.borrow_mut().clear();
    }
    let s = Session::new(ctx.clone(), phone.clone(), sock, Some(wake), rx);
    s.run().await;
}

/// Awake mode: every phone registers at start (paced), then serves calls.
async fn register_all(ctx: &Rc<Ctx>) {
    let rate = ctx.args.register_rate.max(1);
    let gap = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut next = Instant::now();
    let phones: Vec<Rc<Phone>> = ctx.phones.values().cloned().collect();
    for phone in &phones {
        sleep_until(next).await;
        next += gap;
        let sock = match UdpSocket::bind("127.0.0.1:0").await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("phone {}: bind: {e}", phone.auth_user);
                ctx.stats().fail("socket");
                continue;
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        *phone.session.borrow_mut() = Some(tx);
        let s = Session::new(ctx.clone(), phone.clone(), sock, None, rx);
        tokio::task::spawn_local(s.run());
    }
    // Wait (bounded) until every phone is registered.
    let end = Instant::now() + Duration::from_secs(60) + gap * phones.len() as u32;
    loop {
        let (ok, failed) = {
            let s = ctx.stats();
            (s.get("registered"), s.failures.values().sum::<u64>())
        };
        if ok + failed >= phones.len() as u64 || Instant::now() > end {
            eprintln!("awake mode: {ok} phones registered, {failed} failures");
            return;
        }
        sleep(Duration::from_millis(50)).await;
    }
}

/// A REGISTER transaction (and the digest retries of it).
struct RegTx {
    unregister: bool,
    /// Sent because of a push: its 200 is what sipis INVITEs after.
    push: bool,
    branch: String,
    bytes: Bytes,
    /// When the first REGISTER of this exchange left (before any 401).
    started: Instant,
    next: Instant,
    interval: Duration,
    give_up: Instant,
    /// Sends carrying credentials.
    auth_sent: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DState {
    /// INVITE received, 180 not sent yet.
    Trying,
    /// 180 sent, 200 not yet.
    Ringing,
    /// 200 sent, waiting for the ACK (retransmitting).
    Answered,
    /// ACKed: the call is up.
    Confirmed,
    /// BYE answered, or the call failed.
    Ended,
}

struct Dialog {
    call_id: String,
    /// The INVITE as received, and where from.
    invite: Bytes,
    src: SocketAddr,
    branch: Vec<u8>,
    tag: String,
    received: Instant,
    state: DState,
    /// The last response to the INVITE (re-sent on a retransmitted INVITE).
    last: Option<Bytes>,
    ring_at: Option<Instant>,
    answer_at: Option<Instant>,
    ok_sent: Option<Instant>,
    retx: Option<(Instant, Duration)>,
    ack_give_up: Instant,
    /// The 200 to the BYE (re-sent on a retransmitted BYE).
    bye_ok: Option<Bytes>,
}

/// One phone's socket and everything on it.
struct Session {
    ctx: Rc<Ctx>,
    phone: Rc<Phone>,
    sock: UdpSocket,
    local: SocketAddr,
    /// The push being answered (the call expected next).
    wake: Option<Wake>,
    /// Awake mode: registered all along, serves call after call.
    awake_mode: bool,
    pushes: mpsc::UnboundedReceiver<Wake>,
    phase: Option<&'static str>,
    reg: Option<RegTx>,
    registered_at: Option<Instant>,
    refresh_at: Option<Instant>,
    dialog: Option<Dialog>,
    /// Phase deadline and the failure it means.
    deadline: Option<(Instant, &'static str)>,
    linger_until: Option<Instant>,
    /// The current call was counted (ended or failed).
    counted: bool,
    out: Vec<(SocketAddr, Bytes)>,
    done: bool,
}

impl Session {
    fn new(
        ctx: Rc<Ctx>,
        phone: Rc<Phone>,
        sock: UdpSocket,
        wake: Option<Wake>,
        pushes: mpsc::UnboundedReceiver<Wake>,
    ) -> Session {
        let awake_mode = wake.is_none();
        let local = sock
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        Session {
            ctx,
            phone,
            sock,
            local,
            wake,
            awake_mode,
            pushes,
            phase: None,
            reg: None,
            registered_at: None,
            refresh_at: None,
            dialog: None,
            deadline: None,
            linger_until: None,
            counted: false,
            out: Vec::new(),
            done: false,
        }
    }

    fn set_phase(&mut self, p: Option<&'static str>) {
        if self.phase != p {
            self.ctx.stats().phase(self.phase, p);
            self.phase = p;
        }
    }

    /// Counts this session's call as ended (once); `failure` says why it
    /// failed, `None` for a call answered and hung up.
    fn end_call(&mut self, failure: Option<&'static str>) {
        let mut st = self.ctx.stats();
        if let Some(f) = failure {
            st.fail(f);
        }
        if !self.counted {
            st.calls_done += 1;
        }
        self.counted = true;
    }

    async fn run(mut self) {
        let now = Instant::now();
        if let Some(w) = &self.wake {
            self.ctx
                .stats()
                .record("push_to_register", now.duration_since(w.push_at));
        }
        self.send_register(now, false);
        let mut buf = vec![0u8; 65536];
        while !self.done {
            self.flush().await;
            if self.done {
                break;
            }
            let next = self.next_timer();
            tokio::select! {
                r = self.sock.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        let data = Bytes::copy_from_slice(&buf[..n]);
                        self.ctx.stats().count("dgram_in");
                        self.on_datagram(Instant::now(), &data, from);
                    }
                    Err(e) => {
                        // ICMP port unreachable from a previous send, etc.
                        if e.kind() != std::io::ErrorKind::ConnectionRefused {
                            eprintln!("phone {}: recv: {e}", self.phone.auth_user);
                        }
                        self.ctx.stats().count("icmp_errors");
                    }
                },
                Some(w) = self.pushes.recv() => self.on_push(Instant::now(), w),
                _ = sleep_until(next) => self.on_timer(Instant::now()),
            }
        }
        self.flush().await;
        self.set_phase(None);
        // Pushes that came while the socket was closing wake the phone anew.
        *self.phone.session.borrow_mut() = None;
        let mut late = Vec::new();
        while let Ok(w) = self.pushes.try_recv() {
            late.push(w);
        }
        let mut late = late.into_iter();
        if let Some(first) = late.next() {
            let (tx, rx) = mpsc::unbounded_channel();
            for w in late {
                let _ = tx.send(w);
            }
            *self.phone.session.borrow_mut() = Some(tx);
            tokio::task::spawn_local(wake_phone(self.ctx.clone(), self.phone.clone(), first, rx));
        }
    }

    /// A push for this phone while its app is up: a REGISTER on the socket
    /// it has (RFC 8599 §4.1.2), after which sipis sends the INVITE.
    fn on_push(&mut self, now: Instant, w: Wake) {
        self.ctx
            .stats()
            .record("push_to_register", now.duration_since(w.push_at));
        self.wake = Some(w);
        self.counted = false;
        self.linger_until = None;
        if let Some(r) = self.reg.as_mut() {
            if !r.unregister {
                // A REGISTER is under way already: its 200 will do.
                r.push = true;
                return;
            }
        }
        let mut auth = String::new();
        let acct = Account {
            username: &self.phone.auth_user,
            secret: Secret::Password(&self.phone.password),
        };
        let uri = format!("sip:{}", self.phone.domain);
        let _ = self
            .phone
            .digest
            .borrow_mut()
            .reauthorize(&acct, "REGISTER", &uri, &mut auth);
        let busy = self
            .dialog
            .as_ref()
            .is_some_and(|d| d.state != DState::Ended);
        if !busy {
            self.set_phase(Some("registering"));
        }
        self.start_register_tx(now, false, true, auth, None);
    }

    async fn flush(&mut self) {
        let n = self.out.len() as u64;
        for (dest, bytes) in self.out.drain(..) {
            if let Err(e) = self.sock.send_to(&bytes, dest).await {
                eprintln!("phone {}: send to {dest}: {e}", self.phone.auth_user);
                self.ctx.stats().fail("send");
            }
        }
        if n > 0 {
            *self.ctx.stats().counts.entry("dgram_out").or_default() += n;
        }
    }

    fn next_timer(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut t = far;
        if let Some(r) = &self.reg {
            t = t.min(r.next).min(r.give_up);
        }
        if let Some(d) = &self.dialog {
            for x in [d.ring_at, d.answer_at, d.retx.map(|r| r.0)]
                .into_iter()
                .flatten()
            {
                t = t.min(x);
            }
            if d.state == DState::Answered {
                t = t.min(d.ack_give_up);
            }
        }
        for x in [
            self.deadline.map(|d| d.0),
            self.linger_until,
            self.refresh_at,
        ]
        .into_iter()
        .flatten()
        {
            t = t.min(x);
        }
        t
    }

    // ---- REGISTER ----

    fn register_bytes(&self, branch: &str, cseq: u32, unregister: bool, auth: &str) -> Bytes {
        let p = &self.phone;
        let local = self.local;
        let mut m = String::with_capacity(700);
        let _ = write!(
            m,
            "REGISTER sip:{domain} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <{aor}>;tag={tag}\r\n\
             To: <{aor}>\r\n\
             Call-ID: {cid}\r\n\
             CSeq: {cseq} REGISTER\r\n",
            domain = p.domain,
            aor = p.aor,
            tag = p.from_tag,
            cid = p.reg_call_id,
        );
        if unregister {
            m.push_str("Contact: *\r\nExpires: 0\r\n");
        } else {
            let _ = write!(
                m,
                "Contact: <sip:{user}@{local};transport=udp;pn-provider=apns;pn-prid={prid};pn-param={PN_PARAM}>\r\n\
                 Expires: {exp}\r\n",
                user = p.auth_user,
                prid = p.prid,
                exp = self.ctx.args.expires,
            );
        }
        if !auth.is_empty() {
            let _ = write!(m, "Authorization: {auth}\r\n");
        }
        m.push_str(
            "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n\
             Supported: path, outbound\r\n\
             User-Agent: sipis-bench-phone\r\n\
             Content-Length: 0\r\n\r\n",
        );
        Bytes::from(m)
    }

    /// Sends a REGISTER (a new exchange, or the digest answer within one
    /// when `auth` is given). Unregisters carry the last credentials
    /// preemptively.
    fn send_register(&mut self, now: Instant, unregister: bool) {
        let mut auth = String::new();
        if unregister {
            let acct = Account {
                username: &self.phone.auth_user,
                secret: Secret::Password(&self.phone.password),
            };
            let uri = format!("sip:{}", self.phone.domain);
            let _ = self
                .phone
                .digest
                .borrow_mut()
                .reauthorize(&acct, "REGISTER", &uri, &mut auth);
        }
        self.set_phase(Some(if unregister {
            "unregistering"
        } else {
            "registering"
        }));
        let push = !unregister && self.wake.is_some();
        self.start_register_tx(now, unregister, push, auth, None);
    }

    fn start_register_tx(
        &mut self,
        now: Instant,
        unregister: bool,
        push: bool,
        auth: String,
        started: Option<(Instant, u32)>,
    ) {
        let branch = format!("z9hG4bK{}", self.ctx.hex(16));
        let cseq = self.phone.cseq.get();
        self.phone.cseq.set(cseq + 1);
        let bytes = self.register_bytes(&branch, cseq, unregister, &auth);
        let t1 = self.ctx.args.t1;
        let (started, auth_sent) = started.unwrap_or((now, 0));
        self.reg = Some(RegTx {
            unregister,
            push,
            branch,
            bytes: bytes.clone(),
            started,
            next: now + t1,
            interval: t1,
            give_up: now + t1 * 64,
            auth_sent: auth_sent + u32::from(!auth.is_empty()),
        });
        self.ctx.stats().count("register_sent");
        self.out.push((self.ctx.args.sipis, bytes));
    }

    fn on_register_response(&mut self, now: Instant, msg: &Message<'_, '_>) {
        let Some(reg) = self.reg.as_ref() else { return };
        let branch_ok = msg
            .top_via()
            .ok()
            .and_then(|v| v.branch())
            .is_some_and(|b| b == reg.branch.as_bytes());
        if !branch_ok {
            self.ctx.stats().count("stray_responses");
            return;
        }
        let code = msg.status().unwrap_or(0);
        let (unregister, push) = (reg.unregister, reg.push);
        match code {
            100..=199 => {
                // Timer E goes to T2 once a provisional came (§17.1.2.2).
                if let Some(r) = self.reg.as_mut() {
                    r.interval = self.ctx.args.t2;
                    r.next = now + r.interval;
                }
            }
            401 => {
                self.ctx.stats().count("register_401");
                let reg = self.reg.take().expect("checked above");
                let auths: Vec<_> = msg
                    .auth(HeaderName::WwwAuthenticate)
                    .filter_map(Result::ok)
                    .filter(|a| a.is_digest())
                    .collect();
                let challenges: Vec<Challenge<'_>> =
                    auths
                        .iter()
                        .filter_map(|a| {
                            Challenge::from_params(a.params().map_while(Result::ok).filter_map(
                                |p| std::str::from_utf8(p.value).ok().map(|v| (p.name, v)),
                            ))
                            .ok()
                        })
                        .collect();
                let mut digest = self.phone.digest.borrow_mut();
                let Some(ch) = digest::pick(&challenges) else {
                    drop(digest);
                    return self.register_failed("register_bad_challenge", unregister);
                };
                if !digest.should_retry(ch, reg.auth_sent) {
                    drop(digest);
                    return self.register_failed("register_auth_rejected", unregister);
                }
                let acct = Account {
                    username: &self.phone.auth_user,
                    secret: Secret::Password(&self.phone.password),
                };
                let uri = format!("sip:{}", self.phone.domain);
                let mut auth = String::new();
                if digest
                    .authorize(ch, &acct, "REGISTER", &uri, &mut auth)
                    .is_err()
                {
                    drop(digest);
                    return self.register_failed("register_bad_challenge", unregister);
                }
                drop(digest);
                self.start_register_tx(
                    now,
                    unregister,
                    push,
                    auth,
                    Some((reg.started, reg.auth_sent)),
                );
            }
            200..=299 => {
                let reg = self.reg.take().expect("checked above");
                let took = now.duration_since(reg.started);
                if unregister {
                    self.ctx.stats().count("unregistered");
                    self.sleep_again(now);
                    return;
                }
                {
                    let mut st = self.ctx.stats();
                    st.count("registered");
                    if push {
                        st.record("register", took);
                    }
                }
                if push || self.registered_at.is_none() {
                    self.registered_at = Some(now);
                }
                let exp = u64::from(self.ctx.args.expires);
                self.refresh_at = Some(now + Duration::from_secs(exp * 4 / 5));
                let busy = self
                    .dialog
                    .as_ref()
                    .is_some_and(|d| d.state != DState::Ended);
                if !busy {
                    self.set_phase(Some("wait_invite"));
                    if push {
                        self.deadline =
                            Some((now + self.ctx.args.invite_timeout, "invite_timeout"));
                    }
                }
            }
            _ => {
                let _ = self.reg.take();
                let kind = match code {
                    403 => "register_403",
                    404 => "register_404",
                    423 => "register_423",
                    555 => "register_555",
                    400..=499 => "register_4xx",
                    _ => "register_5xx_6xx",
                };
                eprintln!(
                    "phone {}: REGISTER answered {code} {}",
                    self.phone.auth_user,
                    reason(msg)
                );
                self.register_failed(kind, unregister);
            }
        }
    }

    fn register_failed(&mut self, kind: &'static str, unregister: bool) {
        if unregister {
            self.ctx.stats().fail(kind);
            self.sleep_again(Instant::now());
        } else {
            self.end_call(Some(kind));
            self.done = true;
        }
    }

    /// Back to sleep: keep the socket a little for retransmissions.
    fn sleep_again(&mut self, now: Instant) {
        self.reg = None;
        self.refresh_at = None;
        self.deadline = None;
        self.set_phase(Some("linger"));
        self.linger_until = Some(now + self.ctx.args.linger);
    }

    // ---- incoming ----

    fn on_datagram(&mut self, now: Instant, data: &Bytes, from: SocketAddr) {
        let mut h = [EMPTY_HEADER; 64];
        let msg = match parse(data, &mut h) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("phone {}: unparsable datagram: {e:?}", self.phone.auth_user);
                self.ctx.stats().fail("unparsable");
                return;
            }
        };
        if !msg.is_request() {
            let is_register = msg
                .cseq()
                .is_ok_and(|c| matches!(c.method, Method::Register));
            if is_register {
                self.on_register_response(now, &msg);
            } else {
                self.ctx.stats().count("stray_responses");
            }
            return;
        }
        match msg.method() {
            Some(Method::Invite) => self.on_invite(now, &msg, data, from),
            Some(Method::Ack) => self.on_ack(now, &msg),
            Some(Method::Bye) => self.on_bye(now, &msg, from),
            Some(Method::Cancel) => self.on_cancel(now, &msg, from),
            Some(Method::Options) => {
                let r = self.response(&msg, 200, "OK", "", from, b"");
                self.out.push((from, r));
            }
            m => {
                eprintln!("phone {}: unexpected {:?}", self.phone.auth_user, m);
                self.ctx.stats().fail("unexpected_request");
                let r = self.response(&msg, 405, "Method Not Allowed", "", from, b"");
                self.out.push((from, r));
            }
        }
    }

    /// A response to `req`: Vias (with received/rport), From, To (our tag),
    /// Call-ID, CSeq; our Contact on 1xx/2xx to an INVITE; `body` as SDP.
    fn response(
        &self,
        req: &Message<'_, '_>,
        code: u16,
        reason: &str,
        tag: &str,
        from: SocketAddr,
        body: &[u8],
    ) -> Bytes {
        let mut out = BytesMut::with_capacity(600 + body.len());
        let tag = if tag.is_empty() { "x" } else { tag };
        let Ok(mut w) = parser::response_to(&mut out, req, code, reason, tag.as_bytes(), from)
        else {
            return Bytes::new();
        };
        if matches!(req.method(), Some(Method::Invite)) && (101..300).contains(&code) {
            w.header_with("Contact", |o| {
                o.put_slice(b"<sip:");
                o.put_slice(self.phone.auth_user.as_bytes());
                o.put_u8(b'@');
                o.put_slice(self.local.to_string().as_bytes());
                o.put_slice(b";transport=udp>");
            });
        }
        if !body.is_empty() {
            w.header("Content-Type", b"application/sdp");
        }
        w.finish(body);
        out.freeze()
    }

    fn on_invite(&mut self, now: Instant, msg: &Message<'_, '_>, data: &Bytes, from: SocketAddr) {
        let branch = msg
            .top_via()
            .ok()
            .and_then(|v| v.branch())
            .unwrap_or_default()
            .to_vec();
        let call_id = String::from_utf8_lossy(msg.call_id().unwrap_or_default()).into_owned();
        if let Some(d) = &self.dialog {
            if d.branch == branch && d.call_id == call_id {
                // A retransmission: our last answer again (§17.2.1).
                self.ctx.stats().count("invite_retransmissions");
                if let Some(r) = d.last.clone() {
                    self.out.push((from, r));
                }
                return;
            }
            if d.state != DState::Ended {
                self.ctx.stats().fail("invite_while_busy");
                let r = self.response(msg, 486, "Busy Here", &self.ctx.hex(8), from, b"");
                self.out.push((from, r));
                return;
            }
        }
        self.counted = false;
        let mut st = self.ctx.stats();
        st.count("invites");
        if let Some(w) = &self.wake {
            if w.call_id != call_id {
                st.fail("invite_call_id_mismatch");
            }
            st.record("push_to_invite", now.duration_since(w.push_at));
            if let Some(r) = self.registered_at {
                st.record("register_to_invite", now.duration_since(r));
            }
        }
        drop(st);
        self.deadline = None;
        self.set_phase(Some("ringing"));
        let args = &self.ctx.args;
        self.dialog = Some(Dialog {
            call_id,
            invite: data.clone(),
            src: from,
            branch,
            tag: self.ctx.hex(10),
            received: now,
            state: DState::Trying,
            last: None,
            ring_at: Some(now + args.ring_delay),
            answer_at: None,
            ok_sent: None,
            retx: None,
            ack_give_up: now + Duration::from_secs(3600),
            bye_ok: None,
        });
        if args.ring_delay.is_zero() {
            self.on_timer(now);
        }
    }

    /// Sends 180 or 200 for the dialog's INVITE.
    fn answer_invite(&mut self, now: Instant, code: u16) {
        let Some(d) = self.dialog.as_ref() else {
            return;
        };
        let mut h = [EMPTY_HEADER; 64];
        let Ok(inv) = parse(&d.invite, &mut h) else {
            return;
        };
        let src = d.src;
        let tag = d.tag.clone();
        let bytes = if code == 200 {
            let sdp = sdp(self.local);
            self.response(&inv, 200, "OK", &tag, src, sdp.as_bytes())
        } else {
            self.response(&inv, code, "Ringing", &tag, src, b"")
        };
        let t1 = self.ctx.args.t1;
        let d = self.dialog.as_mut().expect("checked above");
        d.last = Some(bytes.clone());
        if code == 200 {
            d.state = DState::Answered;
            d.ok_sent = Some(now);
            d.retx = Some((now + t1, t1));
            d.ack_give_up = now + t1 * 64;
            let took = now.duration_since(d.received);
            let mut st = self.ctx.stats();
            st.count("answered");
            st.record("invite_to_200", took);
        } else {
            d.state = DState::Ringing;
            self.ctx.stats().count("ringing");
        }
        self.out.push((src, bytes));
    }

    fn on_ack(&mut self, now: Instant, msg: &Message<'_, '_>) {
        let call_id = msg.call_id().unwrap_or_default();
        let Some(d) = self.dialog.as_mut() else {
            self.ctx.stats().count("stray_acks");
            return;
        };
        if d.call_id.as_bytes() != call_id {
            self.ctx.stats().count("stray_acks");
            return;
        }
        if d.state != DState::Answered {
            // A retransmitted ACK, or the ACK of a non-2xx: nothing to do.
            self.ctx.stats().count("acks_absorbed");
            return;
        }
        d.state = DState::Confirmed;
        d.retx = None;
        let took = d.ok_sent.map(|t| now.duration_since(t));
        {
            let mut st = self.ctx.stats();
            st.count("acked");
            if let Some(t) = took {
                st.record("ok_to_ack", t);
            }
        }
        self.set_phase(Some("in_call"));
        self.deadline = Some((now + self.ctx.args.bye_timeout, "bye_timeout"));
    }

    fn on_bye(&mut self, now: Instant, msg: &Message<'_, '_>, from: SocketAddr) {
        let call_id = msg.call_id().unwrap_or_default();
        let matches = self
            .dialog
            .as_ref()
            .is_some_and(|d| d.call_id.as_bytes() == call_id);
        if !matches {
            self.ctx.stats().fail("bye_unknown_dialog");
            let r = self.response(
                msg,
                481,
                "Call/Transaction Does Not Exist",
                &self.ctx.hex(8),
                from,
                b"",
            );
            self.out.push((from, r));
            return;
        }
        let d = self.dialog.as_ref().expect("checked");
        if d.state == DState::Ended {
            if let Some(r) = d.bye_ok.clone() {
                self.ctx.stats().count("bye_retransmissions");
                self.out.push((from, r));
            }
            return;
        }
        let tag = d.tag.clone();
        let (state, received) = (d.state, d.received);
        let ok = self.response(msg, 200, "OK", &tag, from, b"");
        self.out.push((from, ok.clone()));
        let d = self.dialog.as_mut().expect("checked");
        d.bye_ok = Some(ok);
        d.state = DState::Ended;
        d.retx = None;
        d.ring_at = None;
        d.answer_at = None;
        {
            let mut st = self.ctx.stats();
            st.count("byes");
            if state == DState::Confirmed {
                st.count("completed");
                st.record("invite_to_bye", now.duration_since(received));
            }
        }
        if state == DState::Confirmed {
            self.end_call(None);
        } else {
            // BYE before the ACK (or before we answered).
            self.end_call(Some("bye_before_ack"));
        }
        self.call_over(now);
    }

    fn on_cancel(&mut self, now: Instant, msg: &Message<'_, '_>, from: SocketAddr) {
        let call_id = msg.call_id().unwrap_or_default();
        let ok = self.response(msg, 200, "OK", &self.ctx.hex(8), from, b"");
        self.out.push((from, ok));
        let Some(d) = self.dialog.as_ref() else {
            return;
        };
        if d.call_id.as_bytes() != call_id || !matches!(d.state, DState::Trying | DState::Ringing) {
            return;
        }
        // 487 to the INVITE; its ACK is absorbed.
        let mut h = [EMPTY_HEADER; 64];
        let invite = d.invite.clone();
        let (src, tag) = (d.src, d.tag.clone());
        if let Ok(inv) = parse(&invite, &mut h) {
            let r = self.response(&inv, 487, "Request Terminated", &tag, src, b"");
            self.out.push((src, r.clone()));
            if let Some(d) = self.dialog.as_mut() {
                d.last = Some(r);
            }
        }
        if let Some(d) = self.dialog.as_mut() {
            d.state = DState::Ended;
            d.ring_at = None;
            d.answer_at = None;
        }
        self.end_call(Some("cancelled"));
        self.call_over(now);
    }

    /// The call is over: a woken phone goes back to sleep, an awake one
    /// waits for the next call.
    fn call_over(&mut self, now: Instant) {
        self.deadline = None;
        if self.awake_mode {
            self.wake = None;
            self.set_phase(Some("wait_invite"));
            return;
        }
        if self.ctx.args.stay_registered {
            self.sleep_again(now);
        } else {
            self.send_register(now, true);
        }
    }

    // ---- timers ----

    fn on_timer(&mut self, now: Instant) {
        // REGISTER retransmission / timeout (Timer E / F).
        if let Some(r) = self.reg.as_mut() {
            if now >= r.give_up {
                let unregister = r.unregister;
                self.reg = None;
                self.register_failed(
                    if unregister {
                        "unregister_timeout"
                    } else {
                        "register_timeout"
                    },
                    unregister,
                );
            } else if now >= r.next {
                r.interval = (r.interval * 2).min(self.ctx.args.t2);
                r.next = now + r.interval;
                let bytes = r.bytes.clone();
                self.ctx.stats().count("register_retransmit");
                self.out.push((self.ctx.args.sipis, bytes));
            }
        }
        if self.refresh_at.is_some_and(|t| now >= t) && self.reg.is_none() {
            self.refresh_at = None;
            let auth_phase = self.phase;
            let mut auth = String::new();
            let acct = Account {
                username: &self.phone.auth_user,
                secret: Secret::Password(&self.phone.password),
            };
            let uri = format!("sip:{}", self.phone.domain);
            let _ = self
                .phone
                .digest
                .borrow_mut()
                .reauthorize(&acct, "REGISTER", &uri, &mut auth);
            self.start_register_tx(now, false, false, auth, None);
            self.set_phase(auth_phase);
        }
        // The dialog: 180, 200, 200 retransmissions, ACK timeout.
        let (ring, answer, retx, ack_dead) = match &self.dialog {
            Some(d) => (
                d.ring_at.is_some_and(|t| now >= t),
                d.answer_at.is_some_and(|t| now >= t),
                d.retx.is_some_and(|(t, _)| now >= t),
                d.state == DState::Answered && now >= d.ack_give_up,
            ),
            None => (false, false, false, false),
        };
        if ring {
            let d = self.dialog.as_mut().expect("checked");
            d.ring_at = None;
            d.answer_at = Some(now + self.ctx.args.answer_delay);
            self.answer_invite(now, 180);
            if self.ctx.args.answer_delay.is_zero() {
                return self.on_timer(now);
            }
        }
        if answer {
            self.dialog.as_mut().expect("checked").answer_at = None;
            self.answer_invite(now, 200);
        }
        if ack_dead {
            let d = self.dialog.as_mut().expect("checked");
            d.state = DState::Ended;
            d.retx = None;
            self.end_call(Some("ack_timeout"));
            self.call_over(now);
        } else if retx {
            let t2 = self.ctx.args.t2;
            let d = self.dialog.as_mut().expect("checked");
            if let Some((next, iv)) = d.retx.as_mut() {
                *iv = (*iv * 2).min(t2);
                *next = now + *iv;
            }
            if let Some(r) = d.last.clone() {
                let src = d.src;
                self.ctx.stats().count("ok_retransmit");
                self.out.push((src, r));
            }
        }
        if let Some((t, kind)) = self.deadline {
            if now >= t {
                self.deadline = None;
                eprintln!(
                    "phone {}: {kind} (phase {:?})",
                    self.phone.auth_user, self.phase
                );
                self.end_call(Some(kind));
                if let Some(d) = self.dialog.as_mut() {
                    d.state = DState::Ended;
                }
                self.call_over(now);
            }
        }
        if self.linger_until.is_some_and(|t| now >= t) {
            self.linger_until = None;
            self.done = true;
        }
    }
}

fn reason(msg: &Message<'_, '_>) -> String {
    match msg.start {
        parser::StartLine::Response { reason, .. } => String::from_utf8_lossy(reason).into_owned(),
        _ => String::new(),
    }
}

fn sdp(local: SocketAddr) -> String {
    let ip = local.ip();
    let port = 20000 + (local.port() % 20000) / 2 * 2;
    format!(
        "v=0\r\no=phone 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n"
    )
}

// ---- provisioning ---------------------------------------------------------------

struct Admin {
    agent: ureq::Agent,
    base: String,
    auth: Option<String>,
}

impl Admin {
    fn new(addr: &str, token: Option<&str>) -> Admin {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Admin {
            agent,
            base: format!("http://{addr}"),
            auth: token.map(|t| format!("Bearer {t}")),
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(u16, String)> {
        let url = format!("{}{path}", self.base);
        let resp = match method {
            "GET" => {
                let mut r = self.agent.get(&url);
                if let Some(a) = &self.auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            "POST" | "PUT" => {
                let mut r = if method == "POST" {
                    self.agent.post(&url)
                } else {
                    self.agent.put(&url)
                };
                if let Some(a) = &self.auth {
                    r = r.header("Authorization", a);
                }
                r.header("Content-Type", content_type).send(&body[..])
            }
            _ => bail!("method {method}"),
        };
        let mut resp = resp.with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .with_context(|| format!("{method} {url}: body"))?;
        Ok((status, text))
    }
}

fn provision(args: ProvisionArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let admin = Admin::new(&args.admin, args.admin_token.as_deref());
    let user = |i: usize| format!("b{i}");
    let password = |i: usize| format!("pw-b{i}-secret");
    // Push tokens: 64 hex digits like an APNs device token.
    let prid = |i: usize| format!("{:064x}", 0xa11ce_u64 << 32 | i as u64);

    // 1. CSV import, proxy mode (no registrar).
    let mut csv =
        String::from("aor,auth_user,password,ha1,registrar,outbound_proxy,expires,enabled\n");
    for i in 1..=args.accounts {
        let u = user(i);
        let _ = writeln!(
            csv,
            "sip:{u}@{},{u},{},,,,3600,true",
            args.domain,
            password(i)
        );
    }
    let (status, body) = admin.call("POST", "/accounts/import", "text/csv", csv.into_bytes())?;
    if status != 200 {
        bail!("POST /accounts/import: {status} {body:.300}");
    }
    let v: serde_json::Value = serde_json::from_str(&body)?;
    eprintln!(
        "provision: imported {} accounts in {:.2?}",
        v["imported"],
        t0.elapsed()
    );

    // 2. Their ids and tokens.
    let mut accounts: HashMap<String, (u64, String)> = HashMap::new();
    let mut after = 0u64;
    for _ in 0..10_000 {
        let (status, body) = admin.call(
            "GET",
            &format!("/accounts?after={after}&limit=1000"),
            "",
            Vec::new(),
        )?;
        if status != 200 {
            bail!("GET /accounts: {status} {body:.300}");
        }
        let page: serde_json::Value = serde_json::from_str(&body)?;
        let list = page["accounts"].as_array().cloned().unwrap_or_default();
        for a in &list {
            let aor = a["aor"].as_str().unwrap_or_default().to_string();
            let id = a["id"].as_u64().unwrap_or(0);
            let token = a["token"].as_str().unwrap_or_default().to_string();
            accounts.insert(aor, (id, token));
        }
        match page["next_after"].as_u64() {
            Some(n) if !list.is_empty() => after = n,
            _ => break,
        }
    }

    // 3. One APNs device each, over a few keep-alive connections.
    let rows: Vec<(usize, u64, String)> = (1..=args.accounts)
        .map(|i| {
            let aor = format!("sip:{}@{}", user(i), args.domain);
            accounts
                .get(&aor)
                .map(|(id, tok)| (i, *id, tok.clone()))
                .ok_or_else(|| anyhow!("{aor} not listed by GET /accounts"))
        })
        .collect::<Result<_>>()?;
    let workers = args.workers.clamp(1, 32);
    let t1 = std::time::Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let rows = &rows;
                let args = &args;
                scope.spawn(move || -> Result<()> {
                    let admin = Admin::new(&args.admin, args.admin_token.as_deref());
                    for (i, id, _) in rows.iter().skip(w).step_by(workers) {
                        let body = serde_json::json!({
                            "provider": "apns",
                            "prid": prid(*i),
                            "param": args.pn_param,
                        });
                        let (status, text) = admin.call(
                            "PUT",
                            &format!("/accounts/{id}/devices/{DEVICE}"),
                            "application/json",
                            body.to_string().into_bytes(),
                        )?;
                        if status != 200 {
                            bail!("PUT /accounts/{id}/devices/{DEVICE}: {status} {text:.300}");
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow!("device worker panicked"))??;
        }
        Ok(())
    })?;
    eprintln!("provision: {} devices in {:.2?}", rows.len(), t1.elapsed());

    // 4. The files.
    std::fs::create_dir_all(&args.out)?;
    let mut phones = String::from("prid,auth_user,password,aor\n");
    let mut calls = String::from("SEQUENTIAL\n");
    for (i, id, token) in &rows {
        let _ = writeln!(
            phones,
            "{},{},{},sip:{}@{}",
            prid(*i),
            user(*i),
            password(*i),
            user(*i),
            args.domain
        );
        let port = args.sip_port + 1 + sipis::runtime::shard_of(*id, args.shards) as u16;
        let _ = writeln!(calls, "{token};{port}");
    }
    std::fs::write(args.out.join("phones.csv"), phones)?;
    std::fs::write(args.out.join("calls.csv"), calls)?;
    eprintln!(
        "provision: wrote {}/phones.csv and calls.csv ({} accounts, {:.2?} in all)",
        args.out.display(),
        rows.len(),
        t0.elapsed()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("50ms").unwrap(), Duration::from_millis(50));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn http_heads() {
        let req = b"POST /push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\nContent-Length: 12\r\n\r\n{\"a\":1}";
        let h = parse_head(req, Some("tok")).unwrap().unwrap();
        assert_eq!(h.content_length, 12);
        assert!(h.authorized && !h.close && !h.chunked);
        let h = parse_head(req, Some("other")).unwrap().unwrap();
        assert!(!h.authorized);
        assert!(parse_head(b"POST /push HTTP/1.1\r\nHost:", None)
            .unwrap()
            .is_none());
        assert!(parse_head(b"GET / HTTP/1.1\r\n\r\n", None).is_err());
    }

    // ---- a woken phone against a stand-in for sipis -----------------------

    use sipis::digest::{Credentials, Ha1, NonceVerifier, Verdict, VerifierConfig};

    async fn recv(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = vec![0u8; 65536];
        let (n, from) = tokio::time::timeout(Duration::from_secs(3), sock.recv_from(&mut buf))
            .await
            .expect("the phone sent nothing within 3 s")
            .expect("recv");
        buf.truncate(n);
        (buf, from)
    }

    /// Checks a REGISTER's digest answer with sipis's own verifier.
    fn verify(v: &mut NonceVerifier, msg: &Message<'_, '_>) -> Verdict {
        let auths: Vec<_> = msg
            .auth(HeaderName::Authorization)
            .filter_map(Result::ok)
            .collect();
        let a = auths.first().expect("an Authorization header");
        let c = Credentials::from_params(
            a.params()
                .map_while(Result::ok)
                .filter_map(|p| std::str::from_utf8(p.value).ok().map(|v| (p.name, v))),
        )
        .expect("digest credentials");
        v.verify(
            &c,
            "REGISTER",
            "sipis",
            std::time::Instant::now(),
            |user, alg| (user == "b1").then(|| Ha1::from_password(alg, user, "sipis", "pw-b1")),
        )
    }

    fn reply(req: &[u8], code: u16, reason: &str, from: SocketAddr, extra: &[String]) -> Bytes {
        let mut h = [EMPTY_HEADER; 64];
        let msg = parse(req, &mut h).expect("request");
        let mut out = BytesMut::new();
        let mut w = parser::response_to(&mut out, &msg, code, reason, b"srv", from).unwrap();
        for v in extra {
            w.header("WWW-Authenticate", v.as_bytes());
        }
        w.finish(b"");
        out.freeze()
    }

    fn header(data: &[u8], name: HeaderName) -> String {
        let mut h = [EMPTY_HEADER; 64];
        let msg = parse(data, &mut h).expect("message");
        String::from_utf8_lossy(msg.header(name).unwrap_or_default()).into_owned()
    }

    #[test]
    fn a_pushed_phone_registers_answers_and_goes_back_to_sleep() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let sipis = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let sipis_addr = sipis.local_addr().unwrap();
            let dir = std::env::temp_dir().join(format!("phones-test-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let list = dir.join("phones.csv");
            std::fs::write(
                &list,
                "prid,auth_user,password,aor\nfeed01,b1,pw-b1,sip:b1@bench.test\n",
            )
            .unwrap();
            let Cmd::Run(args) = Cli::parse_from([
                "phones",
                "run",
                "--phones",
                list.to_str().unwrap(),
                "--sipis",
                &sipis_addr.to_string(),
                "--wake-delay",
                "5ms",
                "--linger",
                "100ms",
            ])
            .cmd
            else {
                unreachable!()
            };
            let ctx = Rc::new(Ctx {
                phones: load_phones(&list, 7).unwrap(),
                args,
                stats: RefCell::new(Stats::default()),
                rng: Cell::new(7),
            });
            let _ = std::fs::remove_dir_all(&dir);
            let push: PushRequest = serde_json::from_value(serde_json::json!({
                "id": "0123456789abcdef", "kind": "incoming_call", "account": 1,
                "device": {"id": "iphone", "platform": "apns", "token": "feed01"},
                "call": {"call_id": "call-1@pbx", "caller_uri": "sip:bob@example.com",
                         "callee": "sip:b1@bench.test"},
                "timestamp_ms": 0
            }))
            .unwrap();
            let answer = on_push(&ctx, push);
            assert_eq!(answer.result, PushResult::Sent);
            let phone = ctx.phones["feed01"].clone();
            assert!(phone.session.borrow().is_some());

            // REGISTER without credentials: challenged.
            let mut verifier = NonceVerifier::new(
                [9; 32],
                std::time::Instant::now(),
                VerifierConfig::default(),
            );
            let (reg, from) = recv(&sipis).await;
            let text = String::from_utf8_lossy(&reg).into_owned();
            assert!(
                text.starts_with("REGISTER sip:bench.test SIP/2.0\r\n"),
                "{text}"
            );
            assert!(
                text.contains(";pn-provider=apns;pn-prid=feed01;pn-param="),
                "{text}"
            );
            assert!(!text.contains("Authorization"), "{text}");
            let mut challenges = Vec::new();
            verifier
                .challenge("sipis", false, std::time::Instant::now(), &mut challenges)
                .unwrap();
            let r = reply(&reg, 401, "Unauthorized", from, &challenges);
            sipis.send_to(&r, from).await.unwrap();

            // The digest answer checks out with sipis's verifier.
            let (reg, from2) = recv(&sipis).await;
            assert_eq!(from, from2, "one socket per wake");
            {
                let mut h = [EMPTY_HEADER; 64];
                let msg = parse(&reg, &mut h).unwrap();
                assert_eq!(verify(&mut verifier, &msg), Verdict::Ok);
                assert_eq!(msg.cseq().unwrap().seq, 2);
            }
            sipis
                .send_to(&reply(&reg, 200, "OK", from, &[]), from)
                .await
                .unwrap();

            // The INVITE: 180, then 200 with SDP, until the ACK.
            let invite = format!(
                "INVITE sip:b1@{from};transport=udp SIP/2.0\r\n\
                 Via: SIP/2.0/UDP {sipis_addr};branch=z9hG4bKinv1;rport\r\n\
                 Max-Forwards: 70\r\n\
                 From: \"Bob\" <sip:bob@example.com>;tag=caller1\r\n\
                 To: <sip:b1@bench.test>\r\n\
                 Call-ID: call-1@pbx\r\n\
                 CSeq: 1 INVITE\r\n\
                 Contact: <sip:tok@{sipis_addr}>\r\n\
                 Content-Length: 0\r\n\r\n"
            );
            sipis.send_to(invite.as_bytes(), from).await.unwrap();
            let (ringing, _) = recv(&sipis).await;
            assert!(ringing.starts_with(b"SIP/2.0 180 Ringing\r\n"));
            let (ok, _) = recv(&sipis).await;
            let ok_text = String::from_utf8_lossy(&ok).into_owned();
            assert!(ok_text.starts_with("SIP/2.0 200 OK\r\n"), "{ok_text}");
            assert!(
                ok_text.contains("Content-Type: application/sdp"),
                "{ok_text}"
            );
            assert!(ok_text.contains("m=audio "), "{ok_text}");
            let to = header(&ok, HeaderName::To);
            assert!(to.contains(";tag="), "{to}");
            let in_dialog = |method: &str, cseq: u32, branch: &str| {
                format!(
                    "{method} sip:b1@{from};transport=udp SIP/2.0\r\n\
                     Via: SIP/2.0/UDP {sipis_addr};branch={branch};rport\r\n\
                     Max-Forwards: 70\r\n\
                     From: \"Bob\" <sip:bob@example.com>;tag=caller1\r\n\
                     To: {to}\r\n\
                     Call-ID: call-1@pbx\r\n\
                     CSeq: {cseq} {method}\r\n\
                     Content-Length: 0\r\n\r\n"
                )
            };
            sipis
                .send_to(in_dialog("ACK", 1, "z9hG4bKack1").as_bytes(), from)
                .await
                .unwrap();
            sipis
                .send_to(in_dialog("BYE", 2, "z9hG4bKbye1").as_bytes(), from)
                .await
                .unwrap();
            let (bye_ok, _) = recv(&sipis).await;
            assert!(bye_ok.starts_with(b"SIP/2.0 200 OK\r\n"));
            assert_eq!(header(&bye_ok, HeaderName::CSeq), "2 BYE");

            // Back to sleep: Contact: *, Expires: 0, credentials reused.
            let (unreg, _) = recv(&sipis).await;
            assert_eq!(header(&unreg, HeaderName::Contact), "*");
            assert_eq!(header(&unreg, HeaderName::Expires), "0");
            {
                let mut h = [EMPTY_HEADER; 64];
                let msg = parse(&unreg, &mut h).unwrap();
                assert_eq!(verify(&mut verifier, &msg), Verdict::Ok);
            }
            sipis
                .send_to(&reply(&unreg, 200, "OK", from, &[]), from)
                .await
                .unwrap();

            for _ in 0..100 {
                if phone.session.borrow().is_none() {
                    break;
                }
                sleep(Duration::from_millis(10)).await;
            }
            assert!(
                phone.session.borrow().is_none(),
                "the phone went back to sleep"
            );
            let st = ctx.stats();
            assert!(st.failures.is_empty(), "{:?}", st.failures);
            for (k, n) in [
                ("register_sent", 3),
                ("register_401", 1),
                ("registered", 1),
                ("unregistered", 1),
                ("invites", 1),
                ("answered", 1),
                ("acked", 1),
                ("completed", 1),
            ] {
                assert_eq!(st.get(k), n, "{k}: {:?}", st.counts);
            }
            assert_eq!(st.calls_done, 1);
            assert_eq!(st.in_flight(), 0);
            for k in ["push_to_invite", "register", "ok_to_ack", "invite_to_bye"] {
                assert_eq!(st.hist.get(k).map(Histogram::len), Some(1), "{k}");
            }
        });
    }
}
