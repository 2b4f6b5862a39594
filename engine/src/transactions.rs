//! The transaction layer of a shard (RFC 3261 §17): every client and
//! server transaction in flight, found by its key, each with its wheel
//! timer, and the owner a client transaction reports to.
//!
//! The state machines themselves are in [`crate::transaction`]; this part
//! keeps the tables, sends what they want sent, re-arms their timers and
//! removes them when they terminate. It never decides what a response
//! means: the [`Engine`](crate::Engine) routes a client transaction's
//! answers and failures to its [`TxOwner`].

use crate::context::{Context, Timer};
use crate::error::SipError;
use crate::output::{Flow, Transmit};
use crate::registration::AccountId;
use crate::transaction::{
    ClientEvent, ClientTransaction, Kind, Pass, ServerEvent, ServerTransaction, TimerConfig, TxKey,
};
use crate::wheel::TimerHandle;
use bytes::Bytes;
use hdrhistogram::Histogram;
use sipis_parser::{self as parser, Message, Writer};
use slab::Slab;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

/// Who a client transaction reports to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxOwner {
    /// An account's REGISTER.
    Register(AccountId),
    /// The INVITE of a call's leg to a device: (call slot, generation, leg).
    Leg(usize, u64, usize),
    /// A relayed in-dialog request (index into the relay table).
    Relay(usize),
    /// An OPTIONS probing a registrar (index into the registrar table).
    Probe(u32),
    /// Fire-and-forget (an unregister of a removed account, a CANCEL, a
    /// BYE or PRACK of sipis's own).
    None,
}

/// A server transaction as the parts name it: its slot and the generation
/// that tells it from a later one in the same slot.
pub(crate) type ServerId = (usize, u64);

struct ClientEntry {
    tx: ClientTransaction,
    /// When the request was first sent (latency of the final answer).
    created: Instant,
    key: TxKey,
    dest: SocketAddr,
    flow: Flow,
    owner: TxOwner,
    timer: Option<TimerHandle>,
    generation: u64,
}

struct ServerEntry {
    tx: ServerTransaction,
    key: TxKey,
    source: SocketAddr,
    flow: Flow,
    timer: Option<TimerHandle>,
    generation: u64,
}

/// A transaction on a stream flow: client or server, slot, generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnFlow {
    Client(usize, u64),
    Server(usize, u64),
}

/// Notes (or forgets) a transaction on a stream flow.
fn index(by_flow: &mut HashMap<Flow, Vec<OnFlow>>, flow: Flow, tx: OnFlow, add: bool) {
    if !flow.is_stream() {
        return;
    }
    if add {
        by_flow.entry(flow).or_default().push(tx);
    } else if let Some(list) = by_flow.get_mut(&flow) {
        list.retain(|t| *t != tx);
        if list.is_empty() {
            by_flow.remove(&flow);
        }
    }
}

/// The transaction tables of one shard.
pub(crate) struct Transactions {
    timers: TimerConfig,
    clients: Slab<ClientEntry>,
    client_keys: HashMap<TxKey, usize>,
    servers: Slab<ServerEntry>,
    server_keys: HashMap<TxKey, usize>,
    /// The transactions on each TCP/TLS flow, so a closed connection costs
    /// only its own transactions.
    by_flow: HashMap<Flow, Vec<OnFlow>>,
    /// Microseconds from sending a request to its final response.
    latency: Histogram<u64>,
}

impl Transactions {
    pub fn new(timers: TimerConfig) -> Transactions {
        Transactions {
            timers,
            clients: Slab::new(),
            client_keys: HashMap::new(),
            servers: Slab::new(),
            server_keys: HashMap::new(),
            by_flow: HashMap::new(),
            latency: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds"),
        }
    }

    /// Transactions in flight (client, server).
    pub fn counts(&self) -> (usize, usize) {
        (self.clients.len(), self.servers.len())
    }

    /// Gives back the memory of tables a flood grew, once they are mostly
    /// empty again (cheap to call often: it compares lengths first).
    pub fn shrink_if_idle(&mut self) {
        fn slack(len: usize, cap: usize) -> bool {
            cap > 4096 && cap > len * 4
        }
        if slack(self.servers.len(), self.servers.capacity()) {
            self.servers.shrink_to_fit();
            self.server_keys.shrink_to_fit();
        }
        if slack(self.clients.len(), self.clients.capacity()) {
            self.clients.shrink_to_fit();
            self.client_keys.shrink_to_fit();
        }
    }

    /// Request round trips (sent to final response), in microseconds.
    pub fn latency(&self) -> &Histogram<u64> {
        &self.latency
    }

    // ---- client transactions ----------------------------------------------

    /// Starts a client transaction for `request` and sends it.
    #[allow(clippy::too_many_arguments)]
    pub fn start_client(
        &mut self,
        ctx: &mut Context,
        now: Instant,
        request: Bytes,
        key: TxKey,
        dest: SocketAddr,
        flow: Flow,
        kind: Kind,
        owner: TxOwner,
    ) -> usize {
        let reliable = flow.is_stream();
        let generation = ctx.next_generation();
        let slot = self.clients.insert(ClientEntry {
            created: now,
            tx: ClientTransaction::new(now, kind, request, reliable, &self.timers),
            key: key.clone(),
            dest,
            flow,
            owner,
            timer: None,
            generation,
        });
        self.client_keys.insert(key, slot);
        index(
            &mut self.by_flow,
            flow,
            OnFlow::Client(slot, generation),
            true,
        );
        self.flush_client(ctx, slot);
        // A transaction cannot end as it starts: nothing to report.
        let _ = self.settle_client(ctx, slot);
        slot
    }

    /// The owner of a client transaction stops listening (its account
    /// went): the transaction runs on, reporting to nobody.
    pub fn disown_client(&mut self, slot: usize) {
        if let Some(c) = self.clients.get_mut(slot) {
            c.owner = TxOwner::None;
        }
    }

    /// A response arrived: the transaction it belongs to takes it. Returns
    /// the transaction's slot, owner and whether to pass the response on
    /// (RFC 3261 §17.1.1.2, §17.1.3); `None` for a stray response.
    ///
    /// A response is taken only from where the request went (the address
    /// it was sent to, or the connection it used): a guessed or sniffed
    /// branch sent from elsewhere is no way to inject an answer.
    pub fn on_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        flow: Flow,
        msg: &Message<'_, '_>,
    ) -> Option<(usize, TxOwner, Pass)> {
        let slot = *TxKey::client(msg)
            .ok()
            .as_ref()
            .and_then(|k| self.client_keys.get(k))?;
        let c = &mut self.clients[slot];
        let same_flow = c.flow.is_stream() && c.flow == flow;
        if c.dest != from && !same_flow {
            return None;
        }
        let pass = c.tx.handle_response(now, msg);
        if pass == Pass::Deliver && msg.status().unwrap_or(0) >= 200 {
            let micros = now.saturating_duration_since(c.created).as_micros() as u64;
            self.latency.saturating_record(micros.max(1));
        }
        Some((slot, c.owner, pass))
    }

    /// A client transaction's timer fired: what it made of it (`None` if
    /// the timer belonged to an earlier transaction in that slot).
    pub fn client_timeout(
        &mut self,
        now: Instant,
        slot: usize,
        generation: u64,
    ) -> Option<Option<ClientEvent>> {
        let c = self
            .clients
            .get_mut(slot)
            .filter(|c| c.generation == generation)?;
        c.timer = None;
        Some(c.tx.handle_timeout(now))
    }

    /// Every client transaction towards `dest` learns that sending failed
    /// (RFC 3261 §17.1.4): (slot, its event).
    pub fn client_transport_errors(
        &mut self,
        now: Instant,
        dest: SocketAddr,
    ) -> Vec<(usize, Option<ClientEvent>)> {
        self.clients
            .iter_mut()
            .filter(|(_, c)| c.dest == dest)
            .map(|(slot, c)| (slot, c.tx.handle_transport_error(now)))
            .collect()
    }

    /// A TCP/TLS connection closed: its client transactions fail as on a
    /// transport error (RFC 3261 §17.1.4), returned as (slot, event) for
    /// their owners; its server transactions are dropped quietly, as
    /// nothing can be sent on that flow any more. Costs one lookup for a
    /// flow without transactions.
    pub fn flow_closed(
        &mut self,
        ctx: &mut Context,
        now: Instant,
        flow: Flow,
    ) -> Vec<(usize, Option<ClientEvent>)> {
        let Some(list) = self.by_flow.remove(&flow) else {
            return Vec::new();
        };
        let mut failed = Vec::new();
        for tx in list {
            match tx {
                OnFlow::Client(slot, generation) => {
                    if let Some(c) = self
                        .clients
                        .get_mut(slot)
                        .filter(|c| c.generation == generation && c.flow == flow)
                    {
                        failed.push((slot, c.tx.handle_transport_error(now)));
                    }
                }
                OnFlow::Server(slot, generation) => {
                    if self
                        .servers
                        .get(slot)
                        .is_some_and(|s| s.generation == generation && s.flow == flow)
                    {
                        let s = self.servers.remove(slot);
                        self.server_keys.remove(&s.key);
                        ctx.cancel(s.timer);
                    }
                }
            }
        }
        failed
    }

    /// Sends what a client transaction wants sent; its owner, or `None`
    /// when the slot is empty.
    pub fn flush_client(&mut self, ctx: &mut Context, slot: usize) -> Option<TxOwner> {
        let c = self.clients.get_mut(slot)?;
        while let Some(payload) = c.tx.poll_transmit() {
            ctx.transmits.push_back(Transmit {
                dest: c.dest,
                flow: c.flow,
                payload,
            });
        }
        Some(c.owner)
    }

    /// Removes a terminated client transaction (returning its owner, to be
    /// told), else re-arms its timer.
    pub fn settle_client(&mut self, ctx: &mut Context, slot: usize) -> Option<TxOwner> {
        let c = self.clients.get_mut(slot)?;
        if c.tx.is_terminated() {
            let c = self.clients.remove(slot);
            self.client_keys.remove(&c.key);
            index(
                &mut self.by_flow,
                c.flow,
                OnFlow::Client(slot, c.generation),
                false,
            );
            ctx.cancel(c.timer);
            return Some(c.owner);
        }
        let deadline = c.tx.poll_timeout();
        let (timer, generation) = (c.timer.take(), c.generation);
        let t = ctx.rearm(timer, deadline, Timer::Client(slot, generation));
        self.clients[slot].timer = t;
        None
    }

    // ---- server transactions -------------------------------------------------

    /// A request matching a server transaction in flight: a retransmission
    /// (the last response goes again) or the ACK of a non-2xx final
    /// response. `false` when no transaction has that key.
    pub fn absorb(&mut self, ctx: &mut Context, now: Instant, key: &TxKey, ack: bool) -> bool {
        let Some(&slot) = self.server_keys.get(key) else {
            return false;
        };
        let s = &mut self.servers[slot];
        if ack {
            s.tx.handle_ack(now);
        } else {
            s.tx.handle_retransmission(now);
        }
        self.after_server(ctx, slot, None);
        true
    }

    /// Opens the server transaction of a new request.
    pub fn open_server(
        &mut self,
        ctx: &mut Context,
        now: Instant,
        key: TxKey,
        kind: Kind,
        source: SocketAddr,
        flow: Flow,
    ) -> usize {
        let reliable = flow.is_stream();
        let generation = ctx.next_generation();
        let slot = self.servers.insert(ServerEntry {
            tx: ServerTransaction::new(now, kind, reliable, &self.timers),
            key: key.clone(),
            source,
            flow,
            timer: None,
            generation,
        });
        self.server_keys.insert(key, slot);
        index(
            &mut self.by_flow,
            flow,
            OnFlow::Server(slot, generation),
            true,
        );
        slot
    }

    /// The server transaction with this key, if any (a CANCEL's INVITE).
    pub fn server_by_key(&self, key: &TxKey) -> Option<usize> {
        self.server_keys.get(key).copied()
    }

    /// The id of a live server transaction.
    pub fn server_id(&self, slot: usize) -> ServerId {
        (slot, self.servers[slot].generation)
    }

    /// Answers a request on its server transaction with a response of
    /// sipis's own (a fresh To-tag); `extra` adds headers.
    #[allow(clippy::too_many_arguments)]
    pub fn reply(
        &mut self,
        ctx: &mut Context,
        now: Instant,
        slot: usize,
        msg: &Message<'_, '_>,
        code: u16,
        reason: &str,
        extra: impl FnOnce(&mut Writer<'_>),
    ) {
        let Some(s) = self.servers.get(slot) else {
            return;
        };
        let source = s.source;
        let to_tag = ctx.new_tag();
        ctx.buf.clear();
        let Ok(mut w) =
            parser::response_to(&mut ctx.buf, msg, code, reason, to_tag.as_bytes(), source)
        else {
            ctx.buf.clear();
            return;
        };
        extra(&mut w);
        w.finish(b"");
        let bytes = ctx.buf.split().freeze();
        self.servers[slot].tx.send_response(now, code, bytes);
        self.after_server(ctx, slot, None);
    }

    /// Answers a request with the response `error` stands for.
    pub fn reply_error(
        &mut self,
        ctx: &mut Context,
        now: Instant,
        slot: usize,
        msg: &Message<'_, '_>,
        error: SipError,
    ) {
        self.reply(ctx, now, slot, msg, error.status(), error.reason(), |w| {
            error.write_headers(w)
        });
    }

    /// Sends a response built elsewhere (a relayed one) on server
    /// transaction `id`, if it still exists.
    pub fn respond(
        &mut self,
        ctx: &mut Context,
        now: Instant,
        id: ServerId,
        code: u16,
        bytes: Bytes,
    ) {
        let (slot, generation) = id;
        if let Some(s) = self
            .servers
            .get_mut(slot)
            .filter(|s| s.generation == generation)
        {
            s.tx.send_response(now, code, bytes);
            self.after_server(ctx, slot, None);
        }
    }

    /// A server transaction's timer fired.
    pub fn server_timeout(
        &mut self,
        ctx: &mut Context,
        now: Instant,
        slot: usize,
        generation: u64,
    ) {
        if let Some(s) = self
            .servers
            .get_mut(slot)
            .filter(|s| s.generation == generation)
        {
            s.timer = None;
            let ev = s.tx.handle_timeout(now);
            self.after_server(ctx, slot, ev);
        }
    }

    /// Every server transaction answering `dest` learns that sending failed.
    pub fn server_transport_errors(&mut self, ctx: &mut Context, now: Instant, dest: SocketAddr) {
        let slots: Vec<usize> = self
            .servers
            .iter()
            .filter(|(_, s)| s.source == dest)
            .map(|(slot, _)| slot)
            .collect();
        for slot in slots {
            let ev = self.servers[slot].tx.handle_transport_error(now);
            self.after_server(ctx, slot, ev);
        }
    }

    fn after_server(&mut self, ctx: &mut Context, slot: usize, _ev: Option<ServerEvent>) {
        let Some(s) = self.servers.get_mut(slot) else {
            return;
        };
        while let Some(payload) = s.tx.poll_transmit() {
            ctx.transmits.push_back(Transmit {
                dest: s.source,
                flow: s.flow,
                payload,
            });
        }
        if s.tx.is_terminated() {
            let s = self.servers.remove(slot);
            self.server_keys.remove(&s.key);
            index(
                &mut self.by_flow,
                s.flow,
                OnFlow::Server(slot, s.generation),
                false,
            );
            ctx.cancel(s.timer);
            return;
        }
        let deadline = s.tx.poll_timeout();
        let (timer, generation) = (s.timer.take(), s.generation);
        let t = ctx.rearm(timer, deadline, Timer::Server(slot, generation));
        self.servers[slot].timer = t;
    }
}

/// A response outside any transaction (a request that could not be
/// accepted as one): sent once, never retransmitted.
pub(crate) fn respond_stateless(
    ctx: &mut Context,
    msg: &Message<'_, '_>,
    from: SocketAddr,
    flow: Flow,
    code: u16,
    reason: &str,
    extra: impl FnOnce(&mut Writer<'_>),
) {
    let tag = ctx.new_tag();
    ctx.buf.clear();
    if let Ok(mut w) = parser::response_to(&mut ctx.buf, msg, code, reason, tag.as_bytes(), from) {
        extra(&mut w);
        w.finish(b"");
        let payload = ctx.buf.split().freeze();
        ctx.transmits.push_back(Transmit {
            dest: from,
            flow,
            payload,
        });
    } else {
        // A header a response must copy does not parse (an unbalanced
        // quote in To, a bad URI): answer from the raw lines.
        ctx.buf.clear();
        respond_salvaged(ctx, msg.raw, from, flow, code, reason);
    }
}

/// Answers a request that could not be parsed, or whose headers a
/// response copies do not parse, from its raw header lines (RFC 4475
/// §3.1.2: a 400 or 505 "wherever a response can be routed"): the Via
/// lines, From, To (tagged), Call-ID and CSeq as they came. Nothing is
/// sent for a response, an ACK, or a request without a Via to route by.
pub(crate) fn respond_salvaged(
    ctx: &mut Context,
    data: &[u8],
    from: SocketAddr,
    flow: Flow,
    code: u16,
    reason: &str,
) {
    let data = data.strip_prefix(b"\r\n").unwrap_or(data);
    if data.starts_with(b"SIP/") || data.starts_with(b"ACK ") {
        return;
    }
    let head_end = blank_line(data).unwrap_or(data.len());
    let mut lines = data[..head_end]
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    lines.next(); // the request line
    let mut vias = Vec::new();
    let mut parties: [Option<&[u8]>; 4] = [None; 4];
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = std::str::from_utf8(&line[..colon]).unwrap_or("").trim();
        let value = trim(&line[colon + 1..]);
        let slot = match name.to_ascii_lowercase().as_str() {
            "via" | "v" => {
                vias.push(value);
                continue;
            }
            "from" | "f" => 0,
            "to" | "t" => 1,
            "call-id" | "i" => 2,
            "cseq" => 3,
            _ => continue,
        };
        parties[slot].get_or_insert(value);
    }
    if vias.is_empty() {
        return;
    }
    let tag = ctx.new_tag();
    ctx.buf.clear();
    let mut w = Writer::response(&mut ctx.buf, code, reason);
    for v in vias {
        w.header("Via", v);
    }
    for (name, v) in ["From", "To", "Call-ID", "CSeq"].into_iter().zip(parties) {
        let Some(v) = v else { continue };
        if name == "To" && !contains(v, b";tag=") {
            w.header_with("To", |o| {
                o.extend_from_slice(v);
                o.extend_from_slice(b";tag=");
                o.extend_from_slice(tag.as_bytes());
            });
        } else {
            w.header(name, v);
        }
    }
    w.finish(b"");
    let payload = ctx.buf.split().freeze();
    ctx.transmits.push_back(Transmit {
        dest: from,
        flow,
        payload,
    });
}

fn blank_line(data: &[u8]) -> Option<usize> {
    data.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| data.windows(2).position(|w| w == b"\n\n"))
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor a simulated clock
mod tests {
    use super::*;
    use sipis_parser::{parse, Method, EMPTY_HEADER};
    use std::time::Duration;

    const OPTIONS: &[u8] = b"OPTIONS sip:sipis.example SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bKopt1\r\n\
        From: <sip:probe@example.com>;tag=p1\r\n\
        To: <sip:sipis.example>\r\n\
        Call-ID: opt-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

    fn peer() -> SocketAddr {
        "192.0.2.4:5060".parse().unwrap()
    }

    #[test]
    fn a_retransmitted_request_gets_the_same_answer_and_the_table_empties() {
        let t0 = Instant::now();
        let mut ctx = Context::new(1, t0);
        let mut txs = Transactions::new(TimerConfig::default());
        let mut h = [EMPTY_HEADER; 16];
        let msg = parse(OPTIONS, &mut h).unwrap();
        let key = TxKey::server(&msg).unwrap();
        assert!(!txs.absorb(&mut ctx, t0, &key, false));
        let slot = txs.open_server(
            &mut ctx,
            t0,
            key.clone(),
            Kind::NonInvite,
            peer(),
            Flow::Udp,
        );
        txs.reply_error(&mut ctx, t0, slot, &msg, SipError::NotImplemented);
        let first = ctx.transmits.pop_front().unwrap();
        assert!(first
            .payload
            .starts_with(b"SIP/2.0 501 Not Implemented\r\n"));
        assert_eq!(first.dest, peer());
        // RFC 3261 §17.2.2: the retransmission is absorbed and answered
        // with the same bytes.
        assert!(txs.absorb(&mut ctx, t0, &key, false));
        assert_eq!(ctx.transmits.pop_front().unwrap().payload, first.payload);
        assert_eq!(txs.counts(), (0, 1));
        // Timer J (64·T1 over UDP) ends it.
        let later = t0 + Duration::from_secs(33);
        while let Some((_, t)) = ctx.wheel.poll_expired(later) {
            if let Timer::Server(s, g) = t {
                txs.server_timeout(&mut ctx, later, s, g);
            }
        }
        assert_eq!(txs.counts(), (0, 0));
    }

    #[test]
    fn a_response_from_another_address_is_not_taken() {
        let t0 = Instant::now();
        let mut ctx = Context::new(1, t0);
        let mut txs = Transactions::new(TimerConfig::default());
        let key = TxKey::for_request(b"z9hG4bKc2", b"sipis.example:5060", Method::Options);
        txs.start_client(
            &mut ctx,
            t0,
            Bytes::from_static(OPTIONS),
            key,
            peer(),
            Flow::Udp,
            Kind::NonInvite,
            TxOwner::None,
        );
        let resp = b"SIP/2.0 200 OK\r\n\
            Via: SIP/2.0/UDP sipis.example:5060;branch=z9hG4bKc2\r\n\
            From: <sip:probe@example.com>;tag=p1\r\nTo: <sip:sipis.example>;tag=x\r\n\
            Call-ID: opt-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        let mut h = [EMPTY_HEADER; 16];
        let msg = parse(resp, &mut h).unwrap();
        let attacker: SocketAddr = "198.51.100.66:5060".parse().unwrap();
        assert!(txs.on_response(t0, attacker, Flow::Udp, &msg).is_none());
        let (_, owner, pass) = txs.on_response(t0, peer(), Flow::Udp, &msg).unwrap();
        assert_eq!((owner, pass), (TxOwner::None, Pass::Deliver));
    }

    #[test]
    fn a_client_transaction_reports_its_owner_and_ends_on_timeout() {
        let t0 = Instant::now();
        let mut ctx = Context::new(1, t0);
        let mut txs = Transactions::new(TimerConfig::default());
        let key = TxKey::for_request(b"z9hG4bKc1", b"sipis.example:5060", Method::Options);
        let slot = txs.start_client(
            &mut ctx,
            t0,
            Bytes::from_static(OPTIONS),
            key,
            peer(),
            Flow::Udp,
            Kind::NonInvite,
            TxOwner::Register(7),
        );
        assert_eq!(ctx.transmits.len(), 1);
        // Timer F: 64·T1 later the transaction times out; its owner is told.
        let mut ended = None;
        for step in 1..=400 {
            let now = t0 + Duration::from_millis(100 * step);
            while let Some((_, t)) = ctx.wheel.poll_expired(now) {
                if let Timer::Client(s, g) = t {
                    let ev = txs.client_timeout(now, s, g).unwrap();
                    txs.flush_client(&mut ctx, s);
                    let settled = txs.settle_client(&mut ctx, s);
                    if ev == Some(ClientEvent::Timeout) {
                        ended = settled;
                    }
                }
            }
        }
        assert_eq!(slot, 0);
        assert_eq!(ended, Some(TxOwner::Register(7)));
        assert!(ctx.transmits.len() > 5, "Timer E retransmissions");
        assert_eq!(txs.counts(), (0, 0));
    }

    #[test]
    fn a_closed_flow_fails_its_client_transactions_and_drops_its_server_ones() {
        let t0 = Instant::now();
        let mut ctx = Context::new(1, t0);
        let mut txs = Transactions::new(TimerConfig::default());
        let mut client = |txs: &mut Transactions, branch: &[u8], flow: Flow| {
            let key = TxKey::for_request(branch, b"sipis.example:5060", Method::Invite);
            let owner = TxOwner::Leg(0, 1, branch.len());
            txs.start_client(
                &mut ctx,
                t0,
                Bytes::from_static(OPTIONS),
                key,
                peer(),
                flow,
                Kind::Invite,
                owner,
            )
        };
        let on_tcp = client(&mut txs, b"z9hG4bKt1", Flow::Tcp(7));
        let on_udp = client(&mut txs, b"z9hG4bKu1", Flow::SharedUdp);
        let mut h = [EMPTY_HEADER; 16];
        let msg = parse(OPTIONS, &mut h).unwrap();
        let key = TxKey::server(&msg).unwrap();
        let server = txs.open_server(&mut ctx, t0, key, Kind::NonInvite, peer(), Flow::Tcp(7));
        ctx.transmits.clear();
        assert_eq!(txs.counts(), (2, 1));
        // Nothing on another connection, nothing for UDP.
        assert!(txs.flow_closed(&mut ctx, t0, Flow::Tcp(8)).is_empty());
        assert!(txs.flow_closed(&mut ctx, t0, Flow::Tls(7)).is_empty());
        let failed = txs.flow_closed(&mut ctx, t0, Flow::Tcp(7));
        assert_eq!(failed, vec![(on_tcp, Some(ClientEvent::TransportError))]);
        // The server transaction went quietly: nothing sent, and an answer
        // for it now goes nowhere.
        assert_eq!(txs.counts(), (2, 0));
        txs.reply_error(&mut ctx, t0, server, &msg, SipError::NotImplemented);
        assert!(ctx.transmits.is_empty());
        // The failed client transaction is removed by its settling; the
        // UDP one runs on.
        assert_eq!(
            txs.flush_client(&mut ctx, on_tcp),
            Some(TxOwner::Leg(0, 1, 9))
        );
        assert_eq!(
            txs.settle_client(&mut ctx, on_tcp),
            Some(TxOwner::Leg(0, 1, 9))
        );
        assert_eq!(txs.counts(), (1, 0));
        assert!(txs.by_flow.is_empty());
        assert!(txs.settle_client(&mut ctx, on_udp).is_none());
        assert!(
            txs.flow_closed(&mut ctx, t0, Flow::Tcp(7)).is_empty(),
            "twice"
        );
    }
}
