//! The JSON bodies of the admin API and their validation.
//!
//! Requests reject unknown fields; their `validate` methods check every
//! field and name the wrong one. Responses never carry an account's secret:
//! [`AccountView`] has no field for it.

use super::ApiError;
use crate::store::{AccountRecord, DeviceRecord, NewAccount};
use crate::{AccountId, AccountSecret, RegStatus};
use serde::{Deserialize, Deserializer, Serialize};
use sipis_parser::{Host, Scheme, Uri};
use std::fmt;
use std::ops::RangeInclusive;
use std::time::Instant;

/// Binding lifetime when a new account does not say.
pub const DEFAULT_EXPIRES: u32 = 3600;
/// Allowed binding lifetimes, seconds.
pub const EXPIRES_RANGE: RangeInclusive<u32> = 60..=86400;
/// Page size of `GET /accounts` without `limit`.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// Largest `limit` of `GET /accounts`.
pub const MAX_LIST_LIMIT: usize = 1000;
/// Push services a device may use (RFC 8599 `pn-provider`).
pub const PUSH_PROVIDERS: [&str; 3] = ["apns", "fcm", "webpush"];

const MAX_URI: usize = 1024;
const MAX_NAME: usize = 256;
const MAX_PASSWORD: usize = 1024;
const MAX_DEVICE: usize = 128;
const MAX_PRID: usize = 4096;

/// `POST /accounts`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccountRequest {
    /// `sip:` or `sips:` URI with user and host.
    pub aor: String,
    pub auth_user: String,
    /// Exactly one of `password` and `ha1`.
    #[serde(default)]
    pub password: Option<String>,
    /// HA1 in hex (32 digits for MD5, 64 for SHA-256 / SHA-512-256).
    #[serde(default)]
    pub ha1: Option<String>,
    /// `None`: proxy mode, nothing to register.
    #[serde(default)]
    pub registrar: Option<String>,
    #[serde(default)]
    pub outbound_proxy: Option<String>,
    #[serde(default = "default_expires")]
    pub expires: u32,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_expires() -> u32 {
    DEFAULT_EXPIRES
}

fn default_true() -> bool {
    true
}

impl fmt::Debug for NewAccountRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewAccountRequest")
            .field("aor", &self.aor)
            .field("auth_user", &self.auth_user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ha1", &self.ha1.as_ref().map(|_| "<redacted>"))
            .field("registrar", &self.registrar)
            .field("outbound_proxy", &self.outbound_proxy)
            .field("expires", &self.expires)
            .field("enabled", &self.enabled)
            .finish()
    }
}

impl NewAccountRequest {
    /// Checks every field; the error names the first wrong one.
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_aor(&self.aor)?;
        validate_auth_user(&self.auth_user)?;
        match (&self.password, &self.ha1) {
            (Some(p), None) => validate_password(p)?,
            (None, Some(h)) => validate_ha1(h)?,
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "\"password\" and \"ha1\" are exclusive: give exactly one",
                ))
            }
            (None, None) => {
                return Err(ApiError::bad_request(
                    "one of \"password\" or \"ha1\" is required",
                ))
            }
        }
        if let Some(r) = &self.registrar {
            validate_server_uri("registrar", r)?;
        }
        if let Some(p) = &self.outbound_proxy {
            validate_server_uri("outbound_proxy", p)?;
        }
        validate_expires(self.expires)
    }

    /// The secret given (call after [`validate`](Self::validate)).
    pub fn secret(&self) -> Option<AccountSecret> {
        secret_of(&self.password, &self.ha1)
    }

    /// The account to store, with the routing token the runtime chose.
    /// `None` if the request has no secret (it did not validate).
    pub fn into_new_account(self, token: String) -> Option<NewAccount> {
        let secret = self.secret()?;
        Some(NewAccount {
            aor: self.aor,
            auth_user: self.auth_user,
            secret,
            registrar: self.registrar,
            outbound_proxy: self.outbound_proxy,
            expires: self.expires,
            token,
            enabled: self.enabled,
        })
    }
}

/// `PATCH /accounts/{id}`: absent fields stay as they are. `registrar`
/// and `outbound_proxy` may be `null` to remove them; the other fields may
/// not be `null`. Giving `password` or `ha1` replaces the secret.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountUpdate {
    #[serde(default, deserialize_with = "not_null")]
    pub aor: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    pub auth_user: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    pub password: Option<String>,
    #[serde(default, deserialize_with = "not_null")]
    pub ha1: Option<String>,
    /// `Some(None)`: remove (proxy mode).
    #[serde(default, deserialize_with = "nullable")]
    pub registrar: Option<Option<String>>,
    /// `Some(None)`: remove.
    #[serde(default, deserialize_with = "nullable")]
    pub outbound_proxy: Option<Option<String>>,
    #[serde(default, deserialize_with = "not_null")]
    pub expires: Option<u32>,
    #[serde(default, deserialize_with = "not_null")]
    pub enabled: Option<bool>,
}

/// A present field must hold a value (`null` is refused).
fn not_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A present field may be `null`: `Some(None)`.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl fmt::Debug for AccountUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountUpdate")
            .field("aor", &self.aor)
            .field("auth_user", &self.auth_user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ha1", &self.ha1.as_ref().map(|_| "<redacted>"))
            .field("registrar", &self.registrar)
            .field("outbound_proxy", &self.outbound_proxy)
            .field("expires", &self.expires)
            .field("enabled", &self.enabled)
            .finish()
    }
}

impl AccountUpdate {
    /// Checks every field given; the error names the first wrong one.
    pub fn validate(&self) -> Result<(), ApiError> {
        if let Some(a) = &self.aor {
            validate_aor(a)?;
        }
        if let Some(u) = &self.auth_user {
            validate_auth_user(u)?;
        }
        match (&self.password, &self.ha1) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "\"password\" and \"ha1\" are exclusive: give at most one",
                ))
            }
            (Some(p), None) => validate_password(p)?,
            (None, Some(h)) => validate_ha1(h)?,
            (None, None) => {}
        }
        if let Some(Some(r)) = &self.registrar {
            validate_server_uri("registrar", r)?;
        }
        if let Some(Some(p)) = &self.outbound_proxy {
            validate_server_uri("outbound_proxy", p)?;
        }
        if let Some(e) = self.expires {
            validate_expires(e)?;
        }
        Ok(())
    }

    /// The new secret, if the update gives one.
    pub fn secret(&self) -> Option<AccountSecret> {
        secret_of(&self.password, &self.ha1)
    }

    /// Whether the update changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == AccountUpdate::default()
    }

    /// Applies the update to a stored account.
    pub fn apply(self, rec: &mut AccountRecord) {
        if let Some(secret) = self.secret() {
            rec.secret = secret;
        }
        if let Some(a) = self.aor {
            rec.aor = a;
        }
        if let Some(u) = self.auth_user {
            rec.auth_user = u;
        }
        if let Some(r) = self.registrar {
            rec.registrar = r;
        }
        if let Some(p) = self.outbound_proxy {
            rec.outbound_proxy = p;
        }
        if let Some(e) = self.expires {
            rec.expires = e;
        }
        if let Some(e) = self.enabled {
            rec.enabled = e;
        }
    }
}

fn secret_of(password: &Option<String>, ha1: &Option<String>) -> Option<AccountSecret> {
    match (password, ha1) {
        (Some(p), _) => Some(AccountSecret::Password(p.clone())),
        (None, Some(h)) => Some(AccountSecret::Ha1(h.to_ascii_lowercase())),
        (None, None) => None,
    }
}

fn validate_aor(aor: &str) -> Result<(), ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "\"aor\": {aor:?} is not a sip: or sips: URI with a user and a host"
        ))
    };
    if aor.len() > MAX_URI {
        return Err(ApiError::bad_request(format!(
            "\"aor\": longer than {MAX_URI} bytes"
        )));
    }
    let uri = Uri::parse(aor.as_bytes()).map_err(|_| bad())?;
    let sip = matches!(uri.scheme, Scheme::Sip | Scheme::Sips);
    if !sip || uri.user.is_none_or(|u| u.is_empty()) || uri.host == Host::Absent {
        return Err(bad());
    }
    Ok(())
}

fn validate_server_uri(field: &str, value: &str) -> Result<(), ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "\"{field}\": {value:?} is not a sip: or sips: URI with a host"
        ))
    };
    if value.len() > MAX_URI {
        return Err(ApiError::bad_request(format!(
            "\"{field}\": longer than {MAX_URI} bytes"
        )));
    }
    let uri = Uri::parse(value.as_bytes()).map_err(|_| bad())?;
    if !matches!(uri.scheme, Scheme::Sip | Scheme::Sips) || uri.host == Host::Absent {
        return Err(bad());
    }
    Ok(())
}

fn validate_auth_user(u: &str) -> Result<(), ApiError> {
    if u.is_empty() {
        return Err(ApiError::bad_request("\"auth_user\": must not be empty"));
    }
    if u.len() > MAX_NAME {
        return Err(ApiError::bad_request(format!(
            "\"auth_user\": longer than {MAX_NAME} bytes"
        )));
    }
    if u.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "\"auth_user\": control characters are not allowed",
        ));
    }
    Ok(())
}

fn validate_password(p: &str) -> Result<(), ApiError> {
    if p.is_empty() {
        return Err(ApiError::bad_request("\"password\": must not be empty"));
    }
    if p.len() > MAX_PASSWORD {
        return Err(ApiError::bad_request(format!(
            "\"password\": longer than {MAX_PASSWORD} bytes"
        )));
    }
    Ok(())
}

fn validate_ha1(h: &str) -> Result<(), ApiError> {
    if !(h.len() == 32 || h.len() == 64) || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(
            "\"ha1\": must be 32 (MD5) or 64 (SHA-256, SHA-512-256) hex digits",
        ));
    }
    Ok(())
}

fn validate_expires(e: u32) -> Result<(), ApiError> {
    if !EXPIRES_RANGE.contains(&e) {
        return Err(ApiError::bad_request(format!(
            "\"expires\": {e} is outside {}..={} seconds",
            EXPIRES_RANGE.start(),
            EXPIRES_RANGE.end()
        )));
    }
    Ok(())
}

/// Where an account's registration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegState {
    Pending,
    Registering,
    Registered,
    Retrying,
    Failed,
    Unregistered,
    Disabled,
}

/// The registration status of an account as served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusView {
    pub state: RegState,
    /// Seconds until the binding expires (`registered`).
    pub expires_in: Option<u64>,
    /// Seconds until the next attempt (`retrying`).
    pub retry_in: Option<u64>,
    /// Why it is `retrying` or `failed`.
    pub last_error: Option<String>,
}

impl StatusView {
    fn state(state: RegState) -> StatusView {
        StatusView {
            state,
            expires_in: None,
            retry_in: None,
            last_error: None,
        }
    }

    /// Not registered because the account is disabled.
    pub fn disabled() -> StatusView {
        StatusView::state(RegState::Disabled)
    }

    /// Not yet known to its shard.
    pub fn pending() -> StatusView {
        StatusView::state(RegState::Pending)
    }

    /// The view of an engine status at `now`.
    pub fn from_reg(status: &RegStatus, now: Instant) -> StatusView {
        match *status {
            RegStatus::Pending => StatusView::state(RegState::Pending),
            RegStatus::Registering => StatusView::state(RegState::Registering),
            RegStatus::Registered { expires_at, .. } => StatusView {
                expires_in: Some(expires_at.saturating_duration_since(now).as_secs()),
                ..StatusView::state(RegState::Registered)
            },
            RegStatus::Retrying { error, next } => StatusView {
                retry_in: Some(next.saturating_duration_since(now).as_secs()),
                last_error: Some(error.to_string()),
                ..StatusView::state(RegState::Retrying)
            },
            RegStatus::Failed { error } => StatusView {
                last_error: Some(error.to_string()),
                ..StatusView::state(RegState::Failed)
            },
            RegStatus::Unregistered => StatusView::state(RegState::Unregistered),
        }
    }
}

/// An account as served: everything but its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountView {
    pub id: AccountId,
    pub aor: String,
    pub auth_user: String,
    pub registrar: Option<String>,
    pub outbound_proxy: Option<String>,
    pub expires: u32,
    pub enabled: bool,
    /// The Contact user part routing the provider's INVITEs to it.
    pub token: String,
    pub status: StatusView,
}

impl AccountView {
    pub fn from_record(rec: &AccountRecord, status: StatusView) -> AccountView {
        AccountView {
            id: rec.id,
            aor: rec.aor.clone(),
            auth_user: rec.auth_user.clone(),
            registrar: rec.registrar.clone(),
            outbound_proxy: rec.outbound_proxy.clone(),
            expires: rec.expires,
            enabled: rec.enabled,
            token: rec.token.clone(),
            status,
        }
    }
}

/// `GET /accounts`: a page, and the `after` of the next one when the page
/// is full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountList {
    pub accounts: Vec<AccountView>,
    pub next_after: Option<AccountId>,
}

/// `PUT /accounts/{id}/devices/{device}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRequest {
    /// One of [`PUSH_PROVIDERS`].
    pub provider: String,
    /// The push token (`pn-prid`).
    pub prid: String,
    /// `pn-param` (APNs `<TeamID>.<bundle>.voip`, FCM project id).
    #[serde(default)]
    pub param: Option<String>,
}

impl DeviceRequest {
    /// Checks the fields; the error names the wrong one.
    pub fn validate(&self) -> Result<(), ApiError> {
        if !PUSH_PROVIDERS.contains(&self.provider.as_str()) {
            return Err(ApiError::bad_request(format!(
                "\"provider\": {:?} is not one of apns, fcm, webpush",
                self.provider
            )));
        }
        if self.prid.is_empty() || self.prid.len() > MAX_PRID {
            return Err(ApiError::bad_request(format!(
                "\"prid\": must be 1 to {MAX_PRID} bytes"
            )));
        }
        if self
            .prid
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(ApiError::bad_request(
                "\"prid\": white space and control characters are not allowed",
            ));
        }
        if let Some(p) = &self.param {
            if p.is_empty() || p.len() > MAX_NAME || p.chars().any(|c| c.is_control()) {
                return Err(ApiError::bad_request(format!(
                    "\"param\": must be 1 to {MAX_NAME} bytes without control characters"
                )));
            }
        }
        Ok(())
    }

    /// Checks a device name from the path: 1 to 128 of `A-Z a-z 0-9 - . _ ~ : @ +`.
    pub fn validate_name(device: &str) -> Result<(), ApiError> {
        let ok = !device.is_empty()
            && device.len() <= MAX_DEVICE
            && device
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~:@+".contains(&b));
        if !ok {
            return Err(ApiError::bad_request(format!(
                "device name {device:?}: must be 1 to {MAX_DEVICE} of A-Z a-z 0-9 - . _ ~ : @ +"
            )));
        }
        Ok(())
    }

    /// The record to store.
    pub fn into_record(self, account: AccountId, device: &str, updated_unix: i64) -> DeviceRecord {
        DeviceRecord {
            account,
            device: device.to_string(),
            provider: self.provider,
            prid: self.prid,
            param: self.param,
            updated_unix,
        }
    }
}

/// A device as served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceView {
    pub device: String,
    pub provider: String,
    pub prid: String,
    pub param: Option<String>,
    /// Last update, Unix seconds.
    pub updated_unix: i64,
}

impl From<&DeviceRecord> for DeviceView {
    fn from(d: &DeviceRecord) -> DeviceView {
        DeviceView {
            device: d.device.clone(),
            provider: d.provider.clone(),
            prid: d.prid.clone(),
            param: d.param.clone(),
            updated_unix: d.updated_unix,
        }
    }
}

/// `GET /accounts/{id}/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceList {
    pub devices: Vec<DeviceView>,
}

/// `POST /accounts/import`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImportResult {
    /// Rows written: `created + updated`.
    pub imported: usize,
    pub created: usize,
    /// Existing accounts rewritten (`on_conflict=update`).
    pub updated: usize,
    /// Rows left out because their AOR exists (`on_conflict=skip`).
    pub skipped: usize,
    /// Their AORs, in input order.
    pub skipped_aors: Vec<String>,
}

/// `GET /health`: served with 200 when `ok`, else 503.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub ok: bool,
    /// This build's version.
    pub version: String,
    pub shards_alive: usize,
    pub shards_total: usize,
    pub store_available: bool,
    pub uptime_secs: u64,
}

/// Every error response: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RegError;
    use std::time::Duration;

    fn new_account(json: &str) -> Result<NewAccountRequest, ApiError> {
        let r: NewAccountRequest =
            serde_json::from_str(json).map_err(|e| ApiError::bad_request(e.to_string()))?;
        r.validate()?;
        Ok(r)
    }

    #[test]
    fn new_account_defaults_and_secret() {
        let r =
            new_account(r#"{"aor":"sip:alice@example.com","auth_user":"alice","password":"pw"}"#)
                .unwrap();
        assert_eq!(r.expires, 3600);
        assert!(r.enabled);
        assert_eq!(r.secret(), Some(AccountSecret::Password("pw".into())));
        assert!(!format!("{r:?}").contains("pw\""));
        let n = r.into_new_account("tok".into()).unwrap();
        assert_eq!(n.token, "tok");
    }

    #[test]
    fn new_account_validation_names_fields() {
        let cases = [
            (
                r#"{"aor":"alice@example.com","auth_user":"a","password":"p"}"#,
                "\"aor\"",
            ),
            (
                r#"{"aor":"sip:example.com","auth_user":"a","password":"p"}"#,
                "\"aor\"",
            ),
            (
                r#"{"aor":"tel:+123","auth_user":"a","password":"p"}"#,
                "\"aor\"",
            ),
            (
                r#"{"aor":"sip:a@b","auth_user":"","password":"p"}"#,
                "\"auth_user\"",
            ),
            (
                r#"{"aor":"sip:a@b","auth_user":"a"}"#,
                "\"password\" or \"ha1\"",
            ),
            (
                r#"{"aor":"sip:a@b","auth_user":"a","password":"p","ha1":"00"}"#,
                "\"ha1\"",
            ),
            (
                r#"{"aor":"sip:a@b","auth_user":"a","ha1":"xyz"}"#,
                "\"ha1\"",
            ),
            (
                r#"{"aor":"sip:a@b","auth_user":"a","password":"p","registrar":"http://x"}"#,
                "\"registrar\"",
            ),
            (
                r#"{"aor":"sip:a@b","auth_user":"a","password":"p","outbound_proxy":"x"}"#,
                "\"outbound_proxy\"",
            ),
            (
                r#"{"aor":"sip:a@b","auth_user":"a","password":"p","expires":59}"#,
                "\"expires\"",
            ),
            (
                r#"{"aor":"sip:a@b","auth_user":"a","password":"p","expires":86401}"#,
                "\"expires\"",
            ),
            (
                r#"{"aor":"sip:a@b","auth_user":"a","passwrd":"p"}"#,
                "passwrd",
            ),
            (
                r#"{"aor":"sip:a@b","auth_user":"a","password":"p","expires":"60"}"#,
                "invalid type",
            ),
        ];
        for (json, needle) in cases {
            let e = new_account(json).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(needle), "{json}: {}", e.message);
        }
        new_account(
            r#"{"aor":"sips:a@b.example:5061","auth_user":"a","ha1":"0123456789abcdef0123456789ABCDEF",
                "registrar":"sip:b.example","outbound_proxy":"sip:10.0.0.1:5060;lr","expires":60,"enabled":false}"#,
        )
        .unwrap();
    }

    #[test]
    fn update_null_semantics() {
        let u: AccountUpdate = serde_json::from_str(r#"{"registrar":null,"expires":120}"#).unwrap();
        assert_eq!(u.registrar, Some(None));
        assert_eq!(u.outbound_proxy, None);
        u.validate().unwrap();
        let mut rec = NewAccount {
            aor: "sip:a@b".into(),
            auth_user: "a".into(),
            secret: AccountSecret::Password("p".into()),
            registrar: Some("sip:b".into()),
            outbound_proxy: None,
            expires: 3600,
            token: "t".into(),
            enabled: true,
        }
        .with_id(7);
        u.apply(&mut rec);
        assert_eq!(rec.registrar, None);
        assert_eq!(rec.expires, 120);
        let e = serde_json::from_str::<AccountUpdate>(r#"{"aor":null}"#).unwrap_err();
        assert!(e.to_string().contains("invalid type: null"), "{e}");
        assert!(serde_json::from_str::<AccountUpdate>("{}")
            .unwrap()
            .is_empty());
        let both: AccountUpdate = serde_json::from_str(r#"{"password":"x","ha1":"y"}"#).unwrap();
        assert!(both.validate().unwrap_err().message.contains("exclusive"));
    }

    #[test]
    fn status_views() {
        let now = Instant::now();
        let s = StatusView::from_reg(
            &RegStatus::Registered {
                expires_at: now + Duration::from_secs(300),
                granted: 300,
            },
            now,
        );
        assert_eq!(s.state, RegState::Registered);
        assert_eq!(s.expires_in, Some(300));
        let s = StatusView::from_reg(
            &RegStatus::Retrying {
                error: RegError::Timeout,
                next: now + Duration::from_secs(8),
            },
            now,
        );
        assert_eq!(s.retry_in, Some(8));
        assert_eq!(
            s.last_error.as_deref(),
            Some("408 no response from registrar")
        );
        let json = serde_json::to_string(&StatusView::disabled()).unwrap();
        assert_eq!(
            json,
            r#"{"state":"disabled","expires_in":null,"retry_in":null,"last_error":null}"#
        );
    }

    #[test]
    fn device_validation() {
        let d: DeviceRequest = serde_json::from_str(r#"{"provider":"apns","prid":"abc"}"#).unwrap();
        d.validate().unwrap();
        let d: DeviceRequest = serde_json::from_str(r#"{"provider":"gcm","prid":"abc"}"#).unwrap();
        assert!(d.validate().unwrap_err().message.contains("\"provider\""));
        let d: DeviceRequest = serde_json::from_str(r#"{"provider":"fcm","prid":""}"#).unwrap();
        assert!(d.validate().unwrap_err().message.contains("\"prid\""));
        DeviceRequest::validate_name("iphone-1.A_b").unwrap();
        assert!(DeviceRequest::validate_name("").is_err());
        assert!(DeviceRequest::validate_name("a/b").is_err());
        assert!(DeviceRequest::validate_name(&"x".repeat(129)).is_err());
    }
}
