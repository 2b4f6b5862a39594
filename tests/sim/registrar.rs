//! A simulated registrar (RFC 3261 §10.3) that challenges with digest, keeps
//! bindings with Call-ID/CSeq ordering, can shorten or refuse expiry, and
//! records what a test asserts on: every REGISTER it saw, bindings that
//! lapsed, duplicates.

use super::Peer;
use bytes::{Bytes, BytesMut};
use sipis::digest::{Algorithm, Credentials, Ha1, NonceVerifier, Verdict, VerifierConfig};
use sipis::parser::{parse, response_to, HeaderName, EMPTY_HEADER};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One contact binding of an AOR.
#[derive(Debug, Clone)]
pub struct Binding {
    pub contact: String,
    pub call_id: String,
    pub cseq: u32,
    pub expires_at: Instant,
}

/// What the registrar does with REGISTERs.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Normal operation.
    Serve,
    /// Answers every REGISTER with this status (e.g. 503), after auth.
    Fail(u16, Option<u32>),
    /// Drops every REGISTER.
    Silent,
}

pub struct SimRegistrar {
    addr: SocketAddr,
    pub realm: String,
    users: HashMap<String, String>,
    verifier: NonceVerifier,
    pub mode: Mode,
    /// Largest expiry it grants.
    pub max_expires: u32,
    /// Smallest expiry it accepts (423 below).
    pub min_expires: Option<u32>,
    pub bindings: HashMap<String, Vec<Binding>>,
    /// (time, AOR, CSeq, had credentials) of every REGISTER received,
    /// retransmissions included.
    pub log: Vec<(Instant, String, u32, bool)>,
    /// Bindings found expired when their refresh arrived: (AOR, late by).
    pub lapses: Vec<(String, Duration)>,
    /// Responses by branch, to answer retransmissions like a server
    /// transaction would.
    cache: HashMap<Vec<u8>, Bytes>,
    tag: u64,
    /// OPTIONS received (probes and keep-alives).
    pub options: u64,
}

impl SimRegistrar {
    pub fn new(addr: SocketAddr, realm: &str, start: Instant) -> Self {
        SimRegistrar {
            addr,
            realm: realm.into(),
            users: HashMap::new(),
            verifier: NonceVerifier::new(
                [7; 32],
                start,
                VerifierConfig {
                    lifetime: Duration::from_secs(7200),
                    // Room for a nonce per account in the 100 000-account runs:
                    // evicted nonces would cost every refresh a stale round trip.
                    max_tracked: 1 << 18,
                    ..VerifierConfig::default()
                },
            ),
            mode: Mode::Serve,
            max_expires: 3600,
            min_expires: None,
            bindings: HashMap::new(),
            log: Vec::new(),
            lapses: Vec::new(),
            cache: HashMap::new(),
            tag: 0,
            options: 0,
        }
    }

    pub fn add_user(&mut self, user: &str, password: &str) {
        self.users.insert(user.into(), password.into());
    }

    /// Live bindings of an AOR at `now`.
    pub fn live(&self, aor: &str, now: Instant) -> Vec<&Binding> {
        self.bindings
            .get(aor)
            .map(|v| v.iter().filter(|b| b.expires_at > now).collect())
            .unwrap_or_default()
    }

    fn respond(
        &mut self,
        req: &[u8],
        from: SocketAddr,
        code: u16,
        reason: &str,
        extra: &[(&str, String)],
    ) -> Option<Bytes> {
        let mut h = [EMPTY_HEADER; 32];
        let msg = parse(req, &mut h).ok()?;
        let mut out = BytesMut::new();
        self.tag += 1;
        let tag = format!("reg{}", self.tag);
        let mut w = response_to(&mut out, &msg, code, reason, tag.as_bytes(), from).ok()?;
        for (n, v) in extra {
            w.header(n, v.as_bytes());
        }
        w.finish(b"");
        Some(out.freeze())
    }

    fn register(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Option<Bytes> {
        let mut h = [EMPTY_HEADER; 32];
        let msg = parse(data, &mut h).ok()?;
        msg.validate().ok()?;
        let aor = String::from_utf8(msg.to().ok()?.uri.raw.to_vec()).ok()?;
        let cseq = msg.cseq().ok()?.seq;
        let call_id = String::from_utf8(msg.call_id().ok()?.to_vec()).ok()?;
        let auth = msg
            .auth(HeaderName::Authorization)
            .filter_map(Result::ok)
            .next();
        self.log.push((now, aor.clone(), cseq, auth.is_some()));
        if matches!(self.mode, Mode::Silent) {
            return None;
        }
        let challenge = |me: &mut Self, stale: bool| {
            let mut v = Vec::new();
            let realm = me.realm.clone();
            me.verifier.challenge(&realm, stale, now, &mut v).ok()?;
            let extra: Vec<_> = v.into_iter().map(|c| ("WWW-Authenticate", c)).collect();
            me.respond(data, from, 401, "Unauthorized", &extra)
        };
        let Some(auth) = auth else {
            return challenge(self, false);
        };
        let params: Vec<(&str, String)> = auth
            .params()
            .filter_map(Result::ok)
            .map(|p| (p.name, String::from_utf8_lossy(p.value).into_owned()))
            .collect();
        let creds = Credentials::from_params(params.iter().map(|(n, v)| (*n, v.as_str()))).ok()?;
        let (users, realm) = (&self.users, &self.realm);
        let verdict =
            self.verifier
                .verify(&creds, "REGISTER", realm, now, |user, alg: Algorithm| {
                    users
                        .get(user)
                        .map(|p| Ha1::from_password(alg, user, realm, p))
                });
        match verdict {
            Verdict::Ok => {}
            Verdict::Stale | Verdict::Replay => return challenge(self, true),
            Verdict::BadResponse | Verdict::UnknownUser => {
                return self.respond(data, from, 403, "Forbidden", &[])
            }
            _ => return challenge(self, false),
        }
        if let Mode::Fail(code, retry_after) = self.mode {
            let extra: Vec<_> = retry_after
                .map(|r| ("Retry-After", r.to_string()))
                .into_iter()
                .collect();
            return self.respond(data, from, code, "Simulated Failure", &extra);
        }
        let contact = msg.contacts().next()?.ok()?;
        let addr = contact.addr()?;
        let contact_uri = String::from_utf8(addr.uri.raw.to_vec()).ok()?;
        let asked = contact
            .expires()
            .and_then(Result::ok)
            .or(msg.expires().ok().flatten())
            .unwrap_or(3600);
        if let Some(min) = self.min_expires {
            if asked != 0 && asked < min {
                return self.respond(
                    data,
                    from,
                    423,
                    "Interval Too Brief",
                    &[("Min-Expires", min.to_string())],
                );
            }
        }
        let granted = asked.min(self.max_expires);
        let list = self.bindings.entry(aor.clone()).or_default();
        match list.iter_mut().position(|b| b.contact == contact_uri) {
            Some(i) => {
                let b = &mut list[i];
                if b.call_id == call_id && cseq <= b.cseq {
                    // RFC 3261 §10.3 step 7: out-of-order CSeq fails.
                    return self.respond(data, from, 500, "CSeq Out Of Order", &[]);
                }
                if b.expires_at <= now {
                    self.lapses.push((aor.clone(), now - b.expires_at));
                }
                if granted == 0 {
                    list.remove(i);
                } else {
                    b.call_id = call_id;
                    b.cseq = cseq;
                    b.expires_at = now + Duration::from_secs(granted.into());
                }
            }
            None if granted > 0 => list.push(Binding {
                contact: contact_uri.clone(),
                call_id,
                cseq,
                expires_at: now + Duration::from_secs(granted.into()),
            }),
            None => {}
        }
        let contacts = format!("<{contact_uri}>;expires={granted}");
        self.respond(data, from, 200, "OK", &[("Contact", contacts)])
    }
}

impl Peer for SimRegistrar {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn handle(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        out: &mut Vec<(SocketAddr, Bytes)>,
    ) {
        let mut h = [EMPTY_HEADER; 32];
        let Ok(msg) = parse(data, &mut h) else { return };
        if !msg.is_request() {
            return;
        }
        if msg.method() == Some(sipis::parser::Method::Options) {
            // A probe: answered while serving, lost while silent.
            self.options += 1;
            if !matches!(self.mode, Mode::Silent) {
                if let Some(r) = self.respond(data, from, 200, "OK", &[]) {
                    out.push((from, r));
                }
            }
            return;
        }
        let Ok(via) = msg.top_via() else { return };
        let branch = via.branch().unwrap_or_default().to_vec();
        if let Some(r) = self.cache.get(&branch) {
            out.push((from, r.clone()));
            return;
        }
        if let Some(r) = self.register(now, from, data) {
            self.cache.insert(branch, r.clone());
            out.push((from, r));
        }
    }
}
