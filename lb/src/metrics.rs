//! `lb`'s Prometheus metrics, defined once so the sync loop, the sources and the status page share them.
//!
//! What an operator watches: whether syncs succeed and how long they take (a slow `nft` or netlink shows here
//! first), how big plans are (a steady stream of non-empty plans means something fights `lb` over the kernel),
//! how many backends are out of rotation, and whether announcements and KV values are being refused.

use prometheus::{Histogram, IntCounterVec, IntGauge, IntGaugeVec};
use switchyard_runtime::metrics::{Metrics, latency_buckets};

/// Every `switchyard_lb_*` metric.
#[derive(Clone)]
pub struct LbMetrics {
    /// The registry, for `/metrics`.
    pub registry: Metrics,
    /// Syncs by result (`ok`, `error`).
    pub syncs: IntCounterVec,
    /// Duration of a sync: observe, plan, apply.
    pub sync_duration: Histogram,
    /// Changes per non-empty plan.
    pub plan_size: Histogram,
    /// Changes applied, by kind (`add_service`, `drain_destination`, `add_address`, ...).
    pub plan_changes: IntCounterVec,
    /// Desired services that collide with kernel services `lb` does not own.
    pub conflicts: IntGauge,
    /// VIPs by source (`file`, `kv`).
    pub vips: IntGaugeVec,
    /// Backends by health (`up`, `down`).
    pub backends: IntGaugeVec,
    /// VIPs, announcements and KV values refused at the last resolve.
    pub rejected: IntGauge,
    /// Announcements held.
    pub announcements: IntGauge,
    /// Announcement messages by action (`register`, `unregister`) and result (`ok`, `rejected`).
    pub announcement_messages: IntCounterVec,
    /// KV updates by result (`ok`, `rejected`).
    pub kv_updates: IntCounterVec,
    /// Health probes by result (`ok`, `failed`).
    pub health_checks: IntCounterVec,
    /// Announced backends pruned for not being refreshed.
    pub pruned: prometheus::IntCounter,
}

impl LbMetrics {
    /// Registers every metric in a fresh `lb` registry.
    pub fn new() -> Self {
        let registry = Metrics::new("lb");
        let size_buckets = vec![1.0, 2.0, 5.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0];
        Self {
            syncs: registry.counter_vec("syncs_total", "Kernel syncs by result.", &["result"]),
            sync_duration: registry.histogram("sync_duration_seconds", "Time to observe the kernel, plan and apply.", latency_buckets()),
            plan_size: registry.histogram("plan_size", "Changes in each non-empty plan.", size_buckets),
            plan_changes: registry.counter_vec("plan_changes_total", "Changes applied to the kernel, by kind.", &["kind"]),
            conflicts: registry.gauge("conflicts", "Desired services that collide with kernel services lb does not own."),
            vips: registry.gauge_vec("vips", "VIPs by source.", &["source"]),
            backends: registry.gauge_vec("backends", "Backends by health.", &["health"]),
            rejected: registry.gauge("rejected", "VIPs, announcements and KV values refused at the last resolve."),
            announcements: registry.gauge("announcements", "Backend announcements held."),
            announcement_messages: registry.counter_vec("announcement_messages_total", "lb.register/lb.unregister messages by action and result.", &["action", "result"]),
            kv_updates: registry.counter_vec("kv_updates_total", "VIP bucket updates by result.", &["result"]),
            health_checks: registry.counter_vec("health_checks_total", "Health probes by result.", &["result"]),
            pruned: registry.counter("pruned_total", "Announced backends pruned for not being refreshed."),
            registry,
        }
    }
}

impl Default for LbMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_project_convention() {
        let metrics = LbMetrics::new();
        metrics.syncs.with_label_values(&["ok"]).inc();
        metrics.sync_duration.observe(0.01);
        metrics.backends.with_label_values(&["up"]).set(2);
        let text = String::from_utf8(metrics.registry.encode()).unwrap();
        for name in ["switchyard_lb_syncs_total{result=\"ok\"} 1", "switchyard_lb_sync_duration_seconds_count 1", "switchyard_lb_backends{health=\"up\"} 2"] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
