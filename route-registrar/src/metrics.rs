//! The registrar's metrics, defined in one place so names and labels stay consistent.
//!
//! What an operator asks of a registrar: is it announcing (publishes by subject and outcome), are its routes
//! healthy (check results, durations, routes by health), and is it connected (the runtime's `nats_connected` and
//! `nats_connects_total`). Labels are route names from the config, so cardinality is what the operator wrote.

use crate::probe::Outcome;
use crate::schedule::Health;
use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};
use std::time::Duration;
use switchyard_runtime::metrics::{Metrics, latency_buckets};

/// Every metric the registrar updates.
#[derive(Clone)]
pub struct RegistrarMetrics {
    publishes: IntCounterVec,
    checks: IntCounterVec,
    check_seconds: HistogramVec,
    routes: IntGaugeVec,
    router_starts: IntCounter,
    route_file_errors: IntCounter,
    router_interval: IntGauge,
}

/// What became of a message the schedule asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishResult {
    /// Handed to the NATS client.
    Sent,
    /// Not sent because NATS was down; the next connect says the current state again.
    Skipped,
    /// The client refused or timed out.
    Failed,
}

impl PublishResult {
    fn label(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Skipped => "skipped_disconnected",
            Self::Failed => "failed",
        }
    }
}

impl RegistrarMetrics {
    /// Registers the metrics in `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            publishes: metrics.counter_vec("publishes_total", "Messages the registrar published, by subject and result.", &["subject", "result"]),
            checks: metrics.counter_vec("health_checks_total", "Health checks run, by route and result.", &["route", "result"]),
            check_seconds: metrics.histogram_vec("health_check_duration_seconds", "How long health checks took, by route.", &["route"], latency_buckets()),
            routes: metrics.gauge_vec("routes", "Routes the registrar manages, by health.", &["health"]),
            router_starts: metrics.counter("router_starts_total", "router.start messages received."),
            route_file_errors: metrics.counter("route_file_errors_total", "Route files that could not be read or were invalid."),
            router_interval: metrics.gauge(
                "router_register_interval_seconds",
                "The shortest minimumRegisterIntervalInSeconds a router asked for; 0 until one does.",
            ),
        }
    }

    /// Counts a publish.
    pub fn published(&self, subject: &str, result: PublishResult) {
        self.publishes.with_label_values(&[subject, result.label()]).inc();
    }

    /// Records a finished check.
    pub fn checked(&self, route: &str, outcome: &Outcome, took: Duration) {
        self.checks.with_label_values(&[route, outcome.label()]).inc();
        self.check_seconds.with_label_values(&[route]).observe(took.as_secs_f64());
    }

    /// Sets the routes-by-health gauge from the schedule's view.
    pub fn set_health<'a>(&self, routes: impl Iterator<Item = (&'a str, Health)>) {
        let mut counts = [(Health::Pending, 0i64), (Health::Healthy, 0), (Health::Unhealthy, 0)];
        for (_, health) in routes {
            if let Some(slot) = counts.iter_mut().find(|(kind, _)| *kind == health) {
                slot.1 += 1;
            }
        }
        for (health, count) in counts {
            self.routes.with_label_values(&[health.as_str()]).set(count);
        }
    }

    /// Counts a `router.start`.
    pub fn router_started(&self) {
        self.router_starts.inc();
    }

    /// Counts a bad route file.
    pub fn route_file_error(&self) {
        self.route_file_errors.inc();
    }

    /// Shows the interval routers asked for.
    pub fn set_router_interval(&self, interval: Option<Duration>) {
        self.router_interval.set(interval.map_or(0, |interval| i64::try_from(interval.as_secs()).unwrap_or(i64::MAX)));
    }
}
