//! FCM HTTP v1: OAuth2 access tokens from a Google service account, and
//! high-priority data messages.
//!
//! Google, "Using OAuth 2.0 for Server to Server Applications": the
//! service account signs a JWT assertion (RS256; `iss` = its email,
//! `scope`, `aud` = the token endpoint, `iat`, `exp` ≤ one hour later)
//! and trades it at the token endpoint (`grant_type=
//! urn:ietf:params:oauth:grant-type:jwt-bearer`, RFC 7523) for an access
//! token valid `expires_in` seconds. Firebase, "Send messages with the FCM
//! HTTP v1 API": `POST /v1/projects/<project>/messages:send` with
//! `Authorization: Bearer <access token>`; errors carry an `FcmError`
//! `errorCode` in their details ("ErrorCode" reference).

use super::http2::{Client, Origin, Outgoing, Url};
use super::jwt::Rs256Signer;
use super::retry::{self, Backoff};
use super::stats::{ClientCounts, Stats};
use super::{call_fields, FcmConfig, MediatorError, Outcome};
use crate::push::{Platform, PushKind, PushRequest};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The OAuth2 scope of FCM sends.
pub(crate) const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The JWT bearer grant (RFC 7523 §2.1), form-encoded.
const GRANT_TYPE: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";
/// Lifetime asked for the assertion (Google's maximum).
const ASSERTION_LIFETIME: u64 = 3600;
/// Firebase: "the maximum payload for both message types is 4096 bytes".
pub(crate) const PAYLOAD_LIMIT: usize = 4096;
/// Stands in for `{project}` while the send URL is parsed (braces are not
/// allowed in URLs).
const PROJECT_MARK: &str = "sipis-project-placeholder";

/// The parts of a service-account JSON file the mediator uses.
pub(crate) struct ServiceAccount {
    pub(crate) client_email: String,
    pub(crate) private_key_id: Option<String>,
    pub(crate) token_uri: Option<String>,
    pub(crate) project_id: Option<String>,
    pub(crate) signer: Rs256Signer,
}

#[derive(Deserialize)]
struct AccountFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
    project_id: Option<String>,
}

/// Reads and checks a service-account file; the message says what is
/// wrong (the caller names the file). `project_known`/`token_url_known`:
/// whether the configuration supplies what the file may lack.
pub(crate) fn load_service_account(
    path: &Path,
    project_known: bool,
    token_url_known: bool,
) -> Result<ServiceAccount, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let f: AccountFile = serde_json::from_slice(&text)
        .map_err(|e| format!("not a service-account JSON file: {e}"))?;
    if let Some(k) = &f.kind {
        if k != "service_account" {
            return Err(format!(
                "\"type\" is {k:?}, not \"service_account\" (download a key of a service \
                 account: Firebase console, Project settings, Service accounts)"
            ));
        }
    }
    let present = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
    let mut missing = Vec::new();
    if !present(&f.client_email) {
        missing.push("\"client_email\"");
    }
    if !present(&f.private_key) {
        missing.push("\"private_key\"");
    }
    if !present(&f.token_uri) && !token_url_known {
        missing.push("\"token_uri\" (or set mediator.fcm.token_url)");
    }
    if !present(&f.project_id) && !project_known {
        missing.push("\"project_id\" (or set mediator.fcm.project_id)");
    }
    if !missing.is_empty() {
        return Err(format!("missing {}", missing.join(", ")));
    }
    let pem = f.private_key.unwrap_or_default();
    let signer =
        Rs256Signer::from_pem(pem.as_bytes()).map_err(|e| format!("bad \"private_key\": {e}"))?;
    Ok(ServiceAccount {
        client_email: f.client_email.unwrap_or_default(),
        private_key_id: f.private_key_id.filter(|s| !s.is_empty()),
        token_uri: f.token_uri.filter(|s| !s.is_empty()),
        project_id: f.project_id.filter(|s| !s.is_empty()),
        signer,
    })
}

/// What an FCM answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Sent,
    /// `UNREGISTERED`: the app instance is gone.
    Dead,
    /// 401: the access token is no longer accepted; fetch another.
    Unauthenticated,
    /// 429 (`QUOTA_EXCEEDED`), 500 (`INTERNAL`), 503 (`UNAVAILABLE`).
    Retry,
    /// `INVALID_ARGUMENT`, `SENDER_ID_MISMATCH`, `PERMISSION_DENIED`...
    Reject,
}

/// The `error.status` and FCM `errorCode` of an error body.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct FcmErrorBody {
    pub(crate) status: String,
    pub(crate) code: Option<String>,
    pub(crate) message: String,
}

pub(crate) fn error_body(body: &[u8]) -> FcmErrorBody {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return FcmErrorBody::default();
    };
    let e = &v["error"];
    let code = e["details"].as_array().and_then(|d| {
        d.iter()
            .filter(|x| {
                x["@type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("google.firebase.fcm.v1.FcmError"))
            })
            .find_map(|x| x["errorCode"].as_str().map(str::to_string))
    });
    FcmErrorBody {
        status: e["status"].as_str().unwrap_or_default().to_string(),
        code,
        message: e["message"].as_str().unwrap_or_default().to_string(),
    }
}

/// Firebase's "ErrorCode" table: UNREGISTERED is HTTP 404 (a 404 without
/// it — a wrong project in the URL — must not cost the device its token).
pub(crate) fn verdict(status: u16, err: &FcmErrorBody) -> Verdict {
    if status == 200 {
        return Verdict::Sent;
    }
    if err.code.as_deref() == Some("UNREGISTERED") || err.status == "UNREGISTERED" {
        return Verdict::Dead;
    }
    match status {
        401 => Verdict::Unauthenticated,
        429 | 500..=599 => Verdict::Retry,
        _ => Verdict::Reject,
    }
}

/// The message for `req` (`Message` of the v1 API).
pub(crate) fn message(req: &PushRequest) -> Result<Value, String> {
    let mut data = Map::new();
    for (k, v) in call_fields(req) {
        data.insert(k.into(), Value::String(v));
    }
    let data = Value::Object(data);
    let size = data.to_string().len();
    if size > PAYLOAD_LIMIT {
        return Err(format!(
            "FCM data of {size} bytes is over the {PAYLOAD_LIMIT}-byte limit \
             (caller or call id too long)"
        ));
    }
    // Data messages (no `notification`): the app decides what to show.
    // High priority wakes a dozing device ("Set and manage Android message
    // priority"). An incoming-call push is worth nothing late: TTL 0 means
    // "now or never". A cancellation is kept briefly in case the phone
    // blinked off; a missed call is kept as long as FCM keeps messages.
    let mut android = json!({"priority": "high", "collapse_key": req.call.call_id});
    match req.kind {
        PushKind::IncomingCall => android["ttl"] = json!("0s"),
        PushKind::CallCancelled => android["ttl"] = json!("60s"),
        PushKind::MissedCall => {}
    }
    Ok(json!({"message": {"token": req.device.token, "data": data, "android": android}}))
}

/// Google project ids are letters, digits and `-` (domain-scoped ones
/// add `.` and `:`): nothing that could change the request path.
fn valid_project(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 100
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'_'))
}

struct AccessToken {
    token: Arc<str>,
    /// When a new one is fetched (before the expiry, so that no push
    /// waits on a refresh at the last moment).
    refresh_at: Instant,
    expires_at: Instant,
}

/// The FCM side of the mediator.
pub(crate) struct Fcm {
    file: PathBuf,
    account: ServiceAccount,
    token_url: Url,
    token_url_text: String,
    send_origin: Origin,
    /// With `{project}` where the project goes.
    send_path: String,
    project: Option<String>,
    client: Client,
    access: tokio::sync::Mutex<Option<AccessToken>>,
    fetched: AtomicU64,
    request_timeout: Duration,
}

impl Fcm {
    pub(crate) fn new(cfg: &FcmConfig, request_timeout: Duration) -> Result<Fcm, MediatorError> {
        let account = load_service_account(
            &cfg.service_account_file,
            cfg.project_id.is_some(),
            cfg.token_url.is_some(),
        )
        .map_err(|problem| MediatorError::File {
            key: "mediator.fcm.service_account_file",
            path: cfg.service_account_file.clone(),
            problem,
        })?;
        let token_url_text = cfg
            .token_url
            .clone()
            .or_else(|| account.token_uri.clone())
            .unwrap_or_default();
        let token_url = Url::parse(&token_url_text).map_err(|problem| MediatorError::Config {
            key: if cfg.token_url.is_some() {
                "mediator.fcm.token_url"
            } else {
                "mediator.fcm.service_account_file"
            },
            problem,
        })?;
        let send =
            Url::parse(&cfg.send_url.replace("{project}", PROJECT_MARK)).map_err(|problem| {
                MediatorError::Config {
                    key: "mediator.fcm.send_url",
                    problem,
                }
            })?;
        let tls = super::http2::tls_config(cfg.ca_file.as_deref()).map_err(|problem| {
            MediatorError::Config {
                key: "mediator.fcm.ca_file",
                problem,
            }
        })?;
        Ok(Fcm {
            file: cfg.service_account_file.clone(),
            project: cfg
                .project_id
                .clone()
                .or_else(|| account.project_id.clone()),
            account,
            token_url,
            token_url_text,
            send_origin: send.origin,
            send_path: send.path.replace(PROJECT_MARK, "{project}"),
            client: Client::new(tls),
            access: tokio::sync::Mutex::new(None),
            fetched: AtomicU64::new(0),
            request_timeout,
        })
    }

    pub(crate) fn counts(&self) -> ClientCounts {
        ClientCounts {
            tokens: self.fetched.load(Ordering::Relaxed),
            connections: self.client.connects(),
        }
    }

    fn attempt_timeout(&self, deadline: Instant) -> Duration {
        self.request_timeout
            .min(deadline.saturating_duration_since(Instant::now()))
    }

    /// The access token to send with, fetching one when there is none or
    /// the current one is due for refresh.
    async fn access_token(&self, deadline: Instant, stats: &Stats) -> Result<Arc<str>, Outcome> {
        // Held while fetching: concurrent pushes wait for one fetch.
        let mut access = self.access.lock().await;
        let now = Instant::now();
        if let Some(t) = &*access {
            if now < t.refresh_at {
                return Ok(t.token.clone());
            }
        }
        match self.fetch_token(deadline, stats).await {
            Ok(t) => {
                let token = t.token.clone();
                *access = Some(t);
                Ok(token)
            }
            // The old token still works for a while: use it and let the
            // next push try the endpoint again.
            Err(e) => match &*access {
                Some(t) if Instant::now() < t.expires_at => {
                    tracing::warn!(error = ?e.error, "FCM access token refresh failed; the current one is still valid");
                    Ok(t.token.clone())
                }
                _ => Err(e),
            },
        }
    }

    /// The send was refused with `token`: forget it unless already replaced.
    async fn discard(&self, token: &Arc<str>) {
        let mut access = self.access.lock().await;
        if access
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(&t.token, token))
        {
            *access = None;
        }
    }

    fn assertion(&self) -> String {
        let iat = super::apns::unix_now();
        let mut header = json!({});
        if let Some(kid) = &self.account.private_key_id {
            header["kid"] = json!(kid);
        }
        let claims = json!({
            "iss": self.account.client_email,
            "scope": SCOPE,
            "aud": self.token_url_text,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME,
        });
        self.account.signer.sign(header, &claims)
    }

    async fn fetch_token(&self, deadline: Instant, stats: &Stats) -> Result<AccessToken, Outcome> {
        let mut backoff = Backoff::new(deadline);
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert("accept", HeaderValue::from_static("application/json"));
        let url = &self.token_url_text;
        loop {
            let timeout = self.attempt_timeout(deadline);
            if timeout.is_zero() {
                return Err(Outcome::failed(format!(
                    "FCM token endpoint {url}: deadline reached"
                )));
            }
            // The JWT is base64url and dots: nothing to escape in a form.
            let body = format!("grant_type={GRANT_TYPE}&assertion={}", self.assertion());
            let out = Outgoing {
                method: Method::POST,
                path: &self.token_url.path,
                headers: headers.clone(),
                body: Bytes::from(body),
            };
            let started = Instant::now();
            let (problem, after) = match self
                .client
                .send(&self.token_url.origin, &out, timeout)
                .await
            {
                Ok(r) if r.status == 200 => return self.parse_token(&r.body, started),
                Ok(r) if r.status == 429 || r.status >= 500 => (
                    format!("{} {}", r.status, oauth_error(&r.body)),
                    retry::retry_after(&r.headers, SystemTime::now()),
                ),
                Ok(r) => {
                    return Err(Outcome::rejected(format!(
                        "FCM token endpoint {url} refused the service account {} of \
                         mediator.fcm.service_account_file {}: {} {}",
                        self.account.client_email,
                        self.file.display(),
                        r.status,
                        oauth_error(&r.body)
                    )))
                }
                Err(e) => (e.to_string(), None),
            };
            tracing::warn!(url = %url, error = %problem, "FCM token request failed");
            match backoff.next(Instant::now(), after) {
                Some(wait) => {
                    stats.retried(Platform::Fcm);
                    tokio::time::sleep(wait).await;
                }
                None => {
                    return Err(Outcome::failed(format!(
                    "FCM token endpoint {url}: {problem}; gave up at the deadline after {} retries",
                    backoff.retries
                )))
                }
            }
        }
    }

    fn parse_token(&self, body: &[u8], asked: Instant) -> Result<AccessToken, Outcome> {
        #[derive(Deserialize)]
        struct Answer {
            access_token: String,
            expires_in: Option<u64>,
            token_type: Option<String>,
        }
        let a: Answer = serde_json::from_slice(body).map_err(|e| {
            Outcome::failed(format!(
                "FCM token endpoint {}: unreadable answer: {e}",
                self.token_url_text
            ))
        })?;
        if let Some(t) = &a.token_type {
            if !t.eq_ignore_ascii_case("bearer") {
                return Err(Outcome::rejected(format!(
                    "FCM token endpoint {} issued a {t:?} token, not a Bearer one",
                    self.token_url_text
                )));
            }
        }
        let life = Duration::from_secs(a.expires_in.unwrap_or(3600));
        // Refresh with 5 minutes (or half the lifetime, if shorter) left;
        // lifetimes count from when the token was asked for.
        let margin = (life / 2).min(Duration::from_secs(300));
        self.fetched.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            account = %self.account.client_email,
            expires_in = life.as_secs(),
            "FCM access token fetched"
        );
        Ok(AccessToken {
            token: a.access_token.into(),
            refresh_at: asked + life - margin,
            expires_at: asked + life,
        })
    }

    /// Delivers one push, retrying inside `deadline`.
    pub(crate) async fn send(
        &self,
        req: &PushRequest,
        deadline: Instant,
        stats: &Stats,
    ) -> Outcome {
        if req.device.token.is_empty() {
            return Outcome::rejected("FCM registration token is empty");
        }
        let project = match req
            .device
            .topic
            .as_deref()
            .filter(|t| !t.is_empty())
            .or(self.project.as_deref())
        {
            Some(p) if valid_project(p) => p,
            Some(p) => return Outcome::rejected(format!("{p:?} is not a Firebase project id")),
            None => {
                return Outcome::rejected(
                    "no Firebase project: the device has none, nor mediator.fcm.project_id \
                     nor the service-account file",
                )
            }
        };
        let body = match message(req) {
            Ok(m) => Bytes::from(m.to_string()),
            Err(e) => return Outcome::rejected(e),
        };
        let path = self.send_path.replace("{project}", project);
        let mut reauthorised = false;
        let mut backoff = Backoff::new(deadline);
        loop {
            let token = match self.access_token(deadline, stats).await {
                Ok(t) => t,
                Err(o) => return o,
            };
            let timeout = self.attempt_timeout(deadline);
            if timeout.is_zero() {
                return Outcome::failed("FCM: deadline reached");
            }
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
                headers.insert("authorization", v);
            }
            headers.insert("content-type", HeaderValue::from_static("application/json"));
            let out = Outgoing {
                method: Method::POST,
                path: &path,
                headers,
                body: body.clone(),
            };
            let (what, after) = match self.client.send(&self.send_origin, &out, timeout).await {
                Ok(r) => {
                    let err = error_body(&r.body);
                    let what = format!(
                        "FCM {} {}{}",
                        r.status,
                        err.code.as_deref().unwrap_or(&err.status),
                        if err.message.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", err.message)
                        }
                    );
                    tracing::debug!(push = %req.id, status = r.status, "FCM answer");
                    match verdict(r.status, &err) {
                        Verdict::Sent => {
                            let name = serde_json::from_slice::<Value>(&r.body)
                                .ok()
                                .and_then(|v| v["name"].as_str().map(str::to_string));
                            return Outcome::sent(name, None);
                        }
                        Verdict::Dead => return Outcome::dead(what),
                        Verdict::Unauthenticated if !reauthorised => {
                            reauthorised = true;
                            tracing::warn!(push = %req.id, "FCM refused the access token: fetching a new one");
                            self.discard(&token).await;
                            continue;
                        }
                        Verdict::Unauthenticated => {
                            return Outcome::rejected(format!(
                                "{what}: FCM refuses access tokens of the service account {} \
                                 (mediator.fcm.service_account_file {}) even fresh ones",
                                self.account.client_email,
                                self.file.display()
                            ))
                        }
                        Verdict::Reject if r.status == 403 => {
                            return Outcome::rejected(format!(
                                "{what}: the service account {} (mediator.fcm.service_account_file \
                                 {}) may not send to project {project}",
                                self.account.client_email,
                                self.file.display()
                            ))
                        }
                        Verdict::Reject => return Outcome::rejected(what),
                        Verdict::Retry => (what, retry::retry_after(&r.headers, SystemTime::now())),
                    }
                }
                Err(e) => (format!("FCM: {e}"), None),
            };
            tracing::warn!(push = %req.id, error = %what, "FCM send failed");
            match backoff.next(Instant::now(), after) {
                Some(wait) => {
                    stats.retried(Platform::Fcm);
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
                    ));
                }
            }
        }
    }
}

/// `error: error_description` of an OAuth2 error answer (RFC 6749 §5.2).
fn oauth_error(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match (v["error"].as_str(), v["error_description"].as_str()) {
        (Some(e), Some(d)) => format!("{e}: {d}"),
        (Some(e), None) => e.to_string(),
        _ => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}

/// What is wrong with the service-account file, if anything.
pub(crate) fn check_account(cfg: &FcmConfig) -> Option<String> {
    load_service_account(
        &cfg.service_account_file,
        cfg.project_id.is_some(),
        cfg.token_url.is_some(),
    )
    .err()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::{Environment, PushCall, PushDevice};

    fn request(kind: PushKind) -> PushRequest {
        PushRequest {
            id: "0123456789abcdef".into(),
            kind,
            account: 7,
            device: PushDevice {
                id: "pixel".into(),
                platform: Platform::Fcm,
                token: "fcm-token-1".into(),
                topic: None,
                environment: Environment::Production,
            },
            call: PushCall {
                call_id: "c1@pbx".into(),
                caller_uri: "sip:bob@example.com".into(),
                caller_name: None,
                callee: "sip:alice@example.com".into(),
                reason: Some("answered_elsewhere".into()),
            },
            timestamp_ms: 1,
        }
    }

    #[test]
    fn high_priority_data_messages() {
        let m = message(&request(PushKind::IncomingCall)).unwrap();
        assert_eq!(
            m,
            json!({"message": {"token": "fcm-token-1",
                "data": {"kind": "incoming_call", "push_id": "0123456789abcdef", "call_id": "c1@pbx",
                         "caller": "sip:bob@example.com", "callee": "sip:alice@example.com",
                         "reason": "answered_elsewhere"},
                "android": {"priority": "high", "ttl": "0s", "collapse_key": "c1@pbx"}}})
        );
        let m = message(&request(PushKind::MissedCall)).unwrap();
        assert!(m["message"]["android"].get("ttl").is_none());
        let mut r = request(PushKind::CallCancelled);
        assert_eq!(message(&r).unwrap()["message"]["android"]["ttl"], "60s");
        r.call.caller_name = Some("x".repeat(4096));
        assert!(message(&r).unwrap_err().contains("4096-byte"));
    }

    #[test]
    fn google_answers() {
        let unregistered = br#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
        let e = error_body(unregistered);
        assert_eq!(e.code.as_deref(), Some("UNREGISTERED"));
        assert_eq!(verdict(404, &e), Verdict::Dead);
        let not_found =
            br#"{"error":{"code":404,"message":"Project not found","status":"NOT_FOUND"}}"#;
        assert_eq!(verdict(404, &error_body(not_found)), Verdict::Reject);
        assert_eq!(verdict(401, &error_body(b"")), Verdict::Unauthenticated);
        assert_eq!(verdict(429, &error_body(b"")), Verdict::Retry);
        assert_eq!(verdict(503, &error_body(b"")), Verdict::Retry);
        assert_eq!(verdict(400, &error_body(b"{}")), Verdict::Reject);
        assert_eq!(verdict(200, &error_body(b"{}")), Verdict::Sent);
    }

    #[test]
    fn project_ids() {
        assert!(valid_project("my-project-123"));
        assert!(valid_project("example.com:my-project"));
        assert!(!valid_project("a/../b"));
        assert!(!valid_project(""));
    }
}
