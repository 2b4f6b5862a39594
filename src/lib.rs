//! # sipis — SIP Instance Server
//!
//! sipis keeps mobile softphones reachable while their apps sleep: it
//! registers at each user's provider on the phone's behalf, wakes the phone
//! with a push when a call arrives, and relays the call to it.
//!
//! ```text
//!  UDP / TCP / TLS bytes
//!        │  sipis_parser::frame / parse     zero-copy, no allocation
//!        ▼
//!  engine (sans-IO)                          handle_*(now, ...) inputs
//!     timer wheel · transactions · digest    poll_*() outputs
//!     registrations · pending calls · relay
//!        ▼
//!  runtime (glommio shard per core)          sockets, clock, channels
//! ```
//!
//! Modules:
//! - `engine::wheel` — hierarchical timer wheel ([`TimerWheel`]): O(1)
//!   insert/cancel, every engine timer lives here.
//! - `engine::digest` — SIP digest authentication, client and server
//!   ([`digest`]).

mod engine;

pub use engine::wheel::{TimerHandle, TimerWheel};
pub use sipis_parser as parser;

/// Digest authentication (RFC 2617, RFC 7616, RFC 8760), both sides.
pub mod digest {
    pub use crate::engine::digest::*;
}
