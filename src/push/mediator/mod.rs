//! The push mediator: unified push requests in (JSON over HTTP/1.1), APNs
//! (HTTP/2, token auth) and FCM HTTP v1 out. Runs inside `sipis serve` or
//! on its own as `sipis mediator`.
//!
//! ```text
//!  sipis push client ──POST /push (PushRequest JSON)──▶ server: HTTP/1.1 front
//!                    ◀──────── 200 PushAnswer JSON ────    (http::server, bearer token)
//!                                                               │ Mediator::send
//!                                  ┌── concurrency limit, deadline, stats ──┐
//!                                  ▼                                        ▼
//!                 apns: ES256 provider token (jwt)         fcm: RS256 assertion (jwt) →
//!                 POST /3/device/<token>                    OAuth2 access token; POST
//!                 production | sandbox                      /v1/projects/<p>/messages:send
//!                                  └──────── http2: one TLS connection per ─┘
//!                                            origin, concurrent streams
//! ```
//!
//! - [`start`] runs it all on its own threads and returns a [`MediatorHandle`].
//! - [`Mediator`] is the part without the listener, for a caller with its
//!   own tokio runtime.
//! - [`check_files`] checks the key and credential files for `check-config`.
//!
//! Every push ends in one [`PushResult`]: what APNs/FCM answered, mapped as
//! `apns::verdict` and `fcm::verdict` say; 429/5xx and connection failures
//! are retried with back-off (`retry`) until `deadline`.

mod apns;
mod fcm;
mod http2;
mod jwt;
mod retry;
mod server;
mod stats;

pub(crate) use http2::tls_config as client_tls;
pub use jwt::KeyProblem;
pub use server::{start, MediatorHandle};

use super::{Environment, Platform, PushAnswer, PushKind, PushRequest, PushResult};
use crate::http::TlsFiles;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// `[mediator]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediatorConfig {
    /// Where it listens for unified push requests.
    pub listen: SocketAddr,
    /// Bearer token sipis must present (`push.token` on the sipis side).
    pub token: Option<String>,
    /// `sipis serve` also runs the mediator (on `listen`).
    pub in_process: bool,
    pub apns: Option<ApnsConfig>,
    pub fcm: Option<FcmConfig>,
    /// One HTTP request to APNs/FCM (or the token endpoint).
    pub request_timeout: Duration,
    /// The whole push, retries on 429/5xx included.
    pub deadline: Duration,
    /// Pushes in flight at once (HTTP/2 streams across connections). Also
    /// caps the HTTP/1.1 connections of the front (each carries one push at
    /// a time).
    pub concurrency: u32,
    /// TLS for the front (`https://` in `push.mediator_url`); `None`: plain
    /// HTTP, for loopback or a private network.
    pub tls: Option<TlsFiles>,
}

impl Default for MediatorConfig {
    fn default() -> Self {
        MediatorConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8090),
            token: None,
            in_process: false,
            apns: None,
            fcm: None,
            request_timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(4),
            concurrency: 2_000,
            tls: None,
        }
    }
}

/// `[mediator.apns]`: token-based (JWT, `.p8` key) auth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApnsConfig {
    /// The `.p8` signing key (PKCS#8 PEM, P-256).
    pub key_file: PathBuf,
    /// 10-character key id (JWT `kid`).
    pub key_id: String,
    /// 10-character team id (JWT `iss`).
    pub team_id: String,
    /// Topic used when a device brings none (`<bundle>.voip`).
    pub default_topic: Option<String>,
    pub production_url: String,
    pub sandbox_url: String,
    /// Extra trust root (PEM) for the endpoints: tests use a local CA.
    pub ca_file: Option<PathBuf>,
}

impl ApnsConfig {
    pub const PRODUCTION_URL: &'static str = "https://api.push.apple.com";
    pub const SANDBOX_URL: &'static str = "https://api.sandbox.push.apple.com";
}

/// `[mediator.fcm]`: service-account OAuth2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FcmConfig {
    /// Google service-account JSON (`client_email`, `private_key`, `token_uri`, `project_id`).
    pub service_account_file: PathBuf,
    /// Overrides the file's `project_id`.
    pub project_id: Option<String>,
    /// Send endpoint; `{project}` is replaced.
    pub send_url: String,
    /// Overrides the file's `token_uri`.
    pub token_url: Option<String>,
    pub ca_file: Option<PathBuf>,
}

impl FcmConfig {
    pub const SEND_URL: &'static str =
        "https://fcm.googleapis.com/v1/projects/{project}/messages:send";
}

/// Why the mediator did not start.
#[derive(Debug)]
pub enum MediatorError {
    /// A key, credential or certificate file is unusable.
    File {
        /// The setting naming the file (`mediator.apns.key_file`).
        key: &'static str,
        path: PathBuf,
        problem: String,
    },
    /// A setting is refused.
    Config { key: &'static str, problem: String },
    /// The front's listener (bind, token, TLS).
    Listen(crate::http::HttpError),
    /// Threads or the runtime could not be started.
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

impl fmt::Display for MediatorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MediatorError::File { key, path, problem } => {
                write!(f, "{key}: {}: {problem}", path.display())
            }
            MediatorError::Config { key, problem } => write!(f, "{key}: {problem}"),
            MediatorError::Listen(crate::http::HttpError::Tls { path, problem }) => {
                write!(f, "mediator.tls: {}: {problem}", path.display())
            }
            MediatorError::Listen(e) => e.fmt(f),
            MediatorError::Io { what, source } => write!(f, "mediator: {what}: {source}"),
        }
    }
}

impl std::error::Error for MediatorError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MediatorError::Listen(e) => Some(e),
            MediatorError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The key and credential files of `cfg` that are unusable: (setting,
/// what is wrong with which file). Empty when all are fine. For
/// `sipis check-config`; [`start`] refuses the same files.
pub fn check_files(cfg: &MediatorConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let file = |path: &std::path::Path, problem: String| format!("{}: {problem}", path.display());
    if let Some(a) = &cfg.apns {
        if let Some(p) = apns::check_key(a) {
            out.push(("mediator.apns.key_file".into(), file(&a.key_file, p)));
        }
        if let Some(Err(p)) = a.ca_file.as_deref().map(http2::read_certs) {
            out.push(("mediator.apns.ca_file".into(), p));
        }
    }
    if let Some(f) = &cfg.fcm {
        if let Some(p) = fcm::check_account(f) {
            out.push((
                "mediator.fcm.service_account_file".into(),
                file(&f.service_account_file, p),
            ));
        }
        if let Some(Err(p)) = f.ca_file.as_deref().map(http2::read_certs) {
            out.push(("mediator.fcm.ca_file".into(), p));
        }
    }
    out
}

/// The outcome of one push, before the request id is added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) result: PushResult,
    pub(crate) platform_id: Option<String>,
    pub(crate) environment: Option<Environment>,
    pub(crate) error: Option<String>,
}

impl Outcome {
    fn with(result: PushResult, error: Option<String>) -> Outcome {
        Outcome {
            result,
            platform_id: None,
            environment: None,
            error,
        }
    }
    pub(crate) fn sent(platform_id: Option<String>, environment: Option<Environment>) -> Outcome {
        Outcome {
            platform_id,
            environment,
            ..Outcome::with(PushResult::Sent, None)
        }
    }
    pub(crate) fn dead(error: impl Into<String>) -> Outcome {
        Outcome::with(PushResult::TokenDead, Some(error.into()))
    }
    pub(crate) fn failed(error: impl Into<String>) -> Outcome {
        Outcome::with(PushResult::Failed, Some(error.into()))
    }
    pub(crate) fn rejected(error: impl Into<String>) -> Outcome {
        Outcome::with(PushResult::Rejected, Some(error.into()))
    }
    /// Adds the service's id of the push (`apns-id`).
    pub(crate) fn with_id(mut self, id: String) -> Outcome {
        self.platform_id = Some(id);
        self
    }
}

/// What the app learns of the call, the same for APNs (payload keys) and
/// FCM (data map, string values): `kind`, `push_id`, `call_id` (the
/// INVITE's Call-ID, which CallKit pairs the push with), `caller`,
/// `caller_name`, `callee`, `reason`. Absent values are left out.
pub(crate) fn call_fields(req: &PushRequest) -> Vec<(&'static str, String)> {
    let c = &req.call;
    let mut f = vec![
        ("kind", req.kind.as_str().to_string()),
        ("push_id", req.id.clone()),
        ("call_id", c.call_id.clone()),
        ("caller", c.caller_uri.clone()),
    ];
    if let Some(n) = &c.caller_name {
        f.push(("caller_name", n.clone()));
    }
    f.push(("callee", c.callee.clone()));
    if let Some(r) = &c.reason {
        f.push(("reason", r.clone()));
    }
    f
}

/// The mediator without its listener: turns [`PushRequest`]s into APNs and
/// FCM requests. [`Mediator::send`] must run inside a tokio runtime (with
/// time and I/O enabled); [`start`] provides one.
pub struct Mediator {
    apns: Option<apns::Apns>,
    fcm: Option<fcm::Fcm>,
    deadline: Duration,
    permits: tokio::sync::Semaphore,
    stats: stats::Stats,
}

impl Mediator {
    /// Loads the keys and checks the URLs of `cfg` (errors name the
    /// setting and the file); connects to nothing yet.
    pub fn new(cfg: &MediatorConfig) -> Result<Mediator, MediatorError> {
        if cfg.concurrency == 0 {
            return Err(MediatorError::Config {
                key: "mediator.concurrency",
                problem: "must be at least 1".into(),
            });
        }
        if cfg.deadline.is_zero() || cfg.request_timeout.is_zero() {
            return Err(MediatorError::Config {
                key: "mediator.deadline",
                problem: "mediator.deadline and mediator.request_timeout must not be zero".into(),
            });
        }
        let apns = cfg
            .apns
            .as_ref()
            .map(|a| apns::Apns::new(a, cfg.request_timeout))
            .transpose()?;
        let fcm = cfg
            .fcm
            .as_ref()
            .map(|f| fcm::Fcm::new(f, cfg.request_timeout))
            .transpose()?;
        Ok(Mediator {
            apns,
            fcm,
            deadline: cfg.deadline,
            permits: tokio::sync::Semaphore::new(cfg.concurrency as usize),
            stats: stats::Stats::new(),
        })
    }

    /// Delivers one push (retries included, within `deadline`) and says
    /// how it went. Never fails: every problem is a [`PushResult`].
    pub async fn send(&self, req: &PushRequest) -> PushAnswer {
        let started = Instant::now();
        let deadline = started + self.deadline;
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let platform = req.device.platform;
        // A small grace so that the platform's own, more precise deadline
        // message wins when both fire.
        let limit = deadline + Duration::from_millis(50);
        let outcome = match tokio::time::timeout_at(limit.into(), self.deliver(req, deadline)).await
        {
            Ok(o) => o,
            Err(_) => Outcome::failed(format!(
                "{} push not done within mediator.deadline ({} ms)",
                platform.as_str(),
                self.deadline.as_millis()
            )),
        };
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let took = started.elapsed();
        self.stats.record(platform, req.kind, outcome.result, took);
        let env = outcome.environment.map(apns::env_str).unwrap_or("");
        let pid = outcome.platform_id.as_deref().unwrap_or("");
        let ms = took.as_secs_f64() * 1e3;
        match (&outcome.error, outcome.result) {
            (None, _) => {
                tracing::info!(push = %req.id, account = req.account, device = %req.device.id,
                platform = platform.as_str(), kind = req.kind.as_str(), result = outcome.result.as_str(),
                platform_id = pid, environment = env, ms, "push sent")
            }
            (Some(e), PushResult::TokenDead) => {
                tracing::info!(push = %req.id, account = req.account,
                device = %req.device.id, platform = platform.as_str(), kind = req.kind.as_str(),
                result = outcome.result.as_str(), platform_id = pid, error = %e, ms, "push token dead")
            }
            (Some(e), _) => {
                tracing::warn!(push = %req.id, account = req.account, device = %req.device.id,
                platform = platform.as_str(), kind = req.kind.as_str(), result = outcome.result.as_str(),
                platform_id = pid, error = %e, ms, "push not delivered")
            }
        }
        PushAnswer {
            id: req.id.clone(),
            result: outcome.result,
            platform_id: outcome.platform_id,
            environment: outcome.environment,
            error: outcome.error,
        }
    }

    async fn deliver(&self, req: &PushRequest, deadline: Instant) -> Outcome {
        let _permit = match self.permits.acquire().await {
            Ok(p) => p,
            Err(_) => return Outcome::failed("the mediator is shutting down"),
        };
        match req.device.platform {
            Platform::Apns => match &self.apns {
                Some(a) => a.send(req, deadline, &self.stats).await,
                None => Outcome::rejected(
                    "APNs is not configured in this mediator (no [mediator.apns] section)",
                ),
            },
            Platform::Fcm => match &self.fcm {
                Some(f) => f.send(req, deadline, &self.stats).await,
                None => Outcome::rejected(
                    "FCM is not configured in this mediator (no [mediator.fcm] section)",
                ),
            },
        }
    }

    /// Whether APNs and FCM are configured.
    pub fn platforms(&self) -> (bool, bool) {
        (self.apns.is_some(), self.fcm.is_some())
    }

    /// Pushes counted so far with these labels.
    pub fn pushes(&self, platform: Platform, kind: PushKind, result: PushResult) -> u64 {
        self.stats.pushes(platform, kind, result)
    }

    /// Appends the mediator's metrics (Prometheus text, see
    /// [`crate::metrics`]): `sipis_mediator_pushes_total{platform,kind,result}`,
    /// `sipis_mediator_push_seconds{platform}` quantiles, retries, token
    /// signings/fetches, connections opened.
    pub fn render_metrics(&self, out: &mut String) {
        self.stats.render(
            out,
            self.apns.as_ref().map(apns::Apns::counts),
            self.fcm.as_ref().map(fcm::Fcm::counts),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Callers with their own runtime spawn `send`: it must be `Send`.
    #[test]
    fn send_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let m = Mediator::new(&MediatorConfig::default()).unwrap();
        let req: PushRequest = serde_json::from_str(
            r#"{"id":"1","kind":"incoming_call","account":1,
                "device":{"id":"d","platform":"fcm","token":"t"},
                "call":{"call_id":"c","caller_uri":"sip:a@b","callee":"sip:c@d"},
                "timestamp_ms":0}"#,
        )
        .unwrap();
        let fut = m.send(&req);
        assert_send(&fut);
        let answer = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(fut);
        assert_eq!(answer.result, PushResult::Rejected);
        assert_eq!(
            m.pushes(Platform::Fcm, PushKind::IncomingCall, PushResult::Rejected),
            1
        );
    }

    #[test]
    fn zero_concurrency_is_refused() {
        let cfg = MediatorConfig {
            concurrency: 0,
            ..MediatorConfig::default()
        };
        let e = Mediator::new(&cfg).err().unwrap();
        assert_eq!(e.to_string(), "mediator.concurrency: must be at least 1");
    }
}
