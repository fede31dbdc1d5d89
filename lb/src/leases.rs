//! Backends that live only as long as someone keeps vouching for them: cell announcements, and the backends `lb`
//! finds in the kernel after a restart.
//!
//! Announcements work like gorouter's routes: a cell repeats `lb.register` on an interval, and a backend not heard
//! from within its threshold is pruned, so a cell that dies without saying goodbye still leaves rotation. The
//! same lease covers backends adopted from the kernel at start-up: `lb` does not remember announcements across a
//! restart, so it keeps what the kernel already forwards to for one threshold, giving cells time to re-announce
//! instead of cutting every announced backend on restart. Time is an input (`now`), so expiry is tested exactly.

use crate::model::DestinationKey;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What a renewal did, so the caller knows whether the intent changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// A backend that was not there.
    Added,
    /// A known backend with a new weight.
    Reweighted,
    /// A known backend, same weight: only its lease moved.
    Refreshed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    weight: u32,
    ttl: Duration,
    renewed: Instant,
}

/// Leased backends, grouped by what they serve (a VIP name for announcements, a service for adopted backends).
#[derive(Debug, Clone)]
pub struct Leases<G> {
    groups: BTreeMap<G, BTreeMap<DestinationKey, Lease>>,
    len: usize,
}

impl<G> Default for Leases<G> {
    fn default() -> Self {
        Self { groups: BTreeMap::new(), len: 0 }
    }
}

impl<G: Ord + Clone> Leases<G> {
    /// Adds or renews a backend of `group` for `ttl` from `now`.
    pub fn renew(&mut self, group: &G, backend: DestinationKey, weight: u32, ttl: Duration, now: Instant) -> Renewal {
        let lease = Lease { weight, ttl, renewed: now };
        let backends = self.groups.entry(group.clone()).or_default();
        match backends.insert(backend, lease) {
            None => {
                self.len += 1;
                Renewal::Added
            }
            Some(old) if old.weight != weight => Renewal::Reweighted,
            Some(_) => Renewal::Refreshed,
        }
    }

    /// Removes a backend; returns whether it was there.
    pub fn remove(&mut self, group: &G, backend: &DestinationKey) -> bool {
        let Some(backends) = self.groups.get_mut(group) else { return false };
        let removed = backends.remove(backend).is_some();
        if backends.is_empty() {
            self.groups.remove(group);
        }
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Removes every lease that ran out by `now`; returns what was removed.
    pub fn prune(&mut self, now: Instant) -> Vec<(G, DestinationKey)> {
        let mut pruned = Vec::new();
        self.groups.retain(|group, backends| {
            backends.retain(|backend, lease| {
                let alive = now.saturating_duration_since(lease.renewed) < lease.ttl;
                if !alive {
                    pruned.push((group.clone(), *backend));
                }
                alive
            });
            !backends.is_empty()
        });
        self.len -= pruned.len();
        pruned
    }

    /// Treats every lease as renewed at `now` (after a NATS outage, during which nobody could renew).
    pub fn renew_all(&mut self, now: Instant) {
        for lease in self.groups.values_mut().flat_map(BTreeMap::values_mut) {
            lease.renewed = now;
        }
    }

    /// The backends of `group` and their weights.
    pub fn group(&self, group: &G) -> impl Iterator<Item = (DestinationKey, u32)> + '_ {
        self.groups.get(group).into_iter().flat_map(|backends| backends.iter().map(|(key, lease)| (*key, lease.weight)))
    }

    /// Every group and backend, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&G, DestinationKey, u32)> + '_ {
        self.groups.iter().flat_map(|(group, backends)| backends.iter().map(move |(key, lease)| (group, *key, lease.weight)))
    }

    /// How many backends are leased.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is leased.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn cell(last: u8) -> DestinationKey {
        DestinationKey { address: IpAddr::from([198, 18, 1, last]), port: 10001 }
    }

    const TTL: Duration = Duration::from_secs(30);

    #[test]
    fn renewals_report_what_changed() {
        let now = Instant::now();
        let mut leases = Leases::default();
        let web = "web".to_owned();
        assert_eq!(leases.renew(&web, cell(2), 1, TTL, now), Renewal::Added);
        assert_eq!(leases.renew(&web, cell(2), 1, TTL, now), Renewal::Refreshed);
        assert_eq!(leases.renew(&web, cell(2), 3, TTL, now), Renewal::Reweighted);
        assert_eq!(leases.group(&web).collect::<Vec<_>>(), vec![(cell(2), 3)]);
        assert_eq!(leases.len(), 1);
    }

    #[test]
    fn leases_expire_unless_renewed() {
        let start = Instant::now();
        let mut leases = Leases::default();
        let web = "web".to_owned();
        leases.renew(&web, cell(2), 1, TTL, start);
        leases.renew(&web, cell(3), 1, Duration::from_secs(5), start);
        assert!(leases.prune(start + Duration::from_secs(4)).is_empty());
        leases.renew(&web, cell(2), 1, TTL, start + Duration::from_secs(20));
        assert_eq!(leases.prune(start + Duration::from_secs(5)), vec![(web.clone(), cell(3))]);
        assert!(leases.prune(start + Duration::from_secs(49)).is_empty());
        assert_eq!(leases.prune(start + Duration::from_secs(50)), vec![(web.clone(), cell(2))]);
        assert!(leases.is_empty());
        assert_eq!(leases.group(&web).count(), 0);
    }

    #[test]
    fn renew_all_restarts_every_lease() {
        let start = Instant::now();
        let mut leases = Leases::default();
        leases.renew(&"a".to_owned(), cell(2), 1, TTL, start);
        leases.renew(&"b".to_owned(), cell(3), 1, TTL, start);
        leases.renew_all(start + Duration::from_secs(100));
        assert!(leases.prune(start + Duration::from_secs(129)).is_empty());
        assert_eq!(leases.prune(start + Duration::from_secs(130)).len(), 2);
    }

    #[test]
    fn remove_reports_presence() {
        let now = Instant::now();
        let mut leases = Leases::default();
        let web = "web".to_owned();
        leases.renew(&web, cell(2), 1, TTL, now);
        assert!(!leases.remove(&web, &cell(3)));
        assert!(!leases.remove(&"other".to_owned(), &cell(2)));
        assert!(leases.remove(&web, &cell(2)));
        assert!(leases.is_empty());
        assert_eq!(leases.iter().count(), 0);
    }
}
