//! The phones' side: sipis as the registrar of each account's devices
//! (RFC 3261 §10.3, RFC 8599 push parameters).
//!
//! A *device* is what a call can reach: a push target (RFC 8599
//! `pn-provider` + `pn-prid` + `pn-param`, which identify it — not the
//! phone's IP:port, which changes at every wake) and, while the app is
//! connected, a SIP *binding* (the address and flow its REGISTER came
//! from). The binding expires with the registration; the push target stays
//! until the phone unregisters explicitly, the operator removes it, or the
//! push service says the token is dead (DESIGN §1.2).
//!
//! A REGISTER is accepted only after a digest challenge with the account's
//! credentials (realm [`CallConfig::phone_realm`] for a password account,
//! the AOR's host for an HA1 account): nobody may hijack someone's calls.

use super::call::CallConfig;
use super::digest::{Algorithm, Credentials, Ha1, Reply};
use super::registration::{AccountConfig, AccountId, AccountSecret};
use super::{Engine, Flow};
use crate::push::Platform;
use bytes::{Bytes, BytesMut};
use sipis_parser::{self as parser, is_push_param, HeaderName, Message, Uri};
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

/// `a:user@host`, host lower-cased (host names are case-insensitive, user
/// parts are not: RFC 3261 §19.1.4). The AOR key of routing tables.
pub(crate) fn aor_key(uri: &Uri<'_>) -> Option<Box<[u8]>> {
    let user = uri.user?;
    let mut k = Vec::with_capacity(user.len() + uri.host_raw.len() + 3);
    k.extend_from_slice(b"a:");
    k.extend_from_slice(user);
    k.push(b'@');
    k.extend(uri.host_raw.iter().map(u8::to_ascii_lowercase));
    Some(k.into_boxed_slice())
}

/// The realm a phone of this account authenticates in.
pub(crate) fn phone_realm<'c>(cfg: &'c AccountConfig, calls: &'c CallConfig) -> &'c str {
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

impl Engine {
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
    ) -> bool {
        let Some(a) = self.accounts.get_mut(&account) else {
            return false;
        };
        let push = PushTarget {
            provider: provider.into(),
            prid: prid.into(),
            param: param.map(Into::into),
        };
        // One device per push identity: a token moved to a new name
        // leaves its old name.
        a.devices
            .retain(|d| &*d.name == name || d.push.as_ref() != Some(&push));
        match a.devices.iter_mut().find(|d| &*d.name == name) {
            Some(d) => d.push = Some(push),
            None => a.devices.push(Device {
                name: name.into(),
                push: Some(push),
                binding: None,
            }),
        }
        true
    }

    /// Forgets a device (the admin API).
    pub fn remove_device(&mut self, account: AccountId, name: &str) -> bool {
        let Some(a) = self.accounts.get_mut(&account) else {
            return false;
        };
        let before = a.devices.len();
        a.devices.retain(|d| &*d.name != name);
        a.devices.len() != before
    }

    /// An account's devices.
    pub fn devices(&self, now: Instant, account: AccountId) -> Vec<DeviceInfo> {
        self.accounts
            .get(&account)
            .map(|a| a.devices.iter().map(|d| d.info(now)).collect())
            .unwrap_or_default()
    }

    // ---- REGISTER from a phone ------------------------------------------

    /// A REGISTER arrived: a phone (or the app, woken by a push) binds
    /// itself to its account. `slot` is its server transaction.
    pub(super) fn phone_register(
        &mut self,
        now: Instant,
        from: SocketAddr,
        flow: Flow,
        msg: &Message<'_, '_>,
        slot: usize,
    ) {
        self.stats.phone_registers += 1;
        let id = msg
            .to()
            .ok()
            .and_then(|t| aor_key(&t.uri))
            .and_then(|k| self.by_aor.get(&k).copied());
        let Some(id) = id else {
            return self.reply(now, slot, msg, 404, "Not Found", |_| {});
        };
        // RFC 3261 §22: challenge first, nothing is bound before the
        // credentials check out.
        let cfg = &self.accounts[&id].cfg;
        let realm = phone_realm(cfg, &self.cfg.calls).to_owned();
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
            Some(c) => {
                let cfg = &self.accounts[&id].cfg;
                self.verifier
                    .verify(&c, "REGISTER", &realm, now, |user, alg| {
                        ha1_for(cfg, &realm, user, alg)
                    })
                    .reply()
            }
        };
        match reply {
            Reply::Accept => {}
            Reply::Challenge { stale } => {
                let mut values = Vec::new();
                if self
                    .verifier
                    .challenge(&realm, stale, now, &mut values)
                    .is_err()
                {
                    return self.reply(now, slot, msg, 500, "Server Internal Error", |_| {});
                }
                return self.reply(now, slot, msg, 401, "Unauthorized", |w| {
                    for v in &values {
                        w.header("WWW-Authenticate", v.as_bytes());
                    }
                });
            }
            Reply::Forbidden => {
                self.stats.phone_auth_failures += 1;
                return self.reply(now, slot, msg, 403, "Forbidden", |_| {});
            }
        }

        // The contacts (RFC 3261 §10.3 steps 6–7).
        let default_expires = match msg.expires() {
            Ok(e) => e.unwrap_or(3600),
            Err(_) => return self.reply(now, slot, msg, 400, "Bad Expires", |_| {}),
        };
        let mut star = false;
        let mut reqs = Vec::new();
        for c in msg.contacts() {
            let Ok(c) = c else {
                return self.reply(now, slot, msg, 400, "Bad Contact", |_| {});
            };
            let Some(na) = c.addr() else {
                star = true;
                continue;
            };
            let expires = match c.expires() {
                Some(Ok(e)) => e,
                Some(Err(_)) => {
                    return self.reply(now, slot, msg, 400, "Bad Contact expires", |_| {})
                }
                None => default_expires,
            };
            let push = match c.push() {
                Some(p) => {
                    let provider = String::from_utf8_lossy(p.provider).into_owned();
                    // RFC 8599 §4.1.1: a provider we cannot push to.
                    if Platform::from_provider(&provider).is_none() {
                        return self.reply(
                            now,
                            slot,
                            msg,
                            555,
                            "Push Notification Service Not Supported",
                            |_| {},
                        );
                    }
                    let Some(prid) = p.prid.filter(|p| !p.is_empty()) else {
                        return self.reply(now, slot, msg, 400, "Missing pn-prid", |_| {});
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
            reqs.push(ContactReq {
                uri: uri.freeze(),
                expires,
                push,
                instance: c
                    .instance()
                    .map(|i| String::from_utf8_lossy(i).into_owned()),
            });
        }
        if star && (!reqs.is_empty() || default_expires != 0) {
            return self.reply(now, slot, msg, 400, "Invalid Contact *", |_| {});
        }
        let calls = &self.cfg.calls;
        if let Some(short) = reqs
            .iter()
            .find(|r| r.expires != 0 && r.expires < calls.phone_min_expires)
        {
            let _ = short;
            let min = calls.phone_min_expires;
            return self.reply(now, slot, msg, 423, "Interval Too Brief", |w| {
                w.header_u32("Min-Expires", min);
            });
        }
        let max = calls.phone_max_expires;
        let a = self.accounts.get_mut(&id).expect("looked up above");
        let mut woke = Vec::new();
        if star {
            // Contact: * with Expires: 0 — every SIP binding goes; the push
            // targets stay (the app logged out of SIP, not of pushes).
            for d in &mut a.devices {
                d.binding = None;
            }
        }
        for r in &reqs {
            let name = device_name(r);
            let idx = a.devices.iter().position(|d| {
                r.push.is_some() && d.push == r.push
                    || *d.name == name
                    || r.push.is_none()
                        && d.push.is_none()
                        && d.binding.as_ref().is_some_and(|b| b.uri == r.uri)
            });
            if r.expires == 0 {
                // An explicit unregister: the device is gone (logout).
                if let Some(i) = idx {
                    let d = a.devices.remove(i);
                    if d.push.is_some() {
                        self.events.push_back(super::Event::DeviceRemoved {
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
                    let d = &mut a.devices[i];
                    let changed = r.push.is_some() && d.push != r.push;
                    if changed {
                        d.push = r.push.clone();
                    }
                    d.binding = Some(binding);
                    (i, changed)
                }
                None => {
                    a.devices.push(Device {
                        name: name.into(),
                        push: r.push.clone(),
                        binding: Some(binding),
                    });
                    (a.devices.len() - 1, true)
                }
            };
            let d = &a.devices[i];
            if let Some(p) = d.push.as_ref().filter(|_| changed) {
                self.events.push_back(super::Event::DeviceSaved {
                    account: id,
                    device: d.name.to_string(),
                    provider: p.provider.to_string(),
                    prid: p.prid.to_string(),
                    param: p.param.as_deref().map(str::to_owned),
                });
            }
            woke.push(d.name.clone());
        }

        // 200 OK listing every live binding (§10.3 step 8) and, RFC 8599
        // §4.1.2, the push services sipis supports.
        let a = &self.accounts[&id];
        let mut contacts = Vec::new();
        for d in &a.devices {
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
            .iter()
            .find_map(|r| r.push.as_ref().map(|p| p.provider.clone()));
        let pnsreg = self.cfg.calls.pnsreg;
        self.reply(now, slot, msg, 200, "OK", |w| {
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
        // The app is up: calls waiting for it go out now (DESIGN §1.3
        // step 3), late wakes too (§1.4).
        for name in woke {
            self.device_ready(now, id, &name);
        }
    }
}
