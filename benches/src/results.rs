//! The numbers each benchmark writes and the report reads, as JSON files in one results directory.
//!
//! Keeping measurement and reporting apart means a long run's numbers survive a failure in a later step, and the
//! report can be rebuilt from them without measuring again.

use crate::error::{BenchError, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Whether the access log (and metrics scraping) was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Logging {
    /// Access log to a file for every proxy; the router's /metrics scraped every second.
    On,
    /// No access log, no scraping.
    Off,
}

impl Logging {
    /// Both, in report order.
    pub const ALL: [Logging; 2] = [Logging::On, Logging::Off];

    /// How the report names it.
    pub fn describe(self) -> &'static str {
        match self {
            Logging::On => "access log and metrics on",
            Logging::Off => "access log and metrics off",
        }
    }
}

/// What each request of a counted batch is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    /// `GET /`, answered with the backend's short body.
    #[default]
    Get,
    /// `POST /` with a [`POST_BODY_BYTES`]-byte body, which the backend echoes.
    Post,
}

/// The size of a [`RequestKind::Post`] body: a small form or JSON document.
pub const POST_BODY_BYTES: usize = 100;

impl RequestKind {
    /// Every kind, in report order.
    pub const ALL: [RequestKind; 2] = [RequestKind::Get, RequestKind::Post];

    /// Its name on the command line and in file names.
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Get => "get",
            RequestKind::Post => "post",
        }
    }
}

/// One saturation run of one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaturationRun {
    /// Target name (`direct`, `nginx`, `haproxy`, `router-1t`, `router-2t`).
    pub target: String,
    /// Logging mode.
    pub logging: Logging,
    /// Round number.
    pub round: u32,
    /// Requests per second at saturation.
    pub requests_per_second: f64,
    /// Proxy CPU microseconds per request (none for `direct`).
    pub cpu_us_per_request: Option<f64>,
    /// Of which in the kernel (system time); absent in results written before it was measured.
    #[serde(default)]
    pub system_us_per_request: Option<f64>,
    /// Proxy resident memory after the run, bytes (none for `direct`).
    pub rss_bytes: Option<u64>,
}

/// One fixed-rate run of one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyRun {
    /// Target name.
    pub target: String,
    /// Logging mode.
    pub logging: Logging,
    /// Round number.
    pub round: u32,
    /// The rate asked for.
    pub rate: f64,
    /// The rate achieved.
    pub achieved_rate: f64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
}

/// The peer comparison.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Peers {
    /// How processes were placed on CPUs.
    pub placement: String,
    /// Seconds per saturation run.
    pub saturation_seconds: u64,
    /// Seconds per fixed-rate run.
    pub latency_seconds: u64,
    /// Keep-alive connections.
    pub connections: u32,
    /// Rounds per target.
    pub rounds: u32,
    /// Saturation runs.
    pub saturation: Vec<SaturationRun>,
    /// Fixed-rate runs.
    pub latency: Vec<LatencyRun>,
}

/// Instructions one proxy ran for a counted batch of requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstructionCount {
    /// Target name (`nginx`, `haproxy`, `router-1t`).
    pub target: String,
    /// Logging mode.
    pub logging: Logging,
    /// What the requests were (results from before POSTs were counted hold GETs only).
    #[serde(default)]
    pub request: RequestKind,
    /// Requests in the counted batch.
    pub requests: u64,
    /// Instructions the proxy's process ran in user space while serving them, all threads.
    pub instructions: u64,
}

impl InstructionCount {
    /// Instructions per request.
    pub fn per_request(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.instructions as f64 / self.requests as f64)
    }
}

/// The instruction count of every proxy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Instructions {
    /// Uncounted requests each proxy served first.
    pub warmup: u64,
    /// Keep-alive connections.
    pub connections: u32,
    /// One count per proxy, logging mode and request kind.
    pub counts: Vec<InstructionCount>,
}

/// Route-table memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteMemory {
    /// Routes in the table.
    pub routes: usize,
    /// Live bytes per route for registrations with only host, port and uri.
    pub minimal_bytes_per_route: f64,
    /// Live bytes per route for registrations like Cloud Foundry's (app and instance ids, index, a tag).
    pub typical_bytes_per_route: f64,
    /// Live bytes per route for the minimal registrations once every endpoint has served a request (and so built
    /// the header values it adds): the steady state of a table whose routes all see traffic.
    pub served_bytes_per_route: f64,
    /// Seconds to build the minimal table through the registry.
    pub build_seconds: f64,
}

/// NATS ingest through a real router.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ingest {
    /// Registrations published.
    pub registrations: usize,
    /// How many became routable (fewer when the router lost some).
    pub routable: usize,
    /// Seconds from the first publish until the server had the last one.
    pub publish_seconds: f64,
    /// Seconds from the last publish until the last routable route was in the table.
    pub routable_after_last_publish_seconds: f64,
    /// Registrations per second, first publish to all routable.
    pub registrations_per_second: f64,
    /// Publish → routable latency at a fixed rate.
    pub latency: IngestLatency,
}

/// Publish → routable latency, each new route probed with requests until the router serves it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IngestLatency {
    /// Messages per second.
    pub rate: f64,
    /// Messages measured.
    pub samples: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
}

/// Writes `value` as pretty JSON to `path`.
pub fn save<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| BenchError::Parse { what: path.display().to_string(), problem: e.to_string() })?;
    std::fs::write(path, text).map_err(|source| BenchError::File { path: path.to_owned(), source })
}

/// Reads JSON from `path`; `None` when the file does not exist (that benchmark was not run).
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| BenchError::Parse { what: path.display().to_string(), problem: e.to_string() }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BenchError::File { path: path.to_owned(), source }),
    }
}
