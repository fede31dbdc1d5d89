//! Desired state from three sources through one code path: the config file, the JetStream KV bucket and cell
//! announcements all land in [`Sources`], and [`Sources::resolve`] turns them into one [`Intent`].
//!
//! Start-up, a SIGHUP reload, a KV update and an announcement are the same operation: change one source, resolve,
//! diff. The rules for disagreements are fixed here, in one place:
//! - The file wins over the bucket: a KV VIP whose name the file uses is ignored and reported. The file is the
//!   local operator's explicit word; the bucket is fleet-wide.
//! - Two VIPs may not share `address:port/protocol`; among KV VIPs the one published first keeps it.
//! - A static backend wins over an announcement of the same backend; a backend adopted from the kernel at
//!   start-up counts only while nobody else names it.
//! - Bad input is refused and reported, and loses nothing: an invalid KV value leaves the last valid one in force.

use crate::health::{Health, HealthState, Thresholds};
use crate::kv::KvEvent;
use crate::leases::{Leases, Renewal};
use crate::model::{DesiredService, DesiredState, DestinationKey, ServiceKey, ServiceSettings};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use switchyard_config::lb::{VipSpec, check_backend};
use switchyard_config::messages::LbRegistration;

/// Where a VIP or a backend came from, as `/vips` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The config file.
    File,
    /// The JetStream KV bucket.
    Kv,
    /// A cell's announcement on NATS.
    Nats,
    /// Found in the kernel at start-up, kept until cells re-announce it or its lease runs out.
    Kernel,
}

impl Source {
    /// The lowercase name, as `/vips` and metrics labels write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Kv => "kv",
            Self::Nats => "nats",
            Self::Kernel => "kernel",
        }
    }
}

/// Settings that shape how sources resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceSettings {
    /// Lease of an announcement (and of an adopted backend) unless the announcement asks for less.
    pub stale_threshold: Duration,
    /// Health-check thresholds.
    pub thresholds: Thresholds,
    /// Whether backends are probed; without probing every backend counts as up.
    pub health_checks: bool,
    /// Whether cells can announce backends (NATS is configured); only then are kernel backends adopted.
    pub announcements: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct KvEntry {
    /// The last valid value, with the revision at which the key first held a valid value (so an update does not
    /// make a VIP "newer" than one that was published after it).
    valid: Option<(u64, VipSpec)>,
    /// The problem with the latest value, if it was refused.
    problem: Option<String>,
}

/// Every source of desired state.
#[derive(Debug, Clone)]
pub struct Sources {
    settings: SourceSettings,
    file: Vec<VipSpec>,
    kv: BTreeMap<String, KvEntry>,
    announcements: Leases<String>,
    adopted: Leases<ServiceKey>,
    health: BTreeMap<DestinationKey, HealthState>,
}

/// A backend as resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedBackend {
    /// Cell address.
    pub host: IpAddr,
    /// NodePort.
    pub port: u16,
    /// Weight asked for.
    pub weight: u32,
    /// Weight given to the kernel: 0 while the backend is down.
    pub effective_weight: u32,
    /// Health.
    pub health: Health,
    /// Who named it.
    pub source: Source,
}

impl ResolvedBackend {
    /// Identity.
    pub fn key(&self) -> DestinationKey {
        DestinationKey { address: self.host, port: self.port }
    }
}

/// A VIP as resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedVip {
    /// The VIP (its `backends` are the static ones; `resolved_backends` has them all).
    #[serde(flatten)]
    pub spec: VipSpec,
    /// Who declared it.
    pub source: Source,
    /// Every backend, in address order.
    #[serde(rename = "backends")]
    pub resolved_backends: Vec<ResolvedBackend>,
}

impl ResolvedVip {
    /// What the kernel should hold for this VIP.
    pub fn desired(&self) -> DesiredService {
        let settings = ServiceSettings { scheduler: self.spec.scheduler, persistence: self.spec.persistence_timeout };
        let destinations = self.resolved_backends.iter().map(|b| (b.key(), b.effective_weight)).collect();
        DesiredService { settings, destinations }
    }
}

/// Something refused while resolving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// Source of the refused item.
    pub source: Source,
    /// VIP name (or KV key) it concerned.
    pub vip: String,
    /// Why, as a sentence.
    pub reason: String,
}

/// The resolved desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Intent {
    /// VIPs by name.
    pub vips: Vec<ResolvedVip>,
    /// What was refused.
    pub rejected: Vec<Rejection>,
}

impl Intent {
    /// What the kernel should hold.
    pub fn desired(&self) -> DesiredState {
        DesiredState { services: self.vips.iter().map(|vip| (vip.spec.key(), vip.desired())).collect() }
    }

    /// Every backend that should be probed, each once.
    pub fn backends(&self) -> BTreeSet<DestinationKey> {
        self.vips.iter().flat_map(|vip| vip.resolved_backends.iter().map(ResolvedBackend::key)).collect()
    }
}

impl Sources {
    /// No VIPs, no backends.
    pub fn new(settings: SourceSettings) -> Self {
        Self {
            settings,
            file: Vec::new(),
            kv: BTreeMap::new(),
            announcements: Leases::default(),
            adopted: Leases::default(),
            health: BTreeMap::new(),
        }
    }

    /// Replaces the settings (on reload).
    pub fn set_settings(&mut self, settings: SourceSettings) {
        self.settings = settings;
    }

    /// Replaces the file's VIPs (already validated as a whole by the config loader).
    pub fn set_file(&mut self, vips: Vec<VipSpec>) -> bool {
        let changed = self.file != vips;
        self.file = vips;
        changed
    }

    /// A KV put of `key` at `revision`. An invalid value is refused with the reason, and the last valid value of
    /// the key stays in force.
    pub fn kv_put(&mut self, key: &str, revision: u64, payload: &[u8]) -> Result<bool, String> {
        let parsed = VipSpec::from_json(payload).map_err(|e| e.to_string()).and_then(|loaded| {
            if loaded.value.name == key {
                Ok(loaded.value)
            } else {
                Err(format!("the key `{key}` holds a VIP named `{}`; the key must be the VIP's name", loaded.value.name))
            }
        });
        let entry = self.kv.entry(key.to_owned()).or_insert(KvEntry { valid: None, problem: None });
        match parsed {
            Ok(spec) => {
                let changed = entry.valid.as_ref().is_none_or(|(_, old)| *old != spec) || entry.problem.is_some();
                let since = entry.valid.as_ref().map_or(revision, |(since, _)| *since);
                entry.valid = Some((since, spec));
                entry.problem = None;
                Ok(changed)
            }
            Err(problem) => {
                entry.problem = Some(problem.clone());
                Err(problem)
            }
        }
    }

    /// One event of the KV watch; returns whether the intent changed, or why a value was refused. The `Loaded`
    /// marker changes nothing here (the caller tracks it).
    pub fn kv_event(&mut self, event: KvEvent) -> Result<bool, String> {
        match event {
            KvEvent::Put { key, revision, value } => self.kv_put(&key, revision, &value),
            KvEvent::Delete { key } => Ok(self.kv_delete(&key)),
            KvEvent::Loaded => Ok(false),
        }
    }

    /// A KV delete or purge of `key`.
    pub fn kv_delete(&mut self, key: &str) -> bool {
        self.kv.remove(key).is_some()
    }

    /// An `lb.register` announcement (already checked by [`LbRegistration::check`]).
    pub fn announce(&mut self, announcement: &LbRegistration, now: Instant) -> Result<Renewal, String> {
        let backend = announced_backend(announcement)?;
        let stale = self.settings.stale_threshold;
        let ttl = match announcement.stale_threshold_in_seconds {
            0 => stale,
            seconds => Duration::from_secs(seconds).min(stale),
        };
        self.forget_adopted(&announcement.vip, &backend);
        Ok(self.announcements.renew(&announcement.vip, backend, announcement.weight, ttl, now))
    }

    /// An `lb.unregister` announcement; returns whether the backend was there.
    pub fn withdraw(&mut self, announcement: &LbRegistration) -> Result<bool, String> {
        let backend = announced_backend(announcement)?;
        let adopted = self.forget_adopted(&announcement.vip, &backend);
        Ok(self.announcements.remove(&announcement.vip, &backend) || adopted)
    }

    /// Drops an adopted backend that a cell now speaks for itself.
    fn forget_adopted(&mut self, vip: &str, backend: &DestinationKey) -> bool {
        let key = self.file.iter().chain(self.kv.values().filter_map(|e| e.valid.as_ref().map(|(_, s)| s))).find(|s| s.name == vip).map(VipSpec::key);
        key.is_some_and(|key| self.adopted.remove(&key, backend))
    }

    /// Adopts the backends the kernel forwards to that no static list names, leased like announcements, so a
    /// restart keeps them until cells re-announce (or stop). Only when announcements are possible at all.
    pub fn adopt<'a>(&mut self, kernel: impl IntoIterator<Item = (ServiceKey, DestinationKey, u32)> + 'a, now: Instant) -> usize {
        if !self.settings.announcements {
            return 0;
        }
        let statics: BTreeSet<(ServiceKey, DestinationKey)> = self
            .file
            .iter()
            .flat_map(|vip| vip.backends.iter().map(|b| (vip.key(), DestinationKey { address: b.host, port: b.port })))
            .collect();
        let mut adopted = 0;
        for (service, backend, weight) in kernel {
            if statics.contains(&(service, backend)) {
                continue;
            }
            // A backend the kernel held at weight 0 was out of rotation: it must pass its checks to come back.
            let (weight, health) = if weight == 0 { (1, HealthState::down()) } else { (weight, HealthState::new()) };
            self.adopted.renew(&service, backend, weight, self.settings.stale_threshold, now);
            if self.settings.health_checks {
                self.health.entry(backend).or_insert(health);
            }
            adopted += 1;
        }
        adopted
    }

    /// Prunes announcements and adopted backends whose lease ran out; returns how many went.
    pub fn prune(&mut self, now: Instant) -> usize {
        self.announcements.prune(now).len() + self.adopted.prune(now).len()
    }

    /// Treats every lease as fresh (NATS came back after an outage nobody could announce through).
    pub fn renew_all(&mut self, now: Instant) {
        self.announcements.renew_all(now);
        self.adopted.renew_all(now);
    }

    /// A probe result for `backend`; returns the new health when it changed.
    pub fn probe_result(&mut self, backend: DestinationKey, success: bool) -> Option<Health> {
        let thresholds = self.settings.thresholds;
        self.health.entry(backend).or_default().record(success, thresholds)
    }

    /// Forgets the health of backends no longer probed, so one that comes back later starts fresh.
    pub fn retain_health(&mut self, probed: &BTreeSet<DestinationKey>) {
        self.health.retain(|key, _| probed.contains(key));
    }

    /// How many announcements are held.
    pub fn announcement_count(&self) -> usize {
        self.announcements.len()
    }

    fn health_of(&self, backend: &DestinationKey) -> Health {
        if !self.settings.health_checks {
            return Health::Up;
        }
        self.health.get(backend).map_or(Health::Up, HealthState::health)
    }

    /// Resolves every source into one intent.
    pub fn resolve(&self) -> Intent {
        let mut intent = Intent::default();
        let mut by_key: BTreeMap<ServiceKey, String> = BTreeMap::new();
        let mut vips: Vec<(&VipSpec, Source)> = Vec::new();
        for spec in &self.file {
            by_key.insert(spec.key(), spec.name.clone());
            vips.push((spec, Source::File));
        }
        let file_names: BTreeSet<&str> = self.file.iter().map(|s| s.name.as_str()).collect();
        let mut kv: Vec<(&String, &KvEntry)> = self.kv.iter().collect();
        kv.sort_by_key(|(name, entry)| (entry.valid.as_ref().map(|(revision, _)| *revision), *name));
        for (name, entry) in kv {
            if let Some(problem) = &entry.problem {
                intent.rejected.push(Rejection { source: Source::Kv, vip: name.clone(), reason: problem.clone() });
            }
            let Some((_, spec)) = &entry.valid else { continue };
            if file_names.contains(spec.name.as_str()) {
                let reason = "the config file declares a VIP of this name, and the file wins".to_owned();
                intent.rejected.push(Rejection { source: Source::Kv, vip: name.clone(), reason });
                continue;
            }
            if let Some(owner) = by_key.get(&spec.key()) {
                let reason = format!("{} is already served by VIP `{owner}`", spec.key());
                intent.rejected.push(Rejection { source: Source::Kv, vip: name.clone(), reason });
                continue;
            }
            by_key.insert(spec.key(), spec.name.clone());
            vips.push((spec, Source::Kv));
        }
        vips.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        intent.vips = vips.into_iter().map(|(spec, source)| self.resolve_vip(spec, source, &mut intent.rejected)).collect();
        intent
    }

    /// Resolves the VIP `name` of `intent` again, after its announcements changed (nothing else: which VIPs exist
    /// and what they are is the business of [`Sources::resolve`]). Returns its service and what the kernel should
    /// now hold for it; `None` if the intent has no such VIP.
    pub fn refresh_vip(&self, intent: &mut Intent, name: &str) -> Option<(ServiceKey, DesiredService)> {
        let index = intent.vips.binary_search_by(|vip| vip.spec.name.as_str().cmp(name)).ok()?;
        let slot = intent.vips.get_mut(index)?;
        let mut rejected = Vec::new();
        *slot = self.resolve_vip(&slot.spec, slot.source, &mut rejected);
        let refreshed = (slot.spec.key(), slot.desired());
        intent.rejected.retain(|r| !(r.source == Source::Nats && r.vip == name));
        intent.rejected.extend(rejected);
        Some(refreshed)
    }

    fn resolve_vip(&self, spec: &VipSpec, source: Source, rejected: &mut Vec<Rejection>) -> ResolvedVip {
        let mut backends: BTreeMap<DestinationKey, (u32, Source)> = BTreeMap::new();
        for backend in &spec.backends {
            backends.insert(DestinationKey { address: backend.host, port: backend.port }, (backend.weight, source));
        }
        for (backend, weight) in self.announcements.group(&spec.name) {
            if backends.contains_key(&backend) {
                continue;
            }
            match check_backend("", spec.address, backend.address, backend.port, weight) {
                Ok(()) => {
                    backends.insert(backend, (weight, Source::Nats));
                }
                Err(err) => rejected.push(Rejection {
                    source: Source::Nats,
                    vip: spec.name.clone(),
                    reason: format!("announcement of {backend}: {}", err.problem),
                }),
            }
        }
        for (backend, weight) in self.adopted.group(&spec.key()) {
            backends.entry(backend).or_insert((weight, Source::Kernel));
        }
        let resolved_backends = backends
            .into_iter()
            .map(|(key, (weight, source))| {
                let health = self.health_of(&key);
                let effective_weight = if health == Health::Up { weight } else { 0 };
                ResolvedBackend { host: key.address, port: key.port, weight, effective_weight, health, source }
            })
            .collect();
        ResolvedVip { spec: spec.clone(), source, resolved_backends }
    }
}

fn announced_backend(announcement: &LbRegistration) -> Result<DestinationKey, String> {
    let address: IpAddr = announcement.host.parse().map_err(|_| format!("`host` {:?} is not an IP address", announcement.host))?;
    if announcement.weight > switchyard_config::lb::MAX_WEIGHT {
        return Err(format!("`weight` {} is over the limit of {}", announcement.weight, switchyard_config::lb::MAX_WEIGHT));
    }
    Ok(DestinationKey { address, port: announcement.port })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_config::lb::{BackendSpec, Protocol, Scheduler};

    fn settings() -> SourceSettings {
        SourceSettings {
            stale_threshold: Duration::from_secs(30),
            thresholds: Thresholds { rise: 2, fall: 3 },
            health_checks: true,
            announcements: true,
        }
    }

    fn spec(name: &str, last: u8, backends: &[(u8, u16)]) -> VipSpec {
        VipSpec {
            name: name.to_owned(),
            address: IpAddr::from([198, 18, 2, last]),
            port: 80,
            protocol: Protocol::Tcp,
            scheduler: Scheduler::Rr,
            persistence_timeout: Duration::ZERO,
            backends: backends.iter().map(|(b, port)| BackendSpec { host: IpAddr::from([198, 18, 1, *b]), port: *port, weight: 1 }).collect(),
        }
    }

    fn cell(last: u8, port: u16) -> DestinationKey {
        DestinationKey { address: IpAddr::from([198, 18, 1, last]), port }
    }

    fn announcement(vip: &str, last: u8, port: u16) -> LbRegistration {
        LbRegistration { vip: vip.to_owned(), host: format!("198.18.1.{last}"), port, weight: 1, stale_threshold_in_seconds: 0 }
    }

    fn backends_of(intent: &Intent, name: &str) -> Vec<(DestinationKey, u32, Source)> {
        let vip = intent.vips.iter().find(|v| v.spec.name == name).expect("vip present");
        vip.resolved_backends.iter().map(|b| (b.key(), b.effective_weight, b.source)).collect()
    }

    #[test]
    fn file_kv_and_announcements_merge() {
        let now = Instant::now();
        let mut sources = Sources::new(settings());
        assert!(sources.set_file(vec![spec("web", 10, &[(2, 10001)])]));
        let kv = serde_json::to_vec(&spec("api", 11, &[])).unwrap();
        assert_eq!(sources.kv_put("api", 1, &kv), Ok(true));
        assert_eq!(sources.announce(&announcement("web", 3, 10001), now), Ok(Renewal::Added));
        assert_eq!(sources.announce(&announcement("api", 3, 10002), now), Ok(Renewal::Added));
        let intent = sources.resolve();
        assert_eq!(intent.vips.iter().map(|v| (v.spec.name.as_str(), v.source)).collect::<Vec<_>>(), vec![("api", Source::Kv), ("web", Source::File)]);
        assert_eq!(backends_of(&intent, "web"), vec![(cell(2, 10001), 1, Source::File), (cell(3, 10001), 1, Source::Nats)]);
        assert_eq!(backends_of(&intent, "api"), vec![(cell(3, 10002), 1, Source::Nats)]);
        assert!(intent.rejected.is_empty());
        let desired = intent.desired();
        assert_eq!(desired.services.len(), 2);
        assert_eq!(intent.backends().len(), 3);
    }

    #[test]
    fn unregister_and_staleness_remove_announced_backends() {
        let start = Instant::now();
        let mut sources = Sources::new(settings());
        sources.set_file(vec![spec("web", 10, &[])]);
        sources.announce(&announcement("web", 2, 10001), start).unwrap();
        let mut short = announcement("web", 3, 10001);
        short.stale_threshold_in_seconds = 5;
        sources.announce(&short, start).unwrap();
        assert_eq!(sources.withdraw(&announcement("web", 2, 10001)), Ok(true));
        assert_eq!(sources.withdraw(&announcement("web", 2, 10001)), Ok(false));
        assert_eq!(sources.prune(start + Duration::from_secs(4)), 0);
        assert_eq!(sources.prune(start + Duration::from_secs(5)), 1);
        assert!(backends_of(&sources.resolve(), "web").is_empty());
        // A per-announcement threshold may only shorten the configured one.
        let mut long = announcement("web", 4, 10001);
        long.stale_threshold_in_seconds = 3600;
        sources.announce(&long, start).unwrap();
        assert_eq!(sources.prune(start + Duration::from_secs(30)), 1);
    }

    #[test]
    fn a_failing_backend_drops_to_weight_zero_but_stays() {
        let mut sources = Sources::new(settings());
        sources.set_file(vec![spec("web", 10, &[(2, 10001), (3, 10001)])]);
        assert_eq!(sources.probe_result(cell(3, 10001), false), Some(Health::Down));
        let intent = sources.resolve();
        assert_eq!(backends_of(&intent, "web"), vec![(cell(2, 10001), 1, Source::File), (cell(3, 10001), 0, Source::File)]);
        assert_eq!(intent.desired().services.values().next().unwrap().destinations.len(), 2);
        sources.probe_result(cell(3, 10001), true);
        assert_eq!(sources.probe_result(cell(3, 10001), true), Some(Health::Up));
        assert_eq!(backends_of(&sources.resolve(), "web")[1].1, 1);
    }

    #[test]
    fn without_health_checks_everything_is_up() {
        let mut sources = Sources::new(SourceSettings { health_checks: false, ..settings() });
        sources.set_file(vec![spec("web", 10, &[(2, 10001)])]);
        sources.probe_result(cell(2, 10001), false);
        assert_eq!(backends_of(&sources.resolve(), "web")[0].1, 1);
    }

    #[test]
    fn the_file_wins_and_kv_conflicts_are_reported() {
        let mut sources = Sources::new(settings());
        sources.set_file(vec![spec("web", 10, &[])]);
        sources.kv_put("web", 1, &serde_json::to_vec(&spec("web", 20, &[])).unwrap()).unwrap();
        sources.kv_put("late", 3, &serde_json::to_vec(&spec("late", 21, &[])).unwrap()).unwrap();
        sources.kv_put("early", 2, &serde_json::to_vec(&spec("early", 21, &[])).unwrap()).unwrap();
        sources.kv_put("clash", 4, &serde_json::to_vec(&spec("clash", 10, &[])).unwrap()).unwrap();
        let intent = sources.resolve();
        let names: Vec<&str> = intent.vips.iter().map(|v| v.spec.name.as_str()).collect();
        assert_eq!(names, vec!["early", "web"]);
        let rejected: Vec<(&str, &str)> = intent.rejected.iter().map(|r| (r.vip.as_str(), r.reason.as_str())).collect();
        assert_eq!(
            rejected,
            vec![
                ("web", "the config file declares a VIP of this name, and the file wins"),
                ("late", "tcp/198.18.2.21:80 is already served by VIP `early`"),
                ("clash", "tcp/198.18.2.10:80 is already served by VIP `web`"),
            ]
        );
        // Updating the VIP that holds an address does not hand the address to a later one.
        let mut early = spec("early", 21, &[]);
        early.scheduler = Scheduler::Wrr;
        sources.kv_put("early", 9, &serde_json::to_vec(&early).unwrap()).unwrap();
        let intent = sources.resolve();
        assert!(intent.vips.iter().any(|v| v.spec.name == "early" && v.spec.scheduler == Scheduler::Wrr));
        assert!(intent.rejected.iter().any(|r| r.vip == "late"));
    }

    #[test]
    fn an_invalid_kv_value_loses_nothing() {
        let mut sources = Sources::new(settings());
        sources.kv_put("web", 1, &serde_json::to_vec(&spec("web", 10, &[])).unwrap()).unwrap();
        let before = sources.resolve().desired();
        let err = sources.kv_put("web", 2, br#"{"name":"web","address":"198.18.2.10","port":0}"#).unwrap_err();
        assert_eq!(err, "config key `port`: must be between 1 and 65535");
        let err = sources.kv_put("web", 3, br#"{"name":"web","address":"198.18.2.10","port":80,"scheduler":"fastest"}"#).unwrap_err();
        assert!(err.contains("scheduler") && err.contains("unknown variant"), "{err}");
        let err = sources.kv_put("web", 4, &serde_json::to_vec(&spec("other", 10, &[])).unwrap()).unwrap_err();
        assert!(err.contains("must be the VIP's name"), "{err}");
        let err = sources.kv_put("bad", 5, b"{not json").unwrap_err();
        assert!(!err.is_empty());
        // Replaying the same history (a restarted lb) ends in the same state.
        let mut replayed = Sources::new(settings());
        let history = [
            (1, serde_json::to_vec(&spec("web", 10, &[])).unwrap()),
            (2, br#"{"name":"web","address":"198.18.2.10","port":0}"#.to_vec()),
        ];
        for (revision, value) in history {
            let _ = replayed.kv_event(KvEvent::Put { key: "web".to_owned(), revision, value: value.into() });
        }
        assert_eq!(replayed.resolve().desired(), before);
        let intent = sources.resolve();
        assert_eq!(intent.desired(), before);
        assert_eq!(intent.rejected.len(), 2);
        assert!(sources.kv_delete("web"));
        assert!(sources.resolve().desired().services.is_empty());
    }

    #[test]
    fn refreshing_an_announced_vip_matches_a_full_resolve() {
        let now = Instant::now();
        let mut sources = Sources::new(settings());
        sources.set_file(vec![spec("web", 10, &[(2, 10001)]), spec("api", 11, &[])]);
        let mut intent = sources.resolve();
        sources.announce(&announcement("web", 3, 10001), now).unwrap();
        let mut v6 = announcement("web", 4, 10001);
        v6.host = "2001:db8::4".to_owned();
        sources.announce(&v6, now).unwrap();
        let (key, service) = sources.refresh_vip(&mut intent, "web").unwrap();
        assert_eq!(intent, sources.resolve());
        assert_eq!(sources.resolve().desired().services.get(&key), Some(&service));
        assert_eq!(intent.rejected.len(), 1);
        // Withdrawn: the rejection of the bad announcement stays, the backend goes.
        sources.withdraw(&announcement("web", 3, 10001)).unwrap();
        sources.refresh_vip(&mut intent, "web").unwrap();
        assert_eq!(intent, sources.resolve());
        assert!(sources.refresh_vip(&mut intent, "nope").is_none());
    }

    #[test]
    fn bad_announcements_are_refused_and_change_nothing() {
        let now = Instant::now();
        let mut sources = Sources::new(settings());
        sources.set_file(vec![spec("web", 10, &[])]);
        let mut heavy = announcement("web", 2, 10001);
        heavy.weight = u32::MAX;
        assert!(sources.announce(&heavy, now).unwrap_err().contains("weight"));
        let mut v6 = announcement("web", 2, 10001);
        v6.host = "2001:db8::2".to_owned();
        sources.announce(&v6, now).unwrap();
        let intent = sources.resolve();
        assert!(backends_of(&intent, "web").is_empty());
        assert_eq!(intent.rejected.len(), 1);
        assert!(intent.rejected[0].reason.contains("address family"), "{:?}", intent.rejected);
    }

    #[test]
    fn kernel_backends_are_adopted_until_cells_speak_for_them() {
        let start = Instant::now();
        let mut sources = Sources::new(settings());
        let web = spec("web", 10, &[(2, 10001)]);
        let key = web.key();
        sources.set_file(vec![web]);
        let kernel = [(key, cell(2, 10001), 1), (key, cell(3, 10001), 1), (key, cell(4, 10001), 0)];
        assert_eq!(sources.adopt(kernel, start), 2);
        assert_eq!(
            backends_of(&sources.resolve(), "web"),
            vec![(cell(2, 10001), 1, Source::File), (cell(3, 10001), 1, Source::Kernel), (cell(4, 10001), 0, Source::Kernel)]
        );
        // Cell 3 re-announces and later leaves: its unregister takes effect at once.
        sources.announce(&announcement("web", 3, 10001), start).unwrap();
        assert_eq!(sources.withdraw(&announcement("web", 3, 10001)), Ok(true));
        // Cell 4 never re-announces: gone after one threshold.
        sources.prune(start + Duration::from_secs(30));
        assert_eq!(backends_of(&sources.resolve(), "web"), vec![(cell(2, 10001), 1, Source::File)]);
    }

    #[test]
    fn nothing_is_adopted_without_announcements() {
        let mut sources = Sources::new(SourceSettings { announcements: false, ..settings() });
        let web = spec("web", 10, &[]);
        let key = web.key();
        sources.set_file(vec![web]);
        assert_eq!(sources.adopt([(key, cell(3, 10001), 1)], Instant::now()), 0);
    }
}
