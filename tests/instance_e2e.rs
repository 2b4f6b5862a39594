//! The process as an operator meets it (issue 15, "logs an operator can
//! use"): the start banner is in the log; a second `sipis serve` on the same
//! data directory, or on the same ports, refuses to start and says why;
//! SIGHUP re-reads the configuration (log level, TLS) and says so, and
//! refuses a broken file without changing anything.

#[path = "support/http1.rs"]
mod http1;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/postgres.rs"]
mod postgres;
#[path = "support/serve.rs"]
mod serve;

use serve::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `sipis serve --config <path>` and expects it to fail within 10 s:
/// its stderr and stdout.
fn second_serve(config: &std::path::Path) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sipis"))
        .args(["serve", "--config"])
        .arg(config)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            assert!(!status.success(), "the second instance started");
            return format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("the second instance is still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_instance_refuses_to_start_on_the_same_data_dir_or_ports() {
    let first = Serve::start("instance-first", 2, "");
    let log = first.log();
    assert!(
        log.contains(&format!(
            "INFO sipis: sipis {}: starting 2 shards",
            env!("CARGO_PKG_VERSION")
        )),
        "the start banner is a log line:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "no ANSI colours in a log file:\n{log}"
    );

    let config_path = first.dir.join("sipis.toml");
    let err = second_serve(&config_path);
    assert!(
        err.contains("another sipis is running with data_dir"),
        "{err}"
    );
    assert!(err.contains(&format!("pid {}", first.pid())), "{err}");

    // Another data directory, the same ports.
    let text = std::fs::read_to_string(&config_path).unwrap();
    let other = first.dir.join("other-data");
    let text = text.replace(
        &format!("data_dir = \"{}\"", first.dir.join("data").display()),
        &format!("data_dir = \"{}\"", other.display()),
    );
    assert!(text.contains("other-data"), "{text}");
    let other_config = first.dir.join("other.toml");
    std::fs::write(&other_config, text).unwrap();
    let err = second_serve(&other_config);
    assert!(
        err.contains(&format!("UDP 127.0.0.1:{} is in use", first.sip_port)),
        "{err}"
    );
    // The first one still serves.
    assert_eq!(first.api("GET", "/health", None).0, 200);
}

#[test]
fn sighup_reloads_the_log_level_and_refuses_a_broken_file() {
    let sipis = Serve::start("instance-hup", 1, "");
    let config_path = sipis.dir.join("sipis.toml");
    let text = std::fs::read_to_string(&config_path).unwrap();
    let hup = || unsafe {
        // SAFETY: signalling the child sipis.
        libc::kill(sipis.pid() as libc::pid_t, libc::SIGHUP);
    };
    let wait_log = |what: &str| {
        let end = Instant::now() + Duration::from_secs(5);
        while !sipis.log().contains(what) {
            assert!(
                Instant::now() < end,
                "no {what:?} in the log:\n{}",
                sipis.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // A TCP connection that closes logs at debug: not at info.
    let touch = || {
        drop(std::net::TcpStream::connect(sipis.phone_addr()).unwrap());
        std::thread::sleep(Duration::from_millis(300));
    };
    touch();
    assert!(
        !sipis.log().contains("connection closed"),
        "{}",
        sipis.log()
    );

    // Log level and connection limits, at once.
    let reloaded = text.replace("level = \"info\"", "level = \"debug\"")
        + "\n[tcp]\nmax_connections_per_ip = 2\n";
    std::fs::write(&config_path, reloaded).unwrap();
    hup();
    wait_log("log level debug");
    wait_log("connection limits now: max_connections=20000 max_connections_per_ip=2");
    touch();
    wait_log("connection closed");
    // The new per-IP cap holds (the shards take it within a second).
    std::thread::sleep(Duration::from_millis(1200));
    let held: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(sipis.phone_addr()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = std::net::TcpStream::connect(sipis.phone_addr()).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut b = [0u8; 1];
    match std::io::Read::read(&mut third, &mut b) {
        // Closed at once (end of stream or reset).
        Ok(0) => {}
        Err(e)
            if !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("the third connection from one address was kept: {other:?}"),
    }
    drop(held);

    // A broken file: said, and nothing changes.
    std::fs::write(&config_path, "[server\n").unwrap();
    hup();
    wait_log("refused, nothing reloaded");
    assert_eq!(sipis.api("GET", "/health", None).0, 200, "still serving");
}

#[test]
fn a_database_down_at_start_is_waited_for_with_back_off_naming_its_address() {
    let Some(pg) = postgres::dedicated() else {
        return;
    };
    let url = pg.create_database("sipis_startwait");
    pg.stop();
    let starter = std::thread::spawn({
        move || {
            std::thread::sleep(Duration::from_secs(3));
            pg.start();
            pg
        }
    });
    let sipis = Serve::start(
        "instance-pgwait",
        1,
        &format!("[store]\nkind = \"postgres\"\nurl = \"{url}\"\n"),
    );
    let _pg = starter.join().unwrap();
    let log = sipis.log();
    let port = url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap()
        .to_string();
    assert!(
        log.contains(&format!(":{port}: cannot connect")) && log.contains("retrying in 1s"),
        "each failed attempt names the database's address:\n{log}"
    );
    assert!(log.contains("PostgreSQL reachable after"), "{log}");
    assert_eq!(sipis.api("GET", "/health", None).0, 200);
}
