//! Free loopback ports for a sipis started by a test.

use std::net::UdpSocket;

/// `n` consecutive free UDP ports on 127.0.0.1 (the phones' port and one
/// per shard), the first returned.
pub fn free_udp_port_run(n: u16) -> u16 {
    'outer: for _ in 0..50 {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let base = s.local_addr().unwrap().port();
        drop(s);
        if base > 65_000 {
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
