//! Reading the inline PEM text of the config into rustls' types.
//!
//! Operators paste certificates and keys into the YAML, so the mistakes are paste mistakes: an empty block, a key
//! where a certificate belongs, a truncated line. Every error names the config key it came from, and nothing here
//! panics on what was pasted.

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use switchyard_config::ConfigError;

/// Every certificate in `text`, in order; at least one.
pub fn certificates(key: &str, text: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| ConfigError::new(key, format!("is not valid PEM: {err}")))?;
    if certs.is_empty() {
        return Err(ConfigError::new(key, "holds no `BEGIN CERTIFICATE` block"));
    }
    Ok(certs)
}

/// The private key in `text` (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(key: &str, text: &str) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|err| ConfigError::new(key, format!("holds no usable private key: {err}")))
}

/// A trust store from several PEM texts, each of which must hold at least one CA certificate.
pub fn trust_store<'a>(key: &str, texts: impl IntoIterator<Item = &'a str>) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    for text in texts {
        for cert in certificates(key, text)? {
            roots.add(cert).map_err(|err| ConfigError::new(key, format!("holds a certificate that cannot be a trust anchor: {err}")))?;
        }
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paste_mistakes_name_the_key() {
        let err = certificates("tls_pem[0].cert_chain", "").unwrap_err();
        assert_eq!(err.key, "tls_pem[0].cert_chain");
        assert!(err.problem.contains("no `BEGIN CERTIFICATE`"), "{err}");
        let err = private_key("tls_pem[1].private_key", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap_err();
        assert_eq!(err.key, "tls_pem[1].private_key");
        let err = trust_store("ca_certs", ["garbage"]).unwrap_err();
        assert_eq!(err.key, "ca_certs");
    }
}
