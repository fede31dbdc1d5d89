//! The router's config file, with gorouter's key names and defaults, so an existing gorouter config starts as it is.
//!
//! Keys this router does not implement are not listed here; the loader reports them as ignored instead of failing.
//! Keys that are Switchyard's own (`worker_threads`, `nats.max_message_bytes`, ...) are marked as such.

use crate::duration;
use crate::error::{ConfigError, Validate};
use crate::messages::LbAlgorithm;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The router's whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RouterConfig {
    /// HTTP listener port.
    pub port: u16,
    /// Status listener: `/health`, `/routes`, `/metrics`.
    pub status: StatusConfig,
    /// NATS connection.
    pub nats: NatsConfig,
    /// This router's index, the first part of its `router.start` id.
    pub index: u32,
    /// Endpoints not refreshed within this long are pruned.
    #[serde(deserialize_with = "duration::deserialize", serialize_with = "duration::serialize")]
    pub droplet_stale_threshold: Duration,
    /// How often pruning runs.
    #[serde(deserialize_with = "duration::deserialize", serialize_with = "duration::serialize")]
    pub prune_stale_droplets_interval: Duration,
    /// Prune nothing while NATS is down, and refresh every endpoint when it comes back.
    pub suspend_pruning_if_nats_unavailable: bool,
    /// How long to learn routes before listening; also sent to emitters as their minimum register interval.
    #[serde(deserialize_with = "duration::deserialize", serialize_with = "duration::serialize")]
    pub start_response_delay_interval: Duration,
    /// Default algorithm for pools whose registrations name none.
    pub balancing_algorithm: LbAlgorithm,
    /// Backend connection limits and client certificate.
    pub backends: BackendsConfig,
    /// Longest wait for a backend's response headers.
    #[serde(deserialize_with = "duration::deserialize", serialize_with = "duration::serialize")]
    pub endpoint_timeout: Duration,
    /// Longest wait for a TCP connection to a backend.
    #[serde(deserialize_with = "duration::deserialize", serialize_with = "duration::serialize")]
    pub endpoint_dial_timeout: Duration,
    /// After SIGUSR1, how long `/health` answers 503 before the listeners close.
    #[serde(deserialize_with = "duration::deserialize", serialize_with = "duration::serialize")]
    pub drain_wait: Duration,
    /// After the listeners close, how long in-flight requests may take; defaults to `endpoint_timeout`.
    #[serde(deserialize_with = "duration::deserialize_option", serialize_with = "duration::serialize_option")]
    pub drain_timeout: Option<Duration>,
    /// Access log destination.
    pub access_log: AccessLogConfig,
    /// Largest request head (request line plus headers) accepted; larger gets 431.
    #[serde(alias = "max_request_header_bytes")]
    pub max_header_bytes: usize,
    /// Backend cookies that make a session sticky.
    pub sticky_session_cookie_names: Vec<String>,
    /// Mark the `__VCAP_ID__` cookie `Secure` always.
    pub secure_cookies: bool,
    /// Answer 503 `no_endpoints` for a known route whose pool is empty, instead of 404.
    pub empty_pool_response_code_503: bool,
    /// With `empty_pool_response_code_503`, how long an emptied pool is kept before its route is deleted.
    #[serde(deserialize_with = "duration::deserialize", serialize_with = "duration::serialize")]
    pub empty_pool_timeout: Duration,
    /// Always send `X-Forwarded-Proto: https`.
    pub force_forwarded_proto_https: bool,
    /// Replace a client-supplied `X-Forwarded-Proto` with the real scheme.
    pub sanitize_forwarded_proto: bool,
    /// Close a connection whose request head has not fully arrived in this long.
    #[serde(deserialize_with = "duration::deserialize", serialize_with = "duration::serialize")]
    pub read_header_timeout: Duration,
    /// Close a keep-alive client connection idle this long.
    #[serde(deserialize_with = "duration::deserialize", serialize_with = "duration::serialize")]
    pub frontend_idle_timeout: Duration,
    /// Trace header generation.
    pub tracing: TracingConfig,
    /// Switchyard's own: proxy worker threads, one runtime each; 0 means one per CPU.
    pub worker_threads: usize,
    /// Serve HTTPS on `ssl_port` as well.
    pub enable_ssl: bool,
    /// HTTPS listener port.
    pub ssl_port: u16,
    /// Serve HTTPS only: no plain-HTTP listener on `port`.
    pub disable_http: bool,
    /// Server certificates (inline PEM), chosen by SNI: exact name, then wildcard, then the first one.
    pub tls_pem: Vec<TlsPem>,
    /// Oldest TLS version offered to clients.
    pub min_tls_version: TlsVersion,
    /// Newest TLS version offered to clients.
    pub max_tls_version: TlsVersion,
    /// OpenSSL-style colon-separated cipher suite list for client connections; empty means the safe defaults.
    pub cipher_suites: String,
    /// Whether clients are asked for a certificate: `none`, `request` or `require`.
    pub client_cert_validation: ClientCertValidation,
    /// PEM CA certificates that sign client certificates.
    pub client_ca_certs: String,
    /// Trust only `client_ca_certs` for client certificates (otherwise `ca_certs` are trusted too).
    pub only_trust_client_ca_certs: bool,
    /// What happens to `X-Forwarded-Client-Cert`.
    pub forwarded_client_cert: ForwardedClientCert,
    /// PEM CA certificates trusted (with the system roots) for TLS backends and route services. A list of PEM
    /// strings; a single string is accepted too.
    #[serde(deserialize_with = "pem_list")]
    pub ca_certs: Vec<String>,
    /// Offer HTTP/2 to clients by ALPN.
    pub enable_http2: bool,
    /// Secret the route-service signature key is derived from; route services are unsupported while empty.
    pub route_services_secret: String,
    /// A previous secret, still accepted when checking signatures (for rotation), never used to sign.
    pub route_services_secret_decrypt_only: String,
    /// How long a route-service signature stays valid.
    #[serde(deserialize_with = "duration::deserialize", serialize_with = "duration::serialize")]
    pub route_services_timeout: Duration,
    /// Tell route services to call back over https (the scheme of `X-CF-Forwarded-Url`).
    pub route_services_recommend_https: bool,
    /// Route-service connection settings.
    pub route_services: RouteServicesConfig,
}

/// One server certificate: `tls_pem[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct TlsPem {
    /// PEM certificate chain, leaf first.
    pub cert_chain: String,
    /// PEM private key of the leaf.
    pub private_key: String,
}

/// `route_services.*`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct RouteServicesConfig {
    /// Most connection attempts to a route service for one request.
    pub max_attempts: u32,
}

impl Default for RouteServicesConfig {
    fn default() -> Self {
        Self { max_attempts: 3 }
    }
}

/// A TLS protocol version, in gorouter's spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum TlsVersion {
    /// `TLSv1.2`.
    Tls12,
    /// `TLSv1.3`.
    Tls13,
}

impl TryFrom<String> for TlsVersion {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "TLSv1.2" => Ok(Self::Tls12),
            "TLSv1.3" => Ok(Self::Tls13),
            "TLSv1.0" | "TLSv1.1" | "TLSv1" => Err(format!("`{text}` is not offered (TLS 1.0 and 1.1 are obsolete); use `TLSv1.2` or `TLSv1.3`")),
            _ => Err(format!("`{text}` is not a TLS version; use `TLSv1.2` or `TLSv1.3`")),
        }
    }
}

impl From<TlsVersion> for String {
    fn from(version: TlsVersion) -> Self {
        match version {
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
        }
        .to_owned()
    }
}

/// `client_cert_validation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCertValidation {
    /// Never ask for a client certificate.
    None,
    /// Ask; a client may send none, but one it sends must verify.
    Request,
    /// A verified client certificate is needed to connect.
    Require,
}

/// `forwarded_client_cert`: how `X-Forwarded-Client-Cert` reaches the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardedClientCert {
    /// Pass on whatever the client sent.
    AlwaysForward,
    /// Pass on the client's header only when the client presented a certificate over TLS; remove it otherwise.
    Forward,
    /// Remove the client's header and, when the client presented a certificate, set it to that certificate.
    SanitizeSet,
}

/// A cipher suite the router can offer, named the OpenSSL way (the IANA/Go way is accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CipherSuite {
    /// `TLS_AES_128_GCM_SHA256` (TLS 1.3).
    Tls13Aes128GcmSha256,
    /// `TLS_AES_256_GCM_SHA384` (TLS 1.3).
    Tls13Aes256GcmSha384,
    /// `TLS_CHACHA20_POLY1305_SHA256` (TLS 1.3).
    Tls13Chacha20Poly1305Sha256,
    /// `ECDHE-ECDSA-AES128-GCM-SHA256`.
    EcdheEcdsaAes128GcmSha256,
    /// `ECDHE-ECDSA-AES256-GCM-SHA384`.
    EcdheEcdsaAes256GcmSha384,
    /// `ECDHE-ECDSA-CHACHA20-POLY1305`.
    EcdheEcdsaChacha20Poly1305,
    /// `ECDHE-RSA-AES128-GCM-SHA256`.
    EcdheRsaAes128GcmSha256,
    /// `ECDHE-RSA-AES256-GCM-SHA384`.
    EcdheRsaAes256GcmSha384,
    /// `ECDHE-RSA-CHACHA20-POLY1305`.
    EcdheRsaChacha20Poly1305,
}

/// Every suite with its OpenSSL name and the other spellings configs use for it.
const CIPHER_NAMES: [(CipherSuite, &str, &[&str]); 9] = [
    (CipherSuite::Tls13Aes128GcmSha256, "TLS_AES_128_GCM_SHA256", &[]),
    (CipherSuite::Tls13Aes256GcmSha384, "TLS_AES_256_GCM_SHA384", &[]),
    (CipherSuite::Tls13Chacha20Poly1305Sha256, "TLS_CHACHA20_POLY1305_SHA256", &[]),
    (CipherSuite::EcdheEcdsaAes128GcmSha256, "ECDHE-ECDSA-AES128-GCM-SHA256", &["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]),
    (CipherSuite::EcdheEcdsaAes256GcmSha384, "ECDHE-ECDSA-AES256-GCM-SHA384", &["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"]),
    (
        CipherSuite::EcdheEcdsaChacha20Poly1305,
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        &["TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"],
    ),
    (CipherSuite::EcdheRsaAes128GcmSha256, "ECDHE-RSA-AES128-GCM-SHA256", &["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]),
    (CipherSuite::EcdheRsaAes256GcmSha384, "ECDHE-RSA-AES256-GCM-SHA384", &["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"]),
    (
        CipherSuite::EcdheRsaChacha20Poly1305,
        "ECDHE-RSA-CHACHA20-POLY1305",
        &["TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"],
    ),
];

impl CipherSuite {
    /// Reads one name of the list, either spelling.
    pub fn from_name(name: &str) -> Option<Self> {
        CIPHER_NAMES.iter().find(|(_, openssl, others)| *openssl == name || others.contains(&name)).map(|(suite, _, _)| *suite)
    }

    /// The OpenSSL name.
    pub fn name(self) -> &'static str {
        CIPHER_NAMES.iter().find(|(suite, _, _)| *suite == self).map_or("", |(_, name, _)| name)
    }

    /// Whether the suite belongs to TLS 1.3 (the others are TLS 1.2).
    pub fn is_tls13(self) -> bool {
        matches!(self, Self::Tls13Aes128GcmSha256 | Self::Tls13Aes256GcmSha384 | Self::Tls13Chacha20Poly1305Sha256)
    }
}

/// Reads `ca_certs` as a list of PEM strings, or as one string (the older gorouter form).
fn pem_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
        Null(()),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(text) if text.trim().is_empty() => Vec::new(),
        OneOrMany::One(text) => vec![text],
        OneOrMany::Many(list) => list,
        OneOrMany::Null(()) => Vec::new(),
    })
}

/// `status.*`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct StatusConfig {
    /// Listen address.
    pub host: String,
    /// Listen port.
    pub port: u16,
    /// Basic-auth user for `/routes`.
    pub user: String,
    /// Basic-auth password for `/routes`.
    pub pass: String,
    /// A second, loopback-only listener for `/routes`.
    pub routes: StatusRoutesConfig,
}

/// `status.routes.*`
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct StatusRoutesConfig {
    /// Loopback port serving `/routes` (with the same credentials); none when absent.
    pub port: Option<u16>,
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self { host: "0.0.0.0".to_owned(), port: 8082, user: String::new(), pass: String::new(), routes: StatusRoutesConfig::default() }
    }
}

/// `nats.*`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct NatsConfig {
    /// Servers, tried in turn; the client reconnects forever.
    pub hosts: Vec<NatsHost>,
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
    /// Switchyard's own: largest registration payload accepted, in bytes.
    pub max_message_bytes: usize,
    /// Switchyard's own: most uris accepted in one registration.
    pub max_uris_per_message: usize,
    /// Switchyard's own: whether registrations may name loopback backends.
    pub allow_loopback_backends: bool,
}

crate::nats_auth::impl_auth_keys!(NatsConfig);

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            hosts: vec![NatsHost { hostname: "localhost".to_owned(), port: 4222 }],
            user: String::new(),
            pass: String::new(),
            tls_enabled: false,
            ca_certs: String::new(),
            cert_chain: String::new(),
            private_key: String::new(),
            max_message_bytes: 256 * 1024,
            max_uris_per_message: 1000,
            allow_loopback_backends: true,
        }
    }
}

/// One NATS server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct NatsHost {
    /// Host name or address.
    pub hostname: String,
    /// Port.
    pub port: u16,
}

/// `backends.*`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct BackendsConfig {
    /// Most requests in flight to one endpoint; 0 means no limit.
    pub max_conns: u32,
    /// Most endpoints tried for one request.
    pub max_attempts: u32,
    /// PEM client certificate chain sent to TLS backends.
    pub cert_chain: String,
    /// PEM private key for `cert_chain`.
    pub private_key: String,
}

impl Default for BackendsConfig {
    fn default() -> Self {
        Self { max_conns: 0, max_attempts: 3, cert_chain: String::new(), private_key: String::new() }
    }
}

/// `access_log.*`
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct AccessLogConfig {
    /// File the access log is appended to; no access log when empty.
    pub file: String,
}

/// `tracing.*`
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct TracingConfig {
    /// Add B3 headers (`X-B3-TraceId`, `X-B3-SpanId`) when the request has none.
    pub enable_zipkin: bool,
    /// Add a W3C `traceparent` when the request has none, and a `tracestate` entry for `w3c_tenant_id`.
    pub enable_w3c: bool,
    /// Tenant id used in the `tracestate` entry.
    pub w3c_tenant_id: String,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            port: 8081,
            status: StatusConfig::default(),
            nats: NatsConfig::default(),
            index: 0,
            droplet_stale_threshold: Duration::from_secs(120),
            prune_stale_droplets_interval: Duration::from_secs(30),
            suspend_pruning_if_nats_unavailable: false,
            start_response_delay_interval: Duration::from_secs(5),
            balancing_algorithm: LbAlgorithm::RoundRobin,
            backends: BackendsConfig::default(),
            endpoint_timeout: Duration::from_secs(60),
            endpoint_dial_timeout: Duration::from_secs(5),
            drain_wait: Duration::ZERO,
            drain_timeout: None,
            access_log: AccessLogConfig::default(),
            max_header_bytes: 1024 * 1024,
            sticky_session_cookie_names: vec!["JSESSIONID".to_owned()],
            secure_cookies: false,
            empty_pool_response_code_503: false,
            empty_pool_timeout: Duration::ZERO,
            force_forwarded_proto_https: false,
            sanitize_forwarded_proto: false,
            read_header_timeout: Duration::from_secs(30),
            frontend_idle_timeout: Duration::from_secs(900),
            tracing: TracingConfig::default(),
            worker_threads: 0,
            enable_ssl: false,
            ssl_port: 443,
            disable_http: false,
            tls_pem: Vec::new(),
            min_tls_version: TlsVersion::Tls12,
            max_tls_version: TlsVersion::Tls13,
            cipher_suites: String::new(),
            client_cert_validation: ClientCertValidation::Request,
            client_ca_certs: String::new(),
            only_trust_client_ca_certs: false,
            forwarded_client_cert: ForwardedClientCert::AlwaysForward,
            ca_certs: Vec::new(),
            enable_http2: true,
            route_services_secret: String::new(),
            route_services_secret_decrypt_only: String::new(),
            route_services_timeout: Duration::from_secs(60),
            route_services_recommend_https: true,
            route_services: RouteServicesConfig::default(),
        }
    }
}

impl RouterConfig {
    /// The drain timeout in force: `drain_timeout`, or `endpoint_timeout` when unset.
    pub fn effective_drain_timeout(&self) -> Duration {
        self.drain_timeout.unwrap_or(self.endpoint_timeout)
    }

    /// The TTL in force: never shorter than the start delay, as emitters are told to register no less often.
    pub fn effective_stale_threshold(&self) -> Duration {
        self.droplet_stale_threshold.max(self.start_response_delay_interval)
    }

    /// The suites `cipher_suites` names, in order; empty when it is empty (the defaults apply).
    pub fn cipher_suite_list(&self) -> Result<Vec<CipherSuite>, ConfigError> {
        let mut suites = Vec::new();
        for name in self.cipher_suites.split(':').map(str::trim).filter(|n| !n.is_empty()) {
            let Some(suite) = CipherSuite::from_name(name) else {
                let offered: Vec<&str> = CIPHER_NAMES.iter().map(|(_, n, _)| *n).collect();
                return Err(ConfigError::new(
                    "cipher_suites",
                    format!("`{name}` is not offered by this router (only AEAD suites with forward secrecy are); choose from {}", offered.join(":")),
                ));
            };
            if !suites.contains(&suite) {
                suites.push(suite);
            }
        }
        Ok(suites)
    }

    /// The PEM texts trusted for client certificates: `client_ca_certs`, plus `ca_certs` unless
    /// `only_trust_client_ca_certs`.
    pub fn client_ca_pems(&self) -> Vec<&str> {
        let mut pems = vec![self.client_ca_certs.as_str()];
        if !self.only_trust_client_ca_certs {
            pems.extend(self.ca_certs.iter().map(String::as_str));
        }
        pems.retain(|pem| !pem.trim().is_empty());
        pems
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, problem: &str| Err(ConfigError::new(key, problem));
        if self.disable_http && !self.enable_ssl {
            return fail("disable_http", "needs `enable_ssl: true`, or the router would serve nothing");
        }
        if self.enable_ssl {
            if self.ssl_port == 0 {
                return fail("ssl_port", "must be a port number from 1 to 65535");
            }
            if self.ssl_port == self.port && !self.disable_http {
                return fail("ssl_port", "must differ from `port`");
            }
            if self.ssl_port == self.status.port {
                return fail("ssl_port", "must differ from `status.port`");
            }
            if self.tls_pem.is_empty() {
                return fail("tls_pem", "must list at least one certificate (`cert_chain` and `private_key`) when `enable_ssl` is true");
            }
        }
        for (i, pem) in self.tls_pem.iter().enumerate() {
            if pem.cert_chain.trim().is_empty() {
                return Err(ConfigError::new(format!("tls_pem[{i}].cert_chain"), "must hold the PEM certificate chain"));
            }
            if pem.private_key.trim().is_empty() {
                return Err(ConfigError::new(format!("tls_pem[{i}].private_key"), "must hold the PEM private key"));
            }
        }
        if self.min_tls_version > self.max_tls_version {
            return fail("max_tls_version", "must not be older than `min_tls_version`");
        }
        let suites = self.cipher_suite_list()?;
        if !suites.is_empty() && self.min_tls_version == TlsVersion::Tls12 && self.max_tls_version == TlsVersion::Tls12 && suites.iter().all(|s| s.is_tls13()) {
            return fail("cipher_suites", "names only TLS 1.3 suites, but `max_tls_version` is TLSv1.2");
        }
        if self.client_cert_validation == ClientCertValidation::Require && self.client_ca_pems().is_empty() {
            return fail("client_ca_certs", "must hold the PEM CA certificates of client certificates when `client_cert_validation` is `require`");
        }
        if self.route_services_timeout.is_zero() {
            return fail("route_services_timeout", "must be longer than zero");
        }
        if self.route_services.max_attempts == 0 {
            return fail("route_services.max_attempts", "must be at least 1");
        }
        if !self.route_services_secret_decrypt_only.is_empty() && self.route_services_secret.is_empty() {
            return fail("route_services_secret", "must be set when `route_services_secret_decrypt_only` is");
        }
        Ok(())
    }
}

fn is_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Validate for RouterConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, problem: &str| Err(ConfigError::new(key, problem));
        if self.port == 0 {
            return fail("port", "must be a port number from 1 to 65535");
        }
        if self.status.port == 0 {
            return fail("status.port", "must be a port number from 1 to 65535");
        }
        if self.status.port == self.port {
            return fail("status.port", "must differ from `port`");
        }
        if self.status.routes.port == Some(0) {
            return fail("status.routes.port", "must be a port number from 1 to 65535");
        }
        if self.status.user.is_empty() != self.status.pass.is_empty() {
            return fail("status.pass", "`status.user` and `status.pass` must be set together");
        }
        if self.nats.hosts.is_empty() {
            return fail("nats.hosts", "must list at least one server");
        }
        for (i, host) in self.nats.hosts.iter().enumerate() {
            if host.hostname.trim().is_empty() {
                return Err(ConfigError::new(format!("nats.hosts[{i}].hostname"), "must not be empty"));
            }
            if host.port == 0 {
                return Err(ConfigError::new(format!("nats.hosts[{i}].port"), "must be a port number from 1 to 65535"));
            }
        }
        self.nats.auth_keys().validate()?;
        if self.nats.max_message_bytes < 1024 {
            return fail("nats.max_message_bytes", "must be at least 1024");
        }
        if self.nats.max_uris_per_message == 0 {
            return fail("nats.max_uris_per_message", "must be at least 1");
        }
        if self.droplet_stale_threshold.is_zero() {
            return fail("droplet_stale_threshold", "must be longer than zero");
        }
        if self.prune_stale_droplets_interval.is_zero() {
            return fail("prune_stale_droplets_interval", "must be longer than zero");
        }
        if self.balancing_algorithm == LbAlgorithm::Hash {
            return fail("balancing_algorithm", "must be `round-robin` or `least-connection`; `hash` needs a header and is set per route");
        }
        if self.backends.max_attempts == 0 {
            return fail("backends.max_attempts", "must be at least 1");
        }
        if self.backends.cert_chain.is_empty() != self.backends.private_key.is_empty() {
            return fail("backends.private_key", "`backends.cert_chain` and `backends.private_key` must be set together");
        }
        if self.endpoint_timeout.is_zero() {
            return fail("endpoint_timeout", "must be longer than zero");
        }
        if self.endpoint_dial_timeout.is_zero() {
            return fail("endpoint_dial_timeout", "must be longer than zero");
        }
        if self.max_header_bytes < 1024 {
            return fail("max_header_bytes", "must be at least 1024");
        }
        if self.max_header_bytes > 64 * 1024 * 1024 {
            return fail("max_header_bytes", "must be at most 64 MiB");
        }
        for (i, name) in self.sticky_session_cookie_names.iter().enumerate() {
            if !is_token(name) {
                return Err(ConfigError::new(format!("sticky_session_cookie_names[{i}]"), "must be a valid cookie name"));
            }
        }
        if self.read_header_timeout.is_zero() {
            return fail("read_header_timeout", "must be longer than zero");
        }
        if self.worker_threads > 1024 {
            return fail("worker_threads", "must be at most 1024 (0 means one per CPU)");
        }
        if self.tracing.w3c_tenant_id.chars().any(|c| c.is_control() || c == ',' || c == '=') {
            return fail("tracing.w3c_tenant_id", "must not contain control characters, `,` or `=`");
        }
        self.validate_tls()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::parse_yaml;

    #[test]
    fn defaults_match_gorouter() {
        let config: RouterConfig = parse_yaml("").unwrap().value;
        assert_eq!(config.port, 8081);
        assert_eq!(config.status.port, 8082);
        assert_eq!(config.droplet_stale_threshold, Duration::from_secs(120));
        assert_eq!(config.prune_stale_droplets_interval, Duration::from_secs(30));
        assert_eq!(config.backends.max_attempts, 3);
        assert_eq!(config.sticky_session_cookie_names, vec!["JSESSIONID"]);
        assert_eq!(config.effective_drain_timeout(), Duration::from_secs(60));
    }

    #[test]
    fn reads_a_gorouter_config_and_reports_unused_keys() {
        let yaml = r#"
status:
  host: 127.0.0.1
  port: 8082
  user: admin
  pass: secret
  routes:
    port: 8080
nats:
  hosts:
  - hostname: 10.0.0.4
    port: 4222
  user: nats
  pass: nats-pass
logging:
  level: info
  syslog: vcap.gorouter
index: 2
go_max_procs: 8
port: 80
droplet_stale_threshold: 120s
prune_stale_droplets_interval: 30s
suspend_pruning_if_nats_unavailable: true
start_response_delay_interval: 5s
balancing_algorithm: least-connection
backends:
  max_conns: 500
  max_attempts: 3
endpoint_timeout: 900s
endpoint_dial_timeout: 5s
drain_wait: 20s
drain_timeout: 900s
access_log:
  file: /var/vcap/sys/log/gorouter/access.log
  enable_streaming: false
max_request_header_bytes: 2048
sticky_session_cookie_names: [JSESSIONID, SESSION]
empty_pool_response_code_503: true
empty_pool_timeout: 10s
force_forwarded_proto_https: false
sanitize_forwarded_proto: true
route_services_internal_server_port: 7070
"#;
        let loaded = parse_yaml::<RouterConfig>(yaml).unwrap();
        let c = loaded.value;
        assert_eq!(c.port, 80);
        assert_eq!(c.index, 2);
        assert_eq!(c.nats.hosts[0].hostname, "10.0.0.4");
        assert_eq!(c.status.routes.port, Some(8080));
        assert_eq!(c.balancing_algorithm, LbAlgorithm::LeastConnection);
        assert_eq!(c.backends.max_conns, 500);
        assert_eq!(c.max_header_bytes, 2048);
        assert_eq!(c.drain_wait, Duration::from_secs(20));
        assert!(c.empty_pool_response_code_503);
        assert_eq!(
            loaded.ignored_keys,
            vec!["logging", "go_max_procs", "access_log.enable_streaming", "route_services_internal_server_port"]
        );
    }

    #[test]
    fn errors_name_the_key() {
        for (yaml, key) in [
            ("port: 0", "port"),
            ("backends: {max_attempts: 0}", "backends.max_attempts"),
            ("balancing_algorithm: random", "balancing_algorithm"),
            ("balancing_algorithm: hash", "balancing_algorithm"),
            ("droplet_stale_threshold: 120", "droplet_stale_threshold"),
            ("droplet_stale_threshold: 2 minutes", "droplet_stale_threshold"),
            ("nats: {hosts: [{hostname: a, port: 0}]}", "nats.hosts[0].port"),
            ("nats: {hosts: []}", "nats.hosts"),
            ("status: {port: 8081}", "status.port"),
            ("sticky_session_cookie_names: ['bad name']", "sticky_session_cookie_names[0]"),
            ("max_header_bytes: 10", "max_header_bytes"),
        ] {
            let err = parse_yaml::<RouterConfig>(yaml).unwrap_err();
            assert_eq!(err.key, key, "{yaml}: {err}");
        }
    }

    #[test]
    fn both_header_limit_spellings_are_accepted() {
        assert_eq!(parse_yaml::<RouterConfig>("max_header_bytes: 4096").unwrap().value.max_header_bytes, 4096);
        assert_eq!(parse_yaml::<RouterConfig>("max_request_header_bytes: 4096").unwrap().value.max_header_bytes, 4096);
    }

    #[test]
    fn tls_keys_read_gorouter_spellings() {
        let yaml = r#"
enable_ssl: true
ssl_port: 8443
tls_pem:
- cert_chain: "-----BEGIN CERTIFICATE-----"
  private_key: "-----BEGIN PRIVATE KEY-----"
min_tls_version: TLSv1.2
max_tls_version: TLSv1.2
cipher_suites: ECDHE-RSA-AES128-GCM-SHA256:TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
client_cert_validation: require
client_ca_certs: "-----BEGIN CERTIFICATE-----"
forwarded_client_cert: sanitize_set
ca_certs: "-----BEGIN CERTIFICATE-----"
enable_http2: false
route_services_secret: s3cret
route_services_timeout: 30s
route_services:
  max_attempts: 2
"#;
        let c = parse_yaml::<RouterConfig>(yaml).unwrap().value;
        assert!(c.enable_ssl && !c.enable_http2);
        assert_eq!(c.ssl_port, 8443);
        assert_eq!((c.min_tls_version, c.max_tls_version), (TlsVersion::Tls12, TlsVersion::Tls12));
        assert_eq!(c.cipher_suite_list().unwrap(), vec![CipherSuite::EcdheRsaAes128GcmSha256, CipherSuite::EcdheEcdsaAes256GcmSha384]);
        assert_eq!(c.client_cert_validation, ClientCertValidation::Require);
        assert_eq!(c.forwarded_client_cert, ForwardedClientCert::SanitizeSet);
        assert_eq!(c.ca_certs.len(), 1, "a single string is one CA entry");
        assert_eq!(c.client_ca_pems().len(), 2);
        assert_eq!(c.route_services_timeout, Duration::from_secs(30));
        assert_eq!(c.route_services.max_attempts, 2);
        let list = parse_yaml::<RouterConfig>("ca_certs: [a, b]\nonly_trust_client_ca_certs: true").unwrap().value;
        assert_eq!(list.ca_certs, vec!["a", "b"]);
        assert!(list.client_ca_pems().is_empty());
    }

    #[test]
    fn tls_defaults_are_gorouters_with_tls13_allowed() {
        let c: RouterConfig = parse_yaml("").unwrap().value;
        assert!(!c.enable_ssl && c.enable_http2);
        assert_eq!(c.ssl_port, 443);
        assert_eq!((c.min_tls_version, c.max_tls_version), (TlsVersion::Tls12, TlsVersion::Tls13));
        assert_eq!(c.client_cert_validation, ClientCertValidation::Request);
        assert_eq!(c.forwarded_client_cert, ForwardedClientCert::AlwaysForward);
        assert_eq!(c.route_services_timeout, Duration::from_secs(60));
    }

    #[test]
    fn tls_errors_name_the_key() {
        let pem = "tls_pem: [{cert_chain: c, private_key: k}]";
        for (yaml, key, words) in [
            ("enable_ssl: true".to_owned(), "tls_pem", "at least one"),
            ("enable_ssl: true\nssl_port: 8081\n".to_owned() + pem, "ssl_port", "differ"),
            ("tls_pem: [{cert_chain: c}]".to_owned(), "tls_pem[0].private_key", "PEM"),
            ("min_tls_version: TLSv1.1".to_owned(), "min_tls_version", "obsolete"),
            ("max_tls_version: SSLv3".to_owned(), "max_tls_version", "not a TLS version"),
            ("min_tls_version: TLSv1.3\nmax_tls_version: TLSv1.2".to_owned(), "max_tls_version", "older"),
            ("cipher_suites: ECDHE-RSA-AES128-GCM-SHA256:AES128-SHA".to_owned(), "cipher_suites", "`AES128-SHA` is not offered"),
            ("max_tls_version: TLSv1.2\ncipher_suites: TLS_AES_128_GCM_SHA256".to_owned(), "cipher_suites", "only TLS 1.3"),
            ("client_cert_validation: require".to_owned(), "client_ca_certs", "require"),
            ("client_cert_validation: sometimes".to_owned(), "client_cert_validation", "unknown variant"),
            ("forwarded_client_cert: keep".to_owned(), "forwarded_client_cert", "unknown variant"),
            ("disable_http: true".to_owned(), "disable_http", "enable_ssl"),
            ("route_services: {max_attempts: 0}".to_owned(), "route_services.max_attempts", "at least 1"),
            ("route_services_secret_decrypt_only: old".to_owned(), "route_services_secret", "must be set"),
        ] {
            let err = parse_yaml::<RouterConfig>(&yaml).unwrap_err();
            assert_eq!(err.key, key, "{yaml}: {err}");
            assert!(err.problem.contains(words), "{yaml}: {err}");
        }
    }

    #[test]
    fn stale_threshold_never_undercuts_the_start_delay() {
        let c = parse_yaml::<RouterConfig>("droplet_stale_threshold: 10s\nstart_response_delay_interval: 30s").unwrap().value;
        assert_eq!(c.effective_stale_threshold(), Duration::from_secs(30));
    }
}
