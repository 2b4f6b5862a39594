//! The engine's tunables: [`EngineConfig`] for a shard, [`CallConfig`]
//! for incoming calls and the phones' registrar.

use crate::registration::RegistrationConfig;
use crate::transaction::TimerConfig;
use std::time::Duration;

/// Engine tunables.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// RFC 3261 T1, T2, T4.
    pub timers: TimerConfig,
    /// Via sent-by of this shard's socket, `host:port`.
    pub via: String,
    /// Public `host:port` written in Contacts (what the provider reaches).
    pub contact_host: String,
    /// Most REGISTERs this shard sends per second (new cycles, refreshes,
    /// retries and challenge answers alike), so a restart with 100 000
    /// accounts does not flood the provider.
    pub register_rate: u32,
    /// REGISTERs that may go out back to back before the rate applies.
    pub register_burst: u32,
    pub registration: RegistrationConfig,
    /// Seed of the engine's PRNG when no `key` is given (simulations:
    /// reproducible, and predictable to whoever knows it).
    pub seed: u64,
    /// 32 bytes from the OS keying the engine's CSPRNG (branches, tags,
    /// Call-IDs, push ids, the phones' nonce key). The shell sets it.
    pub key: Option<crate::rng::RngKey>,
    /// Public `host:port` of the phones' (shared) port, written in the
    /// Contact of requests to phones.
    pub phone_contact_host: String,
    /// Public `host:port` of the TCP and TLS listeners (phones' side),
    /// written in the Via and Contact of what sipis sends over a phone's
    /// connection.
    pub tcp_host: String,
    pub tls_host: String,
    /// Incoming calls and the phones' registrar.
    pub calls: CallConfig,
    /// Most server transactions in flight on this shard: past it a new
    /// request gets `503` + `Retry-After`, statelessly, and is counted.
    pub max_server_transactions: usize,
    /// Most client transactions in flight on this shard: past it REGISTERs
    /// wait in their queue.
    pub max_client_transactions: usize,
    /// This shard's index: every branch it writes ends in `-s<shard>`, so
    /// a response that reaches the shared phone port finds its shard.
    pub shard: u16,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            timers: TimerConfig::default(),
            via: "127.0.0.1:5060".into(),
            contact_host: "127.0.0.1:5060".into(),
            register_rate: 200,
            register_burst: 10,
            registration: RegistrationConfig::default(),
            seed: 0x5151_5151,
            key: None,
            phone_contact_host: "127.0.0.1:5060".into(),
            tcp_host: "127.0.0.1:5060".into(),
            tls_host: "127.0.0.1:5061".into(),
            calls: CallConfig::default(),
            max_server_transactions: 50_000,
            max_client_transactions: 50_000,
            shard: 0,
        }
    }
}

/// `[calls]`: how incoming calls and phones are handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallConfig {
    /// How long a call waits for a device to wake and connect before the
    /// caller gets `480` (30 s; Acrobits uses 120 s).
    pub device_wait: Duration,
    /// How long each pushed call's outcome is kept for a device that wakes
    /// late (the late wake, in the module doc).
    pub late_wake_window: Duration,
    /// CANCEL a leg this long after its INVITE if the phone sent no
    /// provisional answer by then — over a stream only: over UDP the
    /// CANCEL waits for a provisional answer (RFC 3261 §9.1).
    pub late_wake_guard: Duration,
    /// Send `X-Sipis-Push-Status: Push-Notification-Sent` in the 180.
    pub push_status_header: bool,
    /// Digest realm phones authenticate in (accounts with a password; an
    /// HA1 account's realm is its AOR's host).
    pub phone_realm: String,
    /// Binding lifetimes granted to phones (RFC 3261 §10.3: 423 below min).
    pub phone_min_expires: u32,
    pub phone_max_expires: u32,
    /// `+sip.pnsreg` in Feature-Caps: seconds before expiry a push-woken
    /// phone should refresh (RFC 8599 §4.1.2).
    pub pnsreg: u32,
    /// The digest algorithms phones are challenged with, one
    /// `WWW-Authenticate` each, in this order (RFC 8760 §2.4: most
    /// preferred first). MD5 alone by default: a libre-based client
    /// (baresip) abandons a 401 that lists SHA-256 beside MD5.
    pub phone_digest_algorithms: Vec<crate::digest::Algorithm>,
    /// Most calls in the pending-call map of a shard (waiting, up, or kept
    /// for the late wake): past it a new INVITE gets `503` + `Retry-After`.
    pub max_calls: usize,
    /// How password guessing by phones is slowed.
    pub guard: crate::guard::GuardConfig,
    /// RFC 5626 §4.4.1 / §5.4: the `Flow-Timer` sent in the 2xx of an
    /// outbound REGISTER over TCP/TLS — the longest a phone may stay
    /// silent (no CRLF keep-alive, no request) on its flow. The shell must
    /// not close a registered connection idle for less than this (120 s,
    /// the RFC's recommended default for connection-oriented transports).
    pub flow_timer: Duration,
    /// How long a device reached over its open TCP/TLS flow (INVITEd at
    /// once, not pushed) may take to answer provisionally before it is
    /// pushed after all: a mobile OS may freeze an app while its
    /// connection stays open, and only a push thaws it (2 s).
    pub stream_answer_wait: Duration,
}

impl Default for CallConfig {
    fn default() -> Self {
        CallConfig {
            device_wait: Duration::from_secs(30),
            late_wake_window: Duration::from_secs(15),
            late_wake_guard: Duration::from_secs(1),
            push_status_header: true,
            phone_realm: "sipis".into(),
            phone_min_expires: 60,
            phone_max_expires: 3600,
            pnsreg: 121,
            phone_digest_algorithms: vec![crate::digest::Algorithm::Md5],
            max_calls: 20_000,
            guard: crate::guard::GuardConfig::default(),
            flow_timer: Duration::from_secs(120),
            stream_answer_wait: Duration::from_secs(2),
        }
    }
}
