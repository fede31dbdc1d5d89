//! The things under test, each started the same way: a proxy on a free loopback port in front of the shared
//! backend, routing the benchmark's Host to it and answering 404 for any other Host.
//!
//! The peers are configured as an operator tuning for this job would: one worker (nginx) or one thread
//! (haproxy), keep-alive to the backend with connections reused across clients, no per-client connection limit
//! (nginx's `keepalive_requests` default would close a benchmark connection every 1,000 requests), and the
//! forwarding headers a platform router adds (X-Forwarded-For, X-Forwarded-Proto, a request id), so every proxy
//! does comparable work per request. With logging on, each writes an access log line per request to a file:
//! nginx buffered (64k, flushed every second), haproxy to stdout redirected to a file, the router through its
//! batched writer.

use crate::error::{BenchError, Result};
use crate::nats::{self, Nats};
use crate::process::{Spawned, free_port, pinned, require_tool, wait_for_port};
use crate::procstat;
use crate::results::Logging;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The Host every benchmark request carries.
pub const HOST: &str = "app.bench.test";

/// A thing to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// wrk straight to the backend: the ceiling.
    Direct,
    /// nginx, one worker process.
    Nginx,
    /// haproxy, one thread.
    Haproxy,
    /// The Switchyard router with this many worker threads.
    Router(usize),
}

impl Target {
    /// Name used in tables and result files.
    pub fn name(self) -> String {
        match self {
            Target::Direct => "direct".to_owned(),
            Target::Nginx => "nginx".to_owned(),
            Target::Haproxy => "haproxy".to_owned(),
            Target::Router(threads) => format!("router-{threads}t"),
        }
    }

    /// Whether this is a proxy whose CPU and memory are measured.
    pub fn is_proxy(self) -> bool {
        self != Target::Direct
    }
}

/// What every target shares in one run.
pub struct Environment<'a> {
    /// Directory for configs and logs.
    pub dir: &'a Path,
    /// The backend's port.
    pub backend_port: u16,
    /// Where the router binary is.
    pub router_binary: &'a Path,
    /// NATS, for the router's registration.
    pub nats: &'a Nats,
    /// CPUs for a single-threaded proxy.
    pub proxy_cpus: Option<&'a str>,
    /// CPUs for a multi-threaded proxy.
    pub wide_cpus: Option<&'a str>,
    /// A runtime for NATS and HTTP clients.
    pub runtime: &'a tokio::runtime::Runtime,
    /// A tool every proxy runs under, as a command line the proxy's own is appended to (callgrind, for the
    /// instruction count); empty to run the proxies as they are.
    pub under: &'a [String],
}

impl Environment<'_> {
    /// The command that starts a proxy: `program args` pinned to `cpus`, under [`Environment::under`] if set.
    fn command(&self, program: &str, args: &[String], cpus: Option<&str>) -> std::process::Command {
        match self.under.split_first() {
            None => pinned(program, args, cpus),
            Some((tool, tool_args)) => {
                let whole: Vec<String> = tool_args.iter().cloned().chain(std::iter::once(program.to_owned())).chain(args.iter().cloned()).collect();
                pinned(tool, &whole, cpus)
            }
        }
    }
}

/// A started target.
pub struct Running {
    /// Which.
    pub target: Target,
    /// Where requests go.
    pub port: u16,
    /// The process whose CPU and memory count (nginx's worker, not its master).
    pub measured_pid: Option<u32>,
    /// The router's status port, for metrics scrapes.
    pub status_port: Option<u16>,
    process: Option<Spawned>,
}

impl Running {
    /// Fails if the target's process has died.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.process.as_mut().map_or(Ok(()), Spawned::ensure_running)
    }

    /// CPU seconds used so far by the measured process.
    pub fn cpu_time(&self) -> Result<Option<procstat::CpuTime>> {
        self.measured_pid.map(procstat::cpu_time).transpose().map_err(|source| BenchError::File { path: PathBuf::from("/proc"), source })
    }

    /// Resident memory of the measured process.
    pub fn rss_bytes(&self) -> Option<u64> {
        self.measured_pid.and_then(|pid| procstat::rss_bytes(pid).ok())
    }
}

fn write(path: PathBuf, text: &str) -> Result<PathBuf> {
    std::fs::write(&path, text).map_err(|source| BenchError::File { path: path.clone(), source })?;
    Ok(path)
}

/// Starts `target` with `logging`.
pub fn start(target: Target, logging: Logging, env: &Environment<'_>) -> Result<Running> {
    let running = match target {
        Target::Direct => Running { target, port: env.backend_port, measured_pid: None, status_port: None, process: None },
        Target::Nginx => start_nginx(logging, env)?,
        Target::Haproxy => start_haproxy(logging, env)?,
        Target::Router(threads) => start_router(threads, logging, env)?,
    };
    wait_until_routed(&running, env)?;
    Ok(running)
}

/// Polls until the target answers 200 for the benchmark Host. The router learns the route from NATS, and may
/// subscribe after it starts listening, so the registration is re-published on every poll, as an emitter
/// re-registers.
fn wait_until_routed(running: &Running, env: &Environment<'_>) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], running.port));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client = crate::http::Client::new(addr);
    let nats_client = match running.target {
        Target::Router(_) => Some(env.runtime.block_on(env.nats.client())?),
        _ => None,
    };
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Some(nats_client) = &nats_client {
            env.runtime.block_on(async {
                nats::register(nats_client, HOST, env.backend_port).await?;
                nats::flush(nats_client).await
            })?;
        }
        match env.runtime.block_on(client.get(HOST, "/", None)) {
            Ok(answer) if answer.status == 200 => return Ok(()),
            Ok(answer) => last = format!("status {}", answer.status),
            Err(err) => last = err.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(BenchError::Timeout { what: format!("{} serving {HOST} (last: {last})", running.target.name()), seconds: 20 })
}

/// Waits for `process` to listen on `port`; a process that died instead is reported with its log.
fn wait_ready(process: &mut Spawned, what: &str, port: u16) -> Result<()> {
    let listening = wait_for_port(what, port, Duration::from_secs(15));
    process.ensure_running()?;
    listening
}

/// nginx's configuration. `master` runs the usual master and one worker; without it the one process serves (under
/// a tool, which cannot reach a forked worker's counters).
fn nginx_config(dir: &Path, port: u16, backend: u16, logging: Logging, master: bool) -> String {
    let d = dir.display();
    let access_log = match logging {
        Logging::On => format!("access_log {d}/nginx-access.log combined buffer=64k flush=1s;"),
        Logging::Off => "access_log off;".to_owned(),
    };
    let user = if nix::unistd::geteuid().is_root() { "user root;" } else { "" };
    let master = if master { "on" } else { "off" };
    format!(
        "daemon off;
master_process {master};
worker_processes 1;
{user}
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    {access_log}
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path {d}/nginx-body;
    proxy_temp_path {d}/nginx-proxy;
    fastcgi_temp_path {d}/nginx-fastcgi;
    uwsgi_temp_path {d}/nginx-uwsgi;
    scgi_temp_path {d}/nginx-scgi;
    upstream app {{
        server 127.0.0.1:{backend};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} default_server;
        return 404;
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name {HOST};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Request-Id $request_id;
        }}
    }}
}}
"
    )
}

fn start_nginx(logging: Logging, env: &Environment<'_>) -> Result<Running> {
    require_tool("nginx", "run `apt-get install -y nginx`")?;
    let port = free_port()?;
    let master = env.under.is_empty();
    let config = write(env.dir.join(format!("nginx-{logging:?}.conf")), &nginx_config(env.dir, port, env.backend_port, logging, master))?;
    let args = vec!["-c".to_owned(), config.display().to_string(), "-e".to_owned(), env.dir.join("nginx-error.log").display().to_string()];
    let mut process = Spawned::start("nginx", env.command("nginx", &args, env.proxy_cpus), env.dir)?;
    wait_ready(&mut process, "nginx", port)?;
    let pid = process.pid();
    // The master forks one worker; the worker serves every request, so it is the one measured.
    let measured = if master { worker_of(pid)? } else { pid };
    Ok(Running { target: Target::Nginx, port, measured_pid: Some(measured), status_port: None, process: Some(process) })
}

/// The worker nginx's master `master` forked.
fn worker_of(master: u32) -> Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(worker) = procstat::children(master).first().copied() {
            return Ok(worker);
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout { what: "nginx's worker process".to_owned(), seconds: 5 });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn haproxy_config(port: u16, backend: u16, logging: Logging) -> String {
    let (global_log, defaults_log) = match logging {
        Logging::On => ("log stdout format raw local0", "log global\n    option httplog"),
        Logging::Off => ("", "no log"),
    };
    format!(
        "global
    nbthread 1
    maxconn 4000
    {global_log}
defaults
    mode http
    {defaults_log}
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
frontend web
    bind 127.0.0.1:{port}
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    unique-id-format %{{+X}}o%ci%cp%fi%fp%Ts%rt%pid
    unique-id-header X-Request-Id
    acl app_host hdr(host) -i {HOST}
    use_backend app if app_host
    default_backend unknown
backend app
    server app1 127.0.0.1:{backend}
backend unknown
    http-request deny deny_status 404
"
    )
}

fn start_haproxy(logging: Logging, env: &Environment<'_>) -> Result<Running> {
    require_tool("haproxy", "run `apt-get install -y haproxy`")?;
    let port = free_port()?;
    let config = write(env.dir.join(format!("haproxy-{logging:?}.cfg")), &haproxy_config(port, env.backend_port, logging))?;
    // -db: stay in the foreground as one process, so its pid is the one that serves.
    let args = vec!["-db".to_owned(), "-f".to_owned(), config.display().to_string()];
    let log_name = match logging {
        Logging::On => "haproxy-access",
        Logging::Off => "haproxy",
    };
    let mut process = Spawned::start(log_name, env.command("haproxy", &args, env.proxy_cpus), env.dir)?;
    wait_ready(&mut process, "haproxy", port)?;
    let pid = process.pid();
    Ok(Running { target: Target::Haproxy, port, measured_pid: Some(pid), status_port: None, process: Some(process) })
}

fn start_router(threads: usize, logging: Logging, env: &Environment<'_>) -> Result<Running> {
    let port = free_port()?;
    let status_port = free_port()?;
    let access_log = match logging {
        Logging::On => format!("access_log: {{file: {}/router-{threads}t-access.log}}\n", env.dir.display()),
        Logging::Off => String::new(),
    };
    let yaml = format!(
        "port: {port}
status: {{host: 127.0.0.1, port: {status_port}, user: bench, pass: bench}}
nats: {{hosts: [{{hostname: 127.0.0.1, port: {nats}}}]}}
start_response_delay_interval: 0s
droplet_stale_threshold: 1h
worker_threads: {threads}
{access_log}",
        nats = env.nats.port
    );
    let config = write(env.dir.join(format!("router-{threads}t-{logging:?}.yml")), &yaml)?;
    let cpus = if threads > 1 { env.wide_cpus } else { env.proxy_cpus };
    let args = vec!["--config".to_owned(), config.display().to_string()];
    let program = env.router_binary.display().to_string();
    let mut process = Spawned::start(&format!("router-{threads}t"), env.command(&program, &args, cpus), env.dir)?;
    wait_ready(&mut process, "router", port)?;
    let pid = process.pid();
    Ok(Running { target: Target::Router(threads), port, measured_pid: Some(pid), status_port: Some(status_port), process: Some(process) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_configs_carry_the_fairness_settings() {
        let nginx = nginx_config(Path::new("/tmp/x"), 8000, 9000, Logging::On, true);
        for needle in ["worker_processes 1;", "keepalive 64;", "keepalive_requests 1000000;", "server_name app.bench.test;", "buffer=64k"] {
            assert!(nginx.contains(needle), "nginx config lacks {needle}");
        }
        assert!(nginx.contains("master_process on;"));
        assert!(nginx_config(Path::new("/tmp/x"), 8000, 9000, Logging::Off, true).contains("access_log off;"));
        assert!(nginx_config(Path::new("/tmp/x"), 8000, 9000, Logging::Off, false).contains("master_process off;"));
        let haproxy = haproxy_config(8000, 9000, Logging::On);
        for needle in ["nbthread 1", "http-reuse always", "hdr(host) -i app.bench.test", "option httplog", "server app1 127.0.0.1:9000"] {
            assert!(haproxy.contains(needle), "haproxy config lacks {needle}");
        }
        assert!(!haproxy_config(8000, 9000, Logging::Off).contains("httplog"));
    }
}
