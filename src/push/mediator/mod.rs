//! The push mediator: unified push requests in (JSON over HTTP/1.1), APNs
//! (HTTP/2, token auth) and FCM HTTP v1 out. Runs inside `sipis serve` or
//! on its own as `sipis mediator`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

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
    /// Pushes in flight at once (HTTP/2 streams across connections).
    pub concurrency: u32,
}

impl Default for MediatorConfig {
    fn default() -> Self {
        MediatorConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8090),
            token: None,
            in_process: false,
            apns: None,
            fcm: None,
            request_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(10),
            concurrency: 256,
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
