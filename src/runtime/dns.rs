//! RFC 3263 resolution of registrars and outbound proxies, off the shards.
//!
//! A registrar URI (or the outbound proxy's, when set) becomes an ordered
//! list of [`Target`]s — address and transport — that the engine tries in
//! turn (a REGISTER that times out, gets 503 or whose connection fails goes
//! to the next):
//!
//! - an IP address: that address, the URI's port or 5060/5061, its
//!   `transport` or UDP (TLS for `sips:`); no DNS;
//! - a name with a port: its A/AAAA records at that port (§4.2);
//! - a name with a `transport` but no port: the SRV records of
//!   `_sip._udp`, `_sip._tcp` or `_sips._tcp` (by priority, then weighted
//!   at random, RFC 2782), else A/AAAA at the default port;
//! - a name alone: its NAPTR records (`SIP+D2U`, `SIP+D2T`, `SIPS+D2T`,
//!   flag `s`, by order and preference; `sips:` only `SIPS+D2T`) and the
//!   SRV records they name (§4.1); without NAPTR, the SRV records of each
//!   transport (UDP, TCP, TLS; `sips:` TLS only); without SRV, A/AAAA at
//!   the default port over UDP (TLS for `sips:`).
//!
//! Answers are kept per host (not per account) for their TTL, clamped to
//! `[dns] min_ttl..=max_ttl`; the refresher thread looks each host in use
//! up again when its answer expires — one lookup per host per TTL — and
//! hands the accounts using it their new targets when they changed. A
//! lookup that fails keeps the last good targets and is tried again after
//! `dns.retry`; an account whose registrar never resolved starts when it
//! does. Lookups run on a small tokio runtime of their own (hickory-
//! resolver); the shards never wait on DNS.

use crate::config::DnsConfig;
use crate::engine::{Target, Transport};
use crate::parser::{Host, Scheme, Uri};
use crate::AccountId;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// What a URI's resolution depends on: two URIs with the same key resolve
/// alike (and share one cache entry and one lookup per TTL).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// `sips:` (TLS only).
    pub secure: bool,
    /// Lower-cased host name.
    pub host: String,
    pub port: Option<u16>,
    pub transport: Option<Transport>,
}

/// How a URI is reached: at once (IP address), or through DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Literal(Target),
    Lookup(Key),
}

/// What [`plan`] makes of a URI (`sip:host[:port][;transport=x]`).
pub fn plan(uri: &str) -> Result<Plan, String> {
    let text = uri.trim().trim_start_matches('<');
    let text = text.split('>').next().unwrap_or(text);
    let u = Uri::parse(text.as_bytes()).map_err(|e| format!("registrar {uri:?}: {e}"))?;
    let secure = u.scheme == Scheme::Sips;
    let transport = match u.transport().map(|t| t.to_ascii_lowercase()) {
        None => None,
        Some(t) if t == b"udp" && !secure => Some(Transport::Udp),
        Some(t) if t == b"tcp" && !secure => Some(Transport::Tcp),
        Some(t) if t == b"tls" || (secure && t == b"tcp") => Some(Transport::Tls),
        Some(t) => {
            return Err(format!(
                "registrar {uri:?}: unsupported transport {:?}",
                String::from_utf8_lossy(&t)
            ))
        }
    };
    let default_transport = if secure {
        Transport::Tls
    } else {
        Transport::Udp
    };
    let literal = |ip: IpAddr| {
        let t = transport.unwrap_or(default_transport);
        Plan::Literal(Target {
            addr: SocketAddr::new(ip, u.port.unwrap_or(default_port(t))),
            transport: t,
        })
    };
    Ok(match u.host {
        Host::V4(a) => literal(IpAddr::V4(a)),
        Host::V6(a) => literal(IpAddr::V6(a)),
        Host::Domain(d) => Plan::Lookup(Key {
            secure,
            host: d.to_ascii_lowercase(),
            port: u.port,
            transport,
        }),
        Host::Absent => return Err(format!("registrar {uri:?} has no host")),
    })
}

fn default_port(t: Transport) -> u16 {
    if t == Transport::Tls {
        5061
    } else {
        5060
    }
}

/// One host's answer.
struct Entry {
    /// The last good targets, or why the host never resolved.
    targets: Result<Vec<Target>, String>,
    /// When to look it up again.
    refresh_at: Instant,
    /// The accounts using it.
    accounts: HashSet<AccountId>,
}

#[derive(Default)]
struct State {
    entries: HashMap<Key, Entry>,
    by_account: HashMap<AccountId, Key>,
    stopping: bool,
}

/// The resolver: its own runtime, the hickory resolver, the per-host
/// answers and which accounts use each.
pub struct Dns {
    cfg: DnsConfig,
    rt: tokio::runtime::Runtime,
    resolver: TokioResolver,
    state: Mutex<State>,
    /// Wakes the refresher (a new entry, or stop).
    wake: Condvar,
}

impl Dns {
    /// A resolver asking `cfg.servers`, else those of `/etc/resolv.conf`
    /// (none readable: every name fails to resolve, with that reason).
    /// `ipv6`: whether AAAA records are wanted (the SIP sockets can reach
    /// IPv6 addresses).
    pub fn new(cfg: &DnsConfig, ipv6: bool) -> Result<Dns, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sipis-dns")
            .enable_all()
            .build()
            .map_err(|e| format!("dns runtime: {e}"))?;
        let (config, mut opts) = if cfg.servers.is_empty() {
            match hickory_resolver::system_conf::read_system_conf() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read /etc/resolv.conf: registrar names will not resolve (set dns.servers)");
                    (
                        ResolverConfig::from_name_servers(vec![]),
                        ResolverOpts::default(),
                    )
                }
            }
        } else {
            let servers = cfg
                .servers
                .iter()
                .map(|a| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = a.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = a.port();
                    NameServerConfig::new(a.ip(), true, vec![udp, tcp])
                })
                .collect();
            (
                ResolverConfig::from_name_servers(servers),
                ResolverOpts::default(),
            )
        };
        opts.timeout = cfg.timeout;
        opts.attempts = cfg.attempts as usize;
        opts.ip_strategy = if ipv6 {
            LookupIpStrategy::Ipv4AndIpv6
        } else {
            LookupIpStrategy::Ipv4Only
        };
        // The resolver's own cache agrees with ours: a lookup when our
        // entry expires asks the server.
        opts.positive_min_ttl = Some(cfg.min_ttl);
        opts.positive_max_ttl = Some(cfg.max_ttl);
        opts.negative_min_ttl = Some(cfg.min_ttl.min(cfg.retry));
        opts.negative_max_ttl = Some(cfg.retry);
        let mut builder = hickory_resolver::Resolver::builder_with_config(
            config,
            TokioRuntimeProvider::default(),
        );
        *builder.options_mut() = opts;
        let resolver = builder.build().map_err(|e| format!("dns resolver: {e}"))?;
        Ok(Dns {
            cfg: cfg.clone(),
            rt,
            resolver,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The targets of `uri` for `account`: from the cache when its host was
    /// looked up already, else looked up now (blocking the caller: call it
    /// from the admin API or start-up, never from a shard). The account is
    /// noted as a user of the host (see [`Dns::refresh_due`]); a host that
    /// does not resolve is tried again after `dns.retry`.
    pub fn targets(&self, account: AccountId, uri: &str) -> Result<Vec<Target>, String> {
        let key = match plan(uri) {
            Ok(Plan::Literal(t)) => {
                self.forget(account);
                return Ok(vec![t]);
            }
            Ok(Plan::Lookup(k)) => k,
            Err(e) => {
                self.forget(account);
                return Err(e);
            }
        };
        {
            let mut st = self.state();
            self.attach(&mut st, account, &key);
            if let Some(e) = st.entries.get(&key) {
                return e.targets.clone();
            }
        }
        let now = Instant::now();
        let (targets, refresh_at) = match self.lookup(&key) {
            Ok((t, until)) => (Ok(t), self.clamp(now, until)),
            Err(e) => (Err(e), now + self.cfg.retry),
        };
        let mut st = self.state();
        let entry = st.entries.entry(key.clone()).or_insert_with(|| Entry {
            targets: targets.clone(),
            refresh_at,
            accounts: HashSet::new(),
        });
        entry.accounts.insert(account);
        let out = entry.targets.clone();
        drop(st);
        self.wake.notify_all();
        out
    }

    fn attach(&self, st: &mut State, account: AccountId, key: &Key) {
        if let Some(old) = st.by_account.insert(account, key.clone()) {
            if &old != key {
                if let Some(e) = st.entries.get_mut(&old) {
                    e.accounts.remove(&account);
                }
            }
        }
        if let Some(e) = st.entries.get_mut(key) {
            e.accounts.insert(account);
        }
    }

    /// The account no longer resolves anything (deleted, disabled, or its
    /// registrar is an address now).
    pub fn forget(&self, account: AccountId) {
        let mut st = self.state();
        if let Some(k) = st.by_account.remove(&account) {
            if let Some(e) = st.entries.get_mut(&k) {
                e.accounts.remove(&account);
            }
        }
    }

    /// How many hosts are cached (for tests and metrics).
    pub fn hosts(&self) -> usize {
        self.state().entries.len()
    }

    /// Waits until a cached answer expires (or `stop` is called) and looks
    /// those hosts up again; returns the accounts whose targets changed
    /// (`None` once stopped). Hosts no account uses any more are dropped
    /// instead of looked up.
    pub fn refresh_due(&self) -> Option<Vec<AccountId>> {
        let due: Vec<Key> = {
            let mut st = self.state();
            loop {
                if st.stopping {
                    return None;
                }
                st.entries.retain(|_, e| !e.accounts.is_empty());
                let now = Instant::now();
                let next = st.entries.values().map(|e| e.refresh_at).min();
                match next {
                    Some(at) if at <= now => break,
                    Some(at) => {
                        st = self
                            .wake
                            .wait_timeout(st, at - now)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                    None => {
                        st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                    }
                }
            }
            let now = Instant::now();
            st.entries
                .iter()
                .filter(|(_, e)| e.refresh_at <= now)
                .map(|(k, _)| k.clone())
                .collect()
        };
        let mut changed = Vec::new();
        for key in due {
            let result = self.lookup(&key);
            let now = Instant::now();
            let mut st = self.state();
            let Some(e) = st.entries.get_mut(&key) else {
                continue;
            };
            match result {
                Ok((targets, until)) => {
                    e.refresh_at = self.clamp(now, until);
                    if e.targets.as_ref().ok() != Some(&targets) {
                        tracing::info!(host = %key.host, targets = ?targets, "registrar targets changed");
                        e.targets = Ok(targets);
                        changed.extend(e.accounts.iter().copied());
                    }
                }
                Err(err) => {
                    e.refresh_at = now + self.cfg.retry;
                    match &e.targets {
                        Ok(_) => {
                            tracing::warn!(host = %key.host, error = %err, "registrar lookup failed: keeping its last targets")
                        }
                        Err(_) => e.targets = Err(err),
                    }
                }
            }
        }
        Some(changed)
    }

    /// Ends [`Dns::refresh_due`] (now or when its lookups are done).
    pub fn stop(&self) {
        self.state().stopping = true;
        self.wake.notify_all();
    }

    fn clamp(&self, now: Instant, until: Instant) -> Instant {
        let ttl = until.saturating_duration_since(now);
        now + ttl.clamp(self.cfg.min_ttl, self.cfg.max_ttl)
    }

    /// Looks `key` up (RFC 3263): the targets in order and until when the
    /// answer holds.
    pub fn lookup(&self, key: &Key) -> Result<(Vec<Target>, Instant), String> {
        let r = self
            .rt
            .block_on(resolve(&self.resolver, key, self.cfg.retry));
        match r {
            Ok((t, _)) if t.is_empty() => {
                Err(format!("registrar host {} has no address", key.host))
            }
            Ok(ok) => Ok(ok),
            Err(e) => Err(format!("cannot resolve registrar host {}: {e}", key.host)),
        }
    }
}

/// The fully qualified form of a name (no search list).
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

/// A lookup's outcome: records (with when they expire), none (with when
/// that answer expires), or an error (timeout, SERVFAIL...).
enum Answer<T> {
    Found(T, Instant),
    None(Instant),
}

fn no_records(e: &NetError, retry: Duration) -> Option<Instant> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(n)) => Some(
            Instant::now()
                + n.negative_ttl
                    .map_or(retry, |t| Duration::from_secs(u64::from(t))),
        ),
        _ => None,
    }
}

async fn lookup_records(
    r: &TokioResolver,
    name: &str,
    rtype: RecordType,
    retry: Duration,
) -> Result<Answer<Vec<RData>>, NetError> {
    match r.lookup(fqdn(name), rtype).await {
        Ok(l) => {
            let data: Vec<RData> = l
                .answers()
                .iter()
                .filter(|rec| rec.record_type() == rtype)
                .map(|rec| rec.data.clone())
                .collect();
            if data.is_empty() {
                Ok(Answer::None(Instant::now() + retry))
            } else {
                Ok(Answer::Found(data, l.valid_until()))
            }
        }
        Err(e) => match no_records(&e, retry) {
            Some(until) => Ok(Answer::None(until)),
            None => Err(e),
        },
    }
}

async fn lookup_addrs(
    r: &TokioResolver,
    host: &str,
    retry: Duration,
) -> Result<Answer<Vec<IpAddr>>, NetError> {
    match r.lookup_ip(fqdn(host)).await {
        Ok(l) => {
            let ips: Vec<IpAddr> = l.iter().collect();
            if ips.is_empty() {
                Ok(Answer::None(Instant::now() + retry))
            } else {
                Ok(Answer::Found(ips, l.valid_until()))
            }
        }
        Err(e) => match no_records(&e, retry) {
            Some(until) => Ok(Answer::None(until)),
            None => Err(e),
        },
    }
}

/// The SRV name of a transport.
fn srv_name(t: Transport, host: &str) -> String {
    match t {
        Transport::Udp => format!("_sip._udp.{host}"),
        Transport::Tcp => format!("_sip._tcp.{host}"),
        Transport::Tls => format!("_sips._tcp.{host}"),
    }
}

/// RFC 2782 order: by priority, and within a priority by weight, drawn at
/// random (a weight-0 record is picked rarely but still picked).
fn srv_order(mut records: Vec<(u16, u16, u16, String)>) -> Vec<(u16, String)> {
    records.sort_by_key(|r| r.0);
    let mut out = Vec::with_capacity(records.len());
    let mut i = 0;
    while i < records.len() {
        let prio = records[i].0;
        let mut group: Vec<_> = records[i..]
            .iter()
            .take_while(|r| r.0 == prio)
            .cloned()
            .collect();
        i += group.len();
        // Zero weights first, as RFC 2782 says, so they get a small chance.
        group.sort_by_key(|r| r.1 != 0);
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.1)).sum();
            let pick = if total == 0 {
                0
            } else {
                let n = random_u32() % (total + 1);
                let mut run = 0u32;
                group
                    .iter()
                    .position(|r| {
                        run += u32::from(r.1);
                        run >= n
                    })
                    .unwrap_or(0)
            };
            let r = group.remove(pick);
            out.push((r.2, r.3));
        }
    }
    out
}

fn random_u32() -> u32 {
    getrandom::u32().unwrap_or(0)
}

/// The targets of one SRV name (empty when it has none), and until when.
async fn srv_targets(
    r: &TokioResolver,
    name: &str,
    transport: Transport,
    retry: Duration,
    until: &mut Instant,
) -> Result<Vec<Target>, NetError> {
    let records = match lookup_records(r, name, RecordType::SRV, retry).await? {
        Answer::None(u) => {
            *until = (*until).min(u);
            return Ok(vec![]);
        }
        Answer::Found(d, u) => {
            *until = (*until).min(u);
            d
        }
    };
    let srvs: Vec<(u16, u16, u16, String)> = records
        .into_iter()
        .filter_map(|d| match d {
            RData::SRV(s) => Some((
                s.priority,
                s.weight,
                s.port,
                s.target
                    .to_ascii()
                    .trim_end_matches('.')
                    .to_ascii_lowercase(),
            )),
            _ => None,
        })
        // "." : the service is decidedly not available here.
        .filter(|s| !s.3.is_empty())
        .collect();
    let mut out = Vec::new();
    for (port, host) in srv_order(srvs) {
        // A target that does not resolve is skipped; one that errs too.
        match lookup_addrs(r, &host, retry).await {
            Ok(Answer::Found(ips, u)) => {
                *until = (*until).min(u);
                for ip in ips {
                    let t = Target {
                        addr: SocketAddr::new(ip, port),
                        transport,
                    };
                    if !out.contains(&t) {
                        out.push(t);
                    }
                }
            }
            Ok(Answer::None(u)) => *until = (*until).min(u),
            Err(e) => tracing::debug!(target = %host, error = %e, "SRV target did not resolve"),
        }
    }
    Ok(out)
}

/// A/AAAA of `host`, each address a target at `port` over `t`.
async fn by_address(
    r: &TokioResolver,
    host: &str,
    t: Transport,
    port: u16,
    retry: Duration,
    until: &mut Instant,
) -> Result<Vec<Target>, NetError> {
    match lookup_addrs(r, host, retry).await? {
        Answer::Found(ips, u) => {
            *until = (*until).min(u);
            Ok(ips
                .into_iter()
                .map(|ip| Target {
                    addr: SocketAddr::new(ip, port),
                    transport: t,
                })
                .collect())
        }
        Answer::None(u) => {
            *until = (*until).min(u);
            Ok(vec![])
        }
    }
}

/// RFC 3263 §4.1 and §4.2 for a host name.
async fn resolve(
    r: &TokioResolver,
    key: &Key,
    retry: Duration,
) -> Result<(Vec<Target>, Instant), NetError> {
    let far = Instant::now() + Duration::from_secs(7 * 86400);
    let mut until = far;
    let host = key.host.as_str();
    let default_t = if key.secure {
        Transport::Tls
    } else {
        Transport::Udp
    };
    // An explicit port: A/AAAA only.
    if let Some(port) = key.port {
        let t = key.transport.unwrap_or(default_t);
        let out = by_address(r, host, t, port, retry, &mut until).await?;
        return Ok((out, until));
    }
    // An explicit transport: its SRV records, else A/AAAA.
    if let Some(t) = key.transport {
        let mut out = srv_targets(r, &srv_name(t, host), t, retry, &mut until).await?;
        if out.is_empty() {
            out = by_address(r, host, t, default_port(t), retry, &mut until).await?;
        }
        return Ok((out, until));
    }
    // NAPTR.
    let mut out: Vec<Target> = Vec::new();
    let naptr = lookup_records(r, host, RecordType::NAPTR, retry).await?;
    if let Answer::None(u) = naptr {
        until = until.min(u);
    } else if let Answer::Found(records, u) = naptr {
        until = until.min(u);
        let mut naptrs: Vec<(u16, u16, Transport, String)> = records
            .into_iter()
            .filter_map(|d| match d {
                RData::NAPTR(n) => {
                    if !n.flags.eq_ignore_ascii_case(b"s") {
                        return None;
                    }
                    let t = match n.services.to_ascii_uppercase().as_slice() {
                        b"SIP+D2U" if !key.secure => Transport::Udp,
                        b"SIP+D2T" if !key.secure => Transport::Tcp,
                        b"SIPS+D2T" => Transport::Tls,
                        _ => return None,
                    };
                    let name = n
                        .replacement
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase();
                    Some((n.order, n.preference, t, name))
                }
                _ => None,
            })
            .collect();
        naptrs.sort_by_key(|n| (n.0, n.1));
        for (_, _, t, name) in naptrs {
            for target in srv_targets(r, &name, t, retry, &mut until).await? {
                if !out.contains(&target) {
                    out.push(target);
                }
            }
        }
    }
    if out.is_empty() {
        // No (usable) NAPTR: SRV of each transport.
        let transports: &[Transport] = if key.secure {
            &[Transport::Tls]
        } else {
            &[Transport::Udp, Transport::Tcp, Transport::Tls]
        };
        for &t in transports {
            out.extend(srv_targets(r, &srv_name(t, host), t, retry, &mut until).await?);
        }
    }
    if out.is_empty() {
        out = by_address(
            r,
            host,
            default_t,
            default_port(default_t),
            retry,
            &mut until,
        )
        .await?;
    }
    Ok((out, until))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_plan_as_rfc_3263_says() {
        let t = |a: &str, t| {
            Plan::Literal(Target {
                addr: a.parse().unwrap(),
                transport: t,
            })
        };
        assert_eq!(
            plan("sip:192.0.2.1").unwrap(),
            t("192.0.2.1:5060", Transport::Udp)
        );
        assert_eq!(
            plan("sips:192.0.2.1").unwrap(),
            t("192.0.2.1:5061", Transport::Tls)
        );
        assert_eq!(
            plan("sip:[2001:db8::1]:5070;transport=tcp").unwrap(),
            t("[2001:db8::1]:5070", Transport::Tcp)
        );
        assert_eq!(
            plan("<sip:Provider.Example;transport=TLS>").unwrap(),
            Plan::Lookup(Key {
                secure: false,
                host: "provider.example".into(),
                port: None,
                transport: Some(Transport::Tls),
            })
        );
        assert_eq!(
            plan("sips:provider.example:5071").unwrap(),
            Plan::Lookup(Key {
                secure: true,
                host: "provider.example".into(),
                port: Some(5071),
                transport: None,
            })
        );
        assert!(plan("sip:provider.example;transport=sctp").is_err());
        assert!(plan("mailto:x").is_err());
    }

    #[test]
    fn srv_order_is_by_priority_then_weight() {
        let recs = vec![
            (20, 0, 1, "c".to_string()),
            (10, 100, 2, "a".to_string()),
            (10, 0, 3, "b".to_string()),
            (30, 5, 4, "d".to_string()),
        ];
        let mut first_a = 0;
        for _ in 0..200 {
            let o = srv_order(recs.clone());
            let names: Vec<&str> = o.iter().map(|x| x.1.as_str()).collect();
            assert_eq!(&names[2..], ["c", "d"]);
            if names[0] == "a" {
                first_a += 1;
            }
        }
        // Weight 100 against 0: "a" first nearly always, "b" now and then.
        assert!(first_a > 150, "{first_a}");
    }
}
