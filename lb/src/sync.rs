//! The kernel side of `lb`: one [`Kernel`] (dataplane plus VIP addresses) and the loop that keeps it in step
//! with the intent.
//!
//! The kernel is the only record that survives restarts and other people's edits, so `lb` diffs against what it
//! reads there, and the diff of an unchanged kernel is empty, so nothing is written. Reading is the expensive
//! part, though: reading an nftables table of 10,000 VIPs takes most of a second, while writing one VIP's chain
//! takes milliseconds. So the loop reads the kernel at start-up, after any failed sync, and on the repair timer, and in
//! between diffs a change against the state the previous syncs left (what was read, plus the plans applied since).
//! A one-backend change is then one small write. The repair timer also catches drift (someone else's edits) and
//! finishes drains whose connections have ended; it never fires more often than 20 reads' worth of time, so a
//! big ruleset is not re-read back to back.
//!
//! Syncs run on their own thread because dataplane calls block (netlink round trips, `nft` runs). The loop is
//! rate-limited, so a burst of announcements becomes one sync.

use crate::dataplane::{self, Dataplane, DataplaneError, DataplaneSettings, NFT_TABLE};
use crate::locality::VipAddresses;
use crate::metrics::LbMetrics;
use crate::model::{DesiredService, DesiredState, ObservedState, Plan, ServiceKey};
use crate::reconcile::{ReconcileOptions, reconcile, reconcile_services};
use crate::sysctl;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use switchyard_config::lb::LbConfig;

/// The forwarding machinery and the VIP addresses, driven together.
pub struct Kernel {
    dataplane: Box<dyn Dataplane>,
    addresses: VipAddresses,
}

impl Kernel {
    /// Opens the dataplane the config names. Touches nothing yet.
    pub fn open(config: &LbConfig) -> Result<Self, DataplaneError> {
        let settings = DataplaneSettings { snat: config.snat, snat_mark: config.snat_mark, nft_table: NFT_TABLE.to_owned() };
        Ok(Self { dataplane: dataplane::open(config.dataplane, settings)?, addresses: VipAddresses::new(&config.vip_interface) })
    }

    /// The dataplane's name.
    pub fn dataplane_name(&self) -> &'static str {
        self.dataplane.name()
    }

    /// The dataplane's traffic counters, if its kernel keeps them.
    pub fn traffic(&self) -> Option<crate::ipvs::Traffic> {
        self.dataplane.traffic()
    }

    /// Makes the machine ready to forward: IP forwarding, the dataplane's base objects, where VIP addresses go.
    pub fn prepare(&mut self) -> Result<(), DataplaneError> {
        sysctl::ensure("net.ipv4.ip_forward", "1")?;
        self.dataplane.prepare()?;
        self.addresses.prepare().map(drop)
    }

    /// Re-checks the dataplane's base objects (a periodic repair).
    pub fn repair(&mut self) -> Result<(), DataplaneError> {
        self.dataplane.prepare()
    }

    /// Reads what the kernel holds.
    pub fn observe(&mut self) -> Result<ObservedState, DataplaneError> {
        Ok(ObservedState { addresses: self.addresses.observe()?, services: self.dataplane.observe()? })
    }

    /// How the reconciler should plan for this dataplane in a normal sync.
    pub fn options(&self, remove_unknown_services: bool) -> ReconcileOptions {
        let keeps_zero_weight = self.dataplane.capabilities().keeps_zero_weight_destinations;
        ReconcileOptions { keeps_zero_weight, remove_unknown_services, drain: true }
    }

    /// Applies a plan computed against `observed`: new addresses and the dataplane steps, then releases.
    /// Returns how long each part took, for the log line that reports the sync.
    ///
    /// New addresses and the steps touch different kernel objects, and a VIP takes traffic only once it has both,
    /// so the two go in side by side: from empty, 10,000 addresses (a separate `ip` process) take about 0.15 s
    /// that the dataplane need not wait for. Releases wait until the steps have removed what used them.
    pub fn apply(&mut self, observed: &ObservedState, plan: &Plan) -> Result<ApplyTimes, DataplaneError> {
        if plan.add_addresses.iter().any(IpAddr::is_ipv6) {
            sysctl::ensure("net.ipv6.conf.all.forwarding", "1")?;
        }
        let Self { dataplane, addresses } = self;
        let mut add = || timed(|| addresses.apply(&plan.add_addresses, &[]));
        let mut step = || if plan.steps.is_empty() { (Ok(()), Duration::ZERO) } else { timed(|| dataplane.apply(&observed.services, &plan.steps)) };
        let ((added, adding), (stepped, stepping)) = if plan.add_addresses.is_empty() {
            (add(), step())
        } else {
            std::thread::scope(|scope| {
                let adder = scope.spawn(add);
                let stepped = step();
                (adder.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), stepped)
            })
        };
        if let (Err(address_error), Err(_)) = (&added, &stepped) {
            tracing::warn!(error = %address_error, "could not add VIP addresses");
        }
        stepped?;
        added?;
        let (released, releasing) = timed(|| addresses.apply(&[], &plan.remove_addresses));
        released?;
        Ok(ApplyTimes { addresses: adding + releasing, dataplane: stepping })
    }

    /// Removes everything `lb` owns: every owned service at once (no draining), the addresses, the dataplane's
    /// base objects and the VIP interface. Returns the plan it applied.
    pub fn cleanup(&mut self) -> Result<Plan, DataplaneError> {
        let observed = self.observe()?;
        let options = ReconcileOptions { drain: false, ..self.options(true) };
        let plan = reconcile(&DesiredState::default(), &observed, options);
        self.apply(&observed, &plan)?;
        self.dataplane.cleanup()?;
        self.addresses.cleanup()?;
        Ok(plan)
    }
}

/// Runs `work`, and says how long it took.
fn timed<T>(work: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    (work(), started.elapsed())
}

/// Where the time of applying a plan went. New addresses overlap the dataplane's steps, so the parts can add up
/// to more than the whole.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyTimes {
    /// Making VIP addresses local and releasing them (`ip -batch`).
    pub addresses: Duration,
    /// The dataplane's steps (one nft transaction, or the IPVS netlink requests).
    pub dataplane: Duration,
}

/// What the sync loop is asked to reach.
#[derive(Debug, Clone)]
pub struct SyncRequest {
    /// The desired state, or what changed in it.
    pub update: SyncUpdate,
    /// Whether every source has reported at least once; until then owned services missing from `desired` stay.
    pub complete: bool,
}

/// A new desired state, whole or as the services that changed.
#[derive(Debug, Clone)]
pub enum SyncUpdate {
    /// The whole desired state.
    All(DesiredState),
    /// New values of existing services (an announcement changed a VIP's backends). Between re-reads of the
    /// kernel, the loop plans only these services rather than comparing all of them.
    Services(Vec<(ServiceKey, DesiredService)>),
}

/// The outcome of the latest syncs, for `/vips` and `/health`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncStatus {
    /// Dataplane name.
    pub dataplane: &'static str,
    /// Syncs run.
    pub syncs: u64,
    /// Unix time (seconds) of the last successful sync.
    pub last_success_unix: Option<u64>,
    /// Changes applied by the last successful sync.
    pub last_plan_size: usize,
    /// The error of the last sync, if it failed.
    pub last_error: Option<String>,
    /// Desired services left alone because someone else owns them in the kernel.
    pub conflicts: Vec<String>,
}

/// Timing of the loop.
#[derive(Debug, Clone, Copy)]
pub struct LoopTiming {
    /// Shortest gap between two syncs.
    pub min_interval: Duration,
    /// Longest gap: the kernel is re-read and repaired at least this often.
    pub repair_interval: Duration,
}

/// Feeds the sync loop. Dropping it stops the loop after the sync in progress.
pub struct SyncHandle {
    requests: Sender<SyncRequest>,
    /// Shared outcome of the syncs.
    pub status: Arc<Mutex<SyncStatus>>,
}

impl SyncHandle {
    /// Asks for the kernel to reach `request`; newer requests replace older ones not yet synced.
    pub fn request(&self, request: SyncRequest) {
        // A send error means the loop thread has ended, which only happens at shutdown.
        let _ = self.requests.send(request);
    }
}

/// Starts the sync loop on its own thread. `observed` is a fresh reading of the kernel, if the caller has one.
pub fn spawn(kernel: Kernel, timing: LoopTiming, metrics: LbMetrics, observed: Option<ObservedState>) -> std::io::Result<SyncHandle> {
    let (requests, receiver) = channel();
    let status = Arc::new(Mutex::new(SyncStatus { dataplane: kernel.dataplane_name(), ..SyncStatus::default() }));
    let mut syncer = Syncer {
        kernel,
        timing,
        metrics,
        status: Arc::clone(&status),
        known: observed,
        next_repair: Instant::now() + timing.repair_interval,
        desired: None,
        complete: false,
        touched: None,
        pending: false,
        conflicts: Vec::new(),
    };
    std::thread::Builder::new().name("lb-sync".to_owned()).spawn(move || syncer.run(&receiver))?;
    Ok(SyncHandle { requests, status })
}


/// A full read of the kernel is spaced at least this many read-durations apart.
const READS_BETWEEN_REPAIRS: u32 = 20;

struct Syncer {
    kernel: Kernel,
    timing: LoopTiming,
    metrics: LbMetrics,
    status: Arc<Mutex<SyncStatus>>,
    /// What the kernel holds, as of the last read plus the plans applied since; `None` forces a read.
    known: Option<ObservedState>,
    next_repair: Instant,
    /// The desired state, as of every request received; `None` until the first.
    desired: Option<DesiredState>,
    /// Whether every source has reported, as of the last request.
    complete: bool,
    /// Services changed since the last successful sync; `None`: anything may have, plan everything.
    touched: Option<BTreeSet<ServiceKey>>,
    /// Whether a request arrived since the last sync.
    pending: bool,
    /// Conflicts found by the last full plan; a plan of a few services keeps reporting them.
    conflicts: Vec<ServiceKey>,
}

impl Syncer {
    /// Waits until `deadline` for requests and folds in every one that arrived. Returns false once the sender is
    /// gone.
    fn receive(&mut self, receiver: &Receiver<SyncRequest>, deadline: Instant) -> bool {
        match receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(request) => self.take(request),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return false,
        }
        while let Ok(request) = receiver.try_recv() {
            self.take(request);
        }
        true
    }

    fn take(&mut self, request: SyncRequest) {
        if request.complete != self.complete {
            self.touched = None;
        }
        self.complete = request.complete;
        match (request.update, &mut self.desired) {
            (SyncUpdate::Services(services), Some(desired)) => {
                for (key, service) in services {
                    if let Some(touched) = &mut self.touched {
                        touched.insert(key);
                    }
                    desired.services.insert(key, service);
                }
            }
            (SyncUpdate::All(desired), _) => {
                self.desired = Some(desired);
                self.touched = None;
            }
            // Changes to a state never received: the whole state comes first, so this does not happen.
            (SyncUpdate::Services(_), None) => return,
        }
        self.pending = true;
    }

    fn run(&mut self, receiver: &Receiver<SyncRequest>) {
        let mut retry_at: Option<Instant> = None;
        let mut last_sync: Option<Instant> = None;
        loop {
            let deadline = retry_at.map_or(self.next_repair, |retry| retry.min(self.next_repair));
            if !self.receive(receiver, deadline) {
                return;
            }
            // Rate limit: gather whatever else arrives during the pause into the same sync.
            if let Some(last) = last_sync {
                let pause = self.timing.min_interval.saturating_sub(last.elapsed());
                if !pause.is_zero() && !self.receive(receiver, Instant::now() + pause) {
                    return;
                }
            }
            if self.desired.is_none() {
                continue;
            }
            if !self.pending {
                // Woken by the repair timer or a retry: plan everything.
                self.touched = None;
            }
            let started = Instant::now();
            let outcome = self.sync_once();
            last_sync = Some(Instant::now());
            self.metrics.sync_duration.observe(started.elapsed().as_secs_f64());
            let failed = self.record(outcome);
            self.pending = false;
            self.touched = (!failed).then(BTreeSet::new);
            retry_at = failed.then(|| Instant::now() + self.timing.repair_interval.min(Duration::from_secs(1)));
        }
    }

    /// Records the outcome; returns whether the sync failed (and so must be retried).
    fn record(&self, outcome: Result<Plan, DataplaneError>) -> bool {
        let mut shared = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        shared.syncs += 1;
        match outcome {
            Ok(plan) => {
                self.metrics.syncs.with_label_values(&["ok"]).inc();
                record_plan(&self.metrics, &plan);
                shared.last_success_unix = Some(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
                shared.last_plan_size = plan.len();
                shared.last_error = None;
                shared.conflicts = plan.conflicts.iter().map(ToString::to_string).collect();
                false
            }
            Err(err) => {
                self.metrics.syncs.with_label_values(&["error"]).inc();
                let advice = if err.is_retryable() { "retrying" } else { "retrying, but this needs an operator" };
                tracing::error!(error = %err, "kernel sync failed; {advice}");
                shared.last_error = Some(err.to_string());
                true
            }
        }
    }

    /// The kernel state to diff against: read afresh when due (or unknown), else the state previous syncs left.
    /// Takes the known state out of `self.known`: until the sync succeeds and puts it back, the next one reads the
    /// kernel again.
    /// Also tells whether it was read afresh.
    fn kernel_state(&mut self) -> Result<(ObservedState, bool), DataplaneError> {
        let repair = Instant::now() >= self.next_repair;
        if !repair && let Some(known) = self.known.take() {
            return Ok((known, false));
        }
        self.known = None;
        let started = Instant::now();
        if repair {
            self.kernel.repair()?;
        }
        let observed = self.kernel.observe()?;
        let seconds = started.elapsed();
        tracing::debug!(seconds = seconds.as_secs_f64(), services = observed.services.len(), "read the kernel");
        let spacing = (seconds * READS_BETWEEN_REPAIRS).max(self.timing.repair_interval);
        self.next_repair = Instant::now() + spacing;
        Ok((observed, true))
    }

    /// One sync: plan against the kernel state, apply, remember the result. Logs every change it makes.
    fn sync_once(&mut self) -> Result<Plan, DataplaneError> {
        let started = Instant::now();
        if self.known.is_none() {
            // After a failure the kernel may hold anything between the old and the new state: read it.
            self.next_repair = Instant::now();
        }
        // Only against the state previous syncs left can a plan skip the services that did not change.
        let (mut state, read) = self.kernel_state()?;
        let Some(desired) = &self.desired else { return Ok(Plan::default()) };
        let options = self.kernel.options(self.complete);
        let partial = match &self.touched {
            Some(touched) if !read => reconcile_services(desired, &state, options, touched),
            _ => None,
        };
        let plan = match partial {
            Some(mut plan) => {
                plan.conflicts.clone_from(&self.conflicts);
                plan
            }
            None => {
                let plan = reconcile(desired, &state, options);
                self.conflicts.clone_from(&plan.conflicts);
                plan
            }
        };
        let planned = started.elapsed();
        for conflict in &plan.conflicts {
            tracing::warn!(service = %conflict, "the kernel already has this service and lb does not own it; leaving it alone");
        }
        if !plan.is_empty() {
            log_changes(&plan);
            let times = self.kernel.apply(&state, &plan)?;
            tracing::info!(
                changes = plan.len(),
                seconds = started.elapsed().as_secs_f64(),
                plan_seconds = planned.as_secs_f64(),
                dataplane_seconds = times.dataplane.as_secs_f64(),
                addresses_seconds = times.addresses.as_secs_f64(),
                "kernel updated"
            );
            plan.apply_to(&mut state);
        }
        self.known = Some(state);
        Ok(plan)
    }
}

/// Plans up to this size are logged change by change; a bigger one (a start from empty, a big reload) is logged as
/// a count per kind, its changes at debug level, so a 100,000-change sync does not spend longer writing its log
/// than the kernel spends applying it.
const LOGGED_CHANGES: usize = 100;

fn log_changes(plan: &Plan) {
    let large = plan.len() > LOGGED_CHANGES;
    if large {
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for step in &plan.steps {
            *kinds.entry(step.kind()).or_default() += 1;
        }
        kinds.insert("add_address", plan.add_addresses.len());
        kinds.insert("remove_address", plan.remove_addresses.len());
        let kinds: Vec<String> = kinds.into_iter().filter(|(_, n)| *n > 0).map(|(kind, n)| format!("{kind}={n}")).collect();
        tracing::info!(changes = plan.len(), kinds = %kinds.join(" "), "sync (each change at debug level)");
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
    }
    for line in plan.to_string().lines() {
        if large {
            tracing::debug!(change = line, "sync");
        } else {
            tracing::info!(change = line, "sync");
        }
    }
}

fn record_plan(metrics: &LbMetrics, plan: &Plan) {
    metrics.conflicts.set(i64::try_from(plan.conflicts.len()).unwrap_or(i64::MAX));
    if plan.is_empty() {
        return;
    }
    #[allow(clippy::cast_precision_loss)] // plan sizes are far below 2^52
    metrics.plan_size.observe(plan.len() as f64);
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    metrics.plan_changes.with_label_values(&["add_address"]).inc_by(count(plan.add_addresses.len()));
    metrics.plan_changes.with_label_values(&["remove_address"]).inc_by(count(plan.remove_addresses.len()));
    for step in &plan.steps {
        metrics.plan_changes.with_label_values(&[step.kind()]).inc();
    }
}
