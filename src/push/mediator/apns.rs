//! APNs: the provider API over HTTP/2 with token-based authentication.
//!
//! Apple, "Sending notification requests to APNs": `POST
//! /3/device/<device token>` with `authorization: bearer <provider token>`
//! and the `apns-*` headers; the answer is 200 with an `apns-id`, or a
//! status and a JSON `{"reason": ...}` ("Handling notification responses
//! from APNs"). What each answer means for sipis is in [`Verdict`].

use super::http2::{Client, Outgoing, Reply, Url};
use super::jwt::Es256Signer;
use super::retry::{self, Backoff};
use super::stats::{ClientCounts, Stats};
use super::{call_fields, ApnsConfig, MediatorError, Outcome};
use crate::push::{Environment, Platform, PushKind, PushRequest};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Apple: "the maximum payload size is 5 KB (5120 bytes)" for VoIP
/// notifications, 4 KB (4096 bytes) for all others.
pub(crate) const VOIP_PAYLOAD_LIMIT: usize = 5120;
pub(crate) const PAYLOAD_LIMIT: usize = 4096;
/// Apple: `apns-collapse-id` "must not exceed 64 bytes".
const COLLAPSE_ID_LIMIT: usize = 64;

/// A signed provider token and when it was issued.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    pub(crate) jwt: Arc<str>,
    pub(crate) iat: u64,
}

/// The provider token all pushes share, re-signed before it expires.
///
/// Apple, "Establishing a token-based connection to APNs": APNs refuses a
/// token older than one hour (`ExpiredProviderToken`) and one refreshed
/// more often than every 20 minutes (`TooManyProviderTokenUpdates`).
/// Re-signing after 50 minutes stays inside both limits.
pub(crate) struct ProviderToken {
    signer: Es256Signer,
    current: Mutex<Option<Issued>>,
    signed: AtomicU64,
}

impl ProviderToken {
    /// Age (seconds) at which a token is replaced.
    pub(crate) const REFRESH_AFTER: u64 = 50 * 60;

    pub(crate) fn new(signer: Es256Signer) -> ProviderToken {
        ProviderToken {
            signer,
            current: Mutex::new(None),
            signed: AtomicU64::new(0),
        }
    }

    /// The token to use at `now` (Unix seconds): the current one, or a
    /// new one when there is none, it is due, or the clock went back.
    pub(crate) fn get(&self, now: u64) -> Issued {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = &*cur {
            if now >= i.iat && now - i.iat < Self::REFRESH_AFTER {
                return i.clone();
            }
        }
        let issued = Issued {
            jwt: self.signer.sign(now).into(),
            iat: now,
        };
        self.signed.fetch_add(1, Ordering::Relaxed);
        *cur = Some(issued.clone());
        issued
    }

    /// APNs refused `jwt`: the next [`ProviderToken::get`] signs a new one,
    /// unless another push already replaced it (many pushes in flight
    /// see the same refusal; one re-signing is enough).
    pub(crate) fn discard(&self, jwt: &Arc<str>) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.as_ref().is_some_and(|i| Arc::ptr_eq(&i.jwt, jwt)) {
            *cur = None;
        }
    }

    /// Tokens signed so far.
    pub(crate) fn signed(&self) -> u64 {
        self.signed.load(Ordering::Relaxed)
    }
}

/// What an APNs answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Sent,
    /// 410 (`Unregistered`, `ExpiredToken`): the token is dead.
    Dead,
    /// 400 `BadDeviceToken`: maybe a token of the other environment.
    BadDeviceToken,
    /// 403 `ExpiredProviderToken`/`InvalidProviderToken`: sign anew.
    ProviderToken,
    /// 429 and 5xx: try again later.
    Retry,
    /// Anything else: not deliverable as sent.
    Reject,
}

/// Apple's status codes and reasons ("Handling notification responses
/// from APNs", table of status codes and of error strings).
pub(crate) fn verdict(status: u16, reason: &str) -> Verdict {
    match (status, reason) {
        (200, _) => Verdict::Sent,
        (410, _) => Verdict::Dead,
        (400, "BadDeviceToken") => Verdict::BadDeviceToken,
        (403, "ExpiredProviderToken" | "InvalidProviderToken") => Verdict::ProviderToken,
        (429, _) | (500..=599, _) => Verdict::Retry,
        _ => Verdict::Reject,
    }
}

/// One push as APNs wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) push_type: &'static str,
    pub(crate) topic: String,
    pub(crate) priority: &'static str,
    pub(crate) expiration: Option<&'static str>,
    pub(crate) collapse_id: String,
    pub(crate) payload: Bytes,
}

/// Builds the push for `req`. `default_topic` stands in for a device
/// without one; `team_id` is stripped from an RFC 8599 `pn-param`-style
/// topic (`<TeamID>.<bundle>.voip`).
pub(crate) fn plan(
    req: &PushRequest,
    default_topic: Option<&str>,
    team_id: &str,
) -> Result<Plan, String> {
    let topic = req
        .device
        .topic
        .as_deref()
        .filter(|t| !t.is_empty())
        .or(default_topic)
        .ok_or("the device has no APNs topic and mediator.apns.default_topic is not set")?;
    let topic = topic
        .strip_prefix(team_id)
        .and_then(|t| t.strip_prefix('.'))
        .unwrap_or(topic);
    let bundle = topic.strip_suffix(".voip").unwrap_or(topic);
    if bundle.is_empty() || !bundle.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("APNs topic {topic:?} is not a bundle id"));
    }
    let mut body = Map::new();
    let (push_type, topic, priority, expiration, limit) = match req.kind {
        // Apple, "Responding to VoIP Notifications from PushKit" and the
        // apns-push-type table: VoIP pushes go to `<bundle>.voip` with
        // priority 10; expiration 0 because a call push delivered late is
        // worse than none (the call is over).
        PushKind::IncomingCall => (
            "voip",
            format!("{bundle}.voip"),
            "10",
            Some("0"),
            VOIP_PAYLOAD_LIMIT,
        ),
        // Not a VoIP push: since iOS 13 every VoIP push must report a new
        // call to CallKit. A background push (content-available, which
        // Apple requires to be priority 5) lets the app clear the call.
        PushKind::CallCancelled => {
            body.insert("aps".into(), json!({"content-available": 1}));
            (
                "background",
                bundle.to_string(),
                "5",
                Some("0"),
                PAYLOAD_LIMIT,
            )
        }
        // A visible notification, stored by APNs until the phone is back
        // (no apns-expiration: Apple's default storage).
        PushKind::MissedCall => {
            let who = req
                .call
                .caller_name
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(&req.call.caller_uri);
            body.insert(
                "aps".into(),
                json!({"alert": {"title": "Missed call", "body": who}}),
            );
            ("alert", bundle.to_string(), "10", None, PAYLOAD_LIMIT)
        }
    };
    for (k, v) in call_fields(req) {
        body.insert(k.into(), Value::String(v));
    }
    let payload = serde_json::to_vec(&Value::Object(body)).expect("a JSON map encodes");
    if payload.len() > limit {
        return Err(format!(
            "APNs payload of {} bytes is over the {limit}-byte limit of {push_type} pushes \
             (caller or call id too long)",
            payload.len()
        ));
    }
    Ok(Plan {
        push_type,
        topic,
        priority,
        expiration,
        collapse_id: collapse_id(&req.call.call_id),
        payload: payload.into(),
    })
}

/// The call id, or its SHA-256 in hex when longer than APNs allows: every
/// push about one call collapses into one notification.
fn collapse_id(call_id: &str) -> String {
    if call_id.len() <= COLLAPSE_ID_LIMIT {
        call_id.to_string()
    } else {
        Sha256::digest(call_id.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// A fresh `apns-id` (a random UUID, RFC 9562 version 4): sent with the
/// request so that it is in our logs even when APNs never answers.
fn new_apns_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        b = t.to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn other(env: Environment) -> Environment {
    match env {
        Environment::Production => Environment::Sandbox,
        Environment::Sandbox => Environment::Production,
    }
}

pub(crate) fn env_str(env: Environment) -> &'static str {
    match env {
        Environment::Production => "production",
        Environment::Sandbox => "sandbox",
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The APNs side of the mediator.
pub(crate) struct Apns {
    key_file: PathBuf,
    key_id: String,
    team_id: String,
    default_topic: Option<String>,
    production: Url,
    sandbox: Url,
    client: Client,
    token: ProviderToken,
    request_timeout: Duration,
}

impl Apns {
    /// Loads the key and checks the URLs; errors name the setting.
    pub(crate) fn new(cfg: &ApnsConfig, request_timeout: Duration) -> Result<Apns, MediatorError> {
        let signer = load_key(cfg).map_err(|problem| MediatorError::File {
            key: "mediator.apns.key_file",
            path: cfg.key_file.clone(),
            problem,
        })?;
        let url = |key: &'static str, u: &str| {
            Url::parse(u).map_err(|problem| MediatorError::Config { key, problem })
        };
        let production = url("mediator.apns.production_url", &cfg.production_url)?;
        let sandbox = url("mediator.apns.sandbox_url", &cfg.sandbox_url)?;
        let tls = super::http2::tls_config(cfg.ca_file.as_deref()).map_err(|problem| {
            MediatorError::Config {
                key: "mediator.apns.ca_file",
                problem,
            }
        })?;
        Ok(Apns {
            key_file: cfg.key_file.clone(),
            key_id: cfg.key_id.clone(),
            team_id: cfg.team_id.clone(),
            default_topic: cfg.default_topic.clone(),
            production,
            sandbox,
            client: Client::new(tls),
            token: ProviderToken::new(signer),
            request_timeout,
        })
    }

    pub(crate) fn counts(&self) -> ClientCounts {
        ClientCounts {
            tokens: self.token.signed(),
            connections: self.client.connects(),
        }
    }

    fn url(&self, env: Environment) -> &Url {
        match env {
            Environment::Production => &self.production,
            Environment::Sandbox => &self.sandbox,
        }
    }

    /// Delivers one push, retrying inside `deadline`.
    pub(crate) async fn send(
        &self,
        req: &PushRequest,
        deadline: Instant,
        stats: &Stats,
    ) -> Outcome {
        let token = &req.device.token;
        if token.is_empty() || token.len() > 200 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Outcome::rejected(format!(
                "APNs device token {token:?} is not a hex string of at most 200 digits"
            ));
        }
        let plan = match plan(req, self.default_topic.as_deref(), &self.team_id) {
            Ok(p) => p,
            Err(e) => return Outcome::rejected(e),
        };
        let apns_id = new_apns_id();
        let mut env = req.device.environment;
        let mut other_tried = false;
        let mut resigned = false;
        let mut backoff = Backoff::new(deadline);
        // APNs's last "busy" answer: when the deadline then cuts the last
        // attempt short, that answer is what the push failed on.
        let mut busy: Option<String> = None;
        loop {
            let now = Instant::now();
            let timeout = self
                .request_timeout
                .min(deadline.saturating_duration_since(now));
            if timeout.is_zero() {
                return Outcome::failed(format!("APNs: deadline reached (apns-id {apns_id})"));
            }
            let issued = self.token.get(unix_now());
            let url = self.url(env);
            let out = Outgoing {
                method: Method::POST,
                path: &device_path(&url.path, token),
                headers: headers(&plan, &issued.jwt, &apns_id),
                body: plan.payload.clone(),
            };
            let answer = self.client.send(&url.origin, &out, timeout).await;
            let env_name = env_str(env);
            let (reply, reason): (Reply, String) = match answer {
                Ok(reply) => {
                    let reason = reason_of(&reply.body);
                    (reply, reason)
                }
                Err(e) => {
                    tracing::warn!(push = %req.id, apns_id = %apns_id, environment = env_name,
                        error = %e, "APNs request failed");
                    match backoff.next(Instant::now(), None) {
                        Some(wait) => {
                            stats.retried(Platform::Apns);
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                        None => {
                            return Outcome::failed(match &busy {
                                Some(what) => format!(
                                    "{what}; gave up at the deadline after {} retries (the \
                                     last attempt: {e}) (apns-id {apns_id})",
                                    backoff.retries
                                ),
                                None => format!(
                                    "APNs {env_name}: {e}; gave up at the deadline after {} \
                                     retries (apns-id {apns_id})",
                                    backoff.retries
                                ),
                            })
                        }
                    }
                }
            };
            // APNs echoes the apns-id we sent.
            let id = reply
                .headers
                .get("apns-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(&apns_id)
                .to_string();
            tracing::debug!(push = %req.id, apns_id = %id, environment = env_name,
                status = reply.status, reason = %reason, "APNs answer");
            let status = reply.status;
            let what = if reason.is_empty() {
                format!("APNs {env_name} {status}")
            } else {
                format!("APNs {env_name} {status} {reason}")
            };
            match verdict(status, &reason) {
                Verdict::Sent => return Outcome::sent(Some(id), Some(env)),
                Verdict::Dead => return Outcome::dead(what).with_id(id),
                Verdict::BadDeviceToken if !other_tried => {
                    // A development build's token sent to production (or
                    // the reverse) is a BadDeviceToken, not a dead one.
                    other_tried = true;
                    env = other(env);
                    stats.environment_fallbacks.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(push = %req.id, apns_id = %id, "BadDeviceToken in {env_name}: trying {}", env_str(env));
                }
                Verdict::BadDeviceToken => {
                    return Outcome::dead(format!("{what} (BadDeviceToken in both environments)"))
                        .with_id(id)
                }
                Verdict::ProviderToken if !resigned => {
                    resigned = true;
                    tracing::warn!(push = %req.id, apns_id = %id, reason = %reason,
                        "APNs refused the provider token: signing a new one");
                    self.token.discard(&issued.jwt);
                }
                Verdict::ProviderToken => {
                    return Outcome::rejected(format!(
                        "{what}: APNs refuses provider tokens signed with mediator.apns.key_file \
                         {} (key_id {}, team_id {}) even freshly signed: check the key file, \
                         key id and team id",
                        self.key_file.display(),
                        self.key_id,
                        self.team_id
                    ))
                    .with_id(id)
                }
                Verdict::Retry => {
                    busy = Some(what.clone());
                    let after = retry::retry_after(&reply.headers, SystemTime::now());
                    match backoff.next(Instant::now(), after) {
                        Some(wait) => {
                            stats.retried(Platform::Apns);
                            tracing::info!(push = %req.id, apns_id = %id, status,
                                wait_ms = wait.as_millis() as u64, "APNs busy: retrying");
                            tokio::time::sleep(wait).await;
                        }
                        None => {
                            let hint = match after {
                                Some(a) => format!(" (Retry-After {} s)", a.as_secs()),
                                None => String::new(),
                            };
                            return Outcome::failed(format!(
                                "{what}{hint}; gave up at the deadline after {} retries",
                                backoff.retries
                            ))
                            .with_id(id);
                        }
                    }
                }
                Verdict::Reject => return Outcome::rejected(what).with_id(id),
            }
        }
    }
}

/// `/3/device/<token>` under the URL's path.
fn device_path(base: &str, token: &str) -> String {
    format!("{}/3/device/{token}", base.trim_end_matches('/'))
}

fn headers(plan: &Plan, jwt: &str, apns_id: &str) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(8);
    let mut put = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    put("authorization", &format!("bearer {jwt}"));
    put("apns-id", apns_id);
    put("apns-push-type", plan.push_type);
    put("apns-topic", &plan.topic);
    put("apns-priority", plan.priority);
    if let Some(e) = plan.expiration {
        put("apns-expiration", e);
    }
    put("apns-collapse-id", &plan.collapse_id);
    put("content-type", "application/json");
    h
}

/// The `reason` of an APNs error body (empty when there is none).
fn reason_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("reason")?.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn load_key(cfg: &ApnsConfig) -> Result<Es256Signer, String> {
    let pem = std::fs::read(&cfg.key_file).map_err(|e| format!("cannot read: {e}"))?;
    Es256Signer::from_pem(&pem, &cfg.key_id, &cfg.team_id).map_err(|e| e.to_string())
}

/// What is wrong with the `.p8` key file, if anything.
pub(crate) fn check_key(cfg: &ApnsConfig) -> Option<String> {
    load_key(cfg).err()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::{PushCall, PushDevice};

    fn request(kind: PushKind) -> PushRequest {
        PushRequest {
            id: "a1b2c3d4e5f60718".into(),
            kind,
            account: 42,
            device: PushDevice {
                id: "iphone".into(),
                platform: Platform::Apns,
                token: "00ff".into(),
                topic: Some("TEAM123456.com.example.phone.voip".into()),
                environment: Environment::Production,
            },
            call: PushCall {
                call_id: "3848276298220188511@pbx".into(),
                caller_uri: "sip:bob@example.com".into(),
                caller_name: Some("Bob".into()),
                callee: "sip:alice@example.com".into(),
                reason: None,
            },
            timestamp_ms: 1_763_800_000_123,
        }
    }

    #[test]
    fn voip_push_for_incoming_call() {
        let p = plan(&request(PushKind::IncomingCall), None, "TEAM123456").unwrap();
        assert_eq!(p.push_type, "voip");
        assert_eq!(p.topic, "com.example.phone.voip");
        assert_eq!(p.priority, "10");
        assert_eq!(p.expiration, Some("0"));
        assert_eq!(p.collapse_id, "3848276298220188511@pbx");
        let v: Value = serde_json::from_slice(&p.payload).unwrap();
        assert_eq!(
            v,
            json!({"kind": "incoming_call", "push_id": "a1b2c3d4e5f60718",
                   "call_id": "3848276298220188511@pbx", "caller": "sip:bob@example.com",
                   "caller_name": "Bob", "callee": "sip:alice@example.com"})
        );
    }

    #[test]
    fn alert_push_for_missed_call_goes_to_the_bundle() {
        let mut r = request(PushKind::MissedCall);
        r.device.topic = None;
        r.call.reason = Some("no_response".into());
        let p = plan(&r, Some("com.example.phone.voip"), "TEAM123456").unwrap();
        assert_eq!(
            (p.push_type, p.topic.as_str(), p.priority, p.expiration),
            ("alert", "com.example.phone", "10", None)
        );
        let v: Value = serde_json::from_slice(&p.payload).unwrap();
        assert_eq!(
            v["aps"],
            json!({"alert": {"title": "Missed call", "body": "Bob"}})
        );
        assert_eq!(v["reason"], "no_response");
        let p = plan(&request(PushKind::CallCancelled), None, "T").unwrap();
        assert_eq!((p.push_type, p.priority), ("background", "5"));
    }

    #[test]
    fn payload_limits_and_topics() {
        let mut r = request(PushKind::IncomingCall);
        // 5120 bytes is fine for VoIP, not for an alert.
        let base = plan(&r, None, "TEAM123456").unwrap().payload.len();
        r.call.caller_name = Some("x".repeat(5120 - base + 3));
        assert_eq!(plan(&r, None, "TEAM123456").unwrap().payload.len(), 5120);
        r.call.caller_name = Some("x".repeat(5120 - base + 4));
        let e = plan(&r, None, "TEAM123456").unwrap_err();
        assert!(e.contains("5121 bytes") && e.contains("5120-byte"), "{e}");
        r.kind = PushKind::MissedCall;
        r.call.caller_name = Some("x".repeat(4000));
        assert!(plan(&r, None, "T").unwrap_err().contains("4096-byte"));
        r.device.topic = None;
        assert!(plan(&r, None, "T").unwrap_err().contains("default_topic"));
    }

    #[test]
    fn long_call_ids_collapse_on_their_hash() {
        assert_eq!(collapse_id("abc"), "abc");
        let long = "x".repeat(65);
        let c = collapse_id(&long);
        assert_eq!(c.len(), 64);
        assert_ne!(c, long[..64]);
    }

    #[test]
    fn apple_answers() {
        assert_eq!(verdict(200, ""), Verdict::Sent);
        assert_eq!(verdict(410, "Unregistered"), Verdict::Dead);
        assert_eq!(verdict(410, "ExpiredToken"), Verdict::Dead);
        assert_eq!(verdict(400, "BadDeviceToken"), Verdict::BadDeviceToken);
        assert_eq!(verdict(400, "BadTopic"), Verdict::Reject);
        assert_eq!(verdict(403, "ExpiredProviderToken"), Verdict::ProviderToken);
        assert_eq!(verdict(403, "InvalidProviderToken"), Verdict::ProviderToken);
        assert_eq!(verdict(403, "BadCertificate"), Verdict::Reject);
        assert_eq!(verdict(413, "PayloadTooLarge"), Verdict::Reject);
        assert_eq!(verdict(429, "TooManyRequests"), Verdict::Retry);
        assert_eq!(verdict(500, "InternalServerError"), Verdict::Retry);
        assert_eq!(verdict(503, "ServiceUnavailable"), Verdict::Retry);
    }

    #[test]
    fn apns_ids_are_v4_uuids() {
        let a = new_apns_id();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
        assert_ne!(a, new_apns_id());
    }

    #[test]
    fn provider_token_is_resigned_after_50_minutes_and_on_discard() {
        let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem();
        let t = ProviderToken::new(Es256Signer::from_pem(pem.as_bytes(), "K", "T").unwrap());
        let t0 = 1_763_800_000;
        let a = t.get(t0);
        assert_eq!(a.iat, t0);
        assert!(Arc::ptr_eq(&t.get(t0 + 49 * 60 + 59).jwt, &a.jwt));
        let b = t.get(t0 + 50 * 60);
        assert_eq!(b.iat, t0 + 50 * 60);
        assert_eq!(t.signed(), 2);
        // Discarding a replaced token does nothing; the current one, re-signs.
        t.discard(&a.jwt);
        assert!(Arc::ptr_eq(&t.get(t0 + 50 * 60 + 1).jwt, &b.jwt));
        t.discard(&b.jwt);
        assert_eq!(t.get(t0 + 50 * 60 + 1).iat, t0 + 50 * 60 + 1);
        // A clock that went back gets a token it can use.
        assert_eq!(t.get(t0).iat, t0);
        assert_eq!(t.signed(), 4);
    }
}
