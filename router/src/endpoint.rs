//! An app instance the router can send requests to.
//!
//! A router holds one endpoint per registered backend, and at a million routes their size is most of the route
//! table's memory, so an endpoint keeps only what the request path reads on every request inline: where to dial,
//! one text buffer (identity, instance id, app GUID, index), the counters, the TTL. Attributes that most
//! registrations leave empty (SAN, route service, zone, tags) sit out of line and are absent when empty.
//!
//! The header values the proxy adds for an endpoint (`X-CF-ApplicationID`, `X-CF-InstanceIndex`,
//! `X-CF-InstanceID`) are slices of that one text buffer, a reference-counted [`ByteString`], so a request gets them
//! without allocating or copying, and an endpoint holds no second copy of its own text. The buffer's shared
//! reference count is allocated on the first request (`Bytes` does that when a buffer is first shared), so an
//! endpoint that never serves pays nothing for it. The values are checked when the registration arrives.
//!
//! The few mutable fields are atomics shared by all worker threads: requests in flight (least-connection,
//! `max_conns`), the time of the last failure (retries skip recent failures), and the time of the last
//! registration (pruning, written only by the registry).

use bytestring::ByteString;
use http::HeaderValue;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use switchyard_config::messages::{BackendProtocol, Registration};

/// Where to dial.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DialTarget {
    /// A literal IP address and a port (not a `SocketAddr`, whose IPv6 flow and scope fields no registration
    /// carries and which would make every endpoint 8 bytes larger).
    Addr(IpAddr, u16),
    /// A DNS name, resolved when dialling.
    Name(Box<str>, u16),
}

impl std::fmt::Display for DialTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Addr(ip, port) => write!(f, "{}", std::net::SocketAddr::new(*ip, *port)),
            Self::Name(name, port) => write!(f, "{name}:{port}"),
        }
    }
}

impl DialTarget {
    /// The target for `host` (an IP literal or a DNS name) and `port`.
    pub fn new(host: &str, port: u16) -> Self {
        match host.parse::<IpAddr>() {
            Ok(ip) => Self::Addr(ip, port),
            Err(_) => Self::Name(host.into(), port),
        }
    }
}

/// What a backend connection is for: where it goes, the name its TLS certificate must carry (if TLS), and whether
/// it speaks HTTP/2. Connections are pooled per key, so two registrations at one address that differ in TLS
/// identity or protocol never share a connection. Cloning a plain key copies an address; a TLS key adds one
/// reference count.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamKey {
    /// Where to dial.
    pub target: DialTarget,
    /// For TLS: the name the backend's certificate must be valid for.
    /// (`Arc<String>` rather than `Arc<str>`: a thin pointer keeps every endpoint 8 bytes smaller.)
    pub tls_name: Option<Arc<String>>,
    /// Speak HTTP/2 (h2c on plain ports, ALPN `h2` on TLS).
    pub http2: bool,
}

impl UpstreamKey {
    /// The same destination spoken to over HTTP/1.1 (protocol upgrades such as WebSocket need it).
    pub fn as_http1(&self) -> Self {
        Self { http2: false, ..self.clone() }
    }
}

/// Attributes that matter less often, kept out of line so the hot struct stays small.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointDetails {
    /// SAN the backend certificate must carry (TLS endpoints).
    pub server_cert_domain_san: String,
    /// Route service in front of the app, if any.
    pub route_service_url: String,
    /// Isolation segment.
    pub isolation_segment: String,
    /// Availability zone.
    pub availability_zone: String,
    /// Tags from the registration, in name order. (A list, not a map: a registration carries one or two, and a
    /// map's smallest node is some 500 bytes, which a million endpoints would each pay.)
    pub tags: Vec<(String, String)>,
}

/// What an endpoint without details reports.
static NO_DETAILS: EndpointDetails = EndpointDetails {
    server_cert_domain_san: String::new(),
    route_service_url: String::new(),
    isolation_segment: String::new(),
    availability_zone: String::new(),
    tags: Vec::new(),
};

impl EndpointDetails {
    /// The details a registration carries, `None` when it carries none.
    fn of(registration: &Registration) -> Option<Box<Self>> {
        let details = Self {
            server_cert_domain_san: registration.server_cert_domain_san.clone(),
            route_service_url: registration.route_service_url.clone(),
            isolation_segment: registration.isolation_segment.clone(),
            availability_zone: registration.availability_zone.clone(),
            tags: registration.tags.iter().map(|(name, value)| (name.clone(), value.clone())).collect(),
        };
        (details != NO_DETAILS).then(|| Box::new(details))
    }

    /// Whether these are the details `registration` carries.
    fn describe(&self, registration: &Registration) -> bool {
        self.server_cert_domain_san == registration.server_cert_domain_san
            && self.route_service_url == registration.route_service_url
            && self.isolation_segment == registration.isolation_segment
            && self.availability_zone == registration.availability_zone
            && self.tags.iter().map(|(name, value)| (name, value)).eq(&registration.tags)
    }
}

/// The values of the headers that name an endpoint's instance to its backend, each `None` when the registration
/// left the field empty.
#[derive(Debug)]
pub struct InstanceHeaders {
    /// `X-CF-ApplicationID`.
    pub app_id: Option<HeaderValue>,
    /// `X-CF-InstanceIndex`.
    pub instance_index: Option<HeaderValue>,
    /// `X-CF-InstanceID`: the private instance id, or `host:port`, so always present.
    pub instance_id: Option<HeaderValue>,
}

/// One registered backend in one pool.
#[derive(Debug)]
pub struct Endpoint {
    upstream: UpstreamKey,
    /// The identity (`host:port`), the private instance id, the app GUID and the instance index, one after another.
    text: ByteString,
    /// Where the identity, the instance id and the app GUID end in `text`.
    ends: [u16; 3],
    /// The stale threshold in milliseconds (a TTL beyond 49 days is held as 49 days).
    ttl_ms: u32,
    in_flight: AtomicU32,
    last_seen_ms: AtomicU64,
    failed_at_ms: AtomicU64,
    details: Option<Box<EndpointDetails>>,
}

/// The identity of an endpoint within a pool: `host:port`, or `host:tls_port` for TLS.
pub fn identity_of(registration: &Registration) -> String {
    format!("{}:{}", registration.host, registration.effective_port())
}

/// Why a registration could not become an endpoint: content that passed the message checks but that the endpoint
/// cannot carry. Retrying the same message fails the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The field cannot be sent as a header value.
    #[error("field `{0}` cannot be sent as a header value")]
    NotAHeaderValue(&'static str),
    /// The field ends past the 64 KiB an endpoint's text may hold.
    #[error("field `{0}` is too long to hold")]
    TooLong(&'static str),
}

/// The name a TLS backend's certificate must carry: the registration's SAN, or with none given, the address.
fn tls_name_of(registration: &Registration) -> Option<&str> {
    let san = registration.server_cert_domain_san.as_str();
    registration.is_tls().then_some(if san.is_empty() { registration.host.as_str() } else { san })
}

/// The TTL an endpoint of `registration` gets: the registration may only shorten the router's `max_ttl`.
fn ttl_ms_of(registration: &Registration, max_ttl: Duration) -> u32 {
    let requested = u64::try_from(registration.stale_threshold_in_seconds).unwrap_or(0);
    let ttl = if requested > 0 { max_ttl.min(Duration::from_secs(requested)) } else { max_ttl };
    u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX)
}

impl Endpoint {
    /// Builds an endpoint from a checked registration. `max_ttl` is the router's global stale threshold; the
    /// registration may only shorten it.
    pub fn from_registration(registration: &Registration, max_ttl: Duration, now_ms: u64) -> Result<Self, EndpointError> {
        let protocol = registration.backend_protocol().unwrap_or(BackendProtocol::Http1);
        let upstream = UpstreamKey {
            target: DialTarget::new(&registration.host, registration.effective_port()),
            tls_name: tls_name_of(registration).map(|name| Arc::new(name.to_owned())),
            http2: protocol == BackendProtocol::Http2,
        };
        let identity = identity_of(registration);
        let parts = [
            ("host", identity.as_str()),
            ("private_instance_id", registration.private_instance_id.as_str()),
            ("app", registration.app.as_str()),
            ("private_instance_index", registration.private_instance_index.as_str()),
        ];
        let mut text = String::with_capacity(parts.iter().map(|(_, part)| part.len()).sum());
        let mut ends = [0u16; 3];
        for (index, (field, part)) in parts.into_iter().enumerate() {
            if !part.is_empty() && HeaderValue::from_str(part).is_err() {
                return Err(EndpointError::NotAHeaderValue(field));
            }
            text.push_str(part);
            let end = u16::try_from(text.len()).map_err(|_| EndpointError::TooLong(field))?;
            if let Some(slot) = ends.get_mut(index) {
                *slot = end;
            }
        }
        Ok(Self {
            upstream,
            text: ByteString::from(text),
            ends,
            ttl_ms: ttl_ms_of(registration, max_ttl),
            in_flight: AtomicU32::new(0),
            last_seen_ms: AtomicU64::new(now_ms),
            failed_at_ms: AtomicU64::new(0),
            details: EndpointDetails::of(registration),
        })
    }

    /// Whether this endpoint is what `registration` (under the router's `max_ttl`) would build, so a
    /// re-registration that changes nothing is recognised. Uris and timestamps are left out: they do not change
    /// the endpoint.
    pub fn describes(&self, registration: &Registration, max_ttl: Duration) -> bool {
        let r = registration;
        let identity = self.identity();
        let same_address = identity.strip_prefix(r.host.as_str()).and_then(|rest| rest.strip_prefix(':')).is_some_and(|port| port.parse() == Ok(r.effective_port()));
        same_address
            && self.upstream.tls_name.as_deref().map(String::as_str) == tls_name_of(r)
            && self.protocol() == r.backend_protocol().unwrap_or(BackendProtocol::Http1)
            && self.private_instance_id() == r.private_instance_id
            && self.app_id() == r.app
            && self.instance_index() == r.private_instance_index
            && self.ttl_ms == ttl_ms_of(r, max_ttl)
            && self.details().describe(r)
    }

    /// Where the `index`th piece of `text` (identity, instance id, app GUID, index) lies.
    fn range(&self, index: usize) -> Range<usize> {
        let start = index.checked_sub(1).and_then(|previous| self.ends.get(previous)).map_or(0, |&end| usize::from(end));
        let end = self.ends.get(index).map_or(self.text.len(), |&end| usize::from(end));
        start..end
    }

    /// The `index`th piece of `text`.
    fn part(&self, index: usize) -> &str {
        self.text.get(self.range(index)).unwrap_or_default()
    }

    /// The header value of the `index`th piece of `text`, sharing its bytes; `None` when the piece is empty.
    fn header_value(&self, index: usize) -> Option<HeaderValue> {
        let range = self.range(index);
        if range.is_empty() || range.end > self.text.len() {
            return None;
        }
        HeaderValue::from_maybe_shared(self.text.as_bytes().slice(range)).ok()
    }

    /// `host:port` as registered.
    pub fn identity(&self) -> &str {
        self.part(0)
    }

    /// The registration's private instance id (may be empty).
    pub fn private_instance_id(&self) -> &str {
        self.part(1)
    }

    /// The app GUID (may be empty).
    pub fn app_id(&self) -> &str {
        self.part(2)
    }

    /// The instance index (may be empty).
    pub fn instance_index(&self) -> &str {
        self.part(3)
    }

    /// The `X-CF-InstanceID` value: the private id, or `host:port`.
    pub fn instance_id(&self) -> &str {
        match self.private_instance_id() {
            "" => self.identity(),
            private => private,
        }
    }

    /// The header values naming this instance (see the module docs).
    pub fn headers(&self) -> InstanceHeaders {
        let private_instance_id = self.header_value(1);
        InstanceHeaders {
            app_id: self.header_value(2),
            instance_index: self.header_value(3),
            instance_id: private_instance_id.or_else(|| self.header_value(0)),
        }
    }

    /// Where to dial, how to secure it and in which protocol.
    pub fn upstream(&self) -> &UpstreamKey {
        &self.upstream
    }

    /// Where to dial.
    pub fn target(&self) -> &DialTarget {
        &self.upstream.target
    }

    /// Whether the endpoint speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.upstream.tls_name.is_some()
    }

    /// Backend protocol.
    pub fn protocol(&self) -> BackendProtocol {
        if self.upstream.http2 { BackendProtocol::Http2 } else { BackendProtocol::Http1 }
    }

    /// The endpoint's stale threshold.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(u64::from(self.ttl_ms))
    }

    /// Less frequently used attributes (empty ones when the registration carried none).
    pub fn details(&self) -> &EndpointDetails {
        self.details.as_deref().unwrap_or(&NO_DETAILS)
    }

    /// Records a registration seen at `now_ms`.
    pub fn refresh(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Whether the endpoint has gone unrefreshed past its TTL. TLS endpoints never go stale: they are removed by
    /// unregister or by failing the backend identity check.
    pub fn is_stale(&self, now_ms: u64) -> bool {
        if self.is_tls() {
            return false;
        }
        now_ms.saturating_sub(self.last_seen_ms.load(Ordering::Relaxed)) > u64::from(self.ttl_ms)
    }

    /// Requests in flight to this endpoint.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether the endpoint failed within `window_ms` before `now_ms`.
    pub fn failed_recently(&self, now_ms: u64, window_ms: u64) -> bool {
        let failed_at = self.failed_at_ms.load(Ordering::Relaxed);
        failed_at != 0 && now_ms.saturating_sub(failed_at) < window_ms
    }

    /// Marks a failure (dial error, handshake failure, timeout) at `now_ms`.
    pub fn mark_failed(&self, now_ms: u64) {
        self.failed_at_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Clears the failure mark after a success.
    pub fn mark_healthy(&self) {
        if self.failed_at_ms.load(Ordering::Relaxed) != 0 {
            self.failed_at_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Copies the shared runtime state (failure mark, last seen) from the endpoint this one replaces.
    pub fn inherit_state(&self, previous: &Self) {
        self.failed_at_ms.store(previous.failed_at_ms.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// Counts a request in flight to an endpoint for as long as it lives.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    /// Starts counting.
    pub fn start(endpoint: Arc<Endpoint>) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(endpoint)
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(json: &str) -> Registration {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn builds_headers_and_identity() {
        let r = registration(r#"{"host":"10.0.0.1","port":8080,"uris":["a"],"app":"guid","private_instance_index":"2"}"#);
        let e = Endpoint::from_registration(&r, Duration::from_secs(120), 1).unwrap();
        assert_eq!(e.identity(), "10.0.0.1:8080");
        assert_eq!(e.instance_id(), "10.0.0.1:8080");
        assert_eq!(e.app_id(), "guid");
        assert_eq!(e.instance_index(), "2");
        assert_eq!(e.target(), &DialTarget::Addr("10.0.0.1".parse().unwrap(), 8080));
        let headers = e.headers();
        assert_eq!(headers.instance_id.as_ref().unwrap(), "10.0.0.1:8080");
        assert_eq!(headers.app_id.as_ref().unwrap(), "guid");
        assert_eq!(headers.instance_index.as_ref().unwrap(), "2");
        assert_eq!(headers.instance_id.unwrap().as_bytes().as_ptr(), e.identity().as_ptr(), "shared, not copied");
        assert!(e.details().tags.is_empty() && e.details.is_none(), "no details, no allocation");
        let private = registration(r#"{"host":"10.0.0.1","port":8080,"uris":["a"],"private_instance_id":"inst-1"}"#);
        let e = Endpoint::from_registration(&private, Duration::from_secs(120), 1).unwrap();
        assert_eq!((e.identity(), e.private_instance_id(), e.instance_id(), e.app_id()), ("10.0.0.1:8080", "inst-1", "inst-1", ""));
        assert!(e.headers().app_id.is_none());
    }

    #[test]
    fn refuses_what_cannot_be_a_header_or_held() {
        let r = registration(r#"{"host":"h","port":1,"uris":["a"],"app":"caf\u00e9\u007f"}"#);
        assert_eq!(Endpoint::from_registration(&r, Duration::from_secs(1), 1).unwrap_err(), EndpointError::NotAHeaderValue("app"));
        let r = Registration { private_instance_index: "1".repeat(70_000), ..registration(r#"{"host":"h","port":1,"uris":["a"]}"#) };
        assert_eq!(Endpoint::from_registration(&r, Duration::from_secs(1), 1).unwrap_err(), EndpointError::TooLong("private_instance_index"));
    }

    #[test]
    fn registration_ttl_only_shortens() {
        let short = registration(r#"{"host":"h","port":1,"uris":["a"],"stale_threshold_in_seconds":30}"#);
        let long = registration(r#"{"host":"h","port":1,"uris":["a"],"stale_threshold_in_seconds":300}"#);
        let max = Duration::from_secs(120);
        assert_eq!(Endpoint::from_registration(&short, max, 1).unwrap().ttl(), Duration::from_secs(30));
        assert_eq!(Endpoint::from_registration(&long, max, 1).unwrap().ttl(), max);
    }

    #[test]
    fn staleness_and_tls_exemption() {
        let plain = Endpoint::from_registration(&registration(r#"{"host":"h","port":1,"uris":["a"]}"#), Duration::from_secs(10), 1000).unwrap();
        assert!(!plain.is_stale(11_000));
        assert!(plain.is_stale(11_001));
        plain.refresh(11_001);
        assert!(!plain.is_stale(21_000));
        let tls = Endpoint::from_registration(&registration(r#"{"host":"h","tls_port":2,"uris":["a"]}"#), Duration::from_secs(10), 1000).unwrap();
        assert!(!tls.is_stale(1_000_000));
    }

    #[test]
    fn upstream_keys_carry_tls_identity_and_protocol() {
        let e = |json| Endpoint::from_registration(&registration(json), Duration::from_secs(10), 1).unwrap();
        let plain = e(r#"{"host":"10.0.0.1","port":80,"uris":["a"]}"#);
        assert_eq!(plain.upstream(), &UpstreamKey { target: DialTarget::Addr("10.0.0.1".parse().unwrap(), 80), tls_name: None, http2: false });
        let tls = e(r#"{"host":"10.0.0.1","port":80,"tls_port":443,"uris":["a"],"server_cert_domain_san":"app.internal","protocol":"http2"}"#);
        assert_eq!(tls.upstream().tls_name.as_deref().map(String::as_str), Some("app.internal"));
        assert_eq!(tls.target(), &DialTarget::Addr("10.0.0.1".parse().unwrap(), 443));
        assert!(tls.upstream().http2 && !tls.upstream().as_http1().http2);
        let other_san = e(r#"{"host":"10.0.0.1","tls_port":443,"uris":["a"],"server_cert_domain_san":"other.internal"}"#);
        assert_ne!(tls.upstream().as_http1(), *other_san.upstream(), "a different SAN is a different pool");
        let no_san = e(r#"{"host":"backend.internal","tls_port":443,"uris":["a"]}"#);
        assert_eq!(no_san.upstream().tls_name.as_deref().map(String::as_str), Some("backend.internal"));
        assert_eq!(no_san.target(), &DialTarget::Name("backend.internal".into(), 443));
    }

    #[test]
    fn describes_ignores_uris_and_timestamps_only() {
        let max = Duration::from_secs(120);
        let base = registration(
            r#"{"host":"h","port":1,"tls_port":2,"uris":["a"],"app":"x","private_instance_id":"i","private_instance_index":"3","server_cert_domain_san":"san","protocol":"http2","stale_threshold_in_seconds":30,"tags":{"component":"c"}}"#,
        );
        let e = Endpoint::from_registration(&base, max, 1).unwrap();
        assert!(e.describes(&Registration { uris: vec!["b".into(), "c".into()], endpoint_updated_at_ns: 5, ..base.clone() }, max));
        let changes: [fn(&mut Registration); 14] = [
            |r| r.host = "g".into(),
            |r| r.tls_port = 3,
            |r| r.tls_port = 0,
            |r| r.app = "y".into(),
            |r| r.private_instance_id = "j".into(),
            |r| r.private_instance_index = "4".into(),
            |r| r.server_cert_domain_san = "other".into(),
            |r| r.protocol = "http1".into(),
            |r| r.stale_threshold_in_seconds = 31,
            |r| r.tags.clear(),
            |r| drop(r.tags.insert("component".into(), "d".into())),
            |r| drop(r.tags.insert("zone".into(), "c".into())),
            |r| r.availability_zone = "z1".into(),
            |r| r.route_service_url = "https://rs".into(),
        ];
        for (index, change) in changes.iter().enumerate() {
            let mut changed = base.clone();
            change(&mut changed);
            assert!(!e.describes(&changed, max), "change {index} is a change");
        }
        // The ttl compared is the one the router grants: both ask for more than the router allows.
        let long = |s: i64| Registration { stale_threshold_in_seconds: s, ..base.clone() };
        let e = Endpoint::from_registration(&long(500), max, 1).unwrap();
        assert!(e.describes(&long(600), max));
    }

    #[test]
    fn in_flight_counts_while_alive() {
        let e = Arc::new(Endpoint::from_registration(&registration(r#"{"host":"h","port":1,"uris":["a"]}"#), Duration::from_secs(1), 1).unwrap());
        let first = InFlight::start(Arc::clone(&e));
        let second = InFlight::start(Arc::clone(&e));
        assert_eq!(e.in_flight(), 2);
        drop(first);
        drop(second);
        assert_eq!(e.in_flight(), 0);
    }

    #[test]
    fn an_endpoint_stays_small() {
        // A million routes hold a million endpoints: growing one by 8 bytes costs 8 MB.
        assert!(std::mem::size_of::<Endpoint>() <= 112, "Endpoint is {} bytes", std::mem::size_of::<Endpoint>());
        assert!(std::mem::size_of::<crate::pool::Pool>() <= 80, "Pool is {} bytes", std::mem::size_of::<crate::pool::Pool>());
    }
}
