//! The push client: hands [`PushRequest`]s to the mediator and reports
//! each one's fate as a [`PushOutcome`].
//!
//! ```text
//!  shard ── submit(req) ──▶ at most push.max_in_flight accepted, never blocks; full: Err(req)
//!                │
//!                ├─ external mediator (push.mediator_url): one task per push on the
//!                │  client's own small tokio runtime (thread `sipis-push`), waiting
//!                │  (at most push.queue) for one of push.connections HTTP/1.1
//!                │  keep-alive connections: POST <push.mediator_url>, JSON body,
//!                │  Authorization: Bearer <push.token>; retries, push.timeout
//!                │
//!                └─ in-process mediator (PushClient::in_process): one task per push
//!                   on the mediator's runtime calling Mediator::send: no HTTP, no JSON
//!                                               │
//!                        sink(PushOutcome) ◀────┘ (into the owning shard's channel)
//! ```
//!
//! Many pushes are in flight at once without a thread each: APNs answers
//! in 50–300 ms and a node pushes thousands of calls per second, so
//! 100 ms × 2 000/s is 200 pushes waiting for their answer at any time.
//!
//! Every request accepted by [`PushClient::submit`] ends in exactly one call
//! of the sink, whatever happens: answered, given up after `push.retries`
//! further attempts, still waiting when the client shuts down, or dropped
//! with the runtime (a guard answers it then). The sink runs on the
//! client's runtime thread (on the submitting thread when no mediator is
//! configured) and should only hand the outcome on.
//!
//! An attempt is repeated on what may pass: connection errors, timeouts,
//! 408, 429 and 5xx. A timed-out attempt may have reached the mediator, so
//! the same push (same [`PushRequest::id`]) can arrive twice; the id is
//! there to tell.
//!
//! Back-pressure: a push beyond `push.max_in_flight` (accepted and not yet
//! answered) or beyond `push.queue` (waiting for a connection) is refused
//! at once ([`PushClient::try_submit`] says which); the caller answers it
//! [`PushResult::Failed`], so the call ends (`480`) instead of waiting for
//! a device that was never woken. Nothing queues without bound.

use super::http1::{Endpoint, ExchangeError, Pool, MAX_ANSWER_BYTES};
use super::mediator::Mediator;
use super::{PushAnswer, PushOutcome, PushRequest, PushResult};
use crate::metrics::{counter, gauge, summary_from_histogram};
use hdrhistogram::Histogram;
use std::fmt;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// `[push]`: where and how sipis sends pushes.
#[derive(Clone, PartialEq, Eq)]
pub struct PushConfig {
    /// The mediator's endpoint (`http://host:port/push` or `https://…`).
    /// `None` with `mediator.in_process`: the in-process mediator, called
    /// directly; `None` otherwise: pushes are not sent (counted as failed).
    pub mediator_url: Option<String>,
    /// Bearer token presented to the mediator.
    pub token: Option<String>,
    /// One HTTP exchange with the mediator.
    pub timeout: Duration,
    /// Further attempts after a failed exchange (connection error, 5xx).
    pub retries: u32,
    /// Most keep-alive connections to the mediator; each carries one push
    /// at a time, so this bounds the pushes on the wire.
    pub connections: u32,
    /// Most pushes accepted and not yet answered (waiting for a
    /// connection, on the wire, retrying): beyond it new pushes fail at
    /// once.
    pub max_in_flight: u32,
    /// Most of those waiting for a free connection.
    pub queue: u32,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            mediator_url: None,
            token: None,
            timeout: Duration::from_secs(5),
            retries: 2,
            connections: 512,
            max_in_flight: 2_000,
            queue: 10_000,
        }
    }
}

impl fmt::Debug for PushConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushConfig")
            .field("mediator_url", &self.mediator_url)
            // A secret: never in logs or panics.
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("connections", &self.connections)
            .field("max_in_flight", &self.max_in_flight)
            .field("queue", &self.queue)
            .finish()
    }
}

/// Back-off before the first repeated attempt; it doubles per attempt up to
/// [`MAX_BACKOFF`]. Short on purpose: a call is ringing meanwhile.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long [`PushClient::shutdown`] waits for pushes on the wire beyond
/// one exchange's timeout.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(1);
/// The reason given to pushes still waiting when the client shuts down.
pub const SHUTDOWN_REASON: &str = "push client shut down before sending";
/// The reason given to a push whose task was dropped with the runtime.
const DROPPED_REASON: &str = "push client shut down before the mediator answered";
/// The reason given to every push when there is no mediator to post to.
pub const NO_MEDIATOR_REASON: &str = "push.mediator_url is not set";

/// Why the push client cannot start.
#[derive(Debug)]
#[non_exhaustive]
pub enum PushClientError {
    /// `push.mediator_url` is not a usable `http://`/`https://` URL.
    BadUrl { url: String, reason: String },
    /// A setting the client cannot work with (`key` names it).
    Invalid { key: &'static str, message: String },
    /// The client's runtime thread could not be started.
    Spawn(io::Error),
}

impl fmt::Display for PushClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushClientError::BadUrl { url, reason } => write!(
                f,
                "push.mediator_url: {reason}, got {:?}",
                crate::url::redact_url(url)
            ),
            PushClientError::Invalid { key, message } => write!(f, "{key}: {message}"),
            PushClientError::Spawn(e) => write!(f, "cannot start the push client's thread: {e}"),
        }
    }
}

impl std::error::Error for PushClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PushClientError::Spawn(e) => Some(e),
            _ => None,
        }
    }
}

/// Why [`PushClient::try_submit`] refused a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `push.max_in_flight` pushes are accepted and not yet answered.
    InFlight,
    /// `push.queue` pushes are waiting for a connection.
    Queue,
}

impl Refusal {
    /// The reason given to the refused push's outcome.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::InFlight => "too many pushes in flight (push.max_in_flight)",
            Refusal::Queue => "push queue full (push.queue)",
        }
    }
}

/// Counters of a [`PushClient`] since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushStats {
    /// Outcomes by result. `failed` includes pushes never answered
    /// (unreachable mediator, timeouts, shutdown, no mediator configured).
    pub sent: u64,
    pub token_dead: u64,
    pub failed: u64,
    pub rejected: u64,
    /// Submits refused because the queue was full (no outcome: the caller
    /// got its request back).
    pub queue_full: u64,
    /// Submits refused because `push.max_in_flight` pushes were in flight
    /// (no outcome either).
    pub in_flight_full: u64,
    /// Attempts repeated after a failed one.
    pub retries: u64,
    /// Requests waiting for a connection now.
    pub queued: u64,
    /// Requests accepted and not yet answered now.
    pub in_flight: u64,
}

/// The push client. Cheap to share by reference across threads: `submit`
/// takes `&self`.
pub struct PushClient {
    shared: Arc<Shared>,
    backend: Backend,
}

enum Backend {
    /// No mediator URL and none in process: every push fails at once.
    Off,
    /// An external mediator over HTTP/1.1, on the client's own runtime.
    Http {
        runtime: tokio::runtime::Handle,
        pool: Arc<Pool>,
        /// The runtime's thread; it ends once stopped and drained.
        thread: Option<JoinHandle<()>>,
        timeout: Duration,
    },
    /// The in-process mediator, on its runtime.
    InProcess {
        runtime: tokio::runtime::Handle,
        mediator: Arc<Mediator>,
    },
}

/// What the tasks and the client share.
struct Shared {
    sink: Box<dyn Fn(PushOutcome) + Send + Sync>,
    /// `true` once stopping: wakes every task waiting or backing off.
    stop: watch::Sender<bool>,
    stopping: AtomicBool,
    max_in_flight: u64,
    queue: u64,
    in_flight: AtomicU64,
    queued: AtomicU64,
    sent: AtomicU64,
    token_dead: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    queue_full: AtomicU64,
    in_flight_full: AtomicU64,
    retries: AtomicU64,
    /// `push.retries`: further attempts after a failed one.
    retry_limit: u32,
    /// Submit to the mediator's answer, in µs, of pushes it answered.
    latency: Mutex<Histogram<u64>>,
}

/// How one push ended, before it becomes a [`PushOutcome`].
struct Delivery {
    result: PushResult,
    error: Option<String>,
    /// The mediator answered with a [`PushAnswer`] (its latency counts).
    answered: bool,
}

impl Delivery {
    fn failed(why: impl Into<String>) -> Delivery {
        Delivery {
            result: PushResult::Failed,
            error: Some(why.into()),
            answered: false,
        }
    }
}

/// One HTTP exchange's verdict.
enum Attempt {
    Done(Delivery),
    /// Worth another attempt; the reason is kept for the final error.
    Retry(String),
}

/// An accepted push until its outcome is out: finishing it hands the
/// outcome to the sink; dropping it unfinished (its task dropped with the
/// runtime) does too, so no push is ever left without one.
struct Pending {
    req: Option<PushRequest>,
    submitted: Instant,
    shared: Arc<Shared>,
}

impl Pending {
    fn finish(mut self, d: Delivery) {
        self.end(d);
    }

    /// The outcome out, then the push no longer counts as in flight.
    fn end(&mut self, d: Delivery) {
        if let Some(req) = self.req.take() {
            self.shared.finish(&req, d, Some(self.submitted));
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn req(&self) -> &PushRequest {
        self.req.as_ref().expect("a pending push has its request")
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.end(Delivery::failed(DROPPED_REASON));
    }
}

impl PushClient {
    /// Starts the client for `cfg.mediator_url`: a small tokio runtime on
    /// one thread, connections opened as the load needs them. Without a
    /// URL nothing starts and every submitted push is answered
    /// [`PushResult::Failed`] ([`NO_MEDIATOR_REASON`]) at once.
    pub fn start(
        cfg: &PushConfig,
        sink: impl Fn(PushOutcome) + Send + Sync + 'static,
    ) -> Result<PushClient, PushClientError> {
        let shared = Shared::new(cfg, Box::new(sink));
        let Some(url) = cfg.mediator_url.clone() else {
            return Ok(PushClient {
                shared,
                backend: Backend::Off,
            });
        };
        if let Some(reason) = crate::url::http_url_problem(&url) {
            return Err(PushClientError::BadUrl { url, reason });
        }
        check(cfg)?;
        let endpoint = Endpoint::new(&url).map_err(|reason| PushClientError::BadUrl {
            url: url.clone(),
            reason,
        })?;
        let authorization = cfg.token.as_ref().map(|t| format!("Bearer {t}"));
        let pool = Arc::new(Pool::new(
            endpoint,
            cfg.connections as usize,
            authorization.as_deref(),
        ));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(PushClientError::Spawn)?;
        let handle = runtime.handle().clone();
        let (s, timeout) = (shared.clone(), cfg.timeout);
        let thread = std::thread::Builder::new()
            .name("sipis-push".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut stop = s.stop.subscribe();
                    let _ = stop.wait_for(|v| *v).await;
                    // Pushes on the wire get their exchange (bounded by
                    // push.timeout); the rest were answered on the stop.
                    let until = Instant::now() + timeout + SHUTDOWN_SLACK;
                    while s.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < until {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                });
                // Tasks still alive are dropped here; their guards answer.
                drop(runtime);
            })
            .map_err(PushClientError::Spawn)?;
        Ok(PushClient {
            shared,
            backend: Backend::Http {
                runtime: handle,
                pool,
                thread: Some(thread),
                timeout: cfg.timeout,
            },
        })
    }

    /// A client that hands pushes straight to the in-process `mediator`
    /// (`Mediator::send` as a task on `runtime`, the mediator's own): no
    /// HTTP, no JSON. `cfg.max_in_flight` bounds the pushes at once; the
    /// mediator's `concurrency` bounds those talking to APNs/FCM, the rest
    /// wait for it within its deadline.
    pub fn in_process(
        cfg: &PushConfig,
        mediator: Arc<Mediator>,
        runtime: tokio::runtime::Handle,
        sink: impl Fn(PushOutcome) + Send + Sync + 'static,
    ) -> Result<PushClient, PushClientError> {
        check(cfg)?;
        Ok(PushClient {
            shared: Shared::new(cfg, Box::new(sink)),
            backend: Backend::InProcess { runtime, mediator },
        })
    }

    /// Accepts a push; never blocks. `Err` gives the request back when
    /// `push.max_in_flight` or `push.queue` is reached: the caller counts
    /// it as failed. An `Ok` push ends in exactly one sink call.
    // The request moves in and, refused, comes back as it was: boxing it
    // for a smaller Err would cost an allocation on every push.
    #[allow(clippy::result_large_err)]
    pub fn submit(&self, req: PushRequest) -> Result<(), PushRequest> {
        self.try_submit(req).map_err(|(req, _)| req)
    }

    /// [`PushClient::submit`], saying why a push was refused.
    #[allow(clippy::result_large_err)]
    pub fn try_submit(&self, req: PushRequest) -> Result<(), (PushRequest, Refusal)> {
        let s = &self.shared;
        let (runtime, pool) = match &self.backend {
            Backend::Off => {
                s.finish(&req, Delivery::failed(NO_MEDIATOR_REASON), None);
                return Ok(());
            }
            Backend::Http { runtime, pool, .. } => (runtime, Some(pool)),
            Backend::InProcess { runtime, .. } => (runtime, None),
        };
        if s.in_flight.fetch_add(1, Ordering::AcqRel) >= s.max_in_flight {
            s.in_flight.fetch_sub(1, Ordering::AcqRel);
            s.in_flight_full.fetch_add(1, Ordering::Relaxed);
            return Err((req, Refusal::InFlight));
        }
        if pool.is_some() && s.queued.fetch_add(1, Ordering::AcqRel) >= s.queue {
            s.queued.fetch_sub(1, Ordering::AcqRel);
            s.in_flight.fetch_sub(1, Ordering::AcqRel);
            s.queue_full.fetch_add(1, Ordering::Relaxed);
            return Err((req, Refusal::Queue));
        }
        let pending = Pending {
            req: Some(req),
            submitted: Instant::now(),
            shared: s.clone(),
        };
        match &self.backend {
            Backend::Http { pool, timeout, .. } => {
                runtime.spawn(deliver(pool.clone(), pending, *timeout));
            }
            Backend::InProcess { mediator, .. } => {
                let mediator = mediator.clone();
                runtime.spawn(async move {
                    let a = mediator.send(pending.req()).await;
                    pending.finish(Delivery {
                        result: a.result,
                        error: a.error,
                        answered: true,
                    });
                });
            }
            Backend::Off => unreachable!("answered above"),
        }
        Ok(())
    }

    /// The counters so far.
    pub fn stats(&self) -> PushStats {
        let s = &self.shared;
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PushStats {
            sent: n(&s.sent),
            token_dead: n(&s.token_dead),
            failed: n(&s.failed),
            rejected: n(&s.rejected),
            queue_full: n(&s.queue_full),
            in_flight_full: n(&s.in_flight_full),
            retries: n(&s.retries),
            queued: n(&s.queued),
            in_flight: n(&s.in_flight),
        }
    }

    /// A copy of the latency histogram: µs from `submit` to the mediator's
    /// answer, of pushes it answered with a [`PushAnswer`].
    pub fn latency(&self) -> Histogram<u64> {
        self.shared.latency().clone()
    }

    /// Appends the client's metrics in Prometheus text format:
    /// `sipis_push_total{result=...}`, `sipis_push_queue_full_total`,
    /// `sipis_push_in_flight_full_total`, `sipis_push_retries_total`,
    /// `sipis_push_queued`, `sipis_push_in_flight`,
    /// `sipis_push_connections_idle` and the `sipis_push_latency_seconds`
    /// summary.
    pub fn render_metrics(&self, out: &mut String) {
        let st = self.stats();
        for (result, n) in [
            (PushResult::Sent, st.sent),
            (PushResult::TokenDead, st.token_dead),
            (PushResult::Failed, st.failed),
            (PushResult::Rejected, st.rejected),
        ] {
            counter(
                out,
                "sipis_push_total",
                "Pushes by outcome (failed includes those never answered by the mediator).",
                &[("result", result.as_str())],
                n,
            );
        }
        counter(
            out,
            "sipis_push_queue_full_total",
            "Pushes refused because the push queue was full.",
            &[],
            st.queue_full,
        );
        counter(
            out,
            "sipis_push_in_flight_full_total",
            "Pushes refused because push.max_in_flight pushes were in flight.",
            &[],
            st.in_flight_full,
        );
        counter(
            out,
            "sipis_push_retries_total",
            "Repeated attempts to post a push to the mediator.",
            &[],
            st.retries,
        );
        gauge(
            out,
            "sipis_push_queued",
            "Pushes waiting for a connection to the mediator.",
            &[],
            st.queued,
        );
        gauge(
            out,
            "sipis_push_in_flight",
            "Pushes accepted and not yet answered.",
            &[],
            st.in_flight,
        );
        if let Backend::Http { pool, .. } = &self.backend {
            gauge(
                out,
                "sipis_push_connections_idle",
                "Keep-alive connections to the mediator open and unused.",
                &[],
                pool.idle() as u64,
            );
        }
        summary_from_histogram(
            out,
            "sipis_push_latency_seconds",
            "Time from submitting a push to the mediator's answer.",
            &[],
            &self.shared.latency(),
            1e-6,
        );
    }

    /// Stops the client: pushes still waiting for a connection are
    /// answered [`PushResult::Failed`] ([`SHUTDOWN_REASON`]), a push on the
    /// wire gets its current exchange (at most `push.timeout`) and no
    /// further attempt. Waits at most `push.timeout` + 1 s; a push still
    /// unanswered then is answered failed as the runtime goes.
    pub fn shutdown(mut self) {
        self.close();
        if let Backend::Http { thread, .. } = &mut self.backend {
            if let Some(t) = thread.take() {
                // The thread bounds its own wait; a panic there was the
                // sink's and is already caught and logged.
                let _ = t.join();
            }
        }
    }

    /// Tells every task to stop (once; again does nothing).
    fn close(&self) {
        if !self.shared.stopping.swap(true, Ordering::SeqCst) {
            self.shared.stop.send_replace(true);
        }
    }
}

impl Drop for PushClient {
    /// Like [`PushClient::shutdown`] without waiting.
    fn drop(&mut self) {
        self.close();
    }
}

impl fmt::Debug for PushClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (backend, workers) = match &self.backend {
            Backend::Off => ("off", 0),
            Backend::Http { .. } => ("http", 1),
            Backend::InProcess { .. } => ("in_process", 0),
        };
        f.debug_struct("PushClient")
            .field("backend", &backend)
            .field("workers", &workers)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Refuses settings the client cannot work with, naming the key.
fn check(cfg: &PushConfig) -> Result<(), PushClientError> {
    let invalid = |key, message: &str| {
        Err(PushClientError::Invalid {
            key,
            message: message.to_owned(),
        })
    };
    if cfg.connections == 0 {
        return invalid("push.connections", "must be at least 1");
    }
    if cfg.max_in_flight == 0 {
        return invalid("push.max_in_flight", "must be at least 1");
    }
    if cfg.queue == 0 {
        return invalid("push.queue", "must be at least 1");
    }
    if cfg.timeout.is_zero() {
        return invalid("push.timeout", "must be more than 0");
    }
    // The token goes into a header line: a CR/LF would split it.
    if cfg
        .token
        .as_deref()
        .is_some_and(|t| t.is_empty() || t.chars().any(|c| c.is_control() || c == ' '))
    {
        return invalid(
            "push.token",
            "must be non-empty, without spaces or control characters",
        );
    }
    Ok(())
}

impl Shared {
    fn new(cfg: &PushConfig, sink: Box<dyn Fn(PushOutcome) + Send + Sync>) -> Arc<Shared> {
        Arc::new(Shared {
            sink,
            stop: watch::channel(false).0,
            stopping: AtomicBool::new(false),
            max_in_flight: u64::from(cfg.max_in_flight.max(1)),
            queue: u64::from(cfg.queue.max(1)),
            in_flight: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            token_dead: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            queue_full: AtomicU64::new(0),
            in_flight_full: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            retry_limit: cfg.retries,
            // Auto-resizing, 3 significant digits: exact enough for
            // quantiles, and a multi-second outlier is still recorded.
            latency: Mutex::new(Histogram::new(3).expect("3 significant digits are valid")),
        })
    }

    fn latency(&self) -> std::sync::MutexGuard<'_, Histogram<u64>> {
        // Recording cannot leave the histogram half-updated: a poisoned
        // lock still holds good data.
        self.latency.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts the outcome and hands it to the sink (the one place that
    /// does, so that each push gets exactly one outcome).
    fn finish(&self, req: &PushRequest, d: Delivery, submitted: Option<Instant>) {
        let counter = match d.result {
            PushResult::Sent => &self.sent,
            PushResult::TokenDead => &self.token_dead,
            PushResult::Failed => &self.failed,
            PushResult::Rejected => &self.rejected,
        };
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if let (true, Some(t)) = (d.answered, submitted) {
            let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
            let _ = self.latency().record(us);
        }
        // Failures come in floods when the mediator is down: log the 1st,
        // 2nd, 4th, 8th... of each kind, the counters have the rest.
        if matches!(d.result, PushResult::Failed | PushResult::Rejected) && n.is_power_of_two() {
            tracing::warn!(
                push = %req.id,
                account = req.account,
                device = %req.device.id,
                result = d.result.as_str(),
                error = d.error.as_deref().unwrap_or(""),
                count = n,
                "push not delivered"
            );
        }
        let outcome = PushOutcome {
            id: req.id.clone(),
            account: req.account,
            device: req.device.id.clone(),
            result: d.result,
            error: d.error,
        };
        if catch_unwind(AssertUnwindSafe(|| (self.sink)(outcome))).is_err() {
            tracing::error!(push = %req.id, "the push outcome sink panicked");
        }
    }
}

/// One push to the external mediator: wait for a connection, then up to
/// 1 + `push.retries` attempts with back-off in between.
async fn deliver(pool: Arc<Pool>, pending: Pending, timeout: Duration) {
    let shared = pending.shared.clone();
    let mut stop = shared.stop.subscribe();
    let body = match serde_json::to_vec(pending.req()) {
        Ok(b) => b,
        Err(e) => {
            shared.queued.fetch_sub(1, Ordering::AcqRel);
            return pending.finish(Delivery::failed(format!(
                "cannot encode the push as JSON: {e}"
            )));
        }
    };
    let first = tokio::select! {
        biased;
        _ = stop.wait_for(|v| *v) => None,
        permit = pool.slot() => Some(permit),
    };
    shared.queued.fetch_sub(1, Ordering::AcqRel);
    let Some(permit) = first else {
        return pending.finish(Delivery::failed(SHUTDOWN_REASON));
    };
    let mut permit = Some(permit);
    let mut last = String::new();
    for attempt in 0..=shared.retry_limit {
        if attempt > 0 {
            shared.retries.fetch_add(1, Ordering::Relaxed);
            // Sleeps the back-off and waits for a connection, or ends at
            // once at shutdown.
            let slot = async {
                tokio::time::sleep(backoff(attempt)).await;
                pool.slot().await
            };
            permit = tokio::select! {
                biased;
                _ = stop.wait_for(|v| *v) => None,
                p = slot => Some(p),
            };
            if permit.is_none() {
                return pending.finish(Delivery::failed(format!(
                    "push client shut down while retrying ({last})"
                )));
            }
        }
        let answered = tokio::time::timeout(timeout, pool.post(&body)).await;
        drop(permit.take());
        let verdict = match answered {
            Err(_) => Attempt::Retry(format!(
                "no answer from the mediator within {} (push.timeout)",
                crate::duration::format_duration(timeout)
            )),
            Ok(Err(ExchangeError::TooLarge)) => Attempt::Done(Delivery::failed(format!(
                "the mediator's answer is larger than {MAX_ANSWER_BYTES} bytes"
            ))),
            Ok(Err(e)) => Attempt::Retry(format!("cannot reach the mediator: {e}")),
            Ok(Ok(a)) => judge(
                &pending.req().id,
                a.status,
                &String::from_utf8_lossy(&a.body),
                pool.authorized(),
            ),
        };
        match verdict {
            Attempt::Done(d) => return pending.finish(d),
            Attempt::Retry(why) => last = why,
        }
    }
    let attempts = shared.retry_limit + 1;
    let plural = if attempts == 1 { "" } else { "s" };
    pending.finish(Delivery::failed(format!(
        "{last} (gave up after {attempts} attempt{plural})"
    )))
}

/// What the mediator's answer `code` with `text` means for push `id`.
fn judge(id: &str, code: u16, text: &str, token_sent: bool) -> Attempt {
    let said = |what: &str| {
        let reason = http::StatusCode::from_u16(code)
            .ok()
            .and_then(|s| s.canonical_reason())
            .map_or(String::new(), |r| format!(" {r}"));
        format!(
            "the mediator answered {code}{reason}{what}{}",
            excerpt(text)
        )
    };
    match code {
        200 => Attempt::Done(answer(id, text)),
        401 | 403 => Attempt::Done(Delivery {
            result: PushResult::Rejected,
            error: Some(if token_sent {
                said(": it refuses push.token")
            } else {
                said(": it wants a token, set push.token")
            }),
            answered: false,
        }),
        // Passing conditions: overload, restarts, its own timeouts.
        408 | 429 | 500..=599 => Attempt::Retry(said("")),
        404 | 405 => Attempt::Done(Delivery::failed(said(
            ": check push.mediator_url (the path of its push endpoint)",
        ))),
        _ => Attempt::Done(Delivery::failed(said(""))),
    }
}

/// The result of a `200 OK`: the [`PushAnswer`] for this push.
fn answer(id: &str, text: &str) -> Delivery {
    match serde_json::from_str::<PushAnswer>(text) {
        Ok(a) if a.id == id => Delivery {
            result: a.result,
            error: a.error,
            answered: true,
        },
        Ok(a) => Delivery::failed(format!(
            "the mediator answered for push {:?}, not {id:?}",
            a.id
        )),
        Err(e) => Delivery::failed(format!(
            "unparsable answer from the mediator ({e}){}",
            excerpt(text)
        )),
    }
}

/// `: <the first 200 characters>` of a body, for messages; empty if it is.
fn excerpt(text: &str) -> String {
    let t = text.trim();
    if t.is_empty() {
        return String::new();
    }
    let mut cut: String = t.chars().take(200).collect();
    if cut.len() < t.len() {
        cut.push('…');
    }
    format!(": {cut:?}")
}

/// Pause before attempt `attempt` (1 = the first repeat).
fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << (attempt - 1).min(16))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let ms: Vec<u128> = (1..=8).map(|a| backoff(a).as_millis()).collect();
        assert_eq!(ms, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn excerpt_is_short_and_quoted() {
        assert_eq!(excerpt("  "), "");
        assert_eq!(excerpt("oops\n"), ": \"oops\"");
        let long = "x".repeat(500);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), 2 + 1 + 200 + 1 + 1, "{e}");
    }

    #[test]
    fn answer_checks_the_id() {
        let d = answer(
            "a1",
            r#"{"id":"a1","result":"token_dead","error":"Unregistered"}"#,
        );
        assert_eq!(d.result, PushResult::TokenDead);
        assert_eq!(d.error.as_deref(), Some("Unregistered"));
        assert!(d.answered);
        let d = answer("a1", r#"{"id":"b2","result":"sent"}"#);
        assert_eq!(d.result, PushResult::Failed);
        assert_eq!(
            d.error.as_deref(),
            Some("the mediator answered for push \"b2\", not \"a1\"")
        );
        let d = answer("a1", r#"{"id":"a1","result":"delivered"}"#);
        assert_eq!(d.result, PushResult::Failed);
        assert!(d
            .error
            .unwrap()
            .starts_with("unparsable answer from the mediator (unknown variant `delivered`"));
    }
}
