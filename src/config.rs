//! The operator's configuration: one TOML file, `/etc/sipis/sipis.toml` by
//! default. `tuning/sipis.toml` is the documented example with every key and
//! its default.
//!
//! ```text
//!  text ──toml──▶ table ──schema walk──▶ serde (deny_unknown_fields) ──▶ per-key
//!                        unknown keys,                                   conversion
//!                        with "did you mean"                             and ranges
//!                                                              ──▶ cross-key checks ──▶ Config
//! ```
//!
//! Loading reports **every** problem it finds, not just the first, and each
//! one names its key: `sip.t1: "0ms" must be at least 1ms`,
//! `unknown key "registar" in [sip] (did you mean "registrar"?)`. The raw
//! section structs below are the schema: serde lists their fields, which is
//! what unknown keys are checked (and suggestions drawn) against, so a key
//! added there is known everywhere at once. Their fields are loose
//! [`toml::Value`]s on purpose: the conversion then says *which* key holds
//! a wrong value and what was expected, and goes on to the next key.
//!
//! Durations are strings such as `"500ms"`, `"32s"`, `"5m"`, `"1h"` (parts
//! may be combined: `"1m30s"`), or bare integers of **milliseconds**.
//!
//! Sections may nest one level (`[mediator.apns]`, `[mediator.fcm]`): the
//! walk checks their keys the same way, and a missing key the subsection
//! needs is reported by its dotted name.
//!
//! [`Config::check`] goes further and looks at the files the configuration
//! names (TLS files, token file, data directory, APNs key, FCM service
//! account); `sipis check-config` runs both without starting anything.
//! `push.token_file` and `mediator.token_file` are the exception: they are
//! read while loading, because [`PushConfig`] and [`MediatorConfig`] carry
//! the token itself (the push client and the mediator get it ready to use).

use crate::digest;
pub use crate::duration::{format_duration, parse_duration};
use crate::push::client::PushConfig;
use crate::push::mediator::{ApnsConfig, FcmConfig, MediatorConfig};
use crate::url::valid_hostname;
pub use crate::url::{http_url_problem, redact_url};
use crate::{CallConfig, EngineConfig, RegistrationConfig, TimerConfig};
use serde::de::{self, Deserialize, Deserializer, Visitor};
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where `sipis serve` and the account commands look without `--config`.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sipis/sipis.toml";
/// Most shards a node runs.
pub const MAX_SHARDS: usize = 256;
/// Shortest admin bearer token accepted.
pub const MIN_TOKEN_LEN: usize = 16;
/// File name of the embedded store inside `server.data_dir`.
pub const EMBEDDED_DB_FILE: &str = "sipis.db";

// ---------------------------------------------------------------------------
// The typed configuration
// ---------------------------------------------------------------------------

/// Every setting of a sipis node, validated.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Config {
    pub server: ServerConfig,
    pub sip: SipConfig,
    /// `[calls]`: incoming calls, phones' registrations, late wake.
    pub calls: CallConfig,
    /// `[push]`: the push client's mediator and limits.
    pub push: PushConfig,
    /// `[mediator]`, `[mediator.apns]`, `[mediator.fcm]`.
    pub mediator: MediatorConfig,
    pub store: StoreConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    /// `[tcp]`: the phones' TCP listener and the limits of every
    /// connection (TCP and TLS).
    pub tcp: TcpConfig,
    /// `[tls]`: the phones' TLS listener.
    pub tls: SipTlsConfig,
    /// `[dns]`: RFC 3263 resolution of registrars and outbound proxies.
    pub dns: DnsConfig,
}

/// `[dns]`: how registrars and outbound proxies are resolved (RFC 3263:
/// NAPTR, SRV, A/AAAA) and how long the answers are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers to ask; empty: those of `/etc/resolv.conf`.
    pub servers: Vec<SocketAddr>,
    /// How long one query waits for an answer.
    pub timeout: Duration,
    /// How many times a query is sent before it fails.
    pub attempts: u32,
    /// Shortest time an answer is kept (a lower TTL is raised to it): at
    /// most one lookup per registrar host per `min_ttl`.
    pub min_ttl: Duration,
    /// Longest time an answer is kept (a higher TTL is lowered to it).
    pub max_ttl: Duration,
    /// How soon a lookup that failed is tried again (an account whose
    /// registrar never resolved starts when it does; one that did keeps
    /// its last targets meanwhile).
    pub retry: Duration,
    /// How long an account stays at a later target after the first failed
    /// before a refresh tries the first again.
    pub failback: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            timeout: Duration::from_secs(2),
            attempts: 2,
            min_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(3600),
            retry: Duration::from_secs(30),
            failback: RegistrationConfig::default().failback,
        }
    }
}

/// `[tcp]`: the TCP listener and connection limits (the front's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    /// Listen for phones over TCP.
    pub enabled: bool,
    /// Its port; `None`: `server.sip_port`.
    pub port: Option<u16>,
    pub limits: crate::runtime::front::ConnLimits,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            enabled: true,
            port: None,
            limits: Default::default(),
        }
    }
}

/// `[tls]`: the TLS listener, on when a certificate and key are given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipTlsConfig {
    pub port: u16,
    pub files: Option<crate::runtime::front::TlsSettings>,
    /// A CA (PEM) trusted beside the public roots when sipis connects to a
    /// registrar or proxy over TLS.
    pub upstream_ca: Option<PathBuf>,
}

impl Default for SipTlsConfig {
    fn default() -> Self {
        SipTlsConfig {
            port: 5061,
            files: None,
            upstream_ca: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // MediatorConfig keeps its bearer token as a plain string (its
        // derived Debug would print it): mask it on a copy, which stays
        // right when the mediator's settings grow.
        let mut mediator = self.mediator.clone();
        if mediator.token.is_some() {
            mediator.token = Some("<redacted>".to_owned());
        }
        f.debug_struct("Config")
            .field("server", &self.server)
            .field("sip", &self.sip)
            .field("calls", &self.calls)
            .field("push", &self.push)
            .field("mediator", &mediator)
            .field("store", &self.store)
            .field("admin", &self.admin)
            .field("log", &self.log)
            .field("tcp", &self.tcp)
            .field("tls", &self.tls)
            .field("dns", &self.dns)
            .finish()
    }
}

/// `[server]`: sockets, shards, data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Host or IP written in Via and Contact (without a port: each shard
    /// appends its own). `None`: the bind address, which must then be
    /// specific.
    pub public_host: Option<String>,
    /// Address every SIP socket binds to.
    pub bind: IpAddr,
    /// The phones' port, shared by all shards (SO_REUSEPORT); shard `i`
    /// also listens on `sip_port + 1 + i` for its upstream traffic.
    pub sip_port: u16,
    pub shards: Shards,
    /// Where the embedded store and other local state live.
    pub data_dir: PathBuf,
    /// Send `Expires: 0` for every registration on a graceful shutdown.
    pub unregister_on_shutdown: bool,
    /// The longest a graceful shutdown takes (unregistrations answered,
    /// store flushed).
    pub shutdown_timeout: Duration,
    /// Largest SIP message accepted, in bytes.
    pub max_message_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            public_host: None,
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            sip_port: 5060,
            shards: Shards::Auto,
            data_dir: PathBuf::from("/var/lib/sipis"),
            unregister_on_shutdown: false,
            shutdown_timeout: Duration::from_secs(20),
            max_message_bytes: 65535,
        }
    }
}

/// How many shards (one per core) a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shards {
    /// One per available core ([`std::thread::available_parallelism`]),
    /// at most [`MAX_SHARDS`].
    #[default]
    Auto,
    /// Exactly this many, 1..=[`MAX_SHARDS`].
    Count(u16),
}

/// `[sip]`: protocol timers and registration on behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipConfig {
    /// RFC 3261 T1: RTT estimate, the first retransmit interval.
    pub t1: Duration,
    /// RFC 3261 T2: longest retransmit interval (non-INVITE, INVITE responses).
    pub t2: Duration,
    /// RFC 3261 T4: longest time a message stays in the network.
    pub t4: Duration,
    /// REGISTERs per second, per shard.
    pub register_rate: u32,
    /// REGISTERs that may leave back to back before the rate applies.
    pub register_burst: u32,
    /// First back-off delay after a failed registration.
    pub retry_base: Duration,
    /// Longest back-off delay.
    pub retry_max: Duration,
    /// `User-Agent` of the REGISTERs sipis sends.
    pub user_agent: String,
    /// Binding lifetime (seconds) of accounts provisioned without one.
    pub default_expires: u32,
    /// Most transactions in flight per shard, server and client each.
    pub max_transactions: usize,
    /// How often a registrar that stopped answering is probed (OPTIONS).
    pub registrar_probe: Duration,
    /// OPTIONS keep-alive to registrars while they answer; `None`: off.
    pub registrar_keepalive: Option<Duration>,
}

impl Default for SipConfig {
    fn default() -> Self {
        let timers = TimerConfig::default();
        let reg = RegistrationConfig::default();
        let engine = EngineConfig::default();
        SipConfig {
            t1: timers.t1,
            t2: timers.t2,
            t4: timers.t4,
            register_rate: engine.register_rate,
            register_burst: engine.register_burst,
            retry_base: reg.retry_base,
            retry_max: reg.retry_max,
            user_agent: reg.user_agent,
            default_expires: 3600,
            max_transactions: engine.max_server_transactions,
            registrar_probe: reg.probe_interval,
            registrar_keepalive: reg.keepalive,
        }
    }
}

/// `[store]`: where accounts, devices and registration state are kept.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// SQLite in a file: `path`, else `<server.data_dir>/sipis.db`.
    Embedded { path: Option<PathBuf> },
    /// PostgreSQL at `url` (`postgres://user@host/db`).
    Postgres { url: String },
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Embedded { path: None }
    }
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreConfig::Embedded { path } => {
                f.debug_struct("Embedded").field("path", path).finish()
            }
            StoreConfig::Postgres { url } => f
                .debug_struct("Postgres")
                .field("url", &redact_url(url))
                .finish(),
        }
    }
}

/// `[admin]`: the HTTP admin API (provisioning, health, metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: AdminToken,
    /// HTTPS when set.
    pub tls: Option<TlsFiles>,
    /// Concurrent admin connections; more wait in the kernel's backlog.
    pub max_connections: u32,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080),
            token: AdminToken::None,
            tls: None,
            max_connections: 64,
        }
    }
}

/// The admin API's bearer token.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum AdminToken {
    /// No token: only allowed when the API listens on loopback.
    #[default]
    None,
    /// `admin.token`, given in the file.
    Inline(String),
    /// `admin.token_file`: read at start (surrounding whitespace trimmed).
    File(PathBuf),
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminToken::None => f.write_str("None"),
            AdminToken::Inline(_) => f.write_str("Inline(<redacted>)"),
            AdminToken::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

/// `admin.tls_cert` and `admin.tls_key`: PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[log]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogConfig {
    pub level: LogLevel,
    pub format: LogFormat,
}

/// `log.level`: the least severe level written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    const NAMES: &'static [&'static str] = &["trace", "debug", "info", "warn", "error"];
    const ALL: [LogLevel; 5] = [
        LogLevel::Trace,
        LogLevel::Debug,
        LogLevel::Info,
        LogLevel::Warn,
        LogLevel::Error,
    ];

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    const NAMES: &'static [&'static str] = &["text", "json"];

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// What is wrong with a configuration. Each variant but [`Syntax`],
/// [`Read`] and [`Several`] names its key ([`ConfigError::key`]).
///
/// [`Syntax`]: ConfigError::Syntax
/// [`Read`]: ConfigError::Read
/// [`Several`]: ConfigError::Several
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    Read { path: PathBuf, error: io::Error },
    /// Not TOML; toml's message gives line and column.
    Syntax(String),
    /// A section the configuration does not have.
    UnknownSection {
        name: String,
        /// The closest known section, if one is close.
        suggestion: Option<String>,
    },
    /// A key its section does not have (`section` is empty at the top level).
    UnknownKey {
        section: String,
        key: String,
        /// What the operator probably meant, in words.
        hint: Option<String>,
    },
    /// A value that is wrong by itself or together with another key.
    Invalid { key: String, message: String },
    /// Every problem found, in file order of sections.
    Several(Vec<ConfigError>),
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// The dotted key (or section name) the problem is about.
    pub fn key(&self) -> Option<String> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key.clone()),
            ConfigError::UnknownKey { section, key, .. } if section.is_empty() => Some(key.clone()),
            ConfigError::UnknownKey { section, key, .. } => Some(format!("{section}.{key}")),
            ConfigError::UnknownSection { name, .. } => Some(name.clone()),
            _ => None,
        }
    }

    /// Every single problem (a [`ConfigError::Several`] flattened).
    pub fn problems(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Several(all) => all.iter().flat_map(ConfigError::problems).collect(),
            one => vec![one],
        }
    }

    /// `Ok` if there is no error, the error itself if one, else `Several`.
    fn from_list(mut errors: Vec<ConfigError>) -> Result<(), ConfigError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.pop().expect("one error")),
            _ => Err(ConfigError::Several(errors)),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, error } => {
                write!(f, "cannot read {}: {error}", path.display())
            }
            ConfigError::Syntax(msg) => write!(f, "not valid TOML: {}", msg.trim_end()),
            ConfigError::UnknownSection { name, suggestion } => {
                write!(f, "unknown section [{name}]")?;
                match suggestion {
                    Some(s) => write!(f, " (did you mean [{s}]?)"),
                    None => write!(f, " (sections: {})", list_sections()),
                }
            }
            ConfigError::UnknownKey { section, key, hint } => {
                if section.is_empty() {
                    write!(f, "unknown key {key:?} at the top level")?;
                } else {
                    write!(f, "unknown key {key:?} in [{section}]")?;
                }
                match hint {
                    Some(h) => write!(f, " ({h})"),
                    None => Ok(()),
                }
            }
            ConfigError::Invalid { key, message } => write!(f, "{key}: {message}"),
            ConfigError::Several(all) => {
                for (i, e) in all.iter().enumerate() {
                    if i > 0 {
                        f.write_str("\n")?;
                    }
                    e.fmt(f)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { error, .. } => Some(error),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Config::from_toml_str(&text)
    }

    /// Parses and validates a configuration; keys left out take their
    /// defaults. Every problem found is reported (as
    /// [`ConfigError::Several`] when there are more than one).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let mut doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax(e.to_string()))?;
        let mut errors = Vec::new();
        strip_unknown(&mut doc, &mut errors);
        // After the walk only known keys remain: deny_unknown_fields is the
        // backstop that keeps the schema and the walk honest.
        let raw: RawFile = toml::Value::Table(doc)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Syntax(e.to_string()))?;
        let mut r = Reader {
            errors,
            bad: Vec::new(),
        };
        let config = convert(raw, &mut r);
        let Reader { mut errors, bad } = r;
        // A cross-key check about a key that is already wrong would only
        // repeat the problem with a made-up value.
        for (keys, e) in config.cross_checks() {
            if !keys.iter().any(|k| bad.iter().any(|b| b == k)) {
                errors.push(e);
            }
        }
        ConfigError::from_list(errors)?;
        Ok(config)
    }

    /// Every key the file may hold, dotted (`server.bind`,
    /// `mediator.apns.key_id`), in schema order.
    pub fn known_keys() -> Vec<String> {
        let mut out = Vec::new();
        for s in sections() {
            dotted_keys(s, &mut out);
        }
        out
    }

    /// The checks that involve several keys (a configuration built in code
    /// skips the per-key ranges applied while parsing, but not these).
    pub fn validate(&self) -> Result<(), ConfigError> {
        ConfigError::from_list(self.cross_checks().into_iter().map(|(_, e)| e).collect())
    }

    /// Each cross-key problem with the keys it involves.
    fn cross_checks(&self) -> Vec<(&'static [&'static str], ConfigError)> {
        let mut out: Vec<(&'static [&'static str], ConfigError)> = Vec::new();
        let s = &self.server;
        if s.public_host.is_none() && s.bind.is_unspecified() {
            out.push((
                &["server.public_host", "server.bind"],
                ConfigError::invalid(
                    "server.public_host",
                    format!(
                        "required when server.bind is {:?} (the host or IP providers and \
                         phones reach; it is written in Via and Contact)",
                        s.bind.to_string()
                    ),
                ),
            ));
        }
        let shards = self.shard_count();
        if usize::from(s.sip_port) + shards > usize::from(u16::MAX) {
            out.push((
                &["server.sip_port", "server.shards"],
                ConfigError::invalid(
                    "server.sip_port",
                    format!(
                        "{} leaves no room for {shards} shard ports (shard i listens on \
                         sip_port + 1 + i, at most 65535)",
                        s.sip_port
                    ),
                ),
            ));
        }
        let sip = &self.sip;
        if sip.t2 < sip.t1 {
            out.push((
                &["sip.t1", "sip.t2"],
                ConfigError::invalid(
                    "sip.t2",
                    format!(
                        "{:?} must be at least sip.t1 ({})",
                        format_duration(sip.t2),
                        format_duration(sip.t1)
                    ),
                ),
            ));
        }
        if sip.retry_max < sip.retry_base {
            out.push((
                &["sip.retry_base", "sip.retry_max"],
                ConfigError::invalid(
                    "sip.retry_max",
                    format!(
                        "{:?} must be at least sip.retry_base ({})",
                        format_duration(sip.retry_max),
                        format_duration(sip.retry_base)
                    ),
                ),
            ));
        }
        let a = &self.admin;
        match &a.token {
            AdminToken::None if !a.listen.ip().is_loopback() => out.push((
                &["admin.token", "admin.token_file", "admin.listen"],
                ConfigError::invalid(
                    "admin.token",
                    format!(
                        "required (or admin.token_file) when admin.listen is not loopback \
                         ({:?}): whoever reaches that port could provision accounts",
                        a.listen.to_string()
                    ),
                ),
            )),
            AdminToken::Inline(t) => {
                if let Err(why) = token_problem(t) {
                    out.push((&["admin.token"], ConfigError::invalid("admin.token", why)));
                }
            }
            _ => {}
        }
        // SIP may run over TCP on the shard ports too: the admin API must
        // not take one where the addresses overlap.
        if let Some(what) = self.sip_port_at(a.listen) {
            out.push((
                &["admin.listen", "server.sip_port", "server.shards"],
                ConfigError::invalid(
                    "admin.listen",
                    format!("port {} is {what}", a.listen.port()),
                ),
            ));
        }

        let c = &self.calls;
        if c.phone_max_expires < c.phone_min_expires {
            out.push((
                &["calls.phone_min_expires", "calls.phone_max_expires"],
                ConfigError::invalid(
                    "calls.phone_max_expires",
                    format!(
                        "{} must be at least calls.phone_min_expires ({})",
                        c.phone_max_expires, c.phone_min_expires
                    ),
                ),
            ));
        }
        // RFC 8599 §4.1.2: a woken phone refreshes pnsreg seconds before its
        // binding expires; at or past the longest binding that is at once.
        if c.pnsreg >= c.phone_max_expires {
            out.push((
                &["calls.pnsreg", "calls.phone_max_expires"],
                ConfigError::invalid(
                    "calls.pnsreg",
                    format!(
                        "{} must be below calls.phone_max_expires ({}): phones would \
                         re-register as soon as they are woken",
                        c.pnsreg, c.phone_max_expires
                    ),
                ),
            ));
        }

        let p = &self.push;
        if let Some(t) = &p.token {
            if let Err(why) = token_problem(t) {
                out.push((&["push.token"], ConfigError::invalid("push.token", why)));
            }
        }
        let m = &self.mediator;
        if let Some(t) = &m.token {
            if let Err(why) = token_problem(t) {
                out.push((
                    &["mediator.token"],
                    ConfigError::invalid("mediator.token", why),
                ));
            }
        }
        if m.deadline < m.request_timeout {
            out.push((
                &["mediator.request_timeout", "mediator.deadline"],
                ConfigError::invalid(
                    "mediator.deadline",
                    format!(
                        "{:?} must be at least mediator.request_timeout ({}): the deadline \
                         covers every attempt of a push",
                        format_duration(m.deadline),
                        format_duration(m.request_timeout)
                    ),
                ),
            ));
        }
        if m.token.is_none() && !m.listen.ip().is_loopback() {
            out.push((
                &["mediator.token", "mediator.token_file", "mediator.listen"],
                ConfigError::invalid(
                    "mediator.token",
                    format!(
                        "required (or mediator.token_file) when mediator.listen is not \
                         loopback ({:?}): whoever reaches that port could push to every \
                         phone",
                        m.listen.to_string()
                    ),
                ),
            ));
        }
        if m.in_process && m.apns.is_none() && m.fcm.is_none() {
            out.push((
                &[
                    "mediator.in_process",
                    "mediator.apns",
                    "mediator.apns.key_file",
                    "mediator.apns.key_id",
                    "mediator.apns.team_id",
                    "mediator.fcm",
                    "mediator.fcm.service_account_file",
                ],
                ConfigError::invalid(
                    "mediator.in_process",
                    "needs [mediator.apns] or [mediator.fcm]: the mediator would have \
                     nowhere to send pushes",
                ),
            ));
        }
        // Without a URL the push client posts to the in-process mediator,
        // which checks the token it is given against its own.
        if m.in_process && p.mediator_url.is_none() && p.token != m.token {
            out.push((
                &[
                    "push.token",
                    "push.token_file",
                    "mediator.token",
                    "mediator.token_file",
                ],
                ConfigError::invalid(
                    "push.token",
                    "must be the same token as mediator.token when pushes go to the \
                     in-process mediator (push.mediator_url not set): it would refuse \
                     every push",
                ),
            ));
        }
        // In the same process the mediator's port is sure to clash; a
        // standalone `sipis mediator` may well run on another host.
        if m.in_process
            && addresses_overlap(m.listen.ip(), a.listen.ip())
            && m.listen.port() == a.listen.port()
        {
            out.push((
                &["mediator.listen", "admin.listen"],
                ConfigError::invalid(
                    "mediator.listen",
                    format!("port {} is admin.listen's", m.listen.port()),
                ),
            ));
        }
        if let Some(what) = self.sip_port_at(m.listen).filter(|_| m.in_process) {
            out.push((
                &["mediator.listen", "server.sip_port", "server.shards"],
                ConfigError::invalid(
                    "mediator.listen",
                    format!("port {} is {what}", m.listen.port()),
                ),
            ));
        }
        out
    }

    /// Which SIP port `addr` would take, if it overlaps one: the phones'
    /// port or a shard's.
    fn sip_port_at(&self, addr: SocketAddr) -> Option<String> {
        let port = usize::from(addr.port());
        let first = usize::from(self.server.sip_port);
        let last = first + self.shard_count();
        if port < first || port > last || !addresses_overlap(addr.ip(), self.server.bind) {
            return None;
        }
        Some(if port == first {
            "the phones' SIP port (server.sip_port)".to_owned()
        } else {
            format!("shard {}'s SIP port", port - first - 1)
        })
    }

    /// Looks at what the configuration names on disk: the data directory is
    /// writable (or can be created), TLS and token files are readable.
    /// Returns every problem; nothing is created or changed (a probe file
    /// is written and removed to test writability).
    pub fn check(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        if let Err(why) = writable_dir(&self.server.data_dir) {
            out.push(ConfigError::invalid("server.data_dir", why));
        }
        if let StoreConfig::Embedded { path: Some(p) } = &self.store {
            let parent = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if p.is_dir() {
                out.push(ConfigError::invalid(
                    "store.path",
                    format!("{:?} is a directory; name the database file", p.display()),
                ));
            } else if let Err(why) = writable_dir(parent) {
                out.push(ConfigError::invalid("store.path", why));
            }
        }
        if let Some(tls) = &self.admin.tls {
            for (key, path) in [("admin.tls_cert", &tls.cert), ("admin.tls_key", &tls.key)] {
                if let Err(why) = pem_file(path) {
                    out.push(ConfigError::invalid(key, why));
                }
            }
        }
        if let Some(files) = &self.tls.files {
            // Each file on its own first, then the pair together (the key
            // must fit the certificate).
            let mut ok = true;
            for (key, path) in [("tls.cert", &files.cert), ("tls.key", &files.key)] {
                if let Err(why) = pem_file(path) {
                    out.push(ConfigError::invalid(key, why));
                    ok = false;
                }
            }
            if ok {
                if let Err((path, why)) = crate::http::tls::load_server_config(
                    &files.cert,
                    &files.key,
                    files.client_ca.as_deref(),
                ) {
                    let key = if Some(path.as_path()) == files.client_ca.as_deref() {
                        "tls.client_ca"
                    } else if path == files.cert {
                        "tls.cert"
                    } else {
                        "tls.key"
                    };
                    out.push(ConfigError::invalid(
                        key,
                        format!("{}: {why}", path.display()),
                    ));
                }
            }
        }
        if let Some(ca) = &self.tls.upstream_ca {
            if let Err(why) = crate::runtime::front::client_config(Some(ca)) {
                out.push(ConfigError::invalid("tls.upstream_ca", why));
            }
        }
        if let AdminToken::File(_) = self.admin.token {
            if let Err(e) = self.admin_token() {
                out.push(e);
            }
        }
        if let Some(apns) = &self.mediator.apns {
            // The .p8 key is PKCS#8 PEM; whether it is a P-256 key is the
            // mediator's to say when it loads it.
            if let Err(why) = pem_file(&apns.key_file) {
                out.push(ConfigError::invalid("mediator.apns.key_file", why));
            }
            if let Some(ca) = &apns.ca_file {
                if let Err(why) = pem_file(ca) {
                    out.push(ConfigError::invalid("mediator.apns.ca_file", why));
                }
            }
        }
        if let Some(fcm) = &self.mediator.fcm {
            if let Err(why) = service_account_file(&fcm.service_account_file, fcm) {
                out.push(ConfigError::invalid(
                    "mediator.fcm.service_account_file",
                    why,
                ));
            }
            if let Some(ca) = &fcm.ca_file {
                if let Err(why) = pem_file(ca) {
                    out.push(ConfigError::invalid("mediator.fcm.ca_file", why));
                }
            }
        }
        out
    }

    /// The admin bearer token, read from `admin.token_file` if that is where
    /// it is.
    pub fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        match &self.admin.token {
            AdminToken::None => Ok(None),
            AdminToken::Inline(t) => Ok(Some(t.clone())),
            AdminToken::File(path) => {
                let text = fs::read_to_string(path).map_err(|e| {
                    ConfigError::invalid(
                        "admin.token_file",
                        format!("cannot read {:?}: {e}", path.display()),
                    )
                })?;
                let token = text.trim();
                token_problem(token).map_err(|why| {
                    ConfigError::invalid(
                        "admin.token_file",
                        format!("{:?}: the token {why}", path.display()),
                    )
                })?;
                Ok(Some(token.to_owned()))
            }
        }
    }

    /// How many shards run: `server.shards`, with `"auto"` resolved to the
    /// available cores (at most [`MAX_SHARDS`]).
    pub fn shard_count(&self) -> usize {
        match self.server.shards {
            Shards::Count(n) => usize::from(n).clamp(1, MAX_SHARDS),
            Shards::Auto => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_SHARDS),
        }
    }

    /// The upstream port of `shard`: `sip_port + 1 + shard` (saturating; a
    /// validated configuration never reaches 65535 + 1).
    pub fn shard_port(&self, shard: usize) -> u16 {
        let port = usize::from(self.server.sip_port) + 1 + shard;
        u16::try_from(port).unwrap_or(u16::MAX)
    }

    /// The host written in Via and Contact: `server.public_host`, else the
    /// bind address.
    pub fn public_host(&self) -> String {
        match &self.server.public_host {
            Some(h) => h.clone(),
            None => self.server.bind.to_string(),
        }
    }

    /// The embedded store's file, `None` with PostgreSQL.
    pub fn embedded_db_path(&self) -> Option<PathBuf> {
        match &self.store {
            StoreConfig::Embedded { path: Some(p) } => Some(p.clone()),
            StoreConfig::Embedded { path: None } => {
                Some(self.server.data_dir.join(EMBEDDED_DB_FILE))
            }
            StoreConfig::Postgres { .. } => None,
        }
    }

    /// Where a client on this host reaches the admin API:
    /// `http(s)://<listen>`, a wildcard listen address replaced by loopback.
    pub fn admin_url(&self) -> String {
        let scheme = if self.admin.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let ip = match self.admin.listen.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!(
            "{scheme}://{}",
            SocketAddr::new(ip, self.admin.listen.port())
        )
    }

    /// The engine configuration of `shard`: timers, rate limit and
    /// registration settings from `[sip]`, Via and Contact host
    /// `public_host:shard_port`. The PRNG seed is left at its default for
    /// the caller to set.
    /// The phones' TCP port: `tcp.port`, else `server.sip_port`.
    pub fn tcp_port(&self) -> u16 {
        self.tcp.port.unwrap_or(self.server.sip_port)
    }

    pub fn engine_config(&self, shard: usize) -> EngineConfig {
        let host = host_port(&self.public_host(), self.shard_port(shard));
        EngineConfig {
            timers: TimerConfig {
                t1: self.sip.t1,
                t2: self.sip.t2,
                t4: self.sip.t4,
            },
            via: host.clone(),
            contact_host: host,
            register_rate: self.sip.register_rate,
            register_burst: self.sip.register_burst,
            registration: RegistrationConfig {
                retry_base: self.sip.retry_base,
                retry_max: self.sip.retry_max,
                user_agent: self.sip.user_agent.clone(),
                probe_interval: self.sip.registrar_probe,
                keepalive: self.sip.registrar_keepalive,
                failback: self.dns.failback,
            },
            phone_contact_host: host_port(&self.public_host(), self.server.sip_port),
            tcp_host: host_port(&self.public_host(), self.tcp_port()),
            tls_host: host_port(&self.public_host(), self.tls.port),
            calls: self.calls.clone(),
            max_server_transactions: self.sip.max_transactions,
            max_client_transactions: self.sip.max_transactions,
            ..EngineConfig::default()
        }
    }

    /// One line saying what would run (no secrets).
    pub fn summary(&self) -> String {
        let n = self.shard_count();
        let s = &self.server;
        let shards = match s.shards {
            Shards::Auto => format!("{n} shards (auto)"),
            Shards::Count(_) if n == 1 => "1 shard".to_owned(),
            Shards::Count(_) => format!("{n} shards"),
        };
        let store = match &self.store {
            StoreConfig::Embedded { .. } => format!(
                "embedded store {}",
                self.embedded_db_path().unwrap_or_default().display()
            ),
            StoreConfig::Postgres { url } => format!("postgres {}", redact_url(url)),
        };
        let token = match self.admin.token {
            AdminToken::None => "no token",
            AdminToken::Inline(_) => "token",
            AdminToken::File(_) => "token file",
        };
        let m = &self.mediator;
        let push = match (&self.push.mediator_url, m.in_process) {
            (Some(url), _) => format!("pushes to {}", redact_url(url)),
            (None, true) => format!("pushes to the in-process mediator on {}", m.listen),
            (None, false) => "pushes off (push.mediator_url not set)".to_owned(),
        };
        let mediator = if m.in_process {
            let mut services = Vec::new();
            if m.apns.is_some() {
                services.push("APNs");
            }
            if m.fcm.is_some() {
                services.push("FCM");
            }
            format!("; mediator in process ({})", services.join(", "))
        } else {
            String::new()
        };
        let mut front = String::new();
        if self.tcp.enabled {
            front.push_str(&format!(", TCP {}", self.tcp_port()));
        }
        if self.tls.files.is_some() {
            front.push_str(&format!(", TLS {}", self.tls.port));
        }
        format!(
            "{shards}; phones on {} (shared){front}; upstream {}..={}; public host {}; {store}; \
             admin {} ({token}); {push}{mediator}; log {} {}",
            SocketAddr::new(s.bind, s.sip_port),
            host_port(&s.bind.to_string(), self.shard_port(0)),
            self.shard_port(n - 1),
            self.public_host(),
            self.admin_url(),
            self.log.level.as_str(),
            self.log.format.as_str(),
        )
    }
}

/// `host:port`, with an IPv6 host in brackets.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

// ---------------------------------------------------------------------------
// The schema: one raw struct per section
// ---------------------------------------------------------------------------

type V = Option<toml::Value>;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    server: Option<RawServer>,
    sip: Option<RawSip>,
    calls: Option<RawCalls>,
    push: Option<RawPush>,
    mediator: Option<RawMediator>,
    store: Option<RawStore>,
    admin: Option<RawAdmin>,
    log: Option<RawLog>,
    tcp: Option<RawTcp>,
    tls: Option<RawTls>,
    dns: Option<RawDns>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDns {
    servers: V,
    timeout: V,
    attempts: V,
    min_ttl: V,
    max_ttl: V,
    retry: V,
    failback: V,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTcp {
    enabled: V,
    port: V,
    max_connections: V,
    max_connections_per_ip: V,
    idle_timeout: V,
    unregistered_timeout: V,
    message_timeout: V,
    max_write_queue: V,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    port: V,
    cert: V,
    key: V,
    client_ca: V,
    handshake_timeout: V,
    upstream_ca: V,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    public_host: V,
    bind: V,
    sip_port: V,
    shards: V,
    data_dir: V,
    unregister_on_shutdown: V,
    shutdown_timeout: V,
    max_message_bytes: V,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSip {
    t1: V,
    t2: V,
    t4: V,
    register_rate: V,
    register_burst: V,
    retry_base: V,
    retry_max: V,
    user_agent: V,
    default_expires: V,
    max_transactions: V,
    registrar_probe: V,
    registrar_keepalive: V,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCalls {
    device_wait: V,
    late_wake_window: V,
    late_wake_guard: V,
    push_status_header: V,
    phone_realm: V,
    phone_min_expires: V,
    phone_max_expires: V,
    pnsreg: V,
    phone_digest_algorithms: V,
    max_calls: V,
    auth_failures_per_account: V,
    auth_failures_per_source: V,
    auth_block_max: V,
    flow_timer: V,
    stream_answer_wait: V,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPush {
    mediator_url: V,
    token: V,
    token_file: V,
    timeout: V,
    retries: V,
    connections: V,
    max_in_flight: V,
    queue: V,
}

/// `[mediator]`; its table-valued fields are the subsections (see
/// [`section_keys`]).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMediator {
    listen: V,
    token: V,
    token_file: V,
    in_process: V,
    request_timeout: V,
    deadline: V,
    concurrency: V,
    apns: Option<RawApns>,
    fcm: Option<RawFcm>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApns {
    key_file: V,
    key_id: V,
    team_id: V,
    default_topic: V,
    production_url: V,
    sandbox_url: V,
    ca_file: V,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFcm {
    service_account_file: V,
    project_id: V,
    send_url: V,
    token_url: V,
    ca_file: V,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    kind: V,
    url: V,
    path: V,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: V,
    token: V,
    token_file: V,
    tls_cert: V,
    tls_key: V,
    max_connections: V,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: V,
    format: V,
}

/// The field names serde knows for `T` (read off `deserialize_struct`).
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Probe(&'static [&'static str]);
    impl<'de> Deserializer<'de> for &mut Probe {
        type Error = de::value::Error;
        fn deserialize_any<W: Visitor<'de>>(self, _: W) -> Result<W::Value, Self::Error> {
            Err(de::Error::custom("probe"))
        }
        fn deserialize_struct<W: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: W,
        ) -> Result<W::Value, Self::Error> {
            self.0 = fields;
            Err(de::Error::custom("probe"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut probe = Probe(&[]);
    let _ = T::deserialize(&mut probe);
    probe.0
}

/// The top-level sections, in schema order.
fn sections() -> &'static [&'static str] {
    fields_of::<RawFile>()
}

/// The keys of a section, by its dotted name (`mediator.apns`); empty for
/// anything that is not a section. A key whose own dotted name has keys is
/// a subsection.
fn section_keys(section: &str) -> &'static [&'static str] {
    match section {
        "server" => fields_of::<RawServer>(),
        "sip" => fields_of::<RawSip>(),
        "calls" => fields_of::<RawCalls>(),
        "push" => fields_of::<RawPush>(),
        "mediator" => fields_of::<RawMediator>(),
        "mediator.apns" => fields_of::<RawApns>(),
        "mediator.fcm" => fields_of::<RawFcm>(),
        "store" => fields_of::<RawStore>(),
        "admin" => fields_of::<RawAdmin>(),
        "log" => fields_of::<RawLog>(),
        "tcp" => fields_of::<RawTcp>(),
        "tls" => fields_of::<RawTls>(),
        "dns" => fields_of::<RawDns>(),
        _ => &[],
    }
}

fn is_section(dotted: &str) -> bool {
    !section_keys(dotted).is_empty()
}

/// Every section, subsections (dotted) right after their parent.
fn all_sections() -> Vec<String> {
    fn push(name: String, out: &mut Vec<String>) {
        let subs: Vec<String> = section_keys(&name)
            .iter()
            .map(|k| format!("{name}.{k}"))
            .filter(|d| is_section(d))
            .collect();
        out.push(name);
        for s in subs {
            push(s, out);
        }
    }
    let mut out = Vec::new();
    for s in sections() {
        push((*s).to_owned(), &mut out);
    }
    out
}

/// The plain keys (not subsections) of `section`, dotted, subsections'
/// keys after their parent's.
fn dotted_keys(section: &str, out: &mut Vec<String>) {
    let mut subs = Vec::new();
    for k in section_keys(section) {
        let dotted = format!("{section}.{k}");
        if is_section(&dotted) {
            subs.push(dotted);
        } else {
            out.push(dotted);
        }
    }
    for s in subs {
        dotted_keys(&s, out);
    }
}

fn list_sections() -> String {
    all_sections()
        .iter()
        .map(|s| format!("[{s}]"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The section that has a plain key `key`, other than `except`.
fn home_of(key: &str, except: &str) -> Option<String> {
    all_sections().into_iter().find(|s| {
        s != except && section_keys(s).contains(&key) && !is_section(&format!("{s}.{key}"))
    })
}

/// The known section an unknown one (`name`, dotted) probably meant: a
/// typo of a sibling, or a subsection written at the top level (`[apns]`).
fn suggest_section(name: &str) -> Option<String> {
    let all = all_sections();
    let (parent, last) = match name.rsplit_once('.') {
        Some((p, l)) => (Some(p), l),
        None => (None, name),
    };
    let siblings: Vec<&str> = all
        .iter()
        .filter_map(|s| match (s.rsplit_once('.'), parent) {
            (Some((p, l)), Some(want)) if p == want => Some(l),
            (None, None) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    if let Some(s) = closest(last, &siblings) {
        return Some(match parent {
            Some(p) => format!("{p}.{s}"),
            None => s.to_owned(),
        });
    }
    all.iter()
        .find(|s| s.rsplit_once('.').is_some_and(|(_, l)| l == last))
        .cloned()
}

/// Removes (and reports) every key and section the schema does not know.
fn strip_unknown(doc: &mut toml::Table, errors: &mut Vec<ConfigError>) {
    let names: Vec<String> = doc.keys().cloned().collect();
    for name in names {
        let known = sections().contains(&name.as_str());
        let is_table = doc.get(&name).is_some_and(toml::Value::is_table);
        if known && !is_table {
            let v = doc.remove(&name).expect("key listed");
            errors.push(ConfigError::invalid(
                &name,
                format!("expected a section [{name}], got {}", got(&v)),
            ));
            continue;
        }
        if !known {
            doc.remove(&name);
            if is_table {
                errors.push(ConfigError::UnknownSection {
                    suggestion: suggest_section(&name),
                    name,
                });
            } else {
                errors.push(ConfigError::UnknownKey {
                    hint: Some(match home_of(&name, "") {
                        Some(s) => format!("it belongs in [{s}]"),
                        None => format!("settings go in a section: {}", list_sections()),
                    }),
                    section: String::new(),
                    key: name,
                });
            }
            continue;
        }
        if let Some(toml::Value::Table(table)) = doc.get_mut(&name) {
            strip_section(&name, table, errors);
        }
    }
}

/// [`strip_unknown`] inside one section (`name` dotted), subsections
/// included.
fn strip_section(name: &str, table: &mut toml::Table, errors: &mut Vec<ConfigError>) {
    let keys = section_keys(name);
    let present: Vec<String> = table.keys().cloned().collect();
    for key in present {
        let dotted = format!("{name}.{key}");
        if is_section(&dotted) {
            match table.get_mut(&key) {
                Some(toml::Value::Table(sub)) => strip_section(&dotted, sub, errors),
                _ => {
                    let v = table.remove(&key).expect("key listed");
                    errors.push(ConfigError::invalid(
                        &dotted,
                        format!("expected a section [{dotted}], got {}", got(&v)),
                    ));
                }
            }
            continue;
        }
        if keys.contains(&key.as_str()) {
            continue;
        }
        let v = table.remove(&key).expect("key listed");
        if v.is_table() {
            errors.push(ConfigError::UnknownSection {
                suggestion: suggest_section(&dotted),
                name: dotted,
            });
            continue;
        }
        let plain: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| !is_section(&format!("{name}.{k}")))
            .collect();
        let hint = match (closest(&key, &plain), home_of(&key, name)) {
            (Some(k), _) => Some(format!("did you mean {k:?}?")),
            (None, Some(s)) => Some(format!("it belongs in [{s}]")),
            (None, None) => None,
        };
        errors.push(ConfigError::UnknownKey {
            section: name.to_owned(),
            key,
            hint,
        });
    }
}

/// The candidate nearest to `word` by edit distance, if near enough to be
/// a typo.
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (edit_distance(&word, c), *c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance counting a swap of two neighbours as one edit (optimal
/// string alignment): `levle` is one edit from `level`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

// ---------------------------------------------------------------------------
// Conversion: raw values into typed settings, one error per wrong key
// ---------------------------------------------------------------------------

/// Collects the per-key errors; every getter returns `None` for a missing
/// or wrong value (the caller then uses the default and goes on).
struct Reader {
    errors: Vec<ConfigError>,
    /// Keys that already have an error.
    bad: Vec<&'static str>,
}

/// A value as the operator wrote it, for messages.
fn got(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(x) => x.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(_) => "an array".to_owned(),
        toml::Value::Table(_) => "a table".to_owned(),
    }
}

fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    match quoted.as_slice() {
        [a, b] => format!("{a} or {b}"),
        _ => format!("one of {}", quoted.join(", ")),
    }
}

impl Reader {
    fn fail<T>(&mut self, key: &'static str, message: String) -> Option<T> {
        self.error(key, message);
        None
    }

    fn error(&mut self, key: &'static str, message: impl Into<String>) {
        self.errors.push(ConfigError::invalid(key, message));
        self.bad.push(key);
    }

    fn string(&mut self, key: &'static str, v: V) -> Option<String> {
        match v? {
            toml::Value::String(s) => Some(s),
            other => self.fail(key, format!("expected a string, got {}", got(&other))),
        }
    }

    fn nonempty(&mut self, key: &'static str, v: V) -> Option<String> {
        let s = self.string(key, v)?;
        if s.trim().is_empty() {
            return self.fail(key, "must not be empty".to_owned());
        }
        Some(s)
    }

    fn path(&mut self, key: &'static str, v: V) -> Option<PathBuf> {
        self.nonempty(key, v).map(PathBuf::from)
    }

    /// A non-empty list of digest algorithm names (`"MD5"`, `"SHA-256"`,
    /// `"SHA-512-256"`), each at most once, in the order phones are
    /// challenged with them.
    fn digest_algorithms(&mut self, key: &'static str, v: V) -> Option<Vec<digest::Algorithm>> {
        let toml::Value::Array(items) = v? else {
            return self.fail(
                key,
                "expected a list such as [\"MD5\"] or [\"SHA-256\", \"MD5\"]".into(),
            );
        };
        if items.is_empty() {
            return self.fail(key, "expected at least one algorithm".into());
        }
        let mut out = Vec::new();
        for item in &items {
            let alg = item
                .as_str()
                .and_then(|t| digest::Algorithm::from_token(t).ok())
                .filter(|a| !a.is_sess());
            match alg {
                Some(a) if !out.contains(&a) => out.push(a),
                Some(a) => {
                    return self.fail(key, format!("{} is listed twice", a.as_str()));
                }
                None => {
                    return self.fail(
                        key,
                        format!(
                            "unknown algorithm {}: expected \"MD5\", \"SHA-256\" or \"SHA-512-256\"",
                            got(item)
                        ),
                    );
                }
            }
        }
        Some(out)
    }

    fn boolean(&mut self, key: &'static str, v: V) -> Option<bool> {
        match v? {
            toml::Value::Boolean(b) => Some(b),
            other => self.fail(key, format!("expected true or false, got {}", got(&other))),
        }
    }

    fn int(
        &mut self,
        key: &'static str,
        v: V,
        what: &str,
        range: RangeInclusive<i64>,
    ) -> Option<i64> {
        match v? {
            toml::Value::Integer(i) if range.contains(&i) => Some(i),
            other => self.fail(
                key,
                format!(
                    "expected {what} {}..={}, got {}",
                    range.start(),
                    range.end(),
                    got(&other)
                ),
            ),
        }
    }

    fn duration(
        &mut self,
        key: &'static str,
        v: V,
        range: RangeInclusive<Duration>,
    ) -> Option<Duration> {
        let v = v?;
        let d = match &v {
            toml::Value::Integer(ms) if *ms >= 0 => Some(Duration::from_millis(*ms as u64)),
            toml::Value::String(s) => parse_duration(s),
            _ => None,
        };
        let Some(d) = d else {
            return self.fail(
                key,
                format!(
                    "expected a duration such as \"500ms\", \"32s\", \"5m\" or \"1h\" \
                     (a bare integer is milliseconds), got {}",
                    got(&v)
                ),
            );
        };
        if d < *range.start() {
            let min = format_duration(*range.start());
            return self.fail(key, format!("{} must be at least {min}", got(&v)));
        }
        if d > *range.end() {
            let max = format_duration(*range.end());
            return self.fail(key, format!("{} must be at most {max}", got(&v)));
        }
        Some(d)
    }

    fn choice(&mut self, key: &'static str, v: V, names: &'static [&'static str]) -> Option<usize> {
        let v = v?;
        if let toml::Value::String(s) = &v {
            if let Some(i) = names.iter().position(|n| n == s) {
                return Some(i);
            }
        }
        self.fail(key, format!("expected {}, got {}", one_of(names), got(&v)))
    }

    fn shards(&mut self, key: &'static str, v: V) -> Option<Shards> {
        let v = v?;
        match &v {
            toml::Value::String(s) if s == "auto" => return Some(Shards::Auto),
            toml::Value::Integer(n) if (1..=MAX_SHARDS as i64).contains(n) => {
                return Some(Shards::Count(*n as u16))
            }
            _ => {}
        }
        self.fail(
            key,
            format!(
                "expected \"auto\" or a number 1..={MAX_SHARDS}, got {}",
                got(&v)
            ),
        )
    }

    fn ip(&mut self, key: &'static str, v: V) -> Option<IpAddr> {
        let v = v?;
        if let toml::Value::String(s) = &v {
            if let Ok(ip) = s.trim_start_matches('[').trim_end_matches(']').parse() {
                return Some(ip);
            }
        }
        self.fail(
            key,
            format!(
                "expected an IP address such as \"0.0.0.0\", \"::\" or \"192.0.2.10\", got {}",
                got(&v)
            ),
        )
    }

    fn socket_addr(&mut self, key: &'static str, v: V) -> Option<SocketAddr> {
        let v = v?;
        if let toml::Value::String(s) = &v {
            if let Ok(a) = s.parse::<SocketAddr>() {
                if a.port() != 0 {
                    return Some(a);
                }
            }
        }
        self.fail(
            key,
            format!(
                "expected IP:port such as \"127.0.0.1:8080\" or \"[::1]:8080\", got {}",
                got(&v)
            ),
        )
    }

    fn host(&mut self, key: &'static str, v: V) -> Option<String> {
        let s = self.string(key, v)?;
        let bare = s
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .unwrap_or(&s);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            if ip.is_unspecified() {
                return self.fail(
                    key,
                    format!("{s:?} cannot be reached: give the public IP or host name"),
                );
            }
            return Some(bare.to_owned());
        }
        if bare.contains(':') {
            return self.fail(
                key,
                format!(
                    "{s:?} must be a host or IP without a port (each shard appends its own port)"
                ),
            );
        }
        if valid_hostname(bare) {
            return Some(bare.to_ascii_lowercase());
        }
        self.fail(
            key,
            format!("expected a host name or IP address such as \"sip.example.net\", got {s:?}"),
        )
    }

    fn rate(&mut self, key: &'static str, v: V, range: RangeInclusive<i64>) -> Option<u32> {
        let v = v?;
        let n = match &v {
            toml::Value::Integer(n) => Some(*n),
            toml::Value::String(s) => s.strip_suffix("/s").and_then(|n| n.trim().parse().ok()),
            _ => None,
        };
        match n {
            Some(n) if range.contains(&n) => Some(n as u32),
            _ => self.fail(
                key,
                format!(
                    "expected REGISTERs per second {}..={} (such as 200 or \"200/s\"), got {}",
                    range.start(),
                    range.end(),
                    got(&v)
                ),
            ),
        }
    }
}

impl Reader {
    /// An `http://` or `https://` URL (see [`http_url_problem`]).
    fn http_url(&mut self, key: &'static str, v: V) -> Option<String> {
        let u = self.string(key, v)?;
        match http_url_problem(&u) {
            None => Some(u),
            Some(why) => self.fail(key, format!("{why}, got {:?}", redact_url(&u))),
        }
    }

    /// A required key of a subsection: reports it missing.
    fn required<T>(
        &mut self,
        key: &'static str,
        section: &str,
        got: Option<T>,
        had: bool,
    ) -> Option<T> {
        if !had {
            return self.fail(key, format!("required in [{section}]"));
        }
        got
    }

    /// A bearer token given inline (`token_key`) or in a file (`file_key`),
    /// at most one of them. The file is read here (surrounding whitespace
    /// trimmed) and its token checked; an inline token is checked with the
    /// cross-key checks, so that [`Config::validate`] sees it too.
    fn secret(
        &mut self,
        token_key: &'static str,
        file_key: &'static str,
        token: V,
        file: V,
    ) -> Option<String> {
        let both = token.is_some() && file.is_some();
        let token = self.string(token_key, token);
        let file = self.path(file_key, file);
        if both {
            self.error(file_key, format!("set {token_key} or {file_key}, not both"));
            return None;
        }
        if token.is_some() {
            return token;
        }
        let path = file?;
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                return self.fail(file_key, format!("cannot read {:?}: {e}", path.display()));
            }
        };
        let t = text.trim();
        if let Err(why) = token_problem(t) {
            return self.fail(file_key, format!("{:?}: the token {why}", path.display()));
        }
        Some(t.to_owned())
    }

    /// Text sent inside a quoted string on the wire (a digest realm): no
    /// quotes, backslashes, spaces or control characters.
    fn quotable(&mut self, key: &'static str, v: V, max: usize) -> Option<String> {
        let s = self.nonempty(key, v)?;
        if s.len() > max
            || !s
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            return self.fail(
                key,
                format!(
                    "{s:?} must be at most {max} visible ASCII characters without spaces, \
                     quotes or backslashes (it is sent as a quoted string)"
                ),
            );
        }
        Some(s)
    }

    /// An identifier that goes into a URL path or a JWT claim: letters,
    /// digits, `.`, `-`, `_`, of a length in `len`.
    fn ident(
        &mut self,
        key: &'static str,
        v: V,
        len: RangeInclusive<usize>,
        example: &str,
    ) -> Option<String> {
        let s = self.string(key, v)?;
        let ok = len.contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if ok {
            return Some(s);
        }
        let size = if len.start() == len.end() {
            format!("{} characters", len.start())
        } else {
            format!("{}..={} characters", len.start(), len.end())
        };
        self.fail(
            key,
            format!("expected {size} of letters, digits, '.', '-' or '_' (such as {example:?}), got {s:?}"),
        )
    }
}

/// Why a token is unfit, if it is.
fn token_problem(t: &str) -> Result<(), String> {
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".to_owned());
    }
    if t.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "is too short ({} characters, at least {MIN_TOKEN_LEN}): generate one with \
             `openssl rand -hex 32`",
            t.len()
        ));
    }
    Ok(())
}

fn convert(raw: RawFile, r: &mut Reader) -> Config {
    let d = Config::default();

    let s = raw.server.unwrap_or_default();
    let server = ServerConfig {
        public_host: r.host("server.public_host", s.public_host),
        bind: r.ip("server.bind", s.bind).unwrap_or(d.server.bind),
        sip_port: r
            .int("server.sip_port", s.sip_port, "a port", 1..=65535)
            .map_or(d.server.sip_port, |p| p as u16),
        shards: r
            .shards("server.shards", s.shards)
            .unwrap_or(d.server.shards),
        data_dir: r
            .path("server.data_dir", s.data_dir)
            .unwrap_or(d.server.data_dir),
        unregister_on_shutdown: r
            .boolean("server.unregister_on_shutdown", s.unregister_on_shutdown)
            .unwrap_or(d.server.unregister_on_shutdown),
        shutdown_timeout: r
            .duration(
                "server.shutdown_timeout",
                s.shutdown_timeout,
                Duration::from_secs(1)..=Duration::from_secs(600),
            )
            .unwrap_or(d.server.shutdown_timeout),
        max_message_bytes: r
            .int(
                "server.max_message_bytes",
                s.max_message_bytes,
                "a size in bytes",
                1500..=1 << 20,
            )
            .map_or(d.server.max_message_bytes, |n| n as usize),
    };

    let s = raw.sip.unwrap_or_default();
    let ms = Duration::from_millis;
    let secs = Duration::from_secs;
    let user_agent = r.nonempty("sip.user_agent", s.user_agent).and_then(|ua| {
        if ua.len() > 256 || ua.chars().any(char::is_control) {
            r.fail(
                "sip.user_agent",
                "must be at most 256 characters of text without control characters".to_owned(),
            )
        } else {
            Some(ua)
        }
    });
    let sip = SipConfig {
        // RFC 3261 §17.1.1.1: T1 is an estimate of the RTT; 64·T1 is every
        // transaction's timeout, so past 10 s calls would hang for minutes.
        t1: r
            .duration("sip.t1", s.t1, TimerConfig::MIN_T1..=secs(10))
            .unwrap_or(d.sip.t1),
        t2: r
            .duration("sip.t2", s.t2, ms(1)..=secs(60))
            .unwrap_or(d.sip.t2),
        t4: r
            .duration("sip.t4", s.t4, ms(1)..=secs(60))
            .unwrap_or(d.sip.t4),
        register_rate: r
            .rate("sip.register_rate", s.register_rate, 1..=100_000)
            .unwrap_or(d.sip.register_rate),
        register_burst: r
            .int(
                "sip.register_burst",
                s.register_burst,
                "a count",
                1..=100_000,
            )
            .map_or(d.sip.register_burst, |n| n as u32),
        retry_base: r
            .duration("sip.retry_base", s.retry_base, ms(100)..=secs(3600))
            .unwrap_or(d.sip.retry_base),
        retry_max: r
            .duration("sip.retry_max", s.retry_max, ms(100)..=secs(86400))
            .unwrap_or(d.sip.retry_max),
        user_agent: user_agent.unwrap_or(d.sip.user_agent),
        default_expires: r
            .int(
                "sip.default_expires",
                s.default_expires,
                "seconds",
                60..=604_800,
            )
            .map_or(d.sip.default_expires, |n| n as u32),
        max_transactions: r
            .int(
                "sip.max_transactions",
                s.max_transactions,
                "a count",
                100..=10_000_000,
            )
            .map_or(d.sip.max_transactions, |n| n as usize),
        registrar_probe: r
            .duration(
                "sip.registrar_probe",
                s.registrar_probe,
                ms(500)..=secs(600),
            )
            .unwrap_or(d.sip.registrar_probe),
        // "0s" turns it off (the default).
        registrar_keepalive: r
            .duration(
                "sip.registrar_keepalive",
                s.registrar_keepalive,
                Duration::ZERO..=secs(3600),
            )
            .map_or(d.sip.registrar_keepalive, |k| (!k.is_zero()).then_some(k)),
    };

    let s = raw.calls.unwrap_or_default();
    let calls = CallConfig {
        // 30 s by default, Acrobits waits 120 s; past 10
        // minutes callers and their proxies have long given up.
        device_wait: r
            .duration("calls.device_wait", s.device_wait, secs(1)..=secs(600))
            .unwrap_or(d.calls.device_wait),
        late_wake_window: r
            .duration(
                "calls.late_wake_window",
                s.late_wake_window,
                secs(1)..=secs(600),
            )
            .unwrap_or(d.calls.late_wake_window),
        late_wake_guard: r
            .duration(
                "calls.late_wake_guard",
                s.late_wake_guard,
                ms(50)..=secs(30),
            )
            .unwrap_or(d.calls.late_wake_guard),
        push_status_header: r
            .boolean("calls.push_status_header", s.push_status_header)
            .unwrap_or(d.calls.push_status_header),
        phone_realm: r
            .quotable("calls.phone_realm", s.phone_realm, 128)
            .unwrap_or(d.calls.phone_realm),
        phone_min_expires: r
            .int(
                "calls.phone_min_expires",
                s.phone_min_expires,
                "seconds",
                10..=86_400,
            )
            .map_or(d.calls.phone_min_expires, |n| n as u32),
        phone_max_expires: r
            .int(
                "calls.phone_max_expires",
                s.phone_max_expires,
                "seconds",
                10..=604_800,
            )
            .map_or(d.calls.phone_max_expires, |n| n as u32),
        pnsreg: r
            .int("calls.pnsreg", s.pnsreg, "seconds", 1..=86_400)
            .map_or(d.calls.pnsreg, |n| n as u32),
        phone_digest_algorithms: r
            .digest_algorithms("calls.phone_digest_algorithms", s.phone_digest_algorithms)
            .unwrap_or(d.calls.phone_digest_algorithms),
        max_calls: r
            .int("calls.max_calls", s.max_calls, "a count", 10..=10_000_000)
            .map_or(d.calls.max_calls, |n| n as usize),
        guard: sipis_engine::GuardConfig {
            failures_per_account: r
                .int(
                    "calls.auth_failures_per_account",
                    s.auth_failures_per_account,
                    "a count",
                    1..=1_000,
                )
                .map_or(d.calls.guard.failures_per_account, |n| n as u32),
            failures_per_source: r
                .int(
                    "calls.auth_failures_per_source",
                    s.auth_failures_per_source,
                    "a count",
                    1..=100_000,
                )
                .map_or(d.calls.guard.failures_per_source, |n| n as u32),
            max_block: r
                .duration(
                    "calls.auth_block_max",
                    s.auth_block_max,
                    secs(1)..=secs(86_400),
                )
                .unwrap_or(d.calls.guard.max_block),
            ..d.calls.guard.clone()
        },
        // RFC 5626 §4.4.1 suggests 120 s for connection keep-alives.
        flow_timer: r
            .duration("calls.flow_timer", s.flow_timer, secs(10)..=secs(3600))
            .unwrap_or(d.calls.flow_timer),
        stream_answer_wait: r
            .duration(
                "calls.stream_answer_wait",
                s.stream_answer_wait,
                ms(100)..=secs(60),
            )
            .unwrap_or(d.calls.stream_answer_wait),
    };

    let s = raw.push.unwrap_or_default();
    let push = PushConfig {
        mediator_url: r.http_url("push.mediator_url", s.mediator_url),
        token: r.secret("push.token", "push.token_file", s.token, s.token_file),
        timeout: r
            .duration("push.timeout", s.timeout, ms(100)..=secs(60))
            .unwrap_or(d.push.timeout),
        retries: r
            .int("push.retries", s.retries, "a count", 0..=10)
            .map_or(d.push.retries, |n| n as u32),
        connections: r
            .int("push.connections", s.connections, "a count", 1..=10_000)
            .map_or(d.push.connections, |n| n as u32),
        max_in_flight: r
            .int(
                "push.max_in_flight",
                s.max_in_flight,
                "a count",
                1..=1_000_000,
            )
            .map_or(d.push.max_in_flight, |n| n as u32),
        queue: r
            .int("push.queue", s.queue, "a count", 1..=1_000_000)
            .map_or(d.push.queue, |n| n as u32),
    };

    let s = raw.mediator.unwrap_or_default();
    let mediator = MediatorConfig {
        listen: r
            .socket_addr("mediator.listen", s.listen)
            .unwrap_or(d.mediator.listen),
        token: r.secret(
            "mediator.token",
            "mediator.token_file",
            s.token,
            s.token_file,
        ),
        in_process: r
            .boolean("mediator.in_process", s.in_process)
            .unwrap_or(d.mediator.in_process),
        apns: s.apns.and_then(|a| convert_apns(a, r)),
        fcm: s.fcm.and_then(|f| convert_fcm(f, r)),
        request_timeout: r
            .duration(
                "mediator.request_timeout",
                s.request_timeout,
                ms(100)..=secs(60),
            )
            .unwrap_or(d.mediator.request_timeout),
        deadline: r
            .duration("mediator.deadline", s.deadline, ms(100)..=secs(600))
            .unwrap_or(d.mediator.deadline),
        concurrency: r
            .int("mediator.concurrency", s.concurrency, "a count", 1..=65_536)
            .map_or(d.mediator.concurrency, |n| n as u32),
        // TLS on the mediator's front: no keys for it in the file yet
        // (plain HTTP on loopback or a private network).
        tls: None,
    };

    let s = raw.store.unwrap_or_default();
    let kind = match &s.kind {
        Some(toml::Value::String(k)) if k == "sqlite" => r.fail(
            "store.kind",
            "expected \"embedded\" or \"postgres\", got \"sqlite\" (the embedded store is SQLite: \
             write \"embedded\")"
                .to_owned(),
        ),
        _ => r.choice("store.kind", s.kind, &["embedded", "postgres"]),
    };
    let has_url = s.url.is_some();
    let has_path = s.path.is_some();
    let url = r.nonempty("store.url", s.url).and_then(|u| {
        if u.starts_with("postgres://") || u.starts_with("postgresql://") {
            Some(u)
        } else {
            r.fail(
                "store.url",
                format!(
                    "expected a postgres:// or postgresql:// URL, got {:?}",
                    redact_url(&u)
                ),
            )
        }
    });
    let path = r.path("store.path", s.path);
    let store = match kind {
        Some(1) => match url {
            Some(url) => {
                if has_path {
                    r.error(
                        "store.path",
                        "only used when store.kind = \"embedded\" (store.kind is \"postgres\")"
                            .to_owned(),
                    );
                }
                StoreConfig::Postgres { url }
            }
            None => {
                if !has_url {
                    r.error(
                        "store.url",
                        "required when store.kind = \"postgres\" (such as \
                         \"postgres://sipis@127.0.0.1/sipis\")"
                            .to_owned(),
                    );
                }
                StoreConfig::default()
            }
        },
        _ => {
            let wrong = r.bad.contains(&"store.kind") || r.bad.contains(&"store.url");
            if has_url && !wrong {
                r.error(
                    "store.url",
                    "only used when store.kind = \"postgres\" (store.kind is \"embedded\")"
                        .to_owned(),
                );
            }
            StoreConfig::Embedded { path }
        }
    };

    let s = raw.admin.unwrap_or_default();
    let both = s.token.is_some() && s.token_file.is_some();
    let token = r.string("admin.token", s.token);
    let token_file = r.path("admin.token_file", s.token_file);
    let token = match (token, token_file) {
        _ if both => {
            r.error(
                "admin.token_file",
                "set admin.token or admin.token_file, not both",
            );
            AdminToken::None
        }
        (Some(t), _) => AdminToken::Inline(t),
        (_, Some(p)) => AdminToken::File(p),
        (None, None) => AdminToken::None,
    };
    let has_cert = s.tls_cert.is_some();
    let has_key = s.tls_key.is_some();
    let cert = r.path("admin.tls_cert", s.tls_cert);
    let key = r.path("admin.tls_key", s.tls_key);
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => {
            if has_cert && !has_key {
                r.error(
                    "admin.tls_key",
                    "required when admin.tls_cert is set".to_owned(),
                );
            }
            if has_key && !has_cert {
                r.error(
                    "admin.tls_cert",
                    "required when admin.tls_key is set".to_owned(),
                );
            }
            None
        }
    };
    let admin = AdminConfig {
        listen: r
            .socket_addr("admin.listen", s.listen)
            .unwrap_or(d.admin.listen),
        token,
        tls,
        max_connections: r
            .int(
                "admin.max_connections",
                s.max_connections,
                "a count",
                1..=65_536,
            )
            .map_or(d.admin.max_connections, |n| n as u32),
    };

    let s = raw.log.unwrap_or_default();
    let log = LogConfig {
        level: r
            .choice("log.level", s.level, LogLevel::NAMES)
            .map_or(d.log.level, |i| LogLevel::ALL[i]),
        format: r
            .choice("log.format", s.format, LogFormat::NAMES)
            .map_or(d.log.format, |i| {
                if i == 0 {
                    LogFormat::Text
                } else {
                    LogFormat::Json
                }
            }),
    };

    let (tcp, tls) = convert_front(
        raw.tcp.unwrap_or_default(),
        raw.tls.unwrap_or_default(),
        &server,
        r,
    );
    let dns = convert_dns(raw.dns.unwrap_or_default(), r);
    Config {
        server,
        sip,
        calls,
        push,
        mediator,
        store,
        admin,
        log,
        tcp,
        tls,
        dns,
    }
}

/// `[dns]`.
fn convert_dns(s: RawDns, r: &mut Reader) -> DnsConfig {
    let d = DnsConfig::default();
    let secs = Duration::from_secs;
    let servers = match s.servers {
        None => d.servers.clone(),
        Some(toml::Value::Array(items)) => {
            let mut out = Vec::new();
            for v in items {
                // "IP" (port 53) or "IP:port".
                let parsed = match &v {
                    toml::Value::String(t) => t
                        .parse::<SocketAddr>()
                        .ok()
                        .or_else(|| t.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))),
                    _ => None,
                };
                match parsed {
                    Some(a) if a.port() != 0 => out.push(a),
                    _ => r.error(
                        "dns.servers",
                        format!(
                            "expected addresses such as \"192.0.2.53\" or \"127.0.0.1:5353\", got {}",
                            got(&v)
                        ),
                    ),
                }
            }
            out
        }
        Some(other) => {
            r.error(
                "dns.servers",
                format!(
                    "expected a list of addresses such as [\"127.0.0.1:5353\"], got {}",
                    got(&other)
                ),
            );
            d.servers.clone()
        }
    };
    let min_ttl = r
        .duration("dns.min_ttl", s.min_ttl, secs(1)..=secs(86400))
        .unwrap_or(d.min_ttl);
    let max_ttl = r
        .duration("dns.max_ttl", s.max_ttl, secs(1)..=secs(7 * 86400))
        .unwrap_or(d.max_ttl);
    if max_ttl < min_ttl {
        r.error(
            "dns.max_ttl",
            format!(
                "{} must be at least dns.min_ttl ({})",
                format_duration(max_ttl),
                format_duration(min_ttl)
            ),
        );
    }
    DnsConfig {
        servers,
        timeout: r
            .duration(
                "dns.timeout",
                s.timeout,
                Duration::from_millis(100)..=secs(30),
            )
            .unwrap_or(d.timeout),
        attempts: r
            .int("dns.attempts", s.attempts, "a count", 1..=10)
            .map_or(d.attempts, |n| n as u32),
        min_ttl,
        max_ttl,
        retry: r
            .duration("dns.retry", s.retry, secs(1)..=secs(3600))
            .unwrap_or(d.retry),
        failback: r
            .duration("dns.failback", s.failback, secs(0)..=secs(86400))
            .unwrap_or(d.failback),
    }
}

/// `[tcp]` and `[tls]`.
fn convert_front(
    t: RawTcp,
    l: RawTls,
    server: &ServerConfig,
    r: &mut Reader,
) -> (TcpConfig, SipTlsConfig) {
    let d = crate::runtime::front::ConnLimits::default();
    let secs = Duration::from_secs;
    let port = |r: &mut Reader, key, v| r.int(key, v, "a port", 1..=65535).map(|p| p as u16);
    let limits = crate::runtime::front::ConnLimits {
        max_connections: r
            .int(
                "tcp.max_connections",
                t.max_connections,
                "a count",
                1..=1_000_000,
            )
            .map_or(d.max_connections, |n| n as usize),
        max_per_ip: r
            .int(
                "tcp.max_connections_per_ip",
                t.max_connections_per_ip,
                "a count",
                1..=1_000_000,
            )
            .map_or(d.max_per_ip, |n| n as usize),
        tls_handshake_timeout: r
            .duration(
                "tls.handshake_timeout",
                l.handshake_timeout,
                Duration::from_millis(100)..=secs(120),
            )
            .unwrap_or(d.tls_handshake_timeout),
        unregistered_timeout: r
            .duration(
                "tcp.unregistered_timeout",
                t.unregistered_timeout,
                secs(1)..=secs(86_400),
            )
            .unwrap_or(d.unregistered_timeout),
        idle_timeout: r
            .duration(
                "tcp.idle_timeout",
                t.idle_timeout,
                secs(10)..=secs(7 * 86_400),
            )
            .unwrap_or(d.idle_timeout),
        message_timeout: r
            .duration(
                "tcp.message_timeout",
                t.message_timeout,
                Duration::from_millis(100)..=secs(600),
            )
            .unwrap_or(d.message_timeout),
        max_message: server.max_message_bytes,
        max_head: d.max_head.min(server.max_message_bytes),
        max_write_queue: r
            .int(
                "tcp.max_write_queue",
                t.max_write_queue,
                "a size in bytes",
                65_536..=64 << 20,
            )
            .map_or(d.max_write_queue, |n| n as usize),
    };
    let tcp = TcpConfig {
        enabled: r.boolean("tcp.enabled", t.enabled).unwrap_or(true),
        port: port(r, "tcp.port", t.port),
        limits,
    };
    let has_cert = l.cert.is_some();
    let has_key = l.key.is_some();
    let cert = r.path("tls.cert", l.cert);
    let key = r.path("tls.key", l.key);
    let client_ca = r.path("tls.client_ca", l.client_ca);
    let files = match (cert, key) {
        (Some(cert), Some(key)) => Some(crate::runtime::front::TlsSettings {
            cert,
            key,
            client_ca,
        }),
        _ => {
            if has_cert && !has_key {
                r.error("tls.key", "required when tls.cert is set".to_owned());
            }
            if has_key && !has_cert {
                r.error("tls.cert", "required when tls.key is set".to_owned());
            }
            if client_ca.is_some() {
                r.error(
                    "tls.client_ca",
                    "needs tls.cert and tls.key (the TLS listener is off without them)".to_owned(),
                );
            }
            None
        }
    };
    let tls = SipTlsConfig {
        port: port(r, "tls.port", l.port).unwrap_or(5061),
        files,
        upstream_ca: r.path("tls.upstream_ca", l.upstream_ca),
    };
    (tcp, tls)
}

/// `[mediator.apns]`: `None` (after reporting why) unless every required
/// key is present and right.
fn convert_apns(a: RawApns, r: &mut Reader) -> Option<ApnsConfig> {
    const SECTION: &str = "mediator.apns";
    let (has_file, has_key, has_team) = (
        a.key_file.is_some(),
        a.key_id.is_some(),
        a.team_id.is_some(),
    );
    // Apple's key and team ids are 10 characters; a wrong one only shows
    // as a 403 InvalidProviderToken on the first push, so catch it here.
    let key_file = r.path("mediator.apns.key_file", a.key_file);
    let key_id = r.ident("mediator.apns.key_id", a.key_id, 10..=10, "ABC123DEFG");
    let team_id = r.ident("mediator.apns.team_id", a.team_id, 10..=10, "DEF123GHIJ");
    let default_topic = r.ident(
        "mediator.apns.default_topic",
        a.default_topic,
        1..=255,
        "com.example.phone.voip",
    );
    let production_url = r.http_url("mediator.apns.production_url", a.production_url);
    let sandbox_url = r.http_url("mediator.apns.sandbox_url", a.sandbox_url);
    let ca_file = r.path("mediator.apns.ca_file", a.ca_file);
    let key_file = r.required("mediator.apns.key_file", SECTION, key_file, has_file);
    let key_id = r.required("mediator.apns.key_id", SECTION, key_id, has_key);
    let team_id = r.required("mediator.apns.team_id", SECTION, team_id, has_team);
    Some(ApnsConfig {
        key_file: key_file?,
        key_id: key_id?,
        team_id: team_id?,
        default_topic,
        production_url: production_url.unwrap_or_else(|| ApnsConfig::PRODUCTION_URL.to_owned()),
        sandbox_url: sandbox_url.unwrap_or_else(|| ApnsConfig::SANDBOX_URL.to_owned()),
        ca_file,
    })
}

/// `[mediator.fcm]`: `None` (after reporting why) unless the service
/// account file is given.
fn convert_fcm(f: RawFcm, r: &mut Reader) -> Option<FcmConfig> {
    let has_file = f.service_account_file.is_some();
    let file = r.path("mediator.fcm.service_account_file", f.service_account_file);
    // Google project ids are 6..=30 lower-case letters, digits and '-';
    // accept a little more, but nothing that would break the send URL.
    let project_id = r.ident(
        "mediator.fcm.project_id",
        f.project_id,
        1..=64,
        "my-project-123",
    );
    let send_url = r.http_url("mediator.fcm.send_url", f.send_url);
    let token_url = r.http_url("mediator.fcm.token_url", f.token_url);
    let ca_file = r.path("mediator.fcm.ca_file", f.ca_file);
    let file = r.required(
        "mediator.fcm.service_account_file",
        "mediator.fcm",
        file,
        has_file,
    );
    Some(FcmConfig {
        service_account_file: file?,
        project_id,
        send_url: send_url.unwrap_or_else(|| FcmConfig::SEND_URL.to_owned()),
        token_url,
        ca_file,
    })
}

// ---------------------------------------------------------------------------
// File checks
// ---------------------------------------------------------------------------

fn addresses_overlap(a: IpAddr, b: IpAddr) -> bool {
    a == b || a.is_unspecified() || b.is_unspecified()
}

/// `dir` exists and takes a new file, or the nearest existing ancestor does
/// (so `dir` can be created).
fn writable_dir(dir: &Path) -> Result<(), String> {
    let mut probe_dir = dir;
    loop {
        match fs::metadata(probe_dir) {
            Ok(m) if m.is_dir() => break,
            Ok(_) if probe_dir == dir => {
                return Err(format!("{:?} is not a directory", dir.display()));
            }
            Ok(_) => {
                return Err(format!(
                    "{:?} cannot be created: {:?} is not a directory",
                    dir.display(),
                    probe_dir.display()
                ));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                match probe_dir.parent() {
                    Some(p) if !p.as_os_str().is_empty() => probe_dir = p,
                    _ => {
                        probe_dir = Path::new(".");
                        break;
                    }
                }
            }
            Err(e) => return Err(format!("cannot inspect {:?}: {e}", probe_dir.display())),
        }
    }
    let probe = probe_dir.join(format!(".sipis-check-{}", std::process::id()));
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if probe_dir == dir => Err(format!("{:?} is not writable: {e}", dir.display())),
        Err(e) => Err(format!(
            "{:?} does not exist and cannot be created ({:?} is not writable: {e})",
            dir.display(),
            probe_dir.display()
        )),
    }
}

/// A Google service-account key file: JSON with what the OAuth2 flow needs
/// (`project_id` only when `mediator.fcm.project_id` does not give it).
fn service_account_file(path: &Path, fcm: &FcmConfig) -> Result<(), String> {
    let text = fs::read(path).map_err(|e| format!("cannot read {:?}: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
        format!(
            "{:?} is not a service-account JSON file: {e}",
            path.display()
        )
    })?;
    let mut needed = vec!["client_email", "private_key"];
    if fcm.project_id.is_none() {
        needed.push("project_id");
    }
    let missing: Vec<&str> = needed
        .into_iter()
        .filter(|k| !v.get(*k).is_some_and(serde_json::Value::is_string))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{:?} lacks {} (download the key of a service account from the Firebase \
             console: Project settings, Service accounts)",
            path.display(),
            missing.join(", ")
        ));
    }
    Ok(())
}

/// A readable regular file that looks like PEM.
fn pem_file(path: &Path) -> Result<(), String> {
    let mut f =
        fs::File::open(path).map_err(|e| format!("cannot read {:?}: {e}", path.display()))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("cannot read {:?}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{:?} is not a file", path.display()));
    }
    let mut head = Vec::new();
    f.by_ref()
        .take(64 * 1024)
        .read_to_end(&mut head)
        .map_err(|e| format!("cannot read {:?}: {e}", path.display()))?;
    if !head.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(format!(
            "{:?} is not PEM (no \"-----BEGIN\" line)",
            path.display()
        ));
    }
    Ok(())
}
