//! One datagram: `parse`, then `validate` and every typed accessor, then
//! write what parsed back out with the `Writer` and parse that again.
//!
//! Checks: no panic, no hang; everything the writer emits from a parsed
//! message parses again (and validates again when the input validated).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sipis_parser::{
    parse, response_to, write_name_addr, write_uri, Contact, HeaderName, Message, NameAddr,
    StartLine, Writer, EMPTY_HEADER,
};

fuzz_target!(|data: &[u8]| {
    let mut headers = [EMPTY_HEADER; 64];
    let Ok(msg) = parse(data, &mut headers) else {
        return;
    };
    assert!(msg.raw.len() <= data.len());
    let valid = msg.validate().is_ok();

    accessors(&msg);
    rewrite_message(&msg);
    rewrite_response(&msg, valid);
});

/// Calls every accessor; each parsed address is also re-written and
/// re-parsed.
fn accessors(msg: &Message<'_, '_>) {
    let _ = (
        msg.is_request(),
        msg.method(),
        msg.status(),
        msg.content_length(),
    );
    let _ = (
        msg.content_type(),
        msg.user_agent(),
        msg.header_by_name("X-Sipis-Push-Status"),
    );
    if let Ok(uri) = msg.uri() {
        let _ = (
            uri.user_decoded(),
            uri.transport(),
            uri.header_pairs().count(),
        );
        let mut out = BytesMut::new();
        write_uri(&mut out, &uri, |_| true);
        let again = sipis_parser::Uri::parse(&out);
        assert!(
            again.is_ok(),
            "write_uri output {:?} does not parse: {again:?}",
            out
        );
    }
    if let Ok(v) = msg.top_via() {
        let _ = (
            v.branch(),
            v.received(),
            v.rport(),
            v.maddr(),
            v.ttl(),
            v.is_reliable(),
        );
    }
    for v in msg.vias().flatten() {
        let _ = (v.branch(), v.rport());
    }
    for na in [msg.from(), msg.to()].into_iter().flatten() {
        name_addr(&na);
    }
    let _ = msg.call_id();
    let _ = msg.cseq();
    for c in msg.contacts().flatten() {
        let _ = (c.expires(), c.q(), c.instance(), c.reg_id(), c.push());
        if let Contact::Addr(na) = c {
            name_addr(&na);
        }
    }
    for na in msg.routes().chain(msg.record_routes()).flatten() {
        name_addr(&na);
    }
    let _ = (
        msg.max_forwards(),
        msg.expires(),
        msg.min_expires(),
        msg.retry_after(),
    );
    for name in [
        HeaderName::WwwAuthenticate,
        HeaderName::ProxyAuthenticate,
        HeaderName::Authorization,
        HeaderName::ProxyAuthorization,
    ] {
        for a in msg.auth(name).flatten() {
            let _ = (a.is_digest(), a.param("nonce"), a.params().count());
        }
    }
    for r in msg.reasons().flatten() {
        let _ = (r.cause(), r.text());
    }
    let _ = msg.require().count() + msg.supported().count() + msg.allow().count();
    let _ = msg.supported().contains("outbound");
    if let Some(Ok(e)) = msg.event() {
        let _ = e.id();
    }
    if let Some(Ok(r)) = msg.replaces() {
        let _ = (r.to_tag(), r.from_tag(), r.early_only());
    }
    let _ = msg.priority();
    for f in msg.feature_caps().flatten() {
        let _ = f.params.value("+sip.pns");
    }
}

/// `write_name_addr` output must parse again as a name-addr.
fn name_addr(na: &NameAddr<'_>) {
    let _ = (na.display_name(), na.tag());
    let mut out = BytesMut::new();
    write_name_addr(&mut out, na, |_| true);
    let again = NameAddr::parse(&out);
    assert!(
        again.is_ok(),
        "write_name_addr output {:?} does not parse: {again:?}",
        out
    );
}

/// The same message written with `Writer::request`/`Writer::response` and
/// every header copied must parse to the same start line, headers (minus
/// Content-Length, which `finish` rewrites) and body.
fn rewrite_message(msg: &Message<'_, '_>) {
    let mut out = BytesMut::new();
    let mut w = match msg.start {
        StartLine::Request { method, uri } => Writer::request(&mut out, method, uri),
        StartLine::Response { code, reason } => match std::str::from_utf8(reason) {
            Ok(r) => Writer::response(&mut out, code, r),
            Err(_) => return,
        },
    };
    w.copy_headers(msg, |_| true);
    w.finish(msg.body);

    let mut h2 = [EMPTY_HEADER; 72];
    let again = parse(&out, &mut h2);
    let again = match again {
        Ok(m) => m,
        Err(e) => panic!("re-written message does not parse: {e:?}\n{:?}", out),
    };
    assert_eq!(again.start, msg.start);
    assert_eq!(again.body, msg.body);
    let orig = msg
        .headers
        .iter()
        .filter(|h| h.kind != HeaderName::ContentLength);
    let new = again
        .headers
        .iter()
        .filter(|h| h.kind != HeaderName::ContentLength);
    assert!(orig.eq(new), "headers differ after re-writing");
}

/// For a request, `response_to` must produce a response that parses, and
/// validates when the request did.
fn rewrite_response(msg: &Message<'_, '_>, valid: bool) {
    if !msg.is_request() {
        return;
    }
    let source = "198.51.100.7:5060".parse().unwrap();
    for code in [100, 200] {
        let mut out = BytesMut::new();
        match response_to(&mut out, msg, code, "OK", b"fuzztag", source) {
            Ok(w) => w.finish(b""),
            Err(e) => {
                assert!(!valid, "response_to failed on a valid request: {e:?}");
                continue;
            }
        }
        let mut h2 = [EMPTY_HEADER; 72];
        let resp = match parse(&out, &mut h2) {
            Ok(m) => m,
            Err(e) => panic!("response_to output does not parse: {e:?}\n{:?}", out),
        };
        if valid {
            if let Err(e) = resp.validate() {
                panic!(
                    "response to a valid request does not validate: {e:?}\n{:?}",
                    out
                );
            }
            let resp_branch = resp.top_via().ok().and_then(|v| v.branch());
            let req_branch = msg.top_via().ok().and_then(|v| v.branch());
            assert_eq!(resp_branch, req_branch);
        }
    }
}
