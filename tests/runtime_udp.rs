//! The glommio shards on real loopback sockets: registering accounts at a
//! registrar (the simulator's, served over a real UDP socket), surviving
//! junk datagrams, unregistering on shutdown.

mod sim;

use sim::{Peer, SimRegistrar};
use sipis::runtime::{shard_of, NullSink, ShardSettings, Shards};
use sipis::{AccountConfig, AccountSecret, EngineConfig, RegStatus, Registrar};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Serves a SimRegistrar on a real socket from a thread.
struct LiveRegistrar {
    addr: SocketAddr,
    inner: Arc<Mutex<SimRegistrar>>,
    stop: Arc<AtomicBool>,
    start: Instant,
}

impl LiveRegistrar {
    fn start(users: u64) -> LiveRegistrar {
        Self::start_on("127.0.0.1:0", users)
    }

    fn start_on(bind: &str, users: u64) -> LiveRegistrar {
        let sock = UdpSocket::bind(bind).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let start = Instant::now();
        let mut reg = SimRegistrar::new(addr, "provider.test", start);
        for id in 1..=users {
            reg.add_user(&format!("user{id}"), &format!("pw{id}"));
        }
        let inner = Arc::new(Mutex::new(reg));
        let stop = Arc::new(AtomicBool::new(false));
        let (i2, s2) = (inner.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s2.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let mut out = Vec::new();
                i2.lock()
                    .unwrap()
                    .handle(Instant::now(), from, &buf[..n], &mut out);
                for (to, data) in out {
                    let _ = sock.send_to(&data, to);
                }
            }
        });
        LiveRegistrar {
            addr,
            inner,
            stop,
            start,
        }
    }
}

impl Drop for LiveRegistrar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn free_base_port(n: u16) -> u16 {
    free_base_port_on("127.0.0.1", n)
}

/// Finds `n` consecutive free UDP ports on `ip`.
fn free_base_port_on(ip: &str, n: u16) -> u16 {
    'outer: for _ in 0..50 {
        let probe = UdpSocket::bind((ip, 0)).unwrap();
        let base = probe.local_addr().unwrap().port();
        drop(probe);
        if base > 65535 - n {
            continue;
        }
        for p in base..base + n {
            if UdpSocket::bind((ip, p)).is_err() {
                continue 'outer;
            }
        }
        return base;
    }
    panic!("no free port range");
}

fn start_shards(n: usize, base: u16) -> Shards {
    start_shards_on("127.0.0.1", n, base)
}

fn start_shards_on(ip: &str, n: usize, base: u16) -> Shards {
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let engines = (0..n)
        .map(|i| {
            let hp = format!("{host}:{}", base + i as u16);
            EngineConfig {
                via: hp.clone(),
                contact_host: hp,
                register_rate: 500,
                seed: i as u64 + 1,
                ..EngineConfig::default()
            }
        })
        .collect();
    Shards::start(
        ShardSettings {
            count: n,
            bind: ip.parse().unwrap(),
            base_port: base,
            shared_port: Some(0),
            engines,
            pin: false,
            io_memory: 1 << 20,
            socket_buffer: 1 << 20,
            front: None,
        },
        Arc::new(NullSink),
    )
    .expect("shards start")
}

fn account(id: u64, registrar: SocketAddr) -> AccountConfig {
    AccountConfig {
        id,
        aor: format!("sip:user{id}@provider.test"),
        auth_user: format!("user{id}"),
        secret: AccountSecret::Password(format!("pw{id}")),
        registrar: Some(Registrar::new("sip:provider.test", registrar, None)),
        expires: 3600,
        token: format!("tok{id}"),
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn shards_register_accounts_on_their_own_sockets_and_unregister_on_shutdown() {
    let registrar = LiveRegistrar::start(200);
    let base = free_base_port(2);
    let shards = start_shards(2, base);
    for id in 1..=200 {
        shards.add_account(account(id, registrar.addr), None);
    }
    wait_for("200 live bindings", Duration::from_secs(20), || {
        let r = registrar.inner.lock().unwrap();
        (1..=200).all(|id| {
            r.live(&format!("sip:user{id}@provider.test"), Instant::now())
                .len()
                == 1
        })
    });
    {
        let r = registrar.inner.lock().unwrap();
        for id in 1..=200u64 {
            let b = &r.live(&format!("sip:user{id}@provider.test"), Instant::now())[0];
            // The contact names the owning shard's own port.
            let port = base + shard_of(id, 2) as u16;
            assert_eq!(b.contact, format!("sip:tok{id}@127.0.0.1:{port}"));
        }
    }
    assert!(matches!(
        shards.status(7, Duration::from_secs(1)),
        Some(RegStatus::Registered { granted: 3600, .. })
    ));
    // Both shards took a share.
    std::thread::sleep(Duration::from_millis(1100));
    let snaps = shards.snapshots();
    assert!(
        snaps.iter().all(|(alive, s)| *alive && s.accounts > 50),
        "{snaps:?}"
    );
    assert_eq!(
        snaps.iter().map(|(_, s)| s.registrations[2]).sum::<u64>(),
        200
    );

    shards.shutdown(true, Duration::from_secs(10));
    let r = registrar.inner.lock().unwrap();
    let left = (1..=200)
        .filter(|id| {
            !r.live(&format!("sip:user{id}@provider.test"), Instant::now())
                .is_empty()
        })
        .count();
    assert_eq!(
        left, 0,
        "{left} bindings left after shutdown with unregister"
    );
    let _ = registrar.start;
}

#[test]
fn junk_truncated_and_64k_datagrams_leave_every_shard_running_and_are_counted() {
    let base = free_base_port(2);
    let shards = start_shards(2, base);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let invite = b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK1\r\nContent-Length: 500\r\n\r\nshort";
    let mut big = b"MESSAGE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK2\r\nX-Pad: ".to_vec();
    big.resize(65_000, b'a');
    big.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
    for i in 0..2u16 {
        let to = ("127.0.0.1", base + i);
        client
            .send_to(&[0xff, 0x00, 0x13, 0x37, b'\n', b'\n'], to)
            .unwrap();
        client.send_to(&invite[..60], to).unwrap();
        client.send_to(invite, to).unwrap();
        client.send_to(&big, to).unwrap();
    }
    // And the shards still answer: an OPTIONS gets its 200.
    let options = "OPTIONS sip:probe@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKopt{I}\r\nMax-Forwards: 70\r\nFrom: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:probe@127.0.0.1>\r\nCall-ID: opt{I}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let mut buf = [0u8; 4096];
    for i in 0..2u16 {
        let msg = options.replace("{I}", &i.to_string());
        client
            .send_to(msg.as_bytes(), ("127.0.0.1", base + i))
            .unwrap();
        // The junk whose Via survived (truncated, Content-Length beyond
        // the body, no To) is answered 400 first (RFC 4475 §3.1.2), by
        // either shard; the OPTIONS gets its 200.
        let mut answers = Vec::new();
        loop {
            let (n, _) = client.recv_from(&mut buf).expect("200 to OPTIONS");
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if text.starts_with("SIP/2.0 200 OK\r\n") {
                break;
            }
            assert!(text.starts_with("SIP/2.0 400 "), "{text}");
            answers.push(text);
            assert!(answers.len() <= 6, "{answers:?}");
        }
    }
    std::thread::sleep(Duration::from_millis(1100));
    for (alive, s) in shards.snapshots() {
        assert!(alive);
        // junk, truncated, Content-Length beyond the body, 64 KiB without the mandatory headers.
        assert!(s.stats.parse_errors >= 4, "{:?}", s.stats);
        assert!(s.stats.datagrams >= 5);
    }
    shards.shutdown(false, Duration::from_secs(5));
}

#[test]
fn shared_phone_port_forwards_each_request_to_the_shard_that_owns_its_account() {
    let base = free_base_port(2);
    let shards = start_shards(2, base);
    let shared = shards.shared_addr().expect("shared port bound");
    // Accounts whose registrar is a black hole: only their routing matters here.
    let dead: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for id in 1..=20 {
        shards.add_account(account(id, dead), None);
    }
    std::thread::sleep(Duration::from_millis(50));
    let mut expected = [0u64; 2];
    let mut buf = [0u8; 4096];
    for n in 0..60u64 {
        let id = n % 20 + 1;
        expected[shard_of(id, 2)] += 1;
        // A new source port each time, so the kernel's SO_REUSEPORT hash
        // hands the datagrams to both shards.
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let msg = format!(
            "OPTIONS sip:tok{id}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKfw{n}\r\nMax-Forwards: 70\r\n\
             From: <sip:phone@127.0.0.1>;tag={n}\r\nTo: <sip:user{id}@provider.test>\r\nCall-ID: fw{n}\r\nCSeq: 1 OPTIONS\r\n\
             Content-Length: 0\r\n\r\n",
            me = client.local_addr().unwrap()
        );
        client.send_to(msg.as_bytes(), shared).unwrap();
        let (len, from) = client.recv_from(&mut buf).expect("answer");
        assert_eq!(from, shared, "the reply must leave from the shared port");
        assert!(buf[..len].starts_with(b"SIP/2.0 200 OK\r\n"));
    }
    std::thread::sleep(Duration::from_millis(1100));
    let snaps = shards.snapshots();
    for (i, (_, s)) in snaps.iter().enumerate() {
        // OPTIONS are answered without a transaction: counted apart.
        assert_eq!(
            s.stats.options, expected[i],
            "shard {i} handled requests it does not own"
        );
    }
    let forwarded: u64 = snaps.iter().map(|(_, s)| s.forwarded).sum();
    assert!(
        forwarded > 0,
        "no datagram needed forwarding: the test proves nothing"
    );
    assert_eq!(snaps.iter().map(|(_, s)| s.forward_dropped).sum::<u64>(), 0);
    shards.shutdown(false, Duration::from_secs(5));
}

#[test]
fn shards_register_over_ipv6() {
    let registrar = LiveRegistrar::start_on("[::1]:0", 10);
    let base = free_base_port_on("::1", 2);
    let shards = start_shards_on("::1", 2, base);
    for id in 1..=10 {
        shards.add_account(account(id, registrar.addr), None);
    }
    wait_for("10 IPv6 bindings", Duration::from_secs(20), || {
        let r = registrar.inner.lock().unwrap();
        (1..=10).all(|id| {
            r.live(&format!("sip:user{id}@provider.test"), Instant::now())
                .len()
                == 1
        })
    });
    let r = registrar.inner.lock().unwrap();
    let b = &r.live("sip:user3@provider.test", Instant::now())[0];
    assert_eq!(
        b.contact,
        format!("sip:tok3@[::1]:{}", base + shard_of(3, 2) as u16)
    );
    drop(r);
    shards.shutdown(false, Duration::from_secs(5));
}
