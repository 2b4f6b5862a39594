//! Every way sipis refuses or ends a request, and what goes on the wire for
//! it: each variant knows its status code, reason phrase and the headers
//! that explain it (as `rustls::Error` maps to TLS alerts).

use sipis_parser::{self as parser, Writer};

/// Seconds a client is asked to wait when a table is full.
pub const OVERLOAD_RETRY_AFTER: u32 = 5;

/// Why sipis answers a request with an error (or ends a call unanswered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SipError {
    /// The message does not parse or lacks a mandatory header (RFC 3261
    /// §8.2.2, §21.5.6); the parser's error knows the code (400, 505, 416).
    Malformed(parser::Error),
    /// A REGISTER's `Expires` header is not a number (RFC 3261 §10.3).
    BadExpires,
    /// A REGISTER's Contact does not parse.
    BadContact,
    /// A Contact's `expires` parameter is not a number.
    BadContactExpires,
    /// An RFC 8599 contact without `pn-prid`.
    MissingPushToken,
    /// `Contact: *` with other contacts or a non-zero Expires (RFC 3261
    /// §10.3 step 6).
    InvalidWildcard,
    /// A phone's credentials are wrong (RFC 3261 §22.3).
    Forbidden,
    /// No account answers to this AOR or Contact token.
    NotFound,
    /// A binding shorter than `phone_min_expires` (RFC 3261 §10.3 step 7);
    /// the value goes in `Min-Expires`.
    IntervalTooBrief(u32),
    /// A request for a dialog or transaction sipis does not know (RFC 3261
    /// §12.2.2, §9.2).
    NoSuchCall,
    /// A second INVITE for a Call-ID being handled, on another branch (a
    /// spiral or a fork back to sipis, RFC 3261 §8.2.2.2).
    LoopDetected,
    /// The INVITE was cancelled (RFC 3261 §9.2).
    RequestTerminated,
    /// A relayed request got no answer from the other leg (RFC 3261 §16.7
    /// step 6).
    RequestTimeout,
    /// No device woke and connected within `device_wait`.
    NoResponseFromDevice,
    /// The account has no device a push or an INVITE could reach.
    DeviceNotReachable,
    /// An RFC 8599 `pn-provider` sipis cannot push to (RFC 8599 §4.1.1).
    PushServiceNotSupported,
    /// A method sipis does not handle (RFC 3261 §8.2.1).
    NotImplemented,
    /// sipis could not build its own answer.
    Internal,
    /// A Request-URI scheme sipis does not serve (RFC 3261 §8.2.2.1).
    UnsupportedUriScheme,
    /// A `Require` option tag sipis does not support (RFC 3261 §8.2.2.3;
    /// the response lists them in `Unsupported`).
    BadExtension,
    /// A table of the shard is full (transactions, pending calls): try
    /// again later (RFC 3261 §21.5.4, with Retry-After).
    Overloaded,
}

impl SipError {
    /// The status code of the response.
    pub fn status(self) -> u16 {
        match self {
            SipError::Malformed(e) => e.status_code(),
            SipError::BadExpires
            | SipError::BadContact
            | SipError::BadContactExpires
            | SipError::MissingPushToken
            | SipError::InvalidWildcard => 400,
            SipError::Forbidden => 403,
            SipError::NotFound => 404,
            SipError::RequestTimeout => 408,
            SipError::IntervalTooBrief(_) => 423,
            SipError::UnsupportedUriScheme => 416,
            SipError::BadExtension => 420,
            SipError::NoResponseFromDevice | SipError::DeviceNotReachable => 480,
            SipError::NoSuchCall => 481,
            SipError::LoopDetected => 482,
            SipError::RequestTerminated => 487,
            SipError::Internal => 500,
            SipError::NotImplemented => 501,
            SipError::Overloaded => 503,
            SipError::PushServiceNotSupported => 555,
        }
    }

    /// The reason phrase of the response.
    pub fn reason(self) -> &'static str {
        match self {
            SipError::Malformed(e) => e.reason(),
            SipError::BadExpires => "Bad Expires",
            SipError::BadContact => "Bad Contact",
            SipError::BadContactExpires => "Bad Contact expires",
            SipError::MissingPushToken => "Missing pn-prid",
            SipError::InvalidWildcard => "Invalid Contact *",
            SipError::Forbidden => "Forbidden",
            SipError::NotFound => "Not Found",
            SipError::RequestTimeout => "Request Timeout",
            SipError::IntervalTooBrief(_) => "Interval Too Brief",
            SipError::UnsupportedUriScheme => "Unsupported URI Scheme",
            SipError::BadExtension => "Bad Extension",
            SipError::NoResponseFromDevice | SipError::DeviceNotReachable => {
                "Temporarily Unavailable"
            }
            SipError::NoSuchCall => "Call/Transaction Does Not Exist",
            SipError::LoopDetected => "Loop Detected",
            SipError::RequestTerminated => "Request Terminated",
            SipError::Internal => "Server Internal Error",
            SipError::NotImplemented => "Not Implemented",
            SipError::Overloaded => "Service Unavailable",
            SipError::PushServiceNotSupported => "Push Notification Service Not Supported",
        }
    }

    /// Headers that tell the other side more: `Min-Expires` for 423,
    /// `X-Sipis-Reason` for an unanswered call.
    pub fn write_headers(self, w: &mut Writer<'_>) {
        match self {
            SipError::IntervalTooBrief(min) => {
                w.header_u32("Min-Expires", min);
            }
            SipError::NoResponseFromDevice => {
                w.header("X-Sipis-Reason", b"No-Response-From-Device");
            }
            SipError::DeviceNotReachable => {
                w.header("X-Sipis-Reason", b"Device-Not-Reachable");
            }
            SipError::Overloaded => {
                w.header_u32("Retry-After", OVERLOAD_RETRY_AFTER);
            }
            _ => {}
        }
    }
}

impl std::fmt::Display for SipError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status(), self.reason())
    }
}

impl std::error::Error for SipError {}

impl From<parser::Error> for SipError {
    fn from(e: parser::Error) -> SipError {
        SipError::Malformed(e)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor a simulated clock
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn each_error_knows_its_status_line_and_headers() {
        let cases = [
            (SipError::NotFound, 404, "Not Found", ""),
            (
                SipError::IntervalTooBrief(60),
                423,
                "Interval Too Brief",
                "Min-Expires: 60\r\n",
            ),
            (
                SipError::NoResponseFromDevice,
                480,
                "Temporarily Unavailable",
                "X-Sipis-Reason: No-Response-From-Device\r\n",
            ),
            (
                SipError::DeviceNotReachable,
                480,
                "Temporarily Unavailable",
                "X-Sipis-Reason: Device-Not-Reachable\r\n",
            ),
            (
                SipError::PushServiceNotSupported,
                555,
                "Push Notification Service Not Supported",
                "",
            ),
            (
                SipError::NoSuchCall,
                481,
                "Call/Transaction Does Not Exist",
                "",
            ),
        ];
        for (e, code, reason, headers) in cases {
            assert_eq!((e.status(), e.reason()), (code, reason), "{e:?}");
            let mut buf = BytesMut::new();
            let mut w = Writer::request(&mut buf, sipis_parser::Method::Options, b"sip:x");
            e.write_headers(&mut w);
            w.finish(b"");
            let text = String::from_utf8_lossy(&buf).into_owned();
            assert!(text.contains(headers), "{e:?}: {text}");
            if headers.is_empty() {
                assert!(!text.contains("Min-Expires") && !text.contains("X-Sipis-Reason"));
            }
        }
    }

    #[test]
    fn a_parse_error_keeps_the_parsers_status() {
        let e = SipError::from(parser::Error::Version);
        assert_eq!(e.status(), 505);
    }
}
