//! The sans-IO SIP engine of one shard.
//!
//! [`Engine`] holds everything a shard knows — its accounts and their
//! registrations, the transactions in flight, the timer wheel — as plain
//! data. It never touches a socket or reads a clock: time comes in as `now`
//! with every input, and what it wants done comes out of `poll_*` methods.
//! This is quinn-proto's model, and it is what lets every flow be tested
//! deterministically with a simulated clock and network (`tests/sim`).
//!
//! ## Driving it
//!
//! ```text
//! loop {
//!     // 1. inputs, each with the current time
//!     engine.handle_datagram(now, from, flow, &bytes);   // a packet arrived
//!     engine.handle_timeout(now);                        // a deadline passed
//!     engine.add_account(now, cfg, saved);               // provisioning
//!     // 2. outputs, drained until empty after every input
//!     while let Some(t) = engine.poll_transmit() { socket.send_to(&t.payload, t.dest) }
//!     while let Some(e) = engine.poll_event() { store / metrics }
//!     // 3. sleep until engine.poll_timeout() or the next packet
//! }
//! ```
//!
//! Modules: `wheel` (timers), `transaction` (RFC 3261 §17), `digest`
//! (RFC 7616/8760), `registration` (registration on behalf), `rng`.

pub(crate) mod call;
pub(crate) mod digest;
pub(crate) mod phone;
pub(crate) mod registration;
mod relay;
pub(crate) mod rng;
pub(crate) mod transaction;
pub(crate) mod wheel;

use bytes::{Bytes, BytesMut};
use call::{Call, CallConfig, CallLatency, CallTimer, Outcome, PushWait, Relay};
use digest::{NonceVerifier, VerifierConfig};
use hdrhistogram::Histogram;
use phone::Device;
use registration::{
    AccountConfig, AccountId, Next, RegError, RegStatus, Registration, RegistrationConfig,
    SavedRegistration,
};
use rng::Rng;
use sipis_parser::{self as parser, parse, Message, Method, Writer, EMPTY_HEADER};
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use transaction::{
    ClientEvent, ClientTransaction, Kind, Pass, ServerEvent, ServerTransaction, TimerConfig, TxKey,
};
use wheel::{TimerHandle, TimerWheel};

/// How a message arrived or must leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    /// This shard's UDP socket (upstream: the provider's side).
    Udp,
    /// The public UDP port shared by all shards (phones' side): replies
    /// leave from that port so they pass the phone's NAT.
    SharedUdp,
    /// A TCP/TLS connection of the front, by its id.
    Stream(u64),
}

/// A message for the shell to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dest: SocketAddr,
    pub flow: Flow,
    pub payload: Bytes,
}

/// Things the shell should know about: for the store and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An account's registration changed state.
    Registration {
        account: AccountId,
        status: RegStatus,
    },
    /// Persist this (sent with every REGISTER: the CSeq moved).
    SaveRegistration {
        account: AccountId,
        saved: SavedRegistration,
    },
    /// A datagram could not be parsed (counted, answered 400 when possible).
    ParseError {
        from: SocketAddr,
        error: parser::Error,
    },
    /// A phone registered a push device (or moved its token): persist it.
    DeviceSaved {
        account: AccountId,
        device: String,
        provider: String,
        prid: String,
        param: Option<String>,
    },
    /// A device is gone (explicit unregister, or its token is dead).
    DeviceRemoved { account: AccountId, device: String },
    /// A call's outcome is decided: one durable row per call.
    CallOutcome {
        account: AccountId,
        call_id: String,
        caller: String,
        outcome: Outcome,
        reason: Option<String>,
        started: Instant,
        ended: Instant,
    },
}

/// Engine tunables.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// RFC 3261 T1, T2, T4.
    pub timers: TimerConfig,
    /// Via sent-by of this shard's socket, `host:port`.
    pub via: String,
    /// Public `host:port` written in Contacts (what the provider reaches).
    pub contact_host: String,
    /// Most REGISTERs this shard sends per second (new cycles, refreshes,
    /// retries and challenge answers alike), so a restart with 100 000
    /// accounts does not flood the provider.
    pub register_rate: u32,
    /// REGISTERs that may go out back to back before the rate applies.
    pub register_burst: u32,
    pub registration: RegistrationConfig,
    /// Seed of the engine's PRNG (branches, tags, jitter, nonce key).
    pub seed: u64,
    /// Public `host:port` of the phones' (shared) port, written in the
    /// Contact of requests to phones.
    pub phone_contact_host: String,
    /// Incoming calls and the phones' registrar.
    pub calls: CallConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            timers: TimerConfig::default(),
            via: "127.0.0.1:5060".into(),
            contact_host: "127.0.0.1:5060".into(),
            register_rate: 200,
            register_burst: 10,
            registration: RegistrationConfig::default(),
            seed: 0x5151_5151,
            phone_contact_host: "127.0.0.1:5060".into(),
            calls: CallConfig::default(),
        }
    }
}

/// Counters for `/metrics`; monotonic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub datagrams: u64,
    pub parse_errors: u64,
    pub registers_sent: u64,
    pub register_ok: u64,
    pub register_failed: u64,
    pub client_tx_timeouts: u64,
    pub server_tx: u64,
    pub stray_responses: u64,
    /// REGISTERs from phones (all, challenged ones included).
    pub phone_registers: u64,
    /// Phone REGISTERs refused with 403 (wrong credentials).
    pub phone_auth_failures: u64,
    /// INVITEs that started a call.
    pub calls: u64,
    pub calls_answered: u64,
    /// Calls that ended without an answer (no response, caller hung up,
    /// no device reachable).
    pub calls_missed: u64,
    /// Pushes handed to the mediator.
    pub pushes_requested: u64,
    pub pushes_sent: u64,
    pub pushes_failed: u64,
    pub pushes_token_dead: u64,
    /// Late-wake INVITEs sent, and those completed with CANCEL + 487.
    pub late_wakes: u64,
    pub late_wakes_completed: u64,
}

struct AccountEntry {
    cfg: AccountConfig,
    reg: Registration,
    /// The wheel timer of its next REGISTER.
    timer: Option<TimerHandle>,
    /// The REGISTER transaction in flight.
    tx: Option<usize>,
    /// Whether it sits in the send queue.
    queued: bool,
    /// Its phones (push targets and SIP bindings).
    devices: Vec<Device>,
    /// Its calls in the pending-call map.
    calls: Vec<usize>,
}

#[derive(Debug, Clone, Copy)]
enum TxOwner {
    Register(AccountId),
    /// The INVITE of a call's leg to a device: (call slot, generation, leg).
    Leg(usize, u64, usize),
    /// A relayed in-dialog request (index into the relay table).
    Relay(usize),
    /// Fire-and-forget (an unregister of a removed account, a CANCEL).
    None,
}

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

#[derive(Debug, Clone, Copy)]
enum Timer {
    Client(usize, u64),
    Server(usize, u64),
    Register(AccountId),
    RateLimit,
    Call(usize, u64, CallTimer),
}

/// One shard's SIP engine. See the module doc for how to drive it.
pub struct Engine {
    cfg: EngineConfig,
    rng: Rng,
    wheel: TimerWheel<Timer>,
    /// Boxed: the table then holds 16-byte slots, so its power-of-two
    /// growth does not leave hundreds of bytes empty per account.
    accounts: HashMap<AccountId, Box<AccountEntry>>,
    by_token: HashMap<Box<str>, AccountId>,
    clients: Slab<ClientEntry>,
    client_keys: HashMap<TxKey, usize>,
    servers: Slab<ServerEntry>,
    server_keys: HashMap<TxKey, usize>,
    generation: u64,
    /// Accounts waiting for a REGISTER slot, served in order.
    send_queue: VecDeque<AccountId>,
    /// GCRA theoretical arrival time of the next REGISTER.
    rate_tat: Instant,
    rate_timer: Option<TimerHandle>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
    /// Microseconds from sending a REGISTER to its final response.
    register_latency: Histogram<u64>,
    buf: BytesMut,
    /// AOR key → account (phones registering, proxy-mode calls).
    by_aor: HashMap<Box<[u8]>, AccountId>,
    /// Digest nonces for phones.
    verifier: NonceVerifier,
    /// The pending-call map, and Call-ID → its slot.
    calls: Slab<Call>,
    call_ids: HashMap<Box<[u8]>, usize>,
    relays: Slab<Relay>,
    pushes: VecDeque<parser_push::PushRequest>,
    push_waits: HashMap<String, PushWait>,
    call_latency: CallLatency,
}

use crate::push as parser_push;

impl Engine {
    /// Answers a request on its server transaction (`slot`) with a
    /// response of sipis's own; `extra` adds headers.
    fn reply(
        &mut self,
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
        let mut to_tag = String::with_capacity(12);
        self.rng.hex_into(&mut to_tag, 12);
        self.buf.clear();
        let Ok(mut w) =
            parser::response_to(&mut self.buf, msg, code, reason, to_tag.as_bytes(), source)
        else {
            self.buf.clear();
            return;
        };
        extra(&mut w);
        w.finish(b"");
        let bytes = self.buf.split().freeze();
        self.servers[slot].tx.send_response(now, code, bytes);
        self.after_server(slot, None);
    }

    /// An account's Contact token (empty for an account gone meanwhile).
    fn account_token(&self, account: AccountId) -> String {
        self.accounts
            .get(&account)
            .map(|a| a.cfg.token.clone())
            .unwrap_or_default()
    }

    /// Starts a client transaction for `request` and sends it.
    #[allow(clippy::too_many_arguments)]
    fn start_client(
        &mut self,
        now: Instant,
        request: Bytes,
        key: TxKey,
        dest: SocketAddr,
        flow: Flow,
        kind: Kind,
        owner: TxOwner,
    ) -> usize {
        let reliable = matches!(flow, Flow::Stream(_));
        self.generation += 1;
        let slot = self.clients.insert(ClientEntry {
            created: now,
            tx: ClientTransaction::new(now, kind, request, reliable, &self.cfg.timers),
            key: key.clone(),
            dest,
            flow,
            owner,
            timer: None,
            generation: self.generation,
        });
        self.client_keys.insert(key, slot);
        self.after_client(now, slot, None);
        slot
    }
}

impl Engine {
    /// A new engine; `now` anchors its timer wheel.
    pub fn new(cfg: EngineConfig, now: Instant) -> Engine {
        Engine {
            rng: Rng::new(cfg.seed),
            wheel: TimerWheel::new(now),
            accounts: HashMap::new(),
            by_token: HashMap::new(),
            clients: Slab::new(),
            client_keys: HashMap::new(),
            servers: Slab::new(),
            server_keys: HashMap::new(),
            generation: 0,
            send_queue: VecDeque::new(),
            rate_tat: now,
            rate_timer: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            register_latency: Histogram::new_with_bounds(1, 120_000_000, 3)
                .expect("valid histogram bounds"),
            buf: BytesMut::with_capacity(64 * 1024),
            by_aor: HashMap::new(),
            verifier: NonceVerifier::new(
                Rng::new(cfg.seed ^ 0x00D1_CE57).seed32(),
                now,
                VerifierConfig {
                    // MD5 first: deployed softphones (and sipp) answer the
                    // first challenge and many know only MD5 (RFC 8760 §2.4
                    // lets the server order by preference); a SHA-256
                    // answer to the second one is accepted as well.
                    algorithms: vec![digest::Algorithm::Md5, digest::Algorithm::Sha256],
                    ..VerifierConfig::default()
                },
            ),
            calls: Slab::new(),
            call_ids: HashMap::new(),
            relays: Slab::new(),
            pushes: VecDeque::new(),
            push_waits: HashMap::new(),
            call_latency: CallLatency::default(),
            cfg,
        }
    }

    // ---- getters -------------------------------------------------------

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// REGISTER round trips (send to final response), in microseconds.
    pub fn register_latency(&self) -> &Histogram<u64> {
        &self.register_latency
    }

    /// The registration state of an account.
    pub fn account_status(&self, id: AccountId) -> Option<RegStatus> {
        self.accounts.get(&id).map(|a| a.reg.status())
    }

    /// The account a Contact token routes to.
    pub fn account_by_token(&self, token: &[u8]) -> Option<AccountId> {
        std::str::from_utf8(token)
            .ok()
            .and_then(|t| self.by_token.get(t))
            .copied()
    }

    /// The persistent registration state of an account.
    pub fn saved_registration(&self, id: AccountId) -> Option<SavedRegistration> {
        self.accounts.get(&id).map(|a| a.reg.saved())
    }

    /// Visits every account's registration state (for metrics gauges).
    pub fn for_each_status(&self, mut f: impl FnMut(AccountId, RegStatus)) {
        for (id, a) in &self.accounts {
            f(*id, a.reg.status());
        }
    }

    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// Transactions in flight (client, server).
    pub fn transaction_count(&self) -> (usize, usize) {
        (self.clients.len(), self.servers.len())
    }

    // ---- provisioning ----------------------------------------------------

    /// Adds an account, or updates it if the id exists. `saved` restores a
    /// binding persisted before a restart (same Call-ID, higher CSeq). Its
    /// first REGISTER goes out through the rate limiter.
    pub fn add_account(
        &mut self,
        now: Instant,
        cfg: AccountConfig,
        saved: Option<SavedRegistration>,
    ) {
        if self.accounts.contains_key(&cfg.id) {
            self.update_account(now, cfg);
            return;
        }
        let reg = Registration::new(&cfg, saved.as_ref(), &self.cfg.contact_host, &mut self.rng);
        let id = cfg.id;
        self.by_token.insert(cfg.token.clone().into_boxed_str(), id);
        if let Some(k) = aor_key_of(&cfg.aor) {
            self.by_aor.insert(k, id);
        }
        let wants = cfg.registrar.is_some();
        self.accounts.insert(
            id,
            Box::new(AccountEntry {
                cfg,
                reg,
                timer: None,
                tx: None,
                queued: false,
                devices: Vec::new(),
                calls: Vec::new(),
            }),
        );
        if wants {
            self.enqueue(id, false);
            self.drain_send_queue(now);
        }
    }

    /// Replaces an account's configuration; a changed password, registrar
    /// or expiry starts a fresh registration attempt (this is also how a
    /// failed account is revived).
    pub fn update_account(&mut self, now: Instant, cfg: AccountConfig) {
        let id = cfg.id;
        let Some(a) = self.accounts.get_mut(&id) else {
            self.add_account(now, cfg, None);
            return;
        };
        if a.cfg == cfg {
            return;
        }
        if a.cfg.token != cfg.token {
            self.by_token.remove(a.cfg.token.as_str());
            self.by_token.insert(cfg.token.clone().into_boxed_str(), id);
        }
        if a.cfg.aor != cfg.aor {
            if let Some(k) = aor_key_of(&a.cfg.aor) {
                self.by_aor.remove(&k);
            }
            if let Some(k) = aor_key_of(&cfg.aor) {
                self.by_aor.insert(k, id);
            }
        }
        a.cfg = cfg;
        let before = a.reg.status();
        let next = a.reg.reconfigure(&a.cfg);
        self.status_event(id, before);
        self.schedule(now, id, next);
    }

    /// Removes an account. A live binding is unregistered (Expires: 0) on
    /// the way out, best effort.
    pub fn remove_account(&mut self, now: Instant, id: AccountId) -> bool {
        let Some(mut a) = self.accounts.remove(&id) else {
            return false;
        };
        self.by_token.remove(a.cfg.token.as_str());
        if let Some(k) = aor_key_of(&a.cfg.aor) {
            self.by_aor.remove(&k);
        }
        if let Some(t) = a.timer.take() {
            self.wheel.cancel(t);
        }
        if let Some(tx) = a.tx.take() {
            if let Some(c) = self.clients.get_mut(tx) {
                c.owner = TxOwner::None;
            }
        }
        if matches!(a.reg.status(), RegStatus::Registered { .. }) {
            a.reg.unregister();
            self.send_register(now, &mut a, TxOwner::None);
        }
        true
    }

    /// Removes the binding of an account but keeps the account
    /// (REGISTER with Expires: 0).
    pub fn unregister(&mut self, now: Instant, id: AccountId) -> bool {
        let Some(a) = self.accounts.get_mut(&id) else {
            return false;
        };
        let next = a.reg.unregister();
        self.schedule(now, id, next);
        true
    }

    /// Unregisters every bound account (graceful shutdown, if configured).
    pub fn unregister_all(&mut self, now: Instant) {
        let ids: Vec<_> = self
            .accounts
            .iter()
            .filter(|(_, a)| matches!(a.reg.status(), RegStatus::Registered { .. }))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.unregister(now, id);
        }
    }

    // ---- inputs ----------------------------------------------------------

    /// A datagram (or a framed stream message) arrived from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, flow: Flow, data: &[u8]) {
        self.stats.datagrams += 1;
        let mut headers = [EMPTY_HEADER; 64];
        let msg = match parse(data, &mut headers) {
            Ok(m) => m,
            Err(error) => {
                self.stats.parse_errors += 1;
                self.events.push_back(Event::ParseError { from, error });
                return;
            }
        };
        if msg.is_request() {
            self.handle_request(now, from, flow, &msg, data);
        } else {
            self.handle_response(now, &msg, data);
        }
    }

    /// Sending to `dest` failed (ICMP unreachable, connection refused or
    /// reset): every client transaction towards it ends at once (RFC 3261
    /// §17.1.4) instead of retransmitting into the void until Timer F.
    pub fn handle_transport_error(&mut self, now: Instant, dest: SocketAddr) {
        let slots: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| c.dest == dest)
            .map(|(slot, _)| slot)
            .collect();
        for slot in slots {
            let ev = self.clients[slot].tx.handle_transport_error(now);
            self.after_client(now, slot, ev);
        }
        let slots: Vec<usize> = self
            .servers
            .iter()
            .filter(|(_, s)| s.source == dest)
            .map(|(slot, _)| slot)
            .collect();
        for slot in slots {
            let ev = self.servers[slot].tx.handle_transport_error(now);
            self.after_server(slot, ev);
        }
    }

    /// Deadlines up to `now` have passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((_, t)) = self.wheel.poll_expired(now) {
            match t {
                Timer::Client(slot, generation) => {
                    if let Some(c) = self
                        .clients
                        .get_mut(slot)
                        .filter(|c| c.generation == generation)
                    {
                        c.timer = None;
                        let ev = c.tx.handle_timeout(now);
                        self.after_client(now, slot, ev);
                    }
                }
                Timer::Server(slot, generation) => {
                    if let Some(s) = self
                        .servers
                        .get_mut(slot)
                        .filter(|s| s.generation == generation)
                    {
                        s.timer = None;
                        let ev = s.tx.handle_timeout(now);
                        self.after_server(slot, ev);
                    }
                }
                Timer::Register(id) => {
                    if let Some(a) = self.accounts.get_mut(&id) {
                        a.timer = None;
                        self.enqueue(id, false);
                    }
                }
                Timer::RateLimit => self.rate_timer = None,
                Timer::Call(c, gen, which) => self.call_timer(now, c, gen, which),
            }
        }
        self.drain_send_queue(now);
    }

    // ---- outputs ---------------------------------------------------------

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next deadline: call [`Engine::handle_timeout`] then.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.wheel.next_deadline()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- requests ----------------------------------------------------------

    fn handle_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        flow: Flow,
        msg: &Message<'_, '_>,
        data: &[u8],
    ) {
        let method = msg.method().unwrap_or(Method::Options);
        if let Err(e) = msg.validate() {
            self.stats.parse_errors += 1;
            self.events.push_back(Event::ParseError { from, error: e });
            // RFC 3261 §8.2: answer what can be answered; never answer an ACK.
            if method != Method::Ack {
                self.respond_stateless(msg, from, flow, e.status_code(), e.reason());
            }
            return;
        }
        let Ok(key) = TxKey::server(msg) else {
            return;
        };
        if let Some(&slot) = self.server_keys.get(&key) {
            let s = &mut self.servers[slot];
            if method == Method::Ack {
                s.tx.handle_ack(now);
            } else {
                s.tx.handle_retransmission(now);
            }
            self.after_server(slot, None);
            return;
        }
        if method == Method::Ack {
            // An ACK for a 2xx (end to end) or for a transaction long gone.
            return self.call_ack(now, msg, data);
        }
        let kind = if method == Method::Invite {
            Kind::Invite
        } else {
            Kind::NonInvite
        };
        let reliable = matches!(flow, Flow::Stream(_));
        self.generation += 1;
        let slot = self.servers.insert(ServerEntry {
            tx: ServerTransaction::new(now, kind, reliable, &self.cfg.timers),
            key: key.clone(),
            source: from,
            flow,
            timer: None,
            generation: self.generation,
        });
        self.server_keys.insert(key, slot);
        self.stats.server_tx += 1;
        // The transaction user.
        let in_dialog = msg.to().ok().and_then(|t| t.tag()).is_some();
        match method {
            Method::Cancel => self.incoming_cancel(now, msg, slot),
            _ if in_dialog => self.in_dialog(now, from, msg, data, slot),
            Method::Register => self.phone_register(now, from, flow, msg, slot),
            Method::Invite => self.incoming_invite(now, from, flow, msg, data, slot),
            Method::Options => self.reply(now, slot, msg, 200, "OK", |w| {
                w.header(
                    "Allow",
                    b"INVITE, ACK, CANCEL, BYE, OPTIONS, PRACK, UPDATE, INFO, REGISTER",
                );
            }),
            Method::Bye | Method::Prack | Method::Update | Method::Info => self.reply(
                now,
                slot,
                msg,
                481,
                "Call/Transaction Does Not Exist",
                |_| {},
            ),
            _ => self.reply(now, slot, msg, 501, "Not Implemented", |_| {}),
        }
    }

    /// A response outside any transaction (a request we could not accept).
    fn respond_stateless(
        &mut self,
        msg: &Message<'_, '_>,
        from: SocketAddr,
        flow: Flow,
        code: u16,
        reason: &str,
    ) {
        self.buf.clear();
        let mut tag = String::with_capacity(12);
        self.rng.hex_into(&mut tag, 12);
        if let Ok(w) = parser::response_to(&mut self.buf, msg, code, reason, tag.as_bytes(), from) {
            w.finish(b"");
            let payload = self.buf.split().freeze();
            self.transmits.push_back(Transmit {
                dest: from,
                flow,
                payload,
            });
        } else {
            self.buf.clear();
        }
    }

    fn after_server(&mut self, slot: usize, ev: Option<ServerEvent>) {
        let Some(s) = self.servers.get_mut(slot) else {
            return;
        };
        while let Some(payload) = s.tx.poll_transmit() {
            self.transmits.push_back(Transmit {
                dest: s.source,
                flow: s.flow,
                payload,
            });
        }
        let _ = ev;
        if s.tx.is_terminated() {
            let s = self.servers.remove(slot);
            self.server_keys.remove(&s.key);
            if let Some(t) = s.timer {
                self.wheel.cancel(t);
            }
            return;
        }
        let deadline = s.tx.poll_timeout();
        let (timer, generation) = (s.timer.take(), s.generation);
        s.timer = rearm(
            &mut self.wheel,
            timer,
            deadline,
            Timer::Server(slot, generation),
        );
    }

    // ---- responses ---------------------------------------------------------

    fn handle_response(&mut self, now: Instant, msg: &Message<'_, '_>, data: &[u8]) {
        let Some(&slot) = TxKey::client(msg)
            .ok()
            .as_ref()
            .and_then(|k| self.client_keys.get(k))
        else {
            self.stats.stray_responses += 1;
            return;
        };
        let c = &mut self.clients[slot];
        let pass = c.tx.handle_response(now, msg);
        let owner = c.owner;
        if pass == Pass::Deliver && msg.status().unwrap_or(0) >= 200 {
            let micros = now.saturating_duration_since(c.created).as_micros() as u64;
            self.register_latency.saturating_record(micros.max(1));
            if let TxOwner::Register(id) = owner {
                self.register_response(now, id, msg);
            }
        }
        if pass == Pass::Deliver {
            match owner {
                TxOwner::Leg(c, gen, leg) => self.leg_response(now, c, gen, leg, msg, data),
                TxOwner::Relay(r) => self.relay_response(now, r, msg, data),
                _ => {}
            }
        }
        self.after_client(now, slot, None);
    }

    fn register_response(&mut self, now: Instant, id: AccountId, msg: &Message<'_, '_>) {
        let Some(a) = self.accounts.get_mut(&id) else {
            return;
        };
        a.tx = None;
        let before = a.reg.status();
        let next = a
            .reg
            .on_response(now, &a.cfg, &self.cfg.registration, msg, &mut self.rng);
        match a.reg.status() {
            RegStatus::Registered { .. } => {
                self.stats.register_ok += 1;
                // The granted lifetime is part of what a restart restores.
                self.events.push_back(Event::SaveRegistration {
                    account: id,
                    saved: a.reg.saved(),
                });
            }
            RegStatus::Failed { .. } | RegStatus::Retrying { .. } => {
                self.stats.register_failed += 1
            }
            _ => {}
        }
        self.status_event(id, before);
        self.schedule(now, id, next);
    }

    fn after_client(&mut self, now: Instant, slot: usize, ev: Option<ClientEvent>) {
        let Some(c) = self.clients.get_mut(slot) else {
            return;
        };
        while let Some(payload) = c.tx.poll_transmit() {
            self.transmits.push_back(Transmit {
                dest: c.dest,
                flow: c.flow,
                payload,
            });
        }
        let owner = c.owner;
        if let Some(ev) = ev {
            let error = match ev {
                ClientEvent::Timeout => Some(RegError::Timeout),
                ClientEvent::TransportError => Some(RegError::TransportError),
                _ => None,
            };
            if let Some(error) = error {
                self.stats.client_tx_timeouts += u64::from(error == RegError::Timeout);
                match owner {
                    TxOwner::Register(id) => self.register_failure(now, id, error),
                    TxOwner::Leg(c, gen, leg) => self.leg_failed(now, c, gen, leg),
                    TxOwner::Relay(r) => self.relay_failed(now, r),
                    TxOwner::None => {}
                }
            }
        }
        let Some(c) = self.clients.get_mut(slot) else {
            return;
        };
        if c.tx.is_terminated() {
            let c = self.clients.remove(slot);
            self.client_keys.remove(&c.key);
            if let Some(t) = c.timer {
                self.wheel.cancel(t);
            }
            match c.owner {
                TxOwner::Register(id) => {
                    if let Some(a) = self.accounts.get_mut(&id) {
                        if a.tx == Some(slot) {
                            a.tx = None;
                        }
                    }
                }
                TxOwner::Relay(r) => self.relay_done(r),
                _ => {}
            }
            return;
        }
        let deadline = c.tx.poll_timeout();
        let (timer, generation) = (c.timer.take(), c.generation);
        c.timer = rearm(
            &mut self.wheel,
            timer,
            deadline,
            Timer::Client(slot, generation),
        );
    }

    fn register_failure(&mut self, now: Instant, id: AccountId, error: RegError) {
        let Some(a) = self.accounts.get_mut(&id) else {
            return;
        };
        a.tx = None;
        let before = a.reg.status();
        let next = a
            .reg
            .on_failure(now, &self.cfg.registration, error, &mut self.rng);
        self.stats.register_failed += 1;
        self.status_event(id, before);
        self.schedule(now, id, next);
    }

    // ---- registration scheduling -------------------------------------------

    fn schedule(&mut self, now: Instant, id: AccountId, next: Next) {
        let Some(a) = self.accounts.get_mut(&id) else {
            return;
        };
        if let Some(t) = a.timer.take() {
            self.wheel.cancel(t);
        }
        match next {
            Next::Idle => {}
            Next::SendNow => {
                self.enqueue(id, true);
                self.drain_send_queue(now);
            }
            Next::SendAt(at) => {
                let a = self.accounts.get_mut(&id).expect("checked above");
                a.timer = Some(self.wheel.insert(at, Timer::Register(id)));
            }
        }
    }

    fn enqueue(&mut self, id: AccountId, front: bool) {
        let Some(a) = self.accounts.get_mut(&id) else {
            return;
        };
        if a.queued {
            return;
        }
        a.queued = true;
        if front {
            self.send_queue.push_front(id);
        } else {
            self.send_queue.push_back(id);
        }
    }

    /// Sends queued REGISTERs as the rate allows (GCRA: one every
    /// `1/register_rate`, up to `register_burst` back to back), then arms a
    /// timer for when the next one may go.
    fn drain_send_queue(&mut self, now: Instant) {
        let interval = Duration::from_secs(1) / self.cfg.register_rate.max(1);
        let tolerance = interval * self.cfg.register_burst.saturating_sub(1);
        while let Some(&id) = self.send_queue.front() {
            let tat = self.rate_tat.max(now);
            if tat > now + tolerance {
                if self.rate_timer.is_none() {
                    self.rate_timer = Some(self.wheel.insert(tat - tolerance, Timer::RateLimit));
                }
                return;
            }
            self.send_queue.pop_front();
            let Some(mut a) = self.accounts.remove(&id) else {
                continue;
            };
            a.queued = false;
            if a.tx.is_none() && a.cfg.registrar.is_some() {
                self.rate_tat = tat + interval;
                self.send_register(now, &mut a, TxOwner::Register(id));
            }
            self.accounts.insert(id, a);
        }
    }

    fn send_register(&mut self, now: Instant, a: &mut AccountEntry, owner: TxOwner) {
        let Some(dest) = a.cfg.registrar.as_ref().map(|r| r.addr) else {
            return;
        };
        let branch = new_branch(&mut self.rng);
        self.buf.clear();
        let before = a.reg.status();
        if a.reg
            .write_register(
                &a.cfg,
                &self.cfg.via,
                &self.cfg.contact_host,
                &branch,
                &self.cfg.registration.user_agent,
                &mut self.buf,
            )
            .is_err()
        {
            return;
        }
        let bytes = self.buf.split().freeze();
        let key = TxKey::for_request(branch.as_bytes(), self.cfg.via.as_bytes(), Method::Register);
        self.generation += 1;
        let slot = self.clients.insert(ClientEntry {
            created: now,
            tx: ClientTransaction::new(now, Kind::NonInvite, bytes, false, &self.cfg.timers),
            key: key.clone(),
            dest,
            flow: Flow::Udp,
            owner,
            timer: None,
            generation: self.generation,
        });
        self.client_keys.insert(key, slot);
        self.stats.registers_sent += 1;
        if let TxOwner::Register(id) = owner {
            a.tx = Some(slot);
            self.events.push_back(Event::SaveRegistration {
                account: id,
                saved: a.reg.saved(),
            });
            if before != a.reg.status() {
                self.events.push_back(Event::Registration {
                    account: id,
                    status: a.reg.status(),
                });
            }
        }
        self.after_client(now, slot, None);
    }

    fn status_event(&mut self, id: AccountId, before: RegStatus) {
        if let Some(a) = self.accounts.get(&id) {
            let status = a.reg.status();
            if status != before {
                self.events.push_back(Event::Registration {
                    account: id,
                    status,
                });
            }
        }
    }
}

/// Moves a transaction's wheel timer to its new deadline (or drops it).
fn rearm(
    wheel: &mut TimerWheel<Timer>,
    timer: Option<TimerHandle>,
    deadline: Option<Instant>,
    what: Timer,
) -> Option<TimerHandle> {
    match (timer, deadline) {
        (Some(t), Some(d)) if wheel.reschedule(t, d) => Some(t),
        (Some(t), None) => {
            wheel.cancel(t);
            None
        }
        (_, Some(d)) => Some(wheel.insert(d, what)),
        (None, None) => None,
    }
}

/// The AOR key of an account's configured AOR text.
fn aor_key_of(aor: &str) -> Option<Box<[u8]>> {
    let u = parser::Uri::parse(aor.as_bytes()).ok()?;
    phone::aor_key(&u)
}

/// A fresh RFC 3261 branch (`z9hG4bK` + 16 hex digits, §8.1.1.7).
fn new_branch(rng: &mut Rng) -> String {
    let mut branch = String::with_capacity(24);
    branch.push_str("z9hG4bK");
    rng.hex_into(&mut branch, 16);
    branch
}
