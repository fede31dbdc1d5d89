//! The `ipvs` dataplane: the reconciler's steps as IPVS netlink requests, one request per step.
//!
//! The reconciler decides; this module carries out. Observing reads every service the kernel holds (other
//! people's too, so the reconciler can leave them alone) with the connection counts drains wait on; applying
//! translates each step into exactly one request and sends them pipelined, so a one-backend change costs one
//! netlink message and ten thousand objects cost a few dozen system calls. The one judgement made here is when a
//! deleted backend may actually leave the kernel ([`super::drain`]), because only the kernel knows its connections
//! at that moment. Around that sit the machine settings IPVS needs for SNAT (conntrack on, stale
//! connections expired) and the masquerade set, which follows the services `lb` adds and deletes.

use super::client::IpvsClient;
use super::codec::Change;
use super::drain::Drains;
use super::error::IpvsError;
use super::objects::{self, DestinationEntry, ServiceEntry, ServiceFlags};
use super::snat;
use super::traffic::{DestinationTraffic, Purpose, ServiceTraffic, Traffic};
use crate::dataplane::{Capabilities, Dataplane, DataplaneError, DataplaneSettings, ObservedServices};
use crate::sysctl;
use crate::model::{
    DestinationKey, ObservedDestination, ObservedService, Protocol, Scheduler, ServiceKey, ServiceSettings, Step,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

const NAME: &str = "ipvs";

/// Sysctls IPVS SNAT depends on, with the value each must hold (`ip_forward` is set for every dataplane).
///
/// `vs/conntrack` keeps conntrack entries for IPVS flows, which the masquerade needs; `expire_nodest_conn` drops
/// connections to a deleted backend at their next packet instead of black-holing them; `expire_quiescent_template`
/// lets persistent clients move off a drained (weight 0) backend.
const SYSCTLS: [(&str, &str); 3] = [
    ("net.ipv4.vs.conntrack", "1"),
    ("net.ipv4.vs.expire_nodest_conn", "1"),
    ("net.ipv4.vs.expire_quiescent_template", "1"),
];

/// IPVS services and destinations over generic netlink, plus the masquerade that makes them SNAT.
pub struct IpvsDataplane {
    settings: DataplaneSettings,
    client: Option<IpvsClient>,
    traffic: Traffic,
    drains: Drains,
}

impl IpvsDataplane {
    /// A dataplane that connects to the kernel when first used.
    pub fn new(settings: DataplaneSettings) -> Self {
        Self { settings, client: None, traffic: Traffic::default(), drains: Drains::default() }
    }

    /// Netlink requests sent by the current connection; the proof that an update costs what the plan says.
    pub fn requests_sent(&self) -> u64 {
        self.client.as_ref().map_or(0, IpvsClient::requests_sent)
    }

    fn client(&mut self) -> Result<&mut IpvsClient, DataplaneError> {
        if self.client.is_none() {
            self.client = Some(IpvsClient::connect().map_err(|error| unavailable_or(error, "connect to IPVS"))?);
        }
        self.client.as_mut().ok_or_else(|| DataplaneError::Observe("the IPVS connection is gone".to_owned()))
    }

    /// Drops the connection after a socket failure, so the next call starts clean.
    fn forget_on_socket_error(&mut self, error: &IpvsError) {
        if matches!(error, IpvsError::Io { .. } | IpvsError::Protocol { .. }) {
            self.client = None;
        }
    }

    fn update_masquerade(&self, before: &ObservedServices, steps: &[Step]) -> Result<(), DataplaneError> {
        let (add, remove) = masquerade_changes(before, steps);
        match snat::update_script(&self.settings.nft_table, &add, &remove) {
            Some(script) => snat::run(&script),
            None => Ok(()),
        }
    }
}

impl Dataplane for IpvsDataplane {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { keeps_zero_weight_destinations: true }
    }

    fn prepare(&mut self) -> Result<(), DataplaneError> {
        if self.client.is_none() {
            match IpvsClient::connect() {
                Ok(client) => self.client = Some(client),
                Err(IpvsError::Unavailable) => {
                    load_module()?;
                    self.client()?;
                }
                Err(error) => return Err(unavailable_or(error, "connect to IPVS")),
            }
        }
        for (name, value) in SYSCTLS {
            sysctl::ensure(name, value)?;
        }
        if self.settings.snat {
            snat::run(&snat::prepare_script(&self.settings.nft_table))?;
        }
        Ok(())
    }

    fn observe(&mut self) -> Result<ObservedServices, DataplaneError> {
        let client = self.client()?;
        let start = client.requests_sent();
        let result = read_kernel(client);
        let sent = client.requests_sent() - start;
        self.traffic.count_requests(Purpose::Read, sent);
        match result {
            Ok((services, traffic)) => {
                self.traffic.replace(traffic);
                Ok(services)
            }
            Err(error) => {
                self.forget_on_socket_error(&error);
                Err(DataplaneError::Observe(error.to_string()))
            }
        }
    }

    fn apply(&mut self, before: &ObservedServices, steps: &[Step]) -> Result<(), DataplaneError> {
        self.client()?;
        let Some(client) = self.client.as_mut() else { return Err(DataplaneError::Observe("the IPVS connection is gone".to_owned())) };
        // Deletions are checked against the kernel's connection counts as they are now.
        let start = client.requests_sent();
        let held = self.drains.hold_busy(steps, Instant::now(), |service| {
            let entries = client.destinations(&kernel_key(service))?;
            Ok::<_, IpvsError>(entries.iter().map(|entry| (model_destination(&entry.destination.key), destination_traffic(entry))).collect())
        });
        self.traffic.count_requests(Purpose::Read, client.requests_sent() - start);
        let steps = match held {
            Ok(steps) => steps,
            Err(error) => {
                self.forget_on_socket_error(&error);
                return Err(kernel_error("read connection counts before deleting backends", &error));
            }
        };
        let steps = steps.as_slice();
        let changes: Vec<Change> = steps.iter().map(change_of).collect();
        let client = self.client()?;
        let (started, start) = (Instant::now(), client.requests_sent());
        let outcome = client.apply(&changes);
        let sent = client.requests_sent() - start;
        self.traffic.count_requests(Purpose::Write, sent);
        let elapsed_seconds = started.elapsed().as_secs_f64();
        tracing::info!(steps = steps.len(), netlink_requests = sent, elapsed_seconds, "applied IPVS steps");
        let refusals = match outcome {
            Ok(refusals) => refusals,
            Err(error) => {
                self.forget_on_socket_error(&error);
                return Err(kernel_error("apply the plan", &error));
            }
        };
        for refusal in &refusals {
            tracing::warn!(error = %refusal.error, "IPVS refused a step");
        }
        if self.settings.snat {
            self.update_masquerade(before, steps)?;
        }
        match refusals.into_iter().next() {
            Some(first) => {
                let step = steps.get(first.index).map_or_else(String::new, ToString::to_string);
                Err(kernel_error(&step, &first.error))
            }
            None => Ok(()),
        }
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        snat::run(&snat::cleanup_script(&self.settings.nft_table))
    }

    fn traffic(&self) -> Option<Traffic> {
        Some(self.traffic.clone())
    }
}

/// Whether this kernel has IPVS: its netlink family resolves, or the module loads.
pub fn kernel_has_ipvs() -> bool {
    match IpvsClient::connect() {
        Ok(_) => true,
        Err(IpvsError::Unavailable) => load_module().is_ok() && IpvsClient::connect().is_ok(),
        Err(_) => false,
    }
}

fn load_module() -> Result<(), DataplaneError> {
    let unavailable = |why: String| DataplaneError::Unavailable { dataplane: NAME, why };
    let status = std::process::Command::new("modprobe")
        .args(["-q", "ip_vs"])
        .status()
        .map_err(|err| unavailable(format!("the ip_vs module is not loaded and modprobe could not run ({err})")))?;
    if status.success() {
        Ok(())
    } else {
        Err(unavailable(
            "this kernel has no IPVS (modprobe ip_vs failed); use `dataplane: nftables`, or a kernel built with \
             CONFIG_IP_VS"
                .to_owned(),
        ))
    }
}

fn unavailable_or(error: IpvsError, operation: &str) -> DataplaneError {
    match error {
        IpvsError::Unavailable => DataplaneError::Unavailable { dataplane: NAME, why: error.to_string() },
        other => kernel_error(operation, &other),
    }
}

fn kernel_error(operation: &str, error: &IpvsError) -> DataplaneError {
    DataplaneError::Kernel { operation: operation.to_owned(), detail: error.to_string(), retryable: error.is_retryable() }
}

/// Reads every service and its destinations, in the model's terms, with their counters.
pub(super) fn read_kernel(client: &mut IpvsClient) -> Result<(ObservedServices, BTreeMap<ServiceKey, ServiceTraffic>), IpvsError> {
    let mut services = ObservedServices::new();
    let mut traffic = BTreeMap::new();
    for entry in client.services()? {
        // Firewall-mark and SCTP services cannot be lb's, and the model has no words for them.
        let Some(key) = model_key(&entry.service.key) else { continue };
        let (observed, counters) = read_service(&entry, &client.destinations(&entry.service.key)?);
        services.insert(key, observed);
        traffic.insert(key, counters);
    }
    Ok((services, traffic))
}

fn model_key(key: &objects::ServiceKey) -> Option<ServiceKey> {
    match *key {
        objects::ServiceKey::Socket { protocol: objects::Protocol::Tcp, address, port } => {
            Some(ServiceKey { address, port, protocol: Protocol::Tcp })
        }
        objects::ServiceKey::Socket { protocol: objects::Protocol::Udp, address, port } => {
            Some(ServiceKey { address, port, protocol: Protocol::Udp })
        }
        objects::ServiceKey::Socket { protocol: objects::Protocol::Sctp, .. } | objects::ServiceKey::FirewallMark { .. } => {
            None
        }
    }
}

fn kernel_key(key: &ServiceKey) -> objects::ServiceKey {
    let protocol = match key.protocol {
        Protocol::Tcp => objects::Protocol::Tcp,
        Protocol::Udp => objects::Protocol::Udp,
    };
    objects::ServiceKey::socket(protocol, key.address, key.port)
}

/// A service in the model's terms, and its counters for `/vips` and `/metrics`, from one dump.
fn read_service(entry: &ServiceEntry, destinations: &[DestinationEntry]) -> (ObservedService, ServiceTraffic) {
    let service = &entry.service;
    let persistent = service.flags.contains(ServiceFlags::PERSISTENT);
    let settings = ServiceSettings {
        // A scheduler lb never configures (sed, nq, ...) can only be on someone else's service; reading it as the
        // default keeps the service visible, so the reconciler still knows the slot is taken.
        scheduler: Scheduler::from_name(&service.scheduler).unwrap_or_default(),
        persistence: if persistent { Duration::from_secs(u64::from(service.timeout)) } else { Duration::ZERO },
    };
    let traffic: BTreeMap<DestinationKey, DestinationTraffic> =
        destinations.iter().map(|entry| (model_destination(&entry.destination.key), destination_traffic(entry))).collect();
    let observed = traffic
        .iter()
        .map(|(key, t)| {
            let observed = ObservedDestination {
                weight: t.weight,
                active_connections: t.active_connections,
                inactive_connections: t.inactive_connections,
            };
            (*key, observed)
        })
        .collect();
    (ObservedService { settings, destinations: observed, exclusive: false }, ServiceTraffic { stats: entry.stats, destinations: traffic })
}

fn destination_traffic(entry: &DestinationEntry) -> DestinationTraffic {
    DestinationTraffic {
        weight: entry.destination.weight,
        active_connections: entry.active_connections,
        inactive_connections: entry.inactive_connections,
        stats: entry.stats,
    }
}

fn model_destination(key: &objects::DestinationKey) -> DestinationKey {
    DestinationKey { address: key.address, port: key.port }
}

fn kernel_service(service: &crate::model::Service) -> objects::Service {
    let key = kernel_key(&service.key);
    let mut kernel = objects::Service::new(key, service.settings.scheduler.as_str());
    let seconds = service.settings.persistence.as_secs();
    if seconds > 0 {
        kernel.flags = ServiceFlags::PERSISTENT;
        kernel.timeout = u32::try_from(seconds).unwrap_or(u32::MAX);
    }
    kernel
}

fn kernel_destination(key: DestinationKey, weight: u32) -> objects::Destination {
    objects::Destination::masquerade(key.address, key.port, weight)
}

/// The one netlink request that carries `step`.
fn change_of(step: &Step) -> Change {
    match step {
        Step::AddService(service) => Change::AddService(kernel_service(service)),
        Step::UpdateService(service) => Change::UpdateService(kernel_service(service)),
        Step::DeleteService(key) => Change::DeleteService(kernel_key(key)),
        Step::AddDestination { service, destination } => {
            Change::AddDestination(kernel_key(service), kernel_destination(destination.key, destination.weight))
        }
        Step::UpdateDestination { service, destination, .. } => {
            Change::UpdateDestination(kernel_key(service), kernel_destination(destination.key, destination.weight))
        }
        Step::DeleteDestination { service, destination } => {
            Change::DeleteDestination(kernel_key(service), objects::DestinationKey { address: destination.address, port: destination.port })
        }
    }
}

/// VIP addresses to add to and remove from the masquerade set: every address a step adds or updates a service on,
/// and every address whose last service a step deletes.
fn masquerade_changes(before: &ObservedServices, steps: &[Step]) -> (BTreeSet<IpAddr>, BTreeSet<IpAddr>) {
    let mut remaining: BTreeSet<ServiceKey> = before.keys().copied().collect();
    let mut add = BTreeSet::new();
    let mut deleted = BTreeSet::new();
    for step in steps {
        match step {
            Step::AddService(service) | Step::UpdateService(service) => {
                remaining.insert(service.key);
                add.insert(service.key.address);
            }
            Step::DeleteService(key) => {
                remaining.remove(key);
                deleted.insert(key.address);
            }
            Step::AddDestination { .. } | Step::UpdateDestination { .. } | Step::DeleteDestination { .. } => {}
        }
    }
    let still_used: BTreeSet<IpAddr> = remaining.iter().map(|key| key.address).collect();
    let remove = deleted.difference(&still_used).copied().collect();
    add.retain(|address| still_used.contains(address));
    (add, remove)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Destination, Service, WeightChange};
    use std::net::IpAddr;

    fn vip(last: u8, port: u16) -> ServiceKey {
        ServiceKey { address: IpAddr::from([198, 18, 2, last]), port, protocol: Protocol::Tcp }
    }

    fn cell(last: u8) -> DestinationKey {
        DestinationKey { address: IpAddr::from([198, 18, 1, last]), port: 10001 }
    }

    #[test]
    fn every_step_is_one_request() {
        let settings = ServiceSettings { scheduler: Scheduler::Wrr, persistence: Duration::from_secs(300) };
        let service = Service { key: vip(10, 80), settings };
        let add = change_of(&Step::AddService(service));
        let Change::AddService(kernel) = &add else { panic!("{add:?}") };
        assert_eq!(kernel.scheduler, "wrr");
        assert_eq!((kernel.flags, kernel.timeout, kernel.netmask), (ServiceFlags::PERSISTENT, 300, 32));
        assert_eq!(kernel.key, objects::ServiceKey::socket(objects::Protocol::Tcp, IpAddr::from([198, 18, 2, 10]), 80));

        let drain = Step::UpdateDestination {
            service: vip(10, 80),
            destination: Destination { key: cell(2), weight: 0 },
            change: WeightChange::Drain,
        };
        assert_eq!(
            change_of(&drain),
            Change::UpdateDestination(kernel_key(&vip(10, 80)), objects::Destination::masquerade(IpAddr::from([198, 18, 1, 2]), 10001, 0))
        );
    }

    #[test]
    fn observation_maps_kernel_objects_to_the_model() {
        let mut kernel = objects::Service::new(kernel_key(&vip(10, 80)), "sh");
        kernel.flags = ServiceFlags::PERSISTENT;
        kernel.timeout = 60;
        let entry = ServiceEntry { service: kernel, stats: objects::Stats::default() };
        let destination = DestinationEntry {
            destination: objects::Destination::masquerade(IpAddr::from([198, 18, 1, 2]), 10001, 0),
            active_connections: 3,
            inactive_connections: 4,
            persistent_connections: 0,
            stats: objects::Stats { bytes_in: 10, ..objects::Stats::default() },
        };
        let (observed, traffic) = read_service(&entry, &[destination]);
        assert_eq!(observed.settings, ServiceSettings { scheduler: Scheduler::Sh, persistence: Duration::from_secs(60) });
        assert_eq!(
            observed.destinations.get(&cell(2)),
            Some(&ObservedDestination { weight: 0, active_connections: 3, inactive_connections: 4 })
        );
        assert!(!observed.exclusive);
        assert_eq!(traffic.destinations.get(&cell(2)).map(|d| d.stats.bytes_in), Some(10));

        // A timeout without the persistent flag is not persistence.
        let mut plain = objects::Service::new(kernel_key(&vip(10, 80)), "nq");
        plain.timeout = 60;
        let (observed, _) = read_service(&ServiceEntry { service: plain, stats: objects::Stats::default() }, &[]);
        assert_eq!(observed.settings, ServiceSettings::default());
    }

    #[test]
    fn foreign_kinds_of_service_stay_out_of_the_model() {
        assert_eq!(model_key(&objects::ServiceKey::FirewallMark { ipv6: false, mark: 1 }), None);
        let sctp = objects::ServiceKey::socket(objects::Protocol::Sctp, IpAddr::from([198, 18, 2, 1]), 9);
        assert_eq!(model_key(&sctp), None);
        assert_eq!(model_key(&kernel_key(&vip(10, 53))), Some(vip(10, 53)));
    }

    #[test]
    fn masquerade_follows_services_per_address() {
        let observed = |keys: &[ServiceKey]| -> ObservedServices {
            keys.iter()
                .map(|key| (*key, ObservedService { settings: ServiceSettings::default(), destinations: BTreeMap::new(), exclusive: false }))
                .collect()
        };
        let settings = ServiceSettings::default();
        // A new VIP is added; a destination change touches nothing.
        let steps = [
            Step::AddService(Service { key: vip(10, 80), settings }),
            Step::AddDestination { service: vip(10, 80), destination: Destination { key: cell(2), weight: 1 } },
            Step::DeleteDestination { service: vip(11, 80), destination: cell(3) },
        ];
        let (add, remove) = masquerade_changes(&observed(&[vip(11, 80)]), &steps);
        assert_eq!(add, [IpAddr::from([198, 18, 2, 10])].into());
        assert!(remove.is_empty());

        // Deleting one of two services on an address keeps it; deleting the last releases it.
        let before = observed(&[vip(10, 80), vip(10, 443), vip(11, 80)]);
        let steps = [Step::DeleteService(vip(10, 80)), Step::DeleteService(vip(11, 80))];
        let (add, remove) = masquerade_changes(&before, &steps);
        assert!(add.is_empty());
        assert_eq!(remove, [IpAddr::from([198, 18, 2, 11])].into());
    }
}
