//! `lb run`: the long-running process. One task owns every source of desired state and reacts to events
//! (announcements, KV changes, probe results, signals, timers); the kernel work happens on the sync thread.
//!
//! Start-up is the same path as everything after it: read the kernel, adopt what it already forwards to, then
//! treat the file as one more source change. Nothing is flushed and nothing is removed on a guess: services
//! missing from the intent are kept until the KV bucket has been read once. Changes are batched (at most one
//! resolve per `sync_min_interval`) so a storm of announcements costs one kernel update, not thousands.

use crate::health::{Health, Thresholds};
use crate::intent::{Intent, Rejection, Source, SourceSettings, Sources};
use crate::kv::{self, KvEvent};
use crate::leases::Renewal;
use crate::metrics::LbMetrics;
use crate::model::{DestinationKey, ObservedState, ServiceKey};
use crate::probe::{ProbeResult, Prober};
use crate::status::LbStatus;
use crate::sync::{self, Kernel, LoopTiming, SyncHandle, SyncRequest, SyncUpdate};
use crate::LbError;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};
use switchyard_config::lb::{HealthCheckKind, LbConfig, LbNatsConfig};
use switchyard_config::messages::{LbRegistration, MessageLimits, SUBJECT_LB_REGISTER, SUBJECT_LB_UNREGISTER};
use switchyard_runtime::nats::{LinkState, NatsSettings};
use switchyard_runtime::signals::{Lifecycle, Signals};
use switchyard_runtime::status::BasicAuth;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Reads and validates the config file; unused keys are logged, not fatal.
pub fn load_config(path: &Path) -> Result<LbConfig, LbError> {
    let text = std::fs::read_to_string(path).map_err(|source| LbError::ReadConfig { path: path.to_owned(), source })?;
    let loaded = switchyard_config::parse_yaml::<LbConfig>(&text).map_err(|source| LbError::Config { path: path.to_owned(), source })?;
    for key in &loaded.ignored_keys {
        tracing::warn!(key = %key, file = %path.display(), "config key is not used by lb; ignoring it");
    }
    Ok(loaded.value)
}

/// How the sources resolve under `config`.
pub fn source_settings(config: &LbConfig) -> SourceSettings {
    SourceSettings {
        stale_threshold: config.backend_stale_threshold,
        thresholds: Thresholds { rise: config.health_check.rise, fall: config.health_check.fall },
        health_checks: config.health_check.kind != HealthCheckKind::None,
        announcements: config.nats.is_some(),
    }
}

/// The sources at start-up: the file, plus the backends the kernel already forwards to.
pub fn initial_sources(config: &LbConfig, observed: &ObservedState, now: Instant) -> Sources {
    let mut sources = Sources::new(source_settings(config));
    sources.set_file(config.vips.clone());
    let kernel: Vec<(ServiceKey, DestinationKey, u32)> = observed
        .services
        .iter()
        .filter(|(key, _)| observed.owns(key))
        .flat_map(|(key, service)| service.destinations.iter().map(move |(destination, state)| (*key, *destination, state.weight)))
        .collect();
    let adopted = sources.adopt(kernel, now);
    if adopted > 0 {
        tracing::info!(backends = adopted, "kept the backends the kernel already forwards to until cells re-announce them");
    }
    sources
}

/// Whether a message came in on a register or an unregister subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Register,
    Unregister,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Unregister => "unregister",
        }
    }
}

/// Which announcement a subject carries: `lb.register` / `lb.unregister`, or scoped to a VIP as
/// `lb.register.<vip>` / `lb.unregister.<vip>`. `None` for any other subject.
fn subject_action(subject: &str) -> Option<(Action, Option<&str>)> {
    let (action, scope) = if let Some(rest) = subject.strip_prefix(SUBJECT_LB_UNREGISTER) {
        (Action::Unregister, rest)
    } else {
        (Action::Register, subject.strip_prefix(SUBJECT_LB_REGISTER)?)
    };
    match scope.strip_prefix('.') {
        None if scope.is_empty() => Some((action, None)),
        Some(vip) if !vip.is_empty() && !vip.contains('.') => Some((action, Some(vip))),
        _ => None,
    }
}

/// Reads an announcement's `payload`; `vip` is the VIP its subject is scoped to, if any.
fn read_announcement(vip: Option<&str>, payload: &[u8], limits: &MessageLimits) -> Result<LbRegistration, String> {
    let announcement = LbRegistration::parse(payload, limits).map_err(|e| e.to_string())?;
    if let Some(vip) = vip
        && vip != announcement.vip
    {
        return Err(format!("sent on the subject of VIP `{vip}` but names VIP `{}`", announcement.vip));
    }
    Ok(announcement)
}

/// The subscriptions announcements arrive on: scoped ones always, unscoped ones if configured. Register and
/// unregister share each subscription because NATS keeps a publisher's messages in order only within one: with a
/// subscription per subject, a cell's withdrawal could be applied before the announcement it follows.
fn announcement_subjects(nats: &LbNatsConfig) -> Vec<&'static str> {
    let mut subjects = vec!["lb.*.*"];
    if nats.unscoped_subjects {
        subjects.push("lb.*");
    }
    subjects
}

/// Subscribes to the announcement subjects and forwards parsed announcements, in the order each subscription
/// delivers them.
async fn subscribe_announcements(
    client: &async_nats::Client,
    nats: &LbNatsConfig,
    sender: mpsc::Sender<(Action, LbRegistration)>,
    metrics: &LbMetrics,
) -> Result<(), LbError> {
    let limits = MessageLimits { max_payload_bytes: nats.max_message_bytes, ..MessageLimits::default() };
    for subject in announcement_subjects(nats) {
        let mut subscription = client.subscribe(subject).await.map_err(|e| LbError::Nats(format!("subscribe to {subject}: {e}")))?;
        let sender = sender.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            while let Some(message) = subscription.next().await {
                // Other subjects under `lb.` are not announcements.
                let Some((action, vip)) = subject_action(message.subject.as_str()) else { continue };
                match read_announcement(vip, &message.payload, &limits) {
                    Ok(announcement) => {
                        if sender.send((action, announcement)).await.is_err() {
                            return;
                        }
                    }
                    Err(reason) => {
                        metrics.announcement_messages.with_label_values(&[action.as_str(), "rejected"]).inc();
                        tracing::warn!(subject = %message.subject, %reason, "refused an announcement");
                    }
                }
            }
        });
    }
    Ok(())
}

/// The event loop's state.
struct Runner {
    config: LbConfig,
    config_path: std::path::PathBuf,
    sources: Sources,
    metrics: LbMetrics,
    status: Arc<LbStatus>,
    sync: SyncHandle,
    prober: Prober,
    /// Whether every source has reported once (the KV bucket has been read, or there is none).
    complete: bool,
    nats_connected: bool,
    nats_connects: u64,
    /// What changed since the last publish.
    dirty: Dirty,
    last_publish: Option<Instant>,
    last_rejected: Vec<Rejection>,
}

/// What changed since the last publish.
#[derive(Debug, Default, PartialEq, Eq)]
enum Dirty {
    /// Nothing.
    #[default]
    Clean,
    /// Only the announcements of these VIPs: they alone are resolved again.
    Announced(BTreeSet<String>),
    /// Anything: resolve everything.
    All,
}

impl Dirty {
    fn all(&mut self) {
        *self = Self::All;
    }

    fn announced(&mut self, vip: &str) {
        match self {
            Self::Clean => *self = Self::Announced(BTreeSet::from([vip.to_owned()])),
            Self::Announced(vips) => {
                vips.insert(vip.to_owned());
            }
            Self::All => {}
        }
    }
}

impl Runner {
    fn pruning_suspended(&self) -> bool {
        self.config.nats.as_ref().is_some_and(|n| n.suspend_pruning_if_nats_unavailable) && !self.nats_connected
    }

    fn on_announcement(&mut self, action: Action, announcement: &LbRegistration) {
        let outcome = match action {
            Action::Register => self.sources.announce(announcement, Instant::now()).map(|r| r != Renewal::Refreshed),
            Action::Unregister => self.sources.withdraw(announcement),
        };
        match outcome {
            Ok(changed) => {
                self.metrics.announcement_messages.with_label_values(&[action.as_str(), "ok"]).inc();
                if changed {
                    tracing::info!(action = action.as_str(), vip = %announcement.vip, host = %announcement.host, port = announcement.port, "backend announcement");
                }
                if changed {
                    self.dirty.announced(&announcement.vip);
                }
            }
            Err(reason) => {
                self.metrics.announcement_messages.with_label_values(&[action.as_str(), "rejected"]).inc();
                tracing::warn!(vip = %announcement.vip, %reason, "refused an announcement");
            }
        }
    }

    fn on_kv(&mut self, event: KvEvent) {
        let (key, revision) = match &event {
            KvEvent::Put { key, revision, .. } => (key.clone(), Some(*revision)),
            KvEvent::Delete { key } => (key.clone(), None),
            KvEvent::Loaded => {
                if !self.complete {
                    tracing::info!("VIP bucket read; VIPs missing from every source may now be removed");
                    self.complete = true;
                    self.dirty.all();
                }
                return;
            }
        };
        match self.sources.kv_event(event) {
            Ok(changed) => {
                self.metrics.kv_updates.with_label_values(&["ok"]).inc();
                if changed {
                    tracing::info!(vip = %key, ?revision, "VIP bucket change");
                }
                if changed {
                    self.dirty.all();
                }
            }
            Err(problem) => {
                self.metrics.kv_updates.with_label_values(&["rejected"]).inc();
                tracing::warn!(vip = %key, ?revision, %problem, "refused a VIP from the bucket; its last valid value stays in force");
                self.dirty.all();
            }
        }
    }

    fn on_probe(&mut self, result: ProbeResult) {
        let label = if result.outcome.is_ok() { "ok" } else { "failed" };
        self.metrics.health_checks.with_label_values(&[label]).inc();
        if let Some(health) = self.sources.probe_result(result.backend, result.outcome.is_ok()) {
            match (&result.outcome, health) {
                (Err(reason), Health::Down) => tracing::warn!(backend = %result.backend, %reason, "backend failed its health checks; out of rotation"),
                _ => tracing::info!(backend = %result.backend, "backend passed its health checks; back in rotation"),
            }
            self.dirty.all();
        }
    }

    fn on_link(&mut self, state: LinkState) {
        let reconnected = state.connected && state.connects > self.nats_connects && self.nats_connects > 0;
        if reconnected && self.pruning_suspended() {
            // Nobody could refresh during the outage: start every lease afresh rather than prune them all.
            self.sources.renew_all(Instant::now());
        }
        self.nats_connected = state.connected;
        self.nats_connects = state.connects;
    }

    fn on_prune_tick(&mut self) {
        if self.pruning_suspended() {
            return;
        }
        let pruned = self.sources.prune(Instant::now());
        if pruned > 0 {
            tracing::info!(backends = pruned, "pruned announcements that were not refreshed in time");
            self.metrics.pruned.inc_by(u64::try_from(pruned).unwrap_or(u64::MAX));
            self.dirty.all();
        }
    }

    fn reload(&mut self) {
        let config = match load_config(&self.config_path) {
            Ok(config) => config,
            Err(err) => {
                tracing::error!(error = %err, "reload failed; the running configuration stays in force");
                return;
            }
        };
        let restart_needed = [
            ("nats", config.nats != self.config.nats),
            ("status", config.status != self.config.status),
            ("dataplane", config.dataplane != self.config.dataplane),
            ("vip_interface", config.vip_interface != self.config.vip_interface),
            ("snat", config.snat != self.config.snat || config.snat_mark != self.config.snat_mark),
            ("sync_interval", config.sync_interval != self.config.sync_interval || config.sync_min_interval != self.config.sync_min_interval),
        ];
        for (key, changed) in restart_needed {
            if changed {
                tracing::warn!(key, "this config key changed, but takes effect only when lb restarts");
            }
        }
        self.sources.set_settings(source_settings(&config));
        self.sources.set_file(config.vips.clone());
        self.prober.set_check(config.health_check.clone());
        self.config = LbConfig { vips: config.vips, health_check: config.health_check, backend_stale_threshold: config.backend_stale_threshold, ..self.config.clone() };
        tracing::info!(file = %self.config_path.display(), "configuration reloaded");
        self.dirty.all();
    }

    /// Resolves the sources and hands the result to the status page, the prober and the sync loop.
    fn publish(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        self.last_publish = Some(Instant::now());
        if let Dirty::Announced(vips) = dirty {
            self.publish_announced(&vips);
            return;
        }
        let intent = self.sources.resolve();
        self.record(&intent);
        let backends = intent.backends();
        self.prober.track(&backends);
        self.sources.retain_health(&backends);
        self.sync.request(SyncRequest { update: SyncUpdate::All(intent.desired()), complete: self.complete });
        *self.status.intent.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(intent);
    }

    /// Publishes a change of announcements only: resolves just the VIPs concerned, in place, and hands the sync loop
    /// just their services, so one cell coming or going costs the same with 10 VIPs as with 10,000.
    fn publish_announced(&mut self, vips: &BTreeSet<String>) {
        let (intent, updates) = {
            let mut shared = self.status.intent.write().unwrap_or_else(PoisonError::into_inner);
            // Copies the intent only if a status request is reading it right now.
            let intent = Arc::make_mut(&mut shared);
            let updates: Vec<_> = vips.iter().filter_map(|vip| self.sources.refresh_vip(intent, vip)).collect();
            (Arc::clone(&shared), updates)
        };
        self.record(&intent);
        if self.prober.is_active() {
            let backends = intent.backends();
            self.prober.track(&backends);
            self.sources.retain_health(&backends);
        }
        if !updates.is_empty() {
            self.sync.request(SyncRequest { update: SyncUpdate::Services(updates), complete: self.complete });
        }
    }

    fn record(&mut self, intent: &Intent) {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        for source in [Source::File, Source::Kv] {
            self.metrics.vips.with_label_values(&[source.as_str()]).set(count(intent.vips.iter().filter(|v| v.source == source).count()));
        }
        let backends: Vec<_> = intent.vips.iter().flat_map(|v| v.resolved_backends.iter()).collect();
        for health in [Health::Up, Health::Down] {
            self.metrics.backends.with_label_values(&[health.as_str()]).set(count(backends.iter().filter(|b| b.health == health).count()));
        }
        self.metrics.rejected.set(count(intent.rejected.len()));
        self.metrics.announcements.set(count(self.sources.announcement_count()));
        for rejection in &intent.rejected {
            if !self.last_rejected.contains(rejection) {
                tracing::warn!(vip = %rejection.vip, source = rejection.source.as_str(), reason = %rejection.reason, "refused");
            }
        }
        self.last_rejected.clone_from(&intent.rejected);
    }

    /// When the next publish may happen, if one is due.
    fn publish_at(&self) -> Option<Instant> {
        if self.dirty == Dirty::Clean {
            return None;
        }
        Some(self.last_publish.map_or_else(Instant::now, |last| last + self.config.sync_min_interval))
    }
}

fn prune_interval(threshold: Duration) -> Duration {
    (threshold / 10).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

/// Parsed announcements waiting for the event loop.
const ANNOUNCEMENT_QUEUE: usize = 4096;

/// Runs `lb` until SIGTERM/SIGINT.
pub async fn run(config_path: &Path) -> Result<(), LbError> {
    let config = load_config(config_path)?;
    // Health probes hold a connection per backend at once.
    switchyard_runtime::limits::raise_open_file_limit();
    let mut signals = Signals::new().map_err(LbError::Signals)?;
    let metrics = LbMetrics::new();

    let mut kernel = Kernel::open(&config)?;
    let traffic = kernel.traffic();
    if let Some(traffic) = &traffic {
        metrics.registry.register(Box::new(traffic.collector("lb")));
    }
    let reading = Instant::now();
    kernel.prepare()?;
    let observed = kernel.observe()?;
    let seconds = reading.elapsed().as_secs_f64();
    let sources = initial_sources(&config, &observed, Instant::now());
    tracing::info!(dataplane = kernel.dataplane_name(), services = observed.services.len(), addresses = observed.addresses.len(), seconds, "read the kernel");
    let timing = LoopTiming { min_interval: config.sync_min_interval, repair_interval: config.sync_interval };
    let sync = sync::spawn(kernel, timing, metrics.clone(), Some(observed)).map_err(LbError::Thread)?;

    let status = Arc::new(LbStatus {
        intent: RwLock::new(Arc::new(Intent::default())),
        sync: Arc::clone(&sync.status),
        metrics: metrics.clone(),
        auth: BasicAuth::new(&config.status.user, &config.status.pass),
        traffic,
    });
    let listener = tokio::net::TcpListener::bind(config.status.address)
        .await
        .map_err(|source| LbError::Listen { address: config.status.address, source })?;
    let shutdown = CancellationToken::new();
    tokio::spawn(switchyard_runtime::status::serve(listener, Arc::clone(&status) as _, shutdown.clone()));
    tracing::info!(address = %config.status.address, "status listener up");

    // Bounded, so a storm that outruns the event loop waits in the NATS client's own buffer, whose overflow is
    // counted as a slow consumer, instead of growing this process without limit.
    let (announce_tx, mut announce_rx) = mpsc::channel(ANNOUNCEMENT_QUEUE);
    let (kv_tx, mut kv_rx) = mpsc::unbounded_channel();
    let (probe_tx, mut probe_rx) = mpsc::unbounded_channel();
    let (_no_link_tx, no_link) = watch::channel(LinkState::default());
    let mut link_state = no_link;
    let mut complete = true;
    if let Some(nats) = &config.nats {
        let link = switchyard_runtime::nats::connect(
            &NatsSettings::from_keys(nats.servers.clone(), nats.auth_keys(), "switchyard-lb".to_owned()),
            &metrics.registry,
        ).await.map_err(|e| LbError::Nats(e.to_string()))?;
        subscribe_announcements(&link.client, nats, announce_tx.clone(), &metrics).await?;
        tokio::spawn(kv::watch(link.client.clone(), nats.vip_bucket.clone(), kv_tx.clone()));
        link_state = link.state;
        complete = false;
    }

    let mut runner = Runner {
        prober: Prober::new(config.health_check.clone(), probe_tx),
        config_path: config_path.to_owned(),
        sources,
        metrics,
        status,
        sync,
        complete,
        nats_connected: false,
        nats_connects: 0,
        dirty: Dirty::All,
        last_publish: None,
        last_rejected: Vec::new(),
        config,
    };
    let mut prune = tokio::time::interval(prune_interval(runner.config.backend_stale_threshold));
    loop {
        let publish_at = runner.publish_at();
        let publish = async {
            match publish_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some((action, announcement)) = announce_rx.recv() => runner.on_announcement(action, &announcement),
            Some(event) = kv_rx.recv() => runner.on_kv(event),
            Some(result) = probe_rx.recv() => runner.on_probe(result),
            Ok(()) = link_state.changed() => {
                let state = *link_state.borrow_and_update();
                runner.on_link(state);
            }
            _ = prune.tick() => runner.on_prune_tick(),
            () = publish => runner.publish(),
            lifecycle = signals.next() => match lifecycle {
                Lifecycle::Reload => runner.reload(),
                Lifecycle::Stop | Lifecycle::Drain => break,
            },
        }
    }
    tracing::info!("stopping; the kernel keeps forwarding as it is");
    shutdown.cancel();
    drop(announce_tx);
    drop(kv_tx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_subjects_are_matched_exactly() {
        assert_eq!(subject_action("lb.register"), Some((Action::Register, None)));
        assert_eq!(subject_action("lb.unregister"), Some((Action::Unregister, None)));
        assert_eq!(subject_action("lb.register.web"), Some((Action::Register, Some("web"))));
        assert_eq!(subject_action("lb.unregister.web"), Some((Action::Unregister, Some("web"))));
        for other in ["lb.registered", "lb.registerweb", "lb.register.", "lb.register.a.b", "lb.unregisterx.web", "lb.other", "lb.other.web", "router.register"] {
            assert_eq!(subject_action(other), None, "{other}");
        }
    }

    #[test]
    fn a_scoped_announcement_must_name_its_subjects_vip() {
        let limits = MessageLimits::default;
        let payload = br#"{"vip":"web","host":"198.18.1.2","port":10001}"#;
        assert_eq!(read_announcement(None, payload, &limits()).unwrap().vip, "web");
        assert_eq!(read_announcement(Some("web"), payload, &limits()).unwrap().vip, "web");
        let err = read_announcement(Some("api"), payload, &limits()).unwrap_err();
        assert_eq!(err, "sent on the subject of VIP `api` but names VIP `web`");
        assert!(read_announcement(None, b"{}", &limits()).is_err());
    }

    #[test]
    fn the_unscoped_subjects_can_be_turned_off() {
        let mut nats = LbNatsConfig::default();
        assert_eq!(announcement_subjects(&nats), ["lb.*.*", "lb.*"]);
        nats.unscoped_subjects = false;
        assert_eq!(announcement_subjects(&nats), ["lb.*.*"]);
    }

    #[test]
    fn prune_checks_follow_the_threshold() {
        assert_eq!(prune_interval(Duration::from_secs(30)), Duration::from_secs(3));
        assert_eq!(prune_interval(Duration::from_millis(200)), Duration::from_millis(100));
        assert_eq!(prune_interval(Duration::from_secs(3600)), Duration::from_secs(5));
    }
}
