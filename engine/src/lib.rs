//! # sipis-engine — the sans-IO SIP engine of one sipis shard
//!
//! [`Engine`] holds everything a shard knows — its accounts and their
//! registrations, the phones' devices, the transactions and calls in
//! flight, the timer wheel — as plain data. It never touches a socket or
//! reads a clock: time comes in as `now` with every input, and what it
//! wants done comes out of `poll_*` methods. This is quinn-proto's model,
//! and what lets every flow be tested deterministically with a simulated
//! clock and network (`tests/sim` in the server crate). The crate depends
//! on the SIP parser and nothing that does I/O; the compiler keeps it so.
//!
//! ## Data flow
//!
//! ```text
//!  handle_datagram(now, from, flow, bytes)
//!        │ sipis_parser::parse (zero-copy)
//!        ▼
//!  Transactions ── retransmission / ACK of a non-2xx? absorbed ──▶ transmits
//!        │ new request: server transaction opened   │ response: its client transaction
//!        ▼                                          ▼
//!  Engine (routes by method and owner)      TxOwner::Register ─▶ Accounts
//!   ├─ REGISTER ─────────▶ Registrar ── devices up ──▶ Calls::device_ready
//!   ├─ INVITE ───────────▶ Calls (pending-call map, pushes, legs)
//!   ├─ CANCEL, ACK, in-dialog ─▶ Calls (relay, late wake)
//!   └─ OPTIONS / others ─▶ answered here
//!  handle_timeout(now) ─ TimerWheel ─▶ Transactions / Accounts / Calls
//!  handle_flow_closed(now, flow) ─▶ Registrar (bindings) / Transactions
//!  handle_push_result(now, outcome) ─▶ Calls (and Registrar for dead tokens)
//!        │
//!        ▼ outputs, drained by the shell after every input
//!  poll_transmit → Transmit     poll_event → Event (store, metrics)
//!  poll_push → Push             poll_timeout → next deadline
//! ```
//!
//! ## Parts
//!
//! - [`Engine`] (this file) — the coordinator: owns the parts below and
//!   routes each input to the part it is for.
//! - `context` — what every part writes to: timer wheel, PRNG, scratch
//!   buffer, output queues, counters.
//! - `transactions` — the RFC 3261 §17 layer: client and server
//!   transactions by key, their timers, who owns each client transaction;
//!   the state machines themselves are in `transaction`.
//! - `accounts` — provisioned accounts, lookups by id / Contact token /
//!   AOR, the REGISTER send queue and rate limiter; each account's
//!   registration on behalf is a `registration::Registration`.
//! - `registrar` — the phones' registrar: digest with the account's
//!   credentials, RFC 8599 push devices and SIP bindings, each on the flow
//!   it came over (RFC 5626 outbound; a closed connection takes its
//!   bindings with it).
//! - `calls` — incoming calls: the pending-call map, pushes, legs to
//!   woken devices (an explicit `LegState`), endings, **the late wake**
//!   (`calls` module doc; `Calls::device_ready` starts it, `cancel_leg`
//!   and `late_reason` end it; tests `late_wake_*` in `tests/calls.rs`)
//!   and **the frozen app** (a connected device silent past
//!   `stream_answer_wait` is pushed; tests `*frozen*`).
//! - `relay` — the B2BUA relay of in-dialog requests, CANCEL and the ACK
//!   of a 2xx between the caller's leg and a phone's.
//! - `dialog` — an RFC 3261 §12 dialog per leg, built once, from which
//!   every request sipis originates in it is written.
//! - `request` — the request skeleton every originated request starts
//!   with, and the B2BUA's header rules.
//! - [`push`] — the domain pushes the engine emits ([`Push`]) and the
//!   outcomes it takes back ([`PushOutcome`]).
//! - `guard` — password guessing slowed per (source, AOR) and per source,
//!   in bounded tables ([`GuardConfig`]).
//! - `config`, `output`, `outcome` — [`EngineConfig`]/[`CallConfig`], what
//!   the engine hands the shell ([`Transmit`], [`Event`], [`Stats`]), how a
//!   call ended ([`Outcome`]).
//! - [`SipError`] — every refusal, with its status code, reason and headers.
//! - [`wheel`], [`digest`], `rng` — the timer wheel, digest authentication
//!   (RFC 7616/8760), the ChaCha20 CSPRNG ([`Rng`], keyed by [`RngKey`]).
//!
//! ## Driving it
//!
//! ```text
//! loop {
//!     // 1. inputs, each with the current time
//!     engine.handle_datagram(now, from, flow, &bytes);   // a packet arrived
//!     engine.handle_timeout(now);                        // a deadline passed
//!     engine.handle_push_result(now, outcome);           // a push was answered
//!     engine.handle_flow_closed(now, flow);              // a TCP/TLS connection went
//!     engine.add_account(now, cfg, saved);               // provisioning
//!     // 2. outputs, drained until empty after every input
//!     while let Some(t) = engine.poll_transmit() { socket.send_to(&t.payload, t.dest) }
//!     while let Some(e) = engine.poll_event() { store / metrics }
//!     while let Some(p) = engine.poll_push() { push client / mediator }
//!     // 3. sleep until engine.poll_timeout() or the next packet
//! }
//! ```

mod accounts;
mod calls;
mod config;
mod context;
mod dialog;
pub mod digest;
mod error;
mod guard;
mod outcome;
mod output;
pub mod push;
mod registrar;
mod registration;
mod relay;
mod request;
mod rng;
pub mod transaction;
mod transactions;
pub mod wheel;

pub use accounts::{aor_key, aor_key_of};
pub use calls::CallLatency;
pub use config::{CallConfig, EngineConfig};
pub use context::shard_of_branch;
pub use error::SipError;
pub use guard::GuardConfig;
pub use outcome::{Outcome, BUSY_EVERYWHERE, COMPLETED_ELSEWHERE};
pub use output::{Event, Flow, Stats, Transmit};
pub use push::{Platform, Push, PushKind, PushOutcome, PushResult};
pub use registrar::DeviceInfo;
pub use registration::{
    refresh_delay, AccountConfig, AccountId, AccountSecret, RegError, RegStatus, Registrar,
    RegistrationConfig, SavedRegistration, Target, Transport,
};
pub use rng::{Rng, RngKey};
pub use transaction::{
    ClientEvent, ClientState, ClientTransaction, Kind, Pass, ServerEvent, ServerState,
    ServerTransaction, TimerConfig, TxKey, TxTimer,
};
pub use wheel::{TimerHandle, TimerWheel};

use calls::{Calls, Env, Hosts};
use context::{Context, Timer};
use hdrhistogram::Histogram;
use sipis_parser::{self as parser, parse, Message, Method, EMPTY_HEADER};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use transactions::{respond_salvaged, respond_stateless, Transactions, TxOwner};

/// The methods sipis handles (`Allow`).
const ALLOW: &[u8] = b"INVITE, ACK, CANCEL, BYE, OPTIONS, PRACK, UPDATE, INFO, REGISTER";

/// One shard's SIP engine. See the crate doc for how to drive it.
pub struct Engine {
    cfg: EngineConfig,
    ctx: Context,
    txs: Transactions,
    accounts: accounts::Accounts,
    registrar: registrar::Registrar,
    calls: Calls,
}

/// Lends the calls part what it uses of the others.
macro_rules! env {
    ($e:expr) => {
        &mut Env {
            ctx: &mut $e.ctx,
            txs: &mut $e.txs,
            accounts: &$e.accounts,
            devices: &$e.registrar,
        }
    };
}

impl Engine {
    /// A new engine; `now` anchors its timer wheel.
    pub fn new(cfg: EngineConfig, now: Instant) -> Engine {
        let hosts = Hosts {
            via: cfg.via.clone(),
            contact: cfg.contact_host.clone(),
            phone_contact: cfg.phone_contact_host.clone(),
            tcp: cfg.tcp_host.clone(),
            tls: cfg.tls_host.clone(),
        };
        let mut ctx = Context::keyed(cfg.seed, cfg.key, now);
        ctx.set_shard(cfg.shard);
        let nonce_key = ctx.rng.seed32();
        Engine {
            ctx,
            txs: Transactions::new(cfg.timers),
            accounts: accounts::Accounts::new(&cfg, now),
            registrar: registrar::Registrar::new(cfg.calls.clone(), nonce_key, now),
            calls: Calls::new(cfg.calls.clone(), hosts, cfg.timers),
            cfg,
        }
    }

    // ---- getters -------------------------------------------------------

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &Stats {
        &self.ctx.stats
    }

    /// Request round trips (send to final response), in microseconds.
    pub fn register_latency(&self) -> &Histogram<u64> {
        self.txs.latency()
    }

    /// The registration state of an account.
    pub fn account_status(&self, id: AccountId) -> Option<RegStatus> {
        self.accounts.get(id).map(|a| a.reg.status())
    }

    /// The account a Contact token routes to.
    pub fn account_by_token(&self, token: &[u8]) -> Option<AccountId> {
        self.accounts.by_token(token)
    }

    /// The persistent registration state of an account.
    pub fn saved_registration(&self, id: AccountId) -> Option<SavedRegistration> {
        self.accounts.get(id).map(|a| a.reg.saved())
    }

    /// Visits every account's registration state (for metrics gauges).
    pub fn for_each_status(&self, mut f: impl FnMut(AccountId, RegStatus)) {
        for (id, a) in self.accounts.iter() {
            f(id, a.reg.status());
        }
    }

    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// Transactions in flight (client, server).
    pub fn transaction_count(&self) -> (usize, usize) {
        self.txs.counts()
    }

    /// Calls in the pending-call map (waiting, up, or kept for late wakes).
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// Latency histograms of the call flow.
    pub fn call_latency(&self) -> &CallLatency {
        &self.calls.latency
    }

    /// An account's devices.
    pub fn devices(&self, now: Instant, account: AccountId) -> Vec<DeviceInfo> {
        self.registrar.infos(now, account)
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
        self.accounts
            .add(&mut self.ctx, &mut self.txs, now, cfg, saved);
    }

    /// Replaces an account's configuration; a changed password, registrar
    /// or expiry starts a fresh registration attempt (this is also how a
    /// failed account is revived).
    pub fn update_account(&mut self, now: Instant, cfg: AccountConfig) {
        self.accounts.update(&mut self.ctx, &mut self.txs, now, cfg);
    }

    /// Removes an account and its devices. A live binding is unregistered
    /// (Expires: 0) on the way out, best effort.
    pub fn remove_account(&mut self, now: Instant, id: AccountId) -> bool {
        self.registrar.forget(id);
        self.accounts.remove(&mut self.ctx, &mut self.txs, now, id)
    }

    /// Removes the binding of an account but keeps the account
    /// (REGISTER with Expires: 0).
    pub fn unregister(&mut self, now: Instant, id: AccountId) -> bool {
        self.accounts
            .unregister(&mut self.ctx, &mut self.txs, now, id)
    }

    /// Unregisters every bound account (graceful shutdown, if configured).
    pub fn unregister_all(&mut self, now: Instant) -> usize {
        let ids = self.accounts.registered();
        for &id in &ids {
            self.unregister(now, id);
        }
        ids.len()
    }

    /// Shutting down: every live binding is removed (`Expires: 0`), fast
    /// enough to be done within `within` — the REGISTER rate is raised to
    /// what that takes if the configured one is too slow. Returns how many
    /// unregistrations started; [`Engine::unregistrations_pending`] counts
    /// the ones not answered yet.
    pub fn unregister_all_within(&mut self, now: Instant, within: Duration) -> usize {
        let n = self.accounts.registered().len();
        let secs = within.as_secs_f64().max(0.1);
        let needed = (n as f64 / secs).ceil() as u32;
        self.accounts.raise_register_rate(needed);
        self.unregister_all(now)
    }

    /// Accounts whose unregistration is queued or in flight (shutdown
    /// progress). A scan of the shard's accounts: for shutdown, not the hot
    /// path.
    pub fn unregistrations_pending(&self) -> usize {
        self.accounts.unregistrations_pending()
    }

    /// Adds or replaces a device's push target (the admin API, or devices
    /// loaded from the store at start). Its SIP binding, if any, is kept.
    /// `false` for an unknown account.
    pub fn put_device(
        &mut self,
        account: AccountId,
        name: &str,
        provider: &str,
        prid: &str,
        param: Option<&str>,
    ) -> bool {
        if self.accounts.get(account).is_none() {
            return false;
        }
        self.registrar
            .put_device(account, name, provider, prid, param);
        true
    }

    /// Forgets a device (the admin API).
    pub fn remove_device(&mut self, account: AccountId, name: &str) -> bool {
        self.registrar.remove_device(account, name)
    }

    // ---- inputs ----------------------------------------------------------

    /// A datagram (or a framed stream message) arrived from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, flow: Flow, data: &[u8]) {
        self.ctx.stats.datagrams += 1;
        if data.iter().all(|b| matches!(b, b'\r' | b'\n')) {
            // A keep-alive: CRLF (or CRLFCRLF) that many UAs send over UDP
            // to hold their NAT binding open. Nothing to answer over UDP
            // (RFC 5626 §4.4.1 pongs only on streams), nothing wrong.
            self.ctx.stats.keepalives += 1;
            return;
        }
        let mut headers = [EMPTY_HEADER; 64];
        let msg = match parse(data, &mut headers) {
            Ok(m) => m,
            Err(error) => {
                self.ctx.stats.parse_errors += 1;
                self.ctx.events.push_back(Event::ParseError { from, error });
                // RFC 4475 §3.1.2: a 400 (505 for a version) wherever it
                // can be routed.
                let e = SipError::from(error);
                respond_salvaged(&mut self.ctx, data, from, flow, e.status(), e.reason());
                return;
            }
        };
        if msg.is_request() {
            self.handle_request(now, from, flow, &msg, data);
        } else {
            self.handle_response(now, from, flow, &msg, data);
        }
    }

    /// Sending to `dest` failed (ICMP unreachable, connection refused or
    /// reset): every client transaction towards it ends at once (RFC 3261
    /// §17.1.4) instead of retransmitting into the void until Timer F.
    pub fn handle_transport_error(&mut self, now: Instant, dest: SocketAddr) {
        for (slot, ev) in self.txs.client_transport_errors(now, dest) {
            self.after_client(now, slot, ev);
        }
        self.txs.server_transport_errors(&mut self.ctx, now, dest);
    }

    /// A TCP/TLS connection of the front closed or failed. The SIP
    /// bindings on it go at once (the push targets stay: the next call
    /// pushes those devices instead of writing into a dead socket, RFC 8599
    /// §4.1.2); its client transactions fail as on a transport error (a
    /// call's leg over it ends, the call goes on with the other devices,
    /// and a device that had not answered yet is pushed); its server
    /// transactions are dropped quietly (nothing can be answered on it).
    /// Cheap for any flow (a lookup per table when nothing is on it); a
    /// UDP flow never closes and is ignored.
    pub fn handle_flow_closed(&mut self, now: Instant, flow: Flow) {
        if !flow.is_stream() {
            return;
        }
        self.ctx.stats.flows_closed += 1;
        self.accounts
            .flow_closed(&mut self.ctx, &mut self.txs, now, flow);
        let dropped = self.registrar.flow_closed(flow);
        self.ctx.stats.flow_bindings_dropped += dropped as u64;
        for (slot, ev) in self.txs.flow_closed(&mut self.ctx, now, flow) {
            self.after_client(now, slot, ev);
        }
    }

    /// Deadlines up to `now` have passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((_, t)) = self.ctx.wheel.poll_expired(now) {
            match t {
                Timer::Client(slot, generation) => {
                    if let Some(ev) = self.txs.client_timeout(now, slot, generation) {
                        self.after_client(now, slot, ev);
                    }
                }
                Timer::Server(slot, generation) => {
                    self.txs
                        .server_timeout(&mut self.ctx, now, slot, generation)
                }
                Timer::Register(id) => self.accounts.on_timer(id),
                Timer::RateLimit => self.accounts.on_rate_timer(),
                Timer::Probe(i) => {
                    self.accounts
                        .on_probe_timer(&mut self.ctx, &mut self.txs, now, i)
                }
                Timer::Call(c, gen, which) => self.calls.on_timer(env!(self), now, c, gen, which),
            }
        }
        self.accounts.drain(&mut self.ctx, &mut self.txs, now);
        self.txs.shrink_if_idle();
    }

    /// Fresh OS entropy for the CSPRNG (the shell calls this now and then).
    pub fn handle_reseed(&mut self, key: RngKey) {
        self.ctx.rng.reseed(key);
    }

    /// What the mediator made of a push.
    pub fn handle_push_result(&mut self, now: Instant, outcome: PushOutcome) {
        let Some(wait) = self.calls.push_answered(&mut self.ctx, &outcome) else {
            return;
        };
        if outcome.result == PushResult::TokenDead {
            // A dead token is removed (APNs 410, FCM UNREGISTERED): the
            // device is no longer pushed, and the store forgets it.
            let account = outcome.account;
            if self.registrar.remove_device(account, &wait.device) {
                self.ctx.events.push_back(Event::DeviceRemoved {
                    account,
                    device: wait.device.to_string(),
                });
            }
        }
        self.calls
            .push_result(env!(self), now, wait, outcome.result);
    }

    // ---- outputs -----------------------------------------------------------

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.ctx.transmits.pop_front()
    }

    /// The next deadline: call [`Engine::handle_timeout`] then.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.ctx.wheel.next_deadline()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.ctx.events.pop_front()
    }

    /// The next push for the mediator.
    pub fn poll_push(&mut self) -> Option<Push> {
        self.calls.poll_push()
    }

    // ---- routing -------------------------------------------------------------

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
            self.ctx.stats.parse_errors += 1;
            self.ctx
                .events
                .push_back(Event::ParseError { from, error: e });
            // RFC 3261 §8.2: answer what can be answered; never answer an ACK.
            if method != Method::Ack {
                let e = SipError::from(e);
                respond_stateless(
                    &mut self.ctx,
                    msg,
                    from,
                    flow,
                    e.status(),
                    e.reason(),
                    |_| {},
                );
            }
            return;
        }
        if method != Method::Ack {
            if let Some((e, unsupported)) = core_check(msg) {
                return respond_stateless(
                    &mut self.ctx,
                    msg,
                    from,
                    flow,
                    e.status(),
                    e.reason(),
                    |w| {
                        if !unsupported.is_empty() {
                            w.header("Unsupported", unsupported.as_bytes());
                        }
                    },
                );
            }
        }
        let Ok(key) = TxKey::server(msg) else {
            return;
        };
        if self
            .txs
            .absorb(&mut self.ctx, now, &key, method == Method::Ack)
        {
            return;
        }
        if method == Method::Ack {
            // An ACK for a 2xx (end to end) or for a transaction long gone.
            return self.calls.call_ack(env!(self), now, msg);
        }
        let in_dialog = msg.to().ok().and_then(|t| t.tag()).is_some();
        if method == Method::Options && !in_dialog {
            // A keep-alive or capability probe: answered at once and
            // forgotten (a retransmission gets the same answer again), so a
            // flood of them holds no memory.
            self.ctx.stats.options += 1;
            return respond_stateless(&mut self.ctx, msg, from, flow, 200, "OK", |w| {
                w.header("Allow", ALLOW);
            });
        }
        if self.txs.counts().1 >= self.cfg.max_server_transactions {
            self.ctx.stats.overloaded += 1;
            let e = SipError::Overloaded;
            return respond_stateless(
                &mut self.ctx,
                msg,
                from,
                flow,
                e.status(),
                e.reason(),
                |w| e.write_headers(w),
            );
        }
        let kind = if method == Method::Invite {
            Kind::Invite
        } else {
            Kind::NonInvite
        };
        let slot = self
            .txs
            .open_server(&mut self.ctx, now, key, kind, from, flow);
        self.ctx.stats.server_tx += 1;
        // The transaction user.
        match method {
            Method::Cancel => self.calls.incoming_cancel(env!(self), now, msg, slot),
            _ if in_dialog => self.calls.in_dialog(env!(self), now, from, msg, data, slot),
            Method::Register => {
                let up = self.registrar.register(
                    &mut self.ctx,
                    &mut self.txs,
                    &self.accounts,
                    now,
                    from,
                    flow,
                    msg,
                    slot,
                );
                // The app is up: calls waiting for it go out now, late
                // wakes too.
                if let Some((account, devices)) = up {
                    for name in devices {
                        self.calls.device_ready(env!(self), now, account, &name);
                    }
                }
            }
            Method::Invite => {
                self.calls
                    .incoming_invite(env!(self), now, from, flow, msg, data, slot)
            }
            Method::Options => self
                .txs
                .reply(&mut self.ctx, now, slot, msg, 200, "OK", |w| {
                    w.header(
                        "Allow",
                        b"INVITE, ACK, CANCEL, BYE, OPTIONS, PRACK, UPDATE, INFO, REGISTER",
                    );
                }),
            Method::Bye | Method::Prack | Method::Update | Method::Info => {
                self.txs
                    .reply_error(&mut self.ctx, now, slot, msg, SipError::NoSuchCall)
            }
            _ => self
                .txs
                .reply_error(&mut self.ctx, now, slot, msg, SipError::NotImplemented),
        }
    }

    fn handle_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        flow: Flow,
        msg: &Message<'_, '_>,
        data: &[u8],
    ) {
        let Some((slot, owner, pass)) = self.txs.on_response(now, from, flow, msg) else {
            self.ctx.stats.stray_responses += 1;
            return;
        };
        if pass == Pass::Deliver {
            match owner {
                TxOwner::Register(id) if msg.status().unwrap_or(0) >= 200 => self
                    .accounts
                    .on_response(&mut self.ctx, &mut self.txs, now, id, msg),
                TxOwner::Leg(c, gen, leg) => {
                    self.calls
                        .leg_response(env!(self), now, c, gen, leg, msg, data)
                }
                TxOwner::Relay(r) => self.calls.relay_response(env!(self), now, r, msg, data),
                TxOwner::Probe(i) if msg.status().unwrap_or(0) >= 200 => {
                    let code = msg.status().unwrap_or(0);
                    self.accounts
                        .on_probe_response(&mut self.ctx, &mut self.txs, now, i, code)
                }
                _ => {}
            }
        }
        self.after_client(now, slot, None);
    }

    /// Sends what a client transaction wants sent, tells its owner about a
    /// failure, and removes it once terminated (telling the owner that too).
    fn after_client(&mut self, now: Instant, slot: usize, ev: Option<ClientEvent>) {
        let Some(owner) = self.txs.flush_client(&mut self.ctx, slot) else {
            return;
        };
        // No answer at all (Timer B/F) or the transport refused the
        // request (RFC 3261 §17.1.4): the owner learns its request failed.
        if let Some(ev @ (ClientEvent::Timeout | ClientEvent::TransportError)) = ev {
            self.ctx.stats.client_tx_timeouts += u64::from(ev == ClientEvent::Timeout);
            match owner {
                TxOwner::Register(id) => {
                    let error = if ev == ClientEvent::Timeout {
                        RegError::Timeout
                    } else {
                        RegError::TransportError
                    };
                    self.accounts
                        .on_failure(&mut self.ctx, &mut self.txs, now, id, error)
                }
                TxOwner::Leg(c, gen, leg) => {
                    self.calls.leg_failed(env!(self), now, c, gen, leg, ev)
                }
                TxOwner::Relay(r) => self.calls.relay_failed(env!(self), now, r),
                TxOwner::Probe(i) => {
                    let error = if ev == ClientEvent::Timeout {
                        RegError::Timeout
                    } else {
                        RegError::TransportError
                    };
                    self.accounts.on_probe_failure(&mut self.ctx, now, i, error)
                }
                TxOwner::None => {}
            }
        }
        match self.txs.settle_client(&mut self.ctx, slot) {
            Some(TxOwner::Register(id)) => self.accounts.tx_ended(id, slot),
            Some(TxOwner::Relay(r)) => self.calls.relay_done(&mut self.ctx, r),
            _ => {}
        }
    }
}

/// Option tags sipis can honour in a `Require` (RFC 3261 §8.2.2.3): it
/// relays reliable provisionals, session timers, Replaces and
/// preconditions end to end, and takes outbound/path/gruu registrations.
const SUPPORTED: [&str; 7] = [
    "100rel",
    "timer",
    "replaces",
    "precondition",
    "outbound",
    "path",
    "gruu",
];

/// The UAS core's checks before a request reaches a transaction user
/// (RFC 3261 §8.2.2): a Request-URI scheme sipis does not serve gets 416,
/// a `Require` it cannot honour 420 with the tags to list in `Unsupported`
/// (the caller skips ACK; a CANCEL's Require is ignored).
fn core_check(msg: &Message<'_, '_>) -> Option<(SipError, String)> {
    let uri = msg.uri().ok()?;
    if matches!(uri.scheme, parser::Scheme::Other(_)) {
        return Some((SipError::UnsupportedUriScheme, String::new()));
    }
    if msg.method() == Some(Method::Cancel) {
        return None;
    }
    let mut unsupported = msg
        .require()
        .filter_map(Result::ok)
        .filter(|t| !SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(t)))
        .peekable();
    unsupported.peek()?;
    let tags = unsupported.collect::<Vec<_>>().join(", ");
    Some((SipError::BadExtension, tags))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(require: &str) -> Option<(SipError, String)> {
        let req = format!(
            "REGISTER sip:voip.example SIP/2.0\r\n\
             Via: SIP/2.0/TCP 203.0.113.9:40000;branch=z9hG4bKr1\r\n\
             From: <sip:alice@voip.example>;tag=ph1\r\nTo: <sip:alice@voip.example>\r\n\
             Call-ID: reg-1@phone\r\nCSeq: 1 REGISTER\r\n{require}\
             Contact: <sip:alice@10.0.0.5;transport=tcp>;+sip.instance=\"<urn:uuid:1>\";reg-id=1\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let mut h = [EMPTY_HEADER; 32];
        core_check(&parse(req.as_bytes(), &mut h).unwrap())
    }

    #[test]
    fn outbound_and_path_are_honoured_in_require() {
        assert!(check("").is_none());
        assert!(check("Require: outbound\r\n").is_none());
        assert!(check("Require: path, outbound\r\n").is_none());
        let (e, tags) = check("Require: outbound, foo\r\n").unwrap();
        assert_eq!((e.status(), tags.as_str()), (420, "foo"));
    }
}
