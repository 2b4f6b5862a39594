//! # sipis-parser
//!
//! A zero-copy SIP (RFC 3261) parser and writer, the first stage of every
//! sipis shard.
//!
//! ```text
//!  datagram / stream bytes
//!        │  frame()            — stream framing: Partial / Ping / Pong / Message(n)
//!        ▼
//!  parse(buf, &mut headers)    — start line + header slices + body, no allocation
//!        │
//!        ▼
//!  Message<'h, 'a>             — typed accessors parse one header on demand:
//!        │                       top_via(), from(), to(), call_id(), cseq(),
//!        │                       contacts(), auth(), reasons(), ...
//!        ▼
//!  Writer / response_to()      — build the next message into a BytesMut,
//!                                copying headers with changes; Content-Length
//!                                is always computed
//! ```
//!
//! Design, after `httparse`: the caller passes the header array; results
//! borrow from the input; [`Frame::Partial`] means "need more bytes", not an
//! error; [`Error`] is a small `Copy` enum that knows the status code and
//! reason phrase to answer a bad request with. Headers are only located at
//! parse time (Kamailio's lazy model): the value of a header is parsed when
//! its accessor is called. No input makes the parser panic, loop or read out
//! of bounds; `parser/fuzz` holds the fuzz targets that check it.
//!
//! Within a header value, folded lines (RFC 3261 §7.3.1) are left in place
//! and read as white space by the accessors, so even folded messages are not
//! copied.
//!
//! ## Example
//!
//! ```
//! use sipis_parser::{parse, EMPTY_HEADER};
//!
//! let buf = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
//!     v: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n\
//!     Max-Forwards: 70\r\n\
//!     To: Bob <sip:bob@biloxi.example.com>\r\n\
//!     f: \"Alice\" <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
//!     i: a84b4c76e66710@pc33.atlanta.example.com\r\n\
//!     CSeq: 314159 INVITE\r\n\
//!     m: <sip:alice@pc33.atlanta.example.com>\r\n\
//!     Content-Length: 0\r\n\r\n";
//! let mut headers = [EMPTY_HEADER; 32];
//! let msg = parse(buf, &mut headers).unwrap();
//! msg.validate().unwrap();
//! assert_eq!(msg.from().unwrap().tag(), Some(&b"1928301774"[..]));
//! assert_eq!(msg.to().unwrap().tag(), None);
//! assert_eq!(msg.cseq().unwrap().seq, 314159);
//! let contact = msg.contacts().next().unwrap().unwrap();
//! assert_eq!(contact.addr().unwrap().uri.host_raw, b"pc33.atlanta.example.com");
//! ```

mod auth;
mod cseq;
mod error;
mod event;
mod header_name;
mod lex;
mod message;
mod method;
mod name_addr;
mod params;
mod reason;
mod stream;
mod uri;
mod via;
mod writer;

pub use auth::{Auth, AuthParam};
pub use cseq::CSeq;
pub use error::{Error, Result};
pub use event::{Event, FeatureCaps, Replaces, TokenList};
pub use header_name::HeaderName;
pub use lex::{percent_decode, unquote, CommaSplit};
pub use message::{parse, Header, Message, StartLine, EMPTY_HEADER};
pub use method::Method;
pub use name_addr::{is_push_param, Contact, NameAddr, PushParams};
pub use params::{Param, ParamIter, Params};
pub use reason::Reason;
pub use stream::{frame, Frame, Limits};
pub use uri::{Host, Scheme, Uri};
pub use via::{Via, BRANCH_MAGIC};
pub use writer::{
    put_ip, put_param, put_u32, response_to, write_name_addr, write_name_addr_with, write_uri,
    Writer,
};
