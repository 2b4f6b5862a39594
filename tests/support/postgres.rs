//! A throwaway PostgreSQL server for the tests.
//!
//! - `SIPIS_TEST_PG_URL` set: that server is used (each test makes its own
//!   database on it, so the role needs `CREATEDB`).
//! - otherwise the newest `initdb`/`pg_ctl` under `/usr/lib/postgresql/*/bin`
//!   (or on `PATH`) makes a cluster in a temp dir (as root: owned by and run
//!   as the `postgres` user via `runuser`), trust auth, listening on
//!   127.0.0.1 and a unix socket in that dir only, on a free port. It is
//!   stopped and removed at process exit (atexit), and by a watchdog shell if
//!   the test process is killed.
//! - PostgreSQL not installed: the PG tests fail saying how to install it,
//!   unless `SIPIS_SKIP_PG=1` (which skips them in any case).

#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const INSTALL_HINT: &str = "PostgreSQL is not installed: run `apt-get install postgresql` \
     (or `bash .ci/run`), point SIPIS_TEST_PG_URL at a server, or set SIPIS_SKIP_PG=1 to skip \
     the PostgreSQL tests";

/// A server the tests can use.
pub struct PgServer {
    /// URL of the maintenance database (`postgres`), used to create and
    /// drop test databases.
    admin_url: String,
    /// Set when this process started (and so controls) the server.
    local: Option<Local>,
}

struct Local {
    bin: PathBuf,
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    /// Run the server tools as `postgres` (we are root).
    as_postgres: bool,
    stopped: Mutex<bool>,
}

static SHARED: OnceLock<Result<PgServer, String>> = OnceLock::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `true` if the PG tests are to be skipped (`SIPIS_SKIP_PG=1`).
pub fn skip_pg() -> bool {
    std::env::var("SIPIS_SKIP_PG").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The server shared by the whole test run, or `None` if the PG tests are
/// skipped. Panics (failing the test) if no server can be had.
pub fn shared() -> Option<&'static PgServer> {
    if skip_pg() {
        eprintln!("SIPIS_SKIP_PG=1: skipping a PostgreSQL test");
        return None;
    }
    let r = SHARED.get_or_init(|| {
        if let Ok(url) = std::env::var("SIPIS_TEST_PG_URL") {
            return Ok(PgServer {
                admin_url: url,
                local: None,
            });
        }
        let s = PgServer::start_local()?;
        register_atexit();
        Ok(s)
    });
    match r {
        Ok(s) => Some(s),
        Err(e) => panic!("{e}"),
    }
}

/// A server of the test's own (it may stop and restart it), or `None` if
/// the PG tests are skipped or only an external server is available.
pub fn dedicated() -> Option<PgServer> {
    if skip_pg() {
        eprintln!("SIPIS_SKIP_PG=1: skipping a PostgreSQL test");
        return None;
    }
    match PgServer::start_local() {
        Ok(s) => Some(s),
        Err(e) if std::env::var("SIPIS_TEST_PG_URL").is_ok() => {
            eprintln!("no local PostgreSQL to restart ({e}); skipping");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

extern "C" {
    fn atexit(cb: extern "C" fn()) -> std::os::raw::c_int;
}

extern "C" fn stop_shared_at_exit() {
    if let Some(Ok(s)) = SHARED.get() {
        s.shutdown();
    }
}

fn register_atexit() {
    // SAFETY: registers a plain `extern "C" fn` with the C library.
    unsafe {
        atexit(stop_shared_at_exit);
    }
}

fn find_bin() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((v, bin))
        })
        .collect();
    dirs.sort();
    if let Some((_, bin)) = dirs.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p).find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
    })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn id_of(flag: &str, user: &str) -> Result<u32, String> {
    let out = Command::new("id")
        .args([flag, user])
        .output()
        .map_err(|e| format!("id: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| format!("no user {user:?} (is PostgreSQL installed?)"))
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

impl Local {
    fn tool(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn server_options(&self) -> String {
        format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.display()
        )
    }

    /// Runs pg_ctl. Its output goes to a file, not a pipe: a server it
    /// starts inherits those descriptors and would hold a pipe open forever.
    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let out_path = std::env::temp_dir().join(format!(
            "sipis-pg-ctl-{}-{}.out",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let out = std::fs::File::create(&out_path).map_err(|e| format!("pg_ctl output: {e}"))?;
        let err = out.try_clone().map_err(|e| format!("pg_ctl output: {e}"))?;
        let status = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .map_err(|e| format!("pg_ctl: {e}"))?;
        let printed = std::fs::read_to_string(&out_path).unwrap_or_default();
        let _ = std::fs::remove_file(&out_path);
        if status.success() {
            Ok(())
        } else {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            Err(format!(
                "pg_ctl {args:?} failed: {printed}\n--- server.log ---\n{log}"
            ))
        }
    }
}

impl PgServer {
    fn start_local() -> Result<PgServer, String> {
        let bin = find_bin().ok_or_else(|| INSTALL_HINT.to_string())?;
        let as_postgres = is_root();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sipis-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if as_postgres {
            let uid = id_of("-u", "postgres")?;
            let gid = id_of("-g", "postgres")?;
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", dir.display()))?;
        }
        let local = Local {
            bin,
            data: dir.join("data"),
            dir: dir.clone(),
            port: free_port()?,
            as_postgres,
            stopped: Mutex::new(false),
        };
        let out = local
            .tool("initdb")
            .arg("-D")
            .arg(&local.data)
            .args([
                "--auth=trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        local.start()?;
        spawn_watchdog(&local);
        Ok(PgServer {
            admin_url: format!(
                "postgresql://postgres@127.0.0.1:{}/postgres?connect_timeout=10",
                local.port
            ),
            local: Some(local),
        })
    }

    /// URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        with_dbname(&self.admin_url, db)
    }

    /// Creates a fresh database (dropping a leftover of the same name) and
    /// returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        let mut admin = self.admin();
        admin
            .execute_batch(&format!("DROP DATABASE IF EXISTS {name}"))
            .unwrap_or_else(|e| panic!("drop database {name}: {e}"));
        admin
            .execute_batch(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        self.url(name)
    }

    /// Drops a test database (best effort, even with open connections).
    pub fn drop_database(&self, name: &str) {
        if let Ok(mut admin) = self.try_admin() {
            let _ = admin.execute_batch(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }

    fn try_admin(&self) -> Result<sipis::store::PostgresStore, sipis::store::StoreError> {
        sipis::store::PostgresStore::connect(&self.admin_url, sipis::store::PgOptions::default())
    }

    fn admin(&self) -> sipis::store::PostgresStore {
        self.try_admin()
            .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL server: {e}"))
    }

    /// Whether this process controls the server (can stop/restart it).
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    fn local(&self) -> &Local {
        self.local.as_ref().expect("not a server this test started")
    }

    /// `pg_ctl restart -m fast`: clients are disconnected, committed data
    /// stays.
    pub fn restart(&self) {
        let l = self.local();
        let opts = l.server_options();
        let log = l.dir.join("server.log").display().to_string();
        l.pg_ctl(&[
            "-m", "fast", "-o", &opts, "-l", &log, "-w", "-t", "60", "restart",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops the server (fast shutdown).
    pub fn stop(&self) {
        self.local()
            .pg_ctl(&["-m", "fast", "-w", "-t", "60", "stop"])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts it again after [`stop`](Self::stop).
    pub fn start(&self) {
        self.local().start().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops the server and removes its files (idempotent).
    fn shutdown(&self) {
        if let Some(l) = &self.local {
            let mut stopped = l.stopped.lock().unwrap_or_else(|p| p.into_inner());
            if !*stopped {
                *stopped = true;
                let _ = l.pg_ctl(&["-m", "immediate", "-w", "-t", "30", "stop"]);
                let _ = std::fs::remove_dir_all(&l.dir);
            }
        }
    }
}

impl Local {
    fn start(&self) -> Result<(), String> {
        let log = self.dir.join("server.log");
        let opts = self.server_options();
        let log_s = log.display().to_string();
        self.pg_ctl(&["-o", &opts, "-l", &log_s, "-w", "-t", "60", "start"])?;
        // pg_ctl -w waits for the socket; make sure TCP answers too.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!("PostgreSQL not listening on {}", self.port));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Stops the server and removes its dir once this process is gone, however
/// it ended (a killed test run would otherwise leave a server behind).
fn spawn_watchdog(l: &Local) {
    let pg_ctl = l.bin.join("pg_ctl");
    let stop = if l.as_postgres {
        format!(
            "runuser -u postgres -- '{}' -D '{}' -m immediate stop",
            pg_ctl.display(),
            l.data.display()
        )
    } else {
        format!(
            "'{}' -D '{}' -m immediate stop",
            pg_ctl.display(),
            l.data.display()
        )
    };
    let script = format!(
        "while [ -d /proc/{pid} ]; do sleep 1; done; \
         if [ -d '{dir}' ]; then {stop}; rm -rf '{dir}'; fi",
        pid = std::process::id(),
        dir = l.dir.display(),
    );
    // Its own process group: a test runner that kills ours (timeout, job
    // control) must not take the watchdog with it.
    let _ = Command::new("sh")
        .process_group(0)
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// `url` with its database name replaced by `db` (URL or key=value form).
fn with_dbname(url: &str, db: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let (base, query) = match url.find('?') {
            Some(q) => (&url[..q], &url[q..]),
            None => (url, ""),
        };
        let after = scheme_end + 3;
        let host_end = base[after..].find('/').map_or(base.len(), |i| after + i);
        format!("{}/{db}{query}", &base[..host_end])
    } else {
        format!("{url} dbname={db}")
    }
}

/// A unique database name for a test.
pub fn db_name(test: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let clean: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("sipis_t_{}_{n}_{clean}", std::process::id())
}

#[test]
fn with_dbname_replaces_the_database() {
    assert_eq!(
        with_dbname("postgresql://u@h:5/postgres?connect_timeout=3", "x"),
        "postgresql://u@h:5/x?connect_timeout=3"
    );
    assert_eq!(with_dbname("postgres://u@h", "x"), "postgres://u@h/x");
    assert_eq!(
        with_dbname("host=/tmp user=u", "x"),
        "host=/tmp user=u dbname=x"
    );
}
