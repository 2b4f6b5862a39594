//! Building messages into a `BytesMut` without re-parsing: start line,
//! headers copied from a parsed message with changes, body, and a
//! Content-Length that is always right.

use crate::header_name::HeaderName;
use crate::lex;
use crate::{Header, Message, Method, NameAddr, Param, Result, Uri, Via};
use bytes::{BufMut, BytesMut};
use std::net::{IpAddr, SocketAddr};

/// Writes one message. Start with [`Writer::request`],
/// [`Writer::response`] or [`response_to`], add headers, and end with
/// [`Writer::finish`], which writes `Content-Length` from the body it is
/// given. Content-Length headers passed to the other methods are dropped,
/// so the length can never disagree with the body.
///
/// ```
/// use bytes::BytesMut;
/// use sipis_parser::{parse, Method, Writer, EMPTY_HEADER};
///
/// let mut out = BytesMut::new();
/// let mut w = Writer::request(&mut out, Method::Options, b"sip:carol@chicago.example.com");
/// w.via("UDP", "192.0.2.9:5060", b"z9hG4bKhjhs8ass877", true)
///     .header("Max-Forwards", b"70")
///     .header("Call-ID", b"a84b4c76e66710")
///     .header("Content-Length", b"999"); // ignored: finish() writes the real one
/// w.finish(b"");
///
/// let mut h = [EMPTY_HEADER; 8];
/// let msg = parse(&out, &mut h).unwrap();
/// assert_eq!(msg.content_length(), Some(0));
/// assert_eq!(msg.top_via().unwrap().rport(), Some(None));
/// ```
pub struct Writer<'b> {
    out: &'b mut BytesMut,
}

impl<'b> Writer<'b> {
    /// Starts a request: `METHOD uri SIP/2.0`.
    pub fn request(out: &'b mut BytesMut, method: Method<'_>, uri: &[u8]) -> Writer<'b> {
        out.reserve(512);
        out.put_slice(method.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(uri);
        out.put_slice(b" SIP/2.0\r\n");
        Writer { out }
    }

    /// Starts a response: `SIP/2.0 code reason`.
    pub fn response(out: &'b mut BytesMut, code: u16, reason: &str) -> Writer<'b> {
        out.reserve(512);
        out.put_slice(b"SIP/2.0 ");
        put_u32(out, u32::from(code));
        out.put_u8(b' ');
        out.put_slice(reason.as_bytes());
        out.put_slice(b"\r\n");
        Writer { out }
    }

    /// Adds `name: value`.
    pub fn header(&mut self, name: &str, value: &[u8]) -> &mut Self {
        if !is_content_length(name.as_bytes()) {
            self.line(name.as_bytes(), value);
        }
        self
    }

    /// Adds `name: n`.
    pub fn header_u32(&mut self, name: &str, n: u32) -> &mut Self {
        self.header_with(name, |o| put_u32(o, n))
    }

    /// Adds a header whose value `f` writes straight into the buffer.
    pub fn header_with(&mut self, name: &str, f: impl FnOnce(&mut BytesMut)) -> &mut Self {
        if is_content_length(name.as_bytes()) {
            return self;
        }
        self.out.put_slice(name.as_bytes());
        self.out.put_slice(b": ");
        f(self.out);
        self.out.put_slice(b"\r\n");
        self
    }

    /// Copies a parsed header line (name as it was written, value as is).
    pub fn copy(&mut self, h: &Header<'_>) -> &mut Self {
        if h.kind != HeaderName::ContentLength {
            self.line(h.name, h.value);
        }
        self
    }

    /// Copies every header line of `msg` for which `keep` says so.
    pub fn copy_headers(
        &mut self,
        msg: &Message<'_, '_>,
        mut keep: impl FnMut(&Header<'_>) -> bool,
    ) -> &mut Self {
        for h in msg.headers {
            if keep(h) {
                self.copy(h);
            }
        }
        self
    }

    /// Copies every line of one known header.
    pub fn copy_named(&mut self, msg: &Message<'_, '_>, name: HeaderName) -> &mut Self {
        self.copy_headers(msg, |h| h.kind == name)
    }

    /// Pushes a Via of our own: `Via: SIP/2.0/<transport> <sent_by>;branch=<branch>[;rport]`.
    /// `branch` must start with the RFC 3261 magic cookie `z9hG4bK`.
    pub fn via(&mut self, transport: &str, sent_by: &str, branch: &[u8], rport: bool) -> &mut Self {
        debug_assert!(branch.starts_with(crate::BRANCH_MAGIC));
        self.out.put_slice(b"Via: SIP/2.0/");
        self.out.put_slice(transport.as_bytes());
        self.out.put_u8(b' ');
        self.out.put_slice(sent_by.as_bytes());
        self.out.put_slice(b";branch=");
        self.out.put_slice(branch);
        if rport {
            self.out.put_slice(b";rport");
        }
        self.out.put_slice(b"\r\n");
        self
    }

    /// Copies all Via elements but the topmost one (a proxy or B2BUA
    /// popping its own Via from a response, RFC 3261 §16.7 step 3). A
    /// multi-element line loses only its first element.
    pub fn vias_popped(&mut self, msg: &Message<'_, '_>) -> Result<&mut Self> {
        let mut first = true;
        for h in msg.headers.iter().filter(|h| h.kind == HeaderName::Via) {
            if !first {
                self.copy(h);
                continue;
            }
            first = false;
            let mut elems = lex::CommaSplit::new(h.value);
            elems.next().transpose()?;
            let rest: Vec<&[u8]> = elems.collect::<Result<_>>()?;
            if !rest.is_empty() {
                self.header_with("Via", |o| {
                    for (i, e) in rest.iter().enumerate() {
                        if i > 0 {
                            o.put_slice(b", ");
                        }
                        o.put_slice(e);
                    }
                });
            }
        }
        Ok(self)
    }

    /// Copies all Via lines, the topmost element with `received` and `rport`
    /// set from the address the request came from (RFC 3261 §18.2.1, RFC
    /// 3581 §4): what a server puts in its responses.
    pub fn vias_received(
        &mut self,
        msg: &Message<'_, '_>,
        source: SocketAddr,
    ) -> Result<&mut Self> {
        let mut first = true;
        for h in msg.headers.iter().filter(|h| h.kind == HeaderName::Via) {
            if !first {
                self.copy(h);
                continue;
            }
            first = false;
            let mut elems = lex::CommaSplit::new(h.value);
            let top_raw = elems.next().ok_or(crate::Error::HeaderValue)??;
            let top = Via::parse(top_raw)?;
            let rest: Vec<&[u8]> = elems.collect::<Result<_>>()?;
            self.header_with("Via", |o| {
                o.put_slice(b"SIP/2.0/");
                o.put_slice(top.transport.as_bytes());
                o.put_u8(b' ');
                o.put_slice(top.host_raw);
                if let Some(p) = top.port {
                    o.put_u8(b':');
                    put_u32(o, u32::from(p));
                }
                let mut wants_rport = false;
                for p in top.params.iter().map_while(|p| p.ok()) {
                    if lex::eq_ic(p.name, b"rport") {
                        wants_rport = true;
                    } else if !lex::eq_ic(p.name, b"received") {
                        put_param(o, &p);
                    }
                }
                let same_host = match (top.host, source.ip()) {
                    (crate::Host::V4(a), IpAddr::V4(b)) => a == b,
                    (crate::Host::V6(a), IpAddr::V6(b)) => a == b,
                    _ => false,
                };
                if wants_rport || !same_host {
                    o.put_slice(b";received=");
                    put_ip(o, source.ip());
                }
                if wants_rport {
                    o.put_slice(b";rport=");
                    put_u32(o, u32::from(source.port()));
                }
                for e in &rest {
                    o.put_slice(b", ");
                    o.put_slice(e);
                }
            });
        }
        Ok(self)
    }

    /// Writes a From/To-style header from a parsed value, adding
    /// `;tag=<tag>` when it has none (a UAS tagging To, RFC 3261 §8.2.6.2).
    pub fn with_tag(&mut self, name: &str, value: &[u8], tag: &[u8]) -> Result<&mut Self> {
        let has_tag = NameAddr::parse(value)?.tag().is_some();
        Ok(self.header_with(name, |o| {
            o.put_slice(value);
            if !has_tag {
                o.put_slice(b";tag=");
                o.put_slice(tag);
            }
        }))
    }

    /// Ends the message: `Content-Length`, the blank line, the body.
    /// The caller adds `Content-Type` before when there is a body.
    pub fn finish(self, body: &[u8]) {
        self.out.put_slice(b"Content-Length: ");
        put_u32(self.out, body.len() as u32);
        self.out.put_slice(b"\r\n\r\n");
        self.out.put_slice(body);
    }

    fn line(&mut self, name: &[u8], value: &[u8]) {
        self.out.reserve(name.len() + value.len() + 4);
        self.out.put_slice(name);
        self.out.put_slice(b": ");
        self.out.put_slice(value);
        self.out.put_slice(b"\r\n");
    }
}

/// Starts a response to `req` per RFC 3261 §8.2.6: the Via lines (top one
/// with `received`/`rport` from `source`), From, To (with `to_tag` added
/// unless it has a tag, and never on a 100), Call-ID and CSeq copied.
///
/// ```
/// use bytes::BytesMut;
/// use sipis_parser::{parse, response_to, EMPTY_HEADER};
///
/// let req = b"REGISTER sip:sipis.example SIP/2.0\r\n\
///     Via: SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bKreg1;rport\r\n\
///     From: <sip:alice@sipis.example>;tag=abc\r\n\
///     To: <sip:alice@sipis.example>\r\n\
///     Call-ID: reg-1\r\nCSeq: 7 REGISTER\r\nContent-Length: 0\r\n\r\n";
/// let mut h = [EMPTY_HEADER; 16];
/// let req = parse(req, &mut h).unwrap();
/// let mut out = BytesMut::new();
/// response_to(&mut out, &req, 200, "OK", b"srv1", "203.0.113.5:40000".parse().unwrap())
///     .unwrap()
///     .finish(b"");
/// let text = std::str::from_utf8(&out).unwrap();
/// assert!(text.starts_with("SIP/2.0 200 OK\r\n"));
/// assert!(text.contains("Via: SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bKreg1;received=203.0.113.5;rport=40000\r\n"));
/// assert!(text.contains("To: <sip:alice@sipis.example>;tag=srv1\r\n"));
/// ```
pub fn response_to<'b>(
    out: &'b mut BytesMut,
    req: &Message<'_, '_>,
    code: u16,
    reason: &str,
    to_tag: &[u8],
    source: SocketAddr,
) -> Result<Writer<'b>> {
    let mut w = Writer::response(out, code, reason);
    w.vias_received(req, source)?;
    w.copy_named(req, HeaderName::From);
    let to = req
        .header(HeaderName::To)
        .ok_or(crate::Error::MissingHeader(HeaderName::To))?;
    if code == 100 {
        w.header("To", to);
    } else {
        w.with_tag("To", to, to_tag)?;
    }
    w.copy_named(req, HeaderName::CallId);
    w.copy_named(req, HeaderName::CSeq);
    Ok(w)
}

/// Writes a URI, keeping only the parameters `keep` accepts — e.g. with
/// `|p| !is_push_param(p.name)` to strip RFC 8599 `pn-*` parameters from
/// what is forwarded.
pub fn write_uri(out: &mut BytesMut, uri: &Uri<'_>, mut keep: impl FnMut(&Param<'_>) -> bool) {
    out.put_slice(uri.scheme.as_str().as_bytes());
    out.put_u8(b':');
    match uri.scheme {
        crate::Scheme::Sip | crate::Scheme::Sips => {
            if let Some(u) = uri.user {
                out.put_slice(u);
                if let Some(p) = uri.password {
                    out.put_u8(b':');
                    out.put_slice(p);
                }
                out.put_u8(b'@');
            }
            out.put_slice(uri.host_raw);
            if let Some(p) = uri.port {
                out.put_u8(b':');
                put_u32(out, u32::from(p));
            }
        }
        _ => out.put_slice(uri.user.unwrap_or_default()),
    }
    for p in uri.params.iter().map_while(|p| p.ok()) {
        if keep(&p) {
            put_param(out, &p);
        }
    }
    if !uri.headers.is_empty() {
        out.put_u8(b'?');
        out.put_slice(uri.headers);
    }
}

/// Writes a name-addr (`"display" <uri>;params`) with the URI's
/// parameters filtered by `keep_uri_param`; header params are kept.
pub fn write_name_addr(
    out: &mut BytesMut,
    na: &NameAddr<'_>,
    keep_uri_param: impl FnMut(&Param<'_>) -> bool,
) {
    write_name_addr_with(out, na, keep_uri_param, |_| true)
}

/// [`write_name_addr`] that also filters the header parameters, e.g. to
/// drop a `tag` a B2BUA replaces with its own leg's.
pub fn write_name_addr_with(
    out: &mut BytesMut,
    na: &NameAddr<'_>,
    keep_uri_param: impl FnMut(&Param<'_>) -> bool,
    mut keep_param: impl FnMut(&Param<'_>) -> bool,
) {
    if let Some(d) = na.display {
        if na.display_quoted {
            out.put_u8(b'"');
            out.put_slice(d);
            out.put_slice(b"\" ");
        } else {
            out.put_slice(d);
            out.put_u8(b' ');
        }
    }
    out.put_u8(b'<');
    write_uri(out, &na.uri, keep_uri_param);
    out.put_u8(b'>');
    for p in na.params.iter().map_while(|p| p.ok()) {
        if keep_param(&p) {
            put_param(out, &p);
        }
    }
}

/// Writes `;name[=value]`, re-quoting a value that was quoted.
pub fn put_param(out: &mut BytesMut, p: &Param<'_>) {
    out.put_u8(b';');
    out.put_slice(p.name);
    if let Some(v) = p.value {
        out.put_u8(b'=');
        if p.quoted {
            out.put_u8(b'"');
            out.put_slice(v);
            out.put_u8(b'"');
        } else {
            out.put_slice(v);
        }
    }
}

/// Appends a decimal number without going through `fmt`.
pub fn put_u32(out: &mut BytesMut, n: u32) {
    let mut b = itoa::Buffer::new();
    out.put_slice(b.format(n).as_bytes());
}

/// Appends an IP address as it goes in a Via `received` (IPv6 bracketed,
/// RFC 5118 §4.5).
pub fn put_ip(out: &mut BytesMut, ip: IpAddr) {
    use std::fmt::Write;
    // BytesMut's fmt::Write never fails.
    let _ = match ip {
        IpAddr::V4(a) => write!(out, "{a}"),
        IpAddr::V6(a) => write!(out, "[{a}]"),
    };
}

fn is_content_length(name: &[u8]) -> bool {
    HeaderName::from_bytes(name) == HeaderName::ContentLength
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{is_push_param, parse, EMPTY_HEADER};

    #[test]
    fn popping_the_top_via_of_a_multi_element_line() {
        let buf = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP me:5060;branch=z9hG4bKa, SIP/2.0/UDP up:5060;branch=z9hG4bKb\r\nv: SIP/2.0/TCP far;branch=z9hG4bKc\r\nContent-Length: 0\r\n\r\n";
        let mut h = [EMPTY_HEADER; 8];
        let m = parse(buf, &mut h).unwrap();
        let mut out = BytesMut::new();
        let mut w = Writer::response(&mut out, 200, "OK");
        w.vias_popped(&m).unwrap();
        w.finish(b"");
        let mut h2 = [EMPTY_HEADER; 8];
        let m2 = parse(&out, &mut h2).unwrap();
        let branches: Vec<_> = m2
            .vias()
            .map(|v| v.unwrap().branch().unwrap().to_vec())
            .collect();
        assert_eq!(branches, vec![b"z9hG4bKb".to_vec(), b"z9hG4bKc".to_vec()]);
    }

    #[test]
    fn push_params_are_stripped_from_a_forwarded_contact() {
        let na = NameAddr::parse(br#""Al" <sip:al@10.1.1.1:5060;transport=udp;pn-provider=apns;pn-prid=abc;pn-param=T.com.x.voip>;expires=60"#).unwrap();
        let mut out = BytesMut::new();
        write_name_addr(&mut out, &na, |p| !is_push_param(p.name));
        assert_eq!(
            &out[..],
            br#""Al" <sip:al@10.1.1.1:5060;transport=udp>;expires=60"#
        );
    }

    #[test]
    fn received_is_added_when_host_differs_and_rport_filled() {
        let buf = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;received=1.1.1.1\r\nContent-Length: 0\r\n\r\n";
        let mut h = [EMPTY_HEADER; 4];
        let m = parse(buf, &mut h).unwrap();
        let mut out = BytesMut::new();
        Writer::response(&mut out, 200, "OK")
            .vias_received(&m, "[2001:db8::1]:7000".parse().unwrap())
            .unwrap();
        assert!(out.ends_with(
            b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;received=[2001:db8::1]\r\n"
        ));
        let mut out = BytesMut::new();
        Writer::response(&mut out, 200, "OK")
            .vias_received(&m, "192.0.2.1:5060".parse().unwrap())
            .unwrap();
        assert!(out.ends_with(b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n"));
    }
}
