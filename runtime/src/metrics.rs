//! Prometheus metrics named the same way across the three programs.
//!
//! Every metric is `switchyard_<program>_<name>`, where program is `router`, `lb` or `registrar`, so one dashboard
//! query pattern fits all of them. Each program owns one [`Registry`] that also carries process metrics (CPU, RSS,
//! open file descriptors), which the soak tests and operators both read.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// Metric namespace shared by every program.
pub const NAMESPACE: &str = "switchyard";

/// A program's registry plus the helpers to define metrics in it with consistent names.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    program: &'static str,
}

impl Metrics {
    /// A registry for `program` (`router`, `lb`, `registrar`), with process metrics and a build-info gauge.
    pub fn new(program: &'static str) -> Self {
        let registry = Registry::new();
        let metrics = Self { registry, program };
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            metrics.register(Box::new(process));
        }
        let info = metrics.gauge_vec("build_info", "Build information; the value is always 1.", &["version"]);
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        metrics
    }

    /// Options carrying this program's namespace and subsystem.
    pub fn opts(&self, name: &str, help: &str) -> Opts {
        Opts::new(name, help).namespace(NAMESPACE).subsystem(self.program)
    }

    /// Registers a collector. A name clash is a programming error caught by every test run, so it is only logged.
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        if let Err(err) = self.registry.register(collector) {
            tracing::error!(%err, "metric registration failed");
        }
    }

    /// A counter.
    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        let counter = IntCounter::with_opts(self.opts(name, help)).unwrap_or_else(|_| invalid_metric(name));
        self.register(Box::new(counter.clone()));
        counter
    }

    /// A counter with labels.
    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let counter = IntCounterVec::new(self.opts(name, help), labels).unwrap_or_else(|_| invalid_metric(name));
        self.register(Box::new(counter.clone()));
        counter
    }

    /// A gauge.
    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        let gauge = IntGauge::with_opts(self.opts(name, help)).unwrap_or_else(|_| invalid_metric(name));
        self.register(Box::new(gauge.clone()));
        gauge
    }

    /// A gauge with labels.
    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::IntGaugeVec {
        let gauge = prometheus::IntGaugeVec::new(self.opts(name, help), labels).unwrap_or_else(|_| invalid_metric(name));
        self.register(Box::new(gauge.clone()));
        gauge
    }

    /// A histogram with the given buckets (seconds or counts).
    pub fn histogram_vec(&self, name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> prometheus::HistogramVec {
        let opts = prometheus::HistogramOpts::from(self.opts(name, help)).buckets(buckets);
        let histogram = prometheus::HistogramVec::new(opts, labels).unwrap_or_else(|_| invalid_metric(name));
        self.register(Box::new(histogram.clone()));
        histogram
    }

    /// A histogram without labels.
    pub fn histogram(&self, name: &str, help: &str, buckets: Vec<f64>) -> prometheus::Histogram {
        let opts = prometheus::HistogramOpts::from(self.opts(name, help)).buckets(buckets);
        let histogram = prometheus::Histogram::with_opts(opts).unwrap_or_else(|_| invalid_metric(name));
        self.register(Box::new(histogram.clone()));
        histogram
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(%err, "metric encoding failed");
        }
        out
    }
}

/// Metric definitions are compile-time constants in this project; an invalid one is a bug, not an input, and every
/// test run would catch it.
#[allow(clippy::panic)]
pub fn invalid_metric(name: &str) -> ! {
    panic!("metric `{name}` has an invalid name or labels")
}

/// Buckets for latencies from 100µs to 60s.
pub fn latency_buckets() -> Vec<f64> {
    vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
}

/// Buckets for sub-microsecond to millisecond operations (lookups, plan computations).
pub fn fast_buckets() -> Vec<f64> {
    vec![1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 1e-4, 1e-3, 1e-2]
}
