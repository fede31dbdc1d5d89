//! Slow and idle clients: they are closed on time, and thousands of them do not slow anyone else down.
//!
//! A proxy that waits forever for a request head, or that spends its time on connections that trickle bytes,
//! can be taken down by one laptop (slowloris). The router closes a connection whose head has not arrived within
//! `read_header_timeout` of its first byte (or of connecting), closes keep-alive connections idle for
//! `frontend_idle_timeout`, and serves ordinary requests at the same latency while thousands of such connections
//! sit open.

// Test code: a panic is a failed test, with the reason.
#![allow(clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use std::time::{Duration, Instant};
use switchyard_tests::load::{self, LoadSpec};
use switchyard_tests::{NatsServer, RouterProcess, TestBackend, publish, registration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "app.example.com";

/// The tests here time things; they run one at a time so neither skews the other's clock.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for the router to close `stream`; returns how long that took from `since`, or None if it stayed open
/// for `limit`. Anything the router sends first (an error answer) is read and returned too.
async fn closed_after(stream: &mut TcpStream, since: Instant, limit: Duration) -> Option<(Duration, Vec<u8>)> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some((since.elapsed(), seen)),
            Ok(Ok(n)) => seen.extend_from_slice(buf.get(..n).unwrap_or_default()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_and_idle_connections_are_closed_on_time() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let backend = TestBackend::start("app").await;
    let nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[("read_header_timeout", "1s"), ("frontend_idle_timeout", "2s")]);
    publish(&nats.client().await, "router.register", &registration(backend.port(), &[HOST])).await;
    assert!(router.wait_for_status(HOST, "/", 200, Duration::from_secs(5)).await);
    let served_before = backend.count();

    // Connected, silent: closed once the first request is overdue.
    let opened = Instant::now();
    let mut silent = TcpStream::connect(router.addr()).await.expect("connect");
    let (after, _) = closed_after(&mut silent, opened, Duration::from_secs(6)).await.expect("a silent connection must be closed");
    println!("silent connection closed after {after:?}");
    assert!(after >= Duration::from_millis(900) && after < Duration::from_secs(3), "silent connection closed after {after:?}");

    // A head trickled a byte at a time: the trickle does not extend the deadline.
    let mut trickle = TcpStream::connect(router.addr()).await.expect("connect");
    let started = Instant::now();
    trickle.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ").as_bytes()).await.expect("write head");
    let writer = {
        let (_, mut write) = trickle.into_split();
        tokio::spawn(async move {
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if write.write_all(b"a").await.is_err() {
                    return Instant::now();
                }
            }
            Instant::now()
        })
    };
    let cut_at = writer.await.expect("trickle task");
    let after = cut_at.duration_since(started);
    println!("trickled head cut off after {after:?}");
    assert!(after < Duration::from_secs(3), "a trickled head was kept open for {after:?}");

    // Keep-alive after one request: closed once idle for frontend_idle_timeout.
    let mut idle = TcpStream::connect(router.addr()).await.expect("connect");
    idle.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes()).await.expect("write request");
    let answered = Instant::now();
    let (after, seen) = closed_after(&mut idle, answered, Duration::from_secs(8)).await.expect("an idle keep-alive connection must be closed");
    let text = String::from_utf8_lossy(&seen);
    println!("idle keep-alive connection closed {after:?} after its answer");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(after >= Duration::from_millis(1800) && after < Duration::from_secs(5), "idle connection closed after {after:?}");

    // None of the incomplete heads reached the backend.
    assert_eq!(backend.count(), served_before + 1, "{:?}", backend.requests());
}

/// Paced requests for three seconds on a few connections: the latency an ordinary client sees.
async fn ordinary_latency(router: &RouterProcess) -> load::LoadReport {
    let report = load::run(LoadSpec::new(router.addr(), &[HOST], 4, Duration::from_secs(3), Duration::from_millis(4))).await;
    assert!(report.failures.is_empty() && report.unexpected(200) == 0, "{}", report.summary());
    report
}

const ATTACKERS: usize = 5000;

/// Opens the attackers' connections: half connect and say nothing, half send part of a head.
async fn open_slow_connections(router: &RouterProcess) -> Vec<TcpStream> {
    let opened = Instant::now();
    let mut slow = Vec::with_capacity(ATTACKERS);
    for index in 0..ATTACKERS {
        let mut stream = TcpStream::connect(router.addr()).await.expect("open a slow connection");
        if index % 2 == 1 {
            stream.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ").as_bytes()).await.expect("write a partial head");
        }
        slow.push(stream);
    }
    println!("opened {ATTACKERS} slow connections in {:?}", opened.elapsed());
    slow
}

/// The trickling half sends a byte about once a second each, every attacker at its own moment (as independent
/// slowloris clients do), for `duration`. Hands the connections back.
fn trickle(mut slow: Vec<TcpStream>, duration: Duration) -> tokio::task::JoinHandle<Vec<TcpStream>> {
    const TICK: Duration = Duration::from_millis(10);
    let ticks_per_second = 100;
    tokio::spawn(async move {
        let per_tick = (ATTACKERS / 2).div_ceil(ticks_per_second);
        let mut ticks = tokio::time::interval(TICK);
        let until = Instant::now() + duration;
        let mut turn = 0;
        while Instant::now() < until {
            ticks.tick().await;
            for stream in slow.iter_mut().skip(1).step_by(2).skip(turn % ticks_per_second * per_tick).take(per_tick) {
                let _ = stream.write_all(b"a").await;
            }
            turn += 1;
        }
        slow
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_slow_connections_do_not_delay_normal_requests() {
    let _alone = ONE_AT_A_TIME.lock().await;
    // This process holds the attackers' 5,000 sockets; the default soft limit (1,024 on many machines) would refuse
    // them. The router raises its own limit at start-up.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("read the open file limit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raise the open file limit");
    let backend = TestBackend::start("app").await;
    let nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[("read_header_timeout", "12s")]);
    publish(&nats.client().await, "router.register", &registration(backend.port(), &[HOST])).await;
    assert!(router.wait_for_status(HOST, "/", 200, Duration::from_secs(5)).await);
    let _ = ordinary_latency(&router).await; // warm up pools and caches

    // Rounds with and without the attackers take turns, so a change in what else the machine is doing falls on
    // both sides of the comparison rather than on one.
    let mut unloaded = load::LoadReport::default();
    let mut loaded = load::LoadReport::default();
    let mut last = Vec::new();
    for round in 0..3 {
        unloaded.merge(ordinary_latency(&router).await);
        let slow = open_slow_connections(&router).await;
        let opened = Instant::now();
        let trickling = trickle(slow, Duration::from_secs(4));
        loaded.merge(ordinary_latency(&router).await);
        let slow = trickling.await.expect("trickle task");
        if round == 2 {
            last = slow;
            // And every one of them is closed once its head is overdue.
            let deadline = opened + Duration::from_secs(20);
            let mut closed = 0;
            for stream in &mut last {
                let left = deadline.saturating_duration_since(Instant::now());
                if closed_after(stream, opened, left.max(Duration::from_millis(1))).await.is_some() {
                    closed += 1;
                }
            }
            println!("{closed} of {ATTACKERS} slow connections closed within 20s of opening");
            assert_eq!(closed, ATTACKERS);
        } else {
            drop(slow);
            // Let the router see the closes before the next unloaded round.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    drop(last);
    println!("unloaded: {}", unloaded.summary());
    println!("with {ATTACKERS} slow connections: {}", loaded.summary());
    let (before, during) = (unloaded.quantile(0.99), loaded.quantile(0.99));
    assert!(during <= before * 2, "p99 rose from {before:?} to {during:?} with {ATTACKERS} slow connections");
    assert_eq!(backend.requests().iter().filter(|r| r.headers.contains_key("x-slow")).count(), 0);
}
