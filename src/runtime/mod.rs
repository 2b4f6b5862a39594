//! The glommio shell around the sans-IO engine: one shard per core.
//!
//! ```text
//!  admin API / start-up ──Control──▶ shard i (glommio executor pinned to core i)
//!                                      UDP socket sip_port+1+i ⇄ Engine ⇄ timer tick
//!                                      events ──▶ EventSink (store thread)
//! ```
//!
//! An account lives on shard `shard_of(id)`. The Contact it registers
//! upstream points at that shard's own socket, so the provider's requests
//! for it land on the core that owns it. Control messages cross threads on
//! crossbeam channels that each shard polls every few milliseconds;
//! nothing on the packet path takes a lock. Push outcomes have a channel of
//! their own that a task of the shard awaits: an outcome wakes the
//! executor at once (a waker from a foreign thread rings glommio's
//! eventfd), so `180 Push-Notification-Sent` leaves when the push service
//! accepted the push, not at the next tick.

pub mod dns;
pub mod front;
mod lock;
mod memlock;
mod router;
mod server;
mod shard;

pub use memlock::{ensure as ensure_memlock, MemlockError};
pub use router::Router;
pub use server::{serve, serve_with, ServeError, Server};

use crate::engine::{EngineConfig, Stats};
use crate::push::{PushOutcome, PushRequest};
use crate::store::{CallOutcomeRecord, DeviceRecord};
use crate::{AccountConfig, AccountId, RegStatus, SavedRegistration};
use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Names of the registration states, in the order of
/// [`ShardSnapshot::registrations`].
pub const STATE_NAMES: [&str; 6] = [
    "pending",
    "registering",
    "registered",
    "retrying",
    "failed",
    "unregistered",
];

/// Where the shards' events go (the store thread, in production).
pub trait EventSink: Send + Sync + 'static {
    /// Persist an account's registration state (fire and forget: must not
    /// block).
    fn save_registration(&self, account: AccountId, saved: SavedRegistration);

    /// A phone registered a push device: persist it.
    fn device_saved(&self, _device: DeviceRecord) {}

    /// A device is gone (explicit unregister, dead token).
    fn device_removed(&self, _account: AccountId, _device: &str) {}

    /// A call's outcome: one durable row per call.
    fn call_outcome(&self, _outcome: CallOutcomeRecord) {}

    /// Hand a push to the push client. Its outcome must come back through
    /// [`Shards::push_result`]; a sink that drops it leaves the call
    /// waiting for a device until `calls.device_wait`.
    fn push(&self, _request: PushRequest) {}
}

/// A sink that drops everything (tests, or a store-less run).
pub struct NullSink;

impl EventSink for NullSink {
    fn save_registration(&self, _: AccountId, _: SavedRegistration) {}
}

pub(crate) enum Control {
    PutDevice(DeviceRecord),
    RemoveDevice(AccountId, String),
    Add(AccountConfig, Option<SavedRegistration>),
    Update(AccountConfig),
    Remove(AccountId),
    Status(AccountId, crossbeam_channel::Sender<Option<RegStatus>>),
    Shutdown {
        unregister: bool,
        /// Unregistrations must be done by then.
        within: Duration,
        done: crossbeam_channel::Sender<()>,
    },
}

/// What a shard last published (every second).
#[derive(Debug, Clone, Default)]
pub struct ShardSnapshot {
    pub stats: Stats,
    /// Accounts per registration state, see [`STATE_NAMES`].
    pub registrations: [u64; 6],
    pub accounts: u64,
    /// Client and server transactions in flight.
    pub transactions: (u64, u64),
    /// REGISTER round trips in microseconds since the shard started.
    pub register_latency: Option<hdrhistogram::Histogram<u64>>,
    /// Call-flow latencies (µs from the INVITE): push accepted, device
    /// REGISTER, ringing, answer — in that order.
    pub call_latency: Vec<hdrhistogram::Histogram<u64>>,
    /// Calls in the pending-call map.
    pub calls: u64,
    /// Shared-port datagrams forwarded to their owner, and dropped.
    pub forwarded: u64,
    pub forward_dropped: u64,
}

pub(crate) struct ShardMetrics {
    pub alive: AtomicBool,
    /// Shared-port datagrams sent on to their owning shard.
    pub forwarded: std::sync::atomic::AtomicU64,
    /// ... and dropped because the owner's queue was full.
    pub forward_dropped: std::sync::atomic::AtomicU64,
    pub snapshot: Mutex<ShardSnapshot>,
}

/// How to start the shards.
#[derive(Debug, Clone)]
pub struct ShardSettings {
    pub count: usize,
    /// Address the shard sockets bind to.
    pub bind: IpAddr,
    /// Shard `i` listens on `base_port + i`.
    pub base_port: u16,
    /// The public phone port every shard also listens on (SO_REUSEPORT);
    /// `None` for none.
    pub shared_port: Option<u16>,
    /// Engine configuration of each shard (its `via`/`contact_host` must
    /// name that shard's port).
    pub engines: Vec<EngineConfig>,
    /// Pin shard `i` to CPU `i % cores`.
    pub pin: bool,
    /// Locked I/O memory per executor (glommio's io_memory).
    pub io_memory: usize,
    /// Socket receive/send buffer size asked of the kernel.
    pub socket_buffer: usize,
    /// The TCP/TLS front (phones over connections); `None` for none.
    pub front: Option<FrontSettings>,
}

/// The TCP/TLS listeners every shard accepts on (SO_REUSEPORT).
#[derive(Clone)]
pub struct FrontSettings {
    /// TCP port (`0`: any free one); `None`: no TCP listener.
    pub tcp_port: Option<u16>,
    /// TLS port; needs `shared.tls`.
    pub tls_port: Option<u16>,
    /// Limits, counters and the TLS configuration, shared by the shards.
    pub shared: Arc<front::FrontShared>,
}

impl fmt::Debug for FrontSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrontSettings")
            .field("tcp_port", &self.tcp_port)
            .field("tls_port", &self.tls_port)
            .field("limits", &self.shared.limits())
            .field("tls", &self.shared.tls.is_some())
            .finish()
    }
}

/// Why the shards could not start.
#[derive(Debug)]
pub enum RuntimeError {
    Memlock(MemlockError),
    /// Binding a shard socket failed.
    Bind(SocketAddr, std::io::Error),
    /// Binding a TCP/TLS listener failed.
    BindTcp(SocketAddr, std::io::Error),
    /// glommio could not create an executor (io_uring unavailable?).
    Executor(usize, String),
    Config(String),
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuntimeError::Memlock(e) => e.fmt(f),
            RuntimeError::Bind(a, e) => write!(f, "cannot bind UDP {a}: {e}"),
            RuntimeError::BindTcp(a, e) => write!(f, "cannot listen on TCP {a}: {e}"),
            RuntimeError::Executor(i, e) => write!(f, "cannot start shard {i} (io_uring): {e}"),
            RuntimeError::Config(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for RuntimeError {}

struct ShardHandle {
    control: crossbeam_channel::Sender<Control>,
    /// Push outcomes, awaited by a task of the shard. Unbounded, yet
    /// bounded in practice: one outcome per push the client accepted, and
    /// the client accepts at most `push.max_in_flight`.
    outcomes: tokio::sync::mpsc::UnboundedSender<PushOutcome>,
    metrics: Arc<ShardMetrics>,
    addr: SocketAddr,
    join: Option<glommio::ExecutorJoinHandle<()>>,
}

/// Delivers push outcomes to the shard that owns their account.
#[derive(Clone)]
pub struct PushResults {
    senders: Vec<tokio::sync::mpsc::UnboundedSender<PushOutcome>>,
}

impl PushResults {
    /// Hands the outcome to its account's shard and wakes it. Never blocks.
    pub fn deliver(&self, outcome: PushOutcome) {
        let i = shard_of(outcome.account, self.senders.len());
        // A shard that stopped has dropped its receiver; nothing to do.
        let _ = self.senders[i].send(outcome);
    }
}

/// The running shards.
pub struct Shards {
    shards: Vec<ShardHandle>,
    router: Arc<Router>,
    shared: Option<SocketAddr>,
    /// The TCP and TLS listeners' addresses.
    tcp: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    front: Option<Arc<front::FrontShared>>,
}

impl Shards {
    /// Binds every shard's socket, then starts one executor per shard.
    pub fn start(
        settings: ShardSettings,
        sink: Arc<dyn EventSink>,
    ) -> Result<Shards, RuntimeError> {
        if settings.count == 0 || settings.engines.len() != settings.count {
            return Err(RuntimeError::Config(
                "one engine configuration per shard".into(),
            ));
        }
        ensure_memlock(settings.io_memory as u64 * settings.count as u64 + (1 << 20))
            .map_err(RuntimeError::Memlock)?;
        let cpus = allowed_cpus();
        let router = Arc::new(Router::new(settings.count, settings.base_port));
        let mesh = (settings.count > 1)
            .then(|| glommio::channels::channel_mesh::MeshBuilder::full(settings.count, 4096));
        let mut shared_addr = None;
        let mut tcp_addr = None;
        let mut tls_addr = None;
        let front_shared = settings.front.as_ref().map(|f| f.shared.clone());
        let empty_front = || Arc::new(front::FrontShared::new(Default::default(), None));
        let mut shards = Vec::with_capacity(settings.count);
        for (i, mut engine) in settings.engines.into_iter().enumerate() {
            // Its branches carry its index: the shared port routes a phone's
            // response (whose Via names the shared port) back by it.
            engine.shard = i as u16;
            let port = settings.base_port.checked_add(i as u16).ok_or_else(|| {
                RuntimeError::Config(format!(
                    "shard {i}: port {} + {i} exceeds 65535",
                    settings.base_port
                ))
            })?;
            let addr = SocketAddr::new(settings.bind, port);
            let socket =
                bind_udp(addr, settings.socket_buffer).map_err(|e| RuntimeError::Bind(addr, e))?;
            let addr = socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .unwrap_or(addr);
            let shared = match settings.shared_port {
                None => None,
                Some(p) => {
                    // Port 0: the first shard's bind picks one, the others join it.
                    let a = shared_addr.unwrap_or(SocketAddr::new(settings.bind, p));
                    let s = bind_udp_shared(a, settings.socket_buffer)
                        .map_err(|e| RuntimeError::Bind(a, e))?;
                    shared_addr = s.local_addr().ok().and_then(|a| a.as_socket()).or(Some(a));
                    Some(s)
                }
            };
            let mut listeners = Vec::new();
            if let Some(f) = &settings.front {
                for (port, tls, addr) in [
                    (f.tcp_port, false, &mut tcp_addr),
                    (f.tls_port, true, &mut tls_addr),
                ] {
                    let Some(p) = port else { continue };
                    // Port 0: the first shard's bind picks one, the others join it.
                    let a = addr.unwrap_or(SocketAddr::new(settings.bind, p));
                    let s = bind_tcp(a).map_err(|e| RuntimeError::BindTcp(a, e))?;
                    *addr = s.local_addr().ok().and_then(|a| a.as_socket()).or(Some(a));
                    listeners.push((s, tls));
                }
            }
            let (tx, rx) = crossbeam_channel::unbounded();
            let (outcomes, outcomes_rx) = tokio::sync::mpsc::unbounded_channel();
            let metrics = Arc::new(ShardMetrics {
                alive: AtomicBool::new(false),
                forwarded: Default::default(),
                forward_dropped: Default::default(),
                snapshot: Mutex::new(ShardSnapshot::default()),
            });
            let placement = if settings.pin && !cpus.is_empty() {
                Placement::Fixed(cpus[i % cpus.len()])
            } else {
                Placement::Unbound
            };
            let ctx = shard::ShardCtx {
                id: i,
                socket,
                shared,
                mesh: mesh.clone(),
                listeners,
                front: front_shared.clone().unwrap_or_else(empty_front),
                shards: settings.count,
                router: router.clone(),
                engine,
                control: rx,
                outcomes: outcomes_rx,
                sink: sink.clone(),
                metrics: metrics.clone(),
            };
            let join = LocalExecutorBuilder::new(placement)
                .name(&format!("sipis-shard-{i}"))
                .io_memory(settings.io_memory)
                .spawn(move || shard::run(ctx))
                .map_err(|e| RuntimeError::Executor(i, e.to_string()))?;
            shards.push(ShardHandle {
                control: tx,
                outcomes,
                metrics,
                addr,
                join: Some(join),
            });
        }
        Ok(Shards {
            shards,
            router,
            shared: shared_addr,
            tcp: tcp_addr,
            tls: tls_addr,
            front: front_shared,
        })
    }

    /// The TCP listener's address, if any.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// The TLS listener's address, if any.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls
    }

    /// The front's counters and TLS configuration, if it runs.
    pub fn front(&self) -> Option<&Arc<front::FrontShared>> {
        self.front.as_ref()
    }

    /// The shared phone port's address, if any.
    pub fn shared_addr(&self) -> Option<SocketAddr> {
        self.shared
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// The UDP address shard `i` listens on.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.shards[i].addr
    }

    /// The shard that owns an account: a multiplicative hash of its id, so
    /// sequential ids spread evenly.
    pub fn shard_of(&self, id: AccountId) -> usize {
        shard_of(id, self.shards.len())
    }

    fn send(&self, id: AccountId, c: Control) {
        // A shard that stopped has dropped its receiver; nothing to do.
        let _ = self.shards[self.shard_of(id)].control.send(c);
    }

    pub fn add_account(&self, cfg: AccountConfig, saved: Option<SavedRegistration>) {
        self.router.insert(&cfg);
        self.send(cfg.id, Control::Add(cfg, saved));
    }

    /// Gives a device (push target) to its account's shard.
    pub fn put_device(&self, device: DeviceRecord) {
        self.send(device.account, Control::PutDevice(device));
    }

    pub fn remove_device(&self, account: AccountId, device: &str) {
        self.send(account, Control::RemoveDevice(account, device.to_owned()));
    }

    /// Hands a push's outcome to the shard of its account.
    pub fn push_result(&self, outcome: PushOutcome) {
        self.push_results().deliver(outcome);
    }

    /// A handle that delivers push outcomes to the shards from any thread
    /// (the push client's workers).
    pub fn push_results(&self) -> PushResults {
        PushResults {
            senders: self.shards.iter().map(|s| s.outcomes.clone()).collect(),
        }
    }

    pub fn update_account(&self, cfg: AccountConfig) {
        self.router.insert(&cfg);
        self.send(cfg.id, Control::Update(cfg));
    }

    pub fn remove_account(&self, id: AccountId) {
        self.router.remove(id);
        self.send(id, Control::Remove(id));
    }

    /// The registration state of an account, asked of its shard.
    pub fn status(&self, id: AccountId, timeout: Duration) -> Option<RegStatus> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(id, Control::Status(id, tx));
        rx.recv_timeout(timeout).ok().flatten()
    }

    /// The states of many accounts: every query is sent first, then the
    /// answers collected, so a page costs one shard tick, not one per account.
    pub fn statuses(
        &self,
        ids: impl Iterator<Item = AccountId>,
        timeout: Duration,
    ) -> std::collections::HashMap<AccountId, RegStatus> {
        let pending: Vec<_> = ids
            .map(|id| {
                let (tx, rx) = crossbeam_channel::bounded(1);
                self.send(id, Control::Status(id, tx));
                (id, rx)
            })
            .collect();
        let deadline = std::time::Instant::now() + timeout;
        pending
            .into_iter()
            .filter_map(|(id, rx)| {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                rx.recv_timeout(left).ok().flatten().map(|s| (id, s))
            })
            .collect()
    }

    /// The latest snapshot of every shard, and whether it is alive.
    pub fn snapshots(&self) -> Vec<(bool, ShardSnapshot)> {
        self.shards
            .iter()
            .map(|s| {
                let alive = s.metrics.alive.load(std::sync::atomic::Ordering::Acquire);
                let mut snap = s
                    .metrics
                    .snapshot
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                snap.forwarded = s
                    .metrics
                    .forwarded
                    .load(std::sync::atomic::Ordering::Relaxed);
                snap.forward_dropped = s
                    .metrics
                    .forward_dropped
                    .load(std::sync::atomic::Ordering::Relaxed);
                (alive, snap)
            })
            .collect()
    }

    /// Stops every shard (optionally unregistering its accounts first: each
    /// shard stops once every unregistration is answered, or at `timeout`)
    /// and waits for them, at most `timeout` and a second.
    pub fn shutdown(mut self, unregister: bool, timeout: Duration) {
        let mut waits = Vec::new();
        for s in &self.shards {
            let (tx, rx) = crossbeam_channel::bounded(1);
            if s.control
                .send(Control::Shutdown {
                    unregister,
                    within: timeout,
                    done: tx,
                })
                .is_ok()
            {
                waits.push(rx);
            }
        }
        let deadline = std::time::Instant::now() + timeout + Duration::from_secs(1);
        for rx in waits {
            let _ = rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
        }
        for s in &mut self.shards {
            if let Some(j) = s.join.take() {
                let _ = j.join();
            }
        }
    }
}

/// The shard of an account among `n`.
pub fn shard_of(id: AccountId, n: usize) -> usize {
    // Fibonacci hashing: consecutive ids land on different shards.
    ((id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % n.max(1) as u64) as usize
}

/// The CPU ids this process may run on (taskset, cgroups, isolcpus and
/// systemd's CPUAffinity all narrow it), in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// The shared phone port: SO_REUSEPORT so every shard binds it and the
/// kernel spreads phones over the shards.
fn bind_udp_shared(addr: SocketAddr, buffer: usize) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// A listening TCP socket of the front: SO_REUSEPORT so every shard
/// listens on the port and the kernel spreads connections over them.
fn bind_tcp(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // `::` takes IPv4 and IPv6 phones on one socket (IPv4 peers are
        // seen as themselves: the accept loop unmaps them); a specific
        // IPv6 address only IPv6.
        socket.set_only_v6(!addr.ip().is_unspecified())?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket)
}

fn bind_udp(addr: SocketAddr, buffer: usize) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max
    // (tuning/network.md).
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcp_listener_on_unspecified_ipv6_takes_ipv4_and_ipv6_phones() {
        let s = bind_tcp("[::]:0".parse().unwrap()).unwrap();
        let port = s.local_addr().unwrap().as_socket().unwrap().port();
        let l: std::net::TcpListener = s.into();
        l.set_nonblocking(false).unwrap();
        let v4 = std::net::TcpStream::connect(("127.0.0.1", port)).expect("IPv4 phone");
        let (_, from) = l.accept().unwrap();
        assert_eq!(from.ip().to_canonical(), v4.local_addr().unwrap().ip());
        std::net::TcpStream::connect(("::1", port)).expect("IPv6 phone");
        let (_, from) = l.accept().unwrap();
        assert!(from.is_ipv6());
    }
}
