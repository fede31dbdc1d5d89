//! The TLS server side: what clients are offered (versions, suites, ALPN), which certificate they get, and
//! whether they must show one of their own.
//!
//! The whole `ServerConfig` is rebuilt from the config text on start-up and on every reload, and swapped in as one
//! value, so a handshake sees either the old settings or the new ones, never a mix.

use super::pem;
use super::sni::{NameIndex, SniResolver};
use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::cipher_suite as suites;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};
use std::sync::Arc;
use switchyard_config::ConfigError;
use switchyard_config::router::{CipherSuite, ClientCertValidation, RouterConfig, TlsVersion};

/// ALPN ids, most preferred first.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

fn rustls_suite(suite: CipherSuite) -> SupportedCipherSuite {
    match suite {
        CipherSuite::Tls13Aes128GcmSha256 => suites::TLS13_AES_128_GCM_SHA256,
        CipherSuite::Tls13Aes256GcmSha384 => suites::TLS13_AES_256_GCM_SHA384,
        CipherSuite::Tls13Chacha20Poly1305Sha256 => suites::TLS13_CHACHA20_POLY1305_SHA256,
        CipherSuite::EcdheEcdsaAes128GcmSha256 => suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::EcdheEcdsaAes256GcmSha384 => suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        CipherSuite::EcdheEcdsaChacha20Poly1305 => suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        CipherSuite::EcdheRsaAes128GcmSha256 => suites::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::EcdheRsaAes256GcmSha384 => suites::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        CipherSuite::EcdheRsaChacha20Poly1305 => suites::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    }
}

/// The ring provider limited to the configured suites. As with gorouter (where the list governs TLS 1.2 only), a
/// list that names no TLS 1.3 suite leaves all TLS 1.3 suites on; one that names some offers just those.
fn provider(configured: &[CipherSuite]) -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    if configured.is_empty() {
        return provider;
    }
    let names_tls13 = configured.iter().any(|s| s.is_tls13());
    let mut chosen: Vec<SupportedCipherSuite> = configured.iter().map(|s| rustls_suite(*s)).collect();
    if !names_tls13 {
        chosen.extend(provider.cipher_suites.iter().filter(|s| s.version() == &rustls::version::TLS13).copied());
    }
    provider.cipher_suites = chosen;
    provider
}

fn versions(min: TlsVersion, max: TlsVersion) -> Vec<&'static SupportedProtocolVersion> {
    let mut versions = Vec::with_capacity(2);
    if min <= TlsVersion::Tls12 && max >= TlsVersion::Tls12 {
        versions.push(&rustls::version::TLS12);
    }
    if max >= TlsVersion::Tls13 {
        versions.push(&rustls::version::TLS13);
    }
    versions
}

/// Loads `tls_pem` into an SNI index: every DNS name of each leaf certificate, in config order.
fn certificates(config: &RouterConfig, provider: &CryptoProvider) -> Result<NameIndex<Arc<CertifiedKey>>, ConfigError> {
    let mut index = NameIndex::default();
    for (i, entry) in config.tls_pem.iter().enumerate() {
        let chain_key = format!("tls_pem[{i}].cert_chain");
        let key_key = format!("tls_pem[{i}].private_key");
        let chain = pem::certificates(&chain_key, &entry.cert_chain)?;
        let names: Vec<String> = match chain.first().map(webpki::EndEntityCert::try_from) {
            Some(Ok(leaf)) => leaf.valid_dns_names().map(str::to_owned).collect(),
            Some(Err(err)) => return Err(ConfigError::new(chain_key, format!("its first certificate cannot be read: {err:?}"))),
            None => Vec::new(),
        };
        if names.is_empty() {
            tracing::warn!(key = %chain_key, "certificate has no DNS names; it is served only as the fallback");
        }
        let key = pem::private_key(&key_key, &entry.private_key)?;
        let certified = CertifiedKey::from_der(chain, key, provider)
            .map_err(|err| ConfigError::new(key_key, format!("does not fit the certificate (or is of an unsupported type): {err}")))?;
        index.add(names.iter().map(String::as_str), Arc::new(certified));
    }
    Ok(index)
}

/// The server config for the HTTPS listener, or `None` when `enable_ssl` is off.
pub fn server_config(config: &RouterConfig) -> Result<Option<Arc<ServerConfig>>, ConfigError> {
    if !config.enable_ssl {
        return Ok(None);
    }
    let provider = Arc::new(provider(&config.cipher_suite_list()?));
    let index = certificates(config, &provider)?;
    let client_cas = config.client_ca_pems();
    let verifier = match config.client_cert_validation {
        ClientCertValidation::None => WebPkiClientVerifier::no_client_auth(),
        ClientCertValidation::Request if client_cas.is_empty() => {
            tracing::info!("client_cert_validation is `request` but no CA is configured: clients are not asked for certificates");
            WebPkiClientVerifier::no_client_auth()
        }
        validation => {
            let roots = pem::trust_store("client_ca_certs", client_cas)?;
            let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let builder = if validation == ClientCertValidation::Request { builder.allow_unauthenticated() } else { builder };
            builder.build().map_err(|err| ConfigError::new("client_ca_certs", format!("cannot verify client certificates: {err}")))?
        }
    };
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions(config.min_tls_version, config.max_tls_version))
        .map_err(|err| ConfigError::new("cipher_suites", format!("leaves no usable suite for the TLS versions allowed: {err}")))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SniResolver(index)));
    server.alpn_protocols = if config.enable_http2 { vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()] } else { vec![ALPN_HTTP1.to_vec()] };
    // Stateful resumption for returning clients; sized for a busy edge (each entry is a few hundred bytes).
    server.session_storage = rustls::server::ServerSessionMemoryCache::new(32 * 1024);
    Ok(Some(Arc::new(server)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_lists_follow_gorouter_rules() {
        let tls12_only = provider(&[CipherSuite::EcdheRsaAes128GcmSha256]);
        let names: Vec<String> = tls12_only.cipher_suites.iter().map(|s| format!("{:?}", s.suite())).collect();
        assert_eq!(names.first().map(String::as_str), Some("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"));
        assert_eq!(names.len(), 4, "the named TLS 1.2 suite plus every TLS 1.3 suite: {names:?}");
        let tls13_named = provider(&[CipherSuite::Tls13Aes256GcmSha384, CipherSuite::EcdheEcdsaAes128GcmSha256]);
        assert_eq!(tls13_named.cipher_suites.len(), 2);
        assert_eq!(provider(&[]).cipher_suites.len(), rustls::crypto::ring::default_provider().cipher_suites.len());
    }

    #[test]
    fn version_ranges() {
        assert_eq!(versions(TlsVersion::Tls12, TlsVersion::Tls13).len(), 2);
        assert_eq!(versions(TlsVersion::Tls13, TlsVersion::Tls13), vec![&rustls::version::TLS13]);
        assert_eq!(versions(TlsVersion::Tls12, TlsVersion::Tls12), vec![&rustls::version::TLS12]);
    }
}
