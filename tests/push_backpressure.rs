//! Back-pressure on the push path, end to end: sipis with the in-process
//! mediator (called directly, no HTTP) and `push.max_in_flight = 2`, an
//! APNs stand-in that takes its time. Two calls fill the ceiling; a third
//! call must fail at once with `480` + `X-Sipis-Reason:
//! Device-Not-Reachable` and no push reaching APNs, while the two pushed
//! calls go on: each gets its `180` with `Push-Notification-Sent` once
//! APNs accepted, and ends normally when the caller cancels it (`487`).

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
use sipis::runtime::Server;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "push-bp-admin-token-0123456789abcdef";
const PUSH_TOKEN: &str = "push-bp-mediator-token-0123456789";
/// How long APNs takes to accept each push here.
const APNS_TAKES: Duration = Duration::from_millis(800);

fn admin(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
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

fn header<'a>(m: &'a str, name: &str) -> Option<&'a str> {
    m.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

struct Caller {
    sock: UdpSocket,
    me: SocketAddr,
    to: SocketAddr,
    token: String,
}

impl Caller {
    fn request(&self, method: &str, call: &str, to: Option<&str>) -> String {
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
        let body = if method == "INVITE" { sdp } else { "" };
        let ctype = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        format!(
            "{method} sip:{token}@{shard} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {me};branch=z9hG4bK-bp-{call};rport\r\n\
             Max-Forwards: 70\r\n\
             From: \"Erin\" <sip:erin@example.org>;tag=erin-{call}\r\n\
             To: {to}\r\n\
             Call-ID: {call}@example.org\r\n\
             CSeq: 1 {method}\r\n\
             Contact: <sip:erin@{me}>\r\n\
             {ctype}Content-Length: {}\r\n\r\n{body}",
            body.len(),
            token = self.token,
            shard = self.to,
            me = self.me,
            to = to.unwrap_or("<sip:dana@example.net>"),
        )
    }

    fn send(&self, m: &str) {
        self.sock.send_to(m.as_bytes(), self.to).unwrap();
    }

    /// Every message until `until` (bounded), with when it came.
    fn collect(
        &self,
        until: Instant,
        mut stop: impl FnMut(&[(Instant, String)]) -> bool,
    ) -> Vec<(Instant, String)> {
        let mut got = Vec::new();
        let mut buf = [0u8; 65_535];
        while Instant::now() < until && !stop(&got) {
            if let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                got.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
        }
        got
    }
}

fn of_call<'a>(
    got: &'a [(Instant, String)],
    call: &str,
    status: &str,
) -> Option<&'a (Instant, String)> {
    got.iter().find(|(_, m)| {
        m.starts_with(&format!("SIP/2.0 {status}"))
            && header(m, "Call-ID") == Some(&format!("{call}@example.org"))
    })
}

#[test]
fn full_in_flight_ceiling_fails_new_calls_at_once_while_pushed_calls_complete() {
    let tls = TestTls::new();
    let apns = Stub::start(&tls, |_| {
        Answer::status(200)
            .header("apns-id", "0a1b2c3d-0000-0000-0000-000000000001")
            .delayed(APNS_TAKES)
    });
    let dir = std::env::temp_dir().join(format!("sipis-push-bp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let p8 = dir.join("AuthKey_KEYID12345.p8");
    std::fs::write(&p8, key.serialize_pem()).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &tls.ca_pem).unwrap();

    let port = free_udp_port_run(2);
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
token = "{PUSH_TOKEN}"
max_in_flight = 2
[mediator]
in_process = true
listen = "127.0.0.1:{mediator_port}"
token = "{PUSH_TOKEN}"
[mediator.apns]
key_file = "{p8}"
key_id = "KEYID12345"
team_id = "TEAM123456"
production_url = "{url}"
sandbox_url = "{url}"
ca_file = "{ca}"
"#,
        dir = dir.display(),
        p8 = p8.display(),
        ca = ca.display(),
        url = apns.url(),
        mediator_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
    );
    let cfg = Config::from_toml_str(&toml).expect("valid config");
    assert_eq!(cfg.push.max_in_flight, 2);
    let server = Server::start(&cfg).expect("sipis starts");
    let api = server.admin_addr().expect("admin API");

    let (status, acct) = admin(
        api,
        "POST",
        "/accounts",
        Some(json!({"aor": "sip:dana@example.net", "auth_user": "dana", "password": "pw-dana"})),
    );
    assert_eq!(status, 201, "{acct}");
    let id = acct["id"].as_u64().unwrap();
    let (status, dev) = admin(
        api,
        "PUT",
        &format!("/accounts/{id}/devices/iphone"),
        Some(json!({"provider": "apns", "prid": "ab".repeat(32),
                    "param": "ABCDE12345.com.example.phone.voip"})),
    );
    assert_eq!(status, 200, "{dev}");

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let caller = Caller {
        me: sock.local_addr().unwrap(),
        sock,
        to: server.shard_addr(0),
        token: acct["token"].as_str().unwrap().to_owned(),
    };

    // Provisioning reaches the shard through its control channel: probe
    // with a call until it is pushed (then cancel the probe and let its
    // push drain).
    let end = Instant::now() + Duration::from_secs(10);
    let mut probe = 0;
    loop {
        assert!(Instant::now() < end, "the account never reached its shard");
        let call = format!("probe-{probe}");
        caller.send(&caller.request("INVITE", &call, None));
        let got = caller.collect(Instant::now() + Duration::from_secs(3), |g| {
            g.iter().any(|(_, m)| !m.starts_with("SIP/2.0 100"))
        });
        let pushed = got.iter().any(|(_, m)| m.starts_with("SIP/2.0 180"));
        if let Some((_, last)) = got.iter().find(|(_, m)| !m.starts_with("SIP/2.0 100")) {
            if last.starts_with("SIP/2.0 4") {
                let ack = caller.request("ACK", &call, header(last, "To"));
                caller.send(&ack);
            }
        }
        if pushed {
            caller.send(&caller.request("CANCEL", &call, None));
            let _ = caller.collect(Instant::now() + Duration::from_secs(2), |g| {
                g.iter().any(|(_, m)| m.starts_with("SIP/2.0 487"))
            });
            break;
        }
        probe += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    // The probe's pushes (its incoming_call, and the one telling the
    // device the call ended) leave the ceiling once APNs answered them.
    let mut pushes_before = apns.count();
    let quiet = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(APNS_TAKES * 2);
        let now = apns.count();
        if now == pushes_before || Instant::now() > quiet {
            break;
        }
        pushes_before = now;
    }

    // Two calls fill the ceiling (their pushes take APNS_TAKES each) ...
    caller.send(&caller.request("INVITE", "held-1", None));
    caller.send(&caller.request("INVITE", "held-2", None));
    let t_apns = Instant::now() + Duration::from_secs(5);
    while apns.count() < pushes_before + 2 && Instant::now() < t_apns {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(apns.count(), pushes_before + 2, "both pushes reached APNs");

    // ... so the third fails at once: 480 with the reason, long before
    // APNs could have answered anything.
    let t3 = Instant::now();
    caller.send(&caller.request("INVITE", "refused", None));
    let got = caller.collect(t3 + Duration::from_secs(5), |g| {
        of_call(g, "refused", "480").is_some()
    });
    let (at, refused) = of_call(&got, "refused", "480").expect("480 for the refused call");
    let took = at.duration_since(t3);
    assert!(
        took < APNS_TAKES / 2,
        "the refused call waited {took:?}: not a fast failure"
    );
    assert_eq!(
        header(refused, "X-Sipis-Reason"),
        Some("Device-Not-Reachable"),
        "{refused}"
    );
    caller.send(&caller.request("ACK", "refused", header(refused, "To")));
    assert!(
        of_call(&got, "held-1", "180").is_none() && of_call(&got, "held-2", "180").is_none(),
        "the held calls rang before APNs accepted: {got:#?}"
    );

    // The pushed calls complete: 180 Push-Notification-Sent once APNs
    // accepted, then the caller cancels them: 200 to the CANCEL, 487.
    let mut all = got;
    all.extend(
        caller.collect(Instant::now() + Duration::from_secs(5), |g| {
            of_call(g, "held-1", "180").is_some() && of_call(g, "held-2", "180").is_some()
        }),
    );
    for call in ["held-1", "held-2"] {
        let (_, ringing) =
            of_call(&all, call, "180").unwrap_or_else(|| panic!("no 180 for {call}: {all:#?}"));
        assert_eq!(
            header(ringing, "X-Sipis-Push-Status"),
            Some("Push-Notification-Sent"),
            "{ringing}"
        );
        caller.send(&caller.request("CANCEL", call, None));
    }
    all.extend(
        caller.collect(Instant::now() + Duration::from_secs(5), |g| {
            of_call(g, "held-1", "487").is_some() && of_call(g, "held-2", "487").is_some()
        }),
    );
    for call in ["held-1", "held-2"] {
        let (_, ended) =
            of_call(&all, call, "487").unwrap_or_else(|| panic!("no 487 for {call}: {all:#?}"));
        caller.send(&caller.request("ACK", call, header(ended, "To")));
        assert!(
            all.iter().any(|(_, m)| m.starts_with("SIP/2.0 200")
                && header(m, "CSeq") == Some("1 CANCEL")
                && header(m, "Call-ID") == Some(&format!("{call}@example.org"))),
            "no 200 to the CANCEL of {call}"
        );
    }
    // APNs saw the two held calls' VoIP pushes and nothing for the
    // refused call.
    let seen = apns.seen();
    let pushed: Vec<(String, String)> = seen[pushes_before..]
        .iter()
        .map(|s| {
            let j = s.json();
            let field = |k: &str| j[k].as_str().unwrap_or("").to_owned();
            (field("call_id"), field("kind"))
        })
        .collect();
    for call in ["held-1@example.org", "held-2@example.org"] {
        assert!(
            pushed.contains(&(call.to_owned(), "incoming_call".to_owned())),
            "{pushed:?}"
        );
    }
    assert!(
        pushed.iter().all(|(c, _)| c != "refused@example.org"),
        "{pushed:?}"
    );

    server.stop(false);
    let _ = std::fs::remove_dir_all(&dir);
}
