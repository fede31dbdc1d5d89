//! Faults under load: the router keeps serving live routes while the parts around it fail.
//!
//! Each test runs steady, paced load (tests/src/load.rs) through the real router at real backends and breaks
//! something mid-run: the NATS server, a backend, the route table (churn), the router itself (drain). The
//! claim each test checks is the one operators rely on: requests to routes that are still live do not fail, and
//! the only requests allowed to fail are the ones already on the part that died.

// Test code: a panic is a failed test, with the reason.
#![allow(clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use nix::sys::signal::Signal;
use std::time::Duration;
use switchyard_tests::backend::Reply;
use switchyard_tests::load::{self, LoadSpec};
use switchyard_tests::{NatsServer, RouterProcess, TestBackend, publish, registration};

const STABLE: [&str; 3] = ["app1.example.com", "app2.example.com", "app3.example.com"];

/// Publishes the stable routes for `ports` every `every` until aborted, as emitters do. Publish errors during an
/// outage are expected and ignored: the client reconnects by itself.
fn keep_registered(client: async_nats::Client, ports: Vec<u16>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            for port in &ports {
                let payload = serde_json::to_vec(&registration(*port, &STABLE)).unwrap_or_default();
                let _ = client.publish("router.register", payload.into()).await;
            }
            tokio::time::sleep(every).await;
        }
    })
}

async fn start_backends(count: usize) -> Vec<TestBackend> {
    let mut backends = Vec::new();
    for index in 0..count {
        backends.push(TestBackend::start(&format!("backend-{index}")).await);
    }
    backends
}

/// A request the router never took (its port refused the connection) would hide a crash from the failure count:
/// outside a drain, none may be refused, and the router must still be running.
fn still_serving(router: &mut RouterProcess, report: &load::LoadReport) {
    assert_eq!(report.refused, 0, "connections were refused: {}", report.summary());
    assert!(router.service.is_running(), "the router died:\n{}", router.service.log());
}

async fn all_stable_routable(router: &RouterProcess) {
    for host in STABLE {
        assert!(router.wait_for_status(host, "/", 200, Duration::from_secs(10)).await, "{host} never became routable:\n{}", router.service.log());
    }
}

/// Two backends serving the stable routes through a fresh router, registered once (the default TTL outlives
/// every test here).
async fn stable_routes_on_two_backends() -> (Vec<TestBackend>, NatsServer, RouterProcess) {
    let backends = start_backends(2).await;
    let nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[]);
    let client = nats.client().await;
    for backend in &backends {
        publish(&client, "router.register", &registration(backend.port(), &STABLE)).await;
    }
    all_stable_routable(&router).await;
    (backends, nats, router)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_longer_than_the_ttl_fails_no_request() {
    let backends = start_backends(2).await;
    let mut nats = NatsServer::start();
    let mut router = RouterProcess::start(
        &nats,
        &[("droplet_stale_threshold", "2s"), ("prune_stale_droplets_interval", "200ms"), ("suspend_pruning_if_nats_unavailable", "true")],
    );
    let refresher = keep_registered(nats.client().await, backends.iter().map(TestBackend::port).collect(), Duration::from_millis(300));
    all_stable_routable(&router).await;

    let load = tokio::spawn(load::run(LoadSpec::new(router.addr(), &STABLE, 8, Duration::from_secs(9), Duration::from_millis(4))));
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.stop();
    // Twice the TTL without a single refresh: without suspension every route would be pruned by now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    nats.resume();
    let report = load.await.expect("load task");
    refresher.abort();
    println!("NATS outage under load: {}", report.summary());
    assert!(report.answered() > 1000, "too little load to judge: {}", report.summary());
    assert!(report.failures.is_empty() && report.unexpected(200) == 0, "requests failed during the outage: {}", report.summary());
    still_serving(&mut router, &report);
    assert!(router.service.log().contains("pruning suspended"), "{}", router.service.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_fails_no_idempotent_request() {
    let (backends, _nats, mut router) = stable_routes_on_two_backends().await;

    let load = tokio::spawn(load::run(LoadSpec::new(router.addr(), &STABLE, 8, Duration::from_secs(6), Duration::from_millis(4))));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = &backends[1];
    let before_kill = killed.count();
    killed.kill();
    let report = load.await.expect("load task");
    println!("backend killed under load: {} ({} requests had reached it)", report.summary(), before_kill);
    assert!(before_kill > 100, "the killed backend served too little to judge: {before_kill}");
    // The requests on the dead backend when it died are GETs: idempotent, so the router sends them to the other
    // backend instead of failing them.
    assert!(report.failures.is_empty() && report.unexpected(200) == 0, "requests failed: {}", report.summary());
    assert!(report.answered() > 1000, "too little load to judge: {}", report.summary());
    still_serving(&mut router, &report);
    let metrics = router.metrics().await;
    let retries = metrics
        .lines()
        .find_map(|line| line.strip_prefix("switchyard_router_retries_total ").and_then(|n| n.trim().parse::<f64>().ok()))
        .unwrap_or(0.0);
    assert!(retries > 0.0, "no request was retried on the live backend:\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_route_updates_a_second_never_disturb_stable_routes() {
    let (backends, nats, mut router) = stable_routes_on_two_backends().await;
    let client = nats.client().await;

    let load = tokio::spawn(load::run(LoadSpec::new(router.addr(), &STABLE, 8, Duration::from_secs(6), Duration::from_millis(4))));
    // 100 updates a second: new routes registered, older ones unregistered, and the stable routes' own endpoints
    // re-registered and one of them moved between backends (which is how a real foundation churns).
    let churn_port = backends[0].port();
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    for n in 0..600u32 {
        ticks.tick().await;
        let (subject, payload) = match n % 4 {
            0 | 1 => ("router.register", registration(churn_port, &[&format!("churn-{n}.example.com"), "app1.example.com/churn"])),
            2 => ("router.unregister", registration(churn_port, &[&format!("churn-{}.example.com", n.saturating_sub(40))])),
            _ => ("router.register", registration(backends[(n as usize / 4) % 2].port(), &STABLE)),
        };
        client.publish(subject, serde_json::to_vec(&payload).unwrap_or_default().into()).await.expect("publish churn");
    }
    client.flush().await.expect("flush");
    let report = load.await.expect("load task");
    println!("route churn under load: {}", report.summary());
    assert!(report.answered() > 1000, "too little load to judge: {}", report.summary());
    assert!(report.failures.is_empty() && report.unexpected(200) == 0, "stable routes were disturbed: {}", report.summary());
    still_serving(&mut router, &report);
    let registrations = router.metrics().await;
    assert!(registrations.contains("switchyard_router_registry_messages_total"), "{registrations}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_under_load_resets_no_started_request() {
    // A slow backend keeps requests in flight at the moment the listeners close.
    let backend = TestBackend::start_with(|_| Reply::ok("slow").delay(Duration::from_millis(80))).await;
    let nats = NatsServer::start();
    let mut router = RouterProcess::start(&nats, &[("drain_wait", "1s"), ("drain_timeout", "10s")]);
    let client = nats.client().await;
    publish(&client, "router.register", &registration(backend.port(), &STABLE)).await;
    all_stable_routable(&router).await;

    let load = tokio::spawn(load::run(LoadSpec::new(router.addr(), &STABLE, 16, Duration::from_secs(5), Duration::ZERO)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    router.service.signal(Signal::SIGUSR1);
    let report = load.await.expect("load task");
    let exit = router.service.wait_exit(Duration::from_secs(15));
    println!("drain under load: {}", report.summary());
    assert!(report.answered() > 100, "too little load to judge: {}", report.summary());
    assert!(report.failures.is_empty(), "a request that had started was cut off by the drain: {}", report.summary());
    assert_eq!(report.unexpected(200), 0, "{}", report.summary());
    assert!(report.refused > 0, "the listeners never closed: {}", report.summary());
    assert_eq!(exit.and_then(|status| status.code()), Some(0), "{}", router.service.log());
}
