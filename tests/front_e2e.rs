//! The TCP/TLS front (issue 11) against the live `sipis serve`, with phones
//! as real TCP and TLS clients on loopback and the provider as a UDP peer:
//!
//! - a phone registers over TCP (digest), its CRLFCRLF ping gets a CRLF
//!   pong, and a call from the provider reaches it over its connection,
//!   although its Contact names an address where nothing listens; the INVITE
//!   says `SIP/2.0/TCP` in its Via and `;transport=tcp` in its Contact, and
//!   ACK and BYE follow over the same connection;
//! - the same over TLS (rustls client trusting a CA made by the test);
//! - a closed connection removes the binding at once: the next call finds
//!   no device and is answered `480` without waiting;
//! - the limits hold while other clients are served: per-IP connection
//!   cap, a message that never completes (slowloris), an oversize message,
//!   a connection that never registers; each counted in `/metrics`.

#[path = "support/certs.rs"]
mod certs;
#[path = "support/http1.rs"]
mod http1;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/serve.rs"]
mod serve;

use serve::*;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

const PROVIDER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));

/// A SIP client over a byte stream (TCP, or TLS over TCP).
struct StreamPhone<S: Read + Write> {
    s: S,
    buf: Vec<u8>,
    local: SocketAddr,
    transport: &'static str,
    seq: u32,
}

/// Bytes of one whole message at the front of `buf`, if there.
fn whole(buf: &[u8]) -> Option<usize> {
    let text = String::from_utf8_lossy(buf);
    let head = text.find("\r\n\r\n")? + 4;
    let len = header(&text[..head], "Content-Length")
        .or_else(|| header(&text[..head], "l"))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= head + len).then_some(head + len)
}

impl<S: Read + Write> StreamPhone<S> {
    fn send(&mut self, msg: &str) {
        self.s.write_all(msg.as_bytes()).expect("write to sipis");
        self.s.flush().unwrap();
    }

    /// The next message within `timeout`; `None` on timeout or close.
    fn recv(&mut self, timeout: Duration) -> Option<String> {
        let end = Instant::now() + timeout;
        loop {
            // Skip CRLF pongs between messages.
            while self.buf.starts_with(b"\r\n") {
                self.buf.drain(..2);
            }
            if let Some(n) = whole(&self.buf) {
                let m = String::from_utf8_lossy(&self.buf[..n]).into_owned();
                self.buf.drain(..n);
                return Some(m);
            }
            if Instant::now() >= end {
                return None;
            }
            let mut chunk = [0u8; 8192];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
    }

    /// Raw bytes within `timeout` (for the pong).
    fn recv_raw(&mut self, want: usize, timeout: Duration) -> Vec<u8> {
        let end = Instant::now() + timeout;
        while self.buf.len() < want && Instant::now() < end {
            let mut chunk = [0u8; 64];
            match self.s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
        }
        std::mem::take(&mut self.buf)
    }

    /// Whether sipis closed the connection within `timeout`.
    fn closed_within(&mut self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            let mut chunk = [0u8; 512];
            match self.s.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }

    fn request(
        &mut self,
        method: &str,
        ruri: &str,
        aor: &str,
        call_id: &str,
        extra: &str,
    ) -> String {
        self.seq += 1;
        format!(
            "{method} {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/{t} {me};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <{aor}>;tag={tag}\r\n\
             To: <{aor}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {seq} {method}\r\n\
             {extra}\
             Content-Length: 0\r\n\r\n",
            t = self.transport,
            me = self.local,
            branch = fresh("z9hG4bK"),
            tag = fresh("t"),
            seq = self.seq,
        )
    }

    /// REGISTER with digest; binds `contact`. The final answer.
    fn register(&mut self, account: &Account, contact: &str) -> String {
        let call_id = fresh("reg-");
        let ruri = format!("sip:{DOMAIN}");
        let extra = format!("Contact: {contact}\r\nExpires: 600\r\n");
        let r = self.request("REGISTER", &ruri, &account.aor, &call_id, &extra);
        self.send(&r);
        let first = self
            .recv(Duration::from_secs(3))
            .expect("answer to REGISTER");
        assert_eq!(status_of(&first), Some(401), "{first}");
        let auth = answer_challenge(&first, &account.user, &account.password, &ruri);
        let r = self.request(
            "REGISTER",
            &ruri,
            &account.aor,
            &call_id,
            &format!("{extra}Authorization: {auth}\r\n"),
        );
        self.send(&r);
        self.recv(Duration::from_secs(3))
            .expect("answer to the authorised REGISTER")
    }
}

fn tcp_phone(from: IpAddr, to: SocketAddr) -> StreamPhone<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(from, 0).into()).unwrap();
    sock.connect(&to.into())
        .unwrap_or_else(|e| panic!("connect to sipis's TCP port {to}: {e}"));
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let local = s.local_addr().unwrap();
    StreamPhone {
        s,
        buf: Vec::new(),
        local,
        transport: "TCP",
        seq: 0,
    }
}

/// An answer to `req` from the phone: its Via, From, Call-ID, CSeq, To
/// with `tag`, and `extra` lines.
fn answer(req: &str, code: u16, reason: &str, tag: &str, extra: &str) -> String {
    let vias: Vec<&str> = req
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("via:"))
        .collect();
    let to = header(req, "To").unwrap();
    let to = if to.contains(";tag=") {
        to.to_string()
    } else {
        format!("{to};tag={tag}")
    };
    format!(
        "SIP/2.0 {code} {reason}\r\n{}\r\nFrom: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}Content-Length: 0\r\n\r\n",
        vias.join("\r\n"),
        header(req, "From").unwrap(),
        header(req, "Call-ID").unwrap(),
        header(req, "CSeq").unwrap(),
    )
}

/// The provider's INVITE for `account` (to its shard's port, by token).
fn provider_invite(uac: &mut Uac, sipis: &Serve, account: &Account) -> String {
    let ruri = format!("sip:{}@{}", account.token, sipis.shard_of(account));
    let call_id = fresh("call-");
    let r = uac.request(
        "INVITE",
        &ruri,
        &account.aor,
        &call_id,
        "Contact: <sip:caller@127.0.0.1>\r\n",
    );
    uac.send(sipis.shard_of(account), &r);
    r
}

/// Waits for a final answer on the provider's side (skipping 100/18x).
fn provider_final(uac: &Uac, timeout: Duration) -> Option<String> {
    uac.until_final(timeout)
        .into_iter()
        .rfind(|m| status_of(m).is_some_and(|s| s >= 200))
}

/// Waits (up to 3 s) until `name` reaches `want` (shards publish their
/// counters every second).
fn wait_metric(sipis: &Serve, name: &str, want: f64) {
    let end = Instant::now() + Duration::from_secs(3);
    while sipis.metric(name).unwrap_or(0.0) < want {
        assert!(
            Instant::now() < end,
            "{name} never reached {want}:\n{}",
            sipis.metrics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn front_config(extra: &str) -> String {
    format!("[tcp]\nenabled = true\n{extra}")
}

#[test]
fn a_phone_over_tcp_registers_pings_and_gets_its_call_over_its_connection() {
    let _g = serial();
    let sipis = Serve::start("tcp-call", 2, &front_config(""));
    let account = sipis.add_account("tcpalice", "secret-tcp-1");
    sipis.wait_account(&account, PROVIDER);

    let mut phone = tcp_phone(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5)), sipis.phone_addr());
    // A Contact where nothing listens: only the connection reaches it.
    let ok = phone.register(&account, "<sip:tcpalice@10.255.0.9:5999;transport=tcp>");
    assert_eq!(status_of(&ok), Some(200), "{ok}");
    assert!(
        ok.contains("10.255.0.9:5999;transport=tcp"),
        "the 200 lists the binding: {ok}"
    );

    // RFC 5626 §4.4.1: CRLFCRLF ping, CRLF pong.
    phone.send("\r\n\r\n");
    assert_eq!(phone.recv_raw(2, Duration::from_secs(2)), b"\r\n");

    let mut provider = Uac::bind(PROVIDER);
    let invite = provider_invite(&mut provider, &sipis, &account);
    let to_phone = phone
        .recv(Duration::from_secs(3))
        .expect("the INVITE over the phone's connection");
    assert!(
        to_phone.starts_with("INVITE sip:tcpalice@10.255.0.9:5999;transport=tcp SIP/2.0\r\n"),
        "{to_phone}"
    );
    let via = header(&to_phone, "Via").unwrap();
    assert!(
        via.starts_with(&format!("SIP/2.0/TCP 127.0.0.1:{}", sipis.sip_port)),
        "Via names the TCP listener: {via}"
    );
    let contact = header(&to_phone, "Contact").unwrap();
    assert!(contact.contains(";transport=tcp"), "{contact}");
    assert_eq!(
        header(&to_phone, "Call-ID"),
        header(&invite, "Call-ID"),
        "same Call-ID as the caller's"
    );

    phone.send(&answer(&to_phone, 180, "Ringing", "ph1", ""));
    phone.send(&answer(
        &to_phone,
        200,
        "OK",
        "ph1",
        "Contact: <sip:tcpalice@10.255.0.9:5999;transport=tcp>\r\n",
    ));
    let ok = provider_final(&provider, Duration::from_secs(3)).expect("200 to the caller");
    assert_eq!(status_of(&ok), Some(200), "{ok}");
    // ACK and BYE from the caller reach the phone over its connection.
    let to_tag = header(&ok, "To").unwrap().to_string();
    let ruri = header(&ok, "Contact")
        .unwrap()
        .trim_matches(|c| c == '<' || c == '>')
        .to_string();
    let dialog = |method: &str, cseq: u32| {
        format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={}\r\nMax-Forwards: 70\r\n\
             From: {}\r\nTo: {to_tag}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            provider.addr,
            fresh("z9hG4bK"),
            header(&invite, "From").unwrap(),
            header(&invite, "Call-ID").unwrap(),
        )
    };
    provider.send(sipis.shard_of(&account), &dialog("ACK", 1));
    let ack = phone.recv(Duration::from_secs(3)).expect("ACK over TCP");
    assert!(ack.starts_with("ACK "), "{ack}");
    provider.send(sipis.shard_of(&account), &dialog("BYE", 2));
    let bye = phone.recv(Duration::from_secs(3)).expect("BYE over TCP");
    assert!(bye.starts_with("BYE "), "{bye}");
    assert!(header(&bye, "Via").unwrap().starts_with("SIP/2.0/TCP "));
    phone.send(&answer(&bye, 200, "OK", "ph1", ""));
    let done = provider_final(&provider, Duration::from_secs(3)).expect("200 to the BYE");
    assert_eq!(status_of(&done), Some(200), "{done}");

    let m = sipis.metrics();
    assert_eq!(metric_in(&m, "sipis_keepalive_pings_total"), Some(1.0));
    assert!(metric_in(&m, "sipis_connections_open").unwrap() >= 1.0);
}

#[test]
fn a_closed_connection_removes_its_binding_at_once_and_the_next_call_pushes() {
    let _g = serial();
    let sipis = Serve::start("tcp-close", 2, &front_config(""));
    let account = sipis.add_account("tcpbob", "secret-tcp-2");
    sipis.wait_account(&account, PROVIDER);
    let contact = "<sip:tcpbob@10.255.0.9:5999;transport=tcp;pn-provider=apns;\
                   pn-prid=00fc13adff78512;pn-param=ABCDE12345.com.example.voip>";
    let mut phone = tcp_phone(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)), sipis.phone_addr());
    let ok = phone.register(&account, contact);
    assert_eq!(status_of(&ok), Some(200), "{ok}");

    // Connected: INVITEd over its connection, not pushed.
    let mut provider = Uac::bind(PROVIDER);
    provider_invite(&mut provider, &sipis, &account);
    let inv = phone.recv(Duration::from_secs(3)).expect("INVITE over TCP");
    phone.send(&answer(&inv, 486, "Busy Here", "ph3", ""));
    let fin = provider_final(&provider, Duration::from_secs(3)).expect("486");
    assert_eq!(status_of(&fin), Some(486), "{fin}");
    // Shards publish their counters every second.
    wait_metric(&sipis, "sipis_calls_total", 1.0);
    assert_eq!(sipis.metric("sipis_pushes_requested_total"), Some(0.0));

    drop(phone);
    std::thread::sleep(Duration::from_millis(300));
    // The binding went with the connection: the device is pushed (the push
    // fails here, no push service is configured: 480 at once).
    // (A new caller socket: the first call's 486, never ACKed here, is
    // still being retransmitted to the old one.)
    let mut provider = Uac::bind(PROVIDER);
    let started = Instant::now();
    provider_invite(&mut provider, &sipis, &account);
    let fin = provider_final(&provider, Duration::from_secs(5)).expect("a final answer");
    assert_eq!(status_of(&fin), Some(480), "{fin}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered at once, not after a timeout"
    );
    wait_metric(&sipis, "sipis_calls_total", 2.0);
    let m = sipis.metrics();
    assert_eq!(
        metric_in(&m, "sipis_pushes_requested_total"),
        Some(1.0),
        "{m}"
    );
    // Closed by the phone (a reset: it left the 486's ACK unread).
    assert_eq!(
        metric_in(&m, "sipis_connections_closed_total"),
        Some(1.0),
        "{m}"
    );
}

#[test]
fn each_connection_limit_holds_while_other_clients_are_served() {
    let _g = serial();
    let sipis = Serve::start(
        "tcp-limits",
        2,
        &front_config(
            "max_connections_per_ip = 3\nmessage_timeout = \"1s\"\nunregistered_timeout = \"2s\"\n",
        ),
    );
    let account = sipis.add_account("tcpcarol", "secret-tcp-3");
    sipis.wait_account(&account, PROVIDER);
    let to = sipis.phone_addr();
    let crowd = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7));

    // Per source IP: the fourth connection is closed at once.
    let mut held: Vec<_> = (0..3).map(|_| tcp_phone(crowd, to)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut fourth = tcp_phone(crowd, to);
    assert!(fourth.closed_within(Duration::from_secs(2)), "per-IP cap");

    // Slowloris: a head that never ends is cut after message_timeout.
    held[0].send("REGISTER sip:sec.test SIP/2.0\r\nVia: SIP/2.0/TCP x");
    // Oversize: a Content-Length past server.max_message_bytes.
    held[1].send(
        "MESSAGE sip:x@sec.test SIP/2.0\r\nVia: SIP/2.0/TCP 1.2.3.4;branch=z9hG4bKbig\r\n\
         Content-Length: 900000\r\n\r\n",
    );
    assert!(held[1].closed_within(Duration::from_secs(2)), "oversize");

    // Meanwhile a phone elsewhere registers and stays.
    let mut good = tcp_phone(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 8)), to);
    let ok = good.register(&account, "<sip:tcpcarol@10.255.0.9:5999;transport=tcp>");
    assert_eq!(status_of(&ok), Some(200), "{ok}");

    assert!(held[0].closed_within(Duration::from_secs(4)), "slowloris");
    // held[2] sent nothing and registered nothing: closed after 2 s idle.
    assert!(
        held[2].closed_within(Duration::from_secs(5)),
        "unregistered"
    );
    // The registered phone's connection is still there and answers pings.
    good.send("\r\n\r\n");
    assert_eq!(good.recv_raw(2, Duration::from_secs(2)), b"\r\n");

    let m = sipis.metrics();
    for (name, want) in [
        (
            "sipis_connections_refused_total{limit=\"max_connections_per_ip\"}",
            1.0,
        ),
        (
            "sipis_connections_closed_total{reason=\"slow_message\"}",
            1.0,
        ),
        ("sipis_connections_closed_total{reason=\"too_large\"}", 1.0),
    ] {
        assert_eq!(metric_in(&m, name), Some(want), "{name}:\n{m}");
    }
    assert!(
        metric_in(
            &m,
            "sipis_connections_closed_total{reason=\"unregistered\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
}

#[test]
fn a_phone_over_tls_registers_and_gets_its_call_over_its_connection() {
    let _g = serial();
    let certs = std::env::temp_dir().join(format!("sipis-front-tls-{}", std::process::id()));
    let c = certs::make_certs(&certs);
    let (cert, key, ca) = (c.cert, c.key, c.ca_der);
    let tls_port = ports::free_udp_port_run(1);
    let sipis = Serve::start(
        "tls-call",
        2,
        &format!(
            "[tls]\nport = {tls_port}\ncert = \"{}\"\nkey = \"{}\"\nhandshake_timeout = \"1s\"\n",
            cert.display(),
            key.display()
        ),
    );
    let account = sipis.add_account("tlsdave", "secret-tls-1");
    sipis.wait_account(&account, PROVIDER);

    let mut phone = tls_phone(tls_port, &ca).expect("TLS handshake with the first CA");
    let ok = phone.register(&account, "<sip:tlsdave@10.255.0.9:5999;transport=tls>");
    assert_eq!(status_of(&ok), Some(200), "{ok}");

    let mut provider = Uac::bind(PROVIDER);
    provider_invite(&mut provider, &sipis, &account);
    let to_phone = phone
        .recv(Duration::from_secs(3))
        .expect("the INVITE over TLS");
    let via = header(&to_phone, "Via").unwrap();
    assert!(
        via.starts_with(&format!("SIP/2.0/TLS 127.0.0.1:{tls_port}")),
        "Via names the TLS listener: {via}"
    );
    assert!(header(&to_phone, "Contact")
        .unwrap()
        .contains(";transport=tls"));
    phone.send(&answer(&to_phone, 486, "Busy Here", "ph2", ""));
    let ack = phone
        .recv(Duration::from_secs(3))
        .expect("the ACK of the 486");
    assert!(
        ack.starts_with("ACK sip:tlsdave@10.255.0.9:5999;transport=tls SIP/2.0"),
        "{ack}"
    );
    let fin = provider_final(&provider, Duration::from_secs(3)).expect("final answer");
    assert_eq!(status_of(&fin), Some(486), "{fin}");
    let m = sipis.metrics();
    assert_eq!(
        metric_in(&m, "sipis_connections_accepted_total{transport=\"tls\"}"),
        Some(1.0),
        "{m}"
    );

    // SIGHUP: a new certificate (from another CA) for new connections; the
    // established one goes on.
    let ca2 = certs::make_certs(&certs).ca_der;
    // SAFETY: signalling the child sipis.
    unsafe { libc::kill(sipis.pid() as libc::pid_t, libc::SIGHUP) };
    let end = Instant::now() + Duration::from_secs(5);
    while !sipis.log().contains("TLS certificate reloaded") {
        assert!(Instant::now() < end, "no reload logged:\n{}", sipis.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        tls_phone(tls_port, &ca).is_none(),
        "the old CA no longer verifies new connections"
    );
    let mut fresh_phone = tls_phone(tls_port, &ca2).expect("TLS handshake with the new CA");
    let ok = fresh_phone.register(&account, "<sip:tlsdave@10.255.0.9:5998;transport=tls>");
    assert_eq!(status_of(&ok), Some(200), "{ok}");
    phone.send("\r\n\r\n");
    assert_eq!(
        phone.recv_raw(2, Duration::from_secs(2)),
        b"\r\n",
        "the connection made before the reload still works"
    );

    // A client that never finishes its handshake is cut after
    // handshake_timeout; one that sends garbage at once; the phones above
    // are not disturbed.
    let mut mute = tcp_phone(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)),
        SocketAddr::from(([127, 0, 0, 1], tls_port)),
    );
    let mut garbage = tcp_phone(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)),
        SocketAddr::from(([127, 0, 0, 1], tls_port)),
    );
    garbage.send("REGISTER sip:sec.test SIP/2.0\r\n\r\n");
    assert!(
        garbage.closed_within(Duration::from_secs(2)),
        "not TLS: closed"
    );
    assert!(
        mute.closed_within(Duration::from_secs(4)),
        "handshake timeout"
    );
    let m = sipis.metrics();
    for (name, want) in [
        (
            "sipis_connections_closed_total{reason=\"handshake_timeout\"}",
            1.0,
        ),
        // The garbage, and the client that refused the reloaded
        // certificate (its alert ends the handshake).
        ("sipis_connections_closed_total{reason=\"tls_error\"}", 2.0),
        ("sipis_tls_handshake_failures_total", 2.0),
    ] {
        assert_eq!(metric_in(&m, name), Some(want), "{name}:\n{m}");
    }
    fresh_phone.send("\r\n\r\n");
    assert_eq!(fresh_phone.recv_raw(2, Duration::from_secs(2)), b"\r\n");
    let _ = std::fs::remove_dir_all(&certs);
}

type TlsPhone = StreamPhone<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

/// A phone over TLS trusting `ca` (DER); `None` if the handshake fails.
fn tls_phone(port: u16, ca: &[u8]) -> Option<TlsPhone> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.to_vec().into()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect to the TLS port");
    tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let local = tcp.local_addr().unwrap();
    let conn =
        rustls::ClientConnection::new(Arc::new(cfg), "127.0.0.1".try_into().unwrap()).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        if s.conn.complete_io(&mut s.sock).is_err() {
            return None;
        }
    }
    s.sock
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    Some(StreamPhone {
        s,
        buf: Vec::new(),
        local,
        transport: "TLS",
        seq: 0,
    })
}

#[test]
fn a_tls_phone_reconnecting_after_hundreds_of_others_resumes_its_session() {
    let _g = serial();
    let certs = std::env::temp_dir().join(format!("sipis-front-resume-{}", std::process::id()));
    let c = certs::make_certs(&certs);
    let (cert, key, ca) = (c.cert, c.key, c.ca_der);
    let tls_port = ports::free_udp_port_run(1);
    let _sipis = Serve::start(
        "tls-resume",
        2,
        &format!(
            "[tls]\nport = {tls_port}\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    let client = |ca: &[u8]| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.to_vec().into()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    };
    // One connection: handshake, then a ping whose pong comes after the
    // server's session tickets. Returns how the handshake went.
    let session = |cfg: &Arc<rustls::ClientConfig>| {
        let tcp = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let conn =
            rustls::ClientConnection::new(cfg.clone(), "127.0.0.1".try_into().unwrap()).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        s.write_all(b"\r\n\r\n").unwrap();
        let mut pong = [0u8; 2];
        s.read_exact(&mut pong).expect("the pong");
        assert_eq!(&pong, b"\r\n");
        s.conn.handshake_kind()
    };
    let phone = client(&ca);
    assert_eq!(session(&phone), Some(rustls::HandshakeKind::Full));
    // 300 other phones connect (more than a stateful cache of 256 holds).
    for _ in 0..300 {
        assert_eq!(session(&client(&ca)), Some(rustls::HandshakeKind::Full));
    }
    assert_eq!(
        session(&phone),
        Some(rustls::HandshakeKind::Resumed),
        "the first phone resumes its session"
    );
    let _ = std::fs::remove_dir_all(&certs);
}
