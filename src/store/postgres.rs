//! The PostgreSQL backend (tokio-postgres, no TLS yet).
//!
//! The store owns a small current-thread tokio runtime and `block_on`s every
//! operation: it runs on the dedicated store thread, never on a shard.
//!
//! Connection loss (server restart, network): the failing call drops the
//! connection, reconnects (bounded by [`PgOptions::connect_timeout`]) and
//! retries once, then gives up with [`StoreError::Unavailable`]. A retry is
//! only made when it cannot apply a change twice: writes that are not
//! idempotent (creating accounts, recording call outcomes) run in an explicit
//! transaction and are not retried when the connection died during their
//! `COMMIT`, whose outcome is then unknown; the caller gets `Unavailable`
//! saying so. Committed data is never touched by a reconnect.

use super::{
    aor_conflict, db_id, device_conflict, newer_schema, secret_columns, secret_from_columns,
    stored_id, stored_u32, token_conflict, AccountRecord, CallOutcomeRecord, DeviceRecord,
    ImportOutcome, Migration, NewAccount, OnConflict, Store, StoreError, SCHEMA_VERSION,
};
use crate::{AccountId, SavedRegistration};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, GenericClient, NoTls, Row, Statement};

/// The migrations, in order. Never edit one that has shipped: add another.
/// Same tables and rules as the SQLite list (see `sqlite.rs`); timestamps
/// `created`/`updated` are `timestamptz` here.
const MIGRATIONS: &[Migration] = &[(
    1,
    r#"
CREATE TABLE accounts (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    aor            TEXT    NOT NULL,
    auth_user      TEXT    NOT NULL,
    password       TEXT,
    ha1            TEXT,
    registrar      TEXT,
    outbound_proxy TEXT,
    expires        BIGINT  NOT NULL CHECK (expires BETWEEN 0 AND 4294967295),
    token          TEXT    NOT NULL,
    enabled        BOOLEAN NOT NULL DEFAULT TRUE,
    created        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated        TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT accounts_aor_unique UNIQUE (aor),
    CONSTRAINT accounts_token_unique UNIQUE (token),
    CONSTRAINT accounts_one_secret CHECK ((password IS NULL) <> (ha1 IS NULL))
);

CREATE TABLE registrations (
    account_id BIGINT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    call_id    TEXT   NOT NULL,
    cseq       BIGINT NOT NULL CHECK (cseq BETWEEN 0 AND 4294967295),
    granted    BIGINT NOT NULL CHECK (granted BETWEEN 0 AND 4294967295),
    updated    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    account_id   BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    device       TEXT   NOT NULL,
    provider     TEXT   NOT NULL,
    prid         TEXT   NOT NULL,
    param        TEXT,
    updated_unix BIGINT NOT NULL,
    PRIMARY KEY (account_id, device)
);
CREATE UNIQUE INDEX devices_push_identity
    ON devices (account_id, provider, prid, COALESCE(param, ''));

CREATE TABLE call_outcomes (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id      TEXT   NOT NULL,
    account_id   BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    caller       TEXT   NOT NULL,
    outcome      TEXT   NOT NULL,
    reason       TEXT,
    started_unix BIGINT NOT NULL,
    ended_unix   BIGINT NOT NULL
);
CREATE INDEX call_outcomes_account_ended
    ON call_outcomes (account_id, ended_unix DESC, id DESC);
CREATE INDEX call_outcomes_ended ON call_outcomes (ended_unix);
"#,
)];

/// Serialises concurrent `migrate()` calls of several sipis instances.
const MIGRATE_LOCK: i64 = 0x5331_5049_5353_544f; // "S1PISSTO"

const SQL_INSERT_ACCOUNT: &str = "INSERT INTO accounts (aor, auth_user, password, ha1, \
     registrar, outbound_proxy, expires, token, enabled) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id";
const SQL_UPDATE_ACCOUNT: &str = "UPDATE accounts SET aor = $2, auth_user = $3, password = $4, \
     ha1 = $5, registrar = $6, outbound_proxy = $7, expires = $8, token = $9, enabled = $10, \
     updated = now() WHERE id = $1";
const SQL_DELETE_ACCOUNT: &str = "DELETE FROM accounts WHERE id = $1";
const SQL_GET_ACCOUNT: &str = "SELECT id, aor, auth_user, password, ha1, registrar, \
     outbound_proxy, expires, token, enabled FROM accounts WHERE id = $1";
const SQL_GET_ACCOUNT_BY_AOR: &str = "SELECT id, aor, auth_user, password, ha1, registrar, \
     outbound_proxy, expires, token, enabled FROM accounts WHERE aor = $1";
const SQL_LIST_ACCOUNTS: &str = "SELECT id, aor, auth_user, password, ha1, registrar, \
     outbound_proxy, expires, token, enabled FROM accounts WHERE id > $1 ORDER BY id LIMIT $2";
const SQL_COUNT_ACCOUNTS: &str = "SELECT COUNT(*) FROM accounts";
const SQL_LOAD_REGISTRATIONS: &str =
    "SELECT account_id, call_id, cseq, granted FROM registrations ORDER BY account_id";
const SQL_SAVE_REGISTRATIONS: &str = "INSERT INTO registrations \
     (account_id, call_id, cseq, granted, updated) \
     SELECT u.a, u.c, u.s, u.g, now() \
     FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[]) AS u (a, c, s, g) \
     WHERE EXISTS (SELECT 1 FROM accounts WHERE id = u.a) \
     ON CONFLICT (account_id) DO UPDATE SET call_id = EXCLUDED.call_id, \
     cseq = EXCLUDED.cseq, granted = EXCLUDED.granted, updated = EXCLUDED.updated";
const SQL_PUT_DEVICE: &str = "INSERT INTO devices \
     (account_id, device, provider, prid, param, updated_unix) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (account_id, device) DO UPDATE SET provider = EXCLUDED.provider, \
     prid = EXCLUDED.prid, param = EXCLUDED.param, updated_unix = EXCLUDED.updated_unix";
const SQL_DELETE_DEVICE: &str = "DELETE FROM devices WHERE account_id = $1 AND device = $2";
const SQL_LIST_DEVICES: &str = "SELECT device, provider, prid, param, updated_unix \
     FROM devices WHERE account_id = $1 ORDER BY device";
const SQL_INSERT_OUTCOMES: &str = "INSERT INTO call_outcomes \
     (call_id, account_id, caller, outcome, reason, started_unix, ended_unix) \
     SELECT u.ci, u.a, u.cr, u.o, u.r, u.s, u.e \
     FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
                 $6::bigint[], $7::bigint[]) WITH ORDINALITY AS u (ci, a, cr, o, r, s, e, n) \
     WHERE EXISTS (SELECT 1 FROM accounts WHERE id = u.a) ORDER BY u.n";
const SQL_LIST_OUTCOMES: &str = "SELECT call_id, caller, outcome, reason, started_unix, \
     ended_unix FROM call_outcomes WHERE account_id = $1 \
     ORDER BY ended_unix DESC, id DESC LIMIT $2";
const SQL_PRUNE_OUTCOMES: &str = "DELETE FROM call_outcomes WHERE ended_unix < $1";

/// Connection settings beyond the URL.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Bound on establishing a connection (TCP + startup + auth), at start
    /// and on every reconnect.
    pub connect_timeout: Duration,
    /// Bound on one operation; past it the connection is dropped and the
    /// call returns `Unavailable`.
    pub op_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            connect_timeout: Duration::from_secs(3),
            op_timeout: Duration::from_secs(15),
        }
    }
}

/// One live connection with its prepared statements.
struct Conn {
    client: Client,
    stmts: HashMap<&'static str, Statement>,
}

/// The PostgreSQL backend.
pub struct PostgresStore {
    rt: tokio::runtime::Runtime,
    config: Config,
    opts: PgOptions,
    conn: Option<Conn>,
    connects: u64,
}

/// Why an operation failed, and whether running it again is safe.
struct OpError {
    err: StoreError,
    /// The connection died while a non-idempotent change was committing.
    ambiguous: bool,
}

impl From<tokio_postgres::Error> for OpError {
    fn from(e: tokio_postgres::Error) -> Self {
        OpError {
            err: classify(&e),
            ambiguous: false,
        }
    }
}

impl From<StoreError> for OpError {
    fn from(err: StoreError) -> Self {
        OpError {
            err,
            ambiguous: false,
        }
    }
}

/// Maps a driver error. Errors without a server error code are transport
/// errors (I/O, closed, protocol): the connection is unusable, so
/// `Unavailable`. Row decoding errors never get here (see [`col`]).
fn classify(e: &tokio_postgres::Error) -> StoreError {
    let Some(db) = e.as_db_error() else {
        return StoreError::Unavailable(format!("postgresql: {e}"));
    };
    let code = db.code();
    let c = code.code();
    if c.starts_with("08") // connection exception
        || c.starts_with("53") // insufficient resources
        || c.starts_with("57") // operator intervention: shutdown, cancel
        || c.starts_with("58") // system error (I/O)
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION
    {
        StoreError::Unavailable(format!("postgresql: {}", db.message()))
    } else if *code == SqlState::FOREIGN_KEY_VIOLATION {
        StoreError::NotFound
    } else if *code == SqlState::UNIQUE_VIOLATION {
        StoreError::Conflict(db.message().to_string())
    } else {
        StoreError::Corrupt(format!("postgresql {c}: {}", db.message()))
    }
}

/// The unique constraint an error broke, if any.
fn unique_constraint(e: &tokio_postgres::Error) -> Option<&str> {
    let db = e.as_db_error()?;
    (*db.code() == SqlState::UNIQUE_VIOLATION)
        .then(|| db.constraint())
        .flatten()
}

fn account_err(e: tokio_postgres::Error, aor: &str, token: &str) -> OpError {
    match unique_constraint(&e) {
        Some("accounts_aor_unique") => aor_conflict(aor).into(),
        Some("accounts_token_unique") => token_conflict(token).into(),
        _ => e.into(),
    }
}

/// `COMMIT` of a non-idempotent change failed: if the connection died, the
/// change may or may not be in.
fn commit_err(e: tokio_postgres::Error) -> OpError {
    let err = match classify(&e) {
        StoreError::Unavailable(m) => StoreError::Unavailable(format!(
            "connection lost while committing, the change may or may not be applied: {m}"
        )),
        other => other,
    };
    OpError {
        ambiguous: true,
        err,
    }
}

/// Reads column `i` of a row; a decoding failure means the schema is not
/// what this binary expects.
fn col<'a, T: tokio_postgres::types::FromSql<'a>>(r: &'a Row, i: usize) -> Result<T, StoreError> {
    r.try_get(i).map_err(|e| {
        StoreError::Corrupt(format!(
            "unreadable column {}: {e}",
            r.columns().get(i).map_or("?", |c| c.name())
        ))
    })
}

fn account_from_row(r: &Row) -> Result<AccountRecord, StoreError> {
    let id: i64 = col(r, 0)?;
    Ok(AccountRecord {
        id: stored_id(id)?,
        aor: col(r, 1)?,
        auth_user: col(r, 2)?,
        secret: secret_from_columns(id, col(r, 3)?, col(r, 4)?)?,
        registrar: col(r, 5)?,
        outbound_proxy: col(r, 6)?,
        expires: stored_u32("expires", col(r, 7)?)?,
        token: col(r, 8)?,
        enabled: col(r, 9)?,
    })
}

/// The prepared statement for `sql` on this connection (prepared once).
async fn prep(
    stmts: &mut HashMap<&'static str, Statement>,
    c: &impl GenericClient,
    sql: &'static str,
) -> Result<Statement, tokio_postgres::Error> {
    if let Some(s) = stmts.get(sql) {
        return Ok(s.clone());
    }
    let s = c.prepare(sql).await?;
    stmts.insert(sql, s.clone());
    Ok(s)
}

async fn insert_account(
    stmts: &mut HashMap<&'static str, Statement>,
    c: &impl GenericClient,
    new: &NewAccount,
) -> Result<AccountRecord, OpError> {
    let st = prep(stmts, c, SQL_INSERT_ACCOUNT).await?;
    let (password, ha1) = secret_columns(&new.secret);
    let rows = c
        .query(
            &st,
            &[
                &new.aor,
                &new.auth_user,
                &password,
                &ha1,
                &new.registrar,
                &new.outbound_proxy,
                &i64::from(new.expires),
                &new.token,
                &new.enabled,
            ],
        )
        .await
        .map_err(|e| account_err(e, &new.aor, &new.token))?;
    let row = rows
        .first()
        .ok_or_else(|| StoreError::Corrupt("INSERT returned no id".into()))?;
    let id = stored_id(col(row, 0)?)?;
    Ok(new.clone().with_id(id))
}

impl PostgresStore {
    /// Connects to `url` (`postgresql://user[:password]@host[:port]/db` or
    /// `host=... dbname=...`). Call [`Store::migrate`] before anything else.
    /// `Unavailable` if the URL is invalid or the server cannot be reached.
    pub fn connect(url: &str, opts: PgOptions) -> Result<Self, StoreError> {
        let mut config: Config = url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("invalid PostgreSQL URL: {e}")))?;
        if config.get_application_name().is_none() {
            config.application_name("sipis");
        }
        config.connect_timeout(opts.connect_timeout);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Unavailable(format!("cannot start the runtime: {e}")))?;
        let mut store = PostgresStore {
            rt,
            config,
            opts,
            conn: None,
            connects: 0,
        };
        store.ensure_connected()?;
        Ok(store)
    }

    /// How many connections were established so far (1 + reconnects).
    pub fn connects(&self) -> u64 {
        self.connects
    }

    /// Runs raw SQL (maintenance, tests). Not for the serving path.
    pub fn execute_batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.run(false, async |c| Ok(c.client.batch_execute(sql).await?))
    }

    fn ensure_connected(&mut self) -> Result<(), StoreError> {
        if self.conn.as_ref().is_some_and(|c| !c.client.is_closed()) {
            return Ok(());
        }
        self.conn = None;
        let config = &self.config;
        let timeout = self.opts.connect_timeout;
        let target = target_of(config);
        let conn = self.rt.block_on(async move {
            let (client, connection) = tokio::time::timeout(timeout, config.connect(NoTls))
                .await
                .map_err(|_| {
                    StoreError::Unavailable(format!(
                        "postgresql at {target}: no connection within {timeout:?}"
                    ))
                })?
                .map_err(|e| {
                    StoreError::Unavailable(format!("postgresql at {target}: cannot connect: {e}"))
                })?;
            // Driven whenever the store is inside block_on; ends when the
            // client is dropped or the server goes away.
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok::<_, StoreError>(Conn {
                client,
                stmts: HashMap::new(),
            })
        })?;
        self.conn = Some(conn);
        self.connects += 1;
        Ok(())
    }

    /// Runs `op` on a live connection: reconnects first if the connection
    /// is known dead; if `op` fails for want of the server, reconnects and
    /// runs it once more (unless that could apply a change twice).
    fn run<T>(
        &mut self,
        idempotent: bool,
        mut op: impl AsyncFnMut(&mut Conn) -> Result<T, OpError>,
    ) -> Result<T, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.ensure_connected()?;
            let Some(conn) = self.conn.as_mut() else {
                return Err(StoreError::Unavailable("postgresql: not connected".into()));
            };
            let timeout = self.opts.op_timeout;
            let res = self
                .rt
                .block_on(async { tokio::time::timeout(timeout, op(conn)).await });
            match res {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(OpError { err, ambiguous })) => {
                    if let StoreError::Unavailable(_) = err {
                        // The connection may be in any state: start afresh.
                        self.conn = None;
                        if attempt == 1 && (idempotent || !ambiguous) {
                            continue;
                        }
                    }
                    return Err(err);
                }
                Err(_) => {
                    self.conn = None;
                    return Err(StoreError::Unavailable(format!(
                        "postgresql: no answer within {timeout:?}"
                    )));
                }
            }
        }
    }
}

impl Store for PostgresStore {
    fn migrate(&mut self) -> Result<u32, StoreError> {
        self.run(true, async |c| {
            let tx = c.client.transaction().await?;
            tx.batch_execute(&format!(
                "SELECT pg_advisory_xact_lock({MIGRATE_LOCK});
                 CREATE TABLE IF NOT EXISTS schema_version (
                     version INTEGER PRIMARY KEY,
                     applied TIMESTAMPTZ NOT NULL DEFAULT now()
                 );"
            ))
            .await?;
            let row = tx
                .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
                .await?;
            let current: i32 = col(&row, 0)?;
            let current = u32::try_from(current)
                .map_err(|_| StoreError::Corrupt(format!("bad schema version {current}")))?;
            if current > SCHEMA_VERSION {
                return Err(newer_schema(current).into());
            }
            for &(version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
                tx.batch_execute(sql)
                    .await
                    .map_err(|e| match classify(&e) {
                        StoreError::Unavailable(m) => StoreError::Unavailable(m),
                        _ => StoreError::Corrupt(format!(
                            "migration to version {version} failed: {e}"
                        )),
                    })?;
                tx.execute(
                    "INSERT INTO schema_version (version) VALUES ($1)",
                    &[&(version as i32)],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(SCHEMA_VERSION.max(current))
        })
    }

    fn create_account(&mut self, new: &NewAccount) -> Result<AccountRecord, StoreError> {
        self.run(false, async |c| {
            let tx = c.client.transaction().await?;
            let rec = insert_account(&mut c.stmts, &tx, new).await?;
            tx.commit().await.map_err(commit_err)?;
            Ok(rec)
        })
    }

    fn create_accounts(&mut self, new: &[NewAccount]) -> Result<Vec<AccountRecord>, StoreError> {
        self.run(false, async |c| {
            let tx = c.client.transaction().await?;
            let mut out = Vec::with_capacity(new.len());
            for n in new {
                out.push(insert_account(&mut c.stmts, &tx, n).await?);
            }
            tx.commit().await.map_err(commit_err)?;
            Ok(out)
        })
    }

    fn import_accounts(
        &mut self,
        new: &[NewAccount],
        on_conflict: OnConflict,
    ) -> Result<ImportOutcome, StoreError> {
        self.run(false, async |c| {
            let tx = c.client.transaction().await?;
            let mut out = ImportOutcome::default();
            for n in new {
                let st = prep(&mut c.stmts, &tx, SQL_GET_ACCOUNT_BY_AOR).await?;
                let rows = tx.query(&st, &[&n.aor]).await?;
                let existing = rows.first().map(account_from_row).transpose()?;
                match (existing, on_conflict) {
                    (None, _) => out
                        .created
                        .push(insert_account(&mut c.stmts, &tx, n).await?),
                    (Some(_), OnConflict::Fail) => return Err(aor_conflict(&n.aor).into()),
                    (Some(_), OnConflict::Skip) => out.skipped.push(n.aor.clone()),
                    (Some(old), OnConflict::Update) => {
                        let rec = old.updated_from(n);
                        let (password, ha1) = secret_columns(&rec.secret);
                        let st = prep(&mut c.stmts, &tx, SQL_UPDATE_ACCOUNT).await?;
                        let id = db_id(rec.id).ok_or(StoreError::NotFound)?;
                        tx.execute(
                            &st,
                            &[
                                &id,
                                &rec.aor,
                                &rec.auth_user,
                                &password,
                                &ha1,
                                &rec.registrar,
                                &rec.outbound_proxy,
                                &i64::from(rec.expires),
                                &rec.token,
                                &rec.enabled,
                            ],
                        )
                        .await
                        .map_err(|e| account_err(e, &rec.aor, &rec.token))?;
                        out.updated.push((old, rec));
                    }
                }
            }
            tx.commit().await.map_err(commit_err)?;
            Ok(out)
        })
    }

    fn update_account(&mut self, a: &AccountRecord) -> Result<(), StoreError> {
        let Some(id) = db_id(a.id) else {
            return Err(StoreError::NotFound);
        };
        let (password, ha1) = secret_columns(&a.secret);
        let n = self.run(true, async |c| {
            let st = prep(&mut c.stmts, &c.client, SQL_UPDATE_ACCOUNT).await?;
            c.client
                .execute(
                    &st,
                    &[
                        &id,
                        &a.aor,
                        &a.auth_user,
                        &password,
                        &ha1,
                        &a.registrar,
                        &a.outbound_proxy,
                        &i64::from(a.expires),
                        &a.token,
                        &a.enabled,
                    ],
                )
                .await
                .map_err(|e| account_err(e, &a.aor, &a.token))
        })?;
        if n == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }

    fn delete_account(&mut self, id: AccountId) -> Result<bool, StoreError> {
        let Some(id) = db_id(id) else {
            return Ok(false);
        };
        self.run(true, async |c| {
            let st = prep(&mut c.stmts, &c.client, SQL_DELETE_ACCOUNT).await?;
            Ok(c.client.execute(&st, &[&id]).await? > 0)
        })
    }

    fn get_account(&mut self, id: AccountId) -> Result<Option<AccountRecord>, StoreError> {
        let Some(id) = db_id(id) else {
            return Ok(None);
        };
        self.run(true, async |c| {
            let st = prep(&mut c.stmts, &c.client, SQL_GET_ACCOUNT).await?;
            let rows = c.client.query(&st, &[&id]).await?;
            Ok(rows.first().map(account_from_row).transpose()?)
        })
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
        self.run(true, async |c| {
            let st = prep(&mut c.stmts, &c.client, SQL_LIST_ACCOUNTS).await?;
            let rows = c.client.query(&st, &[&after, &limit]).await?;
            Ok(rows
                .iter()
                .map(account_from_row)
                .collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn count_accounts(&mut self) -> Result<u64, StoreError> {
        self.run(true, async |c| {
            let st = prep(&mut c.stmts, &c.client, SQL_COUNT_ACCOUNTS).await?;
            let rows = c.client.query(&st, &[]).await?;
            let n: i64 = match rows.first() {
                Some(r) => col(r, 0)?,
                None => 0,
            };
            Ok(n as u64)
        })
    }

    fn load_registrations(&mut self) -> Result<Vec<(AccountId, SavedRegistration)>, StoreError> {
        self.run(true, async |c| {
            let st = prep(&mut c.stmts, &c.client, SQL_LOAD_REGISTRATIONS).await?;
            let rows = c.client.query(&st, &[]).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push((
                    stored_id(col(r, 0)?)?,
                    SavedRegistration {
                        call_id: col(r, 1)?,
                        cseq: stored_u32("cseq", col(r, 2)?)?,
                        granted: stored_u32("granted", col(r, 3)?)?,
                    },
                ));
            }
            Ok(out)
        })
    }

    fn save_registrations(
        &mut self,
        batch: &[(AccountId, SavedRegistration)],
    ) -> Result<(), StoreError> {
        // Latest entry per account wins; sorted ids keep concurrent writers
        // from deadlocking.
        let latest: BTreeMap<i64, &SavedRegistration> = batch
            .iter()
            .filter_map(|(id, s)| Some((db_id(*id)?, s)))
            .collect();
        if latest.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = latest.keys().copied().collect();
        let call_ids: Vec<&str> = latest.values().map(|s| s.call_id.as_str()).collect();
        let cseqs: Vec<i64> = latest.values().map(|s| i64::from(s.cseq)).collect();
        let granted: Vec<i64> = latest.values().map(|s| i64::from(s.granted)).collect();
        self.run(true, async |c| {
            let st = prep(&mut c.stmts, &c.client, SQL_SAVE_REGISTRATIONS).await?;
            c.client
                .execute(&st, &[&ids, &call_ids, &cseqs, &granted])
                .await?;
            Ok(())
        })
    }

    fn put_device(&mut self, d: &DeviceRecord) -> Result<(), StoreError> {
        let Some(id) = db_id(d.account) else {
            return Err(StoreError::NotFound);
        };
        self.run(true, async |c| {
            let st = prep(&mut c.stmts, &c.client, SQL_PUT_DEVICE).await?;
            c.client
                .execute(
                    &st,
                    &[
                        &id,
                        &d.device,
                        &d.provider,
                        &d.prid,
                        &d.param,
                        &d.updated_unix,
                    ],
                )
                .await
                .map_err(|e| match unique_constraint(&e) {
                    Some(_) => device_conflict(d).into(),
                    None => OpError::from(e),
                })?;
            Ok(())
        })
    }

    fn delete_device(&mut self, account: AccountId, device: &str) -> Result<bool, StoreError> {
        let Some(id) = db_id(account) else {
            return Ok(false);
        };
        self.run(true, async |c| {
            let st = prep(&mut c.stmts, &c.client, SQL_DELETE_DEVICE).await?;
            Ok(c.client.execute(&st, &[&id, &device]).await? > 0)
        })
    }

    fn list_devices(&mut self, account: AccountId) -> Result<Vec<DeviceRecord>, StoreError> {
        let Some(id) = db_id(account) else {
            return Ok(Vec::new());
        };
        self.run(true, async |c| {
            let st = prep(&mut c.stmts, &c.client, SQL_LIST_DEVICES).await?;
            let rows = c.client.query(&st, &[&id]).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(DeviceRecord {
                    account,
                    device: col(r, 0)?,
                    provider: col(r, 1)?,
                    prid: col(r, 2)?,
                    param: col(r, 3)?,
                    updated_unix: col(r, 4)?,
                });
            }
            Ok(out)
        })
    }

    fn record_call_outcome(&mut self, o: &CallOutcomeRecord) -> Result<(), StoreError> {
        match self.record_call_outcomes(std::slice::from_ref(o))? {
            0 => Err(StoreError::NotFound),
            _ => Ok(()),
        }
    }

    fn record_call_outcomes(&mut self, batch: &[CallOutcomeRecord]) -> Result<usize, StoreError> {
        let batch: Vec<(&CallOutcomeRecord, i64)> = batch
            .iter()
            .filter_map(|o| Some((o, db_id(o.account)?)))
            .collect();
        if batch.is_empty() {
            return Ok(0);
        }
        let call_ids: Vec<&str> = batch.iter().map(|(o, _)| o.call_id.as_str()).collect();
        let accounts: Vec<i64> = batch.iter().map(|(_, id)| *id).collect();
        let callers: Vec<&str> = batch.iter().map(|(o, _)| o.caller.as_str()).collect();
        let outcomes: Vec<&str> = batch.iter().map(|(o, _)| o.outcome.as_str()).collect();
        let reasons: Vec<Option<&str>> = batch.iter().map(|(o, _)| o.reason.as_deref()).collect();
        let started: Vec<i64> = batch.iter().map(|(o, _)| o.started_unix).collect();
        let ended: Vec<i64> = batch.iter().map(|(o, _)| o.ended_unix).collect();
        self.run(false, async |c| {
            let tx = c.client.transaction().await?;
            let st = prep(&mut c.stmts, &tx, SQL_INSERT_OUTCOMES).await?;
            let n = tx
                .execute(
                    &st,
                    &[
                        &call_ids, &accounts, &callers, &outcomes, &reasons, &started, &ended,
                    ],
                )
                .await?;
            tx.commit().await.map_err(commit_err)?;
            Ok(n as usize)
        })
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
        self.run(true, async |c| {
            let st = prep(&mut c.stmts, &c.client, SQL_LIST_OUTCOMES).await?;
            let rows = c.client.query(&st, &[&id, &limit]).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(CallOutcomeRecord {
                    call_id: col(r, 0)?,
                    account,
                    caller: col(r, 1)?,
                    outcome: col(r, 2)?,
                    reason: col(r, 3)?,
                    started_unix: col(r, 4)?,
                    ended_unix: col(r, 5)?,
                });
            }
            Ok(out)
        })
    }

    fn prune_call_outcomes(&mut self, ended_before_unix: i64) -> Result<u64, StoreError> {
        self.run(true, async |c| {
            let st = prep(&mut c.stmts, &c.client, SQL_PRUNE_OUTCOMES).await?;
            Ok(c.client.execute(&st, &[&ended_before_unix]).await?)
        })
    }
}

/// `host:port` (or the socket directory) a configuration connects to, for
/// errors an operator can act on.
fn target_of(config: &Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                tokio_postgres::config::Host::Unix(dir) => {
                    format!("{}/.s.PGSQL.{port}", dir.display())
                }
            }
        })
        .collect();
    if hosts.is_empty() {
        "localhost:5432".to_owned()
    } else {
        hosts.join(",")
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

    #[test]
    fn bad_url_is_unavailable_not_a_panic() {
        let e = PostgresStore::connect("postgresql://x:y@[::1", PgOptions::default())
            .err()
            .unwrap();
        assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
    }
}
