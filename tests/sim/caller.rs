//! A simulated caller: the provider's side of an incoming call, a UAC
//! (RFC 3261 §13.2) that INVITEs `sip:<account token>@<engine>` with SDP,
//! retransmits under loss, ACKs every final, may CANCEL (with a Reason, as
//! a provider does for "answered elsewhere") or hang up with BYE, and
//! answers what the far end sends in the dialog with 200.

use super::ua::{contact_uri, without_tag, Dialog, Input, Ua};
use super::{cseq, header, headers, tag, Out, Peer};
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub const CALLER_SDP: &str = "v=0\r\no=bob 2890844526 2890844526 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\n";

pub struct SimCaller {
    pub ua: Ua,
    /// Where the INVITE goes (the engine's provider-side socket).
    pub engine: SocketAddr,
    /// The account's Contact token (the Request-URI user).
    pub token: String,
    pub call_id: String,
    pub display: String,
    pub from_uri: String,
    pub to_uri: String,
    /// The INVITE's offer; empty for a late offer (the answer then goes
    /// in the ACK: `ack_sdp`).
    pub sdp: String,
    pub ack_sdp: Option<String>,
    /// The INVITE's CSeq number.
    pub cseq: u32,
    /// Extra INVITE headers (Priority, Replaces, Record-Route, ...).
    pub extra: Vec<(String, String)>,
    /// Send the INVITE over UDP without Content-Length (RFC 3261 §18.3
    /// allows it: the body is the rest of the datagram).
    pub no_content_length: bool,
    /// CANCEL this long after the INVITE, unless answered by then.
    pub cancel_after: Option<Duration>,
    /// The CANCEL's Reason header value.
    pub cancel_reason: Option<String>,
    /// BYE this long after the 2xx.
    pub bye_after_answer: Option<Duration>,

    pub from_tag: String,
    invite: Option<Bytes>,
    invite_branch: String,
    cancel_at: Option<Instant>,
    cancel_wanted: bool,
    pub cancel_sent: bool,
    pub provisional: bool,
    /// The INVITE's final status.
    pub final_code: Option<u16>,
    pub dialog: Option<Dialog>,
    /// The ACK of the 2xx, re-sent for each retransmitted 2xx.
    ack: Option<Bytes>,
    /// RSeq of the reliable provisionals PRACKed.
    pracked: Vec<u32>,
    /// ACKs of re-INVITE 2xx, by CSeq.
    reinvite_acks: Vec<(u32, Bytes)>,
    bye_at: Option<Instant>,
    /// The BYE got its final response, or the far end's BYE came.
    pub ended: bool,
    /// Client transactions that timed out (method).
    pub timeouts: Vec<String>,
}

impl SimCaller {
    pub fn new(addr: SocketAddr, engine: SocketAddr, token: &str) -> SimCaller {
        let mut ua = Ua::new(addr);
        let from_tag = ua.unique("bobtag");
        SimCaller {
            engine,
            token: token.into(),
            call_id: format!(
                "c{}-84a7@provider.test",
                addr.to_string().replace(['.', ':'], "-")
            ),
            display: "Bob Caller".into(),
            from_uri: "sip:bob@provider.test".into(),
            to_uri: "sip:user1@provider.test".into(),
            sdp: CALLER_SDP.into(),
            ack_sdp: None,
            cseq: 1,
            extra: Vec::new(),
            no_content_length: false,
            cancel_after: None,
            cancel_reason: None,
            bye_after_answer: None,
            from_tag,
            invite: None,
            invite_branch: String::new(),
            cancel_at: None,
            cancel_wanted: false,
            cancel_sent: false,
            provisional: false,
            final_code: None,
            dialog: None,
            ack: None,
            reinvite_acks: Vec::new(),
            pracked: Vec::new(),
            bye_at: None,
            ended: false,
            timeouts: Vec::new(),
            ua,
        }
    }

    fn local_party(&self) -> String {
        format!("\"{}\" <{}>", self.display, self.from_uri)
    }

    /// Sends the INVITE.
    pub fn start(&mut self, now: Instant, out: &mut Out) {
        let addr = self.ua.addr;
        self.invite_branch = self.ua.branch();
        let mut s = format!(
            "INVITE sip:{}@{} SIP/2.0\r\nVia: SIP/2.0/UDP {addr};branch={};rport\r\nMax-Forwards: 70\r\nFrom: {};tag={}\r\nTo: <{}>\r\nCall-ID: {}\r\nCSeq: {} INVITE\r\nContact: <sip:bob@{addr}>\r\nAllow: INVITE, ACK, CANCEL, BYE, INFO, UPDATE\r\n",
            self.token,
            self.engine,
            self.invite_branch,
            self.local_party(),
            self.from_tag,
            self.to_uri,
            self.call_id,
            self.cseq,
        );
        for (k, v) in &self.extra {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        if !self.sdp.is_empty() {
            s.push_str("Content-Type: application/sdp\r\n");
        }
        if self.no_content_length {
            s.push_str(&format!("\r\n{}", self.sdp));
        } else {
            s.push_str(&format!(
                "Content-Length: {}\r\n\r\n{}",
                self.sdp.len(),
                self.sdp
            ));
        }
        let invite = Bytes::from(s);
        self.invite = Some(invite.clone());
        self.cancel_at = self.cancel_after.map(|d| now + d);
        self.ua.send_request(now, self.engine, invite, out);
    }

    /// The CANCEL of the INVITE (§9.1): same Request-URI, top Via, From,
    /// To, Call-ID and CSeq number.
    fn send_cancel(&mut self, now: Instant, out: &mut Out) {
        let Some(invite) = self.invite.clone() else {
            return;
        };
        self.cancel_sent = true;
        let text = String::from_utf8_lossy(&invite).into_owned();
        let ruri = text
            .lines()
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("")
            .to_owned();
        let via = header(&invite, "Via").unwrap_or_default();
        let mut s = format!(
            "CANCEL {ruri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {};tag={}\r\nTo: <{}>\r\nCall-ID: {}\r\nCSeq: {} CANCEL\r\n",
            self.local_party(),
            self.from_tag,
            self.to_uri,
            self.call_id,
            self.cseq
        );
        if let Some(r) = &self.cancel_reason {
            s.push_str(&format!("Reason: {r}\r\n"));
        }
        s.push_str("Content-Length: 0\r\n\r\n");
        self.ua.send_request(now, self.engine, Bytes::from(s), out);
    }

    /// The dialog a response to the INVITE makes (§12.1.2).
    fn dialog_from(&self, resp: &[u8]) -> Dialog {
        let to = header(resp, "To").unwrap_or_default();
        let mut routes = headers(resp, "Record-Route");
        routes.reverse();
        Dialog {
            call_id: self.call_id.clone(),
            local: self.local_party(),
            local_tag: self.from_tag.clone(),
            remote: without_tag(&to),
            remote_tag: tag(&to).unwrap_or_default(),
            target: contact_uri(&header(resp, "Contact").unwrap_or_default()),
            routes,
            cseq: self.cseq,
            contact: format!("sip:bob@{}", self.ua.addr),
        }
    }

    /// Sends a request in the dialog (BYE, INFO, re-INVITE, UPDATE); the
    /// request as sent.
    pub fn send_in_dialog(
        &mut self,
        now: Instant,
        method: &str,
        body: Option<&[u8]>,
        out: &mut Out,
    ) -> Bytes {
        let branch = self.ua.branch();
        let via = self.ua.addr.to_string();
        let d = self.dialog.as_mut().expect("a dialog");
        let req = d.request(&via, &branch, method, None, &[], body);
        self.ua.send_request(now, self.engine, req.clone(), out);
        req
    }

    /// Jumps the dialog's CSeq (a UA may skip numbers: only order counts).
    pub fn skip_cseq(&mut self, to: u32) {
        if let Some(d) = self.dialog.as_mut() {
            d.cseq = to;
        }
    }

    fn on_response(
        &mut self,
        now: Instant,
        method: &str,
        code: u16,
        again: bool,
        data: Bytes,
        out: &mut Out,
    ) {
        match (method, code) {
            ("INVITE", 101..=199)
                if header(&data, "Require").is_some_and(|r| r.contains("100rel")) =>
            {
                self.provisional = true;
                // RFC 3262 §4: PRACK each reliable provisional once, in the
                // early dialog it makes.
                let rseq: u32 = header(&data, "RSeq")
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0);
                if !self.pracked.contains(&rseq) {
                    self.pracked.push(rseq);
                    if self.dialog.is_none() {
                        self.dialog = Some(self.dialog_from(&data));
                    }
                    let rack = format!("{rseq} {} INVITE", self.cseq);
                    let branch = self.ua.branch();
                    let via = self.ua.addr.to_string();
                    let d = self.dialog.as_mut().expect("early dialog");
                    let prack = d.request(&via, &branch, "PRACK", None, &[("RAck", rack)], None);
                    self.ua.send_request(now, self.engine, prack, out);
                }
                if self.cancel_wanted && !self.cancel_sent && self.final_code.is_none() {
                    self.send_cancel(now, out);
                }
            }
            ("INVITE", 100..=199) => {
                self.provisional = true;
                if self.cancel_wanted && !self.cancel_sent && self.final_code.is_none() {
                    self.send_cancel(now, out);
                }
            }
            ("INVITE", 200..=299) if cseq(&data).is_some_and(|(n, _)| n != self.cseq) => {
                // A re-INVITE's 2xx: ACKed in the dialog (§13.2.2.4),
                // the same ACK for its retransmissions.
                let n = cseq(&data).map(|c| c.0).unwrap_or_default();
                let ack = match self.reinvite_acks.iter().find(|a| a.0 == n) {
                    Some(a) => a.1.clone(),
                    None => {
                        let branch = self.ua.branch();
                        let via = self.ua.addr.to_string();
                        let d = self.dialog.as_mut().expect("a dialog");
                        let ack = d.request(&via, &branch, "ACK", Some(n), &[], None);
                        self.reinvite_acks.push((n, ack.clone()));
                        ack
                    }
                };
                self.ua.send_raw(now, self.engine, ack, out);
            }
            ("INVITE", 200..=299) => {
                if again {
                    // §13.2.2.4: the 2xx came again, our ACK was lost.
                    if let Some(ack) = self.ack.clone() {
                        self.ua.send_raw(now, self.engine, ack, out);
                    }
                    return;
                }
                self.final_code = Some(code);
                let mut d = self.dialog_from(&data);
                // An early dialog's CSeq (PRACKs) carries on.
                if let Some(early) = &self.dialog {
                    d.cseq = early.cseq;
                }
                let branch = self.ua.branch();
                let via = self.ua.addr.to_string();
                let body = self.ack_sdp.as_ref().map(|b| b.as_bytes());
                let ack = d.request(&via, &branch, "ACK", Some(self.cseq), &[], body);
                self.dialog = Some(d);
                self.ack = Some(ack.clone());
                self.ua.send_raw(now, self.engine, ack, out);
                if let Some(after) = self.bye_after_answer {
                    self.bye_at = Some(now + after);
                }
                if self.cancel_sent || self.cancel_wanted {
                    // §9.1: the CANCEL came too late; hang up instead.
                    self.bye_at = Some(now);
                }
            }
            ("INVITE", _) => self.final_code = Some(code),
            ("BYE", 200..=699) => self.ended = true,
            _ => {}
        }
    }

    fn on_request(&mut self, now: Instant, from: SocketAddr, req: Bytes, out: &mut Out) {
        let m = super::method(&req).unwrap_or_default();
        let to_tag = self.from_tag.clone();
        if self.dialog.is_none() || super::tag(&header(&req, "To").unwrap_or_default()).is_none() {
            return self.ua.respond(
                now,
                &req,
                from,
                481,
                "Call/Transaction Does Not Exist",
                &to_tag,
                &[],
                None,
                out,
            );
        }
        match m.as_str() {
            "BYE" => {
                self.ended = true;
                self.ua
                    .respond(now, &req, from, 200, "OK", &to_tag, &[], None, out);
            }
            "INVITE" => {
                let contact = vec![("Contact", format!("<sip:bob@{}>", self.ua.addr))];
                let sdp = self.sdp.clone();
                self.ua.respond(
                    now,
                    &req,
                    from,
                    200,
                    "OK",
                    &to_tag,
                    &contact,
                    Some(sdp.as_bytes()),
                    out,
                );
            }
            _ => self
                .ua
                .respond(now, &req, from, 200, "OK", &to_tag, &[], None, out),
        }
    }
}

impl Peer for SimCaller {
    fn addr(&self) -> SocketAddr {
        self.ua.addr
    }

    fn handle(&mut self, now: Instant, from: SocketAddr, data: &[u8], out: &mut Out) {
        match self.ua.receive(now, from, data, out) {
            Some(Input::Request(req)) => self.on_request(now, from, req, out),
            Some(Input::Response {
                method,
                code,
                again,
                data,
            }) => self.on_response(now, &method, code, again, data, out),
            _ => {}
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        [self.ua.poll_timeout(), self.cancel_at, self.bye_at]
            .into_iter()
            .flatten()
            .min()
    }

    fn handle_timeout(&mut self, now: Instant, out: &mut Out) {
        for i in self.ua.handle_timeout(now, out) {
            if let Input::Timeout { method } = i {
                self.timeouts.push(method);
            }
        }
        if self.cancel_at.is_some_and(|t| t <= now) {
            self.cancel_at = None;
            if self.final_code.is_none() {
                // §9.1: no CANCEL before a provisional response.
                if self.provisional {
                    self.send_cancel(now, out);
                } else {
                    self.cancel_wanted = true;
                }
            }
        }
        if self.bye_at.is_some_and(|t| t <= now) {
            self.bye_at = None;
            if !self.ended {
                self.send_in_dialog(now, "BYE", None, out);
            }
        }
    }
}
