//! The mediator's counters and latency histograms, rendered for
//! Prometheus with [`crate::metrics`].

use crate::metrics;
use crate::push::{Platform, PushKind, PushResult};
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const PLATFORMS: [Platform; 2] = [Platform::Apns, Platform::Fcm];
const KINDS: [PushKind; 3] = [
    PushKind::IncomingCall,
    PushKind::CallCancelled,
    PushKind::MissedCall,
];
const RESULTS: [PushResult; 4] = [
    PushResult::Sent,
    PushResult::TokenDead,
    PushResult::Failed,
    PushResult::Rejected,
];
/// Latencies above this (µs) are recorded as this.
const MAX_LATENCY_US: u64 = 600_000_000;

fn platform_index(p: Platform) -> usize {
    match p {
        Platform::Apns => 0,
        Platform::Fcm => 1,
    }
}

fn kind_index(k: PushKind) -> usize {
    match k {
        PushKind::IncomingCall => 0,
        PushKind::CallCancelled => 1,
        PushKind::MissedCall => 2,
    }
}

fn result_index(r: PushResult) -> usize {
    match r {
        PushResult::Sent => 0,
        PushResult::TokenDead => 1,
        PushResult::Failed => 2,
        PushResult::Rejected => 3,
    }
}

/// Counters a platform's client keeps itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientCounts {
    /// APNs provider tokens signed, FCM access tokens fetched.
    pub(crate) tokens: u64,
    /// HTTP/2 connections opened.
    pub(crate) connections: u64,
}

/// What the mediator counts.
pub(crate) struct Stats {
    pushes: [[[AtomicU64; 4]; 3]; 2],
    /// Push handling time (request in to answer out), µs, per platform.
    latency: [Mutex<Histogram<u64>>; 2],
    /// Attempts after a 429/5xx or a connection failure, per platform.
    pub(crate) retries: [AtomicU64; 2],
    /// `BadDeviceToken` pushes tried in the other APNs environment.
    pub(crate) environment_fallbacks: AtomicU64,
    /// Pushes being handled now.
    pub(crate) in_flight: AtomicU64,
}

impl Stats {
    pub(crate) fn new() -> Stats {
        let hist = || {
            Mutex::new(
                Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                    .expect("static histogram bounds are valid"),
            )
        };
        Stats {
            pushes: Default::default(),
            latency: [hist(), hist()],
            retries: Default::default(),
            environment_fallbacks: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(
        &self,
        platform: Platform,
        kind: PushKind,
        result: PushResult,
        took: Duration,
    ) {
        let p = platform_index(platform);
        self.pushes[p][kind_index(kind)][result_index(result)].fetch_add(1, Ordering::Relaxed);
        let us = (took.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        let mut h = self.latency[p].lock().unwrap_or_else(|e| e.into_inner());
        h.saturating_record(us);
    }

    pub(crate) fn retried(&self, platform: Platform) {
        self.retries[platform_index(platform)].fetch_add(1, Ordering::Relaxed);
    }

    /// Pushes counted with these labels.
    pub(crate) fn pushes(&self, platform: Platform, kind: PushKind, result: PushResult) -> u64 {
        self.pushes[platform_index(platform)][kind_index(kind)][result_index(result)]
            .load(Ordering::Relaxed)
    }

    /// `apns`, `fcm`: the counts of the configured platforms' clients.
    pub(crate) fn render(
        &self,
        out: &mut String,
        apns: Option<ClientCounts>,
        fcm: Option<ClientCounts>,
    ) {
        for p in PLATFORMS {
            for k in KINDS {
                for r in RESULTS {
                    metrics::counter(
                        out,
                        "sipis_mediator_pushes_total",
                        "Pushes handled by the mediator, by platform, kind and result.",
                        &[
                            ("platform", p.as_str()),
                            ("kind", k.as_str()),
                            ("result", r.as_str()),
                        ],
                        self.pushes(p, k, r),
                    );
                }
            }
        }
        for p in PLATFORMS {
            let h = self.latency[platform_index(p)]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            metrics::summary_from_histogram(
                out,
                "sipis_mediator_push_seconds",
                "Time from a push request's arrival to its answer (retries included).",
                &[("platform", p.as_str())],
                &h,
                1e-6,
            );
        }
        for p in PLATFORMS {
            metrics::counter(
                out,
                "sipis_mediator_retries_total",
                "Attempts repeated after 429, 5xx or a connection failure.",
                &[("platform", p.as_str())],
                self.retries[platform_index(p)].load(Ordering::Relaxed),
            );
        }
        metrics::counter(
            out,
            "sipis_mediator_apns_environment_fallbacks_total",
            "Pushes answered BadDeviceToken and tried in the other APNs environment.",
            &[],
            self.environment_fallbacks.load(Ordering::Relaxed),
        );
        metrics::gauge(
            out,
            "sipis_mediator_pushes_in_flight",
            "Pushes being handled now.",
            &[],
            self.in_flight.load(Ordering::Relaxed),
        );
        if let Some(c) = apns {
            metrics::counter(
                out,
                "sipis_mediator_apns_provider_tokens_total",
                "APNs provider tokens (ES256 JWTs) signed.",
                &[],
                c.tokens,
            );
        }
        if let Some(c) = fcm {
            metrics::counter(
                out,
                "sipis_mediator_fcm_access_tokens_total",
                "OAuth2 access tokens fetched for FCM.",
                &[],
                c.tokens,
            );
        }
        for (p, extra) in [(Platform::Apns, apns), (Platform::Fcm, fcm)] {
            if let Some(c) = extra {
                metrics::counter(
                    out,
                    "sipis_mediator_connections_opened_total",
                    "HTTP/2 connections opened to the push services (and Google's token endpoint).",
                    &[("platform", p.as_str())],
                    c.connections,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_quantiles() {
        let s = Stats::new();
        s.record(
            Platform::Apns,
            PushKind::IncomingCall,
            PushResult::Sent,
            Duration::from_millis(3),
        );
        s.record(
            Platform::Fcm,
            PushKind::MissedCall,
            PushResult::TokenDead,
            Duration::from_millis(5),
        );
        s.retried(Platform::Fcm);
        let mut out = String::new();
        let counts = ClientCounts {
            tokens: 1,
            connections: 1,
        };
        s.render(&mut out, Some(counts), None);
        assert!(out.contains(
            "sipis_mediator_pushes_total{platform=\"apns\",kind=\"incoming_call\",result=\"sent\"} 1\n"
        ));
        assert!(out.contains(
            "sipis_mediator_pushes_total{platform=\"fcm\",kind=\"missed_call\",result=\"token_dead\"} 1\n"
        ));
        assert!(out.contains(
            "sipis_mediator_pushes_total{platform=\"fcm\",kind=\"missed_call\",result=\"sent\"} 0\n"
        ));
        assert!(
            out.contains("sipis_mediator_push_seconds{platform=\"apns\",quantile=\"0.5\"} 0.003")
        );
        assert!(out.contains("sipis_mediator_push_seconds_count{platform=\"fcm\"} 1\n"));
        assert!(out.contains("sipis_mediator_retries_total{platform=\"fcm\"} 1\n"));
        assert!(out.contains("sipis_mediator_apns_provider_tokens_total 1\n"));
        assert!(!out.contains("fcm_access_tokens"));
        // One HELP line per family.
        assert_eq!(out.matches("# HELP sipis_mediator_pushes_total").count(), 1);
    }
}
