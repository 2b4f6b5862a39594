//! SIP methods (RFC 3261 §7.1 and the extensions sipis relays).

use crate::{lex, Error, Result};
use core::fmt;

/// A request method. The ones sipis acts on are variants; any other token is
/// kept as [`Method::Extension`] so it can be relayed unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method<'a> {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Prack,
    Update,
    Info,
    Message,
    Notify,
    Subscribe,
    Refer,
    Publish,
    /// Any other token; methods are case-sensitive (RFC 3261 §7.1).
    Extension(&'a str),
}

impl<'a> Method<'a> {
    /// Parses a method token. Methods are case-sensitive, so `invite` is an
    /// extension method, not INVITE.
    pub fn parse(s: &'a [u8]) -> Result<Method<'a>> {
        Ok(match s {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"REGISTER" => Method::Register,
            b"OPTIONS" => Method::Options,
            b"PRACK" => Method::Prack,
            b"UPDATE" => Method::Update,
            b"INFO" => Method::Info,
            b"MESSAGE" => Method::Message,
            b"NOTIFY" => Method::Notify,
            b"SUBSCRIBE" => Method::Subscribe,
            b"REFER" => Method::Refer,
            b"PUBLISH" => Method::Publish,
            _ => Method::Extension(lex::token_str(s).map_err(|_| Error::Method)?),
        })
    }

    /// The method's name as it goes on the wire.
    pub fn as_str(&self) -> &'a str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Prack => "PRACK",
            Method::Update => "UPDATE",
            Method::Info => "INFO",
            Method::Message => "MESSAGE",
            Method::Notify => "NOTIFY",
            Method::Subscribe => "SUBSCRIBE",
            Method::Refer => "REFER",
            Method::Publish => "PUBLISH",
            Method::Extension(s) => s,
        }
    }
}

impl fmt::Display for Method<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_case_sensitive() {
        assert_eq!(Method::parse(b"INVITE"), Ok(Method::Invite));
        assert_eq!(Method::parse(b"invite"), Ok(Method::Extension("invite")));
        assert_eq!(Method::parse(b"NEWMETHOD").unwrap().as_str(), "NEWMETHOD");
        assert_eq!(Method::parse(b"IN VITE"), Err(Error::Method));
        assert_eq!(Method::parse(b""), Err(Error::Method));
    }
}
