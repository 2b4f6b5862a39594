//! The accounts of a shard and their registrations on behalf (upstream):
//! lookups by id, Contact token and AOR, the REGISTER send queue and its
//! rate limiter, and the wheel timer of each account's next REGISTER.
//!
//! Each account's registration state machine (digest, refresh, back-off,
//! 423) is a [`Registration`]; this part schedules it and turns what it
//! wants into REGISTER transactions.

use crate::config::EngineConfig;
use crate::context::{Context, Timer};
use crate::output::{Event, Flow};
use crate::registration::{
    AccountConfig, AccountId, Next, RegError, RegStatus, Registrar, Registration,
    RegistrationConfig, SavedRegistration, Target, Transport,
};
use crate::transaction::{Kind, TxKey};
use crate::transactions::{Transactions, TxOwner};
use crate::wheel::TimerHandle;
use sipis_parser::{Message, Method, Uri};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// `a:user@host`, host lower-cased (host names are case-insensitive, user
/// parts are not: RFC 3261 §19.1.4). The key of every AOR lookup: the
/// engine's and the shell's router alike.
pub fn aor_key(uri: &Uri<'_>) -> Option<Box<[u8]>> {
    let user = uri.user?;
    let mut k = Vec::with_capacity(user.len() + uri.host_raw.len() + 3);
    k.extend_from_slice(b"a:");
    k.extend_from_slice(user);
    k.push(b'@');
    k.extend(uri.host_raw.iter().map(u8::to_ascii_lowercase));
    Some(k.into_boxed_slice())
}

/// The AOR key of an account's configured AOR text.
pub fn aor_key_of(aor: &str) -> Option<Box<[u8]>> {
    aor_key(&Uri::parse(aor.as_bytes()).ok()?)
}

/// Whether two configurations of an account differ only in their
/// registrar's resolved targets.
fn same_but_targets(a: &AccountConfig, b: &AccountConfig) -> bool {
    match (&a.registrar, &b.registrar) {
        (Some(x), Some(y)) => {
            x.uri == y.uri
                && x.outbound_proxy == y.outbound_proxy
                && AccountConfig {
                    registrar: None,
                    ..a.clone()
                } == AccountConfig {
                    registrar: None,
                    ..b.clone()
                }
        }
        _ => false,
    }
}

/// One account.
pub(crate) struct Account {
    pub cfg: AccountConfig,
    pub reg: Registration,
    /// The wheel timer of its next REGISTER.
    timer: Option<TimerHandle>,
    /// The REGISTER transaction in flight.
    tx: Option<usize>,
    /// Whether it sits in the send queue.
    queued: bool,
}

impl Account {
    /// Where its REGISTERs go now (its registrar's current target).
    fn target(&self) -> Option<Target> {
        let reg = self.cfg.registrar.as_ref()?;
        reg.targets
            .get(self.reg.target())
            .or_else(|| reg.targets.first())
            .copied()
    }
}

/// What the accounts part needs of the engine's configuration.
struct Settings {
    via: String,
    contact_host: String,
    /// The phones' TCP and TLS listeners (which also take the provider's
    /// requests): Via and Contact of REGISTERs over a connection.
    tcp_host: String,
    tls_host: String,
    shard: u16,
    register_rate: u32,
    register_burst: u32,
    registration: RegistrationConfig,
    max_client_transactions: usize,
}

/// The accounts of one shard.
pub(crate) struct Accounts {
    settings: Settings,
    /// Boxed: the table then holds 16-byte slots, so its power-of-two
    /// growth does not leave hundreds of bytes empty per account.
    accounts: HashMap<AccountId, Box<Account>>,
    by_token: HashMap<Box<str>, AccountId>,
    /// AOR key → account (phones registering, proxy-mode calls).
    by_aor: HashMap<Box<[u8]>, AccountId>,
    /// Accounts waiting for a REGISTER slot, served in order.
    send_queue: VecDeque<AccountId>,
    /// GCRA theoretical arrival time of the next REGISTER.
    rate_tat: Instant,
    rate_timer: Option<TimerHandle>,
    /// The connections to registrars and proxies this shard opened, by
    /// destination: every account registering there shares one.
    upstream: HashMap<(SocketAddr, Transport), Flow>,
    next_conn: u64,
    /// The registrars this shard's accounts register at, and whether they
    /// answer ([`Health`]); indexed by the address REGISTERs go to.
    health: Vec<Health>,
    health_ix: HashMap<SocketAddr, u32>,
}

/// What a shard knows of one registrar (or outbound proxy): whether it
/// answers. A REGISTER that times out, fails in transport or gets a 5xx
/// marks it down: the accounts registered there stop saying `Registered`.
/// A silent one is probed with OPTIONS every `probe_interval`; its first
/// answer (to a probe or to any REGISTER) marks it up again and every
/// account bound there registers again at once, at the REGISTER rate — a
/// registrar that restarted has usually lost its bindings. One that
/// answers 5xx is up again when it accepts a REGISTER (its accounts' own
/// back-off and Retry-After keep probing it gently).
struct Health {
    addr: SocketAddr,
    /// Request-URI of the probes (a registrar URI of its accounts).
    uri: Box<str>,
    transport: Transport,
    server_name: Option<Box<str>>,
    down_since: Option<Instant>,
    /// Down because it answers 5xx (alive but refusing): only a REGISTER
    /// it accepts brings it back — an OPTIONS answer does not, so the
    /// accounts' back-off and Retry-After hold.
    refusing: bool,
    probe_timer: Option<TimerHandle>,
    /// An OPTIONS is in flight.
    probing: bool,
}

impl Accounts {
    pub fn new(cfg: &EngineConfig, now: Instant) -> Accounts {
        Accounts {
            settings: Settings {
                via: cfg.via.clone(),
                contact_host: cfg.contact_host.clone(),
                tcp_host: cfg.tcp_host.clone(),
                tls_host: cfg.tls_host.clone(),
                shard: cfg.shard,
                register_rate: cfg.register_rate,
                register_burst: cfg.register_burst,
                registration: cfg.registration.clone(),
                max_client_transactions: cfg.max_client_transactions,
            },
            accounts: HashMap::new(),
            by_token: HashMap::new(),
            by_aor: HashMap::new(),
            send_queue: VecDeque::new(),
            rate_tat: now,
            rate_timer: None,
            upstream: HashMap::new(),
            next_conn: 0,
            health: Vec::new(),
            health_ix: HashMap::new(),
        }
    }

    // ---- lookups ------------------------------------------------------------

    pub fn get(&self, id: AccountId) -> Option<&Account> {
        self.accounts.get(&id).map(|a| &**a)
    }

    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (AccountId, &Account)> {
        self.accounts.iter().map(|(id, a)| (*id, &**a))
    }

    /// The account a Contact token routes to.
    pub fn by_token(&self, token: &[u8]) -> Option<AccountId> {
        std::str::from_utf8(token)
            .ok()
            .and_then(|t| self.by_token.get(t))
            .copied()
    }

    /// The account whose AOR is `uri`.
    pub fn by_aor(&self, uri: &Uri<'_>) -> Option<AccountId> {
        aor_key(uri).and_then(|k| self.by_aor.get(&k).copied())
    }

    /// The account an incoming request is for: its Request-URI user is an
    /// account's Contact token (the provider calling), else its
    /// Request-URI or To names the AOR of an account in proxy mode (no
    /// registrar: calls reach sipis by routing).
    pub fn of_request(&self, msg: &Message<'_, '_>) -> Option<AccountId> {
        let uri = msg.uri().ok()?;
        if let Some(id) = uri.user.and_then(|u| self.by_token(u)) {
            return Some(id);
        }
        let proxy = |id: &AccountId| {
            self.accounts
                .get(id)
                .is_some_and(|a| a.cfg.registrar.is_none())
        };
        if let Some(id) = self.by_aor(&uri).filter(proxy) {
            return Some(id);
        }
        self.by_aor(&msg.to().ok()?.uri).filter(proxy)
    }

    // ---- provisioning ---------------------------------------------------------

    /// Adds an account, or updates it if the id exists; its first REGISTER
    /// goes out through the rate limiter.
    pub fn add(
        &mut self,
        ctx: &mut Context,
        txs: &mut Transactions,
        now: Instant,
        cfg: AccountConfig,
        saved: Option<SavedRegistration>,
    ) {
        if self.accounts.contains_key(&cfg.id) {
            return self.update(ctx, txs, now, cfg);
        }
        let reg = Registration::new(
            &cfg,
            saved.as_ref(),
            &self.settings.contact_host,
            &mut ctx.rng,
        );
        let id = cfg.id;
        self.by_token.insert(cfg.token.clone().into_boxed_str(), id);
        if let Some(k) = aor_key_of(&cfg.aor) {
            self.by_aor.insert(k, id);
        }
        let wants = cfg.registrar.is_some();
        self.accounts.insert(
            id,
            Box::new(Account {
                cfg,
                reg,
                timer: None,
                tx: None,
                queued: false,
            }),
        );
        if wants {
            self.enqueue(id, false);
            self.drain(ctx, txs, now);
        }
    }

    /// Replaces an account's configuration; a changed password, registrar
    /// or expiry starts a fresh registration attempt.
    pub fn update(
        &mut self,
        ctx: &mut Context,
        txs: &mut Transactions,
        now: Instant,
        cfg: AccountConfig,
    ) {
        let id = cfg.id;
        let Some(a) = self.accounts.get_mut(&id) else {
            return self.add(ctx, txs, now, cfg, None);
        };
        if a.cfg == cfg {
            return;
        }
        if let (Some(old), Some(new)) = (&a.cfg.registrar, &cfg.registrar) {
            if old.targets != new.targets && same_but_targets(&a.cfg, &cfg) {
                // DNS re-resolved: no new attempt, the next REGISTER goes
                // to the new target list.
                a.reg.retarget(&old.targets, &new.targets);
                a.cfg = cfg;
                return;
            }
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
        self.status_event(ctx, id, before);
        self.schedule(ctx, txs, now, id, next);
    }

    /// Removes an account; a live binding is unregistered (Expires: 0) on
    /// the way out, best effort.
    pub fn remove(
        &mut self,
        ctx: &mut Context,
        txs: &mut Transactions,
        now: Instant,
        id: AccountId,
    ) -> bool {
        let Some(mut a) = self.accounts.remove(&id) else {
            return false;
        };
        self.by_token.remove(a.cfg.token.as_str());
        if let Some(k) = aor_key_of(&a.cfg.aor) {
            self.by_aor.remove(&k);
        }
        ctx.cancel(a.timer.take());
        if let Some(tx) = a.tx.take() {
            txs.disown_client(tx);
        }
        if matches!(a.reg.status(), RegStatus::Registered { .. }) {
            a.reg.unregister();
            self.send_register(ctx, txs, now, &mut a, TxOwner::None);
        }
        true
    }

    /// Removes an account's binding but keeps the account.
    pub fn unregister(
        &mut self,
        ctx: &mut Context,
        txs: &mut Transactions,
        now: Instant,
        id: AccountId,
    ) -> bool {
        let Some(a) = self.accounts.get_mut(&id) else {
            return false;
        };
        let next = a.reg.unregister();
        self.schedule(ctx, txs, now, id, next);
        true
    }

    /// Raises the REGISTER rate to at least `rate` per second (shutdown).
    pub fn raise_register_rate(&mut self, rate: u32) {
        self.settings.register_rate = self.settings.register_rate.max(rate);
        self.settings.register_burst = self.settings.register_burst.max(rate / 10);
    }

    /// Accounts unregistering: queued or in flight.
    pub fn unregistrations_pending(&self) -> usize {
        self.accounts
            .values()
            .filter(|a| !a.reg.wants_binding() && (a.queued || a.tx.is_some()))
            .count()
    }

    /// The accounts whose binding is live.
    pub fn registered(&self) -> Vec<AccountId> {
        self.accounts
            .iter()
            .filter(|(_, a)| matches!(a.reg.status(), RegStatus::Registered { .. }))
            .map(|(id, _)| *id)
            .collect()
    }

    // ---- inputs ---------------------------------------------------------------

    /// The final (or challenging) response to an account's REGISTER.
    pub fn on_response(
        &mut self,
        ctx: &mut Context,
        txs: &mut Transactions,
        now: Instant,
        id: AccountId,
        msg: &Message<'_, '_>,
    ) {
        let Some(a) = self.accounts.get_mut(&id) else {
            return;
        };
        a.tx = None;
        let target = a.target().map(|t| t.addr);
        let before = a.reg.status();
        let next = a
            .reg
            .on_response(now, &a.cfg, &self.settings.registration, msg, &mut ctx.rng);
        match a.reg.status() {
            RegStatus::Registered { .. } => {
                ctx.stats.register_ok += 1;
                // The granted lifetime is part of what a restart restores.
                ctx.events.push_back(Event::SaveRegistration {
                    account: id,
                    saved: a.reg.saved(),
                });
            }
            RegStatus::Failed { .. } | RegStatus::Retrying { .. } => ctx.stats.register_failed += 1,
            _ => {}
        }
        self.status_event(ctx, id, before);
        self.schedule(ctx, txs, now, id, next);
        if let Some(addr) = target {
            match msg.status().unwrap_or(0) {
                code @ 500..=599 => self.registrar_failed(ctx, now, addr, RegError::Status(code)),
                _ => self.registrar_answered(ctx, txs, now, addr),
            }
        }
    }

    /// An account's REGISTER got no answer or could not be sent.
    pub fn on_failure(
        &mut self,
        ctx: &mut Context,
        txs: &mut Transactions,
        now: Instant,
        id: AccountId,
        error: RegError,
    ) {
        let Some(a) = self.accounts.get_mut(&id) else {
            return;
        };
        a.tx = None;
        let target = a.target().map(|t| t.addr);
        let before = a.reg.status();
        let next = a.reg.on_failure(
            now,
            &a.cfg,
            &self.settings.registration,
            error,
            &mut ctx.rng,
        );
        ctx.stats.register_failed += 1;
        self.status_event(ctx, id, before);
        self.schedule(ctx, txs, now, id, next);
        if let Some(addr) = target {
            self.registrar_failed(ctx, now, addr, error);
        }
    }

    // ---- registrar health ---------------------------------------------------------

    /// The registrar table's entry for target `addr` of `reg`, made if new.
    fn health_entry(
        &mut self,
        ctx: &mut Context,
        now: Instant,
        reg: &Registrar,
        addr: SocketAddr,
        transport: Transport,
    ) -> u32 {
        if let Some(&i) = self.health_ix.get(&addr) {
            return i;
        }
        let server_name = reg.transport().1;
        let uri = reg.outbound_proxy.as_deref().unwrap_or(&reg.uri);
        let i = self.health.len() as u32;
        self.health.push(Health {
            addr,
            uri: uri.into(),
            transport,
            server_name: server_name.map(Into::into),
            down_since: None,
            refusing: false,
            probe_timer: None,
            probing: false,
        });
        self.health_ix.insert(addr, i);
        if let Some(every) = self.settings.registration.keepalive {
            self.health[i as usize].probe_timer =
                Some(ctx.wheel.insert(now + every, Timer::Probe(i)));
        }
        i
    }

    /// A registrar did not answer (or answered 5xx): the first time, it is
    /// down — its registered accounts are doubted and probing starts.
    fn registrar_failed(
        &mut self,
        ctx: &mut Context,
        now: Instant,
        addr: SocketAddr,
        error: RegError,
    ) {
        let Some(&i) = self.health_ix.get(&addr) else {
            return;
        };
        let h = &mut self.health[i as usize];
        let refusing = matches!(error, RegError::Status(_));
        if h.down_since.is_some() {
            h.refusing = refusing;
            return;
        }
        h.down_since = Some(now);
        h.refusing = refusing;
        ctx.cancel(h.probe_timer.take());
        if !refusing {
            // Silent: probe until it answers. A refusing one is probed by
            // its accounts' own retries.
            h.probe_timer = Some(ctx.wheel.insert(
                now + self.settings.registration.probe_interval,
                Timer::Probe(i),
            ));
        }
        ctx.stats.registrar_outages += 1;
        let mut doubted = 0;
        for (id, a) in self.accounts.iter_mut() {
            if a.target().is_some_and(|t| t.addr == addr) && a.reg.doubt(error) {
                doubted += 1;
                ctx.events.push_back(Event::Registration {
                    account: *id,
                    status: a.reg.status(),
                });
            }
        }
        ctx.events.push_back(Event::RegistrarDown {
            addr,
            error,
            accounts: doubted,
        });
    }

    /// A registrar answered: if it was down, it is up again and every
    /// account waiting on it registers again now (at the queue's pace).
    fn registrar_answered(
        &mut self,
        ctx: &mut Context,
        txs: &mut Transactions,
        now: Instant,
        addr: SocketAddr,
    ) {
        let Some(&i) = self.health_ix.get(&addr) else {
            return;
        };
        let keepalive = self.settings.registration.keepalive;
        let h = &mut self.health[i as usize];
        let Some(since) = h.down_since.take() else {
            return;
        };
        h.refusing = false;
        ctx.cancel(h.probe_timer.take());
        if let Some(every) = keepalive {
            h.probe_timer = Some(ctx.wheel.insert(now + every, Timer::Probe(i)));
        }
        ctx.stats.registrar_recoveries += 1;
        let again: Vec<AccountId> = self
            .accounts
            .iter()
            .filter(|(_, a)| {
                a.tx.is_none() && a.reg.wants_retry() && a.target().is_some_and(|t| t.addr == addr)
            })
            .map(|(id, _)| *id)
            .collect();
        ctx.events.push_back(Event::RegistrarUp {
            addr,
            down_for: now.saturating_duration_since(since),
            accounts: again.len(),
        });
        for id in again {
            if let Some(a) = self.accounts.get_mut(&id) {
                ctx.cancel(a.timer.take());
            }
            self.enqueue(id, false);
        }
        self.drain(ctx, txs, now);
    }

    /// A registrar's probe timer: send an OPTIONS (while it is down, or as
    /// the keep-alive while it is up).
    pub fn on_probe_timer(
        &mut self,
        ctx: &mut Context,
        txs: &mut Transactions,
        now: Instant,
        i: u32,
    ) {
        let Some(h) = self.health.get_mut(i as usize) else {
            return;
        };
        h.probe_timer = None;
        if h.probing {
            return;
        }
        let (addr, transport) = (h.addr, h.transport);
        let server_name = h.server_name.as_deref().map(str::to_owned);
        let flow = match transport {
            Transport::Udp => Flow::Udp,
            Transport::Tcp | Transport::Tls => {
                self.upstream_flow(ctx, addr, transport, server_name)
            }
        };
        let s = &self.settings;
        let via = match transport {
            Transport::Udp => &s.via,
            Transport::Tcp => &s.tcp_host,
            Transport::Tls => &s.tls_host,
        };
        let h = &self.health[i as usize];
        let branch = ctx.new_branch();
        let mut tag = String::with_capacity(12);
        ctx.rng.hex_into(&mut tag, 12);
        let mut call_id = String::with_capacity(32);
        ctx.rng.hex_into(&mut call_id, 32);
        ctx.buf.clear();
        let mut w = sipis_parser::Writer::request(&mut ctx.buf, Method::Options, h.uri.as_bytes());
        let tname = match transport {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        };
        w.via(tname, via, branch.as_bytes(), true);
        w.header("Max-Forwards", b"70");
        w.header_with("From", |o| {
            o.extend_from_slice(b"<sip:sipis@");
            o.extend_from_slice(via.as_bytes());
            o.extend_from_slice(b">;tag=");
            o.extend_from_slice(tag.as_bytes());
        });
        w.header_with("To", |o| {
            o.extend_from_slice(b"<");
            o.extend_from_slice(h.uri.as_bytes());
            o.extend_from_slice(b">");
        });
        w.header("Call-ID", call_id.as_bytes());
        w.header("CSeq", b"1 OPTIONS");
        w.header("User-Agent", s.registration.user_agent.as_bytes());
        w.finish(b"");
        let bytes = ctx.buf.split().freeze();
        let key = TxKey::for_request(branch.as_bytes(), via.as_bytes(), Method::Options);
        ctx.stats.registrar_probes += 1;
        txs.start_client(
            ctx,
            now,
            bytes,
            key,
            addr,
            flow,
            Kind::NonInvite,
            TxOwner::Probe(i),
        );
        self.health[i as usize].probing = true;
    }

    /// The answer to a probe: any answer but a 5xx means the registrar is
    /// there.
    pub fn on_probe_response(
        &mut self,
        ctx: &mut Context,
        txs: &mut Transactions,
        now: Instant,
        i: u32,
        code: u16,
    ) {
        let Some(h) = self.health.get_mut(i as usize) else {
            return;
        };
        h.probing = false;
        let addr = h.addr;
        if h.refusing {
            // It answers but refuses REGISTERs: only an accepted REGISTER
            // ends that.
            return;
        }
        if (500..600).contains(&code) {
            self.registrar_failed(ctx, now, addr, RegError::Status(code));
            self.probe_later(ctx, now, i);
        } else {
            self.registrar_answered(ctx, txs, now, addr);
            if self.health[i as usize].probe_timer.is_none() {
                self.probe_later(ctx, now, i);
            }
        }
    }

    /// A probe got no answer.
    pub fn on_probe_failure(&mut self, ctx: &mut Context, now: Instant, i: u32, error: RegError) {
        let Some(h) = self.health.get_mut(i as usize) else {
            return;
        };
        h.probing = false;
        let addr = h.addr;
        self.registrar_failed(ctx, now, addr, error);
        self.probe_later(ctx, now, i);
    }

    /// Arms the next probe: soon while down, at the keep-alive interval
    /// while up (if on).
    fn probe_later(&mut self, ctx: &mut Context, now: Instant, i: u32) {
        let rc = &self.settings.registration;
        let h = &mut self.health[i as usize];
        let every = match h.down_since {
            Some(_) if h.refusing => None,
            Some(_) => Some(rc.probe_interval),
            None => rc.keepalive,
        };
        ctx.cancel(h.probe_timer.take());
        if let Some(every) = every {
            h.probe_timer = Some(ctx.wheel.insert(now + every, Timer::Probe(i)));
        }
    }

    /// The REGISTER transaction in `slot` is over.
    pub fn tx_ended(&mut self, id: AccountId, slot: usize) {
        if let Some(a) = self.accounts.get_mut(&id) {
            if a.tx == Some(slot) {
                a.tx = None;
            }
        }
    }

    /// An account's REGISTER timer fired: it joins the send queue.
    pub fn on_timer(&mut self, id: AccountId) {
        if let Some(a) = self.accounts.get_mut(&id) {
            a.timer = None;
            self.enqueue(id, false);
        }
    }

    /// The rate limiter's timer fired.
    pub fn on_rate_timer(&mut self) {
        self.rate_timer = None;
    }

    // ---- scheduling -------------------------------------------------------------

    fn schedule(
        &mut self,
        ctx: &mut Context,
        txs: &mut Transactions,
        now: Instant,
        id: AccountId,
        next: Next,
    ) {
        let Some(a) = self.accounts.get_mut(&id) else {
            return;
        };
        ctx.cancel(a.timer.take());
        match next {
            Next::Idle => {}
            Next::SendNow => {
                self.enqueue(id, true);
                self.drain(ctx, txs, now);
            }
            Next::SendAt(at) => a.timer = Some(ctx.wheel.insert(at, Timer::Register(id))),
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
    pub fn drain(&mut self, ctx: &mut Context, txs: &mut Transactions, now: Instant) {
        let interval = Duration::from_secs(1) / self.settings.register_rate.max(1);
        let tolerance = interval * self.settings.register_burst.saturating_sub(1);
        while let Some(&id) = self.send_queue.front() {
            if txs.counts().0 >= self.settings.max_client_transactions {
                // The transaction table is full: the queue waits (the
                // engine drains it again at every timeout).
                return;
            }
            let tat = self.rate_tat.max(now);
            if tat > now + tolerance {
                if self.rate_timer.is_none() {
                    self.rate_timer = Some(ctx.wheel.insert(tat - tolerance, Timer::RateLimit));
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
                self.send_register(ctx, txs, now, &mut a, TxOwner::Register(id));
            }
            self.accounts.insert(id, a);
        }
    }

    fn send_register(
        &mut self,
        ctx: &mut Context,
        txs: &mut Transactions,
        now: Instant,
        a: &mut Account,
        owner: TxOwner,
    ) {
        let Some(reg) = a.cfg.registrar.as_ref() else {
            return;
        };
        let Some(&Target {
            addr: dest,
            transport,
        }) = reg
            .targets
            .get(a.reg.target())
            .or_else(|| reg.targets.first())
        else {
            return;
        };
        let server_name = reg.transport().1;
        self.health_entry(ctx, now, reg, dest, transport);
        let flow = match transport {
            Transport::Udp => Flow::Udp,
            Transport::Tcp | Transport::Tls => {
                self.upstream_flow(ctx, dest, transport, server_name)
            }
        };
        let branch = ctx.new_branch();
        ctx.buf.clear();
        let before = a.reg.status();
        let s = &self.settings;
        let (via, contact) = match transport {
            Transport::Udp => (&s.via, &s.contact_host),
            Transport::Tcp => (&s.tcp_host, &s.tcp_host),
            Transport::Tls => (&s.tls_host, &s.tls_host),
        };
        if a.reg
            .write_register(
                &a.cfg,
                transport,
                via,
                contact,
                &branch,
                &s.registration.user_agent,
                &mut ctx.buf,
            )
            .is_err()
        {
            return;
        }
        let bytes = ctx.buf.split().freeze();
        let key = TxKey::for_request(branch.as_bytes(), via.as_bytes(), Method::Register);
        ctx.stats.registers_sent += 1;
        if let TxOwner::Register(id) = owner {
            ctx.events.push_back(Event::SaveRegistration {
                account: id,
                saved: a.reg.saved(),
            });
            if before != a.reg.status() {
                ctx.events.push_back(Event::Registration {
                    account: id,
                    status: a.reg.status(),
                });
            }
        }
        let slot = txs.start_client(ctx, now, bytes, key, dest, flow, Kind::NonInvite, owner);
        if matches!(owner, TxOwner::Register(_)) {
            a.tx = Some(slot);
        }
    }

    /// The connection to `dest` over `transport`, asked of the shell the
    /// first time (its id carries this shard in its low byte and bit 8
    /// set: the front's accepted connections never have it).
    fn upstream_flow(
        &mut self,
        ctx: &mut Context,
        dest: SocketAddr,
        transport: Transport,
        server_name: Option<String>,
    ) -> Flow {
        if let Some(f) = self.upstream.get(&(dest, transport)) {
            return *f;
        }
        self.next_conn += 1;
        let id = (self.next_conn << 9) | 0x100 | u64::from(self.settings.shard & 0xff);
        let flow = if transport == Transport::Tls {
            Flow::Tls(id)
        } else {
            Flow::Tcp(id)
        };
        self.upstream.insert((dest, transport), flow);
        ctx.events.push_back(Event::Connect {
            flow,
            dest,
            server_name,
        });
        flow
    }

    /// A connection closed: if it was one of ours to a registrar, the next
    /// REGISTER opens a new one, and every account registered over it
    /// registers again now (at the queue's pace: its binding may have gone
    /// with the connection, RFC 5626 §4.4).
    pub fn flow_closed(
        &mut self,
        ctx: &mut Context,
        txs: &mut Transactions,
        now: Instant,
        flow: Flow,
    ) {
        let gone: Vec<(SocketAddr, Transport)> = self
            .upstream
            .iter()
            .filter(|(_, f)| **f == flow)
            .map(|(k, _)| *k)
            .collect();
        if gone.is_empty() {
            return;
        }
        for k in &gone {
            self.upstream.remove(k);
        }
        let again: Vec<AccountId> = self
            .accounts
            .iter()
            .filter(|(_, a)| {
                a.tx.is_none()
                    && matches!(a.reg.status(), RegStatus::Registered { .. })
                    && a.cfg
                        .registrar
                        .as_ref()
                        .and_then(|r| r.targets.get(a.reg.target()))
                        .is_some_and(|t| gone.contains(&(t.addr, t.transport)))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in again {
            if let Some(a) = self.accounts.get_mut(&id) {
                ctx.cancel(a.timer.take());
            }
            self.enqueue(id, false);
        }
        self.drain(ctx, txs, now);
    }

    fn status_event(&self, ctx: &mut Context, id: AccountId, before: RegStatus) {
        if let Some(a) = self.accounts.get(&id) {
            let status = a.reg.status();
            if status != before {
                ctx.events.push_back(Event::Registration {
                    account: id,
                    status,
                });
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor a simulated clock
mod tests {
    use super::*;
    use crate::registration::{AccountSecret, Registrar};
    use crate::transaction::TimerConfig;

    fn account(id: AccountId) -> AccountConfig {
        AccountConfig {
            id,
            aor: format!("sip:user{id}@Provider.Example"),
            auth_user: format!("user{id}"),
            secret: AccountSecret::Password("pw".into()),
            registrar: Some(Registrar::new(
                "sip:provider.example",
                "192.0.2.10:5060".parse().unwrap(),
                None,
            )),
            expires: 3600,
            token: format!("tok{id}"),
        }
    }

    #[test]
    fn accounts_are_found_by_token_and_case_insensitive_host() {
        let now = Instant::now();
        let mut ctx = Context::new(1, now);
        let mut txs = Transactions::new(TimerConfig::default());
        let mut accts = Accounts::new(&EngineConfig::default(), now);
        accts.add(&mut ctx, &mut txs, now, account(5), None);
        assert_eq!(accts.by_token(b"tok5"), Some(5));
        assert_eq!(accts.by_token(b"tok6"), None);
        let uri = Uri::parse(b"sip:user5@provider.EXAMPLE").unwrap();
        assert_eq!(accts.by_aor(&uri), Some(5));
        // User parts are case-sensitive (RFC 3261 §19.1.4).
        let uri = Uri::parse(b"sip:USER5@provider.example").unwrap();
        assert_eq!(accts.by_aor(&uri), None);
        assert!(accts.remove(&mut ctx, &mut txs, now, 5));
        assert_eq!(accts.by_token(b"tok5"), None);
    }

    #[test]
    fn registers_leave_at_the_configured_rate_after_the_burst() {
        let now = Instant::now();
        let mut ctx = Context::new(1, now);
        let mut txs = Transactions::new(TimerConfig::default());
        let cfg = EngineConfig {
            register_rate: 10,
            register_burst: 3,
            ..EngineConfig::default()
        };
        let mut accts = Accounts::new(&cfg, now);
        for id in 0..10 {
            accts.add(&mut ctx, &mut txs, now, account(id), None);
        }
        // The burst goes at once, the rest waits for the limiter.
        assert_eq!(ctx.stats.registers_sent, 3);
        let mut sent_by = vec![];
        let mut t = now;
        for _ in 0..10 {
            t += Duration::from_millis(100);
            while let Some((_, timer)) = ctx.wheel.poll_expired(t) {
                if let Timer::RateLimit = timer {
                    accts.on_rate_timer();
                }
            }
            accts.drain(&mut ctx, &mut txs, t);
            sent_by.push(ctx.stats.registers_sent);
        }
        // One more every 100 ms (10/s) until all ten are out.
        assert_eq!(sent_by, vec![4, 5, 6, 7, 8, 9, 10, 10, 10, 10]);
        assert_eq!(txs.counts().0, 10);
    }
}
