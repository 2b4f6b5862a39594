//! A provider's registrar restarts and forgets every binding (issue 15,
//! "registrar outage recovery"): Kamailio (in-memory usrloc) holding 1 000
//! accounts registered by sipis is stopped, stays down long enough for
//! sipis to notice (its OPTIONS keep-alive times out), and comes back empty
//! on the same port. Counted in Kamailio's own `ul.dump`: every account is
//! registered again within 10 s of its return, at the REGISTER rate (no
//! storm while it was down), and while it was down `/metrics` stopped
//! counting those accounts as registered.

#[path = "support/http1.rs"]
mod http1;
#[path = "support/kamailio.rs"]
mod kamailio;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/serve.rs"]
mod serve;

use kamailio::{Kamailio, REGISTRAR_CONFIG};
use serve::*;
use std::time::{Duration, Instant};

const ACCOUNTS: usize = 1000;

fn bound(kam: &mut Kamailio) -> usize {
    kam.dump()
        .iter()
        .filter(|(aor, c)| aor.starts_with("rr") && !c.is_empty())
        .count()
}

fn wait_bound(kam: &mut Kamailio, want: usize, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let n = bound(kam);
        if n >= want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{n} of {want} accounts bound at Kamailio after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn registered(sipis: &Serve) -> f64 {
    let m = sipis.metrics();
    metric_in(&m, "sipis_registrations{state=\"registered\"}").unwrap_or(0.0)
}

#[test]
fn every_account_is_registered_again_soon_after_the_registrar_returns_empty() {
    let mut kam = Kamailio::start();
    let port = kam.port();
    // T1 100 ms: a lost OPTIONS times out after 6.4 s (64*T1), so the
    // outage is noticed within keep-alive + 6.4 s.
    let sipis = Serve::start(
        "registrar-restart",
        2,
        "[sip]\nt1 = \"100ms\"\nt2 = \"400ms\"\nregistrar_keepalive = \"2s\"\nregistrar_probe = \"1s\"\n",
    );
    let registrar = format!("sip:127.0.0.1:{port}");
    for i in 0..ACCOUNTS {
        sipis.add_upstream_account(&format!("rr{i:04}"), &registrar, 3600);
    }
    let took = wait_bound(&mut kam, ACCOUNTS, Duration::from_secs(30));
    eprintln!("{ACCOUNTS} accounts bound at Kamailio in {took:?}");

    // sipis counts them registered (its counters are published each second).
    let end = Instant::now() + Duration::from_secs(5);
    while registered(&sipis) < ACCOUNTS as f64 {
        assert!(Instant::now() < end, "sipis does not count them registered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let sent_before = metric_in(&sipis.metrics(), "sipis_register_sent_total").unwrap();

    // The registrar goes away...
    drop(kam);
    let down = Instant::now();
    let end = down + Duration::from_secs(20);
    while registered(&sipis) > 0.0 {
        assert!(
            Instant::now() < end,
            "accounts still counted registered 20 s into the outage:\n{}",
            sipis.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let noticed = down.elapsed();
    let sent_down = metric_in(&sipis.metrics(), "sipis_register_sent_total").unwrap() - sent_before;
    assert!(
        sipis.log().contains("registrar down: 127.0.0.1:"),
        "the outage is logged:\n{}",
        sipis.log()
    );

    // ...and comes back on its port with an empty location table.
    let mut kam = Kamailio::start_config_on(port, "registrar.cfg", REGISTRAR_CONFIG, &[]);
    let back = wait_bound(&mut kam, ACCOUNTS, Duration::from_secs(10));
    eprintln!(
        "outage noticed after {noticed:?} ({sent_down} REGISTERs sent while down); \
         all {ACCOUNTS} bound again {back:?} after the registrar's return"
    );
    assert!(
        sent_down < 100.0,
        "{sent_down} REGISTERs while the registrar was down"
    );
    assert!(
        sipis.log().contains("registrar up again: 127.0.0.1:"),
        "the recovery is logged:\n{}",
        sipis.log()
    );
    let end = Instant::now() + Duration::from_secs(5);
    while registered(&sipis) < ACCOUNTS as f64 {
        assert!(
            Instant::now() < end,
            "sipis does not count them registered again"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let m = sipis.metrics();
    assert!(
        metric_in(&m, "sipis_registrar_recoveries_total").unwrap() >= 1.0,
        "{m}"
    );
}

#[test]
fn sigterm_with_unregister_on_shutdown_removes_every_binding_before_exit() {
    let mut kam = Kamailio::start();
    let mut sipis = Serve::start_with(
        "shutdown-unregister",
        2,
        "unregister_on_shutdown = true\nshutdown_timeout = \"20s\"",
        "",
    );
    let registrar = format!("sip:127.0.0.1:{}", kam.port());
    for i in 0..ACCOUNTS {
        sipis.add_upstream_account(&format!("rr{i:04}"), &registrar, 3600);
    }
    wait_bound(&mut kam, ACCOUNTS, Duration::from_secs(30));
    // Every account's state reached sipis's counters (and so its shards).
    let end = Instant::now() + Duration::from_secs(5);
    while registered(&sipis) < ACCOUNTS as f64 {
        assert!(Instant::now() < end, "sipis does not count them registered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log_before_stop = sipis.log().len();
    let (status, took) = sipis
        .stop(Duration::from_secs(25))
        .expect("sipis exits within its shutdown bound");
    let left = bound(&mut kam);
    let log = sipis.log();
    eprintln!(
        "SIGTERM: exit {status} after {took:?}; {left} of {ACCOUNTS} bindings left at Kamailio\n{}",
        &log[log_before_stop..]
    );
    assert!(status.success(), "{status}");
    assert_eq!(left, 0, "bindings left at Kamailio after SIGTERM");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert!(log.contains("bindings removed"), "progress logged:\n{log}");
}
