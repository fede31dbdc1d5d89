//! The peer comparison: the router, nginx and haproxy in front of one backend, and the backend alone, measured
//! side by side in one run.
//!
//! Targets are interleaved round by round (the order rotates each round) rather than measured one after the
//! other, so a noisy neighbour on this shared machine hurts every target a little instead of one target a lot;
//! the report then takes each target's median. Every target runs with logging on and again with it off.
//! The fixed rate for the latency runs is half of nginx's median saturation rate in the same mode, so all
//! targets are compared at the same offered load.

pub mod targets;

use crate::error::{BenchError, Result};
use crate::load::{Load, OHA_INSTALL};
use crate::nats::Nats;
use crate::process::{Spawned, free_port, pinned, require_tool, wait_for_port};
use crate::procstat::CpuTime;
use crate::results::{LatencyRun, Logging, Peers, SaturationRun};
use crate::stats::median;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use targets::{Environment, HOST, Running, Target};

/// How a comparison is run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Rounds per target and mode; the report shows medians across them.
    pub rounds: u32,
    /// Length of each wrk run.
    pub saturation: Duration,
    /// Length of each oha run.
    pub latency: Duration,
    /// Unmeasured load before each saturation run (connections open, caches warm).
    pub warmup: Duration,
    /// What is measured, and where everything runs.
    pub lineup: Lineup,
}

/// What is measured and where everything runs, for every way of measuring the proxies.
#[derive(Debug, Clone, Default)]
pub struct Lineup {
    /// The targets.
    pub targets: Vec<Target>,
    /// Which logging modes.
    pub logging: Vec<Logging>,
    /// Keep-alive connections of the load.
    pub connections: u32,
    /// CPUs for single-threaded proxies.
    pub proxy_cpus: Option<String>,
    /// CPUs for the two-thread router.
    pub wide_cpus: Option<String>,
    /// CPUs for the backend, NATS and the load generators.
    pub load_cpus: Option<String>,
}

impl Lineup {
    fn placement(&self) -> String {
        match (&self.proxy_cpus, &self.wide_cpus, &self.load_cpus) {
            (Some(proxy), Some(wide), Some(load)) => format!(
                "taskset: one-thread proxies on CPU {proxy}, the two-thread router on CPUs {wide}, backend + wrk/oha + nats-server on CPU {load}"
            ),
            _ => "not pinned (the kernel places every process)".to_owned(),
        }
    }

    /// A load of `duration` against `target`, from the lineup's connections and load CPUs.
    pub fn load(&self, target: &Running, duration: Duration) -> Load<'_> {
        Load {
            url: format!("http://127.0.0.1:{}/", target.port),
            host: HOST,
            connections: self.connections,
            duration,
            cpus: self.load_cpus.as_deref(),
        }
    }
}

/// What the targets of a run stand on: the harness's own runtime, NATS (the router learns its route there) and
/// the backend every target forwards to. Dropping it stops them.
pub struct Stand {
    runtime: tokio::runtime::Runtime,
    nats: Nats,
    backend: Spawned,
    backend_port: u16,
}

impl Stand {
    /// Starts NATS and the backend on `load_cpus`, logging to `dir`.
    pub fn start(backend: &Path, dir: &Path, load_cpus: Option<&str>) -> Result<Self> {
        let runtime = client_runtime()?;
        let nats = Nats::start(dir, load_cpus)?;
        let (backend, backend_port) = start_backend(backend, dir, load_cpus)?;
        Ok(Self { runtime, nats, backend, backend_port })
    }

    /// How targets are started on this stand: placed as `lineup` says, and run under `under` (see
    /// [`Environment::under`]).
    pub fn environment<'a>(&'a self, dir: &'a Path, router: &'a Path, lineup: &'a Lineup, under: &'a [String]) -> Environment<'a> {
        Environment {
            dir,
            backend_port: self.backend_port,
            router_binary: router,
            nats: &self.nats,
            proxy_cpus: lineup.proxy_cpus.as_deref(),
            wide_cpus: lineup.wide_cpus.as_deref(),
            runtime: &self.runtime,
            under,
        }
    }

    /// The harness's runtime.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    /// NATS.
    pub fn nats(&self) -> &Nats {
        &self.nats
    }

    /// The backend's port.
    pub fn backend_port(&self) -> u16 {
        self.backend_port
    }

    /// Fails if the backend has died.
    pub fn ensure_backend(&mut self) -> Result<()> {
        self.backend.ensure_running()
    }
}

/// Binaries the comparison runs.
pub struct Binaries<'a> {
    /// The router (release build).
    pub router: &'a Path,
    /// The sample backend.
    pub backend: &'a Path,
}

/// Scrapes each router's /metrics once a second while it lives, as Prometheus would.
struct Scraper {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scraper {
    fn start(status_ports: Vec<u16>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            let mut clients: Vec<crate::http::Client> =
                status_ports.into_iter().map(|port| crate::http::Client::new(SocketAddr::from(([127, 0, 0, 1], port)))).collect();
            while !flag.load(Ordering::Relaxed) {
                for client in &mut clients {
                    let _ = runtime.block_on(client.get("status", "/metrics", None));
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The runtime the harness's own NATS and HTTP clients run on (one thread; the harness is not the load).
fn client_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|source| BenchError::Spawn { what: "a tokio runtime".to_owned(), source })
}

/// Starts the sample backend (one thread) on a free port, pinned to `cpus`.
fn start_backend(binary: &Path, dir: &Path, cpus: Option<&str>) -> Result<(Spawned, u16)> {
    let port = free_port()?;
    let args = vec!["--listen".to_owned(), format!("127.0.0.1:{port}"), "--threads".to_owned(), "1".to_owned()];
    let process = Spawned::start("backend", pinned(&binary.display().to_string(), &args, cpus), dir)?;
    wait_for_port("sample-backend", port, Duration::from_secs(10))?;
    Ok((process, port))
}

/// Runs the comparison. Progress goes to stderr.
pub fn run(plan: &Plan, binaries: &Binaries<'_>, dir: &Path) -> Result<Peers> {
    require_tool("wrk", "run `apt-get install -y wrk`")?;
    require_tool("oha", OHA_INSTALL)?;
    let lineup = &plan.lineup;
    let mut stand = Stand::start(binaries.backend, dir, lineup.load_cpus.as_deref())?;
    let mut peers = Peers {
        placement: lineup.placement(),
        saturation_seconds: plan.saturation.as_secs(),
        latency_seconds: plan.latency.as_secs(),
        connections: lineup.connections,
        rounds: plan.rounds,
        ..Peers::default()
    };
    for &logging in &lineup.logging {
        eprintln!("-- {}", logging.describe());
        let env = stand.environment(dir, binaries.router, lineup, &[]);
        let mut running = lineup.targets.iter().map(|&target| targets::start(target, logging, &env)).collect::<Result<Vec<_>>>()?;
        let _scraper = (logging == Logging::On).then(|| Scraper::start(running.iter().filter_map(|r| r.status_port).collect()));
        for round in 0..plan.rounds {
            for index in rotated(running.len(), round) {
                let Some(target) = running.get_mut(index) else { continue };
                let run = saturate(plan, target, logging, round)?;
                eprintln!("   saturation round {}/{} {:>10}: {}", round + 1, plan.rounds, target.target.name(), describe_saturation(&run));
                peers.saturation.push(run);
            }
            stand.ensure_backend()?;
        }
        let nginx_rates: Vec<f64> =
            peers.saturation.iter().filter(|r| r.logging == logging && r.target == "nginx").map(|r| r.requests_per_second).collect();
        let rate = median(&nginx_rates).map(|r| r / 2.0).ok_or_else(|| BenchError::BadRun {
            what: "latency runs".to_owned(),
            problem: "the fixed rate is half of nginx's saturation rate, so nginx must be among the targets".to_owned(),
        })?;
        for round in 0..plan.rounds {
            for index in rotated(running.len(), round) {
                let Some(target) = running.get_mut(index) else { continue };
                let run = fixed_rate(plan, target, logging, round, rate)?;
                eprintln!(
                    "   latency at {:.0}/s round {}/{} {:>10}: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms",
                    rate,
                    round + 1,
                    plan.rounds,
                    target.target.name(),
                    run.p50_ms,
                    run.p99_ms,
                    run.p999_ms
                );
                peers.latency.push(run);
            }
        }
    }
    Ok(peers)
}

/// Target order for a round: rotated by one each round, so no target always runs first (or last).
fn rotated(count: usize, round: u32) -> Vec<usize> {
    let shift = usize::try_from(round).unwrap_or(0) % count.max(1);
    (0..count).map(|i| (i + shift) % count.max(1)).collect()
}

fn saturate(plan: &Plan, target: &mut Running, logging: Logging, round: u32) -> Result<SaturationRun> {
    let name = target.target.name();
    let what = |e: BenchError| against(e, &name);
    if !plan.warmup.is_zero() {
        plan.lineup.load(target, plan.warmup).saturate().map_err(what)?;
    }
    target.ensure_running()?;
    let cpu_before = target.cpu_time()?;
    let measured = plan.lineup.load(target, plan.saturation).saturate().map_err(what)?;
    let cpu_after = target.cpu_time()?;
    target.ensure_running()?;
    let per_request = |seconds: fn(CpuTime) -> f64| match (cpu_before, cpu_after) {
        (Some(before), Some(after)) => Some((seconds(after) - seconds(before)) * 1e6 / measured.requests as f64),
        _ => None,
    };
    Ok(SaturationRun {
        target: target.target.name(),
        logging,
        round,
        requests_per_second: measured.requests_per_second,
        cpu_us_per_request: per_request(CpuTime::total),
        system_us_per_request: per_request(|cpu| cpu.system),
        rss_bytes: target.rss_bytes(),
    })
}

fn fixed_rate(plan: &Plan, target: &mut Running, logging: Logging, round: u32, rate: f64) -> Result<LatencyRun> {
    let measured = plan.lineup.load(target, plan.latency).fixed_rate(rate).map_err(|e| against(e, &target.target.name()))?;
    target.ensure_running()?;
    Ok(LatencyRun {
        target: target.target.name(),
        logging,
        round,
        rate,
        achieved_rate: measured.requests_per_second,
        p50_ms: measured.p50_ms,
        p99_ms: measured.p99_ms,
        p999_ms: measured.p999_ms,
    })
}

/// Names the target in a load generator's complaint.
fn against(err: BenchError, target: &str) -> BenchError {
    match err {
        BenchError::BadRun { what, problem } => BenchError::BadRun { what: format!("{what} against {target}"), problem },
        other => other,
    }
}

fn describe_saturation(run: &SaturationRun) -> String {
    let mut text = format!("{:.0} req/s", run.requests_per_second);
    if let Some(cpu) = run.cpu_us_per_request {
        text.push_str(&format!(", {cpu:.1} µs CPU/req"));
    }
    if let Some(system) = run.system_us_per_request {
        text.push_str(&format!(" ({system:.1} system)"));
    }
    if let Some(rss) = run.rss_bytes {
        text.push_str(&format!(", RSS {:.1} MiB", rss as f64 / 1048576.0));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_moves_every_target_through_every_position() {
        assert_eq!(rotated(3, 0), [0, 1, 2]);
        assert_eq!(rotated(3, 1), [1, 2, 0]);
        assert_eq!(rotated(3, 4), [1, 2, 0]);
        assert!(rotated(0, 2).is_empty());
    }
}
