//! The reconciler: desired state × observed kernel state → plan. A pure function, so every rule below is tested
//! without a kernel and `lb plan` prints exactly what `lb run` would do.
//!
//! The rules, and why:
//! - Only owned services are touched. A kernel service is `lb`'s when it sits in `lb`'s own table or on a VIP
//!   address `lb` made local; the kernel holds that record, so it survives restarts and needs no state file.
//!   A desired service that collides with someone else's is reported, never overwritten.
//! - Nothing is flushed. Start-up is the same diff as any other sync: what already matches stays untouched, so
//!   a restart does not reset connections or counters.
//! - A backend that leaves the intent while it still carries connections is drained (weight 0) and deleted on a
//!   later sync, once its connections are gone; a draining backend is not a pending change.
//! - Until every source of desired state has reported once (the KV bucket may still be loading), owned services
//!   missing from the intent are left alone rather than deleted on a guess.

use crate::model::{
    Destination, DestinationKey, DesiredService, DesiredState, ObservedService, ObservedState, Plan, Service, ServiceKey,
    Step, WeightChange,
};
use std::collections::BTreeSet;
use std::net::IpAddr;

/// How the reconciler should treat edge cases; the defaults are those of a normal sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileOptions {
    /// Whether the dataplane keeps destinations at weight 0. When it does not (nftables), weight-0 destinations are
    /// simply left out of the kernel.
    pub keeps_zero_weight: bool,
    /// Whether owned services absent from the intent may be removed. False while a source is still loading.
    pub remove_unknown_services: bool,
    /// Whether a departing destination with live connections is drained first. `lb cleanup` turns this off.
    pub drain: bool,
}

impl Default for ReconcileOptions {
    fn default() -> Self {
        Self { keeps_zero_weight: true, remove_unknown_services: true, drain: true }
    }
}

/// Computes the plan that turns `observed` into `desired`.
pub fn reconcile(desired: &DesiredState, observed: &ObservedState, options: ReconcileOptions) -> Plan {
    let mut plan = Plan::default();
    // Addresses that must stay local after the plan: every address a kept or desired service sits on.
    let mut needed_addresses: BTreeSet<IpAddr> = BTreeSet::new();
    let mut deletions = Vec::new();

    for (key, wanted) in &desired.services {
        match observed.services.get(key) {
            Some(_) if !observed.owns(key) => {
                plan.conflicts.push(*key);
                continue;
            }
            Some(present) => update_service(&mut plan.steps, *key, wanted, present, options),
            None => add_service(&mut plan.steps, *key, wanted, options),
        }
        needed_addresses.insert(key.address);
    }

    for (key, present) in &observed.services {
        if desired.services.contains_key(key) || !observed.owns(key) {
            continue;
        }
        if !options.remove_unknown_services {
            needed_addresses.insert(key.address);
            continue;
        }
        let busy = options.drain && present.destinations.values().any(|d| d.active_connections > 0);
        if busy {
            // Keep the service until its last connection ends; meanwhile nothing new reaches it.
            for (destination, state) in &present.destinations {
                retire_destination(&mut plan.steps, *key, *destination, state.weight, state.active_connections, options);
            }
            needed_addresses.insert(key.address);
        } else {
            deletions.push(Step::DeleteService(*key));
        }
    }
    plan.steps.extend(deletions);

    // A foreign service on an address lb never made local does not need it; one on an owned address is lb's.
    plan.add_addresses = needed_addresses.iter().filter(|a| !observed.addresses.contains(a)).copied().collect();
    plan.remove_addresses = observed.addresses.iter().filter(|a| !needed_addresses.contains(a)).copied().collect();
    plan
}

/// The plan for just `touched`, services whose backends changed, as [`reconcile`] would plan them, without
/// comparing every other service. `None` when one of them is anything but an owned service both in the intent and
/// in the kernel on a local address (new, removed, foreign): that needs the full [`reconcile`].
pub fn reconcile_services(desired: &DesiredState, observed: &ObservedState, options: ReconcileOptions, touched: &BTreeSet<ServiceKey>) -> Option<Plan> {
    let mut plan = Plan::default();
    for key in touched {
        let (wanted, present) = (desired.services.get(key)?, observed.services.get(key)?);
        if !observed.owns(key) || !observed.addresses.contains(&key.address) {
            return None;
        }
        update_service(&mut plan.steps, *key, wanted, present, options);
    }
    Some(plan)
}

/// The destinations a dataplane should hold for `wanted`.
fn kernel_destinations(wanted: &DesiredService, options: ReconcileOptions) -> impl Iterator<Item = Destination> + '_ {
    wanted
        .destinations
        .iter()
        .filter(move |(_, weight)| options.keeps_zero_weight || **weight > 0)
        .map(|(key, weight)| Destination { key: *key, weight: *weight })
}

fn add_service(steps: &mut Vec<Step>, key: ServiceKey, wanted: &DesiredService, options: ReconcileOptions) {
    steps.push(Step::AddService(Service { key, settings: wanted.settings }));
    for destination in kernel_destinations(wanted, options) {
        steps.push(Step::AddDestination { service: key, destination });
    }
}

fn update_service(steps: &mut Vec<Step>, key: ServiceKey, wanted: &DesiredService, present: &ObservedService, options: ReconcileOptions) {
    if present.settings != wanted.settings {
        steps.push(Step::UpdateService(Service { key, settings: wanted.settings }));
    }
    // New and changed destinations go before removals, so a service is never left emptier than it needs to be.
    for destination in kernel_destinations(wanted, options) {
        match present.destinations.get(&destination.key) {
            None => steps.push(Step::AddDestination { service: key, destination }),
            Some(state) if state.weight != destination.weight => {
                steps.push(Step::UpdateDestination { service: key, destination, change: WeightChange::Reweight });
            }
            Some(_) => {}
        }
    }
    // Looked up rather than collected: a sync compares every service, and almost all of them are unchanged.
    for (destination, state) in &present.destinations {
        let kept = wanted.destinations.get(destination).is_some_and(|weight| options.keeps_zero_weight || *weight > 0);
        if !kept {
            retire_destination(steps, key, *destination, state.weight, state.active_connections, options);
        }
    }
}

/// A destination that should leave: drained while it has connections (once), deleted when it has none.
fn retire_destination(steps: &mut Vec<Step>, service: ServiceKey, destination: DestinationKey, weight: u32, active: u32, options: ReconcileOptions) {
    if options.drain && active > 0 {
        if weight != 0 {
            let destination = Destination { key: destination, weight: 0 };
            steps.push(Step::UpdateDestination { service, destination, change: WeightChange::Drain });
        }
    } else {
        steps.push(Step::DeleteDestination { service, destination });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::Dataplane;
    use crate::dataplane::fake::FakeDataplane;
    use crate::model::{ObservedDestination, Protocol, Scheduler, ServiceSettings};
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn vip(last: u8, port: u16) -> ServiceKey {
        ServiceKey { address: IpAddr::from([198, 18, 2, last]), port, protocol: Protocol::Tcp }
    }

    fn cell(last: u8, port: u16) -> DestinationKey {
        DestinationKey { address: IpAddr::from([198, 18, 1, last]), port }
    }

    fn rr() -> ServiceSettings {
        ServiceSettings { scheduler: Scheduler::Rr, persistence: Duration::ZERO }
    }

    /// A service with its settings and `(backend, weight)` pairs.
    type Wanted<'a> = (ServiceKey, ServiceSettings, &'a [(DestinationKey, u32)]);
    /// A service with `(backend, weight, active connections)` triples.
    type Held<'a> = (ServiceKey, &'a [(DestinationKey, u32, u32)]);

    fn desired(services: &[Wanted<'_>]) -> DesiredState {
        DesiredState {
            services: services
                .iter()
                .map(|(key, settings, destinations)| {
                    (*key, DesiredService { settings: *settings, destinations: destinations.iter().copied().collect() })
                })
                .collect(),
        }
    }

    fn observed_service(settings: ServiceSettings, destinations: &[(DestinationKey, u32, u32)], exclusive: bool) -> ObservedService {
        ObservedService {
            settings,
            destinations: destinations
                .iter()
                .map(|(key, weight, active)| (*key, ObservedDestination { weight: *weight, active_connections: *active, inactive_connections: 0 }))
                .collect(),
            exclusive,
        }
    }

    fn owned(services: &[Held<'_>]) -> ObservedState {
        ObservedState {
            addresses: services.iter().map(|(key, _)| key.address).collect(),
            services: services.iter().map(|(key, dests)| (*key, observed_service(rr(), dests, false))).collect(),
        }
    }

    /// Runs plans against a fake kernel until nothing is left to do, as successive syncs would.
    fn converge(desired: &DesiredState, kernel: &mut FakeDataplane, addresses: &mut BTreeSet<IpAddr>, options: ReconcileOptions) -> usize {
        for round in 0..5 {
            let observed = ObservedState { addresses: addresses.clone(), services: kernel.observe().unwrap() };
            let plan = reconcile(desired, &observed, options);
            if plan.is_empty() {
                return round;
            }
            addresses.extend(plan.add_addresses.iter().copied());
            kernel.apply(&observed.services, &plan.steps).unwrap();
            for address in &plan.remove_addresses {
                addresses.remove(address);
            }
        }
        panic!("no convergence in 5 rounds");
    }

    #[test]
    fn add_from_empty() {
        let want = desired(&[(vip(10, 80), rr(), &[(cell(2, 10001), 1), (cell(3, 10001), 2)])]);
        let plan = reconcile(&want, &ObservedState::default(), ReconcileOptions::default());
        assert_eq!(plan.add_addresses, vec![IpAddr::from([198, 18, 2, 10])]);
        assert_eq!(
            plan.steps,
            vec![
                Step::AddService(Service { key: vip(10, 80), settings: rr() }),
                Step::AddDestination { service: vip(10, 80), destination: Destination { key: cell(2, 10001), weight: 1 } },
                Step::AddDestination { service: vip(10, 80), destination: Destination { key: cell(3, 10001), weight: 2 } },
            ]
        );
        assert!(plan.remove_addresses.is_empty());
    }

    #[test]
    fn matching_kernel_means_an_empty_plan() {
        let want = desired(&[(vip(10, 80), rr(), &[(cell(2, 10001), 1)])]);
        let have = owned(&[(vip(10, 80), &[(cell(2, 10001), 1, 7)])]);
        assert!(reconcile(&want, &have, ReconcileOptions::default()).is_empty());
    }

    #[test]
    fn update_settings_and_weights() {
        let wlc = ServiceSettings { scheduler: Scheduler::Wlc, persistence: Duration::from_secs(60) };
        let want = desired(&[(vip(10, 80), wlc, &[(cell(2, 10001), 5), (cell(4, 10001), 1)])]);
        let have = owned(&[(vip(10, 80), &[(cell(2, 10001), 1, 0)])]);
        let plan = reconcile(&want, &have, ReconcileOptions::default());
        assert_eq!(
            plan.steps,
            vec![
                Step::UpdateService(Service { key: vip(10, 80), settings: wlc }),
                Step::UpdateDestination {
                    service: vip(10, 80),
                    destination: Destination { key: cell(2, 10001), weight: 5 },
                    change: WeightChange::Reweight
                },
                Step::AddDestination { service: vip(10, 80), destination: Destination { key: cell(4, 10001), weight: 1 } },
            ]
        );
        assert!(plan.add_addresses.is_empty() && plan.remove_addresses.is_empty());
    }

    #[test]
    fn planning_only_the_touched_services_plans_them_as_the_full_plan_does() {
        let want = desired(&[
            (vip(10, 80), rr(), &[(cell(2, 10001), 5), (cell(4, 10001), 1)]),
            (vip(11, 80), rr(), &[(cell(3, 10001), 2)]),
            (vip(12, 80), rr(), &[(cell(3, 10002), 1)]),
        ]);
        let have = owned(&[
            (vip(10, 80), &[(cell(2, 10001), 1, 0), (cell(5, 10001), 1, 3)]),
            (vip(11, 80), &[(cell(3, 10001), 1, 0)]),
        ]);
        let options = ReconcileOptions::default();
        let full = reconcile(&want, &have, options);
        let touched = BTreeSet::from([vip(10, 80)]);
        let partial = reconcile_services(&want, &have, options, &touched).unwrap();
        let expected: Vec<Step> = full.steps.iter().filter(|step| step.service() == vip(10, 80)).cloned().collect();
        assert_eq!(partial.steps, expected);
        assert!(partial.add_addresses.is_empty() && partial.remove_addresses.is_empty());
        // A service the kernel does not hold yet needs the full plan (its address, its conflicts).
        assert!(reconcile_services(&want, &have, options, &BTreeSet::from([vip(12, 80)])).is_none());
        assert_eq!(reconcile_services(&want, &have, options, &BTreeSet::new()).unwrap().steps, Vec::new());
    }

    #[test]
    fn a_removed_backend_with_connections_drains_then_goes() {
        let want = desired(&[(vip(10, 80), rr(), &[(cell(2, 10001), 1)])]);
        let mut have = owned(&[(vip(10, 80), &[(cell(2, 10001), 1, 0), (cell(3, 10001), 1, 4)])]);
        let plan = reconcile(&want, &have, ReconcileOptions::default());
        assert_eq!(
            plan.steps,
            vec![Step::UpdateDestination {
                service: vip(10, 80),
                destination: Destination { key: cell(3, 10001), weight: 0 },
                change: WeightChange::Drain
            }]
        );
        assert_eq!(plan.steps[0].kind(), "drain_destination");
        // While it drains at weight 0, nothing is pending: `lb plan` says no changes.
        have.services.get_mut(&vip(10, 80)).unwrap().destinations.get_mut(&cell(3, 10001)).unwrap().weight = 0;
        assert!(reconcile(&want, &have, ReconcileOptions::default()).is_empty());
        // Its last connection ends: now it is deleted.
        have.services.get_mut(&vip(10, 80)).unwrap().destinations.get_mut(&cell(3, 10001)).unwrap().active_connections = 0;
        let plan = reconcile(&want, &have, ReconcileOptions::default());
        assert_eq!(plan.steps, vec![Step::DeleteDestination { service: vip(10, 80), destination: cell(3, 10001) }]);
    }

    #[test]
    fn an_idle_removed_backend_is_deleted_at_once() {
        let want = desired(&[(vip(10, 80), rr(), &[(cell(2, 10001), 1)])]);
        let have = owned(&[(vip(10, 80), &[(cell(2, 10001), 1, 0), (cell(3, 10001), 1, 0)])]);
        let plan = reconcile(&want, &have, ReconcileOptions::default());
        assert_eq!(plan.steps, vec![Step::DeleteDestination { service: vip(10, 80), destination: cell(3, 10001) }]);
    }

    #[test]
    fn delete_a_removed_vip_and_release_its_address() {
        let want = desired(&[(vip(10, 80), rr(), &[(cell(2, 10001), 1)])]);
        let have = owned(&[(vip(10, 80), &[(cell(2, 10001), 1, 0)]), (vip(11, 80), &[(cell(2, 10002), 1, 0)])]);
        let plan = reconcile(&want, &have, ReconcileOptions::default());
        assert_eq!(plan.steps, vec![Step::DeleteService(vip(11, 80))]);
        assert_eq!(plan.remove_addresses, vec![IpAddr::from([198, 18, 2, 11])]);
    }

    #[test]
    fn a_removed_vip_with_connections_drains_and_keeps_its_address() {
        let have = owned(&[(vip(11, 80), &[(cell(2, 10002), 1, 3), (cell(3, 10002), 1, 0)])]);
        let plan = reconcile(&DesiredState::default(), &have, ReconcileOptions::default());
        assert_eq!(
            plan.steps,
            vec![
                Step::UpdateDestination {
                    service: vip(11, 80),
                    destination: Destination { key: cell(2, 10002), weight: 0 },
                    change: WeightChange::Drain
                },
                Step::DeleteDestination { service: vip(11, 80), destination: cell(3, 10002) },
            ]
        );
        assert!(plan.remove_addresses.is_empty());
    }

    #[test]
    fn two_vips_on_one_address_keep_it_while_either_lives() {
        let want = desired(&[(vip(10, 443), rr(), &[])]);
        let have = owned(&[(vip(10, 80), &[]), (vip(10, 443), &[])]);
        let plan = reconcile(&want, &have, ReconcileOptions::default());
        assert_eq!(plan.steps, vec![Step::DeleteService(vip(10, 80))]);
        assert!(plan.remove_addresses.is_empty());
    }

    #[test]
    fn foreign_services_are_never_touched() {
        // Someone else's IPVS service on an address lb does not own: neither deleted nor adopted.
        let foreign = vip(50, 80);
        let mut have = ObservedState::default();
        have.services.insert(foreign, observed_service(rr(), &[(cell(9, 80), 1, 0)], false));
        let plan = reconcile(&DesiredState::default(), &have, ReconcileOptions::default());
        assert!(plan.is_empty(), "{plan}");

        // Asking for the same service reports a conflict instead of overwriting it.
        let want = desired(&[(foreign, rr(), &[(cell(2, 10001), 1)])]);
        let plan = reconcile(&want, &have, ReconcileOptions::default());
        assert!(plan.is_empty(), "{plan}");
        assert_eq!(plan.conflicts, vec![foreign]);
        assert!(plan.to_string().contains("lb does not own it"));
    }

    #[test]
    fn services_in_lbs_own_table_are_owned_whatever_their_address() {
        let mut have = ObservedState::default();
        have.services.insert(vip(12, 80), observed_service(rr(), &[], true));
        let plan = reconcile(&DesiredState::default(), &have, ReconcileOptions::default());
        assert_eq!(plan.steps, vec![Step::DeleteService(vip(12, 80))]);
    }

    #[test]
    fn unknown_services_survive_while_a_source_loads() {
        let have = owned(&[(vip(11, 80), &[(cell(2, 10002), 1, 0)])]);
        let options = ReconcileOptions { remove_unknown_services: false, ..ReconcileOptions::default() };
        let plan = reconcile(&DesiredState::default(), &have, options);
        assert!(plan.is_empty(), "{plan}");
    }

    #[test]
    fn no_flush_on_start_existing_rules_are_adopted_in_place() {
        // A kernel left by a previous run, partly out of date: only the difference is written.
        let mut kernel = FakeDataplane { keeps_zero_weight: true, ..FakeDataplane::default() };
        let mut addresses = BTreeSet::new();
        let previous = desired(&[
            (vip(10, 80), rr(), &[(cell(2, 10001), 1), (cell(3, 10001), 1)]),
            (vip(11, 80), rr(), &[(cell(2, 10002), 1)]),
        ]);
        converge(&previous, &mut kernel, &mut addresses, ReconcileOptions::default());
        kernel.applied.clear();

        let now = desired(&[
            (vip(10, 80), rr(), &[(cell(2, 10001), 1), (cell(3, 10001), 1)]),
            (vip(11, 80), rr(), &[(cell(2, 10002), 1), (cell(3, 10002), 1)]),
        ]);
        converge(&now, &mut kernel, &mut addresses, ReconcileOptions::default());
        assert_eq!(
            kernel.applied,
            vec![Step::AddDestination { service: vip(11, 80), destination: Destination { key: cell(3, 10002), weight: 1 } }]
        );
        assert!(!kernel.applied.iter().any(|s| matches!(s, Step::DeleteService(_) | Step::DeleteDestination { .. })));
    }

    #[test]
    fn zero_weight_is_absent_where_the_dataplane_cannot_hold_it() {
        let want = desired(&[(vip(10, 80), rr(), &[(cell(2, 10001), 1), (cell(3, 10001), 0)])]);
        let nft = ReconcileOptions { keeps_zero_weight: false, ..ReconcileOptions::default() };
        let plan = reconcile(&want, &ObservedState::default(), nft);
        assert_eq!(plan.steps.len(), 2, "{plan}");
        // The failed backend is out of the kernel and nothing is pending.
        let have = owned(&[(vip(10, 80), &[(cell(2, 10001), 1, 0)])]);
        assert!(reconcile(&want, &have, nft).is_empty());
        // The same intent on IPVS keeps it at weight 0.
        let ipvs = ReconcileOptions::default();
        let plan = reconcile(&want, &have, ipvs);
        assert_eq!(
            plan.steps,
            vec![Step::AddDestination { service: vip(10, 80), destination: Destination { key: cell(3, 10001), weight: 0 } }]
        );
    }

    #[test]
    fn cleanup_deletes_everything_owned_without_draining() {
        let have = owned(&[(vip(10, 80), &[(cell(2, 10001), 1, 9)])]);
        let options = ReconcileOptions { drain: false, ..ReconcileOptions::default() };
        let plan = reconcile(&DesiredState::default(), &have, options);
        assert_eq!(plan.steps, vec![Step::DeleteService(vip(10, 80))]);
        assert_eq!(plan.remove_addresses, vec![IpAddr::from([198, 18, 2, 10])]);
    }

    #[test]
    fn any_intent_converges_in_one_round_and_then_stays_put() {
        // A small exhaustive sweep: every pair of (before, after) intents over a few services and backends.
        let services = [vip(10, 80), vip(10, 443), vip(11, 80)];
        let cells = [cell(2, 10001), cell(3, 10001), cell(4, 10001)];
        let intents: Vec<DesiredState> = (0u32..64)
            .map(|bits| {
                let mut state = DesiredState::default();
                for (i, key) in services.iter().enumerate() {
                    if bits & (1 << (i * 2)) != 0 {
                        let destinations: BTreeMap<_, _> = cells
                            .iter()
                            .enumerate()
                            .filter(|(j, _)| (bits >> (i * 2 + 1)) & (1 << j) != 0 || *j == 0)
                            .map(|(j, c)| (*c, u32::try_from(j).unwrap()))
                            .collect();
                        state.services.insert(*key, DesiredService { settings: rr(), destinations });
                    }
                }
                state
            })
            .collect();
        for keeps_zero_weight in [true, false] {
            let options = ReconcileOptions { keeps_zero_weight, ..ReconcileOptions::default() };
            for before in &intents {
                for after in &intents {
                    let mut kernel = FakeDataplane { keeps_zero_weight, ..FakeDataplane::default() };
                    let mut addresses = BTreeSet::new();
                    converge(before, &mut kernel, &mut addresses, options);
                    // The state a plan predicts (what the sync loop diffs against between reads) needs no more work.
                    let mut predicted = ObservedState { addresses: addresses.clone(), services: kernel.observe().unwrap() };
                    reconcile(after, &predicted, options).apply_to(&mut predicted);
                    assert!(reconcile(after, &predicted, options).is_empty(), "{before:?} -> {after:?}");
                    let rounds = converge(after, &mut kernel, &mut addresses, options);
                    assert_eq!(rounds, usize::from(before != after), "{before:?} -> {after:?}");
                    let wanted: BTreeSet<IpAddr> = after.services.keys().map(|k| k.address).collect();
                    assert_eq!(addresses, wanted);
                    assert_eq!(kernel.services.keys().collect::<Vec<_>>(), after.services.keys().collect::<Vec<_>>());
                }
            }
        }
    }
}
