//! What every part of the engine writes to: the timer wheel, the PRNG, a
//! scratch buffer, the output queues and the counters.
//!
//! The parts (`Transactions`, `Accounts`, `Registrar`, `Calls`) own their
//! own tables; they share this one context, which the `Engine` lends to
//! whichever part an input is routed to. It depends on none of them.

use crate::output::{Event, Stats, Transmit};
use crate::registration::AccountId;
use crate::rng::{Rng, RngKey};
use crate::wheel::{TimerHandle, TimerWheel};
use bytes::BytesMut;
use std::collections::VecDeque;
use std::time::Instant;

/// Every timer of a shard, in one wheel: what fires and for whom.
///
/// Slots carry a generation: a slab slot reused after its owner went is
/// not woken by the old owner's timer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Timer {
    /// A client transaction's next deadline (RFC 3261 §17.1: A, B, D, E,
    /// F, K, M).
    Client(usize, u64),
    /// A server transaction's next deadline (RFC 3261 §17.2: G, H, I, J, L).
    Server(usize, u64),
    /// An account's next REGISTER (refresh before expiry, or a retry).
    Register(AccountId),
    /// The REGISTER rate limiter allows the next send.
    RateLimit,
    /// Time to probe a registrar with OPTIONS (index into the accounts'
    /// registrar table).
    Probe(u32),
    /// A call's timer (device wait, purge, CANCEL guard, 2xx
    /// retransmission, a connected device's answer wait).
    Call(usize, u64, CallTimer),
}

/// The shared state the parts write to.
pub(crate) struct Context {
    pub rng: Rng,
    pub wheel: TimerWheel<Timer>,
    /// Scratch space every message is written into, then split off.
    pub buf: BytesMut,
    pub transmits: VecDeque<Transmit>,
    pub events: VecDeque<Event>,
    pub stats: Stats,
    generation: u64,
    /// `-s<shard>`, the end of every branch this shard writes.
    branch_mark: String,
}

impl Context {
    /// A context seeded from a number (unit tests).
    #[cfg(test)]
    pub fn new(seed: u64, now: Instant) -> Context {
        Context::keyed(seed, None, now)
    }

    /// `key` (from the OS) keys the CSPRNG; without one it is seeded from
    /// `seed` (simulations).
    pub fn keyed(seed: u64, key: Option<RngKey>, now: Instant) -> Context {
        Context {
            rng: key.map_or_else(|| Rng::new(seed), Rng::from_key),
            wheel: TimerWheel::new(now),
            buf: BytesMut::with_capacity(64 * 1024),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            generation: 0,
            branch_mark: "-s0".into(),
        }
    }

    /// A number never handed out before on this shard: tells a slab slot's
    /// owner from a later one's.
    pub fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    /// Marks this shard's branches with its index (see [`shard_of_branch`]).
    pub fn set_shard(&mut self, shard: u16) {
        self.branch_mark = format!("-s{shard}");
    }

    /// A fresh RFC 3261 branch (`z9hG4bK` + 16 hex digits, §8.1.1.7) with
    /// the shard's mark.
    pub fn new_branch(&mut self) -> String {
        let mut branch = String::with_capacity(28);
        branch.push_str("z9hG4bK");
        self.rng.hex_into(&mut branch, 16);
        branch.push_str(&self.branch_mark);
        branch
    }

    /// A fresh tag (RFC 3261 §19.3: at least 32 bits of randomness).
    pub fn new_tag(&mut self) -> String {
        let mut tag = String::with_capacity(12);
        self.rng.hex_into(&mut tag, 12);
        tag
    }

    /// Moves a wheel timer to its new deadline (or drops it).
    pub fn rearm(
        &mut self,
        timer: Option<TimerHandle>,
        deadline: Option<Instant>,
        what: Timer,
    ) -> Option<TimerHandle> {
        match (timer, deadline) {
            (Some(t), Some(d)) if self.wheel.reschedule(t, d) => Some(t),
            (Some(t), None) => {
                self.wheel.cancel(t);
                None
            }
            (_, Some(d)) => Some(self.wheel.insert(d, what)),
            (None, None) => None,
        }
    }

    /// Cancels a timer if there is one.
    pub fn cancel(&mut self, timer: Option<TimerHandle>) {
        if let Some(t) = timer {
            self.wheel.cancel(t);
        }
    }
}

/// A call timer's purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallTimer {
    /// `device_wait` ran out (step 6 of the flow), or Timer C after it.
    Wait,
    /// The late-wake window closed: the call record goes.
    Purge,
    /// A leg's CANCEL may go even without a provisional answer.
    Guard(u16),
    /// The caller's leg's 2xx goes again (RFC 3261 §13.3.1.4).
    Retransmit2xx,
    /// A leg INVITEd over an open TCP/TLS flow has had
    /// `stream_answer_wait` to answer provisionally: if it has not, the
    /// app may be frozen, and its device is pushed.
    AnswerWait(u16),
}

/// The shard that wrote `branch` (its `-s<shard>` end), if it is one of
/// sipis's: how the shared phone port routes a phone's response.
pub fn shard_of_branch(branch: &[u8]) -> Option<usize> {
    let at = branch.iter().rposition(|&b| b == b'-')?;
    let digits = branch[at + 1..].strip_prefix(b"s")?;
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor a simulated clock
mod tests {
    use super::*;

    #[test]
    fn branches_carry_their_shard() {
        let mut ctx = Context::new(1, Instant::now());
        ctx.set_shard(12);
        let b = ctx.new_branch();
        assert!(b.starts_with("z9hG4bK") && b.ends_with("-s12"), "{b}");
        assert_eq!(shard_of_branch(b.as_bytes()), Some(12));
        assert_eq!(shard_of_branch(b"z9hG4bKabc"), None);
        assert_eq!(shard_of_branch(b"z9hG4bK-abc-s"), None);
        assert_eq!(shard_of_branch(b"z9hG4bK-abc-sx1"), None);
    }
}
