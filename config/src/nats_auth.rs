//! The NATS credential and TLS keys the router and `lb` configs share.
//!
//! Both programs spell these keys as gorouter does (`nats.user`, `nats.tls_enabled`, inline PEM in
//! `nats.ca_certs`, ...), so an operator who secures one bus writes the same block into both files. The rules
//! live here once, so both refuse the same half-configured block with the same message.

use crate::error::ConfigError;

/// The `nats.*` keys that say how to authenticate to the servers, borrowed from either config.
#[derive(Debug, Clone, Copy)]
pub struct NatsAuthKeys<'a> {
    /// `nats.user`.
    pub user: &'a str,
    /// `nats.pass`.
    pub pass: &'a str,
    /// `nats.tls_enabled`.
    pub tls_enabled: bool,
    /// `nats.ca_certs`: PEM CA certificates of the servers.
    pub ca_certs: &'a str,
    /// `nats.cert_chain`: PEM client certificate chain.
    pub cert_chain: &'a str,
    /// `nats.private_key`: PEM key of `cert_chain`.
    pub private_key: &'a str,
}

/// Gives a config's `nats` section an `auth_keys()` that borrows its `user`, `pass`, `tls_enabled`, `ca_certs`,
/// `cert_chain` and `private_key` fields, which both configs spell alike.
macro_rules! impl_auth_keys {
    ($section:ty) => {
        impl $section {
            /// The credential and TLS keys, checked by the rule the router and `lb` share.
            pub fn auth_keys(&self) -> $crate::nats_auth::NatsAuthKeys<'_> {
                $crate::nats_auth::NatsAuthKeys {
                    user: &self.user,
                    pass: &self.pass,
                    tls_enabled: self.tls_enabled,
                    ca_certs: &self.ca_certs,
                    cert_chain: &self.cert_chain,
                    private_key: &self.private_key,
                }
            }
        }
    };
}
pub(crate) use impl_auth_keys;

impl NatsAuthKeys<'_> {
    /// The first half-configured pair, naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.user.is_empty() != self.pass.is_empty() {
            return Err(ConfigError::new("nats.pass", "`nats.user` and `nats.pass` must be set together"));
        }
        if self.tls_enabled && self.ca_certs.trim().is_empty() {
            return Err(ConfigError::new("nats.ca_certs", "must hold the PEM CA certificate when `nats.tls_enabled` is true"));
        }
        if self.cert_chain.is_empty() != self.private_key.is_empty() {
            return Err(ConfigError::new("nats.private_key", "`nats.cert_chain` and `nats.private_key` must be set together"));
        }
        if !self.tls_enabled && !self.cert_chain.is_empty() {
            return Err(ConfigError::new("nats.cert_chain", "a client certificate needs `nats.tls_enabled: true`"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> NatsAuthKeys<'static> {
        NatsAuthKeys { user: "", pass: "", tls_enabled: false, ca_certs: "", cert_chain: "", private_key: "" }
    }

    #[test]
    fn half_configured_pairs_name_their_key() {
        assert!(keys().validate().is_ok());
        assert_eq!(NatsAuthKeys { user: "u", ..keys() }.validate().unwrap_err().key, "nats.pass");
        assert_eq!(NatsAuthKeys { tls_enabled: true, ..keys() }.validate().unwrap_err().key, "nats.ca_certs");
        let half = NatsAuthKeys { tls_enabled: true, ca_certs: "pem", cert_chain: "pem", ..keys() };
        assert_eq!(half.validate().unwrap_err().key, "nats.private_key");
        let no_tls = NatsAuthKeys { cert_chain: "pem", private_key: "pem", ..keys() };
        assert_eq!(no_tls.validate().unwrap_err().key, "nats.cert_chain");
        let full = NatsAuthKeys { user: "u", pass: "p", tls_enabled: true, ca_certs: "pem", cert_chain: "c", private_key: "k" };
        assert!(full.validate().is_ok());
    }
}
