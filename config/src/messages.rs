//! The messages of the NATS bus, in gorouter's wire protocol plus Switchyard's `lb.*` announcements.
//!
//! Emitters in the field send loosely typed JSON: fields may be missing, `null`, or (for the instance index) a number
//! where a string is documented. Parsing here is lenient about shape and strict about content: anything that would
//! end up in a header, a socket address or a route key is checked, because one bad message must never poison the
//! table or smuggle bytes into a response.

use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// NATS subject on which cells announce routes.
pub const SUBJECT_REGISTER: &str = "router.register";
/// NATS subject on which cells withdraw routes.
pub const SUBJECT_UNREGISTER: &str = "router.unregister";
/// NATS subject the router publishes at start-up and after every reconnect.
pub const SUBJECT_START: &str = "router.start";
/// NATS request subject the router answers with its start message.
pub const SUBJECT_GREET: &str = "router.greet";
/// NATS subject on which cells announce a NodePort serving a VIP.
pub const SUBJECT_LB_REGISTER: &str = "lb.register";
/// NATS subject on which cells withdraw a NodePort.
pub const SUBJECT_LB_UNREGISTER: &str = "lb.unregister";

/// Reads `null` as the type's default, as Go's JSON decoder does for the emitters (and templated configs) that
/// send it.
pub fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Reads a string, or a number written where a string is documented (some emitters send the index as an int).
fn string_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Loose {
        Text(String),
        Signed(i64),
        Unsigned(u64),
        Null(()),
    }
    Ok(match Loose::deserialize(deserializer)? {
        Loose::Text(text) => text,
        Loose::Signed(n) => n.to_string(),
        Loose::Unsigned(n) => n.to_string(),
        Loose::Null(()) => String::new(),
    })
}

fn is_zero_u16(value: &u16) -> bool {
    *value == 0
}

fn is_zero_i64(value: &i64) -> bool {
    *value == 0
}

/// A `router.register` or `router.unregister` payload.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Registration {
    /// Backend IP address or hostname.
    #[serde(default, deserialize_with = "null_as_default")]
    pub host: String,
    /// Plain-HTTP port.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "is_zero_u16")]
    pub port: u16,
    /// TLS port; when non-zero it wins over `port` and marks the endpoint TLS.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "is_zero_u16")]
    pub tls_port: u16,
    /// `host[/context/path]` entries this endpoint serves.
    #[serde(default, deserialize_with = "null_as_default")]
    pub uris: Vec<String>,
    /// App GUID, sent to the backend as `X-CF-ApplicationID`.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "String::is_empty")]
    pub app: String,
    /// Instance id, used for sticky sessions and `X-CF-InstanceID`.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "String::is_empty")]
    pub private_instance_id: String,
    /// Instance index (a string on the wire), sent as `X-CF-InstanceIndex`.
    #[serde(default, deserialize_with = "string_or_number", skip_serializing_if = "String::is_empty")]
    pub private_instance_index: String,
    /// Subject alternative name the backend's TLS certificate must carry.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "String::is_empty")]
    pub server_cert_domain_san: String,
    /// Route service to splice in front of the app; must be https.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "String::is_empty")]
    pub route_service_url: String,
    /// Isolation segment of the cell.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "String::is_empty")]
    pub isolation_segment: String,
    /// Availability zone of the cell.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "String::is_empty")]
    pub availability_zone: String,
    /// `http1` (also when empty) or `http2`.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// Per-endpoint TTL in seconds; it may only shorten the router's global TTL.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "is_zero_i64")]
    pub stale_threshold_in_seconds: i64,
    /// When the emitter last changed this endpoint, in unix nanoseconds, for the registration-latency metric.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "is_zero_i64")]
    pub endpoint_updated_at_ns: i64,
    /// Free-form tags; `component` feeds metric labels.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Per-route options.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "RouteOptions::is_empty")]
    pub options: RouteOptions,
}

/// Per-route options carried in a registration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct RouteOptions {
    /// Load-balancing algorithm, older spelling.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "String::is_empty")]
    pub lb_algo: String,
    /// Load-balancing algorithm, newer spelling; wins when both are set.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "String::is_empty")]
    pub loadbalancing: String,
    /// Request header whose value feeds the consistent hash, for the `hash` algorithm.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "String::is_empty")]
    pub hash_header: String,
}

impl RouteOptions {
    fn is_empty(&self) -> bool {
        self.lb_algo.is_empty() && self.loadbalancing.is_empty() && self.hash_header.is_empty()
    }
}

/// How a pool picks an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum LbAlgorithm {
    /// Next endpoint in turn, starting at a random one, skipping recently failed endpoints.
    #[serde(rename = "round-robin")]
    RoundRobin,
    /// The endpoint with the fewest requests in flight.
    #[serde(rename = "least-connection")]
    LeastConnection,
    /// Maglev consistent hash of a request header, so a key keeps its endpoint while the pool changes little.
    #[serde(rename = "hash")]
    Hash,
}

impl LbAlgorithm {
    /// Reads the wire spelling.
    pub fn from_wire(name: &str) -> Option<Self> {
        match name {
            "round-robin" | "rr" => Some(Self::RoundRobin),
            "least-connection" | "least-connections" | "lc" => Some(Self::LeastConnection),
            "hash" | "maglev" => Some(Self::Hash),
            _ => None,
        }
    }

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round-robin",
            Self::LeastConnection => "least-connection",
            Self::Hash => "hash",
        }
    }
}

/// Backend application protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendProtocol {
    /// HTTP/1.1 (the default).
    Http1,
    /// HTTP/2 (h2c on plain ports, ALPN on TLS).
    Http2,
}

impl BackendProtocol {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
        }
    }
}

/// Why a bus message was refused. Every variant maps to a stable metric label via [`MessageError::reason`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// The payload was not JSON of the expected shape.
    Malformed(String),
    /// The payload is larger than the configured limit.
    TooLarge {
        /// Payload size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// `host` is missing.
    MissingHost,
    /// `host` is neither an IP address nor a DNS name, or is an address that may not be a backend.
    InvalidHost(String),
    /// Neither `port` nor `tls_port` is set.
    MissingPort,
    /// `uris` is missing or empty.
    MissingUris,
    /// More `uris` than the configured limit.
    TooManyUris {
        /// How many were sent.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A uri is empty, too long, or has characters a Host header cannot carry.
    InvalidUri(String),
    /// A field holds a control character (CR, LF, NUL, ...), which could be smuggled into a header.
    ControlCharacter(&'static str),
    /// `route_service_url` is not an https URL.
    RouteServiceNotHttps,
    /// `protocol` is neither `http1` nor `http2`.
    UnknownProtocol(String),
    /// A required field other than host, port and uris is missing.
    MissingField(&'static str),
}

impl MessageError {
    /// Short stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::TooLarge { .. } => "too_large",
            Self::MissingHost => "missing_host",
            Self::InvalidHost(_) => "invalid_host",
            Self::MissingPort => "missing_port",
            Self::MissingUris => "missing_uris",
            Self::TooManyUris { .. } => "too_many_uris",
            Self::InvalidUri(_) => "invalid_uri",
            Self::ControlCharacter(_) => "control_character",
            Self::RouteServiceNotHttps => "route_service_not_https",
            Self::UnknownProtocol(_) => "unknown_protocol",
            Self::MissingField(_) => "missing_field",
        }
    }
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(why) => write!(f, "payload is not a valid message: {why}"),
            Self::TooLarge { size, limit } => write!(f, "payload of {size} bytes is over the {limit}-byte limit"),
            Self::MissingHost => f.write_str("`host` is missing"),
            Self::InvalidHost(host) => write!(f, "`host` {host:?} is not an allowed backend address"),
            Self::MissingPort => f.write_str("neither `port` nor `tls_port` is set"),
            Self::MissingUris => f.write_str("`uris` is missing or empty"),
            Self::TooManyUris { count, limit } => write!(f, "{count} uris is over the limit of {limit}"),
            Self::InvalidUri(uri) => write!(f, "uri {uri:?} is not a valid route"),
            Self::ControlCharacter(field) => write!(f, "`{field}` contains a control character"),
            Self::RouteServiceNotHttps => f.write_str("`route_service_url` must be an https URL"),
            Self::UnknownProtocol(p) => write!(f, "`protocol` {p:?} is neither http1 nor http2"),
            Self::MissingField(field) => write!(f, "`{field}` is missing"),
        }
    }
}

impl std::error::Error for MessageError {}

/// Limits applied to every bus message before it touches any state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimits {
    /// Largest accepted payload, in bytes.
    pub max_payload_bytes: usize,
    /// Most uris accepted in one registration.
    pub max_uris: usize,
    /// Whether a backend `host` may be a loopback address (useful on a developer machine, wrong in production).
    pub allow_loopback_hosts: bool,
}

impl Default for MessageLimits {
    fn default() -> Self {
        Self { max_payload_bytes: 256 * 1024, max_uris: 1000, allow_loopback_hosts: true }
    }
}

/// Longest route uri accepted: a DNS name (253) plus a generous context path.
pub const MAX_URI_LEN: usize = 2048;

fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

/// Whether a name that is not a standard IP literal would still be read as an address by the resolver.
/// `getaddrinfo` takes `127.1`, `2130706433`, `0x7f000001` and `0177.0.0.1` as IPv4 addresses (the `inet_aton`
/// forms), so such a "name" would slip past every address check. A real host name never ends in an all-numeric
/// label (RFC 3696, 2), so any name whose last label is decimal, or `0x` hexadecimal, is refused.
fn looks_numeric(host: &str) -> bool {
    let last = host.rsplit('.').next().unwrap_or_default();
    let hex = last.get(..2).is_some_and(|prefix| prefix.eq_ignore_ascii_case("0x"))
        && last.get(2..).is_some_and(|digits| digits.bytes().all(|b| b.is_ascii_hexdigit()));
    hex || (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
}

fn ends_with_ignore_case(text: &str, suffix: &str) -> bool {
    text.len() >= suffix.len() && text.get(text.len() - suffix.len()..).is_some_and(|end| end.eq_ignore_ascii_case(suffix))
}

/// Whether `host` is acceptable as a backend address under `limits`.
pub fn check_backend_host(host: &str, limits: &MessageLimits) -> Result<(), MessageError> {
    if host.is_empty() {
        return Err(MessageError::MissingHost);
    }
    if has_control(host) {
        return Err(MessageError::ControlCharacter("host"));
    }
    let invalid = || MessageError::InvalidHost(host.to_owned());
    match host.parse::<IpAddr>() {
        Ok(ip) => {
            // `::ffff:127.0.0.1` is 127.0.0.1 to the kernel: judge the IPv4 address it maps.
            let ip = ip.to_canonical();
            let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
            if ip.is_unspecified() || ip.is_multicast() || broadcast || (ip.is_loopback() && !limits.allow_loopback_hosts) {
                return Err(invalid());
            }
            Ok(())
        }
        Err(_) => {
            let valid_name = host.len() <= 253
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if !valid_name || looks_numeric(host) {
                return Err(invalid());
            }
            let local_name = host.eq_ignore_ascii_case("localhost") || ends_with_ignore_case(host, ".localhost");
            if !limits.allow_loopback_hosts && local_name {
                return Err(invalid());
            }
            Ok(())
        }
    }
}

/// Whether a route uri (`host[/path]`) can be served: printable, no spaces, a non-empty host part.
pub fn check_route_uri(uri: &str) -> Result<(), MessageError> {
    let invalid = || MessageError::InvalidUri(uri.chars().take(80).collect());
    if uri.is_empty() || uri.len() > MAX_URI_LEN {
        return Err(invalid());
    }
    if !uri.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid());
    }
    let host = uri.split(['/', '?']).next().unwrap_or_default();
    if host.is_empty() {
        return Err(invalid());
    }
    Ok(())
}

impl Registration {
    /// Parses and checks a payload. The whole message is refused on the first problem, so a bad field never
    /// half-applies.
    pub fn parse(payload: &[u8], limits: &MessageLimits) -> Result<Self, MessageError> {
        if payload.len() > limits.max_payload_bytes {
            return Err(MessageError::TooLarge { size: payload.len(), limit: limits.max_payload_bytes });
        }
        let registration: Self = serde_json::from_slice(payload).map_err(|e| MessageError::Malformed(e.to_string()))?;
        registration.check(limits)?;
        Ok(registration)
    }

    /// Checks the content of an already decoded registration.
    pub fn check(&self, limits: &MessageLimits) -> Result<(), MessageError> {
        check_backend_host(&self.host, limits)?;
        if self.port == 0 && self.tls_port == 0 {
            return Err(MessageError::MissingPort);
        }
        if self.uris.is_empty() {
            return Err(MessageError::MissingUris);
        }
        if self.uris.len() > limits.max_uris {
            return Err(MessageError::TooManyUris { count: self.uris.len(), limit: limits.max_uris });
        }
        for uri in &self.uris {
            check_route_uri(uri)?;
        }
        let text_fields: [(&'static str, &str); 11] = [
            ("app", &self.app),
            ("private_instance_id", &self.private_instance_id),
            ("private_instance_index", &self.private_instance_index),
            ("server_cert_domain_san", &self.server_cert_domain_san),
            ("route_service_url", &self.route_service_url),
            ("isolation_segment", &self.isolation_segment),
            ("availability_zone", &self.availability_zone),
            ("protocol", &self.protocol),
            ("options.lb_algo", &self.options.lb_algo),
            ("options.loadbalancing", &self.options.loadbalancing),
            ("options.hash_header", &self.options.hash_header),
        ];
        for (name, value) in text_fields {
            if has_control(value) {
                return Err(MessageError::ControlCharacter(name));
            }
        }
        if self.tags.iter().any(|(k, v)| has_control(k) || has_control(v)) {
            return Err(MessageError::ControlCharacter("tags"));
        }
        if !self.route_service_url.is_empty() && !self.route_service_url.starts_with("https://") {
            return Err(MessageError::RouteServiceNotHttps);
        }
        self.backend_protocol()?;
        Ok(())
    }

    /// The backend protocol, `http1` when empty.
    pub fn backend_protocol(&self) -> Result<BackendProtocol, MessageError> {
        match self.protocol.as_str() {
            "" | "http1" => Ok(BackendProtocol::Http1),
            "http2" => Ok(BackendProtocol::Http2),
            other => Err(MessageError::UnknownProtocol(other.chars().take(32).collect())),
        }
    }

    /// The per-route algorithm, if the message names a known one. `loadbalancing` wins over `lb_algo`.
    /// An unknown name yields `Err(name)` so the caller can fall back to its default and say so.
    pub fn lb_algorithm(&self) -> Result<Option<LbAlgorithm>, String> {
        let name = if self.options.loadbalancing.is_empty() { &self.options.lb_algo } else { &self.options.loadbalancing };
        if name.is_empty() {
            return Ok(None);
        }
        LbAlgorithm::from_wire(name).map(Some).ok_or_else(|| name.clone())
    }

    /// Whether the endpoint is reached over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls_port != 0
    }

    /// The port the router dials: `tls_port` when set, else `port`.
    pub fn effective_port(&self) -> u16 {
        if self.tls_port != 0 { self.tls_port } else { self.port }
    }
}

/// The `router.start` payload, also the answer to `router.greet`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RouterStart {
    /// `<index>-<uuid>` of the router process.
    pub id: String,
    /// The router's IP addresses.
    pub hosts: Vec<String>,
    /// Emitters should register at least this often, in seconds.
    #[serde(rename = "minimumRegisterIntervalInSeconds")]
    pub minimum_register_interval_in_seconds: u64,
    /// Endpoints not refreshed within this many seconds are pruned.
    #[serde(rename = "pruneThresholdInSeconds")]
    pub prune_threshold_in_seconds: u64,
}

/// An `lb.register` / `lb.unregister` payload: a cell's NodePort serving a VIP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct LbRegistration {
    /// Name of the VIP this NodePort serves.
    pub vip: String,
    /// The cell's IP address.
    pub host: String,
    /// The NodePort.
    pub port: u16,
    /// Relative weight; 1 when absent.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Per-announcement TTL in seconds; 0 or absent means the `lb`'s configured threshold.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "is_zero_u64")]
    pub stale_threshold_in_seconds: u64,
}

fn is_zero_u64(value: &u64) -> bool {
    *value == 0
}

fn default_weight() -> u32 {
    1
}

/// Longest VIP name accepted; names double as NATS subject tokens and KV keys.
pub const MAX_VIP_NAME_LEN: usize = 128;

/// Whether `name` is a valid VIP name: letters, digits, `-` and `_`, so it is also a valid NATS token and KV key.
pub fn check_vip_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_VIP_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl LbRegistration {
    /// Parses and checks a payload.
    pub fn parse(payload: &[u8], limits: &MessageLimits) -> Result<Self, MessageError> {
        if payload.len() > limits.max_payload_bytes {
            return Err(MessageError::TooLarge { size: payload.len(), limit: limits.max_payload_bytes });
        }
        let announcement: Self = serde_json::from_slice(payload).map_err(|e| MessageError::Malformed(e.to_string()))?;
        announcement.check(limits)?;
        Ok(announcement)
    }

    /// Checks the content: a valid VIP name, an IP host (the kernel needs addresses), a non-zero port.
    pub fn check(&self, limits: &MessageLimits) -> Result<(), MessageError> {
        if self.vip.is_empty() {
            return Err(MessageError::MissingField("vip"));
        }
        if !check_vip_name(&self.vip) {
            return Err(MessageError::Malformed(format!("vip name {:?} must be letters, digits, - or _", self.vip.chars().take(40).collect::<String>())));
        }
        check_backend_host(&self.host, limits)?;
        if self.host.parse::<IpAddr>().is_err() {
            return Err(MessageError::InvalidHost(self.host.chars().take(80).collect()));
        }
        if self.port == 0 {
            return Err(MessageError::MissingPort);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> MessageLimits {
        MessageLimits::default()
    }

    #[test]
    fn parses_a_full_registration() {
        let payload = br#"{"host":"10.0.0.1","port":8080,"uris":["app.example.com","app.example.com/api"],
            "app":"guid","private_instance_id":"iid","private_instance_index":"2","tags":{"component":"web"},
            "stale_threshold_in_seconds":30,"options":{"lb_algo":"least-connection"},"unknown_field":true}"#;
        let r = Registration::parse(payload, &limits()).unwrap();
        assert_eq!(r.host, "10.0.0.1");
        assert_eq!(r.uris.len(), 2);
        assert_eq!(r.lb_algorithm(), Ok(Some(LbAlgorithm::LeastConnection)));
        assert_eq!(r.tags.get("component").map(String::as_str), Some("web"));
        assert!(!r.is_tls());
        assert_eq!(r.effective_port(), 8080);
    }

    #[test]
    fn loadbalancing_wins_over_lb_algo_and_numbers_are_accepted_as_index() {
        let payload = br#"{"host":"10.0.0.1","port":1,"uris":["a"],"private_instance_index":3,
            "options":{"lb_algo":"round-robin","loadbalancing":"hash","hash_header":"X-User"}}"#;
        let r = Registration::parse(payload, &limits()).unwrap();
        assert_eq!(r.private_instance_index, "3");
        assert_eq!(r.lb_algorithm(), Ok(Some(LbAlgorithm::Hash)));
    }

    #[test]
    fn nulls_read_as_empty() {
        let r = Registration::parse(br#"{"host":"h","port":1,"uris":["a"],"tags":null,"app":null}"#, &limits()).unwrap();
        assert!(r.tags.is_empty());
        assert!(r.app.is_empty());
    }

    #[test]
    fn tls_port_wins() {
        let r = Registration::parse(br#"{"host":"h","port":1,"tls_port":2,"uris":["a"]}"#, &limits()).unwrap();
        assert!(r.is_tls());
        assert_eq!(r.effective_port(), 2);
    }

    #[test]
    fn refuses_bad_content() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "malformed"),
            (br#"{"port":1,"uris":["a"]}"#, "missing_host"),
            (br#"{"host":"h","uris":["a"]}"#, "missing_port"),
            (br#"{"host":"h","port":70000,"uris":["a"]}"#, "malformed"),
            (br#"{"host":"h","port":1}"#, "missing_uris"),
            (br#"{"host":"h","port":1,"uris":["a b"]}"#, "invalid_uri"),
            (br#"{"host":"h","port":1,"uris":["/path"]}"#, "invalid_uri"),
            (br#"{"host":"h","port":1,"uris":["a"],"app":"x\r\nSet-Cookie: y"}"#, "control_character"),
            (br#"{"host":"h","port":1,"uris":["a"],"tags":{"k":"\u0000"}}"#, "control_character"),
            (br#"{"host":"h","port":1,"uris":["a"],"route_service_url":"http://rs"}"#, "route_service_not_https"),
            (br#"{"host":"h","port":1,"uris":["a"],"protocol":"gopher"}"#, "unknown_protocol"),
            (br#"{"host":"224.0.0.1","port":1,"uris":["a"]}"#, "invalid_host"),
            (br#"{"host":"255.255.255.255","port":1,"uris":["a"]}"#, "invalid_host"),
            (br#"{"host":"0.0.0.0","port":1,"uris":["a"]}"#, "invalid_host"),
            (br#"{"host":"bad host","port":1,"uris":["a"]}"#, "invalid_host"),
        ];
        for (payload, reason) in cases {
            let err = Registration::parse(payload, &limits()).unwrap_err();
            assert_eq!(err.reason(), *reason, "{}: {err}", String::from_utf8_lossy(payload));
        }
    }

    #[test]
    fn loopback_hosts_follow_the_limit() {
        let strict = MessageLimits { allow_loopback_hosts: false, ..limits() };
        for host in ["127.0.0.1", "127.255.255.254", "::1", "::ffff:127.0.0.1", "localhost", "LocalHost", "app.localhost"] {
            let payload = format!(r#"{{"host":"{host}","port":1,"uris":["a"]}}"#);
            assert!(Registration::parse(payload.as_bytes(), &limits()).is_ok(), "{host} is fine where loopback is allowed");
            assert_eq!(Registration::parse(payload.as_bytes(), &strict).unwrap_err().reason(), "invalid_host", "{host}");
        }
    }

    #[test]
    fn addresses_in_disguise_are_judged_as_addresses() {
        // Mapped IPv6 forms of refused IPv4 addresses, and names the resolver would read as IPv4 addresses.
        for host in ["::ffff:224.0.0.1", "::ffff:255.255.255.255", "::ffff:0.0.0.0", "127.1", "2130706433", "0x7f000001", "0X7F.1", "0177.0.0.1", "0", "224.1", "4294967295", "cell.10"] {
            let payload = format!(r#"{{"host":"{host}","port":1,"uris":["a"]}}"#);
            assert_eq!(Registration::parse(payload.as_bytes(), &limits()).unwrap_err().reason(), "invalid_host", "{host}");
        }
        for host in ["10.0.0.1", "::ffff:10.0.0.1", "cell-1.example.com", "10-0-0-1.cells.internal", "x0", "0x.example", "a1"] {
            let payload = format!(r#"{{"host":"{host}","port":1,"uris":["a"]}}"#);
            assert!(Registration::parse(payload.as_bytes(), &limits()).is_ok(), "{host}");
        }
    }

    #[test]
    fn every_text_field_refuses_control_characters() {
        for field in ["app", "private_instance_id", "private_instance_index", "server_cert_domain_san", "isolation_segment", "availability_zone", "protocol"] {
            for control in ["\\r\\n", "\\u0000", "\\u001b", "\\u007f", "\\u0085"] {
                let payload = format!(r#"{{"host":"h","port":1,"uris":["a"],"{field}":"x{control}y"}}"#);
                assert_eq!(Registration::parse(payload.as_bytes(), &limits()).unwrap_err(), MessageError::ControlCharacter(field), "{payload}");
            }
        }
        for (options, field) in [(r#"{"lb_algo":"rr\n"}"#, "options.lb_algo"), (r#"{"loadbalancing":"rr\r"}"#, "options.loadbalancing")] {
            let payload = format!(r#"{{"host":"h","port":1,"uris":["a"],"options":{options}}}"#);
            assert_eq!(Registration::parse(payload.as_bytes(), &limits()).unwrap_err(), MessageError::ControlCharacter(field), "{payload}");
        }
    }

    #[test]
    fn size_and_count_limits() {
        let small = MessageLimits { max_payload_bytes: 10, ..limits() };
        assert_eq!(Registration::parse(&[b' '; 11], &small).unwrap_err().reason(), "too_large");
        let uris: Vec<String> = (0..1001).map(|i| format!("\"a{i}\"")).collect();
        let payload = format!(r#"{{"host":"h","port":1,"uris":[{}]}}"#, uris.join(","));
        assert_eq!(Registration::parse(payload.as_bytes(), &limits()).unwrap_err().reason(), "too_many_uris");
    }

    #[test]
    fn router_start_uses_gorouter_field_names() {
        let start = RouterStart { id: "0-abc".into(), hosts: vec!["10.0.0.5".into()], minimum_register_interval_in_seconds: 20, prune_threshold_in_seconds: 120 };
        let json = serde_json::to_string(&start).unwrap();
        assert_eq!(json, r#"{"id":"0-abc","hosts":["10.0.0.5"],"minimumRegisterIntervalInSeconds":20,"pruneThresholdInSeconds":120}"#);
    }

    #[test]
    fn lb_registration_checks() {
        let ok = LbRegistration::parse(br#"{"vip":"web","host":"198.18.1.2","port":10001}"#, &limits()).unwrap();
        assert_eq!(ok.weight, 1);
        for bad in [
            &br#"{"vip":"","host":"198.18.1.2","port":1}"#[..],
            br#"{"vip":"a.b","host":"198.18.1.2","port":1}"#,
            br#"{"vip":"web","host":"cell-1","port":1}"#,
            br#"{"vip":"web","host":"198.18.1.2","port":0}"#,
        ] {
            assert!(LbRegistration::parse(bad, &limits()).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
