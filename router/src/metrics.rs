//! The router's metrics.
//!
//! Request-path counters are kept per worker thread (prometheus' local counters and histograms) and folded into
//! the shared ones on each worker tick, so the hot path never touches a cache line another core is writing.
//! Control-path metrics (registrations, routes) are updated directly.

use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};
use std::cell::RefCell;
use switchyard_runtime::metrics::{Metrics, fast_buckets, latency_buckets};

/// Every metric the router exposes.
#[derive(Clone)]
pub struct RouterMetrics {
    /// The registry they live in.
    pub registry: Metrics,
    /// Requests received.
    pub requests: IntCounter,
    /// Responses by status class (`1xx` .. `5xx`).
    pub responses: IntCounterVec,
    /// 502s sent because every attempt failed.
    pub bad_gateways: IntCounter,
    /// Backend attempts that failed, by kind (`dial`, `timeout`, `closed`, `protocol`).
    pub backend_errors: IntCounterVec,
    /// Attempts made again on another endpoint.
    pub retries: IntCounter,
    /// Requests the client abandoned before the response (logged as 499).
    pub client_disconnects: IntCounter,
    /// Time to find the route for a request.
    pub route_lookup: Histogram,
    /// Time from sending to a backend to its response headers.
    pub backend_latency: Histogram,
    /// Registration messages applied, by action (`register`, `unregister`).
    pub registry_messages: IntCounterVec,
    /// Bus messages refused, by subject and reason.
    pub rejected_messages: IntCounterVec,
    /// Time from an emitter's `endpoint_updated_at_ns` to the route being applied.
    pub registration_latency: Histogram,
    /// Endpoints removed by pruning.
    pub pruned_endpoints: IntCounter,
    /// Routes in the table.
    pub routes: IntGauge,
    /// Endpoints across all routes.
    pub endpoints: IntGauge,
    /// Client connections open.
    pub connections: IntGauge,
    /// Connections opened to backends.
    pub upstream_connects: IntCounter,
    /// Access-log buffers dropped because the writer fell behind.
    pub access_log_dropped: IntCounter,
    /// Endpoints removed because their TLS certificate named someone else.
    pub identity_removals: IntCounter,
    /// Client TLS handshakes that failed (bad certificates, no shared version, plain HTTP on the TLS port).
    pub tls_handshake_errors: IntCounter,
    /// Certificate reloads, by result (`ok`, `error`).
    pub tls_reloads: IntCounterVec,
}

impl RouterMetrics {
    /// Defines every metric in a fresh registry.
    pub fn new() -> Self {
        let m = Metrics::new("router");
        Self {
            requests: m.counter("requests_total", "HTTP requests received."),
            responses: m.counter_vec("responses_total", "HTTP responses sent, by status class.", &["status_class"]),
            bad_gateways: m.counter("bad_gateways_total", "502 responses after every backend attempt failed."),
            backend_errors: m.counter_vec("backend_errors_total", "Failed backend attempts, by kind.", &["kind"]),
            retries: m.counter("retries_total", "Backend attempts retried on another endpoint."),
            client_disconnects: m.counter("client_disconnects_total", "Requests abandoned by the client before the response (499)."),
            route_lookup: m.histogram("route_lookup_seconds", "Time to find the route for a request.", fast_buckets()),
            backend_latency: m.histogram("backend_latency_seconds", "Time from sending a request to a backend to its response headers.", latency_buckets()),
            registry_messages: m.counter_vec("registry_messages_total", "Route registration messages applied, by action.", &["action"]),
            rejected_messages: m.counter_vec("rejected_messages_total", "Bus messages refused, by subject and reason.", &["subject", "reason"]),
            registration_latency: m.histogram("registration_latency_seconds", "Time from an emitter's endpoint_updated_at_ns to the route being applied.", latency_buckets()),
            pruned_endpoints: m.counter("pruned_endpoints_total", "Endpoints removed because they were not refreshed in time."),
            routes: m.gauge("routes", "Routes in the routing table."),
            endpoints: m.gauge("endpoints", "Endpoints across all routes."),
            connections: m.gauge("connections", "Client connections open."),
            upstream_connects: m.counter("upstream_connects_total", "Connections opened to backends."),
            access_log_dropped: m.counter("access_log_dropped_total", "Access-log buffers dropped because the writer fell behind."),
            identity_removals: m.counter("backend_identity_removals_total", "Endpoints removed because their TLS certificate did not match the registration's SAN."),
            tls_handshake_errors: m.counter("tls_handshake_errors_total", "Client TLS handshakes that failed."),
            tls_reloads: m.counter_vec("tls_reloads_total", "TLS certificate reloads, by result.", &["result"]),
            registry: m,
        }
    }
}

impl Default for RouterMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The per-thread side of the request metrics.
pub struct LocalMetrics {
    requests: LocalIntCounter,
    responses: [LocalIntCounter; 5],
    route_lookup: LocalHistogram,
    backend_latency: LocalHistogram,
}

thread_local! {
    static LOCAL: RefCell<Option<LocalMetrics>> = const { RefCell::new(None) };
}

impl LocalMetrics {
    /// Installs this thread's local metrics (each worker calls it once).
    pub fn install(metrics: &RouterMetrics) {
        let class = |c: &str| metrics.responses.with_label_values(&[c]).local();
        let local = Self {
            requests: metrics.requests.local(),
            responses: [class("1xx"), class("2xx"), class("3xx"), class("4xx"), class("5xx")],
            route_lookup: metrics.route_lookup.local(),
            backend_latency: metrics.backend_latency.local(),
        };
        LOCAL.with(|cell| *cell.borrow_mut() = Some(local));
    }

    fn with(update: impl FnOnce(&mut Self)) {
        LOCAL.with(|cell| {
            if let Ok(mut slot) = cell.try_borrow_mut()
                && let Some(local) = slot.as_mut() {
                    update(local);
                }
        });
    }

    /// Counts a request and the class of its response.
    pub fn request_done(status: u16) {
        Self::with(|local| {
            local.requests.inc();
            let class = usize::from(status / 100).clamp(1, 5) - 1;
            if let Some(counter) = local.responses.get(class) {
                counter.inc();
            }
        });
    }

    /// Records a route lookup time.
    pub fn lookup(seconds: f64) {
        Self::with(|local| local.route_lookup.observe(seconds));
    }

    /// Records a backend's time to response headers.
    pub fn backend(seconds: f64) {
        Self::with(|local| local.backend_latency.observe(seconds));
    }

    /// Folds this thread's counts into the shared metrics.
    pub fn flush() {
        Self::with(|local| {
            local.requests.flush();
            for counter in &local.responses {
                counter.flush();
            }
            local.route_lookup.flush();
            local.backend_latency.flush();
        });
    }
}
