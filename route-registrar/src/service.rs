//! The running registrar: one loop that feeds the world's events into the [`Schedule`] and carries out what it
//! returns.
//!
//! Concurrency is deliberately simple. One task owns the schedule and is the only one that publishes, so messages
//! leave in exactly the order the schedule decided (an unregister of an old endpoint before the register of its
//! replacement). Health checks run as tasks of their own in a `JoinSet`, whose results come back into the loop;
//! dropping the set at shutdown kills any script still running, with its process group.
//!
//! While NATS is down nothing is published (the client would only queue it, and a long outage would fill the
//! queue and stall the loop); every (re)connect says the current state of every route again instead, which is the
//! same thing a fresh router asks for with `router.start`.

use crate::metrics::{PublishResult, RegistrarMetrics};
use crate::probe::{self, Outcome};
use crate::schedule::{CheckRequest, Command, Event, Publish, Route, Schedule, Ticket, Why};
use crate::sources::{LoadError, RouteFiles, nats_tls, read_config};
use bytes::Bytes;
use futures_util::StreamExt;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_config::Loaded;
use switchyard_config::messages::{RouterStart, SUBJECT_GREET, SUBJECT_START};
use switchyard_config::registrar::RegistrarConfig;
use switchyard_runtime::metrics::Metrics;
use switchyard_runtime::nats::{self, LinkState, NatsError, NatsSettings};
use switchyard_runtime::signals::{Lifecycle, Signals};
use switchyard_runtime::status::{self, StatusHandler, StatusResponse};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Longest a single publish may wait for room in the client's queue.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// At shutdown, how long to wait for NATS to come back so the withdrawals can go out.
const SHUTDOWN_CONNECT_WAIT: Duration = Duration::from_secs(2);
/// At shutdown, how long to wait for the withdrawals to reach the server.
const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the registrar could not start. Each is fatal and names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config became unusable (it was valid when checked).
    #[error(transparent)]
    Config(#[from] LoadError),
    /// The status listener could not bind; another process may hold the port.
    #[error("status listener cannot listen on {address}: {source}")]
    StatusBind {
        /// The configured address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The NATS settings are unusable.
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// A subscription could not be made.
    #[error("cannot subscribe to {subject}: {reason}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// The client's error.
        reason: String,
    },
}

/// Logs, once, the keys a config file carried that nothing reads.
pub fn warn_ignored(path: &Path, ignored: &[String]) {
    if !ignored.is_empty() {
        tracing::warn!(file = %path.display(), keys = %ignored.join(", "), "config keys not used by route-registrar were ignored");
    }
}

/// How to reach NATS, from the config (reading the TLS files it names).
fn nats_settings(config: &RegistrarConfig, config_path: &Path) -> Result<NatsSettings, LoadError> {
    let tls = nats_tls(config).map_err(|source| LoadError::Invalid { path: config_path.to_owned(), source })?;
    let servers = config
        .message_bus_servers
        .iter()
        .filter_map(|server| server.address().ok())
        .map(|(host, port)| nats::server_url(&host, port))
        .collect();
    Ok(NatsSettings { servers, credentials: config.credentials(), tls, client_name: "switchyard-route-registrar".to_owned(), subscription_capacity: None })
}

struct StatusPage {
    metrics: Metrics,
}

impl StatusHandler for StatusPage {
    fn handle(&self, request: &Request<Incoming>) -> StatusResponse {
        match request.uri().path() {
            "/health" => status::text(StatusCode::OK, "ok\n"),
            "/metrics" => status::metrics(self.metrics.encode()),
            _ => status::not_found(),
        }
    }
}

/// A finished check on its way back to the loop.
struct CheckDone {
    ticket: Ticket,
    route: Arc<str>,
    outcome: Outcome,
    took: Duration,
}

struct Registrar {
    config_path: PathBuf,
    config: RegistrarConfig,
    instance_id: String,
    client: async_nats::Client,
    link: watch::Receiver<LinkState>,
    greeting_inbox: String,
    schedule: Schedule,
    files: RouteFiles,
    checks: JoinSet<CheckDone>,
    metrics: RegistrarMetrics,
}

/// Runs the registrar until SIGTERM or SIGINT, then withdraws every route. `loaded` is the validated config read
/// from `config_path` (read again on SIGHUP).
pub async fn run(config_path: PathBuf, loaded: Loaded<RegistrarConfig>) -> Result<(), RunError> {
    warn_ignored(&config_path, &loaded.ignored_keys);
    let config = loaded.value;
    let metrics = Metrics::new("registrar");
    let registrar_metrics = RegistrarMetrics::new(&metrics);
    let stop_status = CancellationToken::new();
    if let Some(address) = config.status_address().map_err(|source| LoadError::Invalid { path: config_path.clone(), source })? {
        let listener = tokio::net::TcpListener::bind(address).await.map_err(|source| RunError::StatusBind { address, source })?;
        tracing::info!(%address, "status listener serving /health and /metrics");
        tokio::spawn(status::serve(listener, Arc::new(StatusPage { metrics: metrics.clone() }), stop_status.clone()));
    }
    let mut signals = Signals::new().map_err(RunError::Signals)?;
    let link = nats::connect(&nats_settings(&config, &config_path)?, &metrics).await?;
    let subscribe_error = |subject: &str, err: async_nats::SubscribeError| RunError::Subscribe { subject: subject.to_owned(), reason: err.to_string() };
    let mut starts = link.client.subscribe(SUBJECT_START).await.map_err(|err| subscribe_error(SUBJECT_START, err))?;
    let greeting_inbox = link.client.new_inbox();
    let mut greetings = link.client.subscribe(greeting_inbox.clone()).await.map_err(|err| subscribe_error(&greeting_inbox, err))?;

    let instance_id = uuid::Uuid::new_v4().to_string();
    tracing::info!(private_instance_id = %instance_id, routes = config.routes.len(), globs = config.dynamic_config_globs.len(), "route-registrar starting");
    let files = RouteFiles::new(config.dynamic_config_globs.clone());
    let mut registrar = Registrar {
        config_path,
        schedule: Schedule::new(config.unregistration_message_limit),
        config,
        instance_id,
        client: link.client,
        link: link.state,
        greeting_inbox,
        files,
        checks: JoinSet::new(),
        metrics: registrar_metrics,
    };
    registrar.rescan_files().await;
    registrar.apply_routes().await;

    let mut file_scan = tokio::time::interval(registrar.config.dynamic_config_interval.max(Duration::from_millis(10)));
    file_scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connects = 0u64;
    loop {
        let wake = registrar.schedule.next_wake();
        tokio::select! {
            signal = signals.next() => match signal {
                Lifecycle::Stop | Lifecycle::Drain => break,
                Lifecycle::Reload => registrar.reload().await,
            },
            () = sleep_until(wake), if wake.is_some() => registrar.handle(Event::Tick).await,
            Some(done) = registrar.checks.join_next() => match done {
                Ok(done) => registrar.check_done(done).await,
                Err(err) => tracing::error!(%err, "a health check task failed"),
            },
            Some(message) = starts.next() => registrar.router_start(&message.payload, true).await,
            Some(message) = greetings.next() => registrar.router_start(&message.payload, false).await,
            Ok(()) = registrar.link.changed() => {
                let state = *registrar.link.borrow_and_update();
                if state.connected && state.connects != connects {
                    connects = state.connects;
                    registrar.connected().await;
                }
            },
            _ = file_scan.tick(), if registrar.files.is_watching() => {
                if registrar.rescan_files().await {
                    registrar.apply_routes().await;
                }
            },
        }
    }
    registrar.shutdown().await;
    stop_status.cancel();
    Ok(())
}

async fn sleep_until(wake: Option<Instant>) {
    if let Some(wake) = wake {
        tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
    }
}

impl Registrar {
    async fn handle(&mut self, event: Event) {
        let commands = self.schedule.handle(Instant::now(), event);
        for command in commands {
            match command {
                Command::Publish(publish) => self.publish(publish).await,
                Command::Check(request) => self.start_check(request),
            }
        }
        self.metrics.set_health(self.schedule.health());
    }

    async fn publish(&self, publish: Publish) {
        let Publish { subject, scope, payload, route, why } = publish;
        let wire_subject = match &scope {
            Some(scope) => format!("{subject}.{scope}"),
            None => subject.to_owned(),
        };
        if !self.link.borrow().connected {
            tracing::debug!(subject = %wire_subject, %route, why = why.as_str(), "NATS is down; not published");
            self.metrics.published(subject, PublishResult::Skipped);
            return;
        }
        match tokio::time::timeout(PUBLISH_TIMEOUT, self.client.publish(wire_subject.clone(), payload)).await {
            Ok(Ok(())) => {
                self.metrics.published(subject, PublishResult::Sent);
                match why {
                    Why::Scheduled | Why::Refresh | Why::CheckPassed => tracing::debug!(subject = %wire_subject, %route, why = why.as_str(), "published"),
                    _ => tracing::info!(subject = %wire_subject, %route, why = why.as_str(), "published"),
                }
            }
            Ok(Err(err)) => {
                self.metrics.published(subject, PublishResult::Failed);
                tracing::warn!(subject = %wire_subject, %route, %err, "publish failed");
            }
            Err(_) => {
                self.metrics.published(subject, PublishResult::Failed);
                tracing::warn!(subject = %wire_subject, %route, "publish timed out: the NATS client is not keeping up");
            }
        }
    }

    fn start_check(&mut self, request: CheckRequest) {
        let CheckRequest { ticket, route, check } = request;
        self.checks.spawn(async move {
            let started = Instant::now();
            let outcome = probe::run(&check).await;
            CheckDone { ticket, route, outcome, took: started.elapsed() }
        });
    }

    async fn check_done(&mut self, done: CheckDone) {
        let CheckDone { ticket, route, outcome, took } = done;
        self.metrics.checked(&route, &outcome, took);
        match &outcome {
            Outcome::Healthy => tracing::debug!(%route, took_ms = took.as_millis(), "health check passed"),
            Outcome::Unhealthy(why) => tracing::warn!(%route, %why, "health check failed"),
            Outcome::TimedOut => tracing::warn!(%route, took_ms = took.as_millis(), "health check timed out and was killed"),
        }
        self.handle(Event::CheckDone { ticket, healthy: outcome.is_healthy() }).await;
    }

    async fn router_start(&mut self, payload: &Bytes, announced: bool) {
        let start: RouterStart = match serde_json::from_slice(payload) {
            Ok(start) => start,
            Err(err) => {
                tracing::warn!(%err, "ignoring a router start message that is not valid JSON of the expected shape");
                return;
            }
        };
        let seconds = start.minimum_register_interval_in_seconds;
        let min_interval = (seconds > 0).then(|| Duration::from_secs(seconds));
        if announced {
            self.metrics.router_started();
            tracing::info!(router = %start.id, min_interval_s = seconds, "router started; announcing every route now");
            self.handle(Event::RouterStart { min_interval }).await;
        } else if let Some(interval) = min_interval {
            tracing::debug!(router = %start.id, min_interval_s = seconds, "router greeted");
            self.handle(Event::RouterInterval(interval)).await;
        }
        self.metrics.set_router_interval(self.schedule.router_interval());
    }

    async fn connected(&mut self) {
        tracing::info!("NATS connected; announcing the state of every route");
        // Ask routers already running how often they want announcements.
        if let Err(err) = self.client.publish_with_reply(SUBJECT_GREET, self.greeting_inbox.clone(), Bytes::new()).await {
            tracing::warn!(%err, "could not greet routers");
        }
        self.handle(Event::Reconnected).await;
    }

    /// Reads the route files again; returns whether their routes changed.
    async fn rescan_files(&mut self) -> bool {
        if !self.files.is_watching() {
            return false;
        }
        let globs = self.files.globs().to_vec();
        let readings = match tokio::task::spawn_blocking(move || RouteFiles::scan(&globs)).await {
            Ok(readings) => readings,
            Err(err) => {
                tracing::error!(%err, "route file scan failed");
                return false;
            }
        };
        let update = self.files.update(readings, &self.config.announcer(&self.instance_id));
        for problem in &update.problems {
            self.metrics.route_file_error();
            tracing::error!(file = %problem.path.display(), problem = %problem.problem, "route file not used; its routes stay as they were");
        }
        for (path, ignored) in &update.loaded {
            tracing::info!(file = %path.display(), "route file loaded");
            warn_ignored(path, ignored);
        }
        for path in &update.removed {
            tracing::info!(file = %path.display(), "route file gone; withdrawing its routes");
        }
        update.changed
    }

    /// Hands the schedule the full set of routes wanted now.
    async fn apply_routes(&mut self) {
        let resolved = match self.config.resolved_routes(&self.instance_id) {
            Ok(routes) => routes,
            Err(err) => {
                // Validated at load; only reachable if validation and resolution disagree.
                tracing::error!(%err, "config routes could not be resolved; keeping the routes as they are");
                return;
            }
        };
        let mut routes = Vec::new();
        for route in resolved.iter().chain(self.files.routes()) {
            match Route::new(route) {
                Ok(route) => routes.push(route),
                Err(err) => tracing::error!(route = %route.name, %err, "route could not be encoded"),
            }
        }
        self.handle(Event::Routes(routes)).await;
    }

    async fn reload(&mut self) {
        tracing::info!(file = %self.config_path.display(), "SIGHUP: reloading the config");
        let loaded = match read_config(&self.config_path) {
            Ok(loaded) => loaded,
            Err(err) => {
                tracing::error!(%err, "reload failed; the running config stays");
                return;
            }
        };
        warn_ignored(&self.config_path, &loaded.ignored_keys);
        let new = loaded.value;
        let old = &self.config;
        if new.message_bus_servers != old.message_bus_servers
            || new.nats_mtls_config != old.nats_mtls_config
            || new.status != old.status
            || new.unregistration_message_limit != old.unregistration_message_limit
        {
            tracing::warn!("message_bus_servers, nats_mtls_config, status and unregistration_message_limit take effect at the next restart");
        }
        let config = RegistrarConfig {
            message_bus_servers: old.message_bus_servers.clone(),
            nats_mtls_config: old.nats_mtls_config.clone(),
            status: old.status.clone(),
            unregistration_message_limit: old.unregistration_message_limit,
            ..new
        };
        self.files.rewatch(config.dynamic_config_globs.clone());
        self.config = config;
        self.rescan_files().await;
        self.apply_routes().await;
    }

    async fn shutdown(mut self) {
        tracing::info!("stopping: withdrawing every route");
        // Checks still running are dropped; each kills its script's process group.
        self.checks.abort_all();
        if !self.link.borrow().connected {
            let _ = tokio::time::timeout(SHUTDOWN_CONNECT_WAIT, self.link.wait_for(|state| state.connected)).await;
        }
        if !self.link.borrow().connected {
            tracing::warn!("NATS is down: routes could not be withdrawn; routers will prune them when they go stale");
        }
        self.handle(Event::Shutdown).await;
        match tokio::time::timeout(SHUTDOWN_FLUSH_TIMEOUT, self.client.flush()).await {
            Ok(Ok(())) => tracing::info!("every route withdrawn; exiting"),
            Ok(Err(err)) => tracing::warn!(%err, "could not flush the withdrawals to NATS"),
            Err(_) => tracing::warn!("timed out flushing the withdrawals to NATS"),
        }
        while self.checks.join_next().await.is_some() {}
    }
}
