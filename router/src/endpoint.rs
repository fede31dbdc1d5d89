//! An app instance the router can send requests to.
//!
//! Everything the proxy adds to a forwarded request on behalf of an endpoint (`X-CF-ApplicationID`,
//! `X-CF-InstanceIndex`, `X-CF-InstanceID`) is built once, when the registration arrives, so the hot path only
//! clones ready-made header values. The few mutable fields are atomics shared by all worker threads: requests in
//! flight (least-connection, `max_conns`), the time of the last failure (retries skip recent failures), and the
//! time of the last registration (pruning, written only by the registry).

use http::HeaderValue;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use switchyard_config::messages::{BackendProtocol, Registration};

/// Where to dial.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DialTarget {
    /// A literal IP address.
    Addr(SocketAddr),
    /// A DNS name, resolved when dialling.
    Name(Box<str>, u16),
}

impl std::fmt::Display for DialTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Addr(addr) => write!(f, "{addr}"),
            Self::Name(name, port) => write!(f, "{name}:{port}"),
        }
    }
}

impl DialTarget {
    /// The target for `host` (an IP literal or a DNS name) and `port`.
    pub fn new(host: &str, port: u16) -> Self {
        match host.parse::<IpAddr>() {
            Ok(ip) => Self::Addr(SocketAddr::new(ip, port)),
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
    pub tls_name: Option<Arc<str>>,
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
    pub server_cert_domain_san: Box<str>,
    /// Route service in front of the app, if any.
    pub route_service_url: Box<str>,
    /// Isolation segment.
    pub isolation_segment: Box<str>,
    /// Availability zone.
    pub availability_zone: Box<str>,
    /// Tags from the registration.
    pub tags: BTreeMap<String, String>,
}

/// One registered backend in one pool.
#[derive(Debug)]
pub struct Endpoint {
    identity: Box<str>,
    upstream: UpstreamKey,
    protocol: BackendProtocol,
    private_instance_id: Box<str>,
    app_id: Option<HeaderValue>,
    instance_id: HeaderValue,
    instance_index: Option<HeaderValue>,
    ttl: Duration,
    fingerprint: u64,
    details: Box<EndpointDetails>,
    last_seen_ms: AtomicU64,
    in_flight: AtomicU32,
    failed_at_ms: AtomicU64,
}

/// The identity of an endpoint within a pool: `host:port`, or `host:tls_port` for TLS.
pub fn identity_of(registration: &Registration) -> String {
    format!("{}:{}", registration.host, registration.effective_port())
}

/// A digest of every registration field that shapes the endpoint, so a re-registration that changes nothing is
/// recognised without comparing field by field. Uris and timestamps are left out: they do not change the endpoint.
pub fn fingerprint_of(registration: &Registration) -> u64 {
    let mut hasher = foldhash::fast::FixedState::with_seed(0x454e_4450_4f49_4e54).build_hasher();
    let r = registration;
    (&r.host, r.port, r.tls_port, &r.app, &r.private_instance_id, &r.private_instance_index).hash(&mut hasher);
    (&r.server_cert_domain_san, &r.route_service_url, &r.isolation_segment, &r.availability_zone).hash(&mut hasher);
    (&r.protocol, r.stale_threshold_in_seconds, &r.tags).hash(&mut hasher);
    hasher.finish()
}

/// Why a registration could not become an endpoint (content that passed message checks but cannot be a header).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{0}` cannot be sent as a header value")]
pub struct EndpointError(pub &'static str);

fn header_value(field: &'static str, text: &str) -> Result<Option<HeaderValue>, EndpointError> {
    if text.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(text).map(Some).map_err(|_| EndpointError(field))
}

impl Endpoint {
    /// Builds an endpoint from a checked registration. `max_ttl` is the router's global stale threshold; the
    /// registration may only shorten it.
    pub fn from_registration(registration: &Registration, max_ttl: Duration, now_ms: u64) -> Result<Self, EndpointError> {
        let identity = identity_of(registration);
        let protocol = registration.backend_protocol().unwrap_or(BackendProtocol::Http1);
        // A TLS backend proves the registration's SAN; with none given, its certificate must name the address.
        let tls_name = registration.is_tls().then(|| {
            let san = &registration.server_cert_domain_san;
            Arc::from(if san.is_empty() { registration.host.as_str() } else { san.as_str() })
        });
        let upstream = UpstreamKey {
            target: DialTarget::new(&registration.host, registration.effective_port()),
            tls_name,
            http2: protocol == BackendProtocol::Http2,
        };
        let requested = u64::try_from(registration.stale_threshold_in_seconds).unwrap_or(0);
        let ttl = if requested > 0 { max_ttl.min(Duration::from_secs(requested)) } else { max_ttl };
        let instance_text = if registration.private_instance_id.is_empty() { &identity } else { &registration.private_instance_id };
        let instance_id = HeaderValue::from_str(instance_text).map_err(|_| EndpointError("private_instance_id"))?;
        Ok(Self {
            upstream,
            protocol,
            private_instance_id: registration.private_instance_id.clone().into_boxed_str(),
            app_id: header_value("app", &registration.app)?,
            instance_id,
            instance_index: header_value("private_instance_index", &registration.private_instance_index)?,
            ttl,
            fingerprint: fingerprint_of(registration),
            details: Box::new(EndpointDetails {
                server_cert_domain_san: registration.server_cert_domain_san.clone().into_boxed_str(),
                route_service_url: registration.route_service_url.clone().into_boxed_str(),
                isolation_segment: registration.isolation_segment.clone().into_boxed_str(),
                availability_zone: registration.availability_zone.clone().into_boxed_str(),
                tags: registration.tags.clone(),
            }),
            identity: identity.into_boxed_str(),
            last_seen_ms: AtomicU64::new(now_ms),
            in_flight: AtomicU32::new(0),
            failed_at_ms: AtomicU64::new(0),
        })
    }

    /// `host:port` as registered.
    pub fn identity(&self) -> &str {
        &self.identity
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
        self.protocol
    }

    /// The registration's private instance id (may be empty).
    pub fn private_instance_id(&self) -> &str {
        &self.private_instance_id
    }

    /// `X-CF-ApplicationID` value.
    pub fn app_id(&self) -> Option<&HeaderValue> {
        self.app_id.as_ref()
    }

    /// `X-CF-InstanceID` value: the private id, or `host:port`.
    pub fn instance_id(&self) -> &HeaderValue {
        &self.instance_id
    }

    /// `X-CF-InstanceIndex` value.
    pub fn instance_index(&self) -> Option<&HeaderValue> {
        self.instance_index.as_ref()
    }

    /// The endpoint's stale threshold.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Digest of the registration that built it.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Less frequently used attributes.
    pub fn details(&self) -> &EndpointDetails {
        &self.details
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
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        now_ms.saturating_sub(self.last_seen_ms.load(Ordering::Relaxed)) > ttl_ms
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
        assert_eq!(e.app_id().unwrap(), "guid");
        assert_eq!(e.instance_index().unwrap(), "2");
        assert_eq!(e.target(), &DialTarget::Addr("10.0.0.1:8080".parse().unwrap()));
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
        assert_eq!(plain.upstream(), &UpstreamKey { target: DialTarget::Addr("10.0.0.1:80".parse().unwrap()), tls_name: None, http2: false });
        let tls = e(r#"{"host":"10.0.0.1","port":80,"tls_port":443,"uris":["a"],"server_cert_domain_san":"app.internal","protocol":"http2"}"#);
        assert_eq!(tls.upstream().tls_name.as_deref(), Some("app.internal"));
        assert_eq!(tls.target(), &DialTarget::Addr("10.0.0.1:443".parse().unwrap()));
        assert!(tls.upstream().http2 && !tls.upstream().as_http1().http2);
        let other_san = e(r#"{"host":"10.0.0.1","tls_port":443,"uris":["a"],"server_cert_domain_san":"other.internal"}"#);
        assert_ne!(tls.upstream().as_http1(), *other_san.upstream(), "a different SAN is a different pool");
        let no_san = e(r#"{"host":"backend.internal","tls_port":443,"uris":["a"]}"#);
        assert_eq!(no_san.upstream().tls_name.as_deref(), Some("backend.internal"));
        assert_eq!(no_san.target(), &DialTarget::Name("backend.internal".into(), 443));
    }

    #[test]
    fn fingerprint_ignores_uris_only() {
        let a = registration(r#"{"host":"h","port":1,"uris":["a"],"app":"x"}"#);
        let b = registration(r#"{"host":"h","port":1,"uris":["b","c"],"app":"x"}"#);
        let c = registration(r#"{"host":"h","port":1,"uris":["a"],"app":"y"}"#);
        assert_eq!(fingerprint_of(&a), fingerprint_of(&b));
        assert_ne!(fingerprint_of(&a), fingerprint_of(&c));
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
}
