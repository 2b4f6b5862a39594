//! What the simulated caller and phones share: RFC 3261 §17 transactions
//! over unreliable UDP, kept small and separate from the engine's own
//! (a test must not prove the engine with the engine's code).
//!
//! * Client transactions retransmit their request: INVITE on Timer A
//!   (T1, doubling) until a response, Timer B after 64·T1; non-INVITE on
//!   Timer E (doubling up to T2, T2 once a provisional came), Timer F after
//!   64·T1 (§17.1.1.2, §17.1.2.2). A non-2xx final to INVITE is ACKed by
//!   the transaction (same branch, §17.1.1.3), its retransmissions too.
//! * Server transactions remember their last response and send it again
//!   for a retransmitted request (§17.2); an INVITE's final response — the
//!   2xx as the UAS core does (§13.3.1.4), a non-2xx as Timer G does — is
//!   retransmitted (T1 doubling up to T2) until the ACK, for 64·T1.
//! * A [`Dialog`] builds in-dialog requests (§12.2.1.1).

use super::Out;
use bytes::{Bytes, BytesMut};
use sipis::parser::{parse, response_to, HeaderName, Method, Writer, EMPTY_HEADER};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub const T1: Duration = Duration::from_millis(500);
pub const T2: Duration = Duration::from_secs(4);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CState {
    Calling,
    Proceeding,
    Completed,
    Accepted,
}

struct ClientTx {
    branch: String,
    method: String,
    dest: SocketAddr,
    request: Bytes,
    state: CState,
    retransmit: Option<Instant>,
    interval: Duration,
    /// Timer B/F while waiting, the end of lingering after a final.
    timeout: Instant,
    /// The ACK of a non-2xx final (INVITE).
    ack: Option<Bytes>,
}

struct ServerTx {
    branch: String,
    method: String,
    call_id: String,
    cseq: u32,
    peer: SocketAddr,
    last: Option<Bytes>,
    final_code: Option<u16>,
    acked: bool,
    retransmit: Option<Instant>,
    interval: Duration,
    /// Stop retransmitting (Timer H / the 2xx give-up).
    give_up: Option<Instant>,
    /// Forget the transaction.
    expires: Option<Instant>,
}

/// What the UA core passes up to the peer's logic.
#[derive(Debug, Clone)]
pub enum Input {
    /// A new request (not a retransmission, not an ACK).
    Request(Bytes),
    /// An ACK (matched to our INVITE answer by Call-ID and CSeq).
    Ack(Bytes),
    /// A response: INVITE provisional, the first final, every 2xx
    /// (`again` when one came before: a retransmission or another fork);
    /// a non-INVITE's first final.
    Response {
        method: String,
        code: u16,
        again: bool,
        data: Bytes,
    },
    /// A client transaction got no final response (Timer B/F).
    Timeout { method: String },
}

pub struct Ua {
    pub addr: SocketAddr,
    /// Over a stream (TCP/TLS): requests are not retransmitted (§17.1.1.2,
    /// §17.1.2.2), and — as many stacks do over TCP — neither is a 2xx.
    pub reliable: bool,
    clients: Vec<ClientTx>,
    servers: Vec<ServerTx>,
    counter: u64,
    /// Every message received, with its time and source.
    pub received: Vec<(Instant, SocketAddr, Bytes)>,
    /// Every message sent (retransmissions included).
    pub sent: Vec<(Instant, Bytes)>,
}

fn branch_of(data: &[u8]) -> Option<(String, String, String, u32)> {
    let mut h = [EMPTY_HEADER; 64];
    let m = parse(data, &mut h).ok()?;
    let via = m.top_via().ok()?;
    let branch = String::from_utf8_lossy(via.branch()?).into_owned();
    let cseq = m.cseq().ok()?;
    let call_id = String::from_utf8_lossy(m.call_id().ok()?).into_owned();
    Some((branch, cseq.method.as_str().to_owned(), call_id, cseq.seq))
}

impl Ua {
    pub fn new(addr: SocketAddr) -> Ua {
        Ua {
            addr,
            reliable: false,
            clients: Vec::new(),
            servers: Vec::new(),
            counter: 0,
            received: Vec::new(),
            sent: Vec::new(),
        }
    }

    /// A fresh identifier (tags, branches), unique in this UA.
    pub fn unique(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}{}x{}", self.addr.port(), self.counter)
    }

    pub fn branch(&mut self) -> String {
        self.unique("z9hG4bKsim")
    }

    fn out(&mut self, now: Instant, out: &mut Out, dest: SocketAddr, data: Bytes) {
        self.sent.push((now, data.clone()));
        out.push((dest, data));
    }

    /// Sends a request in a new client transaction (an ACK is just sent).
    pub fn send_request(&mut self, now: Instant, dest: SocketAddr, request: Bytes, out: &mut Out) {
        let (branch, method, _, _) = branch_of(&request).expect("a request we built");
        self.out(now, out, dest, request.clone());
        if method == "ACK" {
            return;
        }
        self.clients.push(ClientTx {
            branch,
            method,
            dest,
            request,
            // "Calling" stands for "Trying" in a non-INVITE transaction.
            state: CState::Calling,
            retransmit: (!self.reliable).then_some(now + T1),
            interval: T1,
            timeout: now + 64 * T1,
            ack: None,
        });
    }

    /// Sends bytes outside any transaction (an ACK for a 2xx, again).
    pub fn send_raw(&mut self, now: Instant, dest: SocketAddr, data: Bytes, out: &mut Out) {
        self.out(now, out, dest, data);
    }

    /// Whether a final response came for the client transaction `branch`.
    pub fn has_final(&self, branch: &str) -> bool {
        self.clients
            .iter()
            .any(|c| c.branch == branch && matches!(c.state, CState::Completed | CState::Accepted))
    }

    /// Answers `req` (as received from `from`): sent, kept for its
    /// retransmissions, and for an INVITE's final retransmitted until ACKed.
    #[allow(clippy::too_many_arguments)]
    pub fn respond(
        &mut self,
        now: Instant,
        req: &[u8],
        from: SocketAddr,
        code: u16,
        reason: &str,
        to_tag: &str,
        extra: &[(&str, String)],
        body: Option<&[u8]>,
        out: &mut Out,
    ) {
        let mut h = [EMPTY_HEADER; 64];
        let msg = parse(req, &mut h).expect("a request we parsed before");
        let mut buf = BytesMut::new();
        let mut w =
            response_to(&mut buf, &msg, code, reason, to_tag.as_bytes(), from).expect("response");
        for rr in msg.header_lines(HeaderName::RecordRoute) {
            if (101..300).contains(&code) {
                w.header("Record-Route", rr);
            }
        }
        for (n, v) in extra {
            w.header(n, v.as_bytes());
        }
        match body {
            Some(b) => {
                w.header("Content-Type", b"application/sdp");
                w.finish(b);
            }
            None => w.finish(b""),
        }
        let data = buf.freeze();
        let (branch, method, call_id, cseq) = branch_of(req).expect("parsed before");
        let i = match self
            .servers
            .iter()
            .position(|s| s.branch == branch && s.method == method)
        {
            Some(i) => i,
            None => {
                self.servers.push(ServerTx {
                    branch,
                    method: method.clone(),
                    call_id,
                    cseq,
                    peer: from,
                    last: None,
                    final_code: None,
                    acked: false,
                    retransmit: None,
                    interval: T1,
                    give_up: None,
                    expires: None,
                });
                self.servers.len() - 1
            }
        };
        let s = &mut self.servers[i];
        if s.final_code.is_some() {
            // A final was sent already (§17.2: no second final).
            return;
        }
        s.last = Some(data.clone());
        if code >= 200 {
            s.final_code = Some(code);
            s.expires = Some(now + 64 * T1 + T2);
            if method == "INVITE" {
                s.retransmit = (!self.reliable).then_some(now + T1);
                s.give_up = Some(now + 64 * T1);
            }
        }
        self.out(now, out, from, data);
    }

    /// Whether the server transaction of `req` sent a final response.
    pub fn answered(&self, req: &[u8]) -> bool {
        let Some((branch, method, _, _)) = branch_of(req) else {
            return false;
        };
        self.servers
            .iter()
            .any(|s| s.branch == branch && s.method == method && s.final_code.is_some())
    }

    /// A datagram arrived: what the peer's logic must see, if anything.
    pub fn receive(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        out: &mut Out,
    ) -> Option<Input> {
        let bytes = Bytes::copy_from_slice(data);
        self.received.push((now, from, bytes.clone()));
        let mut h = [EMPTY_HEADER; 64];
        let msg = parse(data, &mut h).ok()?;
        let (branch, cmethod, call_id, cseq) = branch_of(data)?;
        if msg.is_request() {
            let method = msg.method()?;
            if method == Method::Ack {
                if let Some(s) = self
                    .servers
                    .iter_mut()
                    .find(|s| s.method == "INVITE" && s.call_id == call_id && s.cseq == cseq)
                {
                    s.acked = true;
                    s.retransmit = None;
                }
                return Some(Input::Ack(bytes));
            }
            let method = method.as_str().to_owned();
            if let Some(i) = self
                .servers
                .iter()
                .position(|s| s.branch == branch && s.method == method)
            {
                if let Some(last) = self.servers[i].last.clone() {
                    self.out(now, out, from, last);
                }
                return None;
            }
            self.servers.push(ServerTx {
                branch,
                method,
                call_id,
                cseq,
                peer: from,
                last: None,
                final_code: None,
                acked: false,
                retransmit: None,
                interval: T1,
                give_up: None,
                expires: None,
            });
            return Some(Input::Request(bytes));
        }
        let code = msg.status()?;
        let i = self
            .clients
            .iter()
            .position(|c| c.branch == branch && c.method == cmethod)?;
        let c = &mut self.clients[i];
        let invite = c.method == "INVITE";
        let response = |again| {
            Some(Input::Response {
                method: cmethod.clone(),
                code,
                again,
                data: bytes.clone(),
            })
        };
        match (c.state, code) {
            (CState::Calling | CState::Proceeding, 100..=199) => {
                c.state = CState::Proceeding;
                if invite {
                    // Timer A and B stop (§17.1.1.2).
                    c.retransmit = None;
                    c.timeout = now + Duration::from_secs(3600);
                } else {
                    c.interval = T2;
                }
                response(false)
            }
            (CState::Calling | CState::Proceeding, 200..=299) if invite => {
                c.state = CState::Accepted;
                c.retransmit = None;
                c.timeout = now + 64 * T1;
                response(false)
            }
            (CState::Calling | CState::Proceeding, _) => {
                c.state = CState::Completed;
                c.retransmit = None;
                c.timeout = now + 64 * T1;
                if invite {
                    let ack = build_ack(&c.request, &msg);
                    c.ack = Some(ack.clone());
                    let dest = c.dest;
                    self.out(now, out, dest, ack);
                }
                response(false)
            }
            (CState::Accepted | CState::Completed, 200..=299) if invite => response(true),
            (CState::Completed, 300..) if invite => {
                if let Some(ack) = c.ack.clone() {
                    let dest = c.dest;
                    self.out(now, out, dest, ack);
                }
                None
            }
            _ => None,
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let c = self
            .clients
            .iter()
            .flat_map(|c| [c.retransmit, Some(c.timeout)]);
        let s = self
            .servers
            .iter()
            .flat_map(|s| [s.retransmit, s.give_up, s.expires]);
        c.chain(s).flatten().min()
    }

    pub fn handle_timeout(&mut self, now: Instant, out: &mut Out) -> Vec<Input> {
        let mut inputs = Vec::new();
        let mut sends = Vec::new();
        self.clients.retain_mut(|c| {
            if c.retransmit.is_some_and(|t| t <= now) {
                sends.push((c.dest, c.request.clone()));
                c.interval = if c.method == "INVITE" {
                    c.interval * 2
                } else if c.state == CState::Proceeding {
                    T2
                } else {
                    (c.interval * 2).min(T2)
                };
                c.retransmit = Some(now + c.interval);
            }
            if c.timeout <= now {
                if matches!(c.state, CState::Calling | CState::Proceeding) {
                    inputs.push(Input::Timeout {
                        method: c.method.clone(),
                    });
                }
                return false;
            }
            true
        });
        self.servers.retain_mut(|s| {
            if s.give_up.is_some_and(|t| t <= now) {
                s.retransmit = None;
                s.give_up = None;
            }
            if s.retransmit.is_some_and(|t| t <= now) && !s.acked {
                if let Some(last) = &s.last {
                    sends.push((s.peer, last.clone()));
                }
                s.interval = (s.interval * 2).min(T2);
                s.retransmit = Some(now + s.interval);
            }
            s.expires.is_none_or(|t| t > now)
        });
        for (dest, data) in sends {
            self.out(now, out, dest, data);
        }
        inputs
    }

    /// Messages received: requests of `method`.
    pub fn requests(&self, method: &str) -> Vec<Bytes> {
        self.received
            .iter()
            .filter(|(_, _, d)| super::method(d).as_deref() == Some(method))
            .map(|(_, _, d)| d.clone())
            .collect()
    }

    /// Messages received: responses to `method` (by CSeq).
    pub fn responses(&self, method: &str) -> Vec<Bytes> {
        self.received
            .iter()
            .filter(|(_, _, d)| {
                super::status(d).is_some() && super::cseq(d).is_some_and(|(_, m)| m == method)
            })
            .map(|(_, _, d)| d.clone())
            .collect()
    }

    /// Status codes of the responses to `method`, in order, duplicates removed.
    pub fn codes(&self, method: &str) -> Vec<u16> {
        let mut v: Vec<u16> = Vec::new();
        for r in self.responses(method) {
            let c = super::status(&r).unwrap_or(0);
            if v.last() != Some(&c) {
                v.push(c);
            }
        }
        v
    }
}

/// The ACK for a non-2xx final (§17.1.1.3): the INVITE's Request-URI, top
/// Via, From, Call-ID, Route; the response's To; CSeq n ACK.
fn build_ack(request: &[u8], resp: &sipis::parser::Message<'_, '_>) -> Bytes {
    let mut h = [EMPTY_HEADER; 64];
    let req = parse(request, &mut h).expect("our request");
    let mut buf = BytesMut::new();
    let mut w = Writer::request(&mut buf, Method::Ack, req.request_uri().unwrap_or_default());
    if let Some(v) = req.header(HeaderName::Via) {
        w.header("Via", v);
    }
    w.header("Max-Forwards", b"70");
    w.copy_named(&req, HeaderName::From);
    if let Some(to) = resp.header(HeaderName::To) {
        w.header("To", to);
    }
    w.copy_named(&req, HeaderName::CallId);
    let seq = req.cseq().map(|c| c.seq).unwrap_or(1);
    w.header("CSeq", format!("{seq} ACK").as_bytes());
    w.copy_named(&req, HeaderName::Route);
    w.finish(b"");
    buf.freeze()
}

/// One side of a dialog (RFC 3261 §12): what in-dialog requests are built
/// from.
#[derive(Debug, Clone)]
pub struct Dialog {
    pub call_id: String,
    /// Our From (name-addr, no tag) and tag.
    pub local: String,
    pub local_tag: String,
    /// The far end's name-addr (no tag) and tag.
    pub remote: String,
    pub remote_tag: String,
    /// The remote target (the far end's Contact URI).
    pub target: String,
    /// The route set (Record-Route, in the order §12.1 says).
    pub routes: Vec<String>,
    /// Our CSeq: the next request gets `cseq + 1`.
    pub cseq: u32,
    /// Our Contact URI.
    pub contact: String,
}

impl Dialog {
    /// An in-dialog request (§12.2.1.1); `cseq` overrides the next number
    /// (an ACK reuses its INVITE's).
    pub fn request(
        &mut self,
        via: &str,
        branch: &str,
        method: &str,
        cseq: Option<u32>,
        extra: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> Bytes {
        let n = match cseq {
            Some(n) => n,
            None => {
                self.cseq += 1;
                self.cseq
            }
        };
        let mut s = format!(
            "{method} {} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch={branch};rport\r\nMax-Forwards: 70\r\n",
            self.target
        );
        for r in &self.routes {
            s.push_str(&format!("Route: {r}\r\n"));
        }
        s.push_str(&format!(
            "From: {};tag={}\r\nTo: {};tag={}\r\nCall-ID: {}\r\nCSeq: {n} {method}\r\n",
            self.local, self.local_tag, self.remote, self.remote_tag, self.call_id
        ));
        if matches!(method, "INVITE" | "UPDATE") {
            s.push_str(&format!("Contact: <{}>\r\n", self.contact));
        }
        for (k, v) in extra {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() {
            s.push_str("Content-Type: application/sdp\r\n");
        }
        s.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut b = s.into_bytes();
        b.extend_from_slice(body);
        Bytes::from(b)
    }
}

/// The name-addr of a From/To value without its tag.
pub fn without_tag(value: &str) -> String {
    match value.find(";tag=") {
        Some(i) => {
            let rest = &value[i + 5..];
            let end = rest.find(';').map(|j| i + 5 + j).unwrap_or(value.len());
            format!("{}{}", &value[..i], &value[end..])
        }
        None => value.to_owned(),
    }
}

/// The URI inside a Contact value (`<...>` or bare).
pub fn contact_uri(value: &str) -> String {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => value[a + 1..b].to_owned(),
        _ => value.split(';').next().unwrap_or(value).trim().to_owned(),
    }
}
