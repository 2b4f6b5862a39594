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
//!  engine (sans-IO): sipis_parser::parse → transactions → registrations (upstream)
//!                    phone registrar · pending calls · relay · late wake
//!                    timer wheel · digest
//!                    outputs: poll_transmit / poll_event / poll_push
//!                          │ events          │ pushes                │ packets
//!                          ▼                 ▼                       ▼
//!  store thread (SQLite | PostgreSQL)   push client ──HTTP/1.1 pool──▶ mediator ──HTTP/2──▶ APNs / FCM
//!       ▲                                 (or a direct call, in process)
//!       │                               outcomes ──▶ wake the account's shard   sockets (io_uring)
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
//! - `engine::phone` — the phones' registrar: digest with the account's
//!   credentials, RFC 8599 push devices, SIP bindings.
//! - `engine::call` — incoming calls: the pending-call map, pushes, legs to
//!   woken devices, endings, the late wake (DESIGN §1.3–1.4).
//! - `engine::relay` — the B2BUA relay of in-dialog requests, CANCEL and
//!   the ACK of a 2xx between the caller's leg and a phone's.
//! - [`runtime`] — glommio shards, their sockets and control channels, the
//!   shared-port router, `serve`.
//! - [`store`] — durable state: SQLite and PostgreSQL backends behind one
//!   trait, the store thread shards talk to, CSV import.
//! - [`push`] — the unified push protocol (JSON to the mediator); its
//!   `client` keeps thousands of pushes in flight over a pool of HTTP/1.1
//!   keep-alive connections, or calls the in-process mediator directly
//!   ([`push::client::PushClient`]); its `mediator` speaks APNs (HTTP/2,
//!   ES256 provider tokens) and FCM HTTP v1 (OAuth2).
//! - [`http`] — the admin API (provisioning, health, metrics) on httparse.
//! - [`metrics`] — Prometheus text exposition helpers.
//! - [`config`] — the TOML configuration and its checks.
//! - `duration` — durations as written in settings and messages (`"1m30s"`).
//! - `url` — HTTP URLs in settings: usable or not, shown without password.

pub mod config;
mod duration;
mod engine;
pub mod http;
pub mod metrics;
pub mod push;
pub mod runtime;
pub mod store;
mod url;

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
