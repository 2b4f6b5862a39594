//! The push client against a stub mediator on loopback: what goes on the
//! wire (JSON body, headers, one keep-alive connection) and what comes back
//! to the sink for each kind of answer, timeout and shutdown.

#[path = "support/h2stub.rs"]
mod h2stub;

use crossbeam_channel::{unbounded, Receiver, Sender};
use serde_json::json;
use sipis::push::client::{
    PushClient, PushClientError, PushConfig, Refusal, NO_MEDIATOR_REASON, SHUTDOWN_REASON,
};
use sipis::push::mediator::{ApnsConfig, MediatorConfig};
use sipis::push::{
    Environment, Platform, PushCall, PushDevice, PushKind, PushOutcome, PushRequest, PushResult,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const TOKEN: &str = "push-token-0123456789abcdef";
/// Longest any stub connection lives: every loop here ends.
const STUB_LIFETIME: Duration = Duration::from_secs(20);
/// How long a test waits for an outcome that must come.
const WAIT: Duration = Duration::from_secs(10);

// --- the stub mediator ------------------------------------------------------

/// How long the stand-in takes to answer, on top of what a handler asks
/// for: a realistic APNs/FCM round trip. `SIPIS_STANDIN_DELAY_MS`
/// (default 100; 0 for none).
fn standin_delay() -> Duration {
    std::env::var("SIPIS_STANDIN_DELAY_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_millis(100), Duration::from_millis)
}

/// One request as the stub read it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    /// Lower-cased names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Which accepted connection it came on (0-based).
    conn: usize,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    fn id(&self) -> String {
        self.json()["id"].as_str().expect("an id").to_owned()
    }
}

enum Reply {
    /// Status and body.
    Answer(u16, String),
    /// Nothing until the stub is dropped, then the connection closes.
    Hang,
    /// Hold the answer until the flag is set.
    Hold(Arc<AtomicBool>, u16, String),
}

/// `200 OK` with a PushAnswer for the request's id.
fn answer(seen: &Seen, result: &str) -> Reply {
    Reply::Answer(200, json!({"id": seen.id(), "result": result}).to_string())
}

type Script = dyn Fn(usize, &Seen) -> Reply + Send + Sync;

/// A mediator on 127.0.0.1 that answers request `n` (counted over all
/// connections) as the script says.
struct Stub {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    requests: Receiver<Seen>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Stub {
    fn start(script: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (tx, requests) = unbounded();
        let script: Arc<Script> = Arc::new(script);
        let count = Arc::new(AtomicUsize::new(0));
        let acceptor = {
            let (accepts, stop, conns) = (accepts.clone(), stop.clone(), conns.clone());
            std::thread::spawn(move || {
                let born = Instant::now();
                while !stop.load(Ordering::SeqCst) && born.elapsed() < STUB_LIFETIME {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let conn = accepts.fetch_add(1, Ordering::SeqCst);
                            let (tx, script, count, stop) =
                                (tx.clone(), script.clone(), count.clone(), stop.clone());
                            let h = std::thread::spawn(move || {
                                serve(stream, conn, &tx, &*script, &count, &stop)
                            });
                            conns.lock().unwrap().push(h);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        };
        Stub {
            addr,
            accepts,
            requests,
            stop,
            acceptor: Some(acceptor),
            conns,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/push", self.addr)
    }

    /// The next request the stub received.
    fn next(&self) -> Seen {
        self.requests
            .recv_timeout(WAIT)
            .expect("the stub got a request")
    }

    /// No further request arrives within `d`.
    fn assert_quiet(&self, d: Duration) {
        if let Ok(seen) = self.requests.recv_timeout(d) {
            panic!("unexpected request {seen:?}");
        }
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        for h in self.conns.lock().unwrap().drain(..) {
            let _ = h.join();
        }
    }
}

/// Serves one connection: HTTP/1.1 requests with a Content-Length body,
/// kept alive until the client closes it or the stub stops.
fn serve(
    mut stream: TcpStream,
    conn: usize,
    tx: &Sender<Seen>,
    script: &Script,
    count: &AtomicUsize,
    stop: &AtomicBool,
) {
    let born = Instant::now();
    let alive = || !stop.load(Ordering::SeqCst) && born.elapsed() < STUB_LIFETIME;
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut buf = Vec::new();
    while alive() {
        // Read a whole request.
        let seen = loop {
            if let Some((seen, used)) = parse_request(&buf, conn) {
                buf.drain(..used);
                break seen;
            }
            if !alive() {
                return;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        };
        let n = count.fetch_add(1, Ordering::SeqCst);
        let reply = script(n, &seen);
        // A realistic push service round trip behind the mediator.
        std::thread::sleep(standin_delay());
        let _ = tx.send(seen);
        let (status, body) = match reply {
            Reply::Answer(s, b) => (s, b),
            Reply::Hang => {
                while alive() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return;
            }
            Reply::Hold(flag, s, b) => {
                while alive() && !flag.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                (s, b)
            }
        };
        let head = format!(
            "HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        if stream.write_all(head.as_bytes()).is_err() || stream.write_all(body.as_bytes()).is_err()
        {
            return;
        }
    }
}

/// A complete request at the start of `buf`, and the bytes it took.
fn parse_request(buf: &[u8], conn: usize) -> Option<(Seen, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf).expect("the client speaks HTTP/1.1") {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    assert_eq!(req.version, Some(1), "HTTP/1.1");
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| {
            v.trim().parse().expect("a numeric Content-Length")
        });
    if buf.len() < head_len + len {
        return None;
    }
    Some((
        Seen {
            method: req.method.unwrap().to_owned(),
            path: req.path.unwrap().to_owned(),
            headers,
            body: buf[head_len..head_len + len].to_vec(),
            conn,
        },
        head_len + len,
    ))
}

// --- the client side --------------------------------------------------------

fn config(url: &str) -> PushConfig {
    PushConfig {
        mediator_url: Some(url.to_owned()),
        token: Some(TOKEN.to_owned()),
        timeout: Duration::from_secs(5),
        retries: 2,
        connections: 1,
        max_in_flight: 2_000,
        queue: 100,
    }
}

/// A client whose outcomes arrive on the returned channel.
fn client(cfg: &PushConfig) -> (PushClient, Receiver<PushOutcome>) {
    let (tx, rx) = unbounded();
    let c = PushClient::start(cfg, move |o| tx.send(o).unwrap()).expect("client starts");
    (c, rx)
}

fn outcome(rx: &Receiver<PushOutcome>) -> PushOutcome {
    rx.recv_timeout(WAIT).expect("an outcome")
}

fn incoming_call(id: &str) -> PushRequest {
    PushRequest {
        id: id.to_owned(),
        kind: PushKind::IncomingCall,
        account: 42,
        device: PushDevice {
            id: "iphone".into(),
            platform: Platform::Apns,
            token: "9f2c4d0e5b7a31c8d6e4f2a0b9c7d5e3".into(),
            topic: Some("com.example.phone.voip".into()),
            environment: Environment::Production,
        },
        call: PushCall {
            call_id: "3848276298220188511@pbx".into(),
            caller_uri: "sip:bob@example.com".into(),
            caller_name: Some("Bob".into()),
            callee: "sip:alice@example.com".into(),
            reason: None,
        },
        timestamp_ms: 1_763_800_000_123,
    }
}

// --- the request on the wire ------------------------------------------------

#[test]
fn push_is_posted_as_the_documented_json_with_bearer_token() {
    let stub = Stub::start(|_, seen| answer(seen, "sent"));
    let (c, rx) = client(&config(&stub.url()));
    c.submit(incoming_call("a1b2c3d4e5f60718")).unwrap();
    let seen = stub.next();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/push");
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(
        seen.header("content-length"),
        Some(seen.body.len().to_string().as_str())
    );
    assert_eq!(
        seen.json(),
        json!({
            "id": "a1b2c3d4e5f60718",
            "kind": "incoming_call",
            "account": 42,
            "device": {
                "id": "iphone",
                "platform": "apns",
                "token": "9f2c4d0e5b7a31c8d6e4f2a0b9c7d5e3",
                "topic": "com.example.phone.voip",
                "environment": "production"
            },
            "call": {
                "call_id": "3848276298220188511@pbx",
                "caller_uri": "sip:bob@example.com",
                "caller_name": "Bob",
                "callee": "sip:alice@example.com"
            },
            "timestamp_ms": 1_763_800_000_123u64
        })
    );
    assert_eq!(
        outcome(&rx),
        PushOutcome {
            id: "a1b2c3d4e5f60718".into(),
            account: 42,
            device: "iphone".into(),
            result: PushResult::Sent,
            error: None,
        }
    );
    c.shutdown();
    assert!(rx.try_recv().is_err(), "one outcome per push");
}

#[test]
fn missed_call_to_fcm_leaves_out_absent_fields_and_sends_no_token_when_unset() {
    let stub = Stub::start(|_, seen| answer(seen, "sent"));
    let mut cfg = config(&stub.url());
    cfg.token = None;
    let (c, rx) = client(&cfg);
    let mut req = incoming_call("00000000000000ff");
    req.kind = PushKind::MissedCall;
    req.account = 7;
    req.device = PushDevice {
        id: "pixel".into(),
        platform: Platform::Fcm,
        token: "fcm-registration-token".into(),
        topic: None,
        environment: Environment::Production,
    };
    req.call.caller_name = None;
    req.call.reason = Some("no_response".into());
    c.submit(req).unwrap();
    let seen = stub.next();
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(
        seen.json(),
        json!({
            "id": "00000000000000ff",
            "kind": "missed_call",
            "account": 7,
            "device": {
                "id": "pixel",
                "platform": "fcm",
                "token": "fcm-registration-token",
                "environment": "production"
            },
            "call": {
                "call_id": "3848276298220188511@pbx",
                "caller_uri": "sip:bob@example.com",
                "callee": "sip:alice@example.com",
                "reason": "no_response"
            },
            "timestamp_ms": 1_763_800_000_123u64
        })
    );
    assert_eq!(outcome(&rx).result, PushResult::Sent);
}

#[test]
fn sequential_pushes_share_one_keep_alive_connection() {
    let stub = Stub::start(|_, seen| answer(seen, "sent"));
    let (c, rx) = client(&config(&stub.url()));
    for i in 0..5 {
        let id = format!("{i:016x}");
        c.submit(incoming_call(&id)).unwrap();
        let o = outcome(&rx);
        assert_eq!((o.id.as_str(), o.result), (id.as_str(), PushResult::Sent));
        assert_eq!(stub.next().conn, 0);
    }
    assert_eq!(stub.accepts.load(Ordering::SeqCst), 1);
    assert_eq!(c.stats().sent, 5);
}

#[test]
fn each_worker_keeps_its_own_single_connection() {
    let stub = Stub::start(|_, seen| answer(seen, "sent"));
    let mut cfg = config(&stub.url());
    cfg.connections = 2;
    let (c, rx) = client(&cfg);
    for round in 0..3 {
        for i in 0..10 {
            c.submit(incoming_call(&format!("{round:08x}{i:08x}")))
                .unwrap();
        }
        for _ in 0..10 {
            assert_eq!(outcome(&rx).result, PushResult::Sent);
        }
    }
    let accepts = stub.accepts.load(Ordering::SeqCst);
    assert!((1..=2).contains(&accepts), "{accepts} connections");
    assert_eq!(c.stats().sent, 30);
}

// --- answers ------------------------------------------------------------------

#[test]
fn server_error_is_retried_then_sent() {
    let stub = Stub::start(|n, seen| {
        if n == 0 {
            Reply::Answer(500, "{\"error\":\"restarting\"}".into())
        } else {
            answer(seen, "sent")
        }
    });
    let (c, rx) = client(&config(&stub.url()));
    c.submit(incoming_call("0000000000000001")).unwrap();
    let o = outcome(&rx);
    assert_eq!((o.result, o.error), (PushResult::Sent, None));
    let (first, second) = (stub.next(), stub.next());
    assert_eq!(first.body, second.body, "the same push is posted again");
    stub.assert_quiet(Duration::from_millis(100));
    let st = c.stats();
    assert_eq!((st.sent, st.failed, st.retries), (1, 0, 1));
}

#[test]
fn persistent_server_errors_fail_after_the_retries() {
    let stub = Stub::start(|_, _| Reply::Answer(503, "busy".into()));
    let mut cfg = config(&stub.url());
    cfg.retries = 1;
    let (c, rx) = client(&cfg);
    c.submit(incoming_call("0000000000000002")).unwrap();
    let o = outcome(&rx);
    assert_eq!(o.result, PushResult::Failed);
    assert_eq!(
        o.error.as_deref(),
        Some("the mediator answered 503 Service Unavailable: \"busy\" (gave up after 2 attempts)")
    );
    stub.next();
    stub.next();
    stub.assert_quiet(Duration::from_millis(100));
    assert_eq!(c.stats().retries, 1);
}

#[test]
fn hung_mediator_fails_within_timeout_times_attempts() {
    let stub = Stub::start(|_, _| Reply::Hang);
    let mut cfg = config(&stub.url());
    cfg.timeout = Duration::from_millis(300);
    cfg.retries = 2;
    let (c, rx) = client(&cfg);
    let t0 = Instant::now();
    c.submit(incoming_call("0000000000000003")).unwrap();
    let o = outcome(&rx);
    let took = t0.elapsed();
    assert_eq!(o.result, PushResult::Failed);
    assert_eq!(
        o.error.as_deref(),
        Some("no answer from the mediator within 300ms (push.timeout) (gave up after 3 attempts)")
    );
    // 3 attempts of 300 ms, back-off 50 + 100 ms between them.
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(
        took < Duration::from_millis(900 + 150 + 1000),
        "{took:?} is past timeout x attempts + back-off + slack"
    );
    for _ in 0..3 {
        stub.next();
    }
    assert_eq!(c.stats().retries, 2);
    // The histogram only holds answered pushes.
    assert_eq!(c.latency().len(), 0);
}

#[test]
fn unreachable_mediator_is_retried_then_failed() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = config(&format!("http://127.0.0.1:{port}/push"));
    cfg.retries = 2;
    let (c, rx) = client(&cfg);
    let t0 = Instant::now();
    c.submit(incoming_call("0000000000000004")).unwrap();
    let o = outcome(&rx);
    assert_eq!(o.result, PushResult::Failed);
    let e = o.error.unwrap();
    assert!(
        e.starts_with("cannot reach the mediator: ") && e.ends_with("(gave up after 3 attempts)"),
        "{e}"
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(c.stats().retries, 2);
}

#[test]
fn mediator_results_pass_through_without_retry() {
    let stub = Stub::start(|_, seen| {
        let result = match seen.id().as_str() {
            "000000000000dead" => "token_dead",
            "000000000000fa11" => "failed",
            _ => "rejected",
        };
        Reply::Answer(
            200,
            json!({"id": seen.id(), "result": result, "error": format!("{result} by APNs")})
                .to_string(),
        )
    });
    let (c, rx) = client(&config(&stub.url()));
    for (id, result) in [
        ("000000000000dead", PushResult::TokenDead),
        ("000000000000fa11", PushResult::Failed),
        ("0000000000000bad", PushResult::Rejected),
    ] {
        c.submit(incoming_call(id)).unwrap();
        let o = outcome(&rx);
        assert_eq!(o.id, id);
        assert_eq!(o.result, result);
        assert_eq!(
            o.error,
            Some(format!("{} by APNs", result.as_str())),
            "the mediator's error is kept"
        );
        stub.next();
    }
    stub.assert_quiet(Duration::from_millis(100));
    let st = c.stats();
    assert_eq!(
        (st.token_dead, st.failed, st.rejected, st.retries),
        (1, 1, 1, 0)
    );
}

#[test]
fn refused_token_is_rejected_naming_push_token() {
    let stub = Stub::start(|n, _| Reply::Answer(if n == 0 { 401 } else { 403 }, String::new()));
    let (c, rx) = client(&config(&stub.url()));
    c.submit(incoming_call("0000000000000005")).unwrap();
    let o = outcome(&rx);
    assert_eq!(o.result, PushResult::Rejected);
    assert_eq!(
        o.error.as_deref(),
        Some("the mediator answered 401 Unauthorized: it refuses push.token")
    );
    stub.next();
    stub.assert_quiet(Duration::from_millis(100));

    // Without a token configured the message says to set one.
    let mut cfg = config(&stub.url());
    cfg.token = None;
    let (c2, rx2) = client(&cfg);
    c2.submit(incoming_call("0000000000000006")).unwrap();
    let o = outcome(&rx2);
    assert_eq!(o.result, PushResult::Rejected);
    assert_eq!(
        o.error.as_deref(),
        Some("the mediator answered 403 Forbidden: it wants a token, set push.token")
    );
    assert_eq!((c.stats().retries, c2.stats().retries), (0, 0));
}

#[test]
fn unparsable_or_foreign_answers_fail_with_the_reason() {
    let stub = Stub::start(|n, _| match n {
        0 => Reply::Answer(200, "<html>hello</html>".into()),
        1 => Reply::Answer(
            200,
            json!({"id": "someone-else", "result": "sent"}).to_string(),
        ),
        _ => Reply::Answer(404, "no such path".into()),
    });
    let (c, rx) = client(&config(&stub.url()));
    c.submit(incoming_call("0000000000000007")).unwrap();
    let o = outcome(&rx);
    assert_eq!(o.result, PushResult::Failed);
    let e = o.error.unwrap();
    assert!(
        e.starts_with("unparsable answer from the mediator (")
            && e.ends_with("): \"<html>hello</html>\""),
        "{e}"
    );
    c.submit(incoming_call("0000000000000008")).unwrap();
    let o = outcome(&rx);
    assert_eq!(o.result, PushResult::Failed);
    assert_eq!(
        o.error.as_deref(),
        Some("the mediator answered for push \"someone-else\", not \"0000000000000008\"")
    );
    c.submit(incoming_call("0000000000000009")).unwrap();
    let o = outcome(&rx);
    assert_eq!(o.result, PushResult::Failed);
    assert_eq!(
        o.error.as_deref(),
        Some(
            "the mediator answered 404 Not Found: check push.mediator_url (the path of its push \
             endpoint): \"no such path\""
        )
    );
    for _ in 0..3 {
        stub.next();
    }
    stub.assert_quiet(Duration::from_millis(100));
    assert_eq!(c.stats().retries, 0);
}

// --- queue and shutdown -------------------------------------------------------

#[test]
fn full_queue_gives_the_request_back() {
    let gate = Arc::new(AtomicBool::new(false));
    let g = gate.clone();
    let stub = Stub::start(move |_, seen| {
        Reply::Hold(
            g.clone(),
            200,
            json!({"id": seen.id(), "result": "sent"}).to_string(),
        )
    });
    let mut cfg = config(&stub.url());
    cfg.queue = 1;
    let (c, rx) = client(&cfg);
    c.submit(incoming_call("00000000000000a1")).unwrap();
    // The only worker holds the first push; one more fits in the queue.
    assert_eq!(stub.next().id(), "00000000000000a1");
    c.submit(incoming_call("00000000000000a2")).unwrap();
    let refused = incoming_call("00000000000000a3");
    assert_eq!(c.submit(refused.clone()), Err(refused));
    let st = c.stats();
    assert_eq!((st.queue_full, st.queued), (1, 1));

    gate.store(true, Ordering::SeqCst);
    let mut ids = vec![outcome(&rx).id, outcome(&rx).id];
    ids.sort();
    assert_eq!(ids, ["00000000000000a1", "00000000000000a2"]);
    c.shutdown();
    assert!(rx.try_recv().is_err(), "no outcome for the refused push");
}

#[test]
fn shutdown_answers_queued_pushes_and_does_not_retry() {
    let stub = Stub::start(|_, _| Reply::Hang);
    let mut cfg = config(&stub.url());
    cfg.timeout = Duration::from_secs(1);
    cfg.retries = 5;
    let (c, rx) = client(&cfg);
    let ids: Vec<String> = (0..5).map(|i| format!("00000000000000b{i}")).collect();
    for id in &ids {
        c.submit(incoming_call(id)).unwrap();
    }
    // The worker is stuck on the first; four wait in the queue.
    assert_eq!(stub.next().id(), ids[0]);
    let t0 = Instant::now();
    c.shutdown();
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(1) + Duration::from_millis(1500),
        "shutdown took {took:?}"
    );

    let mut got: Vec<PushOutcome> = rx.try_iter().collect();
    got.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        got.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
        ids,
        "exactly one outcome each"
    );
    assert!(got.iter().all(|o| o.result == PushResult::Failed));
    for o in &got[1..] {
        assert_eq!(o.error.as_deref(), Some(SHUTDOWN_REASON));
    }
    // The one in flight got its exchange's timeout, and no further attempt.
    assert_eq!(
        got[0].error.as_deref(),
        Some(
            "push client shut down while retrying (no answer from the mediator within 1s \
             (push.timeout))"
        )
    );
    stub.assert_quiet(Duration::from_millis(200));
}

#[test]
fn idle_client_shuts_down_at_once() {
    let stub = Stub::start(|_, seen| answer(seen, "sent"));
    let mut cfg = config(&stub.url());
    cfg.connections = 8;
    let (c, rx) = client(&cfg);
    c.submit(incoming_call("00000000000000c1")).unwrap();
    assert_eq!(outcome(&rx).result, PushResult::Sent);
    let t0 = Instant::now();
    c.shutdown();
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
}

// --- without a mediator, and bad settings -------------------------------------

#[test]
fn without_mediator_url_every_push_fails_at_once() {
    let cfg = PushConfig::default();
    assert_eq!(cfg.mediator_url, None);
    let (c, rx) = client(&cfg);
    assert!(format!("{c:?}").contains("workers: 0"), "{c:?}");
    c.submit(incoming_call("00000000000000d1")).unwrap();
    // Answered on the submitting thread, before submit returned.
    let o = rx.try_recv().expect("answered at once");
    assert_eq!(o.result, PushResult::Failed);
    assert_eq!(o.error.as_deref(), Some(NO_MEDIATOR_REASON));
    assert_eq!(NO_MEDIATOR_REASON, "push.mediator_url is not set");
    assert_eq!(c.stats().failed, 1);
    c.shutdown();
    assert!(rx.try_recv().is_err());
}

#[test]
fn start_refuses_unusable_settings_by_key() {
    let start = |cfg: &PushConfig| PushClient::start(cfg, |_| {}).unwrap_err().to_string();
    let mut cfg = config("ftp://mediator/push");
    assert_eq!(
        start(&cfg),
        "push.mediator_url: expected an http:// or https:// URL, got \"ftp://mediator/push\""
    );
    cfg = config("http://127.0.0.1:8090/push");
    cfg.connections = 0;
    assert_eq!(start(&cfg), "push.connections: must be at least 1");
    cfg = config("http://127.0.0.1:8090/push");
    cfg.queue = 0;
    assert_eq!(start(&cfg), "push.queue: must be at least 1");
    cfg = config("http://127.0.0.1:8090/push");
    cfg.token = Some("abc\r\nX-Evil: 1".into());
    let e = PushClient::start(&cfg, |_| {}).unwrap_err();
    assert!(
        matches!(
            e,
            PushClientError::Invalid {
                key: "push.token",
                ..
            }
        ),
        "{e}"
    );
}

// --- metrics --------------------------------------------------------------------

#[test]
fn metrics_count_outcomes_and_answered_latency() {
    let stub = Stub::start(|n, seen| match n {
        0 | 1 => answer(seen, "sent"),
        2 => answer(seen, "token_dead"),
        _ => Reply::Answer(401, String::new()),
    });
    let (c, rx) = client(&config(&stub.url()));
    for i in 0..4 {
        c.submit(incoming_call(&format!("00000000000000e{i}")))
            .unwrap();
        outcome(&rx);
    }
    let mut out = String::new();
    c.render_metrics(&mut out);
    for line in [
        "# TYPE sipis_push_total counter\n",
        "sipis_push_total{result=\"sent\"} 2\n",
        "sipis_push_total{result=\"token_dead\"} 1\n",
        "sipis_push_total{result=\"failed\"} 0\n",
        "sipis_push_total{result=\"rejected\"} 1\n",
        "sipis_push_queue_full_total 0\n",
        "sipis_push_retries_total 0\n",
        "sipis_push_queued 0\n",
        "# TYPE sipis_push_latency_seconds summary\n",
        // The 401 carried no PushAnswer: three answered pushes.
        "sipis_push_latency_seconds_count 3\n",
    ] {
        assert!(out.contains(line), "{line:?} missing from\n{out}");
    }
    assert_eq!(out.matches("# TYPE sipis_push_total").count(), 1, "{out}");
    // Loopback answers take well under a second each.
    let h = c.latency();
    assert_eq!(h.len(), 3);
    assert!(h.max() < 1_000_000, "{} µs", h.max());
}

// --- in process ----------------------------------------------------------------

#[test]
fn in_process_client_calls_the_mediator_and_refuses_past_max_in_flight() {
    // APNs stand-in (HTTP/2 without TLS), slow enough to hold two pushes.
    let apns = h2stub::Stub::start_plain(|_| {
        h2stub::Answer::status(200)
            .header("apns-id", "00000000-0000-0000-0000-0000000000a1")
            .delayed(Duration::from_millis(300))
    });
    let dir = std::env::temp_dir().join(format!("sipis-push-client-ip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p8 = dir.join("AuthKey_KEYID12345.p8");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(&p8, key.serialize_pem()).unwrap();
    let mediator = sipis::push::mediator::start(&MediatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        apns: Some(ApnsConfig {
            key_file: p8,
            key_id: "KEYID12345".into(),
            team_id: "TEAM123456".into(),
            default_topic: None,
            production_url: apns.url(),
            sandbox_url: apns.url(),
            ca_file: None,
        }),
        ..MediatorConfig::default()
    })
    .unwrap();
    let cfg = PushConfig {
        max_in_flight: 2,
        ..PushConfig::default()
    };
    let (tx, rx) = unbounded();
    let c = PushClient::in_process(
        &cfg,
        mediator.mediator().clone(),
        mediator.runtime(),
        move |o| tx.send(o).unwrap(),
    )
    .unwrap();
    c.submit(incoming_call("00000000000000f1")).unwrap();
    c.submit(incoming_call("00000000000000f2")).unwrap();
    // The ceiling is reached: the third is handed back at once.
    let refused = incoming_call("00000000000000f3");
    assert_eq!(
        c.try_submit(refused.clone()),
        Err((refused, Refusal::InFlight))
    );
    assert_eq!(
        Refusal::InFlight.reason(),
        "too many pushes in flight (push.max_in_flight)"
    );
    let st = c.stats();
    assert_eq!((st.in_flight, st.in_flight_full, st.queue_full), (2, 1, 0));
    let mut got = [outcome(&rx), outcome(&rx)];
    got.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        got.iter()
            .map(|o| (o.id.as_str(), o.result))
            .collect::<Vec<_>>(),
        [
            ("00000000000000f1", PushResult::Sent),
            ("00000000000000f2", PushResult::Sent)
        ]
    );
    // Straight to APNs: the VoIP push for the device, no HTTP hop before.
    let seen = apns.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].path, "/3/device/9f2c4d0e5b7a31c8d6e4f2a0b9c7d5e3");
    assert_eq!(seen[0].header("apns-push-type"), Some("voip"));
    let mut m = String::new();
    mediator.render_metrics(&mut m);
    assert!(
        m.lines()
            .filter(|l| l.starts_with("sipis_mediator_responses_total"))
            .all(|l| l.ends_with(" 0")),
        "the mediator's HTTP front saw requests:\n{m}"
    );
    // Answered: room again. The slot is freed just after the outcome is
    // handed out (src/push/client.rs `Pending::end`): wait for it, briefly.
    let end = Instant::now() + Duration::from_secs(1);
    while c.stats().in_flight > 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
    }
    let st = c.stats();
    assert_eq!((st.in_flight, st.sent), (0, 2));
    c.submit(incoming_call("00000000000000f4")).unwrap();
    assert_eq!(outcome(&rx).result, PushResult::Sent);
    c.shutdown();
    assert!(rx.try_recv().is_err(), "one outcome per push");
    let _ = std::fs::remove_dir_all(&dir);
}
