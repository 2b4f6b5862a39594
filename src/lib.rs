//! # sipis — SIP Instance Server
//!
//! sipis keeps mobile softphones reachable while their apps sleep: it
//! registers at each user's provider on the phone's behalf, wakes the phone
//! with a push when a call arrives, and relays the call to it.
//!
//! ```text
//!  provider ──UDP──▶ shard i socket (sip_port+1+i)     phones ──UDP──▶ shared sip_port
//!  (TCP/TLS: a connection per shard, opened by sipis)   phones ──TCP/TLS──▶ the front (every shard)
//!                          │                                 │ (SO_REUSEPORT; runtime::Router
//!                          │                                 │  forwards to the owner over the mesh;
//!                          │                                 │  answers go back by the same flow)
//!                          ▼                                 ▼
//!  runtime: one glommio executor per core ─ feeds bytes + now into ─┐
//!                                                                   ▼
//!  engine (sans-IO): sipis_parser::parse → transactions → registrations (upstream)
//!                    phone registrar · pending calls · relay · late wake
//!                    timer wheel · digest
//!                    outputs: poll_transmit / poll_event / poll_push (domain Push)
//!                          │ events          │ pushes                │ packets
//!                          ▼                 ▼                       ▼
//!  store thread (SQLite | PostgreSQL)   push client ──HTTP/1.1 pool──▶ mediator ──HTTP/2──▶ APNs / FCM
//!       ▲                                 (or a direct call, in process)
//!       │                               outcomes ──▶ wake the account's shard   sockets (io_uring)
//!  admin API (http) ── provisioning ──▶ runtime::Shards (control channels)
//! ```
//!
//! Crates and modules:
//! - [`sipis_engine`] (re-exported as [`engine`]) — the sans-IO
//!   [`Engine`] of one shard: transactions, registration on behalf, the
//!   phones' registrar, pending calls, relay, late wake, timer wheel,
//!   digest. Inputs `handle_*` with `now`, outputs `poll_*`; its crate doc
//!   draws its data flow and names each part. It depends on the parser and
//!   nothing that does I/O.
//! - [`parser`] (`sipis-parser`) — the zero-copy SIP parser and writer.
//! - [`runtime`] — glommio shards, their sockets and control channels, the
//!   shared-port router, the TCP/TLS front (`runtime::front`), RFC 3263
//!   resolution, `serve`.
//! - [`store`] — durable state: SQLite and PostgreSQL backends behind one
//!   trait, the store thread shards talk to, CSV import.
//! - [`push`] — the unified push protocol (JSON to the mediator): the wire
//!   form of the engine's [`engine::Push`]; its `client` keeps thousands of
//!   pushes in flight over a pool of HTTP/1.1 keep-alive connections, or
//!   calls the in-process mediator directly ([`push::client::PushClient`]);
//!   its `mediator` speaks APNs (HTTP/2, ES256 provider tokens) and FCM
//!   HTTP v1 (OAuth2).
//! - [`http`] — the admin API (provisioning, health, metrics) on httparse.
//! - [`metrics`] — Prometheus text exposition helpers.
//! - [`config`] — the TOML configuration and its checks.
//! - `duration` — durations as written in settings and messages (`"1m30s"`).
//! - `url` — HTTP URLs in settings: usable or not, shown without password.

pub mod config;
mod duration;
pub mod http;
pub mod metrics;
pub mod push;
pub mod runtime;
pub mod store;
mod url;

pub use sipis_engine as engine;
pub use sipis_engine::{
    digest, AccountConfig, AccountId, AccountSecret, CallConfig, CallLatency, ClientEvent,
    ClientState, ClientTransaction, DeviceInfo, Engine, EngineConfig, Event, Flow, Kind, Outcome,
    Pass, RegError, RegStatus, Registrar, RegistrationConfig, SavedRegistration, ServerEvent,
    ServerState, ServerTransaction, Stats, TimerConfig, TimerHandle, TimerWheel, Transmit, TxKey,
    TxTimer,
};
pub use sipis_parser as parser;

/// This build's version (`Cargo.toml`), as `/health` and
/// `sipis_build_info` report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
