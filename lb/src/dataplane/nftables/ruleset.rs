//! The nftables ruleset `lb` writes, as pure functions from the model to `nft -j` commands and back.
//!
//! Layout of the table (family `inet`, so IPv4 and IPv6 VIPs share it):
//! - `services4` / `services6`: verdict maps from `daddr . l4proto . dport` to the VIP's own chain. One lookup
//!   per packet however many VIPs exist, and adding a VIP is one element, not a rule scan.
//! - `prerouting` / `output` (nat hooks): the lookup, for traffic arriving and for traffic the LB host sends itself.
//! - one chain per VIP holding one rule: flag the packet for SNAT, then DNAT through an anonymous map indexed by
//!   `numgen inc` (round robin) or `jhash` of the client address (source hashing, persistence). Each backend
//!   owns a range of slots as wide as its weight, so weights are exact and the map stays one entry per backend.
//!   A VIP with no backend in rotation gets a reject rule instead, so clients fail fast rather than time out.
//! - `postrouting`: masquerade (`fully-random`) of flagged packets, so cells answer through the LB.
//!
//! Because one VIP lives in one chain, a sync rewrites only the chains of VIPs that changed, all in a single
//! transaction. Reading back parses the same JSON: the chain's rule comment records the scheduler and
//! persistence (which the DNAT expression alone cannot tell apart, e.g. `rr` from `wrr`), the map records the
//! backends and weights. A chain whose rule does not match what `lb` would write for its recorded settings is
//! reported as absent, so the next sync rewrites it.

use crate::dataplane::{DataplaneSettings, ObservedServices};
use crate::model::{DestinationKey, ObservedDestination, ObservedService, Protocol, Scheduler, ServiceKey, ServiceSettings};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// Seed of the source hash; fixed so that rewriting a chain does not move clients between backends.
const HASH_SEED: u64 = 0x5359;
/// Comment prefix of the rules `lb` writes.
const RULE_TAG: &str = "sy";
const SERVICES4: &str = "services4";
const SERVICES6: &str = "services6";
const BASE_CHAINS: [&str; 3] = ["prerouting", "output", "postrouting"];

/// The commands of one transaction, ready for `nft -j -f -`.
pub fn transaction(commands: Vec<Value>) -> String {
    json!({ "nftables": commands }).to_string()
}

fn table_object(table: &str) -> Value {
    json!({ "family": "inet", "name": table })
}

fn chain_object(table: &str, chain: &str) -> Value {
    json!({ "family": "inet", "table": table, "name": chain })
}

/// The comment on base rules: it records the settings they were written with, so a change of `snat` or the mark
/// is noticed as a mismatch and the base is rewritten.
fn base_fingerprint(settings: &DataplaneSettings) -> String {
    if settings.snat { format!("{RULE_TAG} base snat mark=0x{:08x}", settings.snat_mark) } else { format!("{RULE_TAG} base nosnat") }
}

fn lookup_rule(table: &str, chain: &str, family: &str, map: &str, comment: &str) -> Value {
    json!({ "add": { "rule": {
        "family": "inet", "table": table, "chain": chain, "comment": comment,
        "expr": [{ "vmap": {
            "key": { "concat": [
                { "payload": { "protocol": family, "field": "daddr" } },
                { "meta": { "key": "l4proto" } },
                { "payload": { "protocol": "th", "field": "dport" } },
            ] },
            "data": format!("@{map}"),
        } }],
    } } })
}

/// Commands that create the table, maps and hook chains if missing. Idempotent and rule-free, so every
/// transaction can start with them and still work if someone deleted the table since the last look.
pub fn skeleton(table: &str) -> Vec<Value> {
    let mut commands = vec![json!({ "add": { "table": table_object(table) } })];
    for (name, address_type) in [(SERVICES4, "ipv4_addr"), (SERVICES6, "ipv6_addr")] {
        commands.push(json!({ "add": { "map": {
            "family": "inet", "table": table, "name": name,
            "type": [address_type, "inet_proto", "inet_service"], "map": "verdict",
        } } }));
    }
    for (chain, hook, prio) in [("prerouting", "prerouting", -100), ("output", "output", -100), ("postrouting", "postrouting", 100)] {
        commands.push(json!({ "add": { "chain": {
            "family": "inet", "table": table, "name": chain, "type": "nat", "hook": hook, "prio": prio, "policy": "accept",
        } } }));
    }
    commands
}

/// Commands that (re)write the hook rules in place: the lookups and the masquerade. Flush and add happen in one
/// transaction, so no packet ever sees the chains empty.
pub fn base(table: &str, settings: &DataplaneSettings) -> Vec<Value> {
    let fingerprint = base_fingerprint(settings);
    let mut commands = skeleton(table);
    for chain in BASE_CHAINS {
        commands.push(json!({ "flush": { "chain": chain_object(table, chain) } }));
    }
    for chain in ["prerouting", "output"] {
        commands.push(lookup_rule(table, chain, "ip", SERVICES4, &fingerprint));
        commands.push(lookup_rule(table, chain, "ip6", SERVICES6, &fingerprint));
    }
    if settings.snat {
        let mark = settings.snat_mark;
        commands.push(json!({ "add": { "rule": {
            "family": "inet", "table": table, "chain": "postrouting", "comment": fingerprint,
            "expr": [
                { "match": { "op": "==", "left": { "&": [{ "meta": { "key": "mark" } }, mark] }, "right": mark } },
                { "masquerade": { "flags": "fully-random" } },
            ],
        } } }));
    }
    commands
}

/// The chain of one VIP: the family and every part of the key, so names never collide.
pub fn chain_name(key: &ServiceKey) -> String {
    match key.address {
        IpAddr::V4(a) => format!("svc4_{}_{a}_{}", key.protocol, key.port),
        IpAddr::V6(a) => format!("svc6_{}_{}_{}", key.protocol, a.to_string().replace(':', "-"), key.port),
    }
}

fn family(address: IpAddr) -> &'static str {
    if address.is_ipv4() { "ip" } else { "ip6" }
}

fn settings_comment(settings: &ServiceSettings) -> String {
    format!("{RULE_TAG} sched={} persist={}", settings.scheduler, settings.persistence.as_secs())
}

fn parse_settings_comment(comment: &str) -> Option<ServiceSettings> {
    let mut words = comment.split(' ');
    if words.next()? != RULE_TAG {
        return None;
    }
    let scheduler = Scheduler::from_name(words.next()?.strip_prefix("sched=")?)?;
    let persistence = Duration::from_secs(words.next()?.strip_prefix("persist=")?.parse().ok()?);
    words.next().is_none().then_some(ServiceSettings { scheduler, persistence })
}

/// Hashing schedulers and persistence keep a client on one backend; the rest rotate.
fn selector(key: &ServiceKey, settings: &ServiceSettings, slots: u64) -> Value {
    let hashed = matches!(settings.scheduler, Scheduler::Sh | Scheduler::Mh) || !settings.persistence.is_zero();
    if hashed {
        json!({ "jhash": { "mod": slots, "seed": HASH_SEED, "expr": { "payload": { "protocol": family(key.address), "field": "saddr" } } } })
    } else {
        json!({ "numgen": { "mode": "inc", "mod": slots, "offset": 0 } })
    }
}

fn l4_match(protocol: Protocol) -> Value {
    json!({ "match": { "op": "==", "left": { "meta": { "key": "l4proto" } }, "right": protocol.as_str() } })
}

/// The expressions of a VIP's rule. Shared by writing and by checking what was read back.
fn service_expressions(key: &ServiceKey, service: &ObservedService, settings: &DataplaneSettings) -> Vec<Value> {
    let mut slot: u64 = 0;
    let mut entries = Vec::new();
    for (destination, state) in &service.destinations {
        if state.weight == 0 {
            continue;
        }
        let last = slot + u64::from(state.weight) - 1;
        let slots = if last == slot { json!(slot) } else { json!({ "range": [slot, last] }) };
        entries.push(json!([slots, { "concat": [destination.address.to_string(), destination.port] }]));
        slot = last + 1;
    }
    let mut expressions = vec![l4_match(key.protocol)];
    if entries.is_empty() {
        let reject = match key.protocol {
            Protocol::Tcp => json!({ "reject": { "type": "tcp reset" } }),
            Protocol::Udp => json!({ "reject": { "type": "icmpx", "expr": "port-unreachable" } }),
        };
        expressions.push(reject);
        return expressions;
    }
    if settings.snat {
        let mark = settings.snat_mark;
        expressions.push(json!({ "mangle": { "key": { "meta": { "key": "mark" } }, "value": { "|": [{ "meta": { "key": "mark" } }, mark] } } }));
    }
    expressions.push(json!({ "dnat": { "family": family(key.address), "addr": { "map": {
        "key": selector(key, &service.settings, slot),
        "data": { "set": entries },
    } } } }));
    expressions
}

fn services_map(key: &ServiceKey) -> &'static str {
    if key.address.is_ipv4() { SERVICES4 } else { SERVICES6 }
}

fn map_key(key: &ServiceKey) -> Value {
    json!({ "concat": [key.address.to_string(), key.protocol.as_str(), key.port] })
}

/// Commands that bring one VIP from `before` to `after` (either may be absent).
pub fn service_commands(table: &str, key: &ServiceKey, before: Option<&ObservedService>, after: Option<&ObservedService>, settings: &DataplaneSettings) -> Vec<Value> {
    let chain = chain_name(key);
    let element = |verb: &str, with_target: bool| {
        let elem = if with_target { json!([[map_key(key), { "goto": { "target": chain } }]]) } else { json!([map_key(key)]) };
        json!({ verb: { "element": { "family": "inet", "table": table, "name": services_map(key), "elem": elem } } })
    };
    match after {
        None if before.is_some() => vec![
            element("delete", false),
            json!({ "flush": { "chain": chain_object(table, &chain) } }),
            json!({ "delete": { "chain": chain_object(table, &chain) } }),
        ],
        None => Vec::new(),
        Some(service) => vec![
            json!({ "add": { "chain": chain_object(table, &chain) } }),
            json!({ "flush": { "chain": chain_object(table, &chain) } }),
            json!({ "add": { "rule": {
                "family": "inet", "table": table, "chain": chain,
                "comment": settings_comment(&service.settings),
                "expr": service_expressions(key, service, settings),
            } } }),
            element("add", true),
        ],
    }
}

/// What a listing of the table holds.
#[derive(Debug, Default)]
pub struct Listing {
    /// Whether the table exists at all.
    pub table_exists: bool,
    /// Whether the hook chains hold exactly the rules `lb` writes for the current settings.
    pub base_intact: bool,
    /// The VIPs whose chains are intact.
    pub services: ObservedServices,
    /// VIP chains present but not as `lb` writes them (edited by hand, half-written); reported, not trusted.
    pub damaged: Vec<String>,
}

fn as_ip(value: &Value) -> Option<IpAddr> {
    value.as_str()?.parse().ok()
}

fn as_port(value: &Value) -> Option<u16> {
    u16::try_from(value.as_u64()?).ok()
}

fn as_protocol(value: &Value) -> Option<Protocol> {
    match value.as_str()? {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        _ => None,
    }
}

/// Reads one element of a services map: `[{"concat": [addr, proto, port]}, {"goto": {"target": chain}}]`.
fn parse_service_element(element: &Value) -> Option<(ServiceKey, String)> {
    let parts = element.get(0)?.get("concat")?.as_array()?;
    let [address, protocol, port] = parts.as_slice() else { return None };
    let key = ServiceKey { address: as_ip(address)?, protocol: as_protocol(protocol)?, port: as_port(port)? };
    let target = element.get(1)?.get("goto")?.get("target")?.as_str()?;
    Some((key, target.to_owned()))
}

/// Reads the backends and weights back out of a DNAT map: each backend's weight is the width of its slots.
fn parse_destinations(expressions: &[Value]) -> Option<BTreeMap<DestinationKey, ObservedDestination>> {
    let mut destinations: BTreeMap<DestinationKey, ObservedDestination> = BTreeMap::new();
    let Some(dnat) = expressions.iter().find_map(|e| e.get("dnat")) else {
        // A reject rule: no backend in rotation.
        return Some(destinations);
    };
    let entries = dnat.get("addr")?.get("map")?.get("data")?.get("set")?.as_array()?;
    for entry in entries {
        let width = match entry.get(0)? {
            Value::Number(n) => n.as_u64().map(|_| 1)?,
            range => {
                let bounds = range.get("range")?;
                bounds.get(1)?.as_u64()?.checked_sub(bounds.get(0)?.as_u64()?)? + 1
            }
        };
        let target = entry.get(1)?.get("concat")?.as_array()?;
        let [address, port] = target.as_slice() else { return None };
        let key = DestinationKey { address: as_ip(address)?, port: as_port(port)? };
        let weight = &mut destinations.entry(key).or_default().weight;
        *weight = weight.checked_add(u32::try_from(width).ok()?)?;
    }
    Some(destinations)
}

/// Parses the output of `nft -j list table inet <table>`.
pub fn parse_listing(text: &str, settings: &DataplaneSettings) -> Result<Listing, String> {
    let document: Value = serde_json::from_str(text).map_err(|e| format!("nft printed JSON that does not parse: {e}"))?;
    let objects = document.get("nftables").and_then(Value::as_array).ok_or("nft JSON has no `nftables` array")?;
    let mut listing = Listing::default();
    let mut elements: Vec<(ServiceKey, String)> = Vec::new();
    let mut rules: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for object in objects {
        if object.get("table").is_some() {
            listing.table_exists = true;
        } else if let Some(map) = object.get("map") {
            if matches!(map.get("name").and_then(Value::as_str), Some(SERVICES4 | SERVICES6)) {
                for element in map.get("elem").and_then(Value::as_array).into_iter().flatten() {
                    match parse_service_element(element) {
                        Some(parsed) => elements.push(parsed),
                        None => listing.damaged.push(format!("services map element {element}")),
                    }
                }
            }
        } else if let Some(rule) = object.get("rule") {
            let chain = rule.get("chain").and_then(Value::as_str).unwrap_or_default();
            rules.entry(chain.to_owned()).or_default().push(rule);
        }
    }

    let fingerprint = base_fingerprint(settings);
    let comments_of = |chain: &str| -> Vec<&str> {
        rules.get(chain).into_iter().flatten().map(|r| r.get("comment").and_then(Value::as_str).unwrap_or_default()).collect()
    };
    let lookups = vec![fingerprint.as_str(); 2];
    let masquerade = if settings.snat { vec![fingerprint.as_str()] } else { Vec::new() };
    listing.base_intact = listing.table_exists
        && comments_of("prerouting") == lookups
        && comments_of("output") == lookups
        && comments_of("postrouting") == masquerade;

    for (key, chain) in elements {
        let parsed = match rules.get(&chain).map(Vec::as_slice) {
            Some([rule]) => parse_service_rule(&key, rule, settings),
            _ => None,
        };
        match parsed {
            Some(service) if chain == chain_name(&key) => {
                listing.services.insert(key, service);
            }
            _ => listing.damaged.push(format!("chain {chain} of {key}")),
        }
    }
    Ok(listing)
}

/// Reads a VIP's rule; `None` unless it is exactly what `lb` would write for the settings it records.
fn parse_service_rule(key: &ServiceKey, rule: &Value, settings: &DataplaneSettings) -> Option<ObservedService> {
    let service_settings = parse_settings_comment(rule.get("comment")?.as_str()?)?;
    let expressions = rule.get("expr")?.as_array()?;
    let destinations = parse_destinations(expressions)?;
    let service = ObservedService { settings: service_settings, destinations, exclusive: true };
    (service_expressions(key, &service, settings) == *expressions).then_some(service)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DataplaneSettings {
        DataplaneSettings { snat: true, snat_mark: 0x0053_5900, nft_table: "switchyard".to_owned() }
    }

    fn key(address: &str, protocol: Protocol, port: u16) -> ServiceKey {
        ServiceKey { address: address.parse().unwrap(), port, protocol }
    }

    fn service(scheduler: Scheduler, persistence: u64, destinations: &[(&str, u16, u32)]) -> ObservedService {
        ObservedService {
            settings: ServiceSettings { scheduler, persistence: Duration::from_secs(persistence) },
            destinations: destinations
                .iter()
                .map(|(address, port, weight)| {
                    (DestinationKey { address: address.parse().unwrap(), port: *port }, ObservedDestination { weight: *weight, ..Default::default() })
                })
                .collect(),
            exclusive: true,
        }
    }

    /// What `nft -j list table` prints for a table holding exactly these commands' objects (nft echoes the
    /// expressions it was given, which the integration tests check against the real binary).
    fn listing_of(commands: &[Value]) -> String {
        let mut objects = vec![json!({ "metainfo": { "json_schema_version": 1 } })];
        let mut elements: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for command in commands {
            let Some(add) = command.get("add") else { continue };
            if let Some(table) = add.get("table") {
                objects.push(json!({ "table": table }));
            } else if let Some(rule) = add.get("rule") {
                objects.push(json!({ "rule": rule }));
            } else if let Some(element) = add.get("element") {
                let name = element["name"].as_str().unwrap().to_owned();
                elements.entry(name).or_default().extend(element["elem"].as_array().unwrap().iter().cloned());
            }
        }
        for (name, elem) in elements {
            objects.push(json!({ "map": { "name": name, "elem": elem } }));
        }
        json!({ "nftables": objects }).to_string()
    }

    #[test]
    fn a_written_service_reads_back_identically() {
        let cases = [
            (key("198.18.2.10", Protocol::Tcp, 80), service(Scheduler::Rr, 0, &[("198.18.1.2", 10001, 1), ("198.18.1.3", 10001, 1)])),
            (key("198.18.2.10", Protocol::Tcp, 443), service(Scheduler::Wrr, 0, &[("198.18.1.2", 10002, 3), ("198.18.1.3", 10002, 1)])),
            (key("198.18.2.11", Protocol::Udp, 53), service(Scheduler::Sh, 0, &[("198.18.1.2", 10053, 2)])),
            (key("198.18.2.12", Protocol::Tcp, 80), service(Scheduler::Wlc, 300, &[("198.18.1.4", 10080, 65535)])),
            (key("198.18.2.13", Protocol::Tcp, 80), service(Scheduler::Rr, 0, &[])),
            (key("198.18.2.13", Protocol::Udp, 80), service(Scheduler::Mh, 0, &[])),
            (key("2001:db8::10", Protocol::Tcp, 80), service(Scheduler::Rr, 0, &[("2001:db8::2", 10001, 1)])),
        ];
        for snat in [true, false] {
            let settings = DataplaneSettings { snat, ..settings() };
            let mut commands = base("switchyard", &settings);
            for (key, service) in &cases {
                commands.extend(service_commands("switchyard", key, None, Some(service), &settings));
            }
            let listing = parse_listing(&listing_of(&commands), &settings).unwrap();
            assert!(listing.base_intact);
            assert!(listing.damaged.is_empty(), "{:?}", listing.damaged);
            let expected: ObservedServices = cases.iter().cloned().collect();
            assert_eq!(listing.services, expected);
        }
    }

    #[test]
    fn weights_become_slot_ranges() {
        let key = key("198.18.2.10", Protocol::Tcp, 80);
        let service = service(Scheduler::Wrr, 0, &[("198.18.1.2", 10001, 1), ("198.18.1.3", 10001, 3), ("198.18.1.4", 10001, 0)]);
        let expressions = service_expressions(&key, &service, &settings());
        let dnat = &expressions[2]["dnat"]["addr"]["map"];
        assert_eq!(dnat["key"], json!({ "numgen": { "mode": "inc", "mod": 4, "offset": 0 } }));
        assert_eq!(
            dnat["data"]["set"],
            json!([[0, { "concat": ["198.18.1.2", 10001] }], [{ "range": [1, 3] }, { "concat": ["198.18.1.3", 10001] }]])
        );
    }

    #[test]
    fn persistence_and_hashing_schedulers_hash_the_client() {
        let key = key("198.18.2.10", Protocol::Tcp, 80);
        for (scheduler, persistence, hashed) in [(Scheduler::Rr, 0, false), (Scheduler::Rr, 60, true), (Scheduler::Sh, 0, true), (Scheduler::Mh, 0, true), (Scheduler::Lc, 0, false)] {
            let service = service(scheduler, persistence, &[("198.18.1.2", 10001, 1)]);
            let expressions = service_expressions(&key, &service, &settings());
            assert_eq!(expressions[2]["dnat"]["addr"]["map"]["key"].get("jhash").is_some(), hashed, "{scheduler} {persistence}");
        }
    }

    #[test]
    fn a_vip_without_backends_rejects() {
        let expressions = service_expressions(&key("198.18.2.10", Protocol::Tcp, 80), &service(Scheduler::Rr, 0, &[("198.18.1.2", 1, 0)]), &settings());
        assert_eq!(expressions[1], json!({ "reject": { "type": "tcp reset" } }));
    }

    #[test]
    fn deleting_a_service_removes_element_then_chain() {
        let key = key("198.18.2.10", Protocol::Tcp, 80);
        let before = service(Scheduler::Rr, 0, &[]);
        let commands = service_commands("switchyard", &key, Some(&before), None, &settings());
        let verbs: Vec<&str> = commands.iter().map(|c| c.as_object().unwrap().keys().next().unwrap().as_str()).collect();
        assert_eq!(verbs, vec!["delete", "flush", "delete"]);
        assert!(service_commands("switchyard", &key, None, None, &settings()).is_empty());
    }

    #[test]
    fn chain_names_never_collide() {
        let names = [
            chain_name(&key("198.18.2.10", Protocol::Tcp, 80)),
            chain_name(&key("198.18.2.10", Protocol::Udp, 80)),
            chain_name(&key("198.18.2.1", Protocol::Tcp, 80)),
            chain_name(&key("198.18.2.108", Protocol::Tcp, 0)),
            chain_name(&key("2001:db8::1", Protocol::Tcp, 80)),
            chain_name(&key("::ffff:198.18.2.10", Protocol::Tcp, 80)),
        ];
        assert_eq!(names.iter().collect::<std::collections::BTreeSet<_>>().len(), names.len());
        assert_eq!(names[0], "svc4_tcp_198.18.2.10_80");
        assert_eq!(names[4], "svc6_tcp_2001-db8--1_80");
    }

    #[test]
    fn edited_chains_are_reported_as_damaged_not_trusted() {
        let key = key("198.18.2.10", Protocol::Tcp, 80);
        let mut commands = base("switchyard", &settings());
        commands.extend(service_commands("switchyard", &key, None, Some(&service(Scheduler::Rr, 0, &[("198.18.1.2", 10001, 1)])), &settings()));
        let good = listing_of(&commands);
        // Someone changes the modulus by hand: the rule no longer matches what lb would write.
        let edited = good.replace(r#""mod":1"#, r#""mod":7"#);
        assert_ne!(good, edited);
        let listing = parse_listing(&edited, &settings()).unwrap();
        assert!(listing.services.is_empty());
        assert_eq!(listing.damaged.len(), 1);
        // A different SNAT setting means the base must be rewritten.
        let listing = parse_listing(&good, &DataplaneSettings { snat: false, ..settings() }).unwrap();
        assert!(!listing.base_intact);
    }

    #[test]
    fn settings_comments_round_trip() {
        for scheduler in Scheduler::ALL {
            let settings = ServiceSettings { scheduler, persistence: Duration::from_secs(42) };
            assert_eq!(parse_settings_comment(&settings_comment(&settings)), Some(settings));
        }
        for bad in ["", "sy", "sy sched=x persist=0", "xx sched=rr persist=0", "sy sched=rr persist=0 extra"] {
            assert_eq!(parse_settings_comment(bad), None, "{bad}");
        }
    }

    #[test]
    fn garbage_listings_are_errors_not_panics() {
        assert!(parse_listing("not json", &settings()).is_err());
        assert!(parse_listing("{}", &settings()).is_err());
        let odd = r#"{"nftables":[{"table":{}},{"map":{"name":"services4","elem":[[1,2],[{"concat":[]},{}]]}},{"rule":{"chain":5}}]}"#;
        let listing = parse_listing(odd, &settings()).unwrap();
        assert!(listing.services.is_empty());
        assert_eq!(listing.damaged.len(), 2);
    }
}
