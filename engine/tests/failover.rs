//! RFC 3263 §4.3 failover of registration on behalf: an account whose
//! registrar resolved to several targets sends its REGISTER to the next
//! one when the current one times out, answers 503 or its connection
//! fails; once every target failed the attempt backs off and the next one
//! starts from the first target; a later target is left for the first at
//! a refresh once `failback` has passed.

#![allow(clippy::disallowed_methods)] // the test anchors a simulated clock

use sipis_engine::{
    AccountConfig, AccountSecret, Engine, EngineConfig, Event, Flow, RegStatus, Registrar,
    RegistrationConfig, Target, Transmit, Transport,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const A: &str = "192.0.2.1:5060";
const B: &str = "192.0.2.2:5070";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn engine(now: Instant, failback: Duration) -> Engine {
    Engine::new(
        EngineConfig {
            via: "192.0.2.100:5060".into(),
            contact_host: "192.0.2.100:5060".into(),
            registration: RegistrationConfig {
                failback,
                ..RegistrationConfig::default()
            },
            ..EngineConfig::default()
        },
        now,
    )
}

fn account(targets: Vec<Target>) -> AccountConfig {
    AccountConfig {
        id: 1,
        aor: "sip:alice@provider.test".into(),
        auth_user: "alice".into(),
        secret: AccountSecret::Password("pw".into()),
        registrar: Some(Registrar {
            uri: "sip:provider.test".into(),
            targets,
            outbound_proxy: None,
        }),
        expires: 600,
        token: "tokalice".into(),
    }
}

fn udp(a: &str) -> Target {
    Target {
        addr: addr(a),
        transport: Transport::Udp,
    }
}

fn transmits(e: &mut Engine) -> Vec<Transmit> {
    std::iter::from_fn(|| e.poll_transmit()).collect()
}

fn registers(e: &mut Engine) -> Vec<Transmit> {
    transmits(e)
        .into_iter()
        .filter(|t| t.payload.starts_with(b"REGISTER "))
        .collect()
}

/// A response to `req` with `status` (200 grants 600 s).
fn answer(req: &Transmit, status: u16) -> Vec<u8> {
    let text = String::from_utf8_lossy(&req.payload);
    let mut out = format!("SIP/2.0 {status} X\r\n");
    for line in text.split("\r\n").skip(1) {
        let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
        match name.as_str() {
            "via" | "from" | "call-id" | "cseq" => out.push_str(&format!("{line}\r\n")),
            "to" => out.push_str(&format!("{line};tag=reg\r\n")),
            _ => {}
        }
    }
    if status == 200 {
        out.push_str("Expires: 600\r\n");
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out.into_bytes()
}

/// Runs the clock from `*now` for `span` in 100 ms steps; the REGISTERs
/// sent meanwhile.
fn run(e: &mut Engine, now: &mut Instant, span: Duration) -> Vec<Transmit> {
    let until = *now + span;
    let mut out = Vec::new();
    while *now < until {
        *now += Duration::from_millis(100);
        e.handle_timeout(*now);
        out.extend(registers(e));
    }
    out
}

#[test]
fn a_target_that_times_out_gives_way_to_the_next() {
    let mut now = Instant::now();
    let mut e = engine(now, Duration::from_secs(3600));
    e.add_account(now, account(vec![udp(A), udp(B)]), None);
    let first = registers(&mut e);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].dest, addr(A));
    // Retransmissions to A until Timer F (64·T1 = 32 s), then B at once.
    let sent = run(&mut e, &mut now, Duration::from_secs(33));
    let (to_a, to_b): (Vec<_>, Vec<_>) = sent.iter().partition(|t| t.dest == addr(A));
    assert!(to_a.len() >= 5, "A's retransmissions: {}", to_a.len());
    assert!(!to_b.is_empty(), "B got the REGISTER after A's timeout");
    let first_b = sent.iter().position(|t| t.dest == addr(B)).unwrap();
    assert!(
        sent[first_b..].iter().all(|t| t.dest == addr(B)),
        "nothing to A after B"
    );
    let b = to_b[0];
    e.handle_datagram(now, addr(B), Flow::Udp, &answer(b, 200));
    assert!(
        matches!(e.account_status(1), Some(RegStatus::Registered { .. })),
        "{:?}",
        e.account_status(1)
    );
    // With a long failback, the refresh goes to B again.
    let later = run(&mut e, &mut now, Duration::from_secs(600));
    assert_eq!(
        later.first().map(|t| t.dest),
        Some(addr(B)),
        "the refresh stays on B"
    );
}

#[test]
fn a_503_gives_way_to_the_next_target_and_every_target_failing_backs_off() {
    let mut now = Instant::now();
    let mut e = engine(now, Duration::from_secs(3600));
    e.add_account(now, account(vec![udp(A), udp(B)]), None);
    let r = registers(&mut e);
    assert_eq!(r[0].dest, addr(A));
    e.handle_datagram(now, addr(A), Flow::Udp, &answer(&r[0], 503));
    let r = registers(&mut e);
    assert_eq!(r.len(), 1, "B at once");
    assert_eq!(r[0].dest, addr(B));
    // B answers 503 too: every target failed, back-off (nothing now)...
    e.handle_datagram(now, addr(B), Flow::Udp, &answer(&r[0], 503));
    assert!(registers(&mut e).is_empty(), "no third send at once");
    assert!(
        matches!(e.account_status(1), Some(RegStatus::Retrying { .. })),
        "{:?}",
        e.account_status(1)
    );
    // ...and the retry starts from the first target again.
    let r = run(&mut e, &mut now, Duration::from_secs(3));
    assert!(!r.is_empty(), "a retry after the back-off");
    assert!(r.iter().all(|t| t.dest == addr(A)), "the retry goes to A");
    e.handle_datagram(now, addr(A), Flow::Udp, &answer(&r[0], 200));
    assert!(matches!(
        e.account_status(1),
        Some(RegStatus::Registered { .. })
    ));
}

#[test]
fn a_failed_connection_gives_way_to_the_next_target() {
    let now = Instant::now();
    let mut e = engine(now, Duration::from_secs(3600));
    let tcp = Target {
        addr: addr(A),
        transport: Transport::Tcp,
    };
    e.add_account(now, account(vec![tcp, udp(B)]), None);
    let flow = std::iter::from_fn(|| e.poll_event())
        .find_map(|ev| match ev {
            Event::Connect { flow, dest, .. } => {
                assert_eq!(dest, addr(A));
                Some(flow)
            }
            _ => None,
        })
        .expect("a connection to A asked for");
    let r = registers(&mut e);
    assert_eq!((r[0].dest, r[0].flow), (addr(A), flow));
    assert!(String::from_utf8_lossy(&r[0].payload).contains("SIP/2.0/TCP "));
    // The connection could not be made.
    e.handle_flow_closed(now, flow);
    let r = registers(&mut e);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].dest, r[0].flow), (addr(B), Flow::Udp));
    assert!(String::from_utf8_lossy(&r[0].payload).contains("SIP/2.0/UDP "));
}

#[test]
fn after_failback_a_refresh_tries_the_first_target_again() {
    let mut now = Instant::now();
    let mut e = engine(now, Duration::ZERO);
    e.add_account(now, account(vec![udp(A), udp(B)]), None);
    let r = registers(&mut e);
    e.handle_datagram(now, addr(A), Flow::Udp, &answer(&r[0], 503));
    let r = registers(&mut e);
    assert_eq!(r[0].dest, addr(B));
    e.handle_datagram(now, addr(B), Flow::Udp, &answer(&r[0], 200));
    let later = run(&mut e, &mut now, Duration::from_secs(600));
    assert_eq!(later.first().map(|t| t.dest), Some(addr(A)), "refresh to A");
}

#[test]
fn new_targets_from_dns_apply_to_the_next_register_without_a_new_attempt() {
    let mut now = Instant::now();
    let mut e = engine(now, Duration::from_secs(3600));
    e.add_account(now, account(vec![udp(A)]), None);
    let r = registers(&mut e);
    e.handle_datagram(now, addr(A), Flow::Udp, &answer(&r[0], 200));
    // A moved to C: nothing sent now, the refresh goes to C.
    const C: &str = "192.0.2.3:5060";
    e.update_account(now, account(vec![udp(C)]));
    assert!(registers(&mut e).is_empty(), "no REGISTER on a DNS change");
    assert!(matches!(
        e.account_status(1),
        Some(RegStatus::Registered { .. })
    ));
    let later = run(&mut e, &mut now, Duration::from_secs(600));
    assert_eq!(later.first().map(|t| t.dest), Some(addr(C)));
}
