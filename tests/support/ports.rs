//! Free loopback ports for a sipis started by a test.

use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// `n` consecutive free UDP ports on 127.0.0.1 (the phones' port and one
/// per shard), the first also free for TCP (the phones' TCP listener); the
/// first returned. Drawn from 20000..32000, below Linux's ephemeral range
/// (32768..61000), so no outgoing connection of a test (whose local port
/// the kernel picks there) can take one between the check and sipis's
/// bind.
pub fn free_udp_port_run(n: u16) -> u16 {
    let seed = std::process::id().wrapping_mul(2_654_435_761).wrapping_add(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    );
    'outer: for _ in 0..200 {
        let k = seed.wrapping_add(NEXT.fetch_add(7919, Ordering::Relaxed));
        let base = 20_000 + (k % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", base)).is_err() {
            continue;
        }
        for p in base..base + n {
            if UdpSocket::bind(("127.0.0.1", p)).is_err() {
                continue 'outer;
            }
        }
        return base;
    }
    panic!("no run of {n} free UDP ports");
}
