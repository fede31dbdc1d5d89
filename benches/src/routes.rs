//! Synthetic route tables of a known shape.
//!
//! The lookup benchmark, the memory measurement, the ingest benchmark and the smoke checks all build their tables
//! here, so a number in BENCHMARKS.md and the bound a smoke check enforces describe the same table. Tables are
//! built through the router's own [`Registry`] (the single writer the NATS edge uses), not by poking the table
//! directly, so the cost and the memory measured are those of a real route.

use std::collections::BTreeMap;
use std::time::Duration;
use switchyard_config::messages::{LbAlgorithm, Registration};
use switchyard_router::endpoint::EndpointError;
use switchyard_router::registry::{Registry, RegistryConfig};
use switchyard_router::route_key::RequestHost;
use switchyard_router::table::RouteTable;

/// Requests routed per iteration of the lookup benchmark (the report divides criterion's time by it).
pub const LOOKUPS_PER_ITERATION: usize = 4096;

/// The kinds of route a request can match, each exercising a different part of the lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `app-0000042.apps.bench.test`: one hash probe, no path walk.
    Exact,
    /// `svc-0000010.bench.test/api/v2/tenant-2/orders`: one probe and a longest-prefix search among the host's
    /// four sibling routes; requests go two segments deeper than the route.
    DeepPath,
    /// `*.tenant-0000042.bench.test`: requests to `web.eu.tenant-0000042.bench.test` miss the exact host and the
    /// most specific wildcard before they hit, so three probes.
    Wildcard,
}

impl Shape {
    /// Every shape, in report order.
    pub const ALL: [Shape; 3] = [Shape::Exact, Shape::DeepPath, Shape::Wildcard];

    /// A short name for tables and benchmark ids.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Exact => "exact",
            Shape::DeepPath => "deep-path",
            Shape::Wildcard => "wildcard",
        }
    }

    /// The registered uri of the `index`th route of this shape.
    pub fn uri(self, index: usize) -> String {
        match self {
            Shape::Exact => format!("app-{index:07}.apps.bench.test"),
            Shape::DeepPath => format!("svc-{:07}.bench.test/api/v2/tenant-{}/orders", index / 4, index % 4),
            Shape::Wildcard => format!("*.tenant-{index:07}.bench.test"),
        }
    }

    /// A request (Host header, path) that the `index`th route of this shape serves.
    pub fn request(self, index: usize) -> Request {
        let (host, path) = match self {
            Shape::Exact => (format!("app-{index:07}.apps.bench.test"), "/".to_owned()),
            Shape::DeepPath => (format!("svc-{:07}.bench.test", index / 4), format!("/api/v2/tenant-{}/orders/8812/items", index % 4)),
            Shape::Wildcard => (format!("web.eu.tenant-{index:07}.bench.test"), "/index.html".to_owned()),
        };
        Request { host, path }
    }
}

/// A request's routing inputs.
#[derive(Debug, Clone)]
pub struct Request {
    /// The Host header.
    pub host: String,
    /// The path, without query.
    pub path: String,
}

impl Request {
    /// Routes the request the way the proxy does: normalise the Host into a stack buffer, then look it up.
    /// Returns whether a route was found.
    pub fn route(&self, table: &RouteTable) -> bool {
        RequestHost::parse(self.host.as_bytes()).is_some_and(|host| table.lookup(&host, &self.path).is_some())
    }
}

/// What a registration carries besides its uri.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Only `host`, `port` and `uris`.
    Minimal,
    /// What Cloud Foundry's emitters send: app GUID, instance GUID and index, and a `component` tag.
    Typical,
}

/// A registration of `uri` served by the `index`th distinct endpoint (`10.a.b.c:8080`; never dialled).
pub fn registration(uri: String, index: usize, detail: Detail) -> Registration {
    let octet = |shift: u32| (index >> shift) & 0xff;
    let mut registration = Registration {
        host: format!("10.{}.{}.{}", octet(16), octet(8), octet(0)),
        port: 8080,
        uris: vec![uri],
        ..Registration::default()
    };
    if detail == Detail::Typical {
        registration.app = format!("{:08x}-4b1c-4e7a-9c1d-{:012x}", index, index);
        registration.private_instance_id = format!("{:08x}-7d2e-4f3a-8b5c-{:012x}", index, index);
        registration.private_instance_index = (index % 16).to_string();
        registration.tags = BTreeMap::from([("component".to_owned(), "route-emitter".to_owned())]);
    }
    registration
}

/// The registry settings of a default router (120s TTL, round-robin, no empty-pool grace).
pub fn registry_config() -> RegistryConfig {
    RegistryConfig { stale_threshold: Duration::from_secs(120), default_algorithm: LbAlgorithm::RoundRobin, empty_pool_grace: None }
}

/// Which route of a mixed table index `i` is: shapes take turns, so each holds a third of the routes.
pub fn mixed_route(i: usize) -> (Shape, usize) {
    let shape = Shape::ALL.get(i % Shape::ALL.len()).copied().unwrap_or(Shape::Exact);
    (shape, i / Shape::ALL.len())
}

/// A registry holding `routes` routes built by `route(i)`, each with one endpoint of its own.
pub fn build_registry(routes: usize, detail: Detail, route: impl Fn(usize) -> (Shape, usize)) -> Result<Registry, EndpointError> {
    let mut registry = Registry::new(registry_config(), 1);
    for i in 0..routes {
        let (shape, index) = route(i);
        registry.register(&registration(shape.uri(index), i, detail), 0)?;
    }
    Ok(registry)
}

/// A deterministic sample of `count` route indices below `below` (xorshift, fixed seed), so every run of a
/// benchmark asks for the same spread of routes.
pub fn sample_indices(count: usize, below: usize) -> Vec<usize> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            usize::try_from(state % u64::try_from(below.max(1)).unwrap_or(u64::MAX)).unwrap_or(0)
        })
        .collect()
}

/// Requests for a sample of the `shape` routes of a mixed table of `routes` routes.
pub fn sample_requests(shape: Shape, routes: usize, count: usize) -> Vec<Request> {
    let per_shape = routes / Shape::ALL.len();
    sample_indices(count, per_shape).into_iter().map(|index| shape.request(index)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sampled_request_finds_its_route_and_no_other() {
        let registry = build_registry(300, Detail::Minimal, mixed_route).unwrap();
        assert_eq!(registry.table().len(), 300);
        for shape in Shape::ALL {
            for request in sample_requests(shape, 300, 50) {
                assert!(request.route(registry.table()), "{shape:?} request {request:?} found no route");
            }
        }
        let miss = Request { host: "app-0999999.apps.bench.test".to_owned(), path: "/".to_owned() };
        assert!(!miss.route(registry.table()));
    }

    #[test]
    fn requests_land_on_the_intended_route() {
        let registry = build_registry(300, Detail::Typical, mixed_route).unwrap();
        for shape in Shape::ALL {
            let request = shape.request(37);
            let host = RequestHost::parse(request.host.as_bytes()).unwrap();
            let pool = registry.table().lookup(&host, &request.path).unwrap();
            assert_eq!(pool.key().to_string(), shape.uri(37));
        }
    }

    #[test]
    fn samples_are_deterministic_and_in_range() {
        let a = sample_indices(1000, 77);
        assert_eq!(a, sample_indices(1000, 77));
        assert!(a.iter().all(|&i| i < 77));
        assert!(a.iter().collect::<std::collections::BTreeSet<_>>().len() > 50);
    }
}
