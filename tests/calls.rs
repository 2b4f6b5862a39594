//! Incoming calls, driven through the flow simulator: a provider-side
//! caller, phones woken by a simulated push mediator, and the engine as the
//! phones' registrar and a signalling-only B2BUA between them (the call
//! flow and late wake in `sipis_engine`'s `calls` module doc). Every test
//! asserts what a user would check: the bytes each side received, the
//! pushes, the events, the counters.

mod sim;

use sim::caller::CALLER_SDP;
use sim::phone::{Script, PHONE_SDP};
use sim::{body, cseq, header, method, status, tag, Conditions, Sim};
use sim::{SimCaller, SimPhone, SimRegistrar};
use sipis::push::{PushKind, PushResult};
use sipis::{
    AccountConfig, AccountSecret, CallConfig, Engine, EngineConfig, Event, Flow, Outcome, Registrar,
};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

const ENGINE: &str = "127.0.0.1:5060";
const PHONE_PORT: &str = "127.0.0.1:5080";
const REGISTRAR: &str = "127.0.0.2:5060";
const CALLER: &str = "127.0.0.3:5060";
const PHONE1: &str = "10.0.0.11:40001";
const PHONE2: &str = "10.0.0.12:40002";
/// The account's Contact token (the Request-URI user of incoming calls).
const ACCOUNT_TOKEN: &str = "tok00000001";
/// APNs device tokens (`pn-prid`).
const IPHONE: &str = "5f1e8a9c0b7d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f";
const IPAD: &str = "0e9f5f1e8a9c0b7d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d";
const PN_PARAM: &str = "ABCDE12345.com.example.voip";

type Phone = Rc<RefCell<SimPhone>>;
type Caller = Rc<RefCell<SimCaller>>;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn account() -> AccountConfig {
    AccountConfig {
        id: 1,
        aor: "sip:user1@provider.test".into(),
        auth_user: "user1".into(),
        secret: AccountSecret::Password("pw1".into()),
        registrar: Some(Registrar::new("sip:provider.test", addr(REGISTRAR), None)),
        expires: 3600,
        token: ACCOUNT_TOKEN.into(),
    }
}

fn sim_with(calls: CallConfig) -> Sim {
    let start = Instant::now();
    let engine = Engine::new(
        EngineConfig {
            via: ENGINE.into(),
            contact_host: ENGINE.into(),
            phone_contact_host: PHONE_PORT.into(),
            calls,
            ..EngineConfig::default()
        },
        start,
    );
    let mut registrar = SimRegistrar::new(addr(REGISTRAR), "provider.test", start);
    registrar.add_user("user1", "pw1");
    let mut s = Sim::new(engine, addr(ENGINE), registrar, start);
    s.phone_addr = addr(PHONE_PORT);
    let now = s.now;
    s.engine.add_account(now, account(), None);
    // The upstream registration is up before anything else happens.
    s.run_for(Duration::from_secs(1));
    s
}

fn sim() -> Sim {
    sim_with(CallConfig::default())
}

/// A phone on the shared port; its push token wakes it after `wake`.
fn phone(s: &mut Sim, at: &str, token: &str, wake: Option<Duration>) -> Phone {
    let p = SimPhone::new(addr(at), s.phone_addr, token);
    s.mediator.wake(token, addr(at), wake);
    s.add_peer(p, Flow::SharedUdp)
}

/// A push device provisioned for account 1 (as the admin API or the store
/// would at start): pushable, not connected.
fn provision(s: &mut Sim, name: &str, token: &str) {
    assert!(s.engine.put_device(1, name, "apns", token, Some(PN_PARAM)));
}

fn caller(s: &mut Sim) -> Caller {
    let c = SimCaller::new(addr(CALLER), s.engine_addr, ACCOUNT_TOKEN);
    s.add_peer(c, Flow::Udp)
}

fn start(s: &mut Sim, c: &Caller) {
    s.poke(c, |c, now, out| c.start(now, out));
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The CallOutcome events: (call id, outcome, reason).
fn outcomes(s: &Sim) -> Vec<(String, Outcome, Option<String>)> {
    s.events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::CallOutcome {
                call_id,
                outcome,
                reason,
                ..
            } => Some((call_id.clone(), *outcome, reason.clone())),
            _ => None,
        })
        .collect()
}

/// What must hold after every flow: nothing sent to a phone from the
/// provider-side socket (its NAT would drop it), nothing with `pn-` sent
/// to anyone but in a REGISTER answer, and the pending-call map empty once
/// the late-wake window and the transactions are over.
fn settle(s: &mut Sim) {
    s.run_for(Duration::from_secs(120));
    assert!(s.wrong_flow.is_empty(), "wrong flow: {:?}", s.wrong_flow);
    for (_, dest, p) in &s.sent {
        let is_register_answer = cseq(p).is_some_and(|(_, m)| m == "REGISTER");
        if !is_register_answer {
            assert!(
                !text(p).contains("pn-"),
                "pn- parameter sent to {dest}:\n{}",
                text(p)
            );
        }
    }
    assert_eq!(s.engine.call_count(), 0, "calls left in the map");
    assert_eq!(
        s.engine.transaction_count(),
        (0, 0),
        "transactions left over"
    );
}

// ---- the phones' registrar ---------------------------------------------

#[test]
fn phone_register_is_challenged_before_binding() {
    let mut s = sim();
    let p = phone(&mut s, PHONE1, IPHONE, None);
    s.poke(&p, |p, now, out| p.register(now, out));
    s.run_for(Duration::from_secs(2));
    let p = p.borrow();
    let regs = p.ua.responses("REGISTER");
    assert_eq!(status(&regs[0]), Some(401));
    let challenge = header(&regs[0], "WWW-Authenticate").unwrap();
    assert!(challenge.starts_with("Digest "), "{challenge}");
    assert!(challenge.contains("realm=\"sipis\""), "{challenge}");
    // Before the answer to the challenge nothing was bound.
    let first_401 = p.register_answers.first().map(|r| r.0);
    assert_eq!(p.last_register(), Some(200));
    assert!(first_401.is_some());
    let saved: Vec<_> = s
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::DeviceSaved { .. }))
        .collect();
    assert_eq!(saved.len(), 1);
    // The DeviceSaved came with the authenticated REGISTER, after the 401.
    let t401 =
        p.ua.received
            .iter()
            .find(|(_, _, d)| status(d) == Some(401))
            .unwrap()
            .0;
    assert!(saved[0].0 > t401);
    let devices = s.engine.devices(s.now, 1);
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].registered, Some(addr(PHONE1)));
    assert_eq!(s.engine.stats().phone_registers, 2);
}

#[test]
fn wrong_password_gets_403_and_no_binding() {
    let mut s = sim();
    let p = phone(&mut s, PHONE1, IPHONE, None);
    p.borrow_mut().password = "guess".into();
    s.poke(&p, |p, now, out| p.register(now, out));
    s.run_for(Duration::from_secs(2));
    assert_eq!(p.borrow().ua.codes("REGISTER"), vec![401, 403]);
    assert!(s.engine.devices(s.now, 1).is_empty());
    assert!(!s
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::DeviceSaved { .. })));
    assert_eq!(s.engine.stats().phone_auth_failures, 1);
    // Calls do not reach it.
    let c = caller(&mut s);
    start(&mut s, &c);
    s.run_for(Duration::from_secs(5));
    assert!(p.borrow().invites().is_empty());
    assert!(s.mediator.log.is_empty());
    assert_eq!(c.borrow().final_code, Some(480));
    settle(&mut s);
}

#[test]
fn unknown_push_provider_gets_555() {
    let mut s = sim();
    let p = phone(&mut s, PHONE1, IPHONE, None);
    p.borrow_mut().provider = "pushy".into();
    s.poke(&p, |p, now, out| p.register(now, out));
    s.run_for(Duration::from_secs(2));
    let p = p.borrow();
    assert_eq!(p.ua.codes("REGISTER"), vec![401, 555]);
    let last = p.register_answers.last().unwrap();
    assert!(
        text(&last.2).starts_with("SIP/2.0 555 Push Notification Service Not Supported\r\n"),
        "{}",
        text(&last.2)
    );
    assert!(s.engine.devices(s.now, 1).is_empty());
}

#[test]
fn register_200_has_feature_caps_and_stores_device() {
    let mut s = sim();
    let p = phone(&mut s, PHONE1, IPHONE, None);
    s.poke(&p, |p, now, out| p.register(now, out));
    s.run_for(Duration::from_secs(2));
    let p = p.borrow();
    let ok = &p.register_answers.last().unwrap().2;
    assert_eq!(status(ok), Some(200));
    assert_eq!(
        header(ok, "Feature-Caps").as_deref(),
        Some("*;+sip.pns=\"apns\";+sip.pnsreg=\"121\"")
    );
    // The binding as granted: the Contact without pn-* parameters.
    let contact = header(ok, "Contact").unwrap();
    assert_eq!(contact, format!("<sip:user1@{PHONE1}>;expires=600"));
    let saved: Vec<_> = s
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::DeviceSaved {
                account,
                device,
                provider,
                prid,
                param,
            } => Some((
                *account,
                device.clone(),
                provider.clone(),
                prid.clone(),
                param.clone(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(saved.len(), 1);
    let (account, name, provider, prid, param) = saved[0].clone();
    assert_eq!(
        (account, provider.as_str(), prid.as_str(), param.as_deref()),
        (1, "apns", IPHONE, Some(PN_PARAM))
    );
    let devices = s.engine.devices(s.now, 1);
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].name, name);
    assert_eq!(devices[0].prid.as_deref(), Some(IPHONE));
    assert_eq!(devices[0].param.as_deref(), Some(PN_PARAM));
    assert_eq!(devices[0].registered, Some(addr(PHONE1)));
}

// ---- an answered call ------------------------------------------------------

/// The provider calls, the push wakes the iPhone after 1 s, it rings and
/// answers after 2 s; then one side hangs up after 3 s. Returns the world.
fn answered_call(lossy: Option<u64>, bye_from_phone: bool) -> (Sim, Caller, Phone) {
    let mut s = sim();
    if let Some(seed) = lossy {
        s.seed(seed);
        s.conditions = Conditions {
            loss: 0.10,
            duplicate: 0.05,
            delay: (Duration::from_millis(5), Duration::from_millis(60)),
        };
    }
    provision(&mut s, "iphone", IPHONE);
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    let c = caller(&mut s);
    if bye_from_phone {
        p.borrow_mut().script.bye_after_answer = Some(Duration::from_secs(3));
    } else {
        c.borrow_mut().bye_after_answer = Some(Duration::from_secs(3));
    }
    start(&mut s, &c);
    s.run_for(Duration::from_secs(40));
    (s, c, p)
}

fn check_answered_call(s: &mut Sim, c: &Caller, p: &Phone, bye_from_phone: bool) {
    let call_id = c.borrow().call_id.clone();
    // The push: one incoming_call with the caller and the device.
    let pushes = s.mediator.of_kind(PushKind::IncomingCall);
    assert_eq!(pushes.len(), 1, "{:?}", s.mediator.log);
    let json = serde_json::to_value(pushes[0]).unwrap();
    assert_eq!(json["kind"], "incoming_call");
    assert_eq!(json["account"], 1);
    assert_eq!(json["call"]["call_id"], call_id.as_str());
    assert_eq!(json["call"]["caller_uri"], "sip:bob@provider.test");
    assert_eq!(json["call"]["caller_name"], "Bob Caller");
    assert_eq!(json["call"]["callee"], "sip:user1@provider.test");
    assert_eq!(json["device"]["id"], "iphone");
    assert_eq!(json["device"]["platform"], "apns");
    assert_eq!(json["device"]["token"], IPHONE);
    assert_eq!(json["device"]["topic"], "com.example.voip");

    // The caller: 100, 180 with the push status, the phone's 180, 200
    // (provisional answers are not retransmitted: under loss some may
    // never arrive, so what sipis sent is checked instead).
    let cb = c.borrow();
    let codes = cb.ua.codes("INVITE");
    assert_eq!(codes.last(), Some(&200), "{codes:?}");
    assert!(
        codes.iter().all(|c| [100, 180, 200].contains(c)),
        "{codes:?}"
    );
    let to_caller: Vec<_> = s
        .sent
        .iter()
        .filter(|(_, d, p)| *d == addr(CALLER) && cseq(p).is_some_and(|c| c.1 == "INVITE"))
        .map(|(_, _, p)| p.clone())
        .collect();
    assert_eq!(status(&to_caller[0]), Some(100));
    let first_180 = to_caller.iter().find(|r| status(r) == Some(180)).unwrap();
    assert_eq!(
        header(first_180, "X-Sipis-Push-Status").as_deref(),
        Some("Push-Notification-Sent")
    );
    let ringing = cb.ua.responses("INVITE");
    let ok = ringing.iter().find(|r| status(r) == Some(200)).unwrap();
    assert_eq!(text(body(ok)), PHONE_SDP);
    assert_eq!(
        header(ok, "Contact").as_deref(),
        Some(format!("<sip:{ACCOUNT_TOKEN}@{ENGINE}>").as_str())
    );
    let up_tag = tag(&header(ok, "To").unwrap()).unwrap();
    // Every response of the dialog carries the same To-tag.
    for r in &ringing {
        if status(r) != Some(100) {
            assert_eq!(
                tag(&header(r, "To").unwrap()).as_deref(),
                Some(up_tag.as_str())
            );
        }
    }
    assert_eq!(cb.final_code, Some(200));
    assert!(cb.ended, "the caller's dialog did not end");

    // The phone: one INVITE built from the caller's.
    let pb = p.borrow();
    let invites = pb.invites();
    assert_eq!(invites.len(), 1);
    let inv = &invites[0];
    assert!(
        text(inv).starts_with(&format!("INVITE sip:user1@{PHONE1} SIP/2.0\r\n")),
        "{}",
        text(inv)
    );
    let from = header(inv, "From").unwrap();
    assert!(
        from.starts_with("\"Bob Caller\" <sip:bob@provider.test>"),
        "{from}"
    );
    assert_eq!(tag(&from), Some(cb.from_tag.clone()));
    assert_eq!(
        header(inv, "To").as_deref(),
        Some("<sip:user1@provider.test>")
    );
    assert_eq!(header(inv, "Call-ID"), Some(call_id.clone()));
    assert_eq!(text(body(inv)), CALLER_SDP);
    assert_eq!(
        header(inv, "Contact").as_deref(),
        Some(format!("<sip:{ACCOUNT_TOKEN}@{PHONE_PORT}>").as_str())
    );
    // The caller's 2xx was ACKed to the phone, in its dialog.
    let acks = pb.ua.requests("ACK");
    assert!(!acks.is_empty(), "the phone got no ACK");
    let phone_tag = pb.calls[0].tag.clone();
    for a in &acks {
        assert_eq!(cseq(a), Some((1, "ACK".into())));
        assert_eq!(tag(&header(a, "To").unwrap()), Some(phone_tag.clone()));
    }
    // Everything reached the phone from the shared port.
    for (_, from, _) in &pb.ua.received {
        assert_eq!(*from, addr(PHONE_PORT));
    }
    // The hang-up crossed over and was answered.
    if bye_from_phone {
        let byes = cb.ua.requests("BYE");
        assert!(!byes.is_empty(), "the caller got no BYE");
        let bye = &byes[0];
        assert!(text(bye).starts_with(&format!("BYE sip:bob@{CALLER} SIP/2.0\r\n")));
        assert_eq!(tag(&header(bye, "From").unwrap()), Some(up_tag.clone()));
        assert_eq!(tag(&header(bye, "To").unwrap()), Some(cb.from_tag.clone()));
        assert_eq!(pb.ua.codes("BYE").last(), Some(&200));
    } else {
        let byes = pb.ua.requests("BYE");
        assert!(!byes.is_empty(), "the phone got no BYE");
        let bye = &byes[0];
        assert!(text(bye).starts_with(&format!("BYE sip:user1@{PHONE1} SIP/2.0\r\n")));
        assert_eq!(tag(&header(bye, "To").unwrap()), Some(phone_tag.clone()));
        assert_eq!(
            tag(&header(bye, "From").unwrap()),
            Some(cb.from_tag.clone())
        );
        assert_eq!(cb.ua.codes("BYE").last(), Some(&200));
    }
    assert!(pb.calls[0].ended);
    drop((cb, pb));

    assert_eq!(
        outcomes(s),
        vec![(call_id, Outcome::Answered, None)],
        "{:?}",
        outcomes(s)
    );
    let st = s.engine.stats().clone();
    assert_eq!((st.calls, st.calls_answered, st.calls_missed), (1, 1, 0));
    assert_eq!((st.pushes_requested, st.pushes_sent), (1, 1));
    let lat = s.engine.call_latency();
    // (The phone's 180 may be lost for good under loss: no ringing time.)
    let rang = u64::from(s.conditions.loss == 0.0);
    assert_eq!(
        (
            lat.push.len(),
            lat.device_register.len(),
            lat.ringing.len().min(rang),
            lat.answer.len()
        ),
        (1, 1, rang, 1)
    );
    // Wake after 1 s, answer 2 s later: the histograms say so (µs).
    assert!(
        lat.device_register.min() >= 1_000_000,
        "{}",
        lat.device_register.min()
    );
    assert!(lat.answer.min() >= 3_000_000, "{}", lat.answer.min());
    let caller = s.events.iter().find_map(|(_, e)| match e {
        Event::CallOutcome {
            caller, account, ..
        } => Some((caller.clone(), *account)),
        _ => None,
    });
    assert_eq!(caller, Some(("sip:bob@provider.test".to_owned(), 1)));
    settle(s);
}

#[test]
fn answered_call_relays_180_200_ack_and_bye_from_caller() {
    let (mut s, c, p) = answered_call(None, false);
    // Without loss, exactly: 100, 180 (push), 180 (phone), 200 — one 200:
    // the caller's ACK stops its retransmission.
    assert_eq!(c.borrow().ua.codes("INVITE"), vec![100, 180, 200]);
    let oks = c
        .borrow()
        .ua
        .responses("INVITE")
        .iter()
        .filter(|r| status(r) == Some(200))
        .count();
    assert_eq!(oks, 1);
    check_answered_call(&mut s, &c, &p, false);
}

#[test]
fn answered_call_relays_180_200_ack_and_bye_from_phone() {
    let (mut s, c, p) = answered_call(None, true);
    check_answered_call(&mut s, &c, &p, true);
}

#[test]
fn answered_call_with_loss_and_duplicates_bye_from_caller() {
    for seed in [1, 7, 42, 1234, 99_991] {
        let (mut s, c, p) = answered_call(Some(seed), false);
        check_answered_call(&mut s, &c, &p, false);
    }
}

#[test]
fn answered_call_with_loss_and_duplicates_bye_from_phone() {
    for seed in [3, 11, 77, 4321, 65_537] {
        let (mut s, c, p) = answered_call(Some(seed), true);
        check_answered_call(&mut s, &c, &p, true);
    }
}

// ---- waking ------------------------------------------------------------------

#[test]
fn duplicate_registers_while_waking_send_one_invite() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    p.borrow_mut().registers_per_wake = 3;
    let c = caller(&mut s);
    c.borrow_mut().bye_after_answer = Some(Duration::from_secs(2));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(10));
    let pb = p.borrow();
    // Three REGISTERs answered 200, one INVITE (its retransmissions aside).
    assert_eq!(pb.register_answers.iter().filter(|r| r.1 == 200).count(), 3);
    assert_eq!(pb.invites().len(), 1);
    let branches: Vec<String> = pb
        .ua
        .requests("INVITE")
        .iter()
        .map(|i| header(i, "Via").unwrap())
        .collect();
    assert!(branches.windows(2).all(|w| w[0] == w[1]), "{branches:?}");
    assert_eq!(c.borrow().final_code, Some(200));
    drop(pb);
    settle(&mut s);
}

#[test]
fn phone_already_registered_is_invited_directly_without_push() {
    // "Connected" is a phone whose TCP/TLS flow is open; over UDP a push
    // device is always woken (device_registered_earlier_is_pushed_...).
    let mut s = sim();
    let p = tcp_phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    s.poke(&p, |p, now, out| p.register(now, out));
    s.run_for(Duration::from_secs(1));
    let c = caller(&mut s);
    c.borrow_mut().bye_after_answer = Some(Duration::from_secs(2));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(10));
    assert!(s.mediator.log.is_empty(), "{:?}", s.mediator.log);
    let cb = c.borrow();
    assert_eq!(cb.ua.codes("INVITE"), vec![100, 180, 200]);
    for r in cb.ua.responses("INVITE") {
        assert_eq!(header(&r, "X-Sipis-Push-Status"), None);
    }
    // The INVITE went out at once, not after a push round trip.
    let pb = p.borrow();
    assert_eq!(pb.invites().len(), 1);
    let invited = pb
        .ua
        .received
        .iter()
        .find(|(_, _, d)| method(d).as_deref() == Some("INVITE"))
        .unwrap()
        .0;
    let sent = cb.ua.sent[0].0;
    assert!(invited - sent < Duration::from_millis(100));
    assert_eq!(s.engine.stats().pushes_requested, 0);
    drop((cb, pb));
    settle(&mut s);
}

#[test]
fn udp_phone_with_a_live_binding_is_still_pushed_and_invited_after_its_refresh() {
    // RFC 8599 §4.1.2: over UDP a live binding says nothing about whether
    // the app runs; the device is pushed and INVITEd after it REGISTERs.
    let mut s = sim();
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    s.poke(&p, |p, now, out| p.register(now, out));
    s.run_for(Duration::from_secs(1));
    let c = caller(&mut s);
    c.borrow_mut().bye_after_answer = Some(Duration::from_secs(2));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(10));
    assert_eq!(s.mediator.log.len(), 1, "{:?}", s.mediator.log);
    assert_eq!(s.engine.stats().pushes_requested, 1);
    let pb = p.borrow();
    assert_eq!(pb.invites().len(), 1);
    let registers: Vec<_> = pb
        .ua
        .sent
        .iter()
        .filter(|(_, d)| method(d).as_deref() == Some("REGISTER"))
        .map(|(t, _)| *t)
        .collect();
    let invited = pb
        .ua
        .received
        .iter()
        .find(|(_, _, d)| method(d).as_deref() == Some("INVITE"))
        .unwrap()
        .0;
    let sent = c.borrow().ua.sent[0].0;
    assert!(
        registers.iter().any(|&t| t > sent && t < invited),
        "the INVITE follows a REGISTER made after the call arrived"
    );
    drop(pb);
    settle(&mut s);
}

#[test]
fn no_push_for_replaces_or_non_urgent() {
    for (name, value) in [
        ("Priority", "non-urgent".to_owned()),
        (
            "Replaces",
            "98asjd8@provider.test;to-tag=12345;from-tag=54321".to_owned(),
        ),
    ] {
        let mut s = sim();
        provision(&mut s, "iphone", IPHONE);
        let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
        let c = caller(&mut s);
        c.borrow_mut().extra.push((name.into(), value.clone()));
        start(&mut s, &c);
        s.run_for(Duration::from_secs(35));
        assert!(s.mediator.log.is_empty(), "{name}: {:?}", s.mediator.log);
        assert!(p.borrow().invites().is_empty(), "{name}");
        // Nobody to ring and nobody to wake: 480 at once.
        let cb = c.borrow();
        assert_eq!(cb.ua.codes("INVITE"), vec![100, 480], "{name}");
        let r = cb.ua.responses("INVITE").pop().unwrap();
        assert_eq!(
            header(&r, "X-Sipis-Reason").as_deref(),
            Some("Device-Not-Reachable")
        );
        drop(cb);
        assert_eq!(outcomes(&s)[0].1, Outcome::Unreachable);
        settle(&mut s);

        // A phone that is up still gets such a call, directly.
        let mut s = sim();
        let p = phone(&mut s, PHONE1, IPHONE, None);
        s.poke(&p, |p, now, out| p.register(now, out));
        s.run_for(Duration::from_secs(1));
        let c = caller(&mut s);
        c.borrow_mut().extra.push((name.into(), value.clone()));
        start(&mut s, &c);
        s.run_for(Duration::from_secs(10));
        assert!(s.mediator.log.is_empty(), "{name}");
        let pb = p.borrow();
        assert_eq!(pb.invites().len(), 1, "{name}");
        assert_eq!(header(&pb.invites()[0], name), Some(value), "{name}");
        assert_eq!(c.borrow().final_code, Some(200), "{name}");
    }
}

#[test]
fn in_dialog_invite_for_unknown_call_gets_481_and_no_push() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let c = caller(&mut s);
    let addr_c = c.borrow().ua.addr;
    // A re-INVITE (To-tag present) of a dialog sipis never had.
    let req = format!(
        "INVITE sip:{ACCOUNT_TOKEN}@{ENGINE} SIP/2.0\r\nVia: SIP/2.0/UDP {addr_c};branch=z9hG4bKstale1\r\nMax-Forwards: 70\r\nFrom: <sip:bob@provider.test>;tag=a1\r\nTo: <sip:user1@provider.test>;tag=b2\r\nCall-ID: stale@provider.test\r\nCSeq: 5 INVITE\r\nContact: <sip:bob@{addr_c}>\r\nContent-Length: 0\r\n\r\n"
    );
    s.poke(&c, |c, now, out| {
        c.ua.send_request(now, addr(ENGINE), bytes::Bytes::from(req), out)
    });
    s.run_for(Duration::from_secs(5));
    assert!(s.mediator.log.is_empty());
    assert_eq!(c.borrow().ua.codes("INVITE").last(), Some(&481));
    assert_eq!(s.engine.call_count(), 0);
}

// ---- nobody answers ----------------------------------------------------------

#[test]
fn no_device_within_wait_gets_480_with_reason_and_missed_call_push() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let p = phone(&mut s, PHONE1, IPHONE, None);
    let c = caller(&mut s);
    start(&mut s, &c);
    s.run_for(Duration::from_secs(29));
    assert_eq!(c.borrow().final_code, None, "ended before device_wait");
    s.run_for(Duration::from_secs(2));
    let cb = c.borrow();
    assert_eq!(cb.ua.codes("INVITE"), vec![100, 180, 480]);
    let r = cb.ua.responses("INVITE").pop().unwrap();
    assert!(text(&r).starts_with("SIP/2.0 480 Temporarily Unavailable\r\n"));
    assert_eq!(
        header(&r, "X-Sipis-Reason").as_deref(),
        Some("No-Response-From-Device")
    );
    // The engine got the ACK of its 480 (the caller's transaction sent it).
    assert!(cb
        .ua
        .sent
        .iter()
        .any(|(_, d)| method(d).as_deref() == Some("ACK")));
    let missed = s.mediator.of_kind(PushKind::MissedCall);
    assert_eq!(missed.len(), 1);
    let json = serde_json::to_value(missed[0]).unwrap();
    assert_eq!(json["kind"], "missed_call");
    assert_eq!(json["call"]["call_id"], cb.call_id.as_str());
    assert_eq!(json["call"]["reason"], "no_response");
    assert_eq!(json["call"]["caller_name"], "Bob Caller");
    assert_eq!(json["device"]["token"], IPHONE);
    assert_eq!(
        outcomes(&s),
        vec![(cb.call_id.clone(), Outcome::NoResponse, None)]
    );
    assert!(p.borrow().ua.received.is_empty());
    let st = s.engine.stats();
    assert_eq!((st.calls, st.calls_answered, st.calls_missed), (1, 0, 1));
    drop(cb);
    settle(&mut s);
}

/// The caller gives up after 2 s (with `reason` in its CANCEL); the phone
/// wakes after 5 s, inside the late-wake window.
fn cancelled_then_late_wake(reason: Option<&str>) -> (Sim, Caller, Phone) {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(5)));
    // The app shows the call screen, so it would answer: only a CANCEL stops it.
    p.borrow_mut().script.final_after = Duration::from_secs(3);
    let c = caller(&mut s);
    {
        let mut cb = c.borrow_mut();
        cb.cancel_after = Some(Duration::from_secs(2));
        cb.cancel_reason = reason.map(str::to_owned);
    }
    start(&mut s, &c);
    s.run_for(Duration::from_secs(12));
    (s, c, p)
}

/// The phone got the INVITE with the pushed Call-ID, then a CANCEL with
/// `reason`, answered 200 + 487, and the engine ACKed the 487.
fn check_late_wake(s: &Sim, c: &Caller, p: &Phone, reason: Option<&str>) {
    let cb = c.borrow();
    let pb = p.borrow();
    let invites = pb.invites();
    assert_eq!(invites.len(), 1, "no late-wake INVITE");
    let pushed = s.mediator.of_kind(PushKind::IncomingCall);
    assert_eq!(pushed.len(), 1);
    assert_eq!(
        header(&invites[0], "Call-ID").unwrap(),
        pushed[0].call.call_id
    );
    assert_eq!(header(&invites[0], "Call-ID").unwrap(), cb.call_id);
    assert!(header(&invites[0], "From")
        .unwrap()
        .starts_with("\"Bob Caller\" <sip:bob@provider.test>"));
    let cancels = pb.ua.requests("CANCEL");
    assert!(!cancels.is_empty(), "no CANCEL after the late-wake INVITE");
    for x in &cancels {
        assert_eq!(header(x, "Reason").as_deref(), reason, "{}", text(x));
        assert_eq!(header(x, "Via"), header(&invites[0], "Via"));
        assert_eq!(cseq(x), Some((1, "CANCEL".into())));
    }
    assert_eq!(pb.calls[0].final_code, Some(487));
    assert!(pb
        .ua
        .requests("ACK")
        .iter()
        .any(|a| cseq(a) == Some((1, "ACK".into()))));
    assert!(pb.ua.requests("BYE").is_empty());
    assert_eq!(s.engine.stats().late_wakes, 1);
    assert_eq!(s.engine.stats().late_wakes_completed, 1);
}

#[test]
fn caller_cancel_before_wake_gets_487_and_late_phone_gets_invite_then_plain_cancel() {
    let (mut s, c, p) = cancelled_then_late_wake(None);
    {
        let cb = c.borrow();
        assert_eq!(cb.ua.codes("INVITE"), vec![100, 180, 487]);
        assert_eq!(cb.ua.codes("CANCEL"), vec![200]);
        assert_eq!(
            outcomes(&s),
            vec![(cb.call_id.clone(), Outcome::CallerCancelled, None)]
        );
        // The call goes to the missed list.
        let missed = s.mediator.of_kind(PushKind::MissedCall);
        assert_eq!(missed.len(), 1);
        assert_eq!(missed[0].call.reason.as_deref(), Some("caller_cancelled"));
    }
    check_late_wake(&s, &c, &p, None);
    assert_eq!(s.engine.stats().calls_missed, 1);
    settle(&mut s);
}

#[test]
fn caller_cancel_with_its_own_reason_is_passed_on_to_the_late_phone() {
    let reason = "SIP;cause=487;text=\"ORIGINATOR_CANCEL\"";
    let (mut s, c, p) = cancelled_then_late_wake(Some(reason));
    assert_eq!(c.borrow().ua.codes("INVITE"), vec![100, 180, 487]);
    assert_eq!(
        outcomes(&s),
        vec![(
            c.borrow().call_id.clone(),
            Outcome::CallerCancelled,
            Some(reason.to_owned())
        )]
    );
    check_late_wake(&s, &c, &p, Some(reason));
    settle(&mut s);
}

#[test]
fn answered_elsewhere_late_wake_sends_cancel_with_call_completed_elsewhere() {
    let reason = "SIP;cause=200;text=\"Call completed elsewhere\"";
    let (mut s, c, p) = cancelled_then_late_wake(Some(reason));
    assert_eq!(c.borrow().ua.codes("INVITE"), vec![100, 180, 487]);
    assert_eq!(outcomes(&s)[0].1, Outcome::AnsweredElsewhere);
    check_late_wake(&s, &c, &p, Some(reason));
    // Not a missed call.
    assert!(s.mediator.of_kind(PushKind::MissedCall).is_empty());
    assert_eq!(s.engine.stats().calls_missed, 0);
    settle(&mut s);
}

#[test]
fn declined_elsewhere_late_wake_sends_busy_everywhere() {
    let (mut s, c, p) = cancelled_then_late_wake(Some("SIP;cause=600;text=\"Busy Everywhere\""));
    assert_eq!(outcomes(&s)[0].1, Outcome::Declined);
    check_late_wake(&s, &c, &p, Some("SIP;cause=600;text=\"Busy Everywhere\""));
    assert!(s.mediator.of_kind(PushKind::MissedCall).is_empty());
    settle(&mut s);
}

#[test]
fn late_wake_window_closes() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    // 2 s + 15 s window: the app connects at 18 s.
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(18)));
    let c = caller(&mut s);
    c.borrow_mut().cancel_after = Some(Duration::from_secs(2));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(17));
    assert_eq!(c.borrow().ua.codes("INVITE"), vec![100, 180, 487]);
    s.run_for(Duration::from_secs(5));
    let pb = p.borrow();
    assert_eq!(pb.last_register(), Some(200), "the phone did not register");
    assert!(
        pb.ua.requests("INVITE").is_empty(),
        "INVITE after the window"
    );
    assert!(pb.ua.requests("CANCEL").is_empty());
    assert_eq!(s.engine.stats().late_wakes, 0);
    assert_eq!(s.engine.call_count(), 0);
    drop(pb);
    settle(&mut s);
}

// ---- several devices, device answers -------------------------------------------

#[test]
fn two_devices_first_2xx_wins_other_gets_cancel_with_reason() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    provision(&mut s, "ipad", IPAD);
    let iphone = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    let ipad = phone(&mut s, PHONE2, IPAD, Some(Duration::from_millis(1500)));
    ipad.borrow_mut().script.final_code = None; // rings until cancelled
    let c = caller(&mut s);
    start(&mut s, &c);
    s.run_for(Duration::from_secs(10));
    assert_eq!(s.mediator.of_kind(PushKind::IncomingCall).len(), 2);
    assert_eq!(c.borrow().final_code, Some(200));
    let ok = c
        .borrow()
        .ua
        .responses("INVITE")
        .into_iter()
        .find(|r| status(r) == Some(200))
        .unwrap();
    assert_eq!(text(body(&ok)), PHONE_SDP);
    let ipb = ipad.borrow();
    assert_eq!(ipb.invites().len(), 1);
    let cancels = ipb.ua.requests("CANCEL");
    assert!(!cancels.is_empty(), "the iPad was not cancelled");
    assert_eq!(
        header(&cancels[0], "Reason").as_deref(),
        Some("SIP;cause=200;text=\"Call completed elsewhere\"")
    );
    assert_eq!(ipb.calls[0].final_code, Some(487));
    assert!(iphone.borrow().ua.requests("CANCEL").is_empty());
    drop(ipb);
    assert_eq!(outcomes(&s)[0].1, Outcome::Answered);
    // The caller hangs up: only the iPhone gets the BYE.
    s.poke(&c, |c, now, out| {
        c.send_in_dialog(now, "BYE", None, out);
    });
    s.run_for(Duration::from_secs(5));
    assert_eq!(iphone.borrow().ua.requests("BYE").len(), 1);
    assert!(ipad.borrow().ua.requests("BYE").is_empty());
    assert!(c.borrow().ended);
    settle(&mut s);
}

#[test]
fn two_devices_answering_at_once_loser_gets_ack_and_bye() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    provision(&mut s, "ipad", IPAD);
    let iphone = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    let ipad = phone(&mut s, PHONE2, IPAD, Some(Duration::from_secs(1)));
    ipad.borrow_mut().script.final_after = Duration::from_millis(2005);
    let c = caller(&mut s);
    start(&mut s, &c);
    s.run_for(Duration::from_secs(10));
    assert_eq!(c.borrow().final_code, Some(200));
    // One 200 reached the caller, from the iPhone (first).
    let oks: Vec<_> = c
        .borrow()
        .ua
        .responses("INVITE")
        .into_iter()
        .filter(|r| status(r) == Some(200))
        .collect();
    let tags: std::collections::HashSet<_> = oks.iter().map(|r| header(r, "To").unwrap()).collect();
    assert_eq!(tags.len(), 1, "two different 2xx reached the caller");
    // The iPad's 2xx is ACKed (else it retransmits for 32 s) and hung up.
    let ipb = ipad.borrow();
    assert_eq!(ipb.calls[0].final_code, Some(200));
    assert!(!ipb.ua.requests("ACK").is_empty());
    let byes = ipb.ua.requests("BYE");
    assert_eq!(byes.len(), 1);
    assert_eq!(
        header(&byes[0], "Reason").as_deref(),
        Some("SIP;cause=200;text=\"Call completed elsewhere\"")
    );
    assert!(iphone.borrow().ua.requests("BYE").is_empty());
    drop(ipb);
    s.poke(&c, |c, now, out| {
        c.send_in_dialog(now, "BYE", None, out);
    });
    settle(&mut s);
}

#[test]
fn device_503_does_not_end_wait() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    provision(&mut s, "ipad", IPAD);
    let iphone = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(4)));
    let ipad = phone(&mut s, PHONE2, IPAD, Some(Duration::from_secs(1)));
    ipad.borrow_mut().script = Script {
        provisional: vec![],
        final_code: Some(503),
        final_after: Duration::ZERO,
        bye_after_answer: None,
        reliable: false,
    };
    let c = caller(&mut s);
    c.borrow_mut().bye_after_answer = Some(Duration::from_secs(1));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(12));
    assert_eq!(ipad.borrow().calls[0].final_code, Some(503));
    let cb = c.borrow();
    assert_eq!(cb.ua.codes("INVITE"), vec![100, 180, 200]);
    assert_eq!(iphone.borrow().invites().len(), 1);
    assert_eq!(outcomes(&s)[0].1, Outcome::Answered);
    drop(cb);
    settle(&mut s);
}

#[test]
fn device_603_ends_wait_declined() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    provision(&mut s, "ipad", IPAD);
    let iphone = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    iphone.borrow_mut().script = Script {
        provisional: vec![180],
        final_code: Some(603),
        final_after: Duration::from_secs(1),
        bye_after_answer: None,
        reliable: false,
    };
    // The iPad wakes after the decline, inside the late-wake window.
    let ipad = phone(&mut s, PHONE2, IPAD, Some(Duration::from_secs(6)));
    let c = caller(&mut s);
    start(&mut s, &c);
    s.run_for(Duration::from_secs(12));
    let cb = c.borrow();
    assert_eq!(cb.ua.codes("INVITE"), vec![100, 180, 603]);
    let r = cb.ua.responses("INVITE").pop().unwrap();
    assert!(text(&r).starts_with("SIP/2.0 603 Decline\r\n"));
    assert_eq!(outcomes(&s)[0].1, Outcome::Declined);
    let ipb = ipad.borrow();
    assert_eq!(ipb.invites().len(), 1);
    let cancels = ipb.ua.requests("CANCEL");
    assert!(!cancels.is_empty());
    assert_eq!(
        header(&cancels[0], "Reason").as_deref(),
        Some("SIP;cause=600;text=\"Busy Everywhere\"")
    );
    assert_eq!(ipb.calls[0].final_code, Some(487));
    drop((cb, ipb));
    settle(&mut s);
}

// ---- push results ------------------------------------------------------------------

#[test]
fn dead_token_push_result_removes_device() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    s.mediator
        .results
        .insert(IPHONE.into(), Some(PushResult::TokenDead));
    let c = caller(&mut s);
    start(&mut s, &c);
    s.run_for(Duration::from_secs(5));
    let removed: Vec<_> = s
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::DeviceRemoved { account, device } => Some((*account, device.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(removed, vec![(1, "iphone".to_owned())]);
    assert!(s.engine.devices(s.now, 1).is_empty());
    assert_eq!(s.engine.stats().pushes_token_dead, 1);
    // Nobody left to wake: the caller hears so now, not after 30 s.
    let cb = c.borrow();
    assert_eq!(cb.ua.codes("INVITE"), vec![100, 480]);
    let r = cb.ua.responses("INVITE").pop().unwrap();
    assert_eq!(
        header(&r, "X-Sipis-Reason").as_deref(),
        Some("Device-Not-Reachable")
    );
    assert_eq!(outcomes(&s)[0].1, Outcome::Unreachable);
    assert!(p.borrow().ua.received.is_empty());
    drop(cb);
    // The next call pushes nobody.
    let c2 = SimCaller::new(addr("127.0.0.4:5060"), s.engine_addr, ACCOUNT_TOKEN);
    let c2 = s.add_peer(c2, Flow::Udp);
    start(&mut s, &c2);
    s.run_for(Duration::from_secs(2));
    assert_eq!(s.mediator.log.len(), 1);
    assert_eq!(c2.borrow().final_code, Some(480));
    settle(&mut s);
}

// ---- the dialog ----------------------------------------------------------------------

const REOFFER: &str = "v=0\r\no=bob 2890844526 2890844527 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 49172 RTP/AVP 0\r\na=sendonly\r\n";

/// The last message of `method` (request) in what a peer received.
fn last_request(ua: &sim::ua::Ua, m: &str) -> bytes::Bytes {
    ua.requests(m)
        .pop()
        .unwrap_or_else(|| panic!("no {m} received"))
}

/// The last response to a request with CSeq `n method`.
fn response_to(ua: &sim::ua::Ua, n: u32, m: &str) -> bytes::Bytes {
    ua.responses(m)
        .into_iter()
        .rev()
        .find(|r| cseq(r) == Some((n, m.to_owned())) && status(r) != Some(100))
        .unwrap_or_else(|| panic!("no response to {n} {m}"))
}

fn reinvite_and_info(lossy: Option<u64>) {
    let mut s = sim();
    if let Some(seed) = lossy {
        s.seed(seed);
        s.conditions = Conditions {
            loss: 0.10,
            duplicate: 0.05,
            delay: (Duration::from_millis(5), Duration::from_millis(60)),
        };
    }
    provision(&mut s, "iphone", IPHONE);
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    let c = caller(&mut s);
    start(&mut s, &c);
    s.run_for(Duration::from_secs(30));
    assert_eq!(c.borrow().final_code, Some(200));
    let call_id = c.borrow().call_id.clone();
    let caller_tag = c.borrow().from_tag.clone();
    let up_tag = c.borrow().dialog.as_ref().unwrap().remote_tag.clone();
    let phone_tag = p.borrow().calls[0].tag.clone();
    let step = Duration::from_secs(40);

    // 1. INFO from the caller, CSeq 11 (numbers may skip).
    c.borrow_mut().skip_cseq(10);
    s.poke(&c, |c, now, out| c.send_in_dialog(now, "INFO", None, out));
    s.run_for(step);
    let info = last_request(&p.borrow().ua, "INFO");
    assert!(text(&info).starts_with(&format!("INFO sip:user1@{PHONE1} SIP/2.0\r\n")));
    assert_eq!(
        tag(&header(&info, "From").unwrap()),
        Some(caller_tag.clone())
    );
    assert_eq!(tag(&header(&info, "To").unwrap()), Some(phone_tag.clone()));
    assert_eq!(header(&info, "Call-ID"), Some(call_id.clone()));
    // The phone's leg has its own CSeq space: the INVITE's 1, then 2.
    assert_eq!(cseq(&info), Some((2, "INFO".into())));
    let ok = response_to(&c.borrow().ua, 11, "INFO");
    assert_eq!(status(&ok), Some(200));
    assert_eq!(tag(&header(&ok, "To").unwrap()), Some(up_tag.clone()));
    assert_eq!(tag(&header(&ok, "From").unwrap()), Some(caller_tag.clone()));

    // 2. INFO from the phone, CSeq 701.
    s.poke(&p, |p, now, out| {
        p.send_in_dialog(now, &call_id, "INFO", None, out)
    });
    s.run_for(step);
    let info = last_request(&c.borrow().ua, "INFO");
    assert!(text(&info).starts_with(&format!("INFO sip:bob@{CALLER} SIP/2.0\r\n")));
    assert_eq!(tag(&header(&info, "From").unwrap()), Some(up_tag.clone()));
    assert_eq!(tag(&header(&info, "To").unwrap()), Some(caller_tag.clone()));
    let (up_info, _) = cseq(&info).unwrap();
    let ok = response_to(&p.borrow().ua, 701, "INFO");
    assert_eq!(status(&ok), Some(200));
    assert_eq!(tag(&header(&ok, "From").unwrap()), Some(phone_tag.clone()));
    assert_eq!(tag(&header(&ok, "To").unwrap()), Some(caller_tag.clone()));

    // 3. re-INVITE from the caller (CSeq 12) with a new offer.
    s.poke(&c, |c, now, out| {
        c.send_in_dialog(now, "INVITE", Some(REOFFER.as_bytes()), out)
    });
    s.run_for(step);
    let reinv = p
        .borrow()
        .ua
        .requests("INVITE")
        .into_iter()
        .filter(|r| tag(&header(r, "To").unwrap()).is_some())
        .last()
        .expect("the re-INVITE reached the phone");
    assert_eq!(cseq(&reinv), Some((3, "INVITE".into())));
    assert_eq!(text(body(&reinv)), REOFFER);
    assert_eq!(tag(&header(&reinv, "To").unwrap()), Some(phone_tag.clone()));
    assert_eq!(
        header(&reinv, "Contact").as_deref(),
        Some(format!("<sip:{ACCOUNT_TOKEN}@{PHONE_PORT}>").as_str())
    );
    let ok = response_to(&c.borrow().ua, 12, "INVITE");
    assert_eq!(status(&ok), Some(200));
    assert_eq!(text(body(&ok)), PHONE_SDP);
    assert_eq!(tag(&header(&ok, "To").unwrap()), Some(up_tag.clone()));
    // The caller's ACK (CSeq 12) reached the phone as the ACK of its CSeq 3.
    let acks: Vec<_> = p
        .borrow()
        .ua
        .requests("ACK")
        .into_iter()
        .filter(|a| cseq(a) == Some((3, "ACK".into())))
        .collect();
    assert!(
        !acks.is_empty(),
        "the re-INVITE's ACK did not reach the phone"
    );

    // 4. re-INVITE from the phone (CSeq 702).
    s.poke(&p, |p, now, out| {
        p.send_in_dialog(now, &call_id, "INVITE", Some(PHONE_SDP.as_bytes()), out)
    });
    s.run_for(step);
    let reinv = c
        .borrow()
        .ua
        .requests("INVITE")
        .pop()
        .expect("the phone's re-INVITE reached the caller");
    let (up_reinvite, _) = cseq(&reinv).unwrap();
    assert!(
        up_reinvite > up_info,
        "CSeq must grow: {up_reinvite} after {up_info}"
    );
    assert_eq!(tag(&header(&reinv, "From").unwrap()), Some(up_tag.clone()));
    assert_eq!(
        tag(&header(&reinv, "To").unwrap()),
        Some(caller_tag.clone())
    );
    assert_eq!(
        header(&reinv, "Contact").as_deref(),
        Some(format!("<sip:{ACCOUNT_TOKEN}@{ENGINE}>").as_str())
    );
    assert_eq!(text(body(&reinv)), PHONE_SDP);
    let ok = response_to(&p.borrow().ua, 702, "INVITE");
    assert_eq!(status(&ok), Some(200));
    assert_eq!(text(body(&ok)), CALLER_SDP);
    let acks: Vec<_> = c
        .borrow()
        .ua
        .requests("ACK")
        .into_iter()
        .filter(|a| cseq(a) == Some((up_reinvite, "ACK".into())))
        .collect();
    assert!(!acks.is_empty(), "the phone's ACK did not reach the caller");

    // 5. UPDATE from the caller, then BYE.
    s.poke(&c, |c, now, out| {
        c.send_in_dialog(now, "UPDATE", Some(REOFFER.as_bytes()), out)
    });
    s.run_for(step);
    let upd = last_request(&p.borrow().ua, "UPDATE");
    assert_eq!(cseq(&upd), Some((4, "UPDATE".into())));
    assert_eq!(
        status(&response_to(&c.borrow().ua, 13, "UPDATE")),
        Some(200)
    );
    s.poke(&c, |c, now, out| c.send_in_dialog(now, "BYE", None, out));
    s.run_for(step);
    assert_eq!(
        cseq(&last_request(&p.borrow().ua, "BYE")),
        Some((5, "BYE".into()))
    );
    assert!(c.borrow().ended);
    // No retransmission storm: at most what one transaction's Timer E
    // sends in 64·T1 (11), duplicated now and then.
    for r in ["INFO", "UPDATE", "BYE"] {
        let n = p.borrow().ua.requests(r).len();
        let limit = if lossy.is_some() { 16 } else { 1 };
        assert!(n <= limit, "{r} x{n}");
    }
    settle(&mut s);
}

#[test]
fn reinvite_and_info_relayed_both_ways() {
    reinvite_and_info(None);
}

#[test]
fn reinvite_and_info_relayed_both_ways_with_loss() {
    for seed in [5, 17, 2024] {
        reinvite_and_info(Some(seed));
    }
}

// ---- races and leftovers ---------------------------------------------------------------

#[test]
fn caller_cancel_while_phone_rings_cancels_the_leg_with_the_callers_reason() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    p.borrow_mut().script.final_code = None;
    let c = caller(&mut s);
    let reason = "SIP;cause=487;text=\"ORIGINATOR_CANCEL\"";
    c.borrow_mut().cancel_after = Some(Duration::from_secs(4));
    c.borrow_mut().cancel_reason = Some(reason.into());
    start(&mut s, &c);
    s.run_for(Duration::from_secs(10));
    assert_eq!(c.borrow().ua.codes("INVITE"), vec![100, 180, 487]);
    let pb = p.borrow();
    let cancels = pb.ua.requests("CANCEL");
    assert!(!cancels.is_empty());
    assert_eq!(header(&cancels[0], "Reason").as_deref(), Some(reason));
    assert_eq!(pb.calls[0].final_code, Some(487));
    assert!(pb
        .ua
        .requests("ACK")
        .iter()
        .any(|a| cseq(a) == Some((1, "ACK".into()))));
    drop(pb);
    assert_eq!(outcomes(&s)[0].1, Outcome::CallerCancelled);
    // It rang on a connected device: no late wake, nothing more.
    assert_eq!(s.engine.stats().late_wakes, 0);
    settle(&mut s);
}

#[test]
fn late_wake_after_another_device_answered_gets_call_completed_elsewhere() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    provision(&mut s, "ipad", IPAD);
    let _iphone = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    // The iPad connects while the call is up.
    let ipad = phone(&mut s, PHONE2, IPAD, Some(Duration::from_secs(8)));
    let c = caller(&mut s);
    c.borrow_mut().bye_after_answer = Some(Duration::from_secs(20));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(15));
    let ipb = ipad.borrow();
    assert_eq!(ipb.invites().len(), 1);
    assert_eq!(
        header(&ipb.invites()[0], "Call-ID"),
        Some(c.borrow().call_id.clone())
    );
    let cancels = ipb.ua.requests("CANCEL");
    assert!(!cancels.is_empty());
    assert_eq!(
        header(&cancels[0], "Reason").as_deref(),
        Some("SIP;cause=200;text=\"Call completed elsewhere\"")
    );
    assert_eq!(ipb.calls[0].final_code, Some(487));
    drop(ipb);
    assert_eq!(s.engine.stats().late_wakes_completed, 1);
    settle(&mut s);
}

#[test]
fn device_registered_earlier_is_pushed_after_its_binding_expired() {
    let mut s = sim();
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    p.borrow_mut().expires = 60;
    s.poke(&p, |p, now, out| p.register(now, out));
    s.run_for(Duration::from_secs(90));
    let devices = s.engine.devices(s.now, 1);
    assert_eq!(devices.len(), 1);
    assert_eq!(
        devices[0].registered, None,
        "the binding outlived its expiry"
    );
    let c = caller(&mut s);
    c.borrow_mut().bye_after_answer = Some(Duration::from_secs(1));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(10));
    let pushes = s.mediator.of_kind(PushKind::IncomingCall);
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].device.token, IPHONE);
    assert_eq!(pushes[0].device.topic.as_deref(), Some("com.example.voip"));
    assert_eq!(c.borrow().ua.codes("INVITE"), vec![100, 180, 200]);
    settle(&mut s);
}

#[test]
fn phone_moving_address_keeps_one_device_and_is_invited_at_the_new_one() {
    let mut s = sim();
    // The same app (same push token) behind a new NAT mapping after sleep.
    let old = phone(&mut s, PHONE1, IPHONE, None);
    s.poke(&old, |p, now, out| p.register(now, out));
    s.run_for(Duration::from_secs(100));
    let new = phone(&mut s, PHONE2, IPHONE, Some(Duration::from_secs(1)));
    new.borrow_mut().expires = 600;
    s.poke(&new, |p, now, out| p.register(now, out));
    s.run_for(Duration::from_secs(1));
    let devices = s.engine.devices(s.now, 1);
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0].registered, Some(addr(PHONE2)));
    let c = caller(&mut s);
    c.borrow_mut().bye_after_answer = Some(Duration::from_secs(1));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(10));
    assert!(old.borrow().ua.requests("INVITE").is_empty());
    assert_eq!(new.borrow().invites().len(), 1);
    assert_eq!(c.borrow().final_code, Some(200));
    settle(&mut s);
}

#[test]
fn phone_unregistering_removes_its_device() {
    let mut s = sim();
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    s.poke(&p, |p, now, out| p.register(now, out));
    s.run_for(Duration::from_secs(2));
    s.poke(&p, |p, now, out| p.unregister(now, out));
    s.run_for(Duration::from_secs(2));
    assert_eq!(p.borrow().last_register(), Some(200));
    assert!(s.engine.devices(s.now, 1).is_empty());
    assert!(s
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::DeviceRemoved { account: 1, .. })));
    let c = caller(&mut s);
    start(&mut s, &c);
    s.run_for(Duration::from_secs(3));
    assert!(s.mediator.log.is_empty());
    assert_eq!(c.borrow().final_code, Some(480));
    settle(&mut s);
}

#[test]
fn contact_star_unregister_drops_the_binding_but_keeps_the_push_target() {
    let mut s = sim();
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    s.poke(&p, |p, now, out| p.register(now, out));
    s.run_for(Duration::from_secs(2));
    // RFC 3261 §10.2.2: Contact: * with Expires: 0 (the app logs out of
    // SIP, not of pushes).
    p.borrow_mut().contact_override = Some("*".into());
    s.poke(&p, |p, now, out| p.unregister(now, out));
    s.run_for(Duration::from_secs(2));
    assert_eq!(p.borrow().last_register(), Some(200));
    let devices = s.engine.devices(s.now, 1);
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].registered, None);
    assert_eq!(devices[0].prid.as_deref(), Some(IPHONE));
    assert!(!s
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::DeviceRemoved { .. })));
    // The next call wakes it by push.
    p.borrow_mut().contact_override = None;
    let c = caller(&mut s);
    c.borrow_mut().bye_after_answer = Some(Duration::from_secs(1));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(10));
    assert_eq!(s.mediator.of_kind(PushKind::IncomingCall).len(), 1);
    assert_eq!(c.borrow().final_code, Some(200));
    settle(&mut s);
}

#[test]
fn push_status_header_can_be_turned_off() {
    let mut s = sim_with(CallConfig {
        push_status_header: false,
        ..CallConfig::default()
    });
    provision(&mut s, "iphone", IPHONE);
    let _p = phone(&mut s, PHONE1, IPHONE, None);
    let c = caller(&mut s);
    c.borrow_mut().cancel_after = Some(Duration::from_secs(3));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(5));
    let cb = c.borrow();
    assert_eq!(cb.ua.codes("INVITE"), vec![100, 180, 487]);
    for r in cb.ua.responses("INVITE") {
        assert_eq!(header(&r, "X-Sipis-Push-Status"), None);
    }
    drop(cb);
    settle(&mut s);
}

#[test]
fn late_wake_and_two_devices_under_loss() {
    late_wake_and_two_devices_lossy([2, 13, 101, 5555, 31_337].into_iter(), 0.10);
}

/// Whether sipis received any answer to an INVITE from the phone at `at`.
fn heard_from(s: &Sim, at: &str) -> bool {
    s.received.iter().any(|(_, from, d)| {
        *from == addr(at) && status(d).is_some() && cseq(d).is_some_and(|c| c.1 == "INVITE")
    })
}

fn late_wake_and_two_devices_lossy(seeds: impl Iterator<Item = u64>, loss: f64) {
    for seed in seeds {
        let reason = "SIP;cause=200;text=\"Call completed elsewhere\"";
        let mut s = sim();
        s.seed(seed);
        s.conditions = Conditions {
            loss,
            duplicate: 0.05,
            delay: (Duration::from_millis(5), Duration::from_millis(60)),
        };
        provision(&mut s, "iphone", IPHONE);
        let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(5)));
        p.borrow_mut().script.final_after = Duration::from_secs(3);
        let c = caller(&mut s);
        c.borrow_mut().cancel_after = Some(Duration::from_secs(2));
        c.borrow_mut().cancel_reason = Some(reason.into());
        start(&mut s, &c);
        s.run_for(Duration::from_secs(20));
        // Unless every CANCEL was lost until the phone answered: then the
        // caller got the 200 and hangs up (RFC 3261 §9.1).
        if c.borrow().final_code == Some(200) {
            settle(&mut s);
            continue;
        }
        assert_eq!(c.borrow().final_code, Some(487), "seed {seed}");
        let pb = p.borrow();
        // A phone that could not register inside the window (a long run
        // of lost REGISTERs) gets nothing, as it should.
        let ended = s
            .events
            .iter()
            .find_map(|(_, e)| match e {
                Event::CallOutcome { ended, .. } => Some(*ended),
                _ => None,
            })
            .unwrap();
        // When sipis accepted the phone's REGISTER (the first 200 it sent).
        let registered = s
            .sent
            .iter()
            .find(|(_, _, d)| {
                status(d) == Some(200) && cseq(d).is_some_and(|(_, m)| m == "REGISTER")
            })
            .map(|(t, _, _)| *t);
        if registered.is_none_or(|t| t >= ended + Duration::from_secs(15)) {
            assert!(pb.invites().is_empty(), "seed {seed}");
            drop(pb);
            settle(&mut s);
            continue;
        }
        assert_eq!(pb.invites().len(), 1, "seed {seed}");
        // However the packets fell, the phone ends up cancelled with the
        // reason (or, if its answer won the race, hung up with it).
        let cancelled = pb
            .ua
            .requests("CANCEL")
            .iter()
            .any(|x| header(x, "Reason").as_deref() == Some(reason));
        let byed = pb
            .ua
            .requests("BYE")
            .iter()
            .any(|x| header(x, "Reason").as_deref() == Some(reason));
        // Unless every answer of the phone was lost: then §9.1 allows
        // no CANCEL and sipis only cleans up (Timer B).
        if heard_from(&s, PHONE1) {
            assert!(cancelled || byed, "seed {seed}");
            assert!(pb.calls[0].final_code.is_some(), "seed {seed}");
        }
        drop(pb);
        settle(&mut s);

        let mut s = sim();
        s.seed(seed);
        s.conditions = Conditions {
            loss,
            duplicate: 0.05,
            delay: (Duration::from_millis(5), Duration::from_millis(60)),
        };
        provision(&mut s, "iphone", IPHONE);
        provision(&mut s, "ipad", IPAD);
        let _iphone = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
        let ipad = phone(&mut s, PHONE2, IPAD, Some(Duration::from_secs(1)));
        ipad.borrow_mut().script.final_code = None;
        let c = caller(&mut s);
        c.borrow_mut().bye_after_answer = Some(Duration::from_secs(5));
        start(&mut s, &c);
        // The BYE's answer comes from the far phone, through up to 32 s of
        // retransmissions under this loss.
        s.run_for(Duration::from_secs(60));
        assert_eq!(c.borrow().final_code, Some(200), "seed {seed}");
        assert!(c.borrow().ended, "seed {seed}");
        if heard_from(&s, PHONE2) {
            assert_eq!(ipad.borrow().calls[0].final_code, Some(487), "seed {seed}");
        }
        settle(&mut s);
    }
}

#[test]
fn late_phone_answering_at_once_gets_ack_and_bye_and_nothing_after() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(5)));
    // No provisional answer: a 200 straight away.
    p.borrow_mut().script = Script {
        provisional: vec![],
        final_code: Some(200),
        final_after: Duration::ZERO,
        bye_after_answer: None,
        reliable: false,
    };
    let c = caller(&mut s);
    c.borrow_mut().cancel_after = Some(Duration::from_secs(2));
    c.borrow_mut().cancel_reason = Some("SIP;cause=200;text=\"Call completed elsewhere\"".into());
    start(&mut s, &c);
    s.run_for(Duration::from_secs(20));
    let pb = p.borrow();
    assert_eq!(pb.invites().len(), 1);
    assert!(!pb.ua.requests("ACK").is_empty(), "the 2xx was not ACKed");
    let byes = pb.ua.requests("BYE");
    assert_eq!(byes.len(), 1);
    assert_eq!(
        header(&byes[0], "Reason").as_deref(),
        Some("SIP;cause=200;text=\"Call completed elsewhere\"")
    );
    // RFC 3261 §9.1: nothing to CANCEL once a final answer came.
    assert!(pb.ua.requests("CANCEL").is_empty(), "CANCEL after the 2xx");
    drop(pb);
    settle(&mut s);
}

#[test]
fn loser_answering_after_the_winner_gets_no_cancel_after_its_2xx() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    provision(&mut s, "ipad", IPAD);
    let iphone = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    iphone.borrow_mut().script.provisional = vec![];
    iphone.borrow_mut().script.final_after = Duration::ZERO;
    // The iPad connects just as the iPhone answers and answers at once
    // too, without ringing first: the CANCEL sipis owes it must not
    // follow its 2xx.
    let ipad = phone(&mut s, PHONE2, IPAD, Some(Duration::from_millis(1040)));
    ipad.borrow_mut().script = iphone.borrow().script.clone();
    let c = caller(&mut s);
    start(&mut s, &c);
    s.run_for(Duration::from_secs(10));
    assert_eq!(c.borrow().final_code, Some(200));
    let ipb = ipad.borrow();
    assert_eq!(ipb.calls.len(), 1);
    assert_eq!(ipb.calls[0].final_code, Some(200));
    assert_eq!(ipb.ua.requests("BYE").len(), 1);
    assert!(ipb.ua.requests("CANCEL").is_empty(), "CANCEL after the 2xx");
    drop(ipb);
    s.poke(&c, |c, now, out| {
        c.send_in_dialog(now, "BYE", None, out);
    });
    settle(&mut s);
}

#[test]
fn ringing_phone_is_not_cut_off_by_device_wait() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(2)));
    // The user picks up after 40 s of ringing (the provider's own ring
    // timeout is longer): sipis must not give up while it rings.
    p.borrow_mut().script.final_after = Duration::from_secs(40);
    let c = caller(&mut s);
    c.borrow_mut().bye_after_answer = Some(Duration::from_secs(1));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(50));
    assert_eq!(c.borrow().ua.codes("INVITE"), vec![100, 180, 200]);
    assert!(p.borrow().ua.requests("CANCEL").is_empty());
    assert_eq!(outcomes(&s)[0].1, Outcome::Answered);
    settle(&mut s);
}

#[test]
fn ringing_phone_giving_up_after_the_wait_ends_the_call_with_480() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(2)));
    // It rings for 45 s, then gives up itself.
    p.borrow_mut().script = Script {
        provisional: vec![180],
        final_code: Some(480),
        final_after: Duration::from_secs(45),
        bye_after_answer: None,
        reliable: false,
    };
    let c = caller(&mut s);
    start(&mut s, &c);
    s.run_for(Duration::from_secs(46));
    assert_eq!(c.borrow().final_code, None, "cut off while ringing");
    s.run_for(Duration::from_secs(10));
    let cb = c.borrow();
    assert_eq!(cb.ua.codes("INVITE"), vec![100, 180, 480]);
    let r = cb.ua.responses("INVITE").pop().unwrap();
    assert_eq!(
        header(&r, "X-Sipis-Reason").as_deref(),
        Some("No-Response-From-Device")
    );
    drop(cb);
    assert_eq!(outcomes(&s)[0].1, Outcome::NoResponse);
    settle(&mut s);
}

#[test]
fn silent_connected_phone_does_not_hold_the_call_past_the_wait() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(2)));
    // The app registers, then never answers the INVITE at all.
    p.borrow_mut().script = Script {
        provisional: vec![],
        final_code: None,
        final_after: Duration::ZERO,
        bye_after_answer: None,
        reliable: false,
    };
    let c = caller(&mut s);
    start(&mut s, &c);
    s.run_for(Duration::from_secs(29));
    assert_eq!(c.borrow().final_code, None);
    s.run_for(Duration::from_secs(2));
    assert_eq!(c.borrow().ua.codes("INVITE"), vec![100, 180, 480]);
    assert_eq!(outcomes(&s)[0].1, Outcome::NoResponse);
    settle(&mut s);
}

#[test]
fn dialog_without_bye_is_dropped_after_twelve_hours() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let _p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    let c = caller(&mut s);
    start(&mut s, &c);
    s.run_for(Duration::from_secs(60));
    assert_eq!(c.borrow().final_code, Some(200));
    assert_eq!(s.engine.call_count(), 1);
    // Both ends vanish without a BYE: the record stays as long as a call
    // may last, then goes.
    s.run_for(Duration::from_secs(11 * 3600));
    assert_eq!(s.engine.call_count(), 1);
    s.run_for(Duration::from_secs(3600 + 120));
    assert_eq!(s.engine.call_count(), 0, "the call record leaked");
}

// ---- offers, early media, routes -------------------------------------------------------

#[test]
fn late_offer_answer_in_ack_reaches_the_phone() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    let c = caller(&mut s);
    {
        let mut cb = c.borrow_mut();
        cb.sdp = String::new();
        cb.ack_sdp = Some(CALLER_SDP.into());
        cb.bye_after_answer = Some(Duration::from_secs(2));
    }
    start(&mut s, &c);
    s.run_for(Duration::from_secs(10));
    let pb = p.borrow();
    let inv = &pb.invites()[0];
    assert!(body(inv).is_empty());
    assert_eq!(header(inv, "Content-Type"), None);
    // The phone's 200 carries the offer, the caller's ACK the answer.
    let ok = c
        .borrow()
        .ua
        .responses("INVITE")
        .into_iter()
        .find(|r| status(r) == Some(200))
        .unwrap();
    assert_eq!(text(body(&ok)), PHONE_SDP);
    let ack = pb.ua.requests("ACK").pop().expect("no ACK at the phone");
    assert_eq!(text(body(&ack)), CALLER_SDP);
    assert_eq!(
        header(&ack, "Content-Type").as_deref(),
        Some("application/sdp")
    );
    drop(pb);
    settle(&mut s);
}

#[test]
fn early_media_183_with_100rel_and_prack_relayed() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    p.borrow_mut().script = Script {
        provisional: vec![183],
        final_code: Some(200),
        final_after: Duration::from_secs(2),
        bye_after_answer: Some(Duration::from_secs(2)),
        reliable: true,
    };
    let c = caller(&mut s);
    c.borrow_mut()
        .extra
        .push(("Supported".into(), "100rel".into()));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(10));
    let cb = c.borrow();
    assert_eq!(cb.ua.codes("INVITE"), vec![100, 180, 183, 200]);
    let early = cb
        .ua
        .responses("INVITE")
        .into_iter()
        .find(|r| status(r) == Some(183))
        .unwrap();
    assert_eq!(text(body(&early)), PHONE_SDP);
    assert_eq!(header(&early, "Require").as_deref(), Some("100rel"));
    assert_eq!(header(&early, "RSeq").as_deref(), Some("1"));
    // The caller's PRACK reached the phone in its early dialog, RAck
    // naming the INVITE (whose CSeq both legs share), and the 200 came back.
    let pb = p.borrow();
    let prack = pb
        .ua
        .requests("PRACK")
        .pop()
        .expect("no PRACK at the phone");
    assert_eq!(header(&prack, "RAck").as_deref(), Some("1 1 INVITE"));
    assert_eq!(cseq(&prack), Some((2, "PRACK".into())));
    assert_eq!(
        tag(&header(&prack, "To").unwrap()),
        Some(pb.calls[0].tag.clone())
    );
    assert_eq!(cb.ua.codes("PRACK"), vec![200]);
    // The BYE after the PRACK goes on in the leg's CSeq space.
    let bye = cb.ua.requests("BYE").pop().expect("no BYE at the caller");
    assert_eq!(header(&bye, "Call-ID"), Some(cb.call_id.clone()));
    drop((cb, pb));
    settle(&mut s);
}

#[test]
fn two_devices_with_reliable_183_the_second_is_pracked_by_sipis() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    provision(&mut s, "ipad", IPAD);
    let script = Script {
        provisional: vec![183],
        final_code: Some(200),
        final_after: Duration::from_secs(3),
        bye_after_answer: None,
        reliable: true,
    };
    let iphone = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    iphone.borrow_mut().script = script.clone();
    let ipad = phone(&mut s, PHONE2, IPAD, Some(Duration::from_millis(1200)));
    ipad.borrow_mut().script = Script {
        final_code: None,
        ..script
    };
    let c = caller(&mut s);
    c.borrow_mut()
        .extra
        .push(("Supported".into(), "100rel".into()));
    c.borrow_mut().bye_after_answer = Some(Duration::from_secs(2));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(10));
    // The caller's early dialog carries one device's reliable 183 (its
    // RSeq and SDP answer), PRACKed by the caller end to end ...
    let cb = c.borrow();
    let early: Vec<_> = cb
        .ua
        .responses("INVITE")
        .into_iter()
        .filter(|r| status(r) == Some(183))
        .collect();
    assert_eq!(early.len(), 1, "two devices' RSeq 1 in one dialog");
    assert_eq!(iphone.borrow().ua.requests("PRACK").len(), 1);
    // ... the other's is PRACKed by sipis, so it rings on without
    // retransmitting its 183 into a 5xx (RFC 3262 §3).
    let ipb = ipad.borrow();
    let prack = ipb
        .ua
        .requests("PRACK")
        .pop()
        .expect("the iPad was not PRACKed");
    assert_eq!(header(&prack, "RAck").as_deref(), Some("1 1 INVITE"));
    assert_eq!(cb.final_code, Some(200));
    assert_eq!(
        header(&ipb.ua.requests("CANCEL")[0], "Reason").as_deref(),
        Some("SIP;cause=200;text=\"Call completed elsewhere\"")
    );
    drop((cb, ipb));
    settle(&mut s);
}

#[test]
fn in_dialog_requests_to_the_caller_follow_its_record_route() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    p.borrow_mut().script.bye_after_answer = Some(Duration::from_secs(2));
    let c = caller(&mut s);
    c.borrow_mut()
        .extra
        .push(("Record-Route".into(), "<sip:edge.provider.test;lr>".into()));
    c.borrow_mut()
        .extra
        .push(("Record-Route".into(), "<sip:core.provider.test;lr>".into()));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(10));
    let cb = c.borrow();
    let ok = cb
        .ua
        .responses("INVITE")
        .into_iter()
        .find(|r| status(r) == Some(200))
        .unwrap();
    // RFC 3261 §12.1.1: the 2xx echoes the Record-Route.
    assert_eq!(
        sim::headers(&ok, "Record-Route"),
        vec!["<sip:edge.provider.test;lr>", "<sip:core.provider.test;lr>"]
    );
    // §12.2.1.1: requests in the dialog carry the route set as Route, in
    // the INVITE's order (sipis is the UAS of the caller's leg).
    let bye = cb.ua.requests("BYE").pop().expect("no BYE at the caller");
    assert_eq!(
        sim::headers(&bye, "Route"),
        vec!["<sip:edge.provider.test;lr>", "<sip:core.provider.test;lr>"]
    );
    // Nothing of the caller's route set leaks to the phone.
    for d in p.borrow().ua.received.iter().map(|r| &r.2) {
        assert!(!text(d).contains("provider.test;lr"), "{}", text(d));
    }
    drop(cb);
    settle(&mut s);
}

// ---- more endings --------------------------------------------------------------------------

#[test]
fn caller_cancel_crossing_the_phones_200_hangs_the_phone_up_without_completed_elsewhere() {
    // A reference run: when does the phone send its 200?
    let answered_at = {
        let mut s = sim();
        provision(&mut s, "iphone", IPHONE);
        let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
        let c = caller(&mut s);
        start(&mut s, &c);
        s.run_for(Duration::from_secs(10));
        let pb = p.borrow();
        let sent = pb
            .ua
            .sent
            .iter()
            .find(|(_, d)| status(d) == Some(200) && cseq(d).is_some_and(|c| c.1 == "INVITE"))
            .unwrap()
            .0;
        sent - s.start
    };
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    let c = caller(&mut s);
    // The CANCEL reaches sipis 5 ms before the phone's 200 does (10 ms
    // links), and sipis's CANCEL reaches the phone after it answered.
    c.borrow_mut().cancel_after =
        Some(answered_at - Duration::from_secs(1) - Duration::from_millis(5));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(10));
    assert_eq!(c.borrow().ua.codes("INVITE"), vec![100, 180, 487]);
    let pb = p.borrow();
    assert_eq!(pb.calls[0].final_code, Some(200));
    assert!(
        !pb.ua.requests("ACK").is_empty(),
        "the phone's 2xx was not ACKed"
    );
    let byes = pb.ua.requests("BYE");
    assert_eq!(byes.len(), 1, "the phone was not hung up");
    // The caller hung up: the phone must not file it as answered elsewhere.
    assert_eq!(header(&byes[0], "Reason"), None, "{}", text(&byes[0]));
    drop(pb);
    assert_eq!(outcomes(&s)[0].1, Outcome::CallerCancelled);
    settle(&mut s);
}

#[test]
fn cancel_before_the_push_result_gets_no_180_after_the_487() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let _p = phone(&mut s, PHONE1, IPHONE, None);
    s.mediator.delay = Duration::from_millis(500);
    let c = caller(&mut s);
    c.borrow_mut().cancel_after = Some(Duration::from_millis(50));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(5));
    assert_eq!(c.borrow().ua.codes("INVITE"), vec![100, 487]);
    // The push still went (and the missed call after it).
    assert_eq!(s.mediator.of_kind(PushKind::IncomingCall).len(), 1);
    assert_eq!(s.mediator.of_kind(PushKind::MissedCall).len(), 1);
    settle(&mut s);
}

#[test]
fn failed_pushes_for_every_device_get_480_at_once_and_keep_the_devices() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    provision(&mut s, "ipad", IPAD);
    s.mediator.result = Some(PushResult::Failed);
    let c = caller(&mut s);
    start(&mut s, &c);
    s.run_for(Duration::from_secs(2));
    let cb = c.borrow();
    assert_eq!(cb.ua.codes("INVITE"), vec![100, 480]);
    let r = cb.ua.responses("INVITE").pop().unwrap();
    assert_eq!(
        header(&r, "X-Sipis-Reason").as_deref(),
        Some("Device-Not-Reachable")
    );
    drop(cb);
    assert_eq!(s.engine.devices(s.now, 1).len(), 2);
    assert_eq!(s.engine.stats().pushes_failed, 2);
    assert_eq!(outcomes(&s)[0].1, Outcome::Unreachable);
    settle(&mut s);
}

#[test]
fn invite_for_unknown_token_gets_480_like_an_unreachable_account() {
    let mut s = sim();
    let c = SimCaller::new(addr(CALLER), s.engine_addr, "nosuchtoken");
    let c = s.add_peer(c, Flow::Udp);
    start(&mut s, &c);
    s.run_for(Duration::from_secs(2));
    // Not 404: that would tell a prober which accounts exist.
    assert_eq!(c.borrow().ua.codes("INVITE"), vec![100, 480]);
    assert!(s.mediator.log.is_empty());
    settle(&mut s);
}

#[test]
fn two_calls_waiting_both_reach_the_woken_phone() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    p.borrow_mut().script.final_code = Some(486);
    let c1 = caller(&mut s);
    let c2 = SimCaller::new(addr("127.0.0.4:5060"), s.engine_addr, ACCOUNT_TOKEN);
    let c2 = s.add_peer(c2, Flow::Udp);
    start(&mut s, &c1);
    s.run_for(Duration::from_millis(300));
    start(&mut s, &c2);
    s.run_for(Duration::from_secs(10));
    // Two pushes, two wakes, one INVITE per call.
    assert_eq!(s.mediator.of_kind(PushKind::IncomingCall).len(), 2);
    let pb = p.borrow();
    let ids: Vec<_> = pb.calls.iter().map(|c| c.call_id.clone()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&c1.borrow().call_id) && ids.contains(&c2.borrow().call_id));
    drop(pb);
    assert_eq!(c1.borrow().final_code, Some(486));
    assert_eq!(c2.borrow().final_code, Some(486));
    settle(&mut s);
}

/// Many seeds of 10–20 % loss with duplicates and reordering over the
/// flows above: every one must end as it should.
#[test]
fn flows_hold_for_many_seeds_of_loss() {
    let mut fails = Vec::new();
    for seed in 1..150u64 {
        let r = std::panic::catch_unwind(|| {
            let (mut s, c, p) = answered_call(Some(seed * 7919), seed % 2 == 0);
            check_answered_call(&mut s, &c, &p, seed % 2 == 0);
        });
        if r.is_err() {
            fails.push(("answered", seed));
        }
        let r = std::panic::catch_unwind(|| reinvite_and_info(Some(seed * 104_729)));
        if r.is_err() {
            fails.push(("reinvite", seed));
        }
        let r = std::panic::catch_unwind(|| {
            late_wake_and_two_devices_lossy(std::iter::once(seed * 15_485_863), 0.2)
        });
        if r.is_err() {
            fails.push(("late/two", seed));
        }
    }
    assert!(fails.is_empty(), "{fails:?}");
}

/// Prints what every side sent, received and lost, in time order: for
/// reading a failing seed (`dump(&s, &[("CALLER", &c.borrow().ua)])`).
#[allow(dead_code)]
fn dump(s: &Sim, peers: &[(&str, &sim::ua::Ua)]) {
    let mut all: Vec<(Duration, String)> = Vec::new();
    let line = |pk: &[u8]| {
        text(pk).lines().take(1).collect::<String>()
            + " | "
            + &header(pk, "CSeq").unwrap_or_default()
            + " | "
            + &header(pk, "Reason").unwrap_or_default()
    };
    for (name, ua) in peers {
        for (t, pk) in &ua.sent {
            all.push((*t - s.start, format!("{name} sent: {}", line(pk))));
        }
        for (t, _, pk) in &ua.received {
            all.push((*t - s.start, format!("{name} got: {}", line(pk))));
        }
    }
    for (t, d, pk) in &s.sent {
        all.push((*t - s.start, format!("ENGINE -> {d}: {}", line(pk))));
    }
    for (t, d, pk) in &s.lost {
        all.push((*t - s.start, format!("LOST -> {d}: {}", line(pk))));
    }
    for (t, d, pk) in &s.received {
        all.push((*t - s.start, format!("ENGINE <- {d}: {}", line(pk))));
    }
    all.sort();
    for (t, l) in all {
        println!("{:>10.3} {l}", t.as_secs_f64());
    }
}

#[test]
fn late_wake_whose_invite_is_lost_twice_still_ends_in_cancel() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(5)));
    // The app rings until told otherwise.
    p.borrow_mut().script.final_code = None;
    // The late-wake INVITE and its first retransmission are lost (sent at
    // 0 and 0.5 s; the next at 1.5 s gets through).
    s.drop_next(addr(PHONE1), "INVITE ", 2);
    let c = caller(&mut s);
    c.borrow_mut().cancel_after = Some(Duration::from_secs(2));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(15));
    assert_eq!(s.lost.len(), 2);
    let pb = p.borrow();
    assert_eq!(pb.invites().len(), 1);
    // RFC 3261 §9.1: the CANCEL waits for the phone's provisional answer,
    // so it cannot overtake the INVITE; the phone stops ringing.
    assert_eq!(pb.ua.codes("CANCEL"), Vec::<u16>::new());
    let answers: Vec<u16> = pb
        .ua
        .sent
        .iter()
        .filter(|(_, d)| cseq(d).is_some_and(|c| c.1 == "CANCEL"))
        .filter_map(|(_, d)| status(d))
        .collect();
    assert!(!answers.is_empty(), "no CANCEL reached the phone");
    assert!(answers.iter().all(|&a| a == 200), "{answers:?}");
    assert_eq!(pb.calls[0].final_code, Some(487), "the phone still rings");
    drop(pb);
    assert_eq!(s.engine.stats().late_wakes_completed, 1);
    settle(&mut s);
}

#[test]
fn phone_ringing_forever_is_cancelled_after_timer_c() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    p.borrow_mut().script.final_code = None;
    let c = caller(&mut s);
    start(&mut s, &c);
    // device_wait (30 s) + Timer C (181 s), less a second: still ringing.
    s.run_for(Duration::from_secs(210));
    assert_eq!(c.borrow().final_code, None);
    s.run_for(Duration::from_secs(2));
    assert_eq!(c.borrow().ua.codes("INVITE"), vec![100, 180, 480]);
    let pb = p.borrow();
    assert!(!pb.ua.requests("CANCEL").is_empty());
    assert_eq!(pb.calls[0].final_code, Some(487));
    drop(pb);
    assert_eq!(outcomes(&s)[0].1, Outcome::NoResponse);
    settle(&mut s);
}

#[test]
fn calls_decided_elsewhere_send_call_cancelled_to_fcm_devices() {
    const PIXEL: &str = "fcm-token-7c1d2e3f";
    for (reason, kind, expect) in [
        (
            "SIP;cause=200;text=\"Call completed elsewhere\"",
            Outcome::AnsweredElsewhere,
            "answered_elsewhere",
        ),
        (
            "SIP;cause=603;text=\"Declined\"",
            Outcome::Declined,
            "declined_elsewhere",
        ),
    ] {
        let mut s = sim();
        provision(&mut s, "iphone", IPHONE);
        assert!(s
            .engine
            .put_device(1, "pixel", "fcm", PIXEL, Some("example-project")));
        let c = caller(&mut s);
        c.borrow_mut().cancel_after = Some(Duration::from_secs(2));
        c.borrow_mut().cancel_reason = Some(reason.into());
        start(&mut s, &c);
        s.run_for(Duration::from_secs(5));
        assert_eq!(outcomes(&s)[0].1, kind);
        // Both were woken; only the Android device gets the follow-up
        // (iOS closes its call screen on the late-wake CANCEL).
        assert_eq!(s.mediator.of_kind(PushKind::IncomingCall).len(), 2);
        let cancelled = s.mediator.of_kind(PushKind::CallCancelled);
        assert_eq!(cancelled.len(), 1, "{kind:?}");
        let json = serde_json::to_value(cancelled[0]).unwrap();
        assert_eq!(json["kind"], "call_cancelled");
        assert_eq!(json["device"]["platform"], "fcm");
        assert_eq!(json["device"]["token"], PIXEL);
        assert_eq!(json["device"]["topic"], "example-project");
        assert_eq!(json["call"]["call_id"], c.borrow().call_id.as_str());
        // The reason as the push protocol names it (src/push: PushCall).
        assert_eq!(json["call"]["reason"], expect);
        assert!(s.mediator.of_kind(PushKind::MissedCall).is_empty());
        settle(&mut s);
    }
}

#[test]
fn register_refresh_during_a_call_sends_nothing_new() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    let c = caller(&mut s);
    c.borrow_mut().bye_after_answer = Some(Duration::from_secs(10));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(5));
    assert_eq!(c.borrow().final_code, Some(200));
    // The app refreshes its registration in the call and after it.
    s.poke(&p, |p, now, out| p.register(now, out));
    s.run_for(Duration::from_secs(8));
    s.poke(&p, |p, now, out| p.register(now, out));
    s.run_for(Duration::from_secs(5));
    let pb = p.borrow();
    assert_eq!(pb.register_answers.iter().filter(|r| r.1 == 200).count(), 3);
    assert_eq!(
        pb.ua
            .requests("INVITE")
            .iter()
            .filter(|i| tag(&header(i, "To").unwrap()).is_none())
            .map(|i| header(i, "Via"))
            .collect::<std::collections::HashSet<_>>()
            .len(),
        1
    );
    assert!(pb.ua.requests("CANCEL").is_empty());
    assert!(c.borrow().ended);
    drop(pb);
    assert_eq!(s.engine.stats().late_wakes, 0);
    settle(&mut s);
}

/// A phone on a TCP/TLS flow of the front (no retransmissions on its
/// side) and the caller on lossy UDP.
fn tcp_phone(s: &mut Sim, at: &str, token: &str, wake: Option<Duration>) -> Phone {
    let mut p = SimPhone::new(addr(at), s.phone_addr, token);
    p.ua.reliable = true;
    s.mediator.wake(token, addr(at), wake);
    s.add_peer(p, Flow::Tcp(u64::from(addr(at).port())))
}

#[test]
fn phone_over_tcp_answer_reaches_the_caller_despite_a_lost_200() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let p = tcp_phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    let c = caller(&mut s);
    c.borrow_mut().bye_after_answer = Some(Duration::from_secs(5));
    // The 200 sipis relays to the caller over UDP is lost; the phone, on
    // TCP, does not retransmit its own.
    s.drop_next(addr(CALLER), "SIP/2.0 200 OK", 1);
    start(&mut s, &c);
    s.run_for(Duration::from_secs(20));
    assert_eq!(s.lost.len(), 1);
    // RFC 3261 §13.3.1.4: sipis, the UAS of the caller's leg, retransmits
    // its 2xx until the ACK.
    let cb = c.borrow();
    assert_eq!(cb.final_code, Some(200), "{:?}", cb.ua.codes("INVITE"));
    assert!(cb.ended);
    let pb = p.borrow();
    assert!(!pb.ua.requests("ACK").is_empty());
    assert_eq!(pb.ua.requests("BYE").len(), 1);
    // Over TCP sipis did not retransmit its INVITE to the phone either.
    assert_eq!(pb.ua.requests("INVITE").len(), 1);
    drop((cb, pb));
    assert!(s.wrong_flow.is_empty(), "{:?}", s.wrong_flow);
    settle(&mut s);
}

#[test]
fn reinvite_answered_by_a_tcp_phone_reaches_the_caller_despite_a_lost_200() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let p = tcp_phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    let c = caller(&mut s);
    start(&mut s, &c);
    s.run_for(Duration::from_secs(10));
    assert_eq!(c.borrow().final_code, Some(200));
    s.drop_next(addr(CALLER), "SIP/2.0 200 OK", 1);
    s.poke(&c, |c, now, out| {
        c.send_in_dialog(now, "INVITE", Some(REOFFER.as_bytes()), out)
    });
    s.run_for(Duration::from_secs(10));
    assert_eq!(s.lost.len(), 1);
    let ok = response_to(&c.borrow().ua, 2, "INVITE");
    assert_eq!(status(&ok), Some(200));
    // The caller's ACK got through to the phone (as its CSeq 2).
    let acks = p.borrow().ua.requests("ACK");
    assert!(
        acks.iter().any(|a| cseq(a) == Some((2, "ACK".into()))),
        "{acks:?}"
    );
    s.poke(&c, |c, now, out| c.send_in_dialog(now, "BYE", None, out));
    settle(&mut s);
}

#[test]
fn late_wake_over_tcp_to_a_phone_that_sends_no_provisional_is_cancelled_after_the_guard() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let p = tcp_phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(5)));
    p.borrow_mut().script = Script {
        provisional: vec![],
        final_code: Some(200),
        final_after: Duration::from_secs(10),
        bye_after_answer: None,
        reliable: false,
    };
    let c = caller(&mut s);
    c.borrow_mut().cancel_after = Some(Duration::from_secs(2));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(10));
    let pb = p.borrow();
    assert_eq!(pb.invites().len(), 1);
    let invited = pb
        .ua
        .received
        .iter()
        .find(|(_, _, d)| method(d).as_deref() == Some("INVITE"))
        .unwrap()
        .0;
    let cancelled = pb
        .ua
        .received
        .iter()
        .find(|(_, _, d)| method(d).as_deref() == Some("CANCEL"))
        .expect("no CANCEL over TCP after the guard time")
        .0;
    // The late wake: CANCEL "after a short guard time" (1 s), in order on the stream.
    assert!(cancelled - invited >= Duration::from_secs(1));
    assert_eq!(pb.calls[0].final_code, Some(487));
    drop(pb);
    settle(&mut s);
}

/// Random flows: when the phones wake, whether and when they answer,
/// whether and when the caller gives up, one or two devices on UDP or
/// TCP, 0–20 % loss.
/// Whatever happens, it must end cleanly: the caller gets one final
/// answer, no phone is left ringing or in a call, one outcome is
/// recorded, and nothing stays in the engine.
#[test]
fn random_flows_end_cleanly() {
    let mut fails = Vec::new();
    for seed in 1..300u64 {
        if std::panic::catch_unwind(|| random_flow(seed)).is_err() {
            fails.push(seed);
        }
    }
    assert!(fails.is_empty(), "seeds {fails:?}");
}

fn random_flow(seed: u64) {
    let mut r = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = |n: u64| {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        r % n
    };
    let ms = |v: u64| Duration::from_millis(v);
    let mut s = sim();
    s.seed(seed);
    s.conditions = Conditions {
        loss: [0.0, 0.1, 0.2][next(3) as usize],
        duplicate: 0.05,
        delay: (ms(5), ms(60)),
    };
    let devices = 1 + next(2);
    let mut phones = Vec::new();
    for (i, (name, token, at)) in [("iphone", IPHONE, PHONE1), ("ipad", IPAD, PHONE2)]
        .into_iter()
        .take(devices as usize)
        .enumerate()
    {
        provision(&mut s, name, token);
        let wake = (next(5) > 0).then(|| ms(200 + next(8000)));
        // A third of the phones are on TCP/TLS flows.
        let p = if next(3) == 0 {
            tcp_phone(&mut s, at, token, wake)
        } else {
            phone(&mut s, at, token, wake)
        };
        {
            let mut pb = p.borrow_mut();
            pb.script.final_code = [Some(200), Some(200), None, Some(486)][next(4) as usize];
            pb.script.final_after = ms(next(5000));
            pb.script.provisional = if next(4) == 0 { vec![] } else { vec![180] };
            pb.registers_per_wake = 1 + next(2) as u32;
        }
        let _ = i;
        phones.push((at, p));
    }
    let c = caller(&mut s);
    {
        let mut cb = c.borrow_mut();
        if next(2) == 0 {
            cb.cancel_after = Some(ms(300 + next(10_000)));
            cb.cancel_reason = [
                None,
                Some("SIP;cause=200;text=\"Call completed elsewhere\"".to_owned()),
                Some("SIP;cause=487;text=\"ORIGINATOR_CANCEL\"".to_owned()),
            ][next(3) as usize]
                .clone();
        }
        cb.bye_after_answer = Some(ms(500 + next(3000)));
    }
    start(&mut s, &c);
    // Past device_wait + Timer C: a phone that rings on ends then.
    s.run_for(Duration::from_secs(240));
    let cb = c.borrow();
    let fin = cb.final_code;
    assert!(
        matches!(fin, Some(200 | 486 | 487 | 480)),
        "seed {seed}: caller final {fin:?} {:?}",
        cb.ua.codes("INVITE")
    );
    if fin == Some(200) {
        assert!(cb.ended, "seed {seed}: the caller's call did not end");
    }
    drop(cb);
    for (at, p) in &phones {
        let pb = p.borrow();
        if !heard_from(&s, at) {
            continue;
        }
        for call in &pb.calls {
            match call.final_code {
                Some(200) => assert!(call.ended, "seed {seed}: {at} left in a call"),
                Some(_) => {}
                None => panic!("seed {seed}: {at} left ringing"),
            }
        }
    }
    let n = outcomes(&s).len();
    assert_eq!(n, 1, "seed {seed}: {:?}", outcomes(&s));
    settle(&mut s);
}

// ---- field bugs: forks, quirky UDP, dialogs with the provider -------------

/// A second account (user2, its own Contact token) registered at the same
/// provider.
fn second_account(s: &mut Sim) -> &'static str {
    const TOKEN2: &str = "tok00000002";
    s.registrar.add_user("user2", "pw2");
    let now = s.now;
    s.engine.add_account(
        now,
        AccountConfig {
            id: 2,
            aor: "sip:user2@provider.test".into(),
            auth_user: "user2".into(),
            secret: AccountSecret::Password("pw2".into()),
            token: TOKEN2.into(),
            ..account()
        },
        None,
    );
    s.run_for(Duration::from_secs(1));
    TOKEN2
}

#[test]
fn provider_fork_to_two_accounts_pushes_both_and_connects_the_answered_one() {
    let mut s = sim();
    let token2 = second_account(&mut s);
    provision(&mut s, "iphone", IPHONE);
    assert!(s.engine.put_device(2, "ipad", "apns", IPAD, Some(PN_PARAM)));
    let p1 = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    let p2 = phone(&mut s, PHONE2, IPAD, None);
    {
        let mut p2 = p2.borrow_mut();
        (p2.user, p2.auth_user, p2.password) = ("user2".into(), "user2".into(), "pw2".into());
    }
    // A hunt group: the provider forks one call (same Call-ID, From-tag
    // and CSeq; its own branch per fork) to both accounts.
    let c1 = caller(&mut s);
    let c2 = s.add_peer(
        SimCaller::new(addr("127.0.0.4:5060"), s.engine_addr, token2),
        Flow::Udp,
    );
    {
        let c1 = c1.borrow();
        let mut c2 = c2.borrow_mut();
        c2.call_id = c1.call_id.clone();
        c2.from_tag = c1.from_tag.clone();
        c2.to_uri = "sip:user2@provider.test".into();
        // The provider cancels this fork once the other one is answered.
        c2.cancel_after = Some(Duration::from_secs(6));
    }
    c1.borrow_mut().bye_after_answer = Some(Duration::from_secs(3));
    start(&mut s, &c1);
    start(&mut s, &c2);
    s.run_for(Duration::from_secs(2));
    // Both accounts' devices were pushed for the one Call-ID; neither fork
    // was refused as a loop.
    let pushes = s.mediator.of_kind(PushKind::IncomingCall);
    let mut pushed: Vec<(u64, String)> = pushes
        .iter()
        .map(|p| (p.account, p.call.call_id.clone()))
        .collect();
    pushed.sort();
    let call_id = c1.borrow().call_id.clone();
    assert_eq!(pushed, vec![(1, call_id.clone()), (2, call_id.clone())]);
    assert!(!c2.borrow().ua.codes("INVITE").contains(&482));
    // The first account's phone woke and answered; the dialog works end
    // to end (BYE from the caller reaches the phone of account 1).
    s.run_for(Duration::from_secs(10));
    assert_eq!(c1.borrow().final_code, Some(200));
    let p1b = p1.borrow();
    assert_eq!(p1b.invites().len(), 1);
    assert!(
        !p1b.ua.requests("BYE").is_empty(),
        "the caller's BYE reached the phone"
    );
    // The provider cancelled the other fork: 487 there.
    drop(p1b);
    assert_eq!(c2.borrow().final_code, Some(487));
    settle(&mut s);
}

#[test]
fn a_merged_invite_for_the_same_account_gets_482() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let _p = phone(&mut s, PHONE1, IPHONE, None);
    let c1 = caller(&mut s);
    // The same request reaching sipis twice by two paths (RFC 3261
    // §8.2.2.2): same Call-ID, From-tag and CSeq, another branch.
    let c2 = s.add_peer(
        SimCaller::new(addr("127.0.0.4:5060"), s.engine_addr, ACCOUNT_TOKEN),
        Flow::Udp,
    );
    {
        let c1 = c1.borrow();
        let mut c2 = c2.borrow_mut();
        c2.call_id = c1.call_id.clone();
        c2.from_tag = c1.from_tag.clone();
    }
    start(&mut s, &c1);
    start(&mut s, &c2);
    s.run_for(Duration::from_secs(2));
    assert_eq!(c2.borrow().final_code, Some(482));
    assert_eq!(s.mediator.of_kind(PushKind::IncomingCall).len(), 1);
}

#[test]
fn udp_invite_without_content_length_reaches_the_phone_with_its_sdp() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    let c = caller(&mut s);
    c.borrow_mut().no_content_length = true;
    c.borrow_mut().bye_after_answer = Some(Duration::from_secs(2));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(10));
    let pb = p.borrow();
    let invites = pb.invites();
    assert_eq!(invites.len(), 1);
    // Byte-exact SDP, and a Content-Length that says so.
    assert_eq!(body(&invites[0]), CALLER_SDP.as_bytes());
    assert_eq!(
        header(&invites[0], "Content-Length"),
        Some(CALLER_SDP.len().to_string())
    );
    assert_eq!(c.borrow().final_code, Some(200));
    drop(pb);
    settle(&mut s);
}

#[test]
fn crlf_keepalives_over_udp_are_not_parse_errors() {
    let mut s = sim();
    let p = phone(&mut s, PHONE1, IPHONE, None);
    let phone_port = s.phone_addr;
    s.poke(&p, |_, _, out| {
        out.push((phone_port, bytes::Bytes::from_static(b"\r\n\r\n")));
        out.push((phone_port, bytes::Bytes::from_static(b"\r\n")));
    });
    s.run_for(Duration::from_secs(1));
    let stats = s.engine.stats();
    assert_eq!((stats.keepalives, stats.parse_errors), (2, 0));
    assert!(!s
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::ParseError { .. })));
    // Nothing is answered over UDP.
    assert!(s.sent.iter().all(|(_, to, _)| *to != addr(PHONE1)));
}

#[test]
fn sipis_own_180_carries_a_contact_for_the_early_dialog() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let _p = phone(&mut s, PHONE1, IPHONE, None);
    let c = caller(&mut s);
    start(&mut s, &c);
    s.run_for(Duration::from_secs(2));
    let cb = c.borrow();
    let ringing = cb
        .ua
        .responses("INVITE")
        .into_iter()
        .find(|r| status(r) == Some(180))
        .expect("180 (push sent)");
    assert_eq!(
        header(&ringing, "X-Sipis-Push-Status").as_deref(),
        Some("Push-Notification-Sent")
    );
    // RFC 3261 §12.1.1: a dialog-creating response carries a Contact.
    assert_eq!(
        header(&ringing, "Contact"),
        Some(format!("<sip:{ACCOUNT_TOKEN}@{ENGINE}>"))
    );
}

#[test]
fn requests_from_the_phone_to_the_caller_follow_the_providers_record_route() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    p.borrow_mut().script.bye_after_answer = Some(Duration::from_secs(2));
    let c = caller(&mut s);
    // The provider's proxy record-routes from another address than the
    // one the INVITE arrived from.
    const PROXY: &str = "127.0.0.5:5070";
    c.borrow_mut()
        .extra
        .push(("Record-Route".into(), format!("<sip:{PROXY};lr>")));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(6));
    let byes: Vec<_> = s
        .sent
        .iter()
        .filter(|(_, _, d)| method(d).as_deref() == Some("BYE"))
        .collect();
    assert!(!byes.is_empty(), "the phone's BYE was relayed");
    for (_, to, bye) in byes {
        assert_eq!(*to, addr(PROXY), "BYE sent to the route set's first hop");
        assert_eq!(header(bye, "Route"), Some(format!("<sip:{PROXY};lr>")));
        assert!(text(bye).starts_with(&format!("BYE sip:bob@{CALLER} SIP/2.0\r\n")));
    }
}

// ---- nothing reveals which users exist ----------------------------------

/// A response with what differs per request blanked out: tags, branches,
/// nonces, Call-ID, and the prober's own user and address.
fn shape(resp: &[u8], user: &str, at: &str) -> String {
    let (ip, port) = at.rsplit_once(':').unwrap();
    let t = text(resp)
        .replace(user, "USER")
        .replace(at, "ADDR")
        .replace(&format!("={ip};"), "=IP;")
        .replace(&format!("={port}"), "=PORT");
    let mut out = String::new();
    for line in t.split("\r\n") {
        let mut l = line.to_owned();
        for key in ["tag=", "branch=", "nonce=\"", "opaque=\""] {
            let mut from = 0;
            while let Some(i) = l[from..].find(key).map(|i| i + from) {
                let start = i + key.len();
                let end = l[start..]
                    .find([';', '"', ',', '>'])
                    .map_or(l.len(), |e| start + e);
                l.replace_range(start..end, "X");
                from = start + 1;
            }
        }
        if l.to_ascii_lowercase().starts_with("call-id:") {
            l = "Call-ID: X".into();
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

#[test]
fn register_and_invite_answers_do_not_tell_unknown_users_from_known_ones() {
    let mut s = sim();
    // A known user guessing a password, and a user that does not exist.
    let known = phone(&mut s, PHONE1, IPHONE, None);
    known.borrow_mut().password = "guess".into();
    let unknown = phone(&mut s, PHONE2, IPAD, None);
    {
        let mut u = unknown.borrow_mut();
        (u.user, u.auth_user, u.password) = ("user9".into(), "user9".into(), "guess".into());
    }
    s.poke(&known, |p, now, out| p.register(now, out));
    s.poke(&unknown, |p, now, out| p.register(now, out));
    s.run_for(Duration::from_secs(2));
    let k = known.borrow().ua.responses("REGISTER");
    let u = unknown.borrow().ua.responses("REGISTER");
    let codes = |r: &[bytes::Bytes]| r.iter().map(|m| status(m)).collect::<Vec<_>>();
    assert_eq!(codes(&k), vec![Some(401), Some(403)]);
    assert_eq!(codes(&u), codes(&k));
    for (a, b) in k.iter().zip(&u) {
        assert_eq!(
            shape(a, "user1", PHONE1),
            shape(b, "user9", PHONE2),
            "known and unknown users answered differently"
        );
    }
    // INVITE: an unknown Contact token is answered like an account with
    // no device to reach.
    let c1 = caller(&mut s);
    let c2 = s.add_peer(
        SimCaller::new(addr("127.0.0.4:5060"), s.engine_addr, "tok99999999"),
        Flow::Udp,
    );
    start(&mut s, &c1);
    start(&mut s, &c2);
    s.run_for(Duration::from_secs(2));
    let r1 = c1.borrow().ua.responses("INVITE");
    let r2 = c2.borrow().ua.responses("INVITE");
    assert_eq!(codes(&r1), vec![Some(100), Some(480)]);
    assert_eq!(codes(&r2), codes(&r1));
    for (a, b) in r1.iter().zip(&r2) {
        let a = shape(a, ACCOUNT_TOKEN, CALLER);
        let b = shape(b, "tok99999999", "127.0.0.4:5060");
        assert_eq!(a, b);
    }
    assert_eq!(
        header(&r2[1], "X-Sipis-Reason").as_deref(),
        Some("Device-Not-Reachable")
    );
}

// ---- bounded memory under a flood ---------------------------------------

/// A request outside any dialog from `from`, with its own branch.
fn stray_request(method: &str, n: u32, from: &str) -> bytes::Bytes {
    bytes::Bytes::from(format!(
        "{method} sip:sipis@{PHONE_PORT} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {from};branch=z9hG4bKflood{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@example.test>;tag=f{n}\r\n\
         To: <sip:sipis@{PHONE_PORT}>\r\nCall-ID: flood-{n}\r\nCSeq: 1 {method}\r\n\
         Content-Length: 0\r\n\r\n"
    ))
}

fn answers(s: &Sim, to: &str) -> Vec<u16> {
    s.sent
        .iter()
        .filter(|(_, dest, _)| *dest == addr(to))
        .filter_map(|(_, _, d)| status(d))
        .collect()
}

#[test]
fn an_options_flood_holds_no_transactions() {
    let mut s = sim();
    let p = phone(&mut s, PHONE1, IPHONE, None);
    let port = s.phone_addr;
    s.poke(&p, |_, _, out| {
        for n in 0..2_000 {
            out.push((port, stray_request("OPTIONS", n, PHONE1)));
        }
    });
    s.run_for(Duration::from_millis(100));
    let got = answers(&s, PHONE1);
    assert_eq!(got.len(), 2_000);
    assert!(got.iter().all(|&c| c == 200));
    assert_eq!(s.engine.transaction_count().1, 0, "OPTIONS held no state");
    assert_eq!(s.engine.stats().options, 2_000);
    let allow = s
        .sent
        .iter()
        .rev()
        .find(|(_, d, _)| *d == addr(PHONE1))
        .unwrap();
    assert!(header(&allow.2, "Allow").unwrap().contains("REGISTER"));
}

#[test]
fn a_full_transaction_table_answers_503_with_retry_after_then_recovers() {
    let start_at = Instant::now();
    let engine = Engine::new(
        EngineConfig {
            via: ENGINE.into(),
            contact_host: ENGINE.into(),
            phone_contact_host: PHONE_PORT.into(),
            max_server_transactions: 5,
            ..EngineConfig::default()
        },
        start_at,
    );
    let registrar = SimRegistrar::new(addr(REGISTRAR), "provider.test", start_at);
    let mut s = Sim::new(engine, addr(ENGINE), registrar, start_at);
    s.phone_addr = addr(PHONE_PORT);
    let p = phone(&mut s, PHONE1, IPHONE, None);
    let port = s.phone_addr;
    s.poke(&p, |_, _, out| {
        for n in 0..8 {
            out.push((port, stray_request("INFO", n, PHONE1)));
        }
    });
    s.run_for(Duration::from_millis(100));
    // Five transactions (481 each, kept for Timer J), then the table is
    // full: 503 with Retry-After, statelessly.
    assert_eq!(
        answers(&s, PHONE1),
        vec![481, 481, 481, 481, 481, 503, 503, 503]
    );
    let busy = s
        .sent
        .iter()
        .rev()
        .find(|(_, d, _)| *d == addr(PHONE1))
        .unwrap();
    assert_eq!(header(&busy.2, "Retry-After").as_deref(), Some("5"));
    assert_eq!(s.engine.stats().overloaded, 3);
    assert_eq!(s.engine.transaction_count().1, 5);
    // Timer J frees the table; the next request is served again.
    s.run_for(Duration::from_secs(40));
    assert_eq!(s.engine.transaction_count().1, 0);
    s.poke(&p, |_, _, out| {
        out.push((port, stray_request("INFO", 99, PHONE1)))
    });
    s.run_for(Duration::from_millis(100));
    assert_eq!(answers(&s, PHONE1).last(), Some(&481));
}

#[test]
fn a_full_pending_call_map_answers_503() {
    let mut s = sim_with(CallConfig {
        max_calls: 1,
        ..CallConfig::default()
    });
    provision(&mut s, "iphone", IPHONE);
    let _p = phone(&mut s, PHONE1, IPHONE, None);
    let c1 = caller(&mut s);
    let c2 = s.add_peer(
        SimCaller::new(addr("127.0.0.4:5060"), s.engine_addr, ACCOUNT_TOKEN),
        Flow::Udp,
    );
    start(&mut s, &c1);
    s.run_for(Duration::from_millis(200));
    start(&mut s, &c2);
    s.run_for(Duration::from_millis(200));
    // The first call waits for its phone; the second is turned away.
    assert_eq!(c2.borrow().ua.codes("INVITE"), vec![503]);
    assert_eq!(s.mediator.of_kind(PushKind::IncomingCall).len(), 1);
    assert_eq!(s.engine.stats().overloaded, 1);
}

// ---- password guessing --------------------------------------------------

#[test]
fn guessing_is_slowed_for_that_source_while_the_owners_phone_registers() {
    let mut s = sim();
    let attacker = phone(&mut s, PHONE2, IPAD, None);
    attacker.borrow_mut().password = "guess".into();
    let owner = phone(&mut s, PHONE1, IPHONE, None);
    // Ten guesses in a row, one every 100 ms.
    for _ in 0..10 {
        s.poke(&attacker, |p, now, out| p.register(now, out));
        s.run_for(Duration::from_millis(100));
    }
    let codes: Vec<u16> = attacker
        .borrow()
        .ua
        .responses("REGISTER")
        .iter()
        .filter_map(|r| status(r))
        .collect();
    // 401 + 403 for each of the first five guesses; then refused at once
    // with Retry-After, without a challenge to answer.
    assert_eq!(
        &codes[..10],
        &[401, 403, 401, 403, 401, 403, 401, 403, 401, 403]
    );
    assert!(codes[10..].iter().all(|&c| c == 403), "{codes:?}");
    let blocked = attacker
        .borrow()
        .ua
        .responses("REGISTER")
        .last()
        .unwrap()
        .clone();
    assert!(header(&blocked, "Retry-After").is_some());
    assert!(header(&blocked, "WWW-Authenticate").is_none());
    assert_eq!(s.engine.stats().phone_auth_failures, 5);
    let blocks: Vec<_> = s
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::AuthBlocked { source, aor, .. } => Some((*source, aor.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        blocks,
        vec![(addr(PHONE2).ip(), "user1@provider.test".to_string())]
    );
    // The owner's phone, from its own address, registers at once.
    s.poke(&owner, |p, now, out| p.register(now, out));
    s.run_for(Duration::from_millis(200));
    assert_eq!(owner.borrow().last_register(), Some(200));
    // At most one guess a second gets through to the digest check.
    let before = s.engine.stats().phone_auth_failures;
    for _ in 0..50 {
        s.poke(&attacker, |p, now, out| p.register(now, out));
        s.run_for(Duration::from_millis(100));
    }
    let checked = s.engine.stats().phone_auth_failures - before;
    assert!(checked <= 5, "{checked} guesses checked in 5 s");
}

#[test]
fn requests_to_phones_name_the_shared_port_they_leave_from_in_their_via() {
    let mut s = sim();
    provision(&mut s, "iphone", IPHONE);
    let p = phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    p.borrow_mut().script.bye_after_answer = Some(Duration::from_secs(2));
    let c = caller(&mut s);
    start(&mut s, &c);
    s.run_for(Duration::from_secs(10));
    let pb = p.borrow();
    let invite = &pb.invites()[0];
    // RFC 3261 §18.1.1: the sent-by is where the request leaves from (the
    // shared phone port), so a phone ignoring rport answers through its NAT.
    let via = header(invite, "Via").unwrap();
    assert!(
        via.starts_with(&format!("SIP/2.0/UDP {PHONE_PORT};branch=z9hG4bK")),
        "{via}"
    );
    assert!(via.contains("-s0;"), "{via}");
    // Towards the provider (the phone's BYE, relayed) the shard's own
    // socket is named.
    let up = s
        .sent
        .iter()
        .find(|(_, to, d)| *to == addr(CALLER) && method(d).as_deref() == Some("BYE"))
        .map(|(_, _, d)| header(d, "Via").unwrap())
        .expect("the phone's BYE relayed to the caller");
    assert!(
        up.starts_with(&format!("SIP/2.0/UDP {ENGINE};branch=z9hG4bK")),
        "{up}"
    );
    assert_eq!(c.borrow().final_code, Some(200));
    drop(pb);
    settle(&mut s);
}

// ---- TCP/TLS flows: closed connections, the frozen app --------------------

/// The flows the engine reported bound (`Event::FlowBound`), in order.
fn flows_bound(s: &Sim) -> Vec<Flow> {
    s.events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::FlowBound { flow } => Some(*flow),
            _ => None,
        })
        .collect()
}

/// When the phone at `at` received its first request `m`.
fn first_received(p: &Phone, m: &str) -> Option<Instant> {
    p.borrow()
        .ua
        .received
        .iter()
        .find(|(_, _, d)| method(d).as_deref() == Some(m))
        .map(|r| r.0)
}

/// The caller's 180s that announced a push.
fn push_rings(c: &Caller) -> usize {
    c.borrow()
        .ua
        .responses("INVITE")
        .iter()
        .filter(|r| header(r, "X-Sipis-Push-Status").is_some())
        .count()
}

#[test]
fn closed_connection_drops_the_binding_and_the_next_call_pushes_the_device() {
    let mut s = sim();
    let old = tcp_phone(&mut s, PHONE1, IPHONE, None);
    s.poke(&old, |p, now, out| p.register(now, out));
    s.run_for(Duration::from_secs(1));
    assert_eq!(old.borrow().last_register(), Some(200));
    assert_eq!(flows_bound(&s), vec![Flow::Tcp(40001)]);
    // The front reports the connection gone.
    let closed_at = s.now;
    s.engine.handle_flow_closed(closed_at, Flow::Tcp(40001));
    let devices = s.engine.devices(s.now, 1);
    assert_eq!(devices.len(), 1, "the push target stays");
    assert_eq!(devices[0].registered, None);
    assert_eq!(devices[0].prid.as_deref(), Some(IPHONE));
    assert_eq!(s.engine.stats().flow_bindings_dropped, 1);
    // The app, woken by the push, connects anew.
    let new = tcp_phone(&mut s, PHONE2, IPHONE, Some(Duration::from_secs(1)));
    let c = caller(&mut s);
    c.borrow_mut().bye_after_answer = Some(Duration::from_secs(1));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(10));
    let pushes = s.mediator.of_kind(PushKind::IncomingCall);
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].device.token, IPHONE);
    assert!(
        s.sent
            .iter()
            .all(|(t, dest, _)| *t < closed_at || *dest != addr(PHONE1)),
        "nothing written into the closed connection"
    );
    assert!(old.borrow().invites().is_empty());
    assert_eq!(new.borrow().invites().len(), 1);
    assert_eq!(flows_bound(&s), vec![Flow::Tcp(40001), Flow::Tcp(40002)]);
    assert_eq!(c.borrow().ua.codes("INVITE"), vec![100, 180, 200]);
    assert_eq!(push_rings(&c), 1);
    settle(&mut s);
}

#[test]
fn a_ringing_leg_ends_when_its_connection_closes_and_the_device_is_pushed() {
    let mut s = sim();
    let old = tcp_phone(&mut s, PHONE1, IPHONE, None);
    // Rings, never answers on this connection.
    old.borrow_mut().script.final_code = None;
    s.poke(&old, |p, now, out| p.register(now, out));
    s.run_for(Duration::from_secs(1));
    let c = caller(&mut s);
    c.borrow_mut().bye_after_answer = Some(Duration::from_secs(1));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(3));
    assert_eq!(old.borrow().invites().len(), 1);
    assert_eq!(c.borrow().ua.codes("INVITE"), vec![100, 180]);
    assert!(s.mediator.log.is_empty(), "connected and ringing: no push");
    // The connection drops (the OS killed the app); its leg ends at once
    // and the device is woken by push; it comes back on a new connection.
    let new = tcp_phone(&mut s, PHONE2, IPHONE, Some(Duration::from_secs(1)));
    let closed_at = s.now;
    s.engine.handle_flow_closed(closed_at, Flow::Tcp(40001));
    s.run_for(Duration::from_secs(10));
    let pushes = s.mediator.of_kind(PushKind::IncomingCall);
    assert_eq!(pushes.len(), 1);
    let pushed_at = s.mediator.log[0].0;
    assert!(pushed_at - closed_at < Duration::from_millis(100));
    assert_eq!(s.engine.stats().stream_wakes, 1);
    // Nothing more went to the dead connection (no CANCEL into it).
    assert!(s
        .sent
        .iter()
        .all(|(t, dest, _)| *t < closed_at || *dest != addr(PHONE1)));
    assert_eq!(new.borrow().invites().len(), 1);
    assert_eq!(c.borrow().final_code, Some(200));
    settle(&mut s);
}

#[test]
fn frozen_connected_app_is_pushed_after_the_stream_answer_wait_and_answers_on_its_connection() {
    let mut s = sim();
    let p = tcp_phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    s.poke(&p, |p, now, out| p.register(now, out));
    s.run_for(Duration::from_secs(1));
    // The OS freezes the app; its connection stays open.
    p.borrow_mut().frozen = true;
    let c = caller(&mut s);
    c.borrow_mut().bye_after_answer = Some(Duration::from_secs(1));
    start(&mut s, &c);
    let invited = c.borrow().ua.sent[0].0;
    s.run_for(Duration::from_secs(1));
    assert!(s.mediator.log.is_empty(), "not pushed before the wait");
    s.run_for(Duration::from_secs(15));
    // stream_answer_wait (2 s) without a provisional answer: pushed.
    let pushes = s.mediator.of_kind(PushKind::IncomingCall);
    assert_eq!(pushes.len(), 1);
    let waited = s.mediator.log[0].0 - invited;
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_millis(2200),
        "{waited:?}"
    );
    assert_eq!(s.engine.stats().stream_wakes, 1);
    // The caller hears the push; the thawed app answers the INVITE that
    // waited on its connection, and registers over it (no second INVITE).
    assert_eq!(push_rings(&c), 1);
    assert_eq!(c.borrow().ua.codes("INVITE"), vec![100, 180, 200]);
    let pb = p.borrow();
    assert_eq!(pb.invites().len(), 1);
    assert_eq!(pb.buffered.len(), 1, "the INVITE waited in the socket");
    assert_eq!(pb.calls[0].final_code, Some(200));
    drop(pb);
    assert_eq!(flows_bound(&s), vec![Flow::Tcp(40001)]);
    settle(&mut s);
}

#[test]
fn connected_app_ringing_within_the_stream_answer_wait_is_not_pushed() {
    let mut s = sim();
    let p = tcp_phone(&mut s, PHONE1, IPHONE, Some(Duration::from_secs(1)));
    // Rings at once, answers after 5 s: well past the 2 s wait.
    p.borrow_mut().script.final_after = Duration::from_secs(5);
    s.poke(&p, |p, now, out| p.register(now, out));
    s.run_for(Duration::from_secs(1));
    let c = caller(&mut s);
    c.borrow_mut().bye_after_answer = Some(Duration::from_secs(1));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(10));
    assert!(s.mediator.log.is_empty(), "{:?}", s.mediator.log);
    assert_eq!(s.engine.stats().stream_wakes, 0);
    assert_eq!(push_rings(&c), 0);
    assert_eq!(c.borrow().ua.codes("INVITE"), vec![100, 180, 200]);
    settle(&mut s);
}

#[test]
fn frozen_app_woken_on_a_new_connection_gets_the_invite_there_and_the_old_one_a_cancel() {
    let mut s = sim();
    let old = tcp_phone(&mut s, PHONE1, IPHONE, None);
    s.poke(&old, |p, now, out| p.register(now, out));
    s.run_for(Duration::from_secs(1));
    old.borrow_mut().frozen = true;
    // The push relaunches the app, which connects anew.
    let new = tcp_phone(&mut s, PHONE2, IPHONE, Some(Duration::from_secs(1)));
    let c = caller(&mut s);
    c.borrow_mut().bye_after_answer = Some(Duration::from_secs(1));
    start(&mut s, &c);
    s.run_for(Duration::from_secs(15));
    assert_eq!(s.mediator.of_kind(PushKind::IncomingCall).len(), 1);
    assert_eq!(flows_bound(&s), vec![Flow::Tcp(40001), Flow::Tcp(40002)]);
    // The INVITE on the new connection, after its REGISTER.
    assert_eq!(new.borrow().invites().len(), 1);
    let registered = new.borrow().register_answers.last().unwrap().0;
    assert!(first_received(&new, "INVITE").unwrap() >= registered);
    assert_eq!(new.borrow().calls[0].final_code, Some(200));
    assert_eq!(c.borrow().ua.codes("INVITE"), vec![100, 180, 200]);
    // The old connection got the first INVITE and, once the device had
    // moved, its CANCEL: a thawing app would not ring for it.
    let to_old: Vec<String> = s
        .sent
        .iter()
        .filter(|(_, dest, _)| *dest == addr(PHONE1))
        .filter_map(|(_, _, d)| method(d))
        .collect();
    assert_eq!(to_old, vec!["INVITE", "CANCEL"]);
    let buffered: Vec<String> = old
        .borrow()
        .buffered
        .iter()
        .filter_map(|(_, _, d)| method(d))
        .collect();
    assert_eq!(buffered, vec!["INVITE", "CANCEL"]);
    let devices = s.engine.devices(s.now, 1);
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].registered, Some(addr(PHONE2)));
    settle(&mut s);
}
