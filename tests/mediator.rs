//! The push mediator end to end: unified push requests in over HTTP/1.1,
//! out over HTTP/2 + TLS to local servers standing in for APNs
//! (production and sandbox) and for Google (OAuth2 token endpoint and FCM
//! send endpoint). Each test checks what the stand-in received (headers,
//! signed JWTs, JSON payloads) and the answer sipis gets back.

#[path = "support/h2stub.rs"]
mod h2stub;
#[path = "support/http1.rs"]
mod http1;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use h2stub::{Answer, Seen, Stub, TestTls};
use http1::Http1;
use rsa::pkcs1v15::{Signature as RsaSignature, VerifyingKey};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::sha2::Sha256;
use rsa::signature::Verifier;
use serde_json::{json, Value};
use sipis::push::mediator::{
    check_files, start, ApnsConfig, FcmConfig, MediatorConfig, MediatorError, MediatorHandle,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const TOKEN: &str = "mediator-test-token";
const KEY_ID: &str = "KEYID12345";
const TEAM_ID: &str = "TEAM123456";
const DEVICE: &str = "5d41402abc4b2a76b9719d911017c592aabbccddeeff00112233445566778899";
const CLIENT_EMAIL: &str = "push@sipis-test.iam.gserviceaccount.com";

// ------------------------------------------------------------------ keys

/// A directory of its own per test.
fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "sipis-mediator-{}-{name}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One RSA key for all tests: generating one takes a while.
fn rsa_key() -> &'static rsa::RsaPrivateKey {
    static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap())
}

fn rsa_pem() -> String {
    rsa_key().to_pkcs8_pem(LineEnding::LF).unwrap().to_string()
}

struct Keys {
    dir: PathBuf,
    p8: PathBuf,
    /// The `.p8` key's public point, to verify ES256 signatures.
    p8_public: Vec<u8>,
    ca: PathBuf,
}

impl Keys {
    fn new(name: &str, tls: &TestTls) -> Keys {
        let dir = temp_dir(name);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let p8 = dir.join(format!("AuthKey_{KEY_ID}.p8"));
        std::fs::write(&p8, key.serialize_pem()).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, &tls.ca_pem).unwrap();
        Keys {
            p8_public: key.public_key_raw().to_vec(),
            dir,
            p8,
            ca,
        }
    }

    /// A service-account file whose `token_uri` is `token_uri`.
    fn service_account(&self, token_uri: &str) -> PathBuf {
        let path = self.dir.join("service-account.json");
        let sa = json!({
            "type": "service_account",
            "project_id": "sipis-test",
            "private_key_id": "kid-0123",
            "private_key": rsa_pem(),
            "client_email": CLIENT_EMAIL,
            "client_id": "1234567890",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&sa).unwrap()).unwrap();
        path
    }
}

// ------------------------------------------------------------------ JWTs

fn b64(part: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(part).unwrap()
}

/// Verifies an ES256 JWT with the P-256 public point; its header and claims.
fn verify_es256(jwt: &str, public: &[u8]) -> (Value, Value) {
    let p: Vec<&str> = jwt.split('.').collect();
    assert_eq!(p.len(), 3, "{jwt}");
    let key =
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, public);
    key.verify(format!("{}.{}", p[0], p[1]).as_bytes(), &b64(p[2]))
        .expect("ES256 signature verifies with the .p8 key's public key");
    (
        serde_json::from_slice(&b64(p[0])).unwrap(),
        serde_json::from_slice(&b64(p[1])).unwrap(),
    )
}

/// Verifies an RS256 JWT with the service account's public key (an
/// implementation other than the mediator's).
fn verify_rs256(jwt: &str) -> (Value, Value) {
    let p: Vec<&str> = jwt.split('.').collect();
    assert_eq!(p.len(), 3, "{jwt}");
    let key = VerifyingKey::<Sha256>::new(rsa_key().to_public_key());
    let sig = RsaSignature::try_from(b64(p[2]).as_slice()).unwrap();
    key.verify(format!("{}.{}", p[0], p[1]).as_bytes(), &sig)
        .expect("RS256 signature verifies with the service account's public key");
    (
        serde_json::from_slice(&b64(p[0])).unwrap(),
        serde_json::from_slice(&b64(p[1])).unwrap(),
    )
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ------------------------------------------------------------------ stand-ins

/// APNs: 200 with the apns-id it was given, as Apple does.
fn apns_ok(seen: &Seen) -> Answer {
    Answer::status(200).header("apns-id", seen.header("apns-id").unwrap_or("none"))
}

fn apns_error(status: u16, reason: &str) -> Answer {
    Answer::json(status, json!({"reason": reason}))
}

/// Google: the token endpoint issues `tok-1`, `tok-2`, ... valid
/// `expires_in` seconds; everything else goes to `send`.
fn google(
    expires_in: u64,
    send: impl Fn(&Seen) -> Answer + Send + Sync + 'static,
) -> impl Fn(&Seen) -> Answer + Send + Sync + 'static {
    let issued = AtomicU64::new(0);
    move |seen: &Seen| {
        if seen.path == "/token" {
            let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
            Answer::json(
                200,
                json!({"access_token": format!("tok-{n}"), "expires_in": expires_in,
                       "token_type": "Bearer"}),
            )
        } else {
            send(seen)
        }
    }
}

fn fcm_ok(_: &Seen) -> Answer {
    Answer::json(
        200,
        json!({"name": "projects/sipis-test/messages/0:1763800000123%abc"}),
    )
}

fn never(_: &Seen) -> Answer {
    Answer::status(599)
}

// ------------------------------------------------------------------ harness

struct World {
    keys: Keys,
    production: Stub,
    sandbox: Stub,
    google: Stub,
    mediator: MediatorHandle,
}

fn config(
    keys: &Keys,
    production: &Stub,
    sandbox: &Stub,
    google: &Stub,
    sa: &Path,
) -> MediatorConfig {
    MediatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: Some(TOKEN.into()),
        apns: Some(ApnsConfig {
            key_file: keys.p8.clone(),
            key_id: KEY_ID.into(),
            team_id: TEAM_ID.into(),
            default_topic: None,
            production_url: production.url(),
            sandbox_url: sandbox.url(),
            ca_file: Some(keys.ca.clone()),
        }),
        fcm: Some(FcmConfig {
            service_account_file: sa.to_path_buf(),
            project_id: None,
            send_url: format!("{}/v1/projects/{{project}}/messages:send", google.url()),
            token_url: None,
            ca_file: Some(keys.ca.clone()),
        }),
        request_timeout: Duration::from_secs(2),
        deadline: Duration::from_secs(3),
        concurrency: 64,
        ..MediatorConfig::default()
    }
}

fn world_with(
    name: &str,
    production: impl Fn(&Seen) -> Answer + Send + Sync + 'static,
    sandbox: impl Fn(&Seen) -> Answer + Send + Sync + 'static,
    google_send: impl Fn(&Seen) -> Answer + Send + Sync + 'static,
    expires_in: u64,
    edit: impl FnOnce(&mut MediatorConfig),
) -> World {
    let tls = TestTls::new();
    let keys = Keys::new(name, &tls);
    let production = Stub::start(&tls, production);
    let sandbox = Stub::start(&tls, sandbox);
    let google = Stub::start(&tls, google(expires_in, google_send));
    let sa = keys.service_account(&format!("{}/token", google.url()));
    let mut cfg = config(&keys, &production, &sandbox, &google, &sa);
    edit(&mut cfg);
    let mediator = start(&cfg).unwrap();
    World {
        keys,
        production,
        sandbox,
        google,
        mediator,
    }
}

fn apns_world(name: &str, production: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> World {
    world_with(name, production, apns_ok, never, 3600, |_| {})
}

fn fcm_world(
    name: &str,
    expires_in: u64,
    send: impl Fn(&Seen) -> Answer + Send + Sync + 'static,
) -> World {
    world_with(name, never, never, send, expires_in, |_| {})
}

impl World {
    /// POSTs a push request as sipis does; its 200 answer's JSON.
    fn push(&self, req: &Value) -> Value {
        let mut c = Http1::connect(self.mediator.local_addr());
        let r = c
            .request(
                "POST",
                "/push",
                Some(TOKEN),
                Some(req.to_string().as_bytes()),
            )
            .expect("an answer");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    fn metrics(&self) -> String {
        let mut c = Http1::connect(self.mediator.local_addr());
        let r = c.request("GET", "/metrics", Some(TOKEN), None).unwrap();
        assert_eq!(r.status, 200);
        r.text()
    }
}

fn apns_request(kind: &str, env: &str) -> Value {
    json!({
        "id": "a1b2c3d4e5f60718", "kind": kind, "account": 42,
        "device": {"id": "iphone", "platform": "apns", "token": DEVICE,
                   "topic": "com.example.phone.voip", "environment": env},
        "call": {"call_id": "3848276298220188511@pbx", "caller_uri": "sip:bob@example.com",
                 "caller_name": "Bob", "callee": "sip:alice@example.com"},
        "timestamp_ms": 1_763_800_000_123u64
    })
}

fn fcm_request(kind: &str) -> Value {
    json!({
        "id": "0123456789abcdef", "kind": kind, "account": 7,
        "device": {"id": "pixel", "platform": "fcm", "token": "fcm-registration-token-1"},
        "call": {"call_id": "c-77@pbx.example.com", "caller_uri": "sip:+14155550100@example.com",
                 "caller_name": "Carol", "callee": "sip:dave@example.com"},
        "timestamp_ms": 1_763_800_000_456u64
    })
}

fn bearer(seen: &Seen) -> String {
    let auth = seen.header("authorization").expect("authorization header");
    auth.strip_prefix("bearer ")
        .or_else(|| auth.strip_prefix("Bearer "))
        .unwrap_or_else(|| panic!("not a bearer authorization: {auth}"))
        .to_string()
}

// ------------------------------------------------------------------ APNs

#[test]
fn voip_push_reaches_apns_with_apple_headers_and_a_verifiable_es256_token() {
    let w = apns_world("voip", apns_ok);
    let t0 = now_unix();
    let answer = w.push(&apns_request("incoming_call", "production"));

    let seen = w.production.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(w.sandbox.count(), 0);
    let s = &seen[0];
    assert_eq!(s.method, "POST");
    assert_eq!(s.path, format!("/3/device/{DEVICE}"));
    assert_eq!(
        s.authority,
        w.production.url().trim_start_matches("https://")
    );
    assert_eq!(s.header("apns-push-type"), Some("voip"));
    assert_eq!(s.header("apns-topic"), Some("com.example.phone.voip"));
    assert_eq!(s.header("apns-priority"), Some("10"));
    assert_eq!(s.header("apns-expiration"), Some("0"));
    assert_eq!(
        s.header("apns-collapse-id"),
        Some("3848276298220188511@pbx")
    );
    let apns_id = s.header("apns-id").unwrap().to_string();
    assert_eq!(apns_id.len(), 36, "{apns_id}");

    let (header, claims) = verify_es256(&bearer(s), &w.keys.p8_public);
    assert_eq!(header, json!({"alg": "ES256", "kid": KEY_ID}));
    assert_eq!(claims["iss"], TEAM_ID);
    let iat = claims["iat"].as_u64().unwrap();
    assert!(iat >= t0 && iat <= now_unix(), "iat {iat}");

    assert_eq!(
        s.json(),
        json!({"kind": "incoming_call", "push_id": "a1b2c3d4e5f60718",
               "call_id": "3848276298220188511@pbx", "caller": "sip:bob@example.com",
               "caller_name": "Bob", "callee": "sip:alice@example.com"})
    );
    assert_eq!(
        answer,
        json!({"id": "a1b2c3d4e5f60718", "result": "sent", "platform_id": apns_id,
               "environment": "production"})
    );
}

#[test]
fn missed_call_is_an_alert_to_the_bundle_topic_in_the_devices_environment() {
    let w = apns_world("alert", never);
    let answer = w.push(&apns_request("missed_call", "sandbox"));
    assert_eq!(w.production.count(), 0);
    let s = &w.sandbox.seen()[0];
    assert_eq!(s.header("apns-push-type"), Some("alert"));
    assert_eq!(s.header("apns-topic"), Some("com.example.phone"));
    assert_eq!(s.header("apns-priority"), Some("10"));
    assert_eq!(s.header("apns-expiration"), None);
    assert_eq!(
        s.header("apns-collapse-id"),
        Some("3848276298220188511@pbx")
    );
    let payload = s.json();
    assert_eq!(
        payload["aps"],
        json!({"alert": {"title": "Missed call", "body": "Bob"}})
    );
    assert_eq!(payload["kind"], "missed_call");
    assert_eq!(answer["result"], "sent");
    assert_eq!(answer["environment"], "sandbox");
}

#[test]
fn pushes_share_one_connection_as_concurrent_streams() {
    let w = apns_world("streams", |s| {
        apns_ok(s).delayed(Duration::from_millis(300))
    });
    let n = 16;
    let started = Instant::now();
    let addr = w.mediator.local_addr();
    let threads: Vec<_> = (0..n)
        .map(|i| {
            std::thread::spawn(move || {
                let mut req = apns_request("incoming_call", "production");
                req["id"] = json!(format!("{i:016x}"));
                let mut c = Http1::connect(addr);
                c.request(
                    "POST",
                    "/push",
                    Some(TOKEN),
                    Some(req.to_string().as_bytes()),
                )
                .unwrap()
                .json()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap()["result"], "sent");
    }
    let took = started.elapsed();
    // 16 answers of 300 ms each, one after the other, would take 4.8 s.
    assert!(took < Duration::from_millis(2000), "took {took:?}");
    assert_eq!(w.production.count(), n);
    assert_eq!(w.production.connections(), 1, "one connection reused");
    assert!(
        w.production.max_in_flight() >= 8,
        "streams in flight at once: {}",
        w.production.max_in_flight()
    );
    // Later pushes reuse it too, with the same provider token.
    w.push(&apns_request("incoming_call", "production"));
    assert_eq!(w.production.connections(), 1);
    let seen = w.production.seen();
    assert!(seen.iter().all(|s| bearer(s) == bearer(&seen[0])));
    assert!(w
        .metrics()
        .contains("sipis_mediator_apns_provider_tokens_total 1\n"));
}

#[test]
fn another_connection_opens_when_every_one_is_at_the_stream_limit() {
    // APNs announces SETTINGS_MAX_CONCURRENT_STREAMS per connection; here 4.
    let tls = TestTls::new();
    let keys = Keys::new("stream-limit", &tls);
    let production =
        Stub::start_with_max_streams(&tls, 4, |s| apns_ok(s).delayed(Duration::from_millis(300)));
    let sandbox = Stub::start(&tls, apns_ok);
    let google = Stub::start(&tls, google(3600, never));
    let sa = keys.service_account(&format!("{}/token", google.url()));
    let mediator = start(&config(&keys, &production, &sandbox, &google, &sa)).unwrap();
    let addr = mediator.local_addr();
    let push = move |i: usize| {
        let mut req = apns_request("incoming_call", "production");
        req["id"] = json!(format!("{i:016x}"));
        let mut c = Http1::connect(addr);
        c.request(
            "POST",
            "/push",
            Some(TOKEN),
            Some(req.to_string().as_bytes()),
        )
        .unwrap()
        .json()
    };
    // One push first: the connection is up and its SETTINGS known.
    assert_eq!(push(99)["result"], "sent");
    assert_eq!(production.connections(), 1);

    let n = 16;
    let started = Instant::now();
    let threads: Vec<_> = (0..n)
        .map(|i| std::thread::spawn(move || push(i)))
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap()["result"], "sent");
    }
    let took = started.elapsed();
    // On one connection, 4 streams at a time: 4 rounds of 300 ms and more.
    assert!(took < Duration::from_millis(1100), "took {took:?}");
    assert_eq!(production.count(), n + 1);
    // At least one more connection than the full one (4 when all 16 meet;
    // fewer when the machine spreads their arrival: seen 3 under load).
    let conns = production.connections();
    assert!(
        (2..=16).contains(&conns),
        "{conns} connections for 16 pushes at 4 streams each"
    );
    assert!(
        production.max_in_flight() > 4,
        "streams in flight at once: {}",
        production.max_in_flight()
    );
    // Every connection signs with the same provider token.
    let seen = production.seen();
    assert!(seen.iter().all(|s| bearer(s) == bearer(&seen[0])));
}

#[test]
fn unregistered_410_is_token_dead() {
    let w = apns_world("410", |_| {
        Answer::json(
            410,
            json!({"reason": "Unregistered", "timestamp": 1763800000000u64}),
        )
        .header("apns-id", "11111111-2222-4333-8444-555555555555")
    });
    let answer = w.push(&apns_request("incoming_call", "production"));
    assert_eq!(answer["result"], "token_dead");
    assert_eq!(
        answer["platform_id"],
        "11111111-2222-4333-8444-555555555555"
    );
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("410 Unregistered"),
        "{answer}"
    );
    assert_eq!(w.production.count(), 1, "not retried");
    assert_eq!(w.sandbox.count(), 0);
}

#[test]
fn bad_device_token_is_tried_in_the_other_environment() {
    let w = world_with(
        "bdt",
        |_| apns_error(400, "BadDeviceToken"),
        apns_ok,
        never,
        3600,
        |_| {},
    );
    let answer = w.push(&apns_request("incoming_call", "production"));
    assert_eq!(w.production.count(), 1);
    let s = w.sandbox.seen();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].path, format!("/3/device/{DEVICE}"));
    assert_eq!(s[0].header("apns-topic"), Some("com.example.phone.voip"));
    assert_eq!(answer["result"], "sent");
    assert_eq!(answer["environment"], "sandbox", "{answer}");
    assert_eq!(answer["platform_id"], s[0].header("apns-id").unwrap());
    assert!(w
        .metrics()
        .contains("sipis_mediator_apns_environment_fallbacks_total 1\n"));
}

#[test]
fn bad_device_token_in_both_environments_is_token_dead() {
    let w = world_with(
        "bdt2",
        |_| apns_error(400, "BadDeviceToken"),
        |_| apns_error(400, "BadDeviceToken"),
        never,
        3600,
        |_| {},
    );
    let answer = w.push(&apns_request("incoming_call", "sandbox"));
    assert_eq!((w.sandbox.count(), w.production.count()), (1, 1));
    assert_eq!(answer["result"], "token_dead");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("both environments"),
        "{answer}"
    );
    assert!(answer.get("environment").is_none());
}

#[test]
fn expired_provider_token_is_resigned_once_and_the_push_retried() {
    let first = AtomicU64::new(0);
    let w = apns_world("expired", move |s| {
        if first.fetch_add(1, Ordering::SeqCst) == 0 {
            apns_error(403, "ExpiredProviderToken")
        } else {
            apns_ok(s)
        }
    });
    let answer = w.push(&apns_request("incoming_call", "production"));
    assert_eq!(answer["result"], "sent", "{answer}");
    let seen = w.production.seen();
    assert_eq!(seen.len(), 2);
    let (a, b) = (bearer(&seen[0]), bearer(&seen[1]));
    assert_ne!(a, b, "a new token was signed");
    verify_es256(&a, &w.keys.p8_public);
    let (_, claims) = verify_es256(&b, &w.keys.p8_public);
    assert_eq!(claims["iss"], TEAM_ID);
    assert_eq!(
        seen[0].header("apns-id"),
        seen[1].header("apns-id"),
        "one apns-id per push"
    );
    // The next push uses the new token: no signing per push.
    w.push(&apns_request("incoming_call", "production"));
    assert_eq!(bearer(&w.production.seen()[2]), b);
    assert!(w
        .metrics()
        .contains("sipis_mediator_apns_provider_tokens_total 2\n"));
}

#[test]
fn invalid_provider_token_twice_is_rejected_naming_the_key_file() {
    let w = apns_world("invalid", |_| apns_error(403, "InvalidProviderToken"));
    let answer = w.push(&apns_request("incoming_call", "production"));
    assert_eq!(answer["result"], "rejected");
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("InvalidProviderToken"), "{error}");
    assert!(error.contains(w.keys.p8.to_str().unwrap()), "{error}");
    assert!(error.contains(KEY_ID) && error.contains(TEAM_ID), "{error}");
    assert_eq!(w.production.count(), 2, "re-signed once, then given up");
}

#[test]
fn too_many_requests_is_retried_after_retry_after() {
    let first = AtomicU64::new(0);
    let w = apns_world("429", move |s| {
        if first.fetch_add(1, Ordering::SeqCst) == 0 {
            apns_error(429, "TooManyRequests").header("retry-after", "1")
        } else {
            apns_ok(s)
        }
    });
    let started = Instant::now();
    let answer = w.push(&apns_request("incoming_call", "production"));
    let took = started.elapsed();
    assert_eq!(answer["result"], "sent", "{answer}");
    assert_eq!(w.production.count(), 2);
    assert!(
        took >= Duration::from_secs(1),
        "Retry-After honoured: {took:?}"
    );
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert!(w
        .metrics()
        .contains("sipis_mediator_retries_total{platform=\"apns\"} 1\n"));
}

#[test]
fn server_errors_until_the_deadline_fail() {
    let w = world_with(
        "503",
        |_| apns_error(503, "ServiceUnavailable"),
        never,
        never,
        3600,
        |c| c.deadline = Duration::from_millis(1500),
    );
    let started = Instant::now();
    let answer = w.push(&apns_request("incoming_call", "production"));
    let took = started.elapsed();
    assert_eq!(answer["result"], "failed");
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("503 ServiceUnavailable"), "{error}");
    assert!(error.contains("deadline"), "{error}");
    // Back-off from 100 ms doubling: several attempts, none after the deadline.
    let attempts = w.production.count();
    assert!((3..=8).contains(&attempts), "{attempts} attempts");
    assert!(took < Duration::from_millis(1700), "{took:?}");
}

#[test]
fn retry_after_beyond_the_deadline_fails_at_once() {
    let w = apns_world("429far", |_| {
        apns_error(429, "TooManyRequests").header("retry-after", "30")
    });
    let started = Instant::now();
    let answer = w.push(&apns_request("incoming_call", "production"));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(answer["result"], "failed");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("Retry-After 30 s"),
        "{answer}"
    );
    assert_eq!(w.production.count(), 1);
}

#[test]
fn payload_over_the_voip_limit_is_rejected_without_sending() {
    let w = apns_world("toolarge", apns_ok);
    let mut req = apns_request("incoming_call", "production");
    req["call"]["caller_name"] = json!("B".repeat(5200));
    let answer = w.push(&req);
    assert_eq!(answer["result"], "rejected");
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("5120-byte limit"), "{error}");
    assert_eq!(w.production.count(), 0);
    // 4000 bytes of name fit a VoIP push.
    req["call"]["caller_name"] = json!("B".repeat(4000));
    assert_eq!(w.push(&req)["result"], "sent");
}

#[test]
fn apns_unreachable_fails_within_the_deadline() {
    // A port that refuses connections and that no other test can take
    // meanwhile: bound for the whole test, never listening (a released
    // port may be handed to a stand-in another test starts in parallel).
    let closed = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    closed
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    let port = closed.local_addr().unwrap().as_socket().unwrap().port();
    let url = format!("https://127.0.0.1:{port}");
    let w = world_with("down", never, never, never, 3600, |c| {
        c.deadline = Duration::from_millis(800);
        c.apns.as_mut().unwrap().production_url = url;
    });
    let started = Instant::now();
    let answer = w.push(&apns_request("incoming_call", "production"));
    assert!(started.elapsed() < Duration::from_millis(1200));
    assert_eq!(answer["result"], "failed");
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("cannot connect"), "{error}");
    assert!(
        error.contains("(apns-id "),
        "the log names the apns-id: {error}"
    );
}

#[test]
fn http_urls_speak_http2_without_tls() {
    let plain = Stub::start_plain(apns_ok);
    let url = plain.url();
    assert!(url.starts_with("http://"));
    let w = world_with("h2c", never, never, never, 3600, |c| {
        c.apns.as_mut().unwrap().production_url = url;
    });
    let answer = w.push(&apns_request("incoming_call", "production"));
    assert_eq!(answer["result"], "sent", "{answer}");
    let s = &plain.seen()[0];
    assert_eq!(s.path, format!("/3/device/{DEVICE}"));
    assert_eq!(s.header("apns-push-type"), Some("voip"));
    verify_es256(&bearer(s), &w.keys.p8_public);
}

#[test]
fn connection_closed_by_apns_is_replaced() {
    let w = apns_world("goaway", |s| apns_ok(s).then_goaway());
    for i in 0..3 {
        let mut req = apns_request("incoming_call", "production");
        req["id"] = json!(format!("{i:016x}"));
        assert_eq!(w.push(&req)["result"], "sent");
        // Let the GOAWAY arrive before the next push.
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(w.production.count(), 3);
    assert_eq!(w.production.connections(), 3);
}

// ------------------------------------------------------------------ FCM

#[test]
fn fcm_push_gets_an_oauth_token_with_a_verifiable_rs256_assertion() {
    let w = fcm_world("fcm", 3600, fcm_ok);
    let t0 = now_unix();
    let answer = w.push(&fcm_request("incoming_call"));
    assert_eq!(
        answer,
        json!({"id": "0123456789abcdef", "result": "sent",
               "platform_id": "projects/sipis-test/messages/0:1763800000123%abc"})
    );
    let seen = w.google.seen();
    assert_eq!(seen.len(), 2);

    // The token request: a form with the JWT bearer grant.
    let t = &seen[0];
    assert_eq!((t.method.as_str(), t.path.as_str()), ("POST", "/token"));
    assert_eq!(
        t.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form = String::from_utf8(t.body.to_vec()).unwrap();
    let fields: std::collections::HashMap<&str, &str> = form
        .split('&')
        .map(|kv| kv.split_once('=').unwrap())
        .collect();
    assert_eq!(
        fields["grant_type"],
        "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
    );
    let (header, claims) = verify_rs256(fields["assertion"]);
    assert_eq!(
        header,
        json!({"alg": "RS256", "typ": "JWT", "kid": "kid-0123"})
    );
    assert_eq!(claims["iss"], CLIENT_EMAIL);
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/firebase.messaging"
    );
    assert_eq!(claims["aud"], format!("{}/token", w.google.url()));
    let iat = claims["iat"].as_u64().unwrap();
    assert!(iat >= t0 && iat <= now_unix());
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 3600);

    // The send: the project from the service account, the token it got.
    let s = &seen[1];
    assert_eq!(s.path, "/v1/projects/sipis-test/messages:send");
    assert_eq!(s.header("authorization"), Some("Bearer tok-1"));
    assert_eq!(s.header("content-type"), Some("application/json"));
    assert_eq!(
        s.json(),
        json!({"message": {
            "token": "fcm-registration-token-1",
            "data": {"kind": "incoming_call", "push_id": "0123456789abcdef",
                     "call_id": "c-77@pbx.example.com", "caller": "sip:+14155550100@example.com",
                     "caller_name": "Carol", "callee": "sip:dave@example.com"},
            "android": {"priority": "high", "ttl": "0s", "collapse_key": "c-77@pbx.example.com"}}})
    );

    // A second push reuses the token; a device's own project wins.
    let mut req = fcm_request("missed_call");
    req["device"]["topic"] = json!("other-project");
    assert_eq!(w.push(&req)["result"], "sent");
    let seen = w.google.seen();
    assert_eq!(seen.len(), 3, "no second token request");
    assert_eq!(seen[2].path, "/v1/projects/other-project/messages:send");
    assert_eq!(seen[2].header("authorization"), Some("Bearer tok-1"));
    assert!(seen[2].json()["message"]["android"].get("ttl").is_none());
    assert_eq!(
        w.google.connections(),
        1,
        "token and send endpoints share it"
    );
}

#[test]
fn fcm_access_token_is_refreshed_before_it_expires() {
    // Valid 2 s: refreshed when 1 s is left.
    let w = fcm_world("refresh", 2, fcm_ok);
    assert_eq!(w.push(&fcm_request("incoming_call"))["result"], "sent");
    assert_eq!(w.push(&fcm_request("incoming_call"))["result"], "sent");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(w.push(&fcm_request("incoming_call"))["result"], "sent");
    let seen = w.google.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/token",
            "/v1/projects/sipis-test/messages:send",
            "/v1/projects/sipis-test/messages:send",
            "/token",
            "/v1/projects/sipis-test/messages:send"
        ]
    );
    let auth: Vec<_> = seen
        .iter()
        .filter_map(|s| s.header("authorization"))
        .collect();
    assert_eq!(auth, ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]);
    assert!(w
        .metrics()
        .contains("sipis_mediator_fcm_access_tokens_total 2\n"));
}

#[test]
fn fcm_401_gets_a_new_access_token_and_retries() {
    let w = fcm_world("fcm401", 3600, |s| {
        if s.header("authorization") == Some("Bearer tok-1") {
            Answer::json(
                401,
                json!({"error": {"code": 401, "status": "UNAUTHENTICATED",
                    "message": "Request had invalid authentication credentials."}}),
            )
        } else {
            fcm_ok(s)
        }
    });
    let answer = w.push(&fcm_request("incoming_call"));
    assert_eq!(answer["result"], "sent", "{answer}");
    let auth: Vec<_> = w
        .google
        .seen()
        .iter()
        .map(|s| s.header("authorization").unwrap_or(&s.path).to_string())
        .collect();
    assert_eq!(auth, ["/token", "Bearer tok-1", "/token", "Bearer tok-2"]);
}

#[test]
fn fcm_unregistered_is_token_dead() {
    let w = fcm_world("fcm404", 3600, |_| {
        Answer::json(
            404,
            json!({"error": {"code": 404, "message": "Requested entity was not found.",
                "status": "NOT_FOUND", "details": [{
                    "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                    "errorCode": "UNREGISTERED"}]}}),
        )
    });
    let answer = w.push(&fcm_request("incoming_call"));
    assert_eq!(answer["result"], "token_dead");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("404 UNREGISTERED"),
        "{answer}"
    );
}

#[test]
fn fcm_unavailable_is_retried_honouring_retry_after() {
    let first = AtomicU64::new(0);
    let w = fcm_world("fcm503", 3600, move |s| {
        if first.fetch_add(1, Ordering::SeqCst) == 0 {
            Answer::json(
                503,
                json!({"error": {"code": 503, "status": "UNAVAILABLE", "message": "busy"}}),
            )
            .header("retry-after", "1")
        } else {
            fcm_ok(s)
        }
    });
    let started = Instant::now();
    let answer = w.push(&fcm_request("incoming_call"));
    assert_eq!(answer["result"], "sent", "{answer}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(w.google.count(), 3, "token, 503, retry");
}

#[test]
fn refused_service_account_is_rejected_naming_the_file() {
    let tls = TestTls::new();
    let keys = Keys::new("invalid_grant", &tls);
    let google = Stub::start(&tls, |_| {
        Answer::json(
            400,
            json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
        )
    });
    let sa = keys.service_account(&format!("{}/token", google.url()));
    let other = Stub::start(&tls, never);
    let mediator = start(&config(&keys, &other, &other, &google, &sa)).unwrap();
    let mut c = Http1::connect(mediator.local_addr());
    let answer = c
        .request(
            "POST",
            "/push",
            Some(TOKEN),
            Some(fcm_request("incoming_call").to_string().as_bytes()),
        )
        .unwrap()
        .json();
    assert_eq!(answer["result"], "rejected");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("invalid_grant: Invalid JWT Signature."),
        "{error}"
    );
    assert!(error.contains(sa.to_str().unwrap()), "{error}");
    assert!(error.contains(CLIENT_EMAIL), "{error}");
    assert_eq!(google.count(), 1);
}

// ------------------------------------------------------------------ front

#[test]
fn unconfigured_platform_is_rejected() {
    let w = world_with("nofcm", apns_ok, never, never, 3600, |c| c.fcm = None);
    let answer = w.push(&fcm_request("incoming_call"));
    assert_eq!(answer["result"], "rejected");
    assert!(
        answer["error"].as_str().unwrap().contains("[mediator.fcm]"),
        "{answer}"
    );
    assert_eq!(w.google.count(), 0);
    // In-process, without HTTP, the same.
    let req = serde_json::from_value(fcm_request("missed_call")).unwrap();
    let answer = w.mediator.send(&req);
    assert_eq!(answer.result, sipis::push::PushResult::Rejected);
}

#[test]
fn front_checks_token_json_and_size_and_serves_health_and_metrics() {
    let w = apns_world("front", apns_ok);
    let addr = w.mediator.local_addr();
    let body = apns_request("incoming_call", "production").to_string();

    let r = Http1::connect(addr)
        .request("POST", "/push", None, Some(body.as_bytes()))
        .unwrap();
    assert_eq!(r.status, 401);
    let r = Http1::connect(addr)
        .request("POST", "/push", Some("wrong"), Some(body.as_bytes()))
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(w.production.count(), 0);

    let mut c = Http1::connect(addr);
    let r = c
        .request("POST", "/push", Some(TOKEN), Some(b"{\"id\": 12"))
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .starts_with("invalid push request JSON"));
    let r = c
        .request(
            "POST",
            "/push",
            Some(TOKEN),
            Some(br#"{"id":"x","kind":"ring"}"#),
        )
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    // Same connection, still usable (keep-alive).
    let r = c
        .request("POST", "/push", Some(TOKEN), Some(body.as_bytes()))
        .unwrap();
    assert_eq!(r.json()["result"], "sent");

    let big = vec![b' '; 65 * 1024];
    let r = Http1::connect(addr)
        .request("POST", "/push", Some(TOKEN), Some(&big))
        .unwrap();
    assert_eq!(r.status, 413);

    let r = Http1::connect(addr)
        .request("GET", "/push", Some(TOKEN), None)
        .unwrap();
    assert_eq!(r.status, 405);

    let r = Http1::connect(addr)
        .request("GET", "/health", None, None)
        .unwrap();
    assert_eq!(r.json(), json!({"ok": true, "apns": true, "fcm": true}));

    let r = Http1::connect(addr)
        .request("GET", "/metrics", None, None)
        .unwrap();
    assert_eq!(r.status, 401);
    let text = w.metrics();
    assert!(
        text.contains(
            "sipis_mediator_pushes_total{platform=\"apns\",kind=\"incoming_call\",result=\"sent\"} 1\n"
        ),
        "{text}"
    );
    assert!(text.contains("sipis_mediator_push_seconds{platform=\"apns\",quantile=\"0.99\"} "));
    assert!(text.contains("sipis_mediator_push_seconds_count{platform=\"apns\"} 1\n"));
    assert!(text.contains("sipis_mediator_connections_opened_total{platform=\"apns\"} 1\n"));
    assert!(
        text.contains("sipis_mediator_responses_total{code=\"401\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains("sipis_mediator_responses_total{code=\"400\"} 2\n"),
        "{text}"
    );
    // The handle renders the same families.
    let mut out = String::new();
    w.mediator.render_metrics(&mut out);
    assert!(out.contains(
        "sipis_mediator_pushes_total{platform=\"apns\",kind=\"incoming_call\",result=\"sent\"} 1\n"
    ));
    assert!(out.contains("sipis_mediator_connections "));
}

#[test]
fn in_process_send_without_http() {
    let w = apns_world("inproc", apns_ok);
    let req = serde_json::from_value(apns_request("call_cancelled", "production")).unwrap();
    let answer = w.mediator.send(&req);
    assert_eq!(answer.result, sipis::push::PushResult::Sent);
    let s = &w.production.seen()[0];
    assert_eq!(s.header("apns-push-type"), Some("background"));
    assert_eq!(s.header("apns-priority"), Some("5"));
    assert_eq!(s.header("apns-topic"), Some("com.example.phone"));
    assert_eq!(s.json()["aps"], json!({"content-available": 1}));
    w.mediator.shutdown();
}

// ------------------------------------------------------------------ files

#[test]
fn check_files_names_each_unusable_file() {
    let tls = TestTls::new();
    let keys = Keys::new("check", &tls);
    let sa = keys.service_account("https://oauth2.googleapis.com/token");
    let stub_url = "https://127.0.0.1:9";
    let mut cfg = MediatorConfig {
        apns: Some(ApnsConfig {
            key_file: keys.p8.clone(),
            key_id: KEY_ID.into(),
            team_id: TEAM_ID.into(),
            default_topic: None,
            production_url: stub_url.into(),
            sandbox_url: stub_url.into(),
            ca_file: Some(keys.ca.clone()),
        }),
        fcm: Some(FcmConfig {
            service_account_file: sa.clone(),
            project_id: None,
            send_url: FcmConfig::SEND_URL.into(),
            token_url: None,
            ca_file: None,
        }),
        ..MediatorConfig::default()
    };
    assert_eq!(check_files(&cfg), Vec::<(String, String)>::new());

    let write = |name: &str, text: &str| {
        let p = keys.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let p8_der = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_der();
    let sec1 = format!(
        "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(p8_der)
    );
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
        .unwrap()
        .serialize_pem();
    let cases: Vec<(PathBuf, &str)> = vec![
        (keys.dir.join("missing.p8"), "cannot read"),
        (write("text.p8", "not a key\n"), "not a PEM file"),
        (write("sec1.p8", &sec1), "SEC1"),
        (write("p384.p8", &p384), "not a P-256"),
        (write("rsa.p8", &rsa_pem()), "not a P-256"),
    ];
    for (path, want) in cases {
        cfg.apns.as_mut().unwrap().key_file = path.clone();
        let problems = check_files(&cfg);
        assert_eq!(problems.len(), 1, "{problems:?}");
        let (key, message) = &problems[0];
        assert_eq!(key, "mediator.apns.key_file");
        assert!(message.contains(path.to_str().unwrap()), "{message}");
        assert!(message.contains(want), "{message} should say {want}");
        // start() refuses the same file, naming it.
        let err = start(&cfg).unwrap_err();
        assert!(
            matches!(&err, MediatorError::File { key: "mediator.apns.key_file", path: p, .. } if *p == path),
            "{err:?}"
        );
        assert!(err.to_string().contains(want), "{err}");
    }
    cfg.apns.as_mut().unwrap().key_file = keys.p8.clone();

    let p256_pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            write("sa1.json", "{ not json"),
            "not a service-account JSON file",
        ),
        (
            write(
                "sa2.json",
                &json!({"type": "service_account", "client_email": CLIENT_EMAIL}).to_string(),
            ),
            "missing \"private_key\", \"token_uri\" (or set mediator.fcm.token_url), \
             \"project_id\" (or set mediator.fcm.project_id)",
        ),
        (
            write(
                "sa3.json",
                &json!({"type": "service_account", "client_email": CLIENT_EMAIL,
                        "private_key": p256_pem, "token_uri": "https://x/token",
                        "project_id": "p"})
                .to_string(),
            ),
            "bad \"private_key\": not an RSA",
        ),
        (
            write(
                "sa4.json",
                &json!({"type": "authorized_user", "client_id": "x"}).to_string(),
            ),
            "not \"service_account\"",
        ),
    ];
    for (path, want) in cases {
        cfg.fcm.as_mut().unwrap().service_account_file = path.clone();
        let problems = check_files(&cfg);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "mediator.fcm.service_account_file");
        assert!(problems[0].1.contains(path.to_str().unwrap()));
        assert!(
            problems[0].1.contains(want),
            "{} should say {want}",
            problems[0].1
        );
    }
    cfg.fcm.as_mut().unwrap().service_account_file = sa;

    cfg.apns.as_mut().unwrap().ca_file = Some(write("ca.txt", "nothing"));
    let problems = check_files(&cfg);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].0, "mediator.apns.ca_file");
    assert!(problems[0].1.contains("no \"-----BEGIN CERTIFICATE-----\""));
}

#[test]
fn start_refuses_bad_urls_and_a_public_listener_without_token() {
    let tls = TestTls::new();
    let keys = Keys::new("urls", &tls);
    let stub = Stub::start(&tls, never);
    let sa = keys.service_account("https://oauth2.googleapis.com/token");
    let mut cfg = config(&keys, &stub, &stub, &stub, &sa);
    cfg.apns.as_mut().unwrap().sandbox_url = "api.sandbox.push.apple.com:443".into();
    let err = start(&cfg).unwrap_err();
    assert!(
        err.to_string().starts_with("mediator.apns.sandbox_url:")
            && err.to_string().contains("expected an https:// URL"),
        "{err}"
    );
    let mut cfg = config(&keys, &stub, &stub, &stub, &sa);
    cfg.token = None;
    cfg.listen = "0.0.0.0:0".parse().unwrap();
    let err = start(&cfg).unwrap_err();
    assert!(
        err.to_string().contains("mediator.token is required"),
        "{err}"
    );
}

// ------------------------------------------------------------------ CLI

fn mediator_toml(keys: &Keys, stub: &Stub, port: u16) -> PathBuf {
    let path = keys.dir.join("sipis.toml");
    let text = format!(
        "[server]\npublic_host = \"sip.example.net\"\ndata_dir = \"{dir}\"\n\
         [mediator]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\ndeadline = \"3s\"\n\
         request_timeout = \"2s\"\n\
         [mediator.apns]\nkey_file = \"{key}\"\nkey_id = \"{KEY_ID}\"\nteam_id = \"{TEAM_ID}\"\n\
         production_url = \"{url}\"\nsandbox_url = \"{url}\"\nca_file = \"{ca}\"\n",
        dir = keys.dir.display(),
        key = keys.p8.display(),
        url = stub.url(),
        ca = keys.ca.display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn sipis_mediator_serves_pushes_until_sigterm() {
    use std::io::BufRead;
    let tls = TestTls::new();
    let keys = Keys::new("cli", &tls);
    let stub = Stub::start(&tls, apns_ok);
    let port = free_port();
    let config = mediator_toml(&keys, &stub, port);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sipis"))
        .args(["mediator", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(
        line.contains(&format!("push mediator (APNs) on 127.0.0.1:{port}")),
        "{line}"
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let answer = Http1::connect(addr)
        .request(
            "POST",
            "/push",
            Some(TOKEN),
            Some(
                apns_request("incoming_call", "production")
                    .to_string()
                    .as_bytes(),
            ),
        )
        .unwrap()
        .json();
    assert_eq!(answer["result"], "sent", "{answer}");
    assert_eq!(stub.count(), 1);
    verify_es256(&bearer(&stub.seen()[0]), &keys.p8_public);

    // SIGTERM: a clean exit, within a second or two.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(std::net::TcpStream::connect(addr).is_err(), "port closed");
}

#[test]
fn check_config_names_a_p8_key_that_is_not_p256() {
    let tls = TestTls::new();
    let keys = Keys::new("cli-check", &tls);
    let stub = Stub::start(&tls, never);
    let config = mediator_toml(&keys, &stub, free_port());
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sipis"))
            .args(["check-config", config.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = run();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A PEM, PKCS#8 key the configuration's own check accepts, but P-384.
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    std::fs::write(&keys.p8, p384.serialize_pem()).unwrap();
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("mediator.apns.key_file"), "{stderr}");
    assert!(stderr.contains("not a P-256"), "{stderr}");
    assert!(stderr.contains(keys.p8.to_str().unwrap()), "{stderr}");
    // `sipis mediator` refuses to start with it too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sipis"))
        .args(["mediator", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
