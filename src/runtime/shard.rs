//! One shard: a glommio executor pinned to a core, owning an [`Engine`],
//! its UDP socket and its slice of the accounts. The shell is thin: it feeds
//! datagrams and the clock into the engine and writes out what the engine
//! wants sent.

use super::front::{self, conn_shard, CloseReason, Conn, FrontShared, Turn};
use super::{Control, EventSink, Router, ShardMetrics};
use crate::engine::{Engine, EngineConfig, Event, Flow};
use crate::push::PushRequest;
use crate::store::{CallOutcomeRecord, DeviceRecord};
use crate::RegStatus;
use bytes::Bytes;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::net::{TcpListener, TcpStream, UdpSocket};
use glommio::timer::sleep;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a shard looks at its control channel and publishes metrics.
/// Engine timers fire at most this late (RFC 3261 timers are ≥ 500 ms).
const TICK: Duration = Duration::from_millis(5);
const METRICS_EVERY: Duration = Duration::from_secs(1);
/// How often fresh OS entropy is mixed into the engine's CSPRNG.
const RESEED_EVERY: Duration = Duration::from_secs(3600);
/// Largest datagram read (the UDP maximum).
const RECV_BUF: usize = 65_535;

/// How often the front looks for connections past a limit.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The longest sipis waits for a registrar to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What one shard hands another over the channel mesh.
pub(super) enum Hop {
    /// A message for the shard that owns it, received on the shared UDP
    /// port or on a connection of the sending shard (`flow`).
    Message {
        from: SocketAddr,
        flow: Flow,
        data: Vec<u8>,
    },
    /// Bytes the owner of an account sends over a connection the receiving
    /// shard holds.
    Write { conn: u64, data: Bytes },
    /// A connection of the sending shard is gone.
    Closed { flow: Flow },
    /// A connection of the receiving shard carries a registration.
    Bound { conn: u64 },
}

pub(super) struct ShardCtx {
    pub id: usize,
    pub socket: socket2::Socket,
    pub shared: Option<socket2::Socket>,
    pub mesh: Option<MeshBuilder<Hop, Full>>,
    /// Listening TCP sockets of the front, `true` for TLS.
    pub listeners: Vec<(socket2::Socket, bool)>,
    pub front: Arc<FrontShared>,
    pub shards: usize,
    pub router: std::sync::Arc<Router>,
    pub engine: EngineConfig,
    pub control: crossbeam_channel::Receiver<Control>,
    pub outcomes: tokio::sync::mpsc::UnboundedReceiver<crate::push::PushOutcome>,
    pub sink: Arc<dyn EventSink>,
    pub metrics: Arc<ShardMetrics>,
}

pub(super) async fn run(ctx: ShardCtx) {
    let ShardCtx {
        id,
        socket,
        shared,
        mesh,
        listeners,
        front,
        shards,
        router,
        engine,
        control,
        outcomes,
        sink,
        metrics,
    } = ctx;
    let mut tasks = Vec::new();
    let mut senders = None;
    let mut inbound = None;
    if let Some(mesh) = mesh {
        match mesh.join().await {
            Ok((tx, rx)) => {
                senders = Some(tx);
                inbound = Some(rx);
            }
            Err(e) => {
                tracing::error!(shard = id, error = %e, "channel mesh join failed: no forwarding")
            }
        }
    }
    let (limits, limits_generation) = (front.limits(), front.limits_generation());
    let shell = Rc::new_cyclic(|me| Shell {
        me: me.clone(),
        id,
        shards,
        engine: RefCell::new(Engine::new(engine, Instant::now())),
        own: UdpSocket::from(socket),
        shared: shared.map(UdpSocket::from),
        spare: RefCell::new(Vec::new()),
        sink,
        router,
        senders,
        metrics,
        front,
        conns: RefCell::new(HashMap::new()),
        next_conn: Cell::new(1),
        scratch: RefCell::new(vec![0u8; RECV_BUF]),
        gone: RefCell::new(Vec::new()),
        failing: RefCell::new(Default::default()),
        limits: RefCell::new(limits),
        limits_generation: Cell::new(limits_generation),
        log_budget: RefCell::new(LogBudget {
            second: Instant::now(),
            used: 0,
            suppressed: 0,
        }),
    });
    if let Some(mut rx) = inbound {
        for (_, stream) in rx.streams() {
            let shell = shell.clone();
            tasks.push(glommio::spawn_local(async move {
                while let Some(hop) = stream.recv().await {
                    shell.take_hop(hop).await;
                }
            }));
        }
    }
    shell.metrics.alive.store(true, Ordering::Release);

    tasks.push(glommio::spawn_local(outcome_loop(outcomes, shell.clone())));
    tasks.push(glommio::spawn_local(recv_loop(shell.clone())));
    if shell.shared.is_some() {
        tasks.push(glommio::spawn_local(shared_loop(shell.clone())));
    }
    for (socket, tls) in listeners {
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: a bound, listening TCP socket whose fd we own.
        let listener = unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) };
        tasks.push(glommio::spawn_local(accept_loop(
            shell.clone(),
            listener,
            tls,
        )));
    }
    // Limits of accepted connections, keep-alives of the ones sipis opens.
    tasks.push(glommio::spawn_local(sweep_loop(shell.clone())));
    let engine = &shell.engine;
    let metrics = &shell.metrics;
    let mut last_metrics = Instant::now() - METRICS_EVERY;
    let mut last_reseed = Instant::now();
    let mut shutdown: Option<Stopping> = None;
    loop {
        let now = Instant::now();
        // Control: provisioning from the admin side.
        while let Ok(c) = control.try_recv() {
            let mut e = engine.borrow_mut();
            match c {
                Control::Add(cfg, saved) => e.add_account(now, cfg, saved),
                Control::Update(cfg) => e.update_account(now, cfg),
                Control::PutDevice(d) => {
                    e.put_device(
                        d.account,
                        &d.device,
                        &d.provider,
                        &d.prid,
                        d.param.as_deref(),
                    );
                }
                Control::RemoveDevice(account, name) => {
                    e.remove_device(account, &name);
                }
                Control::Remove(id) => {
                    e.remove_account(now, id);
                }
                Control::Status(id, reply) => {
                    let _ = reply.send(e.account_status(id));
                }
                Control::Shutdown {
                    unregister,
                    within,
                    done,
                } => {
                    // Unregistrations leave fast enough to be sent within
                    // 60 % of the bound; the rest is for their answers.
                    let total = if unregister {
                        e.unregister_all_within(now, within.mul_f64(0.6))
                    } else {
                        0
                    };
                    if total > 0 {
                        tracing::info!(
                            shard = id,
                            "shutdown: removing {total} bindings (Expires: 0)"
                        );
                    }
                    shutdown = Some(Stopping {
                        deadline: now + within,
                        total,
                        checked: now,
                        logged: now,
                        done,
                    });
                }
            }
        }
        engine.borrow_mut().handle_timeout(now);
        flush(&shell).await;
        if now.duration_since(last_reseed) >= RESEED_EVERY {
            last_reseed = now;
            match super::server::os_key() {
                Ok(key) => engine.borrow_mut().handle_reseed(key),
                Err(e) => tracing::warn!(shard = id, error = %e, "cannot reseed the CSPRNG"),
            }
        }
        if now.duration_since(last_metrics) >= METRICS_EVERY {
            last_metrics = now;
            publish(&engine.borrow(), metrics);
        }
        if let Some(st) = &mut shutdown {
            if st.total == 0 {
                break;
            }
            if now.duration_since(st.checked) >= Duration::from_millis(50) || now >= st.deadline {
                st.checked = now;
                let left = engine.borrow().unregistrations_pending();
                if left == 0 {
                    tracing::info!(shard = id, "shutdown: all {} bindings removed", st.total);
                    break;
                }
                if now >= st.deadline {
                    tracing::warn!(
                        shard = id,
                        "shutdown: bound reached, {left} of {} unregistrations unanswered",
                        st.total
                    );
                    break;
                }
                if now.duration_since(st.logged) >= Duration::from_secs(1) {
                    st.logged = now;
                    tracing::info!(
                        shard = id,
                        "shutdown: {left} of {} unregistrations pending",
                        st.total
                    );
                }
            }
        }
        let wait = engine.borrow().poll_timeout().map_or(TICK, |d| {
            d.saturating_duration_since(Instant::now()).min(TICK)
        });
        sleep(wait.max(Duration::from_micros(200))).await;
    }
    drop(tasks);
    let conns: Vec<_> = shell.conns.borrow_mut().drain().map(|(_, c)| c).collect();
    for c in conns {
        front::closed(&shell.front, &c, CloseReason::Shutdown);
    }
    publish(&engine.borrow(), metrics);
    metrics.alive.store(false, Ordering::Release);
    if let Some(st) = shutdown {
        let _ = st.done.send(());
    }
}

/// A shard asked to stop: until when, and how its unregistrations go.
struct Stopping {
    deadline: Instant,
    /// Unregistrations started.
    total: usize,
    checked: Instant,
    logged: Instant,
    done: crossbeam_channel::Sender<()>,
}

/// One shard's state, shared by its tasks (all on the shard's thread).
struct Shell {
    /// Itself, for the tasks it starts (connections it opens).
    me: std::rc::Weak<Shell>,
    id: usize,
    shards: usize,
    engine: RefCell<Engine>,
    /// Its own UDP port (upstream traffic).
    own: UdpSocket,
    /// The shared phone port.
    shared: Option<UdpSocket>,
    /// Spare transmit lists. Several tasks of the shard may be flushing at
    /// once (they interleave at each send), so this is a pool rather than
    /// one buffer; in steady state a flush allocates nothing.
    spare: RefCell<Vec<Vec<crate::engine::Transmit>>>,
    sink: Arc<dyn EventSink>,
    router: Arc<Router>,
    senders: Option<Senders<Hop>>,
    metrics: Arc<ShardMetrics>,
    front: Arc<FrontShared>,
    /// The connections this shard accepted, by id.
    conns: RefCell<HashMap<u64, Rc<Conn>>>,
    next_conn: Cell<u64>,
    /// The read buffer every connection of the shard reads into (a
    /// connection keeps only the tail of an unfinished message).
    scratch: RefCell<Vec<u8>>,
    /// Flows that could not be opened, for the engine at the end of the
    /// flush.
    gone: RefCell<Vec<Flow>>,
    /// Accounts whose registration failure was logged (until recovered).
    failing: RefCell<std::collections::HashSet<crate::AccountId>>,
    /// Per-account log lines (registration, auth failures) per second.
    log_budget: RefCell<LogBudget>,
    /// This shard's copy of the front's limits (read per message without
    /// a lock), and the generation it was taken at.
    limits: RefCell<front::ConnLimits>,
    limits_generation: Cell<u64>,
}

/// At most [`LogBudget::PER_SECOND`] per-account lines a second per shard;
/// how many were held back is said once the second is over.
struct LogBudget {
    second: Instant,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    const PER_SECOND: u32 = 20;

    fn allow(&mut self, now: Instant) -> bool {
        if now.duration_since(self.second) >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                tracing::warn!(
                    "{} more registration/auth log lines held back in the last second (see /metrics)",
                    self.suppressed
                );
            }
            self.second = now;
            self.used = 0;
            self.suppressed = 0;
        }
        if self.used < Self::PER_SECOND {
            self.used += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

impl Shell {
    /// What another shard handed over.
    async fn take_hop(&self, hop: Hop) {
        let now = Instant::now();
        match hop {
            Hop::Message { from, flow, data } => {
                self.engine
                    .borrow_mut()
                    .handle_datagram(now, from, flow, &data);
            }
            Hop::Write { conn, data } => {
                // A connection closed meanwhile: the owner hears of it from
                // the close.
                if let Some(c) = self.conns.borrow().get(&conn) {
                    c.send(&data, &self.limits.borrow());
                }
                return;
            }
            Hop::Closed { flow } => self.engine.borrow_mut().handle_flow_closed(now, flow),
            Hop::Bound { conn } => {
                if let Some(c) = self.conns.borrow().get(&conn) {
                    c.registered.set(true);
                }
                return;
            }
        }
        flush(self).await;
    }

    /// A message framed off connection `conn`: handled here or handed to
    /// the shard that owns its account, as a datagram on the shared port is.
    fn dispatch(&self, conn: &Conn, msg: &[u8], now: Instant) {
        let owner = if self.shards > 1 {
            self.router.owner(msg).filter(|&o| o != self.id)
        } else {
            None
        };
        if let (Some(o), Some(tx)) = (owner, self.senders.as_ref()) {
            let hop = Hop::Message {
                from: conn.peer,
                flow: conn.flow,
                data: msg.to_vec(),
            };
            if tx.try_send_to(o, hop).is_ok() {
                conn.seen.set(conn.seen.get() | shard_bit(o));
                self.metrics.forwarded.fetch_add(1, Ordering::Relaxed);
            } else {
                self.metrics.forward_dropped.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        conn.seen.set(conn.seen.get() | shard_bit(self.id));
        self.engine
            .borrow_mut()
            .handle_datagram(now, conn.peer, conn.flow, msg);
    }

    /// Sends bytes over a connection, wherever it is. `false`: it is gone.
    fn write_stream(&self, id: u64, payload: Bytes) -> bool {
        let holder = conn_shard(id);
        if holder == self.id {
            return match self.conns.borrow().get(&id) {
                Some(c) => {
                    c.send(&payload, &self.limits.borrow());
                    true
                }
                None => false,
            };
        }
        if let Some(tx) = &self.senders {
            if tx
                .try_send_to(
                    holder,
                    Hop::Write {
                        conn: id,
                        data: payload,
                    },
                )
                .is_err()
            {
                self.metrics.forward_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        true
    }

    /// The engine wants a connection to a registrar or proxy: it is
    /// registered at once (what the engine writes to it waits in its
    /// queue) and connected by a task of its own.
    fn connect(&self, flow: Flow, dest: SocketAddr, server_name: Option<String>) {
        let Some(id) = flow.conn() else { return };
        let tls = matches!(flow, Flow::Tls(_));
        match front::outbound(
            &self.front,
            id,
            dest,
            tls,
            server_name.as_deref(),
            Instant::now(),
        ) {
            Ok(conn) => {
                let conn = Rc::new(conn);
                self.conns.borrow_mut().insert(id, conn.clone());
                if let Some(me) = self.me.upgrade() {
                    glommio::spawn_local(connect_task(me, conn)).detach();
                }
            }
            Err(e) => {
                tracing::warn!(%dest, error = %e, "cannot open a connection");
                self.front
                    .metrics
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                // The engine learns at once; its REGISTERs retry later.
                self.gone.borrow_mut().push(flow);
            }
        }
    }

    /// An account's registration changed: a failure is said once (until it
    /// recovers), a recovery once; rate-limited with the other per-account
    /// lines, the counters have the rest.
    fn log_registration(&self, account: crate::AccountId, status: &RegStatus) {
        let now = Instant::now();
        match status {
            RegStatus::Retrying { error, .. } | RegStatus::Failed { error }
                if self.failing.borrow_mut().insert(account)
                    && self.log_budget.borrow_mut().allow(now) =>
            {
                let final_ = matches!(status, RegStatus::Failed { .. });
                tracing::warn!(
                    account,
                    "registration failed: {error}{}",
                    if final_ {
                        " (not retried until its settings change)"
                    } else {
                        "; retrying"
                    }
                );
            }
            RegStatus::Registered { .. }
                if self.failing.borrow_mut().remove(&account)
                    && self.log_budget.borrow_mut().allow(now) =>
            {
                tracing::info!(account, "registration recovered");
            }
            _ => {}
        }
    }

    /// The engine says a connection carries a registration.
    fn mark_bound(&self, flow: Flow) {
        let Some(id) = flow.conn() else { return };
        let holder = conn_shard(id);
        if holder == self.id {
            if let Some(c) = self.conns.borrow().get(&id) {
                c.registered.set(true);
            }
        } else if let Some(tx) = &self.senders {
            let _ = tx.try_send_to(holder, Hop::Bound { conn: id });
        }
    }
}

/// Bit of shard `i` in [`Conn::seen`].
fn shard_bit(i: usize) -> u64 {
    if i < 64 {
        1 << i
    } else {
        0
    }
}

/// Accepts connections on one listener of the front.
async fn accept_loop(shell: Rc<Shell>, listener: TcpListener, tls: bool) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors or memory: pause rather than spin.
                tracing::warn!(shard = shell.id, error = %e, "accept failed");
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        // An IPv4 phone on a dual-stack listener: its own address.
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let n = shell.next_conn.get();
        shell.next_conn.set(n + 1);
        // Low byte: this shard; bit 8 clear (the engine's connections to
        // registrars have it set).
        let id = (n << 9) | shell.id as u64;
        let Some(conn) = front::admit(&shell.front, id, peer, tls, Instant::now()) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Rc::new(conn);
        shell.conns.borrow_mut().insert(id, conn.clone());
        glommio::spawn_local(conn_task(shell.clone(), conn, stream)).detach();
    }
}

/// A connection sipis opens: connect (bounded), then the same life as an
/// accepted one.
async fn connect_task(shell: Rc<Shell>, conn: Rc<Conn>) {
    let dest = conn.peer;
    match TcpStream::connect_timeout(dest, CONNECT_TIMEOUT).await {
        Ok(stream) => {
            tracing::info!(%dest, transport = conn.flow.transport(), "connected to registrar");
            let _ = stream.set_nodelay(true);
            conn_task(shell, conn, stream).await;
        }
        Err(e) => {
            tracing::warn!(%dest, transport = conn.flow.transport(), error = %e, "cannot connect to registrar");
            shell
                .front
                .metrics
                .connect_failures
                .fetch_add(1, Ordering::Relaxed);
            conn_closed(&shell, &conn, CloseReason::Error).await;
        }
    }
}

/// A connection's life: its I/O until it closes, then the engines that
/// saw it are told, so bindings on it go at once.
async fn conn_task(shell: Rc<Shell>, conn: Rc<Conn>, mut stream: TcpStream) {
    let reason = loop {
        let turn =
            std::future::poll_fn(|cx| front::poll_io(cx, &conn, &mut stream, &shell.scratch)).await;
        match turn {
            Turn::Closed(r) => break r,
            Turn::Read(n) => {
                let now = Instant::now();
                let taken = {
                    let data = shell.scratch.borrow();
                    let limits = shell.limits.borrow();
                    front::take_bytes(&conn, &data[..n], now, &shell.front, &limits, |msg| {
                        shell.dispatch(&conn, msg, now)
                    })
                };
                if let Err(r) = taken {
                    // One more turn writes what is queued (a TLS alert).
                    conn.close(r);
                }
                flush(&shell).await;
            }
        }
    };
    drop(stream);
    if conn.outbound {
        tracing::warn!(dest = %conn.peer, reason = reason.as_str(), "connection to registrar closed");
    }
    conn_closed(&shell, &conn, reason).await;
}

/// A connection is over: counted out, and every engine that saw it told.
async fn conn_closed(shell: &Rc<Shell>, conn: &Conn, reason: CloseReason) {
    shell.conns.borrow_mut().remove(&conn.id);
    front::closed(&shell.front, conn, reason);
    // The engine that opened a connection always hears of its end.
    let seen = conn.seen.get()
        | if conn.outbound {
            shard_bit(shell.id)
        } else {
            0
        };
    for i in 0..shell.shards {
        if shell.shards <= 64 && seen & shard_bit(i) == 0 {
            continue;
        }
        if i == shell.id {
            shell
                .engine
                .borrow_mut()
                .handle_flow_closed(Instant::now(), conn.flow);
            flush(shell).await;
        } else if let Some(tx) = &shell.senders {
            // Awaited: the owner must hear of it (its receiving task never
            // waits on this shard, so this cannot deadlock).
            let _ = tx.send_to(i, Hop::Closed { flow: conn.flow }).await;
        }
    }
}

/// Closes connections past a limit (handshake, idle, slow message).
async fn sweep_loop(shell: Rc<Shell>) {
    loop {
        sleep(SWEEP_EVERY).await;
        let now = Instant::now();
        // Limits changed by SIGHUP reach this shard here.
        let generation = shell.front.limits_generation();
        if generation != shell.limits_generation.get() {
            shell.limits_generation.set(generation);
            *shell.limits.borrow_mut() = shell.front.limits();
        }
        let limits = shell.limits.borrow();
        for c in shell.conns.borrow().values() {
            if let Some(r) = c.overdue(now, &limits) {
                c.close(r);
            } else {
                front::ping(c, now, &limits);
            }
        }
    }
}

/// The shared phone port: handle what this shard owns, forward the rest
/// to its owner over the mesh (dropped and counted if the owner's queue is
/// full: UDP semantics, the sender retransmits).
async fn shared_loop(shell: Rc<Shell>) {
    let Some(shared) = shell.shared.as_ref() else {
        return;
    };
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let (n, from) = match shared.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(shard = shell.id, error = %e, "shared recv_from failed");
                continue;
            }
        };
        let data = &buf[..n];
        if let (Some(owner), Some(tx)) = (shell.router.owner(data), shell.senders.as_ref()) {
            if owner != shell.id {
                let hop = Hop::Message {
                    from,
                    flow: Flow::SharedUdp,
                    data: data.to_vec(),
                };
                if tx.try_send_to(owner, hop).is_ok() {
                    shell.metrics.forwarded.fetch_add(1, Ordering::Relaxed);
                } else {
                    shell
                        .metrics
                        .forward_dropped
                        .fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
        }
        shell
            .engine
            .borrow_mut()
            .handle_datagram(Instant::now(), from, Flow::SharedUdp, data);
        flush(&shell).await;
    }
}

/// Push outcomes, as soon as they come: the push client's thread wakes
/// this task (glommio takes wakes from foreign threads through its
/// eventfd), so the engine's answer to the caller (`180` with
/// `Push-Notification-Sent`, or the `480` when every push failed) leaves
/// at once instead of at the next tick.
async fn outcome_loop(
    mut outcomes: tokio::sync::mpsc::UnboundedReceiver<crate::push::PushOutcome>,
    shell: Rc<Shell>,
) {
    while let Some(first) = outcomes.recv().await {
        {
            let now = Instant::now();
            let mut e = shell.engine.borrow_mut();
            e.handle_push_result(now, first);
            // Whatever else arrived meanwhile goes in the same flush.
            while let Ok(o) = outcomes.try_recv() {
                e.handle_push_result(now, o);
            }
        }
        flush(&shell).await;
    }
}

async fn recv_loop(shell: Rc<Shell>) {
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        match shell.own.recv_from(&mut buf).await {
            Ok((n, from)) => {
                shell.engine.borrow_mut().handle_datagram(
                    Instant::now(),
                    from,
                    Flow::Udp,
                    &buf[..n],
                );
                flush(&shell).await;
            }
            Err(e) => {
                // A UDP socket's receive errors are transient (e.g. a
                // queued ICMP error); keep serving.
                tracing::debug!(shard = shell.id, error = %e, "recv_from failed");
            }
        }
    }
}

/// Writes out everything the engine queued and hands its events to the
/// sink. Sends are awaited one by one; io_uring batches the submissions of
/// one executor tick. Bytes for a connection are queued on it (its task
/// writes them) or handed to the shard that holds it.
async fn flush(shell: &Shell) {
    let mut out = shell.spare.borrow_mut().pop().unwrap_or_default();
    let sink = &*shell.sink;
    loop {
        let mut gone = Vec::new();
        {
            let mut e = shell.engine.borrow_mut();
            while let Some(t) = e.poll_transmit() {
                out.push(t);
            }
            // Events are handed on at once: the sink never blocks.
            while let Some(ev) = e.poll_event() {
                handle_event(shell, sink, ev);
            }
            while let Some(p) = e.poll_push() {
                sink.push(PushRequest::from_push(p, unix_ms()));
            }
        }
        for t in out.drain(..) {
            let via = match t.flow {
                Flow::Udp => &shell.own,
                Flow::SharedUdp => shell.shared.as_ref().unwrap_or(&shell.own),
                Flow::Tcp(id) | Flow::Tls(id) => {
                    if !shell.write_stream(id, t.payload) {
                        gone.push(t.flow);
                    }
                    continue;
                }
            };
            if let Err(e) = via.send_to(&t.payload, t.dest).await {
                tracing::debug!(dest = %t.dest, error = %e, "send_to failed");
                shell
                    .engine
                    .borrow_mut()
                    .handle_transport_error(Instant::now(), t.dest);
            }
        }
        gone.append(&mut shell.gone.borrow_mut());
        if gone.is_empty() {
            break;
        }
        // A connection that closed before its owner heard of it: the
        // bindings on it go now, and what that produces is sent.
        let now = Instant::now();
        let mut e = shell.engine.borrow_mut();
        for f in gone {
            e.handle_flow_closed(now, f);
        }
    }
    shell.spare.borrow_mut().push(out);
}

fn handle_event(shell: &Shell, sink: &dyn EventSink, ev: Event) {
    match ev {
        Event::SaveRegistration { account, saved } => sink.save_registration(account, saved),
        Event::Registration { account, status } => shell.log_registration(account, &status),
        Event::ParseError { .. } => {}
        Event::AuthFailed { source, aor } => {
            if shell.log_budget.borrow_mut().allow(Instant::now()) {
                tracing::warn!("auth failed: source={source} aor={aor}");
            }
        }
        Event::FlowBound { flow } => shell.mark_bound(flow),
        Event::Connect {
            flow,
            dest,
            server_name,
        } => shell.connect(flow, dest, server_name),
        Event::RegistrarDown {
            addr,
            error,
            accounts,
        } => tracing::warn!(
            shard = shell.id,
            "registrar down: {addr} ({error}); {accounts} accounts no longer counted as registered, probing every few seconds"
        ),
        Event::RegistrarUp {
            addr,
            down_for,
            accounts,
        } => tracing::info!(
            shard = shell.id,
            "registrar up again: {addr} after {}s; registering {accounts} accounts again",
            down_for.as_secs()
        ),
        Event::DeviceSaved {
            account,
            device,
            provider,
            prid,
            param,
        } => sink.device_saved(DeviceRecord {
            account,
            device,
            provider,
            prid,
            param,
            updated_unix: unix_at(Instant::now()),
        }),
        Event::DeviceRemoved { account, device } => sink.device_removed(account, &device),
        Event::AuthBlocked {
            source,
            aor,
            failures,
            pause,
            whole_source,
        } => {
            // One line per block, with the address first, for
            // fail2ban-style filters: `auth blocked: source=<ip>`.
            tracing::warn!(
                "auth blocked: source={source} aor={aor} failures={failures} refused_for={}s scope={}",
                pause.as_secs().max(1),
                if whole_source { "source" } else { "account" }
            )
        }
        Event::CallOutcome {
            account,
            call_id,
            caller,
            outcome,
            reason,
            started,
            ended,
        } => sink.call_outcome(CallOutcomeRecord {
            call_id,
            account,
            caller,
            outcome: outcome.as_str().to_owned(),
            reason,
            started_unix: unix_at(started),
            ended_unix: unix_at(ended),
        }),
    }
}

fn publish(engine: &Engine, m: &ShardMetrics) {
    let mut counts = [0u64; 6];
    engine.for_each_status(|_, s| counts[state_index(&s)] += 1);
    let mut snap = m.snapshot.lock().unwrap_or_else(|p| p.into_inner());
    snap.stats = engine.stats().clone();
    snap.registrations = counts;
    snap.accounts = engine.account_count() as u64;
    let (c, s) = engine.transaction_count();
    snap.transactions = (c as u64, s as u64);
    snap.calls = engine.call_count() as u64;
    let l = engine.call_latency();
    snap.call_latency = vec![
        l.push.clone(),
        l.device_register.clone(),
        l.ringing.clone(),
        l.answer.clone(),
    ];
    match &mut snap.register_latency {
        Some(h) => h.clone_from(engine.register_latency()),
        None => snap.register_latency = Some(engine.register_latency().clone()),
    }
}

/// Index into [`super::STATE_NAMES`].
pub(super) fn state_index(s: &RegStatus) -> usize {
    match s {
        RegStatus::Pending => 0,
        RegStatus::Registering => 1,
        RegStatus::Registered { .. } => 2,
        RegStatus::Retrying { .. } => 3,
        RegStatus::Failed { .. } => 4,
        RegStatus::Unregistered => 5,
    }
}

/// Wall-clock milliseconds now (the engine has no clock: the shell stamps
/// what leaves it).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The Unix second of a monotonic instant in the recent past.
fn unix_at(at: Instant) -> i64 {
    let ago = Instant::now().saturating_duration_since(at);
    let wall = std::time::SystemTime::now() - ago;
    wall.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
