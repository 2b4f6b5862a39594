//! RFC 4475 on the live server: every torture message sent as a datagram
//! to a running sipis (its shared phone port), with the answer the RFC
//! expects asserted per message, and the server still answering after the
//! last one. The same table as the engine's (`engine/tests/rfc4475.rs`),
//! here through the runtime: sockets, the shared-port router, the shards.

#[path = "support/ports.rs"]
mod ports;

use ports::free_udp_port_run;
#[path = "../engine/tests/support/rfc4475_expected.rs"]
mod expected;

use expected::EXPECTED;
use sipis::config::Config;
use sipis::runtime::Server;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

fn dat(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/parser/tests/torture/{name}.dat",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Sends `data` and collects the status codes answered within `wait`
/// (returning early once `want` answers came).
fn exchange(sock: &UdpSocket, to: std::net::SocketAddr, data: &[u8], want: usize) -> Vec<u16> {
    sock.send_to(data, to).unwrap();
    let mut codes = Vec::new();
    let mut buf = [0u8; 65_535];
    let end = Instant::now() + Duration::from_millis(if want == 0 { 300 } else { 2_000 });
    while Instant::now() < end && (want == 0 || codes.len() < want) {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            if let Some(code) = text
                .strip_prefix("SIP/2.0 ")
                .and_then(|r| r.get(..3))
                .and_then(|c| c.parse().ok())
            {
                codes.push(code);
            }
        }
    }
    codes
}

#[test]
fn the_running_server_answers_every_torture_message_as_rfc_4475_expects() {
    let dir = std::env::temp_dir().join(format!("sipis-rfc4475-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_udp_port_run(2);
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let toml = format!(
        r#"
[server]
bind = "127.0.0.1"
sip_port = {port}
shards = 1
data_dir = "{dir}"
[admin]
listen = "127.0.0.1:{admin_port}"
token = "rfc4475-live-admin-token-0123456789"
"#,
        dir = dir.display(),
    );
    let cfg = Config::from_toml_str(&toml).expect("valid config");
    let server = Server::start(&cfg).expect("sipis starts");
    let to: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();

    let mut wrong = Vec::new();
    for (name, want) in EXPECTED {
        // A socket of its own per message: an unACKed 480 retransmitted
        // for the previous INVITE must not count as this one's answer.
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let got = exchange(&sock, to, &dat(name), want.len());
        if got != *want {
            wrong.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    // The other 23 messages, answered or not, do not stop the server.
    for entry in std::fs::read_dir(format!(
        "{}/parser/tests/torture",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "dat") {
            sock.send_to(&std::fs::read(&path).unwrap(), to).unwrap();
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    while sock.recv_from(&mut [0u8; 65_535]).is_ok() {}
    let alive = exchange(
        &sock,
        to,
        b"OPTIONS sip:sipis@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKalive\r\n\
          From: <sip:probe@127.0.0.1>;tag=a\r\nTo: <sip:sipis@127.0.0.1>\r\nCall-ID: alive\r\n\
          CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        1,
    );
    server.stop(false);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    assert_eq!(alive, vec![200], "the server answers after the torture run");
}
