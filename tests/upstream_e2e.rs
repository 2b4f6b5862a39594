//! sipis registering at a real Kamailio over TCP and over TLS (issue 11,
//! "upstream over TCP/TLS"): accounts whose registrar is
//! `sip:…;transport=tcp` or `sips:…` register over one connection per
//! shard, verified against the test's CA (`tls.upstream_ca`); Kamailio
//! (`tcp_accept_aliases`, sipis's Via carrying RFC 5923 `;alias`) sends the
//! calls for those contacts back over sipis's own connection: a caller's
//! INVITE through Kamailio reaches sipis without sipis accepting any
//! connection, and sipis's answer comes back to the caller.

#[path = "support/certs.rs"]
mod certs;
#[path = "support/http1.rs"]
mod http1;
#[path = "support/kamailio.rs"]
mod kamailio;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/serve.rs"]
mod serve;

use kamailio::Kamailio;
use serve::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

const PROVIDER_STREAM: &str = include_str!("support/kamailio/provider_stream.cfg");

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// A free TCP port below the ephemeral range (see `ports.rs`).
fn free_tcp_port() -> u16 {
    ports::free_udp_port_run(1)
}

/// A caller's INVITE for `user`@kam.test through Kamailio; the final
/// answer it gets.
fn call_through(kam: &Kamailio, user: &str) -> String {
    let mut caller = Uac::bind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
    let to = format!("sip:{user}@kam.test");
    let r = caller.request(
        "INVITE",
        &to,
        &to,
        &fresh("up-call-"),
        "Contact: <sip:caller@127.0.0.1>\r\n",
    );
    let kam_addr = SocketAddr::from(([127, 0, 0, 1], kam.port()));
    caller.send(kam_addr, &r);
    let got = caller.until_final(Duration::from_secs(8));
    got.into_iter()
        .rfind(|m| status_of(m).is_some_and(|s| s >= 200))
        .unwrap_or_else(|| panic!("no final answer through Kamailio:\n{}", kam.log_tail(30)))
}

#[test]
fn sipis_registers_over_tcp_and_tls_and_calls_come_back_over_its_connections() {
    let certs = std::env::temp_dir().join(format!("sipis-upstream-{}", std::process::id()));
    let c = certs::make_certs(&certs);
    let (cert, key, ca) = (path(&c.cert), path(&c.key), path(&c.ca));
    let (tcp, tls) = (free_tcp_port(), free_tcp_port());
    let mut kam = Kamailio::start_config(
        "provider_stream.cfg",
        PROVIDER_STREAM,
        &[
            ("@TCP_PORT@", tcp.to_string()),
            ("@TLS_PORT@", tls.to_string()),
            ("@CERT@", cert.clone()),
            ("@KEY@", key.clone()),
        ],
    );
    let sipis = Serve::start("upstream", 2, &format!("[tls]\nupstream_ca = \"{ca}\"\n"));
    let accounts = [
        (
            "upalice",
            format!("sip:127.0.0.1:{tcp};transport=tcp"),
            "tcp",
        ),
        ("upbob", format!("sips:127.0.0.1:{tls}"), "tls"),
        (
            "upcarol",
            format!("sip:127.0.0.1:{tls};transport=tls"),
            "tls",
        ),
    ];
    for (user, registrar, _) in &accounts {
        sipis.add_upstream_account(user, registrar, 600);
    }
    for (user, _, transport) in &accounts {
        let b = kam.wait_binding(user, Duration::from_secs(10));
        assert!(
            b.address.ends_with(&format!(
                "@127.0.0.1:{};transport={transport}",
                if *transport == "tcp" {
                    sipis.sip_port
                } else {
                    5061
                }
            )),
            "{user}'s contact names sipis's {transport} listener: {}",
            b.address
        );
    }
    // Each shard opened at most one connection per destination.
    let m = sipis.metrics();
    let opened = metric_in(&m, "sipis_connections_connected_total").unwrap_or(0.0);
    assert!(
        (2.0..=4.0).contains(&opened),
        "connections opened: {opened}\n{m}"
    );

    // Calls come back over sipis's connections (no device: 480).
    for (user, _, _) in &accounts {
        let fin = call_through(&kam, user);
        assert_eq!(status_of(&fin), Some(480), "{user}: {fin}");
    }
    let m = sipis.metrics();
    assert_eq!(
        metric_in(&m, "sipis_connections_accepted_total"),
        Some(0.0),
        "Kamailio reused sipis's connections:\n{m}\n{}",
        kam.log_tail(40)
    );
    assert!(
        metric_in(&m, "sipis_stream_messages_total").unwrap() >= 6.0,
        "{m}"
    );
    let log = kam.log();
    assert!(
        log.contains("RX-RPL 480")
            && log.contains("from tls:127.0.0.1")
            && log.contains("from tcp:127.0.0.1"),
        "sipis's answers reached Kamailio over TCP and TLS:\n{}",
        kam.log_tail(40)
    );
    let _ = std::fs::remove_dir_all(&certs);
}

#[test]
fn a_broken_connection_is_opened_again_and_its_accounts_registered_again() {
    let certs = std::env::temp_dir().join(format!("sipis-upstream-re-{}", std::process::id()));
    let c = certs::make_certs(&certs);
    let (cert, key) = (path(&c.cert), path(&c.key));
    let (tcp, tls) = (free_tcp_port(), free_tcp_port());
    let vars = [
        ("@TCP_PORT@", tcp.to_string()),
        ("@TLS_PORT@", tls.to_string()),
        ("@CERT@", cert.clone()),
        ("@KEY@", key.clone()),
    ];
    let mut kam = Kamailio::start_config("provider_stream.cfg", PROVIDER_STREAM, &vars);
    let sipis = Serve::start(
        "upstream-restart",
        2,
        "[sip]\nretry_base = \"1s\"\nretry_max = \"2s\"\n",
    );
    let users = ["redave", "reerin", "refrank", "regina"];
    let registrar = format!("sip:127.0.0.1:{tcp};transport=tcp");
    for user in users {
        sipis.add_upstream_account(user, &registrar, 3600);
    }
    for user in users {
        kam.wait_binding(user, Duration::from_secs(10));
    }
    // The provider restarts and forgets every binding (in-memory usrloc);
    // sipis's connections break.
    drop(kam);
    std::thread::sleep(Duration::from_millis(500));
    let mut kam = Kamailio::start_config("provider_stream.cfg", PROVIDER_STREAM, &vars);
    let started = Instant::now();
    for user in users {
        kam.wait_binding(user, Duration::from_secs(15));
    }
    eprintln!(
        "all {} accounts registered again {:?} after the restart",
        users.len(),
        started.elapsed()
    );
    let log = sipis.log();
    assert!(
        log.contains("connection to registrar closed"),
        "the break is logged:\n{log}"
    );
    let m = sipis.metrics();
    assert!(
        metric_in(&m, "sipis_connections_connected_total").unwrap_or(0.0) >= 3.0,
        "connections opened again:\n{m}"
    );
    let _ = std::fs::remove_dir_all(&certs);
}
