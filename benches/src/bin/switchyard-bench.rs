//! `switchyard-bench`: the measuring half of `scripts/bench`. Each subcommand writes its numbers as JSON into a
//! results directory; `report` turns that directory into BENCHMARKS.md and its plot.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use switchyard_benches::error::BenchError;
use std::net::SocketAddr;
use switchyard_benches::ingest::{self, RouterUnderTest};
use switchyard_benches::instructions;
use switchyard_benches::peers::targets::{self, Target};
use switchyard_benches::peers::{self, Binaries, Lineup, Plan, Stand};
use switchyard_benches::report;
use switchyard_benches::results::{self, Ingest, Logging, RequestKind};

#[derive(Debug, Parser)]
#[command(name = "switchyard-bench", about = "Measures Switchyard against its peers and at scale; see scripts/bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Router vs nginx vs haproxy vs direct: throughput, CPU per request, latency at a fixed rate, RSS.
    Peers {
        /// Directory holding the release `router` and `sample-backend`.
        #[arg(long)]
        bin_dir: PathBuf,
        /// Results directory (peers.json and the run's logs go here).
        #[arg(long)]
        results: PathBuf,
        /// Rounds per target and logging mode.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Seconds per saturation run.
        #[arg(long, default_value_t = 8)]
        seconds: u64,
        /// Seconds per fixed-rate run.
        #[arg(long, default_value_t = 8)]
        latency_seconds: u64,
        /// Keep-alive connections.
        #[arg(long, default_value_t = 32)]
        connections: u32,
        /// Do not pin processes to CPUs.
        #[arg(long)]
        no_pin: bool,
    },
    /// Instructions per request of the router, nginx and haproxy, each counted by callgrind.
    Instructions {
        /// Directory holding the release `router` and `sample-backend`.
        #[arg(long)]
        bin_dir: PathBuf,
        /// Results directory (instructions.json, the callgrind dumps and the run's logs go here).
        #[arg(long)]
        results: PathBuf,
        /// Requests counted per proxy and logging mode.
        #[arg(long, default_value_t = 20_000)]
        requests: u64,
        /// Uncounted requests each proxy serves first.
        #[arg(long, default_value_t = 2_000)]
        warmup: u64,
        /// Keep-alive connections.
        #[arg(long, default_value_t = 32)]
        connections: u32,
        /// Proxies to count, by name (`nginx`, `haproxy`, `router-1t`).
        #[arg(long, value_delimiter = ',', default_value = "nginx,haproxy,router-1t")]
        targets: Vec<String>,
        /// Kinds of request to count, one batch each: `get`, and `post` (a 100-byte body).
        #[arg(long, value_delimiter = ',', default_value = "get,post", value_parser = parse_request_kind)]
        kinds: Vec<RequestKind>,
    },
    /// NATS ingest through a real router (release, one worker thread): bulk, then publish → routable latency.
    Ingest {
        /// Directory holding the release `router` and `sample-backend`.
        #[arg(long)]
        bin_dir: PathBuf,
        /// Results directory (ingest.json and the run's logs go here).
        #[arg(long)]
        results: PathBuf,
        /// Registrations in the bulk run.
        #[arg(long, default_value_t = 100_000)]
        registrations: usize,
        /// Messages per second in the latency run.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Messages in the latency run.
        #[arg(long, default_value_t = 5000)]
        samples: usize,
    },
    /// Writes BENCHMARKS.md and its plot from a results directory.
    Report {
        /// Results directory.
        #[arg(long)]
        results: PathBuf,
        /// criterion's output directory (`<target dir>/criterion`).
        #[arg(long)]
        criterion: PathBuf,
        /// Repository root: BENCHMARKS.md and benches/report/proxies.svg are written under it.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        /// How the run was made, for the report's first line.
        #[arg(long, default_value = "")]
        run: String,
    },
}

const PLOT: &str = "benches/report/proxies.svg";

fn run_report(results_dir: PathBuf, criterion: PathBuf, repo: PathBuf, run: String) -> Result<(), BenchError> {
    let mut inputs = report::collect(&results_dir, &criterion)?;
    inputs.run = run;
    inputs.plot = PLOT.to_owned();
    let write = |path: PathBuf, text: String| std::fs::write(&path, text).map_err(|source| BenchError::File { path, source });
    if let Some(peers) = &inputs.peers {
        let plot = repo.join(PLOT);
        if let Some(dir) = plot.parent() {
            std::fs::create_dir_all(dir).map_err(|source| BenchError::File { path: dir.to_owned(), source })?;
        }
        write(plot, report::plot(peers))?;
    }
    write(repo.join("BENCHMARKS.md"), report::render(&inputs))
}

fn results_subdir(results_dir: &std::path::Path, name: &str) -> Result<PathBuf, BenchError> {
    let dir = results_dir.join(name);
    std::fs::create_dir_all(&dir).map_err(|source| BenchError::File { path: dir.clone(), source })?;
    Ok(dir)
}

fn run_ingest(bin_dir: PathBuf, results_dir: PathBuf, registrations: usize, rate: f64, samples: usize) -> Result<(), BenchError> {
    let logs = results_subdir(&results_dir, "ingest-logs")?;
    let stand = Stand::start(&bin_dir.join("sample-backend"), &logs, None)?;
    let router_binary = bin_dir.join("router");
    let lineup = Lineup::default();
    let router = targets::start(Target::Router(1), Logging::Off, &stand.environment(&logs, &router_binary, &lineup, &[]))?;
    let status_port = router.status_port.ok_or_else(|| BenchError::BadRun { what: "ingest".to_owned(), problem: "the router has no status port".to_owned() })?;
    let under_test = RouterUnderTest {
        proxy: SocketAddr::from(([127, 0, 0, 1], router.port)),
        status: SocketAddr::from(([127, 0, 0, 1], status_port)),
        backend_port: stand.backend_port(),
    };
    let measured = stand.runtime().block_on(async {
        let client = stand.nats().client().await?;
        eprintln!("-- bulk: {registrations} registrations");
        let bulk = ingest::bulk(&client, under_test, "bulk", registrations).await?;
        eprintln!(
            "   published in {:.3}s; {} of {registrations} routable, the last {:.3}s after the last publish; {:.0} registrations/s",
            bulk.publish_seconds, bulk.routable, bulk.routable_after_last_publish_seconds, bulk.registrations_per_second
        );
        eprintln!("-- publish → routable latency: {samples} new routes at {rate}/s");
        let latency = ingest::latency(&client, under_test, "lat", rate, samples, 4).await?;
        eprintln!("   p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms", latency.p50_ms, latency.p99_ms, latency.max_ms);
        Ok::<_, BenchError>(Ingest {
            registrations,
            routable: bulk.routable,
            publish_seconds: bulk.publish_seconds,
            routable_after_last_publish_seconds: bulk.routable_after_last_publish_seconds,
            registrations_per_second: bulk.registrations_per_second,
            latency,
        })
    })?;
    results::save(&results_dir.join("ingest.json"), &measured)
}

fn run_peers(bin_dir: PathBuf, results_dir: PathBuf, rounds: u32, seconds: u64, latency_seconds: u64, connections: u32, no_pin: bool) -> Result<(), BenchError> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let pin = !no_pin && cpus >= 2;
    let plan = Plan {
        rounds: rounds.max(1),
        saturation: Duration::from_secs(seconds),
        latency: Duration::from_secs(latency_seconds),
        warmup: Duration::from_secs(1),
        lineup: Lineup {
            targets: vec![Target::Direct, Target::Nginx, Target::Haproxy, Target::Router(1), Target::Router(2)],
            logging: Logging::ALL.to_vec(),
            connections,
            proxy_cpus: pin.then(|| "0".to_owned()),
            wide_cpus: pin.then(|| "0,1".to_owned()),
            load_cpus: pin.then(|| "1".to_owned()),
        },
    };
    let logs = results_subdir(&results_dir, "peers-logs")?;
    let router = bin_dir.join("router");
    let backend = bin_dir.join("sample-backend");
    let measured = peers::run(&plan, &Binaries { router: &router, backend: &backend }, &logs)?;
    results::save(&results_dir.join("peers.json"), &measured)
}

/// Reads `--kinds`: a request kind by its name.
fn parse_request_kind(name: &str) -> Result<RequestKind, String> {
    RequestKind::ALL.into_iter().find(|kind| kind.name() == name).ok_or_else(|| format!("unknown kind of request '{name}'; choose from get, post"))
}

fn run_instructions(
    bin_dir: PathBuf,
    results_dir: PathBuf,
    requests: u64,
    warmup: u64,
    connections: u32,
    names: Vec<String>,
    kinds: Vec<RequestKind>,
) -> Result<(), BenchError> {
    let known = [Target::Nginx, Target::Haproxy, Target::Router(1)];
    let targets = names
        .iter()
        .map(|name| {
            known.into_iter().find(|t| t.name() == *name).ok_or_else(|| BenchError::BadRun {
                what: "--targets".to_owned(),
                problem: format!("unknown proxy '{name}'; choose from nginx, haproxy, router-1t"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pin = std::thread::available_parallelism().map_or(1, usize::from) >= 2;
    let lineup = Lineup {
        targets,
        logging: Logging::ALL.to_vec(),
        connections,
        proxy_cpus: pin.then(|| "0".to_owned()),
        wide_cpus: pin.then(|| "0".to_owned()),
        load_cpus: pin.then(|| "1".to_owned()),
    };
    let plan = instructions::Plan { requests, warmup, kinds, lineup };
    let logs = results_subdir(&results_dir, "instructions-logs")?;
    let router = bin_dir.join("router");
    let backend = bin_dir.join("sample-backend");
    let measured = instructions::run(&plan, &Binaries { router: &router, backend: &backend }, &logs)?;
    results::save(&results_dir.join("instructions.json"), &measured)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Peers { bin_dir, results, rounds, seconds, latency_seconds, connections, no_pin } => {
            run_peers(bin_dir, results, rounds, seconds, latency_seconds, connections, no_pin)
        }
        Command::Instructions { bin_dir, results, requests, warmup, connections, targets, kinds } => {
            run_instructions(bin_dir, results, requests, warmup, connections, targets, kinds)
        }
        Command::Ingest { bin_dir, results, registrations, rate, samples } => run_ingest(bin_dir, results, registrations, rate, samples),
        Command::Report { results, criterion, repo, run } => run_report(results, criterion, repo, run),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            if err.retryable() {
                eprintln!("(this may pass on a second run; the machine is shared)");
            }
            ExitCode::FAILURE
        }
    }
}
