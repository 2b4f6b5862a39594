//! Incoming calls: the pending-call map, push, wake, the legs to the
//! phones and the late wake. The relay of in-dialog requests between the
//! legs is in [`crate::relay`].
//!
//! ## The flow of a call
//!
//! 1. An INVITE for an account arrives (its Contact token in the
//!    Request-URI, or its AOR for an account in proxy mode): `100 Trying`,
//!    the call goes into the pending-call map, and every push device of the
//!    account is pushed (`incoming_call`: Call-ID, caller, callee). A device
//!    whose TCP/TLS flow is open, or one without push, is INVITEd at once
//!    over its flow instead (a closed flow took its binding with it, so
//!    such a device is pushed). **The frozen app**: a mobile OS may freeze
//!    an app and keep its connection open; a connected push device whose
//!    INVITE gets no provisional answer within `stream_answer_wait` is
//!    pushed as well and from then on is a pushed device like any other
//!    (step 2, the late wake). Its first leg stays: the thawed app may
//!    answer there; if it REGISTERs over a new connection instead, it is
//!    INVITEd there and the silent leg is cancelled (no second ringing). A
//!    leg whose connection closes before the device answered ends the same
//!    way: the device is pushed, and INVITEd wherever it registers next.
//! 2. Once the push service accepted a push, the caller gets `180 Ringing`
//!    with `X-Sipis-Push-Status: Push-Notification-Sent` (configurable).
//! 3. The woken app REGISTERs (its readiness, [`crate::registrar`]); sipis
//!    INVITEs it over that flow with the caller's From, To, Call-ID (the
//!    one in the push, so CallKit pairs them) and SDP, `pn-*` stripped.
//! 4. From then on the legs are relayed ([`crate::relay`]).
//! 5. Several devices: the first 2xx wins; the others get a CANCEL with
//!    `Reason: SIP;cause=200;text="Call completed elsewhere"`. A device
//!    answering 486/600/603 declines the call.
//! 6. No device within `device_wait`: `480` with `X-Sipis-Reason:
//!    No-Response-From-Device`, and a `missed_call` push. A device already
//!    ringing then is bounded by Timer C instead.
//! 7. Repeated REGISTERs of a waking app give no second INVITE. No push
//!    for in-dialog requests, INVITEs with `Replaces` or `Priority:
//!    non-urgent`. A 503/408 from one leg does not end the wait.
//!
//! ## The late wake (the iOS CallKit fix)
//!
//! iOS shows the call screen the moment a VoIP push arrives and kills an
//! app that then reports no call. So the outcome of every pushed call is
//! kept for `late_wake_window` after it ends; a pushed device that
//! registers inside the window gets an INVITE with the pushed Call-ID and,
//! on its provisional answer (over a stream: or after `late_wake_guard`),
//! a CANCEL whose `Reason` says why ([`Outcome::cancel_reason`]): answered
//! elsewhere (cause 200), declined (cause 600), or the caller's own Reason
//! (missed). The 487 is ACKed by the transaction layer. The provider's
//! CANCEL's `Reason` tells "answered elsewhere" from "caller hung up".
//! Tests: `late_wake_*` in `tests/calls.rs` (simulated) and
//! `tests/calls_e2e.rs` (Kamailio and sipp).

use std::time::Duration;

use crate::accounts::Accounts;
use crate::config::CallConfig;
use crate::context::{CallTimer, Context, Timer};
use crate::dialog::Dialog;
use crate::error::SipError;
use crate::outcome::{Outcome, COMPLETED_ELSEWHERE};
use crate::output::{Event, Flow, Transmit};
use crate::push::{Platform, Push, PushKind, PushOutcome, PushResult};
use crate::registrar::Registrar;
use crate::registration::AccountId;
use crate::request::{begin_request, end_to_end, put_contact, reason_phrase};
use crate::transaction::{ClientEvent, Kind, TimerConfig, TxKey};
use crate::transactions::{ServerId, Transactions, TxOwner};
use crate::wheel::TimerHandle;
use bytes::{BufMut, Bytes, BytesMut};
use sipis_parser::{
    self as parser, is_push_param, parse, HeaderName, Message, Method, NameAddr, Writer,
    EMPTY_HEADER,
};
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

/// How long a phone may ring once `device_wait` is over (RFC 3261
/// §16.6 step 11, Timer C: more than 3 minutes).
const TIMER_C: Duration = Duration::from_secs(181);

/// The longest a dialog's record is kept without a BYE (a lost BYE must
/// not leak the call record).
const MAX_DIALOG: Duration = Duration::from_secs(12 * 3600);

/// A 2xx to an INVITE of the caller, sent again until its ACK: sipis is
/// the UAS of the caller's leg (RFC 3261 §13.3.1.4: T1 doubling up to T2,
/// for 64·T1). A phone retransmitting its own 2xx is not enough: over
/// TCP/TLS it need not, and the caller's side is UDP.
pub(crate) struct UpRetransmit {
    /// The INVITE server transaction it answers.
    pub server: ServerId,
    pub code: u16,
    pub bytes: Bytes,
    /// The INVITE's CSeq (the caller's ACK carries it).
    pub cseq: u32,
    pub interval: Duration,
    pub until: Instant,
    pub timer: TimerHandle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallState {
    /// Waiting for a device: pushed, maybe some legs ringing.
    Waiting,
    /// A leg answered; the dialog is up.
    Answered(usize),
    /// Over; kept for the late-wake window.
    Ended,
}

/// Why a leg exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LegKind {
    /// A device that may answer the call.
    Call,
    /// A device that woke after the call ended: INVITE, then CANCEL with
    /// the outcome's Reason (the late wake).
    LateWake,
}

/// Where a leg's INVITE transaction stands, from sipis's side (the UAC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LegState {
    /// INVITE sent, nothing back.
    Calling,
    /// A provisional answer came; the device may still answer.
    Ringing,
    /// sipis wants the INVITE cancelled but may not send the CANCEL yet:
    /// it goes with the first provisional answer (RFC 3261 §9.1) or, over
    /// a stream, when the guard timer fires. Its Reason, if any.
    CancelPending {
        reason: Option<Bytes>,
        guard: Option<TimerHandle>,
    },
    /// CANCEL sent; the 487 (or a 2xx that crossed it) is awaited.
    Cancelling,
    /// Answered with a 2xx, and ACKed.
    Answered,
    /// Over: a final non-2xx, Timer B, a BYE, or hung up by sipis.
    Terminated,
}

/// The INVITE sipis sent to one device and the dialog it makes.
pub(crate) struct Leg {
    pub device: Box<str>,
    pub kind: LegKind,
    pub state: LegState,
    pub dest: SocketAddr,
    pub flow: Flow,
    /// The phone answered this INVITE (provisionally or finally).
    pub heard: bool,
    /// Its connection closed before a final answer.
    pub lost: bool,
    /// `stream_answer_wait` of a connected push device (the frozen app).
    pub answer_wait: Option<TimerHandle>,
    /// sipis (UAC) ↔ the phone; its remote target follows the phone's
    /// Contact in 18x/2xx.
    pub dialog: Dialog,
    /// The INVITE's Request-URI and branch: a CANCEL repeats them (RFC
    /// 3261 §9.1).
    pub request_uri: Bytes,
    pub branch: Box<str>,
    /// The ACK sipis sent for the phone's 2xx: resent when the 2xx is.
    pub ack: Option<Bytes>,
}

impl Leg {
    /// A device that answered provisionally and may still answer.
    pub fn ringing(&self) -> bool {
        self.state == LegState::Ringing && self.kind == LegKind::Call
    }

    /// INVITE or CANCEL still in flight.
    fn busy(&self) -> bool {
        matches!(
            self.state,
            LegState::Calling
                | LegState::Ringing
                | LegState::CancelPending { .. }
                | LegState::Cancelling
        )
    }

    fn live(&self) -> bool {
        self.state != LegState::Terminated
    }

    /// A leg that cannot reach its device any more, now that the device
    /// is bound over `bound`: it went over another connection and either
    /// lost it or never heard back on it (a frozen app that registered
    /// anew elsewhere). Such a leg does not stop the device from being
    /// INVITEd over its new flow.
    fn stranded(&self, bound: Option<Flow>) -> bool {
        self.flow.is_stream() && Some(self.flow) != bound && (self.lost || !self.heard)
    }
}

/// A relayed request waiting for its answer.
pub(crate) struct Relay {
    pub call: (usize, u64),
    /// The server transaction to answer on.
    pub server: ServerId,
    /// The request as received.
    pub request: Bytes,
    pub from: SocketAddr,
    /// Forwarded towards a phone (else towards the caller).
    pub to_phone: bool,
    pub leg: usize,
}

/// A re-INVITE in flight: the ACK for its 2xx is mapped through it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reinvite {
    pub in_cseq: u32,
    pub out_cseq: u32,
    pub to_phone: bool,
}

/// Who is calling whom, as pushes and the outcome row name them.
struct Parties {
    /// From's URI, without tag or `pn-*`.
    caller_uri: String,
    caller_name: Option<String>,
    /// From's URI as received (the `call_outcomes.caller` column).
    caller_raw: String,
    /// To's URI, without `pn-*`.
    callee: String,
}

/// One incoming call in the shard's pending-call map.
pub(crate) struct Call {
    pub gen: u64,
    pub account: AccountId,
    /// The account's Contact token (our Contact on both legs).
    pub token: Box<str>,
    /// The caller's INVITE as received: responses on its transaction copy
    /// its Via, From, To and CSeq (RFC 3261 §8.2.6.2); legs copy its
    /// end-to-end headers and SDP.
    pub invite: Bytes,
    /// sipis (UAS) ↔ the caller.
    pub up: Dialog,
    pub up_src: SocketAddr,
    pub up_flow: Flow,
    /// The caller's INVITE server transaction.
    pub server: ServerId,
    parties: Parties,
    pub state: CallState,
    pub legs: Vec<Leg>,
    /// Devices pushed for this call.
    pub pushed: Vec<Box<str>>,
    /// The call may push (step 7: not for `Replaces` or `Priority:
    /// non-urgent`).
    pub may_push: bool,
    pub pushes_pending: u32,
    pub push_ok: bool,
    pub created: Instant,
    pub wait: Option<TimerHandle>,
    pub purge: Option<TimerHandle>,
    pub outcome: Option<(Outcome, Instant)>,
    /// The Reason of the provider's CANCEL (passed on to late wakes).
    pub up_reason: Option<Bytes>,
    /// The 2xx sent upstream (re-sent when the phone retransmits its own).
    pub up_2xx: Option<Bytes>,
    pub early_leg: Option<usize>,
    /// The leg whose reliable provisionals (RFC 3262) reach the caller:
    /// its PRACKs go there.
    pub reliable_leg: Option<usize>,
    pub reinvite: Option<Reinvite>,
    /// Relays in flight (a BYE ends the call when its answer is relayed).
    pub relays: u32,
    /// The 2xx sent to the caller, retransmitted until its ACK.
    pub up_retx: Option<UpRetransmit>,
    /// The CSeq of the caller's INVITE whose 2xx was ACKed last.
    pub up_acked: Option<u32>,
    /// `device_wait` ran out while a device was ringing: the call ends
    /// when the last ringing leg does.
    pub wait_over: bool,
    pub timed: CallMarks,
}

/// When the milestones of a call happened (for the latency histograms).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CallMarks {
    pub registered: bool,
    pub rung: bool,
}

/// Latency histograms of the call flow, microseconds from the INVITE.
pub struct CallLatency {
    /// INVITE → the mediator accepted the push.
    pub push: hdrhistogram::Histogram<u64>,
    /// INVITE → the woken device's REGISTER.
    pub device_register: hdrhistogram::Histogram<u64>,
    /// INVITE → the first ringing (18x) from a device.
    pub ringing: hdrhistogram::Histogram<u64>,
    /// INVITE → the 2xx.
    pub answer: hdrhistogram::Histogram<u64>,
}

impl Default for CallLatency {
    fn default() -> Self {
        let h = || {
            hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3)
                .expect("valid histogram bounds")
        };
        CallLatency {
            push: h(),
            device_register: h(),
            ringing: h(),
            answer: h(),
        }
    }
}

fn record(h: &mut hdrhistogram::Histogram<u64>, from: Instant, now: Instant) {
    let micros = now.saturating_duration_since(from).as_micros() as u64;
    h.saturating_record(micros.max(1));
}

/// Why a push is awaited.
pub(crate) struct PushWait {
    call: (usize, u64),
    pub device: Box<str>,
    kind: PushKind,
}

/// What the calls part uses of the rest of the engine while it handles
/// one input: the shared context, the transaction layer, the accounts
/// (Contact tokens) and the devices (push targets, bindings).
pub(crate) struct Env<'a> {
    pub ctx: &'a mut Context,
    pub txs: &'a mut Transactions,
    pub accounts: &'a Accounts,
    pub devices: &'a Registrar,
}

/// Where sipis's own Via and Contacts point.
pub(crate) struct Hosts {
    /// Via sent-by of this shard's socket.
    pub via: String,
    /// Our Contact host towards the provider.
    pub contact: String,
    /// Our Contact host towards the phones.
    pub phone_contact: String,
    /// The TCP and TLS listeners' public `host:port` (Via and Contact of
    /// what goes over a phone's connection).
    pub tcp: String,
    pub tls: String,
}

impl Hosts {
    /// The Via sent-by of a request leaving over `flow`: the socket it
    /// leaves from (RFC 3261 §18.1.1), so a phone that ignores `rport`
    /// still answers where its NAT binding points — the shared port.
    pub fn via_for(&self, flow: Flow) -> &str {
        match flow {
            Flow::SharedUdp => &self.phone_contact,
            Flow::Udp => &self.via,
            Flow::Tcp(_) => &self.tcp,
            Flow::Tls(_) => &self.tls,
        }
    }

    /// Our Contact host towards a phone reached over `flow`.
    pub fn phone_contact_for(&self, flow: Flow) -> &str {
        match flow {
            Flow::Udp | Flow::SharedUdp => &self.phone_contact,
            Flow::Tcp(_) | Flow::Tls(_) => self.via_for(flow),
        }
    }
}

/// The pending-call map of one shard and everything hanging off it.
pub(crate) struct Calls {
    pub cfg: CallConfig,
    pub hosts: Hosts,
    pub timers: TimerConfig,
    pub calls: Slab<Call>,
    /// Call-ID → the slots of its calls: one per account, since a
    /// provider forking one call to several accounts (a hunt group) sends
    /// the same Call-ID to each.
    call_ids: HashMap<Box<[u8]>, Vec<usize>>,
    /// Account → its calls' slots.
    by_account: HashMap<AccountId, Vec<usize>>,
    pub relays: Slab<Relay>,
    pushes: VecDeque<Push>,
    push_waits: HashMap<String, PushWait>,
    pub latency: CallLatency,
}

impl Calls {
    pub fn new(cfg: CallConfig, hosts: Hosts, timers: TimerConfig) -> Calls {
        Calls {
            cfg,
            hosts,
            timers,
            calls: Slab::new(),
            call_ids: HashMap::new(),
            by_account: HashMap::new(),
            relays: Slab::new(),
            pushes: VecDeque::new(),
            push_waits: HashMap::new(),
            latency: CallLatency::default(),
        }
    }

    /// Calls in the map (waiting, up, or kept for late wakes).
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// The next push for the mediator.
    pub fn poll_push(&mut self) -> Option<Push> {
        self.pushes.pop_front()
    }

    pub fn get(&self, c: usize, gen: u64) -> Option<&Call> {
        self.calls.get(c).filter(|x| x.gen == gen)
    }

    fn get_mut(&mut self, c: usize, gen: u64) -> Option<&mut Call> {
        self.calls.get_mut(c).filter(|x| x.gen == gen)
    }

    /// The call with this Call-ID for `account` (the account the request
    /// names); when the request names none, the only or first call with
    /// that Call-ID.
    pub fn find(&self, account: Option<AccountId>, call_id: &[u8]) -> Option<usize> {
        let slots = self.call_ids.get(call_id)?;
        match account {
            Some(a) => slots.iter().copied().find(|&c| self.calls[c].account == a),
            None => slots.first().copied(),
        }
    }

    /// The call a request belongs to: by the account its Request-URI
    /// names (our Contact's token on either leg) and its Call-ID.
    pub fn of_request(&self, accounts: &Accounts, msg: &Message<'_, '_>) -> Option<usize> {
        let call_id = msg.call_id().ok()?;
        self.find(accounts.of_request(msg), call_id)
    }

    // ---- incoming INVITE ------------------------------------------------

    /// A new INVITE (no To-tag) from the provider, or routed to an account
    /// in proxy mode (step 1 of the flow). `slot` is its server transaction.
    #[allow(clippy::too_many_arguments)]
    pub fn incoming_invite(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        from: SocketAddr,
        flow: Flow,
        msg: &Message<'_, '_>,
        data: &[u8],
        slot: usize,
    ) {
        if self.calls.len() >= self.cfg.max_calls {
            // The pending-call map is full: the caller (or its proxy) tries
            // again later or elsewhere (RFC 3261 §21.5.4).
            env.ctx.stats.overloaded += 1;
            return env
                .txs
                .reply_error(env.ctx, now, slot, msg, SipError::Overloaded);
        }
        env.ctx.stats.calls += 1;
        // RFC 3261 §17.2.1: a 100 at once stops the caller's retransmissions.
        env.txs
            .reply(env.ctx, now, slot, msg, 100, "Trying", |_| {});
        let Some((account, token)) = env
            .accounts
            .of_request(msg)
            .and_then(|id| env.accounts.get(id).map(|a| (id, a.cfg.token.as_str())))
        else {
            // Answered as an account that exists but has no reachable device
            // would be: nothing tells a caller probing for users which exist.
            let e = SipError::DeviceNotReachable;
            return env.txs.reply_error(env.ctx, now, slot, msg, e);
        };
        let Ok(call_id) = msg.call_id() else { return };
        if self.find(Some(account), call_id).is_some() {
            // A second INVITE for this account with a live Call-ID but
            // another branch: a merged request (RFC 3261 §8.2.2.2) or a
            // spiral, not a new call. The same Call-ID for another account
            // is a fork of the provider's (a hunt group): a call of its own.
            return env
                .txs
                .reply_error(env.ctx, now, slot, msg, SipError::LoopDetected);
        }
        // Step 7: no push for a call replacing another one or a non-urgent
        // one; such a call only reaches phones that are up.
        let may_push = msg.replaces().is_none()
            && !matches!(msg.priority(), Some(Ok(p)) if p.eq_ignore_ascii_case("non-urgent"));
        let tag = env.ctx.new_tag();
        let up_cseq = env.ctx.rng.below(10_000) as u32 + 1;
        let (up, parties) =
            match Dialog::uas(msg, tag.as_bytes(), up_cseq).and_then(|d| Ok((d, parties(msg)?))) {
                Ok(x) => x,
                Err(e) => return env.txs.reply_error(env.ctx, now, slot, msg, e.into()),
            };
        let gen = env.ctx.next_generation();
        let c = self.calls.insert(Call {
            gen,
            account,
            token: token.into(),
            invite: Bytes::copy_from_slice(data),
            up,
            up_src: from,
            up_flow: flow,
            server: env.txs.server_id(slot),
            parties,
            state: CallState::Waiting,
            legs: Vec::new(),
            pushed: Vec::new(),
            may_push,
            pushes_pending: 0,
            push_ok: false,
            created: now,
            wait: None,
            purge: None,
            outcome: None,
            up_reason: None,
            up_2xx: None,
            early_leg: None,
            reliable_leg: None,
            reinvite: None,
            relays: 0,
            wait_over: false,
            up_retx: None,
            up_acked: None,
            timed: CallMarks::default(),
        });
        self.call_ids.entry(call_id.into()).or_default().push(c);
        self.by_account.entry(account).or_default().push(c);
        // Phones that are up get the INVITE now; the others are woken.
        let devices: Vec<(Box<str>, bool, bool, bool)> = env
            .devices
            .of(account)
            .iter()
            .map(|d| {
                let up = d.is_registered(now);
                let connected = up && d.binding.as_ref().is_some_and(|b| b.flow.is_stream());
                (d.name.clone(), up, connected, d.push.is_some())
            })
            .collect();
        for (name, up, connected, push) in devices {
            if push && may_push && !connected {
                // RFC 8599 §4.1.2 / §5.6: a push binding is woken and then
                // its refresh REGISTER awaited, even while its SIP binding
                // lasts — over UDP nothing tells a live app from one the OS
                // suspended. The INVITE follows that REGISTER.
                self.push(env, now, c, &name, PushKind::IncomingCall, None);
            } else if up {
                // Connected (its TCP/TLS flow is open), a phone without push,
                // or a call that may not push: INVITEd where it registered.
                self.start_leg(env, now, c, &name, LegKind::Call);
            }
        }
        let call = &mut self.calls[c];
        if call.legs.is_empty() && call.pushes_pending == 0 {
            // Nobody to ring and nobody to wake.
            return self.end_unanswered(env, now, c, Outcome::Unreachable);
        }
        let wait = self.cfg.device_wait;
        let t = env
            .ctx
            .wheel
            .insert(now + wait, Timer::Call(c, gen, CallTimer::Wait));
        self.calls[c].wait = Some(t);
    }

    // ---- pushes -----------------------------------------------------------

    fn push(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        c: usize,
        device: &str,
        kind: PushKind,
        reason: Option<Outcome>,
    ) {
        let _ = now;
        let call = &self.calls[c];
        let Some(d) = env.devices.device(call.account, device) else {
            return;
        };
        let Some(target) = d.push.as_ref() else {
            return;
        };
        let Some(platform) = target.platform() else {
            return;
        };
        let mut id = String::with_capacity(16);
        env.ctx.rng.hex_into(&mut id, 16);
        let p = &call.parties;
        self.pushes.push_back(Push {
            id: id.clone(),
            kind,
            account: call.account,
            device: d.name.to_string(),
            platform,
            token: target.prid.to_string(),
            topic: target.topic(),
            call_id: String::from_utf8_lossy(&call.up.call_id).into_owned(),
            caller_uri: p.caller_uri.clone(),
            caller_name: p.caller_name.clone(),
            callee: p.callee.clone(),
            reason,
        });
        let name: Box<str> = d.name.clone();
        let gen = call.gen;
        self.push_waits.insert(
            id,
            PushWait {
                call: (c, gen),
                device: name.clone(),
                kind,
            },
        );
        env.ctx.stats.pushes_requested += 1;
        let call = &mut self.calls[c];
        if kind == PushKind::IncomingCall {
            call.pushes_pending += 1;
            if !call.pushed.contains(&name) {
                call.pushed.push(name);
            }
        }
    }

    /// The mediator answered a push: the wait it ends (counted), or `None`
    /// for a push this shard does not know.
    pub fn push_answered(&mut self, ctx: &mut Context, outcome: &PushOutcome) -> Option<PushWait> {
        let wait = self.push_waits.remove(&outcome.id)?;
        match outcome.result {
            PushResult::Sent => ctx.stats.pushes_sent += 1,
            PushResult::TokenDead => ctx.stats.pushes_token_dead += 1,
            PushResult::Failed | PushResult::Rejected => ctx.stats.pushes_failed += 1,
        }
        Some(wait)
    }

    /// What an answered push means for its call (step 2 of the flow).
    pub fn push_result(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        wait: PushWait,
        result: PushResult,
    ) {
        if wait.kind != PushKind::IncomingCall {
            return;
        }
        let (c, gen) = wait.call;
        let push_status = self.cfg.push_status_header;
        let Some(call) = self.get_mut(c, gen) else {
            return;
        };
        call.pushes_pending = call.pushes_pending.saturating_sub(1);
        if call.state != CallState::Waiting {
            return;
        }
        if result == PushResult::Sent {
            let first = !call.push_ok;
            call.push_ok = true;
            if first {
                let created = call.created;
                record(&mut self.latency.push, created, now);
                // The caller hears that the phone is being woken.
                self.send_upstream_response(env, now, c, 180, "Ringing", |w| {
                    if push_status {
                        w.header("X-Sipis-Push-Status", b"Push-Notification-Sent");
                    }
                });
            }
        } else if call.pushes_pending == 0 && !call.push_ok && !call.legs.iter().any(Leg::live) {
            // Nobody was woken and nobody rings: no point in waiting.
            self.end_unanswered(env, now, c, Outcome::Unreachable);
        }
    }

    // ---- a device is up -------------------------------------------------

    /// A device of `account` registered: INVITE it for every call waiting
    /// for it (step 3), and late-wake it for calls that ended while it
    /// slept.
    pub fn device_ready(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        account: AccountId,
        device: &str,
    ) {
        let Some(calls) = self.by_account.get(&account).cloned() else {
            return;
        };
        let window = self.cfg.late_wake_window;
        let bound = env
            .devices
            .device(account, device)
            .and_then(|d| d.binding.as_ref())
            .map(|b| b.flow);
        for c in calls {
            let Some(call) = self.calls.get_mut(c) else {
                continue;
            };
            // Step 7: a device that already has a leg (repeated REGISTERs
            // while waking) gets no second INVITE — unless that leg is
            // stranded on a connection the device left (the frozen app
            // that woke on a new one, or a connection that closed).
            let mine = || call.legs.iter().filter(|l| &*l.device == device);
            if mine().any(|l| !l.stranded(bound)) {
                continue;
            }
            let stranded: Vec<usize> = (0..call.legs.len())
                .filter(|&i| &*call.legs[i].device == device && call.legs[i].busy())
                .collect();
            match call.state {
                CallState::Waiting => {
                    if !call.timed.registered && call.pushed.iter().any(|d| &**d == device) {
                        call.timed.registered = true;
                        let created = call.created;
                        record(&mut self.latency.device_register, created, now);
                    }
                    // The silent INVITE on the old connection is withdrawn
                    // (a thawing app must not ring for it too).
                    for i in stranded {
                        self.cancel_leg(env, now, c, i, None);
                    }
                    self.start_leg(env, now, c, device, LegKind::Call);
                }
                CallState::Answered(_) | CallState::Ended => {
                    let pushed = call.pushed.iter().any(|d| &**d == device);
                    let inside = call.outcome.is_some_and(|(_, at)| now < at + window);
                    if pushed && inside {
                        env.ctx.stats.late_wakes += 1;
                        self.start_leg(env, now, c, device, LegKind::LateWake);
                    }
                }
            }
        }
    }

    /// INVITEs `device` over the flow its registration came on, built from
    /// the caller's INVITE (step 3).
    fn start_leg(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        c: usize,
        device: &str,
        kind: LegKind,
    ) {
        let call = &self.calls[c];
        let Some(b) = env
            .devices
            .device(call.account, device)
            .and_then(|d| d.binding.as_ref())
            .filter(|b| b.expires > now)
        else {
            return;
        };
        let (dest, flow, target) = (b.addr, b.flow, b.uri.clone());
        let invite = call.invite.clone();
        let gen = call.gen;
        let mut h = [EMPTY_HEADER; 64];
        let Ok(inv) = parse(&invite, &mut h) else {
            return;
        };
        let Ok(dialog) = Dialog::uac_for(&inv, target.clone()) else {
            return;
        };
        let ctx = &mut *env.ctx;
        let branch = ctx.new_branch();
        let mut w = begin_request(
            &mut ctx.buf,
            Method::Invite,
            &target,
            flow,
            self.hosts.via_for(flow),
            &branch,
            &[],
        );
        dialog.write_parties(&mut w, Method::Invite, dialog.invite_cseq);
        let (token, host) = (&call.token, self.hosts.phone_contact_for(flow));
        w.header_with("Contact", |o| put_contact(o, token, host, flow));
        w.copy_headers(&inv, end_to_end);
        // The body as the parser found it: Content-Length bytes, or over
        // UDP without one the rest of the datagram (RFC 3261 §18.3).
        w.finish(inv.body);
        let bytes = ctx.buf.split().freeze();
        let key = TxKey::for_request(
            branch.as_bytes(),
            self.hosts.via_for(flow).as_bytes(),
            Method::Invite,
        );
        // The frozen app: a connected push device that the call may push
        // (and has not) gets `stream_answer_wait` to answer provisionally.
        let pushable = env
            .devices
            .device(call.account, device)
            .and_then(|d| d.push.as_ref())
            .is_some_and(|p| p.platform().is_some());
        let call = &mut self.calls[c];
        let leg = call.legs.len();
        let answer_wait = (kind == LegKind::Call
            && flow.is_stream()
            && pushable
            && call.may_push
            && !call.pushed.iter().any(|d| &**d == device))
        .then(|| {
            env.ctx.wheel.insert(
                now + self.cfg.stream_answer_wait,
                Timer::Call(c, gen, CallTimer::AnswerWait(leg as u16)),
            )
        });
        call.legs.push(Leg {
            device: device.into(),
            kind,
            state: LegState::Calling,
            dest,
            flow,
            heard: false,
            lost: false,
            answer_wait,
            dialog,
            request_uri: target,
            branch: branch.into(),
            ack: None,
        });
        env.txs.start_client(
            env.ctx,
            now,
            bytes,
            key,
            dest,
            flow,
            Kind::Invite,
            TxOwner::Leg(c, gen, leg),
        );
        if kind == LegKind::LateWake {
            // The INVITE only lets CallKit close the call screen properly;
            // the CANCEL follows on the first provisional answer or after
            // the guard time.
            let reason = self.late_reason(c);
            self.cancel_leg(env, now, c, leg, reason);
        }
    }

    /// The Reason a device that comes too late gets in its CANCEL (a late
    /// wake) or BYE (a 2xx after the call was decided), from the outcome.
    fn late_reason(&self, c: usize) -> Option<Bytes> {
        let call = &self.calls[c];
        match call.outcome.map(|(o, _)| o) {
            Some(o) => match o.cancel_reason() {
                Some(r) => Some(Bytes::from_static(r)),
                None => call.up_reason.clone(),
            },
            None => None,
        }
    }

    /// Cancels a leg: now if the phone answered provisionally, else when
    /// it does (RFC 3261 §9.1) — or, over a stream, when the guard time
    /// passes.
    fn cancel_leg(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        c: usize,
        leg: usize,
        reason: Option<Bytes>,
    ) {
        let guard = self.cfg.late_wake_guard;
        let call = &mut self.calls[c];
        let gen = call.gen;
        let l = &mut call.legs[leg];
        match l.state {
            LegState::Calling => {
                // §9.1 forbids a CANCEL before a provisional answer because
                // over UDP it can overtake the INVITE: the phone answers it
                // 481, then rings when the INVITE's retransmission arrives,
                // and no second CANCEL can be sent (same branch). A compliant
                // phone sends 100 Trying at once (§17.2.1), retransmitted on
                // every INVITE retransmission, so the CANCEL follows it; if
                // nothing ever comes, Timer B ends the leg. Over a stream
                // the INVITE is delivered first, so the guard time may
                // cover phones that send no provisional there.
                let guard = l.flow.is_stream().then(|| {
                    env.ctx.wheel.insert(
                        now + guard,
                        Timer::Call(c, gen, CallTimer::Guard(leg as u16)),
                    )
                });
                l.state = LegState::CancelPending { reason, guard };
            }
            LegState::Ringing => self.send_cancel(env, now, c, leg, reason),
            // Already on its way out, or answered (a BYE ends that).
            LegState::CancelPending { .. }
            | LegState::Cancelling
            | LegState::Answered
            | LegState::Terminated => {}
        }
    }

    /// Sends the CANCEL of a leg's INVITE (RFC 3261 §9.1: same
    /// Request-URI, Call-ID, From, To, CSeq number and top Via).
    fn send_cancel(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        c: usize,
        leg: usize,
        reason: Option<Bytes>,
    ) {
        let l = &mut self.calls[c].legs[leg];
        if let LegState::CancelPending { guard, .. } = &mut l.state {
            env.ctx.cancel(guard.take());
        }
        l.state = LegState::Cancelling;
        let (dest, flow) = (l.dest, l.flow);
        let ctx = &mut *env.ctx;
        let mut w = begin_request(
            &mut ctx.buf,
            Method::Cancel,
            &l.request_uri,
            flow,
            self.hosts.via_for(flow),
            &l.branch,
            &[],
        );
        // The To of the INVITE: without the phone's tag.
        let mut invite_dialog = l.dialog.clone();
        invite_dialog.remote_tag = None;
        invite_dialog.write_parties(&mut w, Method::Cancel, l.dialog.invite_cseq);
        if let Some(r) = &reason {
            w.header("Reason", r);
        }
        w.finish(b"");
        let bytes = ctx.buf.split().freeze();
        let key = TxKey::for_request(
            l.branch.as_bytes(),
            self.hosts.via_for(flow).as_bytes(),
            Method::Cancel,
        );
        env.txs.start_client(
            env.ctx,
            now,
            bytes,
            key,
            dest,
            flow,
            Kind::NonInvite,
            TxOwner::None,
        );
    }

    // ---- answers from a device leg -----------------------------------------

    /// A response to a leg's INVITE (every 2xx, retransmissions included).
    #[allow(clippy::too_many_arguments)]
    pub fn leg_response(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        c: usize,
        gen: u64,
        leg: usize,
        msg: &Message<'_, '_>,
        data: &[u8],
    ) {
        let Some(call) = self.calls.get_mut(c).filter(|x| x.gen == gen) else {
            return;
        };
        let Some(l) = call.legs.get_mut(leg) else {
            return;
        };
        let code = msg.status().unwrap_or(0);
        if code > 100 {
            l.dialog.update_from_response(msg);
        }
        // Any answer, 100 Trying included, shows the app is running.
        l.heard = true;
        env.ctx.cancel(l.answer_wait.take());
        match code {
            100..=199 => {
                match std::mem::replace(&mut l.state, LegState::Ringing) {
                    LegState::Calling | LegState::Ringing => {}
                    LegState::CancelPending { reason, guard } => {
                        l.state = LegState::CancelPending {
                            reason: reason.clone(),
                            guard,
                        };
                        return self.send_cancel(env, now, c, leg, reason);
                    }
                    other => {
                        l.state = other;
                        return;
                    }
                }
                if l.kind == LegKind::LateWake || call.state != CallState::Waiting || code == 100 {
                    return;
                }
                if msg.require().contains("100rel") {
                    match call.reliable_leg {
                        None => call.reliable_leg = Some(leg),
                        Some(r) if r == leg => {}
                        Some(_) => {
                            // RFC 3262: the caller's early dialog (one To-tag:
                            // sipis's) already carries another device's
                            // reliable provisionals — their RSeq sequence and
                            // SDP answer. Passing this one on would break
                            // both; sipis PRACKs it itself, and the device
                            // rings on.
                            let rseq = msg
                                .header_by_name("RSeq")
                                .and_then(|v| std::str::from_utf8(v).ok())
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            return self.prack_leg(env, now, c, leg, rseq);
                        }
                    }
                }
                call.early_leg = Some(leg);
                if !call.timed.rung {
                    call.timed.rung = true;
                    let created = call.created;
                    record(&mut self.latency.ringing, created, now);
                }
                let reason = reason_phrase(data);
                self.relay_upstream_response(env, now, c, code, &reason, msg);
            }
            200..=299 => {
                // RFC 3261 §9.1: only a request without a final answer can
                // be cancelled; a CANCEL still waiting for a provisional
                // answer or the guard time is void (a 2xx is hung up with
                // BYE when it is not wanted).
                if let LegState::CancelPending { guard, .. } = &mut l.state {
                    env.ctx.cancel(guard.take());
                    l.state = LegState::Ringing;
                }
                self.leg_answered(env, now, c, leg, msg, data)
            }
            _ => {
                let before = std::mem::replace(&mut l.state, LegState::Terminated);
                let cancelled = match before {
                    LegState::CancelPending { guard, .. } => {
                        env.ctx.cancel(guard);
                        false
                    }
                    LegState::Cancelling => true,
                    _ => false,
                };
                if l.kind == LegKind::LateWake {
                    // The late wake went through: INVITE, CANCEL, 487 (ACKed
                    // by the transaction).
                    env.ctx.stats.late_wakes_completed += 1;
                    return;
                }
                if cancelled || call.state != CallState::Waiting {
                    return;
                }
                match code {
                    // Step 5: a device that declines ends the wait.
                    486 | 600 | 603 => {
                        let reason = reason_phrase(data);
                        self.relay_upstream_response(env, now, c, code, &reason, msg);
                        self.finish_unanswered(env, now, c, Outcome::Declined);
                    }
                    // Anything else (503, 408, 480, ...) ends only this leg:
                    // another device, or this one again, may still come.
                    _ => self.leg_ended(env, now, c),
                }
            }
        }
    }

    fn leg_answered(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        c: usize,
        leg: usize,
        msg: &Message<'_, '_>,
        data: &[u8],
    ) {
        let call = &mut self.calls[c];
        let wanted = call.legs[leg].kind == LegKind::Call
            && matches!(call.legs[leg].state, LegState::Calling | LegState::Ringing);
        match call.state {
            CallState::Waiting if wanted => {
                call.state = CallState::Answered(leg);
                call.legs[leg].state = LegState::Answered;
                call.outcome = Some((Outcome::Answered, now));
                env.ctx.cancel(call.wait.take());
                // The record lives as long as the dialog: a BYE re-arms
                // the purge for the late-wake window; should no BYE ever
                // come (both ends gone), it goes after MAX_DIALOG.
                let gen = call.gen;
                env.ctx.cancel(call.purge.take());
                let t = env
                    .ctx
                    .wheel
                    .insert(now + MAX_DIALOG, Timer::Call(c, gen, CallTimer::Purge));
                let call = &mut self.calls[c];
                call.purge = Some(t);
                let created = call.created;
                record(&mut self.latency.answer, created, now);
                env.ctx.stats.calls_answered += 1;
                let reason = reason_phrase(data);
                let code = msg.status().unwrap_or(200);
                self.relay_upstream_response(env, now, c, code, &reason, msg);
                let call = &self.calls[c];
                if let Some(ok) = call.up_2xx.clone() {
                    let (server, cseq) = (call.server, call.up.invite_cseq);
                    self.retransmit_up_2xx(env, now, c, server, code, ok, cseq);
                }
                self.emit_outcome(env.ctx, now, c);
                // Step 5: the first 2xx wins, the others are told why.
                let others: Vec<usize> = (0..self.calls[c].legs.len())
                    .filter(|&i| i != leg)
                    .collect();
                for i in others {
                    self.cancel_leg(
                        env,
                        now,
                        c,
                        i,
                        Some(Bytes::from_static(COMPLETED_ELSEWHERE)),
                    );
                }
            }
            CallState::Answered(l) if l == leg => {
                // The phone retransmits its 2xx: its ACK was lost (re-send
                // ours) or the caller's has not come yet (pass it on).
                let l = &call.legs[leg];
                let again = match (&l.ack, &call.up_2xx) {
                    (Some(ack), _) => Some((l.dest, l.flow, ack.clone())),
                    (None, Some(ok)) => Some((call.up_src, call.up_flow, ok.clone())),
                    (None, None) => None,
                };
                if let Some((dest, flow, payload)) = again {
                    env.ctx.transmits.push_back(Transmit {
                        dest,
                        flow,
                        payload,
                    });
                }
            }
            _ => {
                // Answered too late (another device won, or a late-wake leg
                // answered before its CANCEL): ACK and hang up at once.
                let l = &mut call.legs[leg];
                match l.ack.clone() {
                    None => {
                        l.state = LegState::Answered;
                        self.ack_leg(env.ctx, c, leg, None, None);
                        // Why it is hung up follows from how the call went:
                        // another device answered, or it was declined, or
                        // the caller hung up (its own Reason, or none).
                        let reason = self.late_reason(c);
                        self.bye_leg(env, now, c, leg, reason);
                    }
                    Some(ack) => {
                        let (dest, flow) = (l.dest, l.flow);
                        env.ctx.transmits.push_back(Transmit {
                            dest,
                            flow,
                            payload: ack,
                        });
                    }
                }
            }
        }
    }

    /// Sends (and keeps) the ACK for a leg's 2xx; `cseq`/`body` for the
    /// ACK of a re-INVITE or an ACK carrying the caller's SDP.
    pub fn ack_leg(
        &mut self,
        ctx: &mut Context,
        c: usize,
        leg: usize,
        cseq: Option<u32>,
        body: Option<&[u8]>,
    ) {
        let l = &self.calls[c].legs[leg];
        let branch = ctx.new_branch();
        let d = &l.dialog;
        let mut w = begin_request(
            &mut ctx.buf,
            Method::Ack,
            &d.remote_target,
            l.flow,
            self.hosts.via_for(l.flow),
            &branch,
            &d.route_set,
        );
        d.write_parties(&mut w, Method::Ack, cseq.unwrap_or(d.invite_cseq));
        let body = body.unwrap_or_default();
        if !body.is_empty() {
            w.header("Content-Type", b"application/sdp");
        }
        w.finish(body);
        let ack = ctx.buf.split().freeze();
        let (dest, flow) = (l.dest, l.flow);
        if cseq.is_none() {
            self.calls[c].legs[leg].ack = Some(ack.clone());
        }
        ctx.transmits.push_back(Transmit {
            dest,
            flow,
            payload: ack,
        });
    }

    /// Hangs up a leg sipis no longer wants (answered too late).
    fn bye_leg(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        c: usize,
        leg: usize,
        reason: Option<Bytes>,
    ) {
        self.calls[c].legs[leg].state = LegState::Terminated;
        self.leg_request(env, now, c, leg, Method::Bye, |w| {
            if let Some(r) = &reason {
                w.header("Reason", r);
            }
        });
    }

    /// PRACKs a reliable provisional answer of a leg itself (RFC 3262 §4).
    fn prack_leg(&mut self, env: &mut Env<'_>, now: Instant, c: usize, leg: usize, rseq: u32) {
        let invite_cseq = self.calls[c].legs[leg].dialog.invite_cseq;
        self.leg_request(env, now, c, leg, Method::Prack, |w| {
            w.header_with("RAck", |o| {
                parser::put_u32(o, rseq);
                o.put_u8(b' ');
                parser::put_u32(o, invite_cseq);
                o.put_slice(b" INVITE");
            });
        });
    }

    /// Sends a request of sipis's own in a leg's (early) dialog, answered
    /// by nobody but its transaction.
    fn leg_request(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        c: usize,
        leg: usize,
        method: Method<'_>,
        extra: impl FnOnce(&mut Writer<'_>),
    ) {
        let l = &mut self.calls[c].legs[leg];
        let cseq = l.dialog.next_cseq();
        let (dest, flow) = (l.dest, l.flow);
        let ctx = &mut *env.ctx;
        let branch = ctx.new_branch();
        let d = &l.dialog;
        let mut w = begin_request(
            &mut ctx.buf,
            method,
            &d.remote_target,
            flow,
            self.hosts.via_for(flow),
            &branch,
            &d.route_set,
        );
        d.write_parties(&mut w, method, cseq);
        extra(&mut w);
        w.finish(b"");
        let bytes = ctx.buf.split().freeze();
        let key = TxKey::for_request(
            branch.as_bytes(),
            self.hosts.via_for(flow).as_bytes(),
            method,
        );
        env.txs.start_client(
            env.ctx,
            now,
            bytes,
            key,
            dest,
            flow,
            Kind::NonInvite,
            TxOwner::None,
        );
    }

    /// A leg's INVITE got no answer at all (Timer B) or could not be sent
    /// (`TransportError`: over a stream, its connection is gone).
    #[allow(clippy::too_many_arguments)]
    pub fn leg_failed(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        c: usize,
        gen: u64,
        leg: usize,
        ev: ClientEvent,
    ) {
        let Some(call) = self.get_mut(c, gen) else {
            return;
        };
        let waiting = call.state == CallState::Waiting;
        let mut wake = None;
        if let Some(l) = call.legs.get_mut(leg) {
            env.ctx.cancel(l.answer_wait.take());
            let before = std::mem::replace(&mut l.state, LegState::Terminated);
            if l.flow.is_stream() && ev == ClientEvent::TransportError {
                l.lost = true;
                // A device that was still to answer lost its connection: it
                // is woken by push (if it was not already) and INVITEd
                // wherever it registers next (the leg is stranded).
                if waiting
                    && l.kind == LegKind::Call
                    && matches!(before, LegState::Calling | LegState::Ringing)
                {
                    wake = Some(l.device.clone());
                }
            }
            match before {
                LegState::Answered => l.state = LegState::Answered,
                LegState::CancelPending { guard, .. } => env.ctx.cancel(guard),
                _ => {}
            }
        }
        if let Some(device) = wake {
            self.wake_device(env, now, c, &device);
        }
        self.leg_ended(env, now, c);
    }

    /// Pushes a device that was reached over its connection after all (a
    /// frozen app, or a connection that closed): from then on it is a
    /// pushed device (the 180 with the push status, the late wake).
    fn wake_device(&mut self, env: &mut Env<'_>, now: Instant, c: usize, device: &str) {
        let call = &self.calls[c];
        if call.state != CallState::Waiting
            || !call.may_push
            || call.pushed.iter().any(|d| &**d == device)
        {
            return;
        }
        let before = env.ctx.stats.pushes_requested;
        self.push(env, now, c, device, PushKind::IncomingCall, None);
        if env.ctx.stats.pushes_requested != before {
            env.ctx.stats.stream_wakes += 1;
        }
    }

    /// A leg of a waiting call ended without an answer: if `device_wait`
    /// is over and nothing rings any more, so is the call.
    fn leg_ended(&mut self, env: &mut Env<'_>, now: Instant, c: usize) {
        let call = &self.calls[c];
        if call.state == CallState::Waiting && call.wait_over && !call.legs.iter().any(Leg::ringing)
        {
            self.end_unanswered(env, now, c, Outcome::NoResponse);
        }
    }

    // ---- responses towards the caller ---------------------------------------

    /// Sends a response of sipis's own on the caller's INVITE transaction.
    pub fn send_upstream_response(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        c: usize,
        code: u16,
        reason: &str,
        extra: impl FnOnce(&mut Writer<'_>),
    ) {
        let Some(bytes) = self.upstream_response(env.ctx, c, code, reason, |mut w| {
            extra(&mut w);
            w.finish(b"");
        }) else {
            return;
        };
        env.txs
            .respond(env.ctx, now, self.calls[c].server, code, bytes);
    }

    /// Relays a leg's 18x/2xx/final to the caller on its INVITE
    /// transaction: its end-to-end headers and body under our dialog's
    /// headers.
    #[allow(clippy::too_many_arguments)]
    fn relay_upstream_response(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        c: usize,
        code: u16,
        reason: &str,
        resp: &Message<'_, '_>,
    ) {
        let Some(bytes) = self.upstream_response(env.ctx, c, code, reason, |mut w| {
            w.copy_headers(resp, end_to_end);
            w.finish(resp.body);
        }) else {
            return;
        };
        if (200..300).contains(&code) {
            self.calls[c].up_2xx = Some(bytes.clone());
        }
        env.txs
            .respond(env.ctx, now, self.calls[c].server, code, bytes);
    }

    /// A response to the caller's INVITE (RFC 3261 §8.2.6): its Vias,
    /// From, To with our tag, Call-ID and CSeq copied from the INVITE; for
    /// a provisional or 2xx, which makes an (early) dialog, the
    /// Record-Route and our Contact (§12.1.1). `rest` adds the remaining
    /// headers and the body.
    fn upstream_response(
        &self,
        ctx: &mut Context,
        c: usize,
        code: u16,
        reason: &str,
        rest: impl FnOnce(Writer<'_>),
    ) -> Option<Bytes> {
        let call = &self.calls[c];
        let mut h = [EMPTY_HEADER; 64];
        let inv = parse(&call.invite, &mut h).ok()?;
        ctx.buf.clear();
        let mut w = parser::response_to(
            &mut ctx.buf,
            &inv,
            code,
            reason,
            &call.up.local_tag,
            call.up_src,
        )
        .ok()?;
        if (101..300).contains(&code) {
            w.copy_named(&inv, HeaderName::RecordRoute);
            let (token, host) = (&call.token, &self.hosts.contact);
            w.header_with("Contact", |o| put_contact(o, token, host, Flow::Udp));
        }
        rest(w);
        Some(ctx.buf.split().freeze())
    }

    /// Retransmits a 2xx sent to the caller until its ACK (RFC 3261
    /// §13.3.1.4): `server` is the INVITE's transaction, `cseq` its CSeq.
    #[allow(clippy::too_many_arguments)]
    pub fn retransmit_up_2xx(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        c: usize,
        server: ServerId,
        code: u16,
        bytes: Bytes,
        cseq: u32,
    ) {
        let timers = self.timers.sanitized();
        let call = &mut self.calls[c];
        // The phone's own retransmissions of that 2xx come through here
        // too: they neither restart the schedule nor revive it once ACKed.
        if call.up_acked == Some(cseq) || call.up_retx.as_ref().is_some_and(|r| r.cseq == cseq) {
            return;
        }
        if let Some(old) = call.up_retx.take() {
            env.ctx.wheel.cancel(old.timer);
        }
        let gen = call.gen;
        let timer = env.ctx.wheel.insert(
            now + timers.t1,
            Timer::Call(c, gen, CallTimer::Retransmit2xx),
        );
        self.calls[c].up_retx = Some(UpRetransmit {
            server,
            code,
            bytes,
            cseq,
            interval: timers.t1,
            until: now + timers.t1x64(),
            timer,
        });
    }

    /// The caller ACKed the 2xx of its INVITE with CSeq `cseq`.
    pub fn up_2xx_acked(&mut self, ctx: &mut Context, c: usize, cseq: u32) {
        let call = &mut self.calls[c];
        call.up_acked = Some(cseq);
        if call.up_retx.as_ref().is_some_and(|r| r.cseq == cseq) {
            if let Some(r) = call.up_retx.take() {
                ctx.wheel.cancel(r.timer);
            }
        }
    }

    // ---- endings --------------------------------------------------------------

    /// The call ends unanswered: the caller gets the final answer for it.
    fn end_unanswered(&mut self, env: &mut Env<'_>, now: Instant, c: usize, outcome: Outcome) {
        let error = match outcome {
            Outcome::NoResponse => Some(SipError::NoResponseFromDevice),
            Outcome::Unreachable => Some(SipError::DeviceNotReachable),
            _ => None,
        };
        if let Some(e) = error {
            self.send_upstream_response(env, now, c, e.status(), e.reason(), |w| {
                e.write_headers(w)
            });
        }
        self.finish_unanswered(env, now, c, outcome);
    }

    /// Records an unanswered end: legs cancelled, missed-call pushes, the
    /// outcome kept for late wakes.
    pub fn finish_unanswered(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        c: usize,
        outcome: Outcome,
    ) {
        let call = &mut self.calls[c];
        if call.state == CallState::Ended {
            return;
        }
        call.state = CallState::Ended;
        call.outcome = Some((outcome, now));
        env.ctx.cancel(call.wait.take());
        match outcome {
            Outcome::NoResponse | Outcome::CallerCancelled | Outcome::Unreachable => {
                env.ctx.stats.calls_missed += 1
            }
            _ => {}
        }
        let reason = match outcome.cancel_reason() {
            Some(r) => Some(Bytes::from_static(r)),
            None => call.up_reason.clone(),
        };
        for i in 0..call.legs.len() {
            self.cancel_leg(env, now, c, i, reason.clone());
        }
        // The devices that were woken for nothing learn it: a missed-call
        // notification, or (FCM, which has no VoIP push to withdraw) a
        // cancellation collapsed on the Call-ID.
        let call = &self.calls[c];
        let targets: Vec<(Box<str>, bool)> = call
            .pushed
            .iter()
            .filter(|d| !call.legs.iter().any(|l| &l.device == *d))
            .map(|d| {
                let fcm = env
                    .devices
                    .device(call.account, d)
                    .and_then(|x| x.push.as_ref())
                    .and_then(|p| p.platform())
                    == Some(Platform::Fcm);
                (d.clone(), fcm)
            })
            .collect();
        for (d, fcm) in targets {
            match outcome {
                Outcome::NoResponse | Outcome::CallerCancelled => {
                    self.push(env, now, c, &d, PushKind::MissedCall, Some(outcome))
                }
                Outcome::AnsweredElsewhere | Outcome::Declined if fcm => {
                    self.push(env, now, c, &d, PushKind::CallCancelled, Some(outcome))
                }
                _ => {}
            }
        }
        self.emit_outcome(env.ctx, now, c);
        self.arm_purge(env.ctx, now, c);
    }

    fn emit_outcome(&mut self, ctx: &mut Context, now: Instant, c: usize) {
        let call = &self.calls[c];
        let Some((outcome, _)) = call.outcome else {
            return;
        };
        ctx.events.push_back(Event::CallOutcome {
            account: call.account,
            call_id: String::from_utf8_lossy(&call.up.call_id).into_owned(),
            caller: call.parties.caller_raw.clone(),
            outcome,
            reason: call
                .up_reason
                .as_ref()
                .map(|r| String::from_utf8_lossy(r).into_owned()),
            started: call.created,
            ended: now,
        });
    }

    fn arm_purge(&mut self, ctx: &mut Context, now: Instant, c: usize) {
        let window = self.cfg.late_wake_window;
        let call = &mut self.calls[c];
        let at = call.outcome.map_or(now, |(_, t)| t) + window;
        let at = at.max(now);
        ctx.cancel(call.purge.take());
        let gen = call.gen;
        call.purge = Some(ctx.wheel.insert(at, Timer::Call(c, gen, CallTimer::Purge)));
    }

    /// A BYE ended the dialog with `leg`: the call is over (kept for the
    /// late-wake window of its other devices).
    pub fn dialog_ended(&mut self, ctx: &mut Context, now: Instant, c: usize, leg: usize) {
        let call = &mut self.calls[c];
        if let Some(l) = call.legs.get_mut(leg) {
            l.state = LegState::Terminated;
        }
        if matches!(call.state, CallState::Answered(_)) {
            call.state = CallState::Ended;
            self.arm_purge(ctx, now, c);
        }
    }

    /// Removes a call record; its timers go with it.
    fn remove_call(&mut self, ctx: &mut Context, c: usize) {
        let call = self.calls.remove(c);
        if let Some(slots) = self.call_ids.get_mut(&call.up.call_id[..]) {
            slots.retain(|&x| x != c);
            if slots.is_empty() {
                self.call_ids.remove(&call.up.call_id[..]);
            }
        }
        ctx.cancel(call.wait);
        ctx.cancel(call.purge);
        ctx.cancel(call.up_retx.map(|r| r.timer));
        for l in call.legs {
            ctx.cancel(l.answer_wait);
            if let LegState::CancelPending { guard, .. } = l.state {
                ctx.cancel(guard);
            }
        }
        if let Some(list) = self.by_account.get_mut(&call.account) {
            list.retain(|&x| x != c);
            if list.is_empty() {
                self.by_account.remove(&call.account);
            }
        }
    }

    /// A call timer fired.
    pub fn on_timer(
        &mut self,
        env: &mut Env<'_>,
        now: Instant,
        c: usize,
        gen: u64,
        which: CallTimer,
    ) {
        let window = self.cfg.late_wake_window;
        let t2 = self.timers.sanitized().t2;
        let Some(call) = self.get_mut(c, gen) else {
            return;
        };
        match which {
            CallTimer::Wait => {
                call.wait = None;
                if call.state != CallState::Waiting {
                    return;
                }
                // Step 6: the wait is for a device to wake and connect. One
                // that did and rings keeps the call going until it answers,
                // the caller gives up, or its leg ends.
                if !call.wait_over && call.legs.iter().any(Leg::ringing) {
                    call.wait_over = true;
                    // Nothing rings forever: RFC 3261 §16.6 step 11's
                    // Timer C (more than 3 min) bounds it.
                    let t = env
                        .ctx
                        .wheel
                        .insert(now + TIMER_C, Timer::Call(c, gen, CallTimer::Wait));
                    self.calls[c].wait = Some(t);
                } else {
                    self.end_unanswered(env, now, c, Outcome::NoResponse);
                }
            }
            CallTimer::Guard(leg) => {
                let Some(l) = call.legs.get_mut(leg as usize) else {
                    return;
                };
                if let LegState::CancelPending { reason, guard } = &mut l.state {
                    // No provisional answer within the guard time: CANCEL
                    // anyway, as phones that never send one exist.
                    *guard = None;
                    let reason = reason.take();
                    self.send_cancel(env, now, c, leg as usize, reason);
                }
            }
            CallTimer::AnswerWait(leg) => {
                let Some(l) = call.legs.get_mut(leg as usize) else {
                    return;
                };
                l.answer_wait = None;
                // Not a word from the app over its open connection: it may
                // be frozen; a push thaws it (the leg stays, for the app to
                // answer there once thawed).
                if l.state == LegState::Calling && !l.heard {
                    let device = l.device.clone();
                    self.wake_device(env, now, c, &device);
                }
            }
            CallTimer::Retransmit2xx => {
                let Some(r) = call.up_retx.as_mut() else {
                    return;
                };
                if now >= r.until {
                    // No ACK in 64·T1: the server transaction is gone too.
                    call.up_retx = None;
                    return;
                }
                r.interval = (r.interval * 2).min(t2);
                let at = now + r.interval;
                let (server, code, bytes) = (r.server, r.code, r.bytes.clone());
                let t = env
                    .ctx
                    .wheel
                    .insert(at, Timer::Call(c, gen, CallTimer::Retransmit2xx));
                if let Some(r) = self.calls[c].up_retx.as_mut() {
                    r.timer = t;
                }
                env.txs.respond(env.ctx, now, server, code, bytes);
            }
            CallTimer::Purge => {
                call.purge = None;
                let busy = call.relays > 0 || call.legs.iter().any(Leg::busy);
                match call.state {
                    CallState::Ended if !busy => self.remove_call(env.ctx, c),
                    // A dialog still up, or legs still finishing: look again
                    // later (a dialog is dropped after MAX_DIALOG).
                    CallState::Answered(_)
                        if call.outcome.is_some_and(|(_, at)| now >= at + MAX_DIALOG) =>
                    {
                        self.remove_call(env.ctx, c)
                    }
                    _ => {
                        let next = if matches!(call.state, CallState::Answered(_)) {
                            (now + window).max(now + Duration::from_secs(60))
                        } else {
                            now + Duration::from_secs(5)
                        };
                        let t = env
                            .ctx
                            .wheel
                            .insert(next, Timer::Call(c, gen, CallTimer::Purge));
                        self.calls[c].purge = Some(t);
                    }
                }
            }
        }
    }
}

/// Who calls whom, read once from the caller's INVITE.
fn parties(invite: &Message<'_, '_>) -> Result<Parties, parser::Error> {
    let (from, to) = (invite.from()?, invite.to()?);
    let uri_text = |na: &NameAddr<'_>| {
        let mut out = BytesMut::new();
        parser::write_uri(&mut out, &na.uri, |p| !is_push_param(p.name));
        String::from_utf8_lossy(&out).into_owned()
    };
    Ok(Parties {
        caller_uri: uri_text(&from),
        caller_name: from
            .display_name()
            .map(|n| String::from_utf8_lossy(&n).into_owned()),
        caller_raw: String::from_utf8_lossy(from.uri.raw).into_owned(),
        callee: uri_text(&to),
    })
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor a simulated clock
mod tests {
    use super::*;
    use crate::config::EngineConfig;
    use crate::registrar::Binding;
    use crate::registration::{AccountConfig, AccountSecret};
    use std::time::Duration;

    /// The calls part with the parts it leans on, one account (token
    /// `tok1`) and one APNs device `iphone`.
    struct Bench {
        ctx: Context,
        txs: Transactions,
        accounts: Accounts,
        registrar: Registrar,
        calls: Calls,
        now: Instant,
    }

    const PROVIDER: &str = "192.0.2.10:5060";
    const PHONE: &str = "203.0.113.9:40000";

    const INVITE: &str = "INVITE sip:tok1@sipis.example:5061 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKinv1\r\n\
        Record-Route: <sip:192.0.2.10;lr>\r\n\
        From: \"Bob\" <sip:bob@voip.example>;tag=caller1\r\n\
        To: <sip:alice@voip.example>\r\n\
        Call-ID: call-1@pbx\r\nCSeq: 20 INVITE\r\n\
        Contact: <sip:bob@192.0.2.10:5060>\r\n\
        Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n";

    impl Bench {
        fn new() -> Bench {
            let now = Instant::now();
            let mut ctx = Context::new(3, now);
            let mut txs = Transactions::new(TimerConfig::default());
            let cfg = EngineConfig::default();
            let mut accounts = Accounts::new(&cfg, now);
            accounts.add(
                &mut ctx,
                &mut txs,
                now,
                AccountConfig {
                    id: 1,
                    aor: "sip:alice@voip.example".into(),
                    auth_user: "alice".into(),
                    secret: AccountSecret::Password("pw".into()),
                    registrar: None,
                    expires: 3600,
                    token: "tok1".into(),
                },
                None,
            );
            let mut registrar = Registrar::new(CallConfig::default(), [3; 32], now);
            registrar.put_device(
                1,
                "iphone",
                "apns",
                "TOKEN1",
                Some("ABCDE12345.com.example.voip"),
            );
            let hosts = Hosts {
                via: "sipis.example:5061".into(),
                contact: "sipis.example:5061".into(),
                phone_contact: "sipis.example:5060".into(),
                tcp: "sipis.example:5060".into(),
                tls: "sipis.example:5061".into(),
            };
            Bench {
                ctx,
                txs,
                accounts,
                registrar,
                calls: Calls::new(CallConfig::default(), hosts, TimerConfig::default()),
                now,
            }
        }

        fn env(&mut self) -> Env<'_> {
            Env {
                ctx: &mut self.ctx,
                txs: &mut self.txs,
                accounts: &self.accounts,
                devices: &self.registrar,
            }
        }

        /// A request from `from` opens its server transaction and goes to
        /// `route`.
        fn request(
            &mut self,
            text: &str,
            from: &str,
            route: impl FnOnce(&mut Calls, &mut Env<'_>, Instant, &Message<'_, '_>, usize),
        ) {
            let mut h = [EMPTY_HEADER; 32];
            let msg = parse(text.as_bytes(), &mut h).unwrap();
            let key = TxKey::server(&msg).unwrap();
            let kind = if msg.method() == Some(Method::Invite) {
                Kind::Invite
            } else {
                Kind::NonInvite
            };
            let from = from.parse().unwrap();
            let slot = self
                .txs
                .open_server(&mut self.ctx, self.now, key, kind, from, Flow::Udp);
            let now = self.now;
            let mut calls = std::mem::replace(
                &mut self.calls,
                Calls::new(CallConfig::default(), no_hosts(), TimerConfig::default()),
            );
            route(&mut calls, &mut self.env(), now, &msg, slot);
            self.calls = calls;
        }

        fn invite(&mut self) {
            self.request(INVITE, PROVIDER, |calls, env, now, msg, slot| {
                calls.incoming_invite(
                    env,
                    now,
                    PROVIDER.parse().unwrap(),
                    Flow::Udp,
                    msg,
                    INVITE.as_bytes(),
                    slot,
                )
            });
        }

        /// Everything sent since the last call, as text, by destination.
        fn sent(&mut self) -> Vec<(String, String)> {
            self.ctx
                .transmits
                .drain(..)
                .map(|t| {
                    (
                        t.dest.to_string(),
                        String::from_utf8(t.payload.to_vec()).unwrap(),
                    )
                })
                .collect()
        }

        fn answer_push(&mut self, result: PushResult) -> Push {
            let push = self.calls.poll_push().expect("a push");
            let outcome = PushOutcome {
                id: push.id.clone(),
                account: push.account,
                device: push.device.clone(),
                result,
                error: None,
            };
            let wait = self.calls.push_answered(&mut self.ctx, &outcome).unwrap();
            let now = self.now;
            let mut env = Env {
                ctx: &mut self.ctx,
                txs: &mut self.txs,
                accounts: &self.accounts,
                devices: &self.registrar,
            };
            self.calls.push_result(&mut env, now, wait, result);
            push
        }

        /// The app woke and registered from `PHONE`.
        fn device_up(&mut self) {
            let binding = Binding {
                addr: PHONE.parse().unwrap(),
                flow: Flow::Udp,
                uri: Bytes::from_static(b"sip:alice@203.0.113.9:40000"),
                expires: self.now + Duration::from_secs(600),
                outbound: None,
            };
            self.registrar.bind_for_test(1, "iphone", binding);
            let now = self.now;
            let mut env = Env {
                ctx: &mut self.ctx,
                txs: &mut self.txs,
                accounts: &self.accounts,
                devices: &self.registrar,
            };
            self.calls.device_ready(&mut env, now, 1, "iphone");
        }

        /// The app registered over `flow` from `addr` (a connection of
        /// the TCP/TLS front, say).
        fn device_up_on(&mut self, flow: Flow, addr: &str) {
            let binding = Binding {
                addr: addr.parse().unwrap(),
                flow,
                uri: Bytes::from_static(b"sip:alice@203.0.113.9:40000;transport=tcp"),
                expires: self.now + Duration::from_secs(600),
                outbound: None,
            };
            self.registrar.bind_for_test(1, "iphone", binding);
            let now = self.now;
            let mut env = Env {
                ctx: &mut self.ctx,
                txs: &mut self.txs,
                accounts: &self.accounts,
                devices: &self.registrar,
            };
            self.calls.device_ready(&mut env, now, 1, "iphone");
        }

        /// Everything sent since the last call: (flow, first line, text).
        fn sent_on(&mut self) -> Vec<(Flow, String, String)> {
            self.ctx
                .transmits
                .drain(..)
                .map(|t| {
                    let text = String::from_utf8(t.payload.to_vec()).unwrap();
                    (t.flow, text.lines().next().unwrap().to_owned(), text)
                })
                .collect()
        }

        /// The phone answers the leg's INVITE with `status`.
        fn leg_answers(&mut self, leg: usize, status: &str, invite: &str) {
            let mut h = [EMPTY_HEADER; 32];
            let inv = parse(invite.as_bytes(), &mut h).unwrap();
            let via = inv.header(HeaderName::Via).unwrap();
            let from = inv.header(HeaderName::From).unwrap();
            let to = inv.header(HeaderName::To).unwrap();
            let resp = format!(
                "SIP/2.0 {status}\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=phone1\r\n\
                 Call-ID: call-1@pbx\r\nCSeq: 20 INVITE\r\n\
                 Contact: <sip:alice@203.0.113.9:40000>\r\nContent-Length: 0\r\n\r\n",
                std::str::from_utf8(via).unwrap(),
                std::str::from_utf8(from).unwrap(),
                std::str::from_utf8(to).unwrap(),
            );
            let mut h2 = [EMPTY_HEADER; 32];
            let msg = parse(resp.as_bytes(), &mut h2).unwrap();
            let gen = self.calls.calls[0].gen;
            let now = self.now;
            let mut env = Env {
                ctx: &mut self.ctx,
                txs: &mut self.txs,
                accounts: &self.accounts,
                devices: &self.registrar,
            };
            self.calls
                .leg_response(&mut env, now, 0, gen, leg, &msg, resp.as_bytes());
        }

        /// Runs the call timers up to `now + by`.
        fn advance(&mut self, by: Duration) {
            self.now += by;
            let now = self.now;
            while let Some((_, t)) = self.ctx.wheel.poll_expired(now) {
                if let Timer::Call(c, gen, which) = t {
                    let mut env = Env {
                        ctx: &mut self.ctx,
                        txs: &mut self.txs,
                        accounts: &self.accounts,
                        devices: &self.registrar,
                    };
                    self.calls.on_timer(&mut env, now, c, gen, which);
                }
            }
        }
    }

    fn no_hosts() -> Hosts {
        Hosts {
            via: String::new(),
            contact: String::new(),
            phone_contact: String::new(),
            tcp: String::new(),
            tls: String::new(),
        }
    }

    fn status_lines(sent: &[(String, String)]) -> Vec<&str> {
        sent.iter()
            .map(|(_, m)| m.lines().next().unwrap())
            .collect()
    }

    #[test]
    fn an_invite_pushes_the_device_and_rings_once_the_push_is_accepted() {
        let mut b = Bench::new();
        b.invite();
        assert_eq!(status_lines(&b.sent()), vec!["SIP/2.0 100 Trying"]);
        let push = b.answer_push(PushResult::Sent);
        assert_eq!(push.kind, PushKind::IncomingCall);
        assert_eq!(push.call_id, "call-1@pbx");
        assert_eq!(push.caller_uri, "sip:bob@voip.example");
        assert_eq!(push.caller_name.as_deref(), Some("Bob"));
        assert_eq!(push.callee, "sip:alice@voip.example");
        assert_eq!(
            (push.token.as_str(), push.platform),
            ("TOKEN1", Platform::Apns)
        );
        assert_eq!(push.topic.as_deref(), Some("com.example.voip"));
        let sent = b.sent();
        assert_eq!(status_lines(&sent), vec!["SIP/2.0 180 Ringing"]);
        assert!(sent[0]
            .1
            .contains("X-Sipis-Push-Status: Push-Notification-Sent\r\n"));
        assert!(sent[0].1.contains("Record-Route: <sip:192.0.2.10;lr>\r\n"));
    }

    #[test]
    fn the_woken_device_gets_the_callers_invite_once() {
        let mut b = Bench::new();
        b.invite();
        b.answer_push(PushResult::Sent);
        b.sent();
        b.device_up();
        let sent = b.sent();
        assert_eq!(sent.len(), 1);
        let (dest, inv) = &sent[0];
        assert_eq!(dest, PHONE);
        assert!(
            inv.starts_with("INVITE sip:alice@203.0.113.9:40000 SIP/2.0\r\n"),
            "{inv}"
        );
        // Same caller, Call-ID and CSeq as the push announced; our Contact.
        assert!(inv.contains("From: \"Bob\" <sip:bob@voip.example>;tag=caller1\r\n"));
        assert!(inv.contains("To: <sip:alice@voip.example>\r\n"));
        assert!(inv.contains("Call-ID: call-1@pbx\r\nCSeq: 20 INVITE\r\n"));
        assert!(inv.contains("Contact: <sip:tok1@sipis.example:5060>\r\n"));
        assert!(inv.ends_with("\r\n\r\nv=0\n"));
        // A second REGISTER of the waking app: no second INVITE.
        b.device_up();
        assert!(b.sent().is_empty());
        assert_eq!(b.calls.calls[0].legs[0].state, LegState::Calling);
        b.leg_answers(0, "180 Ringing", inv);
        assert_eq!(b.calls.calls[0].legs[0].state, LegState::Ringing);
        let sent = b.sent();
        assert_eq!(status_lines(&sent), vec!["SIP/2.0 180 Ringing"]);
        assert_eq!(sent[0].0, PROVIDER);
    }

    #[test]
    fn no_device_within_the_wait_ends_with_480_and_a_missed_call_push() {
        let mut b = Bench::new();
        b.invite();
        b.answer_push(PushResult::Sent);
        b.sent();
        b.advance(Duration::from_secs(31));
        let sent = b.sent();
        assert_eq!(
            status_lines(&sent),
            vec!["SIP/2.0 480 Temporarily Unavailable"]
        );
        assert!(sent[0]
            .1
            .contains("X-Sipis-Reason: No-Response-From-Device\r\n"));
        let missed = b.calls.poll_push().expect("missed_call push");
        assert_eq!(missed.kind, PushKind::MissedCall);
        assert_eq!(missed.reason, Some(Outcome::NoResponse));
        assert!(matches!(
            b.ctx.events.back(),
            Some(Event::CallOutcome {
                outcome: Outcome::NoResponse,
                ..
            })
        ));
    }

    #[test]
    fn late_wake_after_answer_elsewhere_sends_invite_then_cancel_with_reason() {
        let mut b = Bench::new();
        b.invite();
        b.answer_push(PushResult::Sent);
        b.sent();
        // The provider's fork was answered by another phone.
        let cancel = "CANCEL sip:tok1@sipis.example:5061 SIP/2.0\r\n\
            Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKinv1\r\n\
            From: \"Bob\" <sip:bob@voip.example>;tag=caller1\r\n\
            To: <sip:alice@voip.example>\r\n\
            Call-ID: call-1@pbx\r\nCSeq: 20 CANCEL\r\n\
            Reason: SIP;cause=200;text=\"Call completed elsewhere\"\r\n\
            Content-Length: 0\r\n\r\n";
        b.request(cancel, PROVIDER, |calls, env, now, msg, slot| {
            calls.incoming_cancel(env, now, msg, slot)
        });
        assert_eq!(
            status_lines(&b.sent()),
            vec!["SIP/2.0 200 OK", "SIP/2.0 487 Request Terminated"]
        );
        // The app wakes late, inside the window: INVITE with the pushed
        // Call-ID, and no CANCEL before the phone's provisional (UDP).
        b.advance(Duration::from_secs(2));
        b.device_up();
        let sent = b.sent();
        assert_eq!(
            status_lines(&sent),
            vec!["INVITE sip:alice@203.0.113.9:40000 SIP/2.0"]
        );
        assert!(sent[0].1.contains("Call-ID: call-1@pbx\r\n"));
        let leg = &b.calls.calls[0].legs[0];
        assert_eq!(leg.kind, LegKind::LateWake);
        assert!(matches!(leg.state, LegState::CancelPending { .. }));
        assert_eq!(b.ctx.stats.late_wakes, 1);
        let invite = sent[0].1.clone();
        b.leg_answers(0, "180 Ringing", &invite);
        let sent = b.sent();
        assert_eq!(
            status_lines(&sent),
            vec!["CANCEL sip:alice@203.0.113.9:40000 SIP/2.0"]
        );
        let c = &sent[0].1;
        // RFC 3261 §9.1: the INVITE's branch, Call-ID, CSeq number; To
        // without the phone's tag. RFC 3326 Reason: answered elsewhere.
        let branch = invite.lines().find(|l| l.starts_with("Via:")).unwrap();
        assert!(c.contains(&format!("{branch}\r\n")), "{c}");
        assert!(c.contains("To: <sip:alice@voip.example>\r\n"));
        assert!(c.contains("CSeq: 20 CANCEL\r\n"));
        assert!(c.contains("Reason: SIP;cause=200;text=\"Call completed elsewhere\"\r\n"));
        assert_eq!(b.calls.calls[0].legs[0].state, LegState::Cancelling);
        b.leg_answers(0, "487 Request Terminated", &invite);
        assert_eq!(b.calls.calls[0].legs[0].state, LegState::Terminated);
        assert_eq!(b.ctx.stats.late_wakes_completed, 1);
        // Outside the window nothing more happens; the record goes.
        b.advance(Duration::from_secs(20));
        assert_eq!(b.calls.len(), 0);
    }

    #[test]
    fn a_device_declining_ends_the_call_for_the_caller() {
        let mut b = Bench::new();
        b.invite();
        b.answer_push(PushResult::Sent);
        b.device_up();
        let invite = b.sent().pop().unwrap().1;
        b.leg_answers(0, "603 Decline", &invite);
        let sent = b.sent();
        assert_eq!(status_lines(&sent), vec!["SIP/2.0 603 Decline"]);
        assert_eq!(b.calls.calls[0].state, CallState::Ended);
        assert_eq!(
            b.calls.calls[0].outcome.map(|o| o.0),
            Some(Outcome::Declined)
        );
    }

    #[test]
    fn every_push_failing_gives_480_device_not_reachable() {
        let mut b = Bench::new();
        b.invite();
        b.sent();
        b.answer_push(PushResult::Failed);
        let sent = b.sent();
        assert_eq!(
            status_lines(&sent),
            vec!["SIP/2.0 480 Temporarily Unavailable"]
        );
        assert!(sent[0]
            .1
            .contains("X-Sipis-Reason: Device-Not-Reachable\r\n"));
    }

    /// A connected device (TCP flow open) with push: INVITEd at once.
    fn connected_call(b: &mut Bench) -> String {
        b.device_up_on(Flow::Tcp(7), PHONE);
        b.invite();
        let sent = b.sent_on();
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!(sent[0].1, "SIP/2.0 100 Trying");
        assert_eq!(
            (sent[1].0, sent[1].1.as_str()),
            (
                Flow::Tcp(7),
                "INVITE sip:alice@203.0.113.9:40000;transport=tcp SIP/2.0"
            )
        );
        assert!(b.calls.poll_push().is_none(), "connected: not pushed");
        sent[1].2.clone()
    }

    #[test]
    fn a_connected_device_silent_past_the_stream_answer_wait_is_pushed() {
        let mut b = Bench::new();
        connected_call(&mut b);
        b.advance(Duration::from_millis(1900));
        assert!(b.calls.poll_push().is_none(), "not before the wait");
        b.advance(Duration::from_millis(200));
        // A frozen app: pushed like any pushed device, and the caller
        // hears it once the mediator accepted the push.
        let push = b.answer_push(PushResult::Sent);
        assert_eq!(
            (push.kind, push.call_id.as_str(), push.token.as_str()),
            (PushKind::IncomingCall, "call-1@pbx", "TOKEN1")
        );
        let sent = b.sent();
        assert_eq!(status_lines(&sent), vec!["SIP/2.0 180 Ringing"]);
        assert!(sent[0]
            .1
            .contains("X-Sipis-Push-Status: Push-Notification-Sent\r\n"));
        assert_eq!(b.ctx.stats.stream_wakes, 1);
        let call = &b.calls.calls[0];
        assert_eq!(call.pushed, vec![Box::<str>::from("iphone")]);
        // Its leg stays: the thawed app may answer there.
        assert_eq!(call.legs.len(), 1);
        assert_eq!(call.legs[0].state, LegState::Calling);
    }

    #[test]
    fn a_connected_device_ringing_within_the_wait_is_not_pushed() {
        let mut b = Bench::new();
        let invite = connected_call(&mut b);
        b.advance(Duration::from_millis(500));
        b.leg_answers(0, "180 Ringing", &invite);
        assert_eq!(status_lines(&b.sent()), vec!["SIP/2.0 180 Ringing"]);
        b.advance(Duration::from_secs(5));
        assert!(b.calls.poll_push().is_none());
        assert_eq!(b.ctx.stats.pushes_requested, 0);
        assert_eq!(b.ctx.stats.stream_wakes, 0);
    }

    #[test]
    fn a_frozen_app_waking_on_a_new_connection_is_invited_there_and_the_old_leg_cancelled() {
        let mut b = Bench::new();
        connected_call(&mut b);
        b.advance(Duration::from_millis(2100));
        b.answer_push(PushResult::Sent);
        b.sent();
        // The woken app connects anew and registers over Tcp(9).
        b.device_up_on(Flow::Tcp(9), "203.0.113.9:40100");
        let sent = b.sent_on();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].0, Flow::Tcp(9));
        assert!(sent[0].1.starts_with("INVITE "), "{}", sent[0].1);
        assert!(sent[0].2.contains("Call-ID: call-1@pbx\r\n"));
        // A second REGISTER over the new connection: no third INVITE.
        b.device_up_on(Flow::Tcp(9), "203.0.113.9:40100");
        assert!(b.sent_on().is_empty());
        // The silent INVITE on the old connection is withdrawn (after the
        // guard time, as nothing answered it), so a thawing app does not
        // ring for it too.
        assert!(matches!(
            b.calls.calls[0].legs[0].state,
            LegState::CancelPending { .. }
        ));
        b.advance(Duration::from_millis(1100));
        let sent = b.sent_on();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(
            (sent[0].0, sent[0].1.as_str()),
            (
                Flow::Tcp(7),
                "CANCEL sip:alice@203.0.113.9:40000;transport=tcp SIP/2.0"
            )
        );
        assert!(!sent[0].2.contains("Reason:"), "{}", sent[0].2);
        let legs = &b.calls.calls[0].legs;
        assert_eq!(legs.len(), 2);
        assert_eq!(
            (legs[1].flow, &legs[1].state),
            (Flow::Tcp(9), &LegState::Calling)
        );
    }

    #[test]
    fn a_frozen_app_thawing_on_its_old_connection_answers_there() {
        let mut b = Bench::new();
        let invite = connected_call(&mut b);
        b.advance(Duration::from_millis(2100));
        b.answer_push(PushResult::Sent);
        b.sent();
        // The app thaws, refreshes its registration over the same
        // connection, and answers the INVITE it had buffered.
        b.device_up_on(Flow::Tcp(7), PHONE);
        assert!(b.sent_on().is_empty(), "no second INVITE on the same flow");
        b.leg_answers(0, "180 Ringing", &invite);
        b.leg_answers(0, "200 OK", &invite);
        let sent = b.sent();
        assert_eq!(
            status_lines(&sent),
            vec!["SIP/2.0 180 Ringing", "SIP/2.0 200 OK"]
        );
        assert_eq!(b.calls.calls[0].state, CallState::Answered(0));
    }

    #[test]
    fn a_frozen_app_waking_after_the_call_ended_gets_the_late_wake_on_its_new_connection() {
        let mut b = Bench::new();
        connected_call(&mut b);
        b.advance(Duration::from_millis(2100));
        b.answer_push(PushResult::Sent);
        b.sent();
        // The provider's fork was answered elsewhere before the app woke.
        let cancel = "CANCEL sip:tok1@sipis.example:5061 SIP/2.0\r\n\
            Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKinv1\r\n\
            From: \"Bob\" <sip:bob@voip.example>;tag=caller1\r\n\
            To: <sip:alice@voip.example>\r\n\
            Call-ID: call-1@pbx\r\nCSeq: 20 CANCEL\r\n\
            Reason: SIP;cause=200;text=\"Call completed elsewhere\"\r\n\
            Content-Length: 0\r\n\r\n";
        b.request(cancel, PROVIDER, |calls, env, now, msg, slot| {
            calls.incoming_cancel(env, now, msg, slot)
        });
        b.advance(Duration::from_millis(1100));
        let sent = b.sent_on();
        let lines: Vec<(Flow, &str)> = sent.iter().map(|s| (s.0, s.1.as_str())).collect();
        assert_eq!(
            lines,
            vec![
                (Flow::Udp, "SIP/2.0 200 OK"),
                (Flow::Udp, "SIP/2.0 487 Request Terminated"),
                (
                    Flow::Tcp(7),
                    "CANCEL sip:alice@203.0.113.9:40000;transport=tcp SIP/2.0"
                ),
            ]
        );
        // It wakes on a new connection inside the window: the late wake
        // (INVITE with the pushed Call-ID, then CANCEL with the Reason).
        b.device_up_on(Flow::Tcp(9), "203.0.113.9:40100");
        let sent = b.sent_on();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].0, Flow::Tcp(9));
        assert!(sent[0].1.starts_with("INVITE "));
        assert!(sent[0].2.contains("Call-ID: call-1@pbx\r\n"));
        assert_eq!(b.ctx.stats.late_wakes, 1);
        let leg = &b.calls.calls[0].legs[1];
        assert_eq!(leg.kind, LegKind::LateWake);
        b.advance(Duration::from_millis(1100));
        let sent = b.sent_on();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].0, Flow::Tcp(9));
        assert!(sent[0].1.starts_with("CANCEL "));
        assert!(sent[0]
            .2
            .contains("Reason: SIP;cause=200;text=\"Call completed elsewhere\"\r\n"));
    }
}
