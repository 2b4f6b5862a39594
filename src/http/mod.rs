//! The operators' HTTP API: accounts, devices, health and Prometheus
//! metrics.
//!
//! A small HTTP/1.1 server written on `httparse` with blocking I/O (this
//! is the control plane, far from the SIP hot path): one acceptor thread
//! and at most `max_connections` connection threads, keep-alive and
//! pipelining, `Content-Length` request bodies only, every limit enforced
//! (431 header, 413 body, 408 slow request, 503 over the connection cap),
//! optional TLS (rustls) and a bearer token.
//!
//! The server knows nothing of shards or stores: it validates requests and
//! calls an [`AdminApi`], which the runtime implements.
//!
//! | route | methods | success |
//! |---|---|---|
//! | `/health` (no token needed) | GET | 200 [`Health`] (503 when not ok) |
//! | `/health/live` (no token needed) | GET | 200 [`Liveness`] |
//! | `/health/ready` (no token needed) | GET | 200 [`Readiness`] (503 when `not_ready`) |
//! | `/metrics` | GET | 200 `text/plain; version=0.0.4` |
//! | `/accounts?after=&limit=` | GET, POST | 200 [`AccountList`]; 201 [`AccountView`] + `Location` |
//! | `/accounts/import?on_conflict=fail\|skip\|update` | POST (`text/csv`) | 200 [`ImportResult`] |
//! | `/accounts/{id}` | GET, PATCH, DELETE | 200 [`AccountView`]; 204 |
//! | `/accounts/{id}/devices` | GET | 200 [`DeviceList`] |
//! | `/accounts/{id}/devices/{device}` | PUT, DELETE | 200 [`DeviceView`]; 204 |
//!
//! Errors are `{"error": "..."}` with the status of the [`ApiError`].

mod health;
mod json;
pub(crate) mod routes;
pub(crate) mod server;
pub(crate) mod site;
pub(crate) mod tls;

pub use health::{
    ready_status, store_state, Liveness, Readiness, ReadyStatus, RegistrarCounts, RegistrarHealth,
    RegistrarState, RegistrarTracker, ShardsHealth, StoreHealth, StoreState, REGISTRAR_GRACE,
    STORE_GRACE,
};
pub use json::{
    AccountList, AccountUpdate, AccountView, DeviceList, DeviceRequest, DeviceView, ErrorBody,
    Health, ImportResult, NewAccountRequest, RegState, StatusView, DEFAULT_EXPIRES,
    DEFAULT_LIST_LIMIT, EXPIRES_RANGE, MAX_LIST_LIMIT, PUSH_PROVIDERS,
};
pub use routes::AdminServer;

pub use crate::store::OnConflict;
use crate::store::StoreError;
use crate::AccountId;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What the admin server asks of the rest of sipis. Blocking calls, made
/// from the server's connection threads; requests arrive validated.
pub trait AdminApi: Send + Sync + 'static {
    fn create_account(&self, new: NewAccountRequest) -> Result<AccountView, ApiError>;
    fn update_account(&self, id: AccountId, update: AccountUpdate)
        -> Result<AccountView, ApiError>;
    fn delete_account(&self, id: AccountId) -> Result<(), ApiError>;
    fn get_account(&self, id: AccountId) -> Result<AccountView, ApiError>;
    /// Accounts with `id > after`, by id, at most `limit` (1..=1000).
    fn list_accounts(&self, after: AccountId, limit: usize) -> Result<Vec<AccountView>, ApiError>;
    /// A `text/csv` body, imported all-or-nothing; an AOR already
    /// provisioned fails the import, is skipped or updates the account, as
    /// `on_conflict` says.
    fn import_accounts(
        &self,
        csv: &[u8],
        on_conflict: OnConflict,
    ) -> Result<ImportResult, ApiError>;
    fn put_device(
        &self,
        id: AccountId,
        device: &str,
        req: DeviceRequest,
    ) -> Result<DeviceView, ApiError>;
    fn delete_device(&self, id: AccountId, device: &str) -> Result<(), ApiError>;
    fn list_devices(&self, id: AccountId) -> Result<Vec<DeviceView>, ApiError>;
    /// Served as 200 when `ok`, else 503.
    fn health(&self) -> Health;
    /// `/health/ready`: served as 200 unless `not_ready` (then 503).
    fn ready(&self) -> Readiness;
    /// Appends the Prometheus text exposition (see [`crate::metrics`]).
    fn render_metrics(&self, out: &mut String);
}

/// An API failure: the HTTP status and a message for the operator,
/// served as `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    /// 400: the request is wrong; the message says how.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, message)
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, message)
    }
    /// 409: a unique field (AOR, token) is taken.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(409, message)
    }
    /// 503: the store or a shard cannot serve now; retry later.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(503, message)
    }
    /// 500.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, message)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound => ApiError::not_found("not found"),
            StoreError::Conflict(m) => ApiError::conflict(m),
            StoreError::Unavailable(_) => ApiError::unavailable(e.to_string()),
            StoreError::Corrupt(_) => ApiError::internal(e.to_string()),
        }
    }
}

/// PEM files of the admin server's TLS identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
}

/// Configuration of the admin server (`[admin]` in the config file).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token every route but `GET /health` requires. Without one
    /// the server only binds to a loopback address.
    pub token: Option<String>,
    pub tls: Option<TlsFiles>,
    /// Connections served at once; more get 503 and are closed.
    pub max_connections: usize,
    /// Request line plus headers.
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    /// Body limit of `POST /accounts/import`.
    pub max_import_bytes: usize,
    /// Time to receive a whole request once its first byte arrived (408).
    pub read_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
}

impl AdminConfig {
    /// The defaults: no token, no TLS, 64 connections, 8 KiB of header,
    /// 1 MiB bodies (16 MiB for imports), 10 s to read a request, 60 s idle.
    pub fn new(listen: SocketAddr) -> AdminConfig {
        AdminConfig {
            listen,
            token: None,
            tls: None,
            max_connections: 64,
            max_header_bytes: 8 * 1024,
            max_body_bytes: 1024 * 1024,
            max_import_bytes: 16 * 1024 * 1024,
            read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl Default for AdminConfig {
    /// [`AdminConfig::new`] on `127.0.0.1:8080`.
    fn default() -> AdminConfig {
        AdminConfig::new(SocketAddr::from(([127, 0, 0, 1], 8080)))
    }
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("max_connections", &self.max_connections)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_import_bytes", &self.max_import_bytes)
            .field("read_timeout", &self.read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

/// Why the admin server did not start.
#[derive(Debug)]
pub enum HttpError {
    /// The configuration is refused; the message names the setting.
    Config(String),
    /// A TLS file is unreadable or wrong.
    Tls { path: PathBuf, problem: String },
    /// Binding or spawning failed.
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Config(m) => f.write_str(m),
            HttpError::Tls { path, problem } => {
                write!(f, "admin.tls: {}: {problem}", path.display())
            }
            HttpError::Io { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for HttpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HttpError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
