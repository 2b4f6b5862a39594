//! RFC 3263 against a real DNS server (unbound on loopback, serving a zone
//! file) and a real registrar (Kamailio): an account whose registrar is
//! `sip:prov.example` is resolved NAPTR → SRV → A; the first SRV target
//! (priority 10) is down — a socket that takes REGISTERs and never
//! answers — and sipis registers at the second (priority 20), Kamailio.
//! Then the TTL: a zone whose only target is down, changed to point at
//! Kamailio, is looked up again when its TTL ends and the account
//! registers there without being touched.

#[path = "support/http1.rs"]
mod http1;
#[path = "support/kamailio.rs"]
mod kamailio;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/serve.rs"]
mod serve;
#[path = "support/unbound.rs"]
mod unbound;

use kamailio::Kamailio;
use serve::*;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use unbound::Unbound;

/// A registrar that is down: takes REGISTERs, counts them, answers none.
struct DeadRegistrar {
    port: u16,
    seen: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl DeadRegistrar {
    fn start() -> DeadRegistrar {
        let port = ports::free_udp_port_run(1);
        let sock = UdpSocket::bind(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    if buf[..n].starts_with(b"REGISTER ") {
                        s.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        DeadRegistrar { port, seen, stop }
    }

    fn seen(&self) -> usize {
        self.seen.load(Ordering::Relaxed)
    }
}

impl Drop for DeadRegistrar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The zone of `prov.example`: NAPTR to `_sip._udp`, whose SRV records
/// name `(priority, port)` targets, each host at 127.0.0.1.
fn zone(ttl: u32, srv: &[(u16, u16)]) -> String {
    let mut z = format!(
        "$ORIGIN prov.example.\n$TTL {ttl}\n\
         @ IN SOA ns.prov.example. admin.prov.example. 1 3600 600 86400 {ttl}\n\
         @ IN NS ns\n\
         ns IN A 127.0.0.1\n\
         @ IN NAPTR 10 50 \"s\" \"SIP+D2U\" \"\" _sip._udp.prov.example.\n"
    );
    for (i, (prio, port)) in srv.iter().enumerate() {
        z.push_str(&format!(
            "_sip._udp IN SRV {prio} 10 {port} host{i}\nhost{i} IN A 127.0.0.1\n"
        ));
    }
    z
}

#[test]
fn sipis_fails_over_from_a_dead_srv_target_to_the_live_registrar() {
    let mut kam = Kamailio::start();
    let dead = DeadRegistrar::start();
    let dns = Unbound::start(
        "prov.example",
        &zone(300, &[(10, dead.port), (20, kam.port())]),
    );
    // T1 100 ms: a REGISTER times out (64·T1) after 6.4 s.
    let sipis = Serve::start(
        "dns-failover",
        1,
        &format!(
            "[sip]\nt1 = \"100ms\"\n\n[dns]\nservers = [\"{}\"]\ntimeout = \"1s\"\n",
            dns.addr
        ),
    );
    sipis.add_upstream_account("dnsalice", "sip:prov.example", 600);
    let b = kam.wait_binding("dnsalice", Duration::from_secs(30));
    assert!(
        b.address.ends_with(&format!("@{}", sipis.shard_addr(0))),
        "{}",
        b.address
    );
    assert!(
        dead.seen() >= 1,
        "the priority-10 target got the first REGISTER (and its retransmissions): {}",
        dead.seen()
    );
    let (status, v) = sipis.api("GET", "/accounts?limit=10", None);
    assert_eq!(status, 200, "{v}");
    assert!(v.to_string().contains("registered"), "{v}");
}

#[test]
fn a_changed_zone_is_looked_up_again_after_its_ttl_and_the_account_follows() {
    let mut kam = Kamailio::start();
    let dead = DeadRegistrar::start();
    let mut dns = Unbound::start("prov.example", &zone(2, &[(10, dead.port)]));
    let sipis = Serve::start(
        "dns-ttl",
        1,
        &format!(
            "[sip]\nt1 = \"100ms\"\nretry_base = \"1s\"\nretry_max = \"2s\"\n\n\
             [dns]\nservers = [\"{}\"]\ntimeout = \"1s\"\nmin_ttl = \"1s\"\nretry = \"1s\"\n",
            dns.addr
        ),
    );
    sipis.add_upstream_account("dnsbob", "sip:prov.example", 600);
    let end = Instant::now() + Duration::from_secs(10);
    while dead.seen() == 0 {
        assert!(Instant::now() < end, "no REGISTER reached the only target");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(kam.dump().is_empty(), "not registered at Kamailio yet");
    // The operator points the SRV record at the live registrar.
    dns.replace_zone(&zone(2, &[(10, kam.port())]));
    let changed = Instant::now();
    kam.wait_binding("dnsbob", Duration::from_secs(30));
    eprintln!(
        "registered at the new target {:?} after the zone changed",
        changed.elapsed()
    );
    assert!(
        sipis.log().contains("registrar targets changed"),
        "{}",
        sipis.log()
    );
}
