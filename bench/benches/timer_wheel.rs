//! Timer wheel vs. a `BTreeMap` scheduler at one million timers.
//!
//! Three workloads, each run for both schedulers in the same group so the
//! report compares them directly:
//!
//! * `insert_1M`: arm 1 M timers with deadlines spread over an hour;
//! * `cancel_1M`: cancel 1 M armed timers by handle, in random order;
//! * `insert_expire_1M`: arm 1 M timers, then advance a virtual clock in 10 ms
//!   steps past the hour, popping every expired timer.
//!
//! Setup (building the armed scheduler for `cancel_1M`) is excluded from the
//! timings, and so is dropping the result. Run with
//! `cargo bench --bench timer_wheel`; one iteration is 1 M operations, so
//! divide the reported time by 10^6 for the per-operation cost (criterion also
//! prints it as throughput).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use sipis::{TimerHandle, TimerWheel};

const N: usize = 1_000_000;
const SPREAD: Duration = Duration::from_secs(3600);
const STEP: Duration = Duration::from_millis(10);

/// The obvious alternative: deadlines as keys of an ordered map, with a
/// sequence number to keep equal deadlines apart (and FIFO). The key doubles
/// as the cancellation handle.
struct BTreeScheduler<T> {
    queue: BTreeMap<(Instant, u64), T>,
    seq: u64,
}

impl<T> BTreeScheduler<T> {
    fn new() -> Self {
        BTreeScheduler {
            queue: BTreeMap::new(),
            seq: 0,
        }
    }

    fn insert(&mut self, deadline: Instant, value: T) -> (Instant, u64) {
        self.seq += 1;
        let key = (deadline, self.seq);
        self.queue.insert(key, value);
        key
    }

    fn cancel(&mut self, key: (Instant, u64)) -> Option<T> {
        self.queue.remove(&key)
    }

    fn poll_expired(&mut self, now: Instant) -> Option<T> {
        let entry = self.queue.first_entry()?;
        if entry.key().0 <= now {
            Some(entry.remove())
        } else {
            None
        }
    }
}

/// xorshift64: deterministic, dependency-free, good enough to scatter
/// deadlines and shuffle.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// 1 M deadlines uniformly spread over [base, base + 1 h) at µs resolution.
fn deadlines(base: Instant) -> Vec<Instant> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let spread_us = SPREAD.as_micros() as u64;
    (0..N)
        .map(|_| base + Duration::from_micros(rng.next() % spread_us))
        .collect()
}

/// A random permutation of 0..N, so cancellations hit the structure in no
/// particular order (as transactions completing would).
fn shuffled_order() -> Vec<usize> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut order: Vec<usize> = (0..N).collect();
    for i in (1..N).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

fn benches(c: &mut Criterion) {
    let base = Instant::now();
    let deadlines = deadlines(base);
    let order = shuffled_order();

    let mut group = c.benchmark_group("insert_1M");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("wheel", |b| {
        b.iter_batched(
            || TimerWheel::with_capacity(base, N),
            |mut wheel| {
                for (i, &deadline) in deadlines.iter().enumerate() {
                    black_box(wheel.insert(deadline, i as u64));
                }
                wheel
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("btreemap", |b| {
        b.iter_batched(
            BTreeScheduler::new,
            |mut sched| {
                for (i, &deadline) in deadlines.iter().enumerate() {
                    black_box(sched.insert(deadline, i as u64));
                }
                sched
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("cancel_1M");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("wheel", |b| {
        b.iter_batched(
            || {
                let mut wheel = TimerWheel::with_capacity(base, N);
                let handles: Vec<TimerHandle> = deadlines
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| wheel.insert(d, i as u64))
                    .collect();
                let handles: Vec<TimerHandle> = order.iter().map(|&i| handles[i]).collect();
                (wheel, handles)
            },
            |(mut wheel, handles)| {
                for handle in &handles {
                    black_box(wheel.cancel(*handle));
                }
                assert!(wheel.is_empty());
                (wheel, handles)
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("btreemap", |b| {
        b.iter_batched(
            || {
                let mut sched = BTreeScheduler::new();
                let keys: Vec<(Instant, u64)> = deadlines
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| sched.insert(d, i as u64))
                    .collect();
                let keys: Vec<(Instant, u64)> = order.iter().map(|&i| keys[i]).collect();
                (sched, keys)
            },
            |(mut sched, keys)| {
                for key in &keys {
                    black_box(sched.cancel(*key));
                }
                assert!(sched.queue.is_empty());
                (sched, keys)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();

    let end = base + SPREAD + STEP;
    let mut group = c.benchmark_group("insert_expire_1M");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("wheel", |b| {
        b.iter_batched(
            || TimerWheel::with_capacity(base, N),
            |mut wheel| {
                for (i, &deadline) in deadlines.iter().enumerate() {
                    wheel.insert(deadline, i as u64);
                }
                let mut fired = 0usize;
                let mut now = base;
                while now <= end {
                    while let Some((_, value)) = wheel.poll_expired(now) {
                        black_box(value);
                        fired += 1;
                    }
                    now += STEP;
                }
                assert_eq!(fired, N);
                wheel
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("btreemap", |b| {
        b.iter_batched(
            BTreeScheduler::new,
            |mut sched| {
                for (i, &deadline) in deadlines.iter().enumerate() {
                    sched.insert(deadline, i as u64);
                }
                let mut fired = 0usize;
                let mut now = base;
                while now <= end {
                    while let Some(value) = sched.poll_expired(now) {
                        black_box(value);
                        fired += 1;
                    }
                    now += STEP;
                }
                assert_eq!(fired, N);
                sched
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
}

criterion_group! {
    name = timer_wheel;
    config = config();
    targets = benches
}
criterion_main!(timer_wheel);
