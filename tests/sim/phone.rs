//! A simulated phone: the app woken by a push. It REGISTERs to sipis with
//! RFC 8599 push parameters, answers the digest challenge, and answers an
//! INVITE as scripted (provisional answers, then a final after a delay, or
//! never). It retransmits its 2xx until the ACK (RFC 3261 §13.3.1.4),
//! answers CANCEL with 200 + 487 (§9.2), can hang up, and answers what
//! comes in the dialog (re-INVITE, INFO, UPDATE, BYE) with 200.

use super::ua::{contact_uri, without_tag, Dialog, Input, Ua};
use super::{cseq, header, headers, tag, Out, Peer};
use bytes::Bytes;
use sipis::digest::{write_authorization, Account, Challenge, Secret};
use sipis::parser::{parse, HeaderName, EMPTY_HEADER};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub const PHONE_SDP: &str = "v=0\r\no=alice 53655765 2353687637 IN IP4 203.0.113.9\r\ns=-\r\nc=IN IP4 203.0.113.9\r\nt=0 0\r\nm=audio 3456 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

/// How the phone answers an INVITE.
#[derive(Debug, Clone)]
pub struct Script {
    /// Sent at once (e.g. `[180]`).
    pub provisional: Vec<u16>,
    /// The final answer (`None`: rings until cancelled).
    pub final_code: Option<u16>,
    /// How long after the INVITE the final goes.
    pub final_after: Duration,
    /// BYE this long after answering.
    pub bye_after_answer: Option<Duration>,
    /// Provisional answers are reliable (RFC 3262: `Require: 100rel`,
    /// `RSeq`); a 183 carries the SDP answer (early media).
    pub reliable: bool,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            provisional: vec![180],
            final_code: Some(200),
            final_after: Duration::from_secs(2),
            bye_after_answer: None,
            reliable: false,
        }
    }
}

/// A call the phone was INVITEd to.
pub struct PhoneCall {
    pub call_id: String,
    pub invite: Bytes,
    from: SocketAddr,
    pub tag: String,
    final_at: Option<Instant>,
    /// The final status sent.
    pub final_code: Option<u16>,
    pub dialog: Option<Dialog>,
    bye_at: Option<Instant>,
    /// Its INVITE's 2xx was ACKed.
    pub acked: bool,
    bye_pending: bool,
    /// ACKs of the phone's re-INVITEs' 2xx, by CSeq.
    acks: Vec<(u32, Bytes)>,
    pub ended: bool,
}

pub struct SimPhone {
    pub ua: Ua,
    /// The engine's phone port.
    pub server: SocketAddr,
    pub user: String,
    pub domain: String,
    pub auth_user: String,
    pub password: String,
    /// `pn-provider`, `pn-prid`, `pn-param`.
    pub provider: String,
    pub token: String,
    pub param: Option<String>,
    pub expires: u32,
    pub contact_override: Option<String>,
    /// REGISTERs sent per wake (an app that registers twice while waking).
    pub registers_per_wake: u32,
    pub script: Script,

    reg_call_id: String,
    reg_tag: String,
    reg_cseq: u32,
    /// The branch of each REGISTER in flight and whether it carried
    /// credentials.
    reg_branches: Vec<(String, bool)>,
    extra_registers: Vec<Instant>,
    /// Final answers to our REGISTERs: (time, status, the response).
    pub register_answers: Vec<(Instant, u16, Bytes)>,
    pub calls: Vec<PhoneCall>,
    pub timeouts: Vec<String>,
    /// The OS froze the app: what arrives waits in its socket (`buffered`)
    /// and no timer runs, until a push thaws it.
    pub frozen: bool,
    pub buffered: Vec<(Instant, SocketAddr, Bytes)>,
}

impl SimPhone {
    pub fn new(addr: SocketAddr, server: SocketAddr, token: &str) -> SimPhone {
        let mut ua = Ua::new(addr);
        let reg_tag = ua.unique("regtag");
        SimPhone {
            server,
            user: "user1".into(),
            domain: "provider.test".into(),
            auth_user: "user1".into(),
            password: "pw1".into(),
            provider: "apns".into(),
            token: token.into(),
            param: Some("ABCDE12345.com.example.voip".into()),
            expires: 600,
            contact_override: None,
            registers_per_wake: 1,
            script: Script::default(),
            reg_call_id: format!("reg-{}@phone", addr.port()),
            reg_tag,
            reg_cseq: 0,
            reg_branches: Vec::new(),
            extra_registers: Vec::new(),
            register_answers: Vec::new(),
            calls: Vec::new(),
            timeouts: Vec::new(),
            frozen: false,
            buffered: Vec::new(),
            ua,
        }
    }

    /// The Contact the app registers: RFC 8599 parameters on its address
    /// (or `contact_override`, e.g. `*`).
    pub fn contact(&self) -> String {
        if let Some(c) = &self.contact_override {
            return c.clone();
        }
        let mut c = format!(
            "<sip:{}@{};pn-provider={};pn-prid={}",
            self.user, self.ua.addr, self.provider, self.token
        );
        if let Some(p) = &self.param {
            c.push_str(&format!(";pn-param={p}"));
        }
        c.push('>');
        c
    }

    fn register_with(&mut self, now: Instant, auth: Option<String>, expires: u32, out: &mut Out) {
        self.reg_cseq += 1;
        let branch = self.ua.branch();
        let addr = self.ua.addr;
        let aor = format!("sip:{}@{}", self.user, self.domain);
        let mut s = format!(
            "REGISTER sip:{} SIP/2.0\r\nVia: SIP/2.0/UDP {addr};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: <{aor}>;tag={}\r\nTo: <{aor}>\r\nCall-ID: {}\r\nCSeq: {} REGISTER\r\nContact: {}\r\nExpires: {expires}\r\nSupported: path, gruu\r\n",
            self.domain,
            self.reg_tag,
            self.reg_call_id,
            self.reg_cseq,
            self.contact()
        );
        if let Some(a) = &auth {
            s.push_str(&format!("Authorization: {a}\r\n"));
        }
        s.push_str("Content-Length: 0\r\n\r\n");
        self.reg_branches.push((branch, auth.is_some()));
        self.ua.send_request(now, self.server, Bytes::from(s), out);
    }

    /// REGISTERs now (without credentials: the challenge comes first).
    pub fn register(&mut self, now: Instant, out: &mut Out) {
        let e = self.expires;
        self.register_with(now, None, e, out);
    }

    /// Unregisters (Expires: 0).
    pub fn unregister(&mut self, now: Instant, out: &mut Out) {
        self.register_with(now, None, 0, out);
    }

    /// The status of the last REGISTER answered.
    pub fn last_register(&self) -> Option<u16> {
        self.register_answers.last().map(|r| r.1)
    }

    fn answer_challenge(&mut self, now: Instant, resp: &[u8], expires: u32, out: &mut Out) -> bool {
        let mut h = [EMPTY_HEADER; 64];
        let Ok(m) = parse(resp, &mut h) else {
            return false;
        };
        let auths: Vec<_> = m
            .auth(HeaderName::WwwAuthenticate)
            .filter_map(Result::ok)
            .collect();
        let Some(a) = auths.first() else {
            return false;
        };
        let params: Vec<(&str, &str)> = a
            .params()
            .map_while(Result::ok)
            .filter_map(|p| std::str::from_utf8(p.value).ok().map(|v| (p.name, v)))
            .collect();
        let Ok(ch) = Challenge::from_params(params.iter().copied()) else {
            return false;
        };
        let mut v = String::new();
        let account = Account {
            username: &self.auth_user,
            secret: Secret::Password(&self.password),
        };
        let uri = format!("sip:{}", self.domain);
        let cnonce = format!("cn{}", self.reg_cseq);
        if write_authorization(&ch, &account, "REGISTER", &uri, &cnonce, 1, &mut v).is_err() {
            return false;
        }
        self.register_with(now, Some(v), expires, out);
        true
    }

    /// The call with this Call-ID.
    pub fn call(&self, call_id: &str) -> Option<&PhoneCall> {
        self.calls.iter().find(|c| c.call_id == call_id)
    }

    /// INVITEs received that started a call (retransmissions excluded).
    pub fn invites(&self) -> Vec<Bytes> {
        self.calls.iter().map(|c| c.invite.clone()).collect()
    }

    /// Sends a request in the dialog of `call_id`; the request as sent.
    pub fn send_in_dialog(
        &mut self,
        now: Instant,
        call_id: &str,
        method: &str,
        body: Option<&[u8]>,
        out: &mut Out,
    ) -> Bytes {
        let branch = self.ua.branch();
        let via = self.ua.addr.to_string();
        let server = self.server;
        let c = self
            .calls
            .iter_mut()
            .find(|c| c.call_id == call_id)
            .expect("a call");
        let d = c.dialog.as_mut().expect("a dialog");
        let req = d.request(&via, &branch, method, None, &[], body);
        self.ua.send_request(now, server, req.clone(), out);
        req
    }

    fn hang_up(&mut self, now: Instant, i: usize, out: &mut Out) {
        if !self.calls[i].ended {
            self.calls[i].ended = true;
            let id = self.calls[i].call_id.clone();
            self.send_in_dialog(now, &id, "BYE", None, out);
        }
    }

    /// ACKs the 2xx of a re-INVITE the phone sent (§13.2.2.4), the same
    /// ACK for its retransmissions.
    fn ack_reinvite(&mut self, now: Instant, resp: &[u8], out: &mut Out) {
        let call_id = header(resp, "Call-ID").unwrap_or_default();
        let n = cseq(resp).map(|c| c.0).unwrap_or_default();
        let branch = self.ua.branch();
        let via = self.ua.addr.to_string();
        let server = self.server;
        let Some(c) = self.calls.iter_mut().find(|c| c.call_id == call_id) else {
            return;
        };
        let ack = match c.acks.iter().find(|a| a.0 == n) {
            Some(a) => a.1.clone(),
            None => {
                let Some(d) = c.dialog.as_mut() else { return };
                let ack = d.request(&via, &branch, "ACK", Some(n), &[], None);
                c.acks.push((n, ack.clone()));
                ack
            }
        };
        self.ua.send_raw(now, server, ack, out);
    }

    fn send_final(&mut self, now: Instant, i: usize, out: &mut Out) {
        self.calls[i].final_at = None;
        let Some(code) = self.script.final_code else {
            return;
        };
        let c = &mut self.calls[i];
        if c.ended || c.final_code.is_some() {
            return;
        }
        c.final_code = Some(code);
        let (invite, from, tag) = (c.invite.clone(), c.from, c.tag.clone());
        let contact = format!("sip:{}@{}", self.user, self.ua.addr);
        if (200..300).contains(&code) {
            let to = header(&invite, "To").unwrap_or_default();
            let f = header(&invite, "From").unwrap_or_default();
            self.calls[i].dialog = Some(Dialog {
                call_id: self.calls[i].call_id.clone(),
                local: without_tag(&to),
                local_tag: tag.clone(),
                remote: without_tag(&f),
                remote_tag: super::tag(&f).unwrap_or_default(),
                target: contact_uri(&header(&invite, "Contact").unwrap_or_default()),
                routes: headers(&invite, "Record-Route"),
                cseq: 700,
                contact: contact.clone(),
            });
            if let Some(after) = self.script.bye_after_answer {
                self.calls[i].bye_at = Some(now + after);
            }
            let extra = [("Contact", format!("<{contact}>"))];
            self.ua.respond(
                now,
                &invite,
                from,
                code,
                "OK",
                &tag,
                &extra,
                Some(PHONE_SDP.as_bytes()),
                out,
            );
        } else {
            let reason = match code {
                486 => "Busy Here",
                603 => "Decline",
                503 => "Service Unavailable",
                _ => "Failed",
            };
            self.ua
                .respond(now, &invite, from, code, reason, &tag, &[], None, out);
        }
    }

    fn on_request(&mut self, now: Instant, from: SocketAddr, req: Bytes, out: &mut Out) {
        let m = super::method(&req).unwrap_or_default();
        let call_id = header(&req, "Call-ID").unwrap_or_default();
        let to_tag = tag(&header(&req, "To").unwrap_or_default());
        let idx = self.calls.iter().position(|c| c.call_id == call_id);
        match (m.as_str(), to_tag, idx) {
            ("INVITE", None, _) => {
                let tag = self.ua.unique("phonetag");
                self.calls.push(PhoneCall {
                    call_id,
                    invite: req.clone(),
                    from,
                    tag: tag.clone(),
                    final_at: Some(now + self.script.final_after),
                    final_code: None,
                    dialog: None,
                    bye_at: None,
                    acks: Vec::new(),
                    acked: false,
                    bye_pending: false,
                    ended: false,
                });
                let contact = format!("<sip:{}@{}>", self.user, self.ua.addr);
                for (n, code) in self.script.provisional.clone().into_iter().enumerate() {
                    let reason = if code == 183 {
                        "Session Progress"
                    } else {
                        "Ringing"
                    };
                    let mut extra = vec![("Contact", contact.clone())];
                    if self.script.reliable {
                        extra.push(("Require", "100rel".into()));
                        extra.push(("RSeq", (n + 1).to_string()));
                    }
                    let sdp = (code == 183).then_some(PHONE_SDP.as_bytes());
                    self.ua
                        .respond(now, &req, from, code, reason, &tag, &extra, sdp, out);
                }
                if self.script.final_after.is_zero() {
                    let i = self.calls.len() - 1;
                    self.send_final(now, i, out);
                }
            }
            ("CANCEL", _, Some(i)) => {
                // §9.2: 200 for the CANCEL; the INVITE, if unanswered, 487.
                let tag = self.calls[i].tag.clone();
                self.ua
                    .respond(now, &req, from, 200, "OK", &tag, &[], None, out);
                let invite = self.calls[i].invite.clone();
                if !self.ua.answered(&invite) {
                    let c = &mut self.calls[i];
                    c.final_at = None;
                    c.final_code = Some(487);
                    c.ended = true;
                    let from = c.from;
                    self.ua.respond(
                        now,
                        &invite,
                        from,
                        487,
                        "Request Terminated",
                        &tag,
                        &[],
                        None,
                        out,
                    );
                }
            }
            ("CANCEL", _, None) => self.ua.respond(
                now,
                &req,
                from,
                481,
                "Call/Transaction Does Not Exist",
                "x",
                &[],
                None,
                out,
            ),
            // In the dialog, early (PRACK, UPDATE, INFO) or confirmed.
            (_, Some(t), Some(i)) if self.calls[i].tag == t => {
                let tag = self.calls[i].tag.clone();
                match m.as_str() {
                    "BYE" => {
                        self.calls[i].ended = true;
                        self.ua
                            .respond(now, &req, from, 200, "OK", &tag, &[], None, out);
                    }
                    "INVITE" => {
                        let contact =
                            [("Contact", format!("<sip:{}@{}>", self.user, self.ua.addr))];
                        self.ua.respond(
                            now,
                            &req,
                            from,
                            200,
                            "OK",
                            &tag,
                            &contact,
                            Some(PHONE_SDP.as_bytes()),
                            out,
                        );
                    }
                    _ => self
                        .ua
                        .respond(now, &req, from, 200, "OK", &tag, &[], None, out),
                }
            }
            _ => self.ua.respond(
                now,
                &req,
                from,
                481,
                "Call/Transaction Does Not Exist",
                "x",
                &[],
                None,
                out,
            ),
        }
    }

    fn on_response(&mut self, now: Instant, method: &str, code: u16, data: Bytes, out: &mut Out) {
        if method == "INVITE" && (200..300).contains(&code) {
            return self.ack_reinvite(now, &data, out);
        }
        if method != "REGISTER" || code < 200 {
            return;
        }
        let branch = {
            let v = header(&data, "Via").unwrap_or_default();
            v.split(";branch=")
                .nth(1)
                .and_then(|b| b.split(';').next())
                .unwrap_or("")
                .to_owned()
        };
        let had_auth = self
            .reg_branches
            .iter()
            .find(|(b, _)| *b == branch)
            .is_some_and(|(_, a)| *a);
        let expires = header(&data, "Expires")
            .and_then(|e| e.parse().ok())
            .unwrap_or(self.expires);
        let _ = expires;
        if code == 401 && !had_auth {
            // The REGISTER it answers: same expiry.
            let asked = self
                .ua
                .sent
                .iter()
                .rev()
                .find(|(_, d)| header(d, "Via").is_some_and(|v| v.contains(&branch)))
                .and_then(|(_, d)| header(d, "Expires"))
                .and_then(|e| e.parse().ok())
                .unwrap_or(self.expires);
            if self.answer_challenge(now, &data, asked, out) {
                return;
            }
        }
        self.register_answers.push((now, code, data));
    }
}

impl Peer for SimPhone {
    fn addr(&self) -> SocketAddr {
        self.ua.addr
    }

    fn handle(&mut self, now: Instant, from: SocketAddr, data: &[u8], out: &mut Out) {
        if self.frozen {
            self.buffered
                .push((now, from, Bytes::copy_from_slice(data)));
            return;
        }
        match self.ua.receive(now, from, data, out) {
            Some(Input::Request(req)) => self.on_request(now, from, req, out),
            Some(Input::Ack(ack)) => {
                let id = header(&ack, "Call-ID").unwrap_or_default();
                let n = cseq(&ack).map(|c| c.0);
                if let Some(i) = self
                    .calls
                    .iter()
                    .position(|c| c.call_id == id && n == cseq(&c.invite).map(|c| c.0))
                {
                    self.calls[i].acked = true;
                    if std::mem::take(&mut self.calls[i].bye_pending) {
                        self.hang_up(now, i, out);
                    }
                }
            }
            Some(Input::Response {
                method, code, data, ..
            }) => self.on_response(now, &method, code, data, out),
            _ => {}
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.frozen {
            return None;
        }
        let calls = self
            .calls
            .iter()
            .flat_map(|c| [c.final_at, c.bye_at])
            .flatten();
        calls
            .chain(self.ua.poll_timeout())
            .chain(self.extra_registers.iter().copied())
            .min()
    }

    fn handle_timeout(&mut self, now: Instant, out: &mut Out) {
        for i in self.ua.handle_timeout(now, out) {
            if let Input::Timeout { method } = i {
                self.timeouts.push(method);
            }
        }
        for i in 0..self.calls.len() {
            if self.calls[i].final_at.is_some_and(|t| t <= now) {
                self.send_final(now, i, out);
            }
            if self.calls[i].bye_at.is_some_and(|t| t <= now) {
                self.calls[i].bye_at = None;
                // RFC 3261 §15: the callee hangs up only once its 2xx is
                // ACKed.
                if self.calls[i].acked {
                    self.hang_up(now, i, out);
                } else {
                    self.calls[i].bye_pending = true;
                }
            }
        }
        let before = self.extra_registers.len();
        self.extra_registers.retain(|&t| t > now);
        for _ in self.extra_registers.len()..before {
            self.register(now, out);
        }
    }

    fn wake(&mut self, now: Instant, out: &mut Out) {
        if std::mem::take(&mut self.frozen) {
            // Thawed: the app reads what waited on its connection.
            for (_, from, data) in self.buffered.clone() {
                self.handle(now, from, &data, out);
            }
        }
        self.register(now, out);
        for k in 1..self.registers_per_wake {
            self.extra_registers
                .push(now + Duration::from_millis(30 * u64::from(k)));
        }
    }
}
