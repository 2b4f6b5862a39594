//! What the engine hands the shell: messages to send ([`Transmit`], over a
//! [`Flow`]), things to persist or count ([`Event`], [`Stats`]).

use crate::outcome::Outcome;
use crate::registration::{AccountId, RegStatus, SavedRegistration};
use bytes::Bytes;
use sipis_parser as parser;
use std::net::SocketAddr;
use std::time::Instant;

/// How a message arrived or must leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    /// This shard's UDP socket (upstream: the provider's side).
    Udp,
    /// The public UDP port shared by all shards (phones' side): replies
    /// leave from that port so they pass the phone's NAT.
    SharedUdp,
    /// A TCP connection of the front, by its id (which names the shard
    /// holding its socket: see the server's front).
    Tcp(u64),
    /// A TLS connection of the front, by its id.
    Tls(u64),
}

impl Flow {
    /// A connection (TCP or TLS): reliable, ordered, and the way back to a
    /// phone behind NAT (RFC 5626 §5.3, RFC 5923).
    pub fn is_stream(self) -> bool {
        matches!(self, Flow::Tcp(_) | Flow::Tls(_))
    }

    /// The connection's id, for a stream.
    pub fn conn(self) -> Option<u64> {
        match self {
            Flow::Tcp(id) | Flow::Tls(id) => Some(id),
            Flow::Udp | Flow::SharedUdp => None,
        }
    }

    /// The Via transport token (RFC 3261 §18.2.1, §20.42; RFC 5630 §3).
    pub fn transport(self) -> &'static str {
        match self {
            Flow::Udp | Flow::SharedUdp => "UDP",
            Flow::Tcp(_) => "TCP",
            Flow::Tls(_) => "TLS",
        }
    }
}

/// A message for the shell to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dest: SocketAddr,
    pub flow: Flow,
    pub payload: Bytes,
}

/// Things the shell should know about: for the store and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An account's registration changed state.
    Registration {
        account: AccountId,
        status: RegStatus,
    },
    /// Persist this (sent with every REGISTER: the CSeq moved).
    SaveRegistration {
        account: AccountId,
        saved: SavedRegistration,
    },
    /// A datagram could not be parsed (counted, answered 400 when possible).
    ParseError {
        from: SocketAddr,
        error: parser::Error,
    },
    /// A phone registered a push device (or moved its token): persist it.
    DeviceSaved {
        account: AccountId,
        device: String,
        provider: String,
        prid: String,
        param: Option<String>,
    },
    /// A phone's REGISTER was refused: wrong credentials (the shell logs
    /// these, rate-limited, with the source address).
    AuthFailed {
        source: std::net::IpAddr,
        /// The AOR it tried (`user@host`), known to sipis or not.
        aor: String,
    },
    /// A source guessing passwords is refused for a while (logged once per
    /// block, fail2ban-style, by the shell).
    AuthBlocked {
        source: std::net::IpAddr,
        /// The AOR it was guessing (`user@host`), known to sipis or not.
        aor: String,
        failures: u32,
        pause: std::time::Duration,
        /// Refused for every AOR, not only this one.
        whole_source: bool,
    },
    /// A device is gone (explicit unregister, or its token is dead).
    DeviceRemoved { account: AccountId, device: String },
    /// A device's SIP binding now lives on this connection (created on it,
    /// or moved to it from another flow; a refresh over the same flow says
    /// nothing): the connection carries a registration, so the shell keeps
    /// it open past the idle timeout of unregistered connections. Only
    /// stream flows ([`Flow::is_stream`]) are reported.
    FlowBound { flow: Flow },
    /// A registrar stopped answering (a REGISTER timed out, its transport
    /// failed, or it answered 5xx): the `accounts` registered there no
    /// longer count as registered; it is probed with OPTIONS.
    RegistrarDown {
        addr: SocketAddr,
        error: crate::registration::RegError,
        accounts: usize,
    },
    /// A registrar that was down answered again: the `accounts` bound there
    /// register again now, at the REGISTER rate.
    RegistrarUp {
        addr: SocketAddr,
        down_for: std::time::Duration,
        accounts: usize,
    },
    /// Open a connection to a registrar or proxy for `flow` (a TCP or TLS
    /// flow the engine chose the id of): the shell connects to `dest` and
    /// sends what the engine writes to `flow` over it once up; messages
    /// arriving on it carry `flow`. Over TLS the server's certificate must
    /// name `server_name` (else `dest`'s IP). If the connection cannot be
    /// made or breaks, the shell calls `handle_flow_closed`.
    Connect {
        flow: Flow,
        dest: SocketAddr,
        server_name: Option<String>,
    },
    /// A call's outcome is decided: one durable row per call.
    CallOutcome {
        account: AccountId,
        call_id: String,
        caller: String,
        outcome: Outcome,
        reason: Option<String>,
        started: Instant,
        ended: Instant,
    },
}

/// Counters for `/metrics`; monotonic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub datagrams: u64,
    /// CRLF keep-alives received (not counted as parse errors).
    pub keepalives: u64,
    /// Requests refused with 503 because a table was full (server
    /// transactions, pending calls).
    pub overloaded: u64,
    /// OPTIONS answered without a transaction.
    pub options: u64,
    pub parse_errors: u64,
    pub registers_sent: u64,
    pub register_ok: u64,
    pub register_failed: u64,
    pub client_tx_timeouts: u64,
    pub server_tx: u64,
    pub stray_responses: u64,
    /// REGISTERs from phones (all, challenged ones included).
    pub phone_registers: u64,
    /// Blocks of a password-guessing source, and REGISTERs refused while
    /// their source was blocked.
    pub auth_blocks: u64,
    pub auth_blocked_refusals: u64,
    /// Phone REGISTERs refused with 403 (wrong credentials).
    pub phone_auth_failures: u64,
    /// INVITEs that started a call.
    pub calls: u64,
    pub calls_answered: u64,
    /// Calls that ended without an answer (no response, caller hung up,
    /// no device reachable).
    pub calls_missed: u64,
    /// Pushes handed to the mediator.
    pub pushes_requested: u64,
    pub pushes_sent: u64,
    pub pushes_failed: u64,
    pub pushes_token_dead: u64,
    /// Late-wake INVITEs sent, and those completed with CANCEL + 487.
    pub late_wakes: u64,
    pub late_wakes_completed: u64,
    /// Registrars that stopped answering, and came back.
    pub registrar_outages: u64,
    pub registrar_recoveries: u64,
    /// OPTIONS probes sent to registrars.
    pub registrar_probes: u64,
    /// Devices with an open TCP/TLS flow pushed during a call after all:
    /// their INVITE got no provisional answer within
    /// [`CallConfig::stream_answer_wait`](crate::CallConfig) (a frozen
    /// app), or their connection closed before they answered.
    pub stream_wakes: u64,
    /// TCP/TLS flows reported closed, and the SIP bindings that went with
    /// them.
    pub flows_closed: u64,
    pub flow_bindings_dropped: u64,
}
