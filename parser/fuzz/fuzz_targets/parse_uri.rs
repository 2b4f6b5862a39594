//! The element parsers on their own, all on the same bytes: `Uri`,
//! `NameAddr`, `Via`, `Contact`, `Auth`, `Reason` (and the small `CSeq`,
//! `Event`, `Replaces`, `FeatureCaps` ones).
//!
//! Checks: no panic, no hang; a parsed URI written with `write_uri` parses
//! again to the same fields; a parsed name-addr written with
//! `write_name_addr` parses again to the same URI and parameters.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sipis_parser::{
    percent_decode, unquote, write_name_addr, write_uri, Auth, CSeq, Contact, Event, FeatureCaps,
    NameAddr, Param, Reason, Replaces, Uri, Via,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(u) = Uri::parse(data) {
        let _ = (u.user_decoded(), u.transport(), u.header_pairs().count());
        let mut out = BytesMut::new();
        write_uri(&mut out, &u, |_| true);
        match Uri::parse(&out) {
            Ok(again) => assert_same_uri(&u, &again, &out),
            Err(e) => panic!("write_uri output {:?} does not parse: {e:?}", out),
        }
    }
    if let Ok(na) = NameAddr::parse(data) {
        let _ = (na.display_name(), na.tag());
        let mut out = BytesMut::new();
        write_name_addr(&mut out, &na, |_| true);
        match NameAddr::parse(&out) {
            Ok(again) => {
                assert_same_uri(&na.uri, &again.uri, &out);
                assert_eq!(params(&na.params), params(&again.params), "{:?}", out);
                assert_eq!(na.display_name(), again.display_name(), "{:?}", out);
            }
            Err(e) => panic!("write_name_addr output {:?} does not parse: {e:?}", out),
        }
    }
    if let Ok(v) = Via::parse(data) {
        let _ = (
            v.branch(),
            v.received(),
            v.rport(),
            v.maddr(),
            v.ttl(),
            v.is_reliable(),
        );
    }
    if let Ok(c) = Contact::parse(data) {
        let _ = (c.expires(), c.q(), c.instance(), c.reg_id(), c.push());
    }
    if let Ok(a) = Auth::parse(data) {
        let _ = (a.is_digest(), a.param("realm"));
        for p in a.params() {
            assert!(p.is_ok(), "Auth::parse accepted a bad parameter");
        }
    }
    if let Ok(r) = Reason::parse(data) {
        let _ = (r.cause(), r.text());
    }
    let _ = CSeq::parse(data);
    if let Ok(e) = Event::parse(data) {
        let _ = e.id();
    }
    if let Ok(r) = Replaces::parse(data) {
        let _ = (r.to_tag(), r.from_tag(), r.early_only());
    }
    if let Ok(f) = FeatureCaps::parse(data) {
        let _ = f.params.value("+sip.pns");
    }
    let _ = percent_decode(data);
    let _ = unquote(data);
});

fn params<'a>(p: &sipis_parser::Params<'a>) -> Vec<Param<'a>> {
    p.iter().map_while(|p| p.ok()).collect()
}

fn assert_same_uri(a: &Uri<'_>, b: &Uri<'_>, out: &[u8]) {
    let ctx = || {
        format!(
            "{a:?}\nre-written as {:?}\nparsed as {b:?}",
            String::from_utf8_lossy(out)
        )
    };
    assert!(a.scheme == b.scheme, "scheme: {}", ctx());
    assert!(a.user == b.user, "user: {}", ctx());
    assert!(a.password == b.password, "password: {}", ctx());
    assert!(a.host == b.host, "host: {}", ctx());
    assert!(a.host_raw == b.host_raw, "host_raw: {}", ctx());
    assert!(a.port == b.port, "port: {}", ctx());
    assert!(params(&a.params) == params(&b.params), "params: {}", ctx());
    assert!(a.headers == b.headers, "headers: {}", ctx());
}
