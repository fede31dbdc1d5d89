//! Soak: an hour of traffic must look like a minute of it. The router runs at half its saturation rate with
//! routes churning, and afterwards its memory has not grown and its file descriptors are back where they were.
//!
//! `scripts/test` runs 60 seconds. The long run is the same test with `SWITCHYARD_SOAK_SECONDS=600`:
//! `SWITCHYARD_SOAK_SECONDS=600 cargo test -p switchyard-tests --test router_soak -- --nocapture`.

// Test code: a panic is a failed test, with the reason.
#![allow(clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::{Duration, Instant};
use switchyard_tests::load::{self, LoadSpec};
use switchyard_tests::{NatsServer, RouterProcess, TestBackend, publish, registration};

const HOSTS: [&str; 2] = ["app1.example.com", "app2.example.com"];
const CONNECTIONS: usize = 8;

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("list /proc/<pid>/fd").count()
}

fn soak_seconds() -> u64 {
    std::env::var("SWITCHYARD_SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_saturation_with_route_churn_leaks_neither_memory_nor_descriptors() {
    let backends = [TestBackend::start("one").await, TestBackend::start("two").await];
    let nats = NatsServer::start();
    // The router's allocator backs its heap with 2 MiB transparent huge pages, so its RSS moves in 2 MiB steps
    // whenever the heap's high-water mark crosses one: more than the whole 5% budget of a small process. With
    // THP off for this process RSS moves by 4 KiB pages and shows what the heap really does.
    let router = RouterProcess::start_with_env(&nats, &[], &[("MIMALLOC_ALLOW_THP", "0")]);
    let pid = router.service.pid();
    let client = nats.client().await;
    for backend in &backends {
        publish(&client, "router.register", &registration(backend.port(), &HOSTS)).await;
    }
    for host in HOSTS {
        assert!(router.wait_for_status(host, "/", 200, Duration::from_secs(5)).await);
    }

    // Saturation, measured here and now, sets the soak rate.
    let saturation = load::run(LoadSpec::new(router.addr(), &HOSTS, CONNECTIONS, Duration::from_secs(3), Duration::ZERO)).await;
    assert!(saturation.failures.is_empty(), "{}", saturation.summary());
    let saturated_rate = saturation.answered() as f64 / 3.0;
    let half_rate = saturated_rate / 2.0;
    let pace = Duration::from_secs_f64(CONNECTIONS as f64 / half_rate);
    println!("saturation {saturated_rate:.0} req/s; soaking at {half_rate:.0} req/s");

    // Warm up at the soak rate so pools, caches and allocator arenas reach their working size first.
    let warm = load::run(LoadSpec::new(router.addr(), &HOSTS, CONNECTIONS, Duration::from_secs(5), pace)).await;
    assert!(warm.failures.is_empty(), "{}", warm.summary());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = proc_status_kib(pid, "VmRSS:");
    let fds_before = open_fds(pid);

    let seconds = soak_seconds();
    let soak = tokio::spawn(load::run(LoadSpec::new(router.addr(), &HOSTS, CONNECTIONS, Duration::from_secs(seconds), pace)));
    // Churn: 50 route updates a second, routes coming and going, for the whole soak.
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    let mut n: u64 = 0;
    // Ends on an unregister, so every churned route is gone at the end.
    while started.elapsed() < Duration::from_secs(seconds) || !n.is_multiple_of(2) {
        ticks.tick().await;
        if n.is_multiple_of(250) {
            // Emitters refresh their routes well within the TTL; so does this one, for the whole soak.
            for backend in &backends {
                let payload = serde_json::to_vec(&registration(backend.port(), &HOSTS)).unwrap_or_default();
                client.publish("router.register", payload.into()).await.expect("publish a refresh");
            }
        }
        // A route is unregistered from the same endpoint that registered it; pairs alternate between backends.
        let port = backends[usize::from((n / 2).is_multiple_of(2))].port();
        let (subject, uri) = if n.is_multiple_of(2) {
            ("router.register", format!("churn-{n}.example.com/path/{n}"))
        } else {
            ("router.unregister", format!("churn-{}.example.com/path/{}", n - 1, n - 1))
        };
        client.publish(subject, serde_json::to_vec(&registration(port, &[&uri])).unwrap_or_default().into()).await.expect("publish churn");
        n += 1;
        if n.is_multiple_of(1500) {
            println!("{:>4}s: RSS {} KiB, {} descriptors", started.elapsed().as_secs(), proc_status_kib(pid, "VmRSS:"), open_fds(pid));
        }
    }
    client.flush().await.expect("flush");
    let report = soak.await.expect("soak task");
    println!("soak of {seconds}s: {}", report.summary());
    assert!(report.failures.is_empty() && report.unexpected(200) == 0, "{}", report.summary());
    let expected = half_rate * seconds as f64;
    assert!(report.answered() as f64 > expected * 0.8, "the soak ran below its rate: {} of {expected:.0}", report.answered());

    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = proc_status_kib(pid, "VmRSS:");
    let growth = (rss_after as f64 - rss_before as f64) / rss_before as f64;
    println!("RSS {rss_before} KiB -> {rss_after} KiB ({:+.1}%); {n} churn messages", growth * 100.0);
    assert!(growth <= 0.05, "RSS grew by {:.1}% over the soak", growth * 100.0);

    // Client connections are closed now; the descriptors come back to the warmed-up count.
    let settled = switchyard_tests::wait_until(Duration::from_secs(10), || open_fds(pid) <= fds_before);
    println!("descriptors: {fds_before} before, {} after", open_fds(pid));
    assert!(settled, "descriptors did not come back: {fds_before} before, {} after", open_fds(pid));
    let mut churned = Vec::new();
    for _ in 0..50 {
        let routes = router.routes().await;
        churned = routes.as_object().map(|routes| routes.keys().filter(|uri| uri.starts_with("churn-")).cloned().collect()).unwrap_or_default();
        if churned.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(churned.is_empty(), "churned routes left after their unregister: {churned:?}");
}
