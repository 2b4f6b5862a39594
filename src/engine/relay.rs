//! The relay between the caller's leg and a phone's leg (a signalling-only
//! B2BUA, DESIGN §1.3 step 4): in-dialog requests both ways with per-leg
//! Via, tags and CSeq; CANCEL from the caller; the ACK of a 2xx.
//!
//! Both legs keep the caller's Call-ID and From-tag. The caller's leg sees
//! sipis's own To-tag (`Call::up_tag`), each phone's leg the phone's.
//! Every relayed request has a server transaction on the side it came from
//! and a client transaction on the side it goes to, so retransmissions are
//! absorbed per leg; a 2xx to INVITE and its ACK pass end to end, and a
//! phone re-sending its 2xx after sipis ACKed it gets the same ACK again.

use super::call::{Call, CallState, LegState, Outcome, Reinvite, Relay};
use super::transaction::{Kind, TxKey};
use super::{Engine, TxOwner};
use bytes::{BufMut, Bytes, BytesMut};
use sipis_parser::{self as parser, parse, HeaderName, Message, Method, Writer, EMPTY_HEADER};
use std::net::SocketAddr;
use std::time::Instant;

impl Engine {
    /// A CANCEL (RFC 3261 §9.2): answered 200 on its own transaction; the
    /// INVITE it names, if still ringing, ends with 487 and every leg is
    /// cancelled. Its `Reason` tells "answered elsewhere" (cause 200) and
    /// "declined elsewhere" (600/603) from the caller hanging up.
    pub(super) fn incoming_cancel(&mut self, now: Instant, msg: &Message<'_, '_>, slot: usize) {
        let target = TxKey::cancel_target(msg)
            .ok()
            .and_then(|k| self.server_keys.get(&k).copied());
        let Some(inv_slot) = target else {
            return self.reply(
                now,
                slot,
                msg,
                481,
                "Call/Transaction Does Not Exist",
                |_| {},
            );
        };
        self.reply(now, slot, msg, 200, "OK", |_| {});
        let Some(c) = msg
            .call_id()
            .ok()
            .and_then(|id| self.call_ids.get(id).copied())
        else {
            return;
        };
        let call = &mut self.calls[c];
        if call.server.0 != inv_slot || call.state != CallState::Waiting {
            return;
        }
        let reason = msg.header(HeaderName::Reason).map(Bytes::copy_from_slice);
        let outcome = match msg
            .reasons()
            .filter_map(Result::ok)
            .find(|r| r.protocol.eq_ignore_ascii_case("SIP"))
            .and_then(|r| r.cause())
        {
            Some(200) => Outcome::AnsweredElsewhere,
            Some(600 | 603) => Outcome::Declined,
            _ => Outcome::CallerCancelled,
        };
        call.up_reason = reason;
        self.send_upstream_response(now, c, 487, "Request Terminated", |_| {});
        self.finish_unanswered(now, c, outcome);
    }

    /// An ACK outside any server transaction: the ACK of a 2xx, end to end
    /// (RFC 3261 §13.2.2.4). From the caller it goes on to the phone that
    /// answered.
    pub(super) fn call_ack(&mut self, now: Instant, msg: &Message<'_, '_>, data: &[u8]) {
        let Some(c) = msg
            .call_id()
            .ok()
            .and_then(|id| self.call_ids.get(id).copied())
        else {
            return;
        };
        let to_tag = msg.to().ok().and_then(|t| t.tag());
        let from_tag = msg.from().ok().and_then(|t| t.tag());
        let Ok(cseq) = msg.cseq() else { return };
        let body = super::call::body(data, msg);
        if to_tag == Some(&self.calls[c].up_tag[..]) {
            self.up_2xx_acked(c, cseq.seq);
        }
        let call = &self.calls[c];
        if to_tag == Some(&call.up_tag[..]) {
            let CallState::Answered(leg) = call.state else {
                return;
            };
            match call.reinvite {
                Some(r) if r.to_phone && r.in_cseq == cseq.seq => {
                    self.ack_leg(now, c, leg, Some(r.out_cseq), Some(body));
                }
                _ => {
                    let l = &call.legs[leg];
                    match l.ack.clone() {
                        // The caller ACKs again because we passed on a
                        // retransmitted 2xx: the phone missed our ACK.
                        Some(ack) => {
                            let (dest, flow) = (l.dest, l.flow);
                            self.transmits.push_back(super::Transmit {
                                dest,
                                flow,
                                payload: ack,
                            });
                        }
                        None => self.ack_leg(now, c, leg, None, Some(body)),
                    }
                }
            }
            return;
        }
        // The phone ACKs the 2xx of a re-INVITE the caller sent.
        let Some(leg) = call
            .legs
            .iter()
            .position(|l| l.tag.as_deref().is_some() && l.tag.as_deref() == from_tag)
        else {
            return;
        };
        let Some(r) = call
            .reinvite
            .filter(|r| !r.to_phone && r.in_cseq == cseq.seq)
        else {
            return;
        };
        self.forward_upstream(now, c, leg, msg, data, Method::Ack, Some(r.out_cseq), None);
    }

    /// A request inside a dialog (it has a To-tag): relayed to the other
    /// leg, or 481 when no call knows it.
    pub(super) fn in_dialog(
        &mut self,
        now: Instant,
        from: SocketAddr,
        msg: &Message<'_, '_>,
        data: &[u8],
        slot: usize,
    ) {
        let method = msg.method().unwrap_or(Method::Options);
        let found = msg
            .call_id()
            .ok()
            .and_then(|id| self.call_ids.get(id).copied());
        let Some(c) = found else {
            return self.reply(
                now,
                slot,
                msg,
                481,
                "Call/Transaction Does Not Exist",
                |_| {},
            );
        };
        let to_tag = msg.to().ok().and_then(|t| t.tag());
        let from_tag = msg.from().ok().and_then(|t| t.tag());
        let call = &self.calls[c];
        let (to_phone, leg) = if to_tag == Some(&call.up_tag[..]) {
            let leg = match call.state {
                CallState::Answered(l) => Some(l),
                // PRACK/UPDATE in an early dialog go to the leg that rang.
                CallState::Waiting => call.reliable_leg.or(call.early_leg),
                CallState::Ended => None,
            };
            (true, leg)
        } else {
            let leg = call
                .legs
                .iter()
                .position(|l| l.tag.as_deref().is_some() && l.tag.as_deref() == from_tag);
            (false, leg)
        };
        let Some(leg) = leg.filter(|&l| call.legs[l].state != LegState::Done) else {
            return self.reply(
                now,
                slot,
                msg,
                481,
                "Call/Transaction Does Not Exist",
                |_| {},
            );
        };
        let gen = call.gen;
        if method == Method::Invite {
            self.reply(now, slot, msg, 100, "Trying", |_| {});
        }
        let sgen = self.servers[slot].generation;
        let r = self.relays.insert(Relay {
            call: (c, gen),
            server: (slot, sgen),
            request: Bytes::copy_from_slice(data),
            from,
            to_phone,
            leg,
        });
        self.calls[c].relays += 1;
        let owner = TxOwner::Relay(r);
        if to_phone {
            self.forward_to_phone(now, c, leg, msg, data, method, owner);
        } else {
            self.forward_upstream(now, c, leg, msg, data, method, None, Some(owner));
        }
    }

    /// Builds and sends a caller's in-dialog request to the phone.
    #[allow(clippy::too_many_arguments)]
    fn forward_to_phone(
        &mut self,
        now: Instant,
        c: usize,
        leg: usize,
        msg: &Message<'_, '_>,
        data: &[u8],
        method: Method<'_>,
        owner: TxOwner,
    ) {
        let token = self.account_token(self.calls[c].account);
        let call = &mut self.calls[c];
        let in_cseq = msg.cseq().map(|c| c.seq).unwrap_or(0);
        let l = &mut call.legs[leg];
        // PRACK keeps the INVITE's CSeq space in step: RAck names the
        // INVITE's CSeq, which this leg shares with the caller's.
        l.cseq += 1;
        let out_cseq = l.cseq;
        let (dest, flow, target, tag) = (l.dest, l.flow, l.target.clone(), l.tag.clone());
        if method == Method::Invite {
            call.reinvite = Some(Reinvite {
                in_cseq,
                out_cseq,
                to_phone: true,
            });
        }
        let branch = super::new_branch(&mut self.rng);
        let via = self.cfg.via.clone();
        self.buf.clear();
        let mut w = Writer::request(&mut self.buf, method, &target);
        w.via(
            super::call::via_transport(flow),
            &via,
            branch.as_bytes(),
            true,
        );
        w.header("Max-Forwards", b"70");
        let from_tag = msg.from().ok().and_then(|f| f.tag()).map(<[u8]>::to_vec);
        let contact = (&*token, &*self.cfg.phone_contact_host);
        let tags = (from_tag.as_deref(), tag.as_deref());
        if relayed_rest(w, msg, data, tags, out_cseq, method, contact).is_err() {
            return;
        }
        let bytes = self.buf.split().freeze();
        let kind = if method == Method::Invite {
            Kind::Invite
        } else {
            Kind::NonInvite
        };
        let key = TxKey::for_request(branch.as_bytes(), via.as_bytes(), method);
        self.start_client(now, bytes, key, dest, flow, kind, owner);
    }

    /// Builds and sends a phone's in-dialog request (or the ACK of a
    /// re-INVITE's 2xx) to the caller: Request-URI = the caller's Contact,
    /// Route = the INVITE's Record-Route (RFC 3261 §12.1.1, §12.2.1.1).
    #[allow(clippy::too_many_arguments)]
    fn forward_upstream(
        &mut self,
        now: Instant,
        c: usize,
        _leg: usize,
        msg: &Message<'_, '_>,
        data: &[u8],
        method: Method<'_>,
        ack_cseq: Option<u32>,
        owner: Option<TxOwner>,
    ) {
        let token = self.account_token(self.calls[c].account);
        let call: &mut Call = &mut self.calls[c];
        let invite = call.invite.clone();
        let mut h = [EMPTY_HEADER; 64];
        let Ok(inv) = parse(&invite, &mut h) else {
            return;
        };
        let Some(target) = super::call::contact_uri(&inv) else {
            return;
        };
        let out_cseq = match ack_cseq {
            Some(n) => n,
            None => {
                call.up_cseq += 1;
                call.up_cseq
            }
        };
        if method == Method::Invite {
            call.reinvite = Some(Reinvite {
                in_cseq: msg.cseq().map(|c| c.seq).unwrap_or(0),
                out_cseq,
                to_phone: false,
            });
        }
        let (dest, flow, up_tag) = (call.up_src, call.up_flow, call.up_tag.clone());
        let branch = super::new_branch(&mut self.rng);
        let via = self.cfg.via.clone();
        self.buf.clear();
        let mut w = Writer::request(&mut self.buf, method, &target);
        w.via(
            super::call::via_transport(flow),
            &via,
            branch.as_bytes(),
            true,
        );
        // The route set of a UAS is the Record-Route of the request, in order.
        for rr in inv.header_lines(HeaderName::RecordRoute) {
            w.header("Route", rr);
        }
        w.header("Max-Forwards", b"70");
        let caller_tag = msg.to().ok().and_then(|t| t.tag()).map(<[u8]>::to_vec);
        let contact = (&*token, &*self.cfg.contact_host);
        let tags = (Some(&up_tag[..]), caller_tag.as_deref());
        if relayed_rest(w, msg, data, tags, out_cseq, method, contact).is_err() {
            return;
        }
        let bytes = self.buf.split().freeze();
        match owner {
            None => self.transmits.push_back(super::Transmit {
                dest,
                flow,
                payload: bytes,
            }),
            Some(owner) => {
                let kind = if method == Method::Invite {
                    Kind::Invite
                } else {
                    Kind::NonInvite
                };
                let key = TxKey::for_request(branch.as_bytes(), via.as_bytes(), method);
                self.start_client(now, bytes, key, dest, flow, kind, owner);
            }
        }
    }

    /// A response to a relayed request: passed back on the server
    /// transaction of the request it answers.
    pub(super) fn relay_response(
        &mut self,
        now: Instant,
        r: usize,
        msg: &Message<'_, '_>,
        data: &[u8],
    ) {
        let Some(relay) = self.relays.get(r) else {
            return;
        };
        let (c, gen) = relay.call;
        let (slot, sgen) = relay.server;
        let (to_phone, leg, from) = (relay.to_phone, relay.leg, relay.from);
        let request = relay.request.clone();
        let code = msg.status().unwrap_or(0);
        if code == 100 {
            return;
        }
        let Some(call) = self.calls.get(c).filter(|x| x.gen == gen) else {
            return;
        };
        let token = self.account_token(call.account);
        let mut h = [EMPTY_HEADER; 64];
        let Ok(req) = parse(&request, &mut h) else {
            return;
        };
        let method = req.method().unwrap_or(Method::Options);
        let reason = super::call::reason_phrase(data);
        self.buf.clear();
        let Ok(mut w) = parser::response_to(&mut self.buf, &req, code, &reason, b"", from) else {
            return;
        };
        if (200..300).contains(&code) && matches!(method, Method::Invite | Method::Update) {
            // The answer goes back to the side the request came from:
            // our Contact as that side knows it.
            let host = if to_phone {
                &self.cfg.contact_host
            } else {
                &self.cfg.phone_contact_host
            };
            w.header_with("Contact", |o| put_contact(o, &token, host));
        }
        w.copy_headers(msg, super::call::end_to_end);
        w.finish(super::call::body(data, msg));
        let bytes = self.buf.split().freeze();
        if to_phone && method == Method::Invite && (200..300).contains(&code) {
            // The caller's re-INVITE: its 2xx goes again until the ACK.
            let cseq = req.cseq().map(|c| c.seq).unwrap_or(0);
            self.retransmit_up_2xx(now, c, (slot, sgen), code, bytes.clone(), cseq);
        }
        self.server_send_response(now, slot, sgen, code, bytes);
        if code >= 200 && method == Method::Bye {
            self.dialog_ended(now, c, leg);
        }
    }

    /// A relayed request got no answer (Timer F/B) or could not be sent:
    /// 408 to the side that asked (RFC 3261 §16.7 step 6 for a proxy; the
    /// same for a B2BUA's relayed request).
    pub(super) fn relay_failed(&mut self, now: Instant, r: usize) {
        let Some(relay) = self.relays.get(r) else {
            return;
        };
        let (c, gen) = relay.call;
        let (slot, sgen) = relay.server;
        let (leg, from) = (relay.leg, relay.from);
        let request = relay.request.clone();
        let mut h = [EMPTY_HEADER; 64];
        let Ok(req) = parse(&request, &mut h) else {
            return;
        };
        let method = req.method().unwrap_or(Method::Options);
        self.buf.clear();
        let Ok(w) = parser::response_to(&mut self.buf, &req, 408, "Request Timeout", b"", from)
        else {
            return;
        };
        w.finish(b"");
        let bytes = self.buf.split().freeze();
        self.server_send_response(now, slot, sgen, 408, bytes);
        if method == Method::Bye && self.calls.get(c).is_some_and(|x| x.gen == gen) {
            // A BYE that reached nobody still ends the dialog here.
            self.dialog_ended(now, c, leg);
        }
    }

    /// The client transaction of a relay is over: forget the relay.
    pub(super) fn relay_done(&mut self, r: usize) {
        if self.relays.contains(r) {
            let relay = self.relays.remove(r);
            let (c, gen) = relay.call;
            if let Some(call) = self.calls.get_mut(c).filter(|x| x.gen == gen) {
                call.relays = call.relays.saturating_sub(1);
            }
        }
    }

    fn server_send_response(
        &mut self,
        now: Instant,
        slot: usize,
        gen: u64,
        code: u16,
        bytes: Bytes,
    ) {
        if let Some(s) = self.servers.get_mut(slot).filter(|s| s.generation == gen) {
            s.tx.send_response(now, code, bytes);
            self.after_server(slot, None);
        }
    }
}

/// `<sip:<token>@<host:port>>`: the Contact sipis gives each side, its
/// user part routing requests back to the account.
pub(super) fn put_contact(o: &mut BytesMut, token: &str, host: &str) {
    o.put_slice(b"<sip:");
    o.put_slice(token.as_bytes());
    o.put_u8(b'@');
    o.put_slice(host.as_bytes());
    o.put_u8(b'>');
}

/// The rest of a relayed request after its Via, Route and Max-Forwards:
/// From and To with this leg's tags (`pn-*` stripped), the Call-ID, this
/// leg's CSeq, our Contact (`contact` = token, host) where a target
/// refresh needs one, the end-to-end headers and the body.
fn relayed_rest(
    mut w: Writer<'_>,
    msg: &Message<'_, '_>,
    data: &[u8],
    (from_tag, to_tag): (Option<&[u8]>, Option<&[u8]>),
    out_cseq: u32,
    method: Method<'_>,
    (token, host): (&str, &str),
) -> Result<(), parser::Error> {
    let from = msg
        .header(HeaderName::From)
        .ok_or(parser::Error::MissingHeader(HeaderName::From))?;
    let to = msg
        .header(HeaderName::To)
        .ok_or(parser::Error::MissingHeader(HeaderName::To))?;
    super::call::put_header(&mut w, "From", from, from_tag)?;
    super::call::put_header(&mut w, "To", to, to_tag)?;
    w.copy_named(msg, HeaderName::CallId);
    w.header_with("CSeq", |o| {
        parser::put_u32(o, out_cseq);
        o.put_u8(b' ');
        o.put_slice(method.as_str().as_bytes());
    });
    if matches!(method, Method::Invite | Method::Update) {
        w.header_with("Contact", |o| put_contact(o, token, host));
    }
    w.copy_headers(msg, super::call::end_to_end);
    w.finish(super::call::body(data, msg));
    Ok(())
}
