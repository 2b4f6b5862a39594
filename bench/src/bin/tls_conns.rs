//! Phones over TCP or TLS for the front's figures (issue 11, bench/RESULTS.md
//! "TCP/TLS front (issue 11)"), driven by bench/front_load.sh.
//!
//! ```text
//! hold:     N connections from 127.0.0.<first>.. (per_ip each) ─▶ server's TCP/TLS port
//!           (or N UDP sockets to its phone port, for comparison)
//!           each: REGISTER ─▶ 401 ─▶ REGISTER + digest ─▶ 200, then idle
//!           the server's VmRSS (/proc/<pid>/status) before and with all N idle
//! register: C connections, each registering its share of the accounts in a
//!           closed loop (401 + 200 per registration), in waves (the first
//!           binds, the next refresh); utime+stime of the server's
//!           processes over each wave
//! calls:    C phones registered, each answering INVITE with 180 and 200+SDP
//!           and BYE with 200 on its connection; a UDP caller at a fixed
//!           rate: INVITE ─▶ server ─▶ phone, ACK and BYE after the 200;
//!           the server's CPU per call
//! ```
//!
//! Account i is user `b<i>` (1-based) of `--domain` with password
//! `pw-b<i>`: what `front_load.sh` provisions in sipis, and what the
//! Kamailio registrar (`pw-` + user) expects. The digest answer is sipis's
//! own [`sipis::digest::write_authorization`]. Every loop is bounded in
//! count and time; the addresses are loopback only.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use sipis::digest::{write_authorization, Account, Challenge, Secret};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;

#[derive(Parser)]
#[command(about = "SIP phones over TCP/TLS: idle connections, or a REGISTER load")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Open N connections, register one account on each, keep them idle;
    /// print the server's RSS per connection.
    Hold(HoldArgs),
    /// Register accounts in a closed loop over C connections; print rate,
    /// failures and the server's CPU per REGISTER.
    Register(RegisterArgs),
    /// Register C phones, then call them from a UDP caller at a fixed rate
    /// (INVITE, 180, 200, ACK, BYE, 200); print the server's CPU per call.
    Calls(CallsArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    Tcp,
    Tls,
    /// One connected UDP socket per phone (to the shared phone port): the
    /// registrations without any connection, for comparison.
    Udp,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Udp => "udp",
        }
    }
}

#[derive(clap::Args, Clone)]
struct Common {
    /// The server's TCP or TLS port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    #[arg(long, value_enum, default_value = "tls")]
    transport: Transport,
    /// AOR domain (sip:b<i>@<domain>), also the Request-URI of REGISTER.
    #[arg(long, default_value = "front.test")]
    domain: String,
    /// Accounts b1..=b<accounts>.
    #[arg(long)]
    accounts: usize,
    /// Connections per source address (127.0.0.<first_ip>, then the next).
    #[arg(long, default_value_t = 1000)]
    per_ip: usize,
    #[arg(long, default_value_t = 10)]
    first_ip: u8,
    /// Handshakes and registrations in flight at once while connecting.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Time for any one answer.
    #[arg(long, default_value = "5", value_parser = secs)]
    answer_timeout: Duration,
    /// The server's processes (sipis: one; Kamailio: all of them).
    #[arg(long, value_delimiter = ',')]
    pid: Vec<u32>,
}

#[derive(clap::Args)]
struct HoldArgs {
    #[command(flatten)]
    common: Common,
    /// Bound on connecting and registering all of them.
    #[arg(long, default_value = "300", value_parser = secs)]
    connect_bound: Duration,
    /// Idle time before RSS is read.
    #[arg(long, default_value = "5", value_parser = secs)]
    settle: Duration,
    /// Idle time after that (connections still open) before closing all.
    #[arg(long, default_value = "0", value_parser = secs)]
    hold: Duration,
}

#[derive(clap::Args)]
struct RegisterArgs {
    #[command(flatten)]
    common: Common,
    /// Connections (each registers its share of the accounts in turn).
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Bound on each wave.
    #[arg(long, default_value = "60", value_parser = secs)]
    wave_bound: Duration,
    /// Waves over all the accounts (the first binds, the next refresh).
    #[arg(long, default_value_t = 2)]
    waves: usize,
}

#[derive(clap::Args)]
struct CallsArgs {
    #[command(flatten)]
    common: Common,
    /// Phones (one connection and one account each); calls go round them.
    #[arg(long, default_value_t = 500)]
    connections: usize,
    /// Calls per second, and for how long.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    #[arg(long, default_value = "20", value_parser = secs)]
    seconds: Duration,
    /// The server's CPU with the phones registered and no calls is measured
    /// over this long first ("less idle").
    #[arg(long, default_value = "5", value_parser = secs)]
    idle: Duration,
    /// Who is called: sipis (INVITE sip:<token>@127.0.0.1:<shard port>, the
    /// tokens from the admin API) or kamailio (INVITE sip:b<i>@<domain> to
    /// --udp-port).
    #[arg(long, value_enum)]
    server: Server,
    /// Kamailio's UDP port; sipis's `server.sip_port` (shard i listens on
    /// the next ports).
    #[arg(long)]
    udp_port: u16,
    /// sipis: admin API address and token, and its shards.
    #[arg(long, default_value = "127.0.0.1:28160")]
    admin: String,
    #[arg(long, default_value = "")]
    admin_token: String,
    #[arg(long, default_value_t = 2)]
    shards: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Server {
    Sipis,
    Kamailio,
}

fn secs(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .map(Duration::from_secs_f64)
        .map_err(|e| format!("{s}: {e}"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Hold(a) => rt.block_on(hold(a)),
        Cmd::Register(a) => rt.block_on(register_load(a)),
        Cmd::Calls(a) => rt.block_on(calls(a)),
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How connections are made: transport, TLS client configuration, target.
struct Dialer {
    common: Common,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Dialer {
    fn new(common: Common) -> Dialer {
        let tls = (common.transport == Transport::Tls).then(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCert))
                .with_no_client_auth();
            tokio_rustls::TlsConnector::from(Arc::new(cfg))
        });
        Dialer { common, tls }
    }

    /// Source address of connection `i`.
    fn source(&self, i: usize) -> Result<IpAddr> {
        let n = self.common.first_ip as usize + i / self.common.per_ip.max(1);
        if n > 254 {
            bail!("connection {i}: past 127.0.0.254 (raise --per-ip)");
        }
        Ok(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n as u8)))
    }

    async fn connect(&self, i: usize) -> Result<Phone> {
        let to = SocketAddr::from(([127, 0, 0, 1], self.common.port));
        if self.common.transport == Transport::Udp {
            let udp = tokio::net::UdpSocket::bind(SocketAddr::new(self.source(i)?, 0)).await?;
            udp.connect(to).await?;
            let local = udp.local_addr()?;
            return Ok(Phone {
                io: Box::new(Datagrams(udp)),
                buf: Vec::new(),
                local,
                transport: "UDP",
                seq: 0,
            });
        }
        let sock = TcpSocket::new_v4()?;
        sock.bind(SocketAddr::new(self.source(i)?, 0))?;
        let tcp = sock
            .connect(to)
            .await
            .with_context(|| format!("connect {to}"))?;
        tcp.set_nodelay(true)?;
        let local = tcp.local_addr()?;
        let (io, t): (Box<dyn Io>, _) = match &self.tls {
            None => (Box::new(tcp), "TCP"),
            Some(c) => {
                let name = rustls::pki_types::ServerName::IpAddress(
                    IpAddr::V4(Ipv4Addr::LOCALHOST).into(),
                );
                let s = c.connect(name, tcp).await.context("TLS handshake")?;
                (Box::new(s), "TLS")
            }
        };
        Ok(Phone {
            io,
            buf: Vec::new(),
            local,
            transport: t,
            seq: 0,
        })
    }
}

/// A connected UDP socket as a byte stream: one datagram per read or write
/// (a whole SIP message each way, which is all [`Phone`] does with it).
struct Datagrams(tokio::net::UdpSocket);

impl AsyncRead for Datagrams {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.0.poll_recv(cx, buf)
    }
}

impl AsyncWrite for Datagrams {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.poll_send(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The load client trusts whatever certificate the server under test shows
/// (its own self-signed one on loopback): the server's cost is what is
/// measured, and both servers present the same certificate.
#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A SIP phone on one connection.
struct Phone {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    local: SocketAddr,
    transport: &'static str,
    seq: u32,
}

/// How a registration went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 401, then 200.
    Ok,
    /// Another final status (first or second answer).
    Status(u16),
    Timeout,
    Closed,
}

impl Phone {
    async fn send(&mut self, msg: &str) -> Result<()> {
        self.io.write_all(msg.as_bytes()).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// The next message (CRLF keep-alive pongs skipped); `None` when the
    /// connection closed.
    async fn recv(&mut self) -> Result<Option<String>> {
        loop {
            while self.buf.starts_with(b"\r\n") {
                self.buf.drain(..2);
            }
            if let Some(n) = whole(&self.buf) {
                let m = String::from_utf8_lossy(&self.buf[..n]).into_owned();
                self.buf.drain(..n);
                return Ok(Some(m));
            }
            let mut chunk = [0u8; 4096];
            let n = self.io.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// A final answer within `timeout` (provisional ones skipped).
    async fn final_answer(&mut self, timeout: Duration) -> Result<Option<String>, Outcome> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(end, self.recv()).await {
                Err(_) => return Err(Outcome::Timeout),
                Ok(Err(_)) | Ok(Ok(None)) => return Err(Outcome::Closed),
                Ok(Ok(Some(m))) => match status_of(&m) {
                    Some(s) if s >= 200 => return Ok(Some(m)),
                    _ => continue,
                },
            }
        }
    }

    fn request(&mut self, user: &str, domain: &str, call_id: &str, extra: &str) -> String {
        self.seq += 1;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!(
            "REGISTER sip:{domain} SIP/2.0\r\n\
             Via: SIP/2.0/{t} {me};branch=z9hG4bK{n:x}x{pid:x};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@{domain}>;tag=t{n:x}\r\n\
             To: <sip:{user}@{domain}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {seq} REGISTER\r\n\
             Contact: <sip:{user}@{me};transport={tl}>\r\n\
             Expires: 3600\r\n\
             User-Agent: sipis-bench tls_conns\r\n\
             {extra}\
             Content-Length: 0\r\n\r\n",
            t = self.transport,
            tl = self.transport.to_ascii_lowercase(),
            me = self.local,
            pid = std::process::id(),
            seq = self.seq,
        )
    }

    /// REGISTER account `i`: 401, then the digest answer, then 200.
    async fn register(&mut self, i: usize, domain: &str, timeout: Duration) -> Outcome {
        let user = format!("b{i}");
        let password = format!("pw-b{i}");
        let call_id = format!("reg-b{i}-{}", std::process::id());
        let r = self.request(&user, domain, &call_id, "");
        if self.send(&r).await.is_err() {
            return Outcome::Closed;
        }
        let first = match self.final_answer(timeout).await {
            Ok(Some(m)) => m,
            Ok(None) => return Outcome::Closed,
            Err(o) => return o,
        };
        match status_of(&first) {
            Some(401) => {}
            Some(s) => return Outcome::Status(s),
            None => return Outcome::Status(0),
        }
        let uri = format!("sip:{domain}");
        let Some(auth) = answer_challenge(&first, &user, &password, &uri) else {
            return Outcome::Status(401);
        };
        let r = self.request(
            &user,
            domain,
            &call_id,
            &format!("Authorization: {auth}\r\n"),
        );
        if self.send(&r).await.is_err() {
            return Outcome::Closed;
        }
        match self.final_answer(timeout).await {
            Ok(Some(m)) => match status_of(&m) {
                Some(200) => Outcome::Ok,
                s => Outcome::Status(s.unwrap_or(0)),
            },
            Ok(None) => Outcome::Closed,
            Err(o) => o,
        }
    }
}

static NEXT: AtomicU64 = AtomicU64::new(1);

/// Bytes of one whole message at the front of `buf`, if there.
fn whole(buf: &[u8]) -> Option<usize> {
    let head = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = std::str::from_utf8(&buf[..head]).ok()?;
    let len = header(text, "Content-Length")
        .or_else(|| header(text, "l"))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= head + len).then_some(head + len)
}

fn status_of(msg: &str) -> Option<u16> {
    msg.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

/// The first value of header `name` (case-insensitive), trimmed.
fn header<'m>(msg: &'m str, name: &str) -> Option<&'m str> {
    msg.split("\r\n\r\n").next()?.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// `(name, unquoted value)` pairs of a `Digest` challenge.
fn digest_params(value: &str) -> Vec<(String, String)> {
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

/// The `Authorization` value answering the 401 `resp`.
fn answer_challenge(resp: &str, user: &str, password: &str, uri: &str) -> Option<String> {
    let params = digest_params(header(resp, "WWW-Authenticate")?);
    let challenge =
        Challenge::from_params(params.iter().map(|(n, v)| (n.as_str(), v.as_str()))).ok()?;
    let mut out = String::new();
    write_authorization(
        &challenge,
        &Account {
            username: user,
            secret: Secret::Password(password),
        },
        "REGISTER",
        uri,
        "0a4f113b",
        1,
        &mut out,
    )
    .ok()?;
    Some(out)
}

/// `key:` of /proc/<pid>/status, in kB.
fn status_kb(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no {key} in /proc/{pid}/status"))
}

/// utime+stime of the processes, in seconds.
fn cpu_secs(pids: &[u32], hz: f64) -> Result<f64> {
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("read /proc/{pid}/stat"))?;
        // Fields after the command (which may hold spaces) in parentheses.
        let rest = &stat[stat.rfind(')').ok_or_else(|| anyhow!("bad stat"))? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 (1-based), 11 and 12 here.
        ticks += f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    }
    Ok(ticks as f64 / hz)
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// TCP sockets and their kernel buffer pages (system-wide).
fn sockstat() -> String {
    std::fs::read_to_string("/proc/net/sockstat")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .unwrap_or("")
        .to_string()
}

#[derive(Default, Debug)]
struct Tally {
    ok: u64,
    status: u64,
    timeout: u64,
    closed: u64,
    connect_failed: u64,
}

impl Tally {
    fn add(&mut self, o: Outcome) {
        match o {
            Outcome::Ok => self.ok += 1,
            Outcome::Status(_) => self.status += 1,
            Outcome::Timeout => self.timeout += 1,
            Outcome::Closed => self.closed += 1,
        }
    }

    fn failed(&self) -> u64 {
        self.status + self.timeout + self.closed + self.connect_failed
    }
}

async fn hold(a: HoldArgs) -> Result<()> {
    let c = a.common.clone();
    let pid = *c.pid.first().ok_or_else(|| anyhow!("--pid is required"))?;
    let dialer = Arc::new(Dialer::new(c.clone()));
    let rss0 = status_kb(pid, "VmRSS:")?;
    let anon0 = status_kb(pid, "RssAnon:")?;
    let sock0 = sockstat();
    eprintln!("before: VmRSS {rss0} kB, RssAnon {anon0} kB; {sock0}");

    let t0 = Instant::now();
    let deadline = tokio::time::Instant::now() + a.connect_bound;
    // Workers take connection numbers in turn; each keeps its phones open.
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..c.concurrency.max(1) {
        let dialer = dialer.clone();
        let next = next.clone();
        let (n, timeout, domain) = (c.accounts, c.answer_timeout, c.domain.clone());
        workers.spawn(async move {
            let mut kept = Vec::new();
            let mut tally = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n || tokio::time::Instant::now() >= deadline {
                    break;
                }
                let conn = tokio::time::timeout_at(deadline, dialer.connect(i)).await;
                let mut phone = match conn {
                    Ok(Ok(p)) => p,
                    Ok(Err(e)) => {
                        if tally.connect_failed == 0 {
                            eprintln!("connection {i}: {e:#}");
                        }
                        tally.connect_failed += 1;
                        continue;
                    }
                    Err(_) => {
                        tally.connect_failed += 1;
                        break;
                    }
                };
                let o = phone.register(i + 1, &domain, timeout).await;
                tally.add(o);
                if o == Outcome::Ok {
                    kept.push(phone);
                }
            }
            (kept, tally)
        });
    }
    let mut phones = Vec::new();
    let mut tally = Tally::default();
    while let Some(r) = workers.join_next().await {
        let (kept, t) = r?;
        phones.extend(kept);
        tally.ok += t.ok;
        tally.status += t.status;
        tally.timeout += t.timeout;
        tally.closed += t.closed;
        tally.connect_failed += t.connect_failed;
    }
    let took = t0.elapsed();
    eprintln!(
        "{} connections registered in {took:.1?} ({:.0}/s); failed: {tally:?}",
        phones.len(),
        phones.len() as f64 / took.as_secs_f64()
    );
    tokio::time::sleep(a.settle).await;
    let rss1 = status_kb(pid, "VmRSS:")?;
    let anon1 = status_kb(pid, "RssAnon:")?;
    let sock1 = sockstat();
    let n = phones.len().max(1) as f64;
    let kind = c.transport.name();
    println!(
        "hold {kind}: connections {} failed {} | VmRSS {rss0} -> {rss1} kB: {:.0} B/connection | RssAnon {anon0} -> {anon1} kB: {:.0} B/connection",
        phones.len(),
        tally.failed(),
        (rss1 as f64 - rss0 as f64) * 1024.0 / n,
        (anon1 as f64 - anon0 as f64) * 1024.0 / n,
    );
    println!("sockstat before: {sock0}");
    println!("sockstat idle:   {sock1}");
    // Still open, still quiet: sipis must not have closed any.
    let mut closed = 0;
    for p in &mut phones {
        let mut b = [0u8; 1];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(1), p.io.read(&mut b)).await {
            if matches!(r, Ok(0) | Err(_)) {
                closed += 1;
            }
        }
    }
    println!("closed by the server while idle: {closed}");
    if !a.hold.is_zero() {
        eprintln!("holding for {:?}", a.hold);
        tokio::time::sleep(a.hold).await;
    }
    if tally.failed() > 0 || closed > 0 {
        bail!("{} registrations failed, {closed} closed", tally.failed());
    }
    Ok(())
}

async fn register_load(a: RegisterArgs) -> Result<()> {
    let c = a.common.clone();
    if c.pid.is_empty() {
        bail!("--pid is required (the server's processes)");
    }
    let hz = clock_ticks();
    let dialer = Dialer::new(c.clone());
    let conns = a.connections.clamp(1, c.accounts.max(1));
    let mut phones = Vec::with_capacity(conns);
    for i in 0..conns {
        phones.push(
            dialer
                .connect(i)
                .await
                .with_context(|| format!("connection {i}"))?,
        );
    }
    eprintln!("{conns} connections open");
    let kind = c.transport.name();
    let mut failed_total = 0;
    for wave in 1..=a.waves.max(1) {
        let cpu0 = cpu_secs(&c.pid, hz)?;
        let t0 = Instant::now();
        let deadline = tokio::time::Instant::now() + a.wave_bound;
        let mut set = tokio::task::JoinSet::new();
        for (k, mut phone) in phones.drain(..).enumerate() {
            let (n, timeout, domain) = (c.accounts, c.answer_timeout, c.domain.clone());
            set.spawn(async move {
                let mut tally = Tally::default();
                let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
                // Accounts k+1, k+1+conns, …: one connection per account.
                let mut i = k + 1;
                while i <= n && tokio::time::Instant::now() < deadline {
                    let t = Instant::now();
                    let o = phone.register(i, &domain, timeout).await;
                    let _ = hist.record(t.elapsed().as_micros() as u64);
                    tally.add(o);
                    if matches!(o, Outcome::Closed) {
                        break;
                    }
                    i += conns;
                }
                (phone, tally, hist)
            });
        }
        let mut tally = Tally::default();
        let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
        while let Some(r) = set.join_next().await {
            let (phone, t, h) = r?;
            phones.push(phone);
            tally.ok += t.ok;
            tally.status += t.status;
            tally.timeout += t.timeout;
            tally.closed += t.closed;
            hist.add(&h)?;
        }
        let took = t0.elapsed().as_secs_f64();
        let cpu = cpu_secs(&c.pid, hz)? - cpu0;
        let regs = tally.ok as f64;
        // Each registration is two REGISTERs (the challenged one and the
        // answer), as in "REGISTER rate against Kamailio".
        println!(
            "register {kind} wave {wave}: {} registrations ok, {} failed ({tally:?}) in {took:.2} s = {:.0} reg/s, {:.0} REGISTER/s | server CPU {cpu:.2} s = {:.1} us/REGISTER, {:.0}% of a core | 401+200 latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
            tally.ok,
            tally.failed(),
            regs / took,
            2.0 * regs / took,
            cpu * 1e6 / (2.0 * regs).max(1.0),
            cpu * 100.0 / took,
            hist.value_at_quantile(0.5) as f64 / 1000.0,
            hist.value_at_quantile(0.99) as f64 / 1000.0,
            hist.max() as f64 / 1000.0,
        );
        failed_total += tally.failed();
    }
    if failed_total > 0 {
        bail!("{failed_total} registrations failed");
    }
    Ok(())
}

/// A phone's side of calls: 180 and 200 to an INVITE, 200 to a BYE (and to
/// anything else but an ACK), until the connection closes.
async fn answer_calls(mut phone: Phone, user: String, answered: Arc<AtomicU64>) {
    let me = phone.local;
    let tl = phone.transport.to_ascii_lowercase();
    let mut n = 0u64;
    while let Ok(Some(req)) = phone.recv().await {
        if status_of(&req).is_some() {
            continue;
        }
        let method = req.split(' ').next().unwrap_or("");
        n += 1;
        let tag = format!("ph{n:x}");
        let replies = match method {
            "ACK" => continue,
            "INVITE" => {
                answered.fetch_add(1, Ordering::Relaxed);
                let contact = format!("Contact: <sip:{user}@{me};transport={tl}>\r\n");
                let sdp = sdp(me.ip(), 40000);
                vec![
                    reply(&req, 180, "Ringing", &tag, &contact, ""),
                    reply(
                        &req,
                        200,
                        "OK",
                        &tag,
                        &format!("{contact}Content-Type: application/sdp\r\n"),
                        &sdp,
                    ),
                ]
            }
            _ => vec![reply(&req, 200, "OK", &tag, "", "")],
        };
        for r in replies {
            if phone.send(&r).await.is_err() {
                return;
            }
        }
    }
}

/// An answer to `req`: its Via lines, Record-Route lines, From, Call-ID and
/// CSeq, its To with `tag` added when it has none, `extra` lines, `body`.
fn reply(req: &str, code: u16, reason: &str, tag: &str, extra: &str, body: &str) -> String {
    let head = req.split("\r\n\r\n").next().unwrap_or("");
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for l in head.lines().skip(1) {
        let name = l
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if matches!(name.as_str(), "via" | "v" | "record-route") {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    let to = header(req, "To").unwrap_or("");
    let to = if to.contains(";tag=") {
        to.to_string()
    } else {
        format!("{to};tag={tag}")
    };
    out.push_str(&format!(
        "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        header(req, "From").unwrap_or(""),
        header(req, "Call-ID").unwrap_or(""),
        header(req, "CSeq").unwrap_or(""),
        body.len(),
    ));
    out
}

fn sdp(ip: IpAddr, port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    )
}

/// The caller's answers, by Call-ID, from the one UDP socket.
type Calls = Arc<
    std::sync::Mutex<std::collections::HashMap<String, tokio::sync::mpsc::UnboundedSender<String>>>,
>;

/// Who is called for account `i`: Request-URI and where it is sent.
struct Callee {
    ruri: String,
    to: String,
    addr: SocketAddr,
}

/// sipis's accounts b1..=b<n>: each one's Request-URI (its token at its
/// shard's port), from `GET /accounts`.
fn sipis_callees(a: &CallsArgs) -> Result<Vec<Callee>> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut by_aor = std::collections::HashMap::new();
    let mut after = 0u64;
    // Bounded: 1000 accounts a page.
    for _ in 0..10_000 {
        let url = format!("http://{}/accounts?after={after}&limit=1000", a.admin);
        let mut resp = agent
            .get(&url)
            .header("Authorization", &format!("Bearer {}", a.admin_token))
            .call()?;
        if resp.status() != 200 {
            bail!("GET {url}: {}", resp.status());
        }
        let page: serde_json::Value = serde_json::from_str(&resp.body_mut().read_to_string()?)?;
        let list = page["accounts"].as_array().cloned().unwrap_or_default();
        for v in &list {
            let aor = v["aor"].as_str().unwrap_or_default().to_string();
            let id = v["id"].as_u64().unwrap_or(0);
            let token = v["token"].as_str().unwrap_or_default().to_string();
            by_aor.insert(aor, (id, token));
        }
        match page["next_after"].as_u64() {
            Some(n) if !list.is_empty() => after = n,
            _ => break,
        }
    }
    (1..=a.connections)
        .map(|i| {
            let aor = format!("sip:b{i}@{}", a.common.domain);
            let (id, token) = by_aor
                .get(&aor)
                .ok_or_else(|| anyhow!("{aor} not in GET /accounts"))?;
            let port = a.udp_port + 1 + sipis::runtime::shard_of(*id, a.shards) as u16;
            Ok(Callee {
                ruri: format!("sip:{token}@127.0.0.1:{port}"),
                to: format!("<{aor}>"),
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
            })
        })
        .collect()
}

async fn calls(a: CallsArgs) -> Result<()> {
    let c = a.common.clone();
    if c.pid.is_empty() {
        bail!("--pid is required (the server's processes)");
    }
    let hz = clock_ticks();
    let callees: Vec<Callee> = match a.server {
        Server::Sipis => sipis_callees(&a)?,
        Server::Kamailio => (1..=a.connections)
            .map(|i| Callee {
                ruri: format!("sip:b{i}@{}", c.domain),
                to: format!("<sip:b{i}@{}>", c.domain),
                addr: SocketAddr::from(([127, 0, 0, 1], a.udp_port)),
            })
            .collect(),
    };
    // The phones: connect and register each (not timed).
    let dialer = Dialer::new(c.clone());
    let answered = Arc::new(AtomicU64::new(0));
    for i in 0..a.connections {
        let mut phone = dialer
            .connect(i)
            .await
            .with_context(|| format!("phone {i}"))?;
        let o = phone.register(i + 1, &c.domain, c.answer_timeout).await;
        if o != Outcome::Ok {
            bail!("phone b{}: registration {o:?}", i + 1);
        }
        tokio::spawn(answer_calls(phone, format!("b{}", i + 1), answered.clone()));
    }
    eprintln!("{} phones registered", a.connections);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle0 = cpu_secs(&c.pid, hz)?;
    tokio::time::sleep(a.idle).await;
    let idle_share = (cpu_secs(&c.pid, hz)? - idle0) / a.idle.as_secs_f64().max(1e-3);

    let udp = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await?);
    let me = udp.local_addr()?;
    let table: Calls = Arc::default();
    {
        let (udp, table) = (udp.clone(), table.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            while let Ok((n, _)) = udp.recv_from(&mut buf).await {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                let Some(id) = header(&m, "Call-ID").or_else(|| header(&m, "i")) else {
                    continue;
                };
                let tx = table.lock().unwrap().get(id).cloned();
                if let Some(tx) = tx {
                    let _ = tx.send(m);
                }
            }
        });
    }

    let total = (a.rate as f64 * a.seconds.as_secs_f64()).round() as u64;
    let period = Duration::from_secs_f64(1.0 / a.rate.max(1) as f64);
    let callees = Arc::new(callees);
    let cpu0 = cpu_secs(&c.pid, hz)?;
    let t0 = Instant::now();
    let start = tokio::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for k in 0..total {
        tokio::time::sleep_until(start + period * k as u32).await;
        let (udp, table, callees) = (udp.clone(), table.clone(), callees.clone());
        let timeout = c.answer_timeout;
        set.spawn(async move {
            let callee = &callees[k as usize % callees.len()];
            one_call(&udp, me, &table, callee, k, timeout).await
        });
        // Reap as we go so the set stays small.
        while let Some(r) = set.try_join_next() {
            let _ = r?;
        }
    }
    while let Some(r) = set.join_next().await {
        let _ = r?;
    }
    let took = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs(&c.pid, hz)? - cpu0;
    let mut failed = OUTCOMES.lock().unwrap().clone();
    let ok = failed.remove("ok").unwrap_or(0);
    let mut setup = hdrhistogram::Histogram::<u64>::new(3)?;
    for us in SETUP_US.lock().unwrap().iter() {
        let _ = setup.record(*us);
    }
    let nfailed = total - ok;
    let kind = match a.server {
        Server::Sipis => "sipis",
        Server::Kamailio => "kamailio",
    };
    println!(
        "calls {kind}: {total} calls at {}/s: {ok} ok, {nfailed} failed {failed:?}, INVITEs at the phones {} | {took:.2} s | server CPU {cpu:.2} s = {:.0} us/call, {:.0}% of a core; idle {:.1}% of a core, less idle {:.0} us/call | INVITE->200 p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        a.rate,
        answered.load(Ordering::Relaxed),
        cpu * 1e6 / (ok.max(1)) as f64,
        cpu * 100.0 / took,
        idle_share * 100.0,
        (cpu - idle_share * took) * 1e6 / (ok.max(1)) as f64,
        setup.value_at_quantile(0.5) as f64 / 1000.0,
        setup.value_at_quantile(0.99) as f64 / 1000.0,
        setup.max() as f64 / 1000.0,
    );
    if nfailed > 0 {
        bail!("{nfailed} calls failed");
    }
    Ok(())
}

static OUTCOMES: std::sync::Mutex<std::collections::BTreeMap<String, u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());
static SETUP_US: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

/// One call from the UDP caller: INVITE (with SDP) until 200, ACK, BYE
/// until its 200. `Err` names the step that failed.
async fn one_call(
    udp: &tokio::net::UdpSocket,
    me: SocketAddr,
    table: &Calls,
    callee: &Callee,
    k: u64,
    timeout: Duration,
) -> Result<(), String> {
    let call_id = format!("call-{k}-{}", std::process::id());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    table.lock().unwrap().insert(call_id.clone(), tx);
    let r = call_flow(udp, me, &mut rx, callee, &call_id, timeout).await;
    table.lock().unwrap().remove(&call_id);
    let name = match &r {
        Ok(_) => "ok".to_string(),
        Err(e) => e.clone(),
    };
    *OUTCOMES.lock().unwrap().entry(name).or_default() += 1;
    if let Ok(us) = r {
        SETUP_US.lock().unwrap().push(us);
    }
    r.map(|_| ())
}

async fn call_flow(
    udp: &tokio::net::UdpSocket,
    me: SocketAddr,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    callee: &Callee,
    call_id: &str,
    timeout: Duration,
) -> Result<u64, String> {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let from = format!("<sip:caller@127.0.0.1>;tag=c{n:x}");
    let body = sdp(me.ip(), 30000);
    let req = |method: &str, ruri: &str, to: &str, cseq: u32, extra: &str, body: &str| {
        let b = NEXT.fetch_add(1, Ordering::Relaxed);
        format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKc{b:x};rport\r\n\
             Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\nContact: <sip:caller@{me}>\r\n{extra}\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let t = Instant::now();
    let invite = req(
        "INVITE",
        &callee.ruri,
        &callee.to,
        1,
        "Content-Type: application/sdp\r\n",
        &body,
    );
    udp.send_to(invite.as_bytes(), callee.addr)
        .await
        .map_err(|_| "send".to_string())?;
    let end = tokio::time::Instant::now() + timeout;
    let ok = loop {
        let m = tokio::time::timeout_at(end, rx.recv())
            .await
            .map_err(|_| "no 200 to the INVITE".to_string())?
            .ok_or("closed")?;
        match status_of(&m) {
            Some(200) if header(&m, "CSeq").is_some_and(|c| c.ends_with("INVITE")) => break m,
            Some(s) if s >= 300 => return Err(format!("INVITE {s}")),
            _ => continue,
        }
    };
    let setup_us = t.elapsed().as_micros() as u64;
    // The dialog: the callee's Contact, the Record-Route set reversed.
    let to = header(&ok, "To").unwrap_or("").to_string();
    let target = header(&ok, "Contact")
        .and_then(|c| Some(c.split('<').nth(1)?.split('>').next()?.to_string()))
        .ok_or("200 without Contact")?;
    let mut rr: Vec<String> = ok
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("record-route:"))
        .flat_map(|l| {
            l.split_once(':')
                .map(|x| x.1)
                .unwrap_or("")
                .split(',')
                .map(|v| v.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    rr.reverse();
    let route = if rr.is_empty() {
        String::new()
    } else {
        format!("Route: {}\r\n", rr.join(", "))
    };
    let ack = req("ACK", &target, &to, 1, &route, "");
    udp.send_to(ack.as_bytes(), callee.addr)
        .await
        .map_err(|_| "send".to_string())?;
    let bye = req("BYE", &target, &to, 2, &route, "");
    udp.send_to(bye.as_bytes(), callee.addr)
        .await
        .map_err(|_| "send".to_string())?;
    let end = tokio::time::Instant::now() + timeout;
    loop {
        let m = tokio::time::timeout_at(end, rx.recv())
            .await
            .map_err(|_| "no 200 to the BYE".to_string())?
            .ok_or("closed")?;
        match status_of(&m) {
            Some(s) if header(&m, "CSeq").is_some_and(|c| c.ends_with("BYE")) => {
                if s == 200 {
                    return Ok(setup_us);
                }
                if s >= 300 {
                    return Err(format!("BYE {s}"));
                }
            }
            _ => continue,
        }
    }
}
