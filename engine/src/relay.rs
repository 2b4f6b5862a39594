//! The relay between the caller's leg and a phone's leg (a signalling-only
//! B2BUA, step 4 of the call flow in [`crate::calls`]): in-dialog requests
//! both ways with per-leg Via, tags and CSeq; CANCEL from the caller; the
//! ACK of a 2xx.
//!
//! Both legs keep the caller's Call-ID and From-tag. The caller's leg sees
//! sipis's own To-tag (`Call::up`, a [`Dialog`] where sipis is the UAS),
//! each phone's leg the phone's (`Leg::dialog`, sipis the UAC). Every
//! relayed request has a server transaction on the side it came from and a
//! client transaction on the side it goes to, so retransmissions are
//! absorbed per leg; a 2xx to INVITE and its ACK pass end to end, and a
//! phone re-sending its 2xx after sipis ACKed it gets the same ACK again.
//!
//! [`Dialog`]: crate::dialog::Dialog

use crate::calls::{CallState, Calls, Env, Reinvite, Relay};
use crate::context::Context;
use crate::error::SipError;
use crate::outcome::Outcome;
use crate::output::{Flow, Transmit};
use crate::request::{begin_request, end_to_end, next_hop, put_contact, reason_phrase};
use crate::transaction::{Kind, TxKey};
use crate::transactions::TxOwner;
use bytes::Bytes;
use sipis_parser::{self as parser, parse, HeaderName, Message, Method, Writer, EMPTY_HEADER};
use std::net::SocketAddr;
use std::time::Instant;

impl Calls {
    /// A CANCEL (RFC 3261 §9.2): answered 200 on its own transaction; the
    /// INVITE it names, if still ringing, ends with 487 and every leg is
    /// cancelled. Its `Reason` tells "answered elsewhere" (cause 200) and
    /// "declined elsewhere" (600/603) from the caller hanging up.
    pub fn incoming_cancel(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        msg: &Message<'_, '_>,
        slot: usize,
    ) {
        let target = TxKey::cancel_target(msg)
            .ok()
            .and_then(|k| env.txs.server_by_key(&k));
        let Some(inv_slot) = target else {
            return env
                .txs
                .reply_error(env.ctx, now, slot, msg, SipError::NoSuchCall);
        };
        env.txs.reply(env.ctx, now, slot, msg, 200, "OK", |_| {});
        let Some(c) = self.of_request(env.accounts, msg) else {
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
        let e = SipError::RequestTerminated;
        self.send_upstream_response(env, now, c, e.status(), e.reason(), |_| {});
        self.finish_unanswered(env, now, c, outcome);
    }

    /// An ACK outside any server transaction: the ACK of a 2xx, end to end
    /// (RFC 3261 §13.2.2.4). From the caller it goes on to the phone that
    /// answered.
    pub fn call_ack(&mut self, env: &mut Env<'_>, now: Instant, msg: &Message<'_, '_>) {
        let Some(c) = self.of_request(env.accounts, msg) else {
            return;
        };
        let to_tag = msg.to().ok().and_then(|t| t.tag());
        let from_tag = msg.from().ok().and_then(|t| t.tag());
        let Ok(cseq) = msg.cseq() else { return };
        let body = msg.body;
        let from_caller = to_tag == Some(&self.calls[c].up.local_tag[..]);
        if from_caller {
            self.up_2xx_acked(env.ctx, c, cseq.seq);
            let call = &self.calls[c];
            let CallState::Answered(leg) = call.state else {
                return;
            };
            match call.reinvite {
                Some(r) if r.to_phone && r.in_cseq == cseq.seq => {
                    self.ack_leg(env.ctx, c, leg, Some(r.out_cseq), Some(body));
                }
                _ => {
                    let l = &call.legs[leg];
                    match l.ack.clone() {
                        // The caller ACKs again because we passed on a
                        // retransmitted 2xx: the phone missed our ACK.
                        Some(ack) => env.ctx.transmits.push_back(Transmit {
                            dest: l.dest,
                            flow: l.flow,
                            payload: ack,
                        }),
                        None => self.ack_leg(env.ctx, c, leg, None, Some(body)),
                    }
                }
            }
            return;
        }
        // The phone ACKs the 2xx of a re-INVITE the caller sent.
        let call = &self.calls[c];
        if !call.legs.iter().any(|l| l.dialog.is_from_peer(from_tag)) {
            return;
        }
        let Some(r) = call
            .reinvite
            .filter(|r| !r.to_phone && r.in_cseq == cseq.seq)
        else {
            return;
        };
        self.forward_upstream(env, now, c, msg, Method::Ack, Some(r.out_cseq), None);
    }

    /// A request inside a dialog (it has a To-tag): relayed to the other
    /// leg, or 481 when no call knows it.
    pub fn in_dialog(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        from: SocketAddr,
        msg: &Message<'_, '_>,
        data: &[u8],
        slot: usize,
    ) {
        let method = msg.method().unwrap_or(Method::Options);
        let Some(c) = self.of_request(env.accounts, msg) else {
            return env
                .txs
                .reply_error(env.ctx, now, slot, msg, SipError::NoSuchCall);
        };
        let to_tag = msg.to().ok().and_then(|t| t.tag());
        let from_tag = msg.from().ok().and_then(|t| t.tag());
        let call = &self.calls[c];
        let (to_phone, leg) = if to_tag == Some(&call.up.local_tag[..]) {
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
                .position(|l| l.dialog.is_from_peer(from_tag));
            (false, leg)
        };
        let Some(leg) = leg.filter(|&l| call.legs[l].state != crate::calls::LegState::Terminated)
        else {
            return env
                .txs
                .reply_error(env.ctx, now, slot, msg, SipError::NoSuchCall);
        };
        let gen = call.gen;
        if method == Method::Invite {
            env.txs
                .reply(env.ctx, now, slot, msg, 100, "Trying", |_| {});
        }
        let r = self.relays.insert(Relay {
            call: (c, gen),
            server: env.txs.server_id(slot),
            request: Bytes::copy_from_slice(data),
            from,
            to_phone,
            leg,
        });
        self.calls[c].relays += 1;
        let owner = TxOwner::Relay(r);
        if to_phone {
            self.forward_to_phone(env, now, c, leg, msg, method, owner);
        } else {
            self.forward_upstream(env, now, c, msg, method, None, Some(owner));
        }
    }

    /// Builds and sends a caller's in-dialog request to the phone.
    #[allow(clippy::too_many_arguments)]
    fn forward_to_phone(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        c: usize,
        leg: usize,
        msg: &Message<'_, '_>,
        method: Method<'_>,
        owner: TxOwner,
    ) {
        let call = &mut self.calls[c];
        let in_cseq = msg.cseq().map(|c| c.seq).unwrap_or(0);
        let l = &mut call.legs[leg];
        // PRACK keeps the INVITE's CSeq space in step: RAck names the
        // INVITE's CSeq, which this leg shares with the caller's.
        let out_cseq = l.dialog.next_cseq();
        if method == Method::Invite {
            call.reinvite = Some(Reinvite {
                in_cseq,
                out_cseq,
                to_phone: true,
            });
        }
        let l = &call.legs[leg];
        let (dest, flow) = (l.dest, l.flow);
        let ctx = &mut *env.ctx;
        let branch = ctx.new_branch();
        let d = &l.dialog;
        let w = begin_request(
            &mut ctx.buf,
            method,
            &d.remote_target,
            flow,
            self.hosts.via_for(flow),
            &branch,
            &d.route_set,
        );
        let contact = (&*call.token, self.hosts.phone_contact_for(flow), flow);
        if relayed_rest(w, d, msg, out_cseq, method, contact).is_err() {
            return;
        }
        let bytes = ctx.buf.split().freeze();
        let key = TxKey::for_request(
            branch.as_bytes(),
            self.hosts.via_for(flow).as_bytes(),
            method,
        );
        env.txs
            .start_client(env.ctx, now, bytes, key, dest, flow, kind_of(method), owner);
    }

    /// Builds and sends a phone's in-dialog request (or the ACK of a
    /// re-INVITE's 2xx) to the caller: Request-URI = the caller's Contact,
    /// Route = the INVITE's Record-Route (RFC 3261 §12.1.1, §12.2.1.1).
    #[allow(clippy::too_many_arguments)]
    fn forward_upstream(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        c: usize,
        msg: &Message<'_, '_>,
        method: Method<'_>,
        ack_cseq: Option<u32>,
        owner: Option<TxOwner>,
    ) {
        let call = &mut self.calls[c];
        if call.up.remote_target.is_empty() {
            return;
        }
        let out_cseq = match ack_cseq {
            Some(n) => n,
            None => call.up.next_cseq(),
        };
        if method == Method::Invite {
            call.reinvite = Some(Reinvite {
                in_cseq: msg.cseq().map(|c| c.seq).unwrap_or(0),
                out_cseq,
                to_phone: false,
            });
        }
        // RFC 3261 §12.2.1.1: by the route set (the provider's
        // Record-Route), else to the caller's Contact — not to wherever
        // the INVITE came from, unless that is all sipis can resolve.
        let dest = next_hop(&call.up.route_set, &call.up.remote_target).unwrap_or(call.up_src);
        let flow = call.up_flow;
        let ctx = &mut *env.ctx;
        let branch = ctx.new_branch();
        let d = &call.up;
        let w = begin_request(
            &mut ctx.buf,
            method,
            &d.remote_target,
            flow,
            self.hosts.via_for(flow),
            &branch,
            &d.route_set,
        );
        let contact = (&*call.token, &*self.hosts.contact, flow);
        if relayed_rest(w, d, msg, out_cseq, method, contact).is_err() {
            return;
        }
        let bytes = ctx.buf.split().freeze();
        match owner {
            None => ctx.transmits.push_back(Transmit {
                dest,
                flow,
                payload: bytes,
            }),
            Some(owner) => {
                let key = TxKey::for_request(
                    branch.as_bytes(),
                    self.hosts.via_for(flow).as_bytes(),
                    method,
                );
                env.txs
                    .start_client(env.ctx, now, bytes, key, dest, flow, kind_of(method), owner);
            }
        }
    }

    /// A response to a relayed request: passed back on the server
    /// transaction of the request it answers.
    pub fn relay_response(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        r: usize,
        msg: &Message<'_, '_>,
        data: &[u8],
    ) {
        let Some(relay) = self.relays.get(r) else {
            return;
        };
        let (c, gen) = relay.call;
        let (server, to_phone, leg, from) = (relay.server, relay.to_phone, relay.leg, relay.from);
        let request = relay.request.clone();
        let code = msg.status().unwrap_or(0);
        if code == 100 {
            return;
        }
        let Some(call) = self.get(c, gen) else {
            return;
        };
        let mut h = [EMPTY_HEADER; 64];
        let Ok(req) = parse(&request, &mut h) else {
            return;
        };
        let method = req.method().unwrap_or(Method::Options);
        let reason = reason_phrase(data);
        let ctx = &mut *env.ctx;
        ctx.buf.clear();
        let Ok(mut w) = parser::response_to(&mut ctx.buf, &req, code, &reason, b"", from) else {
            return;
        };
        if (200..300).contains(&code) && matches!(method, Method::Invite | Method::Update) {
            // The answer goes back to the side the request came from:
            // our Contact as that side knows it.
            let (host, flow) = if to_phone {
                (self.hosts.contact.as_str(), call.up_flow)
            } else {
                let flow = call.legs.get(leg).map_or(Flow::SharedUdp, |l| l.flow);
                (self.hosts.phone_contact_for(flow), flow)
            };
            w.header_with("Contact", |o| put_contact(o, &call.token, host, flow));
        }
        w.copy_headers(msg, end_to_end);
        w.finish(msg.body);
        let bytes = ctx.buf.split().freeze();
        if to_phone && method == Method::Invite && (200..300).contains(&code) {
            // The caller's re-INVITE: its 2xx goes again until the ACK.
            let cseq = req.cseq().map(|c| c.seq).unwrap_or(0);
            self.retransmit_up_2xx(env, now, c, server, code, bytes.clone(), cseq);
        }
        env.txs.respond(env.ctx, now, server, code, bytes);
        if code >= 200 && method == Method::Bye {
            self.dialog_ended(env.ctx, now, c, leg);
        }
    }

    /// A relayed request got no answer (Timer F/B) or could not be sent:
    /// 408 to the side that asked (RFC 3261 §16.7 step 6 for a proxy; the
    /// same for a B2BUA's relayed request).
    pub fn relay_failed(&mut self, env: &mut Env<'_>, now: Instant, r: usize) {
        let Some(relay) = self.relays.get(r) else {
            return;
        };
        let (c, gen) = relay.call;
        let (server, leg, from) = (relay.server, relay.leg, relay.from);
        let request = relay.request.clone();
        let mut h = [EMPTY_HEADER; 64];
        let Ok(req) = parse(&request, &mut h) else {
            return;
        };
        let method = req.method().unwrap_or(Method::Options);
        let e = SipError::RequestTimeout;
        let ctx = &mut *env.ctx;
        ctx.buf.clear();
        let Ok(w) = parser::response_to(&mut ctx.buf, &req, e.status(), e.reason(), b"", from)
        else {
            return;
        };
        w.finish(b"");
        let bytes = ctx.buf.split().freeze();
        env.txs.respond(env.ctx, now, server, e.status(), bytes);
        if method == Method::Bye && self.get(c, gen).is_some() {
            // A BYE that reached nobody still ends the dialog here.
            self.dialog_ended(env.ctx, now, c, leg);
        }
    }

    /// The client transaction of a relay is over: forget the relay.
    pub fn relay_done(&mut self, _ctx: &mut Context, r: usize) {
        if self.relays.contains(r) {
            let relay = self.relays.remove(r);
            let (c, gen) = relay.call;
            if let Some(call) = self.calls.get_mut(c).filter(|x| x.gen == gen) {
                call.relays = call.relays.saturating_sub(1);
            }
        }
    }
}

fn kind_of(method: Method<'_>) -> Kind {
    if method == Method::Invite {
        Kind::Invite
    } else {
        Kind::NonInvite
    }
}

/// The rest of a relayed request after its Via, Route and Max-Forwards:
/// From and To as the other leg's UA wrote them with this leg's tags
/// (`pn-*` stripped), the Call-ID, this leg's CSeq, our Contact
/// (`contact` = token, host) where a target refresh needs one, the
/// end-to-end headers and the body.
fn relayed_rest(
    mut w: Writer<'_>,
    dialog: &crate::dialog::Dialog,
    msg: &Message<'_, '_>,
    out_cseq: u32,
    method: Method<'_>,
    (token, host, flow): (&str, &str, Flow),
) -> Result<(), parser::Error> {
    dialog.write_relayed_parties(&mut w, msg, method, out_cseq)?;
    if matches!(method, Method::Invite | Method::Update) {
        w.header_with("Contact", |o| put_contact(o, token, host, flow));
    }
    w.copy_headers(msg, end_to_end);
    w.finish(msg.body);
    Ok(())
}
