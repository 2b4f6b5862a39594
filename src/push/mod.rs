//! Push: the unified push protocol between sipis and its mediator.
//!
//! A shard's engine emits a domain [`Push`] (`Engine::poll_push`), which the
//! shard turns into a [`PushRequest`] ([`PushRequest::from_push`]); the push
//! client (`client`) posts it as JSON over a pool of HTTP/1.1 keep-alive
//! connections (`http1`) to the mediator (`POST <push.mediator_url>`),
//! which turns it into an APNs or FCM request (`mediator`) and answers
//! with a [`PushAnswer`] — or, with the mediator in process, calls
//! `Mediator::send` directly. The client hands the outcome back to the
//! engine as a [`PushOutcome`] (`Engine::handle_push_result`), which wakes
//! the shard at once.
//!
//! The JSON (documented in README.md, "Push protocol"):
//!
//! ```json
//! {"id":"a1b2c3d4e5f60718","kind":"incoming_call","account":42,
//!  "device":{"id":"iphone","platform":"apns","token":"<pn-prid>",
//!            "topic":"com.example.phone.voip","environment":"production"},
//!  "call":{"call_id":"3848276298220188511@pbx","caller_uri":"sip:bob@example.com",
//!          "caller_name":"Bob","callee":"sip:alice@example.com"},
//!  "timestamp_ms":1763800000123}
//! ```
//!
//! answered `200 OK` with
//!
//! ```json
//! {"id":"a1b2c3d4e5f60718","result":"sent","platform_id":"<apns-id>"}
//! ```

use serde::{Deserialize, Serialize};

// The engine's push enums are the protocol's (snake_case on the wire), and
// the outcome the client reports back is the engine's input as it is.
pub use sipis_engine::push::{Platform, Push, PushKind, PushOutcome, PushResult};

/// APNs environment of a device token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    #[default]
    Production,
    Sandbox,
}

/// The device a push goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushDevice {
    /// The device's name within its account.
    pub id: String,
    pub platform: Platform,
    /// The push token (`pn-prid`).
    pub token: String,
    /// APNs: the topic (`<bundle>.voip` for VoIP pushes, taken from
    /// `pn-param` = `<TeamID>.<bundle>.voip`). FCM: the project id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// APNs only; the mediator tries the other one on `BadDeviceToken`.
    #[serde(default)]
    pub environment: Environment,
}

/// The call a push is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushCall {
    /// The Call-ID of the INVITE the phone will receive (CallKit pairs them).
    pub call_id: String,
    /// The caller's URI (From), without tag.
    pub caller_uri: String,
    /// The caller's display name (From), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_name: Option<String>,
    /// The called AOR (To).
    pub callee: String,
    /// For `call_cancelled`/`missed_call`: `answered_elsewhere`,
    /// `declined_elsewhere`, `caller_cancelled` or `no_response`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One push, as sipis posts it to the mediator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRequest {
    /// Unique id (16 hex digits), echoed in the answer and logged.
    pub id: String,
    pub kind: PushKind,
    pub account: u64,
    pub device: PushDevice,
    pub call: PushCall,
    /// When sipis created the push, Unix milliseconds.
    pub timestamp_ms: u64,
}

impl PushRequest {
    /// The wire form of an engine's push, stamped `timestamp_ms` (Unix
    /// milliseconds) when the shard hands it over.
    pub fn from_push(p: Push, timestamp_ms: u64) -> PushRequest {
        PushRequest {
            id: p.id,
            kind: p.kind,
            account: p.account,
            device: PushDevice {
                id: p.device,
                platform: p.platform,
                token: p.token,
                topic: p.topic,
                environment: Environment::Production,
            },
            call: PushCall {
                call_id: p.call_id,
                caller_uri: p.caller_uri,
                caller_name: p.caller_name,
                callee: p.callee,
                reason: p.reason.map(|o| o.push_reason().to_owned()),
            },
            timestamp_ms,
        }
    }
}

/// The mediator's JSON answer to a [`PushRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushAnswer {
    pub id: String,
    pub result: PushResult,
    /// `apns-id` or the FCM message name, when the service gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_id: Option<String>,
    /// The APNs environment that accepted the token (after a
    /// `BadDeviceToken` retry against the other one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    /// What went wrong, for the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub mod client;
mod http1;
pub mod mediator;
