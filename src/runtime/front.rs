//! The TCP/TLS front: phones (and later providers) over connections,
//! feeding the same engine as UDP.
//!
//! ```text
//!  listener (SO_REUSEPORT, one per shard) ─accept─▶ limits ─▶ Conn task
//!  Conn task: socket ⇄ [rustls] ⇄ stream framer ─▶ message ─▶ owner shard
//!             ▲                                              (mesh when
//!             └──── bytes the engine sends over Flow::Tcp/Tls ◀── another)
//! ```
//!
//! Every shard accepts connections; a connection belongs to the shard that
//! accepted it (its id carries that shard in its low byte, [`conn_shard`]).
//! A framed message is routed exactly as a datagram on the shared UDP port
//! ([`super::Router::owner`]): handled here, or handed to the shard that owns
//! its account over the channel mesh, with the connection as its flow. What
//! an engine sends over `Flow::Tcp(id)` / `Flow::Tls(id)` comes back to the
//! connection's shard and leaves on the connection, so a phone behind NAT is
//! reached where it connected from, whatever its Contact says (RFC 5626
//! §5.3, RFC 5923).
//!
//! A connection's task owns its socket and does all of its I/O in one
//! future: it writes what is queued, then reads into the shard's scratch
//! buffer. Nothing per connection is kept between messages but the bytes of
//! an unfinished message and, for TLS, rustls's state: an idle connection
//! costs a few KiB.
//!
//! Limits (each counted in `/metrics`, see [`FrontMetrics`]): connections in
//! total and per source IP, TLS handshake time, the idle time of a
//! connection that registered nothing and of any connection, the time a
//! message's bytes may take to arrive (slowloris), the largest message, and
//! the bytes queued for a peer that does not read. A peer that breaks one is
//! disconnected; no peer can stall a shard (all socket I/O is non-blocking
//! and per connection).

use crate::engine::Flow;
use sipis_parser::{frame, Frame, Limits};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::Waker;
use std::time::{Duration, Instant};

/// The limits of the front (`[tcp]` and `[tls]` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections open at once, TCP and TLS together, on the node.
    pub max_connections: usize,
    /// Connections open at once from one source IP address.
    pub max_per_ip: usize,
    /// A TLS handshake must be done within this.
    pub tls_handshake_timeout: Duration,
    /// A connection that carries no registration is closed after this long
    /// without a message.
    pub unregistered_timeout: Duration,
    /// Any connection silent this long is closed (phones refresh their
    /// registration or send CRLF keep-alives well within it).
    pub idle_timeout: Duration,
    /// The bytes of one message must all arrive within this (slowloris).
    pub message_timeout: Duration,
    /// Largest message (head and body), and largest head.
    pub max_message: usize,
    pub max_head: usize,
    /// Bytes queued for a peer that does not read, past which it is
    /// disconnected.
    pub max_write_queue: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 20_000,
            max_per_ip: 64,
            tls_handshake_timeout: Duration::from_secs(5),
            unregistered_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(3900),
            message_timeout: Duration::from_secs(10),
            max_message: 65_535,
            max_head: 16 * 1024,
            max_write_queue: 256 * 1024,
        }
    }
}

/// The TLS listener's certificate, key and optional client CA; the files
/// are read again on [`SipTls::reload`] (SIGHUP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate signed by this CA (off when
    /// `None`).
    pub client_ca: Option<PathBuf>,
}

/// The TLS server configuration in use: new connections take the latest;
/// established ones keep theirs.
pub struct SipTls {
    files: TlsSettings,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl SipTls {
    /// Loads the files; the error names the file and what is wrong.
    pub fn load(files: TlsSettings) -> Result<SipTls, String> {
        let cfg = build(&files)?;
        Ok(SipTls {
            files,
            current: RwLock::new(Arc::new(cfg)),
        })
    }

    /// Reads the files again; on an error the old certificate stays.
    pub fn reload(&self) -> Result<(), String> {
        let cfg = build(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(cfg);
        Ok(())
    }

    fn config(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn build(files: &TlsSettings) -> Result<rustls::ServerConfig, String> {
    crate::http::tls::load_server_config(&files.cert, &files.key, files.client_ca.as_deref())
        .map_err(|(path, why)| format!("{}: {why}", path.display()))
}

/// Why a connection ended (the `reason` label of
/// `sipis_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed it.
    Peer,
    /// A socket error (reset, unreachable).
    Error,
    /// Silent past `idle_timeout`.
    Idle,
    /// Carried no registration for `unregistered_timeout`.
    Unregistered,
    /// A message's bytes took longer than `message_timeout`.
    Slow,
    /// A message over the size limit.
    TooLarge,
    /// Bytes that cannot be framed as SIP (no Content-Length, garbage).
    BadFraming,
    /// The peer does not read what is sent to it.
    WriteQueue,
    /// No TLS handshake within `tls_handshake_timeout`.
    HandshakeTimeout,
    /// The TLS layer failed (bad handshake, bad record, certificate).
    Tls,
    /// sipis is stopping.
    Shutdown,
}

impl CloseReason {
    pub const ALL: [CloseReason; 11] = [
        CloseReason::Peer,
        CloseReason::Error,
        CloseReason::Idle,
        CloseReason::Unregistered,
        CloseReason::Slow,
        CloseReason::TooLarge,
        CloseReason::BadFraming,
        CloseReason::WriteQueue,
        CloseReason::HandshakeTimeout,
        CloseReason::Tls,
        CloseReason::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Peer => "peer",
            CloseReason::Error => "error",
            CloseReason::Idle => "idle",
            CloseReason::Unregistered => "unregistered",
            CloseReason::Slow => "slow_message",
            CloseReason::TooLarge => "too_large",
            CloseReason::BadFraming => "bad_framing",
            CloseReason::WriteQueue => "write_queue",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::Tls => "tls_error",
            CloseReason::Shutdown => "shutdown",
        }
    }

    pub fn index(self) -> usize {
        CloseReason::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or(0)
    }
}

/// The front's counters, shared by every shard and read by `/metrics`.
#[derive(Default)]
pub struct FrontMetrics {
    pub open: AtomicUsize,
    pub accepted_tcp: AtomicU64,
    pub accepted_tls: AtomicU64,
    /// Refused at accept: the node's limit, the source's limit.
    pub refused_total: AtomicU64,
    pub refused_per_ip: AtomicU64,
    /// Closed, by [`CloseReason`] (in the order of [`CloseReason::ALL`]).
    pub closed: [AtomicU64; 11],
    pub tls_handshake_failures: AtomicU64,
    /// RFC 5626 §4.4.1 CRLFCRLF pings answered with a CRLF pong.
    pub pings: AtomicU64,
    /// Messages framed off connections.
    pub messages: AtomicU64,
    /// Connections sipis opened (to registrars, proxies), and the attempts
    /// that failed.
    pub connected_tcp: AtomicU64,
    pub connected_tls: AtomicU64,
    pub connect_failures: AtomicU64,
}

/// What every shard's front shares: limits, counts, the TLS configuration.
pub struct FrontShared {
    /// The limits in force; SIGHUP may change them ([`FrontShared::set_limits`]),
    /// and each shard picks the change up within a second.
    limits: RwLock<ConnLimits>,
    limits_generation: AtomicU64,
    pub tls: Option<Arc<SipTls>>,
    /// How sipis checks the servers it connects to over TLS (the system's
    /// public roots and `tls.upstream_ca`).
    pub client_tls: Option<Arc<rustls::ClientConfig>>,
    pub metrics: FrontMetrics,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
}

impl FrontShared {
    pub fn new(limits: ConnLimits, tls: Option<Arc<SipTls>>) -> FrontShared {
        FrontShared {
            limits: RwLock::new(limits),
            limits_generation: AtomicU64::new(0),
            tls,
            client_tls: client_config(None).ok().map(Arc::new),
            metrics: FrontMetrics::default(),
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    /// The limits in force now.
    pub fn limits(&self) -> ConnLimits {
        self.limits
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the limits (SIGHUP): new connections and every shard's
    /// next sweep take them; established connections are not cut for a
    /// lower connection count.
    pub fn set_limits(&self, limits: ConnLimits) {
        *self.limits.write().unwrap_or_else(|p| p.into_inner()) = limits;
        self.limits_generation.fetch_add(1, Ordering::Release);
    }

    /// Bumped by every [`FrontShared::set_limits`].
    pub fn limits_generation(&self) -> u64 {
        self.limits_generation.load(Ordering::Acquire)
    }

    /// Counts a new connection in, or says why it is refused.
    fn admit(&self, ip: IpAddr) -> Result<(), &'static str> {
        let m = &self.metrics;
        let (max, max_per_ip) = {
            let l = self.limits.read().unwrap_or_else(|p| p.into_inner());
            (l.max_connections, l.max_per_ip)
        };
        if m.open.fetch_add(1, Ordering::AcqRel) >= max {
            m.open.fetch_sub(1, Ordering::AcqRel);
            m.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err("max_connections");
        }
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = per_ip.entry(ip).or_insert(0);
        if *n as usize >= max_per_ip {
            drop(per_ip);
            m.open.fetch_sub(1, Ordering::AcqRel);
            m.refused_per_ip.fetch_add(1, Ordering::Relaxed);
            return Err("max_connections_per_ip");
        }
        *n += 1;
        Ok(())
    }

    /// Counts a connection sipis opens (no per-IP limit: it chose the peer).
    fn opened(&self, tls: bool) {
        let m = &self.metrics;
        m.open.fetch_add(1, Ordering::AcqRel);
        if tls {
            m.connected_tls.fetch_add(1, Ordering::Relaxed);
        } else {
            m.connected_tcp.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn release(&self, ip: IpAddr, reason: CloseReason) {
        let m = &self.metrics;
        m.open.fetch_sub(1, Ordering::AcqRel);
        m.closed[reason.index()].fetch_add(1, Ordering::Relaxed);
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
    }
}

/// The shard that holds connection `id`.
pub(super) fn conn_shard(id: u64) -> usize {
    (id & 0xff) as usize
}

/// One connection, as the shard's other tasks see it (the socket itself is
/// owned by the connection's task).
pub(super) struct Conn {
    pub id: u64,
    pub flow: Flow,
    pub peer: SocketAddr,
    /// Bytes to write (for TLS: records, already encrypted).
    out: RefCell<Vec<u8>>,
    /// The bytes of a message not complete yet (TLS: plaintext).
    partial: RefCell<Vec<u8>>,
    tls: Option<RefCell<rustls::Connection>>,
    /// Opened by sipis (to a registrar or proxy), not accepted.
    pub outbound: bool,
    waker: Cell<Option<Waker>>,
    closing: Cell<Option<CloseReason>>,
    created: Instant,
    last_message: Cell<Instant>,
    /// Since when an unfinished message has been waiting for its bytes.
    partial_since: Cell<Option<Instant>>,
    /// A registration lives on this connection (the engine said so).
    pub registered: Cell<bool>,
    /// When sipis last sent a keep-alive on it (connections it opened).
    pub last_ping: Cell<Instant>,
    /// Shards this connection has handed messages to (bit i: shard i, for
    /// i < 64; past 64 shards every shard is told when it closes).
    pub seen: Cell<u64>,
}

impl Conn {
    pub(super) fn new(
        id: u64,
        peer: SocketAddr,
        tls: Option<rustls::Connection>,
        now: Instant,
    ) -> Conn {
        let flow = if tls.is_some() {
            Flow::Tls(id)
        } else {
            Flow::Tcp(id)
        };
        Conn {
            id,
            flow,
            peer,
            out: RefCell::new(Vec::new()),
            partial: RefCell::new(Vec::new()),
            tls: tls.map(RefCell::new),
            outbound: false,
            waker: Cell::new(None),
            closing: Cell::new(None),
            created: now,
            last_message: Cell::new(now),
            partial_since: Cell::new(None),
            registered: Cell::new(false),
            last_ping: Cell::new(now),
            seen: Cell::new(0),
        }
    }

    /// Queues a message for the peer (encrypting it on TLS).
    pub(super) fn send(&self, payload: &[u8], limits: &ConnLimits) {
        if self.closing.get().is_some() {
            return;
        }
        let mut out = self.out.borrow_mut();
        match &self.tls {
            None => out.extend_from_slice(payload),
            Some(tls) => {
                let mut tls = tls.borrow_mut();
                if tls.writer().write_all(payload).is_err() {
                    drop(out);
                    return self.close(CloseReason::Tls);
                }
                while tls.wants_write() {
                    if tls.write_tls(&mut *out).is_err() {
                        break;
                    }
                }
            }
        }
        let over = out.len() > limits.max_write_queue;
        drop(out);
        if over {
            self.close(CloseReason::WriteQueue);
        } else {
            self.wake();
        }
    }

    /// Asks the connection's task to close it.
    pub(super) fn close(&self, reason: CloseReason) {
        if self.closing.get().is_none() {
            self.closing.set(Some(reason));
        }
        self.wake();
    }

    fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// The limit this connection is past at `now`, if any (the shard's
    /// sweeper asks every second).
    pub(super) fn overdue(&self, now: Instant, l: &ConnLimits) -> Option<CloseReason> {
        if let Some(tls) = &self.tls {
            if tls.borrow().is_handshaking()
                && now.duration_since(self.created) > l.tls_handshake_timeout
            {
                return Some(CloseReason::HandshakeTimeout);
            }
        }
        if let Some(since) = self.partial_since.get() {
            if now.duration_since(since) > l.message_timeout {
                return Some(CloseReason::Slow);
            }
        }
        let silent = now.duration_since(self.last_message.get());
        if !self.registered.get() && silent > l.unregistered_timeout {
            return Some(CloseReason::Unregistered);
        }
        (silent > l.idle_timeout).then_some(CloseReason::Idle)
    }
}

/// What one turn of a connection's task found.
pub(super) enum Turn {
    /// This many bytes were read into the shard's scratch buffer.
    Read(usize),
    Closed(CloseReason),
}

/// One turn of a connection's I/O: write what is queued, then read. Ready
/// when bytes came in or the connection is over.
pub(super) fn poll_io<S>(
    cx: &mut std::task::Context<'_>,
    conn: &Conn,
    stream: &mut S,
    scratch: &RefCell<Vec<u8>>,
) -> std::task::Poll<Turn>
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    use std::pin::Pin;
    use std::task::Poll;
    // Write first: a reply is never held up behind a read.
    {
        let mut out = conn.out.borrow_mut();
        let mut written = 0;
        while written < out.len() {
            match Pin::new(&mut *stream).poll_write(cx, &out[written..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    out.clear();
                    return Poll::Ready(Turn::Closed(CloseReason::Error));
                }
                Poll::Ready(Ok(n)) => written += n,
                Poll::Pending => break,
            }
        }
        out.drain(..written);
        if out.is_empty() && out.capacity() > 0 {
            // An idle connection keeps no buffer: most of them are idle
            // phones, and a reallocation per burst costs less than their
            // memory (bench/RESULTS.md "TCP/TLS front (issue 11)").
            *out = Vec::new();
        }
    }
    if let Some(reason) = conn.closing.get() {
        return Poll::Ready(Turn::Closed(reason));
    }
    conn.waker.set(Some(cx.waker().clone()));
    let mut buf = scratch.borrow_mut();
    match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
        Poll::Ready(Ok(0)) => Poll::Ready(Turn::Closed(CloseReason::Peer)),
        Poll::Ready(Ok(n)) => Poll::Ready(Turn::Read(n)),
        Poll::Ready(Err(_)) => Poll::Ready(Turn::Closed(CloseReason::Error)),
        Poll::Pending => Poll::Pending,
    }
}

/// What the bytes just read hold: each whole message goes to `deliver`;
/// pings are answered; the rest waits for more bytes. An error closes the
/// connection.
pub(super) fn take_bytes(
    conn: &Conn,
    data: &[u8],
    now: Instant,
    front: &FrontShared,
    conn_limits: &ConnLimits,
    mut deliver: impl FnMut(&[u8]),
) -> Result<(), CloseReason> {
    let limits = Limits {
        max_head: conn_limits.max_head,
        max_message: conn_limits.max_message,
    };
    let mut partial = conn.partial.borrow_mut();
    match &conn.tls {
        None if partial.is_empty() => {
            // The common case: whole messages straight from the scratch
            // buffer, only a tail copied.
            let used = frames(conn, data, &limits, front, now, &mut deliver)?;
            partial.extend_from_slice(&data[used..]);
        }
        None => {
            partial.extend_from_slice(data);
            let used = frames(conn, &partial, &limits, front, now, &mut deliver)?;
            partial.drain(..used);
        }
        Some(tls) => {
            let mut tls = tls.borrow_mut();
            let mut rd = data;
            while !rd.is_empty() {
                if tls.read_tls(&mut rd).is_err() {
                    return Err(CloseReason::Tls);
                }
                if let Err(e) = tls.process_new_packets() {
                    if tls.is_handshaking() {
                        front
                            .metrics
                            .tls_handshake_failures
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::debug!(peer = %conn.peer, error = %e, "TLS error");
                    // Send the alert before closing.
                    let mut out = conn.out.borrow_mut();
                    while tls.wants_write() && tls.write_tls(&mut *out).is_ok() {}
                    return Err(CloseReason::Tls);
                }
                let mut reader = tls.reader();
                let mut chunk = [0u8; 4096];
                loop {
                    match reader.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => partial.extend_from_slice(&chunk[..n]),
                        Err(_) => break,
                    }
                }
            }
            // Handshake records and the like.
            let mut out = conn.out.borrow_mut();
            while tls.wants_write() {
                if tls.write_tls(&mut *out).is_err() {
                    break;
                }
            }
            drop(out);
            drop(tls);
            let used = frames(conn, &partial, &limits, front, now, &mut deliver)?;
            partial.drain(..used);
        }
    }
    if partial.is_empty() {
        conn.partial_since.set(None);
        if partial.capacity() > 0 {
            *partial = Vec::new();
        }
    } else if conn.partial_since.get().is_none() {
        conn.partial_since.set(Some(now));
    }
    Ok(())
}

/// Frames the front of `data`; returns the bytes used.
fn frames(
    conn: &Conn,
    data: &[u8],
    limits: &Limits,
    front: &FrontShared,
    now: Instant,
    deliver: &mut impl FnMut(&[u8]),
) -> Result<usize, CloseReason> {
    let mut pos = 0;
    loop {
        match frame(&data[pos..], limits) {
            Ok(Frame::Partial) => return Ok(pos),
            Ok(Frame::Ping(n)) => {
                // RFC 5626 §4.4.1: a CRLFCRLF ping gets a CRLF pong.
                front.metrics.pings.fetch_add(1, Ordering::Relaxed);
                conn.last_message.set(now);
                pong(conn);
                pos += n;
            }
            Ok(Frame::Pong(n)) => {
                // The answer to our own keep-alive, or a stray line end.
                if conn.outbound {
                    conn.last_message.set(now);
                }
                pos += n;
            }
            Ok(Frame::Message(n)) => {
                front.metrics.messages.fetch_add(1, Ordering::Relaxed);
                conn.last_message.set(now);
                deliver(&data[pos..pos + n]);
                pos += n;
            }
            Err(sipis_parser::Error::TooLarge) => return Err(CloseReason::TooLarge),
            Err(_) => return Err(CloseReason::BadFraming),
        }
    }
}

fn pong(conn: &Conn) {
    let mut out = conn.out.borrow_mut();
    match &conn.tls {
        None => out.extend_from_slice(b"\r\n"),
        Some(tls) => {
            let mut tls = tls.borrow_mut();
            if tls.writer().write_all(b"\r\n").is_ok() {
                while tls.wants_write() && tls.write_tls(&mut *out).is_ok() {}
            }
        }
    }
}

/// Accepts or refuses a new connection; the new connection when admitted.
pub(super) fn admit(
    front: &FrontShared,
    id: u64,
    peer: SocketAddr,
    tls: bool,
    now: Instant,
) -> Option<Conn> {
    if let Err(limit) = front.admit(peer.ip()) {
        tracing::debug!(%peer, limit, "connection refused");
        return None;
    }
    let m = &front.metrics;
    let tls = if tls {
        let Some(cfg) = front.tls.as_ref() else {
            front.release(peer.ip(), CloseReason::Tls);
            return None;
        };
        match rustls::ServerConnection::new(cfg.config()) {
            Ok(c) => Some(rustls::Connection::Server(c)),
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot start a TLS session");
                front.release(peer.ip(), CloseReason::Tls);
                return None;
            }
        }
    } else {
        None
    };
    if tls.is_some() {
        m.accepted_tls.fetch_add(1, Ordering::Relaxed);
    } else {
        m.accepted_tcp.fetch_add(1, Ordering::Relaxed);
    }
    Some(Conn::new(id, peer, tls, now))
}

/// A connection sipis opens to `dest` (the socket is connected by the
/// caller); `server_name` is checked against the certificate over TLS.
pub(super) fn outbound(
    front: &FrontShared,
    id: u64,
    dest: SocketAddr,
    tls: bool,
    server_name: Option<&str>,
    now: Instant,
) -> Result<Conn, String> {
    let tls = if tls {
        let cfg = front
            .client_tls
            .clone()
            .ok_or_else(|| "no TLS client configuration".to_owned())?;
        let name = match server_name {
            Some(n) => rustls::pki_types::ServerName::try_from(n.to_owned())
                .map_err(|e| format!("server name {n:?}: {e}"))?,
            None => rustls::pki_types::ServerName::IpAddress(dest.ip().into()),
        };
        let c = rustls::ClientConnection::new(cfg, name).map_err(|e| e.to_string())?;
        Some(rustls::Connection::Client(c))
    } else {
        None
    };
    front.opened(tls.is_some());
    let mut c = Conn::new(id, dest, tls, now);
    c.outbound = true;
    // It carries the accounts' registrations: never closed for silence
    // (keep-alives hold it open).
    c.registered.set(true);
    if let Some(tls) = &c.tls {
        // The ClientHello goes first, once connected.
        let mut tls = tls.borrow_mut();
        let mut out = c.out.borrow_mut();
        while tls.wants_write() && tls.write_tls(&mut *out).is_ok() {}
    }
    Ok(c)
}

/// The TLS client configuration: public roots plus `extra_ca` (PEM).
pub fn client_config(extra_ca: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let pem =
            std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let mut n = 0;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            let c = c.map_err(|e| format!("{}: bad PEM certificate: {e:?}", path.display()))?;
            roots
                .add(c)
                .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("{}: no CERTIFICATE block found", path.display()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// How often sipis sends a CRLFCRLF keep-alive on a connection it opened
/// (RFC 5626 §4.4.1): well inside the idle lifetime registrars give
/// connections (Kamailio's `tcp_connection_lifetime` is 120 s by default).
pub const UPSTREAM_KEEPALIVE: Duration = Duration::from_secs(30);

/// Queues a CRLFCRLF keep-alive on a connection sipis opened, if one is
/// due, so the registrar (and NATs between) keep it.
pub(super) fn ping(conn: &Conn, now: Instant, limits: &ConnLimits) {
    if conn.outbound && now.duration_since(conn.last_ping.get()) >= UPSTREAM_KEEPALIVE {
        conn.last_ping.set(now);
        conn.send(b"\r\n\r\n", limits);
    }
}

/// Counts a connection out.
pub(super) fn closed(front: &FrontShared, conn: &Conn, reason: CloseReason) {
    front.release(conn.peer.ip(), reason);
    tracing::debug!(peer = %conn.peer, id = conn.id, reason = reason.as_str(), "connection closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed_across_reads_and_pings_answered() {
        let front = FrontShared::new(ConnLimits::default(), None);
        let now = Instant::now();
        let conn = Conn::new(1, "127.0.0.1:5000".parse().unwrap(), None, now);
        let msg = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 2\r\n\r\nhi";
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut wire = b"\r\n\r\n".to_vec();
        wire.extend_from_slice(msg);
        wire.extend_from_slice(&msg[..10]);
        take_bytes(&conn, &wire, now, &front, &front.limits(), |m| {
            got.push(m.to_vec())
        })
        .unwrap();
        assert_eq!(got, vec![msg.to_vec()]);
        assert_eq!(&*conn.out.borrow(), b"\r\n", "CRLF pong");
        assert!(conn.partial_since.get().is_some());
        take_bytes(&conn, &msg[10..], now, &front, &front.limits(), |m| {
            got.push(m.to_vec())
        })
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], msg.to_vec());
        assert!(conn.partial_since.get().is_none());
        assert_eq!(front.metrics.pings.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn oversize_and_unframeable_close_and_slow_messages_time_out() {
        let limits = ConnLimits {
            max_message: 100,
            ..ConnLimits::default()
        };
        let front = FrontShared::new(limits.clone(), None);
        let now = Instant::now();
        let conn = Conn::new(1, "127.0.0.1:5000".parse().unwrap(), None, now);
        let big = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 500\r\n\r\n";
        assert_eq!(
            take_bytes(&conn, big, now, &front, &limits, |_| {}),
            Err(CloseReason::TooLarge)
        );
        let conn = Conn::new(2, "127.0.0.1:5000".parse().unwrap(), None, now);
        let no_cl = b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n";
        assert_eq!(
            take_bytes(&conn, no_cl, now, &front, &limits, |_| {}),
            Err(CloseReason::BadFraming)
        );
        let conn = Conn::new(3, "127.0.0.1:5000".parse().unwrap(), None, now);
        take_bytes(
            &conn,
            b"OPTIONS sip:a@b SIP/2.0\r\nVia",
            now,
            &front,
            &limits,
            |_| {},
        )
        .unwrap();
        assert_eq!(conn.overdue(now + Duration::from_secs(5), &limits), None);
        assert_eq!(
            conn.overdue(now + Duration::from_secs(11), &limits),
            Some(CloseReason::Slow)
        );
    }

    #[test]
    fn per_ip_and_total_limits_refuse_and_release() {
        let limits = ConnLimits {
            max_connections: 3,
            max_per_ip: 2,
            ..ConnLimits::default()
        };
        let front = FrontShared::new(limits, None);
        let now = Instant::now();
        let a: SocketAddr = "127.0.0.2:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.3:1000".parse().unwrap();
        let c1 = admit(&front, 1, a, false, now).unwrap();
        let _c2 = admit(&front, 2, a, false, now).unwrap();
        assert!(admit(&front, 3, a, false, now).is_none(), "per-IP cap");
        let _c3 = admit(&front, 4, b, false, now).unwrap();
        assert!(admit(&front, 5, b, false, now).is_none(), "total cap");
        closed(&front, &c1, CloseReason::Peer);
        assert!(admit(&front, 6, a, false, now).is_some());
        let m = &front.metrics;
        assert_eq!(m.refused_per_ip.load(Ordering::Relaxed), 1);
        assert_eq!(m.refused_total.load(Ordering::Relaxed), 1);
        assert_eq!(
            m.closed[CloseReason::Peer.index()].load(Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn a_peer_that_does_not_read_is_cut_past_the_write_queue() {
        let limits = ConnLimits {
            max_write_queue: 100_000,
            ..ConnLimits::default()
        };
        let conn = Conn::new(1, "127.0.0.1:5000".parse().unwrap(), None, Instant::now());
        let msg = vec![b'x'; 30_000];
        for _ in 0..3 {
            conn.send(&msg, &limits);
        }
        assert_eq!(conn.closing.get(), None, "90 000 bytes queued: within");
        conn.send(&msg, &limits);
        assert_eq!(conn.closing.get(), Some(CloseReason::WriteQueue));
        // Nothing more is queued once it is closing.
        let queued = conn.out.borrow().len();
        conn.send(&msg, &limits);
        assert_eq!(conn.out.borrow().len(), queued);
    }

    #[test]
    fn an_unregistered_connection_times_out_before_a_registered_one() {
        let l = ConnLimits::default();
        let now = Instant::now();
        let conn = Conn::new(1, "127.0.0.1:5000".parse().unwrap(), None, now);
        let later = now + l.unregistered_timeout + Duration::from_secs(1);
        assert_eq!(conn.overdue(later, &l), Some(CloseReason::Unregistered));
        conn.registered.set(true);
        assert_eq!(conn.overdue(later, &l), None);
        let much_later = now + l.idle_timeout + Duration::from_secs(1);
        assert_eq!(conn.overdue(much_later, &l), Some(CloseReason::Idle));
    }
}
