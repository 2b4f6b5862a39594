//! Datagram parsing: start line, header slices, body by Content-Length.

use crate::header_name::HeaderName;
use crate::lex::{self, CommaSplit};
use crate::{
    Auth, CSeq, Contact, Error, Event, FeatureCaps, Method, NameAddr, Reason, Replaces, Result,
    TokenList, Uri, Via,
};
use memchr::memchr;

/// One header line: its name as written, the header it is, and its value
/// with the leading and trailing white space removed. A folded value keeps
/// its CRLF+WSP inside; the typed accessors read that as white space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// The name exactly as it appeared (e.g. `v` or `VIA`).
    pub name: &'a [u8],
    /// The known header this line is, or [`HeaderName::Other`].
    pub kind: HeaderName,
    /// The value, a slice of the input.
    pub value: &'a [u8],
}

/// An unused header slot, to initialise the array passed to [`parse`].
pub const EMPTY_HEADER: Header<'static> = Header {
    name: b"",
    kind: HeaderName::Other,
    value: b"",
};

/// The first line of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine<'a> {
    /// `Method SP Request-URI SP SIP/2.0` (RFC 3261 §7.1). The URI is kept
    /// raw; [`Message::uri`] parses it.
    Request { method: Method<'a>, uri: &'a [u8] },
    /// `SIP/2.0 SP Status-Code SP Reason-Phrase` (RFC 3261 §7.2).
    Response { code: u16, reason: &'a [u8] },
}

/// A parsed message. It borrows the input buffer (`'a`) and the caller's
/// header array (`'h`); nothing is copied and nothing is allocated.
#[derive(Debug, Clone, Copy)]
pub struct Message<'h, 'a> {
    /// The request or status line.
    pub start: StartLine<'a>,
    /// The header lines in order.
    pub headers: &'h [Header<'a>],
    /// The body: `Content-Length` bytes after the blank line, or the rest
    /// of the datagram when there is no Content-Length.
    pub body: &'a [u8],
    /// The whole message as parsed (start line to end of body). Bytes of a
    /// datagram past the declared Content-Length are not part of it.
    pub raw: &'a [u8],
    /// Content-Length as read while parsing (all lines agreed).
    content_length: Option<u32>,
}

/// Parses one SIP message from a datagram (UDP, or a frame that
/// [`crate::frame`] delimited on a stream).
///
/// `headers` receives one entry per header line; a message with more lines
/// fails with [`Error::TooManyHeaders`]. Leading CRLFs are skipped (RFC 3261
/// §7.5). Bytes after `Content-Length` are ignored (§18.3).
///
/// ```
/// use sipis_parser::{parse, HeaderName, Method, StartLine, EMPTY_HEADER};
///
/// let buf = b"OPTIONS sip:bob@example.com SIP/2.0\r\n\
///     Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776\r\n\
///     Call-ID: a84b4c76e66710\r\n\
///     Content-Length: 0\r\n\r\n";
/// let mut headers = [EMPTY_HEADER; 32];
/// let msg = parse(buf, &mut headers).unwrap();
/// assert_eq!(msg.method(), Some(Method::Options));
/// assert_eq!(msg.call_id().unwrap(), b"a84b4c76e66710");
/// assert_eq!(msg.top_via().unwrap().branch(), Some(&b"z9hG4bK776"[..]));
/// assert_eq!(msg.header(HeaderName::ContentLength), Some(&b"0"[..]));
/// ```
pub fn parse<'h, 'a>(buf: &'a [u8], headers: &'h mut [Header<'a>]) -> Result<Message<'h, 'a>> {
    let mut pos = 0;
    while buf[pos..].starts_with(b"\r\n") {
        pos += 2;
    }
    let begin = pos;
    let (line, next) = next_line(buf, pos)?;
    let start = parse_start_line(line)?;
    pos = next;

    let mut n = 0;
    // The header being read: name, kind, value start, value end. It is
    // written out when the next line is not a continuation (§7.3.1 folding).
    let mut cur: Option<(&'a [u8], HeaderName, usize, usize)> = None;
    loop {
        let (line, next) = next_line(buf, pos)?;
        if line.is_empty() {
            pos = next;
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // Continuation of the previous header's value.
            match cur.as_mut() {
                Some(c) => c.3 = pos + line.len(),
                None => return Err(Error::HeaderName),
            }
            pos = next;
            continue;
        }
        if let Some(c) = cur.take() {
            push(headers, &mut n, buf, c)?;
        }
        // field-name = token, then HCOLON = *(SP / HTAB) ":" (RFC 3261
        // §7.3.1): one scan validates the name and finds the colon.
        let name_end = lex::token_end(line, 0);
        let mut colon = name_end;
        while colon < line.len() && matches!(line[colon], b' ' | b'\t') {
            colon += 1;
        }
        if name_end == 0 || line.get(colon) != Some(&b':') {
            return Err(Error::HeaderName);
        }
        let name = &line[..name_end];
        cur = Some((
            name,
            HeaderName::from_bytes(name),
            pos + colon + 1,
            pos + line.len(),
        ));
        pos = next;
    }
    if let Some(c) = cur.take() {
        push(headers, &mut n, buf, c)?;
    }
    let headers = &headers[..n];

    let rest = &buf[pos..];
    let content_length = content_length(headers)?;
    let body = match content_length {
        None => rest,
        Some(len) => rest.get(..len as usize).ok_or(Error::BodyTooShort)?,
    };
    let end = pos + body.len();
    Ok(Message {
        start,
        headers,
        body,
        raw: &buf[begin..end],
        content_length,
    })
}

#[inline]
fn push<'a>(
    headers: &mut [Header<'a>],
    n: &mut usize,
    buf: &'a [u8],
    (name, kind, vstart, vend): (&'a [u8], HeaderName, usize, usize),
) -> Result<()> {
    let slot = headers.get_mut(*n).ok_or(Error::TooManyHeaders)?;
    *slot = Header {
        name,
        kind,
        value: lex::trim(&buf[vstart..vend]),
    };
    *n += 1;
    Ok(())
}

/// The line starting at `pos` without its terminator, and where the next
/// line starts. Lines end in CRLF; a bare LF is tolerated as a terminator.
#[inline]
fn next_line(buf: &[u8], pos: usize) -> Result<(&[u8], usize)> {
    let rest = buf.get(pos..).ok_or(Error::Truncated)?;
    let lf = memchr(b'\n', rest).ok_or(Error::Truncated)?;
    let line = if lf > 0 && rest[lf - 1] == b'\r' {
        &rest[..lf - 1]
    } else {
        &rest[..lf]
    };
    Ok((line, pos + lf + 1))
}

fn parse_start_line(line: &[u8]) -> Result<StartLine<'_>> {
    if line.len() >= 4 && lex::eq_ic(&line[..4], b"SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let sp = memchr(b' ', line).ok_or(Error::StartLine)?;
        check_version(&line[..sp])?;
        let rest = &line[sp + 1..];
        let (code, reason) = match memchr(b' ', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            // A missing reason phrase is tolerated (it is only for humans).
            None => (rest, &rest[rest.len()..]),
        };
        if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
            return Err(Error::StatusCode);
        }
        let code = lex::parse_u32(code, 699).map_err(|_| Error::StatusCode)? as u16;
        if code < 100 {
            return Err(Error::StatusCode);
        }
        return Ok(StartLine::Response { code, reason });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version CRLF: exactly one
    // SP between the elements (RFC 3261 §7.1), no white space inside the URI.
    let sp1 = memchr(b' ', line).ok_or(Error::StartLine)?;
    let sp2 = memchr::memrchr(b' ', line).ok_or(Error::StartLine)?;
    if sp2 <= sp1 + 1 {
        return Err(Error::StartLine);
    }
    let method = Method::parse(&line[..sp1])?;
    let uri = &line[sp1 + 1..sp2];
    if uri.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(Error::StartLine);
    }
    check_version(&line[sp2 + 1..])?;
    Ok(StartLine::Request { method, uri })
}

fn check_version(v: &[u8]) -> Result<()> {
    if lex::eq_ic(v, b"SIP/2.0") {
        return Ok(());
    }
    // A well-formed other version is answered 505; anything else is junk.
    let well_formed = v.len() > 4
        && lex::eq_ic(&v[..4], b"SIP/")
        && v[4..].iter().all(|&b| b.is_ascii_digit() || b == b'.');
    Err(if well_formed {
        Error::Version
    } else {
        Error::StartLine
    })
}

/// The message's Content-Length: all `Content-Length`/`l` lines must agree.
pub(crate) fn content_length(headers: &[Header<'_>]) -> Result<Option<u32>> {
    let mut found = None;
    for h in headers {
        if h.kind == HeaderName::ContentLength {
            let v = lex::parse_u32(h.value, u32::MAX).map_err(|_| Error::ContentLength)?;
            match found {
                Some(f) if f != v => return Err(Error::DuplicateHeader(HeaderName::ContentLength)),
                _ => found = Some(v),
            }
        }
    }
    Ok(found)
}

impl<'h, 'a> Message<'h, 'a> {
    /// True for a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The request method, `None` for a response.
    pub fn method(&self) -> Option<Method<'a>> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code, `None` for a request.
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// The raw Request-URI, `None` for a response.
    pub fn request_uri(&self) -> Option<&'a [u8]> {
        match self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI parsed; [`Error::StartLine`] for a response.
    pub fn uri(&self) -> Result<Uri<'a>> {
        Uri::parse(self.request_uri().ok_or(Error::StartLine)?)
    }

    /// The value of the first line of a known header.
    #[inline]
    pub fn header(&self, name: HeaderName) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.kind == name)
            .map(|h| h.value)
    }

    /// The value of the first header line with this name (any case). For
    /// names without a [`HeaderName`] variant, e.g. `X-Sipis-Push-Status`.
    pub fn header_by_name(&self, name: &str) -> Option<&'a [u8]> {
        let known = HeaderName::from_bytes(name.as_bytes());
        if known != HeaderName::Other {
            return self.header(known);
        }
        self.headers
            .iter()
            .find(|h| h.kind == HeaderName::Other && lex::eq_ic(h.name, name.as_bytes()))
            .map(|h| h.value)
    }

    /// The values of every line of a known header, in order.
    pub fn header_lines(&self, name: HeaderName) -> impl Iterator<Item = &'a [u8]> + 'h {
        self.headers
            .iter()
            .filter(move |h| h.kind == name)
            .map(|h| h.value)
    }

    /// The elements of a comma-list header across all its lines (RFC 3261
    /// §7.3.1: `Via: a, b` is the same as two Via lines).
    pub fn header_list(&self, name: HeaderName) -> impl Iterator<Item = Result<&'a [u8]>> + 'h {
        self.header_lines(name).flat_map(CommaSplit::new)
    }

    fn required(&self, name: HeaderName) -> Result<&'a [u8]> {
        self.header(name).ok_or(Error::MissingHeader(name))
    }

    /// The Call-ID (RFC 3261 §20.8).
    pub fn call_id(&self) -> Result<&'a [u8]> {
        let v = self.required(HeaderName::CallId)?;
        if v.is_empty() || v.iter().any(|&b| lex::is_lws(b)) {
            return Err(Error::HeaderValue);
        }
        Ok(v)
    }

    /// The CSeq (RFC 3261 §20.16).
    pub fn cseq(&self) -> Result<CSeq<'a>> {
        CSeq::parse(self.required(HeaderName::CSeq)?)
    }

    /// The From header (RFC 3261 §20.20).
    pub fn from(&self) -> Result<NameAddr<'a>> {
        NameAddr::parse(self.required(HeaderName::From)?)
    }

    /// The To header (RFC 3261 §20.39).
    pub fn to(&self) -> Result<NameAddr<'a>> {
        NameAddr::parse(self.required(HeaderName::To)?)
    }

    /// The topmost Via: the first element of the first Via line.
    pub fn top_via(&self) -> Result<Via<'a>> {
        let first = self.required(HeaderName::Via)?;
        let elem = CommaSplit::new(first).next().ok_or(Error::HeaderValue)??;
        Via::parse(elem)
    }

    /// Every Via element, top first.
    pub fn vias(&self) -> impl Iterator<Item = Result<Via<'a>>> + 'h {
        self.header_list(HeaderName::Via)
            .map(|r| r.and_then(Via::parse))
    }

    /// Every Contact element (RFC 3261 §20.10), including `*`.
    pub fn contacts(&self) -> impl Iterator<Item = Result<Contact<'a>>> + 'h {
        self.header_list(HeaderName::Contact)
            .map(|r| r.and_then(Contact::parse))
    }

    /// Every Route element, in order (RFC 3261 §20.34).
    pub fn routes(&self) -> impl Iterator<Item = Result<NameAddr<'a>>> + 'h {
        self.header_list(HeaderName::Route)
            .map(|r| r.and_then(NameAddr::parse))
    }

    /// Every Record-Route element, in order (RFC 3261 §20.30).
    pub fn record_routes(&self) -> impl Iterator<Item = Result<NameAddr<'a>>> + 'h {
        self.header_list(HeaderName::RecordRoute)
            .map(|r| r.and_then(NameAddr::parse))
    }

    fn number(&self, name: HeaderName, max: u32) -> Result<Option<u32>> {
        self.header(name)
            .map(|v| lex::parse_u32(v, max))
            .transpose()
    }

    /// Max-Forwards (RFC 3261 §20.22: 0..=255).
    pub fn max_forwards(&self) -> Result<Option<u8>> {
        Ok(self.number(HeaderName::MaxForwards, 255)?.map(|n| n as u8))
    }

    /// The Expires header in seconds (RFC 3261 §20.19). Values above
    /// 2^32-1 are an error, not wrapped.
    pub fn expires(&self) -> Result<Option<u32>> {
        self.number(HeaderName::Expires, u32::MAX)
    }

    /// Min-Expires in seconds (RFC 3261 §20.23), as a 423 carries it.
    pub fn min_expires(&self) -> Result<Option<u32>> {
        self.number(HeaderName::MinExpires, u32::MAX)
    }

    /// Retry-After in seconds, its comment and parameters ignored
    /// (RFC 3261 §20.33).
    pub fn retry_after(&self) -> Result<Option<u32>> {
        self.header(HeaderName::RetryAfter)
            .map(|v| lex::parse_u32(&v[..lex::token_end(v, 0).min(v.len())], u32::MAX))
            .transpose()
    }

    /// The Content-Length header (checked at parse time: all lines agree).
    pub fn content_length(&self) -> Option<u32> {
        self.content_length
    }

    /// The Content-Type value, raw (`application/sdp`).
    pub fn content_type(&self) -> Option<&'a [u8]> {
        self.header(HeaderName::ContentType)
    }

    /// Authentication headers of one kind (`WWW-Authenticate`,
    /// `Proxy-Authenticate`, `Authorization`, `Proxy-Authorization`); one
    /// challenge or credential per line.
    pub fn auth(&self, name: HeaderName) -> impl Iterator<Item = Result<Auth<'a>>> + 'h {
        self.header_lines(name).map(Auth::parse)
    }

    /// The Reason headers (RFC 3326), e.g. on a CANCEL.
    pub fn reasons(&self) -> impl Iterator<Item = Result<Reason<'a>>> + 'h {
        self.header_list(HeaderName::Reason)
            .map(|r| r.and_then(Reason::parse))
    }

    /// Option tags of Require.
    pub fn require(&self) -> TokenList<'h, 'a> {
        TokenList::new(self.headers, HeaderName::Require)
    }

    /// Option tags of Supported.
    pub fn supported(&self) -> TokenList<'h, 'a> {
        TokenList::new(self.headers, HeaderName::Supported)
    }

    /// Methods of Allow.
    pub fn allow(&self) -> TokenList<'h, 'a> {
        TokenList::new(self.headers, HeaderName::Allow)
    }

    /// The Event header (RFC 6665 §8.2.1).
    pub fn event(&self) -> Option<Result<Event<'a>>> {
        self.header(HeaderName::Event).map(Event::parse)
    }

    /// The Replaces header (RFC 3891).
    pub fn replaces(&self) -> Option<Result<Replaces<'a>>> {
        self.header(HeaderName::Replaces).map(Replaces::parse)
    }

    /// The Priority token (`emergency`, `urgent`, `normal`, `non-urgent`).
    pub fn priority(&self) -> Option<Result<&'a str>> {
        self.header(HeaderName::Priority).map(lex::token_str)
    }

    /// Feature-Caps (RFC 6809), one per line.
    pub fn feature_caps(&self) -> impl Iterator<Item = Result<FeatureCaps<'a>>> + 'h {
        self.header_list(HeaderName::FeatureCaps)
            .map(|r| r.and_then(FeatureCaps::parse))
    }

    /// The User-Agent value, raw.
    pub fn user_agent(&self) -> Option<&'a [u8]> {
        self.header(HeaderName::UserAgent)
    }

    /// Checks what every request must carry before a transaction is made
    /// from it (RFC 3261 §8.1.1, §8.2): one each of To, From, Call-ID and
    /// CSeq, at least one Via, all parsable, and the CSeq method equal to
    /// the request method. Max-Forwards is checked only for its range: its
    /// absence is tolerated (many UAs omit it).
    /// Responses need the same headers except Max-Forwards.
    pub fn validate(&self) -> Result<()> {
        for name in [
            HeaderName::To,
            HeaderName::From,
            HeaderName::CallId,
            HeaderName::CSeq,
        ] {
            let mut lines = self.header_lines(name);
            lines.next().ok_or(Error::MissingHeader(name))?;
            if lines.next().is_some() {
                return Err(Error::DuplicateHeader(name));
            }
        }
        self.call_id()?;
        self.from()?;
        self.to()?;
        let cseq = self.cseq()?;
        for via in self.vias() {
            via?;
        }
        self.top_via()?;
        self.max_forwards()?;
        if let Some(m) = self.method() {
            if cseq.method != m {
                return Err(Error::CSeqMethod);
            }
            self.uri()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EMPTY_HEADER;

    fn p(s: &[u8]) -> Result<usize> {
        let mut h = [EMPTY_HEADER; 32];
        parse(s, &mut h).map(|m| m.headers.len())
    }

    #[test]
    fn folded_header_value_reads_as_one() {
        let buf = b"BYE sip:a@b SIP/2.0\r\nSubject: hello\r\n  world\r\nCall-ID: x\r\n\r\n";
        let mut h = [EMPTY_HEADER; 8];
        let m = parse(buf, &mut h).unwrap();
        assert_eq!(
            m.header(HeaderName::Subject),
            Some(&b"hello\r\n  world"[..])
        );
        assert_eq!(m.call_id(), Ok(&b"x"[..]));
    }

    #[test]
    fn body_is_cut_at_content_length_and_short_body_is_an_error() {
        let mut h = [EMPTY_HEADER; 8];
        let m = parse(b"SIP/2.0 200 OK\r\nl: 3\r\n\r\nabcdef", &mut h).unwrap();
        assert_eq!(m.body, b"abc");
        assert_eq!(m.raw.len(), b"SIP/2.0 200 OK\r\nl: 3\r\n\r\nabc".len());
        assert_eq!(
            p(b"SIP/2.0 200 OK\r\nl: 9\r\n\r\nabc"),
            Err(Error::BodyTooShort)
        );
        assert_eq!(
            p(b"SIP/2.0 200 OK\r\nl: 1\r\nContent-Length: 2\r\n\r\nabc"),
            Err(Error::DuplicateHeader(HeaderName::ContentLength))
        );
    }

    #[test]
    fn start_line_errors_are_specific() {
        assert_eq!(p(b"INVITE sip:a@b SIP/7.0\r\n\r\n"), Err(Error::Version));
        assert_eq!(p(b"INVITE sip:a@b SIP/2.0 \r\n\r\n"), Err(Error::StartLine));
        assert_eq!(p(b"INVITE  sip:a@b SIP/2.0\r\n\r\n"), Err(Error::StartLine));
        assert_eq!(p(b"INVITE sip:a @b SIP/2.0\r\n\r\n"), Err(Error::StartLine));
        assert_eq!(p(b"SIP/2.0 4294967301 big\r\n\r\n"), Err(Error::StatusCode));
        assert_eq!(p(b"SIP/2.0 099 low\r\n\r\n"), Err(Error::StatusCode));
        assert_eq!(p(b"SIP/2.0 700 high\r\n\r\n"), Err(Error::StatusCode));
        assert_eq!(p(b"IN\"VITE sip:a@b SIP/2.0\r\n\r\n"), Err(Error::Method));
    }

    #[test]
    fn truncated_and_headerless_input_is_an_error_not_a_panic() {
        assert_eq!(p(b""), Err(Error::Truncated));
        assert_eq!(p(b"\r\n\r\n"), Err(Error::Truncated));
        assert_eq!(
            p(b"INVITE sip:a@b SIP/2.0\r\nVia: x"),
            Err(Error::Truncated)
        );
        assert_eq!(
            p(b"INVITE sip:a@b SIP/2.0\r\nno colon\r\n\r\n"),
            Err(Error::HeaderName)
        );
        assert_eq!(
            p(b"INVITE sip:a@b SIP/2.0\r\n cont\r\n\r\n"),
            Err(Error::HeaderName)
        );
    }

    #[test]
    fn too_many_headers_is_reported() {
        let mut h = [EMPTY_HEADER; 1];
        assert_eq!(
            parse(b"SIP/2.0 200 OK\r\na: 1\r\nb: 2\r\n\r\n", &mut h).map(|_| ()),
            Err(Error::TooManyHeaders)
        );
    }
}
