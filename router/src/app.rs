//! Start-up, serving and shutdown, in the order operators expect.
//!
//! 1. The config is already validated; nothing listens before that.
//! 2. The status listener comes up first (`/health` says 503 "starting"), NATS connects in the background, and
//!    the router learns routes for `start_response_delay_interval`.
//! 3. The proxy listeners open and `/health` says 200.
//! 4. SIGHUP, or a change to the config file, reloads the TLS certificates ([`crate::reload`]).
//! 5. SIGUSR1 drains: `/health` says 503 for `drain_wait`, the listeners close, in-flight requests get up to
//!    `drain_timeout`, and the process exits 0. SIGTERM or SIGINT stops at once.

use crate::access_log::AccessLog;
use crate::bus::{Bus, BusSettings, local_ip};
use crate::clock::Clock;
use crate::metrics::RouterMetrics;
use crate::proxy::activity::Timeouts;
use crate::proxy::upstream::Dialer;
use crate::proxy::{Proxy, ProxySettings};
use crate::registry::{Registry, RegistryConfig};
use crate::reload::{Reloader, WATCH_INTERVAL};
use crate::server::{self, TlsListener, WorkerControl, WorkerSetup};
use crate::status::{Health, Phase, RouterStatus};
use crate::table::RouteTable;
use crate::tls::{Live, Material};
use arc_swap::ArcSwap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use switchyard_config::messages::{MessageLimits, RouterStart};
use switchyard_config::router::RouterConfig;
use switchyard_runtime::nats::{NatsSettings, server_url};
use switchyard_runtime::signals::{Lifecycle, Signals};
use switchyard_runtime::status::BasicAuth;
use tokio_util::sync::CancellationToken;

/// Why the router could not start (or stopped with an error). Each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A listener could not be opened.
    #[error("cannot listen on {addr} ({what}): {source}; is another process using the port?")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The access log file could not be opened.
    #[error("cannot open the access log {path}: {source}; check `access_log.file` and the directory's permissions")]
    AccessLog {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// NATS settings were refused.
    #[error(transparent)]
    Nats(#[from] switchyard_runtime::nats::NatsError),
    /// The route subscriptions failed.
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    /// A thread or runtime could not start.
    #[error("cannot start {what}: {source}")]
    Runtime {
        /// What.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

fn parse_ip(host: &str) -> IpAddr {
    host.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

fn nats_settings(config: &RouterConfig) -> NatsSettings {
    let servers = config.nats.hosts.iter().map(|h| server_url(&h.hostname, h.port)).collect();
    NatsSettings {
        subscription_capacity: Some(REGISTRATION_QUEUE),
        ..NatsSettings::from_keys(servers, config.nats.auth_keys(), format!("switchyard-router-{}", config.index))
    }
}

/// Registrations that may wait for the registry. A router that starts (or reconnects) in a large foundation is
/// sent every route at once; a dropped registration stays unroutable until its emitter's next refresh, so the
/// queue holds a burst of this many (a few hundred bytes each) rather than drop any.
const REGISTRATION_QUEUE: usize = 1 << 19;

/// How many endpoint removals (failed backend identity checks) may wait for the registry.
const REMOVAL_QUEUE: usize = 1024;

/// Runs the router until it is stopped. Returns once every worker has finished. `material` is the TLS material
/// already built from `config` (so a bad certificate stopped the start before anything listened); `config_path`
/// is where the config came from, re-read to reload certificates.
pub async fn run(config: RouterConfig, material: Material, config_path: PathBuf) -> Result<(), AppError> {
    switchyard_runtime::limits::raise_open_file_limit();
    let metrics = RouterMetrics::new();
    let clock = Clock::new();
    let table = Arc::new(ArcSwap::from_pointee(RouteTable::new()));
    let health = Arc::new(Health::default());
    let shutdown = CancellationToken::new();
    let mut signals = Signals::new().map_err(|source| AppError::Runtime { what: "signal handling", source })?;

    // Status listeners first, so load balancers see "starting" rather than a refused connection.
    let auth = BasicAuth::new(&config.status.user, &config.status.pass);
    let status_addr = SocketAddr::new(parse_ip(&config.status.host), config.status.port);
    let status_listener = tokio::net::TcpListener::bind(status_addr)
        .await
        .map_err(|source| AppError::Bind { what: "status", addr: status_addr.to_string(), source })?;
    let status = Arc::new(RouterStatus { table: Arc::clone(&table), health: Arc::clone(&health), metrics: metrics.clone(), auth: auth.clone(), routes_only: false });
    tokio::spawn(switchyard_runtime::status::serve(status_listener, status, shutdown.clone()));
    if let Some(port) = config.status.routes.port {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| AppError::Bind { what: "status.routes", addr: addr.to_string(), source })?;
        let routes = Arc::new(RouterStatus { table: Arc::clone(&table), health: Arc::clone(&health), metrics: metrics.clone(), auth, routes_only: true });
        tokio::spawn(switchyard_runtime::status::serve(listener, routes, shutdown.clone()));
    }

    let access_log = match config.access_log.file.as_str() {
        "" => None,
        path => {
            let path = PathBuf::from(path);
            let (log, writer) = AccessLog::open(&path, metrics.access_log_dropped.clone()).map_err(|source| AppError::AccessLog { path, source })?;
            Some((log, writer))
        }
    };

    // Routes: NATS in, the registry as the single writer, table versions out.
    let link = switchyard_runtime::nats::connect(&nats_settings(&config), &metrics.registry).await?;
    let first_nats = config.nats.hosts.first();
    let router_ip = first_nats.map_or(IpAddr::from([127, 0, 0, 1]), |h| local_ip(&h.hostname, h.port));
    let start = RouterStart {
        id: format!("{}-{}", config.index, uuid::Uuid::new_v4()),
        hosts: vec![router_ip.to_string()],
        minimum_register_interval_in_seconds: config.start_response_delay_interval.as_secs(),
        prune_threshold_in_seconds: config.effective_stale_threshold().as_secs(),
    };
    let registry = Registry::new(
        RegistryConfig {
            stale_threshold: config.effective_stale_threshold(),
            default_algorithm: config.balancing_algorithm,
            empty_pool_grace: (config.empty_pool_response_code_503 && !config.empty_pool_timeout.is_zero()).then_some(config.empty_pool_timeout),
        },
        rand::random(),
    );
    let (removals, removal_queue) = tokio::sync::mpsc::channel(REMOVAL_QUEUE);
    let bus = Bus {
        client: link.client.clone(),
        link: link.state,
        registry,
        table: Arc::clone(&table),
        settings: BusSettings {
            limits: MessageLimits {
                max_payload_bytes: config.nats.max_message_bytes,
                max_uris: config.nats.max_uris_per_message,
                allow_loopback_hosts: config.nats.allow_loopback_backends,
            },
            prune_interval: config.prune_stale_droplets_interval,
            suspend_pruning: config.suspend_pruning_if_nats_unavailable,
            start,
        },
        metrics: metrics.clone(),
        clock,
        removals: removal_queue,
    };
    let bus_task = tokio::spawn(bus.run(shutdown.clone()));

    tracing::info!(delay = ?config.start_response_delay_interval, "learning routes before listening");
    tokio::select! {
        () = tokio::time::sleep(config.start_response_delay_interval) => {}
        signal = signals.next() => if signal == Lifecycle::Stop {
            shutdown.cancel();
            return Ok(());
        }
    }

    // Proxy workers, one listener each on the same port(s).
    let workers = if config.worker_threads == 0 { std::thread::available_parallelism().map_or(1, usize::from) } else { config.worker_threads };
    let proxy_addr = SocketAddr::from(([0, 0, 0, 0], config.port));
    let tls_addr = SocketAddr::from(([0, 0, 0, 0], config.ssl_port));
    let control = WorkerControl::default();
    let settings = ProxySettings::from_config(&config);
    let timeouts = Timeouts { header: config.read_header_timeout, idle: config.frontend_idle_timeout };
    let live = Live::new(material);
    let dialer = Dialer { timeout: config.endpoint_dial_timeout, tls: Arc::clone(&live.backend) };
    let mut threads = Vec::with_capacity(workers);
    for index in 0..workers {
        let listener = if config.disable_http {
            None
        } else {
            Some(server::bind(proxy_addr).map_err(|source| AppError::Bind { what: "proxy", addr: proxy_addr.to_string(), source })?)
        };
        let tls = match &live.frontend {
            Some(config) => Some(TlsListener {
                listener: server::bind(tls_addr).map_err(|source| AppError::Bind { what: "proxy (TLS)", addr: tls_addr.to_string(), source })?,
                config: Arc::clone(config),
            }),
            None => None,
        };
        let setup = WorkerSetup {
            proxy: Arc::new(Proxy::new(Arc::clone(&table), settings.clone(), clock, metrics.clone(), dialer.clone(), removals.clone(), Arc::clone(&control.closing))),
            listener,
            tls,
            timeouts,
            max_buf_size: config.max_header_bytes.saturating_mul(2).max(64 * 1024),
            metrics: metrics.clone(),
            access_log: access_log.as_ref().map(|(log, _)| log.clone()),
        };
        let control = control.clone();
        let thread = std::thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || {
                if let Err(err) = server::run_worker(setup, control) {
                    tracing::error!(%err, "worker stopped with an error");
                }
            })
            .map_err(|source| AppError::Runtime { what: "worker thread", source })?;
        threads.push(thread);
    }
    drop(removals);
    health.set(Phase::Serving);
    let ssl_port = config.enable_ssl.then_some(config.ssl_port);
    tracing::info!(port = (!config.disable_http).then_some(config.port), ssl_port, workers, "serving");

    let mut reloader = Reloader::new(config_path, config.clone(), live, metrics.clone());
    let mut watch = tokio::time::interval(WATCH_INTERVAL);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let draining = loop {
        tokio::select! {
            signal = signals.next() => match signal {
                Lifecycle::Stop => {
                    tracing::info!("stopping");
                    control.stop.cancel();
                    break false;
                }
                Lifecycle::Drain => break begin_drain(&config, &health, &control, &mut signals).await,
                Lifecycle::Reload => reloader.reload("SIGHUP").await,
            },
            _ = watch.tick() => if reloader.changed() {
                reloader.reload("config file changed").await;
            },
        }
    };
    let joined = async {
        for thread in threads {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    };
    tokio::pin!(joined);
    let mut joined_all = false;
    if draining {
        tokio::select! {
            () = &mut joined => joined_all = true,
            () = tokio::time::sleep(config.effective_drain_timeout()) => tracing::warn!("drain timeout reached; closing what is left"),
            signal = signals.next() => if signal == Lifecycle::Stop { tracing::info!("stop requested during drain") },
        }
    }
    control.stop.cancel();
    if !joined_all {
        joined.await;
    }
    shutdown.cancel();
    if let Some((log, writer)) = access_log {
        drop(log);
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    }
    match bus_task.await {
        Ok(result) => result?,
        Err(err) => tracing::error!(%err, "route task ended abnormally"),
    }
    Ok(())
}

/// The first half of the SIGUSR1 sequence: report 503 for `drain_wait`, then stop accepting. Returns false if a
/// stop signal cut it short (the workers are then told to stop at once).
async fn begin_drain(config: &RouterConfig, health: &Health, control: &WorkerControl, signals: &mut Signals) -> bool {
    tracing::info!(drain_wait = ?config.drain_wait, drain_timeout = ?config.effective_drain_timeout(), "draining");
    health.set(Phase::Draining);
    control.closing.store(true, std::sync::atomic::Ordering::Relaxed);
    if !wait_or_stop(config.drain_wait, signals).await {
        control.stop.cancel();
        return false;
    }
    control.drain.cancel();
    true
}

/// Sleeps for `duration`; returns false if a stop signal came first.
async fn wait_or_stop(duration: Duration, signals: &mut Signals) -> bool {
    let sleep = tokio::time::sleep(duration);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return true,
            signal = signals.next() => if signal == Lifecycle::Stop { return false },
        }
    }
}
