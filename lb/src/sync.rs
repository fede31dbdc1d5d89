//! The kernel side of `lb`: one [`Kernel`] (dataplane plus VIP addresses) and the loop that keeps it in step
//! with the intent.
//!
//! Every sync observes the kernel afresh and diffs against it, rather than trusting a cached picture: the kernel
//! is the only record that survives restarts and other people's edits, and the diff of an unchanged kernel is
//! empty, so nothing is written. Syncs run on their own thread because dataplane calls block (netlink round trips,
//! `nft` runs). The loop is rate-limited (a burst of announcements becomes one sync) and also wakes on a timer to
//! repair drift and to finish drains whose connections have ended.

use crate::dataplane::{self, Dataplane, DataplaneError, DataplaneSettings, NFT_TABLE};
use crate::locality::VipAddresses;
use crate::metrics::LbMetrics;
use crate::model::{DesiredState, ObservedState, Plan};
use crate::reconcile::{ReconcileOptions, reconcile};
use crate::sysctl;
use serde::Serialize;
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

    /// Applies a plan computed against `observed`: addresses first, then the dataplane steps, then releases.
    pub fn apply(&mut self, observed: &ObservedState, plan: &Plan) -> Result<(), DataplaneError> {
        if plan.add_addresses.iter().any(IpAddr::is_ipv6) {
            sysctl::ensure("net.ipv6.conf.all.forwarding", "1")?;
        }
        self.addresses.apply(&plan.add_addresses, &[])?;
        if !plan.steps.is_empty() {
            self.dataplane.apply(&observed.services, &plan.steps)?;
        }
        self.addresses.apply(&[], &plan.remove_addresses)
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

/// What the sync loop is asked to reach.
#[derive(Debug, Clone)]
pub struct SyncRequest {
    /// The desired state.
    pub desired: DesiredState,
    /// Whether every source has reported at least once; until then owned services missing from `desired` stay.
    pub complete: bool,
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
    requests: Sender<Arc<SyncRequest>>,
    /// Shared outcome of the syncs.
    pub status: Arc<Mutex<SyncStatus>>,
}

impl SyncHandle {
    /// Asks for the kernel to reach `request`; newer requests replace older ones not yet synced.
    pub fn request(&self, request: SyncRequest) {
        // A send error means the loop thread has ended, which only happens at shutdown.
        let _ = self.requests.send(Arc::new(request));
    }
}

/// Starts the sync loop on its own thread.
pub fn spawn(kernel: Kernel, timing: LoopTiming, metrics: LbMetrics) -> std::io::Result<SyncHandle> {
    let (requests, receiver) = channel();
    let status = Arc::new(Mutex::new(SyncStatus { dataplane: kernel.dataplane_name(), ..SyncStatus::default() }));
    let loop_status = Arc::clone(&status);
    std::thread::Builder::new().name("lb-sync".to_owned()).spawn(move || run_loop(kernel, &receiver, timing, &metrics, &loop_status))?;
    Ok(SyncHandle { requests, status })
}

/// Waits until `deadline` for requests; keeps only the newest. Returns false once the sender is gone.
fn receive(receiver: &Receiver<Arc<SyncRequest>>, deadline: Instant, current: &mut Option<Arc<SyncRequest>>) -> bool {
    match receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(request) => *current = Some(request),
        Err(RecvTimeoutError::Timeout) => {}
        Err(RecvTimeoutError::Disconnected) => return false,
    }
    while let Ok(request) = receiver.try_recv() {
        *current = Some(request);
    }
    true
}

fn run_loop(mut kernel: Kernel, receiver: &Receiver<Arc<SyncRequest>>, timing: LoopTiming, metrics: &LbMetrics, status: &Mutex<SyncStatus>) {
    let mut current: Option<Arc<SyncRequest>> = None;
    let mut next_repair = Instant::now() + timing.repair_interval;
    let mut retry_at: Option<Instant> = None;
    let mut last_sync: Option<Instant> = None;
    loop {
        let deadline = retry_at.map_or(next_repair, |retry| retry.min(next_repair));
        if !receive(receiver, deadline, &mut current) {
            return;
        }
        let Some(request) = current.clone() else { continue };
        // Rate limit: gather whatever else arrives during the pause into the same sync.
        if let Some(last) = last_sync {
            let pause = timing.min_interval.saturating_sub(last.elapsed());
            if !pause.is_zero() && !receive(receiver, Instant::now() + pause, &mut current) {
                return;
            }
        }
        let request = current.clone().unwrap_or(request);
        let repair = Instant::now() >= next_repair;
        let started = Instant::now();
        let outcome = sync_once(&mut kernel, &request, repair);
        last_sync = Some(Instant::now());
        if repair {
            next_repair = Instant::now() + timing.repair_interval;
        }
        metrics.sync_duration.observe(started.elapsed().as_secs_f64());
        let mut shared = status.lock().unwrap_or_else(PoisonError::into_inner);
        shared.syncs += 1;
        match outcome {
            Ok(plan) => {
                metrics.syncs.with_label_values(&["ok"]).inc();
                record_plan(metrics, &plan);
                shared.last_success_unix = Some(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
                shared.last_plan_size = plan.len();
                shared.last_error = None;
                shared.conflicts = plan.conflicts.iter().map(ToString::to_string).collect();
                retry_at = None;
            }
            Err(err) => {
                metrics.syncs.with_label_values(&["error"]).inc();
                let advice = if err.is_retryable() { "retrying" } else { "retrying, but this needs an operator" };
                tracing::error!(error = %err, "kernel sync failed; {advice}");
                shared.last_error = Some(err.to_string());
                retry_at = Some(Instant::now() + timing.repair_interval.min(Duration::from_secs(1)));
            }
        }
    }
}

/// One sync: observe, plan, apply. Logs every change it makes.
fn sync_once(kernel: &mut Kernel, request: &SyncRequest, repair: bool) -> Result<Plan, DataplaneError> {
    if repair {
        kernel.repair()?;
    }
    let observed = kernel.observe()?;
    let plan = reconcile(&request.desired, &observed, kernel.options(request.complete));
    for conflict in &plan.conflicts {
        tracing::warn!(service = %conflict, "the kernel already has this service and lb does not own it; leaving it alone");
    }
    if plan.is_empty() {
        return Ok(plan);
    }
    for line in plan.to_string().lines() {
        tracing::info!(change = line, "sync");
    }
    kernel.apply(&observed, &plan)?;
    Ok(plan)
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
