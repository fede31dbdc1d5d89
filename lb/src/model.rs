//! The vocabulary shared by the reconciler and every dataplane: services, destinations, what the kernel holds,
//! and the plan that turns one into the other.
//!
//! The shapes follow IPVS, the richer of the two dataplanes: a service is a virtual `address:port/protocol` with a
//! scheduler, a destination is a backend `address:port` with a weight and connection counters. nftables maps onto
//! the same shapes. Keeping one vocabulary is what lets the reconciler stay a pure function that never knows which
//! kernel machinery sits underneath, and lets `lb plan` print the same plan for either.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

pub use switchyard_config::lb::{Protocol, Scheduler, VipKey as ServiceKey};

/// A backend's identity inside one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DestinationKey {
    /// Backend address (same family as the service).
    pub address: IpAddr,
    /// Backend port (the cell's NodePort).
    pub port: u16,
}

impl fmt::Display for DestinationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// Service-wide settings, the part of a service that is not its destinations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ServiceSettings {
    /// Scheduler.
    pub scheduler: Scheduler,
    /// Persistence (client affinity) timeout; zero means none.
    pub persistence: Duration,
}

impl fmt::Display for ServiceSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "scheduler {}", self.scheduler)?;
        if !self.persistence.is_zero() {
            write!(f, ", persistence {}s", self.persistence.as_secs())?;
        }
        Ok(())
    }
}

/// A service and its settings, without destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Service {
    /// Identity.
    pub key: ServiceKey,
    /// Settings.
    pub settings: ServiceSettings,
}

/// A destination and its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Destination {
    /// Identity.
    pub key: DestinationKey,
    /// Weight; 0 keeps it out of rotation.
    pub weight: u32,
}

/// A service as `lb` wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredService {
    /// Settings.
    pub settings: ServiceSettings,
    /// Destinations and their weights (0 for a backend that failed its health check).
    pub destinations: BTreeMap<DestinationKey, u32>,
}

/// Everything `lb` wants in the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// Services by identity.
    pub services: BTreeMap<ServiceKey, DesiredService>,
}

/// A destination as the kernel holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObservedDestination {
    /// Weight.
    pub weight: u32,
    /// Established connections (IPVS `ACTIVE_CONNS`); 0 where the dataplane leaves flows to conntrack.
    pub active_connections: u32,
    /// Other connections (IPVS `INACT_CONNS`).
    pub inactive_connections: u32,
}

/// A service as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedService {
    /// Settings.
    pub settings: ServiceSettings,
    /// Destinations.
    pub destinations: BTreeMap<DestinationKey, ObservedDestination>,
    /// True when the service sits in a structure only `lb` writes (its own nftables table), so it is `lb`'s
    /// whatever its address. IPVS services share one kernel table with everyone, so IPVS reports false and
    /// ownership comes from the VIP address.
    pub exclusive: bool,
}

/// The kernel state the reconciler works from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedState {
    /// VIP addresses `lb` made local: the ownership record for services outside `lb`'s own tables.
    pub addresses: BTreeSet<IpAddr>,
    /// Every service the dataplane can see, owned or not.
    pub services: BTreeMap<ServiceKey, ObservedService>,
}

impl ObservedState {
    /// Whether `lb` owns this kernel service: it is in `lb`'s own table, or its address is one `lb` made local.
    pub fn owns(&self, key: &ServiceKey) -> bool {
        self.services.get(key).is_some_and(|s| s.exclusive) || self.addresses.contains(&key.address)
    }
}

/// Why a destination changes, for logs and `lb plan` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightChange {
    /// The wanted weight differs (announcement, file, or health check).
    Reweight,
    /// The backend is gone from the intent but still has live connections: weight 0 until they end.
    Drain,
}

/// One dataplane operation. Applying them in order turns the observed services into the desired ones; each maps
/// to one IPVS message, and the nftables dataplane folds a whole plan into one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create a service (with no destinations yet).
    AddService(Service),
    /// Change a service's scheduler or persistence.
    UpdateService(Service),
    /// Remove a service and whatever destinations it still has.
    DeleteService(ServiceKey),
    /// Add a destination to a service.
    AddDestination {
        /// The service.
        service: ServiceKey,
        /// The destination.
        destination: Destination,
    },
    /// Change a destination's weight.
    UpdateDestination {
        /// The service.
        service: ServiceKey,
        /// The destination with its new weight.
        destination: Destination,
        /// Why.
        change: WeightChange,
    },
    /// Remove a destination.
    DeleteDestination {
        /// The service.
        service: ServiceKey,
        /// The destination.
        destination: DestinationKey,
    },
}

impl Step {
    /// The service this step touches.
    pub fn service(&self) -> ServiceKey {
        match self {
            Self::AddService(s) | Self::UpdateService(s) => s.key,
            Self::DeleteService(key) => *key,
            Self::AddDestination { service, .. } | Self::UpdateDestination { service, .. } | Self::DeleteDestination { service, .. } => *service,
        }
    }

    /// A short stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AddService(_) => "add_service",
            Self::UpdateService(_) => "update_service",
            Self::DeleteService(_) => "delete_service",
            Self::AddDestination { .. } => "add_destination",
            Self::UpdateDestination { change: WeightChange::Reweight, .. } => "update_destination",
            Self::UpdateDestination { change: WeightChange::Drain, .. } => "drain_destination",
            Self::DeleteDestination { .. } => "delete_destination",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AddService(s) => write!(f, "add service {} ({})", s.key, s.settings),
            Self::UpdateService(s) => write!(f, "update service {} ({})", s.key, s.settings),
            Self::DeleteService(key) => write!(f, "delete service {key}"),
            Self::AddDestination { service, destination } => {
                write!(f, "add destination {} to {service} (weight {})", destination.key, destination.weight)
            }
            Self::UpdateDestination { service, destination, change: WeightChange::Reweight } => {
                write!(f, "set weight of {} in {service} to {}", destination.key, destination.weight)
            }
            Self::UpdateDestination { service, destination, change: WeightChange::Drain } => {
                write!(f, "drain {} in {service} (weight 0 until its connections end)", destination.key)
            }
            Self::DeleteDestination { service, destination } => write!(f, "delete destination {destination} from {service}"),
        }
    }
}

/// What a sync does: make VIP addresses local, run the dataplane steps, then release addresses no longer used.
/// Addresses come first so a new service is owned from the moment it exists, and go last so a service is never
/// left without its ownership record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// VIP addresses to make local.
    pub add_addresses: Vec<IpAddr>,
    /// Dataplane steps, in order.
    pub steps: Vec<Step>,
    /// VIP addresses to release.
    pub remove_addresses: Vec<IpAddr>,
    /// Desired services that collide with kernel services `lb` does not own; left alone and reported.
    pub conflicts: Vec<ServiceKey>,
}

impl Plan {
    /// Whether the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.add_addresses.is_empty() && self.steps.is_empty() && self.remove_addresses.is_empty()
    }

    /// Number of changes (addresses and steps).
    pub fn len(&self) -> usize {
        self.add_addresses.len() + self.steps.len() + self.remove_addresses.len()
    }

    /// What the kernel holds after this plan was applied to `state`. New services are recorded as owned through
    /// their address (which the same plan makes local), the ownership rule every dataplane shares.
    pub fn apply_to(&self, state: &mut ObservedState) {
        state.addresses.extend(self.add_addresses.iter().copied());
        for step in &self.steps {
            apply_step(&mut state.services, step, false);
        }
        for address in &self.remove_addresses {
            state.addresses.remove(address);
        }
    }

    /// The services the steps touch, each once.
    pub fn touched_services(&self) -> BTreeSet<ServiceKey> {
        self.steps.iter().map(Step::service).collect()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for address in &self.add_addresses {
            writeln!(f, "add VIP address {address}")?;
        }
        for step in &self.steps {
            writeln!(f, "{step}")?;
        }
        for address in &self.remove_addresses {
            writeln!(f, "remove VIP address {address}")?;
        }
        for conflict in &self.conflicts {
            writeln!(f, "skip {conflict}: the kernel already has this service and lb does not own it")?;
        }
        Ok(())
    }
}

/// Applies one step to an in-memory copy of the kernel services: the model of what the kernel does with it.
///
/// The nftables dataplane uses it to compute the services a transaction must write, and the fake dataplane to
/// behave like a kernel. Steps that refer to something missing are ignored here; a real kernel would refuse them,
/// and the next sync re-reads the truth anyway.
pub fn apply_step(services: &mut BTreeMap<ServiceKey, ObservedService>, step: &Step, exclusive: bool) {
    match step {
        Step::AddService(service) | Step::UpdateService(service) => {
            let entry = services.entry(service.key).or_insert_with(|| ObservedService {
                settings: service.settings,
                destinations: BTreeMap::new(),
                exclusive,
            });
            entry.settings = service.settings;
        }
        Step::DeleteService(key) => {
            services.remove(key);
        }
        Step::AddDestination { service, destination } | Step::UpdateDestination { service, destination, .. } => {
            if let Some(entry) = services.get_mut(service) {
                entry.destinations.entry(destination.key).or_default().weight = destination.weight;
            }
        }
        Step::DeleteDestination { service, destination } => {
            if let Some(entry) = services.get_mut(service) {
                entry.destinations.remove(destination);
            }
        }
    }
}
