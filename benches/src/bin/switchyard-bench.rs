//! `switchyard-bench`: the measuring half of `scripts/bench`. Each subcommand writes its numbers as JSON into a
//! results directory; `report` turns that directory into BENCHMARKS.md and its plot.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use switchyard_benches::error::BenchError;
use switchyard_benches::peers::targets::Target;
use switchyard_benches::peers::{self, Binaries, Plan};
use switchyard_benches::results::{self, Logging};

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
}

fn run_peers(bin_dir: PathBuf, results_dir: PathBuf, rounds: u32, seconds: u64, latency_seconds: u64, connections: u32, no_pin: bool) -> Result<(), BenchError> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let pin = !no_pin && cpus >= 2;
    let plan = Plan {
        rounds: rounds.max(1),
        saturation: Duration::from_secs(seconds),
        latency: Duration::from_secs(latency_seconds),
        warmup: Duration::from_secs(1),
        connections,
        targets: vec![Target::Direct, Target::Nginx, Target::Haproxy, Target::Router(1), Target::Router(2)],
        logging: Logging::ALL.to_vec(),
        proxy_cpus: pin.then(|| "0".to_owned()),
        wide_cpus: pin.then(|| "0,1".to_owned()),
        load_cpus: pin.then(|| "1".to_owned()),
    };
    let logs = results_dir.join("peers-logs");
    std::fs::create_dir_all(&logs).map_err(|source| BenchError::File { path: logs.clone(), source })?;
    let router = bin_dir.join("router");
    let backend = bin_dir.join("sample-backend");
    let measured = peers::run(&plan, &Binaries { router: &router, backend: &backend }, &logs)?;
    results::save(&results_dir.join("peers.json"), &measured)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Peers { bin_dir, results, rounds, seconds, latency_seconds, connections, no_pin } => {
            run_peers(bin_dir, results, rounds, seconds, latency_seconds, connections, no_pin)
        }
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
