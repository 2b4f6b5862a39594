//! The push path through sipis end to end: a call for an account in proxy
//! mode arrives over UDP, sipis posts the `incoming_call` push to the
//! mediator, the mediator sends it over HTTP/2 + TLS to a local stand-in
//! for APNs — which answers `410 Unregistered`. sipis must then remove the
//! device (from its shard and from the store: the admin API no longer
//! lists it) and, nobody being reachable, answer the caller 480.

#[path = "support/h2stub.rs"]
mod h2stub;
#[path = "support/http1.rs"]
mod http1;

#[path = "support/ports.rs"]
mod ports;

use h2stub::{Answer, Stub, TestTls};
use http1::Http1;
use ports::free_udp_port_run;
use serde_json::{json, Value};
use sipis::config::Config;
use sipis::push::mediator::{start, ApnsConfig, MediatorConfig};
use sipis::runtime::Server;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "push-e2e-admin-token-0123456789abcdef";
const PUSH_TOKEN: &str = "push-e2e-mediator-token-0123456789";
const PRID: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

fn admin(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut c = Http1::connect(addr);
    let body = body.map(|b| b.to_string());
    let r = c
        .request(
            method,
            path,
            Some(ADMIN_TOKEN),
            body.as_deref().map(str::as_bytes),
        )
        .expect("admin API answers");
    let v = if r.text().is_empty() {
        Value::Null
    } else {
        r.json()
    };
    (r.status, v)
}

#[test]
fn apns_410_removes_the_device_through_sipis_and_the_caller_gets_480() {
    // APNs stand-in: every push is answered 410 Unregistered.
    let tls = TestTls::new();
    let apns = Stub::start(&tls, |_| {
        Answer::json(
            410,
            json!({"reason": "Unregistered", "timestamp": 1_763_800_000_000u64}),
        )
    });
    let dir = std::env::temp_dir().join(format!("sipis-push-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let p8 = dir.join("AuthKey_KEYID12345.p8");
    std::fs::write(&p8, key.serialize_pem()).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &tls.ca_pem).unwrap();
    let mediator = start(&MediatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: Some(PUSH_TOKEN.into()),
        apns: Some(ApnsConfig {
            key_file: p8,
            key_id: "KEYID12345".into(),
            team_id: "TEAM123456".into(),
            default_topic: None,
            production_url: apns.url(),
            sandbox_url: apns.url(),
            ca_file: Some(ca),
        }),
        ..MediatorConfig::default()
    })
    .expect("mediator starts");

    let port = free_udp_port_run(2);
    let toml = format!(
        r#"
[server]
bind = "127.0.0.1"
sip_port = {port}
shards = 1
data_dir = "{dir}"
[admin]
listen = "127.0.0.1:{admin_port}"
token = "{ADMIN_TOKEN}"
[calls]
device_wait = "10s"
[push]
mediator_url = "http://{mediator}/push"
token = "{PUSH_TOKEN}"
"#,
        dir = dir.display(),
        mediator = mediator.local_addr(),
        admin_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
    );
    let cfg = Config::from_toml_str(&toml).expect("valid config");
    let server = Server::start(&cfg).expect("sipis starts");
    let api = server.admin_addr().expect("admin API");

    // An account in proxy mode (no registrar) with one APNs device.
    let (status, acct) = admin(
        api,
        "POST",
        "/accounts",
        Some(json!({"aor": "sip:dana@example.net", "auth_user": "dana", "password": "pw-dana"})),
    );
    assert_eq!(status, 201, "{acct}");
    let id = acct["id"].as_u64().unwrap();
    let token = acct["token"].as_str().unwrap().to_owned();
    let (status, dev) = admin(
        api,
        "PUT",
        &format!("/accounts/{id}/devices/iphone"),
        Some(
            json!({"provider": "apns", "prid": PRID, "param": "ABCDE12345.com.example.phone.voip"}),
        ),
    );
    assert_eq!(status, 200, "{dev}");

    // The caller: one INVITE to the account's token at the shard.
    let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
    caller
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let me = caller.local_addr().unwrap();
    let shard = server.shard_addr(0);
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
    let invite = |attempt: u32| {
        format!(
            "INVITE sip:{token}@{shard} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {me};branch=z9hG4bK-push-e2e-{attempt};rport\r\n\
             Max-Forwards: 70\r\n\
             From: \"Erin\" <sip:erin@example.org>;tag=erin1\r\n\
             To: <sip:dana@example.net>\r\n\
             Call-ID: push-e2e-{attempt}@example.org\r\n\
             CSeq: {attempt} INVITE\r\n\
             Contact: <sip:erin@{me}>\r\n\
             Content-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
    };
    // Provisioning reaches the shard asynchronously (its control channel):
    // while the shard does not know the account or its device yet it
    // answers 480 without pushing (404 before sipis stopped telling
    // unknown accounts apart); the caller then tries again with a new call.
    let mut got: Vec<String> = Vec::new();
    let mut buf = [0u8; 65_535];
    let end = Instant::now() + Duration::from_secs(15);
    let mut attempt = 1;
    caller.send_to(invite(attempt).as_bytes(), shard).unwrap();
    while Instant::now() < end && !got.iter().any(|m| m.starts_with("SIP/2.0 480")) {
        if let Ok((n, _)) = caller.recv_from(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            let early_480 = m.starts_with("SIP/2.0 480") && apns.count() == 0;
            if m.starts_with("SIP/2.0 404") || early_480 {
                assert!(attempt < 20, "the account never reached its shard: {m}");
                got.clear();
                attempt += 1;
                std::thread::sleep(Duration::from_millis(50));
                caller.send_to(invite(attempt).as_bytes(), shard).unwrap();
                continue;
            }
            got.push(m);
        }
    }
    let final_ = got
        .iter()
        .find(|m| m.starts_with("SIP/2.0 480"))
        .unwrap_or_else(|| panic!("no 480 within 10 s; got {got:#?}"));
    assert!(
        final_.contains("X-Sipis-Reason: Device-Not-Reachable\r\n"),
        "{final_}"
    );
    assert!(got[0].starts_with("SIP/2.0 100 "), "{got:#?}");

    // The stand-in received the VoIP push for this device.
    let seen = apns.seen();
    assert_eq!(seen.len(), 1, "one push to APNs");
    assert_eq!(seen[0].path, format!("/3/device/{PRID}"));
    assert_eq!(seen[0].header("apns-push-type"), Some("voip"));
    assert_eq!(
        seen[0].json()["call_id"],
        format!("push-e2e-{attempt}@example.org")
    );

    // The device is gone from the store (the admin API reads the store).
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, list) = admin(api, "GET", &format!("/accounts/{id}/devices"), None);
        assert_eq!(status, 200);
        if list["devices"].as_array().is_some_and(|d| d.is_empty()) {
            break;
        }
        assert!(Instant::now() < end, "device still listed: {list}");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop(false);
    mediator.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
