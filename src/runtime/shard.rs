//! One shard: a glommio executor pinned to a core, owning an [`Engine`],
//! its UDP socket and its slice of the accounts. The shell is thin: it feeds
//! datagrams and the clock into the engine and writes out what the engine
//! wants sent.

use super::{Control, EventSink, Router, ShardMetrics};
use crate::engine::{Engine, EngineConfig, Event, Flow};
use crate::push::PushRequest;
use crate::store::{CallOutcomeRecord, DeviceRecord};
use crate::RegStatus;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::net::UdpSocket;
use glommio::timer::sleep;
use std::cell::RefCell;
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

/// A datagram handed from the shard that received it on the shared port to
/// the shard that owns it.
pub(super) type Forward = (std::net::SocketAddr, Vec<u8>);

pub(super) struct ShardCtx {
    pub id: usize,
    pub socket: socket2::Socket,
    pub shared: Option<socket2::Socket>,
    pub mesh: Option<MeshBuilder<Forward, Full>>,
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
        router,
        engine,
        control,
        outcomes,
        sink,
        metrics,
    } = ctx;
    let sock = Rc::new(Sockets {
        own: UdpSocket::from(socket),
        shared: shared.map(UdpSocket::from),
        spare: RefCell::new(Vec::new()),
    });
    let engine = Rc::new(RefCell::new(Engine::new(engine, Instant::now())));
    let mut tasks = Vec::new();
    let mut senders = None;
    if let Some(mesh) = mesh {
        match mesh.join().await {
            Ok((tx, mut rx)) => {
                for (_, stream) in rx.streams() {
                    let (engine, sock, sink) = (engine.clone(), sock.clone(), sink.clone());
                    tasks.push(glommio::spawn_local(async move {
                        while let Some((from, data)) = stream.recv().await {
                            engine.borrow_mut().handle_datagram(
                                Instant::now(),
                                from,
                                Flow::SharedUdp,
                                &data,
                            );
                            flush(&engine, &sock, &*sink).await;
                        }
                    }));
                }
                senders = Some(Rc::new(tx));
            }
            Err(e) => {
                tracing::error!(shard = id, error = %e, "channel mesh join failed: no forwarding")
            }
        }
    }
    metrics.alive.store(true, Ordering::Release);

    tasks.push(glommio::spawn_local(outcome_loop(
        outcomes,
        engine.clone(),
        sock.clone(),
        sink.clone(),
    )));
    tasks.push(glommio::spawn_local(recv_loop(
        id,
        engine.clone(),
        sock.clone(),
        sink.clone(),
    )));
    if sock.shared.is_some() {
        tasks.push(glommio::spawn_local(shared_loop(
            id,
            engine.clone(),
            sock.clone(),
            sink.clone(),
            router,
            senders,
            metrics.clone(),
        )));
    }
    let mut last_metrics = Instant::now() - METRICS_EVERY;
    let mut last_reseed = Instant::now();
    let mut shutdown: Option<(Instant, crossbeam_channel::Sender<()>)> = None;
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
                Control::Shutdown { unregister, done } => {
                    if unregister {
                        e.unregister_all(now);
                    }
                    // Give unregistrations a moment to be answered.
                    let grace = if unregister {
                        Duration::from_secs(2)
                    } else {
                        Duration::ZERO
                    };
                    shutdown = Some((now + grace, done));
                }
            }
        }
        engine.borrow_mut().handle_timeout(now);
        flush(&engine, &sock, &*sink).await;
        if now.duration_since(last_reseed) >= RESEED_EVERY {
            last_reseed = now;
            match super::server::os_key() {
                Ok(key) => engine.borrow_mut().handle_reseed(key),
                Err(e) => tracing::warn!(shard = id, error = %e, "cannot reseed the CSPRNG"),
            }
        }
        if now.duration_since(last_metrics) >= METRICS_EVERY {
            last_metrics = now;
            publish(&engine.borrow(), &metrics);
        }
        if let Some((at, _)) = &shutdown {
            if now >= *at {
                break;
            }
        }
        let wait = engine.borrow().poll_timeout().map_or(TICK, |d| {
            d.saturating_duration_since(Instant::now()).min(TICK)
        });
        sleep(wait.max(Duration::from_micros(200))).await;
    }
    drop(tasks);
    publish(&engine.borrow(), &metrics);
    metrics.alive.store(false, Ordering::Release);
    if let Some((_, done)) = shutdown {
        let _ = done.send(());
    }
}

/// This shard's sockets, and the buffers its tasks reuse between flushes.
struct Sockets {
    /// Its own port (upstream traffic).
    own: UdpSocket,
    /// The shared phone port.
    shared: Option<UdpSocket>,
    /// Spare transmit lists. Several tasks of the shard may be flushing at
    /// once (they interleave at each send), so this is a pool rather than
    /// one buffer; in steady state a flush allocates nothing.
    spare: RefCell<Vec<Vec<crate::engine::Transmit>>>,
}

/// The shared phone port: handle what this shard owns, forward the rest
/// to its owner over the mesh (dropped and counted if the owner's queue is
/// full: UDP semantics, the sender retransmits).
async fn shared_loop(
    shard: usize,
    engine: Rc<RefCell<Engine>>,
    sock: Rc<Sockets>,
    sink: Arc<dyn EventSink>,
    router: Arc<Router>,
    senders: Option<Rc<Senders<Forward>>>,
    metrics: Arc<ShardMetrics>,
) {
    let Some(shared) = sock.shared.as_ref() else {
        return;
    };
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let (n, from) = match shared.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(shard, error = %e, "shared recv_from failed");
                continue;
            }
        };
        let data = &buf[..n];
        if let (Some(owner), Some(tx)) = (router.owner(data), senders.as_ref()) {
            if owner != shard {
                if tx.try_send_to(owner, (from, data.to_vec())).is_ok() {
                    metrics.forwarded.fetch_add(1, Ordering::Relaxed);
                } else {
                    metrics.forward_dropped.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
        }
        engine
            .borrow_mut()
            .handle_datagram(Instant::now(), from, Flow::SharedUdp, data);
        flush(&engine, &sock, &*sink).await;
    }
}

/// Push outcomes, as soon as they come: the push client's thread wakes
/// this task (glommio takes wakes from foreign threads through its
/// eventfd), so the engine's answer to the caller (`180` with
/// `Push-Notification-Sent`, or the `480` when every push failed) leaves
/// at once instead of at the next tick.
async fn outcome_loop(
    mut outcomes: tokio::sync::mpsc::UnboundedReceiver<crate::push::PushOutcome>,
    engine: Rc<RefCell<Engine>>,
    sock: Rc<Sockets>,
    sink: Arc<dyn EventSink>,
) {
    while let Some(first) = outcomes.recv().await {
        {
            let now = Instant::now();
            let mut e = engine.borrow_mut();
            e.handle_push_result(now, first);
            // Whatever else arrived meanwhile goes in the same flush.
            while let Ok(o) = outcomes.try_recv() {
                e.handle_push_result(now, o);
            }
        }
        flush(&engine, &sock, &*sink).await;
    }
}

async fn recv_loop(
    shard: usize,
    engine: Rc<RefCell<Engine>>,
    sock: Rc<Sockets>,
    sink: Arc<dyn EventSink>,
) {
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        match sock.own.recv_from(&mut buf).await {
            Ok((n, from)) => {
                engine
                    .borrow_mut()
                    .handle_datagram(Instant::now(), from, Flow::Udp, &buf[..n]);
                flush(&engine, &sock, &*sink).await;
            }
            Err(e) => {
                // A UDP socket's receive errors are transient (e.g. a
                // queued ICMP error); keep serving.
                tracing::debug!(shard, error = %e, "recv_from failed");
            }
        }
    }
}

/// Writes out everything the engine queued and hands its events to the
/// sink. Sends are awaited one by one; io_uring batches the submissions of
/// one executor tick.
async fn flush(engine: &RefCell<Engine>, sock: &Sockets, sink: &dyn EventSink) {
    let mut out = sock.spare.borrow_mut().pop().unwrap_or_default();
    {
        let mut e = engine.borrow_mut();
        while let Some(t) = e.poll_transmit() {
            out.push(t);
        }
        // Events are handed on at once: the sink never blocks.
        while let Some(ev) = e.poll_event() {
            match ev {
                Event::SaveRegistration { account, saved } => {
                    sink.save_registration(account, saved)
                }
                Event::Registration { .. } | Event::ParseError { .. } => {}
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
                // wired by the TCP/TLS front
                Event::FlowBound { .. } => {}
            }
        }
        while let Some(p) = e.poll_push() {
            sink.push(PushRequest::from_push(p, unix_ms()));
        }
    }
    for t in out.drain(..) {
        let via = match t.flow {
            Flow::Udp => &sock.own,
            Flow::SharedUdp => sock.shared.as_ref().unwrap_or(&sock.own),
            // Streams belong to the TCP/TLS front, which is not built yet.
            Flow::Tcp(_) | Flow::Tls(_) => continue,
        };
        if let Err(e) = via.send_to(&t.payload, t.dest).await {
            tracing::debug!(dest = %t.dest, error = %e, "send_to failed");
            engine
                .borrow_mut()
                .handle_transport_error(Instant::now(), t.dest);
        }
    }
    sock.spare.borrow_mut().push(out);
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
