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
//! - `engine` — the sans-IO [`Engine`] of one shard: inputs `handle_*`
//!   with `now`, outputs `poll_*`; its module doc says how to drive it.
//! - `engine::wheel` — hierarchical timer wheel ([`TimerWheel`]): O(1)
//!   insert/cancel, every engine timer lives here.
//! - `engine::transaction` — RFC 3261 §17 client and server transactions
//!   ([`ClientTransaction`], [`ServerTransaction`]), timers A–K plus RFC
//!   6026's L and M, matching keys ([`TxKey`]).
//! - `engine::registration` — registration on behalf: digest, refresh
//!   before expiry, back-off, 423, persisted Call-ID/CSeq.
//! - `engine::digest` — SIP digest authentication, client and server
//!   ([`digest`]).

pub mod config;
mod engine;
pub mod http;
pub mod metrics;
pub mod runtime;
pub mod store;

pub use engine::registration::{
    AccountConfig, AccountId, AccountSecret, RegError, RegStatus, Registrar, RegistrationConfig,
    SavedRegistration,
};
pub use engine::transaction::{
    ClientEvent, ClientState, ClientTransaction, Kind, Pass, ServerEvent, ServerState,
    ServerTransaction, TimerConfig, TxKey, TxTimer,
};
pub use engine::wheel::{TimerHandle, TimerWheel};
pub use engine::{Engine, EngineConfig, Event, Flow, Stats, Transmit};
pub use sipis_parser as parser;

/// Digest authentication (RFC 2617, RFC 7616, RFC 8760), both sides.
pub mod digest {
    pub use crate::engine::digest::*;
}
