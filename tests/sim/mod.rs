//! Flow simulator: the sans-IO engine and simulated peers on a simulated
//! network with a virtual clock (quinn-proto's test model).
//!
//! Time jumps straight to the next deadline (an engine timer, a peer timer
//! or a packet delivery), so hours of simulated time take milliseconds. The
//! network can lose, duplicate, delay and so reorder packets, all from a
//! seeded PRNG: a run is reproducible.

#![allow(dead_code)]

pub mod registrar;

use bytes::Bytes;
use sipis::{Engine, Event, Flow};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use registrar::SimRegistrar;

/// A simulated endpoint other than the engine.
pub trait Peer {
    fn addr(&self) -> SocketAddr;
    /// A packet arrived; push what to send into `out`.
    fn handle(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        out: &mut Vec<(SocketAddr, Bytes)>,
    );
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn handle_timeout(&mut self, _now: Instant, _out: &mut Vec<(SocketAddr, Bytes)>) {}
}

/// Network conditions.
#[derive(Debug, Clone)]
pub struct Conditions {
    /// Probability a packet is lost.
    pub loss: f64,
    /// Probability a packet is delivered twice.
    pub duplicate: f64,
    /// One-way delay range; a random delay per packet reorders them.
    pub delay: (Duration, Duration),
}

impl Default for Conditions {
    fn default() -> Self {
        Conditions {
            loss: 0.0,
            duplicate: 0.0,
            delay: (Duration::from_millis(10), Duration::from_millis(10)),
        }
    }
}

struct Packet {
    from: SocketAddr,
    to: SocketAddr,
    data: Bytes,
}

/// The simulated world: one engine, one registrar, any other peers.
pub struct Sim {
    pub start: Instant,
    pub now: Instant,
    pub engine: Engine,
    pub engine_addr: SocketAddr,
    pub registrar: SimRegistrar,
    pub conditions: Conditions,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    packets: std::collections::HashMap<u64, Packet>,
    seq: u64,
    rng: u64,
    /// Every event the engine emitted, with its time.
    pub events: Vec<(Instant, Event)>,
    /// Every packet the engine sent, with its time.
    pub sent: Vec<(Instant, SocketAddr, Bytes)>,
}

impl Sim {
    pub fn new(
        engine: Engine,
        engine_addr: SocketAddr,
        registrar: SimRegistrar,
        start: Instant,
    ) -> Sim {
        Sim {
            start,
            now: start,
            engine,
            engine_addr,
            registrar,
            conditions: Conditions::default(),
            queue: BinaryHeap::new(),
            packets: Default::default(),
            seq: 0,
            rng: 0x2545_F491_4F6C_DD1D,
            events: Vec::new(),
            sent: Vec::new(),
        }
    }

    fn rand(&mut self) -> f64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, data: Bytes) {
        if self.rand() < self.conditions.loss {
            return;
        }
        let copies = if self.rand() < self.conditions.duplicate {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let (lo, hi) = self.conditions.delay;
            let span = (hi - lo).as_micros() as f64;
            let delay = lo + Duration::from_micros((self.rand() * span) as u64);
            self.seq += 1;
            self.queue.push(Reverse((self.now + delay, self.seq)));
            self.packets.insert(
                self.seq,
                Packet {
                    from,
                    to,
                    data: data.clone(),
                },
            );
        }
    }

    fn flush_engine(&mut self) {
        while let Some(t) = self.engine.poll_transmit() {
            self.sent.push((self.now, t.dest, t.payload.clone()));
            self.send(self.engine_addr, t.dest, t.payload);
        }
        while let Some(e) = self.engine.poll_event() {
            self.events.push((self.now, e));
        }
    }

    fn flush_peer(&mut self, from: SocketAddr, out: Vec<(SocketAddr, Bytes)>) {
        for (to, data) in out {
            self.send(from, to, data);
        }
    }

    /// Runs until `until` (or until nothing is scheduled at all).
    pub fn run_until(&mut self, until: Instant) {
        self.flush_engine();
        loop {
            let mut next = self.engine.poll_timeout();
            for t in [
                self.registrar.poll_timeout(),
                self.queue.peek().map(|r| r.0 .0),
            ] {
                next = match (next, t) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            let Some(next) = next else {
                self.now = until;
                return;
            };
            if next > until {
                self.now = until;
                return;
            }
            self.now = self.now.max(next);
            let now = self.now;
            while let Some(Reverse((t, seq))) = self.queue.peek().copied() {
                if t > now {
                    break;
                }
                self.queue.pop();
                let p = self.packets.remove(&seq).expect("queued packet");
                if p.to == self.engine_addr {
                    self.engine.handle_datagram(now, p.from, Flow::Udp, &p.data);
                    self.flush_engine();
                } else if p.to == self.registrar.addr() {
                    let mut out = Vec::new();
                    self.registrar.handle(now, p.from, &p.data, &mut out);
                    let from = self.registrar.addr();
                    self.flush_peer(from, out);
                }
            }
            if self.engine.poll_timeout().is_some_and(|t| t <= now) {
                self.engine.handle_timeout(now);
                self.flush_engine();
            }
            if self.registrar.poll_timeout().is_some_and(|t| t <= now) {
                let mut out = Vec::new();
                self.registrar.handle_timeout(now, &mut out);
                let from = self.registrar.addr();
                self.flush_peer(from, out);
            }
            // A wheel may report a deadline slightly early (never late):
            // make sure time advances.
            if self.engine.poll_timeout().is_some_and(|t| t <= now)
                && self.registrar.poll_timeout().is_none_or(|t| t > now)
                && self.queue.peek().is_none_or(|r| r.0 .0 > now)
            {
                self.now += Duration::from_millis(1);
            }
        }
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Seconds since start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }
}
