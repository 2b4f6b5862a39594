//! The embedded backend: SQLite in one file (WAL, `synchronous=NORMAL`,
//! foreign keys on), nothing to run. `sipis serve` uses it by default.

use super::{
    aor_conflict, db_id, device_conflict, newer_schema, secret_columns, secret_from_columns,
    stored_id, stored_u32, token_conflict, unix_now, AccountRecord, CallOutcomeRecord,
    DeviceRecord, ImportOutcome, Migration, NewAccount, OnConflict, Store, StoreError,
    SCHEMA_VERSION,
};
use crate::{AccountId, SavedRegistration};
use rusqlite::{params, Connection, ErrorCode, Row, TransactionBehavior};
use std::path::Path;
use std::time::Duration;

/// The migrations, in order. Never edit one that has shipped: add another.
///
/// Devices: `(account_id, device)` is the key; within one account a push
/// identity `(provider, prid, param)` belongs to one device only (a NULL
/// `param` counts as one value, hence the `COALESCE` index). The same push
/// token may appear under several accounts: one app with several lines.
const MIGRATIONS: &[Migration] = &[(
    1,
    r#"
CREATE TABLE accounts (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    aor            TEXT    NOT NULL,
    auth_user      TEXT    NOT NULL,
    password       TEXT,
    ha1            TEXT,
    registrar      TEXT,
    outbound_proxy TEXT,
    expires        INTEGER NOT NULL CHECK (expires BETWEEN 0 AND 4294967295),
    token          TEXT    NOT NULL,
    enabled        INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    created        INTEGER NOT NULL,
    updated        INTEGER NOT NULL,
    CONSTRAINT accounts_aor_unique UNIQUE (aor),
    CONSTRAINT accounts_token_unique UNIQUE (token),
    CONSTRAINT accounts_one_secret CHECK ((password IS NULL) <> (ha1 IS NULL))
);

CREATE TABLE registrations (
    account_id INTEGER PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    call_id    TEXT    NOT NULL,
    cseq       INTEGER NOT NULL CHECK (cseq BETWEEN 0 AND 4294967295),
    granted    INTEGER NOT NULL CHECK (granted BETWEEN 0 AND 4294967295),
    updated    INTEGER NOT NULL
);

CREATE TABLE devices (
    account_id   INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    device       TEXT    NOT NULL,
    provider     TEXT    NOT NULL,
    prid         TEXT    NOT NULL,
    param        TEXT,
    updated_unix INTEGER NOT NULL,
    PRIMARY KEY (account_id, device)
);
CREATE UNIQUE INDEX devices_push_identity
    ON devices (account_id, provider, prid, COALESCE(param, ''));

CREATE TABLE call_outcomes (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id      TEXT    NOT NULL,
    account_id   INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    caller       TEXT    NOT NULL,
    outcome      TEXT    NOT NULL,
    reason       TEXT,
    started_unix INTEGER NOT NULL,
    ended_unix   INTEGER NOT NULL
);
CREATE INDEX call_outcomes_account_ended
    ON call_outcomes (account_id, ended_unix DESC, id DESC);
CREATE INDEX call_outcomes_ended ON call_outcomes (ended_unix);
"#,
)];

const ACCOUNT_COLUMNS: &str =
    "id, aor, auth_user, password, ha1, registrar, outbound_proxy, expires, token, enabled";

/// The SQLite backend.
pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`. Call
    /// [`Store::migrate`] before anything else.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        Self::setup(conn, true)
    }

    /// A private in-memory database (tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(map_err)?;
        Self::setup(conn, false)
    }

    fn setup(conn: Connection, wal: bool) -> Result<Self, StoreError> {
        conn.busy_timeout(Duration::from_secs(5)).map_err(map_err)?;
        if wal {
            let mode: String = conn
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .map_err(map_err)?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::Unavailable(format!(
                    "cannot switch the database to WAL mode (got {mode})"
                )));
            }
        }
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(map_err)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(SqliteStore { conn })
    }

    /// Runs raw SQL (maintenance, tests). Not for the serving path.
    pub fn execute_batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.conn.execute_batch(sql).map_err(map_err)
    }
}

/// Maps an SQLite error without context: busy/locked/I/O are transient
/// (`Unavailable`), a missing parent row is `NotFound`, the rest means the
/// file or schema is not what this binary expects (`Corrupt`).
fn map_err(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::CannotOpen
            | ErrorCode::OutOfMemory
            | ErrorCode::ReadOnly
            | ErrorCode::PermissionDenied
            | ErrorCode::FileLockingProtocolFailed => StoreError::Unavailable(e.to_string()),
            ErrorCode::ConstraintViolation
                if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
            {
                StoreError::NotFound
            }
            ErrorCode::ConstraintViolation => StoreError::Conflict(e.to_string()),
            _ => StoreError::Corrupt(e.to_string()),
        },
        _ => StoreError::Corrupt(e.to_string()),
    }
}

/// Which unique rule an error broke, if it is a unique violation.
fn unique_violation(e: &rusqlite::Error) -> Option<&str> {
    match e {
        rusqlite::Error::SqliteFailure(f, Some(msg))
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            Some(msg)
        }
        _ => None,
    }
}

/// Maps an error of an account insert/update: unique AOR/token → the
/// operator-facing conflict.
fn account_err(e: rusqlite::Error, aor: &str, token: &str) -> StoreError {
    match unique_violation(&e) {
        Some(m) if m.contains("accounts.aor") => aor_conflict(aor),
        Some(m) if m.contains("accounts.token") => token_conflict(token),
        _ => map_err(e),
    }
}

fn account_from_row(r: &Row<'_>) -> Result<AccountRecord, StoreError> {
    let g = |e: rusqlite::Error| StoreError::Corrupt(format!("unreadable account row: {e}"));
    let id: i64 = r.get(0).map_err(g)?;
    Ok(AccountRecord {
        id: stored_id(id)?,
        aor: r.get(1).map_err(g)?,
        auth_user: r.get(2).map_err(g)?,
        secret: secret_from_columns(id, r.get(3).map_err(g)?, r.get(4).map_err(g)?)?,
        registrar: r.get(5).map_err(g)?,
        outbound_proxy: r.get(6).map_err(g)?,
        expires: stored_u32("expires", r.get(7).map_err(g)?)?,
        token: r.get(8).map_err(g)?,
        enabled: r.get(9).map_err(g)?,
    })
}

fn insert_account(
    conn: &Connection,
    new: &NewAccount,
    now: i64,
) -> Result<AccountRecord, StoreError> {
    let (password, ha1) = secret_columns(&new.secret);
    let mut st = conn
        .prepare_cached(
            "INSERT INTO accounts (aor, auth_user, password, ha1, registrar, outbound_proxy, \
             expires, token, enabled, created, updated) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
        )
        .map_err(map_err)?;
    st.execute(params![
        new.aor,
        new.auth_user,
        password,
        ha1,
        new.registrar,
        new.outbound_proxy,
        i64::from(new.expires),
        new.token,
        new.enabled,
        now,
    ])
    .map_err(|e| account_err(e, &new.aor, &new.token))?;
    let id = stored_id(conn.last_insert_rowid())?;
    Ok(new.clone().with_id(id))
}

/// Rewrites an account's row by id (`NotFound` if absent).
fn update_row(conn: &Connection, a: &AccountRecord) -> Result<(), StoreError> {
    let Some(id) = db_id(a.id) else {
        return Err(StoreError::NotFound);
    };
    let (password, ha1) = secret_columns(&a.secret);
    let mut st = conn
        .prepare_cached(
            "UPDATE accounts SET aor = ?2, auth_user = ?3, password = ?4, ha1 = ?5, \
             registrar = ?6, outbound_proxy = ?7, expires = ?8, token = ?9, enabled = ?10, \
             updated = ?11 WHERE id = ?1",
        )
        .map_err(map_err)?;
    let n = st
        .execute(params![
            id,
            a.aor,
            a.auth_user,
            password,
            ha1,
            a.registrar,
            a.outbound_proxy,
            i64::from(a.expires),
            a.token,
            a.enabled,
            unix_now(),
        ])
        .map_err(|e| account_err(e, &a.aor, &a.token))?;
    if n == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}

fn insert_outcome(conn: &Connection, o: &CallOutcomeRecord, id: i64) -> rusqlite::Result<usize> {
    let mut st = conn.prepare_cached(
        "INSERT INTO call_outcomes (call_id, account_id, caller, outcome, reason, \
         started_unix, ended_unix) \
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS (SELECT 1 FROM accounts WHERE id = ?2)",
    )?;
    st.execute(params![
        o.call_id,
        id,
        o.caller,
        o.outcome,
        o.reason,
        o.started_unix,
        o.ended_unix
    ])
}

impl Store for SqliteStore {
    fn migrate(&mut self) -> Result<u32, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(map_err)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_version (
                version INTEGER PRIMARY KEY,
                applied INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER))
            )",
        )
        .map_err(map_err)?;
        let current: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_version",
                [],
                |r| r.get(0),
            )
            .map_err(map_err)?;
        let current = u32::try_from(current)
            .map_err(|_| StoreError::Corrupt(format!("bad schema version {current}")))?;
        if current > SCHEMA_VERSION {
            return Err(newer_schema(current));
        }
        for &(version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            tx.execute_batch(sql).map_err(|e| {
                StoreError::Corrupt(format!("migration to version {version} failed: {e}"))
            })?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                [i64::from(version)],
            )
            .map_err(map_err)?;
        }
        tx.commit().map_err(map_err)?;
        Ok(SCHEMA_VERSION.max(current))
    }

    fn create_account(&mut self, new: &NewAccount) -> Result<AccountRecord, StoreError> {
        insert_account(&self.conn, new, unix_now())
    }

    fn create_accounts(&mut self, new: &[NewAccount]) -> Result<Vec<AccountRecord>, StoreError> {
        let now = unix_now();
        let tx = self.conn.transaction().map_err(map_err)?;
        let mut out = Vec::with_capacity(new.len());
        for n in new {
            out.push(insert_account(&tx, n, now)?);
        }
        tx.commit().map_err(map_err)?;
        Ok(out)
    }

    fn import_accounts(
        &mut self,
        new: &[NewAccount],
        on_conflict: OnConflict,
    ) -> Result<ImportOutcome, StoreError> {
        let now = unix_now();
        let tx = self.conn.transaction().map_err(map_err)?;
        let mut out = ImportOutcome::default();
        for n in new {
            let existing = {
                let mut st = tx
                    .prepare_cached(&format!(
                        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE aor = ?1"
                    ))
                    .map_err(map_err)?;
                let mut rows = st.query([&n.aor]).map_err(map_err)?;
                match rows.next().map_err(map_err)? {
                    Some(r) => Some(account_from_row(r)?),
                    None => None,
                }
            };
            match (existing, on_conflict) {
                (None, _) => out.created.push(insert_account(&tx, n, now)?),
                (Some(_), OnConflict::Fail) => return Err(aor_conflict(&n.aor)),
                (Some(_), OnConflict::Skip) => out.skipped.push(n.aor.clone()),
                (Some(old), OnConflict::Update) => {
                    let rec = old.updated_from(n);
                    update_row(&tx, &rec)?;
                    out.updated.push((old, rec));
                }
            }
        }
        tx.commit().map_err(map_err)?;
        Ok(out)
    }

    fn update_account(&mut self, a: &AccountRecord) -> Result<(), StoreError> {
        update_row(&self.conn, a)
    }

    fn delete_account(&mut self, id: AccountId) -> Result<bool, StoreError> {
        let Some(id) = db_id(id) else {
            return Ok(false);
        };
        let mut st = self
            .conn
            .prepare_cached("DELETE FROM accounts WHERE id = ?1")
            .map_err(map_err)?;
        Ok(st.execute([id]).map_err(map_err)? > 0)
    }

    fn get_account(&mut self, id: AccountId) -> Result<Option<AccountRecord>, StoreError> {
        let Some(id) = db_id(id) else {
            return Ok(None);
        };
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?1"
            ))
            .map_err(map_err)?;
        let mut rows = st.query([id]).map_err(map_err)?;
        match rows.next().map_err(map_err)? {
            Some(r) => account_from_row(r).map(Some),
            None => Ok(None),
        }
    }

    fn list_accounts(
        &mut self,
        after: AccountId,
        limit: usize,
    ) -> Result<Vec<AccountRecord>, StoreError> {
        let Some(after) = db_id(after) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))
            .map_err(map_err)?;
        let mut rows = st.query(params![after, limit]).map_err(map_err)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(map_err)? {
            out.push(account_from_row(r)?);
        }
        Ok(out)
    }

    fn count_accounts(&mut self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM accounts", [], |r| r.get(0))
            .map_err(map_err)?;
        Ok(n as u64)
    }

    fn load_registrations(&mut self) -> Result<Vec<(AccountId, SavedRegistration)>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT account_id, call_id, cseq, granted FROM registrations ORDER BY account_id",
            )
            .map_err(map_err)?;
        let mut rows = st.query([]).map_err(map_err)?;
        let mut out = Vec::new();
        let g = |e: rusqlite::Error| StoreError::Corrupt(format!("unreadable registration: {e}"));
        while let Some(r) = rows.next().map_err(map_err)? {
            out.push((
                stored_id(r.get(0).map_err(g)?)?,
                SavedRegistration {
                    call_id: r.get(1).map_err(g)?,
                    cseq: stored_u32("cseq", r.get(2).map_err(g)?)?,
                    granted: stored_u32("granted", r.get(3).map_err(g)?)?,
                },
            ));
        }
        Ok(out)
    }

    fn save_registrations(
        &mut self,
        batch: &[(AccountId, SavedRegistration)],
    ) -> Result<(), StoreError> {
        let now = unix_now();
        let tx = self.conn.transaction().map_err(map_err)?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO registrations (account_id, call_id, cseq, granted, updated) \
                     SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM accounts WHERE id = ?1) \
                     ON CONFLICT (account_id) DO UPDATE SET call_id = excluded.call_id, \
                     cseq = excluded.cseq, granted = excluded.granted, updated = excluded.updated",
                )
                .map_err(map_err)?;
            for (id, s) in batch {
                let Some(id) = db_id(*id) else { continue };
                st.execute(params![
                    id,
                    s.call_id,
                    i64::from(s.cseq),
                    i64::from(s.granted),
                    now
                ])
                .map_err(map_err)?;
            }
        }
        tx.commit().map_err(map_err)
    }

    fn put_device(&mut self, d: &DeviceRecord) -> Result<(), StoreError> {
        let Some(id) = db_id(d.account) else {
            return Err(StoreError::NotFound);
        };
        let mut st = self
            .conn
            .prepare_cached(
                "INSERT INTO devices (account_id, device, provider, prid, param, updated_unix) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (account_id, device) DO UPDATE SET provider = excluded.provider, \
                 prid = excluded.prid, param = excluded.param, updated_unix = excluded.updated_unix",
            )
            .map_err(map_err)?;
        st.execute(params![
            id,
            d.device,
            d.provider,
            d.prid,
            d.param,
            d.updated_unix
        ])
        .map_err(|e| match unique_violation(&e) {
            Some(_) => device_conflict(d),
            None => map_err(e),
        })?;
        Ok(())
    }

    fn delete_device(&mut self, account: AccountId, device: &str) -> Result<bool, StoreError> {
        let Some(id) = db_id(account) else {
            return Ok(false);
        };
        let mut st = self
            .conn
            .prepare_cached("DELETE FROM devices WHERE account_id = ?1 AND device = ?2")
            .map_err(map_err)?;
        Ok(st.execute(params![id, device]).map_err(map_err)? > 0)
    }

    fn list_devices(&mut self, account: AccountId) -> Result<Vec<DeviceRecord>, StoreError> {
        let Some(id) = db_id(account) else {
            return Ok(Vec::new());
        };
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT device, provider, prid, param, updated_unix FROM devices \
                 WHERE account_id = ?1 ORDER BY device",
            )
            .map_err(map_err)?;
        let mut rows = st.query([id]).map_err(map_err)?;
        let g = |e: rusqlite::Error| StoreError::Corrupt(format!("unreadable device: {e}"));
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(map_err)? {
            out.push(DeviceRecord {
                account,
                device: r.get(0).map_err(g)?,
                provider: r.get(1).map_err(g)?,
                prid: r.get(2).map_err(g)?,
                param: r.get(3).map_err(g)?,
                updated_unix: r.get(4).map_err(g)?,
            });
        }
        Ok(out)
    }

    fn record_call_outcome(&mut self, o: &CallOutcomeRecord) -> Result<(), StoreError> {
        let Some(id) = db_id(o.account) else {
            return Err(StoreError::NotFound);
        };
        match insert_outcome(&self.conn, o, id).map_err(map_err)? {
            0 => Err(StoreError::NotFound),
            _ => Ok(()),
        }
    }

    fn record_call_outcomes(&mut self, batch: &[CallOutcomeRecord]) -> Result<usize, StoreError> {
        let tx = self.conn.transaction().map_err(map_err)?;
        let mut stored = 0;
        for o in batch {
            let Some(id) = db_id(o.account) else { continue };
            stored += insert_outcome(&tx, o, id).map_err(map_err)?;
        }
        tx.commit().map_err(map_err)?;
        Ok(stored)
    }

    fn list_call_outcomes(
        &mut self,
        account: AccountId,
        limit: usize,
    ) -> Result<Vec<CallOutcomeRecord>, StoreError> {
        let Some(id) = db_id(account) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT call_id, caller, outcome, reason, started_unix, ended_unix \
                 FROM call_outcomes WHERE account_id = ?1 \
                 ORDER BY ended_unix DESC, id DESC LIMIT ?2",
            )
            .map_err(map_err)?;
        let mut rows = st.query(params![id, limit]).map_err(map_err)?;
        let g = |e: rusqlite::Error| StoreError::Corrupt(format!("unreadable call outcome: {e}"));
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(map_err)? {
            out.push(CallOutcomeRecord {
                call_id: r.get(0).map_err(g)?,
                account,
                caller: r.get(1).map_err(g)?,
                outcome: r.get(2).map_err(g)?,
                reason: r.get(3).map_err(g)?,
                started_unix: r.get(4).map_err(g)?,
                ended_unix: r.get(5).map_err(g)?,
            });
        }
        Ok(out)
    }

    fn prune_call_outcomes(&mut self, ended_before_unix: i64) -> Result<u64, StoreError> {
        let n = self
            .conn
            .execute(
                "DELETE FROM call_outcomes WHERE ended_unix < ?1",
                [ended_before_unix],
            )
            .map_err(map_err)?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_end_at_schema_version() {
        assert_eq!(MIGRATIONS.last().map(|m| m.0), Some(SCHEMA_VERSION));
        assert!(MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
