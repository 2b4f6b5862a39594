//! # sipis — SIP Instance Server
//!
//! sipis keeps mobile softphones reachable while their apps sleep: it
//! registers at each user's provider on the phone's behalf, wakes the phone
//! with a push when a call arrives, and relays the call to it.
//!
//! ```text
//!  provider ──UDP──▶ shard i socket (sip_port+1+i)     phones ──UDP──▶ shared sip_port
//!                          │                                 │ (SO_REUSEPORT; runtime::Router
//!                          │                                 │  forwards to the owner over the mesh)
//!                          ▼                                 ▼
//!  runtime: one glommio executor per core ─ feeds bytes + now into ─┐
//!                                                                   ▼
//!  engine (sans-IO): sipis_parser::parse → transactions → registrations
//!                    timer wheel · digest        outputs: poll_transmit / poll_event
//!                          │ events                         │
//!                          ▼                                ▼
//!  store thread (SQLite | PostgreSQL)            sockets (io_uring)
//!       ▲
//!  admin API (http) ── provisioning ──▶ runtime::Shards (control channels)
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
//! - [`runtime`] — glommio shards, their sockets and control channels, the
//!   shared-port router, `serve`.
//! - [`store`] — durable state: SQLite and PostgreSQL backends behind one
//!   trait, the store thread shards talk to, CSV import.
//! - [`http`] — the admin API (provisioning, health, metrics) on httparse.
//! - [`metrics`] — Prometheus text exposition helpers.
//! - [`config`] — the TOML configuration and its checks.

pub mod config;
mod engine;
pub mod http;
pub mod metrics;
pub mod push;
pub mod runtime;
pub mod store;

pub use engine::call::{CallConfig, CallLatency, Outcome};
pub use engine::phone::DeviceInfo;
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
