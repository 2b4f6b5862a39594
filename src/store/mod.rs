//! Durable state: accounts, devices, registration state, call outcomes.
//!
//! Two backends implement [`Store`]: the embedded default (SQLite in a file
//! under the data directory, nothing to run) and PostgreSQL (tokio-postgres).
//! Both pass the same test suite. Shards never call a backend directly: they
//! talk to the store thread ([`StoreThread`]) over channels, so a slow or
//! dead database never blocks a shard; registration saves are coalesced per
//! account and kept in memory until the database takes them.

use crate::{AccountId, AccountSecret, SavedRegistration};
use std::fmt;

/// A provisioned upstream account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    pub id: AccountId,
    /// Address of record, e.g. `sip:alice@provider.example`. Unique.
    pub aor: String,
    pub auth_user: String,
    pub secret: AccountSecret,
    /// Registrar URI; `None` = proxy mode (nothing to register).
    pub registrar: Option<String>,
    pub outbound_proxy: Option<String>,
    /// Wanted binding lifetime in seconds.
    pub expires: u32,
    /// Contact user part routing INVITEs to this account. Unique.
    pub token: String,
    /// A disabled account is kept but not registered.
    pub enabled: bool,
}

/// An account to create: the store assigns the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAccount {
    pub aor: String,
    pub auth_user: String,
    pub secret: AccountSecret,
    pub registrar: Option<String>,
    pub outbound_proxy: Option<String>,
    pub expires: u32,
    pub token: String,
    pub enabled: bool,
}

impl NewAccount {
    /// The record this becomes under `id`.
    pub fn with_id(self, id: AccountId) -> AccountRecord {
        AccountRecord {
            id,
            aor: self.aor,
            auth_user: self.auth_user,
            secret: self.secret,
            registrar: self.registrar,
            outbound_proxy: self.outbound_proxy,
            expires: self.expires,
            token: self.token,
            enabled: self.enabled,
        }
    }
}

/// A phone of an account, reachable by push (RFC 8599). Identified by
/// provider + prid + param, not by its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub account: AccountId,
    /// Operator- or phone-chosen name, unique within the account.
    pub device: String,
    /// `apns`, `fcm` or `webpush`.
    pub provider: String,
    /// The push token (`pn-prid`).
    pub prid: String,
    /// `pn-param`: APNs `<TeamID>.<bundle>.voip`, FCM project id.
    pub param: Option<String>,
    /// Last update, Unix seconds.
    pub updated_unix: i64,
}

/// The outcome of one call, kept for call logs and the late-wake window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOutcomeRecord {
    pub call_id: String,
    pub account: AccountId,
    pub caller: String,
    /// `answered`, `answered_elsewhere`, `declined_elsewhere`,
    /// `caller_cancelled`, `no_response`, ...
    pub outcome: String,
    /// The Reason header that ended it, if any.
    pub reason: Option<String>,
    pub started_unix: i64,
    pub ended_unix: i64,
}

/// What went wrong in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The database cannot be reached now; the operation may be retried.
    Unavailable(String),
    /// A unique field (AOR, token, device) is already taken.
    Conflict(String),
    /// No such account/device.
    NotFound,
    /// The schema is newer than this binary, or a stored row is unreadable.
    Corrupt(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(e) => write!(f, "store unavailable: {e}"),
            StoreError::Conflict(e) => write!(f, "conflict: {e}"),
            StoreError::NotFound => f.write_str("not found"),
            StoreError::Corrupt(e) => write!(f, "store corrupt: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// A storage backend. Blocking: it runs on the store thread only.
pub trait Store: Send {
    /// Creates or migrates the schema (versioned migrations); returns the
    /// schema version now in force.
    fn migrate(&mut self) -> Result<u32, StoreError>;

    fn create_account(&mut self, new: &NewAccount) -> Result<AccountRecord, StoreError>;
    /// Creates many accounts in one transaction (CSV import): all or none.
    fn create_accounts(&mut self, new: &[NewAccount]) -> Result<Vec<AccountRecord>, StoreError>;
    /// Replaces an account's fields (by id). `NotFound` if absent.
    fn update_account(&mut self, a: &AccountRecord) -> Result<(), StoreError>;
    /// Deletes an account with its devices and registration state.
    fn delete_account(&mut self, id: AccountId) -> Result<bool, StoreError>;
    fn get_account(&mut self, id: AccountId) -> Result<Option<AccountRecord>, StoreError>;
    /// Accounts with `id > after`, by id, at most `limit`.
    fn list_accounts(&mut self, after: AccountId, limit: usize) -> Result<Vec<AccountRecord>, StoreError>;
    fn count_accounts(&mut self) -> Result<u64, StoreError>;

    /// Every account's saved registration state (start-up).
    fn load_registrations(&mut self) -> Result<Vec<(AccountId, SavedRegistration)>, StoreError>;
    /// Upserts registration states in one transaction.
    fn save_registrations(&mut self, batch: &[(AccountId, SavedRegistration)]) -> Result<(), StoreError>;

    /// Creates or replaces the device `(account, device)`.
    fn put_device(&mut self, d: &DeviceRecord) -> Result<(), StoreError>;
    fn delete_device(&mut self, account: AccountId, device: &str) -> Result<bool, StoreError>;
    fn list_devices(&mut self, account: AccountId) -> Result<Vec<DeviceRecord>, StoreError>;

    fn record_call_outcome(&mut self, o: &CallOutcomeRecord) -> Result<(), StoreError>;
    /// The newest outcomes of an account, newest first.
    fn list_call_outcomes(&mut self, account: AccountId, limit: usize) -> Result<Vec<CallOutcomeRecord>, StoreError>;
}
