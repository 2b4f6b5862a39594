//! Registration on behalf (RFC 3261 §10): one state machine per upstream
//! account, keeping a binding `sip:<token>@<sipis>` alive at the provider's
//! registrar.
//!
//! The machine decides *what* to send and *when*; the engine owns the
//! transactions, the timer wheel and the rate limiter. Each cycle is:
//! REGISTER → (401/407 → REGISTER with credentials) → 2xx → refresh armed
//! before the granted expiry. Failures back off exponentially with jitter;
//! rejected credentials stop the account (no retry storm) until its
//! configuration changes.

use super::digest::{self, Account as DigestAccount, Challenge, DigestClient, Secret};
use super::rng::Rng;
use bytes::BytesMut;
use sipis_parser::{HeaderName, Message, Method, Writer};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Operator-facing identifier of an account (the store's key).
pub type AccountId = u64;

/// The account's secret towards its provider.
#[derive(Clone, PartialEq, Eq)]
pub enum AccountSecret {
    Password(String),
    /// HA1 hex, computed for the registrar's realm and algorithm.
    Ha1(String),
}

impl fmt::Debug for AccountSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AccountSecret::Password(_) => "Password(<redacted>)",
            AccountSecret::Ha1(_) => "Ha1(<redacted>)",
        })
    }
}

/// Where and how an account registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registrar {
    /// Request-URI of the REGISTER, e.g. `sip:provider.example`.
    pub uri: String,
    /// Where the REGISTER is sent, in the order to try them: the
    /// registrar's (or outbound proxy's) addresses and transports as the
    /// shell resolved them (RFC 3263: NAPTR, SRV by priority and weight,
    /// A/AAAA; the engine does no DNS). Never empty. The engine sends to
    /// one at a time and moves to the next when a REGISTER times out, gets
    /// a 503 or its connection fails (RFC 3263 §4.3).
    pub targets: Vec<Target>,
    /// An outbound proxy URI, written as a loose `Route` when set.
    pub outbound_proxy: Option<String>,
}

/// One place a registrar or outbound proxy is reached at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    pub addr: SocketAddr,
    pub transport: Transport,
}

/// How an account's REGISTERs travel to its registrar (or outbound proxy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Registrar {
    /// A registrar reached at one address, over the transport its URI (or
    /// the outbound proxy's) names: what a URI with an IP address, or
    /// resolved without RFC 3263, gives.
    pub fn new(uri: impl Into<String>, addr: SocketAddr, outbound_proxy: Option<String>) -> Self {
        let mut r = Registrar {
            uri: uri.into(),
            targets: Vec::new(),
            outbound_proxy,
        };
        let transport = r.transport().0;
        r.targets.push(Target { addr, transport });
        r
    }

    /// The first target's address (where a registration starts).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.targets.first().map(|t| t.addr)
    }

    /// The transport and TLS server name of the first hop: the outbound
    /// proxy's URI when set, else the registrar's. `sips:` or
    /// `;transport=tls` is TLS, `;transport=tcp` TCP (RFC 3261 §19.1.2,
    /// §26.2), anything else UDP. The server name is the URI's host when
    /// it is a name (certificates name hosts; an IP literal is checked as
    /// an IP address).
    pub fn transport(&self) -> (Transport, Option<String>) {
        let uri = self.outbound_proxy.as_deref().unwrap_or(&self.uri);
        let uri = uri.trim().trim_start_matches('<');
        let uri = uri.split('>').next().unwrap_or(uri);
        let Ok(u) = sipis_parser::Uri::parse(uri.as_bytes()) else {
            return (Transport::Udp, None);
        };
        let t = u.transport().map(|t| t.to_ascii_lowercase());
        let transport =
            if u.scheme == sipis_parser::Scheme::Sips || t.as_deref() == Some(&b"tls"[..]) {
                Transport::Tls
            } else if t.as_deref() == Some(&b"tcp"[..]) {
                Transport::Tcp
            } else {
                Transport::Udp
            };
        let name = match u.host {
            sipis_parser::Host::Domain(d) => Some(d.to_ascii_lowercase()),
            _ => None,
        };
        (transport, name)
    }
}

/// One provisioned upstream account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountConfig {
    pub id: AccountId,
    /// Address of record, e.g. `sip:alice@provider.example`.
    pub aor: String,
    /// Digest user name.
    pub auth_user: String,
    pub secret: AccountSecret,
    /// `None`: proxy mode — calls reach sipis by routing, nothing to register.
    pub registrar: Option<Registrar>,
    /// Wanted binding lifetime in seconds.
    pub expires: u32,
    /// Unique Contact user part that routes the provider's INVITEs back to
    /// this account in O(1).
    pub token: String,
}

/// The part of a registration that must survive a restart, so the next
/// REGISTER refreshes the same binding (RFC 3261 §10.2.4: same Call-ID,
/// higher CSeq) instead of leaving a stale duplicate at the registrar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedRegistration {
    pub call_id: String,
    /// The last CSeq sent.
    pub cseq: u32,
    /// The last granted lifetime in seconds (0 if never registered).
    pub granted: u32,
}

/// Why an account is not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegError {
    /// The registrar rejected our credentials (401/407 again after we
    /// answered its challenge).
    AuthRejected(u16),
    /// 403 Forbidden.
    Forbidden,
    /// No response within Timer F (RFC 3261 §17.1.2.2).
    Timeout,
    /// The transport reported the destination unreachable (§17.1.4).
    TransportError,
    /// A final response that is neither success nor handled specially.
    Status(u16),
    /// The challenge could not be answered (unknown algorithm, auth-int...).
    Digest(digest::DigestError),
    /// 423 loops: the registrar keeps asking for more than we can offer.
    IntervalTooBrief,
    /// A 2xx that we could not read.
    BadResponse,
}

impl RegError {
    /// The SIP status code this failure corresponds to (408 for timeouts,
    /// 503 for transport errors, as RFC 3261 §17.1.4 and §8.1.3.1 say a
    /// UAC must treat them).
    pub fn status(self) -> u16 {
        match self {
            RegError::AuthRejected(s) | RegError::Status(s) => s,
            RegError::Forbidden => 403,
            RegError::Timeout => 408,
            RegError::TransportError => 503,
            RegError::Digest(_) => 401,
            RegError::IntervalTooBrief => 423,
            RegError::BadResponse => 502,
        }
    }
}

impl fmt::Display for RegError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegError::AuthRejected(s) => write!(f, "{s}: credentials rejected"),
            RegError::Forbidden => f.write_str("403 Forbidden"),
            RegError::Timeout => f.write_str("408 no response from registrar"),
            RegError::TransportError => f.write_str("503 registrar unreachable"),
            RegError::Status(s) => write!(f, "{s} from registrar"),
            RegError::Digest(e) => write!(f, "cannot answer challenge: {e}"),
            RegError::IntervalTooBrief => f.write_str("423 loop: Min-Expires not satisfiable"),
            RegError::BadResponse => f.write_str("unreadable 2xx"),
        }
    }
}

/// Where an account's registration stands, as the admin API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegStatus {
    /// Waiting for its first REGISTER (scheduled or rate limited).
    Pending,
    /// A REGISTER is in flight.
    Registering,
    /// Bound at the registrar until `expires_at`.
    Registered { expires_at: Instant, granted: u32 },
    /// Failed, will try again at `next`.
    Retrying { error: RegError, next: Instant },
    /// Failed for good until the account's configuration changes.
    Failed { error: RegError },
    /// Unregistered on request (Expires: 0 accepted), or proxy mode.
    Unregistered,
}

/// Tunables of registration on behalf.
#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    /// First back-off delay after a failure.
    pub retry_base: Duration,
    /// Longest back-off delay.
    pub retry_max: Duration,
    /// `User-Agent` written in REGISTERs.
    pub user_agent: String,
    /// How often a registrar that stopped answering is probed with OPTIONS
    /// until it answers again (then every account bound there registers
    /// again).
    pub probe_interval: Duration,
    /// OPTIONS keep-alive to each registrar while it answers, to notice an
    /// outage before a refresh does; `None`: off.
    pub keepalive: Option<Duration>,
    /// How long an account registered at a later target (after the first
    /// failed) stays there before a refresh tries the first one again.
    pub failback: Duration,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        RegistrationConfig {
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
            user_agent: concat!("sipis/", env!("CARGO_PKG_VERSION")).into(),
            probe_interval: Duration::from_secs(5),
            keepalive: None,
            failback: Duration::from_secs(600),
        }
    }
}

/// How many 423s in a row we follow before giving up (a registrar that
/// raises Min-Expires every time would otherwise loop forever).
const MAX_INTERVAL_RETRIES: u32 = 3;

/// What the engine should do after an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Send the next REGISTER at this instant (through the rate limiter).
    SendAt(Instant),
    /// Send again at once: a continuation of the same attempt (challenge
    /// answered, 423 followed), which goes ahead of new cycles.
    SendNow,
    /// Nothing scheduled.
    Idle,
}

/// One account's registration state machine.
pub struct Registration {
    call_id: String,
    from_tag: String,
    cseq: u32,
    digest: DigestClient,
    /// Authorization header prepared from the last challenge: (header name, value).
    pending_auth: Option<(&'static str, String)>,
    /// Whether the last challenge came as a 407 (Proxy-Authorization).
    proxy_auth: bool,
    /// Credentialed sends in the current attempt.
    auth_attempts: u32,
    /// Failures in a row (back-off exponent).
    failures: u32,
    interval_retries: u32,
    /// Expires we ask for (raised by 423 Min-Expires).
    expires: u32,
    granted: u32,
    /// Whether the binding should exist (false after an unregister request).
    want_bound: bool,
    /// Whether the current binding has been refreshed since it was first
    /// granted in this process (decides the refresh spread, see
    /// [`refresh_delay`]).
    refreshed: bool,
    status: RegStatus,
    /// Index of the registrar target REGISTERs go to now.
    target: usize,
    /// Targets that failed in the current attempt (the attempt backs off
    /// once every target has).
    targets_failed: usize,
    /// When the account moved off the first target (for the fail-back).
    failed_over_at: Option<Instant>,
}

impl Registration {
    /// A new registration, or one restored from saved state (same Call-ID,
    /// CSeq continuing after the saved one).
    pub fn new(
        cfg: &AccountConfig,
        saved: Option<&SavedRegistration>,
        contact_host: &str,
        rng: &mut Rng,
    ) -> Self {
        let (call_id, cseq, granted) = match saved {
            Some(s) => (s.call_id.clone(), s.cseq, s.granted),
            None => {
                let mut c = String::with_capacity(48);
                rng.hex_into(&mut c, 16);
                rng.hex_into(&mut c, 16);
                c.push('@');
                c.push_str(contact_host.split(':').next().unwrap_or(contact_host));
                (c, 0, 0)
            }
        };
        let mut from_tag = String::with_capacity(12);
        rng.hex_into(&mut from_tag, 12);
        Registration {
            call_id,
            from_tag,
            cseq,
            digest: DigestClient::new(rng.seed32()),
            pending_auth: None,
            proxy_auth: false,
            auth_attempts: 0,
            failures: 0,
            interval_retries: 0,
            expires: cfg.expires,
            granted,
            want_bound: cfg.registrar.is_some(),
            refreshed: false,
            status: if cfg.registrar.is_some() {
                RegStatus::Pending
            } else {
                RegStatus::Unregistered
            },
            target: 0,
            targets_failed: 0,
            failed_over_at: None,
        }
    }

    /// The index in the registrar's `targets` of where REGISTERs go now.
    pub fn target(&self) -> usize {
        self.target
    }

    /// The registrar's targets changed (DNS re-resolved, same account
    /// otherwise): the account stays on its target if it is still listed,
    /// else starts again from the first. Nothing is sent now: the next
    /// REGISTER (refresh or retry) goes to the new target.
    pub fn retarget(&mut self, old: &[Target], new: &[Target]) {
        let current = old.get(self.target);
        match current.and_then(|c| new.iter().position(|t| t == c)) {
            Some(i) => self.target = i,
            None => {
                self.target = 0;
                self.failed_over_at = None;
            }
        }
        if self.target == 0 {
            self.failed_over_at = None;
        }
        self.targets_failed = self.targets_failed.min(new.len().saturating_sub(1));
    }

    /// The REGISTER to the current target failed in a way that says that
    /// target is unusable (timeout, transport error, 503): the next target
    /// gets the REGISTER at once, unless every target failed in this
    /// attempt, when the attempt backs off (`None`) and the next starts
    /// from the first target again.
    fn fail_over(&mut self, now: Instant, cfg: &AccountConfig) -> Option<Next> {
        let n = cfg.registrar.as_ref().map_or(0, |r| r.targets.len());
        self.targets_failed += 1;
        if self.targets_failed >= n {
            self.targets_failed = 0;
            self.target = 0;
            self.failed_over_at = None;
            return None;
        }
        self.target = (self.target + 1) % n;
        if self.failed_over_at.is_none() {
            self.failed_over_at = Some(now);
        }
        // A new server: no nonce of the old one, and a fresh attempt.
        self.digest.clear();
        self.reset_attempt();
        Some(Next::SendNow)
    }

    pub fn status(&self) -> RegStatus {
        self.status
    }

    /// The state to persist.
    pub fn saved(&self) -> SavedRegistration {
        SavedRegistration {
            call_id: self.call_id.clone(),
            cseq: self.cseq,
            granted: self.granted,
        }
    }

    /// Asks for the binding to be removed (REGISTER with Expires: 0).
    pub fn unregister(&mut self) -> Next {
        self.want_bound = false;
        self.reset_attempt();
        Next::SendNow
    }

    /// Credentials or expiry changed: start a fresh attempt.
    pub fn reconfigure(&mut self, cfg: &AccountConfig) -> Next {
        self.expires = cfg.expires;
        self.digest.clear();
        self.reset_attempt();
        self.failures = 0;
        self.target = 0;
        self.targets_failed = 0;
        self.failed_over_at = None;
        self.want_bound = cfg.registrar.is_some();
        if self.want_bound {
            self.status = RegStatus::Pending;
            Next::SendNow
        } else {
            self.status = RegStatus::Unregistered;
            Next::Idle
        }
    }

    fn reset_attempt(&mut self) {
        self.pending_auth = None;
        self.auth_attempts = 0;
        self.interval_retries = 0;
    }

    /// Writes the next REGISTER into `out` (a new CSeq each time, the
    /// Call-ID of the binding). `via` is `host:port` of the socket or
    /// listener it leaves by, `contact_host` the public `host:port` the
    /// provider reaches sipis at, both for `transport`.
    #[allow(clippy::too_many_arguments)]
    pub fn write_register(
        &mut self,
        cfg: &AccountConfig,
        transport: Transport,
        via: &str,
        contact_host: &str,
        branch: &str,
        user_agent: &str,
        out: &mut BytesMut,
    ) -> Result<(), RegError> {
        let reg = cfg.registrar.as_ref().ok_or(RegError::Status(0))?;
        self.cseq = self.cseq.wrapping_add(1).max(1);
        let expires = if self.want_bound { self.expires } else { 0 };
        // Credentials: the answer to a challenge just received, else the
        // last nonce again with nc+1 (saves a 401 round trip per refresh).
        let mut auth = self.pending_auth.take();
        if auth.is_none() {
            let mut v = String::new();
            let account = digest_account(cfg);
            if self
                .digest
                .reauthorize(&account, "REGISTER", &reg.uri, &mut v)
                .is_ok()
            {
                auth = Some((auth_header(self.proxy_auth), v));
            }
        }
        if auth.is_some() {
            self.auth_attempts += 1;
        }

        let mut w = Writer::request(out, Method::Register, reg.uri.as_bytes());
        match transport {
            Transport::Udp => {
                w.via("UDP", via, branch.as_bytes(), true);
            }
            Transport::Tcp | Transport::Tls => {
                // RFC 5923 `alias`: the registrar may send requests for
                // this Contact back over this connection.
                w.header_with("Via", |o| {
                    o.extend_from_slice(if transport == Transport::Tls {
                        b"SIP/2.0/TLS "
                    } else {
                        b"SIP/2.0/TCP "
                    });
                    o.extend_from_slice(via.as_bytes());
                    o.extend_from_slice(b";branch=");
                    o.extend_from_slice(branch.as_bytes());
                    o.extend_from_slice(b";rport;alias");
                });
            }
        }
        w.header("Max-Forwards", b"70");
        if let Some(proxy) = &reg.outbound_proxy {
            w.header_with("Route", |o| {
                o.extend_from_slice(b"<");
                o.extend_from_slice(proxy.as_bytes());
                o.extend_from_slice(b";lr>");
            });
        }
        w.header_with("From", |o| {
            o.extend_from_slice(b"<");
            o.extend_from_slice(cfg.aor.as_bytes());
            o.extend_from_slice(b">;tag=");
            o.extend_from_slice(self.from_tag.as_bytes());
        });
        w.header_with("To", |o| {
            o.extend_from_slice(b"<");
            o.extend_from_slice(cfg.aor.as_bytes());
            o.extend_from_slice(b">");
        });
        w.header("Call-ID", self.call_id.as_bytes());
        w.header_with("CSeq", |o| {
            sipis_parser::put_u32(o, self.cseq);
            o.extend_from_slice(b" REGISTER");
        });
        w.header_with("Contact", |o| {
            o.extend_from_slice(b"<sip:");
            o.extend_from_slice(cfg.token.as_bytes());
            o.extend_from_slice(b"@");
            o.extend_from_slice(contact_host.as_bytes());
            match transport {
                Transport::Udp => {}
                Transport::Tcp => o.extend_from_slice(b";transport=tcp"),
                Transport::Tls => o.extend_from_slice(b";transport=tls"),
            }
            o.extend_from_slice(b">;expires=");
            sipis_parser::put_u32(o, expires);
        });
        w.header_u32("Expires", expires);
        if let Some((name, value)) = &auth {
            w.header(name, value.as_bytes());
        }
        w.header("User-Agent", user_agent.as_bytes());
        w.finish(b"");
        self.status = RegStatus::Registering;
        Ok(())
    }

    /// A final response to our REGISTER (provisionals are not passed here).
    pub fn on_response(
        &mut self,
        now: Instant,
        cfg: &AccountConfig,
        rc: &RegistrationConfig,
        resp: &Message<'_, '_>,
        rng: &mut Rng,
    ) -> Next {
        let code = resp.status().unwrap_or(500);
        match code {
            200..=299 => self.on_success(now, cfg, rc, resp, rng),
            401 | 407 => self.on_challenge(cfg, resp, code),
            403 => self.fail(RegError::Forbidden),
            423 => {
                let min = resp.min_expires().ok().flatten().unwrap_or(0);
                self.interval_retries += 1;
                if min <= self.expires || self.interval_retries > MAX_INTERVAL_RETRIES {
                    return self.retry(now, rc, RegError::IntervalTooBrief, None, rng);
                }
                // RFC 3261 §10.2.8: retry with at least Min-Expires.
                self.expires = min;
                self.pending_auth = None;
                Next::SendNow
            }
            600..=699 => self.fail(RegError::Status(code)),
            503 if self.want_bound => match self.fail_over(now, cfg) {
                Some(next) => next,
                None => {
                    let retry_after = resp.retry_after().ok().flatten();
                    self.retry(now, rc, RegError::Status(code), retry_after, rng)
                }
            },
            _ => {
                let retry_after = resp.retry_after().ok().flatten();
                self.retry(now, rc, RegError::Status(code), retry_after, rng)
            }
        }
    }

    /// The REGISTER transaction timed out (Timer F) or hit a transport
    /// error: the next target if there is one (RFC 3263 §4.3), else
    /// back-off.
    pub fn on_failure(
        &mut self,
        now: Instant,
        cfg: &AccountConfig,
        rc: &RegistrationConfig,
        error: RegError,
        rng: &mut Rng,
    ) -> Next {
        if self.want_bound {
            if let Some(next) = self.fail_over(now, cfg) {
                return next;
            }
        }
        self.retry(now, rc, error, None, rng)
    }

    fn on_success(
        &mut self,
        now: Instant,
        cfg: &AccountConfig,
        rc: &RegistrationConfig,
        resp: &Message<'_, '_>,
        rng: &mut Rng,
    ) -> Next {
        self.reset_attempt();
        self.failures = 0;
        self.targets_failed = 0;
        // Registered at a later target for long enough: the next refresh
        // tries the first (preferred) one again.
        if self
            .failed_over_at
            .is_some_and(|t| now.saturating_duration_since(t) >= rc.failback)
        {
            self.target = 0;
            self.failed_over_at = None;
        }
        if !self.want_bound {
            self.granted = 0;
            self.status = RegStatus::Unregistered;
            return Next::Idle;
        }
        // The lifetime granted to *our* contact: its expires param, else the
        // Expires header, else what we asked (RFC 3261 §10.2.4).
        let mut ours = None;
        for c in resp.contacts().map_while(Result::ok) {
            let Some(addr) = c.addr() else { continue };
            if addr.uri.user == Some(cfg.token.as_bytes()) {
                ours = Some(c.expires().and_then(Result::ok));
                break;
            }
        }
        let granted = match ours {
            Some(Some(e)) => e,
            _ => resp.expires().ok().flatten().unwrap_or(self.expires),
        };
        if granted == 0 {
            // The registrar dropped the binding although we asked for it.
            return self.retry(now, rc, RegError::BadResponse, None, rng);
        }
        self.granted = granted;
        let expires_at = now + Duration::from_secs(u64::from(granted));
        let first = !std::mem::replace(&mut self.refreshed, true);
        self.status = RegStatus::Registered {
            expires_at,
            granted,
        };
        Next::SendAt(now + refresh_delay(granted, first, rng))
    }

    fn on_challenge(&mut self, cfg: &AccountConfig, resp: &Message<'_, '_>, code: u16) -> Next {
        let name = if code == 407 {
            HeaderName::ProxyAuthenticate
        } else {
            HeaderName::WwwAuthenticate
        };
        let auths: Vec<_> = resp
            .auth(name)
            .filter_map(Result::ok)
            .filter(|a| a.is_digest())
            .collect();
        let challenges: Vec<Challenge<'_>> = auths
            .iter()
            .filter_map(|a| {
                Challenge::from_params(
                    a.params()
                        .map_while(Result::ok)
                        .filter_map(|p| std::str::from_utf8(p.value).ok().map(|v| (p.name, v))),
                )
                .ok()
            })
            .collect();
        let Some(ch) = digest::pick(&challenges) else {
            return self.fail(RegError::Digest(digest::DigestError::NoChallenge));
        };
        if self.auth_attempts > 0 && !self.digest.should_retry(ch, self.auth_attempts) {
            return self.fail(RegError::AuthRejected(code));
        }
        let Some(reg) = cfg.registrar.as_ref() else {
            return Next::Idle;
        };
        let mut v = String::new();
        match self
            .digest
            .authorize(ch, &digest_account(cfg), "REGISTER", &reg.uri, &mut v)
        {
            Ok(()) => {
                self.proxy_auth = code == 407;
                self.pending_auth = Some((auth_header(self.proxy_auth), v));
                Next::SendNow
            }
            Err(e) => self.fail(RegError::Digest(e)),
        }
    }

    /// The registrar stopped answering: a binding that looked live may be
    /// gone with it, so it no longer says `Registered` (its refresh timer
    /// stays; the registrar's recovery registers it again at once).
    pub fn doubt(&mut self, error: RegError) -> bool {
        if let RegStatus::Registered { expires_at, .. } = self.status {
            self.status = RegStatus::Retrying {
                error,
                next: expires_at,
            };
            return true;
        }
        false
    }

    /// Whether it wants a binding (false once unregistering).
    pub fn wants_binding(&self) -> bool {
        self.want_bound
    }

    /// Whether a recovered registrar should get this account's REGISTER
    /// now: it was doubted or is waiting out a back-off, and still wants a
    /// binding.
    pub fn wants_retry(&self) -> bool {
        self.want_bound && matches!(self.status, RegStatus::Retrying { .. })
    }

    fn fail(&mut self, error: RegError) -> Next {
        self.reset_attempt();
        self.status = RegStatus::Failed { error };
        Next::Idle
    }

    /// Back-off: `retry_base * 2^failures`, capped at `retry_max`, uniform
    /// in its upper half (jitter spreads accounts that failed together);
    /// a Retry-After from the registrar wins when longer.
    fn retry(
        &mut self,
        now: Instant,
        rc: &RegistrationConfig,
        error: RegError,
        retry_after: Option<u32>,
        rng: &mut Rng,
    ) -> Next {
        self.reset_attempt();
        self.targets_failed = 0;
        let exp = self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        let full = rc.retry_base.saturating_mul(1 << exp).min(rc.retry_max);
        let mut delay = full / 2 + rng.jitter(full / 2);
        if let Some(ra) = retry_after {
            let ra = Duration::from_secs(u64::from(ra));
            if ra > delay {
                delay = ra + rng.jitter(ra / 10);
            }
        }
        let next = now + delay;
        // A binding that is still valid stays usable while we retry.
        self.status = RegStatus::Retrying { error, next };
        Next::SendAt(next)
    }
}

/// When to refresh a binding granted for `granted` seconds.
///
/// Early enough that a lossy network still gets it through before expiry:
/// a margin of a tenth of the interval, at least 32 s (Timer F) where the
/// interval allows, at most 10 min.
///
/// Spread so that accounts registered together do not refresh together
/// for ever: the *first* refresh of a binding is drawn uniformly between a
/// tenth of the interval and the margin, which scatters a burst of initial
/// registrations (a restart, a bulk import) over the whole interval; later
/// refreshes keep that phase, jittered by up to half the margin.
pub fn refresh_delay(granted: u32, first: bool, rng: &mut Rng) -> Duration {
    let e = Duration::from_secs(u64::from(granted));
    let margin = (e / 10)
        .max((e / 2).min(Duration::from_secs(32)))
        .min(Duration::from_secs(600));
    let latest = e.saturating_sub(margin);
    let delay = if first {
        let earliest = (e / 10).min(latest);
        earliest + rng.jitter(latest - earliest)
    } else {
        latest.saturating_sub(rng.jitter(margin / 2))
    };
    delay.max(Duration::from_secs(1))
}

fn auth_header(proxy: bool) -> &'static str {
    if proxy {
        "Proxy-Authorization"
    } else {
        "Authorization"
    }
}

fn digest_account(cfg: &AccountConfig) -> DigestAccount<'_> {
    DigestAccount {
        username: &cfg.auth_user,
        secret: match &cfg.secret {
            AccountSecret::Password(p) => Secret::Password(p),
            AccountSecret::Ha1(h) => Secret::Ha1(h),
        },
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor a simulated clock
mod tests {
    use super::*;

    #[test]
    fn refresh_lands_before_expiry_with_margin_for_every_grant() {
        let mut rng = Rng::new(1);
        for (granted, min_margin) in [(3600u32, 360u64), (600, 60), (60, 30), (10, 5)] {
            for i in 0..1000 {
                let d = refresh_delay(granted, i % 2 == 0, &mut rng);
                assert!(
                    d.as_secs() + min_margin <= u64::from(granted),
                    "{granted}: {d:?}"
                );
                assert!(d >= Duration::from_secs(1));
            }
        }
    }

    #[test]
    fn refresh_jitter_spreads_accounts() {
        let mut rng = Rng::new(2);
        let ds: std::collections::BTreeSet<_> = (0..100)
            .map(|_| refresh_delay(3600, false, &mut rng))
            .collect();
        assert!(ds.len() > 90, "only {} distinct refresh times", ds.len());
        // First refreshes cover most of the interval, not just the margin.
        let first: Vec<_> = (0..1000)
            .map(|_| refresh_delay(3600, true, &mut rng).as_secs())
            .collect();
        assert!(*first.iter().min().unwrap() < 600 && *first.iter().max().unwrap() > 3000);
    }
}
