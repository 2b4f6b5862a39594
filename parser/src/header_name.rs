//! Header names: long and compact forms (RFC 3261 §7.3.3, §20), matched
//! case-insensitively once at parse time so lookups compare one byte.

use crate::lex::eq_ic;

macro_rules! header_names {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal $(, $compact:literal)? ;)*) => {
        /// A header the parser knows by name. Every header line gets one at
        /// parse time; names it does not know are [`HeaderName::Other`] and
        /// are found by [`crate::Message::header_by_name`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum HeaderName {
            $( $(#[$doc])* $variant, )*
            /// A header the parser has no variant for.
            Other,
        }

        impl HeaderName {
            /// The canonical (long) name, as sipis writes it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( HeaderName::$variant => $name, )*
                    HeaderName::Other => "",
                }
            }

            /// The compact form (RFC 3261 §7.3.3), where there is one.
            pub fn compact(self) -> Option<u8> {
                match self {
                    $( $( HeaderName::$variant => Some($compact), )? )*
                    _ => None,
                }
            }

            /// Looks a header name up, long or compact, any case.
            #[inline]
            pub fn from_bytes(name: &[u8]) -> HeaderName {
                if name.is_empty() {
                    return HeaderName::Other;
                }
                if name.len() == 1 {
                    return match name[0].to_ascii_lowercase() {
                        $( $( $compact => HeaderName::$variant, )? )*
                        _ => HeaderName::Other,
                    };
                }
                // One probe in a table built at compile time, then one
                // case-insensitive compare.
                let mut i = slot(name);
                loop {
                    match LOOKUP[i] {
                        None => return HeaderName::Other,
                        Some((text, h)) if eq_ic(name, text.as_bytes()) => return h,
                        Some(_) => i = (i + 1) & (LOOKUP.len() - 1),
                    }
                }
            }
        }

        const ALL: &[HeaderName] = &[ $( HeaderName::$variant, )* ];
    };
}

header_names! {
    Accept = "Accept";
    AcceptContact = "Accept-Contact", b'a';
    AcceptEncoding = "Accept-Encoding";
    AcceptLanguage = "Accept-Language";
    AlertInfo = "Alert-Info";
    Allow = "Allow";
    AllowEvents = "Allow-Events", b'u';
    AuthenticationInfo = "Authentication-Info";
    Authorization = "Authorization";
    CallId = "Call-ID", b'i';
    CallInfo = "Call-Info";
    Contact = "Contact", b'm';
    ContentDisposition = "Content-Disposition";
    ContentEncoding = "Content-Encoding", b'e';
    ContentLanguage = "Content-Language";
    ContentLength = "Content-Length", b'l';
    ContentType = "Content-Type", b'c';
    CSeq = "CSeq";
    Date = "Date";
    ErrorInfo = "Error-Info";
    Event = "Event", b'o';
    Expires = "Expires";
    /// RFC 6809.
    FeatureCaps = "Feature-Caps";
    From = "From", b'f';
    Identity = "Identity", b'y';
    IdentityInfo = "Identity-Info", b'n';
    InReplyTo = "In-Reply-To";
    MaxForwards = "Max-Forwards";
    MimeVersion = "MIME-Version";
    MinExpires = "Min-Expires";
    Organization = "Organization";
    PAssertedIdentity = "P-Asserted-Identity";
    Path = "Path";
    Priority = "Priority";
    ProxyAuthenticate = "Proxy-Authenticate";
    ProxyAuthorization = "Proxy-Authorization";
    ProxyRequire = "Proxy-Require";
    RAck = "RAck";
    Reason = "Reason";
    RecordRoute = "Record-Route";
    ReferTo = "Refer-To", b'r';
    ReferredBy = "Referred-By", b'b';
    RejectContact = "Reject-Contact", b'j';
    Replaces = "Replaces";
    ReplyTo = "Reply-To";
    RequestDisposition = "Request-Disposition", b'd';
    Require = "Require";
    RetryAfter = "Retry-After";
    Route = "Route";
    RSeq = "RSeq";
    Server = "Server";
    SessionExpires = "Session-Expires", b'x';
    Subject = "Subject", b's';
    SubscriptionState = "Subscription-State";
    Supported = "Supported", b'k';
    Timestamp = "Timestamp";
    To = "To", b't';
    Unsupported = "Unsupported";
    UserAgent = "User-Agent";
    Via = "Via", b'v';
    Warning = "Warning";
    WwwAuthenticate = "WWW-Authenticate";
}

/// Hash of a name by length, first and last byte, case-folded.
#[inline]
const fn slot(name: &[u8]) -> usize {
    let first = (name[0] | 0x20) as usize;
    let last = (name[name.len() - 1] | 0x20) as usize;
    (name.len() * 31 + first * 7 + last * 13) & 255
}

/// Open-addressed table of the long names (load < 25 %).
static LOOKUP: [Option<(&str, HeaderName)>; 256] = {
    let mut t: [Option<(&str, HeaderName)>; 256] = [None; 256];
    let mut k = 0;
    while k < ALL.len() {
        let h = ALL[k];
        let mut i = slot(h.as_str().as_bytes());
        while t[i].is_some() {
            i = (i + 1) & 255;
        }
        t[i] = Some((h.as_str(), h));
        k += 1;
    }
    t
};

impl HeaderName {
    pub(crate) fn missing_reason(self) -> &'static str {
        match self {
            HeaderName::Via => "Missing Via",
            HeaderName::From => "Missing From",
            HeaderName::To => "Missing To",
            HeaderName::CallId => "Missing Call-ID",
            HeaderName::CSeq => "Missing CSeq",
            HeaderName::MaxForwards => "Missing Max-Forwards",
            _ => "Missing Header",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_long_name_is_found_in_any_case() {
        for &h in ALL {
            assert_eq!(HeaderName::from_bytes(h.as_str().as_bytes()), h);
            assert_eq!(
                HeaderName::from_bytes(h.as_str().to_uppercase().as_bytes()),
                h
            );
            assert_eq!(
                HeaderName::from_bytes(h.as_str().to_lowercase().as_bytes()),
                h
            );
        }
    }

    #[test]
    fn long_and_compact_forms_in_any_case() {
        assert_eq!(HeaderName::from_bytes(b"call-id"), HeaderName::CallId);
        assert_eq!(HeaderName::from_bytes(b"I"), HeaderName::CallId);
        assert_eq!(HeaderName::from_bytes(b"v"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"VIA"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"l"), HeaderName::ContentLength);
        assert_eq!(HeaderName::from_bytes(b"m"), HeaderName::Contact);
        assert_eq!(HeaderName::from_bytes(b"X-Foo"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b"q"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b""), HeaderName::Other);
        for c in b"abcdefijklmnorstuvxy" {
            assert_ne!(
                HeaderName::from_bytes(&[*c]),
                HeaderName::Other,
                "{}",
                *c as char
            );
        }
    }
}
