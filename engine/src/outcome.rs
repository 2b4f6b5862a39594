//! How a call ended, for the caller, the store, the push service and the
//! late wake.

/// How a call ended (or was answered), for the caller, the store and the
/// late wake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// One of the account's devices answered.
    Answered,
    /// The provider's CANCEL said another phone answered
    /// (`Reason: SIP;cause=200`).
    AnsweredElsewhere,
    /// A device declined (486/600/603), or the provider's CANCEL said the
    /// call was declined elsewhere (`cause=600`/`603`).
    Declined,
    /// The caller hung up before anyone answered.
    CallerCancelled,
    /// No device woke within `device_wait`.
    NoResponse,
    /// Every push failed, or the account has no device at all.
    Unreachable,
}

impl Outcome {
    /// The stored text (`call_outcomes.outcome`).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::AnsweredElsewhere => "answered_elsewhere",
            Outcome::Declined => "declined",
            Outcome::CallerCancelled => "caller_cancelled",
            Outcome::NoResponse => "no_response",
            Outcome::Unreachable => "unreachable",
        }
    }

    /// The `reason` of a `call_cancelled`/`missed_call` push, as the push
    /// protocol names it (`PushCall::reason`): for the device pushed, a
    /// decline happened elsewhere.
    pub fn push_reason(self) -> &'static str {
        match self {
            Outcome::Declined => "declined_elsewhere",
            other => other.as_str(),
        }
    }

    /// The `Reason` of the CANCEL a late-waking device gets (RFC 3326),
    /// `None` to use the caller's own Reason or none.
    pub fn cancel_reason(self) -> Option<&'static [u8]> {
        match self {
            Outcome::Answered | Outcome::AnsweredElsewhere => Some(COMPLETED_ELSEWHERE),
            Outcome::Declined => Some(BUSY_EVERYWHERE),
            _ => None,
        }
    }
}

/// RFC 3326 Reason for a call answered by another device.
pub const COMPLETED_ELSEWHERE: &[u8] = b"SIP;cause=200;text=\"Call completed elsewhere\"";
/// RFC 3326 Reason for a call declined on another device.
pub const BUSY_EVERYWHERE: &[u8] = b"SIP;cause=600;text=\"Busy Everywhere\"";
