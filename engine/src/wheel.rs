//! Hierarchical timer wheel: the engine's single clock-driven queue.
//!
//! Everything in the engine that waits for time — RFC 3261 transaction timers
//! A–K, registration refreshes for up to millions of accounts, push-wake waits,
//! late-wake windows — is a timer in one [`TimerWheel`]. A `BTreeMap` keyed by
//! deadline would work, but it costs `O(log n)` per operation, allocates a node
//! every few inserts and chases pointers through a tree that does not fit in
//! cache at a million entries. The wheel makes insert and cancel `O(1)` and lets
//! the engine pop expired timers one at a time without allocating.
//!
//! # Time
//!
//! The wheel never reads a clock. Every call that needs the time takes an
//! explicit `now: Instant`, which is what keeps the engine sans-IO and lets tests
//! drive a virtual clock (`base + Duration`). Internally time is quantised into
//! *ticks* (1 ms by default, chosen at construction) counted from the `start`
//! instant given at construction:
//!
//! * a deadline is rounded **up** to its tick, so a timer never fires early;
//! * `now` is rounded **down**, so a timer fires at the first
//!   [`poll_expired`](TimerWheel::poll_expired) whose `now` is at or past the
//!   rounded deadline — at most one tick after the deadline itself, provided
//!   the shell polls on time;
//! * a deadline in the past (or before `start`) is due at once and fires on the
//!   next poll, behind the timers that were already due;
//! * a poll with a `now` earlier than a previous one is treated as that previous
//!   `now` (the wheel's time only moves forward), and a poll before `start`
//!   fires nothing.
//!
//! # Levels
//!
//! The wheel has [`NUM_LEVELS`] = 6 levels of 64 slots. A slot of level `n` is
//! `64^n` ticks wide, so a level spans `64^(n+1)` ticks. With the default 1 ms
//! tick:
//!
//! | level | one slot            | whole level            |
//! |-------|---------------------|------------------------|
//! | 0     | 1 tick (1 ms)       | 64 ticks (64 ms)       |
//! | 1     | 64 ticks (64 ms)    | 4 096 ticks (~4.1 s)   |
//! | 2     | 4 096 (~4.1 s)      | 262 144 (~4.4 min)     |
//! | 3     | 262 144 (~4.4 min)  | 2^24 (~4.7 h)          |
//! | 4     | 2^24 (~4.7 h)       | 2^30 (~12.4 days)      |
//! | 5     | 2^30 (~12.4 days)   | 2^36 (~795 days)       |
//!
//! A timer is stored at the lowest level whose slot still tells its deadline
//! apart from the wheel's current tick: level `n` holds deadlines that agree with
//! the current tick in every base-64 digit above `n` and differ in digit `n`.
//! Level 0 therefore holds exactly one tick per slot, and the slot of the
//! current tick is the "due" list. Level 5 is a ring: it holds deadlines in the
//! next 63 blocks of 2^30 ticks.
//!
//! When the wheel's time enters a coarse slot, that slot is *cascaded*: its
//! timers are re-linked into finer levels, in list order. A timer moves down at
//! most five times in its life, so the cost stays amortised `O(1)` per timer,
//! and timers far in the future are never touched until they come close.
//!
//! Each level keeps a `u64` bitmap of its occupied slots, so finding the next
//! slot with work is a `rotate_right` + `trailing_zeros` per level. Time jumps
//! (a shell that slept for hours, a test that skips a day) therefore cost one
//! step per *occupied* slot passed, never one per tick.
//!
//! # Maximum delay
//!
//! A deadline more than `MAX_DELAY_TICKS` = 63 × 2^30 ticks after the wheel's
//! current tick (≈ 782.9 days at 1 ms) is clamped to that delay: the timer fires
//! early relative to what was asked, at the maximum. It is 63 blocks rather
//! than 64 so that the level-5 ring never wraps onto the block being walked.
//! Nothing in SIP waits that long; a caller that needs to can re-arm on expiry.
//!
//! # Ordering
//!
//! Timers that fall in the same tick fire in insertion order (FIFO), which keeps
//! the engine deterministic (e.g. Timer E before Timer F of the same
//! transaction when both land on one tick). [`reschedule`](TimerWheel::reschedule)
//! counts as a fresh insertion: the timer goes to the back of its new tick.
//!
//! # Handles
//!
//! Timers live in a slab (`Vec` with an intrusive free list) and each slot list
//! is an intrusive doubly-linked list of slab indices — no per-insert allocation
//! once the slab has grown, no `unsafe`. A [`TimerHandle`] is the slab index plus
//! a generation counter bumped every time the entry is freed, so a handle to a
//! timer that already fired or was cancelled is *stale*: it cancels nothing,
//! returns `None`/`false`, and never touches the timer that now reuses the
//! entry. (The generation is 32 bits: a stale handle could only alias after the
//! same entry was reused 2^32 times while the handle was kept.)
//!
//! # Memory
//!
//! Per timer: one slab entry of `20 + size_of::<Option<T>>()` bytes rounded up
//! to 8 — **32 bytes** for a `u32` payload or an 8-byte payload with a niche
//! (`NonZeroU64`, `Box`, most enums), **40 bytes** for a plain `u64`. Fixed:
//! 6 levels × 64 slots × 16 bytes ≈ 6 KiB. The slab grows like a `Vec` (up to
//! 2× transiently); size it with [`TimerWheel::with_capacity`] to avoid that.
//! At most `u32::MAX - 1` timers can be live at once.
//!
//! # Driving it from the engine
//!
//! ```
//! use std::time::{Duration, Instant};
//! # use sipis_engine::TimerWheel;
//!
//! let start = Instant::now();
//! let mut wheel = TimerWheel::new(start);
//!
//! // The engine arms timers as it processes messages...
//! let timer_f = wheel.insert(start + Duration::from_secs(32), "timer F");
//! let _refresh = wheel.insert(start + Duration::from_secs(3600), "refresh");
//! // ...and disarms them when the transaction completes.
//! assert_eq!(wheel.cancel(timer_f), Some("timer F"));
//!
//! // The shell sleeps until the next deadline, then hands the engine `now`,
//! // which pops expired timers one at a time.
//! let wake = wheel.next_deadline().unwrap();
//! assert_eq!(wake, start + Duration::from_secs(3600));
//! while let Some((_handle, what)) = wheel.poll_expired(wake) {
//!     assert_eq!(what, "refresh");
//! }
//! assert!(wheel.is_empty());
//! ```

use std::fmt;
use std::time::{Duration, Instant};

/// Bits of the tick consumed by one level: 64 slots per level.
const LEVEL_BITS: u32 = 6;
const SLOTS: usize = 1 << LEVEL_BITS;
const SLOT_MASK: u64 = SLOTS as u64 - 1;

/// Number of levels in the wheel.
pub const NUM_LEVELS: usize = 6;

/// Shift of the top level's digit: a top-level slot is `2^30` ticks wide.
const TOP_SHIFT: u32 = LEVEL_BITS * (NUM_LEVELS as u32 - 1);

/// Longest delay, in ticks, that the wheel represents; later deadlines are
/// clamped to it. 63 (not 64) top-level slots, so the ring never aliases the
/// block that is currently being walked (≈ 782.9 days at the default 1 ms tick).
pub const MAX_DELAY_TICKS: u64 = (SLOTS as u64 - 1) << TOP_SHIFT;

/// Tick used by [`TimerWheel::new`] and [`TimerWheel::with_capacity`]: fine
/// enough for RFC 3261 Timer A's 500 ms doubling, coarse enough that one tick
/// of lateness is noise.
pub const DEFAULT_TICK: Duration = Duration::from_millis(1);

/// "No entry" in the intrusive lists and the free list.
const NIL: u32 = u32::MAX;

/// Identifies one armed timer, for [`TimerWheel::cancel`] and
/// [`TimerWheel::reschedule`].
///
/// It is `Copy` and 8 bytes so the engine can keep it inline in transaction and
/// registration state. Once the timer has fired or been cancelled the handle is
/// stale and every operation with it is a harmless no-op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerHandle {
    index: u32,
    generation: u32,
}

/// One slab entry: a live timer, or a link in the free list when `value` is
/// `None`.
struct Entry<T> {
    /// Deadline in ticks since `start`, already rounded and clamped. Together
    /// with the wheel's current tick it determines the (level, slot) the entry
    /// is linked in, so the location is not stored.
    tick: u64,
    /// Previous entry in the slot list (`NIL` at the head).
    prev: u32,
    /// Next entry in the slot list, or in the free list when vacant.
    next: u32,
    /// Bumped on every free, so handles to earlier occupants are stale.
    generation: u32,
    value: Option<T>,
}

/// One level: 64 slot lists and the bitmap of which of them are non-empty.
#[derive(Clone, Copy)]
struct Level {
    occupied: u64,
    head: [u32; SLOTS],
    tail: [u32; SLOTS],
    /// Smallest tick ever linked into the slot since it was last empty. Exact
    /// until something is unlinked (cancel/reschedule), a lower bound after:
    /// it makes `next_deadline` precise without scanning coarse slots.
    min_tick: [u64; SLOTS],
}

impl Level {
    const EMPTY: Level = Level {
        occupied: 0,
        head: [NIL; SLOTS],
        tail: [NIL; SLOTS],
        min_tick: [u64::MAX; SLOTS],
    };
}

/// A hierarchical timer wheel holding timers with payload `T`.
///
/// See the module documentation (`engine/src/wheel.rs`) for the levels, the rounding rules and
/// how the engine drives it.
pub struct TimerWheel<T> {
    start: Instant,
    tick_nanos: u64,
    /// The wheel's current tick: every timer at this tick is due, every live
    /// timer has `tick >= elapsed`. Only moves forward.
    elapsed: u64,
    /// Boxed so that moving the wheel (it lives inside the engine) copies a
    /// pointer, not 6 KiB.
    levels: Box<[Level; NUM_LEVELS]>,
    entries: Vec<Entry<T>>,
    free_head: u32,
    len: usize,
    /// Slots visited by `poll_expired` (expiry or cascade); lets tests prove
    /// that time jumps skip empty slots.
    #[cfg_attr(not(test), allow(dead_code))]
    slots_visited: u64,
}

impl<T> TimerWheel<T> {
    /// An empty wheel whose tick 0 is `start`, with the default 1 ms tick.
    pub fn new(start: Instant) -> Self {
        Self::with_tick_and_capacity(start, DEFAULT_TICK, 0)
    }

    /// An empty wheel with room for `capacity` timers before the slab has to
    /// grow: size it for the expected peak so steady-state inserts never
    /// allocate.
    pub fn with_capacity(start: Instant, capacity: usize) -> Self {
        Self::with_tick_and_capacity(start, DEFAULT_TICK, capacity)
    }

    /// An empty wheel with an explicit tick length.
    ///
    /// A coarser tick stretches every level (and `MAX_DELAY_TICKS`) and makes
    /// timers up to one tick later; a finer one costs more cascades per timer.
    ///
    /// # Panics
    ///
    /// If `tick` is zero or longer than `u64::MAX` nanoseconds: both are
    /// configuration bugs, caught at start-up.
    pub fn with_tick_and_capacity(start: Instant, tick: Duration, capacity: usize) -> Self {
        let tick_nanos = u64::try_from(tick.as_nanos()).expect("timer wheel tick too long");
        assert!(tick_nanos > 0, "timer wheel tick must be non-zero");
        TimerWheel {
            start,
            tick_nanos,
            elapsed: 0,
            levels: Box::new([Level::EMPTY; NUM_LEVELS]),
            entries: Vec::with_capacity(capacity),
            free_head: NIL,
            len: 0,
            slots_visited: 0,
        }
    }

    /// The instant of tick 0.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// The tick length: the wheel's resolution.
    pub fn tick(&self) -> Duration {
        Duration::from_nanos(self.tick_nanos)
    }

    /// Number of armed timers (due-but-not-yet-polled ones included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many timers fit before the slab reallocates.
    pub fn capacity(&self) -> usize {
        self.entries.capacity()
    }

    /// Reserves slab room for `additional` more timers beyond the ones already
    /// armed, e.g. before loading registrations at start-up.
    pub fn reserve(&mut self, additional: usize) {
        let free = self.entries.len() - self.len;
        self.entries.reserve(additional.saturating_sub(free));
    }

    /// Arms a timer that fires at `deadline` (rounded up to the tick) carrying
    /// `value`. `O(1)`; allocates only when the slab is full.
    ///
    /// A deadline already past fires on the next poll; one beyond
    /// `MAX_DELAY_TICKS` is clamped to it.
    ///
    /// # Panics
    ///
    /// If `u32::MAX - 1` timers are already armed.
    pub fn insert(&mut self, deadline: Instant, value: T) -> TimerHandle {
        let tick = self.clamp_tick(self.deadline_tick(deadline));
        let handle = self.alloc(tick, value);
        self.link(handle.index);
        self.len += 1;
        handle
    }

    /// Disarms the timer and gives its payload back. `O(1)`.
    ///
    /// Returns `None`, and changes nothing, if the handle is stale (the timer
    /// already fired or was cancelled): the engine can cancel unconditionally
    /// when a transaction ends, whether or not its timer raced it.
    pub fn cancel(&mut self, handle: TimerHandle) -> Option<T> {
        let index = self.live_index(handle)?;
        self.unlink(index);
        self.release(index)
    }

    /// Moves a live timer to a new deadline, keeping its handle and payload.
    /// `O(1)`.
    ///
    /// This is the registration-refresh path: one call instead of cancel +
    /// insert, and the engine's stored handle stays valid. The timer queues
    /// behind the timers already in its new tick, as if freshly inserted.
    /// Returns `false`, and changes nothing, for a stale handle.
    pub fn reschedule(&mut self, handle: TimerHandle, deadline: Instant) -> bool {
        let Some(index) = self.live_index(handle) else {
            return false;
        };
        self.unlink(index);
        let tick = self.clamp_tick(self.deadline_tick(deadline));
        self.entries[index as usize].tick = tick;
        self.link(index);
        true
    }

    /// The payload of a live timer, `None` for a stale handle.
    pub fn get(&self, handle: TimerHandle) -> Option<&T> {
        let index = self.live_index(handle)?;
        self.entries[index as usize].value.as_ref()
    }

    /// The payload of a live timer, mutably, `None` for a stale handle.
    pub fn get_mut(&mut self, handle: TimerHandle) -> Option<&mut T> {
        let index = self.live_index(handle)?;
        self.entries[index as usize].value.as_mut()
    }

    /// When a live timer will fire: its deadline after rounding up to the tick
    /// and clamping (so possibly later than asked by less than a tick, or
    /// earlier if it was clamped or was inserted in the past). `None` for a
    /// stale handle.
    pub fn deadline(&self, handle: TimerHandle) -> Option<Instant> {
        let index = self.live_index(handle)?;
        Some(self.tick_instant(self.entries[index as usize].tick))
    }

    /// Pops one expired timer, if any is due at `now`.
    ///
    /// The engine calls this in a loop until it returns `None`, handling each
    /// timer before popping the next, so a handler that cancels or arms other
    /// timers sees a consistent wheel. Timers come out in deadline-tick order,
    /// FIFO within a tick. The returned handle is already stale; it is there so
    /// the engine can tell which of its stored handles fired.
    ///
    /// Advancing over empty time is cheap: the occupied-slot bitmaps take the
    /// wheel straight to the next slot with work, cascading coarse slots into
    /// finer ones on the way. Never allocates.
    pub fn poll_expired(&mut self, now: Instant) -> Option<(TimerHandle, T)> {
        let now_tick = self.now_tick(now)?.max(self.elapsed);
        loop {
            let due_slot = (self.elapsed & SLOT_MASK) as usize;
            let index = self.levels[0].head[due_slot];
            if index != NIL {
                let generation = self.entries[index as usize].generation;
                self.unlink(index);
                let value = self.release(index)?;
                return Some((TimerHandle { index, generation }, value));
            }
            match self.next_occupied() {
                Some((level, slot, slot_start)) if slot_start <= now_tick => {
                    self.slots_visited += 1;
                    // Entering the slot's range: from here on its timers must
                    // live at finer levels (level 0 needs no move: the slot
                    // simply becomes the due slot).
                    self.elapsed = slot_start;
                    if level > 0 {
                        self.cascade(level, slot);
                    }
                }
                _ => {
                    // Nothing due up to `now`. Moving the current tick forward
                    // relocates nothing, because no occupied slot starts at or
                    // before `now_tick` (see `locate`); it makes later inserts
                    // with deadlines before `now` due at once.
                    self.elapsed = now_tick;
                    return None;
                }
            }
        }
    }

    /// Pops every timer due at `now`, calling `f` on each in firing order, and
    /// returns how many fired. A convenience over
    /// [`poll_expired`](Self::poll_expired) for callers that do not touch the
    /// wheel from the handler.
    pub fn drain_expired(&mut self, now: Instant, mut f: impl FnMut(TimerHandle, T)) -> usize {
        let mut fired = 0;
        while let Some((handle, value)) = self.poll_expired(now) {
            f(handle, value);
            fired += 1;
        }
        fired
    }

    /// When the shell should next call [`poll_expired`](Self::poll_expired):
    /// `None` when no timer is armed.
    ///
    /// Cheap — a bitmap scan of at most six `u64`s plus one array read — so the
    /// shell can ask after every engine step. The answer is exact unless timers
    /// were cancelled or rescheduled out of the earliest coarse slot; then it
    /// may be earlier than the first real deadline (a spurious wake, after
    /// which polling cascades the slot and the next answer is tighter), but it
    /// is never later. When timers are already due it returns the current tick,
    /// which is not after the last `now` polled: poll again immediately.
    pub fn next_deadline(&self) -> Option<Instant> {
        let (level, slot, _) = self.next_occupied()?;
        Some(self.tick_instant(self.levels[level].min_tick[slot]))
    }

    // --- time conversion -------------------------------------------------

    /// Deadline → tick, rounding up so the timer never fires early.
    fn deadline_tick(&self, deadline: Instant) -> u64 {
        saturating_nanos(deadline.saturating_duration_since(self.start)).div_ceil(self.tick_nanos)
    }

    /// `now` → tick, rounding down; `None` before `start`.
    fn now_tick(&self, now: Instant) -> Option<u64> {
        let since = now.checked_duration_since(self.start)?;
        Some(saturating_nanos(since) / self.tick_nanos)
    }

    /// Past deadlines become due now; far ones are clamped to the maximum delay.
    fn clamp_tick(&self, tick: u64) -> u64 {
        tick.clamp(self.elapsed, self.elapsed.saturating_add(MAX_DELAY_TICKS))
    }

    fn tick_instant(&self, tick: u64) -> Instant {
        let mut offset = Duration::from_nanos(tick.saturating_mul(self.tick_nanos));
        // Only unrepresentable instants (centuries out) fail; halve rather than
        // panic. Unreachable for deadlines that came from real `Instant`s.
        loop {
            if let Some(instant) = self.start.checked_add(offset) {
                return instant;
            }
            offset /= 2;
        }
    }

    // --- placement ---------------------------------------------------------

    /// Where a timer at `tick` lives given the current tick.
    ///
    /// Invariant kept by every operation: each live timer is linked at
    /// `locate(tick)` for the *current* `elapsed`. It survives `elapsed`
    /// moving forward as long as `elapsed` does not enter an occupied slot's
    /// range — and `poll_expired` cascades a slot exactly when it does. It also
    /// makes all timers of one tick share one list, which is what keeps FIFO
    /// order within a tick across cascades.
    #[inline]
    fn locate(&self, tick: u64) -> (usize, usize) {
        let level = level_for(self.elapsed, tick);
        let slot = (tick >> (level as u32 * LEVEL_BITS)) & SLOT_MASK;
        (level, slot as usize)
    }

    /// The earliest non-empty slot: `(level, slot, first tick of the slot)`.
    ///
    /// Every timer at level `n` is earlier than every timer at level `n + 1`,
    /// so the answer is in the lowest non-empty level, at the first occupied
    /// slot at or after the current digit (cyclically, for the top-level ring).
    #[inline]
    fn next_occupied(&self) -> Option<(usize, usize, u64)> {
        for (level, lvl) in self.levels.iter().enumerate() {
            if lvl.occupied == 0 {
                continue;
            }
            let shift = level as u32 * LEVEL_BITS;
            let base = self.elapsed >> shift;
            let distance = u64::from(
                lvl.occupied
                    .rotate_right((base & SLOT_MASK) as u32)
                    .trailing_zeros(),
            );
            let slot = ((base + distance) & SLOT_MASK) as usize;
            return Some((level, slot, (base + distance) << shift));
        }
        None
    }

    /// Re-links every timer of a coarse slot at the finer level it now belongs
    /// to, preserving list order.
    fn cascade(&mut self, level: usize, slot: usize) {
        let lvl = &mut self.levels[level];
        let mut index = lvl.head[slot];
        lvl.head[slot] = NIL;
        lvl.tail[slot] = NIL;
        lvl.occupied &= !(1 << slot);
        lvl.min_tick[slot] = u64::MAX;
        while index != NIL {
            let next = self.entries[index as usize].next;
            debug_assert!(self.locate(self.entries[index as usize].tick).0 < level);
            self.link(index);
            index = next;
        }
    }

    /// Appends a (currently unlinked) entry to the tail of its slot list.
    fn link(&mut self, index: u32) {
        let tick = self.entries[index as usize].tick;
        let (level, slot) = self.locate(tick);
        let lvl = &mut self.levels[level];
        let tail = lvl.tail[slot];
        let entry = &mut self.entries[index as usize];
        entry.prev = tail;
        entry.next = NIL;
        if tail == NIL {
            lvl.head[slot] = index;
            lvl.occupied |= 1 << slot;
        } else {
            self.entries[tail as usize].next = index;
        }
        lvl.tail[slot] = index;
        if tick < lvl.min_tick[slot] {
            lvl.min_tick[slot] = tick;
        }
    }

    /// Removes a linked entry from its slot list.
    fn unlink(&mut self, index: u32) {
        let entry = &self.entries[index as usize];
        let (tick, prev, next) = (entry.tick, entry.prev, entry.next);
        let (level, slot) = self.locate(tick);
        let lvl = &mut self.levels[level];
        if prev == NIL {
            lvl.head[slot] = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next == NIL {
            lvl.tail[slot] = prev;
        } else {
            self.entries[next as usize].prev = prev;
        }
        if lvl.head[slot] == NIL {
            lvl.occupied &= !(1 << slot);
            lvl.min_tick[slot] = u64::MAX;
        }
    }

    // --- slab --------------------------------------------------------------

    fn live_index(&self, handle: TimerHandle) -> Option<u32> {
        let entry = self.entries.get(handle.index as usize)?;
        (entry.generation == handle.generation && entry.value.is_some()).then_some(handle.index)
    }

    /// Takes a free entry (or grows the slab) and fills it; does not link it.
    fn alloc(&mut self, tick: u64, value: T) -> TimerHandle {
        if self.free_head != NIL {
            let index = self.free_head;
            let entry = &mut self.entries[index as usize];
            self.free_head = entry.next;
            entry.tick = tick;
            entry.value = Some(value);
            return TimerHandle {
                index,
                generation: entry.generation,
            };
        }
        let index = self.entries.len();
        assert!(
            index < NIL as usize,
            "timer wheel full: u32::MAX - 1 timers armed"
        );
        self.entries.push(Entry {
            tick,
            prev: NIL,
            next: NIL,
            generation: 0,
            value: Some(value),
        });
        TimerHandle {
            index: index as u32,
            generation: 0,
        }
    }

    /// Frees an (already unlinked) entry, staling every handle to it.
    fn release(&mut self, index: u32) -> Option<T> {
        let entry = &mut self.entries[index as usize];
        let value = entry.value.take();
        entry.generation = entry.generation.wrapping_add(1);
        entry.prev = NIL;
        entry.next = self.free_head;
        self.free_head = index;
        self.len -= 1;
        value
    }
}

impl<T> fmt::Debug for TimerWheel<T> {
    /// Summary only: dumping a million payloads helps nobody.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerWheel")
            .field("len", &self.len)
            .field("capacity", &self.entries.capacity())
            .field("tick", &self.tick())
            .field("elapsed_ticks", &self.elapsed)
            .finish()
    }
}

/// Level for a timer at `tick` when the current tick is `elapsed`
/// (`tick >= elapsed`).
///
/// Within the current top-level block it is the base-64 digit of the highest
/// bit where they differ (`| SLOT_MASK` maps "same 64-tick slot" to level 0);
/// any later block goes to the top-level ring.
#[inline]
fn level_for(elapsed: u64, tick: u64) -> usize {
    if (tick >> TOP_SHIFT) != (elapsed >> TOP_SHIFT) {
        return NUM_LEVELS - 1;
    }
    let differing = (elapsed ^ tick) | SLOT_MASK;
    ((63 - differing.leading_zeros()) / LEVEL_BITS) as usize
}

fn saturating_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor a simulated clock
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashMap};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    impl<T> TimerWheel<T> {
        /// Walks every list and checks links, bitmaps, slot minima, placement
        /// and the live count against the slab.
        fn check_invariants(&self) {
            let mut linked = 0;
            for (level, lvl) in self.levels.iter().enumerate() {
                for slot in 0..SLOTS {
                    let head = lvl.head[slot];
                    assert_eq!(
                        lvl.occupied >> slot & 1 == 1,
                        head != NIL,
                        "bitmap L{level} S{slot}"
                    );
                    let (mut prev, mut index, mut min) = (NIL, head, u64::MAX);
                    while index != NIL {
                        let entry = &self.entries[index as usize];
                        assert!(entry.value.is_some(), "vacant entry linked");
                        assert_eq!(entry.prev, prev, "broken prev link");
                        assert!(entry.tick >= self.elapsed, "timer behind the wheel");
                        assert!(entry.tick <= self.elapsed + MAX_DELAY_TICKS);
                        assert_eq!(self.locate(entry.tick), (level, slot), "misplaced timer");
                        min = min.min(entry.tick);
                        linked += 1;
                        prev = index;
                        index = entry.next;
                    }
                    assert_eq!(lvl.tail[slot], prev, "broken tail");
                    if head == NIL {
                        assert_eq!(lvl.min_tick[slot], u64::MAX);
                    } else {
                        assert!(lvl.min_tick[slot] <= min, "slot minimum above a timer");
                    }
                }
            }
            assert_eq!(linked, self.len);
            let live = self.entries.iter().filter(|e| e.value.is_some()).count();
            assert_eq!(live, self.len);
            let mut free = 0;
            let mut index = self.free_head;
            while index != NIL {
                assert!(self.entries[index as usize].value.is_none());
                free += 1;
                index = self.entries[index as usize].next;
            }
            assert_eq!(free + self.len, self.entries.len());
        }

        fn drain_values(&mut self, now: Instant) -> Vec<T> {
            let mut out = Vec::new();
            self.drain_expired(now, |_, v| out.push(v));
            out
        }
    }

    #[test]
    fn cancel_with_stale_handle_cancels_nothing() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        let a = wheel.insert(t0 + ms(10), 'a');
        assert_eq!(wheel.cancel(a), Some('a'));
        assert_eq!(wheel.cancel(a), None);
        // `b` reuses `a`'s slab entry; `a`'s handle must not reach it.
        let b = wheel.insert(t0 + ms(10), 'b');
        assert_eq!(b.index, a.index);
        assert_eq!(wheel.cancel(a), None);
        assert!(!wheel.reschedule(a, t0 + ms(99)));
        assert_eq!(wheel.get(a), None);
        assert_eq!(wheel.deadline(b), Some(t0 + ms(10)));
        assert_eq!(wheel.len(), 1);
        assert_eq!(wheel.drain_values(t0 + ms(10)), vec!['b']);
        wheel.check_invariants();
    }

    #[test]
    fn cancel_after_fire_returns_none() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        let a = wheel.insert(t0 + ms(5), 1);
        let (fired, value) = wheel.poll_expired(t0 + ms(5)).unwrap();
        assert_eq!((fired, value), (a, 1));
        assert_eq!(wheel.cancel(a), None);
        assert!(!wheel.reschedule(a, t0 + ms(50)));
        assert!(wheel.is_empty());
    }

    #[test]
    fn handle_from_another_position_is_ignored() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::<u8>::new(t0);
        let bogus = TimerHandle {
            index: 1234,
            generation: 0,
        };
        assert_eq!(wheel.cancel(bogus), None);
        assert!(!wheel.reschedule(bogus, t0));
        assert_eq!(wheel.get_mut(bogus), None);
    }

    #[test]
    fn timer_never_fires_early() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        // 2.3 ms rounds up to tick 3.
        let deadline = t0 + Duration::from_micros(2_300);
        wheel.insert(deadline, ());
        assert!(wheel
            .poll_expired(t0 + Duration::from_micros(2_300))
            .is_none());
        assert!(wheel
            .poll_expired(t0 + Duration::from_micros(2_999))
            .is_none());
        assert!(wheel.poll_expired(t0 + ms(3)).is_some());
    }

    #[test]
    fn timer_fires_within_one_tick_of_its_deadline() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        let mut now = t0;
        for us in [1u64, 999, 1_000, 1_001, 64_500, 4_100_001, 3_600_000_123] {
            let deadline = now + Duration::from_micros(us);
            let h = wheel.insert(deadline, us);
            let fires_at = wheel.deadline(h).unwrap();
            assert!(fires_at >= deadline && fires_at - deadline < ms(1));
            assert_eq!(wheel.next_deadline(), Some(fires_at));
            assert!(wheel
                .poll_expired(fires_at - Duration::from_nanos(1))
                .is_none());
            assert_eq!(wheel.poll_expired(fires_at).map(|(_, v)| v), Some(us));
            now = fires_at;
        }
    }

    #[test]
    fn timers_in_same_tick_fire_in_insertion_order() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        // Inserted from different distances so they sit at different levels
        // first, then meet in one tick after cascading.
        let target = t0 + ms(300_000);
        wheel.insert(target, 0);
        wheel.insert(target - Duration::from_micros(400), 1); // same tick
        wheel.poll_expired(t0 + ms(299_000));
        wheel.insert(target, 2);
        wheel.poll_expired(t0 + ms(299_990));
        wheel.insert(target, 3);
        wheel.insert(target + ms(1), 9);
        wheel.check_invariants();
        assert_eq!(wheel.drain_values(target), vec![0, 1, 2, 3]);
        assert_eq!(wheel.drain_values(target + ms(1)), vec![9]);
    }

    #[test]
    fn past_deadline_fires_on_next_poll() {
        let before_start = Instant::now();
        let t0 = before_start + ms(100);
        let mut wheel = TimerWheel::new(t0);
        assert!(wheel.poll_expired(t0 + ms(1_000)).is_none());
        wheel.insert(t0 + ms(1_000), "due");
        wheel.insert(t0 + ms(10), "past");
        wheel.insert(before_start, "before start");
        assert_eq!(wheel.next_deadline(), Some(t0 + ms(1_000)));
        assert_eq!(
            wheel.drain_values(t0 + ms(1_000)),
            vec!["due", "past", "before start"]
        );
    }

    #[test]
    fn poll_before_start_fires_nothing() {
        let t0 = Instant::now() + ms(1_000);
        let mut wheel = TimerWheel::new(t0);
        wheel.insert(t0, 1);
        assert!(wheel.poll_expired(t0 - ms(1)).is_none());
        assert_eq!(wheel.drain_values(t0), vec![1]);
    }

    #[test]
    fn clock_going_backwards_is_treated_as_no_progress() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        wheel.insert(t0 + ms(20), 'a');
        wheel.insert(t0 + ms(20), 'b');
        wheel.insert(t0 + ms(30), 'c');
        assert_eq!(wheel.poll_expired(t0 + ms(25)).map(|(_, v)| v), Some('a'));
        // An older `now` still drains what was already due, nothing more.
        assert_eq!(wheel.drain_values(t0 + ms(5)), vec!['b']);
        assert_eq!(wheel.drain_values(t0 + ms(30)), vec!['c']);
    }

    #[test]
    fn hours_jump_cascades_without_walking_every_tick() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        // One timer 10 h out: 36 M ticks away, in level 4.
        wheel.insert(t0 + ms(10 * 3_600_000), "far");
        assert!(wheel.poll_expired(t0 + ms(10 * 3_600_000 - 1)).is_none());
        assert!(
            wheel.slots_visited <= NUM_LEVELS as u64,
            "visited {}",
            wheel.slots_visited
        );
        assert_eq!(wheel.drain_values(t0 + ms(10 * 3_600_000)), vec!["far"]);
        assert!(wheel.slots_visited <= NUM_LEVELS as u64);

        // A thousand timers over five hours, then one 20-hour jump.
        let mut wheel = TimerWheel::new(t0);
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut expected = Vec::new();
        for i in 0..1_000u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = seed % (5 * 3_600_000);
            wheel.insert(t0 + ms(at), (at, i));
            expected.push((at, i));
        }
        expected.sort();
        let fired = wheel.drain_values(t0 + ms(20 * 3_600_000));
        assert_eq!(fired, expected);
        // At most one visit per timer per level, against 72 M ticks walked.
        assert!(
            wheel.slots_visited <= 1_000 * NUM_LEVELS as u64,
            "visited {}",
            wheel.slots_visited
        );
        // An idle wheel jumps for free.
        let visited = wheel.slots_visited;
        assert!(wheel.poll_expired(t0 + ms(500 * 3_600_000)).is_none());
        assert_eq!(wheel.slots_visited, visited);
    }

    #[test]
    fn reschedule_moves_timer_and_keeps_handle() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        let refresh = wheel.insert(t0 + ms(3_600_000), "refresh");
        let other = wheel.insert(t0 + ms(1_800_000), "other");
        assert!(wheel.reschedule(refresh, t0 + ms(60_000)));
        assert_eq!(wheel.deadline(refresh), Some(t0 + ms(60_000)));
        assert_eq!(wheel.next_deadline(), Some(t0 + ms(60_000)));
        let (h, v) = wheel.poll_expired(t0 + ms(60_000)).unwrap();
        assert_eq!((h, v), (refresh, "refresh"));
        // Later: push it out instead.
        assert!(wheel.reschedule(other, t0 + ms(7_200_000)));
        assert!(wheel.poll_expired(t0 + ms(3_600_000)).is_none());
        assert_eq!(wheel.drain_values(t0 + ms(7_200_000)), vec!["other"]);
    }

    #[test]
    fn rescheduled_timer_queues_behind_its_new_tick() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        let a = wheel.insert(t0 + ms(50), 'a');
        wheel.insert(t0 + ms(50), 'b');
        assert!(wheel.reschedule(a, t0 + ms(50)));
        assert_eq!(wheel.drain_values(t0 + ms(50)), vec!['b', 'a']);
    }

    #[test]
    fn next_deadline_is_exact_without_cancellations() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        assert_eq!(wheel.next_deadline(), None);
        // Lands in a coarse slot (level 3) that starts well before it.
        let far = t0 + ms(1_000_003);
        wheel.insert(far, 1);
        assert_eq!(wheel.next_deadline(), Some(far));
        wheel.insert(t0 + ms(70), 2);
        assert_eq!(wheel.next_deadline(), Some(t0 + ms(70)));
        wheel.poll_expired(t0 + ms(70));
        assert_eq!(wheel.next_deadline(), Some(far));
        assert!(wheel.poll_expired(far - ms(1)).is_none());
        assert_eq!(wheel.next_deadline(), Some(far));
    }

    #[test]
    fn next_deadline_is_never_later_than_the_earliest_timer() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        // Both in level-3 slot 1 (ticks 262 144..524 287).
        let early = wheel.insert(t0 + ms(300_000), 1);
        let late = t0 + ms(500_000);
        wheel.insert(late, 2);
        wheel.cancel(early);
        // The slot minimum is now stale: a lower bound, i.e. a spurious wake...
        assert_eq!(wheel.next_deadline(), Some(t0 + ms(300_000)));
        assert!(wheel.poll_expired(t0 + ms(300_000)).is_none());
        // ...after which polling has cascaded the slot and the answer is exact.
        assert_eq!(wheel.next_deadline(), Some(late));
        assert!(wheel.poll_expired(late - ms(1)).is_none());
        assert_eq!(wheel.drain_values(late), vec![2]);
        assert_eq!(wheel.next_deadline(), None);
    }

    #[test]
    fn next_deadline_reports_due_timers_as_now() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        wheel.insert(t0 + ms(5), 1);
        wheel.insert(t0 + ms(5), 2);
        wheel.poll_expired(t0 + ms(9));
        assert_eq!(wheel.next_deadline(), Some(t0 + ms(5)));
        wheel.insert(t0, 3);
        assert!(wheel.next_deadline().unwrap() <= t0 + ms(9));
    }

    #[test]
    fn deadline_beyond_max_delay_is_clamped() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        let max = t0 + ms(MAX_DELAY_TICKS);
        let h = wheel.insert(t0 + Duration::from_secs(10 * 365 * 86_400), "decade");
        assert_eq!(wheel.deadline(h), Some(max));
        assert!(wheel.poll_expired(max - ms(1)).is_none());
        assert_eq!(wheel.drain_values(max), vec!["decade"]);
    }

    #[test]
    fn top_level_ring_wraps_across_blocks() {
        // Start just before a 2^30-tick block boundary, so far timers land in
        // ring slots numbered below the current one.
        let t0 = Instant::now();
        let mut wheel = TimerWheel::with_tick_and_capacity(t0, Duration::from_nanos(1), 0);
        let block = 1u64 << TOP_SHIFT;
        let now = t0 + Duration::from_nanos(40 * block - 3);
        assert!(wheel.poll_expired(now).is_none());
        let mut expected = Vec::new();
        for k in [1u64, 2, 5, 20, 40, 62, 63] {
            let at = 40 * block - 3 + k * block;
            wheel.insert(t0 + Duration::from_nanos(at), at);
            expected.push(at);
        }
        wheel.insert(t0 + Duration::from_nanos(u64::MAX / 2), u64::MAX);
        expected.push(40 * block - 3 + MAX_DELAY_TICKS);
        wheel.check_invariants();
        let mut fired = Vec::new();
        while let Some(at) = wheel.next_deadline() {
            let (h, v) = wheel.poll_expired(at).unwrap();
            assert!(wheel.get(h).is_none());
            fired.push(if v == u64::MAX {
                saturating_nanos(at - t0)
            } else {
                v
            });
            wheel.check_invariants();
        }
        assert_eq!(fired, expected);
    }

    #[test]
    fn slab_reuses_entries_without_growing() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::with_capacity(t0, 1_000);
        let cap = wheel.capacity();
        for round in 0..50u64 {
            let handles: Vec<_> = (0..1_000)
                .map(|i| wheel.insert(t0 + ms(round * 10 + i % 7), i))
                .collect();
            for h in handles.iter().step_by(2) {
                wheel.cancel(*h);
            }
            wheel.drain_expired(t0 + ms(round * 10 + 10), |_, _| {});
            assert!(wheel.is_empty());
        }
        assert_eq!(wheel.capacity(), cap);
        wheel.reserve(1_000);
        assert_eq!(wheel.capacity(), cap);
    }

    #[test]
    fn entry_is_small() {
        // Documented in the module header: keep in sync.
        assert_eq!(std::mem::size_of::<Entry<u32>>(), 32);
        assert_eq!(std::mem::size_of::<Entry<std::num::NonZeroU64>>(), 32);
        assert_eq!(std::mem::size_of::<Entry<u64>>(), 40);
        assert_eq!(std::mem::size_of::<TimerHandle>(), 8);
        assert!(std::mem::size_of::<TimerWheel<u64>>() <= 96);
    }

    #[test]
    fn get_mut_updates_payload() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        let h = wheel.insert(t0 + ms(3), 1);
        *wheel.get_mut(h).unwrap() += 41;
        assert_eq!(wheel.get(h), Some(&42));
        assert_eq!(wheel.drain_values(t0 + ms(3)), vec![42]);
    }

    // --- model-based property test -----------------------------------------

    /// The reference: a `BTreeMap<(tick, seq), id>` plus the same two rules the
    /// wheel documents — deadlines round up to the 1 ms tick, are clamped into
    /// `[current tick, current tick + MAX_DELAY_TICKS]`, and the current tick
    /// becomes the tick of each fired timer, or `now` when nothing is due.
    #[derive(Default)]
    struct Model {
        elapsed: u64,
        seq: u64,
        queue: BTreeMap<(u64, u64), u64>,
        keys: HashMap<u64, (u64, u64)>,
    }

    impl Model {
        fn tick_of_us(us: u64) -> u64 {
            us.div_ceil(1_000)
        }

        fn insert(&mut self, id: u64, deadline_us: u64) -> u64 {
            let tick =
                Self::tick_of_us(deadline_us).clamp(self.elapsed, self.elapsed + MAX_DELAY_TICKS);
            self.seq += 1;
            self.queue.insert((tick, self.seq), id);
            self.keys.insert(id, (tick, self.seq));
            tick
        }

        fn cancel(&mut self, id: u64) -> Option<u64> {
            let key = self.keys.remove(&id)?;
            self.queue.remove(&key)
        }

        fn reschedule(&mut self, id: u64, deadline_us: u64) -> bool {
            if self.cancel(id).is_none() {
                return false;
            }
            self.insert(id, deadline_us);
            true
        }

        fn poll(&mut self, now_us: u64) -> Option<u64> {
            let now_tick = (now_us / 1_000).max(self.elapsed);
            match self.queue.first_key_value() {
                Some((&(tick, seq), _)) if tick <= now_tick => {
                    self.elapsed = tick;
                    let id = self.queue.remove(&(tick, seq)).unwrap();
                    self.keys.remove(&id);
                    Some(id)
                }
                _ => {
                    self.elapsed = now_tick;
                    None
                }
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Deadline relative to the virtual now, in µs (negative = past).
        Insert(i64),
        Cancel(usize),
        Reschedule(usize, i64),
        /// Advance the clock, then poll until nothing is due.
        AdvanceAndDrain(u64),
        /// Advance the clock, then pop a single timer.
        AdvanceAndPollOnce(u64),
        /// Poll once with a `now` that went backwards.
        PollInThePast(u64),
    }

    fn offset_us() -> impl Strategy<Value = i64> {
        prop_oneof![
            4 => -5_000i64..5_000,                  // same / neighbouring ticks, past
            3 => 0i64..300_000,                     // levels 0-2
            2 => 0i64..7_200_000_000,               // two hours: levels 3-4
            1 => 0i64..(1i64 << 38) * 1_000,        // past the max delay: level 5, clamping
        ]
    }

    fn advance_us() -> impl Strategy<Value = u64> {
        prop_oneof![
            6 => 0u64..3_000,
            3 => 0u64..400_000,
            2 => 0u64..10_000_000_000,
            1 => 0u64..(1u64 << 37) * 1_000,
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => offset_us().prop_map(Op::Insert),
            2 => any::<usize>().prop_map(Op::Cancel),
            2 => (any::<usize>(), offset_us()).prop_map(|(i, d)| Op::Reschedule(i, d)),
            2 => advance_us().prop_map(Op::AdvanceAndDrain),
            2 => advance_us().prop_map(Op::AdvanceAndPollOnce),
            1 => (0u64..10_000).prop_map(Op::PollInThePast),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn wheel_matches_btreemap_model(ops in proptest::collection::vec(op(), 1..200)) {
            let base = Instant::now();
            let at = |us: u64| base + Duration::from_micros(us);
            let mut wheel = TimerWheel::new(base);
            let mut model = Model::default();
            let mut handles: Vec<TimerHandle> = Vec::new(); // id = position
            let mut now_us = 0u64;

            for op in ops {
                match op {
                    Op::Insert(offset) => {
                        let deadline_us = now_us.saturating_add_signed(offset);
                        let id = handles.len() as u64;
                        let h = wheel.insert(at(deadline_us), id);
                        let tick = model.insert(id, deadline_us);
                        prop_assert_eq!(wheel.deadline(h), Some(base + ms(tick)));
                        handles.push(h);
                    }
                    Op::Cancel(i) if !handles.is_empty() => {
                        let id = i % handles.len();
                        prop_assert_eq!(wheel.cancel(handles[id]), model.cancel(id as u64));
                    }
                    Op::Reschedule(i, offset) if !handles.is_empty() => {
                        let id = i % handles.len();
                        let deadline_us = now_us.saturating_add_signed(offset);
                        prop_assert_eq!(
                            wheel.reschedule(handles[id], at(deadline_us)),
                            model.reschedule(id as u64, deadline_us)
                        );
                    }
                    Op::Cancel(_) | Op::Reschedule(..) => {}
                    Op::AdvanceAndDrain(dt) => {
                        now_us += dt;
                        loop {
                            let got = wheel.poll_expired(at(now_us));
                            let want = model.poll(now_us);
                            let want = want.map(|id| (handles[id as usize], id));
                            prop_assert_eq!(got, want);
                            if got.is_none() {
                                break;
                            }
                        }
                    }
                    Op::AdvanceAndPollOnce(dt) => {
                        now_us += dt;
                        let got = wheel.poll_expired(at(now_us)).map(|(_, id)| id);
                        prop_assert_eq!(got, model.poll(now_us));
                    }
                    Op::PollInThePast(back) => {
                        let past = now_us.saturating_sub(back);
                        let got = wheel.poll_expired(at(past)).map(|(_, id)| id);
                        prop_assert_eq!(got, model.poll(past));
                    }
                }
                wheel.check_invariants();
                prop_assert_eq!(wheel.len(), model.queue.len());
                match (wheel.next_deadline(), model.queue.keys().next()) {
                    (None, None) => {}
                    (Some(wake), Some(&(tick, _))) => {
                        prop_assert!(wake <= base + ms(tick), "next_deadline later than a timer");
                        prop_assert!(wake >= base + ms(model.elapsed));
                    }
                    (w, m) => prop_assert!(false, "next_deadline {:?} vs model {:?}", w, m),
                }
            }
            // Everything left fires, in model order, at the end of time.
            let end_us = now_us + (MAX_DELAY_TICKS + 1) * 1_000;
            let rest: Vec<u64> = wheel.drain_values(at(end_us));
            let mut want = Vec::new();
            while let Some(id) = model.poll(end_us) {
                want.push(id);
            }
            prop_assert_eq!(rest, want);
        }
    }
}
