//! The `lb` config file and the VIP spec it shares with the JetStream KV bucket.
//!
//! A VIP reaches `lb` two ways: written in the file by the operator of one LB, or published once in the `lb_vips`
//! bucket for a whole fleet. Both are the same [`VipSpec`] with the same checks, so a VIP that loads from the file
//! loads from the bucket and the other way round, and the error an operator sees names the same key either way.
//! Anything that would make the kernel refuse a rule later (port 0, a backend of the wrong address family, a weight
//! the kernel cannot hold) is refused here, before any state changes.

use crate::duration;
use crate::error::{ConfigError, Validate};
use crate::load::{Loaded, parse_json};
use crate::messages::check_vip_name;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Largest weight accepted: IPVS stores weights as a signed 32-bit integer.
pub const MAX_WEIGHT: u32 = i32::MAX as u32;

/// Longest persistence timeout accepted, in seconds (IPVS holds it in a `u32` of seconds; a day is already long).
pub const MAX_PERSISTENCE_SECS: u64 = 31 * 24 * 3600;

/// Linux interface names are at most 15 bytes.
const MAX_INTERFACE_NAME_LEN: usize = 15;

/// The whole `lb` configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct LbConfig {
    /// NATS link; without it only the file counts.
    pub nats: Option<LbNatsConfig>,
    /// Status listener: `/health`, `/vips`, `/metrics`.
    pub status: LbStatusConfig,
    /// Which kernel machinery forwards packets.
    pub dataplane: DataplaneKind,
    /// Dummy interface that holds VIP addresses; on kernels without dummy links VIPs become tagged local routes.
    pub vip_interface: String,
    /// Masquerade traffic forwarded to backends, so cells answer through the LB.
    pub snat: bool,
    /// Switchyard's own: packet-mark bits that flag traffic `lb` forwarded, for the masquerade rule.
    pub snat_mark: u32,
    /// Announcements not refreshed within this long are pruned.
    #[serde(deserialize_with = "duration::deserialize", serialize_with = "duration::serialize")]
    pub backend_stale_threshold: Duration,
    /// Health checks run against every backend.
    pub health_check: HealthCheckConfig,
    /// Switchyard's own: how often the kernel is re-read and repaired even when nothing changed.
    #[serde(deserialize_with = "duration::deserialize", serialize_with = "duration::serialize")]
    pub sync_interval: Duration,
    /// Switchyard's own: the shortest gap between two syncs, so a burst of changes becomes one kernel update.
    #[serde(deserialize_with = "duration::deserialize", serialize_with = "duration::serialize")]
    pub sync_min_interval: Duration,
    /// Statically declared VIPs.
    pub vips: Vec<VipSpec>,
}

impl Default for LbConfig {
    fn default() -> Self {
        Self {
            nats: None,
            status: LbStatusConfig::default(),
            dataplane: DataplaneKind::Auto,
            vip_interface: "sy-vip0".to_owned(),
            snat: true,
            snat_mark: 0x0053_5900,
            backend_stale_threshold: Duration::from_secs(30),
            health_check: HealthCheckConfig::default(),
            sync_interval: Duration::from_secs(10),
            sync_min_interval: Duration::from_millis(100),
            vips: Vec::new(),
        }
    }
}

/// `nats.*`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct LbNatsConfig {
    /// Server URLs (`nats://host:port`), tried in turn.
    pub servers: Vec<String>,
    /// User for all servers.
    pub user: String,
    /// Password for all servers.
    pub pass: String,
    /// Connect with TLS.
    pub tls_enabled: bool,
    /// PEM CA certificates that sign the servers' certificates.
    pub ca_certs: String,
    /// PEM client certificate chain, for servers that verify clients.
    pub cert_chain: String,
    /// PEM client private key.
    pub private_key: String,
    /// JetStream key-value bucket holding operator-published VIPs.
    pub vip_bucket: String,
    /// Switchyard's own: also accept announcements on the unscoped `lb.register` / `lb.unregister` subjects
    /// (scoped `lb.register.<vip>` subjects are always accepted).
    pub unscoped_subjects: bool,
    /// Prune nothing while NATS is down, and treat every announcement as fresh when it comes back.
    pub suspend_pruning_if_nats_unavailable: bool,
    /// Switchyard's own: largest announcement payload accepted, in bytes.
    pub max_message_bytes: usize,
}

crate::nats_auth::impl_auth_keys!(LbNatsConfig);

impl Default for LbNatsConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            user: String::new(),
            pass: String::new(),
            tls_enabled: false,
            ca_certs: String::new(),
            cert_chain: String::new(),
            private_key: String::new(),
            vip_bucket: "lb_vips".to_owned(),
            unscoped_subjects: true,
            suspend_pruning_if_nats_unavailable: true,
            max_message_bytes: 64 * 1024,
        }
    }
}

/// `status.*`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct LbStatusConfig {
    /// Listen address.
    pub address: SocketAddr,
    /// Basic-auth user for `/vips`; without one `/vips` refuses everyone.
    pub user: String,
    /// Basic-auth password for `/vips`.
    pub pass: String,
}

impl Default for LbStatusConfig {
    fn default() -> Self {
        Self { address: SocketAddr::from(([127, 0, 0, 1], 8090)), user: String::new(), pass: String::new() }
    }
}

/// Which kernel machinery forwards packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneKind {
    /// IPVS when the kernel has it, else nftables.
    Auto,
    /// IPVS services and destinations over generic netlink.
    Ipvs,
    /// DNAT rules in an nftables table of `lb`'s own.
    Nftables,
}

/// `health_check.*`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct HealthCheckConfig {
    /// How a backend is probed.
    #[serde(rename = "type")]
    pub kind: HealthCheckKind,
    /// Time between two probes of one backend.
    #[serde(deserialize_with = "duration::deserialize", serialize_with = "duration::serialize")]
    pub interval: Duration,
    /// Longest a probe may take before it counts as failed.
    #[serde(deserialize_with = "duration::deserialize", serialize_with = "duration::serialize")]
    pub timeout: Duration,
    /// Consecutive successes that bring a failed backend back.
    pub rise: u32,
    /// Consecutive failures that take a backend out of rotation.
    pub fall: u32,
    /// Request path for `type: http`.
    pub path: String,
    /// Status an `http` probe must answer.
    pub expect_status: u16,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            kind: HealthCheckKind::Tcp,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            path: "/".to_owned(),
            expect_status: 200,
        }
    }
}

/// How a backend is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    /// A TCP connect must succeed.
    Tcp,
    /// `GET <path>` must answer `expect_status`.
    Http,
    /// No probing: every backend counts as healthy.
    None,
}

/// Transport protocol of a VIP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The lowercase name (`tcp`, `udp`), as nftables and operators write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }

    /// The IP protocol number (6, 17), as IPVS encodes it.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a VIP spreads new connections over its backends; the names are IPVS's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    /// Round robin.
    #[default]
    Rr,
    /// Weighted round robin.
    Wrr,
    /// Least connections.
    Lc,
    /// Weighted least connections.
    Wlc,
    /// Source hashing: a client address keeps its backend.
    Sh,
    /// Maglev hashing: consistent source hashing that moves few clients when backends change.
    Mh,
}

impl Scheduler {
    /// Every scheduler, for listings and tests.
    pub const ALL: [Self; 6] = [Self::Rr, Self::Wrr, Self::Lc, Self::Wlc, Self::Sh, Self::Mh];

    /// The IPVS scheduler name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rr => "rr",
            Self::Wrr => "wrr",
            Self::Lc => "lc",
            Self::Wlc => "wlc",
            Self::Sh => "sh",
            Self::Mh => "mh",
        }
    }

    /// Reads an IPVS scheduler name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One VIP: in `vips:` of the file, or the JSON value of one key in the KV bucket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct VipSpec {
    /// Unique name; also the KV key and the `lb.register.<name>` subject token.
    pub name: String,
    /// The virtual address clients connect to.
    pub address: IpAddr,
    /// The virtual port.
    pub port: u16,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub protocol: Protocol,
    /// IPVS scheduler name.
    #[serde(default)]
    pub scheduler: Scheduler,
    /// Keep a client on its backend for this long after its last connection; 0 turns persistence off.
    #[serde(default, deserialize_with = "duration::deserialize", serialize_with = "duration::serialize")]
    pub persistence_timeout: Duration,
    /// Static backends; cells usually announce theirs on NATS instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendSpec>,
}

/// A statically declared backend of a VIP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct BackendSpec {
    /// The cell's address.
    pub host: IpAddr,
    /// The NodePort.
    pub port: u16,
    /// Relative weight; 1 when absent, 0 keeps the backend out of rotation.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// The identity of a VIP in the kernel: two VIPs may not share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipKey {
    /// Virtual address.
    pub address: IpAddr,
    /// Virtual port.
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
}

impl fmt::Display for VipKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            IpAddr::V4(a) => write!(f, "{}/{a}:{}", self.protocol, self.port),
            IpAddr::V6(a) => write!(f, "{}/[{a}]:{}", self.protocol, self.port),
        }
    }
}

/// Whether `address` can be the VIP or backend address of a kernel rule.
fn check_unicast(key: &str, address: IpAddr) -> Result<(), ConfigError> {
    let broadcast = matches!(address, IpAddr::V4(v4) if v4.is_broadcast());
    if address.is_unspecified() || address.is_multicast() || broadcast {
        return Err(ConfigError::new(key, format!("{address} is not a unicast address")));
    }
    Ok(())
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() { key.to_owned() } else { format!("{prefix}.{key}") }
}

impl VipSpec {
    /// Parses one VIP from the JSON value of a KV entry, with the same checks as the file.
    pub fn from_json(payload: &[u8]) -> Result<Loaded<Self>, ConfigError> {
        let text = std::str::from_utf8(payload).map_err(|_| ConfigError::new("", "the VIP is not UTF-8 text"))?;
        parse_json(text)
    }

    /// The kernel identity.
    pub fn key(&self) -> VipKey {
        VipKey { address: self.address, port: self.port, protocol: self.protocol }
    }

    /// Checks the VIP, naming keys under `prefix` (e.g. `vips[2]`).
    pub fn validate_at(&self, prefix: &str) -> Result<(), ConfigError> {
        if !check_vip_name(&self.name) {
            return Err(ConfigError::new(
                join(prefix, "name"),
                format!("{:?} is not a VIP name: use 1 to 128 letters, digits, `-` or `_`", self.name.chars().take(40).collect::<String>()),
            ));
        }
        check_unicast(&join(prefix, "address"), self.address)?;
        if self.port == 0 {
            return Err(ConfigError::new(join(prefix, "port"), "must be between 1 and 65535"));
        }
        if self.persistence_timeout.as_secs() > MAX_PERSISTENCE_SECS || self.persistence_timeout.subsec_nanos() != 0 {
            return Err(ConfigError::new(
                join(prefix, "persistence_timeout"),
                format!("must be whole seconds and at most {MAX_PERSISTENCE_SECS}s"),
            ));
        }
        let mut seen = BTreeSet::new();
        for (index, backend) in self.backends.iter().enumerate() {
            let at = join(prefix, &format!("backends[{index}]"));
            check_backend(&at, self.address, backend.host, backend.port, backend.weight)?;
            if !seen.insert((backend.host, backend.port)) {
                return Err(ConfigError::new(at, format!("{}:{} is listed twice", backend.host, backend.port)));
            }
        }
        Ok(())
    }
}

/// Checks one backend of a VIP at `vip_address`: used for static backends and for announcements alike.
pub fn check_backend(at: &str, vip_address: IpAddr, host: IpAddr, port: u16, weight: u32) -> Result<(), ConfigError> {
    check_unicast(&join(at, "host"), host)?;
    if host.is_ipv4() != vip_address.is_ipv4() {
        return Err(ConfigError::new(join(at, "host"), format!("{host} is not in the address family of the VIP address {vip_address}")));
    }
    if port == 0 {
        return Err(ConfigError::new(join(at, "port"), "must be between 1 and 65535"));
    }
    if weight > MAX_WEIGHT {
        return Err(ConfigError::new(join(at, "weight"), format!("must be at most {MAX_WEIGHT}")));
    }
    Ok(())
}

impl Validate for VipSpec {
    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_at("")
    }
}

impl Validate for LbConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(nats) = &self.nats {
            if nats.servers.is_empty() {
                return Err(ConfigError::new("nats.servers", "list at least one server, or remove `nats` to run from the file alone"));
            }
            if nats.vip_bucket.is_empty() || !nats.vip_bucket.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(ConfigError::new("nats.vip_bucket", "must be letters, digits, `-` or `_`"));
            }
            if nats.max_message_bytes == 0 {
                return Err(ConfigError::new("nats.max_message_bytes", "must be more than 0"));
            }
            nats.auth_keys().validate()?;
        }
        if self.vip_interface.is_empty()
            || self.vip_interface.len() > MAX_INTERFACE_NAME_LEN
            || !self.vip_interface.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(ConfigError::new("vip_interface", "must be an interface name of 1 to 15 letters, digits, `-`, `_` or `.`"));
        }
        if self.snat && self.snat_mark == 0 {
            return Err(ConfigError::new("snat_mark", "must have at least one bit set while `snat` is on"));
        }
        if self.backend_stale_threshold.is_zero() {
            return Err(ConfigError::new("backend_stale_threshold", "must be more than 0s"));
        }
        if self.sync_interval.is_zero() {
            return Err(ConfigError::new("sync_interval", "must be more than 0s"));
        }
        self.health_check.validate()?;
        let mut names = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for (index, vip) in self.vips.iter().enumerate() {
            let at = format!("vips[{index}]");
            vip.validate_at(&at)?;
            if !names.insert(vip.name.as_str()) {
                return Err(ConfigError::new(format!("{at}.name"), format!("`{}` names two VIPs", vip.name)));
            }
            if !keys.insert(vip.key()) {
                return Err(ConfigError::new(at, format!("another VIP already uses {}", vip.key())));
            }
        }
        Ok(())
    }
}

impl Validate for HealthCheckConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.kind == HealthCheckKind::None {
            return Ok(());
        }
        if self.interval.is_zero() {
            return Err(ConfigError::new("health_check.interval", "must be more than 0s"));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new("health_check.timeout", "must be more than 0s"));
        }
        if self.rise == 0 {
            return Err(ConfigError::new("health_check.rise", "must be at least 1"));
        }
        if self.fall == 0 {
            return Err(ConfigError::new("health_check.fall", "must be at least 1"));
        }
        if self.kind == HealthCheckKind::Http {
            if !self.path.starts_with('/') || !self.path.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::new("health_check.path", "must start with `/` and hold no spaces or control characters"));
            }
            if !(100..=599).contains(&self.expect_status) {
                return Err(ConfigError::new("health_check.expect_status", "must be an HTTP status between 100 and 599"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::parse_yaml;

    const EXAMPLE: &str = r#"
nats:
  servers: ["nats://127.0.0.1:4222"]
  vip_bucket: lb_vips
status: {address: 127.0.0.1:8090}
dataplane: nftables
vip_interface: sy-vip0
snat: true
backend_stale_threshold: 30s
health_check: {type: tcp, interval: 2s, timeout: 1s, rise: 2, fall: 3}
vips:
  - name: tenant-a-web
    address: 198.18.2.10
    port: 80
    protocol: tcp
    scheduler: rr
    persistence_timeout: 0s
    backends:
      - {host: 198.18.1.2, port: 10001, weight: 1}
"#;

    fn error_of(yaml: &str) -> ConfigError {
        parse_yaml::<LbConfig>(yaml).unwrap_err()
    }

    #[test]
    fn the_documented_example_loads() {
        let loaded = parse_yaml::<LbConfig>(EXAMPLE).unwrap();
        assert!(loaded.ignored_keys.is_empty(), "{:?}", loaded.ignored_keys);
        let config = loaded.value;
        assert_eq!(config.dataplane, DataplaneKind::Nftables);
        assert_eq!(config.nats.as_ref().map(|n| n.vip_bucket.as_str()), Some("lb_vips"));
        let vip = &config.vips[0];
        assert_eq!(vip.key().to_string(), "tcp/198.18.2.10:80");
        assert_eq!(vip.backends[0].weight, 1);
        assert_eq!(config.health_check.rise, 2);
    }

    #[test]
    fn an_empty_file_is_all_defaults() {
        let config = parse_yaml::<LbConfig>("").unwrap().value;
        assert_eq!(config, LbConfig::default());
    }

    #[test]
    fn bad_vips_name_the_key() {
        let cases = [
            ("vips: [{name: a, address: 198.18.2.300, port: 80}]", "vips[0].address"),
            ("vips: [{name: a, address: 198.18.2.1, port: 0}]", "vips[0].port"),
            ("vips: [{name: a, address: 198.18.2.1, port: 80, scheduler: fastest}]", "vips[0].scheduler"),
            ("vips: [{name: a, address: 198.18.2.1, port: 80, protocol: sctp}]", "vips[0].protocol"),
            ("vips: [{name: 'a b', address: 198.18.2.1, port: 80}]", "vips[0].name"),
            ("vips: [{name: a, address: 224.0.0.1, port: 80}]", "vips[0].address"),
            ("vips: [{name: a, address: 198.18.2.1, port: 80, persistence_timeout: 1.5s}]", "vips[0].persistence_timeout"),
            ("vips: [{name: a, address: 198.18.2.1, port: 80, backends: [{host: '2001:db8::1', port: 1}]}]", "vips[0].backends[0].host"),
            ("vips: [{name: a, address: 198.18.2.1, port: 80, backends: [{host: 198.18.1.1, port: 0}]}]", "vips[0].backends[0].port"),
            ("vips: [{name: a, address: 198.18.2.1, port: 80, backends: [{host: 198.18.1.1, port: 1, weight: 4294967295}]}]", "vips[0].backends[0].weight"),
            ("vips: [{name: a, address: 198.18.2.1, port: 80, backends: [{host: 198.18.1.1, port: 1}, {host: 198.18.1.1, port: 1}]}]", "vips[0].backends[1]"),
            ("vips: [{name: a, address: 198.18.2.1, port: 80}, {name: a, address: 198.18.2.2, port: 80}]", "vips[1].name"),
            ("vips: [{name: a, address: 198.18.2.1, port: 80}, {name: b, address: 198.18.2.1, port: 80}]", "vips[1]"),
        ];
        for (yaml, key) in cases {
            let err = error_of(yaml);
            assert_eq!(err.key, key, "{yaml}: {err}");
        }
    }

    #[test]
    fn same_address_and_port_on_two_protocols_is_fine() {
        let yaml = "vips: [{name: a, address: 198.18.2.1, port: 53}, {name: b, address: 198.18.2.1, port: 53, protocol: udp}]";
        assert_eq!(parse_yaml::<LbConfig>(yaml).unwrap().value.vips.len(), 2);
    }

    #[test]
    fn other_keys_are_checked() {
        assert_eq!(error_of("nats: {servers: []}").key, "nats.servers");
        assert_eq!(error_of("nats: {servers: [x], vip_bucket: 'a.b'}").key, "nats.vip_bucket");
        assert_eq!(error_of("vip_interface: a-very-long-interface-name").key, "vip_interface");
        assert_eq!(error_of("dataplane: ebpf").key, "dataplane");
        assert_eq!(error_of("health_check: {rise: 0}").key, "health_check.rise");
        assert_eq!(error_of("health_check: {type: http, path: nope}").key, "health_check.path");
        assert_eq!(error_of("health_check: {type: http, expect_status: 42}").key, "health_check.expect_status");
        assert_eq!(error_of("backend_stale_threshold: 0s").key, "backend_stale_threshold");
        assert_eq!(error_of("snat_mark: 0").key, "snat_mark");
        assert_eq!(error_of("status: {address: nowhere}").key, "status.address");
    }

    #[test]
    fn a_kv_value_is_one_vip() {
        let loaded = VipSpec::from_json(br#"{"name":"web","address":"198.18.2.10","port":443,"scheduler":"wlc","persistence_timeout":"5m"}"#).unwrap();
        assert_eq!(loaded.value.scheduler, Scheduler::Wlc);
        assert_eq!(loaded.value.persistence_timeout, Duration::from_secs(300));
        let err = VipSpec::from_json(br#"{"name":"web","address":"198.18.2.10","port":0}"#).unwrap_err();
        assert_eq!(err.to_string(), "config key `port`: must be between 1 and 65535");
        let err = VipSpec::from_json(br#"{"name":"web","address":"198.18.2.10"}"#).unwrap_err();
        assert!(err.problem.contains("missing field `port`"), "{err}");
    }

    #[test]
    fn a_vip_round_trips_through_json() {
        let vip = parse_yaml::<LbConfig>(EXAMPLE).unwrap().value.vips.remove(0);
        let json = serde_json::to_vec(&vip).unwrap();
        assert_eq!(VipSpec::from_json(&json).unwrap().value, vip);
    }

    #[test]
    fn scheduler_names_are_ipvs_names() {
        for scheduler in Scheduler::ALL {
            assert_eq!(Scheduler::from_name(scheduler.as_str()), Some(scheduler));
        }
        assert_eq!(Scheduler::from_name("fastest"), None);
    }
}
