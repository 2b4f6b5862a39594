//! Incoming calls: the pending-call map, push, wake, relay and late wake.

use std::time::Duration;

/// `[calls]`: how incoming calls and phones are handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallConfig {
    /// How long a call waits for a device to wake and connect before the
    /// caller gets `480` (DESIGN §1.3: 30 s; Acrobits uses 120 s).
    pub device_wait: Duration,
    /// How long each pushed call's outcome is kept for a device that wakes
    /// late (DESIGN §1.4).
    pub late_wake_window: Duration,
    /// Late wake: CANCEL this long after the INVITE if the phone sent no
    /// provisional answer by then.
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
        }
    }
}
