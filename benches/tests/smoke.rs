//! Smoke checks for the numbers that can regress without any test failing: route lookup at 100k routes, and
//! NATS ingest of 10k registrations through the real router binary. The bounds are generous (these run in debug
//! builds, on a shared machine, next to other tests), so they catch a lost order of magnitude, not a few percent;
//! `scripts/bench` measures the real figures. They use the same route sets and ingest code as the benchmarks.

use std::net::SocketAddr;
use std::time::Instant;
use switchyard_benches::ingest::{self, RouterUnderTest};
use switchyard_benches::routes::{Detail, LOOKUPS_PER_ITERATION, Shape, build_registry, mixed_route, sample_requests};
use switchyard_benches::stats::median;
use switchyard_tests::{NatsServer, RouterProcess, TestBackend};

/// Median lookup at 100k routes, debug build. Release measures around 100 ns; a linear scan would be ~1 ms.
const LOOKUP_BOUND_NS: f64 = 50_000.0;
/// 10k registrations routable after the last publish (the release target for 100k is 1 s).
const INGEST_BOUND_SECONDS: f64 = 10.0;

#[test]
fn route_lookup_at_100k_routes_stays_fast() {
    let routes = 100_000;
    let registry = build_registry(routes, Detail::Minimal, mixed_route).expect("the synthetic routes register");
    assert_eq!(registry.table().len(), routes);
    for shape in Shape::ALL {
        let requests = sample_requests(shape, routes, LOOKUPS_PER_ITERATION);
        let mut per_lookup_ns = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let found = requests.iter().filter(|r| std::hint::black_box(r).route(registry.table())).count();
            per_lookup_ns.push(started.elapsed().as_nanos() as f64 / requests.len() as f64);
            assert_eq!(found, requests.len(), "every {} request must find its route", shape.name());
        }
        let median_ns = median(&per_lookup_ns).expect("five rounds were timed");
        eprintln!("{} lookup at {routes} routes (debug build): median {median_ns:.0} ns", shape.name());
        assert!(median_ns < LOOKUP_BOUND_NS, "{} lookup took {median_ns:.0} ns at {routes} routes (bound {LOOKUP_BOUND_NS} ns)", shape.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_registrations_become_routable() {
    let nats = NatsServer::start();
    let backend = TestBackend::start("app").await;
    let router = RouterProcess::start(&nats, &[("access_log", "{file: ''}")]);
    let client = nats.client().await;
    let under_test = RouterUnderTest {
        proxy: router.addr(),
        status: SocketAddr::from(([127, 0, 0, 1], router.status_port)),
        backend_port: backend.addr().port(),
    };
    let count = 10_000;
    let bulk = ingest::bulk(&client, under_test, "smoke", count).await.expect("bulk ingest runs");
    eprintln!(
        "{count} registrations: published in {:.3}s, {} routable, the last {:.3}s after the last publish",
        bulk.publish_seconds, bulk.routable, bulk.routable_after_last_publish_seconds
    );
    assert_eq!(bulk.routable, count, "the router lost registrations:\n{}", router.service.log());
    assert!(
        bulk.routable_after_last_publish_seconds < INGEST_BOUND_SECONDS,
        "{count} registrations took {:.3}s after the last publish to become routable (bound {INGEST_BOUND_SECONDS}s)",
        bulk.routable_after_last_publish_seconds
    );
}
