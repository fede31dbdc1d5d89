//! The registrar and the router together, both real binaries on a real `nats-server`: what a user sees is a route
//! that works shortly after the registrar starts and stops working as soon as the backend's health check fails.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use switchyard_tests::backend::Reply;
use switchyard_tests::registrar::RegistrarProcess;
use switchyard_tests::{NatsServer, RouterProcess, TestBackend, http};

/// Polls `GET app.example.com/` through the router until it answers `status`; returns how long that took.
async fn until_status(proxy: SocketAddr, status: u16, timeout: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if http::get(proxy, "app.example.com", "/").await.status.as_u16() == status {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_is_routable_within_a_second_and_gone_within_an_interval_of_failing() {
    let nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[]);
    let proxy = router.addr();
    assert_eq!(http::get(proxy, "app.example.com", "/").await.status, 404, "nothing is routed before the registrar runs");

    let healthy = Arc::new(AtomicBool::new(true));
    let state = Arc::clone(&healthy);
    let backend = TestBackend::start_with(move |request| match request.uri.as_str() {
        "/health" if state.load(Ordering::SeqCst) => Reply::ok("ok"),
        "/health" => Reply::ok("failing").status(503),
        _ => Reply::ok("hello from app"),
    })
    .await;
    let interval = Duration::from_secs(1);
    let started = Instant::now();
    let registrar = RegistrarProcess::start(
        &nats,
        &format!(
            "routes:\n  - {{name: app, port: {port}, uris: [app.example.com], registration_interval: 1s, health_check: {{http: {{url: \"http://127.0.0.1:{port}/health\"}}, timeout: 500ms}}}}\n",
            port = backend.port()
        ),
    );
    let reachable = until_status(proxy, 200, Duration::from_secs(5)).await.map(|_| started.elapsed());
    let reachable = reachable.unwrap_or_else(|| panic!("never routable:\n{}\n{}", registrar.service.log(), router.service.log()));
    eprintln!("routable {} ms after the registrar started", reachable.as_millis());
    assert!(reachable < Duration::from_secs(1), "routable only after {reachable:?}");
    assert_eq!(http::get(proxy, "app.example.com", "/").await.text(), "hello from app");

    healthy.store(false, Ordering::SeqCst);
    let gone = until_status(proxy, 404, Duration::from_secs(5)).await;
    let gone = gone.unwrap_or_else(|| panic!("still routed after the check failed:\n{}", registrar.service.log()));
    eprintln!("404 {} ms after the health endpoint started failing (interval {} ms)", gone.as_millis(), interval.as_millis());
    // The failing check runs within one interval; the unregister reaches the router within milliseconds of it.
    assert!(gone < interval + Duration::from_millis(200), "still routed {gone:?} after the check started failing");
    let answer = http::get(proxy, "app.example.com", "/").await;
    assert_eq!(answer.header("x-cf-routererror").as_deref(), Some("unknown_route"));
}
