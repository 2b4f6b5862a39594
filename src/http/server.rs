//! The HTTP/1.1 server: acceptor, connection threads, request framing,
//! limits, authentication, TLS.
//!
//! The acceptor thread hands each connection to a pool of connection
//! threads that grows on demand up to `max_connections`; a connection over
//! the cap goes to a small reject thread that answers 503 and closes, so
//! the acceptor never blocks on a client. A connection thread serves its
//! connection's requests one after the other (keep-alive, pipelining: the
//! bytes after a request stay in the buffer for the next one) until the
//! client closes, asks to close, idles past `idle_timeout`, or breaks a
//! rule that leaves the stream unframed (the answer then says
//! `Connection: close`).
//!
//! The server is generic over the [`Site`] it serves: the admin API
//! (`AdminServer`, in `routes`) and the push mediator's front
//! (`push::mediator::server`) share everything here and differ only in
//! their routes.

use super::site::{self, allows, Call, Response, Site, Target};
use super::{tls, AdminConfig, HttpError};
use crate::metrics;
use crossbeam_channel::{Receiver, Sender};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Most header lines in one request (more: 431).
const MAX_HEADERS: usize = 100;
/// Connections over the cap waiting for their 503 (more are just closed).
const REJECT_QUEUE: usize = 16;
/// How long a closing connection is drained so that the client reads our
/// last response instead of a reset.
const LINGER: Duration = Duration::from_millis(500);

/// A running HTTP/1.1 server of a [`Site`]. Dropping it shuts it down too.
pub(crate) struct HttpServer<S: Site> {
    local_addr: SocketAddr,
    shared: Arc<Shared<S>>,
    acceptor: Option<JoinHandle<()>>,
    rejecter: Option<JoinHandle<()>>,
}

struct Shared<S> {
    cfg: AdminConfig,
    /// SHA-256 of the token: compared in constant time, length hidden.
    token: Option<[u8; 32]>,
    site: S,
    tls: Option<Arc<ServerConfig>>,
    stopping: AtomicBool,
    /// Connections handed to connection threads and not finished.
    active: AtomicUsize,
    /// A clone of each such connection, to shut it down on stop.
    conns: Mutex<HashMap<u64, TcpStream>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    rejected: AtomicU64,
    responses: Mutex<BTreeMap<u16, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<S: Site> HttpServer<S> {
    /// Checks the configuration, loads the TLS files, binds and starts
    /// serving. Refuses a non-loopback `listen` without a token.
    pub(crate) fn start(cfg: AdminConfig, site: S) -> Result<HttpServer<S>, HttpError> {
        let name = S::NAME;
        let token = match &cfg.token {
            Some(t) if t.trim().is_empty() => {
                return Err(HttpError::Config(format!("{name}.token is empty")))
            }
            Some(t) => Some(<[u8; 32]>::from(Sha256::digest(t.as_bytes()))),
            None if !cfg.listen.ip().is_loopback() => {
                return Err(HttpError::Config(format!(
                    "{name}.token is required: {} would listen on {}, which is not a \
                     loopback address, without authentication",
                    S::DESCRIPTION,
                    cfg.listen
                )))
            }
            None => None,
        };
        if cfg.max_connections == 0 {
            return Err(HttpError::Config(format!(
                "{name}.max_connections must be at least 1"
            )));
        }
        if cfg.read_timeout.is_zero() || cfg.idle_timeout.is_zero() {
            return Err(HttpError::Config(format!(
                "{name}.read_timeout and {name}.idle_timeout must not be zero"
            )));
        }
        let tls = cfg.tls.as_ref().map(tls::server_config).transpose()?;
        let listener = TcpListener::bind(cfg.listen).map_err(|source| HttpError::Io {
            what: format!("{name}.listen: cannot bind {}", cfg.listen),
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| HttpError::Io {
            what: format!("{name}.listen: local address"),
            source,
        })?;
        let shared = Arc::new(Shared {
            cfg,
            token,
            site,
            tls,
            stopping: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            conns: Mutex::new(HashMap::new()),
            workers: Mutex::new(Vec::new()),
            rejected: AtomicU64::new(0),
            responses: Mutex::new(BTreeMap::new()),
        });
        let spawn_err = |source| HttpError::Io {
            what: format!("{name}: cannot spawn thread"),
            source,
        };
        let (reject_tx, reject_rx) = crossbeam_channel::bounded(REJECT_QUEUE);
        let s = shared.clone();
        let rejecter = thread::Builder::new()
            .name(format!("sipis-{name}-reject"))
            .spawn(move || {
                for stream in reject_rx {
                    reject(&s, stream);
                }
            })
            .map_err(spawn_err)?;
        let s = shared.clone();
        let acceptor = thread::Builder::new()
            .name(format!("sipis-{name}-accept"))
            .spawn(move || accept_loop(&s, listener, reject_tx))
            .map_err(spawn_err)?;
        Ok(HttpServer {
            local_addr,
            shared,
            acceptor: Some(acceptor),
            rejecter: Some(rejecter),
        })
    }

    /// The bound address (the port chosen when `listen` had port 0).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Appends the server's own metrics (connections, responses by code).
    pub(crate) fn render_metrics(&self, out: &mut String) {
        self.shared.render_metrics(out);
    }

    /// Stops accepting, closes every connection (requests being served
    /// finish first) and joins all threads.
    pub(crate) fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the acceptor out of accept().
        let mut wake = self.local_addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        let _ = acceptor.join();
        for (_, c) in lock(&self.shared.conns).drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
        let workers = std::mem::take(&mut *lock(&self.shared.workers));
        for w in workers {
            let _ = w.join();
        }
        if let Some(r) = self.rejecter.take() {
            let _ = r.join();
        }
    }
}

impl<S: Site> Drop for HttpServer<S> {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop<S: Site>(
    shared: &Arc<Shared<S>>,
    listener: TcpListener,
    reject_tx: Sender<TcpStream>,
) {
    let (job_tx, job_rx) = crossbeam_channel::unbounded::<(u64, TcpStream)>();
    let mut next_id = 0u64;
    let mut spawned = 0usize;
    for conn in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) {
                    // Out of file descriptors or memory: let it pass.
                    thread::sleep(Duration::from_millis(20));
                }
                continue;
            }
        };
        // Only this thread increments `active`, so the check holds.
        let active = shared.active.load(Ordering::SeqCst);
        if active >= shared.cfg.max_connections {
            shared.rejected.fetch_add(1, Ordering::Relaxed);
            let _ = reject_tx.try_send(stream);
            continue;
        }
        let active = shared.active.fetch_add(1, Ordering::SeqCst) + 1;
        if spawned < active {
            let s = shared.clone();
            let rx = job_rx.clone();
            match thread::Builder::new()
                .name(format!("sipis-{}-conn", S::NAME))
                .spawn(move || worker(&s, rx))
            {
                Ok(h) => {
                    spawned += 1;
                    lock(&shared.workers).push(h);
                }
                Err(_) => {
                    shared.active.fetch_sub(1, Ordering::SeqCst);
                    shared.rejected.fetch_add(1, Ordering::Relaxed);
                    let _ = reject_tx.try_send(stream);
                    continue;
                }
            }
        }
        let id = next_id;
        next_id += 1;
        if let Ok(c) = stream.try_clone() {
            lock(&shared.conns).insert(id, c);
        }
        let _ = job_tx.send((id, stream));
    }
}

fn worker<S: Site>(shared: &Arc<Shared<S>>, jobs: Receiver<(u64, TcpStream)>) {
    for (id, stream) in jobs {
        let _ = catch_unwind(AssertUnwindSafe(|| serve(shared, stream)));
        lock(&shared.conns).remove(&id);
        shared.active.fetch_sub(1, Ordering::SeqCst);
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
    }
}

/// Answers a connection over the cap with 503 and closes it.
fn reject<S: Site>(shared: &Shared<S>, tcp: TcpStream) {
    let timeout = Duration::from_secs(1);
    let _ = tcp.set_read_timeout(Some(timeout));
    let _ = tcp.set_write_timeout(Some(timeout));
    let Some(mut conn) = Conn::new(tcp, shared.tls.as_ref()) else {
        return;
    };
    let resp = Response::error(503, &format!("too many {} connections, try again", S::NAME))
        .header("Retry-After", "1")
        .closing();
    if conn.send(&encode(&resp)).is_ok() {
        shared.count(503);
        conn.finish(true);
    }
}

/// A client connection, plain or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

enum ReadOutcome {
    Data,
    TimedOut,
    Closed,
}

impl Conn {
    fn new(tcp: TcpStream, tls: Option<&Arc<ServerConfig>>) -> Option<Conn> {
        Some(match tls {
            None => Conn::Plain(tcp),
            Some(cfg) => {
                let sc = ServerConnection::new(cfg.clone()).ok()?;
                Conn::Tls(Box::new(StreamOwned::new(sc, tcp)))
            }
        })
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(t) => t,
            Conn::Tls(s) => &s.sock,
        }
    }

    /// Reads what arrives before `deadline` onto `buf`.
    fn read_more(&mut self, buf: &mut Vec<u8>, deadline: Instant) -> ReadOutcome {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return ReadOutcome::TimedOut;
            }
            if self.tcp().set_read_timeout(Some(left)).is_err() {
                return ReadOutcome::Closed;
            }
            let r = match self {
                Conn::Plain(t) => t.read(&mut chunk),
                Conn::Tls(s) => s.read(&mut chunk),
            };
            match r {
                Ok(0) => return ReadOutcome::Closed,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    return ReadOutcome::Data;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(_) => return ReadOutcome::Closed,
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Conn::Plain(t) => t.write_all(bytes),
            Conn::Tls(s) => {
                s.write_all(bytes)?;
                s.flush()
            }
        }
    }

    /// Closes: TLS close_notify, FIN, then (if `drain`) reads and drops
    /// what the client still sends for a moment, so that unread request
    /// bytes do not turn our close into a reset that loses the response.
    fn finish(mut self, drain: bool) {
        if let Conn::Tls(s) = &mut self {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
        let tcp = self.tcp();
        let _ = tcp.shutdown(Shutdown::Write);
        if drain {
            let deadline = Instant::now() + LINGER;
            let mut sink = [0u8; 16 * 1024];
            let mut total = 0usize;
            let mut tcp = tcp;
            while total < 1024 * 1024 {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || tcp.set_read_timeout(Some(left)).is_err() {
                    break;
                }
                match tcp.read(&mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        }
    }
}

/// What the server needs of a request head.
struct Head {
    method: String,
    target: String,
    keep_alive: bool,
    /// `Err` when malformed or conflicting.
    content_length: Result<Option<u64>, ()>,
    transfer_encoding: Option<String>,
    authorization: Option<Vec<u8>>,
    content_type: Option<String>,
    expect_continue: bool,
}

/// Parses the head at the start of `buf`: `Ok(None)` when incomplete,
/// `Err` with the response to close with when refused.
fn parse_head(buf: &[u8], max_header_bytes: usize) -> Result<Option<(Head, usize)>, Response> {
    let too_large = || {
        Response::error(
            431,
            &format!("request header larger than {max_header_bytes} bytes or {MAX_HEADERS} lines"),
        )
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > max_header_bytes {
                Err(too_large())
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(too_large()),
        Err(e) => return Err(Response::error(400, &format!("malformed request: {e}"))),
    };
    if n > max_header_bytes {
        return Err(too_large());
    }
    let minor = req.version.unwrap_or(1);
    let mut head = Head {
        method: req.method.unwrap_or("").to_string(),
        target: req.path.unwrap_or("").to_string(),
        keep_alive: minor >= 1,
        content_length: Ok(None),
        transfer_encoding: None,
        authorization: None,
        content_type: None,
        expect_continue: false,
    };
    for h in req.headers.iter() {
        let name = h.name;
        let value = String::from_utf8_lossy(h.value);
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            for v in value.split(',').map(str::trim) {
                let parsed = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
                    v.parse::<u64>().map_err(|_| ())
                } else {
                    Err(())
                };
                head.content_length = match (head.content_length, parsed) {
                    (Ok(None), Ok(n)) => Ok(Some(n)),
                    (Ok(Some(a)), Ok(b)) if a == b => Ok(Some(a)),
                    _ => Err(()),
                };
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let te = head.transfer_encoding.get_or_insert_with(String::new);
            if !te.is_empty() {
                te.push_str(", ");
            }
            te.push_str(value);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    head.keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") && minor == 0 {
                    head.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("authorization") {
            head.authorization = Some(h.value.to_vec());
        } else if name.eq_ignore_ascii_case("content-type") {
            head.content_type = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    // `Connection: close` must win over a later keep-alive.
    if req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .any(|h| {
            String::from_utf8_lossy(h.value)
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"))
        })
    {
        head.keep_alive = false;
    }
    Ok(Some((head, n)))
}

impl<S: Site> Shared<S> {
    fn authorized(&self, header: Option<&[u8]>) -> bool {
        let Some(want) = &self.token else {
            return true;
        };
        let Some(h) = header else {
            return false;
        };
        let h = h.trim_ascii();
        if h.len() < 7 || !h[..6].eq_ignore_ascii_case(b"bearer") || h[6] != b' ' {
            return false;
        }
        let got = Sha256::digest(h[7..].trim_ascii());
        got.as_slice().ct_eq(want.as_slice()).into()
    }

    fn count(&self, status: u16) {
        *lock(&self.responses).entry(status).or_insert(0) += 1;
    }

    fn render_metrics(&self, out: &mut String) {
        let name = S::NAME;
        metrics::gauge(
            out,
            &format!("sipis_{name}_connections"),
            &format!("Connections to {} being served.", S::DESCRIPTION),
            &[],
            self.active.load(Ordering::Relaxed),
        );
        metrics::counter(
            out,
            &format!("sipis_{name}_connections_rejected_total"),
            &format!(
                "Connections to {} refused with 503 over {name}.max_connections.",
                S::DESCRIPTION
            ),
            &[],
            self.rejected.load(Ordering::Relaxed),
        );
        for (code, n) in lock(&self.responses).iter() {
            metrics::counter(
                out,
                &format!("sipis_{name}_responses_total"),
                &format!("Responses of {} by status code.", S::DESCRIPTION),
                &[("code", &code.to_string())],
                *n,
            );
        }
    }
}

/// Serves one connection until it closes.
fn serve<S: Site>(shared: &Shared<S>, tcp: TcpStream) {
    let cfg = &shared.cfg;
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_write_timeout(Some(cfg.read_timeout));
    let Some(mut conn) = Conn::new(tcp, shared.tls.as_ref()) else {
        return;
    };
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // The head: idle_timeout until its first byte, then read_timeout
        // for the whole request.
        let idle_deadline = Instant::now() + cfg.idle_timeout;
        let mut first_byte = (!buf.is_empty()).then(Instant::now);
        let (head, head_len) = loop {
            if !buf.is_empty() {
                match parse_head(&buf, cfg.max_header_bytes) {
                    Ok(Some(h)) => break h,
                    Ok(None) => {}
                    Err(resp) => return respond_and_close(shared, conn, resp),
                }
            }
            let deadline = first_byte.map_or(idle_deadline, |t| t + cfg.read_timeout);
            match conn.read_more(&mut buf, deadline) {
                ReadOutcome::Data => {
                    first_byte.get_or_insert_with(Instant::now);
                }
                ReadOutcome::TimedOut if first_byte.is_some() => {
                    let resp = Response::error(408, "request not received in time");
                    return respond_and_close(shared, conn, resp);
                }
                ReadOutcome::TimedOut => return conn.finish(false),
                ReadOutcome::Closed => return,
            }
        };
        buf.drain(..head_len);
        let started = first_byte.unwrap_or_else(Instant::now);

        // Framing: only Content-Length bodies.
        if let Some(te) = &head.transfer_encoding {
            let chunked = te
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
            let resp = if chunked {
                Response::error(
                    411,
                    "chunked request bodies are not supported: send Content-Length",
                )
            } else {
                Response::error(501, &format!("Transfer-Encoding {te:?} is not supported"))
            };
            return respond_and_close(shared, conn, resp);
        }
        let Ok(content_length) = head.content_length else {
            let resp = Response::error(400, "invalid or conflicting Content-Length");
            return respond_and_close(shared, conn, resp);
        };
        let body_len = content_length.unwrap_or(0);

        // Route and authentication, before reading any body.
        let (path, query) = site::split_target(&head.target);
        let site = &shared.site;
        let target = site.resolve(path);
        let needs_auth = !matches!(&target, Target::Found(r) if !site.needs_auth(r));
        let early = if needs_auth && !shared.authorized(head.authorization.as_deref()) {
            let msg = if head.authorization.is_some() {
                "invalid bearer token"
            } else {
                "missing bearer token"
            };
            Some(Response::error(401, msg).header("WWW-Authenticate", "Bearer realm=\"sipis\""))
        } else {
            match &target {
                Target::NotFound => {
                    Some(Response::error(404, &format!("no such resource: {path}")))
                }
                Target::BadPath => Some(Response::error(400, "undecodable path")),
                Target::Found(r) if !allows(site.allow(r), &head.method) => Some(
                    Response::error(405, &format!("{} not allowed on {path}", head.method))
                        .header("Allow", site.allow(r)),
                ),
                Target::Found(_) => None,
            }
        };
        if let Some(mut resp) = early {
            resp.omit_body = head.method == "HEAD";
            // The body (if any) is not read: the stream is unframed now.
            resp.close |= body_len > buf.len() as u64 || !head.keep_alive;
            if !resp.close {
                buf.drain(..body_len as usize);
            }
            if !respond(shared, &mut conn, &resp) || resp.close {
                return conn.finish(true);
            }
            continue;
        }
        let Target::Found(route) = target else {
            unreachable!("early responses cover every other target");
        };

        // The body.
        if matches!(head.method.as_str(), "POST" | "PUT" | "PATCH") && content_length.is_none() {
            let resp = Response::error(411, "a request body needs a Content-Length");
            return respond_and_close(shared, conn, resp);
        }
        let limit = site.body_limit(&route, cfg);
        if body_len > limit as u64 {
            let resp = Response::error(
                413,
                &format!("request body of {body_len} bytes is over the limit of {limit} bytes"),
            );
            return respond_and_close(shared, conn, resp);
        }
        let body_len = body_len as usize;
        if buf.len() < body_len {
            if head.expect_continue && conn.send(b"HTTP/1.1 100 Continue\r\n\r\n").is_err() {
                return;
            }
            buf.reserve(body_len - buf.len());
            while buf.len() < body_len {
                match conn.read_more(&mut buf, started + cfg.read_timeout) {
                    ReadOutcome::Data => {}
                    ReadOutcome::TimedOut => {
                        let resp = Response::error(408, "request body not received in time");
                        return respond_and_close(shared, conn, resp);
                    }
                    ReadOutcome::Closed => return,
                }
            }
        }
        let body = if buf.len() == body_len {
            std::mem::take(&mut buf)
        } else {
            let rest = buf.split_off(body_len);
            std::mem::replace(&mut buf, rest)
        };

        let call = Call {
            method: &head.method,
            query,
            content_type: head.content_type.as_deref(),
            body: &body,
        };
        let own_metrics = |out: &mut String| shared.render_metrics(out);
        let mut resp = catch_unwind(AssertUnwindSafe(|| {
            site.dispatch(&route, &call, &own_metrics)
        }))
        .unwrap_or_else(|_| Response::error(500, "internal error"));
        drop(body);
        resp.close |= !head.keep_alive || shared.stopping.load(Ordering::SeqCst);
        if !respond(shared, &mut conn, &resp) || resp.close {
            return conn.finish(true);
        }
    }
}

/// Writes a response; false if the connection broke.
fn respond<S: Site>(shared: &Shared<S>, conn: &mut Conn, resp: &Response) -> bool {
    shared.count(resp.status);
    conn.send(&encode(resp)).is_ok()
}

fn respond_and_close<S: Site>(shared: &Shared<S>, mut conn: Conn, resp: Response) {
    let resp = resp.closing();
    if respond(shared, &mut conn, &resp) {
        conn.finish(true);
    }
}

fn encode(resp: &Response) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut head = String::with_capacity(256);
    let _ = write!(head, "HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    if !resp.content_type.is_empty() {
        let _ = write!(head, "Content-Type: {}\r\n", resp.content_type);
    }
    if resp.status != 204 && !resp.omit_body {
        let _ = write!(head, "Content-Length: {}\r\n", resp.body.len());
    }
    head.push_str("Cache-Control: no-store\r\n");
    for (name, value) in &resp.headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if resp.close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if !resp.omit_body {
        out.extend_from_slice(&resp.body);
    }
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parsing() {
        let (h, n) = parse_head(
            b"POST /accounts HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            8192,
        )
        .unwrap()
        .unwrap();
        assert_eq!(n, 74);
        assert_eq!(h.method, "POST");
        assert_eq!(h.content_length, Ok(Some(5)));
        assert!(!h.keep_alive);
        let (h, _) = parse_head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 8192)
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let (h, _) = parse_head(b"GET / HTTP/1.0\r\n\r\n", 8192)
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let (h, _) = parse_head(
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            8192,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.content_length, Err(()));
        let (h, _) = parse_head(b"GET / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n", 8192)
            .unwrap()
            .unwrap();
        assert_eq!(h.content_length, Ok(Some(3)));
        let (h, _) = parse_head(b"GET / HTTP/1.1\r\nContent-Length: +3\r\n\r\n", 8192)
            .unwrap()
            .unwrap();
        assert_eq!(h.content_length, Err(()));
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n", 8192)
            .unwrap()
            .is_none());
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nX: yyyyyyyy", 16)
                .err()
                .unwrap()
                .status,
            431
        );
        assert_eq!(
            parse_head(b"GET\x01 / HTTP/1.1\r\n\r\n", 8192)
                .err()
                .unwrap()
                .status,
            400
        );
    }

    #[test]
    fn encodes_responses() {
        let r = Response::error(404, "nope").header("X-A", "1");
        assert_eq!(
            String::from_utf8(encode(&r)).unwrap(),
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\
             Cache-Control: no-store\r\nX-A: 1\r\n\r\n{\"error\":\"nope\"}"
        );
        let r = Response::no_content().closing();
        assert_eq!(
            String::from_utf8(encode(&r)).unwrap(),
            "HTTP/1.1 204 No Content\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
        );
    }
}
