//! The push client: posts [`super::PushRequest`]s to the mediator.

use std::fmt;
use std::time::Duration;

/// `[push]`: where and how sipis sends pushes.
#[derive(Clone, PartialEq, Eq)]
pub struct PushConfig {
    /// The mediator's endpoint (`http://host:port/push` or `https://…`).
    /// `None` with `mediator.in_process`: the in-process mediator's listen
    /// address; `None` otherwise: pushes are not sent (counted as failed).
    pub mediator_url: Option<String>,
    /// Bearer token presented to the mediator.
    pub token: Option<String>,
    /// One HTTP exchange with the mediator.
    pub timeout: Duration,
    /// Further attempts after a failed exchange (connection error, 5xx).
    pub retries: u32,
    /// Parallel keep-alive connections (worker threads).
    pub connections: u32,
    /// Most pushes queued before new ones fail at once.
    pub queue: u32,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            mediator_url: None,
            token: None,
            timeout: Duration::from_secs(3),
            retries: 2,
            connections: 4,
            queue: 10_000,
        }
    }
}

impl fmt::Debug for PushConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushConfig")
            .field("mediator_url", &self.mediator_url)
            // A secret: never in logs or panics.
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("connections", &self.connections)
            .field("queue", &self.queue)
            .finish()
    }
}
