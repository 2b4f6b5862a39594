//! Push mediator throughput and latency: unified push requests (JSON over
//! HTTP/1.1 keep-alive, as sipis's push client sends them) through the
//! mediator to a local HTTP/2 TLS server standing in for APNs, against the
//! baseline of sending the same APNs requests straight to that server over
//! one HTTP/2 connection with as many requests in flight. Both phases run
//! in the same process, alternately, against the same stand-in.
//!
//! `cargo run --release -p sipis-bench --bin mediator_load -- [pushes] [in_flight] [max_seconds] [rounds]`
//! (defaults 20000 16 20 2). Each phase stops at `pushes` or `max_seconds`.

#[path = "../../../tests/support/h2stub.rs"]
mod h2stub;
#[path = "../../../tests/support/http1.rs"]
mod http1;

use bytes::Bytes;
use h2stub::{Answer, Stub, TestTls};
use hdrhistogram::Histogram;
use http1::Http1;
use rustls::pki_types::pem::PemObject;
use serde_json::json;
use sipis::push::mediator::{start, ApnsConfig, MediatorConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEVICE: &str = "5d41402abc4b2a76b9719d911017c592aabbccddeeff00112233445566778899";

struct Phase {
    name: &'static str,
    pushes: u64,
    errors: u64,
    secs: f64,
    latency: Histogram<u64>,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.pushes as f64 / self.secs
    }

    fn print(&self) {
        let q = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "| {} | {} | {:.2} | **{:.0}** | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            self.name,
            self.pushes,
            self.secs,
            self.rate(),
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            self.latency.max() as f64 / 1000.0,
            self.errors
        );
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

fn push_json(i: u64) -> Vec<u8> {
    json!({
        "id": format!("{i:016x}"), "kind": "incoming_call", "account": 42,
        "device": {"id": "iphone", "platform": "apns", "token": DEVICE,
                   "topic": "com.example.phone.voip", "environment": "production"},
        "call": {"call_id": format!("{i}-3848276298220188511@pbx"),
                 "caller_uri": "sip:bob@example.com", "caller_name": "Bob",
                 "callee": "sip:alice@example.com"},
        "timestamp_ms": 1_763_800_000_123u64
    })
    .to_string()
    .into_bytes()
}

/// The mediator phase: `in_flight` keep-alive HTTP/1.1 connections, one
/// push at a time each.
fn through_mediator(
    addr: std::net::SocketAddr,
    pushes: u64,
    in_flight: usize,
    limit: Duration,
) -> Phase {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..in_flight)
        .map(|_| {
            let (next, errors) = (next.clone(), errors.clone());
            std::thread::spawn(move || {
                let mut h = histogram();
                let mut c = Http1::connect(addr);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= pushes || started.elapsed() > limit {
                        break;
                    }
                    let body = push_json(i);
                    let t = Instant::now();
                    let ok = c
                        .request("POST", "/push", Some("bench-token"), Some(&body))
                        .is_some_and(|r| r.status == 200 && r.json()["result"] == "sent");
                    h.saturating_record(t.elapsed().as_micros() as u64);
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                h
            })
        })
        .collect();
    let mut latency = histogram();
    for t in threads {
        latency.add(t.join().unwrap()).unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    Phase {
        name: "mediator: HTTP/1.1 JSON in → HTTP/2 out",
        pushes: latency.len(),
        errors: errors.load(Ordering::Relaxed),
        secs,
        latency,
    }
}

/// The baseline: the same APNs requests straight to the stand-in, over one
/// HTTP/2 connection with `in_flight` requests outstanding.
fn direct(tls: &TestTls, stub: &Stub, pushes: u64, in_flight: usize, limit: Duration) -> Phase {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let addr = stub.addr();
    // A provider token of the usual size (the stand-in does not check it).
    let jwt = format!(
        "eyJhbGciOiJFUzI1NiIsImtpZCI6IktFWUlEMTIzNDUifQ.{}",
        "x".repeat(140)
    );
    let payload = Bytes::from(
        json!({"kind": "incoming_call", "push_id": "0000000000000000",
               "call_id": "0-3848276298220188511@pbx", "caller": "sip:bob@example.com",
               "caller_name": "Bob", "callee": "sip:alice@example.com"})
        .to_string(),
    );
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        let (send, conn) = h2::client::Builder::new()
            .initial_connection_window_size(4 * 1024 * 1024)
            .handshake::<_, Bytes>(tls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let next = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let tasks: Vec<_> = (0..in_flight)
            .map(|_| {
                let (send, next, errors) = (send.clone(), next.clone(), errors.clone());
                let (jwt, payload) = (jwt.clone(), payload.clone());
                tokio::spawn(async move {
                    let mut h = histogram();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= pushes || started.elapsed() > limit {
                            break;
                        }
                        let t = Instant::now();
                        let req = http::Request::post(format!(
                            "https://127.0.0.1:{}/3/device/{DEVICE}",
                            addr.port()
                        ))
                        .header("authorization", format!("bearer {jwt}"))
                        .header("apns-id", "11111111-2222-4333-8444-555555555555")
                        .header("apns-push-type", "voip")
                        .header("apns-topic", "com.example.phone.voip")
                        .header("apns-priority", "10")
                        .header("apns-expiration", "0")
                        .header("apns-collapse-id", format!("{i}-3848276298220188511@pbx"))
                        .header("content-type", "application/json")
                        .body(())
                        .unwrap();
                        let mut s = send.clone().ready().await.unwrap();
                        let (resp, mut body) = s.send_request(req, false).unwrap();
                        body.send_data(payload.clone(), true).unwrap();
                        let resp = resp.await.unwrap();
                        let ok = resp.status() == 200;
                        let mut rb = resp.into_body();
                        while let Some(c) = rb.data().await {
                            let _ = rb.flow_control().release_capacity(c.unwrap().len());
                        }
                        h.saturating_record(t.elapsed().as_micros() as u64);
                        if !ok {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    h
                })
            })
            .collect();
        let mut latency = histogram();
        for t in tasks {
            latency.add(t.await.unwrap()).unwrap();
        }
        Phase {
            name: "direct HTTP/2 to the stand-in (baseline)",
            pushes: latency.len(),
            errors: errors.load(Ordering::Relaxed),
            secs: started.elapsed().as_secs_f64(),
            latency,
        }
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut arg = |d: u64| args.next().and_then(|a| a.parse().ok()).unwrap_or(d);
    let pushes = arg(20_000);
    let in_flight = arg(16) as usize;
    let limit = Duration::from_secs(arg(20));
    let rounds = arg(2);

    let tls = TestTls::new();
    let stub = Stub::start(&tls, |s| {
        Answer::status(200).header("apns-id", s.header("apns-id").unwrap_or("none"))
    });
    let dir = std::env::temp_dir().join(format!("sipis-mediator-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("AuthKey_KEYID12345.p8");
    let key_pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem();
    std::fs::write(&key, key_pem).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &tls.ca_pem).unwrap();
    let cfg = MediatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: Some("bench-token".into()),
        apns: Some(ApnsConfig {
            key_file: key,
            key_id: "KEYID12345".into(),
            team_id: "TEAM123456".into(),
            default_topic: None,
            production_url: stub.url(),
            sandbox_url: stub.url(),
            ca_file: Some(ca),
        }),
        concurrency: 256.max(in_flight as u32),
        ..MediatorConfig::default()
    };
    let mediator = start(&cfg).unwrap();
    let addr = mediator.local_addr();

    // Warm-up: connections, provider token, allocator.
    through_mediator(addr, 500, in_flight, limit);
    direct(&tls, &stub, 500, in_flight, limit);

    println!(
        "mediator_load: {pushes} pushes per phase, {in_flight} in flight, \
         stand-in answers 200 at once, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!(
        "| phase | pushes | s | pushes/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for _ in 0..rounds {
        let base = direct(&tls, &stub, pushes, in_flight, limit);
        base.print();
        let med = through_mediator(addr, pushes, in_flight, limit);
        med.print();
        ratios.push(med.rate() / base.rate());
    }
    println!();
    let r: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    println!("mediator / baseline throughput per round: {}", r.join(", "));
    let mut metrics = String::new();
    mediator.render_metrics(&mut metrics);
    for line in metrics.lines().filter(|l| {
        l.starts_with("sipis_mediator_connections_opened_total")
            || l.starts_with("sipis_mediator_apns_provider_tokens_total")
            || l.starts_with("sipis_mediator_push_seconds{platform=\"apns\"")
    }) {
        println!("{line}");
    }
    println!("stand-in connections accepted: {}", stub.connections());
    mediator.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
