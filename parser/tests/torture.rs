//! RFC 4475 "SIP Torture Test Messages": one test per message of §3.
//!
//! The messages are the exact octets of the RFC's archive
//! (`tests/torture/<name>.dat`, see `tests/torture/README.md`). Valid
//! messages are checked field by field and must pass
//! [`Message::validate`]. Invalid ones must fail with the specific
//! [`Error`] that the server acts on: from [`parse`] or [`frame`] when the
//! start line or the framing is broken, otherwise from the accessor or
//! from `validate()`. Where the RFC lets a robust element accept the
//! message, the test asserts that it parses and quotes the RFC.
//!
//! "D" means datagram mode (`parse` on the whole buffer), "S" means stream
//! mode (`frame` on a TCP/TLS buffer).

use bytes::BytesMut;
use sipis_parser::{
    frame, parse, percent_decode, write_uri, Contact, Error, Frame, Header, HeaderName, Host,
    Limits, Message, Method, NameAddr, Scheme, Uri, Via, BRANCH_MAGIC, EMPTY_HEADER,
};

macro_rules! dat {
    ($name:literal) => {
        include_bytes!(concat!("torture/", $name, ".dat"))
    };
}

/// Header array big enough for every torture message (longreq has 43).
fn slots<'a>() -> [Header<'a>; 64] {
    [EMPTY_HEADER; 64]
}

fn ok<'h, 'a>(buf: &'a [u8], h: &'h mut [Header<'a>]) -> Message<'h, 'a> {
    let m = parse(buf, h).expect("message must parse");
    exercise(&m);
    m
}

fn err(buf: &[u8]) -> Error {
    let mut h = slots();
    match parse(buf, &mut h) {
        Ok(m) => panic!("parsed, expected an error: {:?}", m.start),
        Err(e) => e,
    }
}

/// Calls every accessor and discards the results: none may panic, whatever
/// the message holds.
fn exercise(m: &Message<'_, '_>) {
    let _ = (
        m.validate(),
        m.uri(),
        m.call_id(),
        m.cseq(),
        m.from(),
        m.to(),
    );
    let _ = (m.top_via(), m.max_forwards(), m.expires(), m.min_expires());
    let _ = (m.retry_after(), m.event(), m.replaces(), m.priority());
    let _ = (m.content_type(), m.user_agent(), m.content_length());
    for v in m.vias().flatten() {
        let _ = (v.branch(), v.received(), v.rport(), v.ttl(), v.maddr());
    }
    if let Ok(u) = m.uri() {
        let _ = (u.user_decoded(), u.transport(), u.header_pairs().count());
    }
    for c in m.contacts().flatten() {
        let _ = (c.q(), c.expires(), c.instance(), c.reg_id(), c.push());
    }
    let _ = m.routes().count() + m.record_routes().count() + m.reasons().count();
    let _ = m.require().count() + m.supported().count() + m.allow().count();
    let _ = m.feature_caps().count();
    for name in [
        HeaderName::Authorization,
        HeaderName::ProxyAuthorization,
        HeaderName::WwwAuthenticate,
        HeaderName::ProxyAuthenticate,
    ] {
        for a in m.auth(name).flatten() {
            let _ = a.params().count();
        }
    }
}

/// Frames `buf` as the only content of a stream buffer.
fn frame_of(buf: &[u8]) -> Result<Frame, Error> {
    frame(buf, &Limits::default())
}

/// A header value with its folds (CRLF + white space) read as one SP.
fn unfold(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'\r' || v[i] == b'\n' {
            while i < v.len() && matches!(v[i], b'\r' | b'\n' | b' ' | b'\t') {
                i += 1;
            }
            while out.last().is_some_and(|&b| b == b' ' || b == b'\t') {
                out.pop();
            }
            out.push(b' ');
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    out
}

fn decoded(user: Option<&[u8]>) -> Vec<u8> {
    percent_decode(user.expect("user part"))
        .expect("valid escapes")
        .into_owned()
}

fn uri_params(u: &Uri<'_>) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    u.params
        .iter()
        .map(|p| {
            let p = p.expect("param");
            (p.name.to_vec(), p.value.map(<[u8]>::to_vec))
        })
        .collect()
}

fn pv(name: &str, value: Option<&str>) -> (Vec<u8>, Option<Vec<u8>>) {
    (name.into(), value.map(Into::into))
}

fn contacts<'a>(m: &Message<'_, 'a>) -> Vec<NameAddr<'a>> {
    m.contacts()
        .map(|c| *c.expect("contact").addr().expect("not *"))
        .collect()
}

fn vias<'a>(m: &Message<'_, 'a>) -> Vec<Via<'a>> {
    m.vias().map(|v| v.expect("via")).collect()
}

fn domain(s: &str) -> Host<'_> {
    Host::Domain(s)
}

fn v4(s: &str) -> Host<'static> {
    Host::V4(s.parse().unwrap())
}

// ---------------------------------------------------------------------
// §3.1.1 Valid messages: "the parser must accept all 13"
// ---------------------------------------------------------------------

#[test]
fn wsinv_valid_tortuous_whitespace_parses_with_field_values() {
    let buf = dat!("wsinv");
    assert_eq!(buf.len(), 1001);
    let mut h = slots();
    let m = ok(buf, &mut h);
    m.validate().unwrap();
    assert_eq!(m.headers.len(), 14);
    assert_eq!(m.method(), Some(Method::Invite));

    let ruri = m.uri().unwrap();
    assert_eq!(ruri.scheme, Scheme::Sip);
    assert_eq!(ruri.user, Some(&b"vivekg"[..]));
    assert_eq!(ruri.host, domain("chair-dnrc.example.com"));
    assert_eq!(ruri.port, None);
    assert_eq!(uri_params(&ruri), vec![pv("unknownparam", None)]);

    // `TO :` with the value on a folded line, LWS around `;` and `=`.
    let to = m.to().unwrap();
    assert_eq!(to.display, None);
    assert_eq!(to.uri.raw, b"sip:vivekg@chair-dnrc.example.com");
    assert_eq!(to.tag(), Some(&b"1918181833n"[..]));

    // `from   :` with an escaped backslash and quote in the display name,
    // and the tag reached over two folded lines.
    let from = m.from().unwrap();
    assert!(from.display_quoted);
    assert_eq!(from.display, Some(&br#"J Rosenberg \\\""#[..]));
    assert_eq!(from.display_name().unwrap(), &br#"J Rosenberg \""#[..]);
    assert_eq!(from.uri.raw, b"sip:jdrosen@example.com");
    assert_eq!(from.tag(), Some(&b"98asjd8"[..]));

    assert_eq!(m.max_forwards(), Ok(Some(68)));
    assert_eq!(m.call_id(), Ok(&b"wsinv.ndaksdj@192.0.2.1"[..]));
    assert_eq!(m.content_length(), Some(150));
    assert_eq!(m.body.len(), 150);
    assert!(m.body.starts_with(b"v=0\r\n"));
    let cseq = m.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (9, Method::Invite));

    let v = vias(&m);
    assert_eq!(v.len(), 3);
    assert_eq!(
        (v[0].transport, v[0].host, v[0].port),
        ("UDP", v4("192.0.2.2"), None)
    );
    assert_eq!(v[0].branch(), Some(&b"390skdjuw"[..]));
    assert!(!v[0].branch().unwrap().starts_with(BRANCH_MAGIC));
    assert_eq!((v[0].received(), v[0].rport()), (None, None));
    assert_eq!(m.top_via().unwrap(), v[0]);
    assert_eq!(
        (v[1].transport, v[1].host, v[1].branch()),
        (
            "TCP",
            domain("spindle.example.com"),
            Some(&b"z9hG4bK9ikj8"[..])
        )
    );
    assert_eq!(
        (v[2].transport, v[2].host, v[2].branch()),
        ("UDP", v4("192.168.255.111"), Some(&b"z9hG4bK30239"[..]))
    );

    assert_eq!(m.header(HeaderName::Subject), Some(&b""[..]));
    assert_eq!(
        unfold(m.header_by_name("newfangledheader").unwrap()),
        b"newfangled value continued newfangled value"
    );
    // Opaque: not read as parameters, no error.
    assert_eq!(
        m.header_by_name("UnknownHeaderWithUnusualValue"),
        Some(&b";;,,;;,;"[..])
    );
    assert_eq!(m.content_type(), Some(&b"application/sdp"[..]));

    let routes: Vec<_> = m.routes().map(Result::unwrap).collect();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].uri.host, domain("services.example.com"));
    assert_eq!(
        uri_params(&routes[0].uri),
        vec![
            pv("lr", None),
            pv("unknownwith", Some("value")),
            pv("unknown-no-value", None)
        ]
    );

    let c: Vec<_> = m.contacts().map(Result::unwrap).collect();
    assert_eq!(c.len(), 1);
    let a = c[0].addr().unwrap();
    assert_eq!(a.display, Some(&br#"Quoted string \"\""#[..]));
    assert_eq!(a.display_name().unwrap(), &br#"Quoted string """#[..]);
    assert_eq!(a.uri.raw, b"sip:jdrosen@example.com");
    assert_eq!(a.params.value("newparam"), Some(&b"newvalue"[..]));
    assert!(a.params.has("secondparam") && a.params.value("secondparam").is_none());
    assert_eq!(c[0].q(), Some(Ok(330)));
    assert_eq!(frame_of(buf), Ok(Frame::Message(1001)));
}

#[test]
fn intmeth_valid_every_token_character_parses_with_field_values() {
    let buf = dat!("intmeth");
    assert_eq!(buf.len(), 641);
    let mut h = slots();
    let m = ok(buf, &mut h);
    m.validate().unwrap();
    assert_eq!(m.headers.len(), 8);
    let method = "!interesting-Method0123456789_*+`.%indeed'~";
    assert_eq!(m.method(), Some(Method::Extension(method)));

    // The user holds ';', '?' and '/': params and headers are only split
    // off after the '@'.
    let user = &b"1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"[..];
    let ruri = m.uri().unwrap();
    assert_eq!(ruri.scheme, Scheme::Sip);
    assert_eq!(ruri.user, Some(user));
    assert_eq!(
        ruri.password,
        Some(&b"&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"[..])
    );
    assert_eq!(ruri.host, domain("example.com"));
    assert_eq!(ruri.port, None);
    assert!(ruri.params.is_empty());
    assert_eq!(ruri.headers, b"");

    let via = m.top_via().unwrap();
    assert_eq!(
        (via.transport, via.host),
        ("TCP", domain("host1.example.com"))
    );
    assert_eq!(via.branch(), Some(&b"z9hG4bK-.!%66*_+`'~"[..]));

    // Quoted-pairs escaping BEL, NUL and DEL.
    let to = m.to().unwrap();
    assert_eq!(to.display, Some(&b"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f"[..]));
    assert_eq!(
        to.display_name().unwrap(),
        &b"BEL:\x07 NUL:\x00 DEL:\x7f"[..]
    );
    assert_eq!(to.uri.user, Some(user));
    assert_eq!(to.uri.password, None);
    assert_eq!(to.uri.host, domain("example.com"));
    assert_eq!(to.tag(), None);

    let from = m.from().unwrap();
    assert!(!from.display_quoted);
    assert_eq!(from.display, Some(&b"token1~` token2'+_ token3*%!.-"[..]));
    assert_eq!(from.uri.raw, b"sip:mundane@example.com");
    let fp = from.params.get("fromParam''~+*_!.-%").unwrap();
    assert!(fp.quoted);
    assert_eq!(fp.value, Some("работающий".as_bytes()));
    assert_eq!(from.tag(), Some(&b"_token~1'+`*%!-."[..]));

    assert_eq!(
        m.call_id(),
        Ok(&br#"intmeth.word%ZK-!.*_+'@word`~)(><:\/"][?}{"#[..])
    );
    let cseq = m.cseq().unwrap();
    assert_eq!(
        (cseq.seq, cseq.method),
        (139122385, Method::Extension(method))
    );
    assert_eq!(m.max_forwards(), Ok(Some(255)));
    assert_eq!(
        m.header_by_name("extensionHeader-!.%*+_`'~"),
        Some("\u{feff}大停電".as_bytes())
    );
    assert_eq!(m.content_length(), Some(0));
    assert_eq!(m.body, b"");
}

#[test]
fn esc01_valid_percent_escapes_decode_once_with_field_values() {
    let buf = dat!("esc01");
    assert_eq!(buf.len(), 543);
    let mut h = slots();
    let m = ok(buf, &mut h);
    m.validate().unwrap();
    assert_eq!(m.headers.len(), 9);
    assert_eq!(m.method(), Some(Method::Invite));

    // Not a sips URI: the scheme is sip and the user is escaped.
    let ruri = m.uri().unwrap();
    assert_eq!(ruri.scheme, Scheme::Sip);
    assert_eq!(ruri.user, Some(&b"sips%3Auser%40example.com"[..]));
    assert_eq!(decoded(ruri.user), b"sips:user@example.com");
    assert_eq!(ruri.host, domain("example.net"));

    let to = m.to().unwrap();
    assert_eq!(to.uri.user, Some(&b"%75se%72"[..]));
    assert_eq!(&*to.uri.user_decoded().unwrap().unwrap(), b"user");
    assert_eq!(to.uri.host, domain("example.com"));
    assert_eq!(to.tag(), None);

    let from = m.from().unwrap();
    assert_eq!(decoded(from.uri.user), b"I have spaces");
    assert_eq!(from.uri.host, domain("example.net"));
    assert_eq!(from.tag(), Some(&b"938"[..]));

    assert_eq!(m.max_forwards(), Ok(Some(87)));
    assert_eq!(m.call_id(), Ok(&b"esc01.239409asdfakjkn23onasd0-3234"[..]));
    let cseq = m.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (234234, Method::Invite));
    let via = m.top_via().unwrap();
    assert_eq!(
        (via.transport, via.host, via.branch()),
        (
            "UDP",
            domain("host5.example.net"),
            Some(&b"z9hG4bKkdjuw"[..])
        )
    );
    // `C:` is the compact Content-Type, in upper case.
    assert_eq!(m.content_type(), Some(&b"application/sdp"[..]));

    // Contact folded onto its own line; escapes in the user and in the
    // uri-parameter names and values. Unescaping is done once only.
    let c = contacts(&m);
    assert_eq!(c.len(), 1);
    assert_eq!(decoded(c[0].uri.user), b"caller");
    assert_eq!(c[0].uri.host, domain("host5.example.net"));
    let params: Vec<_> = c[0]
        .uri
        .params
        .iter()
        .map(|p| {
            let p = p.unwrap();
            (
                percent_decode(p.name).unwrap().into_owned(),
                p.value.map(|v| percent_decode(v).unwrap().into_owned()),
            )
        })
        .collect();
    assert_eq!(
        params,
        vec![pv("lr", None), pv("name", Some("value%41"))],
        "one round of unescaping: value%41, not valueA"
    );
    assert_eq!((m.content_length(), m.body.len()), (Some(150), 150));
}

#[test]
fn escnull_valid_escaped_nul_in_users_is_kept_with_field_values() {
    let buf = dat!("escnull");
    assert_eq!(buf.len(), 359);
    let mut h = slots();
    let m = ok(buf, &mut h);
    m.validate().unwrap();
    assert_eq!(m.headers.len(), 9);
    assert_eq!(m.method(), Some(Method::Register));
    assert_eq!(m.uri().unwrap().raw, b"sip:example.com");

    let to = m.to().unwrap();
    let user = decoded(to.uri.user);
    assert_eq!(user, b"null-\0-null", "not truncated at the NUL");
    assert_eq!(user.len(), 11);
    assert_eq!(to.tag(), None);
    let from = m.from().unwrap();
    assert_eq!(decoded(from.uri.user), b"null-\0-null");
    assert_eq!(from.tag(), Some(&b"839923423"[..]));

    assert_eq!(m.max_forwards(), Ok(Some(70)));
    assert_eq!(
        m.call_id(),
        Ok(&b"escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd"[..])
    );
    let cseq = m.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (14398234, Method::Register));
    let via = m.top_via().unwrap();
    assert_eq!(
        (via.transport, via.host, via.branch()),
        (
            "UDP",
            domain("host5.example.com"),
            Some(&b"z9hG4bKkdjuw"[..])
        )
    );

    // Two distinct bindings: users of one and two NUL octets.
    let c = contacts(&m);
    assert_eq!(c.len(), 2);
    assert_eq!(decoded(c[0].uri.user), b"\0");
    assert_eq!(decoded(c[1].uri.user), b"\0\0");
    assert!(c.iter().all(|a| a.uri.host == domain("host5.example.com")));
    // `L:0`: compact, upper case, no SP.
    assert_eq!(m.content_length(), Some(0));
}

#[test]
fn esc02_valid_percent_that_is_no_escape_stays_literal_with_field_values() {
    let buf = dat!("esc02");
    assert_eq!(buf.len(), 439);
    let mut h = slots();
    let m = ok(buf, &mut h);
    m.validate().unwrap();
    assert_eq!(m.headers.len(), 10);
    // An unknown method, not REGISTER: methods are not unescaped.
    assert_eq!(m.method(), Some(Method::Extension("RE%47IST%45R")));
    assert_ne!(m.method(), Some(Method::Register));
    assert_eq!(m.uri().unwrap().host, domain("registrar.example.com"));

    let to = m.to().unwrap();
    let from = m.from().unwrap();
    for na in [&to, &from] {
        assert!(na.display_quoted);
        assert_eq!(na.display_name().unwrap(), &b"%Z%45"[..]);
        assert_eq!(na.uri.raw, b"sip:resource@example.com");
    }
    assert_eq!(to.tag(), None);
    assert_eq!(from.tag(), Some(&b"f232jadfj23"[..]));

    assert_eq!(
        m.call_id(),
        Ok(&b"esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf"[..])
    );
    let via = m.top_via().unwrap();
    assert_eq!(
        (via.transport, via.host, via.branch()),
        (
            "TCP",
            domain("host.example.com"),
            Some(&b"z9hG4bK209%fzsnel234"[..])
        )
    );
    let cseq = m.cseq().unwrap();
    assert_eq!(
        (cseq.seq, cseq.method),
        (29344, Method::Extension("RE%47IST%45R"))
    );
    assert_eq!(m.max_forwards(), Ok(Some(70)));

    // Exactly two Contacts: `C%6Fntact` is an extension header.
    let c = contacts(&m);
    let raws: Vec<_> = c.iter().map(|a| a.uri.raw).collect();
    assert_eq!(
        raws,
        vec![
            &b"sip:alias1@host1.example.com"[..],
            b"sip:alias3@host3.example.com"
        ]
    );
    assert_eq!(
        m.header_by_name("C%6Fntact"),
        Some(&b"<sip:alias2@host2.example.com>"[..])
    );
    assert_eq!(m.content_length(), Some(0));
}

#[test]
fn lwsdisp_valid_token_display_name_without_space_before_angle() {
    let buf = dat!("lwsdisp");
    assert_eq!(buf.len(), 255);
    let mut h = slots();
    let m = ok(buf, &mut h);
    m.validate().unwrap();
    assert_eq!(m.headers.len(), 7);
    assert_eq!(m.method(), Some(Method::Options));
    assert_eq!(m.uri().unwrap().raw, b"sip:user@example.com");
    let to = m.to().unwrap();
    assert_eq!((to.uri.raw, to.tag()), (&b"sip:user@example.com"[..], None));

    let from = m.from().unwrap();
    assert!(!from.display_quoted);
    assert_eq!(from.display, Some(&b"caller"[..]));
    assert_eq!(from.uri.raw, b"sip:caller@example.com");
    assert_eq!(from.tag(), Some(&b"323"[..]));

    assert_eq!(m.max_forwards(), Ok(Some(70)));
    assert_eq!(m.call_id(), Ok(&b"lwsdisp.1234abcd@funky.example.com"[..]));
    let cseq = m.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (60, Method::Options));
    let via = m.top_via().unwrap();
    assert_eq!(
        (via.transport, via.host, via.branch()),
        (
            "UDP",
            domain("funky.example.com"),
            Some(&b"z9hG4bKkdjuw"[..])
        )
    );
    assert_eq!(m.content_length(), Some(0));
}

#[test]
fn longreq_valid_very_long_values_and_34_vias_parse_with_field_values() {
    let buf = dat!("longreq");
    assert_eq!(buf.len(), 3515);
    let mut h = slots();
    let m = ok(buf, &mut h);
    m.validate().unwrap();
    assert_eq!(m.headers.len(), 43);
    assert_eq!(m.method(), Some(Method::Invite));
    assert_eq!(m.uri().unwrap().raw, b"sip:user@example.com");

    // Quoted display name directly followed by `<`.
    let to = m.to().unwrap();
    let name = format!("I have a user name of {} proportion", "extreme".repeat(10));
    assert_eq!(to.display_name().unwrap(), name.as_bytes());
    assert_eq!(to.uri.user, Some(&b"user"[..]));
    assert_eq!(to.uri.host, domain("example.com"));
    assert_eq!(to.uri.port, Some(6000));
    let long_value = format!("very{}value", "long".repeat(20));
    let long_name = format!("longparam{}", "name".repeat(25));
    let valueless = format!("very{}ParameterNameWithNoValue", "long".repeat(25));
    assert_eq!(
        uri_params(&to.uri),
        vec![
            pv("unknownparam1", Some(&long_value)),
            pv(&long_name, Some("shortvalue")),
            pv(&valueless, None),
        ]
    );
    assert_eq!(to.tag(), None);

    // `F:` compact From.
    let from = m.from().unwrap();
    let caller = "amazinglylongcallername".repeat(5);
    assert_eq!(from.uri.user, Some(caller.as_bytes()));
    assert_eq!(from.uri.host, domain("example.net"));
    let tag = format!("12{}424", "982".repeat(50));
    assert_eq!(tag.len(), 155);
    assert_eq!(from.tag(), Some(tag.as_bytes()));
    let hp_name = format!("unknownheaderparam{}", "name".repeat(20));
    let hp_value = format!("unknowheaderparam{}", "value".repeat(15));
    assert_eq!(from.params.value(&hp_name), Some(hp_value.as_bytes()));
    let valueless = format!("unknownValueless{}", "paramname".repeat(10));
    let p = from.params.get(&valueless).unwrap();
    assert_eq!(p.value, None);

    let call_id = format!("longreq.one{}longcallid", "really".repeat(20));
    assert_eq!(m.call_id(), Ok(call_id.as_bytes()));
    let cseq = m.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (3882340, Method::Invite));
    let ext = format!("Unknown-{}-Name", "Long".repeat(20));
    assert!(m.header_by_name(&ext).is_some());

    // 34 Vias under 16 spellings of the name.
    let v = vias(&m);
    assert_eq!(v.len(), 34);
    assert_eq!(
        (v[0].transport, v[0].host),
        ("TCP", domain("sip33.example.com"))
    );
    assert!(v[0].params.is_empty() && v[0].branch().is_none());
    for (i, via) in v[..33].iter().enumerate() {
        let host = format!("sip{}.example.com", 33 - i);
        assert_eq!(via.host, domain(&host));
    }
    let last = &v[33];
    assert_eq!(last.host, domain("host.example.com"));
    assert_eq!(last.received(), Some(&b"192.0.2.5"[..]));
    let branch = format!("very{}branchvalue", "long".repeat(50));
    assert_eq!(last.branch(), Some(branch.as_bytes()));

    assert_eq!(m.max_forwards(), Ok(Some(70)));
    let c = contacts(&m);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].uri.user, Some(caller.as_bytes()));
    assert_eq!(c[0].uri.host, domain("host5.example.net"));
    assert_eq!((m.content_length(), m.body.len()), (Some(150), 150));
}

#[test]
fn dblreq_valid_extra_octets_after_the_body_are_ignored() {
    let buf = dat!("dblreq");
    assert_eq!(buf.len(), 750);
    let mut h = slots();
    // D: the message ends at its Content-Length (0); the 450 octets after
    // it are "just spurious noise that must be ignored".
    let m = ok(buf, &mut h);
    m.validate().unwrap();
    assert_eq!(m.headers.len(), 8);
    assert_eq!(m.body, b"");
    assert_eq!(m.raw.len(), 300);
    assert_eq!(buf.len() - m.raw.len(), 450);
    assert!(!m.raw.windows(6).any(|w| w == b"INVITE"));

    assert_eq!(m.method(), Some(Method::Register));
    assert_eq!(m.uri().unwrap().raw, b"sip:example.com");
    let to = m.to().unwrap();
    assert_eq!(
        (to.uri.raw, to.tag()),
        (&b"sip:j.user@example.com"[..], None)
    );
    assert_eq!(m.from().unwrap().tag(), Some(&b"43251j3j324"[..]));
    assert_eq!(m.max_forwards(), Ok(Some(8)));
    // `I:` compact Call-ID in upper case.
    assert_eq!(
        m.call_id(),
        Ok(&b"dblreq.0ha0isndaksdj99sdfafnl3lk233412"[..])
    );
    let c = contacts(&m);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].display, None);
    assert_eq!(c[0].uri.raw, b"sip:j.user@host.example.com");
    let cseq = m.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (8, Method::Register));
    let via = m.top_via().unwrap();
    assert_eq!(
        (via.transport, via.host, via.branch()),
        ("UDP", v4("192.0.2.125"), Some(&b"z9hG4bKkdjuw23492"[..]))
    );

    // S (not what the RFC describes, but the framer must cope): the
    // REGISTER, then a CRLF, then an INVITE framed by its own length.
    assert_eq!(frame_of(buf), Ok(Frame::Message(300)));
    assert_eq!(frame_of(&buf[300..]), Ok(Frame::Pong(2)));
    let rest = &buf[302..];
    let Ok(Frame::Message(n)) = frame_of(rest) else {
        panic!("INVITE not framed")
    };
    let mut h2 = slots();
    let inv = ok(&rest[..n], &mut h2);
    assert_eq!(inv.method(), Some(Method::Invite));
    assert_eq!(inv.body.len(), 150);
}

#[test]
fn semiuri_valid_semicolon_in_request_uri_user_is_not_a_param() {
    let buf = dat!("semiuri");
    assert_eq!(buf.len(), 380);
    let mut h = slots();
    let m = ok(buf, &mut h);
    m.validate().unwrap();
    assert_eq!(m.headers.len(), 8);
    assert_eq!(m.method(), Some(Method::Options));

    let ruri = m.uri().unwrap();
    assert_eq!(ruri.user, Some(&b"user;par=u%40example.net"[..]));
    assert_eq!(decoded(ruri.user), b"user;par=u@example.net");
    assert_eq!(ruri.host, domain("example.com"));
    assert!(ruri.params.is_empty());

    assert_eq!(m.to().unwrap().uri.raw, b"sip:j_user@example.com");
    let from = m.from().unwrap();
    assert_eq!(from.uri.raw, b"sip:caller@example.org");
    assert_eq!(from.tag(), Some(&b"33242"[..]));
    assert_eq!(m.max_forwards(), Ok(Some(3)));
    assert_eq!(m.call_id(), Ok(&b"semiuri.0ha0isndaksdj"[..]));
    let cseq = m.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (8, Method::Options));

    // Six media ranges over three folded lines.
    let accept: Vec<_> = m
        .header_list(HeaderName::Accept)
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        accept,
        vec![
            &b"application/sdp"[..],
            b"application/pkcs7-mime",
            b"multipart/mixed",
            b"multipart/signed",
            b"message/sip",
            b"message/sipfrag"
        ]
    );
    let via = m.top_via().unwrap();
    assert_eq!(
        (via.transport, via.host, via.branch()),
        ("UDP", v4("192.0.2.1"), Some(&b"z9hG4bKkdjuw"[..]))
    );
    assert_eq!(m.content_length(), Some(0));
}

#[test]
fn transports_valid_five_via_transports_including_unknown() {
    let buf = dat!("transports");
    assert_eq!(buf.len(), 503);
    let mut h = slots();
    let m = ok(buf, &mut h);
    m.validate().unwrap();
    assert_eq!(m.headers.len(), 12);
    assert_eq!(m.method(), Some(Method::Options));
    assert_eq!(m.uri().unwrap().raw, b"sip:user@example.com");
    let from = m.from().unwrap();
    assert_eq!(
        (from.uri.raw, from.tag()),
        (&b"sip:caller@example.com"[..], Some(&b"323"[..]))
    );
    assert_eq!(m.to().unwrap().tag(), None);
    assert_eq!(m.max_forwards(), Ok(Some(70)));
    // Two SP after the colon.
    assert_eq!(m.call_id(), Ok(&b"transports.kijh4akdnaqjkwendsasfdj"[..]));
    assert_eq!(m.header(HeaderName::Accept), Some(&b"application/sdp"[..]));
    let cseq = m.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (60, Method::Options));

    let got: Vec<_> = vias(&m)
        .iter()
        .map(|v| (v.transport, v.host, v.branch().unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("UDP", domain("t1.example.com"), &b"z9hG4bKkdjuw"[..]),
            ("SCTP", domain("t2.example.com"), b"z9hG4bKklasjdhf"),
            ("TLS", domain("t3.example.com"), b"z9hG4bK2980unddj"),
            ("UNKNOWN", domain("t4.example.com"), b"z9hG4bKasd0f3en"),
            ("TCP", domain("t5.example.com"), b"z9hG4bK0a9idfnee"),
        ]
    );
    assert!(!m.top_via().unwrap().is_reliable());
    assert_eq!(m.content_length(), Some(0));
}

#[test]
fn mpart01_valid_multipart_binary_body_is_framed_by_content_length() {
    let buf = dat!("mpart01");
    assert_eq!(buf.len(), 1290);
    let mut h = slots();
    let m = ok(buf, &mut h);
    m.validate().unwrap();
    assert_eq!(m.headers.len(), 14);
    assert_eq!(m.method(), Some(Method::Message));
    assert_eq!(m.uri().unwrap().raw, b"sip:kumiko@example.org");

    let via = m.top_via().unwrap();
    assert_eq!((via.host, via.port), (v4("127.0.0.1"), Some(5070)));
    assert_eq!(
        via.branch(),
        Some(&b"z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-"[..])
    );
    assert_eq!(via.rport(), Some(None));
    assert_eq!(m.max_forwards(), Ok(Some(70)));
    let routes: Vec<_> = m.routes().map(Result::unwrap).collect();
    assert_eq!(routes.len(), 1);
    assert_eq!(
        (routes[0].uri.host, routes[0].uri.port),
        (v4("127.0.0.1"), Some(5080))
    );
    assert_eq!(m.header(HeaderName::Identity).unwrap().len(), 172);
    let c = contacts(&m);
    assert_eq!(c[0].uri.raw, b"sip:fluffy@127.0.0.1:5070");
    let to = m.to().unwrap();
    assert_eq!(
        (to.uri.raw, to.tag()),
        (&b"sip:kumiko@example.org"[..], None)
    );
    let from = m.from().unwrap();
    assert_eq!(
        (from.uri.raw, from.tag()),
        (&b"sip:fluffy@example.com"[..], Some(&b"2fb0dcc9"[..]))
    );
    assert_eq!(
        m.call_id(),
        Ok(&b"3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA.."[..])
    );
    let cseq = m.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (1, Method::Message));
    assert_eq!(
        m.header_by_name("content-transfer-encoding"),
        Some(&b"binary"[..])
    );
    assert_eq!(
        m.content_type(),
        Some(&b"multipart/mixed;boundary=7a9cbec02ceef655"[..])
    );
    assert_eq!(
        m.header(HeaderName::Date),
        Some(&b"Sat, 15 Oct 2005 04:44:56 GMT"[..])
    );
    assert_eq!(m.user_agent(), Some(&b"SIPimp.org/0.2.5 (curses)"[..]));

    // The body holds NUL, CR and LF octets: only Content-Length frames it.
    assert_eq!((m.content_length(), m.body.len()), (Some(553), 553));
    assert_eq!(m.body.iter().filter(|&&b| b == 0).count(), 2);
    assert!(m.body.starts_with(b"--7a9cbec02ceef655\r\n"));
    assert_eq!(frame_of(buf), Ok(Frame::Message(1290)));
}

#[test]
fn unreason_valid_utf8_reason_phrase_parses_with_field_values() {
    let buf = dat!("unreason");
    assert_eq!(buf.len(), 526);
    let mut h = slots();
    let m = ok(buf, &mut h);
    m.validate().unwrap();
    assert_eq!(m.headers.len(), 8);
    let reason = "= 2**3 * 5**2 но сто девяносто девять - простое".as_bytes();
    assert_eq!(reason.len(), 74);
    assert_eq!(
        m.start,
        sipis_parser::StartLine::Response { code: 200, reason }
    );
    let via = m.top_via().unwrap();
    assert_eq!(
        (via.transport, via.host, via.branch()),
        ("UDP", v4("192.0.2.198"), Some(&b"z9hG4bK1324923"[..]))
    );
    assert_eq!(m.call_id(), Ok(&b"unreason.1234ksdfak3j2erwedfsASdf"[..]));
    let cseq = m.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (35, Method::Invite));
    let from = m.from().unwrap();
    assert_eq!(
        (from.uri.raw, from.tag()),
        (&b"sip:user@example.com"[..], Some(&b"11141343"[..]))
    );
    let to = m.to().unwrap();
    assert_eq!(
        (to.uri.raw, to.tag()),
        (&b"sip:user@example.edu"[..], Some(&b"2229"[..]))
    );
    assert_eq!(m.content_type(), Some(&b"application/sdp"[..]));
    assert_eq!(contacts(&m)[0].uri.raw, b"sip:user@host198.example.com");
    assert_eq!((m.content_length(), m.body.len()), (Some(154), 154));
}

#[test]
fn noreason_valid_empty_reason_phrase_parses() {
    let buf = dat!("noreason");
    assert_eq!(buf.len(), 274);
    assert!(buf.starts_with(b"SIP/2.0 100 \r\n"));
    let mut h = slots();
    let m = ok(buf, &mut h);
    m.validate().unwrap();
    assert_eq!(m.headers.len(), 7);
    assert_eq!(
        m.start,
        sipis_parser::StartLine::Response {
            code: 100,
            reason: b""
        }
    );
    let via = m.top_via().unwrap();
    assert_eq!(
        (via.host, via.branch()),
        (v4("192.0.2.105"), Some(&b"z9hG4bK2398ndaoe"[..]))
    );
    assert_eq!(m.call_id(), Ok(&b"noreason.asndj203insdf99223ndf"[..]));
    let cseq = m.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (35, Method::Invite));
    assert_eq!(m.from().unwrap().tag(), Some(&b"39ansfi3"[..]));
    assert_eq!(m.to().unwrap().tag(), Some(&b"902jndnke3"[..]));
    assert_eq!(contacts(&m)[0].uri.raw, b"sip:user@host105.example.com");
    assert_eq!(m.content_length(), Some(0));
}

// ---------------------------------------------------------------------
// §3.1.2 Invalid messages
// ---------------------------------------------------------------------

#[test]
fn badinv01_empty_via_list_element_is_rejected_by_validate() {
    let buf = dat!("badinv01");
    let mut h = slots();
    let m = ok(buf, &mut h);
    // `Via: SIP/2.0/UDP 192.0.2.15;;,;,,` — the `;` between the commas is
    // an element that is not a via-parm.
    let v: Vec<_> = m.vias().collect();
    assert_eq!(v.len(), 2);
    let top = v[0].unwrap();
    assert_eq!((top.host, top.branch()), (v4("192.0.2.15"), None));
    assert_eq!(v[1], Err(Error::HeaderValue));
    // "An element receiving this request should respond with a 400".
    assert_eq!(m.validate(), Err(Error::HeaderValue));
    assert_eq!(Error::HeaderValue.status_code(), 400);
    // The headers a 400 needs still read.
    assert_eq!(m.call_id(), Ok(&b"badinv01.0ha0isndaksdjasdf3234nas"[..]));
    assert_eq!((m.content_length(), m.body.len()), (Some(152), 152));
}

#[test]
fn clerr_content_length_beyond_datagram_is_rejected_or_waits_on_a_stream() {
    let buf = dat!("clerr");
    // D: "should respond with a 400 Bad Request error".
    assert_eq!(err(buf), Error::BodyTooShort);
    assert_eq!(Error::BodyTooShort.status_code(), 400);
    // S: "not much the receiving party could do but wait for more data".
    assert_eq!(frame_of(buf), Ok(Frame::Partial));
    // With the missing octets, the framer hands the whole message over.
    let mut padded = buf.to_vec();
    let head = padded.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    padded.resize(head + 9999, b'x');
    assert_eq!(frame_of(&padded), Ok(Frame::Message(head + 9999)));
    let mut h = slots();
    let m = ok(&padded, &mut h);
    assert_eq!(m.call_id(), Ok(&b"clerr.0ha0isndaksdjweiafasdk3"[..]));
    assert_eq!(
        m.top_via().unwrap().branch(),
        Some(&b"z9hG4bK-39234-23523"[..])
    );
}

#[test]
fn ncl_negative_content_length_is_rejected() {
    let buf = dat!("ncl");
    assert_eq!(err(buf), Error::ContentLength);
    assert_eq!(frame_of(buf), Err(Error::ContentLength));
    // The RFC applies the same to a non-numeric value.
    let text = String::from_utf8(buf.to_vec()).unwrap();
    let five = text.replace("Content-Length: -999", "Content-Length: five");
    assert_ne!(five, text);
    assert_eq!(err(five.as_bytes()), Error::ContentLength);
    assert_eq!(frame_of(five.as_bytes()), Err(Error::ContentLength));
}

#[test]
fn scalar02_cseq_2_pow_65_is_rejected_and_other_overflows_are_range_errors() {
    let buf = dat!("scalar02");
    let mut h = slots();
    let m = ok(buf, &mut h);
    assert_eq!(frame_of(buf), Ok(Frame::Message(buf.len())));
    // "should respond with a 400 Bad Request due to the CSeq error".
    assert_eq!(m.cseq(), Err(Error::NumberRange));
    assert_eq!(m.validate(), Err(Error::NumberRange));
    // Range errors of their own, so the layer above can treat a bad
    // Max-Forwards as absent and bad expiries as the default.
    assert_eq!(m.max_forwards(), Err(Error::NumberRange));
    assert_eq!(m.expires(), Err(Error::NumberRange));
    let c: Vec<_> = m.contacts().map(Result::unwrap).collect();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].expires(), Some(Err(Error::NumberRange)));
    assert_eq!(
        m.call_id(),
        Ok(&b"scalar02.23o0pd9vanlq3wnrlnewofjas9ui32"[..])
    );
}

#[test]
fn scalarlg_response_with_huge_cseq_and_retry_after_is_rejected() {
    let buf = dat!("scalarlg");
    let mut h = slots();
    let m = ok(buf, &mut h);
    assert_eq!(m.status(), Some(503));
    // "An element receiving this response will simply discard it."
    assert_eq!(m.cseq(), Err(Error::NumberRange));
    assert_eq!(m.validate(), Err(Error::NumberRange));
    assert_eq!(m.retry_after(), Err(Error::NumberRange));
    // The parser has no Warning accessor: the 4-digit warn-code is left
    // to whoever reads the raw value.
    assert_eq!(
        m.header(HeaderName::Warning),
        Some(&br#"1812 overture "In Progress""#[..])
    );
    let via = m.top_via().unwrap();
    assert_eq!(
        (via.transport, via.host, via.branch(), via.received()),
        (
            "TCP",
            domain("host129.example.com"),
            Some(&b"z9hG4bKzzxdiwo34sw"[..]),
            Some(&b"192.0.2.129"[..])
        )
    );
}

#[test]
fn quotbal_unterminated_quote_in_to_is_rejected_without_running_on() {
    let buf = dat!("quotbal");
    let mut h = slots();
    let m = ok(buf, &mut h);
    // "should return a 400 Bad Request error".
    assert_eq!(m.to(), Err(Error::UnbalancedQuotes));
    assert_eq!(m.validate(), Err(Error::UnbalancedQuotes));
    // The open quote does not swallow the following header lines.
    assert_eq!(m.from().unwrap().tag(), Some(&b"93334"[..]));
    assert_eq!(m.max_forwards(), Ok(Some(10)));
    assert_eq!(m.call_id(), Ok(&b"quotbal.aksdj"[..]));
    assert_eq!(m.top_via().unwrap().port, Some(5050));
    assert_eq!((m.content_length(), m.body.len()), (Some(152), 152));
}

#[test]
fn ltgtruri_request_uri_in_angle_brackets_is_rejected_as_bad_uri() {
    let buf = dat!("ltgtruri");
    let mut h = slots();
    let m = ok(buf, &mut h);
    assert_eq!(m.request_uri(), Some(&b"<sip:user@example.com>"[..]));
    // "reasonable always to reject … with a 400 Bad Request".
    assert_eq!(m.uri(), Err(Error::Uri));
    assert_eq!(m.validate(), Err(Error::Uri));
    assert_eq!(m.top_via().unwrap().branch(), None);
    assert_eq!(m.call_id(), Ok(&b"ltgtruri.1@192.0.2.5"[..]));
}

#[test]
fn lwsruri_white_space_inside_request_uri_is_rejected() {
    let buf = dat!("lwsruri");
    // "should respond with a 400 Bad Request".
    assert_eq!(err(buf), Error::StartLine);
    assert_eq!(Error::StartLine.status_code(), 400);
    assert_eq!(frame_of(buf), Ok(Frame::Message(buf.len())));
}

#[test]
fn lwsstart_double_spaces_in_request_line_are_rejected() {
    let buf = dat!("lwsstart");
    // "it is acceptable to reject this request as malformed": sipis is
    // strict about the request line (RFC 3261 §7.1: single SP).
    assert_eq!(err(buf), Error::StartLine);
    assert_eq!(frame_of(buf), Ok(Frame::Message(buf.len())));
}

#[test]
fn trws_trailing_space_after_version_is_rejected() {
    let buf = dat!("trws");
    assert!(buf.starts_with(b"OPTIONS sip:remote-target@example.com SIP/2.0  \r\n"));
    // Same wording as lwsstart: rejecting is acceptable.
    assert_eq!(err(buf), Error::StartLine);
    assert_eq!(frame_of(buf), Ok(Frame::Message(buf.len())));
}

#[test]
fn escruri_request_uri_headers_are_exposed_so_they_can_be_dropped() {
    let buf = dat!("escruri");
    let mut h = slots();
    let m = ok(buf, &mut h);
    // RFC 4475 §3.1.2.11: "An element could choose to be liberal in what
    // it accepts and ignore the escaped headers. If the element is a
    // proxy, the escaped headers must not appear in the Request-URI of the
    // forwarded request." The SIP-URI grammar allows headers, so the
    // parser accepts the message and exposes them for the layer above.
    m.validate().unwrap();
    let ruri = m.uri().unwrap();
    assert_eq!(ruri.headers, b"Route=%3Csip:example.com%3E");
    let pairs: Vec<_> = ruri.header_pairs().collect();
    assert_eq!(pairs, vec![(&b"Route"[..], &b"%3Csip:example.com%3E"[..])]);
    assert_eq!(&*percent_decode(pairs[0].1).unwrap(), b"<sip:example.com>");
    // No Route header appears from it.
    assert_eq!(m.routes().count(), 0);
    // A proxy drops them when it writes the forwarded Request-URI.
    let mut out = BytesMut::new();
    write_uri(
        &mut out,
        &Uri {
            headers: b"",
            ..ruri
        },
        |_| true,
    );
    assert_eq!(&out[..], b"sip:user@example.com");
}

#[test]
fn baddate_non_gmt_date_still_parses_and_is_left_to_the_reader() {
    let buf = dat!("baddate");
    let mut h = slots();
    let m = ok(buf, &mut h);
    // "acceptable to reject this request as malformed (though an element
    // shouldn't do that unless the contents of the Date header field were
    // actually important to its processing)". sipis never reads Date, so
    // the parser has no Date accessor and the request is processed.
    m.validate().unwrap();
    assert_eq!(
        m.header(HeaderName::Date),
        Some(&b"Fri, 01 Jan 2010 16:00:00 EST"[..])
    );
    assert_eq!(m.cseq().unwrap().seq, 1392934);
}

#[test]
fn regbadct_contact_addr_spec_with_uri_headers_is_rejected() {
    let buf = dat!("regbadct");
    let mut h = slots();
    let m = ok(buf, &mut h);
    // A URI holding '?' must be a name-addr (RFC 3261 §20); "reasonable
    // for an element receiving this request to respond with a 400".
    let c: Vec<_> = m.contacts().collect();
    assert_eq!(c, vec![Err(Error::HeaderValue)]);
    // With the brackets (regescrt) the same URI is a valid Contact.
    assert!(Contact::parse(b"<sip:user@example.com?Route=%3Csip:sip.example.com%3E>").is_ok());
    // The rest of the request is sound.
    m.validate().unwrap();
}

#[test]
fn badaspec_spaces_inside_angle_brackets_are_rejected_as_bad_uri() {
    let buf = dat!("badaspec");
    let mut h = slots();
    let m = ok(buf, &mut h);
    // "Parsers receiving this request must not break. It is reasonable to
    // reject this request with a 400".
    assert_eq!(m.to(), Err(Error::Uri));
    assert_eq!(m.validate(), Err(Error::Uri));
    // The comma inside the quoted From display name does not split it.
    let from = m.from().unwrap();
    assert_eq!(from.display_name().unwrap(), &b"Bell, Alexander"[..]);
    assert_eq!(from.uri.raw, b"sip:a.g.bell@example.com");
    assert_eq!(from.tag(), Some(&b"433423"[..]));
}

#[test]
fn baddn_unquoted_display_names_with_commas_are_rejected() {
    let buf = dat!("baddn");
    // The archive's bytes end `l: 0\r\n` with no empty line: the header
    // section never ends.
    assert!(buf.ends_with(b"l: 0\r\n"));
    assert_eq!(err(buf), Error::Truncated);
    assert_eq!(frame_of(buf), Ok(Frame::Partial));
    // Closed properly, the display names are what is wrong: "reasonable
    // always to reject this kind of error with a 400".
    let mut closed = buf.to_vec();
    closed.extend_from_slice(b"\r\n");
    assert_eq!(frame_of(&closed), Ok(Frame::Message(closed.len())));
    let mut h = slots();
    let m = ok(&closed, &mut h);
    assert_eq!(m.from(), Err(Error::HeaderValue));
    assert_eq!(m.to(), Err(Error::HeaderValue));
    assert_eq!(m.validate(), Err(Error::HeaderValue));
}

#[test]
fn badvers_sip_7_0_is_rejected_as_version_505() {
    let buf = dat!("badvers");
    // "should respond to the request with a 505 Version Not Supported".
    let e = err(buf);
    assert_eq!(e, Error::Version);
    assert_eq!(e.status_code(), 505);
    assert_eq!(e.reason(), "Version Not Supported");
    assert_eq!(frame_of(buf), Ok(Frame::Message(buf.len())));
    // Its Via claims SIP/7.0 too.
    assert_eq!(
        Via::parse(b"SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw"),
        Err(Error::HeaderValue)
    );
}

#[test]
fn mismatch01_cseq_method_differing_from_request_method_is_rejected() {
    let buf = dat!("mismatch01");
    let mut h = slots();
    let m = ok(buf, &mut h);
    assert_eq!(m.method(), Some(Method::Options));
    assert_eq!(m.cseq().unwrap().method, Method::Invite);
    // "Any element receiving this request will respond with a 400".
    assert_eq!(m.validate(), Err(Error::CSeqMethod));
    assert_eq!(Error::CSeqMethod.status_code(), 400);
}

#[test]
fn mismatch02_unknown_method_with_invite_cseq_is_rejected() {
    let buf = dat!("mismatch02");
    let mut h = slots();
    let m = ok(buf, &mut h);
    // The method is unknown, so the layer above may prefer a 501 (the RFC
    // finds 400 acceptable too); validate() names the mismatch.
    assert_eq!(m.method(), Some(Method::Extension("NEWMETHOD")));
    assert_eq!(m.cseq().unwrap().method, Method::Invite);
    assert_eq!(m.validate(), Err(Error::CSeqMethod));
    assert_eq!((m.content_length(), m.body.len()), (Some(138), 138));
}

#[test]
fn bigcode_status_code_wrapping_u32_is_rejected() {
    let buf = dat!("bigcode");
    // 4294967301 = 2^32 + 5: it must not read as 5. "An element receiving
    // this response should simply drop it."
    assert_eq!(err(buf), Error::StatusCode);
    assert_eq!(frame_of(buf), Ok(Frame::Message(buf.len())));
}

// ---------------------------------------------------------------------
// §3.2 Transaction layer
// ---------------------------------------------------------------------

#[test]
fn badbranch_bare_magic_cookie_branch_parses() {
    let buf = dat!("badbranch");
    assert_eq!(buf.len(), 262);
    let mut h = slots();
    let m = ok(buf, &mut h);
    // "A parser must not break when receiving this message."
    m.validate().unwrap();
    assert_eq!(m.headers.len(), 8);
    assert_eq!(m.method(), Some(Method::Options));
    assert_eq!(m.uri().unwrap().raw, b"sip:user@example.com");
    assert_eq!(m.from().unwrap().tag(), Some(&b"33242"[..]));
    assert_eq!(m.to().unwrap().tag(), None);
    assert_eq!(m.max_forwards(), Ok(Some(3)));
    let via = m.top_via().unwrap();
    assert_eq!((via.transport, via.host), ("UDP", v4("192.0.2.1")));
    // Exactly the cookie: the transaction layer must not take it for a
    // unique RFC 3261 branch.
    assert_eq!(via.branch(), Some(BRANCH_MAGIC));
    assert_eq!(
        m.call_id(),
        Ok(&b"badbranch.sadonfo23i420jv0as0derf3j3n"[..])
    );
    let cseq = m.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (8, Method::Options));
}

// ---------------------------------------------------------------------
// §3.3 Application layer
// ---------------------------------------------------------------------

#[test]
fn insuf_missing_call_id_from_to_is_reported_by_validate() {
    let buf = dat!("insuf");
    let mut h = slots();
    let m = ok(buf, &mut h);
    assert_eq!(m.headers.len(), 4);
    // "must not break because of the missing information. Ideally, it
    // will respond with a 400 Bad Request error."
    assert_eq!(m.validate(), Err(Error::MissingHeader(HeaderName::To)));
    assert_eq!(Error::MissingHeader(HeaderName::To).reason(), "Missing To");
    assert_eq!(m.call_id(), Err(Error::MissingHeader(HeaderName::CallId)));
    assert_eq!(m.from(), Err(Error::MissingHeader(HeaderName::From)));
    assert_eq!(m.to(), Err(Error::MissingHeader(HeaderName::To)));
    assert_eq!(m.max_forwards(), Ok(None));
    // What a 400 needs is there.
    let cseq = m.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (193942, Method::Invite));
    let via = m.top_via().unwrap();
    assert_eq!(
        (via.host, via.branch()),
        (v4("192.0.2.95"), Some(&b"z9hG4bKkdj.insuf"[..]))
    );
    assert_eq!((m.content_length(), m.body.len()), (Some(152), 152));
}

#[test]
fn unkscm_unknown_request_uri_scheme_parses_as_opaque() {
    let buf = dat!("unkscm");
    let mut h = slots();
    let m = ok(buf, &mut h);
    // "A parser must accept this as a well-formed SIP request."
    m.validate().unwrap();
    let ruri = m.uri().unwrap();
    assert_eq!(ruri.scheme, Scheme::Other("nobodyKnowsThisScheme"));
    assert_eq!(ruri.user, Some(&b"totallyopaquecontent"[..]));
    assert_eq!(ruri.host, Host::Absent);
    assert_eq!(m.call_id(), Ok(&b"unkscm.nasdfasser0q239nwsdfasdkl34"[..]));
    let cseq = m.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (3923423, Method::Options));
    let via = m.top_via().unwrap();
    assert_eq!(
        (via.transport, via.host, via.branch()),
        (
            "TCP",
            domain("host9.example.com"),
            Some(&b"z9hG4bKkdjuw39234"[..])
        )
    );
}

#[test]
fn novelsc_novel_scheme_request_uri_parses_as_opaque() {
    let buf = dat!("novelsc");
    let mut h = slots();
    let m = ok(buf, &mut h);
    // "A parser must accept this as a well-formed SIP request."
    m.validate().unwrap();
    let ruri = m.uri().unwrap();
    assert_eq!(ruri.scheme, Scheme::Other("soap.beep"));
    assert_eq!(ruri.user, Some(&b"//192.0.2.103:3002"[..]));
    assert_eq!(ruri.host, Host::Absent);
    assert_eq!(m.max_forwards(), Ok(Some(3)));
}

#[test]
fn unksm2_non_sip_uris_in_to_from_contact_parse() {
    let buf = dat!("unksm2");
    let mut h = slots();
    let m = ok(buf, &mut h);
    // "Parsers must not fail when receiving this message."
    m.validate().unwrap();
    let to = m.to().unwrap();
    assert_eq!(to.uri.scheme, Scheme::Other("isbn"));
    assert_eq!(to.uri.user, Some(&b"2983792873"[..]));
    assert_eq!(to.tag(), None);
    let from = m.from().unwrap();
    assert_eq!(from.uri.scheme, Scheme::Other("http"));
    assert_eq!(from.uri.raw, b"http://www.example.com");
    assert_eq!(from.tag(), Some(&b"3234233"[..]));
    let c = contacts(&m);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].uri.scheme, Scheme::Other("name"));
    assert_eq!(c[0].uri.user, Some(&b"John_Smith"[..]));
    assert_eq!(
        m.call_id(),
        Ok(&b"unksm2.daksdj@hyphenated-host.example.com"[..])
    );
}

#[test]
fn bext01_unknown_option_tags_are_listed() {
    let buf = dat!("bext01");
    let mut h = slots();
    let m = ok(buf, &mut h);
    m.validate().unwrap();
    let require: Vec<_> = m.require().map(Result::unwrap).collect();
    assert_eq!(
        require,
        ["nothingSupportsThis", "nothingSupportsThisEither"]
    );
    assert!(m.require().contains("NOTHINGSUPPORTSTHIS"));
    let proxy_require: Vec<_> = m
        .header_list(HeaderName::ProxyRequire)
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        proxy_require,
        [&b"noProxiesSupportThis"[..], b"norDoAnyProxiesSupportThis"]
    );
    let via = m.top_via().unwrap();
    assert_eq!(
        (via.transport, via.host, via.branch()),
        (
            "TLS",
            domain("fold-and-staple.example.com"),
            Some(&b"z9hG4bKkdjuw"[..])
        )
    );
    assert!(via.is_reliable());
}

#[test]
fn invut_unknown_content_type_parses_with_its_body() {
    let buf = dat!("invut");
    let mut h = slots();
    let m = ok(buf, &mut h);
    // "syntactically valid. A parser must not fail".
    m.validate().unwrap();
    assert_eq!(m.content_type(), Some(&b"application/unknownformat"[..]));
    assert_eq!(m.body, b"<audio>\r\n <pcmu port=\"443\"/>\r\n</audio>\r\n");
    assert_eq!(m.content_length(), Some(40));
    assert_eq!(m.from().unwrap().tag(), Some(&b"8392034"[..]));
    assert_eq!(m.call_id(), Ok(&b"invut.0ha0isndaksdjadsfij34n23d"[..]));
}

#[test]
fn regaut01_unknown_authorization_scheme_parses() {
    let buf = dat!("regaut01");
    let mut h = slots();
    let m = ok(buf, &mut h);
    // "The request is well formed. A parser must not fail".
    m.validate().unwrap();
    let auths: Vec<_> = m
        .auth(HeaderName::Authorization)
        .map(Result::unwrap)
        .collect();
    assert_eq!(auths.len(), 1);
    assert_eq!(auths[0].scheme, "NoOneKnowsThisScheme");
    assert!(!auths[0].is_digest());
    assert_eq!(auths[0].param("opaque-data"), Some(&b"here"[..]));
    // `Content-Length:0` without SP.
    assert_eq!(m.content_length(), Some(0));
    assert_eq!(m.method(), Some(Method::Register));
}

#[test]
fn multi01_duplicate_singleton_headers_are_rejected_by_validate() {
    let buf = dat!("multi01");
    let mut h = slots();
    let m = ok(buf, &mut h);
    assert_eq!(m.headers.len(), 15);
    // "An element receiving this request would respond with a 400".
    // validate() is what reports the duplicates; the single-value
    // accessors read the first line.
    assert_eq!(m.validate(), Err(Error::DuplicateHeader(HeaderName::To)));
    for (name, n) in [
        (HeaderName::CSeq, 2),
        (HeaderName::CallId, 2),
        (HeaderName::To, 2),
        (HeaderName::From, 2),
        (HeaderName::MaxForwards, 2),
        (HeaderName::Contact, 2),
    ] {
        assert_eq!(m.header_lines(name).count(), n, "{name:?}");
    }
    // Two Contacts are legitimate.
    assert_eq!(contacts(&m).len(), 2);
    // l: 154 counts the trailing empty line.
    assert_eq!((m.content_length(), m.body.len()), (Some(154), 154));
}

#[test]
fn mcl01_conflicting_content_lengths_are_rejected() {
    let buf = dat!("mcl01");
    // Conflicting values are as bad as an invalid one for framing.
    let e = Error::DuplicateHeader(HeaderName::ContentLength);
    assert_eq!(err(buf), e);
    assert_eq!(frame_of(buf), Err(e));
}

#[test]
fn bcast_broadcast_via_sent_by_parses() {
    let buf = dat!("bcast");
    let mut h = slots();
    let m = ok(buf, &mut h);
    // "The message is well formed; parsers must not fail".
    m.validate().unwrap();
    assert_eq!(m.status(), Some(200));
    let v = vias(&m);
    assert_eq!(v.len(), 2);
    assert_eq!(
        (v[0].host, v[0].branch()),
        (v4("192.0.2.198"), Some(&b"z9hG4bK1324923"[..]))
    );
    assert_eq!(
        (v[1].host, v[1].branch()),
        (v4("255.255.255.255"), Some(&b"z9hG4bK1saber23"[..]))
    );
    assert_eq!(
        m.call_id(),
        Ok(&b"bcast.0384840201234ksdfak3j2erwedfsASdf"[..])
    );
    assert_eq!((m.content_length(), m.body.len()), (Some(154), 154));
}

#[test]
fn zeromf_max_forwards_zero_is_a_value_not_an_error() {
    let buf = dat!("zeromf");
    let mut h = slots();
    let m = ok(buf, &mut h);
    m.validate().unwrap();
    assert_eq!(m.max_forwards(), Ok(Some(0)));
    assert_eq!(m.method(), Some(Method::Options));
    assert_eq!(m.cseq().unwrap().seq, 39234321);
}

#[test]
fn cparam01_addr_spec_contact_param_is_a_header_param() {
    let buf = dat!("cparam01");
    let mut h = slots();
    let m = ok(buf, &mut h);
    m.validate().unwrap();
    let c = contacts(&m);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].uri.raw, b"sip:+19725552222@gw1.example.net");
    assert_eq!(c[0].uri.user, Some(&b"+19725552222"[..]));
    // "must be interpreted as a contact-param and not a url-param".
    assert!(c[0].uri.params.is_empty());
    assert!(c[0].params.has("unknownparam"));
}

#[test]
fn cparam02_name_addr_contact_param_stays_a_uri_param() {
    let buf = dat!("cparam02");
    let mut h = slots();
    let m = ok(buf, &mut h);
    m.validate().unwrap();
    let c = contacts(&m);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].uri.user, Some(&b"+19725552222"[..]));
    assert_eq!(uri_params(&c[0].uri), vec![pv("unknownparam", None)]);
    assert!(c[0].params.is_empty());
}

#[test]
fn regescrt_escaped_route_header_in_contact_uri_is_kept() {
    let buf = dat!("regescrt");
    let mut h = slots();
    let m = ok(buf, &mut h);
    m.validate().unwrap();
    // `M:` compact Contact in upper case.
    let c = contacts(&m);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].uri.headers, b"Route=%3Csip:sip.example.com%3E");
    let pairs: Vec<_> = c[0].uri.header_pairs().collect();
    assert_eq!(pairs.len(), 1);
    assert_eq!(pairs[0].0, b"Route");
    assert_eq!(
        &*percent_decode(pairs[0].1).unwrap(),
        b"<sip:sip.example.com>"
    );
    assert_eq!(m.from().unwrap().tag(), Some(&b"8"[..]));
    // `L:0`.
    assert_eq!(m.content_length(), Some(0));
    // The binding is stored with its escaped header: writing it back
    // keeps it.
    let mut out = BytesMut::new();
    write_uri(&mut out, &c[0].uri, |_| true);
    assert_eq!(
        &out[..],
        b"sip:user@example.com?Route=%3Csip:sip.example.com%3E"
    );
}

#[test]
fn sdp01_unsupported_accept_on_invite_parses() {
    let buf = dat!("sdp01");
    let mut h = slots();
    let m = ok(buf, &mut h);
    // The 406 (or 400) is for the UA to decide; the parser accepts it.
    m.validate().unwrap();
    assert_eq!(
        m.header(HeaderName::Accept),
        Some(&b"text/nobodyKnowsThis"[..])
    );
    assert_eq!(m.content_type(), Some(&b"application/sdp"[..]));
    assert_eq!((m.content_length(), m.body.len()), (Some(150), 150));
    assert_eq!(m.max_forwards(), Ok(Some(5)));
}

// ---------------------------------------------------------------------
// §3.4 Backward compatibility
// ---------------------------------------------------------------------

#[test]
fn inv2543_rfc2543_request_parses_as_datagram_and_is_unframeable_on_stream() {
    let buf = dat!("inv2543");
    assert_eq!(buf.len(), 445);
    let mut h = slots();
    // D: "a legal message per RFC 2543 … that should be accepted by RFC
    // 3261 elements that want to maintain backwards compatibility".
    let m = ok(buf, &mut h);
    m.validate().unwrap();
    assert_eq!(m.headers.len(), 7);
    assert_eq!(m.method(), Some(Method::Invite));
    assert_eq!(m.uri().unwrap().raw, b"sip:UserB@example.com");
    let via = m.top_via().unwrap();
    assert_eq!(
        (via.host, via.branch()),
        (domain("iftgw.example.com"), None)
    );
    let from = m.from().unwrap();
    assert_eq!(from.tag(), None);
    assert_eq!(from.uri.param("user"), Some(&b"phone"[..]));
    let rr: Vec<_> = m.record_routes().map(Result::unwrap).collect();
    assert_eq!(rr.len(), 1);
    assert_eq!(rr[0].uri.param("maddr"), Some(&b"ss1.example.com"[..]));
    // Addr-spec To: under RFC 3261, user=phone is a header param here.
    let to = m.to().unwrap();
    assert_eq!(to.uri.raw, b"sip:+16505552222@ss1.example.net");
    assert!(to.uri.params.is_empty());
    assert_eq!(to.params.value("user"), Some(&b"phone"[..]));
    assert_eq!(m.call_id(), Ok(&b"inv2543.1717@ift.client.example.com"[..]));
    let cseq = m.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (56, Method::Invite));
    assert_eq!(m.content_type(), Some(&b"application/sdp"[..]));
    // No Max-Forwards, no Content-Length: the body is the rest.
    assert_eq!(m.max_forwards(), Ok(None));
    assert_eq!(m.content_length(), None);
    assert_eq!(m.body.len(), 105);
    assert!(m.body.ends_with(b"m=audio 49217 RTP/AVP 0\r\n"));
    // S: Content-Length is mandatory on streams (RFC 3261 §18.3).
    assert_eq!(frame_of(buf), Err(Error::MissingContentLength));
}

// ---------------------------------------------------------------------
// All 49 together
// ---------------------------------------------------------------------

const ALL: [(&str, &[u8]); 49] = [
    ("wsinv", dat!("wsinv")),
    ("intmeth", dat!("intmeth")),
    ("esc01", dat!("esc01")),
    ("escnull", dat!("escnull")),
    ("esc02", dat!("esc02")),
    ("lwsdisp", dat!("lwsdisp")),
    ("longreq", dat!("longreq")),
    ("dblreq", dat!("dblreq")),
    ("semiuri", dat!("semiuri")),
    ("transports", dat!("transports")),
    ("mpart01", dat!("mpart01")),
    ("unreason", dat!("unreason")),
    ("noreason", dat!("noreason")),
    ("badinv01", dat!("badinv01")),
    ("clerr", dat!("clerr")),
    ("ncl", dat!("ncl")),
    ("scalar02", dat!("scalar02")),
    ("scalarlg", dat!("scalarlg")),
    ("quotbal", dat!("quotbal")),
    ("ltgtruri", dat!("ltgtruri")),
    ("lwsruri", dat!("lwsruri")),
    ("lwsstart", dat!("lwsstart")),
    ("trws", dat!("trws")),
    ("escruri", dat!("escruri")),
    ("baddate", dat!("baddate")),
    ("regbadct", dat!("regbadct")),
    ("badaspec", dat!("badaspec")),
    ("baddn", dat!("baddn")),
    ("badvers", dat!("badvers")),
    ("mismatch01", dat!("mismatch01")),
    ("mismatch02", dat!("mismatch02")),
    ("bigcode", dat!("bigcode")),
    ("badbranch", dat!("badbranch")),
    ("insuf", dat!("insuf")),
    ("unkscm", dat!("unkscm")),
    ("novelsc", dat!("novelsc")),
    ("unksm2", dat!("unksm2")),
    ("bext01", dat!("bext01")),
    ("invut", dat!("invut")),
    ("regaut01", dat!("regaut01")),
    ("multi01", dat!("multi01")),
    ("mcl01", dat!("mcl01")),
    ("bcast", dat!("bcast")),
    ("zeromf", dat!("zeromf")),
    ("cparam01", dat!("cparam01")),
    ("cparam02", dat!("cparam02")),
    ("regescrt", dat!("regescrt")),
    ("sdp01", dat!("sdp01")),
    ("inv2543", dat!("inv2543")),
];

#[test]
fn every_prefix_of_every_message_parses_or_fails_without_panicking() {
    for (name, buf) in ALL {
        for end in 0..=buf.len() {
            let part = &buf[..end];
            let mut h = slots();
            if let Ok(m) = parse(part, &mut h) {
                exercise(&m);
                assert!(m.raw.len() <= end, "{name}: raw past the input");
            }
            match frame_of(part) {
                Ok(Frame::Message(n) | Frame::Ping(n) | Frame::Pong(n)) => {
                    assert!(n <= end, "{name}: frame past the input")
                }
                Ok(Frame::Partial) | Err(_) => {}
            }
        }
    }
}

#[test]
fn every_torture_file_is_one_of_the_49() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/torture");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".dat").map(str::to_owned)
        })
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = ALL.iter().map(|(n, _)| (*n).to_owned()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
}
