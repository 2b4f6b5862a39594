//! A TCP/TLS byte stream: `frame` in a loop, consuming each frame, with
//! small limits so the TooLarge paths are reached.
//!
//! Checks: no panic, no hang; every frame lies inside the buffer, is not
//! empty (the loop always progresses) and respects the limits; every
//! `Message(n)` slice goes through `parse` (and `validate`) without panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipis_parser::{frame, parse, Frame, Limits, EMPTY_HEADER};

const LIMITS: Limits = Limits {
    max_head: 1024,
    max_message: 2048,
};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    loop {
        let n = match frame(rest, &LIMITS) {
            Ok(Frame::Partial) | Err(_) => break,
            Ok(Frame::Ping(n)) => {
                assert_eq!(n, 4);
                n
            }
            Ok(Frame::Pong(n)) => {
                assert_eq!(n, 2);
                n
            }
            Ok(Frame::Message(n)) => {
                assert!(
                    n <= rest.len(),
                    "Message({n}) past the {} bytes left",
                    rest.len()
                );
                assert!(n <= LIMITS.max_message);
                let mut headers = [EMPTY_HEADER; 64];
                if let Ok(msg) = parse(&rest[..n], &mut headers) {
                    assert!(msg.raw.len() <= n);
                    let _ = msg.validate();
                }
                n
            }
        };
        assert!(
            n > 0 && n <= rest.len(),
            "frame of {n} bytes, {} left",
            rest.len()
        );
        rest = &rest[n..];
    }
});
