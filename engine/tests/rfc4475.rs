//! The RFC 4475 torture messages fed to the engine as datagrams, with the
//! answer the RFC expects asserted per message: the valid ones processed,
//! the invalid ones answered with their 400/416/420/505 wherever a response
//! can be routed, and nothing crashing in between.

#![allow(clippy::disallowed_methods)] // the test anchors a simulated clock

#[path = "support/rfc4475_expected.rs"]
mod expected;

use expected::EXPECTED;
use sipis_engine::{Engine, EngineConfig, Flow};
use std::net::SocketAddr;
use std::time::Instant;

fn dat(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../parser/tests/torture/{name}.dat",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The status codes the engine sends back for one datagram.
fn answers(name: &str) -> (Vec<u16>, Vec<String>) {
    let now = Instant::now();
    let mut e = Engine::new(EngineConfig::default(), now);
    let from: SocketAddr = "192.0.2.50:5060".parse().unwrap();
    e.handle_datagram(now, from, Flow::Udp, &dat(name));
    let mut codes = Vec::new();
    let mut texts = Vec::new();
    while let Some(t) = e.poll_transmit() {
        assert_eq!(t.dest, from, "{name}: answered to the sender");
        let text = String::from_utf8_lossy(&t.payload).into_owned();
        let code = text
            .strip_prefix("SIP/2.0 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("{name}: not a response:\n{text}"));
        codes.push(code);
        texts.push(text);
    }
    (codes, texts)
}

#[test]
fn every_torture_message_gets_the_answer_rfc_4475_expects() {
    let mut wrong = Vec::new();
    for (name, want) in EXPECTED {
        let (got, _) = answers(name);
        if got != *want {
            wrong.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn bext01_lists_the_unsupported_option_tags() {
    let (_, texts) = answers("bext01");
    assert!(
        texts[0].contains("Unsupported: nothingSupportsThis, nothingSupportsThisEither\r\n"),
        "{}",
        texts[0]
    );
}

#[test]
fn a_salvaged_400_copies_the_vias_and_tags_the_to() {
    let (_, texts) = answers("quotbal");
    let t = &texts[0];
    assert!(t.starts_with("SIP/2.0 400 "), "{t}");
    assert!(
        t.contains("Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234\r\n"),
        "{t}"
    );
    assert!(t.contains("Call-ID: quotbal.aksdj\r\n"), "{t}");
    assert!(t.contains(";tag="), "{t}");
}

#[test]
fn every_one_of_the_49_messages_is_survived() {
    let dir = format!("{}/../parser/tests/torture", env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "dat") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let _ = answers(&name);
            n += 1;
        }
    }
    assert_eq!(n, 49);
}
