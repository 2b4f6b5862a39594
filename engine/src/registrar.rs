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
        devices.retain(|d| &*d.name != name);
        let removed = devices.len() != before;
        if devices.is_empty() {
            self.devices.remove(&account);
        }
        removed
    }

    /// Forgets every device of an account that is gone.
    pub fn forget(&mut self, account: AccountId) {
        self.devices.remove(&account);
    }

    /// Binds a device as a REGISTER would (tests of the other parts).
    #[cfg(test)]
    pub fn bind_for_test(&mut self, account: AccountId, name: &str, binding: Binding) {
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
        let woke = self.bind(ctx, id, now, from, flow, &reqs);

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
                contacts.push(v.freeze());
            }
        }
        let pns = reqs
            .contacts
            .iter()
            .find_map(|r| r.push.as_ref().map(|p| p.provider.clone()));
        let pnsreg = self.cfg.pnsreg;
        txs.reply(ctx, now, slot, msg, 200, "OK", |w| {
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
        Some((id, woke))
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
    /// 8): the devices that are up afterwards.
    fn bind(
        &mut self,
        ctx: &mut Context,
        id: AccountId,
        now: Instant,
        from: SocketAddr,
        flow: Flow,
        reqs: &ContactRequests,
    ) -> Vec<Box<str>> {
        let max = self.cfg.phone_max_expires;
        let devices = self.devices.entry(id).or_default();
        let mut woke = Vec::new();
        if reqs.wildcard {
            // Contact: * with Expires: 0 — every SIP binding goes; the push
            // targets stay (the app logged out of SIP, not of pushes).
            for d in devices.iter_mut() {
                d.binding = None;
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
            let binding = Binding {
                addr: from,
                flow,
                uri: r.uri.clone(),
                expires: now + Duration::from_secs(u64::from(granted)),
            };
            // Only a new or changed push target is written to the store: a
            // woken phone's every REGISTER must not cost a database write.
            let (i, changed) = match idx {
                Some(i) => {
                    let d = &mut devices[i];
                    let changed = r.push.is_some() && d.push != r.push;
                    if changed {
                        d.push = r.push.clone();
                    }
                    d.binding = Some(binding);
                    (i, changed)
                }
                None => {
                    devices.push(Device {
                        name: name.into(),
                        push: r.push.clone(),
                        binding: Some(binding),
                    });
                    (devices.len() - 1, true)
                }
            };
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
            woke.push(d.name.clone());
        }
        if devices.is_empty() {
            self.devices.remove(&id);
        }
        woke
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
        contacts.push(ContactReq {
            uri: uri.freeze(),
            expires,
            push,
            instance: c
                .instance()
                .map(|i| String::from_utf8_lossy(i).into_owned()),
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
                "REGISTER sip:voip.example SIP/2.0\r\n\
                 Via: SIP/2.0/UDP {PHONE};branch=z9hG4bKr{}\r\n\
                 From: <sip:{user}@voip.example>;tag=ph1\r\n\
                 To: <sip:{user}@voip.example>\r\n\
                 Call-ID: reg-1@phone\r\nCSeq: {} REGISTER\r\n\
                 Contact: {contact}\r\n{auth}Content-Length: 0\r\n\r\n",
                self.cseq, self.cseq
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
                Flow::Udp,
            );
            let up = self.registrar.register(
                &mut self.ctx,
                &mut self.txs,
                &self.accounts,
                self.now,
                from,
                Flow::Udp,
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
}
