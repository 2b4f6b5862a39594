//! End to end, with real peers, the incoming-call flow (the call flow and
//! late wake of `sipis_engine`'s `calls` module doc):
//! a sipp caller calls through Kamailio (the provider: registrar and
//! proxy, tests/support/kamailio/provider.cfg) to an account sipis
//! registered there; sipis answers 100 and 180 (`X-Sipis-Push-Status`),
//! posts an `incoming_call` push to the test's mediator stub, and when the
//! "woken" sipp phone REGISTERs (RFC 8599 `pn-*` Contact, digest realm
//! "sipis") it INVITEs the phone over that flow with the caller's From,
//! Call-ID and SDP, and relays the dialog both ways. A phone that wakes
//! after the call ended (the late wake) still gets the INVITE and
//! then a CANCEL whose Reason says why. Harness: tests/support/calls.rs;
//! scenarios: tests/support/sipp/.
//!
//! Every assertion is about bytes a peer really sent or received (sipp's
//! `-trace_msg` message logs, the JSON the mediator received, the replies
//! Kamailio logged) or sipp's exit status.
//!
//! The tests of the call flow itself need sipis's call engine (`[calls]`,
//! `[push]`); until it is on the branch they fail at start-up saying so.
//! The peer checks (Kamailio's config, forking and CANCEL Reasons, the
//! sipp scenarios against stand-ins) and the registration of alice and bob
//! by today's sipis run without it.
//!
//! Needs `kamailio` and `sipp` (`apt-get install kamailio sip-tester`).
//! The tests run one at a time (a lock in the harness); about 40 s in all.

#[path = "support/kamailio.rs"]
mod kamailio;

#[path = "support/calls.rs"]
mod calls;
#[path = "support/ports.rs"]
mod ports;

use calls::*;
use std::time::Duration;

/// How long the test waits for sipis's `incoming_call` push after the
/// caller starts.
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// `+sip.pnsreg` sipis advertises (calls.pnsreg, default 121).
const PNSREG: &str = "121";

// ---- checks shared by the tests ------------------------------------------------

/// The caller's INVITE: the Call-ID every other leg must carry.
fn caller_invite(caller: &SippRun) -> (&SipMsg, String) {
    let invite = caller.expect_sent_request("INVITE");
    let call_id = invite.call_id().expect("caller's Call-ID").to_string();
    (invite, call_id)
}

/// The `incoming_call` push matches the call and the device
/// (`device_name`: the admin API's name, if the device was put there).
fn check_incoming_call_push(
    push: &Push,
    account: &Account,
    prid: &str,
    device_name: Option<&str>,
    caller: &SippRun,
    started_ms: u64,
) {
    let (invite, call_id) = caller_invite(caller);
    let b = &push.body;
    assert_eq!(push.method, "POST", "push request: {b}");
    assert_eq!(push.path, "/push", "push request path");
    assert!(
        push.headers
            .get("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "push Content-Type: {:?}",
        push.headers.get("content-type")
    );
    let id = b["id"].as_str().unwrap_or("");
    assert!(
        id.len() == 16 && id.bytes().all(|c| c.is_ascii_hexdigit()),
        "push id should be 16 hex digits: {b}"
    );
    assert_eq!(b["kind"], "incoming_call", "{b}");
    assert_eq!(b["account"].as_u64(), Some(account.id), "push account: {b}");
    let d = &b["device"];
    if let Some(name) = device_name {
        assert_eq!(d["id"], name, "push device id: {b}");
    } else {
        assert!(
            d["id"].as_str().is_some_and(|s| !s.is_empty()),
            "push device id: {b}"
        );
    }
    assert_eq!(d["platform"], "apns", "{b}");
    assert_eq!(d["token"], prid, "push token = pn-prid: {b}");
    assert_eq!(
        d["topic"], APNS_TOPIC,
        "APNs topic = pn-param without the team id: {b}"
    );
    assert_eq!(d["environment"], "production", "{b}");
    let c = &b["call"];
    assert_eq!(
        c["call_id"].as_str(),
        Some(call_id.as_str()),
        "pushed call_id = the caller's Call-ID: {b}"
    );
    let from = invite.header("From").expect("caller's From");
    assert_eq!(
        c["caller_uri"].as_str(),
        Some(SipMsg::uri_of(from)),
        "caller_uri = the caller's From URI, without tag: {b}"
    );
    assert_eq!(c["caller_name"], CALLER_NAME, "caller_name: {b}");
    assert_eq!(c["callee"].as_str(), Some(account.aor.as_str()), "{b}");
    let ts = b["timestamp_ms"].as_u64().unwrap_or(0);
    assert!(
        ts + 1000 >= started_ms && ts <= unix_ms() + 1000,
        "timestamp_ms {ts} not within the test ({started_ms}..now): {b}"
    );
}

/// The caller heard sipis's 180 with `X-Sipis-Push-Status`, and Kamailio
/// received sipis's `100 Trying` (hop by hop: it never reaches the
/// caller) and that 180 from the account's shard port.
fn check_caller_ringing(peers: &Peers, caller: &SippRun, account: &Account) {
    let (_, call_id) = caller_invite(caller);
    let ringing = caller.expect_response(180, "INVITE");
    assert_eq!(
        ringing.header("X-Sipis-Push-Status"),
        Some("Push-Notification-Sent"),
        "the caller's 180:\n{}",
        ringing.raw
    );
    let shard = format!("127.0.0.1:{}", peers.sipis().shard_port(account));
    let replies = peers.provider().replies_from(&call_id, &shard);
    assert!(
        replies.iter().any(|l| l.starts_with("RX-RPL 100 ")),
        "Kamailio got no 100 Trying from sipis ({shard}) for {call_id}; it logged:\n{}",
        peers.provider().traffic(&call_id).join("\n")
    );
    assert!(
        replies
            .iter()
            .any(|l| l.starts_with("RX-RPL 180 ")
                && l.contains("push-status=[Push-Notification-Sent]")),
        "Kamailio got no 180 with X-Sipis-Push-Status from sipis ({shard}); it logged:\n{}",
        peers.provider().traffic(&call_id).join("\n")
    );
}

/// The phone registered the RFC 8599 way: challenged in realm "sipis"
/// (401), then 200 with Feature-Caps `+sip.pns="apns"` and
/// `+sip.pnsreg`.
fn check_phone_registration(phone: &SippRun) {
    let challenge = phone.expect_response(401, "REGISTER");
    let auth = challenge
        .header("WWW-Authenticate")
        .unwrap_or_else(|| panic!("401 without WWW-Authenticate:\n{}", challenge.raw));
    assert!(
        auth.starts_with("Digest") && auth.contains(&format!("realm=\"{PHONE_REALM}\"")),
        "phone challenge: {auth}"
    );
    let ok = phone.expect_response(200, "REGISTER");
    let caps = ok
        .header("Feature-Caps")
        .unwrap_or_else(|| panic!("REGISTER 200 without Feature-Caps:\n{}", ok.raw));
    assert!(
        caps.contains("+sip.pns=\"apns\"") && caps.contains(&format!("+sip.pnsreg=\"{PNSREG}\"")),
        "Feature-Caps: {caps}"
    );
}

/// The INVITE the phone got: one (no duplicates), after its REGISTER's
/// 200, with the caller's Call-ID, From (display name and URI), the callee
/// as To, the caller's SDP, and no `pn-` anywhere.
fn check_phone_invite<'a>(phone: &'a SippRun, caller: &SippRun, callee_aor: &str) -> &'a SipMsg {
    let (c_invite, call_id) = caller_invite(caller);
    let invite = phone.expect_request("INVITE");
    let branches: std::collections::BTreeSet<&str> = phone
        .received_requests("INVITE")
        .iter()
        .filter_map(|m| m.branch())
        .collect();
    assert_eq!(
        branches.len(),
        1,
        "the phone got more than one INVITE transaction:\n{}",
        phone.transcript()
    );
    if let Some(ok) = phone.received_response(200, "REGISTER") {
        assert!(
            phone.index_of(invite) > phone.index_of(ok),
            "the INVITE came before the REGISTER's 200:\n{}",
            phone.transcript()
        );
    }
    assert_eq!(
        invite.call_id(),
        Some(call_id.as_str()),
        "the phone's INVITE carries the caller's (the pushed) Call-ID:\n{}",
        invite.raw
    );
    let from = invite.header("From").expect("From");
    let c_from = c_invite.header("From").expect("caller's From");
    assert_eq!(
        SipMsg::display_name(from).as_deref(),
        Some(CALLER_NAME),
        "From display name of the phone's INVITE: {from}"
    );
    assert_eq!(
        SipMsg::uri_of(from),
        SipMsg::uri_of(c_from),
        "From URI of the phone's INVITE"
    );
    let to = invite.header("To").expect("To");
    assert_eq!(SipMsg::uri_of(to), callee_aor, "To of the phone's INVITE");
    assert!(
        SipMsg::tag_of(to).is_none(),
        "To tag in an initial INVITE: {to}"
    );
    assert!(
        invite
            .header("Content-Type")
            .is_some_and(|t| t.starts_with("application/sdp")),
        "the phone's INVITE has no SDP:\n{}",
        invite.raw
    );
    assert_eq!(invite.body, c_invite.body, "the caller's SDP, unchanged");
    assert!(
        !invite.raw.to_ascii_lowercase().contains("pn-"),
        "pn-* parameters in the INVITE the phone got:\n{}",
        invite.raw
    );
    invite
}

/// `Reason: SIP;cause=200;text="Call completed elsewhere"` → `("SIP",
/// "200", "Call completed elsewhere")`.
fn reason_parts(value: &str) -> (String, String, String) {
    let mut parts = value.split(';');
    let proto = parts.next().unwrap_or("").trim().to_string();
    let (mut cause, mut text) = (String::new(), String::new());
    for p in parts {
        if let Some((k, v)) = p.split_once('=') {
            match k.trim().to_ascii_lowercase().as_str() {
                "cause" => cause = v.trim().to_string(),
                "text" => text = v.trim().trim_matches('"').to_string(),
                _ => {}
            }
        }
    }
    (proto, cause, text)
}

fn assert_completed_elsewhere(cancel: &SipMsg) {
    let reasons = cancel.all_headers("Reason");
    assert!(
        reasons.iter().any(|r| reason_parts(r)
            == (
                "SIP".to_string(),
                "200".to_string(),
                "Call completed elsewhere".to_string()
            )),
        "CANCEL without Reason: SIP;cause=200;text=\"Call completed elsewhere\":\n{}",
        cancel.raw
    );
}

/// The late-wake transaction on the phone: INVITE, (its 180,) CANCEL of
/// that INVITE, its 200 and 487, and the ACK of the 487.
fn check_late_wake_cancel<'a>(phone: &'a SippRun, invite: &SipMsg) -> &'a SipMsg {
    let cancel = phone.expect_request("CANCEL");
    assert_eq!(cancel.call_id(), invite.call_id(), "CANCEL's Call-ID");
    assert_eq!(
        cancel.branch(),
        invite.branch(),
        "the CANCEL's Via branch must be the INVITE's (RFC 3261 §9.1):\n{}",
        cancel.raw
    );
    assert_eq!(
        cancel.request_uri(),
        invite.request_uri(),
        "CANCEL Request-URI"
    );
    assert!(
        phone.index_of(cancel) > phone.index_of(invite),
        "{}",
        phone.transcript()
    );
    phone.expect_sent_response(487, "INVITE");
    let ack = phone.expect_request("ACK");
    assert_eq!(ack.call_id(), invite.call_id());
    assert_eq!(ack.branch(), invite.branch(), "ACK of the 487: same branch");
    cancel
}

/// The 480 the caller got when no device woke, after about the device
/// wait, with `X-Sipis-Reason`.
fn check_caller_480(caller: &SippRun, wait: Duration) {
    let (invite, _) = caller_invite(caller);
    let r480 = caller.expect_response(480, "INVITE");
    assert_eq!(
        r480.header("X-Sipis-Reason"),
        Some("No-Response-From-Device"),
        "the caller's 480:\n{}",
        r480.raw
    );
    let after = r480.at - invite.at;
    let w = wait.as_secs_f64();
    assert!(
        after >= w - 0.25 && after <= w + 3.0,
        "480 {after:.2} s after the INVITE; the device wait is {w} s"
    );
}

// ---- the call flow (needs the call engine) ---------------------------------------

#[test]
fn answered_call_caller_hangs_up() {
    let mut peers = Peers::start("answered-caller-bye", true, SipisMode::Calls);
    let alice = peers.provision("alice");
    let prid = random_prid();
    // The device comes from the phone's own REGISTER; the phone then goes
    // to sleep (exits without unregistering).
    let reg = peers.phone("phone-register", "alice", &prid, None).wait();
    reg.assert_success();
    check_phone_registration(&reg);

    let started = unix_ms();
    let caller = peers.caller("caller", "caller_hangs_up.xml", "alice");
    let push = peers
        .mediator()
        .wait_push("incoming_call", None, PUSH_TIMEOUT);
    // The push "wakes" the phone.
    let phone = peers.phone("phone", "alice", &prid, Some("phone_answers.xml"));
    let caller = caller.wait();
    let phone = phone.wait();

    check_incoming_call_push(&push, &alice, &prid, None, &caller, started);
    check_caller_ringing(&peers, &caller, &alice);
    check_phone_registration(&phone);
    let (_, call_id) = caller_invite(&caller);
    let invite = check_phone_invite(&phone, &caller, &alice.aor);
    // The phone's answer reaches the caller with its SDP.
    let answer = phone.expect_sent_response(200, "INVITE");
    let c_ok = caller.expect_response(200, "INVITE");
    assert_eq!(c_ok.body, answer.body, "the phone's SDP, unchanged");
    let ack = phone.expect_request("ACK");
    assert_eq!(ack.call_id(), invite.call_id());
    // The caller's BYE reaches the phone, whose 200 reaches the caller.
    let bye = phone.expect_request("BYE");
    assert_eq!(bye.call_id(), Some(call_id.as_str()));
    caller.expect_response(200, "BYE");
    caller.assert_success();
    phone.assert_success();
    assert_eq!(
        peers
            .pushes()
            .iter()
            .filter(|p| p.kind() == "incoming_call")
            .count(),
        1,
        "one incoming_call push per device"
    );
}

#[test]
fn answered_call_phone_hangs_up() {
    let mut peers = Peers::start("answered-phone-bye", true, SipisMode::Calls);
    let alice = peers.provision("alice");
    let prid = random_prid();
    // The device comes from the admin API.
    peers.put_device(&alice, "iphone", &prid);

    let started = unix_ms();
    let caller = peers.caller("caller", "caller_waits_for_bye.xml", "alice");
    let push = peers
        .mediator()
        .wait_push("incoming_call", None, PUSH_TIMEOUT);
    let phone = peers.phone("phone", "alice", &prid, Some("phone_answers_hangs_up.xml"));
    let caller = caller.wait();
    let phone = phone.wait();

    check_incoming_call_push(&push, &alice, &prid, Some("iphone"), &caller, started);
    check_caller_ringing(&peers, &caller, &alice);
    check_phone_registration(&phone);
    let (_, call_id) = caller_invite(&caller);
    check_phone_invite(&phone, &caller, &alice.aor);
    let answer = phone.expect_sent_response(200, "INVITE");
    assert_eq!(
        caller.expect_response(200, "INVITE").body,
        answer.body,
        "the phone's SDP, unchanged"
    );
    // The phone's BYE reaches the caller; the caller's 200 reaches the phone.
    phone.expect_sent_request("BYE");
    let bye = caller.expect_request("BYE");
    assert_eq!(bye.call_id(), Some(call_id.as_str()), "BYE's Call-ID");
    let c_ok = caller.expect_response(200, "INVITE");
    assert_eq!(
        SipMsg::tag_of(bye.header("From").unwrap_or("")),
        SipMsg::tag_of(c_ok.header("To").unwrap_or("")),
        "the BYE comes from the dialog the caller's 200 set up"
    );
    phone.expect_response(200, "BYE");
    caller.assert_success();
    phone.assert_success();
}

#[test]
fn caller_cancels_before_wake_phone_gets_invite_then_plain_cancel() {
    let mut peers = Peers::start("late-wake-caller-cancel", true, SipisMode::Calls);
    let alice = peers.provision("alice");
    let prid = random_prid();
    let reg = peers.phone("phone-register", "alice", &prid, None).wait();
    reg.assert_success();

    let started = unix_ms();
    let caller = peers.caller("caller", "caller_cancels.xml", "alice");
    let push = peers
        .mediator()
        .wait_push("incoming_call", None, PUSH_TIMEOUT);
    // The phone wakes only after the caller has gone.
    let caller = caller.wait();
    caller.assert_success();
    check_incoming_call_push(&push, &alice, &prid, None, &caller, started);
    check_caller_ringing(&peers, &caller, &alice);
    let (c_invite, call_id) = caller_invite(&caller);
    assert!(
        caller
            .expect_sent_request("CANCEL")
            .header("Reason")
            .is_none(),
        "this caller hangs up without a Reason"
    );
    caller.expect_response(487, "INVITE");
    // sipis itself answered Kamailio's CANCEL and ended the INVITE.
    let shard = format!("127.0.0.1:{}", peers.sipis().shard_port(&alice));
    let replies = peers.provider().replies_from(&call_id, &shard);
    assert!(
        replies.iter().any(|l| l.starts_with("RX-RPL 487 ")),
        "no 487 from sipis ({shard}):\n{}",
        peers.provider().traffic(&call_id).join("\n")
    );

    let phone = peers
        .phone(
            "phone",
            "alice",
            &prid,
            Some("phone_rings_until_cancel.xml"),
        )
        .wait();
    let woke = phone
        .sent_request("REGISTER")
        .map(|m| m.at - c_invite.at)
        .unwrap_or(0.0);
    assert!(
        woke < LATE_WAKE_WINDOW.as_secs_f64() - 2.0,
        "the phone registered {woke:.1} s after the call started: too close to the late-wake window"
    );
    check_phone_registration(&phone);
    let invite = check_phone_invite(&phone, &caller, &alice.aor);
    let cancel = check_late_wake_cancel(&phone, invite);
    // The caller hung up without a Reason: a plain CANCEL (the late wake),
    // above all not "Call completed elsewhere" (CallKit would then not
    // list the call as missed).
    assert!(
        cancel.all_headers("Reason").is_empty(),
        "the caller hung up without a Reason, so the late phone's CANCEL must be plain:\n{}",
        cancel.raw
    );
    phone.assert_success();
}

#[test]
fn answered_elsewhere_late_phone_gets_cancel_with_call_completed_elsewhere() {
    let mut peers = Peers::start("late-wake-answered-elsewhere", true, SipisMode::Calls);
    let bob = peers.provision("bob");
    let prid = random_prid();
    peers.put_device(&bob, "iphone", &prid);
    let fork_port = peers.provider().fork_port;
    // Bob's desk phone, registered at the provider directly (Kamailio's
    // static second branch): answers 1 s after the INVITE.
    let other = peers.sipp(
        SippSpec::new("other-device", "other_device_answers.xml")
            .port(fork_port)
            .service("bob")
            .pause_ms(1000),
    );
    wait_listening(fork_port);

    let started = unix_ms();
    let caller = peers.caller("caller", "caller_hangs_up.xml", "bob");
    let push = peers
        .mediator()
        .wait_push("incoming_call", None, PUSH_TIMEOUT);
    let caller = caller.wait();
    let other = other.wait();
    caller.assert_success();
    other.assert_success();
    check_incoming_call_push(&push, &bob, &prid, Some("iphone"), &caller, started);
    check_caller_ringing(&peers, &caller, &bob);
    let (_, call_id) = caller_invite(&caller);
    assert_eq!(
        caller.expect_response(200, "INVITE").body,
        other.expect_sent_response(200, "INVITE").body,
        "the desk phone answered"
    );
    // Kamailio CANCELled sipis's branch; sipis answered it and ended the
    // INVITE (487).
    let shard = format!("127.0.0.1:{}", peers.sipis().shard_port(&bob));
    let replies = peers.provider().replies_from(&call_id, &shard);
    assert!(
        replies
            .iter()
            .any(|l| l.starts_with("RX-RPL 200 ") && l.contains("CANCEL"))
            && replies.iter().any(|l| l.starts_with("RX-RPL 487 ")),
        "sipis ({shard}) did not answer Kamailio's CANCEL with 200 and 487:\n{}",
        peers.provider().traffic(&call_id).join("\n")
    );

    // Now bob's iPhone wakes.
    let phone = peers
        .phone("phone", "bob", &prid, Some("phone_rings_until_cancel.xml"))
        .wait();
    check_phone_registration(&phone);
    let invite = check_phone_invite(&phone, &caller, &bob.aor);
    let cancel = check_late_wake_cancel(&phone, invite);
    assert_completed_elsewhere(cancel);
    phone.assert_success();
}

#[test]
fn no_phone_wakes_caller_gets_480_with_reason_header() {
    let mut peers = Peers::start("no-wake-480", true, SipisMode::Calls);
    let alice = peers.provision("alice");
    let prid = random_prid();
    peers.put_device(&alice, "iphone", &prid);

    let started = unix_ms();
    let caller = peers.caller("caller", "caller_gets_480.xml", "alice");
    let push = peers
        .mediator()
        .wait_push("incoming_call", None, PUSH_TIMEOUT);
    // The mediator never starts a phone.
    let caller = caller.wait();
    check_incoming_call_push(&push, &alice, &prid, Some("iphone"), &caller, started);
    check_caller_ringing(&peers, &caller, &alice);
    check_caller_480(&caller, DEVICE_WAIT);
    caller.assert_success();

    let (invite, call_id) = caller_invite(&caller);
    let missed = peers
        .mediator()
        .wait_push("missed_call", Some(&call_id), Duration::from_secs(5));
    let b = &missed.body;
    assert_eq!(b["account"].as_u64(), Some(alice.id), "{b}");
    assert_eq!(b["device"]["token"], prid.as_str(), "{b}");
    assert_eq!(b["device"]["id"], "iphone", "{b}");
    assert_eq!(
        b["call"]["reason"], "no_response",
        "missed_call reason: {b}"
    );
    assert_eq!(
        b["call"]["caller_uri"].as_str(),
        Some(SipMsg::uri_of(invite.header("From").unwrap())),
        "{b}"
    );
    assert_eq!(
        b["call"]["callee"].as_str(),
        Some(alice.aor.as_str()),
        "{b}"
    );
    assert_ne!(b["id"], push.body["id"], "each push has its own id");
}

// ---- the peers, without the call engine ------------------------------------------

#[test]
fn kamailio_accepts_the_provider_config() {
    let out = check_config(
        "provider.cfg",
        PROVIDER_CONFIG,
        &[("@FORK_PORT@", free_udp_port().to_string())],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("config file ok"), "{out}");
}

#[test]
fn sipis_registers_alice_and_bob_at_the_provider() {
    let mut peers = Peers::start("registration", true, SipisMode::Registration);
    // provision() asserts the binding: Kamailio's location holds exactly
    // sip:<token>@127.0.0.1:<shard port> for each.
    let alice = peers.provision("alice");
    let bob = peers.provision("bob");
    let loc = peers.provider_mut().kam.dump();
    assert_eq!(
        loc.keys().map(String::as_str).collect::<Vec<_>>(),
        ["alice@kam.test", "bob@kam.test"]
    );
    // Registered through the outbound proxy: Request-URI sip:kam.test,
    // from each account's shard port.
    let log = peers.provider().kam.log();
    for a in [&alice, &bob] {
        let line = format!(
            "RX-REQ REGISTER sip:kam.test from 127.0.0.1:{} ",
            peers.sipis().shard_port(a)
        );
        assert!(log.contains(&line), "Kamailio's log has no {line:?}");
    }
    // The admin API takes the push device the call tests put.
    let prid = random_prid();
    let v = peers.put_device(&bob, "iphone", &prid);
    assert_eq!(v["prid"], prid.as_str(), "{v}");
    let list = peers
        .sipis()
        .admin
        .get(&format!("/accounts/{}/devices", bob.id));
    let devices = list["devices"].as_array().expect("devices");
    assert_eq!(devices.len(), 1, "{list}");
    assert_eq!(devices[0]["device"], "iphone");
    assert_eq!(devices[0]["provider"], "apns");
    assert_eq!(devices[0]["param"], PN_PARAM);
}

/// The peer behaves as the late-wake test assumes: when another branch
/// answers, Kamailio CANCELs sipis's branch with "Call completed
/// elsewhere". A sipp UAS stands in for sipis (registered as bob through
/// the phone's REGISTER scenario); bob's desk phone answers first.
#[test]
fn kamailio_cancel_of_forked_branch_carries_call_completed_elsewhere() {
    let mut peers = Peers::start("fork-cancel-reason", true, SipisMode::None);
    let standin_port = free_udp_port();
    let reg = phone_spec(
        "standin-register",
        peers.provider().addr(),
        "bob",
        &random_prid(),
        None,
    )
    .port(standin_port)
    .spawn(&peers.dir)
    .wait();
    reg.assert_success();
    let loc = peers.provider_mut().kam.dump();
    assert!(
        loc.get("bob@kam.test").is_some_and(|c| c.iter().any(|b| b
            .address
            .starts_with(&format!("sip:bob@127.0.0.1:{standin_port};")))),
        "{loc:?}"
    );
    let fork_port = peers.provider().fork_port;
    let standin = peers.sipp(
        SippSpec::new("standin", "phone_rings_until_cancel.xml")
            .port(standin_port)
            .service("bob"),
    );
    let other = peers.sipp(
        SippSpec::new("other-device", "other_device_answers.xml")
            .port(fork_port)
            .service("bob")
            .pause_ms(1000),
    );
    wait_listening(standin_port);
    wait_listening(fork_port);
    let caller = peers.caller("caller", "caller_hangs_up.xml", "bob").wait();
    let standin = standin.wait();
    let other = other.wait();
    caller.assert_success();
    standin.assert_success();
    other.assert_success();

    let (_, call_id) = caller_invite(&caller);
    let invite = standin.expect_request("INVITE");
    assert_eq!(invite.call_id(), Some(call_id.as_str()));
    let cancel = check_late_wake_cancel(&standin, invite);
    assert_completed_elsewhere(cancel);
    assert_eq!(
        caller.expect_response(200, "INVITE").body,
        other.expect_sent_response(200, "INVITE").body,
        "the desk phone's answer reached the caller"
    );
}

/// A caller's CANCEL without a Reason reaches the branch without one: what
/// sipis sees upstream when the caller simply hangs up, so the late phone's
/// CANCEL must then be plain.
#[test]
fn kamailio_relays_a_callers_cancel_without_reason() {
    let mut peers = Peers::start("caller-cancel", true, SipisMode::None);
    let standin_port = free_udp_port();
    phone_spec(
        "standin-register",
        peers.provider().addr(),
        "alice",
        &random_prid(),
        None,
    )
    .port(standin_port)
    .spawn(&peers.dir)
    .wait()
    .assert_success();
    assert!(peers
        .provider_mut()
        .kam
        .dump()
        .contains_key("alice@kam.test"));
    let standin = peers.sipp(
        SippSpec::new("standin", "phone_rings_until_cancel.xml")
            .port(standin_port)
            .service("alice"),
    );
    wait_listening(standin_port);
    let caller = peers.caller("caller", "caller_cancels.xml", "alice").wait();
    let standin = standin.wait();
    caller.assert_success();
    standin.assert_success();
    caller.expect_response(487, "INVITE");
    let invite = standin.expect_request("INVITE");
    let cancel = check_late_wake_cancel(&standin, invite);
    assert!(
        cancel.all_headers("Reason").is_empty(),
        "Kamailio added a Reason to a plain CANCEL:\n{}",
        cancel.raw
    );
}

/// The phone's scenarios against stand-ins, no Kamailio, no sipis: a
/// registrar answering like sipis (401, then 200 with Feature-Caps), then
/// the caller's scenario calling the phone's socket directly (as sipis's
/// INVITE will, with a Call-ID the REGISTER did not use). The same checks
/// as the real tests, so the checks are tested too.
#[test]
fn sipp_phone_scenarios_run_against_stand_ins() {
    let peers = Peers::start("sipp-phone", false, SipisMode::None);
    let flows = [
        ("answers", "phone_answers.xml", "caller_hangs_up.xml"),
        (
            "hangs-up",
            "phone_answers_hangs_up.xml",
            "caller_waits_for_bye.xml",
        ),
        ("late", "phone_rings_until_cancel.xml", "caller_cancels.xml"),
    ];
    for (name, ooc, caller_scenario) in flows {
        let registrar = peers.sipp(SippSpec::new(
            &format!("{name}-registrar"),
            "register_standin.xml",
        ));
        wait_listening(registrar.local_port);
        let prid = random_prid();
        let phone = phone_spec(
            &format!("{name}-phone"),
            registrar.addr(),
            "alice",
            &prid,
            Some(ooc),
        )
        .spawn(&peers.dir);
        let registrar = registrar.wait();
        registrar.assert_success();
        let register = registrar.received_requests("REGISTER");
        assert_eq!(register.len(), 2, "{}", registrar.transcript());
        let contact = register[0].header("Contact").unwrap();
        assert!(
            contact.contains(&format!(
                "pn-provider=apns;pn-prid={prid};pn-param={PN_PARAM}"
            )),
            "{contact}"
        );
        let authz = register[1].header("Authorization").unwrap();
        assert!(
            authz.contains("username=\"alice\"")
                && authz.contains("realm=\"sipis\"")
                && authz.contains("uri=\"sip:kam.test\""),
            "{authz}"
        );
        let caller = SippSpec::new(&format!("{name}-caller"), caller_scenario)
            .remote(phone.addr())
            .service("alice")
            .key("domain", DOMAIN)
            .key("caller_name", CALLER_NAME)
            .spawn(&peers.dir)
            .wait();
        let phone = phone.wait();
        caller.assert_success();
        phone.assert_success();
        check_phone_registration(&phone);
        let invite = check_phone_invite(&phone, &caller, "sip:alice@kam.test");
        if name == "late" {
            check_late_wake_cancel(&phone, invite);
        } else {
            assert_eq!(
                caller.expect_response(200, "INVITE").body,
                phone.expect_sent_response(200, "INVITE").body
            );
            let bye = if name == "answers" {
                phone.expect_request("BYE")
            } else {
                caller.expect_request("BYE")
            };
            assert_eq!(bye.call_id(), invite.call_id());
        }
    }
}

/// The caller's 480 scenario against a stand-in answering like sipis when
/// no device wakes (3 s).
#[test]
fn sipp_caller_gets_480_from_a_stand_in() {
    let peers = Peers::start("sipp-480", false, SipisMode::None);
    let standin = peers.sipp(
        SippSpec::new("standin", "no_device_standin.xml").pause_ms(DEVICE_WAIT.as_millis() as u64),
    );
    wait_listening(standin.local_port);
    let caller = SippSpec::new("caller", "caller_gets_480.xml")
        .remote(standin.addr())
        .service("alice")
        .key("domain", DOMAIN)
        .key("caller_name", CALLER_NAME)
        .spawn(&peers.dir)
        .wait();
    let standin = standin.wait();
    caller.assert_success();
    standin.assert_success();
    assert_eq!(
        caller
            .expect_response(180, "INVITE")
            .header("X-Sipis-Push-Status"),
        Some("Push-Notification-Sent")
    );
    check_caller_480(&caller, DEVICE_WAIT);
    let ack = standin.expect_request("ACK");
    assert_eq!(
        ack.branch(),
        caller.expect_sent_request("INVITE").branch(),
        "ACK of a 480: the INVITE's branch"
    );
}

/// The mediator stub speaks the push protocol's HTTP side: JSON POSTs
/// over one keep-alive connection, each answered with its id and "sent".
#[test]
fn mediator_stub_answers_pushes_over_keep_alive() {
    let m = Mediator::start();
    let url = m.url();
    let mut s =
        std::net::TcpStream::connect(url.trim_start_matches("http://").trim_end_matches("/push"))
            .expect("connect to the mediator");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for (i, kind) in ["incoming_call", "missed_call"].into_iter().enumerate() {
        let body = serde_json::json!({
            "id": format!("{i:016x}"), "kind": kind, "account": 7,
            "device": {"id": "d", "platform": "apns", "token": "t"},
            "call": {"call_id": "c@x", "caller_uri": "sip:a@b", "callee": "sip:c@d"},
            "timestamp_ms": 1,
        })
        .to_string();
        let req = format!(
            "POST /push HTTP/1.1\r\nHost: m\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        // In two writes: the stub must wait for the whole body.
        let (a, b) = req.split_at(req.len() - 10);
        std::io::Write::write_all(&mut s, a.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        std::io::Write::write_all(&mut s, b.as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let answer = loop {
            let n = std::io::Read::read(&mut s, &mut buf).expect("the mediator's answer");
            assert!(n > 0, "the mediator closed the connection");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some((head, json)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .expect("Content-Length")
                    .parse()
                    .unwrap();
                if json.len() >= len {
                    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
                    break serde_json::from_str::<serde_json::Value>(json).unwrap();
                }
            }
        };
        assert_eq!(answer["id"], format!("{i:016x}"));
        assert_eq!(answer["result"], "sent");
    }
    let missed = m.wait_push("missed_call", Some("c@x"), Duration::from_secs(1));
    assert_eq!(missed.body["account"], 7);
    assert_eq!(m.pushes().len(), 2);
    assert!(m.errors().is_empty(), "{:?}", m.errors());
}

#[test]
fn message_log_parser_reads_sipp_format() {
    let sent = "OPTIONS sip:a@b SIP/2.0\r\ni: x1\r\nf: \"A \\\"B\\\"\" <sip:a@b>;tag=1\r\n\
                Subject: one\r\n  two\r\nl: 3\r\n\r\nabc";
    let received = "SIP/2.0 200 OK\r\nCSeq: 7 OPTIONS\r\nl:0\r\n\r\n";
    let sep = "-----------------------------------------------";
    let log = format!(
        "{sep} 2026-11-22 00:41:35.752260\nUDP message sent ({} bytes):\n\n{sent}\n\n\
         {sep} 2026-11-22 00:41:36.002260\nUDP message received [{}] bytes :\n\n{received}\n\n",
        sent.len(),
        received.len()
    );
    let m = parse_message_log(&log);
    assert_eq!(m.len(), 2, "{m:?}");
    assert!(m[0].sent && !m[1].sent);
    assert_eq!(m[0].method(), Some("OPTIONS"));
    assert_eq!(m[0].request_uri(), Some("sip:a@b"));
    assert_eq!(m[0].call_id(), Some("x1"));
    assert_eq!(m[0].header("subject"), Some("one two"));
    assert_eq!(m[0].body, "abc");
    let from = m[0].header("From").unwrap();
    assert_eq!(SipMsg::display_name(from).as_deref(), Some("A \"B\""));
    assert_eq!(SipMsg::uri_of(from), "sip:a@b");
    assert_eq!(SipMsg::tag_of(from), Some("1"));
    assert_eq!(m[1].status(), Some(200));
    assert_eq!(m[1].cseq_method(), Some("OPTIONS"));
    assert!((m[1].at - m[0].at - 0.25).abs() < 1e-6);
    assert_eq!(
        reason_parts("SIP ; cause=200 ;text=\"Call completed elsewhere\""),
        (
            "SIP".into(),
            "200".into(),
            "Call completed elsewhere".into()
        )
    );
}
