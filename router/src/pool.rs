//! A route's endpoints and how one is chosen for a request.
//!
//! A pool is immutable once published: a registration that adds or removes an endpoint builds a new pool and
//! swaps it into the table, so readers never see a half-updated list and never take a lock. The only shared
//! mutable state is atomics: the round-robin cursor here, and the per-endpoint counters in [`Endpoint`].
//!
//! There is one pool per route, so what most routes do not use (a consistent-hash table, a route-service binding)
//! sits out of line, absent when unused.

use crate::endpoint::Endpoint;
use crate::maglev;
use crate::route_key::RouteKey;
use crate::route_service::Binding;
use http::HeaderName;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use switchyard_config::messages::LbAlgorithm;

/// Consistent hashing on a request header.
#[derive(Debug)]
pub struct HashPolicy {
    header: HeaderName,
    table: Box<[u32]>,
}

impl HashPolicy {
    /// The header whose value is hashed.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }
}

/// The endpoints serving one route.
#[derive(Debug)]
pub struct Pool {
    key: RouteKey,
    endpoints: Box<[Arc<Endpoint>]>,
    extras: Option<Box<Extras>>,
    cursor: AtomicU32,
    algorithm: LbAlgorithm,
}

/// What few routes use.
#[derive(Debug)]
struct Extras {
    hash: Option<HashPolicy>,
    route_service: Option<Arc<Binding>>,
    /// For a pool with no endpoints: when it was built that way (its grace period runs from then).
    emptied_ms: Option<u64>,
}

/// Which endpoints a request has already tried, by index (the first 64 are tracked; a pool that large simply
/// allows a repeat).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attempted(u64);

impl Attempted {
    fn contains(self, index: usize) -> bool {
        index < 64 && self.0 & (1 << index) != 0
    }

    /// Records an attempt on `index`.
    pub fn add(&mut self, index: usize) {
        if index < 64 {
            self.0 |= 1 << index;
        }
    }
}

/// The limits a choice must respect.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most requests in flight per endpoint; 0 means unlimited.
    pub max_conns: u32,
    /// How long a failed endpoint is passed over while others are available.
    pub failure_window_ms: u64,
    /// Now, on the clock the failure marks use.
    pub now_ms: u64,
}

impl Limits {
    fn at_limit(&self, endpoint: &Endpoint) -> bool {
        self.max_conns != 0 && endpoint.in_flight() >= self.max_conns
    }
}

/// The outcome of a choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Use the endpoint at this index.
    Endpoint(usize),
    /// The pool has no endpoints.
    Empty,
    /// Every endpoint not yet tried is at `max_conns`.
    AtLimit,
    /// Every endpoint has been tried.
    Exhausted,
}

impl Pool {
    /// A pool for `key`, built at `now_ms`. `cursor_seed` sets where round-robin starts (callers pass a random value).
    pub fn new(
        key: RouteKey,
        endpoints: Vec<Arc<Endpoint>>,
        algorithm: LbAlgorithm,
        hash_header: Option<HeaderName>,
        cursor_seed: usize,
        now_ms: u64,
    ) -> Self {
        let hash = match (algorithm, hash_header) {
            (LbAlgorithm::Hash, Some(header)) => {
                let names: Vec<&str> = endpoints.iter().map(|e| e.identity()).collect();
                Some(HashPolicy { header, table: maglev::build(&names) })
            }
            _ => None,
        };
        // The turn is kept modulo the pool size, so 32 bits hold it.
        let cursor = if endpoints.is_empty() { 0 } else { u32::try_from(cursor_seed % endpoints.len()).unwrap_or(0) };
        // The route is bound when any member says so (the most recent registration's URL wins), so a route caught
        // half-way through a rebind is never served around its route service.
        let route_service = endpoints
            .iter()
            .rev()
            .map(|e| e.details().route_service_url.as_str())
            .find(|url| !url.is_empty())
            .map(|url| Arc::new(Binding::parse(url)));
        let emptied_ms = endpoints.is_empty().then_some(now_ms);
        let extras = (hash.is_some() || route_service.is_some() || emptied_ms.is_some())
            .then(|| Box::new(Extras { hash, route_service, emptied_ms }));
        Self { key, endpoints: endpoints.into_boxed_slice(), extras, cursor: AtomicU32::new(cursor), algorithm }
    }

    /// The route service the route is bound to, if any.
    pub fn route_service(&self) -> Option<&Arc<Binding>> {
        self.extras.as_ref()?.route_service.as_ref()
    }

    /// The route this pool serves.
    pub fn key(&self) -> &RouteKey {
        &self.key
    }

    /// The endpoints, in a stable order.
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// The endpoint at `index`.
    pub fn endpoint(&self, index: usize) -> Option<&Arc<Endpoint>> {
        self.endpoints.get(index)
    }

    /// Whether the pool has no endpoints (kept only to answer 503).
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The balancing algorithm.
    pub fn algorithm(&self) -> LbAlgorithm {
        self.algorithm
    }

    /// The hash policy, for `hash` pools that name a header.
    pub fn hash_policy(&self) -> Option<&HashPolicy> {
        self.extras.as_ref()?.hash.as_ref()
    }

    /// For a pool with no endpoints, when it was built empty (`now_ms` as given to [`Pool::new`]).
    pub fn emptied_ms(&self) -> Option<u64> {
        self.extras.as_ref()?.emptied_ms
    }

    /// The round-robin position, carried into a rebuilt pool so turns continue where they were.
    pub fn cursor(&self) -> usize {
        self.cursor.load(Ordering::Relaxed) as usize
    }

    /// Index of the endpoint with this private instance id (sticky sessions).
    pub fn find_instance(&self, private_instance_id: &[u8]) -> Option<usize> {
        if private_instance_id.is_empty() {
            return None;
        }
        self.endpoints.iter().position(|e| e.private_instance_id().as_bytes() == private_instance_id)
    }

    /// Index of the endpoint with this app GUID and instance index (`X-CF-APP-INSTANCE`).
    pub fn find_app_instance(&self, app_id: &[u8], index: &[u8]) -> Option<usize> {
        if app_id.is_empty() || index.is_empty() {
            return None;
        }
        self.endpoints.iter().position(|e| e.app_id().as_bytes() == app_id && e.instance_index().as_bytes() == index)
    }

    /// Chooses an endpoint not yet `tried`, by the pool's algorithm. `hash_key` is the value of the hash header,
    /// when the request carries it.
    pub fn choose(&self, hash_key: Option<&[u8]>, tried: Attempted, limits: &Limits) -> Choice {
        if self.endpoints.is_empty() {
            return Choice::Empty;
        }
        if let (Some(policy), Some(key)) = (self.hash_policy(), hash_key)
            && let Some(index) = self.choose_hashed(policy, key, tried, limits) {
                return Choice::Endpoint(index);
            }
        match self.algorithm {
            LbAlgorithm::LeastConnection => self.choose_least_connection(tried, limits),
            LbAlgorithm::RoundRobin | LbAlgorithm::Hash => self.choose_round_robin(tried, limits),
        }
    }

    /// Where the next turn starts among `len` endpoints.
    fn next_turn(&self, len: usize) -> usize {
        self.cursor.fetch_add(1, Ordering::Relaxed) as usize % len
    }

    /// Walks the candidates in round-robin order from the next turn: the first healthy one wins; failing that,
    /// the first recently failed one; failing that, the reason none is usable.
    fn choose_round_robin(&self, tried: Attempted, limits: &Limits) -> Choice {
        let len = self.endpoints.len();
        let start = self.next_turn(len);
        let mut fallback = None;
        let mut untried = 0;
        for step in 0..len {
            let index = (start + step) % len;
            let Some(endpoint) = self.endpoints.get(index) else { continue };
            if tried.contains(index) {
                continue;
            }
            untried += 1;
            if limits.at_limit(endpoint) {
                continue;
            }
            if !endpoint.failed_recently(limits.now_ms, limits.failure_window_ms) {
                return Choice::Endpoint(index);
            }
            fallback.get_or_insert(index);
        }
        Self::settle(fallback, untried)
    }

    /// The untried endpoint with the fewest requests in flight, healthy ones first. Ties go to the one that comes
    /// first from a rotating start, so equal endpoints share the load.
    fn choose_least_connection(&self, tried: Attempted, limits: &Limits) -> Choice {
        let len = self.endpoints.len();
        let start = self.next_turn(len);
        let mut best: Option<(bool, u32, usize)> = None;
        let mut untried = 0;
        for step in 0..len {
            let index = (start + step) % len;
            let Some(endpoint) = self.endpoints.get(index) else { continue };
            if tried.contains(index) {
                continue;
            }
            untried += 1;
            if limits.at_limit(endpoint) {
                continue;
            }
            let rank = (endpoint.failed_recently(limits.now_ms, limits.failure_window_ms), endpoint.in_flight(), index);
            if best.is_none_or(|(failed, load, _)| (rank.0, rank.1) < (failed, load)) {
                best = Some(rank);
            }
        }
        Self::settle(best.map(|(_, _, index)| index), untried)
    }

    fn choose_hashed(&self, policy: &HashPolicy, key: &[u8], tried: Attempted, limits: &Limits) -> Option<usize> {
        let table = &policy.table;
        let start = maglev::slot(maglev::key_hash(key), table.len());
        // Walking forward from the key's slot gives the same fallback order for the same key on every router.
        // One pass over as many slots as there are endpoints times a few is enough to meet each of them.
        let budget = table.len().min(self.endpoints.len().saturating_mul(8).max(64));
        (0..budget).find_map(|step| {
            let slot = (start + step) % table.len();
            let index = usize::try_from(*table.get(slot)?).ok()?;
            let endpoint = self.endpoints.get(index)?;
            let usable = !tried.contains(index)
                && !limits.at_limit(endpoint)
                && !endpoint.failed_recently(limits.now_ms, limits.failure_window_ms);
            usable.then_some(index)
        })
    }

    fn settle(choice: Option<usize>, untried: usize) -> Choice {
        match choice {
            Some(index) => Choice::Endpoint(index),
            None if untried > 0 => Choice::AtLimit,
            None => Choice::Exhausted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::InFlight;
    use std::time::Duration;
    use switchyard_config::messages::Registration;

    fn endpoint(port: u16, instance: &str) -> Arc<Endpoint> {
        let r: Registration = serde_json::from_str(&format!(
            r#"{{"host":"10.0.0.1","port":{port},"uris":["a"],"app":"app","private_instance_id":"{instance}","private_instance_index":"{port}"}}"#
        ))
        .unwrap();
        Arc::new(Endpoint::from_registration(&r, Duration::from_secs(120), 1).unwrap())
    }

    fn pool(n: u16, algorithm: LbAlgorithm) -> Pool {
        let endpoints = (0..n).map(|i| endpoint(8000 + i, &format!("i{i}"))).collect();
        let header = (algorithm == LbAlgorithm::Hash).then(|| HeaderName::from_static("x-user"));
        Pool::new(RouteKey::parse("a").unwrap(), endpoints, algorithm, header, 0, 1)
    }

    fn limits() -> Limits {
        Limits { max_conns: 0, failure_window_ms: 1000, now_ms: 10_000 }
    }

    fn pick(pool: &Pool, key: Option<&[u8]>) -> usize {
        match pool.choose(key, Attempted::default(), &limits()) {
            Choice::Endpoint(i) => i,
            other => panic!("expected an endpoint, got {other:?}"),
        }
    }

    #[test]
    fn round_robin_spreads_evenly() {
        let pool = pool(4, LbAlgorithm::RoundRobin);
        let mut counts = [0; 4];
        for _ in 0..400 {
            counts[pick(&pool, None)] += 1;
        }
        assert_eq!(counts, [100; 4]);
    }

    #[test]
    fn round_robin_skips_recent_failures_but_uses_them_as_last_resort() {
        let pool = pool(3, LbAlgorithm::RoundRobin);
        pool.endpoints()[1].mark_failed(9_500);
        for _ in 0..30 {
            assert_ne!(pick(&pool, None), 1);
        }
        pool.endpoints()[0].mark_failed(9_500);
        pool.endpoints()[2].mark_failed(9_500);
        let chosen = pick(&pool, None);
        assert!(chosen < 3);
        // Outside the window the mark no longer counts.
        let later = Limits { now_ms: 20_000, ..limits() };
        let mut seen = [false; 3];
        for _ in 0..3 {
            if let Choice::Endpoint(i) = pool.choose(None, Attempted::default(), &later) {
                seen[i] = true;
            }
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn attempted_endpoints_are_not_chosen_again() {
        let pool = pool(2, LbAlgorithm::RoundRobin);
        let mut tried = Attempted::default();
        let Choice::Endpoint(first) = pool.choose(None, tried, &limits()) else { panic!() };
        tried.add(first);
        let Choice::Endpoint(second) = pool.choose(None, tried, &limits()) else { panic!() };
        assert_ne!(first, second);
        tried.add(second);
        assert_eq!(pool.choose(None, tried, &limits()), Choice::Exhausted);
    }

    #[test]
    fn max_conns_is_respected() {
        let pool = pool(2, LbAlgorithm::RoundRobin);
        let limited = Limits { max_conns: 1, ..limits() };
        let _a = InFlight::start(Arc::clone(&pool.endpoints()[0]));
        for _ in 0..10 {
            assert_eq!(pool.choose(None, Attempted::default(), &limited), Choice::Endpoint(1));
        }
        let _b = InFlight::start(Arc::clone(&pool.endpoints()[1]));
        assert_eq!(pool.choose(None, Attempted::default(), &limited), Choice::AtLimit);
    }

    #[test]
    fn least_connection_prefers_idle_endpoints() {
        let pool = pool(3, LbAlgorithm::LeastConnection);
        let _busy0 = InFlight::start(Arc::clone(&pool.endpoints()[0]));
        let _busy2a = InFlight::start(Arc::clone(&pool.endpoints()[2]));
        let _busy2b = InFlight::start(Arc::clone(&pool.endpoints()[2]));
        for _ in 0..10 {
            assert_eq!(pick(&pool, None), 1);
        }
    }

    #[test]
    fn least_connection_distributes_equal_load() {
        let pool = pool(3, LbAlgorithm::LeastConnection);
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[pick(&pool, None)] += 1;
        }
        assert_eq!(counts, [100; 3]);
    }

    #[test]
    fn hash_keeps_a_key_on_one_endpoint_and_spreads_keys() {
        let pool = pool(5, LbAlgorithm::Hash);
        let mut counts = [0usize; 5];
        for user in 0..5000 {
            let key = format!("user-{user}");
            let first = pick(&pool, Some(key.as_bytes()));
            assert_eq!(pick(&pool, Some(key.as_bytes())), first);
            counts[first] += 1;
        }
        for count in counts {
            assert!((800..1200).contains(&count), "skewed distribution {counts:?}");
        }
        // Without the header, hash pools fall back to round-robin.
        let mut seen = [false; 5];
        for _ in 0..5 {
            seen[pick(&pool, None)] = true;
        }
        assert_eq!(seen, [true; 5]);
    }

    #[test]
    fn hash_moves_a_key_off_a_failed_endpoint() {
        let pool = pool(4, LbAlgorithm::Hash);
        let home = pick(&pool, Some(b"alice"));
        pool.endpoints()[home].mark_failed(9_900);
        let moved = pick(&pool, Some(b"alice"));
        assert_ne!(moved, home);
        assert_eq!(pick(&pool, Some(b"alice")), moved, "the fallback is stable too");
    }

    #[test]
    fn instance_lookups() {
        let pool = pool(3, LbAlgorithm::RoundRobin);
        assert_eq!(pool.find_instance(b"i2"), Some(2));
        assert_eq!(pool.find_instance(b"nope"), None);
        assert_eq!(pool.find_instance(b""), None);
        assert_eq!(pool.find_app_instance(b"app", b"8001"), Some(1));
        assert_eq!(pool.find_app_instance(b"other", b"8001"), None);
    }

    #[test]
    fn empty_pool_says_so() {
        let empty = Pool::new(RouteKey::parse("a").unwrap(), Vec::new(), LbAlgorithm::RoundRobin, None, 3, 1);
        assert_eq!(empty.choose(None, Attempted::default(), &limits()), Choice::Empty);
        assert_eq!(empty.emptied_ms(), Some(1), "an empty pool's grace runs from when it was built");
        assert_eq!(pool(2, LbAlgorithm::RoundRobin).emptied_ms(), None);
    }
}
