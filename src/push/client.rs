//! The push client: posts [`PushRequest`]s to the mediator and reports
//! each one's fate as a [`PushOutcome`].
//!
//! ```text
//!  shard ── submit(req) ──▶ bounded queue ──▶ worker 1 .. worker push.connections
//!           never blocks;   (push.queue)      one HTTP/1.1 keep-alive connection each
//!           full: Err(req)                      │ POST <push.mediator_url>, JSON body,
//!                                               │ Authorization: Bearer <push.token>
//!                                               ▼
//!                         sink(PushOutcome) ◀── 200 + PushAnswer, 401/403, retries, timeout
//! ```
//!
//! Every request accepted by [`PushClient::submit`] ends in exactly one call
//! of the sink, whatever happens: answered, given up after
//! `push.retries` further attempts, or still queued when the client shuts
//! down. The sink runs on a worker thread (on the submitting thread when
//! no mediator is configured) and should only hand the outcome on, e.g.
//! into the owning shard's channel.
//!
//! An attempt is repeated on what may pass: connection errors, timeouts,
//! 408, 429 and 5xx. A timed-out attempt may have reached the mediator, so
//! the same push (same [`PushRequest::id`]) can arrive twice; the id is
//! there to tell.

use super::{PushAnswer, PushOutcome, PushRequest, PushResult};
use crate::metrics::{counter, gauge, summary_from_histogram};
use crossbeam_channel::{bounded, select, Receiver, RecvTimeoutError, Sender, TrySendError};
use hdrhistogram::Histogram;
use std::fmt;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `[push]`: where and how sipis sends pushes.
#[derive(Clone, PartialEq, Eq)]
pub struct PushConfig {
    /// The mediator's endpoint (`http://host:port/push` or `https://…`).
    /// `None` with `mediator.in_process`: the in-process mediator's listen
    /// address; `None` otherwise: pushes are not sent (counted as failed).
    pub mediator_url: Option<String>,
    /// Bearer token presented to the mediator.
    pub token: Option<String>,
    /// One HTTP exchange with the mediator.
    pub timeout: Duration,
    /// Further attempts after a failed exchange (connection error, 5xx).
    pub retries: u32,
    /// Parallel keep-alive connections (worker threads).
    pub connections: u32,
    /// Most pushes queued before new ones fail at once.
    pub queue: u32,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            mediator_url: None,
            token: None,
            timeout: Duration::from_secs(5),
            retries: 2,
            connections: 4,
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
            .field("queue", &self.queue)
            .finish()
    }
}

/// Largest answer body read from the mediator; a PushAnswer is far smaller.
const MAX_ANSWER_BYTES: u64 = 64 * 1024;
/// Back-off before the first repeated attempt; it doubles per attempt up to
/// [`MAX_BACKOFF`]. Short on purpose: a call is ringing meanwhile.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long [`PushClient::shutdown`] waits for workers beyond one
/// exchange's timeout.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(1);
/// The reason given to pushes still queued when the client shuts down.
pub const SHUTDOWN_REASON: &str = "push client shut down before sending";
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
    /// A worker thread could not be started.
    Spawn(io::Error),
}

impl fmt::Display for PushClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushClientError::BadUrl { url, reason } => write!(
                f,
                "push.mediator_url: {reason}, got {:?}",
                crate::config::redact_url(url)
            ),
            PushClientError::Invalid { key, message } => write!(f, "{key}: {message}"),
            PushClientError::Spawn(e) => write!(f, "cannot start a push worker thread: {e}"),
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
    /// Attempts repeated after a failed one.
    pub retries: u64,
    /// Requests waiting for a worker now.
    pub queued: u64,
}

/// The push client. Cheap to share by reference across threads: `submit`
/// takes `&self`.
pub struct PushClient {
    shared: Arc<Shared>,
    /// `None` without a mediator URL: no threads, every push fails at once.
    pool: Option<Pool>,
}

struct Pool {
    jobs: Sender<Job>,
    /// The queue's other end, kept to answer what is left at shutdown.
    leftovers: Receiver<Job>,
    /// Never sends; dropped at shutdown, which wakes every worker waiting
    /// for work or backing off.
    stop: Option<Sender<()>>,
    workers: Vec<JoinHandle<()>>,
    timeout: Duration,
}

struct Job {
    req: PushRequest,
    submitted: Instant,
}

/// What the workers and the client share.
struct Shared {
    sink: Box<dyn Fn(PushOutcome) + Send + Sync>,
    stopping: AtomicBool,
    sent: AtomicU64,
    token_dead: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    queue_full: AtomicU64,
    retries: AtomicU64,
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

impl PushClient {
    /// Starts `cfg.connections` worker threads posting to
    /// `cfg.mediator_url`. Without a URL no thread starts and every
    /// submitted push is answered [`PushResult::Failed`]
    /// ([`NO_MEDIATOR_REASON`]) at once.
    pub fn start(
        cfg: &PushConfig,
        sink: impl Fn(PushOutcome) + Send + Sync + 'static,
    ) -> Result<PushClient, PushClientError> {
        let shared = Arc::new(Shared {
            sink: Box::new(sink),
            stopping: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            token_dead: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            queue_full: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            // Auto-resizing, 3 significant digits: exact enough for
            // quantiles, and a multi-second outlier is still recorded.
            latency: Mutex::new(Histogram::new(3).expect("3 significant digits are valid")),
        });
        let Some(url) = cfg.mediator_url.clone() else {
            return Ok(PushClient { shared, pool: None });
        };
        if let Some(reason) = crate::config::http_url_problem(&url) {
            return Err(PushClientError::BadUrl { url, reason });
        }
        let invalid = |key, message: &str| {
            Err(PushClientError::Invalid {
                key,
                message: message.to_owned(),
            })
        };
        if cfg.connections == 0 {
            return invalid("push.connections", "must be at least 1");
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

        let (jobs, queue) = bounded::<Job>(cfg.queue as usize);
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let mut client = PushClient {
            shared: Arc::clone(&shared),
            pool: Some(Pool {
                jobs,
                leftovers: queue.clone(),
                stop: Some(stop_tx),
                workers: Vec::new(),
                timeout: cfg.timeout,
            }),
        };
        for i in 0..cfg.connections {
            let worker = Worker::new(cfg, &url, Arc::clone(&shared), stop_rx.clone());
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("sipis-push-{i}"))
                .spawn(move || worker.run(queue));
            match spawned {
                Ok(h) => client.pool.as_mut().expect("pool").workers.push(h),
                // Dropping the client stops the workers already started.
                Err(e) => return Err(PushClientError::Spawn(e)),
            }
        }
        Ok(client)
    }

    /// Queues a push; never blocks. `Err` gives the request back when the
    /// queue (`push.queue`) is full: the caller counts it as failed. An
    /// `Ok` push ends in exactly one sink call.
    // The request moves in and, refused, comes back as it was: boxing it
    // for a smaller Err would cost an allocation on every push.
    #[allow(clippy::result_large_err)]
    pub fn submit(&self, req: PushRequest) -> Result<(), PushRequest> {
        let Some(pool) = &self.pool else {
            self.shared
                .finish(&req, Delivery::failed(NO_MEDIATOR_REASON), None);
            return Ok(());
        };
        let job = Job {
            req,
            submitted: Instant::now(),
        };
        match pool.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                self.shared.queue_full.fetch_add(1, Ordering::Relaxed);
                Err(job.req)
            }
        }
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
            retries: n(&s.retries),
            queued: self.pool.as_ref().map_or(0, |p| p.jobs.len() as u64),
        }
    }

    /// A copy of the latency histogram: µs from `submit` to the mediator's
    /// answer, of pushes it answered with a [`PushAnswer`].
    pub fn latency(&self) -> Histogram<u64> {
        self.shared.latency().clone()
    }

    /// Appends the client's metrics in Prometheus text format:
    /// `sipis_push_total{result=...}`, `sipis_push_queue_full_total`,
    /// `sipis_push_retries_total`, `sipis_push_queued` and the
    /// `sipis_push_latency_seconds` summary.
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
        summary_from_histogram(
            out,
            "sipis_push_latency_seconds",
            "Time from submitting a push to the mediator's answer.",
            &[],
            &self.shared.latency(),
            1e-6,
        );
    }

    /// Stops the client: pushes still queued are answered
    /// [`PushResult::Failed`] ([`SHUTDOWN_REASON`]), a push in flight gets
    /// its current exchange (at most `push.timeout`) and no further
    /// attempt. Waits for the workers at most `push.timeout` + 1 s; one
    /// still stuck then is left to end on its own.
    pub fn shutdown(mut self) {
        let Some((workers, timeout)) = self.close() else {
            return;
        };
        let deadline = Instant::now() + timeout + SHUTDOWN_SLACK;
        let mut pending = workers;
        while !pending.is_empty() && Instant::now() < deadline {
            let (done, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|h| h.is_finished());
            for h in done {
                // A worker only ends by returning; a panic was the sink's
                // and is already caught and logged.
                let _ = h.join();
            }
            pending = rest;
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if !pending.is_empty() {
            tracing::warn!(
                workers = pending.len(),
                "push workers still busy at shutdown; left to finish on their own"
            );
        }
    }

    /// Signals the workers to stop and answers what is still queued;
    /// returns the workers to wait for (once: `None` afterwards).
    fn close(&mut self) -> Option<(Vec<JoinHandle<()>>, Duration)> {
        let pool = self.pool.as_mut()?;
        let stop = pool.stop.take()?;
        self.shared.stopping.store(true, Ordering::SeqCst);
        drop(stop);
        // Workers may take some of these at the same time; they see
        // `stopping` and answer them the same way. Each job is received
        // once, so each gets one outcome.
        while let Ok(job) = pool.leftovers.try_recv() {
            self.shared
                .finish(&job.req, Delivery::failed(SHUTDOWN_REASON), None);
        }
        Some((std::mem::take(&mut pool.workers), pool.timeout))
    }
}

impl Drop for PushClient {
    /// Like [`PushClient::shutdown`] without waiting for the workers.
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl fmt::Debug for PushClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushClient")
            .field(
                "workers",
                &self.pool.as_ref().map_or(0, |p| p.workers.len()),
            )
            .field("stats", &self.stats())
            .finish()
    }
}

impl Shared {
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

/// One worker thread: one ureq agent, hence one keep-alive connection.
struct Worker {
    agent: ureq::Agent,
    url: String,
    /// `Bearer <push.token>`.
    authorization: Option<String>,
    timeout: Duration,
    retries: u32,
    shared: Arc<Shared>,
    stop: Receiver<()>,
}

impl Worker {
    fn new(cfg: &PushConfig, url: &str, shared: Arc<Shared>, stop: Receiver<()>) -> Worker {
        let agent = ureq::Agent::config_builder()
            // The mediator is ours: never through an HTTP proxy from the
            // environment, never redirected (a POST would turn into a GET).
            .proxy(None)
            .max_redirects(0)
            // Statuses are answers to read, not errors.
            .http_status_as_error(false)
            .timeout_global(Some(cfg.timeout))
            .max_idle_connections(1)
            .max_idle_connections_per_host(1)
            .user_agent(format!("sipis/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Worker {
            agent,
            url: url.to_owned(),
            authorization: cfg.token.as_ref().map(|t| format!("Bearer {t}")),
            timeout: cfg.timeout,
            retries: cfg.retries,
            shared,
            stop,
        }
    }

    fn run(self, queue: Receiver<Job>) {
        loop {
            let job = select! {
                recv(queue) -> job => match job {
                    Ok(job) => job,
                    Err(_) => return,
                },
                recv(self.stop) -> _ => return,
            };
            if self.shared.stopping.load(Ordering::SeqCst) {
                self.shared
                    .finish(&job.req, Delivery::failed(SHUTDOWN_REASON), None);
                continue;
            }
            let d = self.deliver(&job.req);
            self.shared.finish(&job.req, d, Some(job.submitted));
        }
    }

    /// Up to 1 + `retries` attempts, with back-off in between.
    fn deliver(&self, req: &PushRequest) -> Delivery {
        let body = match serde_json::to_vec(req) {
            Ok(b) => b,
            Err(e) => return Delivery::failed(format!("cannot encode the push as JSON: {e}")),
        };
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                self.shared.retries.fetch_add(1, Ordering::Relaxed);
                // Sleeps the back-off, or wakes at once at shutdown.
                if self.stop.recv_timeout(backoff(attempt)) != Err(RecvTimeoutError::Timeout) {
                    return Delivery::failed(format!(
                        "push client shut down while retrying ({last})"
                    ));
                }
            }
            match self.exchange(&req.id, &body) {
                Attempt::Done(d) => return d,
                Attempt::Retry(why) => last = why,
            }
        }
        let attempts = self.retries + 1;
        let plural = if attempts == 1 { "" } else { "s" };
        Delivery::failed(format!("{last} (gave up after {attempts} attempt{plural})"))
    }

    /// One POST and its answer.
    fn exchange(&self, id: &str, body: &[u8]) -> Attempt {
        let mut post = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json");
        if let Some(auth) = &self.authorization {
            post = post.header("Authorization", auth);
        }
        let mut resp = match post.send(body) {
            Ok(r) => r,
            Err(e) => return self.transport_error(e),
        };
        let status = resp.status();
        // Read it all, even from an error status: the connection can only
        // be reused once the body is consumed.
        let text = match resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_vec()
        {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => return self.transport_error(e),
        };
        let code = status.as_u16();
        let said = |what: &str| {
            let reason = status
                .canonical_reason()
                .map_or(String::new(), |r| format!(" {r}"));
            format!(
                "the mediator answered {code}{reason}{what}{}",
                excerpt(&text)
            )
        };
        match code {
            200 => Attempt::Done(answer(id, &text)),
            401 | 403 => Attempt::Done(Delivery {
                result: PushResult::Rejected,
                error: Some(if self.authorization.is_some() {
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

    fn transport_error(&self, e: ureq::Error) -> Attempt {
        match e {
            ureq::Error::Timeout(_) => Attempt::Retry(format!(
                "no answer from the mediator within {} (push.timeout)",
                crate::config::format_duration(self.timeout)
            )),
            ureq::Error::Io(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Protocol(_) => Attempt::Retry(format!("cannot reach the mediator: {e}")),
            ureq::Error::BodyExceedsLimit(_) => Attempt::Done(Delivery::failed(format!(
                "the mediator's answer is larger than {MAX_ANSWER_BYTES} bytes"
            ))),
            // TLS trust, a bad URL...: another attempt would fail the same.
            e => Attempt::Done(Delivery::failed(format!(
                "cannot post to the mediator: {e}"
            ))),
        }
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
