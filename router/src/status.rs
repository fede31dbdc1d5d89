//! The router's status listener: `/health` for load balancers, `/routes` for operators, `/metrics` for
//! Prometheus.

use crate::metrics::RouterMetrics;
use crate::pool::Pool;
use crate::table::RouteTable;
use arc_swap::ArcSwap;
use http::{Method, StatusCode};
use hyper::Request;
use hyper::body::Incoming;
use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use switchyard_runtime::status::{self, BasicAuth, StatusHandler, StatusResponse};

/// Where the router is in its life, as `/health` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Learning routes before listening (`start_response_delay_interval`).
    Starting = 0,
    /// Serving traffic.
    Serving = 1,
    /// Draining after SIGUSR1.
    Draining = 2,
}

/// Shared, lock-free phase.
#[derive(Debug, Default)]
pub struct Health(AtomicU8);

impl Health {
    /// Moves to `phase`.
    pub fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::Relaxed);
    }

    /// The current phase.
    pub fn get(&self) -> Phase {
        match self.0.load(Ordering::Relaxed) {
            1 => Phase::Serving,
            2 => Phase::Draining,
            _ => Phase::Starting,
        }
    }
}

/// Answers the status endpoints.
pub struct RouterStatus {
    /// Published routes.
    pub table: Arc<ArcSwap<RouteTable>>,
    /// Life phase.
    pub health: Arc<Health>,
    /// Metrics.
    pub metrics: RouterMetrics,
    /// Credentials for `/routes`.
    pub auth: BasicAuth,
    /// Serve only `/routes` (the loopback routes listener).
    pub routes_only: bool,
}

/// One endpoint as `/routes` shows it.
#[derive(Serialize)]
struct EndpointView<'a> {
    address: &'a str,
    ttl: u64,
    tls: bool,
    protocol: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    private_instance_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    server_cert_domain_san: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    route_service_url: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    isolation_segment: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    availability_zone: &'a str,
    #[serde(skip_serializing_if = "Tags::is_empty")]
    tags: Tags<'a>,
}

/// An endpoint's tags, shown as the JSON object they were registered as.
struct Tags<'a>(&'a [(String, String)]);

impl Tags<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Tags<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, value)| (name, value)))
    }
}

struct PoolView<'a>(&'a Pool);

impl Serialize for PoolView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.endpoints().len()))?;
        for endpoint in self.0.endpoints() {
            let details = endpoint.details();
            seq.serialize_element(&EndpointView {
                address: endpoint.identity(),
                ttl: endpoint.ttl().as_secs(),
                tls: endpoint.is_tls(),
                protocol: endpoint.protocol().as_str(),
                private_instance_id: endpoint.private_instance_id(),
                server_cert_domain_san: &details.server_cert_domain_san,
                route_service_url: &details.route_service_url,
                isolation_segment: &details.isolation_segment,
                availability_zone: &details.availability_zone,
                tags: Tags(&details.tags),
            })?;
        }
        seq.end()
    }
}

/// The whole table as `{"<uri>": [endpoints...]}`, in uri order.
struct TableView<'a>(&'a RouteTable);

impl Serialize for TableView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut pools: Vec<&Arc<Pool>> = Vec::with_capacity(self.0.len());
        self.0.for_each_pool(|pool| pools.push(pool));
        let mut keyed: Vec<(String, &Arc<Pool>)> = pools.into_iter().map(|p| (p.key().to_string(), p)).collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        let mut map = serializer.serialize_map(Some(keyed.len()))?;
        for (key, pool) in keyed {
            map.serialize_entry(&key, &PoolView(pool))?;
        }
        map.end()
    }
}

impl StatusHandler for RouterStatus {
    fn handle(&self, request: &Request<Incoming>) -> StatusResponse {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return status::text(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n");
        }
        match (request.uri().path(), self.routes_only) {
            ("/routes", _) => {
                if !self.auth.allows(request) {
                    return BasicAuth::challenge();
                }
                let table = self.table.load();
                status::json(&TableView(&table))
            }
            ("/health", false) => match self.health.get() {
                Phase::Serving => status::text(StatusCode::OK, "ok\n"),
                Phase::Starting => status::text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
                Phase::Draining => status::text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
            },
            ("/metrics", false) => status::metrics(self.metrics.registry.encode()),
            _ => status::not_found(),
        }
    }
}
