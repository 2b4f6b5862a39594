//! The phones' side: sipis as the registrar of each account's devices
//! (RFC 3261 §10.3, RFC 8599 push parameters).
//!
//! A *device* is what a call can reach: a push target (RFC 8599
//! `pn-provider` + `pn-prid` + `pn-param`, which identify it — not the
//! phone's IP:port, which changes at every wake) and, while the app is
//! connected, a SIP *binding* (the address and flow its REGISTER came
//! from). The binding expires with the registration; the push target stays
//! until the phone unregisters explicitly, the operator removes it, or the
//! push service says the token is dead (RFC 8599 §4.1.2: the push binding
//! outlives the SIP one).
//!
//! A REGISTER is accepted only after a digest challenge with the account's
//! credentials (realm [`CallConfig::phone_realm`] for a password account,
//! the AOR's host for an HA1 account): nobody may hijack someone's calls.
//!
//! ## Flows (RFC 5626)
//!
//! A binding remembers the flow its REGISTER came on: over TCP/TLS that is
//! the phone's connection, the only way back through its NAT. When the
//! shell reports the connection closed ([`Registrar::flow_closed`]) every
//! binding on it goes at once — the push target stays — so the next call
//! pushes the device instead of writing into a dead socket. A binding
//! created on a connection, or moved to one, is reported as
//! [`Event::FlowBound`] so the shell keeps that connection open.
//!
//! A phone that supports outbound (`Supported: outbound`, a Contact with
//! `+sip.instance` and `reg-id`) and reaches sipis directly (one Via: sipis
//! is its first hop, RFC 5626 §6) over TCP/TLS gets `Require: outbound` and
//! `Flow-Timer` ([`CallConfig::flow_timer`]) in its 2xx. Over UDP outbound
//! is not offered: its keep-alives are STUN (§4.4.2), which sipis does not
//! answer. A device is its instance (or its push identity), so a REGISTER
//! of the same instance from another flow moves the device's binding
//! there; a device keeps one binding, on the flow it registered over last.

use crate::accounts::aor_key;
use crate::accounts::Accounts;
use crate::config::CallConfig;
use crate::context::Context;
use crate::digest::{self, Algorithm, Credentials, Ha1, NonceVerifier, Reply, VerifierConfig};
use crate::error::SipError;
use crate::guard::Guard;
use crate::output::{Event, Flow};
use crate::push::Platform;
use crate::registration::{AccountConfig, AccountId, AccountSecret};
use crate::transactions::Transactions;
use bytes::{Bytes, BytesMut};
use sipis_parser::{self as parser, is_push_param, HeaderName, Message};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One device of an account.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    pub name: Box<str>,
    pub push: Option<PushTarget>,
    pub binding: Option<Binding>,
}

/// Where pushes for a device go (RFC 8599 §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PushTarget {
    /// `pn-provider` as given (`apns`, `fcm`).
    pub provider: Box<str>,
    pub prid: Box<str>,
    pub param: Option<Box<str>>,
}

impl PushTarget {
    pub fn platform(&self) -> Option<Platform> {
        Platform::from_provider(&self.provider)
    }

    /// The APNs topic (`<bundle>.voip` from `pn-param` =
    /// `<TeamID>.<bundle>.voip`), or the FCM project id.
    pub fn topic(&self) -> Option<String> {
        let param = self.param.as_deref()?;
        match self.platform() {
            Some(Platform::Apns) => Some(match param.split_once('.') {
                // RFC 8599 §10: the Team ID is the first label.
                Some((team, rest)) if team.len() == 10 && !rest.is_empty() => rest.to_owned(),
                _ => param.to_owned(),
            }),
            _ => Some(param.to_owned()),
        }
    }
}

/// A live SIP registration of a device.
#[derive(Debug, Clone)]
pub(crate) struct Binding {
    pub addr: SocketAddr,
    pub flow: Flow,
    /// The Contact URI without `pn-*` parameters: the Request-URI of an
    /// INVITE to the phone.
    pub uri: Bytes,
    pub expires: Instant,
    /// RFC 5626: the `+sip.instance` and `reg-id` of a binding registered
    /// with outbound (echoed in the 2xx's Contact).
    pub outbound: Option<(Box<str>, u32)>,
}

/// A device as the shell and tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub name: String,
    pub provider: Option<String>,
    pub prid: Option<String>,
    pub param: Option<String>,
    /// The phone's address while its SIP registration is live.
    pub registered: Option<SocketAddr>,
}

impl Device {
    pub fn info(&self, now: Instant) -> DeviceInfo {
        DeviceInfo {
            name: self.name.to_string(),
            provider: self.push.as_ref().map(|p| p.provider.to_string()),
            prid: self.push.as_ref().map(|p| p.prid.to_string()),
            param: self
                .push
                .as_ref()
                .and_then(|p| p.param.as_deref().map(str::to_owned)),
            registered: self
                .binding
                .as_ref()
                .filter(|b| b.expires > now)
                .map(|b| b.addr),
        }
    }

    pub fn is_registered(&self, now: Instant) -> bool {
        self.binding.as_ref().is_some_and(|b| b.expires > now)
    }
}

/// The realm a phone of this account authenticates in.
fn phone_realm<'c>(cfg: &'c AccountConfig, calls: &'c CallConfig) -> &'c str {
    match &cfg.secret {
        AccountSecret::Password(_) => &calls.phone_realm,
        // An HA1 is bound to the realm it was made for: the provider's,
        // which is the AOR's domain at every common provider.
        AccountSecret::Ha1(_) => cfg
            .aor
            .split_once('@')
            .map(|(_, host)| host.split([';', '>', ':']).next().unwrap_or(host))
            .unwrap_or(&calls.phone_realm),
    }
}

fn ha1_for(cfg: &AccountConfig, realm: &str, username: &str, alg: Algorithm) -> Option<Ha1> {
    if username != cfg.auth_user {
        return None;
    }
    match &cfg.secret {
        AccountSecret::Password(p) => Some(Ha1::from_password(alg, username, realm, p)),
        AccountSecret::Ha1(hex) => Ha1::from_hex(alg, hex).ok(),
    }
}

/// What a REGISTER's contact asks for.
struct ContactReq {
    uri: Bytes,
    expires: u32,
    push: Option<PushTarget>,
    instance: Option<String>,
    /// RFC 5626 `reg-id`, kept only beside a `+sip.instance` (§6: without
    /// an instance the registrar ignores it).
    reg_id: Option<u32>,
}

/// What applying a REGISTER's contacts did.
struct Bound {
    /// The devices up afterwards.
    woke: Vec<Box<str>>,
    /// A binding was created on the request's stream flow or moved to it.
    flow_bound: bool,
    /// A binding was registered with outbound (RFC 5626 §6).
    outbound: bool,
}

/// The name of a device registered over SIP: its `+sip.instance` (without
/// `<urn:…>` wrapping) when given, else derived from its push identity.
fn device_name(c: &ContactReq) -> String {
    if let Some(i) = &c.instance {
        let s = i.trim_matches(|ch| ch == '"' || ch == '<' || ch == '>');
        let s = s.strip_prefix("urn:").unwrap_or(s);
        let s: String = s
            .chars()
            .map(|ch| {
                if ch.is_ascii_alphanumeric() || "-_.:".contains(ch) {
                    ch
                } else {
                    '-'
                }
            })
            .take(64)
            .collect();
        if !s.is_empty() {
            return s;
        }
    }
    // FNV-1a over the push identity: stable across restarts and wakes.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |b: &[u8]| {
        for &x in b.iter().chain(b"\0") {
            h ^= u64::from(x);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    match &c.push {
        Some(p) => {
            feed(p.provider.as_bytes());
            feed(p.prid.as_bytes());
            feed(p.param.as_deref().unwrap_or("").as_bytes());
            format!("pn-{}-{:012x}", p.provider, h >> 16)
        }
        None => {
            feed(&c.uri);
            format!("sip-{:012x}", h >> 16)
        }
    }
}

/// The phones' registrar of one shard: each account's devices and the
/// digest nonces phones answer.
pub(crate) struct Registrar {
    cfg: CallConfig,
    devices: HashMap<AccountId, Vec<Device>>,
    /// The devices bound over each TCP/TLS flow, so a closed connection
    /// costs only its own bindings. An entry may outlive its binding (it
    /// expired, or its device went): it is checked when the flow closes.
    by_flow: HashMap<Flow, Vec<(AccountId, Box<str>)>>,
    verifier: NonceVerifier,
    /// Failed answers by source and AOR: guessing is slowed.
    guard: Guard,
}

impl Registrar {
    /// `nonce_key` keys the nonces' HMAC (from the engine's CSPRNG).
    pub fn new(cfg: CallConfig, nonce_key: [u8; 32], now: Instant) -> Registrar {
        let guard = Guard::new(cfg.guard.clone());
        let algorithms = if cfg.phone_digest_algorithms.is_empty() {
            vec![digest::Algorithm::Md5]
        } else {
            cfg.phone_digest_algorithms.clone()
        };
        Registrar {
            cfg,
            devices: HashMap::new(),
            by_flow: HashMap::new(),
            verifier: NonceVerifier::new(
                nonce_key,
                now,
                VerifierConfig {
                    algorithms,
                    ..VerifierConfig::default()
                },
            ),
            guard,
        }
    }

    /// An account's devices (empty when it has none).
    pub fn of(&self, account: AccountId) -> &[Device] {
        self.devices.get(&account).map_or(&[], Vec::as_slice)
    }

    /// One device of an account.
    pub fn device(&self, account: AccountId, name: &str) -> Option<&Device> {
        self.of(account).iter().find(|d| &*d.name == name)
    }

    // ---- device provisioning ----------------------------------------------

    /// Adds or replaces a device's push target (the admin API, or devices
    /// loaded from the store at start). Its SIP binding, if any, is kept.
    pub fn put_device(
        &mut self,
        account: AccountId,
        name: &str,
        provider: &str,
        prid: &str,
        param: Option<&str>,
    ) {
        let push = PushTarget {
            provider: provider.into(),
            prid: prid.into(),
            param: param.map(Into::into),
        };
        let devices = self.devices.entry(account).or_default();
        // One device per push identity: a token moved to a new name
        // leaves its old name.
        devices.retain(|d| &*d.name == name || d.push.as_ref() != Some(&push));
        match devices.iter_mut().find(|d| &*d.name == name) {
            Some(d) => d.push = Some(push),
            None => devices.push(Device {
                name: name.into(),
                push: Some(push),
                binding: None,
            }),
        }
    }

    /// Forgets a device (the admin API, a dead token).
    pub fn remove_device(&mut self, account: AccountId, name: &str) -> bool {
        let Some(devices) = self.devices.get_mut(&account) else {
            return false;
        };
        let before = devices.len();
        for d in devices.iter().filter(|d| &*d.name == name) {
            if let Some(b) = &d.binding {
                unindex(&mut self.by_flow, b.flow, account, name);
            }
        }
        devices.retain(|d| &*d.name != name);
        let removed = devices.len() != before;
        if devices.is_empty() {
            self.devices.remove(&account);
        }
        removed
    }

    /// Forgets every device of an account that is gone.
    pub fn forget(&mut self, account: AccountId) {
        for d in self.devices.remove(&account).unwrap_or_default() {
            if let Some(b) = &d.binding {
                unindex(&mut self.by_flow, b.flow, account, &d.name);
            }
        }
    }

    /// A TCP/TLS connection closed or failed: every SIP binding on it goes
    /// (push targets stay, RFC 8599 §4.1.2: the next call pushes), and a
    /// device that was nothing but that binding goes with it. Returns how
    /// many bindings went; an unknown flow costs one lookup.
    pub fn flow_closed(&mut self, flow: Flow) -> usize {
        let Some(bound) = self.by_flow.remove(&flow) else {
            return 0;
        };
        let mut dropped = 0;
        for (account, name) in bound {
            let Some(devices) = self.devices.get_mut(&account) else {
                continue;
            };
            let Some(i) = devices.iter().position(|d| d.name == name) else {
                continue;
            };
            if devices[i].binding.as_ref().is_some_and(|b| b.flow == flow) {
                dropped += 1;
                devices[i].binding = None;
                if devices[i].push.is_none() {
                    devices.remove(i);
                    if devices.is_empty() {
                        self.devices.remove(&account);
                    }
                }
            }
        }
        dropped
    }

    /// Binds a device as a REGISTER would (tests of the other parts).
    #[cfg(test)]
    pub fn bind_for_test(&mut self, account: AccountId, name: &str, binding: Binding) {
        if binding.flow.is_stream() {
            self.by_flow
                .entry(binding.flow)
                .or_default()
                .push((account, name.into()));
        }
        let devices = self.devices.entry(account).or_default();
        match devices.iter_mut().find(|d| &*d.name == name) {
            Some(d) => d.binding = Some(binding),
            None => devices.push(Device {
                name: name.into(),
                push: None,
                binding: Some(binding),
            }),
        }
    }

    /// An account's devices as the shell sees them.
    pub fn infos(&self, now: Instant, account: AccountId) -> Vec<DeviceInfo> {
        self.of(account).iter().map(|d| d.info(now)).collect()
    }

    // ---- REGISTER from a phone ------------------------------------------

    /// A REGISTER arrived: a phone (or the app, woken by a push) binds
    /// itself to its account. `slot` is its server transaction. Returns the
    /// account and the devices that are up now, for the calls waiting on
    /// them.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &mut self,
        ctx: &mut Context,
        txs: &mut Transactions,
        accounts: &Accounts,
        now: Instant,
        from: SocketAddr,
        flow: Flow,
        msg: &Message<'_, '_>,
        slot: usize,
    ) -> Option<(AccountId, Vec<Box<str>>)> {
        ctx.stats.phone_registers += 1;
        let account = msg
            .to()
            .ok()
            .and_then(|t| accounts.by_aor(&t.uri))
            .and_then(|id| accounts.get(id).map(|a| (id, &a.cfg)));
        // A source guessing passwords for this AOR is refused without a
        // challenge until its pause is over.
        let aor = msg
            .to()
            .ok()
            .and_then(|t| aor_key(&t.uri))
            .unwrap_or_default();
        if let Some(until) = self.guard.blocked(now, from.ip(), &aor) {
            ctx.stats.auth_blocked_refusals += 1;
            let wait = until.saturating_duration_since(now).as_secs_f64().ceil() as u32;
            txs.reply(ctx, now, slot, msg, 403, "Forbidden", |w| {
                w.header_u32("Retry-After", wait.max(1));
            });
            return None;
        }
        // Nothing tells a user that does not exist from one that does (a
        // 404 would hand an attacker the list of accounts): an unknown AOR
        // is challenged in the default realm like a password account, and
        // its answer refused with the same 403.
        let outcome = self.authenticate(ctx, account.map(|(_, cfg)| cfg), now, msg);
        match &outcome {
            Err(Answer::Error(SipError::Forbidden)) => {
                ctx.events.push_back(Event::AuthFailed {
                    source: from.ip(),
                    aor: String::from_utf8_lossy(aor.get(2..).unwrap_or_default()).into_owned(),
                });
                if let Some(b) = self.guard.failure(now, from.ip(), &aor) {
                    ctx.stats.auth_blocks += 1;
                    ctx.events.push_back(Event::AuthBlocked {
                        source: from.ip(),
                        aor: String::from_utf8_lossy(aor.get(2..).unwrap_or_default()).into_owned(),
                        failures: b.failures,
                        pause: b.pause,
                        whole_source: b.whole_source,
                    });
                }
            }
            Ok(()) if account.is_some() => self.guard.success(from.ip(), &aor),
            _ => {}
        }
        let Some((id, _)) = account.filter(|_| outcome.is_ok()) else {
            let answer = match outcome {
                Err(a) => a,
                Ok(()) => Answer::Error(SipError::Forbidden),
            };
            match answer {
                Answer::Challenge(values) => {
                    txs.reply(ctx, now, slot, msg, 401, "Unauthorized", |w| {
                        for v in &values {
                            w.header("WWW-Authenticate", v.as_bytes());
                        }
                    })
                }
                Answer::Error(e) => txs.reply_error(ctx, now, slot, msg, e),
            }
            return None;
        };
        let reqs = match contact_requests(msg, &self.cfg) {
            Ok(r) => r,
            Err(e) => {
                txs.reply_error(ctx, now, slot, msg, e);
                return None;
            }
        };
        // RFC 5626 §6: outbound for a phone that supports it and reaches
        // sipis directly (it is the first hop: one Via); over TCP/TLS only,
        // as sipis answers no STUN keep-alives (§4.4.2, UDP).
        let outbound =
            flow.is_stream() && msg.supported().contains("outbound") && msg.vias().count() == 1;
        let bound = self.bind(ctx, id, now, from, flow, &reqs, outbound);
        if bound.flow_bound {
            ctx.events.push_back(Event::FlowBound { flow });
        }

        // 200 OK listing every live binding (§10.3 step 8) and, RFC 8599
        // §4.1.2, the push services sipis supports.
        let mut contacts = Vec::new();
        for d in self.of(id) {
            if let Some(b) = d.binding.as_ref().filter(|b| b.expires > now) {
                let left = b.expires.saturating_duration_since(now).as_secs() as u32;
                let mut v = BytesMut::with_capacity(b.uri.len() + 16);
                v.extend_from_slice(b"<");
                v.extend_from_slice(&b.uri);
                v.extend_from_slice(b">;expires=");
                parser::put_u32(&mut v, left);
                if let Some((instance, reg_id)) = &b.outbound {
                    v.extend_from_slice(b";+sip.instance=\"<");
                    v.extend_from_slice(instance.as_bytes());
                    v.extend_from_slice(b">\";reg-id=");
                    parser::put_u32(&mut v, *reg_id);
                }
                contacts.push(v.freeze());
            }
        }
        let pns = reqs
            .contacts
            .iter()
            .find_map(|r| r.push.as_ref().map(|p| p.provider.clone()));
        let pnsreg = self.cfg.pnsreg;
        let flow_timer = self.cfg.flow_timer.as_secs() as u32;
        txs.reply(ctx, now, slot, msg, 200, "OK", |w| {
            if bound.outbound {
                // RFC 5626 §6: the registrar used outbound; §4.4.1: the
                // keep-alive interval it expects on the flow.
                w.header("Require", b"outbound");
                w.header_u32("Flow-Timer", flow_timer.max(1));
            }
            for c in &contacts {
                w.header("Contact", c);
            }
            if let Some(p) = &pns {
                w.header_with("Feature-Caps", |o| {
                    o.extend_from_slice(b"*;+sip.pns=\"");
                    o.extend_from_slice(p.as_bytes());
                    o.extend_from_slice(b"\";+sip.pnsreg=\"");
                    parser::put_u32(o, pnsreg);
                    o.extend_from_slice(b"\"");
                });
            }
        });
        Some((id, bound.woke))
    }

    /// RFC 3261 §22: challenge first, nothing is bound before the
    /// credentials check out.
    fn authenticate(
        &mut self,
        ctx: &mut Context,
        cfg: Option<&AccountConfig>,
        now: Instant,
        msg: &Message<'_, '_>,
    ) -> Result<(), Answer> {
        let realm = match cfg {
            Some(cfg) => phone_realm(cfg, &self.cfg),
            None => &self.cfg.phone_realm,
        };
        let auths: Vec<_> = msg
            .auth(HeaderName::Authorization)
            .filter_map(Result::ok)
            .filter(|a| a.is_digest())
            .collect();
        let creds = auths.iter().find_map(|a| {
            Credentials::from_params(
                a.params()
                    .map_while(Result::ok)
                    .filter_map(|p| std::str::from_utf8(p.value).ok().map(|v| (p.name, v))),
            )
            .ok()
            .filter(|c| c.realm == realm)
        });
        let reply = match creds {
            None => Reply::Challenge { stale: false },
            Some(c) => self
                .verifier
                .verify(&c, "REGISTER", realm, now, |user, alg| {
                    cfg.and_then(|cfg| ha1_for(cfg, realm, user, alg))
                })
                .reply(),
        };
        match reply {
            Reply::Accept => Ok(()),
            Reply::Challenge { stale } => {
                let mut values = Vec::new();
                if self
                    .verifier
                    .challenge(realm, stale, now, &mut values)
                    .is_err()
                {
                    return Err(Answer::Error(SipError::Internal));
                }
                Err(Answer::Challenge(values))
            }
            Reply::Forbidden => {
                ctx.stats.phone_auth_failures += 1;
                Err(Answer::Error(SipError::Forbidden))
            }
        }
    }

    /// Applies an authenticated REGISTER's contacts (RFC 3261 §10.3 step
    /// 8); `outbound`: the request may register with RFC 5626 outbound.
    #[allow(clippy::too_many_arguments)]
    fn bind(
        &mut self,
        ctx: &mut Context,
        id: AccountId,
        now: Instant,
        from: SocketAddr,
        flow: Flow,
        reqs: &ContactRequests,
        outbound: bool,
    ) -> Bound {
        let max = self.cfg.phone_max_expires;
        let by_flow = &mut self.by_flow;
        let devices = self.devices.entry(id).or_default();
        let mut bound = Bound {
            woke: Vec::new(),
            flow_bound: false,
            outbound: false,
        };
        if reqs.wildcard {
            // Contact: * with Expires: 0 — every SIP binding goes; the push
            // targets stay (the app logged out of SIP, not of pushes).
            for d in devices.iter_mut() {
                if let Some(b) = d.binding.take() {
                    unindex(by_flow, b.flow, id, &d.name);
                }
            }
        }
        for r in &reqs.contacts {
            let name = device_name(r);
            let idx = devices.iter().position(|d| {
                r.push.is_some() && d.push == r.push
                    || *d.name == name
                    || r.push.is_none()
                        && d.push.is_none()
                        && d.binding.as_ref().is_some_and(|b| b.uri == r.uri)
            });
            if r.expires == 0 {
                // An explicit unregister: the device is gone (logout).
                if let Some(i) = idx {
                    let d = devices.remove(i);
                    if let Some(b) = &d.binding {
                        unindex(by_flow, b.flow, id, &d.name);
                    }
                    if d.push.is_some() {
                        ctx.events.push_back(Event::DeviceRemoved {
                            account: id,
                            device: d.name.to_string(),
                        });
                    }
                }
                continue;
            }
            let granted = r.expires.min(max);
            let ob = r
                .instance
                .as_deref()
                .zip(r.reg_id)
                .filter(|_| outbound)
                .map(|(i, reg_id)| (i.into(), reg_id));
            bound.outbound |= ob.is_some();
            let binding = Binding {
                addr: from,
                flow,
                uri: r.uri.clone(),
                expires: now + Duration::from_secs(u64::from(granted)),
                outbound: ob,
            };
            // Only a new or changed push target is written to the store: a
            // woken phone's every REGISTER must not cost a database write.
            let (i, changed, moved) = match idx {
                Some(i) => {
                    let d = &mut devices[i];
                    let changed = r.push.is_some() && d.push != r.push;
                    if changed {
                        d.push = r.push.clone();
                    }
                    let old = d.binding.replace(binding);
                    let moved = old.as_ref().map(|b| b.flow) != Some(flow);
                    if let Some(old) = old.filter(|_| moved) {
                        unindex(by_flow, old.flow, id, &d.name);
                    }
                    (i, changed, moved)
                }
                None => {
                    devices.push(Device {
                        name: name.into(),
                        push: r.push.clone(),
                        binding: Some(binding),
                    });
                    (devices.len() - 1, true, true)
                }
            };
            if moved && flow.is_stream() {
                // Created on this connection or moved to it (a refresh
                // over the same one is not news for the shell).
                by_flow
                    .entry(flow)
                    .or_default()
                    .push((id, devices[i].name.clone()));
                bound.flow_bound = true;
            }
            let d = &devices[i];
            if let Some(p) = d.push.as_ref().filter(|_| changed) {
                ctx.events.push_back(Event::DeviceSaved {
                    account: id,
                    device: d.name.to_string(),
                    provider: p.provider.to_string(),
                    prid: p.prid.to_string(),
                    param: p.param.as_deref().map(str::to_owned),
                });
            }
            bound.woke.push(d.name.clone());
        }
        if devices.is_empty() {
            self.devices.remove(&id);
        }
        bound
    }
}

/// Forgets that `account`'s device `name` is bound over `flow`.
fn unindex(
    by_flow: &mut HashMap<Flow, Vec<(AccountId, Box<str>)>>,
    flow: Flow,
    account: AccountId,
    name: &str,
) {
    if !flow.is_stream() {
        return;
    }
    if let Some(list) = by_flow.get_mut(&flow) {
        list.retain(|(a, n)| !(*a == account && &**n == name));
        if list.is_empty() {
            by_flow.remove(&flow);
        }
    }
}

/// A REGISTER not (yet) accepted.
enum Answer {
    /// 401 with these `WWW-Authenticate` values.
    Challenge(Vec<String>),
    Error(SipError),
}

/// What a REGISTER's Contact headers ask for.
struct ContactRequests {
    /// `Contact: *` (with `Expires: 0`).
    wildcard: bool,
    contacts: Vec<ContactReq>,
}

/// Reads and checks a REGISTER's contacts (RFC 3261 §10.3 steps 6–7, RFC
/// 8599 §4.1.1).
fn contact_requests(msg: &Message<'_, '_>, cfg: &CallConfig) -> Result<ContactRequests, SipError> {
    let default_expires = match msg.expires() {
        Ok(e) => e.unwrap_or(3600),
        Err(_) => return Err(SipError::BadExpires),
    };
    let mut wildcard = false;
    let mut contacts = Vec::new();
    for c in msg.contacts() {
        let c = c.map_err(|_| SipError::BadContact)?;
        let Some(na) = c.addr() else {
            wildcard = true;
            continue;
        };
        let expires = match c.expires() {
            Some(Ok(e)) => e,
            Some(Err(_)) => return Err(SipError::BadContactExpires),
            None => default_expires,
        };
        let push = match c.push() {
            Some(p) => {
                let provider = String::from_utf8_lossy(p.provider).into_owned();
                // RFC 8599 §4.1.1: a provider we cannot push to.
                if Platform::from_provider(&provider).is_none() {
                    return Err(SipError::PushServiceNotSupported);
                }
                let Some(prid) = p.prid.filter(|p| !p.is_empty()) else {
                    return Err(SipError::MissingPushToken);
                };
                Some(PushTarget {
                    provider: provider.into(),
                    prid: String::from_utf8_lossy(prid).into(),
                    param: p.param.map(|v| String::from_utf8_lossy(v).into()),
                })
            }
            None => None,
        };
        let mut uri = BytesMut::new();
        parser::write_uri(&mut uri, &na.uri, |p| !is_push_param(p.name));
        let instance = c
            .instance()
            .map(|i| String::from_utf8_lossy(i).into_owned());
        // RFC 5626 §6: a reg-id without a +sip.instance is ignored.
        let reg_id = match c.reg_id().filter(|_| instance.is_some()) {
            Some(Ok(id)) => Some(id),
            Some(Err(_)) => return Err(SipError::BadContact),
            None => None,
        };
        contacts.push(ContactReq {
            uri: uri.freeze(),
            expires,
            push,
            instance,
            reg_id,
        });
    }
    if wildcard && (!contacts.is_empty() || default_expires != 0) {
        return Err(SipError::InvalidWildcard);
    }
    if contacts
        .iter()
        .any(|r| r.expires != 0 && r.expires < cfg.phone_min_expires)
    {
        return Err(SipError::IntervalTooBrief(cfg.phone_min_expires));
    }
    Ok(ContactRequests { wildcard, contacts })
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor a simulated clock
mod tests {
    use super::*;
    use crate::config::EngineConfig;
    use crate::digest::{write_authorization, Account as DigestAccount, Challenge, Secret};
    use crate::transaction::{Kind, TimerConfig, TxKey};
    use sipis_parser::{parse, EMPTY_HEADER};

    /// A registrar with one account (alice, password "s3cret", proxy mode).
    struct Bench {
        ctx: Context,
        txs: Transactions,
        accounts: Accounts,
        registrar: Registrar,
        now: Instant,
        cseq: u32,
        /// The flow the next REGISTER arrives on.
        flow: Flow,
        /// Headers added to the next REGISTER (`Supported: outbound`).
        extra: String,
        /// Vias above the phone's own (a proxy in between).
        proxies: String,
    }

    const PHONE: &str = "203.0.113.9:40000";

    /// What `Registrar::register` reports.
    type Registered = Option<(AccountId, Vec<Box<str>>)>;

    impl Bench {
        fn new() -> Bench {
            let now = Instant::now();
            let mut ctx = Context::new(7, now);
            let mut txs = Transactions::new(TimerConfig::default());
            let mut accounts = Accounts::new(&EngineConfig::default(), now);
            let cfg = AccountConfig {
                id: 1,
                aor: "sip:alice@voip.example".into(),
                auth_user: "alice".into(),
                secret: AccountSecret::Password("s3cret".into()),
                registrar: None,
                expires: 3600,
                token: "tok1".into(),
            };
            accounts.add(&mut ctx, &mut txs, now, cfg, None);
            Bench {
                ctx,
                txs,
                accounts,
                registrar: Registrar::new(CallConfig::default(), [7; 32], now),
                now,
                cseq: 0,
                flow: Flow::Udp,
                extra: String::new(),
                proxies: String::new(),
            }
        }

        /// Sends a REGISTER for `user` with `contact` (and `auth`), returns
        /// the response text and what the registrar reported.
        fn register(
            &mut self,
            user: &str,
            contact: &str,
            auth: Option<&str>,
        ) -> (String, Registered) {
            self.cseq += 1;
            let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
            let req = format!(
                "REGISTER sip:voip.example SIP/2.0\r\n{}\
                 Via: SIP/2.0/{} {PHONE};branch=z9hG4bKr{}\r\n\
                 From: <sip:{user}@voip.example>;tag=ph1\r\n\
                 To: <sip:{user}@voip.example>\r\n\
                 Call-ID: reg-1@phone\r\nCSeq: {} REGISTER\r\n{}\
                 Contact: {contact}\r\n{auth}Content-Length: 0\r\n\r\n",
                self.proxies,
                self.flow.transport(),
                self.cseq,
                self.cseq,
                self.extra,
            );
            let mut h = [EMPTY_HEADER; 32];
            let msg = parse(req.as_bytes(), &mut h).unwrap();
            let key = TxKey::server(&msg).unwrap();
            let from = PHONE.parse().unwrap();
            let slot = self.txs.open_server(
                &mut self.ctx,
                self.now,
                key,
                Kind::NonInvite,
                from,
                self.flow,
            );
            let up = self.registrar.register(
                &mut self.ctx,
                &mut self.txs,
                &self.accounts,
                self.now,
                from,
                self.flow,
                &msg,
                slot,
            );
            let t = self.ctx.transmits.pop_front().expect("an answer");
            (String::from_utf8(t.payload.to_vec()).unwrap(), up)
        }

        /// Answers the challenge in `resp` as alice with `password`.
        fn authorization(resp: &str, password: &str) -> String {
            let mut h = [EMPTY_HEADER; 32];
            let msg = parse(resp.as_bytes(), &mut h).unwrap();
            let a = msg
                .auth(HeaderName::WwwAuthenticate)
                .next()
                .unwrap()
                .unwrap();
            let params: Vec<(&str, &str)> = a
                .params()
                .map_while(Result::ok)
                .filter_map(|p| std::str::from_utf8(p.value).ok().map(|v| (p.name, v)))
                .collect();
            let ch = Challenge::from_params(params.iter().copied()).unwrap();
            let mut v = String::new();
            let account = DigestAccount {
                username: "alice",
                secret: Secret::Password(password),
            };
            write_authorization(
                &ch,
                &account,
                "REGISTER",
                "sip:voip.example",
                "cn1",
                1,
                &mut v,
            )
            .unwrap();
            v
        }

        fn authed(&mut self, contact: &str) -> (String, Registered) {
            let (challenge, _) = self.register("alice", contact, None);
            let auth = Bench::authorization(&challenge, "s3cret");
            self.register("alice", contact, Some(&auth))
        }
    }

    const APNS_CONTACT: &str = "<sip:alice@10.0.0.5:5060;pn-provider=apns;pn-prid=TOKEN1;pn-param=ABCDE12345.com.example.voip>;+sip.instance=\"<urn:uuid:0000-1>\"";

    #[test]
    fn register_is_challenged_then_binds_the_push_device() {
        let mut b = Bench::new();
        let (challenge, up) = b.register("alice", APNS_CONTACT, None);
        assert!(
            challenge.starts_with("SIP/2.0 401 Unauthorized\r\n"),
            "{challenge}"
        );
        assert!(challenge.contains("WWW-Authenticate: Digest realm=\"sipis\""));
        assert!(
            up.is_none() && b.registrar.of(1).is_empty(),
            "nothing bound yet"
        );
        let auth = Bench::authorization(&challenge, "s3cret");
        let (ok, up) = b.register("alice", APNS_CONTACT, Some(&auth));
        assert!(ok.starts_with("SIP/2.0 200 OK\r\n"), "{ok}");
        // RFC 8599 §4.1.2: the push services sipis supports; pn-* stripped.
        assert!(ok.contains("Feature-Caps: *;+sip.pns=\"apns\";+sip.pnsreg=\"121\"\r\n"));
        assert!(
            ok.contains("Contact: <sip:alice@10.0.0.5:5060>;expires=3600\r\n"),
            "{ok}"
        );
        let (account, woke) = up.unwrap();
        assert_eq!((account, woke.len()), (1, 1));
        let d = b.registrar.device(1, &woke[0]).unwrap();
        let p = d.push.as_ref().unwrap();
        assert_eq!(
            (&*p.prid, p.topic().as_deref()),
            ("TOKEN1", Some("com.example.voip"))
        );
        assert!(d.is_registered(b.now));
        assert!(matches!(
            b.ctx.events.back(),
            Some(Event::DeviceSaved { prid, .. }) if prid == "TOKEN1"
        ));
    }

    #[test]
    fn a_wrong_password_gets_403_and_binds_nothing() {
        let mut b = Bench::new();
        let (challenge, _) = b.register("alice", APNS_CONTACT, None);
        let auth = Bench::authorization(&challenge, "guess");
        let (resp, up) = b.register("alice", APNS_CONTACT, Some(&auth));
        assert!(resp.starts_with("SIP/2.0 403 Forbidden\r\n"), "{resp}");
        assert!(up.is_none() && b.registrar.of(1).is_empty());
        assert_eq!(b.ctx.stats.phone_auth_failures, 1);
    }

    #[test]
    fn contact_checks_answer_with_their_error() {
        let mut b = Bench::new();
        let (resp, _) = b.authed("<sip:alice@10.0.0.5;pn-provider=webos;pn-prid=x>");
        assert!(
            resp.starts_with("SIP/2.0 555 Push Notification Service Not Supported\r\n"),
            "{resp}"
        );
        let (resp, _) = b.authed("<sip:alice@10.0.0.5>;expires=30");
        assert!(
            resp.starts_with("SIP/2.0 423 Interval Too Brief\r\n"),
            "{resp}"
        );
        assert!(resp.contains("Min-Expires: 60\r\n"));
        let (resp, _) = b.authed("<sip:alice@10.0.0.5;pn-provider=apns>");
        assert!(
            resp.starts_with("SIP/2.0 400 Missing pn-prid\r\n"),
            "{resp}"
        );
        assert!(b.registrar.of(1).is_empty());
    }

    #[test]
    fn the_device_is_the_push_identity_not_the_address() {
        let mut b = Bench::new();
        let (_, up) = b.authed(APNS_CONTACT);
        let first = up.unwrap().1[0].clone();
        // The app wakes on another address and port: the same device.
        let moved = APNS_CONTACT.replace("10.0.0.5:5060", "198.51.100.4:61000");
        let (ok, up) = b.authed(&moved);
        assert!(ok.starts_with("SIP/2.0 200 OK"));
        assert_eq!(up.unwrap().1, vec![first.clone()]);
        assert_eq!(b.registrar.of(1).len(), 1);
        // Expires: 0 removes it (a logout).
        let gone = format!("{moved};expires=0");
        let (ok, up) = b.authed(&gone);
        assert!(ok.starts_with("SIP/2.0 200 OK"), "{ok}");
        assert!(up.unwrap().1.is_empty());
        assert!(b.registrar.of(1).is_empty());
        assert!(
            matches!(b.ctx.events.back(), Some(Event::DeviceRemoved { device, .. }) if *device == *first)
        );
    }

    /// An outbound contact (RFC 5626 §4.2): instance and reg-id.
    const OB_CONTACT: &str = "<sip:alice@10.0.0.5:5060;transport=tcp;pn-provider=apns;pn-prid=TOKEN1;pn-param=ABCDE12345.com.example.voip>;+sip.instance=\"<urn:uuid:0000-1>\";reg-id=1";

    fn flows_bound(b: &mut Bench) -> Vec<Flow> {
        b.ctx
            .events
            .drain(..)
            .filter_map(|e| match e {
                Event::FlowBound { flow } => Some(flow),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn outbound_register_over_tcp_gets_require_and_flow_timer_and_moves_with_its_flow() {
        let mut b = Bench::new();
        b.flow = Flow::Tcp(7);
        b.extra = "Supported: path, outbound\r\n".into();
        let (ok, up) = b.authed(OB_CONTACT);
        assert!(ok.starts_with("SIP/2.0 200 OK\r\n"), "{ok}");
        // RFC 5626 §6: outbound used; §4.4.1: the keep-alive interval.
        assert!(ok.contains("Require: outbound\r\n"), "{ok}");
        assert!(ok.contains("Flow-Timer: 120\r\n"), "{ok}");
        assert!(
            ok.contains(
                "Contact: <sip:alice@10.0.0.5:5060;transport=tcp>;expires=3600;\
                 +sip.instance=\"<urn:uuid:0000-1>\";reg-id=1\r\n"
            ),
            "{ok}"
        );
        let name = up.unwrap().1[0].clone();
        assert_eq!(&*name, "uuid:0000-1");
        assert_eq!(flows_bound(&mut b), vec![Flow::Tcp(7)]);
        // A refresh over the same connection is no news for the shell.
        let (ok, _) = b.authed(OB_CONTACT);
        assert!(ok.contains("Require: outbound\r\n"), "{ok}");
        assert!(flows_bound(&mut b).is_empty());
        // The same instance and reg-id from another connection: the
        // device's binding moves there.
        b.flow = Flow::Tls(9);
        let (ok, _) = b.authed(OB_CONTACT);
        assert!(ok.starts_with("SIP/2.0 200 OK\r\n"), "{ok}");
        assert_eq!(flows_bound(&mut b), vec![Flow::Tls(9)]);
        assert_eq!(b.registrar.of(1).len(), 1);
        let d = b.registrar.device(1, &name).unwrap();
        assert_eq!(d.binding.as_ref().unwrap().flow, Flow::Tls(9));
        // The old connection closing takes nothing with it; the new one's
        // takes the binding, and the push target stays.
        assert_eq!(b.registrar.flow_closed(Flow::Tcp(7)), 0);
        assert!(b.registrar.device(1, &name).unwrap().is_registered(b.now));
        assert_eq!(b.registrar.flow_closed(Flow::Tls(9)), 1);
        let d = b.registrar.device(1, &name).unwrap();
        assert!(d.binding.is_none() && d.push.is_some());
        assert_eq!(b.registrar.flow_closed(Flow::Tls(9)), 0, "closed twice");
        assert_eq!(b.registrar.flow_closed(Flow::Tcp(12345)), 0, "unknown");
        assert!(b.registrar.by_flow.is_empty());
    }

    #[test]
    fn outbound_is_not_offered_without_instance_support_udp_or_first_hop() {
        let mut b = Bench::new();
        b.extra = "Supported: outbound\r\n".into();
        // Over UDP (sipis answers no STUN keep-alives).
        let (ok, _) = b.authed(OB_CONTACT);
        assert!(ok.starts_with("SIP/2.0 200 OK\r\n"), "{ok}");
        assert!(
            !ok.contains("outbound") && !ok.contains("Flow-Timer"),
            "{ok}"
        );
        assert!(!ok.contains("reg-id"), "{ok}");
        b.flow = Flow::Tcp(7);
        // RFC 5626 §6: a reg-id without +sip.instance is ignored.
        let bare = "<sip:alice@10.0.0.6:5060;transport=tcp>;reg-id=1";
        let (ok, _) = b.authed(bare);
        assert!(ok.starts_with("SIP/2.0 200 OK\r\n"), "{ok}");
        assert!(
            !ok.contains("Require:") && !ok.contains("Flow-Timer"),
            "{ok}"
        );
        // No `Supported: outbound`.
        b.extra.clear();
        let (ok, _) = b.authed(OB_CONTACT);
        assert!(
            !ok.contains("Require:") && !ok.contains("Flow-Timer"),
            "{ok}"
        );
        // Through a proxy sipis is not the first hop.
        b.extra = "Supported: outbound\r\n".into();
        b.proxies = "Via: SIP/2.0/TCP proxy.example;branch=z9hG4bKp1\r\n".into();
        let (ok, _) = b.authed(OB_CONTACT);
        assert!(ok.starts_with("SIP/2.0 200 OK\r\n"), "{ok}");
        assert!(
            !ok.contains("Require:") && !ok.contains("Flow-Timer"),
            "{ok}"
        );
        // A reg-id that is no number is a bad Contact.
        b.proxies.clear();
        let (resp, _) = b.authed(&OB_CONTACT.replace("reg-id=1", "reg-id=x"));
        assert!(resp.starts_with("SIP/2.0 400 "), "{resp}");
    }

    #[test]
    fn a_closed_connection_drops_only_its_own_bindings() {
        let mut b = Bench::new();
        b.flow = Flow::Tcp(7);
        let (_, up) = b.authed(APNS_CONTACT);
        let iphone = up.unwrap().1[0].clone();
        // A device without push over the same connection, one over UDP.
        let (_, up) = b.authed("<sip:alice@10.0.0.7:5060;transport=tcp>");
        let desk = up.unwrap().1[0].clone();
        b.flow = Flow::SharedUdp;
        let udp = APNS_CONTACT
            .replace("TOKEN1", "TOKEN2")
            .replace("0000-1", "0000-2");
        let (_, up) = b.authed(&udp);
        let ipad = up.unwrap().1[0].clone();
        assert_eq!(flows_bound(&mut b), vec![Flow::Tcp(7), Flow::Tcp(7)]);
        assert_eq!(b.registrar.flow_closed(Flow::Udp), 0);
        assert_eq!(b.registrar.flow_closed(Flow::Tcp(7)), 2);
        // The push device stays (unbound), the SIP-only one is gone, the
        // UDP one is untouched.
        let d = b.registrar.device(1, &iphone).unwrap();
        assert!(d.binding.is_none() && d.push.is_some());
        assert!(b.registrar.device(1, &desk).is_none());
        assert!(b.registrar.device(1, &ipad).unwrap().is_registered(b.now));
    }
}
