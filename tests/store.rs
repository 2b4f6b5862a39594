//! The storage layer: one suite, run against every backend (SQLite in
//! memory, SQLite in a file, PostgreSQL on a throwaway server started by
//! `support/postgres.rs`), plus backend-specific tests (PostgreSQL restart
//! and outage, SQLite WAL) and CSV parsing.

#[path = "support/postgres.rs"]
mod pg;

use sipis::store::{
    new_token, parse_accounts_csv, AccountRecord, CallOutcomeRecord, CsvError, DeviceRecord,
    NewAccount, PgOptions, PostgresStore, SqliteStore, Store, StoreError, StoreHandle, StoreThread,
    StoreThreadConfig, SCHEMA_VERSION,
};
use sipis::{AccountId, AccountSecret, SavedRegistration};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- fixtures

/// A backend under test, with raw SQL for the cases that need it.
trait TestDb: Store {
    fn exec(&mut self, sql: &str);
}

impl TestDb for SqliteStore {
    fn exec(&mut self, sql: &str) {
        self.execute_batch(sql).unwrap();
    }
}

impl TestDb for PostgresStore {
    fn exec(&mut self, sql: &str) {
        self.execute_batch(sql).unwrap();
    }
}

/// One database for one test; `open` gives a new connection to it.
trait Fixture {
    fn open(&self) -> Box<dyn TestDb>;
    fn open_plain(&self) -> Box<dyn Store>;
}

/// SQLite in memory: every `open` is a new, empty database.
struct Memory;

impl Fixture for Memory {
    fn open(&self) -> Box<dyn TestDb> {
        Box::new(SqliteStore::open_in_memory().unwrap())
    }
    fn open_plain(&self) -> Box<dyn Store> {
        Box::new(SqliteStore::open_in_memory().unwrap())
    }
}

static DIRS: AtomicU32 = AtomicU32::new(0);

/// A fresh temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let n = DIRS.fetch_add(1, Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("sipis-store-{}-{n}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// SQLite in a temp file.
struct File(TempDir);

impl File {
    fn new(test: &str) -> File {
        File(TempDir::new(test))
    }
    fn db(&self) -> PathBuf {
        self.0.path().join("sipis.db")
    }
}

impl Fixture for File {
    fn open(&self) -> Box<dyn TestDb> {
        Box::new(SqliteStore::open(&self.db()).unwrap())
    }
    fn open_plain(&self) -> Box<dyn Store> {
        Box::new(SqliteStore::open(&self.db()).unwrap())
    }
}

/// A fresh database on the shared PostgreSQL server.
struct Pg {
    server: &'static pg::PgServer,
    name: String,
    url: String,
}

impl Pg {
    /// `None` when the PG tests are skipped (`SIPIS_SKIP_PG=1`).
    fn new(test: &str) -> Option<Pg> {
        let server = pg::shared()?;
        let name = pg::db_name(test);
        let url = server.create_database(&name);
        Some(Pg { server, name, url })
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.server.drop_database(&self.name);
    }
}

impl Fixture for Pg {
    fn open(&self) -> Box<dyn TestDb> {
        Box::new(PostgresStore::connect(&self.url, PgOptions::default()).unwrap())
    }
    fn open_plain(&self) -> Box<dyn Store> {
        Box::new(PostgresStore::connect(&self.url, PgOptions::default()).unwrap())
    }
}

// ----------------------------------------------------------------- helpers

fn migrated(f: &dyn Fixture) -> Box<dyn TestDb> {
    let mut s = f.open();
    assert_eq!(s.migrate().unwrap(), SCHEMA_VERSION);
    s
}

fn migrated_plain(f: &dyn Fixture) -> Box<dyn Store> {
    let mut s = f.open_plain();
    assert_eq!(s.migrate().unwrap(), SCHEMA_VERSION);
    s
}

fn acct(n: u32) -> NewAccount {
    NewAccount {
        aor: format!("sip:user{n}@provider.example"),
        auth_user: format!("user{n}"),
        secret: AccountSecret::Password(format!("pw-{n}")),
        registrar: Some("sip:provider.example".into()),
        outbound_proxy: None,
        expires: 3600,
        token: format!("tok{n:013}"),
        enabled: true,
    }
}

fn reg(call_id: &str, cseq: u32, granted: u32) -> SavedRegistration {
    SavedRegistration {
        call_id: call_id.into(),
        cseq,
        granted,
    }
}

fn outcome(account: AccountId, call_id: &str, ended: i64) -> CallOutcomeRecord {
    CallOutcomeRecord {
        call_id: call_id.into(),
        account,
        caller: "sip:bob@example.net".into(),
        outcome: "answered".into(),
        reason: Some("SIP;cause=200;text=\"Call completed elsewhere\"".into()),
        started_unix: ended - 30,
        ended_unix: ended,
    }
}

fn device(account: AccountId, name: &str, prid: &str, param: Option<&str>) -> DeviceRecord {
    DeviceRecord {
        account,
        device: name.into(),
        provider: "apns".into(),
        prid: prid.into(),
        param: param.map(str::to_string),
        updated_unix: 1_700_000_000,
    }
}

fn is_conflict(r: Result<impl std::fmt::Debug, StoreError>, needle: &str) {
    match r {
        Err(StoreError::Conflict(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected a conflict about {needle:?}, got {other:?}"),
    }
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A backend wrapper for the store-thread tests: can play a dead database
/// and records the size of every registration batch it wrote.
struct Probe {
    inner: Box<dyn Store>,
    down: Arc<AtomicBool>,
    batches: Arc<Mutex<Vec<usize>>>,
}

#[derive(Clone)]
struct ProbeCtl {
    down: Arc<AtomicBool>,
    batches: Arc<Mutex<Vec<usize>>>,
}

impl ProbeCtl {
    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
    fn batches(&self) -> Vec<usize> {
        self.batches.lock().unwrap().clone()
    }
    fn rows_written(&self) -> usize {
        self.batches().iter().sum()
    }
}

fn probe(inner: Box<dyn Store>) -> (Box<dyn Store>, ProbeCtl) {
    let ctl = ProbeCtl {
        down: Arc::new(AtomicBool::new(false)),
        batches: Arc::new(Mutex::new(Vec::new())),
    };
    let p = Probe {
        inner,
        down: ctl.down.clone(),
        batches: ctl.batches.clone(),
    };
    (Box::new(p), ctl)
}

impl Probe {
    fn up(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("test: database down".into()))
        } else {
            Ok(())
        }
    }
}

impl Store for Probe {
    fn migrate(&mut self) -> Result<u32, StoreError> {
        self.up()?;
        self.inner.migrate()
    }
    fn create_account(&mut self, new: &NewAccount) -> Result<AccountRecord, StoreError> {
        self.up()?;
        self.inner.create_account(new)
    }
    fn create_accounts(&mut self, new: &[NewAccount]) -> Result<Vec<AccountRecord>, StoreError> {
        self.up()?;
        self.inner.create_accounts(new)
    }
    fn import_accounts(
        &mut self,
        new: &[NewAccount],
        on_conflict: sipis::store::OnConflict,
    ) -> Result<sipis::store::ImportOutcome, StoreError> {
        self.up()?;
        self.inner.import_accounts(new, on_conflict)
    }
    fn update_account(&mut self, a: &AccountRecord) -> Result<(), StoreError> {
        self.up()?;
        self.inner.update_account(a)
    }
    fn delete_account(&mut self, id: AccountId) -> Result<bool, StoreError> {
        self.up()?;
        self.inner.delete_account(id)
    }
    fn get_account(&mut self, id: AccountId) -> Result<Option<AccountRecord>, StoreError> {
        self.up()?;
        self.inner.get_account(id)
    }
    fn list_accounts(
        &mut self,
        after: AccountId,
        limit: usize,
    ) -> Result<Vec<AccountRecord>, StoreError> {
        self.up()?;
        self.inner.list_accounts(after, limit)
    }
    fn count_accounts(&mut self) -> Result<u64, StoreError> {
        self.up()?;
        self.inner.count_accounts()
    }
    fn load_registrations(&mut self) -> Result<Vec<(AccountId, SavedRegistration)>, StoreError> {
        self.up()?;
        self.inner.load_registrations()
    }
    fn save_registrations(
        &mut self,
        batch: &[(AccountId, SavedRegistration)],
    ) -> Result<(), StoreError> {
        self.up()?;
        self.inner.save_registrations(batch)?;
        self.batches.lock().unwrap().push(batch.len());
        Ok(())
    }
    fn put_device(&mut self, d: &DeviceRecord) -> Result<(), StoreError> {
        self.up()?;
        self.inner.put_device(d)
    }
    fn delete_device(&mut self, account: AccountId, device: &str) -> Result<bool, StoreError> {
        self.up()?;
        self.inner.delete_device(account, device)
    }
    fn list_devices(&mut self, account: AccountId) -> Result<Vec<DeviceRecord>, StoreError> {
        self.up()?;
        self.inner.list_devices(account)
    }
    fn record_call_outcome(&mut self, o: &CallOutcomeRecord) -> Result<(), StoreError> {
        self.up()?;
        self.inner.record_call_outcome(o)
    }
    fn record_call_outcomes(&mut self, batch: &[CallOutcomeRecord]) -> Result<usize, StoreError> {
        self.up()?;
        self.inner.record_call_outcomes(batch)
    }
    fn list_call_outcomes(
        &mut self,
        account: AccountId,
        limit: usize,
    ) -> Result<Vec<CallOutcomeRecord>, StoreError> {
        self.up()?;
        self.inner.list_call_outcomes(account, limit)
    }
    fn prune_call_outcomes(&mut self, ended_before_unix: i64) -> Result<u64, StoreError> {
        self.up()?;
        self.inner.prune_call_outcomes(ended_before_unix)
    }
}

fn fast_retry() -> StoreThreadConfig {
    StoreThreadConfig {
        retry_min: Duration::from_millis(10),
        retry_max: Duration::from_millis(50),
        call_timeout: Duration::from_secs(20),
        ..StoreThreadConfig::default()
    }
}

// ------------------------------------------------------------------- cases

mod cases {
    use super::*;

    pub fn migrate_is_idempotent(f: &dyn Fixture) {
        let mut s = f.open();
        assert_eq!(s.migrate().unwrap(), SCHEMA_VERSION);
        let a = s.create_account(&acct(1)).unwrap();
        assert_eq!(s.migrate().unwrap(), SCHEMA_VERSION);
        assert_eq!(s.migrate().unwrap(), SCHEMA_VERSION);
        assert_eq!(s.get_account(a.id).unwrap(), Some(a));
        assert_eq!(s.count_accounts().unwrap(), 1);
    }

    pub fn account_crud(f: &dyn Fixture) {
        let mut s = migrated(f);
        assert_eq!(s.count_accounts().unwrap(), 0);
        assert_eq!(s.get_account(1).unwrap(), None);
        let a = s.create_account(&acct(1)).unwrap();
        let b = s.create_account(&acct(2)).unwrap();
        assert!(b.id > a.id);
        assert_eq!(a, acct(1).with_id(a.id));
        assert_eq!(s.get_account(a.id).unwrap(), Some(a.clone()));
        assert_eq!(s.count_accounts().unwrap(), 2);

        let mut changed = a.clone();
        changed.aor = "sips:alice@other.example".into();
        changed.auth_user = "alice".into();
        changed.registrar = None;
        changed.outbound_proxy = Some("sip:edge.other.example;lr".into());
        changed.expires = u32::MAX;
        changed.token = new_token();
        changed.enabled = false;
        s.update_account(&changed).unwrap();
        assert_eq!(s.get_account(a.id).unwrap(), Some(changed.clone()));
        assert_eq!(s.get_account(b.id).unwrap(), Some(b.clone()));

        let mut ghost = changed.clone();
        ghost.id = b.id + 1000;
        ghost.aor = "sip:ghost@x".into();
        ghost.token = new_token();
        assert_eq!(s.update_account(&ghost), Err(StoreError::NotFound));
        ghost.id = u64::MAX;
        assert_eq!(s.update_account(&ghost), Err(StoreError::NotFound));

        assert!(s.delete_account(a.id).unwrap());
        assert!(!s.delete_account(a.id).unwrap());
        assert!(!s.delete_account(u64::MAX).unwrap());
        assert_eq!(s.get_account(a.id).unwrap(), None);
        assert_eq!(s.get_account(u64::MAX).unwrap(), None);
        assert_eq!(s.count_accounts().unwrap(), 1);
        // The freed AOR and token can be provisioned again, with a new id.
        let again = s
            .create_account(&NewAccount {
                aor: changed.aor.clone(),
                token: changed.token.clone(),
                ..acct(3)
            })
            .unwrap();
        assert!(again.id > b.id, "ids are never reused");
    }

    pub fn list_paginates_by_id(f: &dyn Fixture) {
        let mut s = migrated(f);
        let created: Vec<AccountRecord> = (0..25)
            .map(|n| s.create_account(&acct(n)).unwrap())
            .collect();
        assert!(created.windows(2).all(|w| w[0].id < w[1].id));
        for gone in [3usize, 10, 11, 24] {
            assert!(s.delete_account(created[gone].id).unwrap());
        }
        let want: Vec<AccountRecord> = created
            .iter()
            .enumerate()
            .filter(|(i, _)| ![3, 10, 11, 24].contains(i))
            .map(|(_, a)| a.clone())
            .collect();
        let mut got = Vec::new();
        let mut after = 0;
        let mut pages = 0;
        loop {
            let page = s.list_accounts(after, 7).unwrap();
            assert!(page.len() <= 7);
            if page.is_empty() {
                break;
            }
            after = page.last().unwrap().id;
            got.extend(page);
            pages += 1;
        }
        assert_eq!(pages, 3); // 21 accounts: 7 + 7 + 7
        assert_eq!(got, want);
        assert_eq!(s.list_accounts(0, 0).unwrap(), vec![]);
        assert_eq!(s.list_accounts(u64::MAX, 10).unwrap(), vec![]);
        assert_eq!(s.list_accounts(0, usize::MAX).unwrap().len(), 21);
        assert_eq!(s.count_accounts().unwrap(), 21);
    }

    pub fn unique_aor_and_token(f: &dyn Fixture) {
        let mut s = migrated(f);
        let a = s.create_account(&acct(1)).unwrap();
        let b = s.create_account(&acct(2)).unwrap();
        is_conflict(
            s.create_account(&NewAccount {
                token: new_token(),
                ..acct(1)
            }),
            "aor already provisioned: sip:user1@provider.example",
        );
        is_conflict(
            s.create_account(&NewAccount {
                aor: "sip:new@provider.example".into(),
                ..acct(2)
            }),
            &format!("token already in use: {}", b.token),
        );
        let mut upd = b.clone();
        upd.aor = a.aor.clone();
        is_conflict(s.update_account(&upd), "aor already provisioned");
        let mut upd = b.clone();
        upd.token = a.token.clone();
        is_conflict(s.update_account(&upd), "token already in use");
        assert_eq!(s.count_accounts().unwrap(), 2);
        assert_eq!(s.get_account(b.id).unwrap(), Some(b));
    }

    pub fn secrets_round_trip(f: &dyn Fixture) {
        let mut s = migrated(f);
        let pw = s
            .create_account(&NewAccount {
                secret: AccountSecret::Password("pä$$ wörd \"'; --".into()),
                ..acct(1)
            })
            .unwrap();
        let ha1 = s
            .create_account(&NewAccount {
                secret: AccountSecret::Ha1("0123456789abcdef0123456789abcdef".into()),
                ..acct(2)
            })
            .unwrap();
        assert_eq!(s.get_account(pw.id).unwrap().unwrap().secret, pw.secret);
        assert_eq!(s.get_account(ha1.id).unwrap().unwrap().secret, ha1.secret);
        // Switching the kind clears the other column (the schema allows
        // exactly one).
        let mut sw = pw.clone();
        sw.secret = AccountSecret::Ha1("f".repeat(64));
        s.update_account(&sw).unwrap();
        assert_eq!(s.get_account(pw.id).unwrap().unwrap().secret, sw.secret);
        let mut back = sw.clone();
        back.secret = AccountSecret::Password(String::new());
        s.update_account(&back).unwrap();
        assert_eq!(s.get_account(pw.id).unwrap().unwrap().secret, back.secret);
    }

    pub fn registrations_upsert_and_cascade(f: &dyn Fixture) {
        let mut s = migrated(f);
        let a = s.create_account(&acct(1)).unwrap();
        let b = s.create_account(&acct(2)).unwrap();
        assert_eq!(s.load_registrations().unwrap(), vec![]);
        s.save_registrations(&[(a.id, reg("ca", 1, 0)), (b.id, reg("cb", 7, 600))])
            .unwrap();
        assert_eq!(
            s.load_registrations().unwrap(),
            vec![(a.id, reg("ca", 1, 0)), (b.id, reg("cb", 7, 600))]
        );
        // Upsert; within one batch the latest entry wins; unknown accounts
        // are skipped; extremes round-trip.
        s.save_registrations(&[
            (b.id, reg("cb", 8, 3600)),
            (a.id, reg("ca2", 2, 1)),
            (9_999_999, reg("ghost", 1, 1)),
            (u64::MAX, reg("ghost", 1, 1)),
            (a.id, reg("ca3", u32::MAX, u32::MAX)),
        ])
        .unwrap();
        assert_eq!(
            s.load_registrations().unwrap(),
            vec![
                (a.id, reg("ca3", u32::MAX, u32::MAX)),
                (b.id, reg("cb", 8, 3600))
            ]
        );
        s.save_registrations(&[]).unwrap();
        assert!(s.delete_account(a.id).unwrap());
        assert_eq!(
            s.load_registrations().unwrap(),
            vec![(b.id, reg("cb", 8, 3600))]
        );
    }

    pub fn devices_put_replace_list_delete(f: &dyn Fixture) {
        let mut s = migrated(f);
        let a = s.create_account(&acct(1)).unwrap();
        let b = s.create_account(&acct(2)).unwrap();
        let team = Some("ABCDE12345.com.example.phone.voip");
        s.put_device(&device(a.id, "iphone", "tok-1", team))
            .unwrap();
        s.put_device(&device(a.id, "ipad", "tok-2", team)).unwrap();
        assert_eq!(
            s.list_devices(a.id).unwrap(),
            vec![
                device(a.id, "ipad", "tok-2", team),
                device(a.id, "iphone", "tok-1", team)
            ]
        );
        // Replace: same (account, device), new push token.
        let mut newer = device(a.id, "iphone", "tok-1b", team);
        newer.updated_unix += 60;
        s.put_device(&newer).unwrap();
        assert_eq!(s.list_devices(a.id).unwrap()[1], newer);
        assert_eq!(s.list_devices(a.id).unwrap().len(), 2);
        // One push identity per account: another name with it conflicts...
        is_conflict(
            s.put_device(&device(a.id, "clone", "tok-2", team)),
            "device push identity",
        );
        // ...a NULL param counts as a value too...
        s.put_device(&device(a.id, "android", "fcm-1", None))
            .unwrap();
        is_conflict(
            s.put_device(&device(a.id, "android2", "fcm-1", None)),
            "device push identity",
        );
        // ...but another param is another identity, and another account may
        // share the token (one app, two lines).
        s.put_device(&device(a.id, "android3", "fcm-1", Some("project")))
            .unwrap();
        s.put_device(&device(b.id, "iphone", "tok-2", team))
            .unwrap();
        assert_eq!(s.list_devices(a.id).unwrap().len(), 4);
        assert_eq!(
            s.put_device(&device(9_999_999, "x", "y", None)),
            Err(StoreError::NotFound)
        );
        assert_eq!(
            s.put_device(&device(u64::MAX, "x", "y", None)),
            Err(StoreError::NotFound)
        );
        assert!(s.delete_device(a.id, "ipad").unwrap());
        assert!(!s.delete_device(a.id, "ipad").unwrap());
        assert!(!s.delete_device(b.id, "ipad").unwrap());
        assert_eq!(s.list_devices(a.id).unwrap().len(), 3);
        assert!(s.delete_account(a.id).unwrap());
        assert_eq!(s.list_devices(a.id).unwrap(), vec![]);
        assert_eq!(s.list_devices(b.id).unwrap().len(), 1);
        assert_eq!(s.list_devices(u64::MAX).unwrap(), vec![]);
    }

    pub fn call_outcomes_newest_first(f: &dyn Fixture) {
        let mut s = migrated(f);
        let a = s.create_account(&acct(1)).unwrap();
        let b = s.create_account(&acct(2)).unwrap();
        for (i, ended) in [100, 500, 300, 500, 200].into_iter().enumerate() {
            s.record_call_outcome(&outcome(a.id, &format!("c{i}"), ended))
                .unwrap();
        }
        let mut no_reason = outcome(b.id, "b0", 50);
        no_reason.reason = None;
        no_reason.outcome = "caller_cancelled".into();
        s.record_call_outcome(&no_reason).unwrap();
        let ids = |v: Vec<CallOutcomeRecord>| v.into_iter().map(|o| o.call_id).collect::<Vec<_>>();
        // Newest first; equal end times: the later recorded first.
        assert_eq!(
            ids(s.list_call_outcomes(a.id, 3).unwrap()),
            ["c3", "c1", "c2"]
        );
        assert_eq!(
            ids(s.list_call_outcomes(a.id, 100).unwrap()),
            ["c3", "c1", "c2", "c4", "c0"]
        );
        assert_eq!(
            s.list_call_outcomes(a.id, 1).unwrap()[0],
            outcome(a.id, "c3", 500)
        );
        assert_eq!(s.list_call_outcomes(b.id, 10).unwrap(), vec![no_reason]);
        assert_eq!(s.list_call_outcomes(a.id, 0).unwrap(), vec![]);
        assert_eq!(
            s.record_call_outcome(&outcome(9_999_999, "x", 1)),
            Err(StoreError::NotFound)
        );
        // Batches skip outcomes of vanished accounts.
        let n = s
            .record_call_outcomes(&[
                outcome(b.id, "b1", 60),
                outcome(9_999_999, "x", 1),
                outcome(b.id, "b2", 70),
            ])
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            ids(s.list_call_outcomes(b.id, 10).unwrap()),
            ["b2", "b1", "b0"]
        );
        // Retention: ended before 200 goes (c0 and b's three), 200 stays.
        assert_eq!(s.prune_call_outcomes(200).unwrap(), 4);
        assert_eq!(s.list_call_outcomes(b.id, 10).unwrap(), vec![]);
        assert_eq!(
            ids(s.list_call_outcomes(a.id, 10).unwrap()),
            ["c3", "c1", "c2", "c4"]
        );
        assert!(s.delete_account(a.id).unwrap());
        assert_eq!(s.list_call_outcomes(a.id, 10).unwrap(), vec![]);
    }

    pub fn bulk_create_is_all_or_nothing(f: &dyn Fixture) {
        let mut s = migrated(f);
        let batch: Vec<NewAccount> = (0..100).map(acct).collect();
        let made = s.create_accounts(&batch).unwrap();
        assert_eq!(made.len(), 100);
        for (m, n) in made.iter().zip(&batch) {
            assert_eq!(m, &n.clone().with_id(m.id));
        }
        assert!(made.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(s.count_accounts().unwrap(), 100);

        // Row 7 of the next batch takes an existing AOR: nothing goes in.
        let mut bad: Vec<NewAccount> = (100..110).map(acct).collect();
        bad[7].aor = batch[42].aor.clone();
        is_conflict(
            s.create_accounts(&bad),
            "aor already provisioned: sip:user42@provider.example",
        );
        assert_eq!(s.count_accounts().unwrap(), 100);
        let all = s.list_accounts(0, 1000).unwrap();
        assert_eq!(all, made);
        // A duplicate token inside the batch itself: same.
        let mut dup: Vec<NewAccount> = (200..205).map(acct).collect();
        dup[4].token = dup[1].token.clone();
        is_conflict(s.create_accounts(&dup), "token already in use");
        assert_eq!(s.count_accounts().unwrap(), 100);
        // The batch goes in once fixed, and an empty one is fine.
        bad[7].aor = "sip:fixed@provider.example".into();
        assert_eq!(s.create_accounts(&bad).unwrap().len(), 10);
        assert_eq!(s.create_accounts(&[]).unwrap(), vec![]);
        assert_eq!(s.count_accounts().unwrap(), 110);
    }

    pub fn import_on_conflict_fail_skip_update(f: &dyn Fixture) {
        use sipis::store::OnConflict;
        let mut s = migrated(f);
        let made = s.create_accounts(&[acct(1), acct(2)]).unwrap();
        // Row 1 is new, row 2 takes user2's AOR with other fields.
        let mut dup = acct(3);
        dup.aor = made[1].aor.clone();
        dup.auth_user = "user2-new".into();
        dup.secret = AccountSecret::Ha1("0123456789abcdef0123456789abcdef".into());
        dup.registrar = None;
        dup.expires = 600;
        dup.enabled = false;
        let rows = vec![acct(4), dup.clone()];

        // fail: nothing written.
        is_conflict(
            s.import_accounts(&rows, OnConflict::Fail),
            "aor already provisioned: sip:user2@provider.example",
        );
        assert_eq!(s.count_accounts().unwrap(), 2);

        // skip: user4 created, user2 as it was.
        let out = s.import_accounts(&rows, OnConflict::Skip).unwrap();
        assert_eq!(out.created.len(), 1);
        assert_eq!(out.created[0].aor, "sip:user4@provider.example");
        assert!(out.updated.is_empty());
        assert_eq!(out.skipped, vec!["sip:user2@provider.example".to_string()]);
        assert_eq!(s.get_account(made[1].id).unwrap().unwrap(), made[1]);

        // update: user2 takes the row's fields, keeps its id and token;
        // user4 exists now, so it is rewritten too (same fields).
        let out = s.import_accounts(&rows, OnConflict::Update).unwrap();
        assert!(out.created.is_empty() && out.skipped.is_empty());
        assert_eq!(out.updated.len(), 2);
        let (old, new) = &out.updated[1];
        assert_eq!(old, &made[1]);
        let stored = s.get_account(made[1].id).unwrap().unwrap();
        assert_eq!(&stored, new);
        assert_eq!(
            stored,
            AccountRecord {
                id: made[1].id,
                token: made[1].token.clone(),
                ..dup.with_id(made[1].id)
            }
        );
        assert_eq!(s.count_accounts().unwrap(), 3);
        // A token taken by another account is a conflict in every mode.
        let mut clash = acct(5);
        clash.token = made[0].token.clone();
        is_conflict(
            s.import_accounts(&[clash], OnConflict::Skip),
            "token already in use",
        );
        assert_eq!(s.count_accounts().unwrap(), 3);
    }

    pub fn csv_import(f: &dyn Fixture) {
        let mut s = migrated(f);
        let csv = "\
auth_user,aor,password,ha1,registrar,expires,enabled
alice,sip:alice@provider.example,secret,,sip:provider.example,,
# a comment line
bob,sips:bob@provider.example,,0123456789ABCDEF0123456789abcdef,,600,false
";
        let mut n = 0;
        let accounts = parse_accounts_csv(csv.as_bytes(), || {
            n += 1;
            format!("token{n}")
        })
        .unwrap();
        let made = s.create_accounts(&accounts).unwrap();
        assert_eq!(made.len(), 2);
        let alice = s.get_account(made[0].id).unwrap().unwrap();
        assert_eq!(alice.aor, "sip:alice@provider.example");
        assert_eq!(alice.secret, AccountSecret::Password("secret".into()));
        assert_eq!(alice.registrar.as_deref(), Some("sip:provider.example"));
        assert_eq!(alice.outbound_proxy, None);
        assert_eq!((alice.expires, alice.enabled), (3600, true));
        assert_eq!(alice.token, "token1");
        let bob = s.get_account(made[1].id).unwrap().unwrap();
        assert_eq!(
            bob.secret,
            AccountSecret::Ha1("0123456789abcdef0123456789abcdef".into())
        );
        assert_eq!(
            (bob.registrar, bob.expires, bob.enabled),
            (None, 600, false)
        );

        // A file with a bad line imports nothing, and says where.
        let bad = "\
aor,auth_user,password,ha1,registrar,outbound_proxy,expires,enabled
sip:c1@p.example,c1,pw,,,,,
sip:c2@p.example,c2,pw,,,,,
sip:c3@p.example,c3,pw,,,,,
sip:c4@p.example,c4,pw,,,,,
sip:c5@p.example,c5,pw,,,,,
sip:c6@p.example,c6,pw,,,,abc,
";
        let e = parse_accounts_csv(bad.as_bytes(), new_token).unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 7, column expires: \"abc\" is not a number of seconds"
        );
        assert_eq!(s.count_accounts().unwrap(), 2);
        // A file that parses but clashes with the database: all or nothing.
        let clash = "aor,auth_user,password\n\
                     sip:new1@provider.example,n1,pw\n\
                     sip:alice@provider.example,a,pw\n";
        let accounts = parse_accounts_csv(clash.as_bytes(), new_token).unwrap();
        is_conflict(
            s.create_accounts(&accounts),
            "aor already provisioned: sip:alice@provider.example",
        );
        assert_eq!(s.count_accounts().unwrap(), 2);
    }

    pub fn newer_schema_is_refused(f: &dyn Fixture) {
        let mut s = migrated(f);
        s.create_account(&acct(1)).unwrap();
        s.exec("INSERT INTO schema_version (version) VALUES (999)");
        let want = StoreError::Corrupt(format!(
            "schema version 999 is newer than this sipis ({SCHEMA_VERSION})"
        ));
        assert_eq!(s.migrate(), Err(want.clone()));
        drop(s);
        // Also on a fresh connection (where there is one to the same data).
        let mut again = f.open();
        if again.count_accounts().is_ok() {
            assert_eq!(again.migrate(), Err(want));
        }
    }

    pub fn data_survives_reopen(f: &dyn Fixture) {
        let mut s = migrated(f);
        let a = s.create_account(&acct(1)).unwrap();
        let b = s
            .create_account(&NewAccount {
                secret: AccountSecret::Ha1("a".repeat(32)),
                ..acct(2)
            })
            .unwrap();
        s.save_registrations(&[(a.id, reg("call-a", 42, 3600))])
            .unwrap();
        s.put_device(&device(a.id, "iphone", "tok", Some("team.app.voip")))
            .unwrap();
        s.record_call_outcome(&outcome(a.id, "c1", 1000)).unwrap();
        drop(s);
        let mut s = f.open();
        assert_eq!(s.migrate().unwrap(), SCHEMA_VERSION);
        assert_eq!(s.list_accounts(0, 10).unwrap(), vec![a.clone(), b]);
        assert_eq!(
            s.load_registrations().unwrap(),
            vec![(a.id, reg("call-a", 42, 3600))]
        );
        assert_eq!(
            s.list_devices(a.id).unwrap(),
            vec![device(a.id, "iphone", "tok", Some("team.app.voip"))]
        );
        assert_eq!(
            s.list_call_outcomes(a.id, 10).unwrap(),
            vec![outcome(a.id, "c1", 1000)]
        );
        // Ids keep growing after a reopen.
        assert!(s.create_account(&acct(3)).unwrap().id > a.id + 1);
    }

    // ---- the store thread over this backend

    pub fn thread_coalesces_saves(f: &dyn Fixture) {
        let mut s = migrated_plain(f);
        let a = s.create_account(&acct(1)).unwrap();
        let (backend, ctl) = probe(s);
        let h = StoreThread::spawn_with(
            backend,
            StoreThreadConfig {
                batch_window: Duration::from_secs(60),
                ..StoreThreadConfig::default()
            },
        );
        for i in 1..=1000 {
            h.save_registration(a.id, reg("same-call", i, 3600));
        }
        // A request sees the writes queued before it: one row, last value,
        // written once.
        let loaded = h.call(|s| s.load_registrations()).unwrap();
        assert_eq!(loaded, vec![(a.id, reg("same-call", 1000, 3600))]);
        assert_eq!(ctl.batches(), vec![1]);
        assert_eq!(h.pending_saves(), 0);
        assert_eq!((h.failed_writes(), h.dropped_writes()), (0, 0));
        assert!(h.available());
        h.shutdown(Duration::from_secs(10)).unwrap();
    }

    pub fn thread_flushes_on_time_and_size(f: &dyn Fixture) {
        let mut s = migrated_plain(f);
        let made = s
            .create_accounts(&(0..2500).map(acct).collect::<Vec<_>>())
            .unwrap();
        let (backend, ctl) = probe(s);
        // Default window (100 ms): a lone save is written without any
        // request, not before the window and well within a second.
        let h = StoreThread::spawn(backend);
        let t0 = Instant::now();
        h.save_registration(made[0].id, reg("lone", 1, 60));
        wait_until("the lone save", Duration::from_secs(5), || {
            ctl.rows_written() == 1
        });
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(90), "written after {took:?}");
        assert!(took < Duration::from_secs(2), "written after {took:?}");
        h.shutdown(Duration::from_secs(10)).unwrap();

        // A long window: 1000 pending saves trigger a write by themselves;
        // no batch exceeds 1000.
        let mut s = migrated_plain(f);
        let made = if s.count_accounts().unwrap() == 0 {
            // (in memory: a new database)
            s.create_accounts(&(0..2500).map(acct).collect::<Vec<_>>())
                .unwrap()
        } else {
            made
        };
        let (backend, ctl) = probe(s);
        let h = StoreThread::spawn_with(
            backend,
            StoreThreadConfig {
                batch_window: Duration::from_secs(3600),
                ..StoreThreadConfig::default()
            },
        );
        for a in &made {
            h.save_registration(a.id, reg("many", 2, 60));
        }
        wait_until("a size-triggered write", Duration::from_secs(20), || {
            ctl.rows_written() >= 1000
        });
        h.flush().unwrap();
        assert_eq!(ctl.rows_written(), 2500);
        assert!(
            ctl.batches().iter().all(|&n| n <= 1000),
            "{:?}",
            ctl.batches()
        );
        assert_eq!(h.call(|s| s.load_registrations()).unwrap().len(), 2500);
        h.shutdown(Duration::from_secs(10)).unwrap();
    }

    pub fn thread_survives_failing_backend(f: &dyn Fixture) {
        let mut s = migrated_plain(f);
        let made = s
            .create_accounts(&(0..50).map(acct).collect::<Vec<_>>())
            .unwrap();
        let (backend, ctl) = probe(s);
        let h = StoreThread::spawn_with(
            backend,
            StoreThreadConfig {
                outcome_cap: 10,
                ..fast_retry()
            },
        );
        ctl.set_down(true);
        for round in 1..=3 {
            for a in &made {
                h.save_registration(a.id, reg(&format!("c{}", a.id), round, 60));
            }
        }
        for i in 0..15 {
            h.record_call_outcome(outcome(made[0].id, &format!("o{i}"), 1000 + i));
        }
        wait_until("failed writes", Duration::from_secs(10), || {
            h.failed_writes() >= 3 && h.pending_saves() == 50
        });
        assert!(!h.available());
        assert_eq!(h.pending_outcomes(), 10);
        assert_eq!(
            h.dropped_writes(),
            5,
            "the 5 oldest outcomes beyond the cap"
        );
        assert!(matches!(
            h.call(|s| s.count_accounts()),
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(h.flush(), Err(StoreError::Unavailable(_))));
        // Still coalescing while down.
        for a in &made {
            h.save_registration(a.id, reg(&format!("c{}", a.id), 4, 60));
        }

        ctl.set_down(false);
        wait_until("recovery", Duration::from_secs(10), || {
            h.available() && h.pending_saves() == 0 && h.pending_outcomes() == 0
        });
        let loaded = h.call(|s| s.load_registrations()).unwrap();
        assert_eq!(loaded.len(), 50);
        assert!(loaded
            .iter()
            .all(|(id, r)| *r == reg(&format!("c{id}"), 4, 60)));
        let outcomes = h
            .call(move |s| s.list_call_outcomes(made[0].id, 100))
            .unwrap();
        let ids: Vec<String> = outcomes.into_iter().map(|o| o.call_id).collect();
        assert_eq!(
            ids,
            (5..15).rev().map(|i| format!("o{i}")).collect::<Vec<_>>()
        );
        assert_eq!(h.stats().dropped_writes, 5);
        h.shutdown(Duration::from_secs(10)).unwrap();
    }

    pub fn thread_requests_and_lifecycle(f: &dyn Fixture) {
        let s = migrated_plain(f);
        let h: StoreHandle = StoreThread::spawn_with(s, fast_retry());
        let h2 = h.clone();
        let a = h.call(|s| s.create_account(&acct(1))).unwrap();
        let b = std::thread::spawn(move || h2.call(|s| s.create_account(&acct(2))))
            .join()
            .unwrap()
            .unwrap();
        is_conflict(
            h.call(|s| {
                s.create_account(&NewAccount {
                    token: new_token(),
                    ..acct(1)
                })
            }),
            "aor already provisioned",
        );
        // A vanished account's writes are skipped quietly.
        assert!(h.call(move |s| s.delete_account(a.id)).unwrap());
        h.save_registration(a.id, reg("gone", 1, 1));
        h.record_call_outcome(outcome(a.id, "gone", 1));
        h.save_registration(b.id, reg("kept", 1, 1));
        h.record_call_outcome(outcome(b.id, "kept", 1));
        h.flush().unwrap();
        assert_eq!(
            h.call(|s| s.load_registrations()).unwrap(),
            vec![(b.id, reg("kept", 1, 1))]
        );
        assert_eq!(
            h.call(move |s| s.list_call_outcomes(b.id, 9))
                .unwrap()
                .len(),
            1
        );
        assert_eq!((h.failed_writes(), h.dropped_writes()), (0, 0));
        // A slow request times out for its caller, not for the thread; a
        // panicking one is reported and the thread lives on.
        let slow = h.call_with_timeout(Duration::from_millis(20), |_| {
            std::thread::sleep(Duration::from_millis(300));
            Ok(())
        });
        assert!(matches!(slow, Err(StoreError::Unavailable(_))));
        let boom = h.call::<(), _>(|_| panic!("request panics (expected in this test)"));
        assert!(matches!(boom, Err(StoreError::Unavailable(_))));
        assert_eq!(h.call(|s| s.count_accounts()).unwrap(), 1);
        // Shutdown writes what is pending; afterwards nothing is accepted.
        h.save_registration(b.id, reg("last", 2, 2));
        h.shutdown(Duration::from_secs(10)).unwrap();
        assert!(matches!(
            h.call(|s| s.count_accounts()),
            Err(StoreError::Unavailable(_))
        ));
        h.save_registration(b.id, reg("late", 3, 3));
        assert_eq!(h.dropped_writes(), 1);
        drop(h);
        let mut s = f.open();
        if s.count_accounts().is_ok_and(|n| n == 1) {
            assert_eq!(
                s.load_registrations().unwrap(),
                vec![(b.id, reg("last", 2, 2))]
            );
        }
    }
}

// ------------------------------------------------------------ the matrix

macro_rules! suite {
    (common: [$($case:ident),* $(,)?], persistent: [$($pcase:ident),* $(,)?] $(,)?) => {
        mod sqlite_memory {
            use super::*;
            $( #[test] fn $case() { cases::$case(&Memory) } )*
        }
        mod sqlite_file {
            use super::*;
            $( #[test] fn $case() { cases::$case(&File::new(stringify!($case))) } )*
            $( #[test] fn $pcase() { cases::$pcase(&File::new(stringify!($pcase))) } )*
        }
        mod postgres {
            use super::*;
            $( #[test] fn $case() {
                if let Some(f) = Pg::new(stringify!($case)) { cases::$case(&f) }
            } )*
            $( #[test] fn $pcase() {
                if let Some(f) = Pg::new(stringify!($pcase)) { cases::$pcase(&f) }
            } )*
        }
    };
}

suite! {
    common: [
        migrate_is_idempotent,
        account_crud,
        list_paginates_by_id,
        unique_aor_and_token,
        secrets_round_trip,
        registrations_upsert_and_cascade,
        devices_put_replace_list_delete,
        call_outcomes_newest_first,
        bulk_create_is_all_or_nothing,
        import_on_conflict_fail_skip_update,
        csv_import,
        newer_schema_is_refused,
        thread_coalesces_saves,
        thread_flushes_on_time_and_size,
        thread_survives_failing_backend,
        thread_requests_and_lifecycle,
    ],
    persistent: [data_survives_reopen],
}

// ------------------------------------------------------ SQLite specifics

#[test]
fn sqlite_file_uses_wal_and_foreign_keys() {
    let f = File::new("wal");
    let mut s = SqliteStore::open(&f.db()).unwrap();
    s.migrate().unwrap();
    s.create_account(&acct(1)).unwrap();
    let c = rusqlite::Connection::open(f.db()).unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    assert!(f.0.path().join("sipis.db-wal").exists());
}

#[test]
fn sqlite_open_fails_cleanly() {
    let e = SqliteStore::open(Path::new("/nonexistent-dir/sub/sipis.db"))
        .err()
        .unwrap();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
}

// -------------------------------------------------- PostgreSQL specifics

/// The server drops our connection (as on failover or an admin's
/// `pg_terminate_backend`): the next call reconnects and succeeds.
#[test]
fn pg_killed_connection_reconnects() {
    let Some(f) = Pg::new("killed") else { return };
    let mut s = PostgresStore::connect(&f.url, PgOptions::default()).unwrap();
    s.migrate().unwrap();
    let a = s.create_account(&acct(1)).unwrap();
    assert_eq!(s.connects(), 1);
    let mut killer = PostgresStore::connect(&f.url, PgOptions::default()).unwrap();
    killer
        .execute_batch(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .unwrap();
    assert_eq!(s.get_account(a.id).unwrap(), Some(a));
    assert_eq!(s.connects(), 2);
    // A write right after another kill is retried too.
    killer
        .execute_batch(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .unwrap();
    s.create_account(&acct(2)).unwrap();
    assert_eq!(s.count_accounts().unwrap(), 2);
    assert_eq!(s.connects(), 3);
}

#[test]
fn pg_server_restart_loses_nothing() {
    let Some(server) = pg::dedicated() else {
        return;
    };
    let url = server.create_database("sipis_restart");
    let mut s = PostgresStore::connect(&url, PgOptions::default()).unwrap();
    s.migrate().unwrap();
    let made = s
        .create_accounts(&(0..200).map(acct).collect::<Vec<_>>())
        .unwrap();
    let saved: Vec<(AccountId, SavedRegistration)> = made
        .iter()
        .map(|a| (a.id, reg(&format!("call-{}", a.id), 7, 3600)))
        .collect();
    s.save_registrations(&saved).unwrap();
    s.put_device(&device(made[0].id, "iphone", "tok", None))
        .unwrap();

    server.restart();

    // The next calls reconnect (once) and succeed; everything is there.
    assert_eq!(s.count_accounts().unwrap(), 200);
    assert_eq!(s.connects(), 2);
    assert_eq!(s.load_registrations().unwrap(), saved);
    assert_eq!(s.list_accounts(0, 1000).unwrap(), made);
    assert_eq!(s.list_devices(made[0].id).unwrap().len(), 1);
    let c = s.create_account(&acct(1000)).unwrap();
    assert_eq!(s.get_account(c.id).unwrap(), Some(c));
    assert_eq!(s.connects(), 2);
}

#[test]
fn pg_outage_keeps_writes_until_back() {
    let Some(server) = pg::dedicated() else {
        return;
    };
    let url = server.create_database("sipis_outage");
    let opts = PgOptions {
        connect_timeout: Duration::from_secs(2),
        op_timeout: Duration::from_secs(10),
    };
    let mut s = PostgresStore::connect(&url, opts.clone()).unwrap();
    s.migrate().unwrap();
    let made = s
        .create_accounts(&(0..20).map(acct).collect::<Vec<_>>())
        .unwrap();

    // Direct calls while the server is down: Unavailable, quickly, no panic.
    server.stop();
    let t0 = Instant::now();
    assert!(matches!(
        s.count_accounts(),
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        s.create_account(&acct(99)),
        Err(StoreError::Unavailable(_))
    ));
    assert!(t0.elapsed() < Duration::from_secs(10));
    server.start();
    assert_eq!(s.count_accounts().unwrap(), 20);

    // Through the store thread: fire-and-forget writes wait in memory.
    let h = StoreThread::spawn_with(
        Box::new(s),
        StoreThreadConfig {
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_millis(500),
            ..StoreThreadConfig::default()
        },
    );
    server.stop();
    for a in &made {
        h.save_registration(a.id, reg("during-outage", 3, 60));
    }
    h.record_call_outcome(outcome(made[0].id, "during-outage", 5000));
    wait_until("failed writes", Duration::from_secs(20), || {
        h.failed_writes() >= 2 && !h.available()
    });
    assert_eq!(h.pending_saves(), 20);
    assert_eq!(h.pending_outcomes(), 1);
    assert!(matches!(
        h.call(|s| s.count_accounts()),
        Err(StoreError::Unavailable(_))
    ));

    server.start();
    wait_until("the writes after recovery", Duration::from_secs(30), || {
        h.available() && h.pending_saves() == 0 && h.pending_outcomes() == 0
    });
    let loaded = h.call(|s| s.load_registrations()).unwrap();
    assert_eq!(loaded.len(), 20);
    assert!(loaded
        .iter()
        .all(|(_, r)| *r == reg("during-outage", 3, 60)));
    let first = made[0].id;
    assert_eq!(
        h.call(move |s| s.list_call_outcomes(first, 5)).unwrap(),
        vec![outcome(first, "during-outage", 5000)]
    );
    assert_eq!(h.call(|s| s.count_accounts()).unwrap(), 20);
    assert_eq!(h.dropped_writes(), 0);
    h.shutdown(Duration::from_secs(10)).unwrap();
}

// ------------------------------------------------------------------- CSV

#[test]
fn csv_errors_name_line_and_column() {
    const H: &str = "aor,auth_user,password,ha1,registrar,outbound_proxy,expires,enabled\n";
    let ok = "sip:a@p.example,a,pw,,,,,\n";
    let cases: &[(&str, &str)] = &[
        (
            "sip:x@p.example,x,pw,,,,abc,\n",
            "line 3, column expires: \"abc\" is not a number of seconds",
        ),
        (
            "sip:x@p.example,x,pw,,,,-5,\n",
            "line 3, column expires: \"-5\" is not a number of seconds",
        ),
        (
            "sip:x@p.example,x,pw,,,,0,\n",
            "line 3, column expires: \"0\": expires must be at least 1 second",
        ),
        (
            "sip:x@p.example,x,pw,,,,99999999999,\n",
            "line 3, column expires: \"99999999999\" is not a number of seconds",
        ),
        (",x,pw,,,,,\n", "line 3, column aor: required"),
        (
            "alice@p.example,x,pw,,,,,\n",
            "line 3, column aor: \"alice@p.example\" is not a sip: or sips: URI",
        ),
        (
            "sip:x@p.example,,pw,,,,,\n",
            "line 3, column auth_user: required",
        ),
        (
            "sip:x@p.example,x,,,,,,\n",
            "line 3, column password: one of password and ha1 is required",
        ),
        (
            "sip:x@p.example,x,pw,0123456789abcdef0123456789abcdef,,,,\n",
            "line 3, column ha1: set either password or ha1, not both",
        ),
        (
            "sip:x@p.example,x,,xyz,,,,\n",
            "line 3, column ha1: \"xyz\" is not 32 or 64 hex digits",
        ),
        (
            "sip:x@p.example,x,pw,,provider.example,,,\n",
            "line 3, column registrar: \"provider.example\" is not a sip: or sips: URI",
        ),
        (
            "sip:x@p.example,x,pw,,,sip:a b,,\n",
            "line 3, column outbound_proxy: \"sip:a b\" is not a sip: or sips: URI",
        ),
        (
            "sip:x@p.example,x,pw,,,,,maybe\n",
            "line 3, column enabled: \"maybe\" is not true or false",
        ),
        (
            "sip:a@p.example,x,pw,,,,,\n",
            "line 3, column aor: \"sip:a@p.example\" already appears on line 2",
        ),
        (
            "sip:x@p.example,x,pw\n",
            "line 3: expected 8 fields as in the header, found 3",
        ),
    ];
    for (row, want) in cases {
        let input = format!("{H}{ok}{row}");
        let e: CsvError = parse_accounts_csv(input.as_bytes(), new_token).unwrap_err();
        assert_eq!(e.to_string(), *want, "for row {row:?}");
    }

    let header_cases: &[(&str, &str)] = &[
        (
            "aor,auth_user,pasword\n",
            "line 1, column pasword: unknown column (expected some of: \
             aor,auth_user,password,ha1,registrar,outbound_proxy,expires,enabled)",
        ),
        (
            "auth_user,password\n",
            "line 1, column aor: required column missing",
        ),
        (
            "aor,auth_user,registrar\n",
            "line 1: the header needs a password or an ha1 column",
        ),
        (
            "aor,aor,auth_user,ha1\n",
            "line 1, column aor: column appears twice",
        ),
    ];
    for (header, want) in header_cases {
        let e = parse_accounts_csv(header.as_bytes(), new_token).unwrap_err();
        assert_eq!(e.to_string(), *want);
        assert_eq!(e.line, 1);
    }
}

#[test]
fn csv_accepts_minimal_quoted_bom_and_blank_lines() {
    let input = "\u{feff}aor,auth_user,ha1\n\
                 \n\
                 \"sip:a@p.example\",\"a, with comma\",ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789\n\
                 \n\
                 SIPS:b@p.example , b ,0123456789abcdef0123456789abcdef\n";
    let got = parse_accounts_csv(input.as_bytes(), || "t".into()).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].auth_user, "a, with comma");
    assert_eq!(
        got[0].secret,
        AccountSecret::Ha1(
            "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789".into()
        )
    );
    assert_eq!(got[1].aor, "SIPS:b@p.example");
    assert_eq!(got[1].auth_user, "b");
    assert!(got
        .iter()
        .all(|a| a.expires == 3600 && a.enabled && a.registrar.is_none()));
    assert_eq!(
        parse_accounts_csv("aor,auth_user,password\n".as_bytes(), new_token).unwrap(),
        vec![]
    );
    let e = parse_accounts_csv(&b"aor,auth_user,password\nsip:a@b,\xff,pw\n"[..], new_token)
        .unwrap_err();
    assert_eq!(e.to_string(), "line 2: not valid UTF-8");
}

#[test]
fn tokens_are_16_base32_chars_and_distinct() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10_000 {
        let t = new_token();
        assert_eq!(t.len(), 16);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)),
            "{t}"
        );
        assert!(seen.insert(t));
    }
}
