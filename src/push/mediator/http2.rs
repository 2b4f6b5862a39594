//! The HTTP/2 client the mediator talks to APNs and Google with: TLS
//! connections per origin, kept open and shared by all pushes as concurrent
//! streams. RFC 9113 §5.1.2: the server's `SETTINGS_MAX_CONCURRENT_STREAMS`
//! bounds the streams of one connection (APNs announces 1 000 at most, and
//! fewer while a fresh connection is trusted less), so when every
//! connection of an origin is at its limit another one is opened, up to
//! [`MAX_CONNECTIONS_PER_ORIGIN`]; past that `h2` waits for a free stream.
//!
//! `http://` URLs speak HTTP/2 without TLS ("prior knowledge", RFC 9113
//! §3.3): only for local stand-ins, APNs and Google are `https://`.
//!
//! Apple, "Sending notification requests to APNs": "Keep your connections
//! with APNs open across multiple notifications; don't repeatedly open and
//! close connections" — connecting is done once, by the first request that
//! finds no live connection, while the others wait for it.

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use http::{HeaderMap, Method, Request};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Most connections kept to one origin. 16 × APNs's 1 000 streams is far
/// beyond `mediator.concurrency`'s pushes at once; the cap only guards
/// against a peer that announces tiny stream limits.
pub(crate) const MAX_CONNECTIONS_PER_ORIGIN: usize = 16;

/// Largest answer body read (APNs and FCM error bodies are a few hundred
/// bytes; a token answer about 1 KiB).
const MAX_ANSWER: usize = 64 * 1024;

/// Scheme, host and port of a URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Origin {
    /// `https` (else `http`, without TLS).
    tls: bool,
    /// As in the URL (IPv6 in brackets).
    host: String,
    port: u16,
}

impl Origin {
    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// `:authority` (RFC 9113 §8.3.1): the port only when not the
    /// scheme's default.
    fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn bare_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme(), self.authority())
    }
}

/// A configured URL: its origin and its path (with query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    pub(crate) origin: Origin,
    /// Starts with `/`; without a trailing `/` unless it is just `/`.
    pub(crate) path: String,
}

impl Url {
    /// Parses an `https://host[:port][/path]` (or `http://`) URL; the
    /// message says what is wrong.
    pub(crate) fn parse(url: &str) -> Result<Url, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(format!(
                    "{url:?}: expected an https:// URL (or http:// for HTTP/2 without TLS)"
                ))
            }
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{url:?} has no host"))?;
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(format!(
                "{url:?}: user information in URLs is not supported"
            ));
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let path = match path.trim_end_matches('/') {
            "" => "/".to_string(),
            p => p.to_string(),
        };
        Ok(Url {
            origin: Origin {
                tls,
                host: host.to_string(),
                port,
            },
            path,
        })
    }
}

/// Why an exchange produced no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum H2Error {
    /// TCP, TLS or the HTTP/2 preface failed.
    Connect(String),
    /// The stream or connection broke before the answer was complete.
    Stream(String),
    /// No complete answer within the request timeout.
    TimedOut(Duration),
}

impl fmt::Display for H2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            H2Error::Connect(m) => write!(f, "cannot connect: {m}"),
            H2Error::Stream(m) => write!(f, "exchange broken: {m}"),
            H2Error::TimedOut(t) => write!(f, "no answer within {} ms", t.as_millis()),
        }
    }
}

/// An answer.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// A request to send: everything but the `:scheme`/`:authority`, which
/// come from the origin.
pub(crate) struct Outgoing<'a> {
    pub(crate) method: Method,
    pub(crate) path: &'a str,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// HTTP/2 connections to any number of origins, with one trust store.
pub(crate) struct Client {
    tls: TlsConnector,
    slots: Mutex<HashMap<Origin, Arc<Slot>>>,
    next_id: AtomicU64,
    /// Connections opened (a metric: reuse keeps it low).
    connects: AtomicU64,
}

/// The connections to one origin. The async mutex is held while
/// connecting, so that concurrent requests wait for one new connection
/// instead of each opening its own.
struct Slot {
    live: tokio::sync::Mutex<Vec<Live>>,
}

struct Live {
    id: u64,
    send: SendRequest<Bytes>,
    /// Set by the connection's driver task when the connection ends.
    closed: Arc<AtomicBool>,
    /// Requests on it now.
    load: Arc<AtomicUsize>,
}

impl Live {
    /// Room for one more stream within the peer's
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`.
    fn has_room(&self) -> bool {
        self.load.load(Ordering::Acquire) < self.send.current_max_send_streams()
    }
}

/// One request's share of a connection's load.
struct Load(Arc<AtomicUsize>);

impl Load {
    fn on(load: &Arc<AtomicUsize>) -> Load {
        load.fetch_add(1, Ordering::AcqRel);
        Load(load.clone())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The client TLS configuration: the public web roots plus `ca_file`'s
/// certificates, ALPN `h2` only (both APNs and Google require HTTP/2 here).
pub(crate) fn tls_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        for cert in read_certs(path)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: unusable certificate: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// The certificates of a PEM file (at least one).
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: broken PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no \"-----BEGIN CERTIFICATE-----\" block found",
            path.display()
        ));
    }
    Ok(certs)
}

impl Client {
    pub(crate) fn new(tls: Arc<ClientConfig>) -> Client {
        Client {
            tls: TlsConnector::from(tls),
            slots: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            connects: AtomicU64::new(0),
        }
    }

    /// Connections opened so far.
    pub(crate) fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Sends a request to `origin` and reads the whole answer, within
    /// `timeout` (connecting included).
    pub(crate) async fn send(
        &self,
        origin: &Origin,
        req: &Outgoing<'_>,
        timeout: Duration,
    ) -> Result<Reply, H2Error> {
        match tokio::time::timeout(timeout, self.exchange(origin, req)).await {
            Ok(r) => r,
            Err(_) => Err(H2Error::TimedOut(timeout)),
        }
    }

    async fn exchange(&self, origin: &Origin, out: &Outgoing<'_>) -> Result<Reply, H2Error> {
        let uri = format!("{origin}{}", out.path);
        // A kept connection may have been closed by the server (GOAWAY,
        // idle timeout) since its last use: when it fails before the
        // request went out, the request goes out once more on a new one.
        let mut fresh_tried = false;
        loop {
            let (id, send, fresh, _load) = self.sender(origin).await?;
            let may_retry = !fresh && !fresh_tried;
            let mut send = match send.ready().await {
                Ok(s) => s,
                Err(e) => {
                    self.forget(origin, id).await;
                    if !may_retry {
                        return Err(H2Error::Stream(e.to_string()));
                    }
                    fresh_tried = true;
                    continue;
                }
            };
            let mut req = Request::builder()
                .method(out.method.clone())
                .uri(uri.as_str())
                .body(())
                .map_err(|e| H2Error::Stream(format!("bad request {uri}: {e}")))?;
            *req.headers_mut() = out.headers.clone();
            let (answer, mut stream) = match send.send_request(req, out.body.is_empty()) {
                Ok(x) => x,
                Err(e) => {
                    self.forget(origin, id).await;
                    if !may_retry {
                        return Err(H2Error::Stream(e.to_string()));
                    }
                    fresh_tried = true;
                    continue;
                }
            };
            if !out.body.is_empty() {
                stream
                    .send_data(out.body.clone(), true)
                    .map_err(|e| H2Error::Stream(e.to_string()))?;
            }
            let answer = answer.await.map_err(|e| {
                if e.is_io() || e.is_go_away() {
                    H2Error::Stream(format!("connection lost: {e}"))
                } else {
                    H2Error::Stream(e.to_string())
                }
            })?;
            let (parts, mut body) = answer.into_parts();
            let mut buf = BytesMut::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.map_err(|e| H2Error::Stream(e.to_string()))?;
                let _ = body.flow_control().release_capacity(chunk.len());
                if buf.len() + chunk.len() > MAX_ANSWER {
                    return Err(H2Error::Stream(format!(
                        "answer body over {MAX_ANSWER} bytes"
                    )));
                }
                buf.extend_from_slice(&chunk);
            }
            return Ok(Reply {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: buf.freeze(),
            });
        }
    }

    /// A live connection to `origin` with a free stream (connecting when
    /// every one is full and the cap allows): its id, a handle, whether it
    /// was opened just now, and this request's share of its load.
    async fn sender(
        &self,
        origin: &Origin,
    ) -> Result<(u64, SendRequest<Bytes>, bool, Load), H2Error> {
        let slot = lock(&self.slots)
            .entry(origin.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    live: tokio::sync::Mutex::new(Vec::new()),
                })
            })
            .clone();
        let mut live = slot.live.lock().await;
        live.retain(|l| !l.closed.load(Ordering::Acquire));
        // The first with room: a light load stays on one connection.
        if let Some(l) = live.iter().find(|l| l.has_room()) {
            return Ok((l.id, l.send.clone(), false, Load::on(&l.load)));
        }
        if live.len() >= MAX_CONNECTIONS_PER_ORIGIN {
            // All full: the least loaded; h2 waits for a free stream.
            let l = live
                .iter()
                .min_by_key(|l| l.load.load(Ordering::Acquire))
                .expect("at the cap, so not empty");
            return Ok((l.id, l.send.clone(), false, Load::on(&l.load)));
        }
        let (send, closed) = self.connect(origin).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let load = Arc::new(AtomicUsize::new(0));
        let share = Load::on(&load);
        live.push(Live {
            id,
            send: send.clone(),
            closed,
            load,
        });
        if live.len() > 1 {
            tracing::debug!(origin = %origin, connections = live.len(),
                "every HTTP/2 connection at its stream limit: one more opened");
        }
        Ok((id, send, true, share))
    }

    /// Drops connection `id` to `origin` unless it was replaced already.
    async fn forget(&self, origin: &Origin, id: u64) {
        let slot = lock(&self.slots).get(origin).cloned();
        if let Some(slot) = slot {
            slot.live.lock().await.retain(|l| l.id != id);
        }
    }

    async fn connect(
        &self,
        origin: &Origin,
    ) -> Result<(SendRequest<Bytes>, Arc<AtomicBool>), H2Error> {
        let host = origin.bare_host();
        let tcp = TcpStream::connect((host, origin.port))
            .await
            .map_err(|e| H2Error::Connect(format!("{origin}: TCP: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let closed = Arc::new(AtomicBool::new(false));
        let send = if origin.tls {
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| H2Error::Connect(format!("{origin}: bad server name: {e}")))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| H2Error::Connect(format!("{origin}: TLS: {e}")))?;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(H2Error::Connect(format!(
                    "{origin}: the server did not agree to HTTP/2 (ALPN h2)"
                )));
            }
            handshake(tls, origin, closed.clone()).await?
        } else {
            handshake(tcp, origin, closed.clone()).await?
        };
        self.connects.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(origin = %origin, "HTTP/2 connection open");
        Ok((send, closed))
    }
}

/// The HTTP/2 preface and settings over `io`; the connection is then
/// driven by a task of its own, which sets `closed` when it ends.
async fn handshake<T>(
    io: T,
    origin: &Origin,
    closed: Arc<AtomicBool>,
) -> Result<SendRequest<Bytes>, H2Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::Builder::new()
        // Answers are small; a large connection window costs nothing and
        // keeps many concurrent streams from stalling on it.
        .initial_connection_window_size(4 * 1024 * 1024)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| H2Error::Connect(format!("{origin}: HTTP/2 handshake: {e}")))?;
    let name = origin.to_string();
    tokio::spawn(async move {
        match conn.await {
            Ok(()) => tracing::debug!(origin = %name, "HTTP/2 connection closed"),
            Err(e) => tracing::info!(origin = %name, error = %e, "HTTP/2 connection ended"),
        }
        closed.store(true, Ordering::Release);
    });
    Ok(send)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("https://api.push.apple.com").unwrap();
        assert_eq!(u.origin.authority(), "api.push.apple.com");
        assert_eq!(u.origin.port, 443);
        assert_eq!(u.path, "/");
        let u = Url::parse("https://127.0.0.1:8443/base/").unwrap();
        assert_eq!(u.origin.authority(), "127.0.0.1:8443");
        assert_eq!(u.path, "/base");
        let u = Url::parse("https://[::1]:9/token?x=1").unwrap();
        assert_eq!(u.origin.bare_host(), "::1");
        assert_eq!(u.origin.to_string(), "https://[::1]:9");
        assert_eq!(u.path, "/token?x=1");
        let u = Url::parse("http://127.0.0.1/x").unwrap();
        assert_eq!(u.origin.to_string(), "http://127.0.0.1");
        assert_eq!(u.origin.port, 80);
        assert!(Url::parse("ftp://api.push.apple.com")
            .unwrap_err()
            .contains("https"));
        assert!(Url::parse("api.push.apple.com").is_err());
        assert!(Url::parse("https://u:p@host").is_err());
        assert!(Url::parse("not a url").is_err());
    }
}
