//! The parser's one error type.

use core::fmt;

/// What was wrong with the input.
///
/// Small and `Copy`, like `httparse::Error`: it says *what* failed so the
/// server can count it and answer `400 Bad Request` with a useful reason
/// phrase ([`Error::reason`]), without carrying the offending bytes around.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// The start line is neither `Method SP Request-URI SP SIP-Version` nor
    /// `SIP-Version SP Status-Code SP Reason-Phrase` (RFC 3261 §7.1, §7.2).
    StartLine,
    /// The method is not a token (RFC 3261 §25.1 `Method`).
    Method,
    /// The protocol version is not `SIP/2.0` (RFC 3261 §7.1).
    Version,
    /// The status code is not three digits in 100..=699 (RFC 3261 §7.2).
    StatusCode,
    /// A URI does not follow its scheme's grammar (RFC 3261 §19.1, RFC 3966).
    Uri,
    /// A header line has no `:` or its name is not a token (RFC 3261 §7.3).
    HeaderName,
    /// A header value does not follow that header's grammar.
    HeaderValue,
    /// A bare CR or LF, or a NUL, where the grammar allows none.
    LineEnding,
    /// More header lines than the caller's header array holds.
    TooManyHeaders,
    /// The message ended before the blank line that closes the headers.
    Truncated,
    /// `Content-Length` is not a number (RFC 3261 §20.14).
    ContentLength,
    /// `Content-Length` claims more bytes than the datagram carries
    /// (RFC 3261 §18.3: such a message is discarded or answered 400).
    BodyTooShort,
    /// A message on a stream has no `Content-Length` (RFC 3261 §18.3: it is
    /// mandatory on stream transports).
    MissingContentLength,
    /// A message, or its header section, is larger than the configured limit.
    TooLarge,
    /// A header that every request needs is missing (RFC 3261 §8.1.1).
    MissingHeader(crate::HeaderName),
    /// The header appears more than once where only one is allowed.
    DuplicateHeader(crate::HeaderName),
    /// The CSeq method differs from the request method (RFC 3261 §8.2.1).
    CSeqMethod,
    /// A quoted string is not closed (RFC 3261 §25.1 `quoted-string`).
    UnbalancedQuotes,
    /// An angle-bracketed URI is not closed by `>`.
    UnbalancedAngles,
    /// A number does not fit the range its header allows.
    NumberRange,
}

impl Error {
    /// The reason phrase a server puts in the `400` it answers with.
    pub fn reason(self) -> &'static str {
        match self {
            Error::StartLine => "Bad Request Line",
            Error::Method => "Bad Method",
            Error::Version => "Version Not Supported",
            Error::StatusCode => "Bad Status Code",
            Error::Uri => "Bad URI",
            Error::HeaderName => "Bad Header Name",
            Error::HeaderValue => "Bad Header Value",
            Error::LineEnding => "Bad Line Ending",
            Error::TooManyHeaders => "Too Many Headers",
            Error::Truncated => "Truncated Message",
            Error::ContentLength => "Bad Content-Length",
            Error::BodyTooShort => "Content-Length Exceeds Body",
            Error::MissingContentLength => "Missing Content-Length",
            Error::TooLarge => "Message Too Large",
            Error::MissingHeader(h) => h.missing_reason(),
            Error::DuplicateHeader(_) => "Duplicate Header",
            Error::CSeqMethod => "CSeq Method Mismatch",
            Error::UnbalancedQuotes => "Unbalanced Quotes",
            Error::UnbalancedAngles => "Unbalanced Angle Brackets",
            Error::NumberRange => "Number Out Of Range",
        }
    }

    /// The status code to answer a request that failed this way with:
    /// `505` for a wrong version (RFC 3261 §21.5.20), `513` for an oversize
    /// message (§21.5.11), else `400`.
    pub fn status_code(self) -> u16 {
        match self {
            Error::Version => 505,
            Error::TooLarge => 513,
            _ => 400,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::MissingHeader(h) => write!(f, "missing {} header", h.as_str()),
            Error::DuplicateHeader(h) => write!(f, "duplicate {} header", h.as_str()),
            e => f.write_str(e.reason()),
        }
    }
}

impl std::error::Error for Error {}

/// Parser result.
pub type Result<T> = core::result::Result<T, Error>;
