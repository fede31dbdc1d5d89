//! Route-key normalisation and table lookup, against the reference model in `switchyard_router::reference`.
//!
//! The table is the router's hottest and least obvious code: a copy-on-write hash table of hosts whose context paths
//! are binary-searched, and a wildcard walk that tries only the suffix lengths the table's wildcards have. A wrong
//! answer here sends a request to another tenant's app, so each lookup is compared with the routing rules written the
//! slow way. The fuzzer drives the real registry with registrations and unregistrations of backends on uris built from
//! pieces that collide often (a few labels, `*`, `.`, `/`, `?`, `#`, ports, brackets, case) plus arbitrary text, then
//! asks for hosts and paths built the same way. Checked after every step:
//!
//! - registration uris normalise to the model's key, request hosts to the model's host;
//! - the registry's outcome counts (routes and endpoints added and removed, invalid uris) are the model's;
//! - the table holds exactly the model's routes, each with exactly the model's endpoints;
//! - every lookup returns the model's route, in the current table and in older versions kept from before later
//!   changes (readers keep using a version while the registry derives the next).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use switchyard_config::messages::{LbAlgorithm, MessageLimits, Registration, RouteOptions};
use switchyard_router::endpoint::identity_of;
use switchyard_router::reference;
use switchyard_router::registry::{Registry, RegistryConfig};
use switchyard_router::route_key::{RequestHost, RouteKey};
use switchyard_router::table::RouteTable;

const MAX_OPS: usize = 64;
const MAX_URIS: usize = 8;
const MAX_PIECES: usize = 24;
const MAX_SNAPSHOTS: usize = 3;
const LABELS: [&str; 6] = ["a", "b", "A", "com", "x-y", "Api"];
const APPS: [&str; 3] = ["", "app-1", "app-2"];
const ALGORITHMS: [&str; 5] = ["", "round-robin", "least-connection", "hash", "bogus"];
const ROUTE_SERVICES: [&str; 3] = ["", "https://rs.example.com/bind", "https://[2001:db8::1]:8443"];

#[derive(Arbitrary, Debug)]
struct Input {
    /// Keep emptied pools (the `empty_pool_response_code_503` behaviour) instead of removing their routes.
    grace: bool,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Register(Announcement),
    Unregister(Announcement),
    Lookup { host: Text, path: Text },
    /// Keep the current table version, as a reader still serving requests from it would.
    Snapshot,
}

#[derive(Arbitrary, Debug)]
struct Announcement {
    backend: u8,
    tls: bool,
    app: u8,
    algorithm: u8,
    route_service: u8,
    uris: Vec<Text>,
}

/// Text made of pieces that often build the same or nearly the same names.
#[derive(Arbitrary, Debug)]
struct Text(Vec<Piece>);

#[derive(Arbitrary, Debug)]
enum Piece {
    Label(u8),
    Dot,
    Slash,
    Star,
    Colon,
    Port(u16),
    Query,
    Fragment,
    Open,
    Close,
    Raw(String),
}

impl Text {
    fn render(&self) -> String {
        let mut text = String::new();
        for piece in self.0.iter().take(MAX_PIECES) {
            match piece {
                Piece::Label(i) => text.push_str(pick(&LABELS, *i)),
                Piece::Dot => text.push('.'),
                Piece::Slash => text.push('/'),
                Piece::Star => text.push('*'),
                Piece::Colon => text.push(':'),
                Piece::Port(port) => text.push_str(&port.to_string()),
                Piece::Query => text.push('?'),
                Piece::Fragment => text.push('#'),
                Piece::Open => text.push('['),
                Piece::Close => text.push(']'),
                Piece::Raw(raw) => text.push_str(raw),
            }
        }
        text
    }
}

fn pick<'a>(choices: &[&'a str], index: u8) -> &'a str {
    choices.get(usize::from(index) % choices.len()).copied().unwrap_or_default()
}

impl Announcement {
    fn registration(&self) -> Registration {
        Registration {
            host: format!("10.0.0.{}", self.backend % 4 + 1),
            port: 8080,
            tls_port: if self.tls { 8443 } else { 0 },
            uris: self.uris.iter().take(MAX_URIS).map(Text::render).collect(),
            app: pick(&APPS, self.app).to_owned(),
            route_service_url: pick(&ROUTE_SERVICES, self.route_service).to_owned(),
            options: RouteOptions {
                lb_algo: pick(&ALGORITHMS, self.algorithm).to_owned(),
                hash_header: "x-user".to_owned(),
                ..RouteOptions::default()
            },
            ..Registration::default()
        }
    }
}

/// The model: each route key (as the reference writes it) with the identities of its endpoints.
type Routes = BTreeMap<String, BTreeSet<String>>;

/// The model's keys of `registration`'s uris, without repeats, and how many uris name no route.
fn model_keys(registration: &Registration) -> (Vec<String>, usize) {
    let mut keys = Vec::new();
    let mut invalid = 0;
    for uri in &registration.uris {
        let expected = reference::route_key(uri);
        assert_eq!(RouteKey::parse(uri).map(|key| key.to_string()), expected, "uri {uri:?} normalises differently");
        match expected {
            Some(key) if !keys.contains(&key) => keys.push(key),
            Some(_) => {}
            None => invalid += 1,
        }
    }
    (keys, invalid)
}

fn register(registry: &mut Registry, routes: &mut Routes, registration: &Registration, now_ms: u64) {
    let (keys, invalid) = model_keys(registration);
    let outcome = registry.register(registration, now_ms).expect("a checked registration of plain fields becomes an endpoint");
    let identity = identity_of(registration);
    let (mut routes_added, mut endpoints_added) = (0, 0);
    for key in keys {
        let endpoints = routes.entry(key).or_insert_with(|| {
            routes_added += 1;
            BTreeSet::new()
        });
        if endpoints.insert(identity.clone()) {
            endpoints_added += 1;
        }
    }
    assert_eq!(outcome.invalid_uris, invalid, "invalid uris counted differently");
    assert_eq!((outcome.routes_added, outcome.endpoints_added), (routes_added, endpoints_added), "{outcome:?}");
}

fn unregister(registry: &mut Registry, routes: &mut Routes, registration: &Registration, grace: bool, now_ms: u64) {
    let (keys, invalid) = model_keys(registration);
    let outcome = registry.unregister(registration, now_ms);
    let identity = identity_of(registration);
    let (mut routes_removed, mut endpoints_removed) = (0, 0);
    for key in keys {
        let Some(endpoints) = routes.get_mut(&key) else { continue };
        if endpoints.remove(&identity) {
            endpoints_removed += 1;
            if endpoints.is_empty() && !grace {
                routes.remove(&key);
                routes_removed += 1;
            }
        }
    }
    assert_eq!(outcome.invalid_uris, invalid, "invalid uris counted differently");
    assert_eq!((outcome.routes_removed, outcome.endpoints_removed), (routes_removed, endpoints_removed), "{outcome:?}");
}

/// The table holds the model's routes and nothing else, each with the model's endpoints.
fn assert_table_is(registry: &Registry, routes: &Routes) {
    let table = registry.table();
    assert_eq!(table.len(), routes.len(), "route count");
    assert_eq!(registry.endpoint_count(), routes.values().map(BTreeSet::len).sum::<usize>(), "endpoint count");
    for (key, endpoints) in routes {
        let route_key = RouteKey::parse(key).expect("a model key is a route key");
        let pool = table.get(&route_key).unwrap_or_else(|| panic!("route {key} is missing"));
        assert_eq!(&pool.key().to_string(), key);
        let identities: BTreeSet<String> = pool.endpoints().iter().map(|e| e.identity().to_owned()).collect();
        assert_eq!(&identities, endpoints, "endpoints of {key}");
        assert_eq!(pool.endpoints().len(), endpoints.len(), "an endpoint of {key} is listed twice");
    }
}

fn lookup(versions: &[(RouteTable, BTreeSet<String>)], raw_host: &str, path: &str) {
    let expected_host = reference::request_host(raw_host.as_bytes());
    let parsed = RequestHost::parse(raw_host.as_bytes());
    assert_eq!(parsed.as_ref().map(RequestHost::as_str), expected_host.as_deref(), "host {raw_host:?} normalises differently");
    let (Some(host), Some(request)) = (expected_host, parsed) else { return };
    let segments = reference::path_segments(path);
    for (table, keys) in versions {
        let found = table.lookup(&request, path).map(|pool| pool.key().to_string());
        let expected = reference::lookup(keys, &host, &segments);
        assert_eq!(found, expected, "lookup of {raw_host:?} {path:?} in a table of {keys:?}");
    }
}

fuzz_target!(|input: Input| {
    let config = RegistryConfig {
        stale_threshold: Duration::from_secs(120),
        default_algorithm: LbAlgorithm::RoundRobin,
        empty_pool_grace: input.grace.then_some(Duration::from_secs(10)),
    };
    let limits = MessageLimits::default();
    let mut registry = Registry::new(config, 7);
    let mut routes = Routes::new();
    let mut snapshots: Vec<(RouteTable, BTreeSet<String>)> = Vec::new();
    for (now_ms, op) in (1u64..).zip(input.ops.iter().take(MAX_OPS)) {
        match op {
            Op::Register(announcement) | Op::Unregister(announcement) => {
                let registration = announcement.registration();
                // The bus refuses a message that fails its checks before the registry sees it.
                if registration.check(&limits).is_err() {
                    let _ = model_keys(&registration);
                    continue;
                }
                if matches!(op, Op::Register(_)) {
                    register(&mut registry, &mut routes, &registration, now_ms);
                } else {
                    unregister(&mut registry, &mut routes, &registration, input.grace, now_ms);
                }
                assert_table_is(&registry, &routes);
            }
            Op::Lookup { host, path } => {
                let mut versions = vec![(registry.table().clone(), routes.keys().cloned().collect())];
                versions.extend(snapshots.iter().cloned());
                lookup(&versions, &host.render(), &path.render());
            }
            Op::Snapshot => {
                if snapshots.len() == MAX_SNAPSHOTS {
                    snapshots.remove(0);
                }
                snapshots.push((registry.table().clone(), routes.keys().cloned().collect()));
            }
        }
    }
});
