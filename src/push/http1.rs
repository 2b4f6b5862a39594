//! HTTP/1.1 keep-alive connections to the mediator, on the push client's
//! tokio runtime: a pool of at most `push.connections` connections, each
//! carrying one exchange at a time (RFC 9112 §9.3: no pipelining, so one
//! slow answer never holds up another push). Connections are opened when
//! every open one is busy and kept for the next push; the most recently
//! used is taken first, so a light load stays on one connection.

use bytes::BytesMut;
use rustls::pki_types::ServerName;
use std::fmt;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Largest answer read from the mediator; a PushAnswer is far smaller.
pub(crate) const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Largest answer head (status line and headers).
const MAX_HEAD_BYTES: usize = 16 * 1024;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One open connection and what was read past the last answer.
pub(crate) struct Conn {
    io: Box<dyn Io>,
    buf: BytesMut,
}

/// Where the pushes go: `http[s]://host:port/path`.
pub(crate) struct Endpoint {
    host: String,
    port: u16,
    /// `Host:` (RFC 9112 §3.2), the port only when not the default.
    authority: String,
    path: String,
    tls: Option<tokio_rustls::TlsConnector>,
}

/// Why an exchange produced no answer.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    /// TCP or TLS could not be set up.
    Connect(String),
    /// The connection broke, or the answer is not HTTP/1.1.
    Io(String),
    /// The answer's body is larger than [`MAX_ANSWER_BYTES`].
    TooLarge,
}

impl fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExchangeError::Connect(m) | ExchangeError::Io(m) => f.write_str(m),
            ExchangeError::TooLarge => write!(f, "answer over {MAX_ANSWER_BYTES} bytes"),
        }
    }
}

/// An answer: status code and body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

impl Endpoint {
    /// `url` has passed `crate::url::http_url_problem`.
    pub(crate) fn new(url: &str) -> Result<Endpoint, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let tls = uri.scheme_str() == Some("https");
        let host = uri.host().ok_or("the URL has no host")?.to_owned();
        let default = if tls { 443 } else { 80 };
        let port = uri.port_u16().unwrap_or(default);
        let authority = if port == default {
            host.clone()
        } else {
            format!("{host}:{port}")
        };
        let path = uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        let tls = if tls {
            let mut cfg = (*crate::push::mediator::client_tls(None)?).clone();
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
        } else {
            None
        };
        Ok(Endpoint {
            host,
            port,
            authority,
            path,
            tls,
        })
    }

    async fn connect(&self) -> Result<Conn, ExchangeError> {
        let bare = self.host.trim_start_matches('[').trim_end_matches(']');
        let tcp = TcpStream::connect((bare, self.port))
            .await
            .map_err(|e| ExchangeError::Connect(format!("{}: {e}", self.authority)))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some(connector) => {
                let name = ServerName::try_from(bare.to_owned())
                    .map_err(|e| ExchangeError::Connect(format!("bad server name: {e}")))?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ExchangeError::Connect(format!("TLS: {e}")))?;
                Box::new(tls)
            }
        };
        Ok(Conn {
            io,
            buf: BytesMut::with_capacity(4096),
        })
    }
}

/// The connections to the mediator.
pub(crate) struct Pool {
    endpoint: Endpoint,
    /// The request head up to `Content-Length: ` (it never changes).
    head: String,
    /// One permit per connection in use.
    permits: Semaphore,
    idle: Mutex<Vec<Conn>>,
    authorized: bool,
}

impl Pool {
    pub(crate) fn new(endpoint: Endpoint, connections: usize, authorization: Option<&str>) -> Pool {
        let mut head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sipis/{}\r\n\
             Content-Type: application/json\r\n",
            endpoint.path,
            endpoint.authority,
            env!("CARGO_PKG_VERSION")
        );
        if let Some(a) = authorization {
            head.push_str("Authorization: ");
            head.push_str(a);
            head.push_str("\r\n");
        }
        head.push_str("Content-Length: ");
        Pool {
            endpoint,
            head,
            permits: Semaphore::new(connections),
            idle: Mutex::new(Vec::new()),
            authorized: authorization.is_some(),
        }
    }

    /// Waits for a connection to be free (or allowed to open).
    pub(crate) async fn slot(&self) -> SemaphorePermit<'_> {
        self.permits
            .acquire()
            .await
            .expect("the pool's semaphore is never closed")
    }

    fn take_idle(&self) -> Option<Conn> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn put_idle(&self, c: Conn) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(c);
    }

    /// Whether requests carry an `Authorization` header.
    pub(crate) fn authorized(&self) -> bool {
        self.authorized
    }

    /// Connections open and not in use.
    pub(crate) fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// One POST of `body` and its answer, on a kept connection or a new
    /// one; the caller holds a [`Pool::slot`] and bounds the time. A kept
    /// connection the mediator closed meanwhile (idle timeout, restart)
    /// is replaced once, before any of the answer was read.
    pub(crate) async fn post(&self, body: &[u8]) -> Result<Answer, ExchangeError> {
        let mut request = Vec::with_capacity(self.head.len() + 8 + body.len());
        request.extend_from_slice(self.head.as_bytes());
        request.extend_from_slice(body.len().to_string().as_bytes());
        request.extend_from_slice(b"\r\n\r\n");
        request.extend_from_slice(body);
        if let Some(mut conn) = self.take_idle() {
            match exchange(&mut conn, &request).await {
                Ok((answer, keep)) => {
                    if keep {
                        self.put_idle(conn);
                    }
                    return Ok(answer);
                }
                Err((e, true)) => return Err(e),
                // Nothing came back: a stale connection; try a new one.
                Err((_, false)) => {}
            }
        }
        let mut conn = self.endpoint.connect().await?;
        let (answer, keep) = exchange(&mut conn, &request).await.map_err(|(e, _)| e)?;
        if keep {
            self.put_idle(conn);
        }
        Ok(answer)
    }
}

/// Writes `request` and reads one answer. `Ok((answer, reusable))`;
/// `Err((error, answer_started))`.
async fn exchange(
    conn: &mut Conn,
    request: &[u8],
) -> Result<(Answer, bool), (ExchangeError, bool)> {
    let io_err = |e: std::io::Error, started: bool| (ExchangeError::Io(e.to_string()), started);
    conn.io
        .write_all(request)
        .await
        .map_err(|e| io_err(e, false))?;
    conn.io.flush().await.map_err(|e| io_err(e, false))?;
    conn.buf.clear();
    // The head.
    let (status, head_len, length, chunked, close) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&conn.buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = resp.code.unwrap_or(0);
                let mut length = None;
                let mut chunked = false;
                let mut close = resp.version == Some(0);
                for h in resp.headers.iter() {
                    let v = String::from_utf8_lossy(h.value);
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = Some(v.trim().parse::<usize>().map_err(|_| {
                            (ExchangeError::Io(format!("bad Content-Length {v:?}")), true)
                        })?);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = v.to_ascii_lowercase().contains("chunked");
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        close |= v.eq_ignore_ascii_case("close");
                    }
                }
                // RFC 9110 §15.2: an interim answer; the real one follows.
                if (100..200).contains(&status) {
                    let _ = conn.buf.split_to(n);
                    continue;
                }
                break (status, n, length, chunked, close);
            }
            Ok(httparse::Status::Partial) => {
                if conn.buf.len() > MAX_HEAD_BYTES {
                    return Err((ExchangeError::Io("answer head too large".into()), true));
                }
            }
            Err(e) => {
                return Err((
                    ExchangeError::Io(format!("not an HTTP/1.1 answer: {e}")),
                    true,
                ))
            }
        }
        let started = !conn.buf.is_empty();
        let n = conn
            .io
            .read_buf(&mut conn.buf)
            .await
            .map_err(|e| io_err(e, started))?;
        if n == 0 {
            return Err((
                ExchangeError::Io("connection closed before the answer".into()),
                started,
            ));
        }
    };
    let _ = conn.buf.split_to(head_len);
    let body = if chunked {
        read_chunked(conn).await?
    } else if let Some(len) = length {
        if len > MAX_ANSWER_BYTES {
            return Err((ExchangeError::TooLarge, true));
        }
        while conn.buf.len() < len {
            if conn
                .io
                .read_buf(&mut conn.buf)
                .await
                .map_err(|e| io_err(e, true))?
                == 0
            {
                return Err((
                    ExchangeError::Io("connection closed in the answer's body".into()),
                    true,
                ));
            }
        }
        conn.buf.split_to(len).to_vec()
    } else {
        // RFC 9112 §6.3: no length, no chunks: the body ends with the
        // connection.
        loop {
            if conn.buf.len() > MAX_ANSWER_BYTES {
                return Err((ExchangeError::TooLarge, true));
            }
            if conn
                .io
                .read_buf(&mut conn.buf)
                .await
                .map_err(|e| io_err(e, true))?
                == 0
            {
                break;
            }
        }
        return Ok((
            Answer {
                status,
                body: conn.buf.split().to_vec(),
            },
            false,
        ));
    };
    Ok((Answer { status, body }, !close))
}

/// A chunked body (RFC 9112 §7.1), without trailers' contents.
async fn read_chunked(conn: &mut Conn) -> Result<Vec<u8>, (ExchangeError, bool)> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = conn.buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            fill(conn).await?;
        };
        let line = String::from_utf8_lossy(&conn.buf[..line_end]).into_owned();
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| (ExchangeError::Io(format!("bad chunk size {line:?}")), true))?;
        let _ = conn.buf.split_to(line_end + 2);
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                if let Some(i) = conn.buf.windows(2).position(|w| w == b"\r\n") {
                    let _ = conn.buf.split_to(i + 2);
                    if i == 0 {
                        return Ok(body);
                    }
                } else {
                    fill(conn).await?;
                }
            }
        }
        if body.len() + size > MAX_ANSWER_BYTES {
            return Err((ExchangeError::TooLarge, true));
        }
        while conn.buf.len() < size + 2 {
            fill(conn).await?;
        }
        body.extend_from_slice(&conn.buf[..size]);
        let _ = conn.buf.split_to(size + 2);
    }
}

async fn fill(conn: &mut Conn) -> Result<(), (ExchangeError, bool)> {
    match conn.io.read_buf(&mut conn.buf).await {
        Ok(0) => Err((
            ExchangeError::Io("connection closed in the answer's body".into()),
            true,
        )),
        Ok(_) => Ok(()),
        Err(e) => Err((ExchangeError::Io(e.to_string()), true)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A connection whose peer answers `answer` (in pieces of `piece`
    /// bytes) to whatever is written; returns what the peer read.
    async fn exchange_with(
        answer: &'static [u8],
        piece: usize,
    ) -> (Result<(Answer, bool), (ExchangeError, bool)>, Vec<u8>) {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let peer = tokio::spawn(async move {
            let mut got = vec![0u8; 1024];
            let n = theirs.read(&mut got).await.unwrap();
            got.truncate(n);
            for chunk in answer.chunks(piece) {
                theirs.write_all(chunk).await.unwrap();
                theirs.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            got
        });
        let mut conn = Conn {
            io: Box::new(ours),
            buf: BytesMut::new(),
        };
        let r = exchange(
            &mut conn,
            b"POST /push HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
        )
        .await;
        (r, peer.await.unwrap())
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn content_length_answer_keeps_the_connection() {
        let (r, sent) = run(exchange_with(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            3,
        ));
        assert_eq!(sent, b"POST /push HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}");
        let (a, keep) = r.map_err(|(e, _)| e.to_string()).unwrap();
        assert_eq!(
            (a.status, a.body.as_slice(), keep),
            (200, &b"hello"[..], true)
        );
    }

    #[test]
    fn interim_answer_is_skipped_and_chunked_body_decoded() {
        let (r, _) = run(exchange_with(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\n\
              Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
              4;x=y\r\nbusy\r\n2\r\n!!\r\n0\r\nTrailer: 1\r\n\r\n",
            7,
        ));
        let (a, keep) = r.map_err(|(e, _)| e.to_string()).unwrap();
        assert_eq!(
            (a.status, a.body.as_slice(), keep),
            (503, &b"busy!!"[..], false)
        );
    }

    #[test]
    fn body_without_length_ends_with_the_connection() {
        let (r, _) = run(exchange_with(b"HTTP/1.1 200 OK\r\n\r\n{\"id\":\"1\"}", 4));
        let (a, keep) = r.map_err(|(e, _)| e.to_string()).unwrap();
        assert_eq!((a.body.as_slice(), keep), (&b"{\"id\":\"1\"}"[..], false));
    }

    #[test]
    fn closed_before_any_answer_is_not_started_and_garbage_is_refused() {
        let (r, _) = run(exchange_with(b"", 1));
        let (e, started) = r.err().unwrap();
        assert!(!started, "nothing came back: a stale connection");
        assert_eq!(e.to_string(), "connection closed before the answer");
        let (r, _) = run(exchange_with(b"SIP/2.0 200 OK\r\n\r\n", 64));
        let (e, started) = r.err().unwrap();
        assert!(started);
        assert!(e.to_string().starts_with("not an HTTP/1.1 answer"), "{e}");
        let (r, _) = run(exchange_with(
            b"HTTP/1.1 200 OK\r\nContent-Length: 999999\r\n\r\n",
            64,
        ));
        assert!(matches!(r, Err((ExchangeError::TooLarge, true))));
    }
}
