//! A local HTTP/2-over-TLS server standing in for APNs or Google (token
//! and send endpoints): it records every request it gets and answers what
//! the test's handler says. Also used by `bench/src/bin/mediator_load.rs`.
#![allow(dead_code)]

use bytes::Bytes;
use http::HeaderMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the stand-in takes to answer, on top of what a handler asks
/// for: a realistic APNs/FCM round trip. `SIPIS_STANDIN_DELAY_MS`
/// (default 100; 0 for none).
pub fn standin_delay() -> Duration {
    std::env::var("SIPIS_STANDIN_DELAY_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_millis(100), Duration::from_millis)
}

/// A test CA and a certificate it issued for `127.0.0.1` and `localhost`.
pub struct TestTls {
    /// The CA certificate (PEM) the mediator is told to trust.
    pub ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl TestTls {
    pub fn new() -> TestTls {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "sipis test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&key, &ca_cert, &ca_key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec()];
        TestTls {
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
        }
    }
}

/// One request as the stub received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// `:path` (with query).
    pub path: String,
    /// `:authority`.
    pub authority: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Which connection (0, 1, ...) it came on.
    pub connection: u64,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// What the stub answers.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Close the connection (GOAWAY) after this answer.
    pub goaway: bool,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
            goaway: false,
        }
    }

    pub fn json(status: u16, body: serde_json::Value) -> Answer {
        Answer {
            body: body.to_string().into_bytes(),
            ..Answer::status(status)
        }
        .header("content-type", "application/json")
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Answer {
        self.headers.push((name, value.into()));
        self
    }

    pub fn delayed(mut self, d: Duration) -> Answer {
        self.delay = d;
        self
    }

    pub fn then_goaway(mut self) -> Answer {
        self.goaway = true;
        self
    }
}

type Handler = dyn Fn(&Seen) -> Answer + Send + Sync;

/// A running stub; dropping it stops it.
pub struct Stub {
    addr: SocketAddr,
    tls: bool,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicU64>,
    max_in_flight: Arc<AtomicUsize>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Stub {
    pub fn start(tls: &TestTls, handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Stub {
        Stub::start_with_threads(tls, 1, handler)
    }

    /// HTTP/2 without TLS (prior knowledge), for `http://` URLs.
    pub fn start_plain(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Stub {
        Stub::start_inner(None, 1, 1000, handler)
    }

    /// A TLS stand-in that announces `SETTINGS_MAX_CONCURRENT_STREAMS` =
    /// `streams` on each connection (APNs lowers it for new connections).
    pub fn start_with_max_streams(
        tls: &TestTls,
        streams: u32,
        handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static,
    ) -> Stub {
        Stub::start_inner(Some(tls), 1, streams, handler)
    }

    pub fn start_with_threads(
        tls: &TestTls,
        threads: usize,
        handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static,
    ) -> Stub {
        Stub::start_inner(Some(tls), threads, 1000, handler)
    }

    fn start_inner(
        tls: Option<&TestTls>,
        threads: usize,
        max_streams: u32,
        handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static,
    ) -> Stub {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let acceptor = tls.map(|t| tokio_rustls::TlsAcceptor::from(t.server.clone()));
        let service_delay = standin_delay();
        let (s, c, m) = (seen.clone(), connections.clone(), max_in_flight.clone());
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let id = c.fetch_add(1, Ordering::SeqCst);
                let ctx = Conn {
                    id,
                    max_streams,
                    service_delay,
                    seen: s.clone(),
                    handler: handler.clone(),
                    in_flight: in_flight.clone(),
                    max_in_flight: m.clone(),
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        Some(a) => {
                            if let Ok(tls) = a.accept(tcp).await {
                                ctx.serve(tls).await;
                            }
                        }
                        None => ctx.serve(tcp).await,
                    }
                });
            }
        });
        Stub {
            addr,
            tls: tls.is_some(),
            seen,
            connections,
            max_in_flight,
            rt: Some(rt),
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.addr.port())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// The most requests that were being answered at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

struct Conn {
    id: u64,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` it announces.
    max_streams: u32,
    /// [`standin_delay`], read once at start.
    service_delay: Duration,
    seen: Arc<Mutex<Vec<Seen>>>,
    handler: Arc<Handler>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl Conn {
    async fn serve<T>(self, io: T)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let Ok(mut conn) = h2::server::Builder::new()
            .max_concurrent_streams(self.max_streams)
            .handshake::<_, Bytes>(io)
            .await
        else {
            return;
        };
        let (goaway_tx, mut goaway_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let this = Arc::new(self);
        loop {
            tokio::select! {
                next = conn.accept() => {
                    let Some(Ok((req, respond))) = next else { break };
                    let this = this.clone();
                    let goaway = goaway_tx.clone();
                    tokio::spawn(async move { this.answer(req, respond, goaway).await });
                }
                Some(()) = goaway_rx.recv() => {
                    conn.graceful_shutdown();
                }
            }
        }
    }

    async fn answer(
        &self,
        req: http::Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
        goaway: tokio::sync::mpsc::UnboundedSender<()>,
    ) {
        let (parts, mut body) = req.into_parts();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let Ok(chunk) = chunk else { return };
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let seen = Seen {
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or("", |p| p.as_str())
                .to_string(),
            authority: parts.uri.authority().map_or("", |a| a.as_str()).to_string(),
            headers: parts.headers,
            body: data.into(),
            connection: self.id,
        };
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        self.seen.lock().unwrap().push(seen.clone());
        let answer = (self.handler)(&seen);
        let delay = answer.delay + self.service_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let mut resp = http::Response::builder().status(answer.status);
        for (k, v) in &answer.headers {
            resp = resp.header(*k, v.as_str());
        }
        let resp = resp.body(()).unwrap();
        let Ok(mut send) = respond.send_response(resp, answer.body.is_empty()) else {
            return;
        };
        if !answer.body.is_empty() {
            let _ = send.send_data(Bytes::from(answer.body), true);
        }
        if answer.goaway {
            let _ = goaway.send(());
        }
    }
}
