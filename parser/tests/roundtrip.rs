//! Property tests: what the [`Writer`] writes, the parser reads back.
//!
//! A model of a realistic SIP request (method, Request-URI, Vias, From/To,
//! Call-ID, CSeq, Contacts, Route/Record-Route, Subject, body) is generated,
//! written with [`Writer`] in varied spellings (compact and long header
//! names in any case, folded lines, comma lists or repeated lines), parsed
//! back, and every generated field must read back equal. Responses are
//! built from the parsed request with [`response_to`]. Further properties
//! cover [`write_uri`], [`write_name_addr`] with a `pn-*` filter, [`frame`]
//! on a stream of messages fed in random chunks, and that no input makes
//! any entry point panic.

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use sipis_parser::{
    frame, is_push_param, parse, percent_decode, put_ip, response_to, unquote, write_name_addr,
    write_uri, Auth, CSeq, Contact, Event, FeatureCaps, Frame, Header, HeaderName, Host, Limits,
    Message, Method, NameAddr, Params, Reason, Replaces, Scheme, Uri, Via, Writer, EMPTY_HEADER,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

// ---------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------

#[derive(Debug, Clone)]
enum GHost {
    Domain(String),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl GHost {
    fn text(&self) -> String {
        match self {
            GHost::Domain(d) => d.clone(),
            GHost::V4(a) => a.to_string(),
            GHost::V6(a) => format!("[{a}]"),
        }
    }

    fn host(&self) -> Host<'_> {
        match self {
            GHost::Domain(d) => Host::Domain(d),
            GHost::V4(a) => Host::V4(*a),
            GHost::V6(a) => Host::V6(*a),
        }
    }

    fn ip(&self) -> Option<IpAddr> {
        match self {
            GHost::Domain(_) => None,
            GHost::V4(a) => Some(IpAddr::V4(*a)),
            GHost::V6(a) => Some(IpAddr::V6(*a)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum GScheme {
    Sip,
    Sips,
    Tel,
}

#[derive(Debug, Clone)]
struct GUri {
    scheme: GScheme,
    /// The scheme as written (any case).
    scheme_text: String,
    /// The user (sip/sips) or the number (tel), escapes as written.
    user: Option<String>,
    password: Option<String>,
    host: GHost,
    port: Option<u16>,
    params: Vec<(String, Option<String>)>,
    headers: Vec<(String, String)>,
}

impl GUri {
    fn text(&self) -> String {
        let mut s = format!("{}:", self.scheme_text);
        if self.scheme == GScheme::Tel {
            s += self.user.as_deref().unwrap_or_default();
        } else {
            if let Some(u) = &self.user {
                s += u;
                if let Some(p) = &self.password {
                    s.push(':');
                    s += p;
                }
                s.push('@');
            }
            s += &self.host.text();
            if let Some(p) = self.port {
                s += &format!(":{p}");
            }
        }
        for (n, v) in &self.params {
            s.push(';');
            s += n;
            if let Some(v) = v {
                s.push('=');
                s += v;
            }
        }
        if !self.headers.is_empty() {
            s.push('?');
            let hs: Vec<_> = self
                .headers
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            s += &hs.join("&");
        }
        s
    }

    /// Whether the URI may be written as a bare addr-spec: no ',', ';' or
    /// '?' in it (RFC 3261 §20).
    fn bare_ok(&self) -> bool {
        !self.text().contains([',', ';', '?'])
    }

    fn check(&self, u: &Uri<'_>) {
        let scheme = match self.scheme {
            GScheme::Sip => Scheme::Sip,
            GScheme::Sips => Scheme::Sips,
            GScheme::Tel => Scheme::Tel,
        };
        assert_eq!(u.scheme, scheme);
        assert_eq!(u.user, self.user.as_deref().map(str::as_bytes));
        if self.scheme == GScheme::Tel {
            assert_eq!((u.host, u.port, u.password), (Host::Absent, None, None));
        } else {
            assert_eq!(u.password, self.password.as_deref().map(str::as_bytes));
            assert_eq!(u.host, self.host.host());
            assert_eq!(u.host_raw, self.host.text().as_bytes());
            assert_eq!(u.port, self.port);
        }
        assert_eq!(uri_params(u), self.params);
        let hs: Vec<_> = u
            .header_pairs()
            .map(|(n, v)| (s(n).to_owned(), s(v).to_owned()))
            .collect();
        assert_eq!(hs, self.headers);
        if let Some(user) = u.user_decoded() {
            user.expect("escapes are valid");
        }
    }
}

/// A header parameter (`;name[=value]`, the value a token or quoted).
#[derive(Debug, Clone, PartialEq)]
struct GParam {
    name: String,
    value: Option<String>,
    quoted: bool,
}

impl GParam {
    fn new(name: &str, value: Option<String>) -> GParam {
        GParam {
            name: name.into(),
            value,
            quoted: false,
        }
    }
}

#[derive(Debug, Clone)]
struct GDisplay {
    quoted: bool,
    /// As written between the quotes (quoted-pairs escaped).
    written: String,
    /// What `display_name()` must return.
    value: String,
}

#[derive(Debug, Clone)]
struct GNameAddr {
    display: Option<GDisplay>,
    uri: GUri,
    params: Vec<GParam>,
    /// false: written as a bare addr-spec (only when allowed).
    angle: bool,
    /// 0: no fold; 1: fold before `<`; 2: fold before the params.
    fold: u8,
}

impl GNameAddr {
    fn text(&self) -> String {
        let mut s = String::new();
        if self.angle {
            if let Some(d) = &self.display {
                if d.quoted {
                    s += &format!("\"{}\"", d.written);
                } else {
                    s += &d.written;
                }
                s += if self.fold == 1 { "\r\n " } else { " " };
            }
            s += &format!("<{}>", self.uri.text());
        } else {
            s += &self.uri.text();
        }
        if self.fold == 2 {
            s += "\r\n ";
        }
        for p in &self.params {
            s += &format!(";{}", p.name);
            match (&p.value, p.quoted) {
                (Some(v), true) => s += &format!("=\"{v}\""),
                (Some(v), false) => s += &format!("={v}"),
                (None, _) => {}
            }
        }
        s
    }

    fn tag(&self) -> Option<&str> {
        self.params
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case("tag"))
            .and_then(|p| p.value.as_deref())
    }

    fn check(&self, na: &NameAddr<'_>) {
        self.check_with(na, &self.params);
    }

    fn check_with(&self, na: &NameAddr<'_>, params: &[GParam]) {
        match &self.display {
            None => assert_eq!(na.display, None),
            Some(d) => {
                assert_eq!(na.display_quoted, d.quoted);
                assert_eq!(na.display, Some(d.written.as_bytes()));
                assert_eq!(
                    na.display_name().as_deref(),
                    Some(d.value.as_bytes()),
                    "display name unescaped"
                );
            }
        }
        self.uri.check(&na.uri);
        assert_eq!(header_params(&na.params), params);
    }
}

#[derive(Debug, Clone)]
struct GVia {
    transport: String,
    host: GHost,
    port: Option<u16>,
    branch: String,
    /// `;rport` (`Some(None)`) or `;rport=n`.
    rport: Option<Option<u16>>,
    received: Option<IpAddr>,
    /// `SIP / 2.0 / UDP` with LWS around the slashes.
    spaced: bool,
    /// A fold between sent-protocol and sent-by.
    fold: bool,
    /// Written on the same line as the previous Via, after a comma.
    joined: bool,
}

impl GVia {
    fn sent_by(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host.text()),
            None => self.host.text(),
        }
    }

    fn text(&self) -> String {
        let proto = if self.spaced {
            "SIP / 2.0 / "
        } else {
            "SIP/2.0/"
        };
        let sep = if self.fold { "\r\n " } else { " " };
        let mut s = format!(
            "{proto}{}{sep}{};branch={}",
            self.transport,
            self.sent_by(),
            self.branch
        );
        match self.rport {
            Some(Some(p)) => s += &format!(";rport={p}"),
            Some(None) => s += ";rport",
            None => {}
        }
        if let Some(ip) = self.received {
            s += &format!(";received={}", ip_text(ip));
        }
        s
    }

    fn check(&self, v: &Via<'_>) {
        assert_eq!(v.transport, self.transport);
        assert_eq!(v.host, self.host.host());
        assert_eq!(v.host_raw, self.host.text().as_bytes());
        assert_eq!(v.port, self.port);
        assert_eq!(v.branch(), Some(self.branch.as_bytes()));
        assert_eq!(v.rport(), self.rport);
        let received = self.received.map(ip_text);
        assert_eq!(v.received(), received.as_deref().map(str::as_bytes));
        assert_eq!(v.is_reliable(), !self.transport.eq_ignore_ascii_case("UDP"));
    }
}

#[derive(Debug, Clone)]
struct GContact {
    na: GNameAddr,
    q: Option<u16>,
    expires: Option<u32>,
    instance: Option<String>,
    reg_id: Option<u32>,
    joined: bool,
}

#[derive(Debug, Clone)]
enum GContacts {
    Star,
    List(Vec<GContact>),
}

#[derive(Debug, Clone)]
struct GRoute {
    na: GNameAddr,
    joined: bool,
}

#[derive(Debug, Clone)]
struct GReq {
    method: String,
    ruri: GUri,
    vias: Vec<GVia>,
    max_forwards: Option<u8>,
    from: GNameAddr,
    to: GNameAddr,
    call_id: String,
    cseq: u32,
    /// A fold between the CSeq number and method.
    cseq_fold: bool,
    contacts: Option<GContacts>,
    routes: Vec<GRoute>,
    record_routes: Vec<GRoute>,
    expires: Option<u32>,
    /// Words of a Subject, and where its spaces are folds.
    subject: Option<(Vec<String>, Vec<bool>)>,
    content_type: String,
    body: Vec<u8>,
    /// A wrong Content-Length passed to the writer, which must drop it.
    bogus_length: Option<(&'static str, u32)>,
    /// Spelling of each header name: canonical, compact, lower, upper.
    styles: Vec<u8>,
    /// The order in which the header blocks are written.
    order: Vec<usize>,
}

// ---------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------

fn s(b: &[u8]) -> &str {
    std::str::from_utf8(b).expect("utf-8")
}

fn ip_text(ip: IpAddr) -> String {
    let mut out = BytesMut::new();
    put_ip(&mut out, ip);
    s(&out).to_owned()
}

fn uri_params(u: &Uri<'_>) -> Vec<(String, Option<String>)> {
    u.params
        .iter()
        .map(|p| {
            let p = p.expect("uri param");
            (s(p.name).to_owned(), p.value.map(|v| s(v).to_owned()))
        })
        .collect()
}

fn header_params(p: &Params<'_>) -> Vec<GParam> {
    p.iter()
        .map(|p| {
            let p = p.expect("header param");
            GParam {
                name: s(p.name).to_owned(),
                value: p.value.map(|v| s(v).to_owned()),
                quoted: p.quoted,
            }
        })
        .collect()
}

/// A header name in one of four spellings.
fn spell(h: HeaderName, style: u8) -> String {
    let long = h.as_str();
    match style % 4 {
        1 => h
            .compact()
            .map_or_else(|| long.to_owned(), |c| char::from(c).to_string()),
        2 => long.to_lowercase(),
        3 => long.to_uppercase(),
        _ => long.to_owned(),
    }
}

/// A folded value read as the unfolded one: CRLF + white space is one SP.
fn unfold(v: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'\r' || v[i] == b'\n' {
            while i < v.len() && matches!(v[i], b'\r' | b'\n' | b' ' | b'\t') {
                i += 1;
            }
            out.push(' ');
        } else {
            out.push(char::from(v[i]));
            i += 1;
        }
    }
    out
}

fn qvalue_text(q: u16) -> String {
    if q == 1000 {
        return "1.0".into();
    }
    let t = format!("0.{q:03}");
    let t = t.trim_end_matches('0');
    if t == "0." {
        "0".into()
    } else {
        t.into()
    }
}

/// Joins elements into header lines: an element with `joined` goes on the
/// previous element's line after a comma.
fn lines(elems: impl IntoIterator<Item = (String, bool)>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (text, joined) in elems {
        match out.last_mut() {
            Some(last) if joined => {
                last.push_str(", ");
                last.push_str(&text);
            }
            _ => out.push(text),
        }
    }
    out
}

// ---------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------

const DOMAIN: &str = "[a-z]([a-z0-9-]{0,6}[a-z0-9])?(\\.[a-z]([a-z0-9_-]{0,6}[a-z0-9])?){0,2}";

fn escaped() -> impl Strategy<Value = String> {
    "%[0-9A-Fa-f]{2}"
}

/// 1..n pieces of `plain` text or `%HH` escapes.
fn escaped_text(plain: &'static str, n: usize) -> impl Strategy<Value = String> {
    vec(prop_oneof![3 => plain, 1 => escaped()], 1..=n).prop_map(|v| v.concat())
}

fn host() -> impl Strategy<Value = GHost> {
    prop_oneof![
        4 => DOMAIN.prop_map(GHost::Domain),
        2 => any::<[u8; 4]>().prop_map(|a| GHost::V4(a.into())),
        1 => any::<[u16; 8]>().prop_map(|a| GHost::V6(a.into())),
        1 => select(vec!["::1", "2001:db8::5", "fe80::1:2", "::ffff:192.0.2.7", "::"])
            .prop_map(|a| GHost::V6(a.parse().unwrap())),
    ]
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        3 => any::<[u8; 4]>().prop_map(|a| IpAddr::V4(a.into())),
        1 => any::<[u16; 8]>().prop_map(|a| IpAddr::V6(a.into())),
        1 => Just(IpAddr::V6("2001:db8::10".parse().unwrap())),
    ]
}

fn uri_param() -> impl Strategy<Value = (String, Option<String>)> {
    let name = prop_oneof![
        3 => select(vec![
            "transport", "lr", "maddr", "user", "ob", "gr",
            "pn-provider", "pn-prid", "pn-param", "pn-purr", "PN-Prid",
        ])
        .prop_map(str::to_owned),
        2 => escaped_text("[a-zA-Z0-9._~!*'()\\[\\]/:&+$-]{1,5}", 3),
    ];
    let value = escaped_text("[a-zA-Z0-9._~!*'()\\[\\]/:&+$-]{1,6}", 3);
    (name, option::weighted(0.7, value))
}

fn uri_header() -> impl Strategy<Value = (String, String)> {
    (
        "[A-Za-z][A-Za-z0-9-]{0,6}",
        escaped_text("[a-zA-Z0-9._~!*'()\\[\\]/?:+$-]{1,5}", 3),
    )
}

fn sip_uri() -> impl Strategy<Value = GUri> {
    (
        select(vec![
            (GScheme::Sip, "sip"),
            (GScheme::Sip, "sip"),
            (GScheme::Sip, "SIP"),
            (GScheme::Sips, "sips"),
            (GScheme::Sips, "Sips"),
        ]),
        option::weighted(0.8, escaped_text("[a-zA-Z0-9._~!*'()&=+$,;?/-]{1,5}", 4)),
        option::weighted(0.1, "[a-zA-Z0-9._~!*'()&=+$,-]{0,6}"),
        host(),
        option::weighted(0.4, any::<u16>()),
        vec(uri_param(), 0..4),
        prop_oneof![4 => Just(vec![]), 1 => vec(uri_header(), 1..3)],
    )
        .prop_map(
            |((scheme, text), user, password, host, port, params, headers)| GUri {
                scheme,
                scheme_text: text.into(),
                password: user.as_ref().and(password),
                user,
                host,
                port,
                params,
                headers,
            },
        )
}

fn tel_uri() -> impl Strategy<Value = GUri> {
    let param = prop_oneof![
        ("phone-context", DOMAIN).prop_map(|(n, v)| (n.to_owned(), Some(v))),
        ("ext", "[0-9]{1,4}").prop_map(|(n, v)| (n.to_owned(), Some(v))),
        uri_param(),
    ];
    (
        select(vec!["tel", "TEL"]),
        "\\+?[0-9]([0-9.-]{0,10}[0-9])?",
        vec(param, 0..3),
    )
        .prop_map(|(text, number, params)| GUri {
            scheme: GScheme::Tel,
            scheme_text: text.into(),
            user: Some(number),
            password: None,
            host: GHost::Domain(String::new()),
            port: None,
            params,
            headers: vec![],
        })
}

fn any_uri() -> impl Strategy<Value = GUri> {
    prop_oneof![5 => sip_uri(), 1 => tel_uri()]
}

fn quoted_display() -> impl Strategy<Value = GDisplay> {
    let ch = prop_oneof![
        12 => (0x20u8..0x7f).prop_map(char::from),
        2 => Just('"'),
        2 => Just('\\'),
        1 => select(vec!['é', '大', 'ж', '\u{1F600}']),
    ];
    vec((ch, any::<bool>()), 0..14).prop_map(|cs| {
        let mut written = String::new();
        let mut value = String::new();
        for (c, escape) in cs {
            // `"` and `\` must be quoted-pairs; other ASCII may be.
            if c == '"' || c == '\\' || (escape && c.is_ascii() && c != ' ') {
                written.push('\\');
            }
            written.push(c);
            value.push(c);
        }
        GDisplay {
            quoted: true,
            written,
            value,
        }
    })
}

fn token_display() -> impl Strategy<Value = GDisplay> {
    vec("[a-zA-Z0-9.!%*_+`'~-]{1,8}", 1..4).prop_map(|words| {
        let d = words.join(" ");
        GDisplay {
            quoted: false,
            written: d.clone(),
            value: d,
        }
    })
}

fn display() -> impl Strategy<Value = Option<GDisplay>> {
    prop_oneof![
        2 => Just(None),
        2 => quoted_display().prop_map(Some),
        1 => token_display().prop_map(Some),
    ]
}

/// A generic header param whose name collides with none that the tests
/// read by name (tag, q, expires, ...).
fn header_param() -> impl Strategy<Value = GParam> {
    (
        "x[a-zA-Z0-9.!%*_+`'~-]{0,6}",
        prop_oneof![
            1 => Just(None),
            2 => "[a-zA-Z0-9.!%*_+`'~-]{1,8}".prop_map(|v| Some((v, false))),
            1 => "[a-zA-Z0-9 ,;:=<>@/.\\[\\]-]{0,12}".prop_map(|v| Some((v, true))),
        ],
    )
        .prop_map(|(name, v)| GParam {
            name,
            quoted: v.as_ref().is_some_and(|v| v.1),
            value: v.map(|v| v.0),
        })
}

fn tag() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9.!%*_+`'~-]{1,16}"
}

/// From/To: a URI, maybe a display name, maybe a tag, other params.
fn name_addr(tag_p: f64) -> impl Strategy<Value = GNameAddr> {
    (
        display(),
        any_uri(),
        option::weighted(tag_p, tag()),
        vec(header_param(), 0..3),
        any::<bool>(),
        0u8..3,
    )
        .prop_map(|(display, uri, tag, extra, bare, fold)| {
            let mut params: Vec<GParam> = tag
                .map(|t| GParam::new("tag", Some(t)))
                .into_iter()
                .collect();
            params.extend(extra);
            finish_name_addr(display, uri, params, bare, fold)
        })
}

fn finish_name_addr(
    display: Option<GDisplay>,
    uri: GUri,
    params: Vec<GParam>,
    bare: bool,
    fold: u8,
) -> GNameAddr {
    let angle = !(bare && display.is_none() && uri.bare_ok());
    let fold = if fold == 1 && (display.is_none() || !angle) {
        0
    } else {
        fold
    };
    GNameAddr {
        display,
        uri,
        params,
        angle,
        fold,
    }
}

fn uuid() -> impl Strategy<Value = String> {
    any::<u128>().prop_map(|n| {
        let h = format!("{n:032x}");
        format!(
            "urn:uuid:{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    })
}

fn contact() -> impl Strategy<Value = GContact> {
    (
        display(),
        sip_uri(),
        option::of(0u16..=1000),
        option::of(any::<u32>()),
        option::of(uuid()),
        option::of(1u32..100),
        vec(header_param(), 0..2),
        (any::<bool>(), 0u8..3, any::<bool>()),
    )
        .prop_map(
            |(display, uri, q, expires, instance, reg_id, extra, (bare, fold, joined))| {
                let mut params = Vec::new();
                if let Some(q) = q {
                    params.push(GParam::new("q", Some(qvalue_text(q))));
                }
                if let Some(e) = expires {
                    params.push(GParam::new("expires", Some(e.to_string())));
                }
                if let Some(i) = &instance {
                    params.push(GParam {
                        name: "+sip.instance".into(),
                        value: Some(format!("<{i}>")),
                        quoted: true,
                    });
                }
                if let Some(r) = reg_id {
                    params.push(GParam::new("reg-id", Some(r.to_string())));
                }
                params.extend(extra);
                GContact {
                    na: finish_name_addr(display, uri, params, bare, fold),
                    q,
                    expires,
                    instance,
                    reg_id,
                    joined,
                }
            },
        )
}

fn contacts() -> impl Strategy<Value = Option<GContacts>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(GContacts::Star)),
        4 => vec(contact(), 1..4).prop_map(|c| Some(GContacts::List(c))),
    ]
}

fn route() -> impl Strategy<Value = GRoute> {
    (display(), sip_uri(), any::<bool>()).prop_map(|(display, mut uri, joined)| {
        uri.params.insert(0, ("lr".into(), None));
        GRoute {
            na: finish_name_addr(display, uri, vec![], false, 0),
            joined,
        }
    })
}

fn via() -> impl Strategy<Value = GVia> {
    (
        prop_oneof![
            4 => select(vec!["UDP", "TCP", "TLS", "SCTP", "WS", "WSS", "udp"]).prop_map(str::to_owned),
            1 => "[A-Z][A-Z0-9-]{1,6}",
        ],
        host(),
        option::weighted(0.5, any::<u16>()),
        "z9hG4bK[a-zA-Z0-9.!%*_+`'~-]{1,16}",
        prop_oneof![Just(None), Just(Some(None)), any::<u16>().prop_map(|p| Some(Some(p)))],
        option::weighted(0.3, ip()),
        (any::<bool>(), prop::bool::weighted(0.2), any::<bool>()),
    )
        .prop_map(
            |(transport, host, port, branch, rport, received, (spaced, fold, joined))| GVia {
                transport,
                host,
                port,
                branch,
                rport,
                received,
                spaced,
                fold,
                joined,
            },
        )
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(vec![
            "INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "PRACK",
            "UPDATE", "INFO", "MESSAGE", "NOTIFY", "SUBSCRIBE", "REFER", "PUBLISH",
        ])
        .prop_map(str::to_owned),
        1 => "[A-Za-z][A-Za-z0-9.!%*_+`'~-]{0,12}",
    ]
}

fn body() -> impl Strategy<Value = (String, Vec<u8>)> {
    prop_oneof![
        1 => Just((String::new(), vec![])),
        2 => (
            prop_oneof![
                Just("application/sdp".to_owned()),
                "[a-z]{1,8}/[a-z0-9.+-]{1,12}",
            ],
            vec(any::<u8>(), 1..300),
        ),
    ]
}

/// Number of header blocks `GReq::write` knows (the `order` permutation).
const BLOCKS: usize = 12;

fn request() -> impl Strategy<Value = GReq> {
    let head = (
        method(),
        any_uri(),
        vec(via(), 1..=3),
        option::weighted(0.8, any::<u8>()),
        name_addr(0.9),
        name_addr(0.3),
        "[a-zA-Z0-9.!%*_+`'~()<>:/\\\\\"\\[\\]?{}-]{1,24}(@[a-z0-9.-]{1,16})?",
        (0u32..1 << 31, any::<bool>()),
    );
    let tail = (
        contacts(),
        vec(route(), 0..3),
        vec(route(), 0..3),
        option::weighted(0.3, any::<u32>()),
        option::weighted(
            0.4,
            vec("[a-zA-Z0-9!?.,:()]{1,8}", 1..5).prop_flat_map(|w| {
                let n = w.len();
                (Just(w), vec(any::<bool>(), n))
            }),
        ),
        body(),
        option::weighted(
            0.3,
            (
                select(vec!["Content-Length", "l", "content-length"]),
                any::<u32>(),
            ),
        ),
        vec(any::<u8>(), 16),
        Just((0..BLOCKS).collect::<Vec<_>>()).prop_shuffle(),
    );
    (head, tail).prop_map(
        |(
            (method, ruri, vias, max_forwards, from, to, call_id, (cseq, cseq_fold)),
            (
                contacts,
                routes,
                record_routes,
                expires,
                subject,
                (content_type, body),
                bogus_length,
                styles,
                order,
            ),
        )| GReq {
            method,
            ruri,
            vias,
            max_forwards,
            from,
            to,
            call_id,
            cseq,
            cseq_fold,
            contacts,
            routes,
            record_routes,
            expires,
            subject,
            content_type,
            body,
            bogus_length,
            styles,
            order,
        },
    )
}

// ---------------------------------------------------------------------
// Writing and checking
// ---------------------------------------------------------------------

impl GReq {
    fn method(&self) -> Method<'_> {
        Method::parse(self.method.as_bytes()).expect("token")
    }

    fn subject_text(&self) -> Option<(String, String)> {
        self.subject.as_ref().map(|(words, folds)| {
            let mut written = words[0].clone();
            for (w, &fold) in words[1..].iter().zip(folds) {
                written += if fold { "\r\n " } else { " " };
                written += w;
            }
            (written, words.join(" "))
        })
    }

    fn contact_lines(&self) -> Vec<String> {
        match &self.contacts {
            None => vec![],
            Some(GContacts::Star) => vec!["*".into()],
            Some(GContacts::List(cs)) => lines(cs.iter().map(|c| (c.na.text(), c.joined))),
        }
    }

    fn write(&self) -> BytesMut {
        let mut out = BytesMut::new();
        let uri = self.ruri.text();
        let mut w = Writer::request(&mut out, self.method(), uri.as_bytes());
        let style = |i: usize| self.styles[i % self.styles.len()];
        for &block in &self.order {
            match block {
                0 => {
                    let via_lines = lines(self.vias.iter().map(|v| (v.text(), v.joined)));
                    for (i, line) in via_lines.iter().enumerate() {
                        let single = self.vias.iter().filter(|v| !v.joined).nth(i);
                        match single {
                            // The plain shape goes through Writer::via.
                            Some(v)
                                if style(i) == 0
                                    && !v.spaced
                                    && !v.fold
                                    && v.received.is_none()
                                    && !matches!(v.rport, Some(Some(_)))
                                    && line == &v.text() =>
                            {
                                w.via(
                                    &v.transport,
                                    &v.sent_by(),
                                    v.branch.as_bytes(),
                                    v.rport.is_some(),
                                );
                            }
                            _ => {
                                w.header(&spell(HeaderName::Via, style(i)), line.as_bytes());
                            }
                        }
                    }
                }
                1 => {
                    if let Some(mf) = self.max_forwards {
                        w.header_u32(&spell(HeaderName::MaxForwards, style(1)), mf.into());
                    }
                }
                2 => {
                    w.header(
                        &spell(HeaderName::From, style(2)),
                        self.from.text().as_bytes(),
                    );
                }
                3 => {
                    w.header(&spell(HeaderName::To, style(3)), self.to.text().as_bytes());
                }
                4 => {
                    w.header(
                        &spell(HeaderName::CallId, style(4)),
                        self.call_id.as_bytes(),
                    );
                }
                5 => {
                    let sep = if self.cseq_fold { "\r\n " } else { " " };
                    let v = format!("{}{sep}{}", self.cseq, self.method);
                    w.header(&spell(HeaderName::CSeq, style(5)), v.as_bytes());
                }
                6 => {
                    for (i, line) in self.contact_lines().iter().enumerate() {
                        w.header(&spell(HeaderName::Contact, style(6 + i)), line.as_bytes());
                    }
                }
                7 => {
                    for line in lines(self.routes.iter().map(|r| (r.na.text(), r.joined))) {
                        w.header(&spell(HeaderName::Route, style(7)), line.as_bytes());
                    }
                }
                8 => {
                    for line in lines(self.record_routes.iter().map(|r| (r.na.text(), r.joined))) {
                        w.header(&spell(HeaderName::RecordRoute, style(8)), line.as_bytes());
                    }
                }
                9 => {
                    if let Some(e) = self.expires {
                        w.header_u32(&spell(HeaderName::Expires, style(9)), e);
                    }
                    if let Some((written, _)) = self.subject_text() {
                        w.header(&spell(HeaderName::Subject, style(10)), written.as_bytes());
                    }
                }
                10 => {
                    if !self.body.is_empty() {
                        w.header(
                            &spell(HeaderName::ContentType, style(11)),
                            self.content_type.as_bytes(),
                        );
                    }
                }
                _ => {
                    if let Some((name, n)) = self.bogus_length {
                        w.header(name, n.to_string().as_bytes());
                        w.header_u32(name, n);
                    }
                }
            }
        }
        w.finish(&self.body);
        out
    }

    /// Every generated field reads back equal.
    fn check(&self, m: &Message<'_, '_>) {
        m.validate().expect("validate");
        assert_eq!(m.method().map(|m| m.as_str()), Some(self.method.as_str()));
        assert_eq!(m.request_uri(), Some(self.ruri.text().as_bytes()));
        self.ruri.check(&m.uri().expect("Request-URI"));

        let vias: Vec<_> = m.vias().map(|v| v.expect("via")).collect();
        assert_eq!(vias.len(), self.vias.len());
        for (g, v) in self.vias.iter().zip(&vias) {
            g.check(v);
        }
        self.vias[0].check(&m.top_via().expect("top via"));

        assert_eq!(m.max_forwards(), Ok(self.max_forwards));
        let from = m.from().expect("from");
        self.from.check(&from);
        assert_eq!(from.tag(), self.from.tag().map(str::as_bytes));
        let to = m.to().expect("to");
        self.to.check(&to);
        assert_eq!(to.tag(), self.to.tag().map(str::as_bytes));
        assert_eq!(m.call_id(), Ok(self.call_id.as_bytes()));
        let cseq = m.cseq().expect("cseq");
        assert_eq!((cseq.seq, cseq.method), (self.cseq, self.method()));

        check_contacts(m, self.contacts.as_ref());
        let routes: Vec<_> = m.routes().map(|r| r.expect("route")).collect();
        assert_eq!(routes.len(), self.routes.len());
        for (g, r) in self.routes.iter().zip(&routes) {
            g.na.check(r);
            assert!(r.uri.params.has("lr"));
        }
        let rrs: Vec<_> = m
            .record_routes()
            .map(|r| r.expect("record-route"))
            .collect();
        assert_eq!(rrs.len(), self.record_routes.len());
        for (g, r) in self.record_routes.iter().zip(&rrs) {
            g.na.check(r);
        }
        assert_eq!(m.expires(), Ok(self.expires));
        match self.subject_text() {
            None => assert_eq!(m.header(HeaderName::Subject), None),
            Some((written, plain)) => {
                let v = m.header(HeaderName::Subject).expect("subject");
                assert_eq!(v, written.as_bytes());
                assert_eq!(unfold(v), plain);
            }
        }
        if self.body.is_empty() {
            assert_eq!(m.content_type(), None);
        } else {
            assert_eq!(m.content_type(), Some(self.content_type.as_bytes()));
        }
        check_body(m, &self.body);
    }
}

fn check_body(m: &Message<'_, '_>, body: &[u8]) {
    assert_eq!(m.content_length(), Some(body.len() as u32));
    assert_eq!(m.body, body);
    assert_eq!(m.header_lines(HeaderName::ContentLength).count(), 1);
    assert!(m.raw.ends_with(body));
}

fn check_contacts(m: &Message<'_, '_>, g: Option<&GContacts>) {
    let got: Vec<_> = m.contacts().map(|c| c.expect("contact")).collect();
    match g {
        None => assert!(got.is_empty()),
        Some(GContacts::Star) => assert_eq!(got, vec![Contact::Star]),
        Some(GContacts::List(cs)) => {
            assert_eq!(got.len(), cs.len());
            for (g, c) in cs.iter().zip(&got) {
                g.na.check(c.addr().expect("not *"));
                assert_eq!(c.q(), g.q.map(Ok));
                assert_eq!(c.expires(), g.expires.map(Ok));
                assert_eq!(c.instance(), g.instance.as_deref().map(str::as_bytes));
                assert_eq!(c.reg_id(), g.reg_id.map(Ok));
                let push =
                    g.na.uri
                        .params
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case("pn-provider"));
                match push {
                    Some((_, Some(provider))) => {
                        assert_eq!(c.push().map(|p| p.provider), Some(provider.as_bytes()))
                    }
                    _ => assert_eq!(c.push(), None),
                }
            }
        }
    }
}

fn with_parsed<R>(buf: &[u8], f: impl FnOnce(&Message<'_, '_>) -> R) -> R {
    let mut h = [EMPTY_HEADER; 64];
    let m = match parse(buf, &mut h) {
        Ok(m) => m,
        Err(e) => panic!(
            "{e:?} parsing:\n{}",
            String::from_utf8_lossy(buf).replace("\r\n", "⏎\n")
        ),
    };
    f(&m)
}

#[derive(Debug, Clone)]
struct GResp {
    code: u16,
    reason: String,
    to_tag: String,
    source: SocketAddr,
    /// Answer from the top Via's own address when it is an IP.
    source_is_via_host: bool,
    contacts: Option<GContacts>,
    content_type: String,
    body: Vec<u8>,
}

fn response() -> impl Strategy<Value = GResp> {
    (
        prop_oneof![Just(100u16), Just(180), Just(200), Just(401), 100u16..700],
        "[A-Za-z0-9 .é大-]{0,20}",
        "[a-zA-Z0-9.!%*_+`'~-]{1,12}",
        (ip(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port)),
        any::<bool>(),
        contacts(),
        body(),
    )
        .prop_map(
            |(code, reason, to_tag, source, source_is_via_host, contacts, (content_type, body))| {
                GResp {
                    code,
                    reason,
                    to_tag,
                    source,
                    source_is_via_host,
                    contacts,
                    content_type,
                    body,
                }
            },
        )
}

impl GResp {
    fn source(&self, req: &GReq) -> SocketAddr {
        match req.vias[0].host.ip() {
            Some(ip) if self.source_is_via_host => SocketAddr::new(ip, self.source.port()),
            _ => self.source,
        }
    }

    fn write(&self, req: &Message<'_, '_>, greq: &GReq) -> BytesMut {
        let mut out = BytesMut::new();
        let mut w = response_to(
            &mut out,
            req,
            self.code,
            &self.reason,
            self.to_tag.as_bytes(),
            self.source(greq),
        )
        .expect("response_to");
        for line in greq_contact_lines(&self.contacts) {
            w.header("Contact", line.as_bytes());
        }
        w.copy_named(req, HeaderName::RecordRoute);
        if !self.body.is_empty() {
            w.header("Content-Type", self.content_type.as_bytes());
        }
        w.finish(&self.body);
        out
    }

    fn check(&self, m: &Message<'_, '_>, req: &GReq) {
        m.validate().expect("validate");
        assert_eq!(
            m.start,
            sipis_parser::StartLine::Response {
                code: self.code,
                reason: self.reason.as_bytes()
            }
        );
        // Top Via: received and rport from the source (RFC 3261 §18.2.1,
        // RFC 3581 §4), the other Vias as they were.
        let source = self.source(req);
        let top = &req.vias[0];
        let wants_rport = top.rport.is_some();
        let received =
            (wants_rport || top.host.ip() != Some(source.ip())).then(|| ip_text(source.ip()));
        let vias: Vec<_> = m.vias().map(|v| v.expect("via")).collect();
        assert_eq!(vias.len(), req.vias.len());
        let mut want = top.clone();
        want.rport = wants_rport.then_some(Some(source.port()));
        want.received = None;
        assert_eq!(vias[0].transport, want.transport);
        assert_eq!((vias[0].host, vias[0].port), (want.host.host(), want.port));
        assert_eq!(vias[0].branch(), Some(want.branch.as_bytes()));
        assert_eq!(vias[0].rport(), want.rport);
        assert_eq!(vias[0].received(), received.as_deref().map(str::as_bytes));
        for (g, v) in req.vias[1..].iter().zip(&vias[1..]) {
            g.check(v);
        }
        // From copied; To copied with our tag unless it had one (never on
        // a 100).
        req.from.check(&m.from().expect("from"));
        let to = m.to().expect("to");
        let mut to_params = req.to.params.clone();
        if req.to.tag().is_none() && self.code != 100 {
            to_params.push(GParam::new("tag", Some(self.to_tag.clone())));
        }
        req.to.check_with(&to, &to_params);
        let want_tag = match req.to.tag() {
            Some(t) => Some(t),
            None if self.code != 100 => Some(self.to_tag.as_str()),
            None => None,
        };
        assert_eq!(to.tag(), want_tag.map(str::as_bytes));
        assert_eq!(m.call_id(), Ok(req.call_id.as_bytes()));
        let cseq = m.cseq().expect("cseq");
        assert_eq!((cseq.seq, cseq.method), (req.cseq, req.method()));
        check_contacts(m, self.contacts.as_ref());
        let rrs: Vec<_> = m
            .record_routes()
            .map(|r| r.expect("record-route"))
            .collect();
        assert_eq!(rrs.len(), req.record_routes.len());
        for (g, r) in req.record_routes.iter().zip(&rrs) {
            g.na.check(r);
        }
        assert_eq!(m.routes().count(), 0);
        check_body(m, &self.body);
    }
}

fn greq_contact_lines(c: &Option<GContacts>) -> Vec<String> {
    match c {
        None => vec![],
        Some(GContacts::Star) => vec!["*".into()],
        Some(GContacts::List(cs)) => lines(cs.iter().map(|c| (c.na.text(), c.joined))),
    }
}

/// Calls every entry point on a parsed message: accessors, typed header
/// parsers, writer functions. Nothing may panic.
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
    let _ = (
        m.is_request(),
        m.status(),
        m.header_by_name("X-Sipis-Push-Status"),
    );
    for v in m.vias().flatten() {
        let _ = (v.branch(), v.received(), v.rport(), v.ttl(), v.maddr());
    }
    if let Ok(u) = m.uri() {
        let _ = (u.user_decoded(), u.transport(), u.header_pairs().count());
        write_uri(&mut BytesMut::new(), &u, |p| !is_push_param(p.name));
    }
    for c in m.contacts().flatten() {
        let _ = (c.q(), c.expires(), c.instance(), c.reg_id(), c.push());
        if let Some(a) = c.addr() {
            write_name_addr(&mut BytesMut::new(), a, |p| !is_push_param(p.name));
        }
    }
    for na in [m.from(), m.to()].into_iter().flatten() {
        let _ = (na.display_name(), na.tag());
        write_name_addr(&mut BytesMut::new(), &na, |_| true);
    }
    for r in m.routes().chain(m.record_routes()).flatten() {
        for p in r.params.iter().flatten() {
            let _ = p.value_unescaped();
        }
    }
    for r in m.reasons().flatten() {
        let _ = (r.cause(), r.text());
    }
    let _ = m.require().count() + m.supported().count() + m.allow().count();
    let _ = m.supported().contains("outbound");
    let _ = m.feature_caps().count();
    for name in [
        HeaderName::Authorization,
        HeaderName::ProxyAuthorization,
        HeaderName::WwwAuthenticate,
        HeaderName::ProxyAuthenticate,
    ] {
        for a in m.auth(name).flatten() {
            let _ = (a.params().count(), a.param("realm"), a.is_digest());
        }
    }
    let mut out = BytesMut::new();
    if let Ok(w) = response_to(
        &mut out,
        m,
        200,
        "OK",
        b"t",
        "192.0.2.1:5060".parse().unwrap(),
    ) {
        w.finish(m.body);
    }
    let mut out = BytesMut::new();
    let mut w = Writer::response(&mut out, 200, "OK");
    let _ = w.vias_popped(m);
    let _ = w.vias_received(m, "[2001:db8::1]:5060".parse().unwrap());
    w.copy_headers(m, |h| h.kind != HeaderName::Via);
}

/// Every public parser of a piece of text, on arbitrary bytes.
fn poke(buf: &[u8]) {
    let mut h = [EMPTY_HEADER; 32];
    if let Ok(m) = parse(buf, &mut h) {
        assert!(m.raw.len() <= buf.len());
        if let Some(n) = m.content_length() {
            assert_eq!(m.body.len(), n as usize);
        }
        exercise(&m);
    }
    let limits = Limits {
        max_head: 256,
        max_message: 512,
    };
    for l in [Limits::default(), limits] {
        match frame(buf, &l) {
            Ok(Frame::Message(n) | Frame::Ping(n) | Frame::Pong(n)) => assert!(n <= buf.len()),
            Ok(Frame::Partial) | Err(_) => {}
        }
    }
    let _ = Uri::parse(buf).map(|u| u.header_pairs().count());
    let _ = NameAddr::parse(buf).map(|n| n.display_name());
    let _ = Via::parse(buf).map(|v| v.rport());
    let _ = Contact::parse(buf).map(|c| c.q());
    let _ = Auth::parse(buf).map(|a| a.params().count());
    let _ = Reason::parse(buf).map(|r| r.text());
    let _ = CSeq::parse(buf);
    let _ = Event::parse(buf).map(|e| e.id());
    let _ = Replaces::parse(buf).map(|r| r.early_only());
    let _ = FeatureCaps::parse(buf);
    let _ = Method::parse(buf);
    let _ = Host::parse(buf);
    let _ = HeaderName::from_bytes(buf);
    let _ = Params::new(buf).iter().count();
    let _ = percent_decode(buf);
    let _ = unquote(buf);
}

// ---------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------

/// `n` cases, unless `PROPTEST_CASES` asks for another number (deeper runs
/// in CI or by hand).
fn cases(n: u32) -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = n;
    }
    c
}

proptest! {
    #![proptest_config(cases(192))]

    #[test]
    fn written_request_parses_to_the_same_fields(req in request()) {
        let out = req.write();
        with_parsed(&out, |m| {
            req.check(m);
            assert_eq!(m.raw, &out[..]);
        });
    }

    #[test]
    fn response_to_a_written_request_parses_to_the_same_fields(req in request(), resp in response()) {
        let out = req.write();
        with_parsed(&out, |m| {
            let rout = resp.write(m, &req);
            with_parsed(&rout, |r| resp.check(r, &req));
        });
    }
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn write_uri_of_a_parsed_uri_reparses_to_the_same_uri(g in any_uri()) {
        let text = g.text();
        let u = Uri::parse(text.as_bytes()).expect("generated URI parses");
        g.check(&u);
        let mut out = BytesMut::new();
        write_uri(&mut out, &u, |_| true);
        // Only the scheme's case changes.
        let colon = text.find(':').unwrap();
        let want = format!("{}{}", text[..colon].to_lowercase(), &text[colon..]);
        prop_assert_eq!(s(&out), want.as_str());
        let again = Uri::parse(&out).expect("written URI parses");
        g.check(&again);
        prop_assert_eq!(again.params, u.params);
    }

    #[test]
    fn write_name_addr_with_a_pn_filter_drops_exactly_the_pn_params(
        mut g in name_addr(0.5),
        pn in vec((select(vec!["pn-provider", "pn-prid", "pn-param", "pn-purr", "PN-PRID", "pn-x"]),
                   "[a-zA-Z0-9._:-]{1,12}"), 0..4),
        at in vec(any::<Index>(), 4),
    ) {
        // Mix pn-* params in among the others.
        for ((name, value), at) in pn.into_iter().zip(at) {
            let i = at.index(g.uri.params.len() + 1);
            g.uri.params.insert(i, (name.to_owned(), Some(value)));
        }
        let g = finish_name_addr(g.display.clone(), g.uri.clone(), g.params.clone(), !g.angle, g.fold);
        let text = g.text();
        let na = NameAddr::parse(text.as_bytes()).expect("generated name-addr parses");
        g.check(&na);
        let mut out = BytesMut::new();
        write_name_addr(&mut out, &na, |p| !is_push_param(p.name));
        let back = NameAddr::parse(&out).expect("written name-addr parses");
        let mut want = g.clone();
        want.uri.params.retain(|(n, _)| !is_push_param(n.as_bytes()));
        want.check(&back);
        let dropped = uri_params(&na.uri).len() - uri_params(&back.uri).len();
        let pn_count = g.uri.params.iter().filter(|(n, _)| is_push_param(n.as_bytes())).count();
        prop_assert_eq!(dropped, pn_count);
        // Without a filter nothing is lost.
        let mut all = BytesMut::new();
        write_name_addr(&mut all, &na, |_| true);
        g.check(&NameAddr::parse(&all).expect("written name-addr parses"));
    }
}

const KEEPALIVES: [&str; 5] = ["", "", "\r\n", "\r\n\r\n", "\r\n\r\n\r\n"];

/// Frames a whole stream: the messages, in order, and where framing
/// stopped.
fn frame_all(stream: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let mut msgs = Vec::new();
    let mut pos = 0;
    loop {
        match frame(&stream[pos..], &Limits::default()).expect("frameable") {
            Frame::Partial => return (msgs, pos),
            Frame::Message(n) => {
                msgs.push(stream[pos..pos + n].to_vec());
                pos += n;
            }
            Frame::Ping(n) | Frame::Pong(n) => pos += n,
        }
    }
}

proptest! {
    #![proptest_config(cases(64))]

    #[test]
    fn frame_splits_a_stream_into_its_messages_in_any_chunking(
        reqs in vec(request(), 1..5),
        gaps in vec(select(KEEPALIVES.to_vec()), 6),
        chunks in vec(1usize..300, 1..20),
    ) {
        let written: Vec<Vec<u8>> = reqs.iter().map(|r| r.write().to_vec()).collect();
        let mut stream = Vec::new();
        for (i, w) in written.iter().enumerate() {
            stream.extend_from_slice(gaps[i].as_bytes());
            stream.extend_from_slice(w);
        }
        stream.extend_from_slice(gaps[5].as_bytes());

        // The whole stream at once.
        let (msgs, pos) = frame_all(&stream);
        prop_assert_eq!(&msgs, &written);
        prop_assert_eq!(pos, stream.len());

        // Fed in chunks: accumulate, frame until Partial, consume.
        let mut buf: Vec<u8> = Vec::new();
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut fed = 0;
        let mut k = 0;
        while fed < stream.len() {
            let n = chunks[k % chunks.len()].min(stream.len() - fed);
            k += 1;
            buf.extend_from_slice(&stream[fed..fed + n]);
            fed += n;
            let (mut ms, used) = frame_all(&buf);
            got.append(&mut ms);
            buf.drain(..used);
        }
        prop_assert!(buf.is_empty(), "left over: {:?}", String::from_utf8_lossy(&buf));
        prop_assert_eq!(&got, &written);
        for (w, r) in got.iter().zip(&reqs) {
            with_parsed(w, |m| r.check(m));
        }
    }
}

/// SIP-shaped fragments, to reach deeper than random bytes do.
const FRAGMENTS: &[&str] = &[
    "INVITE ",
    "SIP/2.0",
    " ",
    "  ",
    "\r\n",
    "\n",
    "\r",
    "\r\n ",
    "\r\n\r\n",
    "sip:",
    "sips:",
    "tel:",
    "@",
    ":",
    ";",
    ",",
    "=",
    "?",
    "&",
    "<",
    ">",
    "\"",
    "\\",
    "%",
    "%4",
    "%41",
    "[",
    "]",
    "::1",
    "192.0.2.1",
    "example.com",
    "5060",
    "99999999999",
    "-1",
    "0",
    "Via: ",
    "v: ",
    "SIP/2.0/UDP ",
    "branch=z9hG4bK",
    "rport",
    "received=",
    "From: ",
    "To: ",
    "f:",
    "t:",
    "Call-ID: ",
    "CSeq: ",
    "1 INVITE",
    "Contact: ",
    "m: ",
    "*",
    "q=0.5",
    "q=1.5",
    "expires=",
    "Content-Length: ",
    "l: ",
    "Max-Forwards: ",
    "Route: ",
    "Record-Route: ",
    "tag=",
    "+sip.instance=\"<urn:uuid:x>\"",
    "pn-provider=apns",
    "Authorization: Digest ",
    "realm=\"x\"",
    "Reason: SIP;cause=200",
    "Event: reg;id=1",
    "Replaces: a;to-tag=b",
    "Feature-Caps: *;+sip.pns=\"apns\"",
    "Require: ",
    "Supported: ",
    "Retry-After: ",
    "\0",
    "\u{7f}",
    "é",
    "SIP/2.0 200 OK",
    "SIP/7.0",
    "Expires: ",
];

fn mutate(mut buf: Vec<u8>, ops: &[(u8, Index, u8)]) -> Vec<u8> {
    for &(op, at, byte) in ops {
        if buf.is_empty() {
            buf.push(byte);
            continue;
        }
        let i = at.index(buf.len());
        match op % 5 {
            0 => buf[i] = byte,
            1 => buf[i] ^= 1 << (byte % 8),
            2 => {
                buf.remove(i);
            }
            3 => buf.insert(i, byte),
            _ => buf.truncate(i),
        }
    }
    buf
}

proptest! {
    #![proptest_config(cases(2048))]

    #[test]
    fn arbitrary_bytes_never_panic(buf in vec(any::<u8>(), 0..400)) {
        poke(&buf);
    }

    #[test]
    fn sip_shaped_fragment_soup_never_panics(parts in vec(select(FRAGMENTS.to_vec()), 0..60)) {
        let mut buf = b"OPTIONS sip:a@b SIP/2.0\r\n".to_vec();
        buf.extend(parts.concat().bytes());
        poke(&buf);
        poke(&buf[25..]);
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn mutated_valid_messages_never_panic(
        req in request(),
        ops in vec((any::<u8>(), any::<Index>(), any::<u8>()), 1..8),
    ) {
        let buf = mutate(req.write().to_vec(), &ops);
        poke(&buf);
        // And every header value on its own through the typed parsers.
        let mut h = [EMPTY_HEADER; 64];
        if let Ok(m) = parse(&buf, &mut h) {
            for Header { value, .. } in m.headers {
                poke(value);
            }
        }
    }
}

// ---------------------------------------------------------------------
// Regressions found while writing these tests
// ---------------------------------------------------------------------

#[test]
fn a_header_line_starting_with_a_colon_does_not_panic_the_framer() {
    let buf = b"OPTIONS sip:a@b SIP/2.0\r\n: 5\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(
        frame(buf, &Limits::default()),
        Ok(Frame::Message(buf.len()))
    );
    assert_eq!(HeaderName::from_bytes(b""), HeaderName::Other);
}

#[test]
fn parentheses_are_uri_param_characters() {
    // paramchar includes unreserved, whose mark has "(" and ")".
    let u = Uri::parse(b"sip:a@b;x=(y);(z)").unwrap();
    assert_eq!(u.param("x"), Some(&b"(y)"[..]));
    assert!(u.params.has("(z)"));
}

#[test]
fn addr_spec_contact_with_quoted_instance_param() {
    let c = Contact::parse(
        br#"sip:a@192.0.2.1:5060;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1"#,
    )
    .unwrap();
    let a = c.addr().unwrap();
    assert_eq!(a.uri.raw, b"sip:a@192.0.2.1:5060");
    assert_eq!(
        c.instance(),
        Some(&b"urn:uuid:00000000-0000-1000-8000-000A95A0E128"[..])
    );
    assert_eq!(c.reg_id(), Some(Ok(1)));
    assert_eq!(
        NameAddr::parse(b"sip:a@b>;x=1"),
        Err(sipis_parser::Error::UnbalancedAngles)
    );
}

#[test]
fn question_mark_in_the_user_part_is_not_a_headers_delimiter() {
    let u = Uri::parse(b"sip:a?b;c@example.com;lr?h=v").unwrap();
    assert_eq!(u.user, Some(&b"a?b;c"[..]));
    assert_eq!(u.host, Host::Domain("example.com"));
    assert!(u.params.has("lr"));
    assert_eq!(u.headers, b"h=v");
}
