//! The store thread: the only place a backend runs.
//!
//! [`StoreThread::spawn`] moves a backend onto a `std::thread` named
//! `sipis-store` and returns a [`StoreHandle`] (`Clone + Send + Sync`) for
//! everyone else. Two kinds of use:
//!
//! - **Request/response** ([`StoreHandle::call`]): admin API, CLI, start-up.
//!   The caller blocks until the answer or a timeout (`Unavailable`). Never
//!   from a shard.
//! - **Fire-and-forget** ([`StoreHandle::save_registration`],
//!   [`StoreHandle::record_call_outcome`]): from shards; a lock-free send on
//!   an unbounded channel, never blocks. The thread coalesces registration
//!   saves per account (latest wins) and writes them in batches at most
//!   [`StoreThreadConfig::batch_window`] after the first pending one, or as
//!   soon as [`StoreThreadConfig::batch_max`] are pending.
//!
//! When the database is down, pending writes stay in memory and are retried
//! with exponential back-off until it is back. Registration saves are bounded
//! by the number of accounts (one entry each); call outcomes by
//! [`StoreThreadConfig::outcome_cap`], beyond which the oldest are dropped
//! and counted ([`StoreHandle::dropped_writes`]).
//!
//! A request sees every fire-and-forget write sent before it from the same
//! thread: pending writes are flushed before a request runs (unless the
//! thread is backing off from a failed database).

use super::{CallOutcomeRecord, Store, StoreError};
use crate::{AccountId, SavedRegistration};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Tuning of the store thread.
#[derive(Debug, Clone)]
pub struct StoreThreadConfig {
    /// Longest a fire-and-forget write waits before its batch is written.
    pub batch_window: Duration,
    /// Pending writes that trigger a write at once; also the largest batch
    /// (one transaction).
    pub batch_max: usize,
    /// Most call outcomes kept in memory while the database is down.
    pub outcome_cap: usize,
    /// How long [`StoreHandle::call`] waits for its answer.
    pub call_timeout: Duration,
    /// First retry delay after a failed write; doubles up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for StoreThreadConfig {
    fn default() -> Self {
        StoreThreadConfig {
            batch_window: Duration::from_millis(100),
            batch_max: 1000,
            outcome_cap: 100_000,
            call_timeout: Duration::from_secs(30),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// A snapshot of the store thread's counters (for /metrics and /health).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Accounts whose registration state waits to be written.
    pub pending_saves: usize,
    /// Call outcomes waiting to be written.
    pub pending_outcomes: usize,
    /// Write attempts (batches) that failed and will be retried.
    pub failed_writes: u64,
    /// Writes given up for good: call outcomes beyond the cap, rows the
    /// database rejected permanently, writes sent after shutdown.
    pub dropped_writes: u64,
    /// Whether the last database operation reached the database.
    pub available: bool,
}

/// Spawns the store thread.
pub struct StoreThread;

impl StoreThread {
    /// Moves `backend` (already migrated) onto the `sipis-store` thread
    /// with the default [`StoreThreadConfig`].
    pub fn spawn(backend: Box<dyn Store>) -> StoreHandle {
        Self::spawn_with(backend, StoreThreadConfig::default())
    }

    /// Same with an explicit configuration.
    pub fn spawn_with(backend: Box<dyn Store>, config: StoreThreadConfig) -> StoreHandle {
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            pending_saves: AtomicUsize::new(0),
            pending_outcomes: AtomicUsize::new(0),
            failed_writes: AtomicU64::new(0),
            dropped_writes: AtomicU64::new(0),
            available: AtomicBool::new(true),
            down_since: Mutex::new(None),
            join: Mutex::new(None),
        });
        let call_timeout = config.call_timeout;
        let mut worker = Worker {
            store: backend,
            config,
            shared: shared.clone(),
            saves: HashMap::new(),
            outcomes: VecDeque::new(),
            first_pending: None,
            retry_at: None,
            backoff: Duration::ZERO,
        };
        let join = std::thread::Builder::new()
            .name("sipis-store".into())
            .spawn(move || worker.run(rx))
            .expect("cannot spawn the sipis-store thread");
        if let Ok(mut j) = shared.join.lock() {
            *j = Some(join);
        }
        StoreHandle {
            tx,
            shared,
            call_timeout,
        }
    }
}

struct Shared {
    pending_saves: AtomicUsize,
    pending_outcomes: AtomicUsize,
    failed_writes: AtomicU64,
    dropped_writes: AtomicU64,
    available: AtomicBool,
    /// When the database stopped answering (`None` while it answers).
    down_since: Mutex<Option<Instant>>,
    join: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    /// Records whether the database answered; the outage's start is kept
    /// from its first failure until it answers again.
    /// Records whether the database answers; returns whether it did
    /// before.
    fn set_available(&self, up: bool) -> bool {
        let was = self.available.swap(up, Relaxed);
        let mut since = self.down_since.lock().unwrap_or_else(|p| p.into_inner());
        match (up, *since) {
            (true, _) => *since = None,
            (false, None) => *since = Some(Instant::now()),
            (false, Some(_)) => {}
        }
        was
    }
}

/// What a request told about the database.
enum Reach {
    /// The database answered (success or a definite error).
    Up,
    /// `Unavailable`.
    Down,
}

type Request = Box<dyn FnOnce(&mut dyn Store) -> Reach + Send>;

enum Msg {
    Save(AccountId, SavedRegistration),
    Outcome(CallOutcomeRecord),
    Call(Request),
    Flush(Sender<Result<(), StoreError>>),
    Shutdown(Sender<Result<(), StoreError>>),
}

/// The way to the store thread. Cheap to clone; the thread ends (after a
/// last flush) when every handle is dropped or on [`StoreHandle::shutdown`].
#[derive(Clone)]
pub struct StoreHandle {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    call_timeout: Duration,
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the store thread has stopped".into())
}

impl StoreHandle {
    /// Runs `f` on the store thread and waits for its answer, at most the
    /// configured `call_timeout` (then `Unavailable`; `f` still runs later).
    /// Blocks the caller: never call it from a shard.
    pub fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.call_with_timeout(self.call_timeout, f)
    }

    /// [`call`](Self::call) with an explicit timeout.
    pub fn call_with_timeout<T, F>(&self, timeout: Duration, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        let req: Request = Box::new(move |store: &mut dyn Store| {
            let r = f(store);
            let reach = match r {
                Err(StoreError::Unavailable(_)) => Reach::Down,
                _ => Reach::Up,
            };
            let _ = reply_tx.send(r);
            reach
        });
        self.tx.send(Msg::Call(req)).map_err(|_| stopped())?;
        match reply_rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(StoreError::Unavailable(format!(
                "the store thread did not answer within {timeout:?}"
            ))),
            // The request was dropped unanswered: it panicked, or the
            // thread stopped.
            Err(RecvTimeoutError::Disconnected) => Err(StoreError::Unavailable(
                "the store request failed (panicked or the store thread stopped)".into(),
            )),
        }
    }

    /// Runs `f` on the store thread without waiting for it (a device a
    /// phone registered, one removed). Never blocks; a failure is logged
    /// and counted.
    pub fn write<F>(&self, what: &'static str, f: F)
    where
        F: FnOnce(&mut dyn Store) -> Result<(), StoreError> + Send + 'static,
    {
        let shared = self.shared.clone();
        let req: Request = Box::new(move |store: &mut dyn Store| match f(store) {
            Ok(()) => Reach::Up,
            Err(e) => {
                shared.failed_writes.fetch_add(1, Relaxed);
                tracing::warn!(what, error = %e, "store write failed");
                match e {
                    StoreError::Unavailable(_) => Reach::Down,
                    _ => Reach::Up,
                }
            }
        });
        if self.tx.send(Msg::Call(req)).is_err() {
            self.shared.dropped_writes.fetch_add(1, Relaxed);
        }
    }

    /// Queues an account's registration state to be saved. Never blocks;
    /// later saves of the same account replace earlier unwritten ones.
    pub fn save_registration(&self, id: AccountId, saved: SavedRegistration) {
        if self.tx.send(Msg::Save(id, saved)).is_err() {
            self.shared.dropped_writes.fetch_add(1, Relaxed);
        }
    }

    /// Queues a call outcome to be recorded. Never blocks.
    pub fn record_call_outcome(&self, rec: CallOutcomeRecord) {
        if self.tx.send(Msg::Outcome(rec)).is_err() {
            self.shared.dropped_writes.fetch_add(1, Relaxed);
        }
    }

    /// Writes every pending fire-and-forget write now (even while backing
    /// off) and waits for the result: `Unavailable` if some are still
    /// pending. Blocks: not for shards.
    pub fn flush(&self) -> Result<(), StoreError> {
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        self.tx.send(Msg::Flush(reply_tx)).map_err(|_| stopped())?;
        reply_rx
            .recv_timeout(self.call_timeout)
            .unwrap_or_else(|_| Err(stopped()))
    }

    /// Flushes what is pending (one attempt), stops the thread and waits
    /// for it. `Unavailable` if pending writes could not be written (they
    /// are lost) or the thread did not stop within `timeout`. Later calls
    /// return `Unavailable`; later writes are dropped (counted).
    pub fn shutdown(&self, timeout: Duration) -> Result<(), StoreError> {
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        self.tx
            .send(Msg::Shutdown(reply_tx))
            .map_err(|_| stopped())?;
        let r = reply_rx.recv_timeout(timeout).unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "the store thread did not stop within {timeout:?}"
            )))
        });
        if r.is_ok() {
            let join = self.shared.join.lock().ok().and_then(|mut j| j.take());
            if let Some(j) = join {
                let _ = j.join();
            }
        }
        r
    }

    /// Accounts whose registration state waits to be written.
    pub fn pending_saves(&self) -> usize {
        self.shared.pending_saves.load(Relaxed)
    }

    /// Call outcomes waiting to be written.
    pub fn pending_outcomes(&self) -> usize {
        self.shared.pending_outcomes.load(Relaxed)
    }

    /// Write attempts that failed (and were or will be retried).
    pub fn failed_writes(&self) -> u64 {
        self.shared.failed_writes.load(Relaxed)
    }

    /// Writes given up for good (outcome cap, permanent rejections, after
    /// shutdown).
    pub fn dropped_writes(&self) -> u64 {
        self.shared.dropped_writes.load(Relaxed)
    }

    /// Whether the database answered the last operation (for /health).
    pub fn available(&self) -> bool {
        self.shared.available.load(Relaxed)
    }

    /// How long the database has not been answering (`None` while it
    /// answers).
    pub fn unavailable_for(&self) -> Option<Duration> {
        self.shared
            .down_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
    }

    /// Whether the store thread still runs (it stops on
    /// [`shutdown`](Self::shutdown) or if it panicked).
    pub fn is_running(&self) -> bool {
        self.shared
            .join
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|j| !j.is_finished())
    }

    /// All counters at once.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            pending_saves: self.pending_saves(),
            pending_outcomes: self.pending_outcomes(),
            failed_writes: self.failed_writes(),
            dropped_writes: self.dropped_writes(),
            available: self.available(),
        }
    }
}

struct Worker {
    store: Box<dyn Store>,
    config: StoreThreadConfig,
    shared: Arc<Shared>,
    saves: HashMap<AccountId, SavedRegistration>,
    outcomes: VecDeque<CallOutcomeRecord>,
    /// When the oldest unwritten write arrived (batch window start).
    first_pending: Option<Instant>,
    /// Backing off after a failed write: next attempt not before this.
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// Messages handled between two flush checks, so that a flood of writes
/// cannot starve the batch timer.
const DRAIN_MAX: usize = 10_000;

impl Worker {
    fn run(&mut self, rx: Receiver<Msg>) {
        loop {
            let msg = match self.next_flush_at(Instant::now()) {
                None => match rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => break,
                },
                Some(at) => match rx.recv_deadline(at) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            };
            if let Some(m) = msg {
                if !self.handle(m) {
                    return;
                }
                for _ in 0..DRAIN_MAX {
                    match rx.try_recv() {
                        Ok(m) => {
                            if !self.handle(m) {
                                return;
                            }
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => break,
                    }
                }
            }
            if self.flush_due(Instant::now()) {
                let _ = self.flush();
            }
            self.publish();
        }
        // Every handle is gone: one last attempt.
        let _ = self.flush();
        self.publish();
    }

    /// Handles one message; `false` to stop.
    fn handle(&mut self, m: Msg) -> bool {
        match m {
            Msg::Save(id, s) => {
                self.saves.insert(id, s);
                self.first_pending.get_or_insert_with(Instant::now);
            }
            Msg::Outcome(o) => {
                if self.outcomes.len() >= self.config.outcome_cap.max(1) {
                    self.outcomes.pop_front();
                    self.shared.dropped_writes.fetch_add(1, Relaxed);
                }
                self.outcomes.push_back(o);
                self.first_pending.get_or_insert_with(Instant::now);
            }
            Msg::Call(req) => {
                if self.pending() > 0 && self.retry_at.is_none() {
                    let _ = self.flush();
                }
                let store = &mut *self.store;
                match catch_unwind(AssertUnwindSafe(move || req(store))) {
                    Ok(Reach::Up) => {
                        if self.retry_at.is_some() || !self.shared.available.load(Relaxed) {
                            self.recovered();
                        }
                    }
                    Ok(Reach::Down) => self.mark_down("a request failed"),
                    Err(_) => {} // the caller sees its reply channel close
                }
            }
            Msg::Flush(reply) => {
                let r = self.flush();
                self.publish();
                let _ = reply.send(r);
            }
            Msg::Shutdown(reply) => {
                let r = self.flush();
                self.publish();
                let _ = reply.send(r);
                return false;
            }
        }
        true
    }

    fn pending(&self) -> usize {
        self.saves.len() + self.outcomes.len()
    }

    fn next_flush_at(&self, now: Instant) -> Option<Instant> {
        if self.pending() == 0 {
            return None;
        }
        if let Some(at) = self.retry_at {
            return Some(at);
        }
        if self.pending() >= self.config.batch_max {
            return Some(now);
        }
        self.first_pending.map(|t| t + self.config.batch_window)
    }

    fn flush_due(&self, now: Instant) -> bool {
        self.next_flush_at(now).is_some_and(|at| now >= at)
    }

    fn publish(&self) {
        self.shared.pending_saves.store(self.saves.len(), Relaxed);
        self.shared
            .pending_outcomes
            .store(self.outcomes.len(), Relaxed);
    }

    fn recovered(&mut self) {
        if !self.shared.set_available(true) {
            tracing::info!(
                pending = self.pending(),
                "store up again: buffered writes are being written"
            );
        }
        self.retry_at = None;
        self.backoff = Duration::ZERO;
    }

    /// The store stopped answering: said once per outage.
    fn mark_down(&self, why: &str) {
        if self.shared.set_available(false) {
            tracing::warn!(
                pending = self.pending(),
                "store down ({why}): writes are buffered and retried with back-off"
            );
        }
    }

    fn failed(&mut self) {
        self.mark_down("a write failed");
        self.shared.failed_writes.fetch_add(1, Relaxed);
        self.backoff = if self.backoff.is_zero() {
            self.config.retry_min
        } else {
            (self.backoff * 2).min(self.config.retry_max)
        };
        self.retry_at = Some(Instant::now() + self.backoff);
    }

    /// Writes everything pending in batches of at most `batch_max`. Stops at
    /// the first `Unavailable`, keeping what is unwritten, and backs off.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending() == 0 {
            return Ok(());
        }
        let r = self.flush_saves().and_then(|()| self.flush_outcomes());
        match &r {
            Ok(()) => {
                self.recovered();
                self.first_pending = None;
            }
            Err(_) => self.failed(),
        }
        r
    }

    fn flush_saves(&mut self) -> Result<(), StoreError> {
        let max = self.config.batch_max.max(1);
        while !self.saves.is_empty() {
            let ids: Vec<AccountId> = self.saves.keys().take(max).copied().collect();
            let mut chunk: Vec<(AccountId, SavedRegistration)> = ids
                .iter()
                .filter_map(|id| Some((*id, self.saves.remove(id)?)))
                .collect();
            chunk.sort_unstable_by_key(|(id, _)| *id);
            match self.store.save_registrations(&chunk) {
                Ok(()) => {}
                Err(e @ StoreError::Unavailable(_)) => {
                    self.saves.extend(chunk);
                    return Err(e);
                }
                // A row the database refuses (should not happen: missing
                // accounts are skipped): write one by one, drop the bad.
                Err(_) => {
                    let mut rest = chunk.into_iter();
                    while let Some(one) = rest.next() {
                        match self.store.save_registrations(std::slice::from_ref(&one)) {
                            Ok(()) => {}
                            Err(e @ StoreError::Unavailable(_)) => {
                                self.saves.extend(std::iter::once(one).chain(rest));
                                return Err(e);
                            }
                            Err(_) => {
                                self.shared.dropped_writes.fetch_add(1, Relaxed);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn flush_outcomes(&mut self) -> Result<(), StoreError> {
        let max = self.config.batch_max.max(1);
        while !self.outcomes.is_empty() {
            let n = self.outcomes.len().min(max);
            let chunk: Vec<CallOutcomeRecord> = self.outcomes.drain(..n).collect();
            match self.store.record_call_outcomes(&chunk) {
                Ok(_) => {}
                Err(e @ StoreError::Unavailable(_)) => {
                    for o in chunk.into_iter().rev() {
                        self.outcomes.push_front(o);
                    }
                    return Err(e);
                }
                Err(_) => {
                    let mut rest = chunk.into_iter();
                    while let Some(one) = rest.next() {
                        match self.store.record_call_outcomes(std::slice::from_ref(&one)) {
                            Ok(_) => {}
                            Err(e @ StoreError::Unavailable(_)) => {
                                let unwritten: Vec<_> = std::iter::once(one).chain(rest).collect();
                                for o in unwritten.into_iter().rev() {
                                    self.outcomes.push_front(o);
                                }
                                return Err(e);
                            }
                            Err(_) => {
                                self.shared.dropped_writes.fetch_add(1, Relaxed);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_is_clone_send_sync() {
        fn check<T: Clone + Send + Sync + 'static>() {}
        check::<StoreHandle>();
    }
}
