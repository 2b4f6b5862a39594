//! `sipis serve`: configuration → store → shards → admin API, and the
//! operator-facing view of it all ([`AdminApi`]).

use super::{EventSink, RuntimeError, ShardSettings, Shards, STATE_NAMES};
use crate::config::{AdminToken, Config, StoreConfig};
use crate::http::{
    ready_status, store_state, AccountUpdate, AccountView, AdminApi, AdminServer, ApiError,
    DeviceRequest, DeviceView, Health, ImportResult, NewAccountRequest, Readiness, RegistrarCounts,
    RegistrarHealth, RegistrarTracker, ShardsHealth, StatusView, StoreHealth,
};
use crate::metrics::{counter, gauge, summary_from_histogram};
use crate::push::client::PushClient;
use crate::push::{PushOutcome, PushRequest, PushResult};
use crate::store::{
    new_token, parse_accounts_csv, AccountRecord, OnConflict, PgOptions, PostgresStore,
    SqliteStore, Store, StoreHandle, StoreThread,
};
use crate::store::{CallOutcomeRecord, DeviceRecord};
use crate::{AccountConfig, AccountId, RegStatus, Registrar, SavedRegistration, Stats};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Why `serve` stopped or could not start.
#[derive(Debug)]
pub enum ServeError {
    /// Another instance holds the data directory or the ports.
    InUse(String),
    Store(String),
    Runtime(RuntimeError),
    Admin(String),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::InUse(e) => f.write_str(e),
            ServeError::Store(e) => write!(f, "store: {e}"),
            ServeError::Runtime(e) => e.fmt(f),
            ServeError::Admin(e) => write!(f, "admin API: {e}"),
        }
    }
}

impl std::error::Error for ServeError {}

impl EventSink for StoreHandle {
    fn save_registration(&self, account: AccountId, saved: SavedRegistration) {
        StoreHandle::save_registration(self, account, saved);
    }
}

/// A counter of the shards' [`Stats`]: name, help, how to read it.
type Counter = (&'static str, &'static str, fn(&Stats) -> u64);

/// Hands pushes to the push client (set once the shards are up, as the
/// client delivers outcomes to them).
type Pusher = Box<dyn Fn(PushRequest) + Send + Sync>;

/// The shards' events: durable state to the store thread, pushes to the
/// push client. Nothing here blocks a shard.
struct ServeSink {
    store: StoreHandle,
    pusher: OnceLock<Pusher>,
}

impl EventSink for ServeSink {
    fn save_registration(&self, account: AccountId, saved: SavedRegistration) {
        self.store.save_registration(account, saved);
    }

    fn device_saved(&self, device: DeviceRecord) {
        self.store.write("device", move |s| s.put_device(&device));
    }

    fn device_removed(&self, account: AccountId, device: &str) {
        let device = device.to_owned();
        self.store.write("device removal", move |s| {
            s.delete_device(account, &device).map(|_| ())
        });
    }

    fn call_outcome(&self, outcome: CallOutcomeRecord) {
        self.store.record_call_outcome(outcome);
    }

    fn push(&self, request: PushRequest) {
        match self.pusher.get() {
            Some(p) => p(request),
            None => {
                tracing::warn!(id = %request.id, "push before the push client started: dropped")
            }
        }
    }
}

/// A running sipis.
pub struct Server {
    /// This instance's hold on its data directory (released on exit).
    _lock: super::lock::InstanceLock,
    core: Arc<Core>,
    admin: Option<AdminServer>,
    /// The in-process mediator (`mediator.in_process`), stopped last.
    mediator: Option<Box<crate::push::mediator::MediatorHandle>>,
    /// The thread that looks registrar hosts up again as their TTLs end.
    dns_refresher: Option<std::thread::JoinHandle<()>>,
}

/// What the admin API needs: the store, the shards, the resolver cache.
struct Core {
    push: Arc<PushClient>,
    store: StoreHandle,
    shards: Shards,
    started: Instant,
    /// Registrars and outbound proxies resolved per RFC 3263, per host.
    dns: Arc<super::dns::Dns>,
    /// Accounts whose registrar could not be resolved, with the reason.
    unresolved: Mutex<HashMap<AccountId, String>>,
    /// The registrar (`host[:port]`) of each account handed to a shard,
    /// for `/health/ready`.
    registrar_of: Mutex<HashMap<AccountId, String>>,
    /// The last registrar report and since when each registrar has failed.
    registrars: Mutex<RegistrarView>,
    /// A store probe is on its way (at most one at a time).
    probing: Arc<AtomicBool>,
    /// When the store was last probed.
    last_probe: Mutex<Option<Instant>>,
}

/// `/health/ready`'s registrar part, computed at most once per
/// [`REPORT_EVERY`].
#[derive(Default)]
struct RegistrarView {
    tracker: RegistrarTracker,
    last: Option<(Instant, BTreeMap<String, RegistrarHealth>)>,
}

/// How often the registrar report and the store probe are renewed (health
/// probes in between get the last ones).
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long `/health/ready` waits for the store's answer to its probe.
const PROBE_WAIT: Duration = Duration::from_secs(1);
/// How often `serve` samples the registrars, so that "failing for a
/// while" is measured even without health probes.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Clears the "probe on its way" flag when the probe has run (or was
/// dropped unrun).
struct ProbeGuard(Arc<AtomicBool>);

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// `host[:port]` of a registrar URI: no user part, nothing secret.
fn registrar_key(uri: &str) -> Option<String> {
    let u = crate::parser::Uri::parse(uri.as_bytes()).ok()?;
    let host = match u.host {
        crate::parser::Host::Domain(d) => d.to_ascii_lowercase(),
        crate::parser::Host::V4(a) => a.to_string(),
        crate::parser::Host::V6(a) => format!("[{a}]"),
        crate::parser::Host::Absent => return None,
    };
    Some(match u.port {
        Some(p) => format!("{host}:{p}"),
        None => host,
    })
}

/// Runs sipis until SIGTERM or SIGINT; SIGHUP reloads the TLS
/// certificate.
pub fn serve(cfg: Config) -> Result<(), ServeError> {
    serve_with(cfg, |server| server.reload())
}

/// Runs sipis until SIGTERM or SIGINT, calling `on_hup` at each SIGHUP
/// (the binary re-reads its configuration file there: log level, TLS).
pub fn serve_with(cfg: Config, mut on_hup: impl FnMut(&Server)) -> Result<(), ServeError> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| ServeError::Admin(e.to_string()))?;
    }
    let unregister = cfg.server.unregister_on_shutdown;
    let bound = cfg.server.shutdown_timeout;
    let server = Server::start(&cfg)?;
    tracing::info!(
        shards = server.core.shards.len(),
        admin = ?server.admin_addr(),
        "sipis running"
    );
    // SIGHUP: reload what can change without a restart (the TLS
    // certificate; established connections keep theirs).
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
        .map_err(|e| ServeError::Admin(e.to_string()))?;
    let mut sampled = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if hup.swap(false, Ordering::Relaxed) {
            on_hup(&server);
        }
        if sampled.elapsed() >= SAMPLE_EVERY {
            sampled = Instant::now();
            server.core.registrar_report();
        }
    }
    tracing::info!(unregister, bound = ?bound, "shutting down");
    server.stop_within(unregister, bound);
    tracing::info!("stopped");
    Ok(())
}

impl Server {
    /// Opens the store, starts the shards, loads every account and starts
    /// the admin API.
    pub fn start(cfg: &Config) -> Result<Server, ServeError> {
        // One instance per data directory and port.
        let lock =
            super::lock::InstanceLock::acquire(&cfg.server.data_dir).map_err(ServeError::InUse)?;
        let phones = SocketAddr::new(cfg.server.bind, cfg.server.sip_port);
        super::lock::port_free(
            phones,
            cfg.tcp.enabled && cfg.tcp_port() == cfg.server.sip_port,
        )
        .map_err(ServeError::InUse)?;
        let backend: Box<dyn Store> = match &cfg.store {
            StoreConfig::Embedded { .. } => {
                let path = cfg
                    .embedded_db_path()
                    .ok_or_else(|| ServeError::Store("no embedded database path".into()))?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        ServeError::Store(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                Box::new(SqliteStore::open(&path).map_err(|e| ServeError::Store(e.to_string()))?)
            }
            StoreConfig::Postgres { url } => Box::new(connect_postgres(url)?),
        };
        let mut backend = backend;
        backend
            .migrate()
            .map_err(|e| ServeError::Store(e.to_string()))?;
        let store = StoreThread::spawn(backend);
        let sink = Arc::new(ServeSink {
            store: store.clone(),
            pusher: OnceLock::new(),
        });

        let n = cfg.shard_count();
        // Each shard's CSPRNG is keyed from the OS: its branches, tags and
        // nonce key are unpredictable, and no two shards share a stream.
        let engines = (0..n)
            .map(|i| {
                let mut e = cfg.engine_config(i);
                e.key = Some(os_key()?);
                Ok(e)
            })
            .collect::<Result<Vec<_>, ServeError>>()?;
        let tls = match &cfg.tls.files {
            None => None,
            Some(files) => Some(Arc::new(
                super::front::SipTls::load(files.clone())
                    .map_err(|e| ServeError::Admin(format!("tls: {e}")))?,
            )),
        };
        let mut shared = super::front::FrontShared::new(cfg.tcp.limits.clone(), tls.clone());
        if let Some(ca) = &cfg.tls.upstream_ca {
            let client = super::front::client_config(Some(ca))
                .map_err(|e| ServeError::Admin(format!("tls.upstream_ca: {e}")))?;
            shared.client_tls = Some(Arc::new(client));
        }
        let shared = Arc::new(shared);
        let front = Some(super::FrontSettings {
            tcp_port: cfg.tcp.enabled.then(|| cfg.tcp_port()),
            tls_port: tls.as_ref().map(|_| cfg.tls.port),
            shared,
        });
        let shards = Shards::start(
            ShardSettings {
                count: n,
                bind: cfg.server.bind,
                base_port: cfg.shard_port(0),
                shared_port: Some(cfg.server.sip_port),
                engines,
                pin: true,
                io_memory: 2 << 20,
                socket_buffer: 4 << 20,
                front,
            },
            sink.clone(),
        )
        .map_err(ServeError::Runtime)?;
        // Pushes: the client hands them to the mediator and each outcome
        // back to the shard that owns the account. The in-process mediator
        // (without push.mediator_url) is called directly: no HTTP, no JSON;
        // its HTTP front still serves other nodes, health and metrics.
        let results = shards.push_results();
        let mediator = if cfg.mediator.in_process {
            let m = crate::push::mediator::start(&cfg.mediator)
                .map_err(|e| ServeError::Admin(format!("push mediator: {e}")))?;
            tracing::info!(listen = %m.local_addr(), "push mediator in process");
            Some(Box::new(m))
        } else {
            None
        };
        let deliver = results.clone();
        let client = match (&cfg.push.mediator_url, &mediator) {
            (None, Some(m)) => {
                PushClient::in_process(&cfg.push, m.mediator().clone(), m.runtime(), move |o| {
                    deliver.deliver(o)
                })
            }
            _ => PushClient::start(&cfg.push, move |o| deliver.deliver(o)),
        }
        .map_err(|e| ServeError::Admin(format!("push client: {e}")))?;
        let client = Arc::new(client);
        let pusher = client.clone();
        let _ = sink.pusher.set(Box::new(move |req: PushRequest| {
            if let Err((req, refusal)) = pusher.try_submit(req) {
                // The client is full: the push fails at once, so the call
                // does not wait for a device that was never woken (the
                // engine answers 480 when every push of a call failed).
                results.deliver(PushOutcome {
                    id: req.id,
                    account: req.account,
                    device: req.device.id,
                    result: PushResult::Failed,
                    error: Some(refusal.reason().into()),
                });
            }
        }));
        let core = Arc::new(Core {
            push: client,
            store,
            shards,
            started: Instant::now(),
            dns: Arc::new(
                super::dns::Dns::new(&cfg.dns, cfg.server.bind.is_ipv6())
                    .map_err(ServeError::Admin)?,
            ),
            unresolved: Mutex::new(HashMap::new()),
            registrar_of: Mutex::new(HashMap::new()),
            registrars: Mutex::new(RegistrarView::default()),
            probing: Arc::new(AtomicBool::new(false)),
            last_probe: Mutex::new(None),
        });
        core.load_accounts()?;
        let (weak, dns) = (Arc::downgrade(&core), core.dns.clone());
        let dns_refresher = std::thread::Builder::new()
            .name("sipis-dns-refresh".into())
            .spawn(move || dns_refresh(&dns, weak))
            .map_err(|e| ServeError::Admin(format!("dns refresher: {e}")))?;

        let token = match &cfg.admin.token {
            AdminToken::None => None,
            _ => cfg
                .admin_token()
                .map_err(|e| ServeError::Admin(e.to_string()))?,
        };
        let mut admin_cfg = crate::http::AdminConfig::new(cfg.admin.listen);
        admin_cfg.token = token;
        admin_cfg.max_connections = cfg.admin.max_connections as usize;
        admin_cfg.tls = cfg.admin.tls.as_ref().map(|t| crate::http::TlsFiles {
            cert: t.cert.clone(),
            key: t.key.clone(),
        });
        let admin = AdminServer::start(admin_cfg, core.clone())
            .map_err(|e| ServeError::Admin(e.to_string()))?;
        Ok(Server {
            _lock: lock,
            core,
            admin: Some(admin),
            mediator,
            dns_refresher: Some(dns_refresher),
        })
    }

    /// SIGHUP: reads the TLS certificate and key again (new connections
    /// get them); says what it did in the log.
    pub fn reload(&self) {
        let Some(tls) = self.core.shards.front().and_then(|f| f.tls.clone()) else {
            tracing::info!("SIGHUP: nothing to reload (no TLS listener)");
            return;
        };
        match tls.reload() {
            Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded; new connections use it"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded, the old one stays")
            }
        }
    }

    /// SIGHUP with the configuration read again: the TLS certificate (as
    /// [`Server::reload`]) and the connection limits (`[tcp]`, taken by
    /// every shard within a second). What else changed needs a restart.
    pub fn reload_with(&self, new: &Config) {
        self.reload();
        if let Some(front) = self.core.shards.front() {
            let limits = new.tcp.limits.clone();
            if front.limits() != limits {
                tracing::info!(
                    "SIGHUP: connection limits now: max_connections={} max_connections_per_ip={} \
                     unregistered_timeout={:?} idle_timeout={:?} message_timeout={:?} \
                     max_write_queue={} tls.handshake_timeout={:?}",
                    limits.max_connections,
                    limits.max_per_ip,
                    limits.unregistered_timeout,
                    limits.idle_timeout,
                    limits.message_timeout,
                    limits.max_write_queue,
                    limits.tls_handshake_timeout,
                );
                front.set_limits(limits);
            }
        }
    }

    /// The phones' TCP and TLS listeners, if on.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.core.shards.tcp_addr()
    }

    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.core.shards.tls_addr()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.local_addr())
    }

    /// The UDP address of shard `i`.
    pub fn shard_addr(&self, i: usize) -> SocketAddr {
        self.core.shards.addr(i)
    }

    /// Stops the admin API, then the shards (unregistering their accounts
    /// if asked), then flushes the store.
    pub fn stop(self, unregister: bool) {
        self.stop_within(unregister, Duration::from_secs(10));
    }

    /// Stops as [`Server::stop`], unregistrations bounded by `bound`.
    pub fn stop_within(mut self, unregister: bool, bound: Duration) {
        if let Some(a) = self.admin.take() {
            a.shutdown();
        }
        self.core.dns.stop();
        if let Some(t) = self.dns_refresher.take() {
            let _ = t.join();
        }
        match Arc::try_unwrap(self.core) {
            Ok(core) => {
                core.shards.shutdown(unregister, bound);
                let _ = core.store.shutdown(Duration::from_secs(10));
            }
            Err(core) => {
                let _ = core.store.flush();
            }
        }
        if let Some(m) = self.mediator.take() {
            m.shutdown();
        }
    }
}

impl Core {
    fn load_accounts(&self) -> Result<(), ServeError> {
        let saved: HashMap<AccountId, SavedRegistration> = self
            .store
            .call(|s| s.load_registrations())
            .map_err(|e| ServeError::Store(e.to_string()))?
            .into_iter()
            .collect();
        let mut after = 0;
        let mut loaded = 0usize;
        loop {
            let page = self
                .store
                .call(move |s| s.list_accounts(after, 1000))
                .map_err(|e| ServeError::Store(e.to_string()))?;
            let Some(last) = page.last() else { break };
            after = last.id;
            for rec in page {
                if rec.enabled {
                    self.activate(&rec, saved.get(&rec.id).cloned());
                    let id = rec.id;
                    let devices = self
                        .store
                        .call(move |s| s.list_devices(id))
                        .map_err(|e| ServeError::Store(e.to_string()))?;
                    for d in devices {
                        self.shards.put_device(d);
                    }
                    loaded += 1;
                }
            }
        }
        tracing::info!(accounts = loaded, "accounts loaded");
        Ok(())
    }

    /// Remembers (or forgets) the registrar of an account on a shard.
    fn track_registrar(&self, rec: &AccountRecord) {
        let mut map = self.registrar_of.lock().unwrap_or_else(|p| p.into_inner());
        match rec.registrar.as_deref().filter(|_| rec.enabled) {
            Some(uri) => {
                let key = registrar_key(uri).unwrap_or_else(|| "?".to_owned());
                map.insert(rec.id, key);
            }
            None => {
                map.remove(&rec.id);
            }
        }
    }

    /// Accounts by registration state per registrar, and since when each
    /// registrar has had all its accounts failing; renewed at most every
    /// [`REPORT_EVERY`].
    fn registrar_report(&self) -> BTreeMap<String, RegistrarHealth> {
        let mut view = self.registrars.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, report)) = &view.last {
            if at.elapsed() < REPORT_EVERY {
                return report.clone();
            }
        }
        let accounts: Vec<(AccountId, String)> = self
            .registrar_of
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, host)| (*id, host.clone()))
            .collect();
        let unresolved: std::collections::HashSet<AccountId> = self
            .unresolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        let statuses = self.shards.statuses(
            accounts
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| !unresolved.contains(id)),
            Duration::from_secs(1),
        );
        let mut counts: BTreeMap<String, RegistrarCounts> = BTreeMap::new();
        for (id, host) in accounts {
            let c = counts.entry(host).or_default();
            c.accounts += 1;
            if unresolved.contains(&id) {
                c.failed += 1;
                continue;
            }
            match statuses.get(&id) {
                None | Some(RegStatus::Pending) | Some(RegStatus::Unregistered) => c.pending += 1,
                Some(RegStatus::Registering) => c.registering += 1,
                Some(RegStatus::Registered { .. }) => c.registered += 1,
                Some(RegStatus::Retrying { .. }) => c.retrying += 1,
                Some(RegStatus::Failed { .. }) => c.failed += 1,
            }
        }
        let now = Instant::now();
        let report = view.tracker.observe(now, counts);
        view.last = Some((now, report.clone()));
        report
    }

    /// Asks the database whether it answers (at most one probe on its way,
    /// one a [`REPORT_EVERY`]); the store thread notes the result.
    fn probe_store(&self) {
        {
            let mut last = self.last_probe.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < REPORT_EVERY) {
                return;
            }
            if self.probing.swap(true, Ordering::AcqRel) {
                return;
            }
            *last = Some(Instant::now());
        }
        let guard = ProbeGuard(self.probing.clone());
        let _ = self.store.call_with_timeout(PROBE_WAIT, move |s| {
            let _guard = guard;
            s.ping()
        });
    }

    /// Hands an account to its shard (resolving its registrar first).
    fn activate(&self, rec: &AccountRecord, saved: Option<SavedRegistration>) {
        self.track_registrar(rec);
        match self.engine_account(rec) {
            Ok(cfg) => {
                self.unresolved
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&rec.id);
                self.shards.add_account(cfg, saved);
            }
            Err(e) => {
                tracing::warn!(account = rec.id, error = %e, "account not started");
                self.unresolved
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(rec.id, e);
            }
        }
    }

    fn engine_account(&self, rec: &AccountRecord) -> Result<AccountConfig, String> {
        let registrar = match &rec.registrar {
            None => {
                self.dns.forget(rec.id);
                None
            }
            Some(uri) => {
                // Requests go to the outbound proxy when there is one.
                let target = rec.outbound_proxy.as_deref().unwrap_or(uri);
                Some(Registrar {
                    uri: uri.clone(),
                    targets: self.dns.targets(rec.id, target)?,
                    outbound_proxy: rec.outbound_proxy.clone(),
                })
            }
        };
        Ok(AccountConfig {
            id: rec.id,
            aor: rec.aor.clone(),
            auth_user: rec.auth_user.clone(),
            secret: rec.secret.clone(),
            registrar,
            expires: rec.expires,
            token: rec.token.clone(),
        })
    }

    /// Hands an enabled account's new configuration to its shard (its
    /// registrar resolved again), or stops it if that fails.
    fn reapply(&self, rec: &AccountRecord) {
        let id = rec.id;
        match self.engine_account(rec) {
            Ok(cfg) => {
                self.unresolved
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                self.shards.update_account(cfg);
            }
            Err(e) => {
                self.shards.remove_account(id);
                self.unresolved
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, e);
            }
        }
    }

    /// Brings the shards in line with an account just rewritten in the
    /// store: started, updated or stopped. An account enabled again gets
    /// its devices back (its shard forgot them when it was disabled).
    fn reconfigure(&self, rec: &AccountRecord, was_enabled: bool) -> Result<(), ApiError> {
        let id = rec.id;
        self.track_registrar(rec);
        if !rec.enabled {
            self.dns.forget(id);
            self.shards.remove_account(id);
            self.unresolved
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return Ok(());
        }
        match self.engine_account(rec) {
            Ok(cfg) => {
                self.unresolved
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                self.shards.update_account(cfg);
                if !was_enabled {
                    for d in self.store.call(move |s| s.list_devices(id))? {
                        self.shards.put_device(d);
                    }
                }
            }
            Err(e) => {
                self.shards.remove_account(id);
                self.unresolved
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, e);
            }
        }
        Ok(())
    }

    fn status_of(&self, rec: &AccountRecord) -> StatusView {
        if !rec.enabled {
            return StatusView::disabled();
        }
        if let Some(e) = self
            .unresolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&rec.id)
        {
            let mut v = StatusView::from_reg(
                &crate::RegStatus::Failed {
                    error: crate::RegError::TransportError,
                },
                Instant::now(),
            );
            v.last_error = Some(e.clone());
            return v;
        }
        match self.shards.status(rec.id, Duration::from_secs(2)) {
            Some(s) => StatusView::from_reg(&s, Instant::now()),
            None => StatusView::pending(),
        }
    }

    fn view(&self, rec: &AccountRecord) -> AccountView {
        AccountView::from_record(rec, self.status_of(rec))
    }

    fn get(&self, id: AccountId) -> Result<AccountRecord, ApiError> {
        self.store
            .call(move |s| s.get_account(id))?
            .ok_or_else(|| ApiError::not_found(format!("no account {id}")))
    }
}

impl AdminApi for Core {
    fn create_account(&self, new: NewAccountRequest) -> Result<AccountView, ApiError> {
        let new = new
            .into_new_account(new_token())
            .ok_or_else(|| ApiError::bad_request("exactly one of password or ha1 is required"))?;
        let rec = self.store.call(move |s| s.create_account(&new))?;
        if rec.enabled {
            self.activate(&rec, None);
        }
        Ok(AccountView::from_record(
            &rec,
            if rec.enabled {
                StatusView::pending()
            } else {
                StatusView::disabled()
            },
        ))
    }

    fn update_account(
        &self,
        id: AccountId,
        update: AccountUpdate,
    ) -> Result<AccountView, ApiError> {
        let mut rec = self.get(id)?;
        let was_enabled = rec.enabled;
        update.apply(&mut rec);
        let stored = rec.clone();
        self.store.call(move |s| s.update_account(&stored))?;
        self.reconfigure(&rec, was_enabled)?;
        Ok(self.view(&rec))
    }

    fn delete_account(&self, id: AccountId) -> Result<(), ApiError> {
        if !self.store.call(move |s| s.delete_account(id))? {
            return Err(ApiError::not_found(format!("no account {id}")));
        }
        self.shards.remove_account(id);
        self.dns.forget(id);
        self.unresolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        self.registrar_of
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        Ok(())
    }

    fn get_account(&self, id: AccountId) -> Result<AccountView, ApiError> {
        let rec = self.get(id)?;
        Ok(self.view(&rec))
    }

    fn list_accounts(&self, after: AccountId, limit: usize) -> Result<Vec<AccountView>, ApiError> {
        let page = self.store.call(move |s| s.list_accounts(after, limit))?;
        let statuses = self.shards.statuses(
            page.iter().filter(|r| r.enabled).map(|r| r.id),
            Duration::from_secs(2),
        );
        Ok(page
            .iter()
            .map(|rec| {
                let status = match statuses.get(&rec.id) {
                    Some(s) if rec.enabled => StatusView::from_reg(s, Instant::now()),
                    _ => self.status_of(rec),
                };
                AccountView::from_record(rec, status)
            })
            .collect())
    }

    fn import_accounts(
        &self,
        csv: &[u8],
        on_conflict: OnConflict,
    ) -> Result<ImportResult, ApiError> {
        let new =
            parse_accounts_csv(csv, new_token).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let done = self
            .store
            .call(move |s| s.import_accounts(&new, on_conflict))?;
        for rec in done.created.iter().filter(|r| r.enabled) {
            self.activate(rec, None);
        }
        for (old, rec) in &done.updated {
            self.reconfigure(rec, old.enabled)?;
        }
        Ok(ImportResult {
            imported: done.created.len() + done.updated.len(),
            created: done.created.len(),
            updated: done.updated.len(),
            skipped: done.skipped.len(),
            skipped_aors: done.skipped,
        })
    }

    fn put_device(
        &self,
        id: AccountId,
        device: &str,
        req: DeviceRequest,
    ) -> Result<DeviceView, ApiError> {
        self.get(id)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let rec = req.into_record(id, device, now);
        let stored = rec.clone();
        self.store.call(move |s| s.put_device(&stored))?;
        self.shards.put_device(rec.clone());
        Ok(DeviceView::from(&rec))
    }

    fn delete_device(&self, id: AccountId, device: &str) -> Result<(), ApiError> {
        let name = device.to_string();
        if !self.store.call(move |s| s.delete_device(id, &name))? {
            return Err(ApiError::not_found("no such device"));
        }
        self.shards.remove_device(id, device);
        Ok(())
    }

    fn list_devices(&self, id: AccountId) -> Result<Vec<DeviceView>, ApiError> {
        self.get(id)?;
        let devs = self.store.call(move |s| s.list_devices(id))?;
        Ok(devs.iter().map(DeviceView::from).collect())
    }

    fn health(&self) -> Health {
        let snaps = self.shards.snapshots();
        let alive = snaps.iter().filter(|(a, _)| *a).count();
        let store_available = self.store.available();
        Health {
            ok: alive == snaps.len() && store_available,
            version: crate::VERSION.to_owned(),
            shards_alive: alive,
            shards_total: snaps.len(),
            store_available,
            uptime_secs: self.started.elapsed().as_secs(),
        }
    }

    fn ready(&self) -> Readiness {
        self.probe_store();
        let snaps = self.shards.snapshots();
        let shards = ShardsHealth {
            alive: snaps.iter().filter(|(a, _)| *a).count(),
            total: snaps.len(),
        };
        let down_for = self.store.unavailable_for();
        let store = StoreHealth {
            state: store_state(self.store.is_running(), down_for),
            unavailable_secs: down_for.map(|d| d.as_secs()),
            pending_saves: self.store.pending_saves(),
            pending_outcomes: self.store.pending_outcomes(),
        };
        let registrars = self.registrar_report();
        Readiness {
            status: ready_status(shards, store.state, &registrars),
            version: crate::VERSION.to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            shards,
            store,
            registrars,
        }
    }

    fn render_metrics(&self, out: &mut String) {
        gauge(
            out,
            "sipis_build_info",
            "This build: always 1, its version as a label.",
            &[("version", crate::VERSION)],
            1u64,
        );
        let snaps = self.shards.snapshots();
        let sum =
            |f: &dyn Fn(&super::ShardSnapshot) -> u64| snaps.iter().map(|(_, s)| f(s)).sum::<u64>();
        gauge(
            out,
            "sipis_shards_alive",
            "Shards running.",
            &[],
            snaps.iter().filter(|(a, _)| *a).count() as u64,
        );
        gauge(
            out,
            "sipis_accounts",
            "Accounts loaded on the shards.",
            &[],
            sum(&|s| s.accounts),
        );
        // One family, one sample per state (HELP/TYPE written once).
        out.push_str("# HELP sipis_registrations Accounts by registration state.\n# TYPE sipis_registrations gauge\n");
        for (i, name) in STATE_NAMES.iter().enumerate() {
            use std::fmt::Write;
            let _ = writeln!(
                out,
                "sipis_registrations{{state=\"{name}\"}} {}",
                sum(&|s| s.registrations[i])
            );
        }
        counter(
            out,
            "sipis_datagrams_total",
            "SIP messages received.",
            &[],
            sum(&|s| s.stats.datagrams),
        );
        counter(
            out,
            "sipis_parse_errors_total",
            "Messages that failed to parse or validate.",
            &[],
            sum(&|s| s.stats.parse_errors),
        );
        counter(
            out,
            "sipis_auth_blocks_total",
            "Sources blocked for guessing phone passwords (each logged once).",
            &[],
            sum(&|s| s.stats.auth_blocks),
        );
        counter(
            out,
            "sipis_auth_blocked_refusals_total",
            "Phone REGISTERs refused (403 + Retry-After) while their source was blocked.",
            &[],
            sum(&|s| s.stats.auth_blocked_refusals),
        );
        counter(
            out,
            "sipis_keepalives_total",
            "CRLF keep-alives received over UDP.",
            &[],
            sum(&|s| s.stats.keepalives),
        );
        counter(
            out,
            "sipis_options_total",
            "OPTIONS outside a dialog, answered without a transaction.",
            &[],
            sum(&|s| s.stats.options),
        );
        counter(
            out,
            "sipis_overloaded_total",
            "Requests refused with 503 + Retry-After: a shard's transaction table or pending-call map was full.",
            &[],
            sum(&|s| s.stats.overloaded),
        );
        counter(
            out,
            "sipis_register_sent_total",
            "REGISTER requests sent upstream.",
            &[],
            sum(&|s| s.stats.registers_sent),
        );
        counter(
            out,
            "sipis_register_ok_total",
            "REGISTERs answered 2xx.",
            &[],
            sum(&|s| s.stats.register_ok),
        );
        counter(
            out,
            "sipis_register_failed_total",
            "REGISTER attempts that failed.",
            &[],
            sum(&|s| s.stats.register_failed),
        );
        counter(
            out,
            "sipis_client_tx_timeouts_total",
            "Client transactions that timed out.",
            &[],
            sum(&|s| s.stats.client_tx_timeouts),
        );
        counter(
            out,
            "sipis_server_tx_total",
            "Server transactions created.",
            &[],
            sum(&|s| s.stats.server_tx),
        );
        counter(
            out,
            "sipis_stray_responses_total",
            "Responses matching no transaction.",
            &[],
            sum(&|s| s.stats.stray_responses),
        );
        counter(
            out,
            "sipis_shared_port_forwarded_total",
            "Phone-port datagrams forwarded to their owning shard.",
            &[],
            sum(&|s| s.forwarded),
        );
        counter(
            out,
            "sipis_shared_port_dropped_total",
            "Phone-port datagrams dropped: owner queue full.",
            &[],
            sum(&|s| s.forward_dropped),
        );
        if let Some(f) = self.shards.front() {
            render_front(out, f);
        }
        gauge(
            out,
            "sipis_client_transactions",
            "Client transactions in flight.",
            &[],
            sum(&|s| s.transactions.0),
        );
        gauge(
            out,
            "sipis_server_transactions",
            "Server transactions in flight.",
            &[],
            sum(&|s| s.transactions.1),
        );
        let mut merged: Option<hdrhistogram::Histogram<u64>> = None;
        for (_, s) in &snaps {
            if let Some(h) = &s.register_latency {
                match &mut merged {
                    Some(m) => {
                        let _ = m.add(h);
                    }
                    None => merged = Some(h.clone()),
                }
            }
        }
        if let Some(h) = merged {
            summary_from_histogram(
                out,
                "sipis_register_latency_seconds",
                "REGISTER sent to final response.",
                &[],
                &h,
                1e-6,
            );
        }
        // The call flow (sipis_engine::calls module doc): counters, then latencies.
        let call_counters: [Counter; 14] = [
            (
                "sipis_phone_registers_total",
                "REGISTERs from phones.",
                |s| s.phone_registers,
            ),
            (
                "sipis_phone_auth_failures_total",
                "Phone REGISTERs refused 403.",
                |s| s.phone_auth_failures,
            ),
            ("sipis_calls_total", "Incoming calls.", |s| s.calls),
            (
                "sipis_calls_answered_total",
                "Calls answered by a device.",
                |s| s.calls_answered,
            ),
            (
                "sipis_calls_missed_total",
                "Calls that ended unanswered.",
                |s| s.calls_missed,
            ),
            (
                "sipis_pushes_requested_total",
                "Pushes handed to the mediator.",
                |s| s.pushes_requested,
            ),
            (
                "sipis_pushes_sent_total",
                "Pushes the push service accepted.",
                |s| s.pushes_sent,
            ),
            (
                "sipis_pushes_failed_total",
                "Pushes that failed or were rejected.",
                |s| s.pushes_failed,
            ),
            (
                "sipis_pushes_token_dead_total",
                "Pushes to dead tokens (device removed).",
                |s| s.pushes_token_dead,
            ),
            (
                "sipis_late_wakes_total",
                "Late-wake INVITEs sent: a device woke after its call ended and got INVITE + CANCEL (iOS CallKit).",
                |s| s.late_wakes,
            ),
            (
                "sipis_late_wakes_completed_total",
                "Late wakes completed with CANCEL and 487.",
                |s| s.late_wakes_completed,
            ),
            (
                "sipis_registrar_outages_total",
                "Times a registrar stopped answering (per shard that saw it).",
                |s| s.registrar_outages,
            ),
            (
                "sipis_registrar_recoveries_total",
                "Times a registrar answered again after an outage (its accounts then register again).",
                |s| s.registrar_recoveries,
            ),
            (
                "sipis_registrar_probes_total",
                "OPTIONS probes and keep-alives sent to registrars.",
                |s| s.registrar_probes,
            ),
        ];
        for (name, help, f) in &call_counters {
            counter(out, name, help, &[], sum(&|s| f(&s.stats)));
        }
        gauge(
            out,
            "sipis_calls_pending",
            "Calls in the pending-call maps (waiting, up, or kept for late wakes).",
            &[],
            sum(&|s| s.calls),
        );
        let latencies = [
            (
                "sipis_call_push_seconds",
                "INVITE to push accepted by the mediator.",
            ),
            (
                "sipis_call_device_register_seconds",
                "INVITE to the woken device's REGISTER.",
            ),
            (
                "sipis_call_ringing_seconds",
                "INVITE to the first ringing from a device.",
            ),
            ("sipis_call_answer_seconds", "INVITE to the answer."),
        ];
        for (i, (name, help)) in latencies.iter().enumerate() {
            let mut merged: Option<hdrhistogram::Histogram<u64>> = None;
            for h in snaps.iter().filter_map(|(_, s)| s.call_latency.get(i)) {
                match &mut merged {
                    Some(m) => {
                        let _ = m.add(h);
                    }
                    None => merged = Some(h.clone()),
                }
            }
            if let Some(h) = merged {
                summary_from_histogram(out, name, help, &[], &h, 1e-6);
            }
        }
        self.push.render_metrics(out);
        gauge(
            out,
            "sipis_store_available",
            "1 if the database answers.",
            &[],
            u64::from(self.store.available()),
        );
        gauge(
            out,
            "sipis_store_pending_saves",
            "Registration states waiting to be written.",
            &[],
            self.store.pending_saves() as u64,
        );
        counter(
            out,
            "sipis_store_failed_writes_total",
            "Writes that failed and will be retried.",
            &[],
            self.store.failed_writes(),
        );
    }
}

/// 32 bytes from the OS for a shard's CSPRNG.
/// The DNS refresher: looks registrar hosts up again as their answers
/// expire, and hands the accounts whose targets changed their new
/// configuration (read from the store: the admin API may have changed it
/// meanwhile). Holds the core only while applying changes.
fn dns_refresh(dns: &super::dns::Dns, core: std::sync::Weak<Core>) {
    while let Some(changed) = dns.refresh_due() {
        let Some(core) = core.upgrade() else { return };
        for id in changed {
            match core.store.call(move |s| s.get_account(id)) {
                Ok(Some(rec)) if rec.enabled => core.reapply(&rec),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(account = id, error = %e, "new registrar targets not applied: store unavailable")
                }
            }
        }
    }
}

pub(crate) fn os_key() -> Result<crate::engine::RngKey, ServeError> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| ServeError::Admin(format!("cannot read OS randomness: {e}")))?;
    Ok(crate::engine::RngKey(key))
}

/// The TCP/TLS front's counters.
fn render_front(out: &mut String, f: &super::front::FrontShared) {
    use super::front::CloseReason;
    let m = &f.metrics;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    gauge(
        out,
        "sipis_connections_open",
        "TCP and TLS connections open.",
        &[],
        m.open.load(Ordering::Relaxed) as u64,
    );
    for (transport, v) in [("tcp", &m.accepted_tcp), ("tls", &m.accepted_tls)] {
        counter(
            out,
            "sipis_connections_accepted_total",
            "Connections accepted, by transport.",
            &[("transport", transport)],
            get(v),
        );
    }
    for (transport, v) in [("tcp", &m.connected_tcp), ("tls", &m.connected_tls)] {
        counter(
            out,
            "sipis_connections_connected_total",
            "Connections sipis opened to registrars and proxies, by transport.",
            &[("transport", transport)],
            get(v),
        );
    }
    counter(
        out,
        "sipis_connect_failures_total",
        "Connections to registrars and proxies that could not be made.",
        &[],
        get(&m.connect_failures),
    );
    for (limit, v) in [
        ("max_connections", &m.refused_total),
        ("max_connections_per_ip", &m.refused_per_ip),
    ] {
        counter(
            out,
            "sipis_connections_refused_total",
            "Connections refused at accept, by the limit they hit.",
            &[("limit", limit)],
            get(v),
        );
    }
    for r in CloseReason::ALL {
        counter(
            out,
            "sipis_connections_closed_total",
            "Connections closed, by reason.",
            &[("reason", r.as_str())],
            get(&m.closed[r.index()]),
        );
    }
    counter(
        out,
        "sipis_tls_handshake_failures_total",
        "TLS handshakes that failed (bad client hello, certificate refused).",
        &[],
        get(&m.tls_handshake_failures),
    );
    counter(
        out,
        "sipis_keepalive_pings_total",
        "RFC 5626 CRLFCRLF keep-alive pings answered on connections.",
        &[],
        get(&m.pings),
    );
    counter(
        out,
        "sipis_stream_messages_total",
        "SIP messages framed off TCP and TLS connections.",
        &[],
        get(&m.messages),
    );
}

/// PostgreSQL at start: a database that is not up yet (a boot order, a
/// failover) is waited for, with back-off (1 s doubling to 30 s) for up
/// to two minutes, each attempt logged with the host and port.
fn connect_postgres(url: &str) -> Result<PostgresStore, ServeError> {
    const WAIT_AT_MOST: Duration = Duration::from_secs(120);
    let start = Instant::now();
    let mut pause = Duration::from_secs(1);
    loop {
        match PostgresStore::connect(url, PgOptions::default()) {
            Ok(s) => {
                if start.elapsed() > Duration::from_secs(1) {
                    tracing::info!("store: PostgreSQL reachable after {:?}", start.elapsed());
                }
                return Ok(s);
            }
            Err(e @ crate::store::StoreError::Unavailable(_))
                if start.elapsed() + pause < WAIT_AT_MOST =>
            {
                tracing::warn!("store: {e}; retrying in {}s", pause.as_secs());
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(ServeError::Store(e.to_string())),
        }
    }
}
