//! `tls-handshakes`: full TLS handshakes per second against the real router with 1 certificate and with 1,000, to
//! show that choosing a certificate by SNI does not get slower as the certificates grow.
//!
//! For each certificate count the program makes a CA and that many ECDSA P-256 certificates (one name each), starts
//! the release router with them in `tls_pem` (one worker thread, pinned to one CPU), and runs the same number of
//! full handshakes (no session resumption) from a client on the other CPUs, each with an SNI picked round the whole
//! set. Every handshake is verified by the client against the name it asked for, so a wrong choice is an error,
//! not a fast result. It reports handshakes per second, latency percentiles and the router's CPU time per
//! handshake (from /proc), and the 1,000-to-1 ratios, which are what to read on a shared, noisy machine.

use clap::Parser;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_benches::error::{BenchError, Result};
use switchyard_benches::process::{Spawned, free_port, pinned, wait_for_port};
use switchyard_benches::{procstat, stats};
use tokio::net::TcpStream;

/// Times TLS handshakes against the router with few and many SNI certificates.
#[derive(Debug, Parser)]
#[command(name = "tls-handshakes", about)]
struct Cli {
    /// The router binary (a release build); defaults to `router` next to this program.
    #[arg(long)]
    router: Option<PathBuf>,
    /// Certificate counts to compare, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,1000")]
    certs: Vec<usize>,
    /// Measured handshakes per certificate count (after 200 warm-up handshakes).
    #[arg(long, default_value_t = 3000)]
    handshakes: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// CPU list the router is pinned to (taskset syntax); empty for no pinning.
    #[arg(long, default_value = "0")]
    router_cpus: String,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The numbers for one certificate count.
#[derive(Debug, serde::Serialize)]
struct Outcome {
    certificates: usize,
    handshakes: usize,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    router_cpu_us_per_handshake: f64,
}

struct Site {
    name: String,
    cert_pem: String,
    key_pem: String,
}

fn failed(what: &str, problem: impl std::fmt::Display) -> BenchError {
    BenchError::BadRun { what: what.to_owned(), problem: problem.to_string() }
}

/// A CA and `count` certificates signed by it, one DNS name each.
fn make_sites(count: usize) -> Result<(CertificateDer<'static>, Vec<Site>)> {
    let bad = |e: rcgen::Error| failed("certificate generation", e);
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
    ca_params.distinguished_name.push(DnType::CommonName, "tls-handshakes bench CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().map_err(bad)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(bad)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let mut sites = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("site-{i}.bench.test");
        let params = CertificateParams::new(vec![name.clone()]).map_err(bad)?;
        let key = KeyPair::generate().map_err(bad)?;
        let cert = params.signed_by(&key, &issuer).map_err(bad)?;
        sites.push(Site { name, cert_pem: cert.pem(), key_pem: key.serialize_pem() });
    }
    Ok((ca_cert.der().clone(), sites))
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

fn write_config(dir: &Path, sites: &[Site], port: u16, status_port: u16, ssl_port: u16, nats_port: u16) -> Result<PathBuf> {
    let mut yaml = format!(
        "port: {port}\nstatus: {{host: 127.0.0.1, port: {status_port}}}\nnats: {{hosts: [{{hostname: 127.0.0.1, port: {nats_port}}}]}}\n\
         start_response_delay_interval: 0s\nworker_threads: 1\nenable_ssl: true\nssl_port: {ssl_port}\ntls_pem:\n"
    );
    for site in sites {
        yaml.push_str(&format!("- {{cert_chain: {}, private_key: {}}}\n", json_string(&site.cert_pem), json_string(&site.key_pem)));
    }
    let path = dir.join(format!("router-{}.yml", sites.len()));
    std::fs::write(&path, yaml).map_err(|source| BenchError::File { path: path.clone(), source })?;
    Ok(path)
}

fn client_config(ca: &CertificateDer<'static>) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| failed("client trust store", e))?;
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| failed("client TLS settings", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Full handshakes only: resumption would measure the session cache, not certificate choice.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// One full handshake as `name`; returns how long it took.
async fn handshake(port: u16, name: &str, config: &Arc<ClientConfig>) -> std::result::Result<Duration, String> {
    let started = Instant::now();
    let stream = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let server_name = ServerName::try_from(name.to_owned()).map_err(|e| format!("{name}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(config)).connect(server_name, stream).await.map_err(|e| format!("{name}: {e}"))?;
    let elapsed = started.elapsed();
    drop(tls);
    Ok(elapsed)
}

/// Runs `total` handshakes, `concurrency` at a time, with names spread over all sites.
async fn run(port: u16, names: Arc<Vec<String>>, config: Arc<ClientConfig>, total: usize, concurrency: usize) -> Result<Vec<f64>> {
    let mut tasks = Vec::with_capacity(concurrency);
    for lane in 0..concurrency {
        let names = Arc::clone(&names);
        let config = Arc::clone(&config);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut index = lane;
            while index < total {
                // A stride coprime with the site count visits every name, in an order unrelated to the config's.
                let name = names.get((index * 7919) % names.len()).map_or("", String::as_str);
                latencies.push(handshake(port, name, &config).await?.as_secs_f64() * 1000.0);
                index += concurrency;
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut all = Vec::with_capacity(total);
    for task in tasks {
        let lane = task.await.map_err(|e| failed("handshake task", e))?.map_err(|e| failed("TLS handshake", e))?;
        all.extend(lane);
    }
    Ok(all)
}

async fn measure(cli: &Cli, router: &Path, dir: &Path, count: usize) -> Result<Outcome> {
    let generated = Instant::now();
    let (ca, sites) = make_sites(count)?;
    eprintln!("{count} certificates made in {:.1}s; starting the router", generated.elapsed().as_secs_f64());
    let ssl_port = free_port()?;
    let config = write_config(dir, &sites, free_port()?, free_port()?, ssl_port, free_port()?)?;
    let cpus = (!cli.router_cpus.is_empty()).then_some(cli.router_cpus.as_str());
    let args = vec!["--config".to_owned(), config.display().to_string()];
    let mut process = Spawned::start(&format!("router-{count}"), pinned(&router.display().to_string(), &args, cpus), dir)?;
    wait_for_port("the router's TLS listener", ssl_port, Duration::from_secs(60))?;
    process.ensure_running()?;
    let names = Arc::new(sites.into_iter().map(|s| s.name).collect::<Vec<_>>());
    let client = client_config(&ca)?;
    run(ssl_port, Arc::clone(&names), Arc::clone(&client), 200, cli.concurrency).await?;
    let cpu_before = procstat::cpu_time(process.pid()).map_err(|e| failed("router CPU time", e))?.total();
    let started = Instant::now();
    let latencies = run(ssl_port, names, client, cli.handshakes, cli.concurrency).await?;
    let wall = started.elapsed().as_secs_f64();
    let cpu_after = procstat::cpu_time(process.pid()).map_err(|e| failed("router CPU time", e))?.total();
    process.ensure_running()?;
    let handshakes = latencies.len();
    Ok(Outcome {
        certificates: count,
        handshakes,
        per_second: handshakes as f64 / wall,
        p50_ms: stats::percentile(&latencies, 50.0).unwrap_or(f64::NAN),
        p99_ms: stats::percentile(&latencies, 99.0).unwrap_or(f64::NAN),
        router_cpu_us_per_handshake: (cpu_after - cpu_before) * 1e6 / handshakes.max(1) as f64,
    })
}

fn default_router() -> PathBuf {
    std::env::current_exe().ok().and_then(|exe| exe.parent().map(|dir| dir.join("router"))).unwrap_or_else(|| PathBuf::from("router"))
}

async fn main_result(cli: Cli) -> Result<()> {
    let router = cli.router.clone().unwrap_or_else(default_router);
    if !router.is_file() {
        return Err(failed("tls-handshakes", format!("no router binary at {}; run `cargo build --release -p switchyard-router`", router.display())));
    }
    let dir = std::env::temp_dir().join(format!("tls-handshakes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| BenchError::File { path: dir.clone(), source })?;
    let mut outcomes = Vec::new();
    for &count in &cli.certs {
        outcomes.push(measure(&cli, &router, &dir, count.max(1)).await?);
    }
    println!("| certificates | handshakes/s | p50 ms | p99 ms | router CPU µs/handshake |");
    println!("|---:|---:|---:|---:|---:|");
    for o in &outcomes {
        println!("| {} | {:.0} | {:.2} | {:.2} | {:.0} |", o.certificates, o.per_second, o.p50_ms, o.p99_ms, o.router_cpu_us_per_handshake);
    }
    if let (Some(first), Some(last)) = (outcomes.first(), outcomes.last())
        && outcomes.len() > 1 {
            println!(
                "\n{} vs {} certificates: throughput x{:.2}, p50 x{:.2}, router CPU per handshake x{:.2}",
                last.certificates,
                first.certificates,
                last.per_second / first.per_second,
                last.p50_ms / first.p50_ms,
                last.router_cpu_us_per_handshake / first.router_cpu_us_per_handshake
            );
        }
    if let Some(path) = &cli.json {
        let text = serde_json::to_string_pretty(&outcomes).unwrap_or_default();
        std::fs::write(path, text).map_err(|source| BenchError::File { path: path.clone(), source })?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main_result(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
