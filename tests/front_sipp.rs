//! The TCP/TLS front with sipp as the phone: a softphone that is not ours
//! registers over one connection (`sipp -t t1`) and takes its calls over
//! it. Over TLS sipp (built without TLS on Debian) talks TCP to a local
//! `stunnel` in client mode, which verifies sipis's certificate against
//! the test's CA (`verifyChain`, `checkIP`) and carries the bytes in TLS.
//!
//! ```text
//!  sipp phone ──TCP──────────────────────────────▶ sipis [tcp]
//!  sipp phone ──TCP──▶ stunnel (client) ──TLS────▶ sipis [tls]
//!  test (provider) ──UDP INVITE/ACK/BYE/CANCEL───▶ sipis shard port
//! ```
//!
//! Each transport, one sipp run (tests/support/sipp/front_phone_*.xml):
//!
//! 1. REGISTER with RFC 8599 push parameters, `+sip.instance`, `reg-id`
//!    and `Supported: outbound`: `401`, digest, `200` with `Require:
//!    outbound` (sipp checks it; the test checks `Flow-Timer` too).
//! 2. A call from the provider: sipis INVITEs the phone over its
//!    connection at once (no push: the connection is open), Via naming
//!    sipis's TCP or TLS listener; 180, 200, ACK, BYE, 200 over it.
//! 3. A silent phone (a frozen app): the provider CANCELs with `Reason:
//!    SIP;cause=200` (answered elsewhere); sipis answers 200 and 487 and,
//!    as the phone sent no provisional, CANCELs it after
//!    `calls.late_wake_guard` with the same Reason, over the same
//!    connection; the phone answers 200 and 487 and gets the ACK.
//!
//! Assertions are on sipp's exit status and message log (`-trace_msg`),
//! the provider's answers, sipis's `/metrics`, and stunnel's log.
//!
//! Needs `sipp` and `stunnel4` (`apt-get install sip-tester stunnel4`).

// Its re-export of the Kamailio checks is for tests/calls_e2e.rs.
#[allow(unused_imports)]
#[path = "support/calls.rs"]
mod calls;
#[path = "support/certs.rs"]
mod certs;
use certs::make_certs;
#[path = "support/http1.rs"]
mod http1;
#[path = "support/kamailio.rs"]
mod kamailio;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/serve.rs"]
mod serve;

use calls::{random_prid, transcript, SipMsg, Sipp, SippSpec};
use serve::*;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

const PROVIDER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
/// `pn-param` of the phone: `<TeamID>.<bundle>.voip`.
const PN_PARAM: &str = "ABCDE12345.com.example.voip";
/// The phone's `+sip.instance`.
const INSTANCE: &str = "urn:uuid:6f1c2a7e-0b7d-4c55-9a3e-5d0f3e1c9a21";
/// `calls.late_wake_guard` (its default): how long sipis waits for a
/// provisional before it CANCELs a silent phone over a stream anyway.
const LATE_WAKE_GUARD: Duration = Duration::from_secs(1);
/// `calls.stream_answer_wait` (its default): a connected phone silent this
/// long after its INVITE is pushed as well (the frozen app).
const STREAM_ANSWER_WAIT: Duration = Duration::from_secs(2);
/// What the provider's CANCEL says, and the phone's must repeat.
const ANSWERED_ELSEWHERE: &str = "SIP;cause=200;text=\"Call completed elsewhere\"";
/// sipp's `-timeout`: it then exits failing; nothing here takes 10 s.
const SIPP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Front {
    Tcp,
    /// TLS, through stunnel.
    Tls,
}

impl Front {
    /// The Via transport and the `transport` URI parameter.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Front::Tcp => ("TCP", "tcp"),
            Front::Tls => ("TLS", "tls"),
        }
    }
}

#[test]
fn sipp_over_tcp_registers_with_outbound_takes_a_call_and_a_cancel_on_its_connection() {
    phone_on_a_stream(Front::Tcp);
}

#[test]
fn sipp_over_tls_through_stunnel_registers_takes_a_call_and_a_cancel_on_its_connection() {
    phone_on_a_stream(Front::Tls);
}

fn phone_on_a_stream(front: Front) {
    let _g = serial();
    let (via, tp) = front.names();
    let user = format!("sipp{tp}");
    let password = format!("secret-{user}-1");
    // TLS: certificates for 127.0.0.1 from a CA of this test, and another
    // CA stunnel must refuse.
    let certs = std::env::temp_dir().join(format!("sipis-front-sipp-{}", std::process::id()));
    let tls = (front == Front::Tls).then(|| {
        let good = make_certs(&certs.join("good"));
        let other = make_certs(&certs.join("other"));
        (ports::free_udp_port_run(1), good, other)
    });
    let config = match &tls {
        None => "[tcp]\nenabled = true\n".to_string(),
        Some((port, good, _)) => format!(
            "[tls]\nport = {port}\ncert = \"{}\"\nkey = \"{}\"\n",
            good.cert.display(),
            good.key.display()
        ),
    };
    let sipis = Serve::start(&format!("sipp-{tp}"), 2, &config);
    let listener = match &tls {
        None => sipis.phone_addr(),
        Some((port, ..)) => SocketAddr::from(([127, 0, 0, 1], *port)),
    };
    let account = sipis.add_account(&user, &password);
    sipis.wait_account(&account, PROVIDER);

    // Where sipp connects: sipis itself, or stunnel.
    let stunnel = tls.as_ref().map(|(_, good, other)| {
        Stunnel::start(
            &sipis.dir,
            &[
                ("phone", listener, &good.ca),
                ("wrong-ca", listener, &other.ca),
            ],
        )
    });
    let connect_to = match &stunnel {
        None => sipis.phone_addr(),
        Some(s) => s.addr("phone"),
    };

    let prid = random_prid();
    let phone = SippSpec::new("phone", "front_phone_register.xml")
        .ooc("front_phone_calls.xml")
        .transport("t1")
        .remote(connect_to)
        .service(&user)
        .auth(&user, &password)
        .auth_uri(DOMAIN)
        .key("domain", DOMAIN)
        .key("prid", &prid)
        .key("pnparam", PN_PARAM)
        .key("instance", INSTANCE)
        .key("via", via)
        .key("tp", tp)
        .timeout(SIPP_TIMEOUT)
        .recv_timeout(Duration::from_secs(10))
        .spawn(&sipis.dir);
    wait_logged(&phone, "the 200 to its REGISTER", |m| {
        !m.sent && m.status() == Some(200) && m.cseq_method() == Some("REGISTER")
    });

    // 2. A call it answers.
    let provider = Uac::bind(PROVIDER);
    let shard = sipis.shard_of(&account);
    let call = ProviderCall::new(&provider, &account, shard, "answer");
    provider.send(shard, &call.invite);
    let answers = provider.until_final(Duration::from_secs(5));
    let codes: Vec<u16> = answers.iter().filter_map(|m| status_of(m)).collect();
    assert_eq!(
        codes.last(),
        Some(&200),
        "the caller's answers: {answers:#?}\n{}",
        transcript(&phone.messages())
    );
    assert!(codes.contains(&180), "the phone's 180 reached the caller");
    let ok = answers.last().unwrap();
    provider.send(shard, &call.in_dialog(&provider, ok, "ACK", 1));
    provider.send(shard, &call.in_dialog(&provider, ok, "BYE", 2));
    let bye_ok = provider_answer(&provider, "BYE", Duration::from_secs(5));
    assert_eq!(status_of(&bye_ok), Some(200), "{bye_ok}");

    // 3. A call it does not answer, cancelled by the provider.
    let silent = ProviderCall::new(&provider, &account, shard, "silent");
    provider.send(shard, &silent.invite);
    let silent_sent = Instant::now();
    wait_logged(&phone, "the second INVITE", |m| {
        !m.sent && m.method() == Some("INVITE") && m.call_id() == Some(&silent.call_id)
    });
    provider.send(shard, &silent.cancel(&provider));
    let cancel_ok = provider_answer(&provider, "CANCEL", Duration::from_secs(3));
    assert_eq!(status_of(&cancel_ok), Some(200), "{cancel_ok}");
    let terminated = provider_answer(&provider, "INVITE", Duration::from_secs(3));
    assert_eq!(status_of(&terminated), Some(487), "{terminated}");
    provider.send(shard, &silent.ack_of(&provider, &terminated));

    let run = phone.wait();
    run.assert_success();
    let log = run.transcript();
    eprintln!("--- what sipp sent (→) and received (←) ---\n{log}");
    // sipp's own statistics: its one call (the registration) succeeded,
    // and both INVITEs ran the out-of-call scenario (none was discarded).
    assert_eq!(
        (
            sipp_counter(&run.screen, "Successful call"),
            sipp_counter(&run.screen, "Failed call")
        ),
        (Some(1), Some(0)),
        "sipp's screen:\n{}",
        run.screen
    );
    assert_eq!(
        run.errors
            .matches("Received out-of-call INVITE message, using the out-of-call scenario")
            .count(),
        2,
        "sipp's error log:\n{}",
        run.errors
    );
    assert!(
        run.screen.contains(" 0 out-of-call msg (discarded)"),
        "{}",
        run.screen
    );

    // 1. The registration, as sipp sent and received it.
    let register = run.expect_sent_request("REGISTER");
    assert_eq!(register.header("Supported"), Some("path, outbound"));
    let contact = register.header("Contact").unwrap();
    for part in [
        &format!(";transport={tp};pn-provider=apns;pn-prid={prid};pn-param={PN_PARAM}>"),
        &format!(";+sip.instance=\"<{INSTANCE}>\";reg-id=1"),
    ] {
        assert!(contact.contains(part.as_str()), "{contact}");
    }
    let challenge = run.expect_response(401, "REGISTER");
    assert!(
        challenge
            .header("WWW-Authenticate")
            .is_some_and(|w| w.contains(&format!("realm=\"{REALM}\""))),
        "{}",
        challenge.raw
    );
    let registered = run.expect_response(200, "REGISTER");
    assert_eq!(registered.header("Require"), Some("outbound"));
    // RFC 5626 §4.4.1: calls.flow_timer's default, 2 minutes.
    assert_eq!(registered.header("Flow-Timer"), Some("120"));
    let bound = registered.header("Contact").unwrap_or("");
    assert!(
        bound.contains(&format!("+sip.instance=\"<{INSTANCE}>\"")) && bound.contains("reg-id=1"),
        "the 200 echoes the outbound binding: {bound}"
    );

    // 2. The call came over the phone's connection: sipis's listener in
    // the Via, the phone's Contact without pn-* as Request-URI.
    let target = {
        let uri = SipMsg::uri_of(contact);
        uri.split(';')
            .filter(|p| !p.starts_with("pn-"))
            .collect::<Vec<_>>()
            .join(";")
    };
    let for_call = |method: &str, call_id: &str| -> &SipMsg {
        run.received()
            .find(|m| m.method() == Some(method) && m.call_id() == Some(call_id))
            .unwrap_or_else(|| panic!("sipp received no {method} for {call_id}:\n{log}"))
    };
    let invite = for_call("INVITE", &call.call_id);
    assert_eq!(
        invite.start_line,
        format!("INVITE {target} SIP/2.0"),
        "{}",
        invite.raw
    );
    let vias = invite.all_headers("Via");
    assert_eq!(vias.len(), 1, "sipis's own Via only: {vias:?}");
    assert!(
        vias[0].starts_with(&format!("SIP/2.0/{via} {listener};branch=z9hG4bK")),
        "the Via names sipis's {via} listener {listener}: {}",
        vias[0]
    );
    let their_contact = invite.header("Contact").unwrap();
    assert!(
        their_contact.contains(&format!(";transport={tp}")),
        "{their_contact}"
    );
    assert!(
        invite.header("From").unwrap().starts_with("\"answer\" <"),
        "the caller's From: {}",
        invite.raw
    );
    for method in ["ACK", "BYE"] {
        let m = for_call(method, &call.call_id);
        assert!(
            m.header("Via")
                .unwrap()
                .starts_with(&format!("SIP/2.0/{via} ")),
            "{}",
            m.raw
        );
    }

    // 3. The silent call: INVITE, then CANCEL with the provider's Reason,
    // no earlier than the guard time after the INVITE.
    let invite = for_call("INVITE", &silent.call_id);
    let cancel = for_call("CANCEL", &silent.call_id);
    assert_eq!(
        cancel.header("Reason"),
        Some(ANSWERED_ELSEWHERE),
        "{}",
        cancel.raw
    );
    // RFC 3261 §9.1: the CANCEL repeats the INVITE's Request-URI, top Via
    // (branch) and CSeq number.
    assert_eq!(cancel.request_uri(), invite.request_uri(), "{}", cancel.raw);
    assert_eq!(cancel.header("Via"), invite.header("Via"));
    assert_eq!(
        cancel.header("CSeq").unwrap().split(' ').next(),
        invite.header("CSeq").unwrap().split(' ').next()
    );
    assert!(
        cancel.at - invite.at >= LATE_WAKE_GUARD.as_secs_f64() - 0.1,
        "the CANCEL waited for the guard: {:.3} s after the INVITE\n{log}",
        cancel.at - invite.at
    );
    let ack = run
        .received()
        .find(|m| {
            m.method() == Some("ACK")
                && m.call_id() == Some(&silent.call_id)
                && m.branch() == invite.branch()
        })
        .unwrap_or_else(|| panic!("no ACK of the 487 on the INVITE's branch:\n{log}"));
    assert!(ack
        .header("Via")
        .unwrap()
        .starts_with(&format!("SIP/2.0/{via} ")));

    // One connection carried it all; the phone was never pushed: not for
    // the call it rang for at once, nor, once stream_answer_wait has
    // passed, for the one cancelled while it was silent.
    std::thread::sleep(
        (silent_sent + STREAM_ANSWER_WAIT + Duration::from_millis(300))
            .saturating_duration_since(Instant::now()),
    );
    let m = sipis.metrics();
    assert_eq!(
        metric_in(
            &m,
            &format!("sipis_connections_accepted_total{{transport=\"{tp}\"}}")
        ),
        Some(1.0),
        "{m}"
    );
    for (name, want) in [
        ("sipis_calls_total", 2.0),
        ("sipis_calls_answered_total", 1.0),
        ("sipis_pushes_requested_total", 0.0),
    ] {
        assert_eq!(metric_in(&m, name).unwrap_or(0.0), want, "{name}:\n{m}");
    }

    // stunnel verified sipis's certificate: with another CA it refuses.
    if let Some(st) = &stunnel {
        assert!(
            st.log().contains("Certificate accepted at depth=0"),
            "stunnel's log:\n{}",
            st.log()
        );
        let mut refused = TcpStream::connect(st.addr("wrong-ca")).unwrap();
        refused
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // A keep-alive ping: sipis would answer it with a CRLF pong.
        let _ = refused.write_all(b"\r\n\r\n");
        let mut buf = [0u8; 64];
        match refused.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!(
                "stunnel must close a connection whose server it cannot verify: {other:?}, {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
        let log = st.log();
        assert!(
            log.contains("certificate verify failed") || log.contains("Rejected by CERT"),
            "stunnel's log:\n{log}"
        );
    }
    let _ = std::fs::remove_dir_all(&certs);
}

/// The cumulative value of a counter of sipp's final statistics screen
/// (`  Failed call            |        0       |        0    `).
fn sipp_counter(screen: &str, name: &str) -> Option<u64> {
    screen
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with(name))?
        .rsplit('|')
        .find(|v| !v.trim().is_empty())?
        .trim()
        .parse()
        .ok()
}

/// Waits up to 5 s for sipp to log a message matching `f`.
fn wait_logged(phone: &Sipp, what: &str, f: impl Fn(&SipMsg) -> bool) -> SipMsg {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let msgs = phone.messages();
        if let Some(m) = msgs.iter().find(|m| f(m)) {
            return m.clone();
        }
        assert!(
            Instant::now() < end,
            "sipp did not log {what} within 5 s:\n{}",
            transcript(&msgs)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The next final answer to a `method` request of the provider's.
fn provider_answer(provider: &Uac, method: &str, timeout: Duration) -> String {
    let end = Instant::now() + timeout;
    while let Some(m) = provider.recv(end.saturating_duration_since(Instant::now())) {
        let cseq = header(&m, "CSeq").unwrap_or("");
        if status_of(&m).is_some_and(|s| s >= 200) && cseq.ends_with(&format!(" {method}")) {
            return m;
        }
    }
    panic!("no final answer to the provider's {method} within {timeout:?}");
}

/// One call from the provider to `account`'s Contact token.
struct ProviderCall {
    invite: String,
    ruri: String,
    call_id: String,
    branch: String,
    from: String,
    to: String,
}

impl ProviderCall {
    /// `name` is the caller's display name: it tells sipp's phone what to
    /// do (front_phone_calls.xml).
    fn new(provider: &Uac, account: &Account, shard: SocketAddr, name: &str) -> ProviderCall {
        let ruri = format!("sip:{}@{shard}", account.token);
        let call_id = fresh("call-");
        let branch = fresh("z9hG4bK");
        let from = format!("\"{name}\" <sip:carol@provider.test>;tag={}", fresh("t"));
        let to = format!("<{}>", account.aor);
        let invite = format!(
            "INVITE {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {me};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: {from}\r\n\
             To: {to}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:carol@{me}>\r\n\
             Content-Length: 0\r\n\r\n",
            me = provider.addr,
        );
        ProviderCall {
            invite,
            ruri,
            call_id,
            branch,
            from,
            to,
        }
    }

    /// ACK or BYE in the dialog the 2xx `ok` made.
    fn in_dialog(&self, provider: &Uac, ok: &str, method: &str, cseq: u32) -> String {
        let target = SipMsg::uri_of(header(ok, "Contact").unwrap()).to_string();
        format!(
            "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={}\r\nMax-Forwards: 70\r\n\
             From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            provider.addr,
            fresh("z9hG4bK"),
            self.from,
            header(ok, "To").unwrap(),
            self.call_id,
        )
    }

    /// The CANCEL of the INVITE (RFC 3261 §9.1), answered elsewhere.
    fn cancel(&self, provider: &Uac) -> String {
        format!(
            "CANCEL {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={};rport\r\nMax-Forwards: 70\r\n\
             From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 CANCEL\r\n\
             Reason: {ANSWERED_ELSEWHERE}\r\nContent-Length: 0\r\n\r\n",
            self.ruri, provider.addr, self.branch, self.from, self.to, self.call_id,
        )
    }

    /// The ACK of a final non-2xx answer (RFC 3261 §17.1.1.3).
    fn ack_of(&self, provider: &Uac, answer: &str) -> String {
        format!(
            "ACK {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={};rport\r\nMax-Forwards: 70\r\n\
             From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            self.ruri,
            provider.addr,
            self.branch,
            self.from,
            header(answer, "To").unwrap(),
            self.call_id,
        )
    }
}

/// stunnel in client mode, one service per `(name, TLS server, CA)`, each
/// accepting TCP on a free loopback port; it verifies the server's chain
/// against the CA and its IP address against the certificate.
struct Stunnel {
    child: Option<Child>,
    services: Vec<(String, SocketAddr)>,
    log: PathBuf,
}

impl Stunnel {
    fn start(dir: &Path, services: &[(&str, SocketAddr, &Path)]) -> Stunnel {
        let log = dir.join("stunnel.log");
        let mut text = format!(
            "foreground = yes\npid =\ndebug = info\noutput = {}\n",
            log.display()
        );
        let mut bound = Vec::new();
        for (name, server, ca) in services {
            let port = calls::free_tcp_port();
            text.push_str(&format!(
                "\n[{name}]\nclient = yes\naccept = 127.0.0.1:{port}\nconnect = {server}\n\
                 verifyChain = yes\nCAfile = {}\ncheckIP = {}\nsslVersionMin = TLSv1.2\n\
                 sni =\n",
                ca.display(),
                server.ip()
            ));
            bound.push((name.to_string(), SocketAddr::from(([127, 0, 0, 1], port))));
        }
        let config = dir.join("stunnel.conf");
        std::fs::write(&config, &text).unwrap();
        let out = std::fs::File::create(dir.join("stunnel.out")).unwrap();
        let mut cmd = Command::new("stunnel4");
        cmd.arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        // SAFETY: prctl is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run stunnel4 ({e}): apt-get install stunnel4"));
        let mut st = Stunnel {
            child: Some(child),
            services: bound,
            log,
        };
        // Up once every accept port is taken.
        let end = Instant::now() + Duration::from_secs(5);
        while st
            .services
            .iter()
            .any(|(_, a)| TcpListener::bind(a).is_ok())
        {
            if let Some(Ok(Some(status))) = st.child.as_mut().map(Child::try_wait) {
                st.child = None;
                panic!(
                    "stunnel exited at start-up ({status}):\n{}\n{}",
                    st.log(),
                    std::fs::read_to_string(dir.join("stunnel.out")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < end,
                "stunnel not listening within 5 s:\n{}",
                st.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        st
    }

    /// Where service `name` accepts plain TCP.
    fn addr(&self, name: &str) -> SocketAddr {
        self.services
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .expect("a stunnel service of this test")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- stunnel log ---\n{}\n---", self.log());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
