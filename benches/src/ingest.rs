//! NATS ingest through a real router: how fast registrations become routable.
//!
//! Two measurements. Bulk: publish many registrations as fast as the client can, then watch the router's
//! `switchyard_router_routes` gauge (set when a new table version is published to the workers) until all are
//! there, and confirm a sample with real requests. Latency: publish new routes at a fixed rate (open loop) and,
//! for each, send requests until the router serves it; the time from just before the publish to the first 200
//! is that route's publish → routable latency.
//!
//! Every registration names a loopback backend, so the confirming requests never leave the machine.

use crate::error::{BenchError, Result};
use crate::http::{Client, metric};
use crate::nats;
use crate::results::IngestLatency;
use crate::stats::percentile;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc};

/// The router under measurement.
#[derive(Debug, Clone, Copy)]
pub struct RouterUnderTest {
    /// Its proxy listener.
    pub proxy: SocketAddr,
    /// Its status listener (for /metrics).
    pub status: SocketAddr,
    /// The loopback backend the registrations name.
    pub backend_port: u16,
}

/// What a bulk ingest measured.
#[derive(Debug, Clone, Copy)]
pub struct Bulk {
    /// Routes that became routable (all of them, unless the router lost registrations).
    pub routable: usize,
    /// Seconds from the first publish until the server had the last one.
    pub publish_seconds: f64,
    /// Seconds from then until the last of the routable routes was in the router's table.
    pub routable_after_last_publish_seconds: f64,
    /// Routable registrations per second, first publish to the last one routable.
    pub registrations_per_second: f64,
}

/// How long the route count may stand still before the rest is taken as lost.
const STALL: Duration = Duration::from_secs(5);

const ROUTES_METRIC: &str = "switchyard_router_routes";

async fn routes(client: &mut Client) -> Result<f64> {
    let answer = client.get("status", "/metrics", None).await?;
    metric(&String::from_utf8_lossy(&answer.body), ROUTES_METRIC)
        .ok_or_else(|| BenchError::Parse { what: "/metrics".to_owned(), problem: format!("no {ROUTES_METRIC} sample") })
}

/// The uri of the `index`th route of the bulk run named `run`.
pub fn bulk_uri(run: &str, index: usize) -> String {
    format!("{run}-{index:07}.ingest.bench.test")
}

/// Publishes `count` new routes (named by `run`, which must be fresh) and waits until the router has them all,
/// or until its route count stops growing for a few seconds (registrations lost: the report says how many);
/// then checks that a sample of the routes answers 200.
pub async fn bulk(nats_client: &async_nats::Client, router: RouterUnderTest, run: &str, count: usize) -> Result<Bulk> {
    let mut status = Client::new(router.status);
    let before = routes(&mut status).await?;
    let target = before + count as f64;
    let started = Instant::now();
    for index in 0..count {
        nats::register(nats_client, &bulk_uri(run, index), router.backend_port).await?;
    }
    nats::flush(nats_client).await?;
    let published = Instant::now();
    let (mut seen, mut last_growth) = (before, published);
    while seen < target && last_growth.elapsed() < STALL {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = routes(&mut status).await?;
        if now > seen {
            (seen, last_growth) = (now, Instant::now());
        }
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a route count, small and non-negative")]
    let routable = (seen - before).max(0.0) as usize;
    let mut proxy = Client::new(router.proxy);
    let mut served = 0;
    let sample = crate::routes::sample_indices(200, count);
    for &index in &sample {
        let uri = bulk_uri(run, index);
        match proxy.get(&uri, "/", None).await?.status {
            200 => served += 1,
            404 => {}
            other => return Err(BenchError::BadRun { what: "bulk ingest".to_owned(), problem: format!("{uri} answered {other}") }),
        }
    }
    if routable == count && served != sample.len() {
        return Err(BenchError::BadRun {
            what: "bulk ingest".to_owned(),
            problem: format!("the route count says all {count} routes are in, but only {served} of {} sampled ones answer", sample.len()),
        });
    }
    let total = last_growth.duration_since(started).as_secs_f64();
    Ok(Bulk {
        routable,
        publish_seconds: published.duration_since(started).as_secs_f64(),
        routable_after_last_publish_seconds: last_growth.saturating_duration_since(published).as_secs_f64(),
        registrations_per_second: routable as f64 / total.max(f64::EPSILON),
    })
}

/// Requests `uri` until it answers 200; returns when that happened, or an error after `timeout`.
async fn until_served(proxy: &mut Client, uri: &str, timeout: Duration) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = proxy.get(uri, "/", None).await?;
        let now = Instant::now();
        match answer.status {
            200 => return Ok(now),
            404 if now < deadline => {}
            404 => return Err(BenchError::Timeout { what: format!("{uri} to become routable"), seconds: timeout.as_secs() }),
            other => return Err(BenchError::BadRun { what: "publish → routable probe".to_owned(), problem: format!("{uri} answered {other}") }),
        }
    }
}

/// Publishes `samples` new routes at `rate` per second (named by `run`) and measures each one's publish →
/// routable latency with `probers` concurrent probing connections.
pub async fn latency(nats_client: &async_nats::Client, router: RouterUnderTest, run: &str, rate: f64, samples: usize, probers: usize) -> Result<IngestLatency> {
    let (jobs, queue) = mpsc::unbounded_channel::<(String, Instant)>();
    let queue = Arc::new(Mutex::new(queue));
    let mut tasks = Vec::new();
    for _ in 0..probers.max(1) {
        let queue = Arc::clone(&queue);
        tasks.push(tokio::spawn(async move {
            let mut proxy = Client::new(router.proxy);
            let mut latencies = Vec::new();
            loop {
                let Some((uri, published)) = queue.lock().await.recv().await else { break };
                let served = until_served(&mut proxy, &uri, Duration::from_secs(10)).await?;
                latencies.push(served.duration_since(published).as_secs_f64() * 1000.0);
            }
            Ok::<_, BenchError>(latencies)
        }));
    }
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1.0)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for index in 0..samples {
        ticker.tick().await;
        let uri = format!("{run}-{index:07}.latency.bench.test");
        let published = Instant::now();
        nats::register(nats_client, &uri, router.backend_port).await?;
        nats::flush(nats_client).await?;
        if jobs.send((uri, published)).is_err() {
            break;
        }
    }
    drop(jobs);
    let mut all = Vec::with_capacity(samples);
    for task in tasks {
        let latencies = task.await.map_err(|e| BenchError::BadRun { what: "a probe task".to_owned(), problem: e.to_string() })??;
        all.extend(latencies);
    }
    let missing = || BenchError::BadRun { what: "publish → routable latency".to_owned(), problem: "no samples".to_owned() };
    Ok(IngestLatency {
        rate,
        samples: all.len(),
        p50_ms: percentile(&all, 50.0).ok_or_else(missing)?,
        p99_ms: percentile(&all, 99.0).ok_or_else(missing)?,
        max_ms: percentile(&all, 100.0).ok_or_else(missing)?,
    })
}
