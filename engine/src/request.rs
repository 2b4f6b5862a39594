//! Writing what sipis sends: the skeleton every request it originates
//! starts with, and the header rules of a signalling-only B2BUA (what is
//! copied from one leg to the other, what is rewritten per leg).

use crate::output::Flow;
use bytes::{BufMut, Bytes, BytesMut};
use sipis_parser::{self as parser, is_push_param, Header, HeaderName, Message, Method, Writer};
use std::net::SocketAddr;

/// The transport token of a Via for `flow` (RFC 3261 §18.2.1, §20.42).
pub(crate) fn via_transport(flow: Flow) -> &'static str {
    flow.transport()
}

/// Starts a request sipis originates on a leg (RFC 3261 §8.1.1): the
/// Request-URI, its own Via (`sent_by`, a fresh `branch`, `rport`), the
/// route set as Route headers in order (§12.2.1.1), Max-Forwards. The
/// caller writes From, To, Call-ID and CSeq next (a leg's `Dialog` does),
/// then the rest.
pub(crate) fn begin_request<'b>(
    buf: &'b mut BytesMut,
    method: Method<'_>,
    target: &[u8],
    flow: Flow,
    sent_by: &str,
    branch: &str,
    routes: &[Bytes],
) -> Writer<'b> {
    buf.clear();
    let mut w = Writer::request(buf, method, target);
    w.via(via_transport(flow), sent_by, branch.as_bytes(), true);
    for r in routes {
        w.header("Route", r);
    }
    w.header("Max-Forwards", b"70");
    w
}

/// Headers that belong to one hop or one leg and are never copied from
/// one leg to the other.
pub(crate) fn end_to_end(h: &Header<'_>) -> bool {
    !matches!(
        h.kind,
        HeaderName::Via
            | HeaderName::From
            | HeaderName::To
            | HeaderName::CallId
            | HeaderName::CSeq
            | HeaderName::Contact
            | HeaderName::RecordRoute
            | HeaderName::Route
            | HeaderName::MaxForwards
            | HeaderName::ContentLength
            | HeaderName::Authorization
            | HeaderName::ProxyAuthorization
            | HeaderName::WwwAuthenticate
            | HeaderName::ProxyAuthenticate
            | HeaderName::FeatureCaps
            | HeaderName::Path
    ) && !h.name.eq_ignore_ascii_case(b"X-Sipis-Push-Status")
}

/// Writes a From/To value with its tag replaced (or added, or removed when
/// `tag` is `None`) and `pn-*` URI parameters stripped.
pub(crate) fn put_party(
    out: &mut BytesMut,
    value: &[u8],
    tag: Option<&[u8]>,
) -> Result<(), parser::Error> {
    let na = parser::NameAddr::parse(value)?;
    parser::write_name_addr_with(
        out,
        &na,
        |p| !is_push_param(p.name),
        |p| !p.name.eq_ignore_ascii_case(b"tag"),
    );
    if let Some(t) = tag {
        out.put_slice(b";tag=");
        out.put_slice(t);
    }
    Ok(())
}

/// Writes header `name` as [`put_party`] renders `value` with `tag`.
pub(crate) fn put_party_header(
    w: &mut Writer<'_>,
    name: &str,
    value: &[u8],
    tag: Option<&[u8]>,
) -> Result<(), parser::Error> {
    let mut v = BytesMut::with_capacity(value.len() + 24);
    put_party(&mut v, value, tag)?;
    w.header(name, &v);
    Ok(())
}

/// `<sip:<token>@<host:port>>`: the Contact sipis gives each side, its
/// user part routing requests back to the account. Over a stream the
/// Contact names the listener and its transport (`;transport=tcp|tls`,
/// RFC 3261 §19.1.1; `sip:` with `transport=tls` rather than `sips:`, as
/// RFC 5630 §3.1.1 allows for a single hop).
pub(crate) fn put_contact(o: &mut BytesMut, token: &str, host: &str, flow: Flow) {
    o.put_slice(b"<sip:");
    o.put_slice(token.as_bytes());
    o.put_u8(b'@');
    o.put_slice(host.as_bytes());
    match flow {
        Flow::Tcp(_) => o.put_slice(b";transport=tcp"),
        Flow::Tls(_) => o.put_slice(b";transport=tls"),
        Flow::Udp | Flow::SharedUdp => {}
    }
    o.put_u8(b'>');
}

/// Writes `CSeq: <n> <METHOD>`.
pub(crate) fn put_cseq(w: &mut Writer<'_>, n: u32, method: Method<'_>) {
    w.header_with("CSeq", |o| {
        parser::put_u32(o, n);
        o.put_u8(b' ');
        o.put_slice(method.as_str().as_bytes());
    });
}

/// Where a request in a dialog goes first (RFC 3261 §12.2.1.1, §8.1.2):
/// the top Route's URI when it is a loose router, else the remote target —
/// when that URI names an IP address (the engine does no DNS); `None`
/// otherwise, for the caller to fall back on where the dialog's peer
/// last sent from.
pub(crate) fn next_hop(route_set: &[Bytes], remote_target: &[u8]) -> Option<SocketAddr> {
    let uri_of = |v: &[u8]| -> Option<Bytes> {
        let na = parser::NameAddr::parse(v).ok()?;
        Some(Bytes::copy_from_slice(na.uri.raw))
    };
    let hop = match route_set.first() {
        Some(r) => {
            let raw = uri_of(r)?;
            let uri = parser::Uri::parse(&raw).ok()?;
            let lr = uri
                .params
                .iter()
                .map_while(Result::ok)
                .any(|p| p.name.eq_ignore_ascii_case(b"lr"));
            if !lr {
                // A strict router (RFC 2543): not supported; the peer's
                // address is used.
                return None;
            }
            address_of(&uri)
        }
        None => address_of(&parser::Uri::parse(remote_target).ok()?),
    };
    hop
}

/// The socket address of a SIP URI whose host is an IP literal (port 5060
/// when absent, 5061 for `sips:`).
fn address_of(uri: &parser::Uri<'_>) -> Option<SocketAddr> {
    let default = if matches!(uri.scheme, parser::Scheme::Sips) {
        5061
    } else {
        5060
    };
    let ip = match uri.host {
        parser::Host::V4(a) => std::net::IpAddr::V4(a),
        parser::Host::V6(a) => std::net::IpAddr::V6(a),
        _ => return None,
    };
    Some(SocketAddr::new(ip, uri.port.unwrap_or(default)))
}

/// The Contact URI of a message (the remote target), without `pn-*`.
pub(crate) fn contact_uri(msg: &Message<'_, '_>) -> Option<Bytes> {
    let c = msg.contacts().next()?.ok()?;
    let na = c.addr()?;
    let mut out = BytesMut::new();
    parser::write_uri(&mut out, &na.uri, |p| !is_push_param(p.name));
    Some(out.freeze())
}

/// The reason phrase of a response's status line.
pub(crate) fn reason_phrase(data: &[u8]) -> String {
    let line = data.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end();
    line.splitn(3, ' ').nth(2).unwrap_or("").to_owned()
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor a simulated clock
mod tests {
    use super::*;

    #[test]
    fn put_party_replaces_the_tag_and_strips_push_parameters() {
        let mut out = BytesMut::new();
        put_party(
            &mut out,
            b"\"Alice\" <sip:alice@example.com;pn-prid=abc;transport=udp>;tag=old;x=1",
            Some(b"new"),
        )
        .unwrap();
        assert_eq!(
            &out[..],
            b"\"Alice\" <sip:alice@example.com;transport=udp>;x=1;tag=new"
        );
        out.clear();
        put_party(&mut out, b"sip:bob@example.com;tag=t", None).unwrap();
        assert_eq!(&out[..], b"<sip:bob@example.com>");
    }

    #[test]
    fn every_request_starts_with_request_line_via_routes_max_forwards() {
        let mut buf = BytesMut::new();
        let routes = [Bytes::from_static(b"<sip:p1.example;lr>")];
        let w = begin_request(
            &mut buf,
            Method::Bye,
            b"sip:bob@192.0.2.1:5070",
            Flow::Tcp(3),
            "sipis.example:5060",
            "z9hG4bKabc",
            &routes,
        );
        w.finish(b"");
        assert_eq!(
            std::str::from_utf8(&buf).unwrap(),
            "BYE sip:bob@192.0.2.1:5070 SIP/2.0\r\n\
             Via: SIP/2.0/TCP sipis.example:5060;branch=z9hG4bKabc;rport\r\n\
             Route: <sip:p1.example;lr>\r\n\
             Max-Forwards: 70\r\n\
             Content-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn in_dialog_requests_go_to_the_loose_router_else_the_remote_target() {
        let routes = [
            Bytes::from_static(b"<sip:192.0.2.20;lr>"),
            Bytes::from_static(b"<sip:192.0.2.21;lr>"),
        ];
        let target = b"sip:bob@198.51.100.7:5080";
        assert_eq!(next_hop(&routes, target), "192.0.2.20:5060".parse().ok());
        assert_eq!(next_hop(&[], target), "198.51.100.7:5080".parse().ok());
        assert_eq!(
            next_hop(&[Bytes::from_static(b"<sips:[2001:db8::1];lr>")], target),
            "[2001:db8::1]:5061".parse().ok()
        );
        // Names need RFC 3263 resolution; strict routers are not followed.
        assert_eq!(
            next_hop(&[Bytes::from_static(b"<sip:pbx.example;lr>")], target),
            None
        );
        assert_eq!(
            next_hop(&[Bytes::from_static(b"<sip:192.0.2.20>")], target),
            None
        );
        assert_eq!(next_hop(&[], b"sip:bob@pbx.example"), None);
    }

    #[test]
    fn reason_phrase_keeps_what_the_peer_wrote() {
        assert_eq!(reason_phrase(b"SIP/2.0 200 Ok\r\n"), "Ok");
        assert_eq!(reason_phrase(b"SIP/2.0 486 Busy  Here\r\n"), "Busy  Here");
        assert_eq!(reason_phrase(b"SIP/2.0 180\r\n"), "");
    }
}
