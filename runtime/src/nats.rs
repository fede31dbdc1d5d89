//! The NATS link: one client that reconnects forever, and a watchable state so each program can react to
//! (re)connects the way the protocol expects (the router republishes `router.start`, the registrar re-announces,
//! `lb` resyncs).
//!
//! Connecting never blocks start-up: if no server answers, the client keeps trying in the background and the
//! program serves what it already knows.

use crate::metrics::Metrics;
use async_nats::{Client, ConnectOptions, Event, ServerError};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use switchyard_config::nats_auth::NatsAuthKeys;
use std::time::Duration;
use tokio::sync::watch;

/// Where and how to connect.
#[derive(Debug, Clone, Default)]
pub struct NatsSettings {
    /// Server URLs (`nats://host:port`), tried in turn.
    pub servers: Vec<String>,
    /// User and password, if the servers require them.
    pub credentials: Option<(String, String)>,
    /// TLS settings, if the servers speak TLS.
    pub tls: Option<NatsTls>,
    /// Name the client reports to the server, e.g. `switchyard-router`.
    pub client_name: String,
    /// Messages each subscription may hold before the client drops new ones ("slow consumer"); `None` keeps
    /// the client's default. A program that must not lose a burst (the router at start-up, when every emitter
    /// re-announces at once) sets it above the largest burst it expects.
    pub subscription_capacity: Option<usize>,
}

impl NatsSettings {
    /// Settings from a config's `nats.*` credential and TLS keys (inline PEM, as gorouter writes them).
    pub fn from_keys(servers: Vec<String>, keys: NatsAuthKeys<'_>, client_name: String) -> Self {
        Self {
            servers,
            credentials: (!keys.user.is_empty()).then(|| (keys.user.to_owned(), keys.pass.to_owned())),
            tls: keys.tls_enabled.then(|| NatsTls {
                ca_pem: keys.ca_certs.to_owned(),
                client_identity: (!keys.cert_chain.is_empty())
                    .then(|| (keys.cert_chain.to_owned(), keys.private_key.to_owned())),
            }),
            client_name,
            subscription_capacity: None,
        }
    }
}

/// TLS to NATS, from inline PEM text (as the config files carry it).
#[derive(Debug, Clone, Default)]
pub struct NatsTls {
    /// CA certificates that sign the servers' certificates.
    pub ca_pem: String,
    /// Client certificate chain and key, for servers that verify clients.
    pub client_identity: Option<(String, String)>,
}

/// The link as the rest of the program sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkState {
    /// Whether the client is connected right now.
    pub connected: bool,
    /// How many times a connection has been established; a change means "connected again".
    pub connects: u64,
}

/// A connected (or connecting) client plus its state.
pub struct NatsLink {
    /// The client; clone it freely.
    pub client: Client,
    /// Follows connects and disconnects.
    pub state: watch::Receiver<LinkState>,
}

/// Why the link could not be set up. Server outages are not errors: the client retries them forever.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The TLS material in the config is unusable.
    #[error("NATS TLS settings are unusable: {0}")]
    Tls(String),
    /// A server address is malformed.
    #[error("NATS server address is invalid: {0}")]
    Address(String),
    /// The client refused the settings.
    #[error("NATS client could not start: {0}")]
    Connect(String),
}

/// `nats://host:port`, bracketing IPv6 literals.
pub fn server_url(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') { format!("nats://[{host}]:{port}") } else { format!("nats://{host}:{port}") }
}

/// Reconnect quickly at first and then at most once a second, so a restarted server is picked up fast.
fn reconnect_delay(attempts: usize) -> Duration {
    let shift = u32::try_from(attempts.min(10)).unwrap_or(10);
    Duration::from_millis((25u64 << shift).min(1000))
}

fn tls_config(tls: &NatsTls) -> Result<rustls::ClientConfig, NatsError> {
    let bad = |what: &str, err: &dyn std::fmt::Display| NatsError::Tls(format!("{what}: {err}"));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| bad("CA certificate PEM", &e))?;
        roots.add(cert).map_err(|e| bad("CA certificate", &e))?;
    }
    if roots.is_empty() {
        return Err(NatsError::Tls("no CA certificate found in the PEM text".to_owned()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", &e))?
        .with_root_certificates(roots);
    match &tls.client_identity {
        None => Ok(builder.with_no_client_auth()),
        Some((chain, key)) => {
            let certs = CertificateDer::pem_slice_iter(chain.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("client certificate PEM", &e))?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| bad("client key PEM", &e))?;
            builder.with_client_auth_cert(certs, key).map_err(|e| bad("client certificate", &e))
        }
    }
}

/// The client options `settings` ask for: name, subscription capacity, credentials and TLS. [`connect`] adds its
/// reconnect policy and event handling; a one-shot command (`lb vip put`, `lb plan`) connects with them as they
/// are, so it reaches a secured bus exactly as the long-running program does.
pub fn client_options(settings: &NatsSettings) -> Result<ConnectOptions, NatsError> {
    let mut options = ConnectOptions::new().name(&settings.client_name);
    if let Some(capacity) = settings.subscription_capacity {
        options = options.subscription_capacity(capacity);
    }
    if let Some((user, pass)) = &settings.credentials {
        options = options.user_and_password(user.clone(), pass.clone());
    }
    if let Some(tls) = &settings.tls {
        options = options.require_tls(true).tls_client_config(tls_config(tls)?);
    }
    Ok(options)
}

/// The server addresses of `settings`, parsed.
fn server_addresses(settings: &NatsSettings) -> Result<Vec<async_nats::ServerAddr>, NatsError> {
    settings.servers.iter().map(|s| s.parse::<async_nats::ServerAddr>().map_err(|e| NatsError::Address(format!("{s}: {e}")))).collect()
}

/// Starts the client. Returns at once; the connection is made (and remade) in the background.
pub async fn connect(settings: &NatsSettings, metrics: &Metrics) -> Result<NatsLink, NatsError> {
    let connected_gauge = metrics.gauge("nats_connected", "1 while connected to a NATS server.");
    let connects = metrics.counter("nats_connects_total", "Connections established to NATS, the first one included.");
    let slow_consumer = metrics.counter(
        "nats_slow_consumer_events_total",
        "Times a subscription's queue was full and the NATS client dropped messages for it.",
    );
    let (state_tx, state_rx) = watch::channel(LinkState::default());
    let state_tx = Arc::new(state_tx);

    let options = client_options(settings)?
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .connection_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(10))
        .event_callback(move |event| {
            let state_tx = Arc::clone(&state_tx);
            let connected_gauge = connected_gauge.clone();
            let connects = connects.clone();
            let slow_consumer = slow_consumer.clone();
            async move {
                match event {
                    Event::Connected => {
                        connected_gauge.set(1);
                        connects.inc();
                        state_tx.send_modify(|s| {
                            s.connected = true;
                            s.connects += 1;
                        });
                        tracing::info!("NATS connected");
                    }
                    Event::Disconnected => {
                        connected_gauge.set(0);
                        state_tx.send_modify(|s| s.connected = false);
                        tracing::warn!("NATS disconnected; reconnecting");
                    }
                    Event::SlowConsumer(sid) => {
                        slow_consumer.inc();
                        tracing::warn!(subscription = sid, "NATS subscription queue full: messages were dropped");
                    }
                    Event::ServerError(ServerError::Other(ref error)) if let Some(refusal) = Refusal::of(error) => {
                        tracing::error!(
                            subject = refusal.subject,
                            "the NATS server does not let this user {} `{}`: grant its {} permission in the server's \
                             authorization block",
                            refusal.doing(),
                            refusal.subject,
                            refusal.permission()
                        );
                    }
                    other => tracing::warn!(event = %other, "NATS event"),
                }
            }
        });
    let client = options.connect(server_addresses(settings)?).await.map_err(|e| NatsError::Connect(e.to_string()))?;
    Ok(NatsLink { client, state: state_rx })
}

/// A subject the server's permissions refuse this user, read from the server's error text
/// (`Permissions Violation for Subscription to "router.*"`): silent otherwise, since the server only says it once
/// and the program simply never hears from that subject.
#[derive(Debug, PartialEq, Eq)]
struct Refusal<'a> {
    subscribing: bool,
    subject: &'a str,
}

impl<'a> Refusal<'a> {
    fn of(error: &'a str) -> Option<Self> {
        let (_, rest) = error.split_once("Permissions Violation for ")?;
        let (kind, subject) = rest.split_once(" to ")?;
        let subscribing = match kind {
            "Subscription" => true,
            "Publish" => false,
            _ => return None,
        };
        let subject = subject.split_whitespace().next()?.trim_matches(|c| c == '"' || c == '\'');
        (!subject.is_empty()).then_some(Self { subscribing, subject })
    }

    fn doing(&self) -> &'static str {
        if self.subscribing { "subscribe to" } else { "publish on" }
    }

    fn permission(&self) -> &'static str {
        if self.subscribing { "subscribe" } else { "publish" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permission_refusal_names_its_subject() {
        let refused = Refusal::of("Permissions Violation for Subscription to \"router.*\"");
        assert_eq!(refused, Some(Refusal { subscribing: true, subject: "router.*" }));
        let refused = Refusal::of("permissions violation: Permissions Violation for Publish to \"lb.register.api\"");
        assert_eq!(refused, Some(Refusal { subscribing: false, subject: "lb.register.api" }));
        for other in ["Authorization Violation", "Permissions Violation for Subscription to \"\"", "Permissions Violation for Something to \"x\"", "Maximum Payload Violation"] {
            assert_eq!(Refusal::of(other), None, "{other}");
        }
    }

    #[test]
    fn urls_bracket_ipv6() {
        assert_eq!(server_url("127.0.0.1", 4222), "nats://127.0.0.1:4222");
        assert_eq!(server_url("::1", 4222), "nats://[::1]:4222");
    }

    #[test]
    fn reconnect_delay_is_capped() {
        assert_eq!(reconnect_delay(0), Duration::from_millis(25));
        assert_eq!(reconnect_delay(2), Duration::from_millis(100));
        assert_eq!(reconnect_delay(50), Duration::from_secs(1));
    }

    #[test]
    fn client_options_refuse_unusable_tls_and_bad_addresses() {
        let tls = NatsTls { ca_pem: "not pem".into(), client_identity: None };
        let settings = NatsSettings { tls: Some(tls), ..NatsSettings::default() };
        assert!(matches!(client_options(&settings), Err(NatsError::Tls(_))));
        assert!(client_options(&NatsSettings::default()).is_ok());
        let settings = NatsSettings { servers: vec!["nats://127.0.0.1:4222".into(), "nats://[::1".into()], ..NatsSettings::default() };
        assert!(matches!(server_addresses(&settings), Err(NatsError::Address(problem)) if problem.starts_with("nats://[::1")));
    }

    #[test]
    fn tls_config_rejects_garbage() {
        let err = tls_config(&NatsTls { ca_pem: "not pem".into(), client_identity: None }).unwrap_err();
        assert!(err.to_string().contains("no CA certificate"), "{err}");
    }
}
