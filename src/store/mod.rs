//! Durable state: accounts, devices, registration state, call outcomes.
//!
//! Two backends implement [`Store`]: the embedded default (SQLite in a file
//! under the data directory, nothing to run) and PostgreSQL (tokio-postgres).
//! Both pass the same test suite. Shards never call a backend directly: they
//! talk to the store thread ([`StoreThread`]) over channels, so a slow or
//! dead database never blocks a shard; registration saves are coalesced per
//! account and kept in memory until the database takes them.
//!
//! - [`SqliteStore`]: WAL, `synchronous=NORMAL` (a commit survives a crash
//!   of sipis; the last few may be lost on power loss), foreign keys on.
//! - [`PostgresStore`]: one connection driven by a current-thread tokio
//!   runtime the store owns; reconnects and retries once after a lost
//!   connection (see its module doc for when a retry is not safe).
//! - Schema: versioned migrations per backend (same versions and tables),
//!   recorded in `schema_version`; [`Store::migrate`] applies the missing
//!   ones in one transaction and refuses a database newer than
//!   [`SCHEMA_VERSION`]. Ids are never reused. Within one account, a push
//!   identity (provider, prid, param; a missing param counts as a value)
//!   belongs to one device; the same push token may serve several accounts
//!   (one app, several lines).
//! - [`StoreThread`] / [`StoreHandle`]: the only way in from the rest of
//!   sipis; [`parse_accounts_csv`] + [`Store::import_accounts`] import,
//!   with a rule for AORs already provisioned ([`OnConflict`]).

use crate::{AccountId, AccountSecret, SavedRegistration};
use std::fmt;

mod csv;
mod postgres;
mod sqlite;
mod thread;

pub use self::csv::{parse_accounts_csv, CsvError};
pub use self::postgres::{PgOptions, PostgresStore};
pub use self::sqlite::SqliteStore;
pub use self::thread::{StoreHandle, StoreStats, StoreThread, StoreThreadConfig};

/// The schema version this binary writes: the last migration of each
/// backend. A database whose `schema_version` is higher is refused by
/// [`Store::migrate`] with [`StoreError::Corrupt`].
pub const SCHEMA_VERSION: u32 = 1;

/// One migration: the version it brings the schema to and the SQL that does
/// it. Each backend keeps its own ordered list (same versions, same tables,
/// dialect-specific SQL); `migrate()` applies the missing ones in one
/// transaction.
pub(crate) type Migration = (u32, &'static str);

/// The error for a database written by a newer sipis.
pub(crate) fn newer_schema(found: u32) -> StoreError {
    StoreError::Corrupt(format!(
        "schema version {found} is newer than this sipis ({SCHEMA_VERSION})"
    ))
}

/// A new random account token (the Contact user part that routes INVITEs to
/// an account): 16 characters of lowercase RFC 4648 base32
/// (`a`–`z`, `2`–`7`), 80 bits from the operating system's generator.
pub fn new_token() -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut bytes = [0u8; 10];
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    let mut bits: u128 = 0;
    for b in bytes {
        bits = (bits << 8) | u128::from(b);
    }
    (0..16)
        .rev()
        .map(|i| char::from(ALPHABET[((bits >> (i * 5)) & 31) as usize]))
        .collect()
}

pub(crate) fn aor_conflict(aor: &str) -> StoreError {
    StoreError::Conflict(format!("aor already provisioned: {aor}"))
}

pub(crate) fn token_conflict(token: &str) -> StoreError {
    StoreError::Conflict(format!("token already in use: {token}"))
}

pub(crate) fn device_conflict(d: &DeviceRecord) -> StoreError {
    StoreError::Conflict(format!(
        "device push identity already registered for account {}: provider {}, prid {}, param {}",
        d.account,
        d.provider,
        d.prid,
        d.param.as_deref().unwrap_or("-")
    ))
}

/// The secret as the two nullable columns `(password, ha1)`.
pub(crate) fn secret_columns(s: &AccountSecret) -> (Option<&str>, Option<&str>) {
    match s {
        AccountSecret::Password(p) => (Some(p), None),
        AccountSecret::Ha1(h) => (None, Some(h)),
    }
}

/// The secret from the two nullable columns: exactly one must be set.
pub(crate) fn secret_from_columns(
    id: i64,
    password: Option<String>,
    ha1: Option<String>,
) -> Result<AccountSecret, StoreError> {
    match (password, ha1) {
        (Some(p), None) => Ok(AccountSecret::Password(p)),
        (None, Some(h)) => Ok(AccountSecret::Ha1(h)),
        _ => Err(StoreError::Corrupt(format!(
            "account {id}: exactly one of password and ha1 must be set"
        ))),
    }
}

/// A stored integer that must fit a `u32` (expires, cseq, granted).
pub(crate) fn stored_u32(what: &str, v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} out of range: {v}")))
}

/// A stored id (always positive).
pub(crate) fn stored_id(v: i64) -> Result<AccountId, StoreError> {
    AccountId::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative id: {v}")))
}

/// An account id as the database's signed 64-bit key; `None` if it cannot
/// exist there.
pub(crate) fn db_id(id: AccountId) -> Option<i64> {
    i64::try_from(id).ok()
}

/// Current time in Unix seconds.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

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

/// What an import does with a row whose AOR is already provisioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnConflict {
    /// The whole import fails with [`StoreError::Conflict`]; nothing is
    /// written.
    #[default]
    Fail,
    /// The stored account stays as it is; the row is reported as skipped.
    Skip,
    /// The stored account takes the row's fields (auth user, secret,
    /// registrar, outbound proxy, expires, enabled); its id and Contact
    /// token stay, so the provider's INVITEs keep reaching it.
    Update,
}

impl OnConflict {
    /// `fail`, `skip`, `update` (the API's `on_conflict` values).
    pub fn parse(s: &str) -> Option<OnConflict> {
        match s {
            "fail" => Some(OnConflict::Fail),
            "skip" => Some(OnConflict::Skip),
            "update" => Some(OnConflict::Update),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OnConflict::Fail => "fail",
            OnConflict::Skip => "skip",
            OnConflict::Update => "update",
        }
    }
}

/// What [`Store::import_accounts`] did, row by row.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImportOutcome {
    /// New accounts, in input order.
    pub created: Vec<AccountRecord>,
    /// Existing accounts rewritten from their row ([`OnConflict::Update`]):
    /// (as they were, as now stored).
    pub updated: Vec<(AccountRecord, AccountRecord)>,
    /// AORs of rows left out because they exist ([`OnConflict::Skip`]).
    pub skipped: Vec<String>,
}

impl AccountRecord {
    /// This account with the fields of an import row (id and token kept).
    pub fn updated_from(&self, row: &NewAccount) -> AccountRecord {
        AccountRecord {
            auth_user: row.auth_user.clone(),
            secret: row.secret.clone(),
            registrar: row.registrar.clone(),
            outbound_proxy: row.outbound_proxy.clone(),
            expires: row.expires,
            enabled: row.enabled,
            ..self.clone()
        }
    }
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

    /// `Conflict` if the AOR or the token is taken.
    fn create_account(&mut self, new: &NewAccount) -> Result<AccountRecord, StoreError>;
    /// Creates many accounts in one transaction (CSV import): all or none.
    /// The records come back in input order.
    fn create_accounts(&mut self, new: &[NewAccount]) -> Result<Vec<AccountRecord>, StoreError>;
    /// Imports accounts in one transaction (all or none): a row whose AOR
    /// is new is created; one whose AOR exists fails the import, is
    /// skipped or updates that account, as `on_conflict` says. A token
    /// taken by another account is a `Conflict` in every mode.
    fn import_accounts(
        &mut self,
        new: &[NewAccount],
        on_conflict: OnConflict,
    ) -> Result<ImportOutcome, StoreError>;
    /// Whether the database answers (the readiness probe); by default a
    /// count of the accounts.
    fn ping(&mut self) -> Result<(), StoreError> {
        self.count_accounts().map(|_| ())
    }
    /// Replaces an account's fields (by id). `NotFound` if absent.
    fn update_account(&mut self, a: &AccountRecord) -> Result<(), StoreError>;
    /// Deletes an account with its devices, registration state and call
    /// outcomes; `false` if there was none.
    fn delete_account(&mut self, id: AccountId) -> Result<bool, StoreError>;
    fn get_account(&mut self, id: AccountId) -> Result<Option<AccountRecord>, StoreError>;
    /// Accounts with `id > after`, by id, at most `limit`.
    fn list_accounts(
        &mut self,
        after: AccountId,
        limit: usize,
    ) -> Result<Vec<AccountRecord>, StoreError>;
    fn count_accounts(&mut self) -> Result<u64, StoreError>;

    /// Every account's saved registration state (start-up), by account id.
    fn load_registrations(&mut self) -> Result<Vec<(AccountId, SavedRegistration)>, StoreError>;
    /// Upserts registration states in one transaction (latest entry wins
    /// when an account appears twice). States of accounts that no longer
    /// exist are skipped, not an error: a shard may still save an account
    /// the operator just deleted.
    fn save_registrations(
        &mut self,
        batch: &[(AccountId, SavedRegistration)],
    ) -> Result<(), StoreError>;

    /// Creates or replaces the device `(account, device)`. `NotFound` if
    /// the account does not exist; `Conflict` if another device of the same
    /// account already has this push identity (provider, prid, param).
    fn put_device(&mut self, d: &DeviceRecord) -> Result<(), StoreError>;
    fn delete_device(&mut self, account: AccountId, device: &str) -> Result<bool, StoreError>;
    fn list_devices(&mut self, account: AccountId) -> Result<Vec<DeviceRecord>, StoreError>;

    /// `NotFound` if the account does not exist.
    fn record_call_outcome(&mut self, o: &CallOutcomeRecord) -> Result<(), StoreError>;
    /// Records many outcomes in one transaction (the store thread's
    /// batches); outcomes of accounts that no longer exist are skipped.
    /// Returns how many were stored.
    fn record_call_outcomes(&mut self, batch: &[CallOutcomeRecord]) -> Result<usize, StoreError>;
    /// The newest outcomes of an account (by `ended_unix`, then insertion
    /// order), newest first, at most `limit`.
    fn list_call_outcomes(
        &mut self,
        account: AccountId,
        limit: usize,
    ) -> Result<Vec<CallOutcomeRecord>, StoreError>;
    /// Deletes the outcomes that ended before `ended_before_unix`
    /// (retention); returns how many.
    fn prune_call_outcomes(&mut self, ended_before_unix: i64) -> Result<u64, StoreError>;
}
