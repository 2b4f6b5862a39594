//! A simulated push mediator: takes every push the engine asks for
//! (`Engine::poll_push`), records it, answers it (`handle_push_result`)
//! after a delay with a configured result, and for an `incoming_call`
//! delivered to a device wakes the phone peer holding that token after a
//! delay (or never).

use sipis::push::{PushKind, PushOutcome, PushRequest, PushResult};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What the mediator does when its time comes.
#[derive(Debug, Clone)]
pub enum Action {
    /// Hand this result to the engine.
    Answer(PushOutcome),
    /// Wake the phone peer at this address.
    Wake(SocketAddr),
}

pub struct SimMediator {
    /// Every push received, with its time.
    pub log: Vec<(Instant, PushRequest)>,
    /// How long the mediator takes to answer.
    pub delay: Duration,
    /// The result for a token not in `results`.
    pub result: Option<PushResult>,
    /// The result per device token; `None`: never answered.
    pub results: HashMap<String, Option<PushResult>>,
    /// Per device token: the phone to wake on an `incoming_call` and after
    /// how long (`None`: the app never wakes).
    pub wakes: HashMap<String, (SocketAddr, Option<Duration>)>,
    pending: Vec<(Instant, u64, Action)>,
    seq: u64,
}

impl Default for SimMediator {
    fn default() -> Self {
        SimMediator {
            log: Vec::new(),
            delay: Duration::from_millis(50),
            result: Some(PushResult::Sent),
            results: HashMap::new(),
            wakes: HashMap::new(),
            pending: Vec::new(),
            seq: 0,
        }
    }
}

impl SimMediator {
    /// A push for `token` wakes `phone` after `after` (`None`: never).
    pub fn wake(&mut self, token: &str, phone: SocketAddr, after: Option<Duration>) {
        self.wakes.insert(token.into(), (phone, after));
    }

    /// Pushes of one kind, in order.
    pub fn of_kind(&self, kind: PushKind) -> Vec<&PushRequest> {
        self.log
            .iter()
            .filter(|(_, p)| p.kind == kind)
            .map(|(_, p)| p)
            .collect()
    }

    pub(super) fn take(&mut self, now: Instant, req: PushRequest) {
        let result = match self.results.get(&req.device.token) {
            Some(r) => *r,
            None => self.result,
        };
        if let Some(result) = result {
            self.seq += 1;
            self.pending.push((
                now + self.delay,
                self.seq,
                Action::Answer(PushOutcome {
                    id: req.id.clone(),
                    account: req.account,
                    device: req.device.id.clone(),
                    result,
                    error: None,
                }),
            ));
        }
        // A push that the service did not take wakes nobody.
        let delivered = matches!(result, Some(PushResult::Sent) | None);
        if req.kind == PushKind::IncomingCall && delivered {
            if let Some(&(phone, Some(after))) = self.wakes.get(&req.device.token) {
                self.seq += 1;
                self.pending
                    .push((now + after, self.seq, Action::Wake(phone)));
            }
        }
        self.log.push((now, req));
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.pending.iter().map(|p| p.0).min()
    }

    /// The actions due at `now`, in order.
    pub(super) fn due(&mut self, now: Instant) -> Vec<Action> {
        let mut due: Vec<_> = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].0 <= now {
                due.push(self.pending.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|d| (d.0, d.1));
        due.into_iter().map(|d| d.2).collect()
    }
}
