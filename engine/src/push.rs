//! Pushes as the engine sees them: what to push to which device and why
//! ([`Push`], out of `Engine::poll_push`), and what became of it
//! ([`PushOutcome`], into `Engine::handle_push_result`).
//!
//! These are domain types, not the push protocol: the shell turns a
//! [`Push`] into the mediator's JSON (or hands it to an in-process
//! mediator) and stamps the wall clock on it. With the `serde` feature the
//! enums carry the protocol's snake_case names, so the shell's wire types
//! can use them as they are.

use crate::outcome::Outcome;
use crate::registration::AccountId;

/// Why a push is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum PushKind {
    /// A call is waiting: wake the app (APNs VoIP push, FCM high-priority data).
    IncomingCall,
    /// The call the last `incoming_call` announced ended before the app
    /// connected (non-VoIP devices; collapsed on the call id).
    CallCancelled,
    /// Nobody answered: a visible notification (APNs alert, FCM data).
    MissedCall,
}

impl PushKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PushKind::IncomingCall => "incoming_call",
            PushKind::CallCancelled => "call_cancelled",
            PushKind::MissedCall => "missed_call",
        }
    }
}

/// Push service of a device (RFC 8599 `pn-provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Platform {
    Apns,
    Fcm,
}

impl Platform {
    /// The `pn-provider` value, `None` for a provider sipis cannot push to.
    pub fn from_provider(provider: &str) -> Option<Platform> {
        if provider.eq_ignore_ascii_case("apns") {
            Some(Platform::Apns)
        } else if provider.eq_ignore_ascii_case("fcm") {
            Some(Platform::Fcm)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Apns => "apns",
            Platform::Fcm => "fcm",
        }
    }
}

/// What the push service made of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum PushResult {
    /// Accepted by APNs/FCM.
    Sent,
    /// The token is dead (APNs 410 `Unregistered`, FCM `UNREGISTERED`, or
    /// `BadDeviceToken` in both environments): sipis removes the device.
    TokenDead,
    /// Not delivered, worth trying again later (429/5xx past the deadline,
    /// connection failures, a full queue).
    Failed,
    /// Never deliverable as sent (payload too large, bad topic, provider
    /// credentials rejected): a configuration problem, not the device's.
    Rejected,
}

impl PushResult {
    pub fn as_str(self) -> &'static str {
        match self {
            PushResult::Sent => "sent",
            PushResult::TokenDead => "token_dead",
            PushResult::Failed => "failed",
            PushResult::Rejected => "rejected",
        }
    }
}

/// One push the engine wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// Unique on this shard (16 hex digits): the outcome names it.
    pub id: String,
    pub kind: PushKind,
    pub account: AccountId,
    /// The device's name within its account.
    pub device: String,
    pub platform: Platform,
    /// The push token (`pn-prid`).
    pub token: String,
    /// APNs: the topic (`<bundle>.voip` from `pn-param` =
    /// `<TeamID>.<bundle>.voip`). FCM: the project id.
    pub topic: Option<String>,
    /// The call it is about.
    pub call_id: String,
    /// The caller's URI (From, without tag or `pn-*`).
    pub caller_uri: String,
    /// The caller's display name, if any.
    pub caller_name: Option<String>,
    /// The called AOR (To).
    pub callee: String,
    /// For `call_cancelled`/`missed_call`: how the call ended.
    pub reason: Option<Outcome>,
}

/// What became of one [`Push`], reported back to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOutcome {
    /// [`Push::id`].
    pub id: String,
    pub account: AccountId,
    pub device: String,
    pub result: PushResult,
    /// What went wrong, for the log.
    pub error: Option<String>,
}
