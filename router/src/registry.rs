//! The registry: turns bus messages into versions of the route table.
//!
//! It is the single writer. Every change, whether the first registration of a route, a refresh, an update of
//! an endpoint's attributes, an unregister or a prune, goes through the same few functions and produces the next
//! table version, which the caller publishes. It holds no clock and does no IO: callers pass `now_ms` (see
//! [`crate::clock`]) and read the outcome to update metrics and logs.
//!
//! A refresh of an unchanged endpoint is the common case (every emitter re-registers every ~20s), so it costs
//! only an atomic store and produces no new table version.

use crate::endpoint::{Endpoint, EndpointError, identity_of};
use crate::pool::Pool;
use crate::route_key::RouteKey;
use crate::table::RouteTable;
use http::HeaderName;
use std::sync::Arc;
use std::time::Duration;
use switchyard_config::messages::{LbAlgorithm, Registration};

/// How the registry treats time and pools.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// The global TTL; registrations may only shorten it.
    pub stale_threshold: Duration,
    /// Algorithm for routes whose registrations name none (or an unknown one).
    pub default_algorithm: LbAlgorithm,
    /// Keep an emptied pool this long so requests get 503 instead of 404; `None` removes the route at once.
    pub empty_pool_grace: Option<Duration>,
}

/// What a message or a prune did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Routes created.
    pub routes_added: usize,
    /// Routes deleted.
    pub routes_removed: usize,
    /// Routes whose balancing changed with the same endpoints.
    pub routes_updated: usize,
    /// Endpoints added to a pool.
    pub endpoints_added: usize,
    /// Endpoints whose attributes changed.
    pub endpoints_updated: usize,
    /// Endpoints refreshed with no change.
    pub endpoints_refreshed: usize,
    /// Endpoints removed from a pool.
    pub endpoints_removed: usize,
    /// Uris that could not be read as routes.
    pub invalid_uris: usize,
    /// An unknown balancing algorithm the message named (the default was used instead).
    pub unknown_algorithm: Option<String>,
}

impl Outcome {
    /// Whether the table changed, so a new version must be published.
    pub fn changed(&self) -> bool {
        self.routes_added + self.routes_removed + self.routes_updated + self.endpoints_added + self.endpoints_updated + self.endpoints_removed > 0
    }

    /// Adds another outcome's counts to this one.
    pub fn merge(&mut self, other: Outcome) {
        self.routes_added += other.routes_added;
        self.routes_removed += other.routes_removed;
        self.routes_updated += other.routes_updated;
        self.endpoints_added += other.endpoints_added;
        self.endpoints_updated += other.endpoints_updated;
        self.endpoints_refreshed += other.endpoints_refreshed;
        self.endpoints_removed += other.endpoints_removed;
        self.invalid_uris += other.invalid_uris;
        if other.unknown_algorithm.is_some() {
            self.unknown_algorithm = other.unknown_algorithm;
        }
    }
}

/// A request from the proxy to drop an endpoint from a route (the proxy only reads the table; the registry is its
/// single writer).
#[derive(Debug, Clone)]
pub struct Removal {
    /// The route the endpoint failed on.
    pub route: RouteKey,
    /// The endpoint object that failed.
    pub endpoint: Arc<Endpoint>,
}

/// The per-route balancing a registration asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Balancing {
    algorithm: LbAlgorithm,
    hash_header: Option<HeaderName>,
}

impl Balancing {
    fn of(pool: &Pool) -> Self {
        Self { algorithm: pool.algorithm(), hash_header: pool.hash_policy().map(|h| h.header().clone()) }
    }
}

/// The authoritative route state and its current table version.
#[derive(Debug)]
pub struct Registry {
    config: RegistryConfig,
    table: RouteTable,
    endpoints: usize,
    rng: u64,
}

impl Registry {
    /// An empty registry. `seed` makes round-robin starting points reproducible under test.
    pub fn new(config: RegistryConfig, seed: u64) -> Self {
        Self { config, table: RouteTable::new(), endpoints: 0, rng: seed | 1 }
    }

    /// The current table version. Clone it (O(1)) to publish.
    pub fn table(&self) -> &RouteTable {
        &self.table
    }

    /// Endpoints across all pools (an endpoint in two pools counts twice).
    pub fn endpoint_count(&self) -> usize {
        self.endpoints
    }

    /// Applies a `router.register` message.
    pub fn register(&mut self, registration: &Registration, now_ms: u64) -> Result<Outcome, EndpointError> {
        let mut outcome = Outcome::default();
        let balancing = self.balancing_of(registration, &mut outcome);
        let identity = identity_of(registration);
        let max_ttl = self.config.stale_threshold;
        let unchanged = |endpoint: &Endpoint| endpoint.describes(registration, max_ttl);
        let keys = Self::keys_of(registration, &mut outcome);
        // Reuse an identical endpoint already serving one of the uris, so one backend is one object (one
        // in-flight count) however many routes it serves.
        let mut endpoint: Option<Arc<Endpoint>> = keys.iter().find_map(|key| {
            let pool = self.table.get(key)?;
            pool.endpoints().iter().find(|e| e.identity() == identity && unchanged(e)).cloned()
        });
        for key in keys {
            let existing_pool = self.table.get(&key).cloned();
            let position = existing_pool.as_ref().and_then(|pool| pool.endpoints().iter().position(|e| e.identity() == identity));
            if let (Some(pool), Some(index)) = (&existing_pool, position) {
                let Some(current) = pool.endpoint(index) else { continue };
                if unchanged(current) && Balancing::of(pool) == balancing {
                    current.refresh(now_ms);
                    outcome.endpoints_refreshed += 1;
                    continue;
                }
            }
            let fresh = match &endpoint {
                Some(endpoint) => Arc::clone(endpoint),
                None => {
                    let created = Arc::new(Endpoint::from_registration(registration, self.config.stale_threshold, now_ms)?);
                    endpoint = Some(Arc::clone(&created));
                    created
                }
            };
            fresh.refresh(now_ms);
            let mut members: Vec<Arc<Endpoint>> = existing_pool.as_ref().map(|p| p.endpoints().to_vec()).unwrap_or_default();
            match position.and_then(|index| members.get_mut(index)) {
                Some(slot) => {
                    if unchanged(slot) {
                        outcome.routes_updated += 1;
                    } else {
                        fresh.inherit_state(slot);
                        outcome.endpoints_updated += 1;
                    }
                    *slot = fresh;
                }
                None => {
                    members.push(fresh);
                    outcome.endpoints_added += 1;
                    self.endpoints += 1;
                }
            }
            if existing_pool.is_none() {
                outcome.routes_added += 1;
            }
            self.publish(key, members, &balancing, existing_pool.as_deref(), now_ms);
        }
        Ok(outcome)
    }

    /// Applies a `router.unregister` message: removes the endpoint from each uri it names.
    pub fn unregister(&mut self, registration: &Registration, now_ms: u64) -> Outcome {
        let mut outcome = Outcome::default();
        let identity = identity_of(registration);
        for key in Self::keys_of(registration, &mut outcome) {
            let Some(pool) = self.table.get(&key).cloned() else { continue };
            let before = pool.endpoints().len();
            let members: Vec<Arc<Endpoint>> = pool.endpoints().iter().filter(|e| e.identity() != identity).cloned().collect();
            let removed = before - members.len();
            if removed == 0 {
                continue;
            }
            outcome.endpoints_removed += removed;
            self.endpoints -= removed;
            self.replace_members(key, members, &pool, now_ms, &mut outcome);
        }
        outcome
    }

    /// Removes one endpoint from one route because it failed the backend identity check (its TLS certificate is
    /// for another name: the address now belongs to someone else). Only that endpoint object goes, so an endpoint
    /// re-registered with other attributes meanwhile stands; the next registration brings it back, to be removed
    /// again only if it fails again.
    pub fn remove_failed(&mut self, removal: &Removal, now_ms: u64) -> Outcome {
        let mut outcome = Outcome::default();
        let Some(pool) = self.table.get(&removal.route).cloned() else { return outcome };
        let members: Vec<Arc<Endpoint>> = pool.endpoints().iter().filter(|e| !Arc::ptr_eq(e, &removal.endpoint)).cloned().collect();
        let removed = pool.endpoints().len() - members.len();
        if removed == 0 {
            return outcome;
        }
        outcome.endpoints_removed += removed;
        self.endpoints -= removed;
        self.replace_members(removal.route.clone(), members, &pool, now_ms, &mut outcome);
        outcome
    }

    /// Removes endpoints past their TTL, and emptied pools past their grace period.
    pub fn prune(&mut self, now_ms: u64) -> Outcome {
        let mut outcome = Outcome::default();
        let grace_ms = self.config.empty_pool_grace.map(|g| u64::try_from(g.as_millis()).unwrap_or(u64::MAX));
        let mut stale_pools = Vec::new();
        self.table.for_each_pool(|pool| {
            let expired_empty = pool.emptied_ms().is_some_and(|emptied| grace_ms.is_none_or(|g| now_ms.saturating_sub(emptied) >= g));
            if expired_empty || pool.endpoints().iter().any(|e| e.is_stale(now_ms)) {
                stale_pools.push(Arc::clone(pool));
            }
        });
        for pool in stale_pools {
            if pool.is_empty() {
                self.table.set(pool.key(), None);
                outcome.routes_removed += 1;
                continue;
            }
            let members: Vec<Arc<Endpoint>> = pool.endpoints().iter().filter(|e| !e.is_stale(now_ms)).cloned().collect();
            let removed = pool.endpoints().len() - members.len();
            outcome.endpoints_removed += removed;
            self.endpoints -= removed;
            self.replace_members(pool.key().clone(), members, &pool, now_ms, &mut outcome);
        }
        outcome
    }

    /// Marks every endpoint as just seen: used when NATS comes back after an outage during which pruning was
    /// suspended, so emitters get a full TTL to re-register.
    pub fn refresh_all(&mut self, now_ms: u64) {
        self.table.for_each_pool(|pool| pool.endpoints().iter().for_each(|e| e.refresh(now_ms)));
    }

    fn keys_of(registration: &Registration, outcome: &mut Outcome) -> Vec<RouteKey> {
        let mut keys: Vec<RouteKey> = Vec::with_capacity(registration.uris.len());
        for uri in &registration.uris {
            match RouteKey::parse(uri) {
                Some(key) if !keys.contains(&key) => keys.push(key),
                Some(_) => {}
                None => outcome.invalid_uris += 1,
            }
        }
        keys
    }

    fn balancing_of(&self, registration: &Registration, outcome: &mut Outcome) -> Balancing {
        let algorithm = match registration.lb_algorithm() {
            Ok(Some(algorithm)) => algorithm,
            Ok(None) => self.config.default_algorithm,
            Err(unknown) => {
                outcome.unknown_algorithm = Some(unknown);
                self.config.default_algorithm
            }
        };
        let hash_header = match algorithm {
            LbAlgorithm::Hash => HeaderName::from_bytes(registration.options.hash_header.as_bytes()).ok(),
            _ => None,
        };
        Balancing { algorithm, hash_header }
    }

    /// Publishes the members left after a removal: a new pool, an empty pool kept for 503, or no route.
    fn replace_members(&mut self, key: RouteKey, members: Vec<Arc<Endpoint>>, previous: &Pool, now_ms: u64, outcome: &mut Outcome) {
        if members.is_empty() && self.config.empty_pool_grace.is_none() {
            self.table.set(&key, None);
            outcome.routes_removed += 1;
            return;
        }
        let balancing = Balancing::of(previous);
        self.publish(key, members, &balancing, Some(previous), now_ms);
    }

    fn publish(&mut self, key: RouteKey, members: Vec<Arc<Endpoint>>, balancing: &Balancing, previous: Option<&Pool>, now_ms: u64) {
        let cursor = match previous {
            Some(pool) => pool.cursor(),
            None => self.next_random(),
        };
        let pool = Pool::new(key.clone(), members, balancing.algorithm, balancing.hash_header.clone(), cursor, now_ms);
        self.table.set(&key, Some(Arc::new(pool)));
    }

    /// xorshift64*: cheap, deterministic for a seed, good enough to spread round-robin starting points.
    fn next_random(&mut self) -> usize {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        usize::try_from(self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route_key::RequestHost;

    const SECOND: u64 = 1000;

    fn config() -> RegistryConfig {
        RegistryConfig { stale_threshold: Duration::from_secs(120), default_algorithm: LbAlgorithm::RoundRobin, empty_pool_grace: None }
    }

    fn message(json: &str) -> Registration {
        serde_json::from_str(json).unwrap()
    }

    fn reg(host: &str, port: u16, uris: &[&str]) -> Registration {
        let uris: Vec<String> = uris.iter().map(|u| format!("\"{u}\"")).collect();
        message(&format!(r#"{{"host":"{host}","port":{port},"uris":[{}]}}"#, uris.join(",")))
    }

    fn members(registry: &Registry, uri: &str) -> Vec<String> {
        let host = RequestHost::parse(uri.split('/').next().unwrap().as_bytes()).unwrap();
        let path = uri.find('/').map_or("/", |i| &uri[i..]);
        registry
            .table()
            .lookup(&host, path)
            .map(|pool| pool.endpoints().iter().map(|e| e.identity().to_owned()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn first_registration_creates_routes_for_each_uri() {
        let mut r = Registry::new(config(), 1);
        let outcome = r.register(&reg("10.0.0.1", 80, &["a.com", "b.com/x"]), SECOND).unwrap();
        assert_eq!((outcome.routes_added, outcome.endpoints_added), (2, 2));
        assert!(outcome.changed());
        assert_eq!(members(&r, "a.com"), ["10.0.0.1:80"]);
        assert_eq!(members(&r, "b.com/x/y"), ["10.0.0.1:80"]);
        assert_eq!(r.table().len(), 2);
        assert_eq!(r.endpoint_count(), 2);
        // The same backend serving two routes is one object.
        let a = r.table().get(&RouteKey::parse("a.com").unwrap()).unwrap().endpoints()[0].clone();
        let b = r.table().get(&RouteKey::parse("b.com/x").unwrap()).unwrap().endpoints()[0].clone();
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn re_registration_refreshes_without_a_new_version() {
        let mut r = Registry::new(config(), 1);
        r.register(&reg("10.0.0.1", 80, &["a.com"]), SECOND).unwrap();
        let before = r.table().clone();
        let outcome = r.register(&reg("10.0.0.1", 80, &["a.com"]), 2 * SECOND).unwrap();
        assert_eq!(outcome.endpoints_refreshed, 1);
        assert!(!outcome.changed());
        let same_pool = Arc::ptr_eq(
            before.get(&RouteKey::parse("a.com").unwrap()).unwrap(),
            r.table().get(&RouteKey::parse("a.com").unwrap()).unwrap(),
        );
        assert!(same_pool);
    }

    #[test]
    fn changed_attributes_replace_the_endpoint() {
        let mut r = Registry::new(config(), 1);
        r.register(&message(r#"{"host":"10.0.0.1","port":80,"uris":["a.com"],"app":"old"}"#), SECOND).unwrap();
        let outcome = r.register(&message(r#"{"host":"10.0.0.1","port":80,"uris":["a.com"],"app":"new"}"#), SECOND).unwrap();
        assert_eq!(outcome.endpoints_updated, 1);
        let pool = r.table().get(&RouteKey::parse("a.com").unwrap()).unwrap().clone();
        assert_eq!(pool.endpoints().len(), 1);
        assert_eq!(pool.endpoints()[0].app_id(), "new");
    }

    #[test]
    fn tls_port_is_the_identity_for_tls_endpoints() {
        let mut r = Registry::new(config(), 1);
        r.register(&message(r#"{"host":"10.0.0.1","port":80,"tls_port":443,"uris":["a.com"]}"#), SECOND).unwrap();
        assert_eq!(members(&r, "a.com"), ["10.0.0.1:443"]);
        r.unregister(&message(r#"{"host":"10.0.0.1","port":80,"uris":["a.com"]}"#), SECOND);
        assert_eq!(members(&r, "a.com"), ["10.0.0.1:443"], "the plain port is another identity");
        r.unregister(&message(r#"{"host":"10.0.0.1","tls_port":443,"uris":["a.com"]}"#), SECOND);
        assert!(members(&r, "a.com").is_empty());
    }

    #[test]
    fn unregister_removes_only_named_uris_and_deletes_empty_routes() {
        let mut r = Registry::new(config(), 1);
        r.register(&reg("10.0.0.1", 80, &["a.com", "b.com"]), SECOND).unwrap();
        r.register(&reg("10.0.0.2", 80, &["a.com"]), SECOND).unwrap();
        let outcome = r.unregister(&reg("10.0.0.1", 80, &["a.com"]), SECOND);
        assert_eq!(outcome.endpoints_removed, 1);
        assert_eq!(members(&r, "a.com"), ["10.0.0.2:80"]);
        assert_eq!(members(&r, "b.com"), ["10.0.0.1:80"]);
        let outcome = r.unregister(&reg("10.0.0.1", 80, &["b.com"]), SECOND);
        assert_eq!(outcome.routes_removed, 1);
        assert!(r.table().get(&RouteKey::parse("b.com").unwrap()).is_none());
        assert_eq!(r.table().len(), 1);
        assert_eq!(r.endpoint_count(), 1);
        // Unregistering something unknown changes nothing.
        assert!(!r.unregister(&reg("10.9.9.9", 80, &["a.com", "zzz.com"]), SECOND).changed());
    }

    #[test]
    fn prune_honours_each_endpoints_ttl() {
        let mut r = Registry::new(config(), 1);
        r.register(&reg("10.0.0.1", 80, &["a.com"]), 0).unwrap();
        r.register(&message(r#"{"host":"10.0.0.2","port":80,"uris":["a.com"],"stale_threshold_in_seconds":30}"#), 0).unwrap();
        assert!(!r.prune(30 * SECOND).changed(), "exactly at the TTL is not yet stale");
        let outcome = r.prune(30 * SECOND + 1);
        assert_eq!(outcome.endpoints_removed, 1);
        assert_eq!(members(&r, "a.com"), ["10.0.0.1:80"]);
        r.register(&reg("10.0.0.1", 80, &["a.com"]), 100 * SECOND).unwrap();
        assert!(!r.prune(220 * SECOND).changed(), "refreshed at 100s, stale after 220s");
        let outcome = r.prune(220 * SECOND + 1);
        assert_eq!((outcome.endpoints_removed, outcome.routes_removed), (1, 1));
        assert!(r.table().is_empty());
    }

    #[test]
    fn a_failed_identity_check_removes_that_endpoint_object_only() {
        let mut r = Registry::new(config(), 1);
        let tls = r#"{"host":"10.0.0.1","tls_port":443,"uris":["a.com","b.com"],"server_cert_domain_san":"a"}"#;
        r.register(&message(tls), 0).unwrap();
        r.register(&reg("10.0.0.2", 80, &["a.com"]), 0).unwrap();
        let key = RouteKey::parse("a.com").unwrap();
        let failed = r.table().get(&key).unwrap().endpoints()[0].clone();
        let outcome = r.remove_failed(&Removal { route: key.clone(), endpoint: Arc::clone(&failed) }, SECOND);
        assert_eq!(outcome.endpoints_removed, 1);
        assert_eq!(members(&r, "a.com"), ["10.0.0.2:80"]);
        assert_eq!(members(&r, "b.com"), ["10.0.0.1:443"], "other routes keep it");
        assert!(!r.remove_failed(&Removal { route: key.clone(), endpoint: failed }, SECOND).changed(), "already gone");
        assert!(!r.remove_failed(&Removal { route: RouteKey::parse("zzz.com").unwrap(), endpoint: Arc::clone(&r.table().get(&key).unwrap().endpoints()[0]) }, SECOND).changed());
        // The next registration puts it back; it is removed again only if it fails again.
        assert_eq!(r.register(&message(tls), 2 * SECOND).unwrap().endpoints_added, 1);
        assert_eq!(members(&r, "a.com"), ["10.0.0.2:80", "10.0.0.1:443"]);
        assert_eq!(r.endpoint_count(), 3);
    }

    #[test]
    fn tls_endpoints_are_never_pruned() {
        let mut r = Registry::new(config(), 1);
        r.register(&message(r#"{"host":"10.0.0.1","tls_port":443,"uris":["a.com"]}"#), 0).unwrap();
        assert!(!r.prune(10_000 * SECOND).changed());
    }

    #[test]
    fn refresh_all_restarts_every_ttl() {
        let mut r = Registry::new(config(), 1);
        r.register(&reg("10.0.0.1", 80, &["a.com"]), 0).unwrap();
        r.refresh_all(100 * SECOND);
        assert!(!r.prune(200 * SECOND).changed());
        assert!(r.prune(221 * SECOND).changed());
    }

    #[test]
    fn empty_pools_linger_for_the_grace_period() {
        let mut r = Registry::new(RegistryConfig { empty_pool_grace: Some(Duration::from_secs(10)), ..config() }, 1);
        r.register(&reg("10.0.0.1", 80, &["a.com"]), 0).unwrap();
        let outcome = r.unregister(&reg("10.0.0.1", 80, &["a.com"]), SECOND);
        assert_eq!(outcome.routes_removed, 0);
        let pool = r.table().get(&RouteKey::parse("a.com").unwrap()).unwrap().clone();
        assert!(pool.is_empty());
        assert!(!r.prune(10 * SECOND).changed());
        assert_eq!(r.prune(11 * SECOND).routes_removed, 1);
        assert!(r.table().is_empty());
    }

    #[test]
    fn per_route_algorithm_and_unknown_names() {
        let mut r = Registry::new(config(), 1);
        r.register(&message(r#"{"host":"h","port":1,"uris":["a.com"],"options":{"loadbalancing":"least-connection"}}"#), 0).unwrap();
        let pool = r.table().get(&RouteKey::parse("a.com").unwrap()).unwrap().clone();
        assert_eq!(pool.algorithm(), LbAlgorithm::LeastConnection);
        let outcome = r.register(&message(r#"{"host":"h","port":2,"uris":["b.com"],"options":{"lb_algo":"random"}}"#), 0).unwrap();
        assert_eq!(outcome.unknown_algorithm.as_deref(), Some("random"));
        let pool = r.table().get(&RouteKey::parse("b.com").unwrap()).unwrap().clone();
        assert_eq!(pool.algorithm(), LbAlgorithm::RoundRobin);
        r.register(&message(r#"{"host":"h","port":3,"uris":["c.com"],"options":{"lb_algo":"hash","hash_header":"X-User"}}"#), 0).unwrap();
        let pool = r.table().get(&RouteKey::parse("c.com").unwrap()).unwrap().clone();
        assert_eq!(pool.hash_policy().unwrap().header(), "x-user");
    }

    #[test]
    fn changing_the_algorithm_rebuilds_the_pool() {
        let mut r = Registry::new(config(), 1);
        r.register(&reg("h", 1, &["a.com"]), 0).unwrap();
        let outcome = r.register(&message(r#"{"host":"h","port":1,"uris":["a.com"],"options":{"lb_algo":"least-connection"}}"#), 0).unwrap();
        assert_eq!(outcome.routes_updated, 1);
        assert!(outcome.changed());
        let pool = r.table().get(&RouteKey::parse("a.com").unwrap()).unwrap().clone();
        assert_eq!(pool.algorithm(), LbAlgorithm::LeastConnection);
    }

    #[test]
    fn duplicate_and_invalid_uris() {
        let mut r = Registry::new(config(), 1);
        let outcome = r.register(&reg("h", 1, &["a.com", "A.com/", "/nohost"]), 0).unwrap();
        assert_eq!((outcome.routes_added, outcome.invalid_uris), (1, 1));
    }
}
