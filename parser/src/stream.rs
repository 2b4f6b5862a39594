//! Framing SIP on a byte stream (TCP, TLS): where one message ends, and
//! the RFC 5626 §4.4.1 CRLF keep-alives between messages.

use crate::header_name::HeaderName;
use crate::lex;
use crate::{Error, Result};
use memchr::memchr;

/// Size limits for stream framing (and, by the server, for datagrams).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest start line + headers accepted, in bytes.
    pub max_head: usize,
    /// Largest whole message (head + body) accepted, in bytes.
    pub max_message: usize,
}

impl Default for Limits {
    /// 16 KiB of headers, 64 KiB per message: far above any INVITE a phone
    /// or provider sends, small enough to bound per-flow buffers.
    fn default() -> Self {
        Limits {
            max_head: 16 * 1024,
            max_message: 64 * 1024,
        }
    }
}

/// What the front of a stream buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Not enough bytes yet: read more and call again.
    Partial,
    /// A `CRLFCRLF` keep-alive ping (RFC 5626 §4.4.1) of this many bytes;
    /// answer with a single CRLF pong.
    Ping(usize),
    /// A single `CRLF`: a pong (or a stray line end before a start line,
    /// RFC 3261 §7.5), this many bytes, to be skipped.
    Pong(usize),
    /// A whole message of this many bytes: pass `&buf[..n]` to
    /// [`crate::parse`] and consume `n`.
    Message(usize),
}

/// Finds the first frame at the front of `buf`.
///
/// Like `httparse`'s `Status`, [`Frame::Partial`] is not an error. Errors
/// are [`Error::MissingContentLength`] (mandatory on streams, RFC 3261
/// §18.3), a bad Content-Length, or [`Error::TooLarge`] — all of which
/// leave the stream unframeable, so the server closes the connection.
///
/// A ping is recognised only when its four bytes are in the buffer: a lone
/// `CRLF` is taken as a pong. Keep-alive pings are written in one write, so
/// they arrive whole in practice.
///
/// ```
/// use sipis_parser::{frame, Frame, Limits};
/// let l = Limits::default();
/// assert_eq!(frame(b"\r\n\r\nOPTIONS", &l), Ok(Frame::Ping(4)));
/// assert_eq!(frame(b"\r\n", &l), Ok(Frame::Pong(2)));
/// let msg = b"BYE sip:a@b SIP/2.0\r\nContent-Length: 3\r\n\r\nabcNEXT";
/// assert_eq!(frame(&msg[..30], &l), Ok(Frame::Partial));
/// assert_eq!(frame(msg, &l), Ok(Frame::Message(msg.len() - 4)));
/// ```
pub fn frame(buf: &[u8], limits: &Limits) -> Result<Frame> {
    if buf.starts_with(b"\r\n") {
        if buf.starts_with(b"\r\n\r\n") {
            return Ok(Frame::Ping(4));
        }
        return Ok(Frame::Pong(2));
    }
    if buf.is_empty() || buf == b"\r" {
        return Ok(Frame::Partial);
    }
    let (head_end, len) = match scan_head(buf)? {
        Some(h) => h,
        None => {
            return if buf.len() > limits.max_head {
                Err(Error::TooLarge)
            } else {
                Ok(Frame::Partial)
            };
        }
    };
    if head_end > limits.max_head {
        return Err(Error::TooLarge);
    }
    let len = len.ok_or(Error::MissingContentLength)?;
    let total = head_end
        .checked_add(len as usize)
        .filter(|&t| t <= limits.max_message)
        .ok_or(Error::TooLarge)?;
    if buf.len() < total {
        return Ok(Frame::Partial);
    }
    Ok(Frame::Message(total))
}

/// Reads header lines exactly as [`crate::parse`] does (a line ends at LF,
/// a preceding CR is dropped, a line starting with SP/HT continues the
/// previous header) until the empty line. Returns where the body starts and
/// the Content-Length, or `None` if the empty line is not in `buf` yet.
fn scan_head(buf: &[u8]) -> Result<Option<(usize, Option<u32>)>> {
    let mut found: Option<u32> = None;
    // Skip the start line.
    let Some(first) = memchr(b'\n', buf) else {
        return Ok(None);
    };
    let mut pos = first + 1;
    loop {
        let Some(lf) = memchr(b'\n', &buf[pos..]) else {
            return Ok(None);
        };
        let mut line = &buf[pos..pos + lf];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        pos += lf + 1;
        if line.is_empty() {
            return Ok(Some((pos, found)));
        }
        if matches!(line[0], b' ' | b'\t') {
            continue;
        }
        let Some(colon) = memchr(b':', line) else {
            continue;
        };
        let name = lex::trim(&line[..colon]);
        if !name.is_empty() && HeaderName::from_bytes(name) == HeaderName::ContentLength {
            let v = lex::parse_u32(lex::trim(&line[colon + 1..]), u32::MAX)
                .map_err(|_| Error::ContentLength)?;
            if found.is_some_and(|f| f != v) {
                return Err(Error::DuplicateHeader(HeaderName::ContentLength));
            }
            found = Some(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        max_head: 200,
        max_message: 300,
    };

    #[test]
    fn two_messages_back_to_back_with_keepalives_between() {
        let a = b"MESSAGE sip:a@b SIP/2.0\r\nl: 2\r\n\r\nhi";
        let b = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        let mut stream = Vec::new();
        stream.extend_from_slice(a);
        stream.extend_from_slice(b"\r\n\r\n");
        stream.extend_from_slice(b);
        stream.extend_from_slice(b"\r\n");
        let mut got = Vec::new();
        let mut s = &stream[..];
        while !s.is_empty() {
            let f = frame(s, &L).unwrap();
            let n = match f {
                Frame::Message(n) | Frame::Ping(n) | Frame::Pong(n) => n,
                Frame::Partial => panic!("partial"),
            };
            got.push(f);
            s = &s[n..];
        }
        assert_eq!(
            got,
            vec![
                Frame::Message(a.len()),
                Frame::Ping(4),
                Frame::Message(b.len()),
                Frame::Pong(2)
            ]
        );
    }

    #[test]
    fn every_prefix_of_a_message_is_partial() {
        let m = b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 5\r\n\r\nhello";
        for i in 1..m.len() {
            assert_eq!(frame(&m[..i], &L), Ok(Frame::Partial), "prefix {i}");
        }
        assert_eq!(frame(m, &L), Ok(Frame::Message(m.len())));
    }

    #[test]
    fn bare_lf_and_folded_lines_frame_as_parse_reads_them() {
        let m = b"BYE sip:a@b SIP/2.0\nl: 3\n\nabcNEXT";
        assert_eq!(frame(m, &L), Ok(Frame::Message(m.len() - 4)));
        // A folded line is a continuation, not a second Content-Length.
        let f = b"BYE sip:a@b SIP/2.0\r\nSubject: x\r\n l: 5\r\nl: 1\r\n\r\nZ";
        assert_eq!(frame(f, &L), Ok(Frame::Message(f.len())));
        // An empty header name is skipped, not a panic.
        assert_eq!(frame(b"\n:\r\n\r\n", &L), Err(Error::MissingContentLength));
    }

    #[test]
    fn limits_and_missing_length_are_errors() {
        assert_eq!(
            frame(b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\n\r\n", &L),
            Err(Error::MissingContentLength)
        );
        assert_eq!(frame(&[b'a'; 201], &L), Err(Error::TooLarge));
        assert_eq!(
            frame(b"INVITE sip:a@b SIP/2.0\r\nl: 400\r\n\r\n", &L),
            Err(Error::TooLarge)
        );
        assert_eq!(
            frame(b"INVITE sip:a@b SIP/2.0\r\nl: -1\r\n\r\n", &L),
            Err(Error::ContentLength)
        );
        assert_eq!(
            frame(b"INVITE sip:a@b SIP/2.0\r\nl: 4294967295\r\n\r\n", &L),
            Err(Error::TooLarge)
        );
    }
}
