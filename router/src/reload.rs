//! Certificate reload without a restart, on SIGHUP or when the config file changes.
//!
//! Certificates are rotated far more often than anything else in the config (short-lived certificates, a new
//! domain on the shared edge), and a restart would drop every open connection. So the router re-reads its config
//! file, rebuilds the TLS material with the same function the start-up used, and swaps it in: new handshakes use
//! the new certificates, open connections carry on. Only the TLS keys are applied live (`tls_pem`, versions,
//! suites, client certificate settings, `enable_http2`, `ca_certs`, `backends.cert_chain`/`private_key`); a change to
//! anything else
//! is reported as needing a restart. A file that does not parse or holds a bad certificate changes nothing.
//!
//! Watching is a cheap poll of the file's modification time and size, so it works the same for a file edited in
//! place, replaced by a rename, or swapped behind a symlink, with no platform-specific notification API.

use crate::metrics::RouterMetrics;
use crate::tls::{Live, Material};
use std::path::PathBuf;
use std::time::SystemTime;
use switchyard_config::router::RouterConfig;

/// How often the config file is checked for changes.
pub const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

/// Re-reads the config file and swaps in new TLS material.
pub struct Reloader {
    path: PathBuf,
    stamp: Option<Stamp>,
    running: RouterConfig,
    live: Live,
    metrics: RouterMetrics,
}

fn stamp(path: &PathBuf) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp { modified: meta.modified().ok(), len: meta.len() })
}

/// The config with every key that reload applies reset, so two configs compare equal when they differ only in
/// what a reload can change.
fn without_tls(config: &RouterConfig) -> RouterConfig {
    let defaults = RouterConfig::default();
    let mut rest = config.clone();
    rest.tls_pem = defaults.tls_pem;
    rest.min_tls_version = defaults.min_tls_version;
    rest.max_tls_version = defaults.max_tls_version;
    rest.cipher_suites = defaults.cipher_suites;
    rest.client_cert_validation = defaults.client_cert_validation;
    rest.client_ca_certs = defaults.client_ca_certs;
    rest.only_trust_client_ca_certs = defaults.only_trust_client_ca_certs;
    rest.ca_certs = defaults.ca_certs;
    rest.backends.cert_chain = defaults.backends.cert_chain;
    rest.backends.private_key = defaults.backends.private_key;
    rest.enable_http2 = defaults.enable_http2;
    rest
}

impl Reloader {
    /// Watches `path`, whose content `running` was started from.
    pub fn new(path: PathBuf, running: RouterConfig, live: Live, metrics: RouterMetrics) -> Self {
        let stamp = stamp(&path);
        Self { path, stamp, running, live, metrics }
    }

    /// Whether the file changed since it was last read.
    pub fn changed(&self) -> bool {
        stamp(&self.path) != self.stamp
    }

    /// Reads the file and applies its TLS material; `why` is for the log.
    pub async fn reload(&mut self, why: &'static str) {
        self.stamp = stamp(&self.path);
        let path = self.path.clone();
        let built = tokio::task::spawn_blocking(move || -> Result<(RouterConfig, Material), String> {
            let text = std::fs::read_to_string(&path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
            let config = switchyard_config::parse_yaml::<RouterConfig>(&text).map_err(|err| err.to_string())?.value;
            let material = Material::build(&config).map_err(|err| err.to_string())?;
            Ok((config, material))
        })
        .await;
        match built {
            Ok(Ok((config, material))) => {
                self.live.replace(material);
                if without_tls(&config) != without_tls(&self.running) {
                    tracing::warn!("the config changed outside the TLS keys; those changes take effect only after a restart");
                }
                self.metrics.tls_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(why, certificates = config.tls_pem.len(), "reloaded TLS certificates");
                self.running = config;
            }
            Ok(Err(err)) => {
                self.metrics.tls_reloads.with_label_values(&["error"]).inc();
                tracing::error!(why, "TLS reload failed, the current certificates stay in use: {err}");
            }
            Err(err) => tracing::error!(why, %err, "TLS reload task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tls_keys_are_live() {
        let base = RouterConfig::default();
        let mut certs = base.clone();
        certs.tls_pem.push(switchyard_config::router::TlsPem { cert_chain: "c".into(), private_key: "k".into() });
        certs.ca_certs.push("ca".into());
        assert_eq!(without_tls(&certs), without_tls(&base));
        let mut port = base.clone();
        port.port = 9999;
        assert_ne!(without_tls(&port), without_tls(&base));
    }
}
