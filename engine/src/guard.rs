//! Password guessing contained without locking out the owner: failed
//! digest answers are counted per (source address, AOR) and per source
//! address. Past a threshold that source is refused for a while, the pause
//! doubling with every further failure up to a ceiling, so it makes at
//! most one guess a second per account — while the account's own phones,
//! registering from other addresses, are served at once.
//!
//! Unknown AORs are counted like known ones (keyed by the AOR the request
//! names), so blocking tells nothing about which users exist. The tables
//! are bounded: entries expire, and the oldest go first when full.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How password guessing is slowed (`calls.auth_*` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardConfig {
    /// Failures from one address for one AOR before it is slowed.
    pub failures_per_account: u32,
    /// Failures from one address over all AORs before it is slowed.
    pub failures_per_source: u32,
    /// The first pause; it doubles with each further failure.
    pub first_block: Duration,
    /// The longest pause.
    pub max_block: Duration,
    /// How long a failure is remembered without a new one.
    pub forget_after: Duration,
    /// Most (address, AOR) and address entries kept.
    pub max_entries: usize,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            failures_per_account: 5,
            failures_per_source: 20,
            first_block: Duration::from_secs(1),
            max_block: Duration::from_secs(300),
            forget_after: Duration::from_secs(900),
            max_entries: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Strikes {
    failures: u32,
    blocked_until: Option<Instant>,
    last: Instant,
}

/// What the guard decided about a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Block {
    /// How long the source is refused.
    pub pause: Duration,
    pub failures: u32,
    /// Blocked for every AOR (too many failures over all of them), not
    /// only this one.
    pub whole_source: bool,
}

/// Failure counts of one shard.
pub(crate) struct Guard {
    cfg: GuardConfig,
    by_account: HashMap<(IpAddr, Box<[u8]>), Strikes>,
    by_source: HashMap<IpAddr, Strikes>,
}

impl Guard {
    pub fn new(cfg: GuardConfig) -> Guard {
        Guard {
            cfg,
            by_account: HashMap::new(),
            by_source: HashMap::new(),
        }
    }

    /// Until when `source` is refused for `aor`, if it is.
    pub fn blocked(&self, now: Instant, source: IpAddr, aor: &[u8]) -> Option<Instant> {
        let until = |s: Option<&Strikes>| s.and_then(|s| s.blocked_until).filter(|&t| t > now);
        let a = until(self.by_account.get(&(source, Box::from(aor))));
        let s = until(self.by_source.get(&source));
        a.max(s)
    }

    /// A wrong answer from `source` for `aor`: a new block when a
    /// threshold is passed.
    pub fn failure(&mut self, now: Instant, source: IpAddr, aor: &[u8]) -> Option<Block> {
        self.expire(now);
        let cfg = self.cfg.clone();
        let pause = |failures: u32, threshold: u32| {
            (failures >= threshold).then(|| {
                let doublings = (failures - threshold).min(16);
                (cfg.first_block * 2u32.pow(doublings)).min(cfg.max_block)
            })
        };
        let a = self
            .by_account
            .entry((source, Box::from(aor)))
            .or_insert(Strikes {
                failures: 0,
                blocked_until: None,
                last: now,
            });
        a.failures += 1;
        a.last = now;
        let account_block = pause(a.failures, cfg.failures_per_account);
        if let Some(p) = account_block {
            a.blocked_until = Some(now + p);
        }
        let account_failures = a.failures;
        let s = self.by_source.entry(source).or_insert(Strikes {
            failures: 0,
            blocked_until: None,
            last: now,
        });
        s.failures += 1;
        s.last = now;
        let source_block = pause(s.failures, cfg.failures_per_source);
        if let Some(p) = source_block {
            s.blocked_until = Some(now + p);
        }
        let source_failures = s.failures;
        match (account_block, source_block) {
            (_, Some(p)) if account_block.is_none_or(|a| p >= a) => Some(Block {
                pause: p,
                failures: source_failures,
                whole_source: true,
            }),
            (Some(p), _) => Some(Block {
                pause: p,
                failures: account_failures,
                whole_source: false,
            }),
            _ => None,
        }
    }

    /// A correct answer: that address's record for that AOR is wiped (a
    /// phone that mistyped its password a few times is not held back).
    pub fn success(&mut self, source: IpAddr, aor: &[u8]) {
        self.by_account.remove(&(source, Box::from(aor)));
    }

    /// Entries tracked.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_account.len() + self.by_source.len()
    }

    /// Drops what is forgotten, and the oldest entries when a table is
    /// full (a spray of sources must not grow memory without bound). Work
    /// is done only when a table is full, and then frees a tenth of it, so
    /// a failure costs O(1) amortised however the tables are sprayed.
    fn expire(&mut self, now: Instant) {
        let forget = self.cfg.forget_after;
        let max = self.cfg.max_entries.max(1);
        let stale = move |s: &Strikes| {
            now.saturating_duration_since(s.last) > forget
                && s.blocked_until.is_none_or(|t| t <= now)
        };
        if self.by_account.len() >= max {
            self.by_account.retain(|_, s| !stale(s));
            if self.by_account.len() >= max {
                let cut = oldest_tenth(self.by_account.values());
                self.by_account.retain(|_, s| s.last > cut);
            }
        }
        if self.by_source.len() >= max {
            self.by_source.retain(|_, s| !stale(s));
            if self.by_source.len() >= max {
                let cut = oldest_tenth(self.by_source.values());
                self.by_source.retain(|_, s| s.last > cut);
            }
        }
    }
}

/// The time of the last failure at the tenth percentile: entries no newer
/// than it are the oldest tenth (at least one entry).
fn oldest_tenth<'a>(entries: impl Iterator<Item = &'a Strikes>) -> Instant {
    let mut lasts: Vec<Instant> = entries.map(|s| s.last).collect();
    let k = (lasts.len() / 10).max(1) - 1;
    *lasts.select_nth_unstable(k).1
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor a simulated clock
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn five_failures_block_that_source_for_that_account_with_doubling_pauses() {
        let t0 = Instant::now();
        let mut g = Guard::new(GuardConfig {
            failures_per_source: 1_000,
            ..GuardConfig::default()
        });
        let (attacker, owner) = (ip("198.51.100.66"), ip("203.0.113.9"));
        for _ in 0..4 {
            assert_eq!(g.failure(t0, attacker, b"a:alice@x"), None);
        }
        let b = g.failure(t0, attacker, b"a:alice@x").unwrap();
        assert_eq!(
            (b.pause, b.failures, b.whole_source),
            (Duration::from_secs(1), 5, false)
        );
        assert!(g.blocked(t0, attacker, b"a:alice@x").is_some());
        // The owner's phone elsewhere, and other accounts, are not held.
        assert_eq!(g.blocked(t0, owner, b"a:alice@x"), None);
        assert_eq!(g.blocked(t0, attacker, b"a:bob@x"), None);
        // Each further failure doubles the pause, up to the ceiling.
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            g.failure(t1, attacker, b"a:alice@x").unwrap().pause,
            Duration::from_secs(2)
        );
        let t2 = t1 + Duration::from_secs(3);
        assert_eq!(
            g.failure(t2, attacker, b"a:alice@x").unwrap().pause,
            Duration::from_secs(4)
        );
        let mut t = t2;
        for _ in 0..20 {
            t += Duration::from_secs(400);
            g.failure(t, attacker, b"a:alice@x");
        }
        assert_eq!(
            g.failure(t, attacker, b"a:alice@x").unwrap().pause,
            Duration::from_secs(300)
        );
        // A correct answer wipes that record.
        g.success(attacker, b"a:alice@x");
        assert_eq!(g.blocked(t, attacker, b"a:alice@x"), None);
    }

    #[test]
    fn spraying_many_accounts_blocks_the_whole_source() {
        let t0 = Instant::now();
        let mut g = Guard::new(GuardConfig::default());
        let attacker = ip("198.51.100.66");
        let mut last = None;
        for n in 0..20 {
            last = g.failure(t0, attacker, format!("a:user{n}@x").as_bytes());
        }
        let b = last.unwrap();
        assert!(b.whole_source);
        assert!(g.blocked(t0, attacker, b"a:someone-else@x").is_some());
    }

    #[test]
    fn the_tables_are_bounded() {
        let t0 = Instant::now();
        let mut g = Guard::new(GuardConfig {
            max_entries: 100,
            ..GuardConfig::default()
        });
        for n in 0..1_000u32 {
            let src = IpAddr::from(n.to_be_bytes());
            g.failure(t0 + Duration::from_millis(u64::from(n)), src, b"a:alice@x");
        }
        assert!(g.len() <= 200, "{}", g.len());
    }
}
