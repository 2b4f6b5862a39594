//! What `/health/live` and `/health/ready` say, and the rules behind it.
//!
//! - **live**: the process serves HTTP. Nothing else is looked at: a
//!   liveness probe that failed for a database outage would have the
//!   process restarted for nothing.
//! - **ready**: every shard runs and the store is `up` or `buffering`
//!   ([`store_state`]). Registrars are reported, not counted: a provider's
//!   outage is not cured by taking this instance out of service, so an
//!   unreachable registrar makes the status `degraded` (still 200).
//!
//! Nothing here names an account, a user or a secret: the health routes
//! need no token.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long the database may stay unreachable while sipis buffers its
/// writes and stays ready: a restart or a fail-over. Past it the store is
/// `down` and `/health/ready` answers 503.
pub const STORE_GRACE: Duration = Duration::from_secs(30);

/// How long every account of a registrar must be failing before the
/// registrar is called `unreachable` (a few REGISTER back-offs).
pub const REGISTRAR_GRACE: Duration = Duration::from_secs(60);

/// `GET /health/live`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Liveness {
    /// Always `live`.
    pub status: String,
    pub version: String,
}

/// `GET /health/ready`: 200 unless `status` is `not_ready` (then 503).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    pub status: ReadyStatus,
    pub version: String,
    pub uptime_secs: u64,
    pub shards: ShardsHealth,
    pub store: StoreHealth,
    /// By registrar `host[:port]`.
    pub registrars: BTreeMap<String, RegistrarHealth>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadyStatus {
    /// Shards up, store up or buffering, every registrar reachable.
    Ready,
    /// Ready, but a registrar is unreachable (its accounts get no calls).
    Degraded,
    /// A shard is down or the store is down: served with 503.
    NotReady,
}

impl ReadyStatus {
    /// The HTTP status it is served with.
    pub fn http_status(self) -> u16 {
        match self {
            ReadyStatus::Ready | ReadyStatus::Degraded => 200,
            ReadyStatus::NotReady => 503,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardsHealth {
    pub alive: usize,
    pub total: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreState {
    /// The database answers.
    Up,
    /// The database has not answered for less than [`STORE_GRACE`]:
    /// registration states and call outcomes wait in memory, SIP goes on.
    Buffering,
    /// Unreachable for longer, or the store thread has stopped.
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreHealth {
    pub state: StoreState,
    /// Seconds since the database last answered (`null` while up).
    pub unavailable_secs: Option<u64>,
    /// Registration states waiting to be written.
    pub pending_saves: usize,
    /// Call outcomes waiting to be written.
    pub pending_outcomes: usize,
}

/// The store's state from what the store thread knows.
pub fn store_state(running: bool, unavailable_for: Option<Duration>) -> StoreState {
    match unavailable_for {
        _ if !running => StoreState::Down,
        None => StoreState::Up,
        Some(d) if d < STORE_GRACE => StoreState::Buffering,
        Some(_) => StoreState::Down,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistrarState {
    /// At least one account is registered there.
    Up,
    /// Every account there is retrying or failed, for less than
    /// [`REGISTRAR_GRACE`].
    Failing,
    /// Every account there has been retrying or failed for
    /// [`REGISTRAR_GRACE`] or longer.
    Unreachable,
    /// Nothing registered yet and not all failing (accounts pending or
    /// registering).
    Unknown,
}

/// One registrar: its accounts by registration state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RegistrarCounts {
    pub accounts: u64,
    pub pending: u64,
    pub registering: u64,
    pub registered: u64,
    pub retrying: u64,
    pub failed: u64,
}

impl RegistrarCounts {
    fn all_failing(&self) -> bool {
        self.accounts > 0 && self.retrying + self.failed == self.accounts
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrarHealth {
    pub state: RegistrarState,
    /// Seconds every account there has been failing (`null` otherwise).
    pub failing_secs: Option<u64>,
    #[serde(flatten)]
    pub counts: RegistrarCounts,
}

/// Remembers since when each registrar has had all its accounts failing,
/// from the counts it is shown ([`observe`](Self::observe)).
#[derive(Debug, Default)]
pub struct RegistrarTracker {
    failing_since: BTreeMap<String, Instant>,
}

impl RegistrarTracker {
    /// Takes the counts seen at `now` and reports each registrar.
    pub fn observe(
        &mut self,
        now: Instant,
        counts: BTreeMap<String, RegistrarCounts>,
    ) -> BTreeMap<String, RegistrarHealth> {
        self.failing_since
            .retain(|host, _| counts.get(host).is_some_and(RegistrarCounts::all_failing));
        counts
            .into_iter()
            .map(|(host, c)| {
                let (state, failing_secs) = if c.all_failing() {
                    let since = *self.failing_since.entry(host.clone()).or_insert(now);
                    let for_ = now.saturating_duration_since(since);
                    let state = if for_ >= REGISTRAR_GRACE {
                        RegistrarState::Unreachable
                    } else {
                        RegistrarState::Failing
                    };
                    (state, Some(for_.as_secs()))
                } else if c.registered > 0 {
                    (RegistrarState::Up, None)
                } else {
                    (RegistrarState::Unknown, None)
                };
                (
                    host,
                    RegistrarHealth {
                        state,
                        failing_secs,
                        counts: c,
                    },
                )
            })
            .collect()
    }
}

/// The overall status from its parts.
pub fn ready_status(
    shards: ShardsHealth,
    store: StoreState,
    registrars: &BTreeMap<String, RegistrarHealth>,
) -> ReadyStatus {
    if shards.alive < shards.total || shards.total == 0 || store == StoreState::Down {
        ReadyStatus::NotReady
    } else if registrars
        .values()
        .any(|r| r.state == RegistrarState::Unreachable)
    {
        ReadyStatus::Degraded
    } else {
        ReadyStatus::Ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(registered: u64, retrying: u64, failed: u64, pending: u64) -> RegistrarCounts {
        RegistrarCounts {
            accounts: registered + retrying + failed + pending,
            pending,
            registering: 0,
            registered,
            retrying,
            failed,
        }
    }

    #[test]
    fn store_buffers_within_the_grace_then_is_down() {
        assert_eq!(store_state(true, None), StoreState::Up);
        assert_eq!(
            store_state(true, Some(Duration::from_secs(1))),
            StoreState::Buffering
        );
        assert_eq!(
            store_state(true, Some(STORE_GRACE - Duration::from_millis(1))),
            StoreState::Buffering
        );
        assert_eq!(store_state(true, Some(STORE_GRACE)), StoreState::Down);
        // A stopped store thread buffers nothing.
        assert_eq!(store_state(false, None), StoreState::Down);
    }

    #[test]
    fn ready_needs_every_shard_and_a_store_up_or_buffering() {
        let all = ShardsHealth { alive: 2, total: 2 };
        let none = BTreeMap::new();
        assert_eq!(ready_status(all, StoreState::Up, &none), ReadyStatus::Ready);
        assert_eq!(
            ready_status(all, StoreState::Buffering, &none),
            ReadyStatus::Ready
        );
        assert_eq!(
            ready_status(all, StoreState::Down, &none),
            ReadyStatus::NotReady
        );
        assert_eq!(
            ready_status(ShardsHealth { alive: 1, total: 2 }, StoreState::Up, &none),
            ReadyStatus::NotReady
        );
        assert_eq!(ReadyStatus::NotReady.http_status(), 503);
        assert_eq!(ReadyStatus::Degraded.http_status(), 200);
    }

    #[test]
    fn registrar_unreachable_after_its_accounts_fail_for_the_grace() {
        let t0 = Instant::now();
        let mut tr = RegistrarTracker::default();
        let seen = |a: RegistrarCounts, b: RegistrarCounts| {
            BTreeMap::from([("a.example".to_string(), a), ("b.example".to_string(), b)])
        };
        let r = tr.observe(t0, seen(counts(3, 1, 0, 0), counts(0, 2, 1, 0)));
        assert_eq!(r["a.example"].state, RegistrarState::Up);
        assert_eq!(r["b.example"].state, RegistrarState::Failing);
        assert_eq!(r["b.example"].failing_secs, Some(0));
        let all = ShardsHealth { alive: 1, total: 1 };
        assert_eq!(ready_status(all, StoreState::Up, &r), ReadyStatus::Ready);

        let later = t0 + REGISTRAR_GRACE;
        let r = tr.observe(later, seen(counts(3, 1, 0, 0), counts(0, 2, 1, 0)));
        assert_eq!(r["b.example"].state, RegistrarState::Unreachable);
        assert_eq!(r["b.example"].failing_secs, Some(60));
        assert_eq!(r["b.example"].counts.failed, 1);
        assert_eq!(ready_status(all, StoreState::Up, &r), ReadyStatus::Degraded);

        // One account registers again: the clock starts over.
        let r = tr.observe(later, seen(counts(3, 1, 0, 0), counts(1, 2, 0, 0)));
        assert_eq!(r["b.example"].state, RegistrarState::Up);
        let r = tr.observe(
            later + Duration::from_secs(5),
            seen(counts(3, 1, 0, 0), counts(0, 3, 0, 0)),
        );
        assert_eq!(r["b.example"].state, RegistrarState::Failing);
        // Only pending accounts: not known yet.
        let r = tr.observe(later, seen(counts(0, 0, 0, 2), counts(0, 0, 0, 0)));
        assert_eq!(r["a.example"].state, RegistrarState::Unknown);
        assert_eq!(r["b.example"].state, RegistrarState::Unknown);
    }

    #[test]
    fn readiness_json_names_each_part() {
        let r = Readiness {
            status: ReadyStatus::Ready,
            version: "0.1.0".into(),
            uptime_secs: 3,
            shards: ShardsHealth { alive: 2, total: 2 },
            store: StoreHealth {
                state: StoreState::Buffering,
                unavailable_secs: Some(4),
                pending_saves: 7,
                pending_outcomes: 0,
            },
            registrars: BTreeMap::from([(
                "voip.example.net".to_string(),
                RegistrarHealth {
                    state: RegistrarState::Up,
                    failing_secs: None,
                    counts: counts(2, 0, 0, 0),
                },
            )]),
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "status": "ready", "version": "0.1.0", "uptime_secs": 3,
                "shards": {"alive": 2, "total": 2},
                "store": {"state": "buffering", "unavailable_secs": 4,
                          "pending_saves": 7, "pending_outcomes": 0},
                "registrars": {"voip.example.net": {"state": "up", "failing_secs": null,
                    "accounts": 2, "pending": 0, "registering": 0, "registered": 2,
                    "retrying": 0, "failed": 0}}
            })
        );
        let back: Readiness = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
    }
}
