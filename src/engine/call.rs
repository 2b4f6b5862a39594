//! Incoming calls: the pending-call map, push, wake, relay and late wake.

use std::time::Duration;

/// `[calls]`: how incoming calls and phones are handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallConfig {
    /// How long a call waits for a device to wake and connect before the
    /// caller gets `480` (DESIGN §1.3: 30 s; Acrobits uses 120 s).
    pub device_wait: Duration,
    /// How long each pushed call's outcome is kept for a device that wakes
    /// late (DESIGN §1.4).
    pub late_wake_window: Duration,
    /// CANCEL a leg this long after its INVITE if the phone sent no
    /// provisional answer by then — over a stream only: over UDP the
    /// CANCEL waits for a provisional answer (RFC 3261 §9.1).
    pub late_wake_guard: Duration,
    /// Send `X-Sipis-Push-Status: Push-Notification-Sent` in the 180.
    pub push_status_header: bool,
    /// Digest realm phones authenticate in (accounts with a password; an
    /// HA1 account's realm is its AOR's host).
    pub phone_realm: String,
    /// Binding lifetimes granted to phones (RFC 3261 §10.3: 423 below min).
    pub phone_min_expires: u32,
    pub phone_max_expires: u32,
    /// `+sip.pnsreg` in Feature-Caps: seconds before expiry a push-woken
    /// phone should refresh (RFC 8599 §4.1.2).
    pub pnsreg: u32,
}

impl Default for CallConfig {
    fn default() -> Self {
        CallConfig {
            device_wait: Duration::from_secs(30),
            late_wake_window: Duration::from_secs(15),
            late_wake_guard: Duration::from_secs(1),
            push_status_header: true,
            phone_realm: "sipis".into(),
            phone_min_expires: 60,
            phone_max_expires: 3600,
            pnsreg: 121,
        }
    }
}

use super::phone::Device;
use super::registration::AccountId;
use super::transaction::{Kind, TxKey};
use super::wheel::TimerHandle;
use super::{Engine, Event, Flow, Timer, Transmit, TxOwner};
use crate::push::{
    Environment, PushCall, PushDevice, PushKind, PushOutcome, PushRequest, PushResult,
};
use bytes::{BufMut, Bytes, BytesMut};
use sipis_parser::{
    self as parser, is_push_param, parse, Header, HeaderName, Message, Method, NameAddr, Writer,
    EMPTY_HEADER,
};
use std::net::SocketAddr;
use std::time::Instant;

/// How a call ended (or was answered), for the caller, the store and the
/// late wake (DESIGN §1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// One of the account's devices answered.
    Answered,
    /// The provider's CANCEL said another phone answered
    /// (`Reason: SIP;cause=200`).
    AnsweredElsewhere,
    /// A device declined (486/600/603), or the provider's CANCEL said the
    /// call was declined elsewhere (`cause=600`/`603`).
    Declined,
    /// The caller hung up before anyone answered.
    CallerCancelled,
    /// No device woke within `device_wait`.
    NoResponse,
    /// Every push failed, or the account has no device at all.
    Unreachable,
}

impl Outcome {
    /// The stored text (`call_outcomes.outcome`).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::AnsweredElsewhere => "answered_elsewhere",
            Outcome::Declined => "declined",
            Outcome::CallerCancelled => "caller_cancelled",
            Outcome::NoResponse => "no_response",
            Outcome::Unreachable => "unreachable",
        }
    }

    /// The `reason` of a `call_cancelled`/`missed_call` push, as the push
    /// protocol names it (`PushCall::reason`): for the device pushed, a
    /// decline happened elsewhere.
    fn push_reason(self) -> &'static str {
        match self {
            Outcome::Declined => "declined_elsewhere",
            other => other.as_str(),
        }
    }

    /// The `Reason` of the CANCEL a late-waking device gets (DESIGN §1.4),
    /// `None` to use the caller's own Reason or none.
    fn cancel_reason(self) -> Option<&'static [u8]> {
        match self {
            Outcome::Answered | Outcome::AnsweredElsewhere => Some(COMPLETED_ELSEWHERE),
            Outcome::Declined => Some(BUSY_EVERYWHERE),
            _ => None,
        }
    }
}

/// RFC 3326 Reason for a call answered by another device.
pub const COMPLETED_ELSEWHERE: &[u8] = b"SIP;cause=200;text=\"Call completed elsewhere\"";
/// RFC 3326 Reason for a call declined on another device.
pub const BUSY_EVERYWHERE: &[u8] = b"SIP;cause=600;text=\"Busy Everywhere\"";

/// A call timer's purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallTimer {
    /// `device_wait` ran out (DESIGN §1.3 step 6).
    Wait,
    /// The late-wake window closed: the call record goes.
    Purge,
    /// A leg's CANCEL may go even without a provisional answer.
    Guard(u16),
    /// The caller's leg's 2xx goes again (RFC 3261 §13.3.1.4).
    Retransmit2xx,
}

/// A 2xx to an INVITE of the caller, sent again until its ACK: sipis is
/// the UAS of the caller's leg (RFC 3261 §13.3.1.4: T1 doubling up to T2,
/// for 64·T1). A phone retransmitting its own 2xx is not enough: over
/// TCP/TLS it need not, and the caller's side is UDP.
pub(crate) struct UpRetransmit {
    /// The INVITE server transaction (slot, generation) it answers.
    pub(super) server: (usize, u64),
    pub(super) code: u16,
    pub(super) bytes: Bytes,
    /// The INVITE's CSeq (the caller's ACK carries it).
    pub(super) cseq: u32,
    pub(super) interval: Duration,
    pub(super) until: Instant,
    pub(super) timer: TimerHandle,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LegState {
    /// INVITE sent, nothing back.
    Calling,
    /// A provisional answer came.
    Early,
    /// Answered and ACKed (or about to be).
    Confirmed,
    /// Finished (final non-2xx, timeout, BYE).
    Done,
}

/// The INVITE sipis sent to one device and the dialog it makes.
pub(crate) struct Leg {
    pub(super) device: Box<str>,
    pub(super) dest: SocketAddr,
    pub(super) flow: Flow,
    /// The phone's Contact (remote target), updated from its 18x/2xx.
    pub(super) target: Bytes,
    /// The phone's To-tag.
    pub(super) tag: Option<Box<[u8]>>,
    /// The INVITE as sent: CANCEL and ACK are built from it.
    pub(super) invite: Bytes,
    pub(super) invite_cseq: u32,
    /// The next CSeq of a request sipis sends to the phone.
    pub(super) cseq: u32,
    pub(super) state: LegState,
    /// A CANCEL to send once the phone answered provisionally (RFC 3261
    /// §9.1) or the guard time passed: its Reason, if any.
    pub(super) cancel: Option<Option<Bytes>>,
    pub(super) cancelled: bool,
    pub(super) guard: Option<TimerHandle>,
    /// The ACK sipis sent for the phone's 2xx: resent when the 2xx is.
    pub(super) ack: Option<Bytes>,
    /// A late-wake leg (DESIGN §1.4): cancelled as soon as it may be.
    pub(super) late: bool,
}

impl Leg {
    /// A device that answered provisionally and may still answer.
    fn ringing(&self) -> bool {
        self.state == LegState::Early && !self.cancelled && !self.late && self.cancel.is_none()
    }
}

/// A relayed request waiting for its answer.
pub(crate) struct Relay {
    pub(super) call: (usize, u64),
    /// The server transaction (slot, generation) to answer on.
    pub(super) server: (usize, u64),
    /// The request as received.
    pub(super) request: Bytes,
    pub(super) from: SocketAddr,
    /// Forwarded towards a phone (else towards the caller).
    pub(super) to_phone: bool,
    pub(super) leg: usize,
}

/// A re-INVITE in flight: the ACK for its 2xx is mapped through it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reinvite {
    pub(super) in_cseq: u32,
    pub(super) out_cseq: u32,
    pub(super) to_phone: bool,
}

/// One incoming call in the shard's pending-call map.
pub(crate) struct Call {
    pub(super) gen: u64,
    pub(super) account: AccountId,
    pub(super) call_id: Box<[u8]>,
    /// The caller's INVITE as received.
    pub(super) invite: Bytes,
    pub(super) up_src: SocketAddr,
    pub(super) up_flow: Flow,
    /// The INVITE server transaction (slot, generation).
    pub(super) server: (usize, u64),
    /// Our To-tag towards the caller.
    pub(super) up_tag: Box<[u8]>,
    /// The next CSeq of a request sipis sends to the caller.
    pub(super) up_cseq: u32,
    pub(super) state: CallState,
    pub(super) legs: Vec<Leg>,
    /// Devices pushed for this call.
    pub(super) pushed: Vec<Box<str>>,
    /// Devices that got a leg, or must not get a late wake.
    pub(super) reached: Vec<Box<str>>,
    pub(super) pushes_pending: u32,
    pub(super) push_ok: bool,
    pub(super) ringing: bool,
    pub(super) created: Instant,
    pub(super) wait: Option<TimerHandle>,
    pub(super) purge: Option<TimerHandle>,
    pub(super) outcome: Option<(Outcome, Instant)>,
    /// The Reason of the provider's CANCEL (passed on to late wakes).
    pub(super) up_reason: Option<Bytes>,
    /// The 2xx sent upstream (re-sent when the phone retransmits its own).
    pub(super) up_2xx: Option<Bytes>,
    pub(super) early_leg: Option<usize>,
    /// The leg whose reliable provisionals (RFC 3262) reach the caller:
    /// its PRACKs go there.
    pub(super) reliable_leg: Option<usize>,
    pub(super) reinvite: Option<Reinvite>,
    /// Relays in flight (a BYE ends the call when its answer is relayed).
    pub(super) relays: u32,
    /// The 2xx sent to the caller, retransmitted until its ACK.
    pub(super) up_retx: Option<UpRetransmit>,
    /// The CSeq of the caller's INVITE whose 2xx was ACKed last.
    pub(super) up_acked: Option<u32>,
    /// `device_wait` ran out while a device was ringing: the call ends
    /// when the last ringing leg does.
    pub(super) wait_over: bool,
    pub(super) timed: CallMarks,
}

/// When the milestones of a call happened (for the latency histograms).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CallMarks {
    pub(super) registered: bool,
    pub(super) rung: bool,
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

/// Headers that belong to one hop or one leg and are never copied from
/// one leg to the other.
pub(super) fn end_to_end(h: &Header<'_>) -> bool {
    !matches!(
        h.kind,
        HeaderName::Via
            | HeaderName::From
            | HeaderName::To
            | HeaderName::CallId
            | HeaderName::CSeq
            | HeaderName::Contact
            | HeaderName::RecordRoute
            | HeaderName::Route
            | HeaderName::MaxForwards
            | HeaderName::ContentLength
            | HeaderName::Authorization
            | HeaderName::ProxyAuthorization
            | HeaderName::WwwAuthenticate
            | HeaderName::ProxyAuthenticate
            | HeaderName::FeatureCaps
            | HeaderName::Path
    ) && !h.name.eq_ignore_ascii_case(b"X-Sipis-Push-Status")
}

/// Writes a From/To value with its tag replaced (or added, or removed when
/// `tag` is `None`) and `pn-*` URI parameters stripped.
fn put_party(out: &mut BytesMut, value: &[u8], tag: Option<&[u8]>) -> Result<(), parser::Error> {
    let na = NameAddr::parse(value)?;
    if let Some(d) = na.display {
        if na.display_quoted {
            out.put_u8(b'"');
            out.put_slice(d);
            out.put_slice(b"\" ");
        } else {
            out.put_slice(d);
            out.put_u8(b' ');
        }
    }
    out.put_u8(b'<');
    parser::write_uri(out, &na.uri, |p| !is_push_param(p.name));
    out.put_u8(b'>');
    for p in na.params.iter().map_while(Result::ok) {
        if !p.name.eq_ignore_ascii_case(b"tag") {
            parser::put_param(out, &p);
        }
    }
    if let Some(t) = tag {
        out.put_slice(b";tag=");
        out.put_slice(t);
    }
    Ok(())
}

pub(super) fn via_transport(flow: Flow) -> &'static str {
    match flow {
        Flow::Udp | Flow::SharedUdp => "UDP",
        Flow::Stream(_) => "TCP",
    }
}

/// The body of a message: what follows the header block.
pub(super) fn body<'a>(data: &'a [u8], msg: &Message<'_, 'a>) -> &'a [u8] {
    let len = msg.content_length().unwrap_or(0) as usize;
    &data[data.len().saturating_sub(len)..]
}

/// The Contact URI of a message (the remote target), without `pn-*`.
pub(super) fn contact_uri(msg: &Message<'_, '_>) -> Option<Bytes> {
    let c = msg.contacts().next()?.ok()?;
    let na = c.addr()?;
    let mut out = BytesMut::new();
    parser::write_uri(&mut out, &na.uri, |p| !is_push_param(p.name));
    Some(out.freeze())
}

fn tag_of(value: Result<NameAddr<'_>, parser::Error>) -> Option<&[u8]> {
    value.ok().and_then(|n| n.tag())
}

impl Engine {
    // ---- getters ----------------------------------------------------------

    /// Calls in the pending-call map (waiting, up, or kept for late wakes).
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// Latency histograms of the call flow.
    pub fn call_latency(&self) -> &CallLatency {
        &self.call_latency
    }

    /// The next push for the mediator.
    pub fn poll_push(&mut self) -> Option<PushRequest> {
        self.pushes.pop_front()
    }

    // ---- incoming INVITE ------------------------------------------------

    /// A new INVITE (no To-tag) from the provider, or routed to an account
    /// in proxy mode. `slot` is its server transaction.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn incoming_invite(
        &mut self,
        now: Instant,
        from: SocketAddr,
        flow: Flow,
        msg: &Message<'_, '_>,
        data: &[u8],
        slot: usize,
    ) {
        self.stats.calls += 1;
        // RFC 3261 §17.2.1: a 100 at once stops the caller's retransmissions.
        self.reply(now, slot, msg, 100, "Trying", |_| {});
        let Some(account) = self.account_of_request(msg) else {
            return self.reply(now, slot, msg, 404, "Not Found", |_| {});
        };
        let Ok(call_id) = msg.call_id() else { return };
        if self.call_ids.contains_key(call_id) {
            // A second INVITE with a live Call-ID but another branch (a
            // spiral or a fork back to us): not a new call.
            return self.reply(now, slot, msg, 482, "Loop Detected", |_| {});
        }
        // DESIGN §1.3 step 7: no push for a call replacing another one or
        // a non-urgent one; such a call only reaches phones that are up.
        let may_push = msg.replaces().is_none()
            && !matches!(msg.priority(), Some(Ok(p)) if p.eq_ignore_ascii_case("non-urgent"));
        let mut tag = String::with_capacity(12);
        self.rng.hex_into(&mut tag, 12);
        let gen = self.next_generation();
        let c = self.calls.insert(Call {
            gen,
            account,
            call_id: call_id.into(),
            invite: Bytes::copy_from_slice(data),
            up_src: from,
            up_flow: flow,
            server: (slot, self.servers[slot].generation),
            up_tag: tag.into_bytes().into_boxed_slice(),
            up_cseq: self.rng.below(10_000) as u32 + 1,
            state: CallState::Waiting,
            legs: Vec::new(),
            pushed: Vec::new(),
            reached: Vec::new(),
            pushes_pending: 0,
            push_ok: false,
            ringing: false,
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
        self.call_ids.insert(call_id.into(), c);
        if let Some(a) = self.accounts.get_mut(&account) {
            a.calls.push(c);
        }
        // Phones that are up get the INVITE now; the others are woken.
        let devices: Vec<(Box<str>, bool, bool, bool)> = self.accounts[&account]
            .devices
            .iter()
            .map(|d| {
                let up = d.is_registered(now);
                let connected =
                    up && matches!(d.binding.as_ref().map(|b| b.flow), Some(Flow::Stream(_)));
                (d.name.clone(), up, connected, d.push.is_some())
            })
            .collect();
        for (name, up, connected, push) in devices {
            if push && may_push && !connected {
                // RFC 8599 §4.1.2 / §5.6: a push binding is woken and then
                // its refresh REGISTER awaited, even while its SIP binding
                // lasts — over UDP nothing tells a live app from one the OS
                // suspended. The INVITE follows that REGISTER.
                self.push(now, c, &name, PushKind::IncomingCall, None);
            } else if up {
                // Connected (its TCP/TLS flow is open), a phone without push,
                // or a call that may not push: INVITEd where it registered.
                self.start_leg(now, c, &name, false);
            }
        }
        let call = &mut self.calls[c];
        if call.legs.is_empty() && call.pushes_pending == 0 {
            // Nobody to ring and nobody to wake.
            return self.end_unanswered(now, c, Outcome::Unreachable);
        }
        let wait = self.cfg.calls.device_wait;
        let t = self
            .wheel
            .insert(now + wait, Timer::Call(c, gen, CallTimer::Wait));
        self.calls[c].wait = Some(t);
    }

    /// The account a request is for: its Request-URI user is an account's
    /// Contact token (the provider calling), else its Request-URI or To
    /// names the AOR of an account in proxy mode.
    fn account_of_request(&self, msg: &Message<'_, '_>) -> Option<AccountId> {
        let uri = msg.uri().ok()?;
        if let Some(id) = uri.user.and_then(|u| self.account_by_token(u)) {
            return Some(id);
        }
        let proxy = |id: &AccountId| {
            self.accounts
                .get(id)
                .is_some_and(|a| a.cfg.registrar.is_none())
        };
        if let Some(id) = super::phone::aor_key(&uri).and_then(|k| self.by_aor.get(&k).copied()) {
            if proxy(&id) {
                return Some(id);
            }
        }
        let to = msg.to().ok()?;
        super::phone::aor_key(&to.uri)
            .and_then(|k| self.by_aor.get(&k).copied())
            .filter(proxy)
    }

    fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    fn call_mut(&mut self, c: usize, gen: u64) -> Option<&mut Call> {
        self.calls.get_mut(c).filter(|x| x.gen == gen)
    }

    // ---- pushes -----------------------------------------------------------

    fn push(
        &mut self,
        now: Instant,
        c: usize,
        device: &str,
        kind: PushKind,
        reason: Option<Outcome>,
    ) {
        let call = &self.calls[c];
        let Some(a) = self.accounts.get(&call.account) else {
            return;
        };
        let Some(d) = a.devices.iter().find(|d| &*d.name == device) else {
            return;
        };
        let Some(target) = d.push.as_ref() else {
            return;
        };
        let Some(platform) = target.platform() else {
            return;
        };
        let mut h = [EMPTY_HEADER; 64];
        let Ok(inv) = parse(&call.invite, &mut h) else {
            return;
        };
        let (Ok(from), Ok(to)) = (inv.from(), inv.to()) else {
            return;
        };
        let uri_text = |na: &NameAddr<'_>| {
            let mut out = BytesMut::new();
            parser::write_uri(&mut out, &na.uri, |p| !is_push_param(p.name));
            String::from_utf8_lossy(&out).into_owned()
        };
        let mut id = String::with_capacity(16);
        self.rng.hex_into(&mut id, 16);
        let req = PushRequest {
            id: id.clone(),
            kind,
            account: call.account,
            device: PushDevice {
                id: d.name.to_string(),
                platform,
                token: target.prid.to_string(),
                topic: target.topic(),
                environment: Environment::Production,
            },
            call: PushCall {
                call_id: String::from_utf8_lossy(&call.call_id).into_owned(),
                caller_uri: uri_text(&from),
                caller_name: from
                    .display_name()
                    .map(|n| String::from_utf8_lossy(&n).into_owned()),
                callee: uri_text(&to),
                reason: reason.map(|o| o.push_reason().to_owned()),
            },
            // The shell stamps the wall clock when it hands the push over.
            timestamp_ms: 0,
        };
        let name: Box<str> = d.name.clone();
        let gen = call.gen;
        self.pushes.push_back(req);
        self.push_waits.insert(
            id,
            PushWait {
                call: (c, gen),
                device: name.clone(),
                sent: now,
                kind,
            },
        );
        self.stats.pushes_requested += 1;
        let call = &mut self.calls[c];
        if kind == PushKind::IncomingCall {
            call.pushes_pending += 1;
            if !call.pushed.contains(&name) {
                call.pushed.push(name);
            }
        }
    }

    /// What the mediator made of a push.
    pub fn handle_push_result(&mut self, now: Instant, outcome: PushOutcome) {
        let Some(wait) = self.push_waits.remove(&outcome.id) else {
            return;
        };
        match outcome.result {
            PushResult::Sent => self.stats.pushes_sent += 1,
            PushResult::TokenDead => self.stats.pushes_token_dead += 1,
            PushResult::Failed | PushResult::Rejected => self.stats.pushes_failed += 1,
        }
        if outcome.result == PushResult::TokenDead {
            // DESIGN §1.2: a dead token is removed (APNs 410, FCM UNREGISTERED).
            let account = outcome.account;
            if self.remove_device(account, &wait.device) {
                self.events.push_back(Event::DeviceRemoved {
                    account,
                    device: wait.device.to_string(),
                });
            }
        }
        if wait.kind != PushKind::IncomingCall {
            return;
        }
        let (c, gen) = wait.call;
        let push_status = self.cfg.calls.push_status_header;
        let Some(call) = self.call_mut(c, gen) else {
            return;
        };
        call.pushes_pending = call.pushes_pending.saturating_sub(1);
        if call.state != CallState::Waiting {
            return;
        }
        if outcome.result == PushResult::Sent {
            let first = !call.push_ok;
            call.push_ok = true;
            if first {
                let created = call.created;
                record(&mut self.call_latency.push, created, now);
                // DESIGN §1.3 step 2: the caller hears that the phone is
                // being woken.
                self.send_upstream_response(now, c, 180, "Ringing", |w| {
                    if push_status {
                        w.header("X-Sipis-Push-Status", b"Push-Notification-Sent");
                    }
                });
            }
        } else if call.pushes_pending == 0
            && !call.push_ok
            && call.legs.iter().all(|l| l.state == LegState::Done)
        {
            // Nobody was woken and nobody rings: no point in waiting.
            self.end_unanswered(now, c, Outcome::Unreachable);
        }
    }

    // ---- a device is up -------------------------------------------------

    /// A device of `account` registered: INVITE it for every call waiting
    /// for it, and late-wake it for calls that ended while it slept.
    pub(super) fn device_ready(&mut self, now: Instant, account: AccountId, device: &str) {
        let Some(a) = self.accounts.get(&account) else {
            return;
        };
        let calls = a.calls.clone();
        let window = self.cfg.calls.late_wake_window;
        for c in calls {
            let Some(call) = self.calls.get_mut(c) else {
                continue;
            };
            // DESIGN §1.3 step 7: a device that already has a leg (repeated
            // REGISTERs while waking) gets no second INVITE.
            if call
                .legs
                .iter()
                .any(|l| &*l.device == device && l.state != LegState::Done)
                || call.reached.iter().any(|d| &**d == device)
            {
                continue;
            }
            match call.state {
                CallState::Waiting => {
                    if !call.timed.registered && call.pushed.iter().any(|d| &**d == device) {
                        call.timed.registered = true;
                        let created = call.created;
                        record(&mut self.call_latency.device_register, created, now);
                    }
                    self.start_leg(now, c, device, false);
                }
                CallState::Answered(_) | CallState::Ended => {
                    let pushed = call.pushed.iter().any(|d| &**d == device);
                    let inside = call.outcome.is_some_and(|(_, at)| now < at + window);
                    if pushed && inside {
                        self.stats.late_wakes += 1;
                        self.start_leg(now, c, device, true);
                    }
                }
            }
        }
    }

    /// INVITEs `device` over the flow its registration came on, built from
    /// the caller's INVITE (DESIGN §1.3 step 3).
    fn start_leg(&mut self, now: Instant, c: usize, device: &str, late: bool) {
        let call = &self.calls[c];
        let Some(d): Option<&Device> = self
            .accounts
            .get(&call.account)
            .and_then(|a| a.devices.iter().find(|d| &*d.name == device))
        else {
            return;
        };
        let Some(b) = d.binding.as_ref().filter(|b| b.expires > now) else {
            return;
        };
        let (dest, flow, target) = (b.addr, b.flow, b.uri.clone());
        let token = self.accounts[&call.account].cfg.token.clone();
        let invite = call.invite.clone();
        let gen = call.gen;
        let mut h = [EMPTY_HEADER; 64];
        let Ok(inv) = parse(&invite, &mut h) else {
            return;
        };
        let Ok(cseq) = inv.cseq() else { return };
        let cseq = cseq.seq;
        let branch = super::new_branch(&mut self.rng);
        let via = self.cfg.via.clone();
        self.buf.clear();
        let mut w = Writer::request(&mut self.buf, Method::Invite, &target);
        w.via(via_transport(flow), &via, branch.as_bytes(), true);
        w.header("Max-Forwards", b"70");
        let (Some(from), Some(to)) = (inv.header(HeaderName::From), inv.header(HeaderName::To))
        else {
            return;
        };
        let tag = tag_of(inv.from()).map(<[u8]>::to_vec);
        if put_header(&mut w, "From", from, tag.as_deref()).is_err()
            || put_header(&mut w, "To", to, None).is_err()
        {
            return;
        }
        w.copy_named(&inv, HeaderName::CallId);
        w.header_with("CSeq", |o| {
            parser::put_u32(o, cseq);
            o.put_slice(b" INVITE");
        });
        let phone_host = &self.cfg.phone_contact_host;
        w.header_with("Contact", |o| {
            o.put_slice(b"<sip:");
            o.put_slice(token.as_bytes());
            o.put_u8(b'@');
            o.put_slice(phone_host.as_bytes());
            o.put_u8(b'>');
        });
        w.copy_headers(&inv, end_to_end);
        w.finish(body(&invite, &inv));
        let bytes = self.buf.split().freeze();
        let key = TxKey::for_request(branch.as_bytes(), via.as_bytes(), Method::Invite);
        let call = &mut self.calls[c];
        let leg = call.legs.len();
        call.legs.push(Leg {
            device: device.into(),
            dest,
            flow,
            target,
            tag: None,
            invite: bytes.clone(),
            invite_cseq: cseq,
            cseq,
            state: LegState::Calling,
            cancel: None,
            cancelled: false,
            guard: None,
            ack: None,
            late,
        });
        call.reached.push(device.into());
        self.start_client(
            now,
            bytes,
            key,
            dest,
            flow,
            Kind::Invite,
            TxOwner::Leg(c, gen, leg),
        );
        if late {
            // DESIGN §1.4: the INVITE only lets CallKit close the call
            // screen properly; the CANCEL follows on the first provisional
            // answer or after the guard time.
            let reason = self.late_reason(c);
            self.cancel_leg(now, c, leg, reason);
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
    fn cancel_leg(&mut self, now: Instant, c: usize, leg: usize, reason: Option<Bytes>) {
        let guard = self.cfg.calls.late_wake_guard;
        let call = &mut self.calls[c];
        let gen = call.gen;
        let l = &mut call.legs[leg];
        if l.state == LegState::Done || l.cancelled {
            return;
        }
        if l.state == LegState::Calling {
            if l.cancel.is_none() {
                l.cancel = Some(reason);
                // §9.1 forbids a CANCEL before a provisional answer because
                // over UDP it can overtake the INVITE: the phone answers it
                // 481, then rings when the INVITE's retransmission arrives,
                // and no second CANCEL can be sent (same branch). A compliant
                // phone sends 100 Trying at once (§17.2.1), retransmitted on
                // every INVITE retransmission, so the CANCEL follows it; if
                // nothing ever comes, Timer B ends the leg. Over a stream
                // the INVITE is delivered first, so the guard time may
                // cover phones that send no provisional there.
                if matches!(l.flow, Flow::Stream(_)) {
                    let t = self.wheel.insert(
                        now + guard,
                        Timer::Call(c, gen, CallTimer::Guard(leg as u16)),
                    );
                    l.guard = Some(t);
                }
            }
            return;
        }
        self.send_cancel(now, c, leg, reason);
    }

    fn send_cancel(&mut self, now: Instant, c: usize, leg: usize, reason: Option<Bytes>) {
        let call = &mut self.calls[c];
        let l = &mut call.legs[leg];
        if l.cancelled || l.state == LegState::Done {
            return;
        }
        l.cancelled = true;
        l.cancel = None;
        if let Some(t) = l.guard.take() {
            self.wheel.cancel(t);
        }
        let (dest, flow) = (l.dest, l.flow);
        let invite = l.invite.clone();
        let mut h = [EMPTY_HEADER; 32];
        let Ok(inv) = parse(&invite, &mut h) else {
            return;
        };
        let Ok(via) = inv.top_via() else { return };
        let Some(branch) = via.branch() else { return };
        // RFC 3261 §9.1: same Request-URI, Call-ID, From, To, CSeq number
        // and top Via as the INVITE.
        self.buf.clear();
        let mut w = Writer::request(
            &mut self.buf,
            Method::Cancel,
            inv.request_uri().unwrap_or_default(),
        );
        w.copy_headers(&inv, |h| {
            matches!(
                h.kind,
                HeaderName::Via | HeaderName::From | HeaderName::To | HeaderName::CallId
            )
        });
        w.header("Max-Forwards", b"70");
        w.header_with("CSeq", |o| {
            parser::put_u32(o, l_cseq(&inv));
            o.put_slice(b" CANCEL");
        });
        if let Some(r) = &reason {
            w.header("Reason", r);
        }
        w.finish(b"");
        let bytes = self.buf.split().freeze();
        let key = TxKey::for_request(branch, self.cfg.via.as_bytes(), Method::Cancel);
        self.start_client(now, bytes, key, dest, flow, Kind::NonInvite, TxOwner::None);
    }

    // ---- answers from a device leg -----------------------------------------

    /// A response to a leg's INVITE (every 2xx, retransmissions included).
    pub(super) fn leg_response(
        &mut self,
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
        if code > 100 && l.tag.is_none() {
            l.tag = tag_of(msg.to()).map(Into::into);
        }
        if code > 100 {
            if let Some(t) = contact_uri(msg) {
                l.target = t;
            }
        }
        if code >= 200 {
            // RFC 3261 §9.1: only a request without a final answer can be
            // cancelled; a CANCEL still waiting for a provisional answer
            // or the guard time is void (a 2xx is hung up with BYE).
            l.cancel = None;
            if let Some(t) = l.guard.take() {
                self.wheel.cancel(t);
            }
        }
        match code {
            100..=199 => {
                if l.state == LegState::Calling {
                    l.state = LegState::Early;
                }
                if let Some(reason) = l.cancel.take() {
                    return self.send_cancel(now, c, leg, reason);
                }
                if l.cancelled || l.late || call.state != CallState::Waiting || code == 100 {
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
                            return self.prack_leg(now, c, leg, rseq);
                        }
                    }
                }
                call.early_leg = Some(leg);
                if !call.timed.rung {
                    call.timed.rung = true;
                    let created = call.created;
                    record(&mut self.call_latency.ringing, created, now);
                }
                call.ringing = true;
                let reason = reason_phrase(data);
                self.relay_upstream_response(now, c, code, &reason, msg, data);
            }
            200..=299 => self.leg_answered(now, c, leg, msg, data),
            _ => {
                l.state = LegState::Done;
                if let Some(t) = l.guard.take() {
                    self.wheel.cancel(t);
                }
                let (late, cancelled) = (l.late, l.cancelled);
                if late {
                    // The late wake went through: INVITE, CANCEL, 487 (ACKed
                    // by the transaction).
                    self.stats.late_wakes_completed += 1;
                    return;
                }
                if cancelled || call.state != CallState::Waiting {
                    return;
                }
                match code {
                    // DESIGN §1.3: a device that declines ends the wait.
                    486 | 600 | 603 => {
                        let reason = reason_phrase(data);
                        self.relay_upstream_response(now, c, code, &reason, msg, data);
                        self.finish_unanswered(now, c, Outcome::Declined);
                    }
                    // Anything else (503, 408, 480, ...) ends only this leg:
                    // another device, or this one again, may still come.
                    _ => self.leg_ended(now, c),
                }
            }
        }
    }

    fn leg_answered(
        &mut self,
        now: Instant,
        c: usize,
        leg: usize,
        msg: &Message<'_, '_>,
        data: &[u8],
    ) {
        let call = &mut self.calls[c];
        match call.state {
            CallState::Waiting if !call.legs[leg].cancelled && !call.legs[leg].late => {
                call.state = CallState::Answered(leg);
                call.legs[leg].state = LegState::Confirmed;
                call.outcome = Some((Outcome::Answered, now));
                if let Some(t) = call.wait.take() {
                    self.wheel.cancel(t);
                }
                // The record lives as long as the dialog: a BYE re-arms
                // the purge for the late-wake window; should no BYE ever
                // come (both ends gone), it goes after MAX_DIALOG.
                let gen = call.gen;
                if let Some(t) = call.purge.take() {
                    self.wheel.cancel(t);
                }
                let t = self
                    .wheel
                    .insert(now + MAX_DIALOG, Timer::Call(c, gen, CallTimer::Purge));
                let call = &mut self.calls[c];
                call.purge = Some(t);
                let created = call.created;
                record(&mut self.call_latency.answer, created, now);
                self.stats.calls_answered += 1;
                let reason = reason_phrase(data);
                let code = msg.status().unwrap_or(200);
                self.relay_upstream_response(now, c, code, &reason, msg, data);
                let call = &self.calls[c];
                if let Some(ok) = call.up_2xx.clone() {
                    let (server, cseq) = (call.server, invite_cseq(&call.invite));
                    self.retransmit_up_2xx(now, c, server, code, ok, cseq);
                }
                self.emit_outcome(now, c);
                // DESIGN §1.3 step 5: first 2xx wins, the others are told why.
                let others: Vec<usize> = (0..self.calls[c].legs.len())
                    .filter(|&i| i != leg)
                    .collect();
                for i in others {
                    self.cancel_leg(now, c, i, Some(Bytes::from_static(COMPLETED_ELSEWHERE)));
                }
            }
            CallState::Answered(l) if l == leg => {
                // The phone retransmits its 2xx: its ACK was lost (re-send
                // ours) or the caller's has not come yet (pass it on).
                if let Some(ack) = call.legs[leg].ack.clone() {
                    let (dest, flow) = (call.legs[leg].dest, call.legs[leg].flow);
                    self.transmits.push_back(Transmit {
                        dest,
                        flow,
                        payload: ack,
                    });
                } else if let Some(ok) = call.up_2xx.clone() {
                    let (dest, flow) = (call.up_src, call.up_flow);
                    self.transmits.push_back(Transmit {
                        dest,
                        flow,
                        payload: ok,
                    });
                }
            }
            _ => {
                // Answered too late (another device won, or a late-wake leg
                // answered before its CANCEL): ACK and hang up at once.
                let l = &mut call.legs[leg];
                l.state = LegState::Confirmed;
                if l.ack.is_none() {
                    self.ack_leg(now, c, leg, None, None);
                    // Why it is hung up follows from how the call went:
                    // another device answered, or it was declined, or the
                    // caller hung up (its own Reason, or none).
                    let reason = self.late_reason(c);
                    self.bye_leg(now, c, leg, reason);
                } else if let Some(ack) = l.ack.clone() {
                    let (dest, flow) = (l.dest, l.flow);
                    self.transmits.push_back(Transmit {
                        dest,
                        flow,
                        payload: ack,
                    });
                }
            }
        }
    }

    /// Sends (and keeps) the ACK for a leg's 2xx; `cseq`/`body` for the
    /// ACK of a re-INVITE or an ACK carrying the caller's SDP.
    pub(super) fn ack_leg(
        &mut self,
        _now: Instant,
        c: usize,
        leg: usize,
        cseq: Option<u32>,
        body: Option<&[u8]>,
    ) {
        let call = &self.calls[c];
        let l = &call.legs[leg];
        let mut h = [EMPTY_HEADER; 32];
        let Ok(inv) = parse(&l.invite, &mut h) else {
            return;
        };
        let branch = super::new_branch(&mut self.rng);
        self.buf.clear();
        let mut w = Writer::request(&mut self.buf, Method::Ack, &l.target);
        w.via(
            via_transport(l.flow),
            &self.cfg.via,
            branch.as_bytes(),
            true,
        );
        w.header("Max-Forwards", b"70");
        w.copy_named(&inv, HeaderName::From);
        if let Some(to) = inv.header(HeaderName::To) {
            if put_header(&mut w, "To", to, l.tag.as_deref()).is_err() {
                return;
            }
        }
        w.copy_named(&inv, HeaderName::CallId);
        w.header_with("CSeq", |o| {
            parser::put_u32(o, cseq.unwrap_or(l.invite_cseq));
            o.put_slice(b" ACK");
        });
        let body = body.unwrap_or_default();
        if !body.is_empty() {
            w.header("Content-Type", b"application/sdp");
        }
        w.finish(body);
        let ack = self.buf.split().freeze();
        let (dest, flow) = (l.dest, l.flow);
        if cseq.is_none() {
            self.calls[c].legs[leg].ack = Some(ack.clone());
        }
        self.transmits.push_back(Transmit {
            dest,
            flow,
            payload: ack,
        });
    }

    /// Hangs up a leg sipis no longer wants (answered too late).
    fn bye_leg(&mut self, now: Instant, c: usize, leg: usize, reason: Option<Bytes>) {
        self.calls[c].legs[leg].state = LegState::Done;
        self.leg_request(now, c, leg, Method::Bye, |w| {
            if let Some(r) = &reason {
                w.header("Reason", r);
            }
        });
    }

    /// PRACKs a reliable provisional answer of a leg itself (RFC 3262 §4).
    fn prack_leg(&mut self, now: Instant, c: usize, leg: usize, rseq: u32) {
        let invite_cseq = self.calls[c].legs[leg].invite_cseq;
        self.leg_request(now, c, leg, Method::Prack, |w| {
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
        now: Instant,
        c: usize,
        leg: usize,
        method: Method<'_>,
        extra: impl FnOnce(&mut Writer<'_>),
    ) {
        let l = &mut self.calls[c].legs[leg];
        l.cseq += 1;
        let cseq = l.cseq;
        let (dest, flow, target, tag) = (l.dest, l.flow, l.target.clone(), l.tag.clone());
        let invite = l.invite.clone();
        let mut h = [EMPTY_HEADER; 32];
        let Ok(inv) = parse(&invite, &mut h) else {
            return;
        };
        let branch = super::new_branch(&mut self.rng);
        let via = self.cfg.via.clone();
        self.buf.clear();
        let mut w = Writer::request(&mut self.buf, method, &target);
        w.via(via_transport(flow), &via, branch.as_bytes(), true);
        w.header("Max-Forwards", b"70");
        w.copy_named(&inv, HeaderName::From);
        if let Some(to) = inv.header(HeaderName::To) {
            if put_header(&mut w, "To", to, tag.as_deref()).is_err() {
                return;
            }
        }
        w.copy_named(&inv, HeaderName::CallId);
        w.header_with("CSeq", |o| {
            parser::put_u32(o, cseq);
            o.put_u8(b' ');
            o.put_slice(method.as_str().as_bytes());
        });
        extra(&mut w);
        w.finish(b"");
        let bytes = self.buf.split().freeze();
        let key = TxKey::for_request(branch.as_bytes(), via.as_bytes(), method);
        self.start_client(now, bytes, key, dest, flow, Kind::NonInvite, TxOwner::None);
    }

    /// A leg's INVITE got no answer at all (Timer B) or could not be sent.
    pub(super) fn leg_failed(&mut self, now: Instant, c: usize, gen: u64, leg: usize) {
        let Some(call) = self.call_mut(c, gen) else {
            return;
        };
        if let Some(l) = call.legs.get_mut(leg) {
            if l.state != LegState::Confirmed {
                l.state = LegState::Done;
            }
            l.cancel = None;
            if let Some(t) = l.guard.take() {
                self.wheel.cancel(t);
            }
        }
        self.leg_ended(now, c);
    }

    /// A leg of a waiting call ended without an answer: if `device_wait`
    /// is over and nothing rings any more, so is the call.
    fn leg_ended(&mut self, now: Instant, c: usize) {
        let call = &self.calls[c];
        if call.state == CallState::Waiting && call.wait_over && !call.legs.iter().any(Leg::ringing)
        {
            self.end_unanswered(now, c, Outcome::NoResponse);
        }
    }

    // ---- responses towards the caller ---------------------------------------

    /// Sends a response of sipis's own on the caller's INVITE transaction.
    pub(super) fn send_upstream_response(
        &mut self,
        now: Instant,
        c: usize,
        code: u16,
        reason: &str,
        extra: impl FnOnce(&mut Writer<'_>),
    ) {
        let call = &self.calls[c];
        let (slot, sgen) = call.server;
        let invite = call.invite.clone();
        let (tag, src) = (call.up_tag.clone(), call.up_src);
        let mut h = [EMPTY_HEADER; 64];
        let Ok(inv) = parse(&invite, &mut h) else {
            return;
        };
        self.buf.clear();
        let Ok(mut w) = parser::response_to(&mut self.buf, &inv, code, reason, &tag, src) else {
            return;
        };
        if (101..300).contains(&code) {
            w.copy_named(&inv, HeaderName::RecordRoute);
        }
        extra(&mut w);
        w.finish(b"");
        let bytes = self.buf.split().freeze();
        self.server_send(now, slot, sgen, code, bytes);
    }

    /// Relays a leg's 18x/2xx/final to the caller on its INVITE transaction,
    /// with our To-tag, our Contact and the INVITE's Record-Route.
    fn relay_upstream_response(
        &mut self,
        now: Instant,
        c: usize,
        code: u16,
        reason: &str,
        resp: &Message<'_, '_>,
        data: &[u8],
    ) {
        let call = &self.calls[c];
        let (slot, sgen) = call.server;
        let invite = call.invite.clone();
        let (tag, src) = (call.up_tag.clone(), call.up_src);
        let token = self.account_token(call.account);
        let mut h = [EMPTY_HEADER; 64];
        let Ok(inv) = parse(&invite, &mut h) else {
            return;
        };
        self.buf.clear();
        let Ok(mut w) = parser::response_to(&mut self.buf, &inv, code, reason, &tag, src) else {
            return;
        };
        if code < 300 {
            w.copy_named(&inv, HeaderName::RecordRoute);
            let host = &self.cfg.contact_host;
            w.header_with("Contact", |o| {
                o.put_slice(b"<sip:");
                o.put_slice(token.as_bytes());
                o.put_u8(b'@');
                o.put_slice(host.as_bytes());
                o.put_u8(b'>');
            });
        }
        w.copy_headers(resp, end_to_end);
        w.finish(body(data, resp));
        let bytes = self.buf.split().freeze();
        if (200..300).contains(&code) {
            self.calls[c].up_2xx = Some(bytes.clone());
        }
        self.server_send(now, slot, sgen, code, bytes);
    }

    /// Retransmits a 2xx sent to the caller until its ACK (RFC 3261
    /// §13.3.1.4): `server` is the INVITE's transaction, `cseq` its CSeq.
    pub(super) fn retransmit_up_2xx(
        &mut self,
        now: Instant,
        c: usize,
        server: (usize, u64),
        code: u16,
        bytes: Bytes,
        cseq: u32,
    ) {
        let timers = self.cfg.timers.sanitized();
        let call = &mut self.calls[c];
        // The phone's own retransmissions of that 2xx come through here
        // too: they neither restart the schedule nor revive it once ACKed.
        if call.up_acked == Some(cseq) || call.up_retx.as_ref().is_some_and(|r| r.cseq == cseq) {
            return;
        }
        if let Some(old) = call.up_retx.take() {
            self.wheel.cancel(old.timer);
        }
        let gen = call.gen;
        let timer = self.wheel.insert(
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
    pub(super) fn up_2xx_acked(&mut self, c: usize, cseq: u32) {
        let call = &mut self.calls[c];
        call.up_acked = Some(cseq);
        if call.up_retx.as_ref().is_some_and(|r| r.cseq == cseq) {
            if let Some(r) = call.up_retx.take() {
                self.wheel.cancel(r.timer);
            }
        }
    }

    fn server_send(&mut self, now: Instant, slot: usize, gen: u64, code: u16, bytes: Bytes) {
        if let Some(s) = self.servers.get_mut(slot).filter(|s| s.generation == gen) {
            s.tx.send_response(now, code, bytes);
            self.after_server(slot, None);
        }
    }

    // ---- endings --------------------------------------------------------------

    /// The call ends unanswered: the caller gets the final answer for it.
    fn end_unanswered(&mut self, now: Instant, c: usize, outcome: Outcome) {
        match outcome {
            Outcome::NoResponse => {
                self.send_upstream_response(now, c, 480, "Temporarily Unavailable", |w| {
                    w.header("X-Sipis-Reason", b"No-Response-From-Device");
                })
            }
            Outcome::Unreachable => {
                self.send_upstream_response(now, c, 480, "Temporarily Unavailable", |w| {
                    w.header("X-Sipis-Reason", b"Device-Not-Reachable");
                })
            }
            _ => {}
        }
        self.finish_unanswered(now, c, outcome);
    }

    /// Records an unanswered end: legs cancelled, missed-call pushes, the
    /// outcome kept for late wakes.
    pub(super) fn finish_unanswered(&mut self, now: Instant, c: usize, outcome: Outcome) {
        let call = &mut self.calls[c];
        if call.state == CallState::Ended {
            return;
        }
        call.state = CallState::Ended;
        call.outcome = Some((outcome, now));
        if let Some(t) = call.wait.take() {
            self.wheel.cancel(t);
        }
        match outcome {
            Outcome::NoResponse | Outcome::CallerCancelled | Outcome::Unreachable => {
                self.stats.calls_missed += 1
            }
            _ => {}
        }
        let reason = match outcome.cancel_reason() {
            Some(r) => Some(Bytes::from_static(r)),
            None => call.up_reason.clone(),
        };
        for i in 0..call.legs.len() {
            self.cancel_leg(now, c, i, reason.clone());
        }
        // DESIGN §1.5: the devices that were woken for nothing learn it.
        let call = &self.calls[c];
        let targets: Vec<(Box<str>, bool)> = call
            .pushed
            .iter()
            .filter(|d| !call.legs.iter().any(|l| &l.device == *d))
            .map(|d| {
                let fcm = self.accounts.get(&call.account).is_some_and(|a| {
                    a.devices.iter().any(|x| {
                        &x.name == d
                            && x.push.as_ref().and_then(|p| p.platform())
                                == Some(crate::push::Platform::Fcm)
                    })
                });
                (d.clone(), fcm)
            })
            .collect();
        for (d, fcm) in targets {
            match outcome {
                Outcome::NoResponse | Outcome::CallerCancelled => {
                    self.push(now, c, &d, PushKind::MissedCall, Some(outcome))
                }
                Outcome::AnsweredElsewhere | Outcome::Declined if fcm => {
                    self.push(now, c, &d, PushKind::CallCancelled, Some(outcome))
                }
                _ => {}
            }
        }
        self.emit_outcome(now, c);
        self.arm_purge(now, c);
    }

    fn emit_outcome(&mut self, now: Instant, c: usize) {
        let call = &self.calls[c];
        let Some((outcome, _)) = call.outcome else {
            return;
        };
        let mut h = [EMPTY_HEADER; 64];
        let caller = parse(&call.invite, &mut h)
            .ok()
            .and_then(|m| {
                m.from()
                    .ok()
                    .map(|f| String::from_utf8_lossy(f.uri.raw).into_owned())
            })
            .unwrap_or_default();
        self.events.push_back(Event::CallOutcome {
            account: call.account,
            call_id: String::from_utf8_lossy(&call.call_id).into_owned(),
            caller,
            outcome,
            reason: call
                .up_reason
                .as_ref()
                .map(|r| String::from_utf8_lossy(r).into_owned()),
            started: call.created,
            ended: now,
        });
    }

    fn arm_purge(&mut self, now: Instant, c: usize) {
        let window = self.cfg.calls.late_wake_window;
        let call = &mut self.calls[c];
        let at = call.outcome.map_or(now, |(_, t)| t) + window;
        let at = at.max(now);
        if let Some(t) = call.purge.take() {
            self.wheel.cancel(t);
        }
        let gen = call.gen;
        call.purge = Some(self.wheel.insert(at, Timer::Call(c, gen, CallTimer::Purge)));
    }

    /// A BYE ended the dialog with `leg`: the call is over (kept for the
    /// late-wake window of its other devices).
    pub(super) fn dialog_ended(&mut self, now: Instant, c: usize, leg: usize) {
        let call = &mut self.calls[c];
        if let Some(l) = call.legs.get_mut(leg) {
            l.state = LegState::Done;
        }
        if matches!(call.state, CallState::Answered(_)) {
            call.state = CallState::Ended;
            self.arm_purge(now, c);
        }
    }

    /// Removes a call record; its timers go with it.
    fn remove_call(&mut self, c: usize) {
        let call = self.calls.remove(c);
        self.call_ids.remove(&call.call_id);
        let retx = call.up_retx.as_ref().map(|r| r.timer);
        for t in [call.wait, call.purge, retx].into_iter().flatten() {
            self.wheel.cancel(t);
        }
        for l in &call.legs {
            if let Some(t) = l.guard {
                self.wheel.cancel(t);
            }
        }
        if let Some(a) = self.accounts.get_mut(&call.account) {
            a.calls.retain(|&x| x != c);
        }
    }

    /// A call timer fired.
    pub(super) fn call_timer(&mut self, now: Instant, c: usize, gen: u64, which: CallTimer) {
        let window = self.cfg.calls.late_wake_window;
        let t2 = self.cfg.timers.sanitized().t2;
        let Some(call) = self.call_mut(c, gen) else {
            return;
        };
        match which {
            CallTimer::Wait => {
                call.wait = None;
                if call.state != CallState::Waiting {
                    return;
                }
                // DESIGN §1.3 step 6: the wait is for a device to wake and
                // connect. One that did and rings keeps the call going
                // until it answers, the caller gives up, or its leg ends.
                if !call.wait_over && call.legs.iter().any(Leg::ringing) {
                    call.wait_over = true;
                    // Nothing rings forever: RFC 3261 §16.6 step 11's
                    // Timer C (more than 3 min) bounds it.
                    let t = self
                        .wheel
                        .insert(now + TIMER_C, Timer::Call(c, gen, CallTimer::Wait));
                    self.calls[c].wait = Some(t);
                } else {
                    self.end_unanswered(now, c, Outcome::NoResponse);
                }
            }
            CallTimer::Guard(leg) => {
                let Some(l) = call.legs.get_mut(leg as usize) else {
                    return;
                };
                l.guard = None;
                if l.state != LegState::Calling {
                    return;
                }
                if let Some(reason) = l.cancel.take() {
                    // No provisional answer within the guard time: CANCEL
                    // anyway, as phones that never send one exist.
                    l.state = LegState::Early;
                    self.send_cancel(now, c, leg as usize, reason);
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
                let ((slot, sgen), code, bytes) = (r.server, r.code, r.bytes.clone());
                let t = self
                    .wheel
                    .insert(at, Timer::Call(c, gen, CallTimer::Retransmit2xx));
                if let Some(r) = self.calls[c].up_retx.as_mut() {
                    r.timer = t;
                }
                self.server_send(now, slot, sgen, code, bytes);
            }
            CallTimer::Purge => {
                call.purge = None;
                let busy = call.relays > 0
                    || call
                        .legs
                        .iter()
                        .any(|l| matches!(l.state, LegState::Calling | LegState::Early));
                match call.state {
                    CallState::Ended if !busy => self.remove_call(c),
                    // A dialog still up, or legs still finishing: look again
                    // later (a dialog is dropped after MAX_DIALOG).
                    CallState::Answered(_)
                        if call.outcome.is_some_and(|(_, at)| now >= at + MAX_DIALOG) =>
                    {
                        self.remove_call(c)
                    }
                    _ => {
                        let next = if matches!(call.state, CallState::Answered(_)) {
                            (now + window).max(now + std::time::Duration::from_secs(60))
                        } else {
                            now + std::time::Duration::from_secs(5)
                        };
                        let t = self
                            .wheel
                            .insert(next, Timer::Call(c, gen, CallTimer::Purge));
                        self.calls[c].purge = Some(t);
                    }
                }
            }
        }
    }
}

/// How long a phone may ring once `device_wait` is over (RFC 3261
/// §16.6 step 11, Timer C: more than 3 minutes).
const TIMER_C: std::time::Duration = std::time::Duration::from_secs(181);

/// The longest a dialog's record is kept without a BYE (a lost BYE must
/// not leak the call record).
const MAX_DIALOG: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// Why a push is awaited.
pub(crate) struct PushWait {
    pub(super) call: (usize, u64),
    pub(super) device: Box<str>,
    #[allow(dead_code)]
    pub(super) sent: Instant,
    pub(super) kind: PushKind,
}

pub(super) fn put_header(
    w: &mut Writer<'_>,
    name: &str,
    value: &[u8],
    tag: Option<&[u8]>,
) -> Result<(), parser::Error> {
    let mut v = BytesMut::with_capacity(value.len() + 24);
    put_party(&mut v, value, tag)?;
    w.header(name, &v);
    Ok(())
}

/// The CSeq number of a request as received.
fn invite_cseq(invite: &[u8]) -> u32 {
    let mut h = [EMPTY_HEADER; 64];
    parse(invite, &mut h).map(|m| l_cseq(&m)).unwrap_or(1)
}

fn l_cseq(inv: &Message<'_, '_>) -> u32 {
    inv.cseq().map(|c| c.seq).unwrap_or(1)
}

/// The reason phrase of a response's status line.
pub(super) fn reason_phrase(data: &[u8]) -> String {
    let line = data.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end();
    line.splitn(3, ' ').nth(2).unwrap_or("").to_owned()
}
