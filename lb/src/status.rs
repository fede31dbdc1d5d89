//! `lb`'s status listener: `/health`, `/vips` and `/metrics`.
//!
//! `/vips` answers the operator's first question during an incident, "what does lb think should be in the
//! kernel, and why": every VIP with its backends, their weights and health, and where each came from, plus
//! what was refused and how the last sync went. `/health` fails while syncs fail, because an LB that cannot
//! program its kernel is not healthy even if the process is up.

use crate::intent::{Intent, Rejection, ResolvedBackend, Source};
use crate::ipvs::Stats;
use crate::ipvs::traffic::{DestinationTraffic, Traffic};
use crate::metrics::LbMetrics;
use crate::sync::SyncStatus;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Serialize;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use switchyard_config::lb::{Protocol, Scheduler};
use switchyard_runtime::status::{self, BasicAuth, StatusHandler, StatusResponse};

/// What the handler reads; the run loop replaces the intent after each resolve.
pub struct LbStatus {
    /// The latest intent.
    pub intent: RwLock<Arc<Intent>>,
    /// The sync loop's outcome.
    pub sync: Arc<Mutex<SyncStatus>>,
    /// Metrics.
    pub metrics: LbMetrics,
    /// Credentials for `/vips`.
    pub auth: BasicAuth,
    /// The kernel's traffic counters, when the dataplane has them (IPVS).
    pub traffic: Option<Traffic>,
}

#[derive(Serialize)]
struct VipView<'a> {
    name: &'a str,
    address: std::net::IpAddr,
    port: u16,
    protocol: Protocol,
    scheduler: Scheduler,
    persistence_timeout: String,
    source: Source,
    /// The kernel's counters for the whole VIP (IPVS only).
    #[serde(skip_serializing_if = "Option::is_none")]
    ipvs: Option<Stats>,
    backends: Vec<BackendView<'a>>,
}

#[derive(Serialize)]
struct BackendView<'a> {
    #[serde(flatten)]
    backend: &'a ResolvedBackend,
    /// The kernel's connection counts and counters for this backend (IPVS only).
    #[serde(skip_serializing_if = "Option::is_none")]
    ipvs: Option<DestinationTraffic>,
}

#[derive(Serialize)]
struct VipsView<'a> {
    sync: &'a SyncStatus,
    vips: Vec<VipView<'a>>,
    rejected: &'a [Rejection],
}

impl LbStatus {
    fn vips(&self) -> StatusResponse {
        let intent = Arc::clone(&self.intent.read().unwrap_or_else(PoisonError::into_inner));
        let sync = self.sync.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let vips = intent
            .vips
            .iter()
            .map(|vip| {
                let traffic = self.traffic.as_ref().and_then(|traffic| traffic.service(&vip.spec.key()));
                let backends = vip
                    .resolved_backends
                    .iter()
                    .map(|backend| BackendView {
                        backend,
                        ipvs: traffic.as_ref().and_then(|t| t.destinations.get(&backend.key()).cloned()),
                    })
                    .collect();
                VipView {
                    name: &vip.spec.name,
                    address: vip.spec.address,
                    port: vip.spec.port,
                    protocol: vip.spec.protocol,
                    scheduler: vip.spec.scheduler,
                    persistence_timeout: switchyard_config::duration::format(vip.spec.persistence_timeout),
                    source: vip.source,
                    ipvs: traffic.map(|t| t.stats),
                    backends,
                }
            })
            .collect();
        status::json(&VipsView { sync: &sync, vips, rejected: &intent.rejected })
    }

    fn health(&self) -> StatusResponse {
        let sync = self.sync.lock().unwrap_or_else(PoisonError::into_inner);
        match &sync.last_error {
            None => status::text(StatusCode::OK, "ok"),
            Some(error) => status::text(StatusCode::SERVICE_UNAVAILABLE, format!("kernel sync failing: {error}\n")),
        }
    }
}

impl StatusHandler for LbStatus {
    fn handle(&self, request: &Request<Incoming>) -> StatusResponse {
        match request.uri().path() {
            "/health" => self.health(),
            "/metrics" => status::metrics(self.metrics.registry.encode()),
            "/vips" if self.auth.allows(request) => self.vips(),
            "/vips" => BasicAuth::challenge(),
            _ => status::not_found(),
        }
    }
}
