//! The TLS client side: dialling backends (and route services) that must prove who they are.
//!
//! A backend registered with `tls_port` must present a certificate valid for its `server_cert_domain_san`, signed
//! by a CA in `ca_certs` or the system store. That check is what stops a recycled cell IP from receiving another
//! app's traffic, so each way it can fail is told apart and answered the way gorouter answers it: a certificate
//! for another name (503, and the endpoint is dropped), one nobody trusts (526), a backend that rejects the
//! router's own certificate (496), and anything else, such as a plain-text backend (525).

use super::pem;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use std::sync::Arc;
use switchyard_config::ConfigError;
use switchyard_config::router::RouterConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Client configs for TLS backends: one offering HTTP/1.1 and one offering HTTP/2 by ALPN, with the same trust
/// and client certificate.
#[derive(Debug, Clone)]
pub struct BackendTls {
    http1: Arc<ClientConfig>,
    http2: Arc<ClientConfig>,
}

/// How a backend TLS handshake failed. Nothing reached the backend, so another endpoint may be tried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsFailure {
    /// The certificate is valid, but not for the name the registration asked for.
    #[error("backend certificate is not valid for `{0}`")]
    NameMismatch(String),
    /// The certificate does not chain to a trusted CA, or is expired or malformed.
    #[error("backend certificate is not trusted: {0}")]
    Untrusted(String),
    /// The backend refused the router's client certificate.
    #[error("backend rejected the router's client certificate: {0}")]
    ClientCertRejected(String),
    /// Anything else: the backend does not speak TLS, closed the connection, or shares no parameters.
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
}

impl TlsFailure {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NameMismatch(_) => "tls_name",
            Self::Untrusted(_) => "tls_untrusted",
            Self::ClientCertRejected(_) => "tls_client_cert",
            Self::Handshake(_) => "tls_handshake",
        }
    }

    /// Sorts a handshake error from tokio-rustls.
    pub fn classify(err: &std::io::Error, name: &str) -> Self {
        use rustls::{AlertDescription, CertificateError, Error};
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<Error>());
        match inner {
            Some(Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })) => {
                Self::NameMismatch(name.to_owned())
            }
            Some(Error::InvalidCertificate(other)) => Self::Untrusted(format!("{other:?}")),
            Some(Error::AlertReceived(
                alert @ (AlertDescription::BadCertificate
                | AlertDescription::CertificateRequired
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateRevoked),
            )) => Self::ClientCertRejected(format!("{alert:?}")),
            Some(other) => Self::Handshake(other.to_string()),
            None => Self::Handshake(err.to_string()),
        }
    }
}

impl BackendTls {
    /// Builds the configs: trust is the system store plus `ca_certs`; the client certificate is
    /// `backends.cert_chain` / `backends.private_key` when set.
    pub fn from_config(config: &RouterConfig) -> Result<Self, ConfigError> {
        let mut roots = RootCertStore::empty();
        let system = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(system.certs);
        if !system.errors.is_empty() {
            tracing::debug!(errors = system.errors.len(), "some system CA certificates could not be read");
        }
        tracing::debug!(system_roots = added, "loaded the system CA store for backends");
        for (i, text) in config.ca_certs.iter().enumerate() {
            let key = format!("ca_certs[{i}]");
            for anchor in pem::trust_store(&key, [text.as_str()])?.roots {
                roots.roots.push(anchor);
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| ConfigError::new("ca_certs", format!("cannot build the backend TLS settings: {err}")))?
            .with_root_certificates(roots);
        let mut base = if config.backends.cert_chain.is_empty() {
            builder.with_no_client_auth()
        } else {
            let chain = pem::certificates("backends.cert_chain", &config.backends.cert_chain)?;
            let key = pem::private_key("backends.private_key", &config.backends.private_key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|err| ConfigError::new("backends.private_key", format!("does not fit `backends.cert_chain`: {err}")))?
        };
        let mut http2 = base.clone();
        http2.alpn_protocols = vec![super::frontend::ALPN_H2.to_vec()];
        base.alpn_protocols = vec![super::frontend::ALPN_HTTP1.to_vec()];
        Ok(Self { http1: Arc::new(base), http2: Arc::new(http2) })
    }

    /// Runs the handshake on a connected stream, verifying the peer as `name` (a DNS name or an IP address).
    pub async fn handshake(&self, stream: TcpStream, name: &str, http2: bool) -> Result<TlsStream<TcpStream>, TlsFailure> {
        let server_name = ServerName::try_from(name.to_owned())
            .map_err(|_| TlsFailure::Handshake(format!("`{name}` is neither a DNS name nor an IP address")))?;
        let config = if http2 { &self.http2 } else { &self.http1 };
        TlsConnector::from(Arc::clone(config)).connect(server_name, stream).await.map_err(|err| TlsFailure::classify(&err, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{AlertDescription, CertificateError, Error};

    fn io(err: Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, err)
    }

    #[test]
    fn handshake_errors_sort_into_gorouters_cases() {
        assert_eq!(TlsFailure::classify(&io(Error::InvalidCertificate(CertificateError::NotValidForName)), "a.internal"), TlsFailure::NameMismatch("a.internal".into()));
        assert!(matches!(TlsFailure::classify(&io(Error::InvalidCertificate(CertificateError::UnknownIssuer)), "a"), TlsFailure::Untrusted(_)));
        assert!(matches!(TlsFailure::classify(&io(Error::InvalidCertificate(CertificateError::Expired)), "a"), TlsFailure::Untrusted(_)));
        assert!(matches!(TlsFailure::classify(&io(Error::AlertReceived(AlertDescription::CertificateRequired)), "a"), TlsFailure::ClientCertRejected(_)));
        assert!(matches!(TlsFailure::classify(&io(Error::AlertReceived(AlertDescription::HandshakeFailure)), "a"), TlsFailure::Handshake(_)));
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(matches!(TlsFailure::classify(&reset, "a"), TlsFailure::Handshake(_)));
        assert_eq!(TlsFailure::Untrusted(String::new()).kind(), "tls_untrusted");
    }
}
