//! The nftables ruleset `lb` writes: pure functions from the model to `nft -f` text, and from `nft -j list` JSON
//! back to the model.
//!
//! Layout of the table (family `inet`, so IPv4 and IPv6 VIPs share it):
//! - `services4` / `services6`: verdict maps from `daddr . l4proto . dport` to the VIP's own chain. One lookup
//!   per packet however many VIPs exist, and adding a VIP is one element, not a rule scan.
//! - `prerouting` / `output` (nat hooks): the lookup, for traffic arriving and for traffic the LB host sends itself.
//! - one chain per VIP holding one rule: flag the packet for SNAT, then DNAT through a map keyed by
//!   `VIP address . VIP port . slot`, the slot being `numgen inc` (round robin) or `jhash` of the client address
//!   (source hashing, persistence) modulo the VIP's total weight. Each backend owns a range of slots as wide as its
//!   weight, so weights are exact and a backend is one map element whatever its weight. A VIP with no backend in
//!   rotation gets a reject rule instead, so clients fail fast rather than time out.
//! - `unweighted{4,6}_{tcp,udp}_{0..255}`: those DNAT maps for VIPs whose backends in rotation all have weight 1
//!   (the usual case), where every slot is a single value: exact-match maps, which the kernel stores as hash
//!   tables. `backends{4,6}_{tcp,udp}_{0..255}`: the same for every other VIP, as interval maps. Each map is
//!   shared by the VIPs whose key hashes to it ([`SHARDS`] per kind, family and protocol, made when first used and
//!   deleted when the last VIP leaves it).
//! - `postrouting`: masquerade (`fully-random`) of flagged packets, so cells answer through the LB.
//!
//! Why this shape: the kernel's cost of loading a table is not linear in its size for every layout. Measured with
//! 10,000 VIPs of 10 backends each (nft 1.0.6, Linux 6.x):
//! - an anonymous map per VIP (the obvious layout) makes every new set scan all the table's sets for a free name
//!   and every binding walk the whole transaction: quadratic, 13 to 40 seconds of kernel time;
//! - one map shared by every VIP is quadratic the other way: each element added is checked against every rule
//!   bound to the map, and each rule bound against every element: 19 to 120 seconds;
//! - sharding the map keeps both products small (about 40 rules and 400 elements per map), and the whole table
//!   loads in one transaction in about two seconds through `nft`, most of it `nft` parsing its input, or in about
//!   one second as a netlink batch ([`super::netlink`]);
//! - a quarter of that second went to inserting interval elements (the kernel's concatenated-range set type
//!   rebuilds its lookup tables on every insert); with exact-match maps for unweighted VIPs the same table loads
//!   in about 0.8 s. More shards would make the interval maps cheaper but cost more elsewhere: the kernel finds a
//!   map by name with a walk of the table's maps, once per rule (1,024 shards loaded slower than 256).
//!
//! Changes are written as netlink batches; this module also renders them as nft's text syntax, for declarations
//! and for replaying a refused batch (nft 1.0.6 cannot read a JSON map declaration whose key has a `numgen` part
//! (`typeof`), and its text parser is the faster of its two). Reading uses `nft -j list`, whose JSON is stable to
//! parse: a VIP reads back as intact only if its chain holds exactly the rule `lb` would write for what its
//! elements and the rule's comment record (the comment carries scheduler and persistence, which the rule alone
//! cannot tell apart, e.g. `rr` from `wrr`). Anything else is reported as damaged and rewritten by the next sync.
//!
//! Because a VIP lives in its own chain and its own elements, a sync rewrites only the VIPs that changed, and of
//! those only the elements that changed, all in one transaction. [`Footprint`] records what the table holds for a
//! VIP, so a rewrite removes exactly what is there, even what someone else left half-written.

use super::netlink::{Batch, Expression, RawElement, RawTable, SlotElement, expected_expressions};
use crate::dataplane::{DataplaneSettings, ObservedServices};
use crate::model::{DestinationKey, ObservedDestination, ObservedService, Protocol, Scheduler, ServiceKey, ServiceSettings};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

/// Seed of the source hash; fixed so that rewriting a chain does not move clients between backends.
pub(super) const HASH_SEED: u64 = 0x5359;
/// Comment prefix of the rules `lb` writes.
const RULE_TAG: &str = "sy";
const SERVICES4: &str = "services4";
const SERVICES6: &str = "services6";
const BASE_CHAINS: [&str; 3] = ["prerouting", "output", "postrouting"];
/// Prefix of the names of the interval DNAT maps, for VIPs with a backend whose weight is not 1.
const WEIGHTED: &str = "backends";
/// Prefix of the names of the exact-match DNAT maps, for VIPs whose backends in rotation all have weight 1.
const UNWEIGHTED: &str = "unweighted";
/// DNAT maps per address family and protocol. Loading a map costs its rules times its elements, so more shards
/// make big tables cheaper to load; fewer keep the table short. 256 keeps 10,000 VIPs at about 40 per map.
pub const SHARDS: u32 = 256;

/// The text of one `nft -f -` transaction.
pub fn transaction(commands: &[String]) -> String {
    let mut text = String::with_capacity(commands.iter().map(|c| c.len() + 1).sum());
    for command in commands {
        text.push_str(command);
        text.push('\n');
    }
    text
}

/// The comment on base rules: it records the settings they were written with, so a change of `snat` or the mark
/// is noticed as a mismatch and the base is rewritten.
fn base_fingerprint(settings: &DataplaneSettings) -> String {
    if settings.snat { format!("{RULE_TAG} base snat mark=0x{:08x}", settings.snat_mark) } else { format!("{RULE_TAG} base nosnat") }
}

/// Commands that create the table, the services maps and the hook chains if missing. Idempotent and rule-free, so
/// every transaction can start with them and still work if someone deleted the table since the last look.
pub fn skeleton(table: &str) -> Vec<String> {
    vec![
        format!("add table inet {table}"),
        format!("add map inet {table} {SERVICES4} {{ type ipv4_addr . inet_proto . inet_service : verdict; }}"),
        format!("add map inet {table} {SERVICES6} {{ type ipv6_addr . inet_proto . inet_service : verdict; }}"),
        format!("add chain inet {table} prerouting {{ type nat hook prerouting priority -100; policy accept; }}"),
        format!("add chain inet {table} output {{ type nat hook output priority -100; policy accept; }}"),
        format!("add chain inet {table} postrouting {{ type nat hook postrouting priority 100; policy accept; }}"),
    ]
}

/// Commands that (re)write the hook rules in place: the lookups and the masquerade. Flush and add happen in one
/// transaction, so no packet ever sees the chains empty.
pub fn base(table: &str, settings: &DataplaneSettings) -> Vec<String> {
    let fingerprint = base_fingerprint(settings);
    let mut commands = skeleton(table);
    for chain in BASE_CHAINS {
        commands.push(format!("flush chain inet {table} {chain}"));
    }
    for chain in ["prerouting", "output"] {
        for (family, map) in [("ip", SERVICES4), ("ip6", SERVICES6)] {
            commands.push(format!("add rule inet {table} {chain} {family} daddr . meta l4proto . th dport vmap @{map} comment \"{fingerprint}\""));
        }
    }
    if settings.snat {
        let mark = settings.snat_mark;
        commands.push(format!(
            "add rule inet {table} postrouting meta mark & 0x{mark:08x} == 0x{mark:08x} masquerade fully-random comment \"{fingerprint}\""
        ));
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

/// The shard of a VIP: FNV-1a over its address, port and protocol. Fixed, so every `lb` version and every node
/// puts a VIP in the same map.
fn shard(key: &ServiceKey) -> u32 {
    let address = match key.address {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mut hash: u32 = 0x811c_9dc5;
    for byte in address.into_iter().chain(key.port.to_be_bytes()).chain([key.protocol.number()]) {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    hash % SHARDS
}

/// The DNAT map a VIP's backends live in, given its slot ranges.
pub fn backends_map(key: &ServiceKey, ranges: &[SlotRange]) -> String {
    let version = if key.address.is_ipv4() { 4 } else { 6 };
    let prefix = if ranges.iter().all(|range| range.first == range.last) { UNWEIGHTED } else { WEIGHTED };
    format!("{prefix}{version}_{}_{}", key.protocol, shard(key))
}

/// What the name of one of `lb`'s DNAT maps says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BackendsMap {
    /// Bytes in the addresses of its keys and values: 4 or 16.
    address_length: usize,
    /// The protocol of its VIPs.
    protocol: Protocol,
    /// Whether it is an interval map, whose elements are slot ranges.
    interval: bool,
}

impl BackendsMap {
    /// Reads a DNAT map's name; `None` for any other map.
    fn parse(name: &str) -> Option<Self> {
        let (interval, rest) = match name.strip_prefix(WEIGHTED) {
            Some(rest) => (true, rest),
            None => (false, name.strip_prefix(UNWEIGHTED)?),
        };
        let (address_length, rest) = match rest.split_at_checked(1)? {
            ("4", rest) => (4, rest),
            ("6", rest) => (16, rest),
            _ => return None,
        };
        let mut parts = rest.strip_prefix('_')?.splitn(2, '_');
        let protocol = match parts.next()? {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => return None,
        };
        parts.next()?.parse::<u32>().ok().filter(|n| *n < SHARDS)?;
        Some(Self { address_length, protocol, interval })
    }
}

/// Whether `name` is an interval DNAT map.
fn is_interval_map(name: &str) -> bool {
    BackendsMap::parse(name).is_some_and(|map| map.interval)
}

/// The declaration of the DNAT map `name`, as `key` needs it. Idempotent, so it goes into every transaction that
/// writes to the map.
fn backends_map_declaration(table: &str, key: &ServiceKey, name: &str) -> String {
    let (family, protocol) = (family(key.address), key.protocol);
    let flags = if is_interval_map(name) { " flags interval;" } else { "" };
    format!("add map inet {table} {name} {{ typeof {family} daddr . {protocol} dport . numgen inc mod 1 : {family} daddr . {protocol} dport;{flags} }}")
}

/// Commands that delete the DNAT maps `names`, which no VIP uses any more.
pub fn delete_maps(table: &str, names: &[String]) -> Vec<String> {
    names.iter().map(|name| format!("delete map inet {table} {name}")).collect()
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

/// A VIP's share of its DNAT map: slots `first..=last` go to `backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlotRange {
    /// First slot.
    pub first: u64,
    /// Last slot (inclusive).
    pub last: u64,
    /// The backend these slots send to.
    pub backend: DestinationKey,
}

/// The slot ranges `lb` writes for a service: backends in rotation, in key order, each as wide as its weight.
fn slot_ranges(service: &ObservedService) -> Vec<SlotRange> {
    let mut next: u64 = 0;
    let mut ranges = Vec::new();
    for (backend, state) in &service.destinations {
        if state.weight == 0 {
            continue;
        }
        let first = next;
        next += u64::from(state.weight);
        ranges.push(SlotRange { first, last: next - 1, backend: *backend });
    }
    ranges
}

/// How a VIP's rule picks a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Selector {
    /// `numgen inc`: round robin.
    Rotate,
    /// `jhash` of the client address: a client keeps its backend.
    HashClient,
}

/// What a VIP's one rule does: the single description both the writer and the reader go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum VipRule {
    /// No backend in rotation: refuse at once (TCP reset, or ICMP port unreachable for UDP).
    Reject,
    /// Flag for SNAT (with this mark, if SNAT is on) and DNAT through `map` by a slot out of `slots`.
    Dnat { mark: Option<u32>, selector: Selector, slots: u64, map: String },
}

impl VipRule {
    /// The rule `lb` writes for `service`.
    fn of(key: &ServiceKey, service: &ObservedService, settings: &DataplaneSettings) -> Self {
        let ranges = slot_ranges(service);
        let slots = ranges.last().map_or(0, |range| range.last + 1);
        if slots == 0 {
            return Self::Reject;
        }
        let hashed = matches!(service.settings.scheduler, Scheduler::Sh | Scheduler::Mh) || !service.settings.persistence.is_zero();
        Self::Dnat {
            mark: settings.snat.then_some(settings.snat_mark),
            selector: if hashed { Selector::HashClient } else { Selector::Rotate },
            slots,
            map: backends_map(key, &ranges),
        }
    }

    /// The rule as nft text, after `add rule inet <table> <chain> `.
    fn text(&self, key: &ServiceKey, comment: &str) -> String {
        let protocol = key.protocol;
        let mut text = format!("meta l4proto {protocol} ");
        match self {
            Self::Reject => match protocol {
                Protocol::Tcp => text.push_str("reject with tcp reset"),
                Protocol::Udp => text.push_str("reject with icmpx port-unreachable"),
            },
            Self::Dnat { mark, selector, slots, map } => {
                if let Some(mark) = mark {
                    let _ = write!(text, "meta mark set meta mark | 0x{mark:08x} ");
                }
                let family = family(key.address);
                let slot = match selector {
                    Selector::Rotate => format!("numgen inc mod {slots}"),
                    Selector::HashClient => format!("jhash {family} saddr mod {slots} seed 0x{HASH_SEED:x}"),
                };
                let _ = write!(text, "dnat {family} to {family} daddr . {protocol} dport . {slot} map @{map}");
            }
        }
        let _ = write!(text, " comment \"{comment}\"");
        text
    }

    /// Reads a rule back from `nft -j` expressions; `None` for anything `lb` does not write.
    fn parse(key: &ServiceKey, expressions: &[Value]) -> Option<Self> {
        let protocol = key.protocol.as_str();
        let mut rest = expressions;
        // nft folds the protocol match into the DNAT key's dependency when nothing stands between them.
        if let Some((first, tail)) = rest.split_first()
            && let Some(matched) = first.get("match")
        {
            let is_l4proto = matched.get("op")? == "==" && matched.get("left")?.get("meta")?.get("key")? == "l4proto";
            if !is_l4proto || matched.get("right")? != protocol {
                return None;
            }
            rest = tail;
        }
        match rest {
            [only] if only.get("reject").is_some() => {
                let expected = match key.protocol {
                    Protocol::Tcp => serde_json::json!({ "type": "tcp reset" }),
                    Protocol::Udp => serde_json::json!({ "type": "icmpx", "expr": "port-unreachable" }),
                };
                (only.get("reject")? == &expected).then_some(Self::Reject)
            }
            [only] => parse_dnat(key, None, only.get("dnat")?),
            [mangle, dnat] => {
                let mangle = mangle.get("mangle")?;
                let is_mark = |v: &Value| v.get("meta").and_then(|m| m.get("key")).and_then(Value::as_str) == Some("mark");
                let [left, right] = mangle.get("value")?.get("|")?.as_array()?.as_slice() else { return None };
                if !is_mark(mangle.get("key")?) || !is_mark(left) {
                    return None;
                }
                let mark = u32::try_from(right.as_u64()?).ok()?;
                parse_dnat(key, Some(mark), dnat.get("dnat")?)
            }
            _ => None,
        }
    }
}

/// Reads `{"dnat": {"family", "addr": {"map": {"key": {"concat": [daddr, dport, slot]}, "data": "@map"}}}}`.
fn parse_dnat(key: &ServiceKey, mark: Option<u32>, dnat: &Value) -> Option<VipRule> {
    let family = family(key.address);
    if dnat.get("family")? != family || dnat.as_object()?.len() != 2 {
        return None;
    }
    let map = dnat.get("addr")?.get("map")?;
    let map_name = map.get("data")?.as_str()?.strip_prefix('@')?.to_owned();
    let [daddr, dport, slot] = map.get("key")?.get("concat")?.as_array()?.as_slice() else { return None };
    let payload = |value: &Value, protocol: &str, field: &str| {
        value.get("payload").is_some_and(|p| p.get("protocol").and_then(Value::as_str) == Some(protocol) && p.get("field").and_then(Value::as_str) == Some(field))
    };
    if !payload(daddr, family, "daddr") || !payload(dport, key.protocol.as_str(), "dport") {
        return None;
    }
    let (selector, slots) = if let Some(numgen) = slot.get("numgen") {
        let rotate = numgen.get("mode")? == "inc" && numgen.get("offset").is_none_or(|o| o == 0);
        (rotate.then_some(Selector::Rotate)?, numgen.get("mod")?.as_u64()?)
    } else {
        let jhash = slot.get("jhash")?;
        let hashed = jhash.get("seed")?.as_u64()? == HASH_SEED && payload(jhash.get("expr")?, family, "saddr") && jhash.get("offset").is_none_or(|o| o == 0);
        (hashed.then_some(Selector::HashClient)?, jhash.get("mod")?.as_u64()?)
    };
    Some(VipRule::Dnat { mark, selector, slots, map: map_name })
}

/// What the table holds for one VIP, whether or not it is intact: what a rewrite or a delete must remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Footprint {
    /// The chain the VIP's services-map element jumps to, if it has an element.
    pub target: Option<String>,
    /// Whether the chain `lb` names for the VIP exists.
    pub chain: bool,
    /// The VIP's elements in DNAT maps, with the map each is in.
    pub slots: BTreeSet<(String, SlotRange)>,
}

fn services_map(key: &ServiceKey) -> &'static str {
    if key.address.is_ipv4() { SERVICES4 } else { SERVICES6 }
}

/// An element's key. In an interval map a single slot is written as a range too (`3-3`): nft 1.0.6 cannot delete
/// a single-value element of a concatenated interval map in a transaction that also declares the map.
fn slot_key(key: &ServiceKey, range: &SlotRange, interval: bool) -> String {
    if interval {
        format!("{} . {} . {}-{}", key.address, key.port, range.first, range.last)
    } else {
        format!("{} . {} . {}", key.address, key.port, range.first)
    }
}

/// Most elements in one `add element` or `delete element` command, to keep each command's netlink messages and
/// nft's parse of it modest.
const ELEMENTS_PER_COMMAND: usize = 4096;

/// The changes of one sync, gathered across VIPs so that a start from empty is a few thousand commands rather than
/// a hundred thousand: each map declared once, each map's elements added in a few commands. They render as `nft`
/// text ([`Changes::commands`]) or as one netlink batch ([`Changes::encode`]), in the same order.
#[derive(Debug, Default)]
pub struct Changes {
    /// DNAT maps the new rules refer to, by name, with their declaration.
    maps: BTreeMap<String, String>,
    /// Chain and rule changes of the VIPs written.
    chains: Vec<ChainChange>,
    /// DNAT-map elements to delete and to add, by map.
    removals: BTreeMap<String, Vec<SlotElement>>,
    additions: BTreeMap<String, Vec<SlotElement>>,
    /// Services-map elements to delete and add (with the chain they jump to), by map: after the chains they jump
    /// to exist, before the chains they jumped to go.
    service_removals: BTreeMap<&'static str, Vec<(ServiceKey, Option<String>)>>,
    service_additions: BTreeMap<&'static str, Vec<(ServiceKey, Option<String>)>>,
    /// Chains of deleted VIPs.
    deleted_chains: Vec<String>,
}

#[derive(Debug)]
enum ChainChange {
    Add(String),
    Flush(String),
    Rule { chain: String, key: ServiceKey, rule: VipRule, comment: String },
}

impl Changes {
    /// Adds what brings one VIP from what the table holds (`present`) to `after` (absent: delete it); returns the
    /// footprint the VIP has once the changes are applied.
    pub fn service(&mut self, table: &str, key: &ServiceKey, present: &Footprint, after: Option<&ObservedService>, settings: &DataplaneSettings) -> Footprint {
        let chain = chain_name(key);
        let mut wanted = Footprint::default();
        if let Some(service) = after {
            let ranges = slot_ranges(service);
            let map = backends_map(key, &ranges);
            wanted = Footprint { target: Some(chain.clone()), chain: true, slots: ranges.into_iter().map(|range| (map.clone(), range)).collect() };
            let rule = VipRule::of(key, service, settings);
            if rule != VipRule::Reject {
                self.maps.entry(map).or_insert_with_key(|map| backends_map_declaration(table, key, map));
            }
            if present.chain {
                self.chains.push(ChainChange::Flush(chain.clone()));
            } else {
                self.chains.push(ChainChange::Add(chain.clone()));
            }
            self.chains.push(ChainChange::Rule { chain: chain.clone(), key: *key, rule, comment: settings_comment(&service.settings) });
        }
        for (map, range) in present.slots.difference(&wanted.slots) {
            self.removals.entry(map.clone()).or_default().push(SlotElement { key: *key, range: *range });
        }
        for (map, range) in wanted.slots.difference(&present.slots) {
            self.additions.entry(map.clone()).or_default().push(SlotElement { key: *key, range: *range });
        }
        if present.target != wanted.target {
            if present.target.is_some() {
                self.service_removals.entry(services_map(key)).or_default().push((*key, None));
            }
            if let Some(target) = &wanted.target {
                self.service_additions.entry(services_map(key)).or_default().push((*key, Some(target.clone())));
            }
        }
        if after.is_none() && present.chain {
            self.deleted_chains.push(chain);
        }
        wanted
    }

    /// The DNAT maps the changes write to, with their declarations.
    pub fn maps(&self) -> impl Iterator<Item = (&String, &String)> {
        self.maps.iter()
    }

    /// The commands, in an order the kernel accepts: maps before the rules that use them, chains before the
    /// elements that jump to them, removed elements before added ones (so a range that only changes its width is
    /// deleted and added in one transaction), jumps removed before their chains. Rules also come before the DNAT
    /// elements for a speed reason: a rule that binds a map which already holds elements makes the kernel walk
    /// them all, so with the elements first a load from empty took 1.2 to 1.3 s instead of 0.87 to 0.93 s.
    pub fn commands(&self, table: &str) -> Vec<String> {
        fn elements(table: &str, verb: &str, map: &str, elements: Vec<String>) -> Vec<String> {
            elements.chunks(ELEMENTS_PER_COMMAND).map(|chunk| format!("{verb} element inet {table} {map} {{ {} }}", chunk.join(", "))).collect()
        }
        let service = |key: &ServiceKey| format!("{} . {} . {}", key.address, key.protocol, key.port);
        let mut commands: Vec<String> = self.maps.values().cloned().collect();
        for change in &self.chains {
            commands.push(match change {
                ChainChange::Add(chain) => format!("add chain inet {table} {chain}"),
                ChainChange::Flush(chain) => format!("flush chain inet {table} {chain}"),
                ChainChange::Rule { chain, key, rule, comment } => format!("add rule inet {table} {chain} {}", rule.text(key, comment)),
            });
        }
        for (map, removed) in &self.removals {
            let interval = is_interval_map(map);
            commands.extend(elements(table, "delete", map, removed.iter().map(|e| slot_key(&e.key, &e.range, interval)).collect()));
        }
        for (map, added) in &self.additions {
            let interval = is_interval_map(map);
            let added = added.iter().map(|e| format!("{} : {} . {}", slot_key(&e.key, &e.range, interval), e.range.backend.address, e.range.backend.port)).collect();
            commands.extend(elements(table, "add", map, added));
        }
        for (map, removed) in &self.service_removals {
            commands.extend(elements(table, "delete", map, removed.iter().map(|(key, _)| service(key)).collect()));
        }
        for (map, added) in &self.service_additions {
            let added = added.iter().map(|(key, target)| format!("{} : goto {}", service(key), target.as_deref().unwrap_or_default())).collect();
            commands.extend(elements(table, "add", map, added));
        }
        for chain in &self.deleted_chains {
            commands.push(format!("flush chain inet {table} {chain}"));
            commands.push(format!("delete chain inet {table} {chain}"));
        }
        commands
    }

    /// The same changes as [`Changes::commands`] minus the map declarations, as netlink messages.
    pub fn encode(&self, batch: &mut Batch) {
        for change in &self.chains {
            match change {
                ChainChange::Add(chain) => batch.add_chain(chain),
                ChainChange::Flush(chain) => batch.flush_chain(chain),
                ChainChange::Rule { chain, key, rule, comment } => batch.add_rule(chain, key, rule, comment),
            }
        }
        for (map, removed) in &self.removals {
            batch.slot_elements(map, removed, false, is_interval_map(map));
        }
        for (map, added) in &self.additions {
            batch.slot_elements(map, added, true, is_interval_map(map));
        }
        for (map, removed) in &self.service_removals {
            batch.service_elements(map, removed, false);
        }
        for (map, added) in &self.service_additions {
            batch.service_elements(map, added, true);
        }
        for chain in &self.deleted_chains {
            batch.flush_chain(chain);
            batch.delete_chain(chain);
        }
    }
}

/// What a listing of the table holds.
#[derive(Debug, Default)]
pub struct Listing {
    /// Whether the table exists at all.
    pub table_exists: bool,
    /// Whether the hook chains hold exactly the rules `lb` writes for the current settings.
    pub base_intact: bool,
    /// The VIPs that are intact.
    pub services: ObservedServices,
    /// What the table holds for every VIP it mentions, intact or not.
    pub footprints: BTreeMap<ServiceKey, Footprint>,
    /// VIPs and objects present but not as `lb` writes them (edited by hand, half-written); reported, not trusted.
    pub damaged: Vec<String>,
    /// The DNAT maps the table holds.
    pub maps: BTreeSet<String>,
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
    let [address, protocol, port] = element.get(0)?.get("concat")?.as_array()?.as_slice() else { return None };
    let key = ServiceKey { address: as_ip(address)?, protocol: as_protocol(protocol)?, port: as_port(port)? };
    let target = element.get(1)?.get("goto")?.get("target")?.as_str()?;
    Some((key, target.to_owned()))
}

/// Reads one element of a DNAT map: `[{"concat": [vip, port, slot or {"range": [first, last]}]}, {"concat":
/// [backend, port]}]`.
fn parse_slot_element(protocol: Protocol, element: &Value) -> Option<(ServiceKey, SlotRange)> {
    let [address, port, slots] = element.get(0)?.get("concat")?.as_array()?.as_slice() else { return None };
    let key = ServiceKey { address: as_ip(address)?, protocol, port: as_port(port)? };
    let (first, last) = match slots {
        Value::Number(n) => (n.as_u64()?, n.as_u64()?),
        range => {
            let [first, last] = range.get("range")?.as_array()?.as_slice() else { return None };
            (first.as_u64()?, last.as_u64()?)
        }
    };
    let [backend, backend_port] = element.get(1)?.get("concat")?.as_array()?.as_slice() else { return None };
    let backend = DestinationKey { address: as_ip(backend)?, port: as_port(backend_port)? };
    (first <= last && backend.address.is_ipv4() == key.address.is_ipv4()).then_some((key, SlotRange { first, last, backend }))
}

/// Parses the output of `nft -j list table inet <table>`.
pub fn parse_listing(text: &str, settings: &DataplaneSettings) -> Result<Listing, String> {
    let document: Value = serde_json::from_str(text).map_err(|e| format!("nft printed JSON that does not parse: {e}"))?;
    let objects = document.get("nftables").and_then(Value::as_array).ok_or("nft JSON has no `nftables` array")?;
    let mut listing = Listing::default();
    let mut chains: BTreeSet<&str> = BTreeSet::new();
    let mut rules: BTreeMap<&str, Vec<RuleView<'_>>> = BTreeMap::new();
    for object in objects {
        if object.get("table").is_some() {
            listing.table_exists = true;
        } else if let Some(chain) = object.get("chain") {
            chains.extend(chain.get("name").and_then(Value::as_str));
        } else if let Some(map) = object.get("map") {
            read_map_elements(map, &mut listing);
        } else if let Some(rule) = object.get("rule") {
            let chain = rule.get("chain").and_then(Value::as_str).unwrap_or_default();
            let comment = rule.get("comment").and_then(Value::as_str);
            rules.entry(chain).or_default().push(RuleView { comment, body: RuleBody::Json(rule) });
        }
    }
    finish_listing(&mut listing, &chains, &rules, settings);
    Ok(listing)
}

/// A rule as either reader sees it.
struct RuleView<'a> {
    comment: Option<&'a str>,
    body: RuleBody<'a>,
}

enum RuleBody<'a> {
    /// An object of `nft -j list`.
    Json(&'a Value),
    /// The expressions of a netlink dump.
    Netlink(&'a [Expression]),
}

/// Builds a [`Listing`] from a netlink read of the table ([`super::netlink::NftSocket::list_table`]): the same
/// result as [`parse_listing`] of nft's JSON for the same table, in a fraction of the time.
pub fn listing_from_raw(raw: &RawTable, settings: &DataplaneSettings) -> Listing {
    let mut listing = Listing { table_exists: true, ..Listing::default() };
    for (name, elements) in &raw.sets {
        let services_family = match name.as_str() {
            SERVICES4 => Some(4),
            SERVICES6 => Some(16),
            _ => None,
        };
        if let Some(length) = services_family {
            for element in elements {
                match raw_service_element(length, element) {
                    Some((key, target)) => listing.footprints.entry(key).or_default().target = Some(target),
                    None => listing.damaged.push(format!("{name} element {}", hex(&element.key))),
                }
            }
        } else if let Some(map) = BackendsMap::parse(name) {
            listing.maps.insert(name.clone());
            for element in elements {
                match raw_slot_element(map.address_length, map.protocol, element) {
                    Some((key, range)) => {
                        listing.footprints.entry(key).or_default().slots.insert((name.clone(), range));
                    }
                    None => listing.damaged.push(format!("{name} element {}", hex(&element.key))),
                }
            }
        }
    }
    let chains: BTreeSet<&str> = raw.chains.iter().map(String::as_str).collect();
    let mut rules: BTreeMap<&str, Vec<RuleView<'_>>> = BTreeMap::new();
    for rule in &raw.rules {
        rules.entry(rule.chain.as_str()).or_default().push(RuleView { comment: rule.comment.as_deref(), body: RuleBody::Netlink(&rule.expressions) });
    }
    finish_listing(&mut listing, &chains, &rules, settings);
    listing
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

/// An address of `length` bytes and a port, each padded to 32 bits, from the start of `bytes`; and the rest.
fn raw_address_port(length: usize, bytes: &[u8]) -> Option<(IpAddr, u16, &[u8])> {
    let address = match length {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes.get(..4)?).ok()?),
        _ => IpAddr::from(<[u8; 16]>::try_from(bytes.get(..16)?).ok()?),
    };
    let port = u16::from_be_bytes(bytes.get(length..length + 2)?.try_into().ok()?);
    Some((address, port, bytes.get(length + 4..)?))
}

/// A services-map element: `VIP . protocol . port : goto chain`.
fn raw_service_element(length: usize, element: &RawElement) -> Option<(ServiceKey, String)> {
    let key = &element.key;
    let address = match length {
        4 => IpAddr::from(<[u8; 4]>::try_from(key.get(..4)?).ok()?),
        _ => IpAddr::from(<[u8; 16]>::try_from(key.get(..16)?).ok()?),
    };
    let protocol = match key.get(length)? {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        _ => return None,
    };
    let port = u16::from_be_bytes(key.get(length + 4..length + 6)?.try_into().ok()?);
    (key.len() == length + 8).then_some(())?;
    Some((ServiceKey { address, protocol, port }, element.goto.clone()?))
}

/// A DNAT-map element: `VIP . port . first-last : backend . port`.
fn raw_slot_element(length: usize, protocol: Protocol, element: &RawElement) -> Option<(ServiceKey, SlotRange)> {
    let slot = |bytes: &[u8]| -> Option<(IpAddr, u16, u64)> {
        let (address, port, rest) = raw_address_port(length, bytes)?;
        let slot: [u8; 4] = rest.try_into().ok()?;
        Some((address, port, u64::from(u32::from_be_bytes(slot))))
    };
    let (address, port, first) = slot(&element.key)?;
    let last = match &element.key_end {
        Some(end) => {
            let (end_address, end_port, last) = slot(end)?;
            (end_address == address && end_port == port).then_some(last)?
        }
        None => first,
    };
    let (backend_address, backend_port, rest) = raw_address_port(length, element.data.as_deref()?)?;
    rest.is_empty().then_some(())?;
    let key = ServiceKey { address, protocol, port };
    let backend = DestinationKey { address: backend_address, port: backend_port };
    (first <= last).then_some((key, SlotRange { first, last, backend }))
}

/// What both readers share: whether the base is intact, and which VIPs are.
fn finish_listing(listing: &mut Listing, chains: &BTreeSet<&str>, rules: &BTreeMap<&str, Vec<RuleView<'_>>>, settings: &DataplaneSettings) {
    let fingerprint = base_fingerprint(settings);
    let comments_of = |chain: &str| -> Vec<&str> {
        rules.get(chain).into_iter().flatten().map(|r| r.comment.unwrap_or_default()).collect()
    };
    let lookups = vec![fingerprint.as_str(); 2];
    let masquerade = if settings.snat { vec![fingerprint.as_str()] } else { Vec::new() };
    listing.base_intact = listing.table_exists
        && comments_of("prerouting") == lookups
        && comments_of("output") == lookups
        && comments_of("postrouting") == masquerade;

    for (key, footprint) in &mut listing.footprints {
        let chain = chain_name(key);
        footprint.chain = chains.contains(chain.as_str());
        let intact = rules.get(chain.as_str()).and_then(|rules| match rules.as_slice() {
            [rule] if footprint.target.as_deref() == Some(chain.as_str()) => read_service(key, rule, footprint, settings),
            _ => None,
        });
        match intact {
            Some(service) => {
                listing.services.insert(*key, service);
            }
            None => listing.damaged.push(format!("{key} (chain {chain})")),
        }
    }
}

/// Records the elements of a services map or a DNAT map in the footprints; other maps are not `lb`'s business.
fn read_map_elements(map: &Value, listing: &mut Listing) {
    let name = map.get("name").and_then(Value::as_str).unwrap_or_default();
    let elements = map.get("elem").and_then(Value::as_array).into_iter().flatten();
    if matches!(name, SERVICES4 | SERVICES6) {
        for element in elements {
            match parse_service_element(element) {
                Some((key, target)) => listing.footprints.entry(key).or_default().target = Some(target),
                None => listing.damaged.push(format!("{name} element {element}")),
            }
        }
    } else if let Some(map) = BackendsMap::parse(name) {
        listing.maps.insert(name.to_owned());
        for element in elements {
            match parse_slot_element(map.protocol, element) {
                Some((key, range)) => {
                    listing.footprints.entry(key).or_default().slots.insert((name.to_owned(), range));
                }
                None => listing.damaged.push(format!("{name} element {element}")),
            }
        }
    }
}

/// Reads a VIP back; `None` unless its rule and elements are exactly what `lb` writes for what they record.
fn read_service(key: &ServiceKey, rule: &RuleView<'_>, footprint: &Footprint, settings: &DataplaneSettings) -> Option<ObservedService> {
    let service_settings = parse_settings_comment(rule.comment?)?;
    let mut destinations: BTreeMap<DestinationKey, ObservedDestination> = BTreeMap::new();
    for (_, range) in &footprint.slots {
        let width = u32::try_from(range.last - range.first + 1).ok()?;
        // A backend twice is not something lb writes.
        destinations.insert(range.backend, ObservedDestination { weight: width, ..ObservedDestination::default() }).is_none().then_some(())?;
    }
    let service = ObservedService { settings: service_settings, destinations, exclusive: true };
    let ranges = slot_ranges(&service);
    let map = backends_map(key, &ranges);
    let expected: BTreeSet<(String, SlotRange)> = ranges.into_iter().map(|range| (map.clone(), range)).collect();
    let wanted = VipRule::of(key, &service, settings);
    let rule_matches = match rule.body {
        RuleBody::Json(rule) => VipRule::parse(key, rule.get("expr")?.as_array()?)? == wanted,
        RuleBody::Netlink(expressions) => expected_expressions(key, &wanted) == expressions,
    };
    (rule_matches && expected == footprint.slots).then_some(service)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The commands of a sync that changes only this VIP, and the VIP's footprint after it.
    fn service_commands(table: &str, key: &ServiceKey, present: &Footprint, after: Option<&ObservedService>, settings: &DataplaneSettings) -> (Vec<String>, Footprint) {
        let mut changes = Changes::default();
        let footprint = changes.service(table, key, present, after, settings);
        (changes.commands(table), footprint)
    }

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

    /// The JSON nft prints for a VIP's rule (captured from nft 1.0.6: the protocol match is folded into the DNAT
    /// key's dependency when nothing stands between them).
    fn rule_json(key: &ServiceKey, rule: &VipRule) -> Vec<Value> {
        let l4 = json!({ "match": { "op": "==", "left": { "meta": { "key": "l4proto" } }, "right": key.protocol.as_str() } });
        let family = family(key.address);
        match rule {
            VipRule::Reject => {
                let reject = match key.protocol {
                    Protocol::Tcp => json!({ "reject": { "type": "tcp reset" } }),
                    Protocol::Udp => json!({ "reject": { "type": "icmpx", "expr": "port-unreachable" } }),
                };
                vec![l4, reject]
            }
            VipRule::Dnat { mark, selector, slots, map } => {
                let slot = match selector {
                    Selector::Rotate => json!({ "numgen": { "mode": "inc", "mod": slots, "offset": 0 } }),
                    Selector::HashClient => json!({ "jhash": { "mod": slots, "seed": HASH_SEED, "expr": { "payload": { "protocol": family, "field": "saddr" } } } }),
                };
                let dnat = json!({ "dnat": { "family": family, "addr": { "map": {
                    "key": { "concat": [
                        { "payload": { "protocol": family, "field": "daddr" } },
                        { "payload": { "protocol": key.protocol.as_str(), "field": "dport" } },
                        slot,
                    ] },
                    "data": format!("@{map}"),
                } } } });
                match mark {
                    Some(mark) => vec![l4, json!({ "mangle": { "key": { "meta": { "key": "mark" } }, "value": { "|": [{ "meta": { "key": "mark" } }, mark] } } }), dnat],
                    None => vec![dnat],
                }
            }
        }
    }

    /// What `nft -j list table` prints for a table holding these services as `lb` writes them.
    fn listing_of(services: &[(ServiceKey, ObservedService)], settings: &DataplaneSettings) -> String {
        let fingerprint = base_fingerprint(settings);
        let mut objects = vec![json!({ "metainfo": { "json_schema_version": 1 } }), json!({ "table": { "family": "inet", "name": "switchyard" } })];
        for chain in BASE_CHAINS {
            objects.push(json!({ "chain": { "name": chain } }));
        }
        for chain in ["prerouting", "output"] {
            for _ in 0..2 {
                objects.push(json!({ "rule": { "chain": chain, "comment": fingerprint, "expr": [] } }));
            }
        }
        if settings.snat {
            objects.push(json!({ "rule": { "chain": "postrouting", "comment": fingerprint, "expr": [] } }));
        }
        let mut maps: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for (key, service) in services {
            let chain = chain_name(key);
            objects.push(json!({ "chain": { "name": chain } }));
            let rule = VipRule::of(key, service, settings);
            objects.push(json!({ "rule": { "chain": chain, "comment": settings_comment(&service.settings), "expr": rule_json(key, &rule) } }));
            maps.entry(services_map(key).to_owned()).or_default().push(json!([
                { "concat": [key.address.to_string(), key.protocol.as_str(), key.port] },
                { "goto": { "target": chain } },
            ]));
            let ranges = slot_ranges(service);
            let map = backends_map(key, &ranges);
            for range in ranges {
                let slots = if range.first == range.last { json!(range.first) } else { json!({ "range": [range.first, range.last] }) };
                maps.entry(map.clone()).or_default().push(json!([
                    { "concat": [key.address.to_string(), key.port, slots] },
                    { "concat": [range.backend.address.to_string(), range.backend.port] },
                ]));
            }
        }
        for (name, elem) in maps {
            objects.push(json!({ "map": { "name": name, "elem": elem } }));
        }
        json!({ "nftables": objects }).to_string()
    }

    fn cases() -> Vec<(ServiceKey, ObservedService)> {
        vec![
            (key("198.18.2.10", Protocol::Tcp, 80), service(Scheduler::Rr, 0, &[("198.18.1.2", 10001, 1), ("198.18.1.3", 10001, 1)])),
            (key("198.18.2.10", Protocol::Tcp, 443), service(Scheduler::Wrr, 0, &[("198.18.1.2", 10002, 3), ("198.18.1.3", 10002, 1)])),
            (key("198.18.2.11", Protocol::Udp, 53), service(Scheduler::Sh, 0, &[("198.18.1.2", 10053, 2)])),
            (key("198.18.2.12", Protocol::Tcp, 80), service(Scheduler::Wlc, 300, &[("198.18.1.4", 10080, 65535)])),
            (key("198.18.2.13", Protocol::Tcp, 80), service(Scheduler::Rr, 0, &[])),
            (key("198.18.2.13", Protocol::Udp, 80), service(Scheduler::Mh, 0, &[])),
            (key("2001:db8::10", Protocol::Tcp, 80), service(Scheduler::Rr, 0, &[("2001:db8::2", 10001, 1)])),
        ]
    }

    #[test]
    fn a_written_service_reads_back_identically() {
        for snat in [true, false] {
            let settings = DataplaneSettings { snat, ..settings() };
            let listing = parse_listing(&listing_of(&cases(), &settings), &settings).unwrap();
            assert!(listing.base_intact);
            assert!(listing.damaged.is_empty(), "{:?}", listing.damaged);
            let expected: ObservedServices = cases().into_iter().collect();
            assert_eq!(listing.services, expected);
            // What was read is what a rewrite would leave: nothing to change.
            for (key, service) in cases() {
                let (commands, after) = service_commands("switchyard", &key, &listing.footprints[&key], Some(&service), &settings);
                assert_eq!(after, listing.footprints[&key]);
                assert!(commands.iter().all(|c| !c.contains("element")), "{commands:?}");
            }
        }
    }

    #[test]
    fn the_rule_text_is_what_nft_is_given() {
        let rr = cases()[0].clone();
        let (commands, _) = service_commands("switchyard", &rr.0, &Footprint::default(), Some(&rr.1), &settings());
        let map = format!("unweighted4_tcp_{}", shard(&rr.0));
        assert_eq!(
            commands,
            vec![
                format!("add map inet switchyard {map} {{ typeof ip daddr . tcp dport . numgen inc mod 1 : ip daddr . tcp dport; }}"),
                "add chain inet switchyard svc4_tcp_198.18.2.10_80".to_owned(),
                format!("add rule inet switchyard svc4_tcp_198.18.2.10_80 meta l4proto tcp meta mark set meta mark | 0x00535900 dnat ip to ip daddr . tcp dport . numgen inc mod 2 map @{map} comment \"sy sched=rr persist=0\""),
                format!("add element inet switchyard {map} {{ 198.18.2.10 . 80 . 0 : 198.18.1.2 . 10001, 198.18.2.10 . 80 . 1 : 198.18.1.3 . 10001 }}"),
                "add element inet switchyard services4 { 198.18.2.10 . tcp . 80 : goto svc4_tcp_198.18.2.10_80 }".to_owned(),
            ]
        );
        // Any weight other than 1 puts the VIP in an interval map, where every slot is a range.
        let wrr = cases()[1].clone();
        let (commands, _) = service_commands("switchyard", &wrr.0, &Footprint::default(), Some(&wrr.1), &settings());
        let map = format!("backends4_tcp_{}", shard(&wrr.0));
        assert_eq!(commands[0], format!("add map inet switchyard {map} {{ typeof ip daddr . tcp dport . numgen inc mod 1 : ip daddr . tcp dport; flags interval; }}"));
        assert_eq!(commands[3], format!("add element inet switchyard {map} {{ 198.18.2.10 . 443 . 0-2 : 198.18.1.2 . 10002, 198.18.2.10 . 443 . 3-3 : 198.18.1.3 . 10002 }}"));
        let udp = cases()[2].clone();
        let text = VipRule::of(&udp.0, &udp.1, &DataplaneSettings { snat: false, ..settings() }).text(&udp.0, "c");
        assert_eq!(text, format!("meta l4proto udp dnat ip to ip daddr . udp dport . jhash ip saddr mod 2 seed 0x5359 map @backends4_udp_{} comment \"c\"", shard(&udp.0)));
        let empty = cases()[5].clone();
        assert_eq!(VipRule::of(&empty.0, &empty.1, &settings()).text(&empty.0, "c"), "meta l4proto udp reject with icmpx port-unreachable comment \"c\"");
    }

    #[test]
    fn one_backend_more_is_one_element_and_the_rule() {
        let key = key("198.18.2.10", Protocol::Tcp, 80);
        let before = service(Scheduler::Rr, 0, &[("198.18.1.2", 10001, 1), ("198.18.1.3", 10001, 1)]);
        let (_, present) = service_commands("switchyard", &key, &Footprint::default(), Some(&before), &settings());
        let after = service(Scheduler::Rr, 0, &[("198.18.1.2", 10001, 1), ("198.18.1.3", 10001, 1), ("198.18.1.4", 10001, 1)]);
        let (commands, _) = service_commands("switchyard", &key, &present, Some(&after), &settings());
        let elements: Vec<&String> = commands.iter().filter(|c| c.contains("element")).collect();
        assert_eq!(elements, vec![&format!("add element inet switchyard unweighted4_tcp_{} {{ 198.18.2.10 . 80 . 2 : 198.18.1.4 . 10001 }}", shard(&key))]);
        assert!(commands.iter().any(|c| c.contains("numgen inc mod 3")));
    }

    #[test]
    fn a_reweight_replaces_only_the_ranges_that_moved() {
        let key = key("198.18.2.10", Protocol::Tcp, 80);
        let before = service(Scheduler::Wrr, 0, &[("198.18.1.2", 10001, 1), ("198.18.1.3", 10001, 3), ("198.18.1.4", 10001, 1)]);
        let (_, present) = service_commands("switchyard", &key, &Footprint::default(), Some(&before), &settings());
        let after = service(Scheduler::Wrr, 0, &[("198.18.1.2", 10001, 1), ("198.18.1.3", 10001, 2), ("198.18.1.4", 10001, 1)]);
        let (commands, footprint) = service_commands("switchyard", &key, &present, Some(&after), &settings());
        let map = format!("backends4_tcp_{}", shard(&key));
        let elements: Vec<&String> = commands.iter().filter(|c| c.contains("element")).collect();
        assert_eq!(
            elements,
            vec![
                &format!("delete element inet switchyard {map} {{ 198.18.2.10 . 80 . 1-3, 198.18.2.10 . 80 . 4-4 }}"),
                &format!("add element inet switchyard {map} {{ 198.18.2.10 . 80 . 1-2 : 198.18.1.3 . 10001, 198.18.2.10 . 80 . 3-3 : 198.18.1.4 . 10001 }}"),
            ]
        );
        assert_eq!(footprint.slots.len(), 3);
    }

    #[test]
    fn a_sync_of_many_vips_declares_each_map_once_and_batches_elements() {
        let mut changes = Changes::default();
        let mut maps = BTreeSet::new();
        for i in 0..600u32 {
            let key = key(&format!("198.18.{}.{}", 16 + i / 250, 1 + i % 250), Protocol::Tcp, 80);
            let service = service(Scheduler::Rr, 0, &[("198.19.0.1", 10000, 1), ("198.19.1.1", 10000, 2)]);
            maps.insert(backends_map(&key, &slot_ranges(&service)));
            changes.service("switchyard", &key, &Footprint::default(), Some(&service), &settings());
        }
        let commands = changes.commands("switchyard");
        let count = |prefix: &str| commands.iter().filter(|c| c.starts_with(prefix)).count();
        assert_eq!(count("add map "), maps.len());
        assert_eq!(count("add chain "), 600);
        assert_eq!(count("add rule "), 600);
        assert_eq!(count("add element "), maps.len() + 1);
        assert_eq!(count("flush ") + count("delete "), 0);
        let first_element = commands.iter().position(|c| c.starts_with("add element")).unwrap();
        assert!(commands.iter().skip(first_element).all(|c| c.starts_with("add element")), "elements come after every chain");
    }

    #[test]
    fn weights_become_slot_ranges() {
        let service = service(Scheduler::Wrr, 0, &[("198.18.1.2", 10001, 1), ("198.18.1.3", 10001, 3), ("198.18.1.4", 10001, 0)]);
        let ranges: Vec<(u64, u64)> = slot_ranges(&service).iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(ranges, vec![(0, 0), (1, 3)]);
        let rule = VipRule::of(&key("198.18.2.10", Protocol::Tcp, 80), &service, &settings());
        assert!(matches!(rule, VipRule::Dnat { slots: 4, selector: Selector::Rotate, .. }), "{rule:?}");
    }

    #[test]
    fn persistence_and_hashing_schedulers_hash_the_client() {
        let key = key("198.18.2.10", Protocol::Tcp, 80);
        for (scheduler, persistence, hashed) in [(Scheduler::Rr, 0, false), (Scheduler::Rr, 60, true), (Scheduler::Sh, 0, true), (Scheduler::Mh, 0, true), (Scheduler::Lc, 0, false)] {
            let service = service(scheduler, persistence, &[("198.18.1.2", 10001, 1)]);
            let VipRule::Dnat { selector, .. } = VipRule::of(&key, &service, &settings()) else { panic!("no DNAT for {scheduler}") };
            assert_eq!(selector == Selector::HashClient, hashed, "{scheduler} {persistence}");
        }
    }

    #[test]
    fn a_vip_without_backends_rejects() {
        let rule = VipRule::of(&key("198.18.2.10", Protocol::Tcp, 80), &service(Scheduler::Rr, 0, &[("198.18.1.2", 1, 0)]), &settings());
        assert_eq!(rule, VipRule::Reject);
    }

    #[test]
    fn deleting_a_service_removes_element_elements_then_chain() {
        let key = key("198.18.2.10", Protocol::Tcp, 80);
        let before = service(Scheduler::Rr, 0, &[("198.18.1.2", 10001, 1)]);
        let (_, present) = service_commands("switchyard", &key, &Footprint::default(), Some(&before), &settings());
        let (commands, after) = service_commands("switchyard", &key, &present, None, &settings());
        let verbs: Vec<&str> = commands.iter().map(|c| c.split(' ').take(2).collect::<Vec<_>>().join(" ")).map(|v| match v.as_str() {
            "delete element" => "delete element",
            "flush chain" => "flush chain",
            "delete chain" => "delete chain",
            _ => "other",
        }).collect();
        assert_eq!(verbs, vec!["delete element", "delete element", "flush chain", "delete chain"]);
        assert_eq!(after, Footprint::default());
        let (commands, _) = service_commands("switchyard", &key, &Footprint::default(), None, &settings());
        assert!(commands.is_empty());
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
        assert_eq!(names.iter().collect::<BTreeSet<_>>().len(), names.len());
        assert_eq!(names[0], "svc4_tcp_198.18.2.10_80");
        assert_eq!(names[4], "svc6_tcp_2001-db8--1_80");
    }

    #[test]
    fn shards_are_stable_and_spread() {
        let first = key("198.18.2.10", Protocol::Tcp, 80);
        let weighted = slot_ranges(&service(Scheduler::Wrr, 0, &[("198.18.1.2", 1, 1), ("198.18.1.3", 1, 2)]));
        let unweighted = slot_ranges(&service(Scheduler::Rr, 0, &[("198.18.1.2", 1, 1), ("198.18.1.3", 1, 1)]));
        assert_eq!(backends_map(&first, &weighted), format!("backends4_tcp_{}", shard(&first)));
        assert_eq!(backends_map(&first, &unweighted), format!("unweighted4_tcp_{}", shard(&first)));
        assert!(backends_map(&key("2001:db8::1", Protocol::Udp, 53), &[]).starts_with("unweighted6_udp_"));
        let used: BTreeSet<u32> = (0..10_000u32).map(|i| shard(&key(&format!("198.18.{}.{}", 16 + i / 250, 1 + i % 250), Protocol::Tcp, 80))).collect();
        assert!(used.len() > 250, "10,000 VIPs use only {} of {SHARDS} maps", used.len());
        let parsed = |name| BackendsMap::parse(name).map(|map| (map.address_length, map.protocol, map.interval));
        assert_eq!(parsed("backends4_tcp_0"), Some((4, Protocol::Tcp, true)));
        assert_eq!(parsed("backends6_udp_255"), Some((16, Protocol::Udp, true)));
        assert_eq!(parsed("unweighted6_tcp_7"), Some((16, Protocol::Tcp, false)));
        for name in ["services4", "backends4_tcp_256", "backends4_sctp_1", "backends5_tcp_1", "backends4_tcp_", "unweighted_tcp_1", "weighted4_tcp_1", ""] {
            assert_eq!(parsed(name), None, "{name}");
        }
    }

    #[test]
    fn an_unweighted_vip_in_an_interval_map_moves_to_an_exact_match_map() {
        // What an `lb` that had only interval maps left: a VIP of two weight-1 backends, its slots as ranges.
        let case = cases()[0].clone();
        let shard = shard(&case.0);
        let old = listing_of(std::slice::from_ref(&case), &settings()).replace(&format!("@unweighted4_tcp_{shard}"), &format!("@backends4_tcp_{shard}"));
        let old = old.replace(&format!(r#""name":"unweighted4_tcp_{shard}""#), &format!(r#""name":"backends4_tcp_{shard}""#));
        let listing = parse_listing(&old, &settings()).unwrap();
        assert!(listing.services.is_empty(), "{:?}", listing.services);
        assert_eq!(listing.damaged.len(), 1);
        // The rewrite takes the ranges out of the interval map and puts single slots in the exact-match one.
        let (commands, after) = service_commands("switchyard", &case.0, &listing.footprints[&case.0], Some(&case.1), &settings());
        let elements: Vec<&String> = commands.iter().filter(|c| c.contains("element") && !c.contains("services4")).collect();
        assert_eq!(
            elements,
            vec![
                &format!("delete element inet switchyard backends4_tcp_{shard} {{ 198.18.2.10 . 80 . 0-0, 198.18.2.10 . 80 . 1-1 }}"),
                &format!("add element inet switchyard unweighted4_tcp_{shard} {{ 198.18.2.10 . 80 . 0 : 198.18.1.2 . 10001, 198.18.2.10 . 80 . 1 : 198.18.1.3 . 10001 }}"),
            ]
        );
        assert!(after.slots.iter().all(|(map, _)| *map == format!("unweighted4_tcp_{shard}")));
    }

    #[test]
    fn edited_chains_are_reported_as_damaged_not_trusted() {
        let case = cases()[0].clone();
        let good = listing_of(std::slice::from_ref(&case), &settings());
        // Someone changes the modulus by hand: the rule no longer matches what lb would write.
        let edited = good.replace(r#""mod":2"#, r#""mod":7"#);
        assert_ne!(good, edited);
        let listing = parse_listing(&edited, &settings()).unwrap();
        assert!(listing.services.is_empty());
        assert_eq!(listing.damaged.len(), 1);
        // The rewrite removes exactly what is there and writes it anew.
        let (commands, _) = service_commands("switchyard", &case.0, &listing.footprints[&case.0], Some(&case.1), &settings());
        assert!(commands.iter().any(|c| c.contains("numgen inc mod 2")), "{commands:?}");
        // A stray element of the VIP makes it damaged too, and a rewrite deletes it.
        let stray = good.replace(r#"{"concat":["198.18.1.3",10001]}]"#, r#"{"concat":["198.18.1.3",10001]}],[{"concat":["198.18.2.10",80,9]},{"concat":["198.18.1.9",1]}]"#);
        assert_ne!(good, stray);
        let listing = parse_listing(&stray, &settings()).unwrap();
        assert!(listing.services.is_empty());
        let (commands, _) = service_commands("switchyard", &case.0, &listing.footprints[&case.0], Some(&case.1), &settings());
        assert!(commands.iter().any(|c| c.starts_with("delete element") && c.contains("198.18.2.10 . 80 . 9 }")), "{commands:?}");
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
        let odd = r#"{"nftables":[{"table":{}},{"map":{"name":"services4","elem":[[1,2],[{"concat":[]},{}]]}},{"map":{"name":"backends4_tcp_1","elem":[[{"concat":["198.18.2.1",80,{"range":[3,1]}]},{"concat":["198.18.1.1",1]}]]}},{"rule":{"chain":5}}]}"#;
        let listing = parse_listing(odd, &settings()).unwrap();
        assert!(listing.services.is_empty());
        assert_eq!(listing.damaged.len(), 3);
    }
}
