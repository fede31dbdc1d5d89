//! Draining at the kernel edge: a real server leaves IPVS only once nothing uses it, or once its drain has lasted
//! [`DRAIN_DEADLINE`].
//!
//! The reconciler decides that a backend must go. Whether the kernel object may go *now* depends on its connection
//! counts at this moment, and the sync loop may be planning from a reading taken seconds earlier (it reads the
//! kernel on a timer, not before every change). Deleting a busy real server cuts its connections
//! (`expire_nodest_conn` drops them at their next packet), so right before a deletion the dataplane reads that
//! service's real servers and, while the backend still carries connections, sets its weight to 0 instead. A later
//! sync asks again and the deletion goes through once the backend is idle.
//!
//! What counts as busy follows the protocol. TCP counts established connections: closed ones linger as inactive
//! entries for the two minutes of TIME_WAIT and carry nothing. UDP has no established state, so every entry counts.
//! The deadline keeps one long-lived connection from pinning a removed backend forever.

use super::traffic::DestinationTraffic;
use crate::model::{Destination, DestinationKey, Protocol, ServiceKey, Step, WeightChange};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Longest a removed backend is kept at weight 0 waiting for its connections to end.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(300);

/// What to do with a destination the plan deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retirement {
    /// It is not in the kernel: nothing to do.
    Gone,
    /// Idle, or drained long enough: delete it.
    Delete,
    /// Busy and still in rotation: set its weight to 0.
    Drain,
    /// Busy and already at weight 0: leave it.
    Wait,
}

/// Decides the fate of one destination the plan deletes, from its live state and when its drain began.
pub fn retirement(protocol: Protocol, live: Option<&DestinationTraffic>, drained_since: Option<Instant>, now: Instant) -> Retirement {
    let Some(live) = live else { return Retirement::Gone };
    let connections = match protocol {
        Protocol::Tcp => u64::from(live.active_connections),
        Protocol::Udp => u64::from(live.active_connections) + u64::from(live.inactive_connections),
    };
    let expired = drained_since.is_some_and(|since| now.saturating_duration_since(since) >= DRAIN_DEADLINE);
    if connections == 0 || expired {
        Retirement::Delete
    } else if live.weight != 0 {
        Retirement::Drain
    } else {
        Retirement::Wait
    }
}

/// The destinations being drained, and since when.
#[derive(Debug, Default)]
pub struct Drains {
    since: HashMap<(ServiceKey, DestinationKey), Instant>,
}

impl Drains {
    /// Rewrites the plan's deletions of busy destinations into drains. `read` returns a service's live
    /// destinations; it is called at most once per service, and only for services the plan deletes from.
    pub fn hold_busy<E>(
        &mut self,
        steps: &[Step],
        now: Instant,
        mut read: impl FnMut(&ServiceKey) -> Result<BTreeMap<DestinationKey, DestinationTraffic>, E>,
    ) -> Result<Vec<Step>, E> {
        let mut live: HashMap<ServiceKey, BTreeMap<DestinationKey, DestinationTraffic>> = HashMap::new();
        let mut kept = Vec::with_capacity(steps.len());
        for step in steps {
            let Step::DeleteDestination { service, destination } = step else {
                kept.push(step.clone());
                continue;
            };
            let destinations = match live.get(service) {
                Some(destinations) => destinations,
                None => live.entry(*service).or_insert(read(service)?),
            };
            let id = (*service, *destination);
            match retirement(service.protocol, destinations.get(destination), self.since.get(&id).copied(), now) {
                Retirement::Gone => {
                    self.since.remove(&id);
                }
                Retirement::Delete => {
                    self.since.remove(&id);
                    kept.push(step.clone());
                }
                Retirement::Drain => {
                    tracing::info!(%service, %destination, "backend still has connections: draining it (weight 0) before deleting");
                    self.since.entry(id).or_insert(now);
                    let destination = Destination { key: *destination, weight: 0 };
                    kept.push(Step::UpdateDestination { service: *service, destination, change: WeightChange::Drain });
                }
                Retirement::Wait => {
                    self.since.entry(id).or_insert(now);
                }
            }
        }
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn live(weight: u32, active: u32, inactive: u32) -> DestinationTraffic {
        DestinationTraffic { weight, active_connections: active, inactive_connections: inactive, ..DestinationTraffic::default() }
    }

    #[test]
    fn busy_backends_drain_idle_ones_go() {
        let now = Instant::now();
        assert_eq!(retirement(Protocol::Tcp, None, None, now), Retirement::Gone);
        assert_eq!(retirement(Protocol::Tcp, Some(&live(1, 0, 0)), None, now), Retirement::Delete);
        assert_eq!(retirement(Protocol::Tcp, Some(&live(1, 2, 0)), None, now), Retirement::Drain);
        assert_eq!(retirement(Protocol::Tcp, Some(&live(0, 2, 0)), Some(now), now), Retirement::Wait);
        // TIME_WAIT leftovers do not hold a TCP backend; UDP flows only ever count as inactive, and do.
        assert_eq!(retirement(Protocol::Tcp, Some(&live(0, 0, 5)), Some(now), now), Retirement::Delete);
        assert_eq!(retirement(Protocol::Udp, Some(&live(1, 0, 5)), None, now), Retirement::Drain);
        assert_eq!(retirement(Protocol::Udp, Some(&live(0, 0, 0)), Some(now), now), Retirement::Delete);
    }

    #[test]
    fn the_deadline_ends_a_drain() {
        let start = Instant::now();
        let busy = live(0, 1, 0);
        assert_eq!(retirement(Protocol::Tcp, Some(&busy), Some(start), start + DRAIN_DEADLINE - Duration::from_secs(1)), Retirement::Wait);
        assert_eq!(retirement(Protocol::Tcp, Some(&busy), Some(start), start + DRAIN_DEADLINE), Retirement::Delete);
    }

    #[test]
    fn plans_are_rewritten_with_one_read_per_service() {
        let service = ServiceKey { address: IpAddr::from([198, 18, 2, 10]), port: 80, protocol: Protocol::Tcp };
        let busy = DestinationKey { address: IpAddr::from([198, 18, 1, 2]), port: 10001 };
        let idle = DestinationKey { address: IpAddr::from([198, 18, 1, 3]), port: 10001 };
        let gone = DestinationKey { address: IpAddr::from([198, 18, 1, 4]), port: 10001 };
        let add = Step::AddDestination { service, destination: Destination { key: gone, weight: 1 } };
        let steps = [
            Step::DeleteDestination { service, destination: busy },
            Step::DeleteDestination { service, destination: idle },
            Step::DeleteDestination { service, destination: gone },
            add.clone(),
        ];
        let mut reads = 0;
        let mut drains = Drains::default();
        let start = Instant::now();
        let kernel: BTreeMap<DestinationKey, DestinationTraffic> = [(busy, live(1, 3, 0)), (idle, live(1, 0, 0))].into();
        let mut read = |_: &ServiceKey| -> Result<_, ()> {
            reads += 1;
            Ok(kernel.clone())
        };
        let kept = drains.hold_busy(&steps, start, &mut read).unwrap();
        let drain = Step::UpdateDestination { service, destination: Destination { key: busy, weight: 0 }, change: WeightChange::Drain };
        assert_eq!(kept, vec![drain, Step::DeleteDestination { service, destination: idle }, add]);

        // Later, at weight 0 and still busy: nothing; after the deadline: deleted.
        let kernel: BTreeMap<DestinationKey, DestinationTraffic> = [(busy, live(0, 1, 0))].into();
        let mut read = |_: &ServiceKey| -> Result<_, ()> {
            reads += 1;
            Ok(kernel.clone())
        };
        let delete = [Step::DeleteDestination { service, destination: busy }];
        assert_eq!(drains.hold_busy(&delete, start + Duration::from_secs(1), &mut read).unwrap(), vec![]);
        assert_eq!(drains.hold_busy(&delete, start + DRAIN_DEADLINE, &mut read).unwrap(), delete.to_vec());
        assert_eq!(reads, 3);
        assert!(drains.since.is_empty());
    }
}
