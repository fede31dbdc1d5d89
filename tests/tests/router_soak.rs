//! Soak: an hour of traffic must look like a minute of it. The router runs at half its saturation rate with
//! routes churning, and afterwards its memory has not grown, its file descriptors are back where they were, and
//! the backend connections it pools are within what the load could have needed.
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

/// A process's open descriptors, split into its TCP connections to `backend_ports` and all the rest.
///
/// The two are judged apart. Connections to backends are pooled per worker, so after a burst a pool may hold more
/// than after the warm-up until they idle out: those are bounded, not returned. Everything else (client
/// connections, files, pipes) must come back to where it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Descriptors {
    to_backends: usize,
    rest: usize,
}

fn descriptors(pid: u32, backend_ports: &[u16]) -> Descriptors {
    // Socket inodes of connections whose remote port is a backend's, from the process's own view of the TCP tables.
    let mut backend_inodes = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields.get(2).and_then(|addr| addr.rsplit(':').next()).and_then(|hex| u16::from_str_radix(hex, 16).ok());
            if remote_port.is_some_and(|port| backend_ports.contains(&port))
                && let Some(inode) = fields.get(9) {
                    backend_inodes.insert(format!("socket:[{inode}]"));
                }
        }
    }
    let mut counted = Descriptors { to_backends: 0, rest: 0 };
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("list /proc/<pid>/fd").flatten() {
        let target = std::fs::read_link(entry.path()).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
        if backend_inodes.contains(&target) {
            counted.to_backends += 1;
        } else {
            counted.rest += 1;
        }
    }
    counted
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
    let backend_ports: Vec<u16> = backends.iter().map(TestBackend::port).collect();
    let fds_before = descriptors(pid, &backend_ports);

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
            println!("{:>4}s: RSS {} KiB, descriptors {:?}", started.elapsed().as_secs(), proc_status_kib(pid, "VmRSS:"), descriptors(pid, &backend_ports));
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

    // Client connections are closed now; the descriptors come back to the warmed-up count. Pooled backend
    // connections may outnumber the warm-up's, but never what the load could have held open at once: each worker
    // keeps at most as many per backend as requests it had in flight to it, and there are `CONNECTIONS` of those.
    let settled = switchyard_tests::wait_until(Duration::from_secs(10), || descriptors(pid, &backend_ports).rest <= fds_before.rest);
    let after = descriptors(pid, &backend_ports);
    println!("descriptors: {fds_before:?} before, {after:?} after");
    assert!(settled, "descriptors did not come back: {fds_before:?} before, {after:?} after");
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let pool_bound = workers * backends.len() * CONNECTIONS;
    assert!(after.to_backends <= pool_bound, "{} connections to backends stay open, more than {pool_bound} the pools could need", after.to_backends);
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
