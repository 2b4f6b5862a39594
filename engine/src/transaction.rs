//! The SIP transaction layer (RFC 3261 §17, amended by RFC 6026), sans-IO.
//!
//! A transaction is a plain state machine: every input carries `now`, every
//! output is drained by the caller. Nothing here reads a clock, owns a socket
//! or spawns a task, so the whole layer runs on a virtual clock in tests.
//!
//! ```text
//!  engine (TU)                         transaction                    network
//!  ───────────                         ───────────                    ───────
//!  ClientTransaction::new(request) ──▶ queue request ──poll_transmit──▶ send
//!  handle_response(resp) ◀── Pass ───  filter retransmissions, build
//!                                      the non-2xx ACK (§17.1.1.3)
//!  ServerTransaction::new()            (request passed to the TU)
//!  send_response(resp) ──────────────▶ queue response ─poll_transmit──▶ send
//!  handle_retransmission / handle_ack  resend last response / absorb ACK
//!  poll_timeout() → wheel; handle_timeout(now) → A–M fire, events out
//! ```
//!
//! # Matching
//!
//! [`TxKey`] is the map key the engine files transactions under:
//! RFC 3261 §17.1.3 for responses (top Via branch + CSeq method, plus the
//! sent-by, which §18.1.2 requires to be ours) and §17.2.3 for requests (top
//! Via branch + sent-by + method, ACK counted as INVITE).
//! [`TxKey::cancel_target`] finds the INVITE a CANCEL refers to (§9.2).
//!
//! # Timers (RFC 3261 Table 4, RFC 6026)
//!
//! | timer | value                                  | armed in                     |
//! |-------|----------------------------------------|------------------------------|
//! | A     | T1, doubling (unreliable only)         | INVITE client Calling        |
//! | B     | 64·T1                                  | INVITE client Calling        |
//! | D     | max(32 s, 64·T1) unreliable, 0 reliable| INVITE client Completed      |
//! | E     | min(2ⁿ·T1, T2); T2 in Proceeding       | non-INVITE client Trying/Proceeding |
//! | F     | 64·T1                                  | non-INVITE client            |
//! | G     | min(2ⁿ·T1, T2) (unreliable only)       | INVITE server Completed      |
//! | H     | 64·T1                                  | INVITE server Completed      |
//! | I     | T4 unreliable, 0 reliable              | INVITE server Confirmed      |
//! | J     | 64·T1 unreliable, 0 reliable           | non-INVITE server Completed  |
//! | K     | T4 unreliable, 0 reliable              | non-INVITE client Completed  |
//! | L     | 64·T1                                  | INVITE server Accepted (RFC 6026) |
//! | M     | 64·T1                                  | INVITE client Accepted (RFC 6026) |
//!
//! A retransmission timer is re-armed from the `now` it fired at, so a shell
//! that polls late sends one retransmission, not a burst. A deadline that
//! would overflow `Instant` is not armed (only with absurd [`TimerConfig`]s).
//! Zero-valued timers (reliable transports) are armed at `now`: the
//! transaction reaches Terminated through [`ClientTransaction::handle_timeout`]
//! like any other, after the caller has drained what it queued (e.g. an ACK).
//!
//! # What is the TU's job, not the transaction's
//!
//! * The 100 Trying of an INVITE server transaction (§17.2.1): the engine
//!   sends it itself through [`ServerTransaction::send_response`].
//! * Ending an INVITE client transaction stuck in Proceeding (no final
//!   response ever): Timer B only applies in Calling; the TU CANCELs (§9.1)
//!   or runs Timer C (§16.6).
//! * Answering a server transaction at all: Trying/Proceeding arm no timer.
//! * Retransmitting a 2xx to INVITE and ACKing it (§13.3.1.4, §13.2.2.4).

use bytes::{BufMut, Bytes, BytesMut};
use sipis_parser::{
    parse, put_u32, Error, Header, HeaderName, Host, Message, Method, Via, Writer, EMPTY_HEADER,
};
use std::collections::VecDeque;
use std::fmt;
use std::io::Write as _;
use std::time::{Duration, Instant};

/// The lower bound of Timer D on unreliable transports (RFC 3261 §17.1.1.2:
/// "at least 32 seconds", the server's Timer H at the default T1).
pub const TIMER_D_MIN: Duration = Duration::from_secs(32);

/// The base timer values (RFC 3261 §17.1.1.1, §17.1.2.2, Table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerConfig {
    /// RTT estimate, 500 ms by default.
    pub t1: Duration,
    /// Longest retransmit interval for non-INVITE requests and INVITE
    /// responses, 4 s by default.
    pub t2: Duration,
    /// Longest time a message stays in the network, 5 s by default.
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl TimerConfig {
    /// The smallest T1 used: a zero interval would retransmit in a busy loop.
    pub const MIN_T1: Duration = Duration::from_millis(1);

    /// The values a transaction runs with: T1 at least [`Self::MIN_T1`], T2
    /// at least T1 (so no retransmission interval is ever zero).
    pub fn sanitized(&self) -> TimerConfig {
        let t1 = self.t1.max(Self::MIN_T1);
        TimerConfig {
            t1,
            t2: self.t2.max(t1),
            t4: self.t4,
        }
    }

    /// 64·T1: Timers B, F, H, J (unreliable), L and M.
    pub fn t1x64(&self) -> Duration {
        self.t1.saturating_mul(64)
    }

    /// Timer D: max(32 s, 64·T1) on unreliable transports, 0 on reliable.
    pub fn timer_d(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.t1x64().max(TIMER_D_MIN)
        }
    }
}

/// The transaction timers of RFC 3261 (Table 4) and RFC 6026.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TxTimer {
    /// INVITE request retransmit, T1 doubling, unreliable only (RFC 3261 §17.1.1.2).
    A,
    /// INVITE client timeout in Calling, 64·T1 (RFC 3261 §17.1.1.2).
    B,
    /// INVITE client Completed: absorb final retransmissions, ≥32 s / 0 reliable (RFC 3261 §17.1.1.2).
    D,
    /// Non-INVITE request retransmit, min(2ⁿ·T1, T2), T2 in Proceeding, unreliable only (RFC 3261 §17.1.2.2).
    E,
    /// Non-INVITE client timeout, 64·T1 (RFC 3261 §17.1.2.2).
    F,
    /// INVITE non-2xx final response retransmit, min(2ⁿ·T1, T2), unreliable only (RFC 3261 §17.2.1).
    G,
    /// INVITE server Completed: give up waiting for the ACK, 64·T1 (RFC 3261 §17.2.1).
    H,
    /// INVITE server Confirmed: absorb ACK retransmissions, T4 / 0 reliable (RFC 3261 §17.2.1).
    I,
    /// Non-INVITE server Completed: absorb request retransmissions, 64·T1 / 0 reliable (RFC 3261 §17.2.2).
    J,
    /// Non-INVITE client Completed: absorb response retransmissions, T4 / 0 reliable (RFC 3261 §17.1.2.2).
    K,
    /// INVITE server Accepted: absorb INVITE retransmissions after a 2xx, 64·T1 (RFC 6026 §8.7).
    L,
    /// INVITE client Accepted: pass 2xx retransmissions to the TU, 64·T1 (RFC 6026 §8.4).
    M,
}

impl TxTimer {
    /// The slot the timer lives in. No transaction ever needs two timers
    /// of the same slot at once, so three slots replace a table of twelve.
    fn slot(self) -> usize {
        match self {
            // Retransmission.
            TxTimer::A | TxTimer::E | TxTimer::G => 0,
            // Lifetime / give-up.
            TxTimer::B | TxTimer::F | TxTimer::H | TxTimer::L | TxTimer::M => 1,
            // Linger in Completed / Confirmed.
            TxTimer::D | TxTimer::I | TxTimer::J | TxTimer::K => 2,
        }
    }
}

/// The armed timers of one transaction.
#[derive(Debug, Clone, Copy, Default)]
struct Timers {
    slots: [Option<(TxTimer, Instant)>; 3],
}

impl Timers {
    /// Arms `timer` to fire `after` from `now` (replacing whatever shared its
    /// slot). A deadline that overflows `Instant` leaves the slot empty.
    fn set(&mut self, timer: TxTimer, now: Instant, after: Duration) {
        self.slots[timer.slot()] = now.checked_add(after).map(|at| (timer, at));
    }

    fn stop(&mut self, timer: TxTimer) {
        let slot = &mut self.slots[timer.slot()];
        if matches!(slot, Some((t, _)) if *t == timer) {
            *slot = None;
        }
    }

    fn get(&self, timer: TxTimer) -> Option<Instant> {
        match self.slots[timer.slot()] {
            Some((t, at)) if t == timer => Some(at),
            _ => None,
        }
    }

    fn clear(&mut self) {
        self.slots = [None; 3];
    }

    fn next(&self) -> Option<Instant> {
        self.slots.iter().flatten().map(|&(_, at)| at).min()
    }

    /// Disarms and returns the earliest timer due at `now` whose slot has
    /// not fired yet in this round (`fired`), and marks its slot. Ties go
    /// to the retransmission slot, so a retransmission due at the same
    /// instant as a timeout is queued before the timeout discards it. One
    /// firing per slot per round keeps a re-armed timer from firing again
    /// in the same call.
    fn pop_expired(&mut self, now: Instant, fired: &mut [bool; 3]) -> Option<TxTimer> {
        let mut best: Option<(usize, Instant)> = None;
        for (i, s) in self.slots.iter().enumerate() {
            if let (Some((_, at)), Some(false)) = (*s, fired.get(i)) {
                if at <= now && best.is_none_or(|(_, b)| at < b) {
                    best = Some((i, at));
                }
            }
        }
        let (i, _) = best?;
        if let Some(f) = fired.get_mut(i) {
            *f = true;
        }
        self.slots.get_mut(i)?.take().map(|(t, _)| t)
    }
}

/// Which state machine a transaction runs (RFC 3261 §17.1, §17.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// INVITE: three-way handshake, ACK for non-2xx inside the transaction.
    Invite,
    /// Every other method (there is no transaction for ACK).
    NonInvite,
}

impl Kind {
    /// The state machine a request of this method runs.
    pub fn of(method: Method<'_>) -> Kind {
        if method == Method::Invite {
            Kind::Invite
        } else {
            Kind::NonInvite
        }
    }
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

/// Which side a key matches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    /// §17.1.3 + §18.1.2: branch + our sent-by + CSeq method.
    Client,
    /// §17.2.3: branch + sent-by + method.
    Server,
}

/// A transaction key: RFC 3261 §17.1.3 for client transactions (top Via
/// branch + CSeq method, plus our sent-by, see [`TxKey::client`]) and
/// §17.2.3 for server transactions (top Via branch + sent-by + request
/// method, an ACK counting as the INVITE it acknowledges). Client and
/// server keys never compare equal, so one map may hold both.
///
/// Normalisation, done once at construction so `Hash`/`Eq` are plain byte
/// compares:
/// * the branch is ASCII-lowercased (§7.3.1: parameter values are
///   case-insensitive unless stated otherwise; `branch` is a token), so
///   [`TxKey::branch`] returns the folded value;
/// * the sent-by host is lowercased when it is a name and written in its
///   canonical form when it is an IP address (`[2001:db8::1]`); the port is
///   kept as given, absent ≠ 5060; Via parameters (`received`, `rport`) and
///   the transport are not part of it;
/// * the method is kept case-sensitive (§7.1).
///
/// A branch without the `z9hG4bK` cookie (§8.1.1.7, an RFC 2543 client) is
/// treated as an opaque string with the same rules: the RFC 2543 matching of
/// §17.2.3 (Request-URI, tags, Call-ID, CSeq, whole top Via) is not done.
/// Retransmissions from such clients still match as long as they reuse the
/// branch; [`TxKey::has_magic_cookie`] tells the engine which kind it has.
/// A request or response whose top Via has no branch (or an empty one) gets
/// no key: `Err(Error::HeaderValue)`.
///
/// One allocation per key: branch, sent-by and method share one buffer.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TxKey {
    /// branch ++ sent-by ++ method.
    buf: Box<[u8]>,
    branch_len: u32,
    sent_by_len: u32,
    side: Side,
}

impl TxKey {
    fn build(branch: &[u8], sent_by: SentBy<'_>, method: &str, side: Side) -> TxKey {
        let mut buf = Vec::with_capacity(branch.len() + method.len() + 32);
        buf.extend(branch.iter().map(u8::to_ascii_lowercase));
        let branch_len = buf.len();
        match sent_by {
            SentBy::Parsed(host, host_raw, port) => push_sent_by(&mut buf, host, host_raw, port),
            SentBy::Raw(raw) => match split_sent_by(raw) {
                Some((host, host_raw, port)) => push_sent_by(&mut buf, host, host_raw, port),
                None => buf.extend(raw.iter().map(u8::to_ascii_lowercase)),
            },
        }
        let sent_by_len = buf.len() - branch_len;
        buf.extend_from_slice(method.as_bytes());
        TxKey {
            buf: buf.into_boxed_slice(),
            branch_len: u32::try_from(branch_len).unwrap_or(u32::MAX),
            sent_by_len: u32::try_from(sent_by_len).unwrap_or(u32::MAX),
            side,
        }
    }

    /// The key of the server transaction a received request belongs to
    /// (§17.2.3). An ACK gets the key of the INVITE it acknowledges: for a
    /// non-2xx that ACK carries the INVITE's branch and so finds its server
    /// transaction; an ACK for a 2xx has a branch of its own, finds none and
    /// goes to the TU (§17.2.3, §18.2.1). A CANCEL gets a key of its own
    /// (method CANCEL); see [`TxKey::cancel_target`] for the INVITE it
    /// cancels.
    pub fn server(req: &Message<'_, '_>) -> Result<TxKey, Error> {
        let method = req.method().ok_or(Error::StartLine)?;
        let method = if method == Method::Ack {
            Method::Invite
        } else {
            method
        };
        Self::server_with(req, method)
    }

    /// The key of the server transaction a CANCEL refers to (§9.2): the
    /// CANCEL's branch and sent-by (a CANCEL copies the top Via of the
    /// request it cancels, §9.1), method INVITE. CANCEL of a non-INVITE
    /// has no effect (§9.1), so only INVITE is looked for.
    /// `Err(Error::Method)` when `cancel` is not a CANCEL.
    pub fn cancel_target(cancel: &Message<'_, '_>) -> Result<TxKey, Error> {
        if cancel.method() != Some(Method::Cancel) {
            return Err(Error::Method);
        }
        Self::server_with(cancel, Method::Invite)
    }

    fn server_with(req: &Message<'_, '_>, method: Method<'_>) -> Result<TxKey, Error> {
        let via = req.top_via()?;
        let sent_by = SentBy::Parsed(via.host, via.host_raw, via.port);
        match via.branch() {
            Some(b)
                if b.get(..sipis_parser::BRANCH_MAGIC.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(sipis_parser::BRANCH_MAGIC)) =>
            {
                Ok(Self::build(b, sent_by, method.as_str(), Side::Server))
            }
            // RFC 3261 §17.2.3: a request from an RFC 2543 element (no
            // branch, or one without the magic cookie) matches by its
            // Request-URI, From tag, Call-ID, CSeq number and top Via; the
            // To tag is left out so that the ACK of a non-2xx and a CANCEL
            // find their INVITE.
            _ => {
                let mut k = Vec::with_capacity(128);
                k.extend_from_slice(b"2543|");
                k.extend_from_slice(req.uri()?.raw);
                k.push(b'|');
                k.extend_from_slice(req.from()?.tag().unwrap_or_default());
                k.push(b'|');
                k.extend_from_slice(req.call_id()?);
                k.push(b'|');
                k.extend_from_slice(req.cseq()?.seq.to_string().as_bytes());
                k.push(b'|');
                k.extend_from_slice(req.header(HeaderName::Via).unwrap_or_default());
                Ok(Self::build(&k, sent_by, method.as_str(), Side::Server))
            }
        }
    }

    /// The key of the client transaction a received response belongs to:
    /// top Via branch and CSeq method (§17.1.3), and the top Via sent-by.
    /// The sent-by folds §18.1.2 into the same lookup: a response whose
    /// sent-by is not the one we wrote "MUST be silently discarded", and
    /// here it simply matches no transaction (a stray for the engine).
    pub fn client(resp: &Message<'_, '_>) -> Result<TxKey, Error> {
        let via = resp.top_via()?;
        let branch = nonempty_branch(&via)?;
        let cseq = resp.cseq()?;
        let sent_by = SentBy::Parsed(via.host, via.host_raw, via.port);
        Ok(Self::build(
            branch,
            sent_by,
            cseq.method.as_str(),
            Side::Client,
        ))
    }

    /// The key of a client transaction the engine creates for a request it
    /// sends with `branch` and `sent_by` (`host[:port]`, as written in its
    /// Via): equal to [`TxKey::client`] of every response to that request.
    /// A CANCEL sent for an INVITE reuses the INVITE's branch (§9.1) and
    /// gets a distinct key through its method. A `sent_by` that does not
    /// parse as `host[:port]` is kept as opaque lowercased bytes.
    pub fn for_request(branch: &[u8], sent_by: &[u8], method: Method<'_>) -> TxKey {
        Self::build(branch, SentBy::Raw(sent_by), method.as_str(), Side::Client)
    }

    /// The branch, ASCII-lowercased.
    pub fn branch(&self) -> &[u8] {
        self.buf.get(..self.branch_len as usize).unwrap_or_default()
    }

    /// The normalised sent-by (`host[:port]`).
    pub fn sent_by(&self) -> &[u8] {
        let start = self.branch_len as usize;
        self.buf
            .get(start..start.saturating_add(self.sent_by_len as usize))
            .unwrap_or_default()
    }

    /// The method the transaction was created by (`INVITE` for an ACK's
    /// key).
    pub fn method(&self) -> &str {
        let start = (self.branch_len as usize).saturating_add(self.sent_by_len as usize);
        self.buf
            .get(start..)
            .and_then(|m| std::str::from_utf8(m).ok())
            .unwrap_or_default()
    }

    /// Whether the key is a server key (§17.2.3) rather than a client key.
    pub fn is_server(&self) -> bool {
        self.side == Side::Server
    }

    /// Whether the branch starts with the RFC 3261 magic cookie `z9hG4bK`
    /// (compared case-insensitively, as the key is folded).
    pub fn has_magic_cookie(&self) -> bool {
        self.branch()
            .get(..sipis_parser::BRANCH_MAGIC.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(sipis_parser::BRANCH_MAGIC))
    }
}

impl fmt::Debug for TxKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxKey")
            .field("side", &self.side)
            .field("branch", &String::from_utf8_lossy(self.branch()))
            .field("sent_by", &String::from_utf8_lossy(self.sent_by()))
            .field("method", &self.method())
            .finish()
    }
}

/// A sent-by as the key is built from: a parsed Via, or the engine's own
/// `host:port` string.
#[derive(Clone, Copy)]
enum SentBy<'a> {
    Parsed(Host<'a>, &'a [u8], Option<u16>),
    Raw(&'a [u8]),
}

/// Writes `host[:port]` normalised: host names lowercased, IP addresses in
/// canonical form (IPv6 bracketed), the port only when given.
fn push_sent_by(buf: &mut Vec<u8>, host: Host<'_>, host_raw: &[u8], port: Option<u16>) {
    let start = buf.len();
    // Writing into a Vec never fails.
    let _ = write!(buf, "{host}");
    if buf.len() == start {
        buf.extend_from_slice(host_raw);
    }
    if let Some(tail) = buf.get_mut(start..) {
        tail.make_ascii_lowercase();
    }
    if let Some(port) = port {
        let _ = write!(buf, ":{port}");
    }
}

/// Splits `host[:port]` (IPv6 bracketed) as Via's sent-by grammar has it.
fn split_sent_by(raw: &[u8]) -> Option<(Host<'_>, &[u8], Option<u16>)> {
    let (host_raw, port) = if raw.first() == Some(&b'[') {
        let close = raw.iter().position(|&b| b == b']')?;
        let (h, rest) = raw.split_at(close + 1);
        match rest {
            [] => (h, None),
            [b':', p @ ..] => (h, Some(p)),
            _ => return None,
        }
    } else {
        match raw.iter().rposition(|&b| b == b':') {
            Some(i) => (raw.get(..i)?, Some(raw.get(i + 1..)?)),
            None => (raw, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.iter().all(u8::is_ascii_digit) => {
            Some(std::str::from_utf8(p).ok()?.parse::<u16>().ok()?)
        }
        Some(_) => return None,
    };
    Some((Host::parse(host_raw).ok()?, host_raw, port))
}

fn nonempty_branch<'a>(via: &Via<'a>) -> Result<&'a [u8], Error> {
    match via.branch() {
        Some(b) if !b.is_empty() => Ok(b),
        _ => Err(Error::HeaderValue),
    }
}

// ---------------------------------------------------------------------------
// Client transactions
// ---------------------------------------------------------------------------

/// Whether a response matched to a client transaction goes up to the TU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pass {
    /// Pass the response to the TU.
    Deliver,
    /// A retransmission (or a response not allowed in this state): drop it.
    Absorb,
}

/// What a client transaction tells the TU when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientEvent {
    /// Timer B or F fired without a final response: the TU acts as if it
    /// had received a 408 (RFC 3261 §8.1.3.1, §16.7 step 6).
    Timeout,
    /// The transport could not send (§17.1.4): the TU fails over or acts as
    /// if it had received a 503 (§16.9).
    TransportError,
    /// The transaction ended normally (Timer D, K or M): drop it.
    Terminated,
}

/// Client transaction states (RFC 3261 Figures 5 and 6, RFC 6026 §8.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientState {
    /// INVITE sent, no response yet (§17.1.1.2).
    Calling,
    /// Non-INVITE request sent, no response yet (§17.1.2.2).
    Trying,
    /// A provisional response arrived.
    Proceeding,
    /// A final response (non-2xx for INVITE) arrived; absorbing its
    /// retransmissions.
    Completed,
    /// INVITE only: a 2xx arrived; later 2xx go to the TU (RFC 6026).
    Accepted,
    /// Over: the engine drops the transaction.
    Terminated,
}

/// A client transaction (RFC 3261 §17.1): sends one request reliably and
/// filters its responses for the TU.
#[derive(Debug, Clone)]
pub struct ClientTransaction {
    kind: Kind,
    reliable: bool,
    cfg: TimerConfig,
    state: ClientState,
    request: Bytes,
    /// The hop-by-hop ACK for a non-2xx final (INVITE only).
    ack: Option<Bytes>,
    /// The current Timer A / E interval.
    interval: Duration,
    timers: Timers,
    out: VecDeque<Bytes>,
}

impl ClientTransaction {
    /// Starts a client transaction and queues `request` for sending now.
    /// `request` is the complete message, including our Via with the
    /// branch and sent-by the transaction is keyed by
    /// ([`TxKey::for_request`]).
    /// `reliable` is the transport's: no retransmissions over TCP, TLS,
    /// SCTP or WebSocket (§17.1.1.2, §17.1.2.2). There is no client
    /// transaction for ACK (§17.1): the TU sends ACKs for 2xx itself.
    pub fn new(
        now: Instant,
        kind: Kind,
        request: Bytes,
        reliable: bool,
        cfg: &TimerConfig,
    ) -> Self {
        let cfg = &cfg.sanitized();
        let mut tx = ClientTransaction {
            kind,
            reliable,
            cfg: *cfg,
            state: match kind {
                Kind::Invite => ClientState::Calling,
                Kind::NonInvite => ClientState::Trying,
            },
            request: request.clone(),
            ack: None,
            interval: cfg.t1,
            timers: Timers::default(),
            out: VecDeque::new(),
        };
        tx.out.push_back(request);
        let (retransmit, timeout) = match kind {
            Kind::Invite => (TxTimer::A, TxTimer::B),
            Kind::NonInvite => (TxTimer::E, TxTimer::F),
        };
        if !reliable {
            tx.timers.set(retransmit, now, cfg.t1);
        }
        tx.timers.set(timeout, now, cfg.t1x64());
        tx
    }

    /// Handles a response the engine matched to this transaction
    /// ([`TxKey::client`]) and says whether the TU sees it.
    ///
    /// * Provisional: to the TU while Calling/Trying/Proceeding; stops
    ///   Timer A (INVITE) — and Timer B, which only applies in Calling.
    /// * First final: to the TU. INVITE 300–699: the transaction builds the
    ///   hop-by-hop ACK (§17.1.1.3) and queues it, even on reliable
    ///   transports; Completed, Timer D. INVITE 2xx: Accepted (RFC 6026),
    ///   Timer M; the TU ACKs it end to end. Non-INVITE: Completed, Timer K.
    /// * INVITE in Completed: a retransmitted 300–699 queues the ACK again
    ///   and is absorbed; a 2xx (another fork, after a proxy forwarded a
    ///   non-2xx) goes to the TU, which must ACK it.
    /// * INVITE in Accepted: every 2xx goes to the TU (retransmissions and
    ///   other forks), anything else is absorbed.
    /// * Anything else (retransmissions, a request, a code outside 100–699,
    ///   a terminated transaction) is absorbed.
    pub fn handle_response(&mut self, now: Instant, resp: &Message<'_, '_>) -> Pass {
        let code = match resp.status() {
            Some(c @ 100..=699) => c,
            _ => return Pass::Absorb,
        };
        match self.kind {
            Kind::Invite => self.invite_response(now, code, resp),
            Kind::NonInvite => self.non_invite_response(now, code),
        }
    }

    fn invite_response(&mut self, now: Instant, code: u16, resp: &Message<'_, '_>) -> Pass {
        match (self.state, code) {
            (ClientState::Calling | ClientState::Proceeding, 100..=199) => {
                self.state = ClientState::Proceeding;
                self.timers.stop(TxTimer::A);
                self.timers.stop(TxTimer::B);
                Pass::Deliver
            }
            (ClientState::Calling | ClientState::Proceeding, 200..=299) => {
                self.state = ClientState::Accepted;
                self.timers.clear();
                self.timers.set(TxTimer::M, now, self.cfg.t1x64());
                Pass::Deliver
            }
            (ClientState::Calling | ClientState::Proceeding, _) => {
                self.state = ClientState::Completed;
                self.timers.clear();
                self.ack = build_ack(&self.request, resp);
                if let Some(ack) = &self.ack {
                    self.out.push_back(ack.clone());
                }
                self.timers
                    .set(TxTimer::D, now, self.cfg.timer_d(self.reliable));
                Pass::Deliver
            }
            (ClientState::Completed, 300..=699) => {
                if let Some(ack) = &self.ack {
                    self.out.push_back(ack.clone());
                }
                Pass::Absorb
            }
            (ClientState::Completed | ClientState::Accepted, 200..=299) => Pass::Deliver,
            _ => Pass::Absorb,
        }
    }

    fn non_invite_response(&mut self, now: Instant, code: u16) -> Pass {
        match (self.state, code) {
            (ClientState::Trying | ClientState::Proceeding, 100..=199) => {
                self.state = ClientState::Proceeding;
                Pass::Deliver
            }
            (ClientState::Trying | ClientState::Proceeding, _) => {
                self.state = ClientState::Completed;
                self.timers.clear();
                let k = if self.reliable {
                    Duration::ZERO
                } else {
                    self.cfg.t4
                };
                self.timers.set(TxTimer::K, now, k);
                Pass::Deliver
            }
            _ => Pass::Absorb,
        }
    }

    /// Fires the timers due at `now`: retransmits the request (A, E), or
    /// ends the transaction — [`ClientEvent::Timeout`] for B and F,
    /// [`ClientEvent::Terminated`] for D, K and M. Call it when
    /// [`ClientTransaction::poll_timeout`] is reached; calling it early
    /// does nothing.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<ClientEvent> {
        let mut fired = [false; 3];
        while let Some(timer) = self.timers.pop_expired(now, &mut fired) {
            match timer {
                TxTimer::A if self.state == ClientState::Calling => {
                    self.out.push_back(self.request.clone());
                    self.interval = self.interval.saturating_mul(2);
                    self.timers.set(TxTimer::A, now, self.interval);
                }
                TxTimer::E
                    if matches!(self.state, ClientState::Trying | ClientState::Proceeding) =>
                {
                    self.out.push_back(self.request.clone());
                    self.interval = if self.state == ClientState::Proceeding {
                        self.cfg.t2
                    } else {
                        self.interval.saturating_mul(2).min(self.cfg.t2)
                    };
                    self.timers.set(TxTimer::E, now, self.interval);
                }
                TxTimer::B | TxTimer::F => {
                    self.fail();
                    return Some(ClientEvent::Timeout);
                }
                TxTimer::D | TxTimer::K | TxTimer::M => {
                    self.terminate();
                    return Some(ClientEvent::Terminated);
                }
                _ => {}
            }
        }
        None
    }

    /// The transport failed to send the request or the ACK (§17.1.4): the
    /// transaction terminates and the TU is told. In Accepted nothing of
    /// this transaction is in flight (the 2xx's ACK is the TU's), so the
    /// error is ignored there, as it is once terminated.
    pub fn handle_transport_error(&mut self, _now: Instant) -> Option<ClientEvent> {
        match self.state {
            ClientState::Accepted | ClientState::Terminated => None,
            _ => {
                self.fail();
                Some(ClientEvent::TransportError)
            }
        }
    }

    /// The next message to send to the transaction's destination: the
    /// request, its retransmissions, and ACKs for non-2xx finals.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.out.pop_front()
    }

    /// When [`ClientTransaction::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// When `timer` fires, if it is armed.
    pub fn deadline(&self, timer: TxTimer) -> Option<Instant> {
        self.timers.get(timer)
    }

    /// The current state.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// Whether the transaction is over and can be dropped.
    pub fn is_terminated(&self) -> bool {
        self.state == ClientState::Terminated
    }

    /// INVITE or non-INVITE state machine.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The request as sent: what a CANCEL is built from (§9.1).
    pub fn request(&self) -> &Bytes {
        &self.request
    }

    /// The hop-by-hop ACK, once a non-2xx final arrived (INVITE only).
    pub fn ack(&self) -> Option<&Bytes> {
        self.ack.as_ref()
    }

    fn terminate(&mut self) {
        self.state = ClientState::Terminated;
        self.timers.clear();
    }

    /// Terminates on failure: pending retransmissions are pointless.
    fn fail(&mut self) {
        self.terminate();
        self.out.clear();
    }
}

/// Builds the ACK for a non-2xx final response (§17.1.1.3): Request-URI,
/// Call-ID, From and Max-Forwards of the original request, its top Via
/// only, its Route headers, the response's To (with its tag), and
/// `CSeq: <n> ACK`. `None` when the request cannot be parsed back (it is
/// our own, so only if the engine sent garbage).
fn build_ack(request: &[u8], resp: &Message<'_, '_>) -> Option<Bytes> {
    // Enough header slots for any message this request can be.
    let lines = request.iter().filter(|&&b| b == b'\n').count() + 1;
    let mut headers: Vec<Header<'_>> = vec![EMPTY_HEADER; lines];
    let req = parse(request, &mut headers).ok()?;
    let uri = req.request_uri()?;
    let cseq = req.cseq().ok()?;
    let top_via = req.header_list(HeaderName::Via).next()?.ok()?;
    let to = resp
        .header(HeaderName::To)
        .or_else(|| req.header(HeaderName::To))?;

    let mut out = BytesMut::with_capacity(512);
    let mut w = Writer::request(&mut out, Method::Ack, uri);
    w.header("Via", top_via);
    w.header(
        "Max-Forwards",
        req.header(HeaderName::MaxForwards).unwrap_or(b"70"),
    );
    w.copy_named(&req, HeaderName::From);
    w.header("To", to);
    w.copy_named(&req, HeaderName::CallId);
    w.header_with("CSeq", |o| {
        put_u32(o, cseq.seq);
        o.put_slice(b" ACK");
    });
    w.copy_named(&req, HeaderName::Route);
    w.finish(b"");
    Some(out.freeze())
}

// ---------------------------------------------------------------------------
// Server transactions
// ---------------------------------------------------------------------------

/// What a server transaction tells the TU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerEvent {
    /// Timer H fired: no ACK came for the non-2xx final (§17.2.1,
    /// "transaction failure"). The transaction is terminated.
    Timeout,
    /// The transport could not send a response (§17.2.4). Per RFC 6026
    /// §8.8 the transaction stays in its state (retransmissions are still
    /// absorbed, its timers still end it).
    TransportError,
    /// The transaction ended normally (Timer I, J or L): drop it.
    Terminated,
}

/// Server transaction states (RFC 3261 Figures 7 and 8, RFC 6026 §8.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerState {
    /// Non-INVITE: request passed to the TU, nothing sent yet (§17.2.2).
    Trying,
    /// INVITE from the start; non-INVITE after a provisional response.
    Proceeding,
    /// A final response (non-2xx for INVITE) was sent.
    Completed,
    /// INVITE: the ACK for the non-2xx final arrived.
    Confirmed,
    /// INVITE: a 2xx was sent; INVITE retransmissions are absorbed (RFC 6026).
    Accepted,
    /// Over: the engine drops the transaction.
    Terminated,
}

/// A server transaction (RFC 3261 §17.2): absorbs request retransmissions
/// and sends the TU's responses reliably.
#[derive(Debug, Clone)]
pub struct ServerTransaction {
    kind: Kind,
    reliable: bool,
    cfg: TimerConfig,
    state: ServerState,
    /// The most recent response sent: the one a request retransmission
    /// gets again.
    last: Option<Bytes>,
    /// The current Timer G interval.
    interval: Duration,
    timers: Timers,
    out: VecDeque<Bytes>,
}

impl ServerTransaction {
    /// Creates the transaction for a new request, which the engine passes
    /// to the TU. INVITE starts in Proceeding (§17.2.1) — the engine sends
    /// the 100 Trying itself unless the TU answers within 200 ms —,
    /// non-INVITE in Trying (§17.2.2).
    pub fn new(_now: Instant, kind: Kind, reliable: bool, cfg: &TimerConfig) -> Self {
        let cfg = &cfg.sanitized();
        ServerTransaction {
            kind,
            reliable,
            cfg: *cfg,
            state: match kind {
                Kind::Invite => ServerState::Proceeding,
                Kind::NonInvite => ServerState::Trying,
            },
            last: None,
            interval: cfg.t1,
            timers: Timers::default(),
            out: VecDeque::new(),
        }
    }

    /// The TU sends a response (complete message bytes). Returns whether
    /// it was queued; `false` means the state machine discards it.
    ///
    /// INVITE: in Proceeding, 1xx is sent; 2xx is sent and the transaction
    /// enters Accepted with Timer L (RFC 6026 §8.5 — the TU retransmits
    /// the 2xx itself, through this method while Accepted); 300–699 is
    /// sent, Completed, Timer G (unreliable) and Timer H. Non-INVITE: 1xx
    /// moves Trying to Proceeding; 200–699 is sent, Completed, Timer J.
    /// Anything else (a final in Completed, a 1xx after a final, a code
    /// outside 100–699) is discarded (§17.2.2).
    pub fn send_response(&mut self, now: Instant, status: u16, response: Bytes) -> bool {
        if !(100..=699).contains(&status) {
            return false;
        }
        match (self.kind, self.state, status) {
            (Kind::Invite, ServerState::Proceeding, 100..=199)
            | (Kind::NonInvite, ServerState::Trying | ServerState::Proceeding, 100..=199) => {
                self.state = ServerState::Proceeding;
            }
            (Kind::Invite, ServerState::Proceeding, 200..=299) => {
                self.state = ServerState::Accepted;
                self.timers.set(TxTimer::L, now, self.cfg.t1x64());
            }
            (Kind::Invite, ServerState::Accepted, 200..=299) => {
                // A 2xx retransmission by the TU (§13.3.1.4): sent, no
                // state change, not remembered for request retransmissions.
                self.out.push_back(response);
                return true;
            }
            (Kind::Invite, ServerState::Proceeding, _) => {
                self.state = ServerState::Completed;
                if !self.reliable {
                    self.interval = self.cfg.t1;
                    self.timers.set(TxTimer::G, now, self.interval);
                }
                self.timers.set(TxTimer::H, now, self.cfg.t1x64());
            }
            (Kind::NonInvite, ServerState::Trying | ServerState::Proceeding, _) => {
                self.state = ServerState::Completed;
                let j = if self.reliable {
                    Duration::ZERO
                } else {
                    self.cfg.t1x64()
                };
                self.timers.set(TxTimer::J, now, j);
            }
            _ => return false,
        }
        self.out.push_back(response.clone());
        self.last = Some(response);
        true
    }

    /// The request arrived again ([`TxKey::server`] matched this
    /// transaction, and it is not an ACK). In Proceeding the most recent
    /// provisional response is resent, in Completed the final response
    /// (§17.2.1, §17.2.2); before any response (non-INVITE Trying), in
    /// Accepted (RFC 6026 §8.7: the TU retransmits the 2xx) and in
    /// Confirmed the retransmission is absorbed. Returns whether a response
    /// was queued.
    pub fn handle_retransmission(&mut self, _now: Instant) -> bool {
        match self.state {
            ServerState::Proceeding | ServerState::Completed => match &self.last {
                Some(r) => {
                    self.out.push_back(r.clone());
                    true
                }
                None => false,
            },
            _ => false,
        }
    }

    /// An ACK matched this transaction ([`TxKey::server`] maps ACK to the
    /// INVITE's key). Returns `true` when the transaction absorbs it: in
    /// Completed it moves to Confirmed (Timer G and H stop, Timer I starts:
    /// T4, or 0 on reliable transports); in Confirmed it is a
    /// retransmitted ACK. Returns `false` otherwise: in Accepted the ACK is
    /// for the 2xx and belongs to the TU (RFC 6026 §8.7); in other states
    /// (non-INVITE, no final sent, terminated) it is not this
    /// transaction's to absorb.
    pub fn handle_ack(&mut self, now: Instant) -> bool {
        match (self.kind, self.state) {
            (Kind::Invite, ServerState::Completed) => {
                self.state = ServerState::Confirmed;
                self.timers.clear();
                let i = if self.reliable {
                    Duration::ZERO
                } else {
                    self.cfg.t4
                };
                self.timers.set(TxTimer::I, now, i);
                true
            }
            (Kind::Invite, ServerState::Confirmed) => true,
            _ => false,
        }
    }

    /// Fires the timers due at `now`: retransmits the non-2xx final (G,
    /// doubling up to T2), or ends the transaction —
    /// [`ServerEvent::Timeout`] for H, [`ServerEvent::Terminated`] for I,
    /// J and L.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<ServerEvent> {
        let mut fired = [false; 3];
        while let Some(timer) = self.timers.pop_expired(now, &mut fired) {
            match timer {
                TxTimer::G if self.state == ServerState::Completed => {
                    if let Some(r) = &self.last {
                        self.out.push_back(r.clone());
                    }
                    self.interval = self.interval.saturating_mul(2).min(self.cfg.t2);
                    self.timers.set(TxTimer::G, now, self.interval);
                }
                TxTimer::H => {
                    self.terminate();
                    self.out.clear();
                    return Some(ServerEvent::Timeout);
                }
                TxTimer::I | TxTimer::J | TxTimer::L => {
                    self.terminate();
                    return Some(ServerEvent::Terminated);
                }
                _ => {}
            }
        }
        None
    }

    /// The transport could not send a response (§17.2.4). RFC 6026 §8.8:
    /// the TU is informed and the transaction stays in its current state,
    /// so retransmissions keep being absorbed until its timers end it.
    /// `None` once terminated.
    pub fn handle_transport_error(&mut self, _now: Instant) -> Option<ServerEvent> {
        if self.state == ServerState::Terminated {
            None
        } else {
            Some(ServerEvent::TransportError)
        }
    }

    /// The next response to send to where the request came from (§18.2.2).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.out.pop_front()
    }

    /// When [`ServerTransaction::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// When `timer` fires, if it is armed.
    pub fn deadline(&self, timer: TxTimer) -> Option<Instant> {
        self.timers.get(timer)
    }

    /// The current state.
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// Whether the transaction is over and can be dropped.
    pub fn is_terminated(&self) -> bool {
        self.state == ServerState::Terminated
    }

    /// INVITE or non-INVITE state machine.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The most recent response sent (provisional or final).
    pub fn last_response(&self) -> Option<&Bytes> {
        self.last.as_ref()
    }

    fn terminate(&mut self) {
        self.state = ServerState::Terminated;
        self.timers.clear();
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor a simulated clock
mod tests {
    use super::*;
    use sipis_parser::{parse, EMPTY_HEADER};

    const INVITE: &[u8] = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP proxy.example.com:5060;branch=z9hG4bKtop1;rport, SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKlow\r\n\
        Via: SIP/2.0/TCP far.example.com;branch=z9hG4bKfar\r\n\
        Max-Forwards: 69\r\n\
        Route: <sip:p1.example.com;lr>\r\n\
        Route: <sip:p2.example.com;lr>, <sip:p3.example.com;lr>\r\n\
        To: Bob <sip:bob@biloxi.example.com>\r\n\
        From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
        Call-ID: a84b4c76e66710@pc33\r\n\
        CSeq: 314159 INVITE\r\n\
        Contact: <sip:alice@pc33.atlanta.example.com>\r\n\
        Content-Type: application/sdp\r\n\
        Content-Length: 4\r\n\r\nv=0\n";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn cfg() -> TimerConfig {
        TimerConfig::default()
    }

    /// A request of `method` with the given top Via and CSeq method.
    fn request(method: &str, via: &str, cseq_method: &str) -> Vec<u8> {
        format!(
            "{method} sip:bob@biloxi.example.com SIP/2.0\r\n\
             Via: {via}\r\n\
             Max-Forwards: 70\r\n\
             To: <sip:bob@biloxi.example.com>\r\n\
             From: <sip:alice@atlanta.example.com>;tag=88sja8x\r\n\
             Call-ID: 987asjd97y7atg\r\n\
             CSeq: 986759 {cseq_method}\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    /// A response to [`INVITE`] (or any method) with a To tag.
    fn response(code: u16, cseq_method: &str, to_tag: &str) -> Vec<u8> {
        format!(
            "SIP/2.0 {code} Whatever\r\n\
             Via: SIP/2.0/UDP proxy.example.com:5060;branch=z9hG4bKtop1;rport=5060, SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKlow\r\n\
             Via: SIP/2.0/TCP far.example.com;branch=z9hG4bKfar\r\n\
             To: Bob <sip:bob@biloxi.example.com>;tag={to_tag}\r\n\
             From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
             Call-ID: a84b4c76e66710@pc33\r\n\
             CSeq: 314159 {cseq_method}\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn with_msg<R>(buf: &[u8], f: impl FnOnce(&Message<'_, '_>) -> R) -> R {
        let mut h = [EMPTY_HEADER; 32];
        let m = parse(buf, &mut h).expect("test message parses");
        f(&m)
    }

    fn respond(tx: &mut ClientTransaction, now: Instant, buf: &[u8]) -> Pass {
        with_msg(buf, |m| tx.handle_response(now, m))
    }

    fn drain<T>(mut poll: impl FnMut() -> Option<T>) -> Vec<T> {
        std::iter::from_fn(&mut poll).collect()
    }

    /// Runs a client transaction's timers on a virtual clock until it ends
    /// or passes `until`: the offsets at which it sent something, and the
    /// event that ended it with its offset.
    fn run_client(
        tx: &mut ClientTransaction,
        t0: Instant,
        until: Duration,
    ) -> (Vec<Duration>, Option<(Duration, ClientEvent)>) {
        let mut sends = Vec::new();
        let mut now = t0;
        loop {
            while tx.poll_transmit().is_some() {
                sends.push(now - t0);
            }
            match tx.poll_timeout() {
                Some(next) if next - t0 <= until => now = next,
                _ => return (sends, None),
            }
            if let Some(ev) = tx.handle_timeout(now) {
                while tx.poll_transmit().is_some() {
                    sends.push(now - t0);
                }
                return (sends, Some((now - t0, ev)));
            }
        }
    }

    fn run_server(
        tx: &mut ServerTransaction,
        t0: Instant,
        until: Duration,
    ) -> (Vec<Duration>, Option<(Duration, ServerEvent)>) {
        let mut sends = Vec::new();
        let mut now = t0;
        loop {
            while tx.poll_transmit().is_some() {
                sends.push(now - t0);
            }
            match tx.poll_timeout() {
                Some(next) if next - t0 <= until => now = next,
                _ => return (sends, None),
            }
            if let Some(ev) = tx.handle_timeout(now) {
                while tx.poll_transmit().is_some() {
                    sends.push(now - t0);
                }
                return (sends, Some((now - t0, ev)));
            }
        }
    }

    fn offsets(s: &[f64]) -> Vec<Duration> {
        s.iter().map(|&x| secs(x)).collect()
    }

    // -- client schedules ---------------------------------------------------

    #[test]
    fn invite_client_over_udp_retransmits_on_timer_a_and_times_out_on_b() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(t0, Kind::Invite, INVITE.into(), false, &cfg());
        assert_eq!(tx.state(), ClientState::Calling);
        let (sends, end) = run_client(&mut tx, t0, secs(100.0));
        assert_eq!(
            sends,
            offsets(&[0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]),
            "Timer A: T1 doubling, 7 transmissions in 64*T1"
        );
        assert_eq!(end, Some((secs(32.0), ClientEvent::Timeout)));
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn non_invite_client_over_udp_caps_timer_e_at_t2_and_times_out_on_f() {
        let t0 = Instant::now();
        let req = request(
            "OPTIONS",
            "SIP/2.0/UDP a.example.com;branch=z9hG4bK1",
            "OPTIONS",
        );
        let mut tx = ClientTransaction::new(t0, Kind::NonInvite, req.into(), false, &cfg());
        assert_eq!(tx.state(), ClientState::Trying);
        let (sends, end) = run_client(&mut tx, t0, secs(100.0));
        assert_eq!(
            sends,
            offsets(&[0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
        );
        assert_eq!(end, Some((secs(32.0), ClientEvent::Timeout)));
        assert!(tx.is_terminated());
    }

    #[test]
    fn non_invite_client_in_proceeding_retransmits_every_t2_until_f() {
        let t0 = Instant::now();
        let req = request(
            "REGISTER",
            "SIP/2.0/UDP a.example.com;branch=z9hG4bK1",
            "REGISTER",
        );
        let mut tx = ClientTransaction::new(t0, Kind::NonInvite, req.into(), false, &cfg());
        let (sends, _) = run_client(&mut tx, t0, ms(600));
        assert_eq!(sends, offsets(&[0.0, 0.5]));
        let trying = response(100, "REGISTER", "x");
        assert_eq!(respond(&mut tx, t0 + ms(600), &trying), Pass::Deliver);
        assert_eq!(tx.state(), ClientState::Proceeding);
        // The already armed E (1.5 s) fires, then every T2.
        let (sends, end) = run_client(&mut tx, t0, secs(100.0));
        assert_eq!(
            sends,
            offsets(&[1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5])
        );
        assert_eq!(end, Some((secs(32.0), ClientEvent::Timeout)));
    }

    #[test]
    fn client_over_tcp_sends_once_and_still_times_out_on_b_or_f() {
        for kind in [Kind::Invite, Kind::NonInvite] {
            let t0 = Instant::now();
            let mut tx = ClientTransaction::new(t0, kind, INVITE.into(), true, &cfg());
            assert_eq!(tx.deadline(TxTimer::A), None);
            assert_eq!(tx.deadline(TxTimer::E), None);
            let (sends, end) = run_client(&mut tx, t0, secs(100.0));
            assert_eq!(sends, vec![Duration::ZERO], "{kind:?}");
            assert_eq!(end, Some((secs(32.0), ClientEvent::Timeout)), "{kind:?}");
        }
    }

    #[test]
    fn a_late_poll_sends_one_retransmission_not_a_burst() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(t0, Kind::Invite, INVITE.into(), false, &cfg());
        tx.poll_transmit();
        assert_eq!(tx.handle_timeout(t0 + secs(10.0)), None);
        assert_eq!(drain(|| tx.poll_transmit()).len(), 1);
        // Re-armed from when it fired: 2*T1 later.
        assert_eq!(tx.deadline(TxTimer::A), Some(t0 + secs(11.0)));
        // Calling it early does nothing.
        assert_eq!(tx.handle_timeout(t0 + secs(10.5)), None);
        assert_eq!(tx.poll_transmit(), None);
    }

    #[test]
    fn timers_scale_with_a_configured_t1() {
        let t0 = Instant::now();
        let c = TimerConfig {
            t1: ms(100),
            t2: ms(400),
            t4: secs(1.0),
        };
        let mut tx = ClientTransaction::new(t0, Kind::NonInvite, INVITE.into(), false, &c);
        let (sends, end) = run_client(&mut tx, t0, secs(100.0));
        assert_eq!(&sends[..6], &offsets(&[0.0, 0.1, 0.3, 0.7, 1.1, 1.5])[..]);
        assert_eq!(end, Some((secs(6.4), ClientEvent::Timeout)));
    }

    // -- INVITE client responses --------------------------------------------

    #[test]
    fn invite_client_provisional_stops_timer_a_and_b() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(t0, Kind::Invite, INVITE.into(), false, &cfg());
        tx.poll_transmit();
        assert_eq!(
            respond(&mut tx, t0 + ms(100), &response(100, "INVITE", "a")),
            Pass::Deliver
        );
        assert_eq!(
            respond(&mut tx, t0 + ms(200), &response(180, "INVITE", "a")),
            Pass::Deliver
        );
        assert_eq!(tx.state(), ClientState::Proceeding);
        assert_eq!(
            tx.poll_timeout(),
            None,
            "no A, and B only applies in Calling"
        );
        let (sends, end) = run_client(&mut tx, t0, secs(100.0));
        assert!(sends.is_empty());
        assert_eq!(end, None);
    }

    #[test]
    fn invite_client_acks_a_non_2xx_final_with_rfc3261_17_1_1_3_headers() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(t0, Kind::Invite, INVITE.into(), false, &cfg());
        tx.poll_transmit();
        respond(&mut tx, t0 + ms(100), &response(180, "INVITE", "99sa0xk"));
        let busy = response(486, "INVITE", "99sa0xk");
        assert_eq!(respond(&mut tx, t0 + secs(1.0), &busy), Pass::Deliver);
        assert_eq!(tx.state(), ClientState::Completed);
        let ack = tx.poll_transmit().expect("ACK queued");
        assert_eq!(tx.poll_transmit(), None);

        with_msg(&ack, |a| {
            a.validate().unwrap();
            assert_eq!(a.method(), Some(Method::Ack));
            assert_eq!(a.request_uri(), Some(&b"sip:bob@biloxi.example.com"[..]));
            assert_eq!(a.call_id().unwrap(), b"a84b4c76e66710@pc33");
            let from = a.from().unwrap();
            assert_eq!(from.tag(), Some(&b"1928301774"[..]));
            assert_eq!(from.uri.host_raw, b"atlanta.example.com");
            assert_eq!(a.to().unwrap().tag(), Some(&b"99sa0xk"[..]));
            let cseq = a.cseq().unwrap();
            assert_eq!((cseq.seq, cseq.method), (314159, Method::Ack));
            let vias: Vec<_> = a.vias().map(|v| v.unwrap()).collect();
            assert_eq!(vias.len(), 1, "only the top Via of the request");
            assert_eq!(vias[0].branch(), Some(&b"z9hG4bKtop1"[..]));
            assert_eq!(vias[0].host_raw, b"proxy.example.com");
            assert_eq!(vias[0].port, Some(5060));
            let routes: Vec<_> = a
                .routes()
                .map(|r| r.unwrap().uri.host_raw.to_vec())
                .collect();
            assert_eq!(
                routes,
                [&b"p1.example.com"[..], b"p2.example.com", b"p3.example.com"]
            );
            assert_eq!(a.max_forwards().unwrap(), Some(69));
            assert_eq!(a.content_length(), Some(0));
            assert!(a.body.is_empty());
            assert_eq!(a.header(HeaderName::ContentType), None);
            assert_eq!(a.header(HeaderName::Contact), None);
        });
        assert_eq!(tx.ack(), Some(&ack));

        // A retransmitted final: ACK again, absorbed.
        assert_eq!(respond(&mut tx, t0 + secs(1.5), &busy), Pass::Absorb);
        assert_eq!(tx.poll_transmit(), Some(ack.clone()));
        assert_eq!(tx.poll_transmit(), None);
        // Provisional responses after the final are absorbed.
        assert_eq!(
            respond(&mut tx, t0 + secs(1.6), &response(183, "INVITE", "z")),
            Pass::Absorb
        );
        assert_eq!(tx.poll_transmit(), None);

        // Timer D: 32 s after Completed, then Terminated.
        assert_eq!(tx.poll_timeout(), Some(t0 + secs(33.0)));
        let (sends, end) = run_client(&mut tx, t0, secs(100.0));
        assert!(sends.is_empty());
        assert_eq!(end, Some((secs(33.0), ClientEvent::Terminated)));
        assert!(tx.is_terminated());
        assert_eq!(respond(&mut tx, t0 + secs(34.0), &busy), Pass::Absorb);
        assert_eq!(tx.poll_transmit(), None);
    }

    #[test]
    fn invite_client_acks_a_non_2xx_final_even_over_tcp_and_d_is_zero() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(t0, Kind::Invite, INVITE.into(), true, &cfg());
        tx.poll_transmit();
        let now = t0 + secs(2.0);
        assert_eq!(
            respond(&mut tx, now, &response(503, "INVITE", "t")),
            Pass::Deliver
        );
        assert_eq!(tx.deadline(TxTimer::D), Some(now));
        assert_eq!(tx.handle_timeout(now), Some(ClientEvent::Terminated));
        // The ACK queued before Timer D fired is still sent.
        let ack = tx.poll_transmit().expect("ACK");
        assert!(ack.starts_with(b"ACK sip:bob@biloxi.example.com SIP/2.0\r\n"));
    }

    #[test]
    fn invite_client_2xx_is_delivered_and_so_are_later_2xx_until_timer_m() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(t0, Kind::Invite, INVITE.into(), false, &cfg());
        tx.poll_transmit();
        let ok = response(200, "INVITE", "fork1");
        assert_eq!(respond(&mut tx, t0 + secs(1.0), &ok), Pass::Deliver);
        assert_eq!(tx.state(), ClientState::Accepted);
        assert_eq!(tx.poll_transmit(), None, "the 2xx ACK is the TU's");
        assert_eq!(tx.deadline(TxTimer::A), None);
        assert_eq!(tx.deadline(TxTimer::M), Some(t0 + secs(33.0)));
        // Retransmission and a second fork's 2xx both reach the TU.
        assert_eq!(respond(&mut tx, t0 + secs(1.5), &ok), Pass::Deliver);
        let ok2 = response(200, "INVITE", "fork2");
        assert_eq!(respond(&mut tx, t0 + secs(2.0), &ok2), Pass::Deliver);
        // Anything else is absorbed.
        assert_eq!(
            respond(&mut tx, t0 + secs(2.1), &response(180, "INVITE", "f")),
            Pass::Absorb
        );
        assert_eq!(
            respond(&mut tx, t0 + secs(2.2), &response(486, "INVITE", "f")),
            Pass::Absorb
        );
        assert_eq!(tx.poll_transmit(), None);
        // Nothing of ours in flight: a transport error is not ours.
        assert_eq!(tx.handle_transport_error(t0 + secs(3.0)), None);
        let (sends, end) = run_client(&mut tx, t0, secs(100.0));
        assert!(sends.is_empty());
        assert_eq!(end, Some((secs(33.0), ClientEvent::Terminated)));
        assert_eq!(respond(&mut tx, t0 + secs(40.0), &ok), Pass::Absorb);
    }

    #[test]
    fn invite_client_passes_a_2xx_after_a_non_2xx_to_the_tu_without_acking_it() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(t0, Kind::Invite, INVITE.into(), false, &cfg());
        tx.poll_transmit();
        respond(&mut tx, t0, &response(480, "INVITE", "a"));
        tx.poll_transmit();
        assert_eq!(
            respond(&mut tx, t0 + ms(10), &response(200, "INVITE", "b")),
            Pass::Deliver
        );
        assert_eq!(tx.state(), ClientState::Completed);
        assert_eq!(tx.poll_transmit(), None);
    }

    #[test]
    fn non_invite_client_final_completes_and_k_absorbs_retransmissions() {
        for (reliable, k) in [(false, 5.0), (true, 0.0)] {
            let t0 = Instant::now();
            let req = request("BYE", "SIP/2.0/UDP a.example.com;branch=z9hG4bK1", "BYE");
            let mut tx = ClientTransaction::new(t0, Kind::NonInvite, req.into(), reliable, &cfg());
            tx.poll_transmit();
            let ok = response(200, "BYE", "t");
            assert_eq!(respond(&mut tx, t0 + secs(1.0), &ok), Pass::Deliver);
            assert_eq!(tx.state(), ClientState::Completed);
            assert_eq!(respond(&mut tx, t0 + secs(1.0), &ok), Pass::Absorb);
            let (sends, end) = run_client(&mut tx, t0, secs(100.0));
            assert!(sends.is_empty(), "no ACK for non-INVITE");
            assert_eq!(end, Some((secs(1.0 + k), ClientEvent::Terminated)));
        }
    }

    #[test]
    fn client_transport_error_terminates_and_informs_the_tu() {
        let t0 = Instant::now();
        for kind in [Kind::Invite, Kind::NonInvite] {
            let mut tx = ClientTransaction::new(t0, kind, INVITE.into(), false, &cfg());
            assert_eq!(
                tx.handle_transport_error(t0 + ms(1)),
                Some(ClientEvent::TransportError)
            );
            assert!(tx.is_terminated());
            assert_eq!(tx.poll_transmit(), None, "pending sends dropped");
            assert_eq!(tx.poll_timeout(), None);
            assert_eq!(tx.handle_transport_error(t0 + ms(2)), None);
        }
        // In Completed (the ACK failed to go out), too.
        let mut tx = ClientTransaction::new(t0, Kind::Invite, INVITE.into(), false, &cfg());
        respond(&mut tx, t0, &response(404, "INVITE", "a"));
        assert_eq!(
            tx.handle_transport_error(t0),
            Some(ClientEvent::TransportError)
        );
        assert!(tx.is_terminated());
    }

    #[test]
    fn client_ignores_requests_and_out_of_range_codes() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(t0, Kind::Invite, INVITE.into(), false, &cfg());
        assert_eq!(
            with_msg(INVITE, |m| tx.handle_response(t0, m)),
            Pass::Absorb
        );
        assert_eq!(tx.state(), ClientState::Calling);
    }

    #[test]
    fn invite_client_with_an_unparsable_request_completes_without_an_ack() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(
            t0,
            Kind::Invite,
            Bytes::from_static(b"garbage"),
            false,
            &cfg(),
        );
        assert_eq!(tx.poll_transmit(), Some(Bytes::from_static(b"garbage")));
        assert_eq!(
            respond(&mut tx, t0, &response(500, "INVITE", "a")),
            Pass::Deliver
        );
        assert_eq!(tx.state(), ClientState::Completed);
        assert_eq!(tx.poll_transmit(), None);
        assert_eq!(
            respond(&mut tx, t0, &response(500, "INVITE", "a")),
            Pass::Absorb
        );
    }

    // -- server transactions ------------------------------------------------

    fn bytes(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn server_absorbs_retransmissions_before_any_response_and_resends_the_last_one_after() {
        for kind in [Kind::Invite, Kind::NonInvite] {
            let t0 = Instant::now();
            let mut tx = ServerTransaction::new(t0, kind, false, &cfg());
            assert!(!tx.handle_retransmission(t0 + ms(100)));
            assert_eq!(tx.poll_transmit(), None);
            assert!(tx.send_response(t0 + ms(150), 100, bytes("100")));
            assert_eq!(tx.state(), ServerState::Proceeding);
            assert!(tx.send_response(t0 + ms(200), 180, bytes("180")));
            assert_eq!(drain(|| tx.poll_transmit()), [bytes("100"), bytes("180")]);
            assert!(tx.handle_retransmission(t0 + ms(500)));
            assert_eq!(
                drain(|| tx.poll_transmit()),
                [bytes("180")],
                "most recent provisional"
            );
            assert!(tx.send_response(t0 + secs(1.0), 404, bytes("404")));
            assert_eq!(tx.state(), ServerState::Completed);
            tx.poll_transmit();
            assert!(tx.handle_retransmission(t0 + secs(1.1)));
            assert_eq!(tx.poll_transmit(), Some(bytes("404")), "{kind:?}");
            // Other finals and provisionals are discarded in Completed.
            assert!(!tx.send_response(t0 + secs(1.2), 500, bytes("500")));
            assert!(!tx.send_response(t0 + secs(1.2), 183, bytes("183")));
            assert_eq!(tx.poll_transmit(), None);
        }
    }

    #[test]
    fn invite_server_retransmits_a_non_2xx_on_timer_g_until_the_ack() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(t0, Kind::Invite, false, &cfg());
        assert_eq!(tx.state(), ServerState::Proceeding);
        tx.send_response(t0, 486, bytes("486"));
        let (sends, end) = run_server(&mut tx, t0, secs(12.0));
        // Intervals 0.5, 1, 2, 4, 4.
        assert_eq!(sends, offsets(&[0.0, 0.5, 1.5, 3.5, 7.5, 11.5]));
        assert_eq!(end, None);
        assert!(tx.handle_ack(t0 + secs(12.0)));
        assert_eq!(tx.state(), ServerState::Confirmed);
        assert_eq!(tx.deadline(TxTimer::G), None);
        assert_eq!(tx.deadline(TxTimer::H), None);
        assert_eq!(tx.deadline(TxTimer::I), Some(t0 + secs(17.0)));
        // ACK and INVITE retransmissions are absorbed in Confirmed.
        assert!(tx.handle_ack(t0 + secs(12.5)));
        assert!(!tx.handle_retransmission(t0 + secs(12.6)));
        let (sends, end) = run_server(&mut tx, t0, secs(100.0));
        assert!(sends.is_empty());
        assert_eq!(end, Some((secs(17.0), ServerEvent::Terminated)));
        assert!(tx.is_terminated());
        assert!(!tx.handle_ack(t0 + secs(18.0)));
    }

    #[test]
    fn invite_server_without_an_ack_times_out_on_timer_h() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(t0, Kind::Invite, false, &cfg());
        tx.send_response(t0, 603, bytes("603"));
        let (sends, end) = run_server(&mut tx, t0, secs(100.0));
        assert_eq!(
            sends,
            offsets(&[0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
        );
        assert_eq!(end, Some((secs(32.0), ServerEvent::Timeout)));
        assert!(tx.is_terminated());
    }

    #[test]
    fn invite_server_over_tcp_sends_the_non_2xx_once_and_i_is_zero() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(t0, Kind::Invite, true, &cfg());
        tx.send_response(t0, 404, bytes("404"));
        assert_eq!(tx.deadline(TxTimer::G), None);
        assert_eq!(tx.deadline(TxTimer::H), Some(t0 + secs(32.0)));
        let (sends, _) = run_server(&mut tx, t0, secs(5.0));
        assert_eq!(sends, [Duration::ZERO]);
        assert!(tx.handle_ack(t0 + secs(5.0)));
        assert_eq!(
            tx.handle_timeout(t0 + secs(5.0)),
            Some(ServerEvent::Terminated)
        );
    }

    #[test]
    fn invite_server_2xx_enters_accepted_absorbs_invites_and_passes_acks_up() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(t0, Kind::Invite, false, &cfg());
        tx.send_response(t0, 180, bytes("180"));
        assert!(tx.send_response(t0 + secs(1.0), 200, bytes("200")));
        assert_eq!(tx.state(), ServerState::Accepted);
        assert_eq!(drain(|| tx.poll_transmit()), [bytes("180"), bytes("200")]);
        // INVITE retransmissions: absorbed, not even the 2xx is resent.
        assert!(!tx.handle_retransmission(t0 + secs(1.5)));
        assert_eq!(tx.poll_transmit(), None);
        // The TU retransmits its 2xx through the transaction.
        assert!(tx.send_response(t0 + secs(1.5), 200, bytes("200")));
        assert_eq!(tx.poll_transmit(), Some(bytes("200")));
        assert!(!tx.send_response(t0 + secs(1.6), 486, bytes("486")));
        // The ACK for a 2xx is the TU's.
        assert!(!tx.handle_ack(t0 + secs(2.0)));
        assert_eq!(tx.state(), ServerState::Accepted);
        let (sends, end) = run_server(&mut tx, t0, secs(100.0));
        assert!(sends.is_empty());
        assert_eq!(end, Some((secs(33.0), ServerEvent::Terminated)), "Timer L");
    }

    #[test]
    fn non_invite_server_timer_j_is_64_t1_on_udp_and_zero_on_tcp() {
        for (reliable, j) in [(false, 32.0), (true, 0.0)] {
            let t0 = Instant::now();
            let mut tx = ServerTransaction::new(t0, Kind::NonInvite, reliable, &cfg());
            assert_eq!(tx.state(), ServerState::Trying);
            assert!(tx.send_response(t0 + secs(1.0), 200, bytes("200")));
            assert_eq!(tx.state(), ServerState::Completed);
            assert_eq!(drain(|| tx.poll_transmit()), [bytes("200")]);
            assert!(!tx.handle_ack(t0 + secs(1.0)), "no ACK in non-INVITE");
            let (sends, end) = run_server(&mut tx, t0, secs(100.0));
            assert!(sends.is_empty(), "no retransmission of its own");
            assert_eq!(end, Some((secs(1.0 + j), ServerEvent::Terminated)));
        }
    }

    #[test]
    fn server_transport_error_informs_the_tu_and_keeps_the_state() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(t0, Kind::Invite, false, &cfg());
        tx.send_response(t0, 500, bytes("500"));
        assert_eq!(
            tx.handle_transport_error(t0),
            Some(ServerEvent::TransportError)
        );
        assert_eq!(tx.state(), ServerState::Completed);
        assert!(tx.handle_ack(t0 + secs(1.0)));
        let (_, end) = run_server(&mut tx, t0, secs(100.0));
        assert_eq!(end, Some((secs(6.0), ServerEvent::Terminated)));
        assert_eq!(tx.handle_transport_error(t0 + secs(7.0)), None);
    }

    #[test]
    fn server_rejects_out_of_range_status_codes() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(t0, Kind::NonInvite, false, &cfg());
        for code in [0, 99, 700, u16::MAX] {
            assert!(!tx.send_response(t0, code, bytes("x")));
        }
        assert_eq!(tx.state(), ServerState::Trying);
        assert_eq!(tx.poll_transmit(), None);
    }

    #[test]
    fn absurd_timer_configs_do_not_panic() {
        let t0 = Instant::now();
        let c = TimerConfig {
            t1: Duration::MAX,
            t2: Duration::MAX,
            t4: Duration::MAX,
        };
        let mut tx = ClientTransaction::new(t0, Kind::Invite, INVITE.into(), false, &c);
        assert_eq!(tx.handle_timeout(t0 + secs(1e6)), None);
        respond(&mut tx, t0, &response(500, "INVITE", "a"));
        let mut s = ServerTransaction::new(t0, Kind::Invite, false, &c);
        s.send_response(t0, 500, bytes("500"));
        s.handle_ack(t0);
        assert_eq!(s.handle_timeout(t0 + secs(1e6)), None);
        let z = TimerConfig {
            t1: Duration::ZERO,
            t2: Duration::ZERO,
            t4: Duration::ZERO,
        };
        // Zero T1/T2 would be a busy loop: T1 is raised to 1 ms, T2 to T1.
        assert_eq!(z.sanitized().t1, ms(1));
        assert_eq!(z.sanitized().t2, ms(1));
        let mut tx = ClientTransaction::new(t0, Kind::NonInvite, INVITE.into(), false, &z);
        let (sends, end) = run_client(&mut tx, t0, secs(1.0));
        assert_eq!(sends.len(), 64, "every 1 ms until F");
        assert_eq!(end, Some((ms(64), ClientEvent::Timeout)));
        let mut s = ServerTransaction::new(t0, Kind::Invite, false, &z);
        s.send_response(t0, 500, bytes("500"));
        let (sends, end) = run_server(&mut s, t0, secs(1.0));
        assert_eq!(sends.len(), 64);
        assert_eq!(end, Some((ms(64), ServerEvent::Timeout)));
    }

    /// xorshift64*: a deterministic stream for the mutation tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn mutated_messages_never_panic_keys_or_transactions() {
        let bases = [
            INVITE.to_vec(),
            response(486, "INVITE", "a"),
            response(200, "CANCEL", "b"),
            request("ACK", VIA, "ACK"),
            request("CANCEL", "SIP/2.0/UDP [::1];branch=z9hG4bKx", "CANCEL"),
        ];
        let alphabet = b" ;,:=<>\"\r\n\t/[]@0159zZ";
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let t0 = Instant::now();
        for i in 0..20_000 {
            let mut m = bases[i % bases.len()].clone();
            for _ in 0..=rng.below(4) {
                let at = rng.below(m.len());
                match rng.below(3) {
                    0 if at < m.len() => m[at] = alphabet[rng.below(alphabet.len())],
                    0 => {}
                    1 => m.truncate(at),
                    _ => m.insert(at, alphabet[rng.below(alphabet.len())]),
                }
            }
            let mut h = [EMPTY_HEADER; 32];
            let Ok(msg) = parse(&m, &mut h) else { continue };
            let _ = TxKey::server(&msg).map(|k| format!("{k:?}{:?}", k.sent_by()));
            if let Ok(v) = msg.top_via() {
                let _ = TxKey::for_request(v.host_raw, &m[..m.len().min(40)], Method::Bye);
            }
            let _ = TxKey::client(&msg).map(|k| (k.method().len(), k.has_magic_cookie()));
            let _ = TxKey::cancel_target(&msg);
            // The mutated message as a response, and as our own request.
            let mut tx = ClientTransaction::new(t0, Kind::Invite, INVITE.into(), false, &cfg());
            tx.handle_response(t0, &msg);
            tx.handle_response(t0, &msg);
            let mut own = ClientTransaction::new(t0, Kind::Invite, m.clone().into(), true, &cfg());
            with_msg(&response(404, "INVITE", "a"), |r| {
                own.handle_response(t0, r)
            });
            drain(|| own.poll_transmit());
        }
    }

    #[test]
    fn random_operation_sequences_keep_the_invariants() {
        let mut rng = Rng(42);
        let msgs: Vec<Vec<u8>> = [100, 180, 200, 302, 486, 603]
            .iter()
            .map(|&c| response(c, "INVITE", "t"))
            .collect();
        for round in 0..2_000 {
            let t0 = Instant::now();
            let kind = if round % 2 == 0 {
                Kind::Invite
            } else {
                Kind::NonInvite
            };
            let reliable = rng.below(2) == 0;
            let mut c = ClientTransaction::new(t0, kind, INVITE.into(), reliable, &cfg());
            let mut s = ServerTransaction::new(t0, kind, reliable, &cfg());
            let mut now = t0;
            for _ in 0..40 {
                now += ms(rng.below(3_000) as u64);
                match rng.below(7) {
                    0 => {
                        let m = &msgs[rng.below(msgs.len())];
                        with_msg(m, |r| c.handle_response(now, r));
                    }
                    1 => {
                        c.handle_timeout(now);
                        s.handle_timeout(now);
                    }
                    2 => {
                        let code = [100, 180, 200, 404, 0, 700][rng.below(6)];
                        s.send_response(now, code, bytes("r"));
                    }
                    3 => {
                        s.handle_retransmission(now);
                    }
                    4 => {
                        s.handle_ack(now);
                    }
                    5 if rng.below(10) == 0 => {
                        c.handle_transport_error(now);
                        s.handle_transport_error(now);
                    }
                    _ => {
                        drain(|| c.poll_transmit());
                        drain(|| s.poll_transmit());
                    }
                }
                for at in [c.poll_timeout(), s.poll_timeout()].into_iter().flatten() {
                    assert!(at >= t0);
                }
                if c.is_terminated() {
                    assert_eq!(c.poll_timeout(), None);
                }
                if s.is_terminated() {
                    assert_eq!(s.poll_timeout(), None);
                }
                if kind == Kind::NonInvite {
                    assert!(!matches!(
                        c.state(),
                        ClientState::Calling | ClientState::Accepted
                    ));
                    assert!(!matches!(
                        s.state(),
                        ServerState::Confirmed | ServerState::Accepted
                    ));
                }
            }
            // Every transaction ends by its timers alone, within 64*T1 of the
            // last input, except those waiting on the TU (INVITE client in
            // Proceeding, server before a final).
            now += secs(40.0);
            c.handle_timeout(now);
            c.handle_timeout(now);
            s.handle_timeout(now);
            s.handle_timeout(now);
            if c.state() != ClientState::Proceeding || kind == Kind::NonInvite {
                assert!(c.is_terminated(), "{kind:?} {:?}", c.state());
            }
            if !matches!(s.state(), ServerState::Trying | ServerState::Proceeding) {
                assert!(s.is_terminated(), "{kind:?} {:?}", s.state());
            }
        }
    }

    // -- keys ---------------------------------------------------------------

    fn server_key(buf: &[u8]) -> Result<TxKey, Error> {
        with_msg(buf, TxKey::server)
    }

    const VIA: &str = "SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bKkjshdyff";

    #[test]
    fn ack_for_a_non_2xx_matches_the_invite_server_transaction() {
        let invite = server_key(&request("INVITE", VIA, "INVITE")).unwrap();
        let ack = server_key(&request("ACK", VIA, "ACK")).unwrap();
        assert_eq!(ack, invite);
        assert_eq!(invite.method(), "INVITE");
        assert_eq!(invite.branch(), b"z9hg4bkkjshdyff");
        assert_eq!(invite.sent_by(), b"pc33.atlanta.example.com:5060");
        assert!(invite.is_server() && invite.has_magic_cookie());
        // The ACK for a 2xx has a branch of its own: no match.
        let ack2xx = server_key(&request(
            "ACK",
            "SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bKnew",
            "ACK",
        ))
        .unwrap();
        assert_ne!(ack2xx, invite);
    }

    #[test]
    fn cancel_has_its_own_key_and_cancel_target_finds_the_invite() {
        let invite = server_key(&request("INVITE", VIA, "INVITE")).unwrap();
        let cancel_msg = request("CANCEL", VIA, "CANCEL");
        let cancel = server_key(&cancel_msg).unwrap();
        assert_ne!(cancel, invite);
        assert_eq!(cancel.method(), "CANCEL");
        assert_eq!(with_msg(&cancel_msg, TxKey::cancel_target).unwrap(), invite);
        assert_eq!(
            with_msg(&request("BYE", VIA, "BYE"), TxKey::cancel_target),
            Err(Error::Method)
        );
    }

    #[test]
    fn same_branch_from_another_sent_by_or_method_is_another_transaction() {
        let a = server_key(&request("INVITE", VIA, "INVITE")).unwrap();
        let other_host = server_key(&request(
            "INVITE",
            "SIP/2.0/UDP evil.example.com:5060;branch=z9hG4bKkjshdyff",
            "INVITE",
        ))
        .unwrap();
        let other_port = server_key(&request(
            "INVITE",
            "SIP/2.0/UDP pc33.atlanta.example.com:5070;branch=z9hG4bKkjshdyff",
            "INVITE",
        ))
        .unwrap();
        let no_port = server_key(&request(
            "INVITE",
            "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKkjshdyff",
            "INVITE",
        ))
        .unwrap();
        let bye = server_key(&request("BYE", VIA, "BYE")).unwrap();
        for k in [&other_host, &other_port, &no_port, &bye] {
            assert_ne!(k, &a);
        }
        // Host case, branch case, received/rport and the transport do not matter.
        let folded = server_key(&request(
            "INVITE",
            "SIP/2.0/TCP PC33.Atlanta.Example.COM:5060;received=192.0.2.1;rport=1;BRANCH=Z9HG4BKKJSHDYFF",
            "INVITE",
        ))
        .unwrap();
        assert_eq!(folded, a);
    }

    #[test]
    fn ipv6_sent_by_is_compared_in_canonical_form() {
        let a = server_key(&request(
            "OPTIONS",
            "SIP/2.0/UDP [2001:db8:0:0::1]:5060;branch=z9hG4bK1",
            "OPTIONS",
        ))
        .unwrap();
        let b = server_key(&request(
            "OPTIONS",
            "SIP/2.0/UDP [2001:DB8::1]:5060;branch=z9hG4bK1",
            "OPTIONS",
        ))
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.sent_by(), b"[2001:db8::1]:5060");
    }

    #[test]
    fn requests_without_a_3261_branch_match_rfc_2543_style() {
        // RFC 3261 §17.2.3: no magic cookie (or no branch at all): the
        // Request-URI, From tag, Call-ID, CSeq number and top Via decide.
        let old = server_key(&request(
            "INVITE",
            "SIP/2.0/UDP old.example.com;branch=1234",
            "INVITE",
        ))
        .unwrap();
        assert!(!old.has_magic_cookie());
        assert!(old.branch().starts_with(b"2543|"));
        assert_eq!(old.sent_by(), b"old.example.com");
        // Its ACK finds it.
        assert_eq!(
            old,
            server_key(&request(
                "ACK",
                "SIP/2.0/UDP old.example.com;branch=1234",
                "ACK"
            ))
            .unwrap()
        );
        // Another top Via is another transaction.
        assert_ne!(
            old,
            server_key(&request(
                "INVITE",
                "SIP/2.0/UDP other.example.com;branch=1234",
                "INVITE"
            ))
            .unwrap()
        );
        // No branch at all (inv2543): a key all the same, one per Via.
        let bare: Vec<TxKey> = ["SIP/2.0/UDP old.example.com", "SIP/2.0/UDP new.example.com"]
            .iter()
            .map(|via| server_key(&request("INVITE", via, "INVITE")).unwrap())
            .collect();
        assert!(bare.iter().all(|k| k.branch().starts_with(b"2543|")));
        assert_ne!(bare[0], bare[1]);
    }

    #[test]
    fn client_key_is_branch_sent_by_and_cseq_method_and_matches_for_request() {
        let resp = response(180, "INVITE", "a");
        let key = with_msg(&resp, TxKey::client).unwrap();
        let ours = b"proxy.example.com:5060";
        assert_eq!(
            key,
            TxKey::for_request(b"z9hG4bKtop1", ours, Method::Invite)
        );
        assert!(!key.is_server());
        assert_eq!(key.sent_by(), ours);
        // §18.1.2: a response whose sent-by is not ours matches nothing.
        assert_ne!(
            key,
            TxKey::for_request(b"z9hG4bKtop1", b"proxy.example.com", Method::Invite)
        );
        assert_ne!(
            key,
            TxKey::for_request(b"z9hG4bKtop1", b"10.0.0.1:5060", Method::Invite)
        );
        // The engine's own string is normalised like a parsed Via.
        assert_eq!(
            key,
            TxKey::for_request(b"z9hG4bKTOP1", b"Proxy.Example.COM:5060", Method::Invite)
        );
        let cancel_resp = response(200, "CANCEL", "a");
        let cancel = with_msg(&cancel_resp, TxKey::client).unwrap();
        assert_eq!(
            cancel,
            TxKey::for_request(b"z9hG4bKtop1", ours, Method::Cancel)
        );
        assert_ne!(cancel, key);
        // Client and server keys never collide.
        let srv = with_msg(
            &request(
                "INVITE",
                "SIP/2.0/UDP proxy.example.com:5060;branch=z9hG4bKtop1",
                "INVITE",
            ),
            TxKey::server,
        )
        .unwrap();
        assert_ne!(srv, key);
        assert_eq!(srv.sent_by(), key.sent_by());
        assert_eq!(
            format!("{key:?}"),
            r#"TxKey { side: Client, branch: "z9hg4bktop1", sent_by: "proxy.example.com:5060", method: "INVITE" }"#
        );
    }

    #[test]
    fn for_request_normalises_ip_sent_bys_and_keeps_junk_opaque() {
        let via = |sb: &str| {
            let r = response(200, "OPTIONS", "a");
            let r = String::from_utf8(r)
                .unwrap()
                .replacen("proxy.example.com:5060", sb, 1);
            with_msg(r.as_bytes(), TxKey::client).unwrap()
        };
        for (ours, written) in [
            ("127.0.0.1:5060", "127.0.0.1:5060"),
            ("[2001:DB8::1]:5070", "[2001:db8:0::1]:5070"),
            ("[::1]", "[0::1]"),
            ("sipis.example", "SIPIS.example"),
        ] {
            assert_eq!(
                TxKey::for_request(b"z9hG4bK1", ours.as_bytes(), Method::Options).sent_by(),
                via(written).sent_by(),
                "{ours}"
            );
        }
        for junk in [
            &b""[..],
            b":",
            b"[::1",
            b"[::1]x",
            b"host:99999",
            b"host:+1",
            b"a b:1",
        ] {
            let k = TxKey::for_request(b"z9hG4bK1", junk, Method::Options);
            assert_eq!(k.sent_by(), junk.to_ascii_lowercase().as_slice());
        }
    }

    #[test]
    fn keys_of_malformed_messages_are_errors_not_panics() {
        let resp = response(200, "INVITE", "a");
        assert_eq!(with_msg(&resp, TxKey::server), Err(Error::StartLine));
        assert!(with_msg(&resp, TxKey::cancel_target).is_err());
        let no_via = b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        assert!(server_key(no_via).is_err());
        assert!(with_msg(no_via, TxKey::client).is_err());
        let bad_via = b"OPTIONS sip:a@b SIP/2.0\r\nVia: junk\r\n\r\n";
        assert!(server_key(bad_via).is_err());
        let no_cseq = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n";
        assert_eq!(
            with_msg(no_cseq, TxKey::client),
            Err(Error::MissingHeader(HeaderName::CSeq))
        );
        // An extension method keeps its case.
        let k = server_key(&request("Foo", VIA, "Foo")).unwrap();
        assert_eq!(k.method(), "Foo");
        assert_ne!(k, server_key(&request("FOO", VIA, "FOO")).unwrap());
    }
}
