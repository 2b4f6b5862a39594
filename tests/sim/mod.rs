//! Flow simulator: the sans-IO engine and simulated peers on a simulated
//! network with a virtual clock (quinn-proto's test model).
//!
//! Time jumps straight to the next deadline (an engine timer, a peer timer,
//! a mediator action or a packet delivery), so hours of simulated time take
//! milliseconds. The network can lose, duplicate, delay and so reorder
//! packets, all from a seeded PRNG: a run is reproducible.
//!
//! Peers live at addresses: the registrar (always there), and any number of
//! others added with [`Sim::add_peer`] (callers, phones), each with the
//! [`Flow`] its packets reach the engine on: the provider's side arrives on
//! the shard's socket (`Flow::Udp`, at [`Sim::engine_addr`]), phones on the
//! shared phone port (`Flow::SharedUdp`, at [`Sim::phone_addr`]). What the
//! engine sends on a flow leaves from that flow's address, as a real socket
//! would; a transmit on the wrong flow for its peer is recorded in
//! [`Sim::wrong_flow`]. The [`SimMediator`] takes every push the engine
//! asks for after every engine input.

#![allow(dead_code)]

pub mod caller;
pub mod mediator;
pub mod phone;
pub mod registrar;
pub mod ua;

use bytes::Bytes;
use sipis::parser::{parse, EMPTY_HEADER};
use sipis::{Engine, Event, Flow};
use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

// Not every test binary that includes the simulator uses every peer.
#[allow(unused_imports)]
pub use caller::SimCaller;
pub use mediator::SimMediator;
#[allow(unused_imports)]
pub use phone::SimPhone;
pub use registrar::SimRegistrar;

/// What a peer wants sent: (destination, bytes).
pub type Out = Vec<(SocketAddr, Bytes)>;

/// A simulated endpoint other than the engine.
pub trait Peer {
    fn addr(&self) -> SocketAddr;
    /// A packet arrived; push what to send into `out`.
    fn handle(&mut self, now: Instant, from: SocketAddr, data: &[u8], out: &mut Out);
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn handle_timeout(&mut self, _now: Instant, _out: &mut Out) {}
    /// A push reached this peer (the mediator delivered it): a phone's app
    /// wakes and connects.
    fn wake(&mut self, _now: Instant, _out: &mut Out) {}
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

struct Slot {
    addr: SocketAddr,
    flow: Flow,
    peer: Rc<RefCell<dyn Peer>>,
}

/// The simulated world: one engine, one registrar, a mediator, any other
/// peers.
pub struct Sim {
    pub start: Instant,
    pub now: Instant,
    pub engine: Engine,
    /// The shard's socket (the provider's side).
    pub engine_addr: SocketAddr,
    /// The shared phone port (defaults to `engine_addr`).
    pub phone_addr: SocketAddr,
    pub registrar: SimRegistrar,
    pub mediator: SimMediator,
    pub conditions: Conditions,
    peers: Vec<Slot>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    packets: std::collections::HashMap<u64, Packet>,
    seq: u64,
    rng: u64,
    /// Every event the engine emitted, with its time.
    pub events: Vec<(Instant, Event)>,
    /// Every packet the engine sent, with its time.
    pub sent: Vec<(Instant, SocketAddr, Bytes)>,
    /// Engine transmits to a peer on another flow than the peer's.
    pub wrong_flow: Vec<(Instant, SocketAddr, Flow)>,
    /// Every packet the engine received, with its time and source.
    pub received: Vec<(Instant, SocketAddr, Bytes)>,
    drops: Vec<(SocketAddr, String, u32)>,
    /// Packets lost (by `drop_next` or by chance).
    pub lost: Vec<(Instant, SocketAddr, Bytes)>,
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
            phone_addr: engine_addr,
            registrar,
            mediator: SimMediator::default(),
            conditions: Conditions::default(),
            peers: Vec::new(),
            queue: BinaryHeap::new(),
            packets: Default::default(),
            seq: 0,
            rng: 0x2545_F491_4F6C_DD1D,
            events: Vec::new(),
            sent: Vec::new(),
            wrong_flow: Vec::new(),
            received: Vec::new(),
            drops: Vec::new(),
            lost: Vec::new(),
        }
    }

    /// Seeds the network's PRNG (loss, duplicates, delays).
    pub fn seed(&mut self, seed: u64) {
        self.rng = seed | 1;
    }

    /// Adds a peer whose packets reach the engine on `flow`; the handle
    /// lets the test drive and inspect it.
    pub fn add_peer<P: Peer + 'static>(&mut self, peer: P, flow: Flow) -> Rc<RefCell<P>> {
        let addr = peer.addr();
        let rc = Rc::new(RefCell::new(peer));
        self.peers.push(Slot {
            addr,
            flow,
            peer: rc.clone(),
        });
        rc
    }

    /// Lets a peer act now (start a call, send a BYE, ...): what it sends
    /// goes on the network.
    pub fn poke<P: Peer + 'static, R>(
        &mut self,
        peer: &Rc<RefCell<P>>,
        f: impl FnOnce(&mut P, Instant, &mut Out) -> R,
    ) -> R {
        let mut out = Vec::new();
        let now = self.now;
        let (r, from) = {
            let mut p = peer.borrow_mut();
            (f(&mut p, now, &mut out), p.addr())
        };
        self.flush_peer(from, out);
        r
    }

    fn rand(&mut self) -> f64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Loses the next `count` packets to `to` whose first line starts
    /// with `start` (e.g. `"INVITE "`): a loss placed exactly.
    pub fn drop_next(&mut self, to: SocketAddr, start: &str, count: u32) {
        self.drops.push((to, start.to_owned(), count));
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, data: Bytes) {
        if let Some(d) = self
            .drops
            .iter_mut()
            .find(|d| d.0 == to && d.2 > 0 && data.starts_with(d.1.as_bytes()))
        {
            d.2 -= 1;
            self.lost.push((self.now, to, data));
            return;
        }
        // A stream (TCP/TLS) neither loses, duplicates nor reorders.
        let stream = self
            .peers
            .iter()
            .any(|p| (p.addr == from || p.addr == to) && p.flow.is_stream());
        if stream {
            self.seq += 1;
            self.queue
                .push(Reverse((self.now + self.conditions.delay.0, self.seq)));
            self.packets.insert(self.seq, Packet { from, to, data });
            return;
        }
        if self.rand() < self.conditions.loss {
            self.lost.push((self.now, to, data));
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
        loop {
            let mut busy = false;
            while let Some(t) = self.engine.poll_transmit() {
                busy = true;
                self.sent.push((self.now, t.dest, t.payload.clone()));
                let expected = self
                    .peers
                    .iter()
                    .find(|p| p.addr == t.dest)
                    .map_or(Flow::Udp, |p| p.flow);
                if expected != t.flow {
                    self.wrong_flow.push((self.now, t.dest, t.flow));
                }
                let from = match t.flow {
                    Flow::SharedUdp => self.phone_addr,
                    _ => self.engine_addr,
                };
                self.send(from, t.dest, t.payload);
            }
            while let Some(e) = self.engine.poll_event() {
                busy = true;
                self.events.push((self.now, e));
            }
            while let Some(p) = self.engine.poll_push() {
                busy = true;
                // What the shard would post: the push's wire form (the
                // simulation has no wall clock to stamp).
                self.mediator
                    .take(self.now, sipis::push::PushRequest::from_push(p, 0));
            }
            if !busy {
                return;
            }
        }
    }

    fn flush_peer(&mut self, from: SocketAddr, out: Out) {
        for (to, data) in out {
            self.send(from, to, data);
        }
    }

    fn peer_at(&self, addr: SocketAddr) -> Option<Rc<RefCell<dyn Peer>>> {
        self.peers
            .iter()
            .find(|p| p.addr == addr)
            .map(|p| p.peer.clone())
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut next = self.engine.poll_timeout();
        let mut add = |t: Option<Instant>| {
            next = match (next, t) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        };
        add(self.registrar.poll_timeout());
        add(self.queue.peek().map(|r| r.0 .0));
        add(self.mediator.poll_timeout());
        for p in &self.peers {
            add(p.peer.borrow().poll_timeout());
        }
        next
    }

    /// Runs until `until` (or until nothing is scheduled at all).
    pub fn run_until(&mut self, until: Instant) {
        self.flush_engine();
        loop {
            let Some(next) = self.next_deadline() else {
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
                if p.to == self.engine_addr || p.to == self.phone_addr {
                    let flow = self
                        .peers
                        .iter()
                        .find(|s| s.addr == p.from)
                        .map_or(Flow::Udp, |s| s.flow);
                    self.received.push((now, p.from, p.data.clone()));
                    self.engine.handle_datagram(now, p.from, flow, &p.data);
                    self.flush_engine();
                } else if p.to == self.registrar.addr() {
                    let mut out = Vec::new();
                    self.registrar.handle(now, p.from, &p.data, &mut out);
                    let from = self.registrar.addr();
                    self.flush_peer(from, out);
                } else if let Some(peer) = self.peer_at(p.to) {
                    let mut out = Vec::new();
                    peer.borrow_mut().handle(now, p.from, &p.data, &mut out);
                    self.flush_peer(p.to, out);
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
            for i in 0..self.peers.len() {
                let (addr, peer) = (self.peers[i].addr, self.peers[i].peer.clone());
                if peer.borrow().poll_timeout().is_some_and(|t| t <= now) {
                    let mut out = Vec::new();
                    peer.borrow_mut().handle_timeout(now, &mut out);
                    self.flush_peer(addr, out);
                }
            }
            for action in self.mediator.due(now) {
                match action {
                    mediator::Action::Answer(outcome) => {
                        self.engine.handle_push_result(now, outcome);
                        self.flush_engine();
                    }
                    mediator::Action::Wake(addr) => {
                        if let Some(peer) = self.peer_at(addr) {
                            let mut out = Vec::new();
                            peer.borrow_mut().wake(now, &mut out);
                            self.flush_peer(addr, out);
                        }
                    }
                }
            }
            // A wheel may report a deadline slightly early (never late):
            // make sure time advances.
            if self.engine.poll_timeout().is_some_and(|t| t <= now)
                && self.next_deadline_without_engine().is_none_or(|t| t > now)
            {
                self.now += Duration::from_millis(1);
            }
        }
    }

    fn next_deadline_without_engine(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut add = |t: Option<Instant>| {
            next = match (next, t) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        };
        add(self.registrar.poll_timeout());
        add(self.queue.peek().map(|r| r.0 .0));
        add(self.mediator.poll_timeout());
        for p in &self.peers {
            add(p.peer.borrow().poll_timeout());
        }
        next
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

// ---- reading messages in assertions ------------------------------------

/// The status code of a response.
pub fn status(data: &[u8]) -> Option<u16> {
    let mut h = [EMPTY_HEADER; 64];
    parse(data, &mut h).ok()?.status()
}

/// The method of a request (`None` for a response).
pub fn method(data: &[u8]) -> Option<String> {
    let mut h = [EMPTY_HEADER; 64];
    let m = parse(data, &mut h).ok()?;
    m.method().map(|m| m.as_str().to_owned())
}

/// The method in the CSeq (what a response answers).
pub fn cseq(data: &[u8]) -> Option<(u32, String)> {
    let mut h = [EMPTY_HEADER; 64];
    let m = parse(data, &mut h).ok()?;
    let c = m.cseq().ok()?;
    Some((c.seq, c.method.as_str().to_owned()))
}

/// Every value of a header (by full name, case-insensitive).
pub fn headers(data: &[u8], name: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    head.lines()
        .skip(1)
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
        .collect()
}

/// The first value of a header.
pub fn header(data: &[u8], name: &str) -> Option<String> {
    headers(data, name).into_iter().next()
}

/// The tag of a From/To value.
pub fn tag(value: &str) -> Option<String> {
    let i = value.find(";tag=")?;
    let rest = &value[i + 5..];
    Some(rest.split([';', '>', ' ']).next().unwrap_or("").to_owned())
}

/// The body after the header block.
pub fn body(data: &[u8]) -> &[u8] {
    match data.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &data[i + 4..],
        None => &[],
    }
}
