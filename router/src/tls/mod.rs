//! TLS at both ends of the router, built from the config as one value so start-up and reload are the same step.
//!
//! [`Material`] holds everything certificate-shaped: the server side offered on `ssl_port` and the client side used
//! to reach TLS backends and route services. The first load and every reload call [`Material::build`] on the
//! config text and then swap the results into place behind `ArcSwap`s, which handshakes read with one atomic load.
//! Open connections keep the settings they started with; nothing is dropped by a reload. A reload that fails (a
//! bad paste) changes nothing and says which key is wrong.

pub mod backend;
pub mod frontend;
pub mod pem;
pub mod sni;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use std::sync::Arc;
use switchyard_config::ConfigError;
use switchyard_config::router::RouterConfig;

pub use backend::{BackendTls, TlsFailure};

/// The TLS settings derived from one version of the config.
#[derive(Debug, Clone)]
pub struct Material {
    /// The HTTPS listener's settings; `None` without `enable_ssl`.
    pub frontend: Option<Arc<ServerConfig>>,
    /// Settings for dialling TLS backends and route services.
    pub backend: Arc<BackendTls>,
}

impl Material {
    /// Reads and checks every certificate, key and CA in the config.
    pub fn build(config: &RouterConfig) -> Result<Self, ConfigError> {
        Ok(Self { frontend: frontend::server_config(config)?, backend: Arc::new(BackendTls::from_config(config)?) })
    }
}

/// Where the proxy reads the current TLS settings from.
#[derive(Debug, Clone)]
pub struct Live {
    /// The HTTPS listener's settings, when it runs.
    pub frontend: Option<Arc<ArcSwap<ServerConfig>>>,
    /// Backend settings.
    pub backend: Arc<ArcSwap<BackendTls>>,
}

impl Live {
    /// Puts the first material in place.
    pub fn new(material: Material) -> Self {
        Self { frontend: material.frontend.map(ArcSwap::new).map(Arc::new), backend: Arc::new(ArcSwap::new(material.backend)) }
    }

    /// Swaps in freshly built material. A listener that did not exist at start-up cannot appear (nor go away)
    /// without a restart; that is reported, and the rest is applied.
    pub fn replace(&self, material: Material) {
        match (&self.frontend, material.frontend) {
            (Some(live), Some(fresh)) => live.store(fresh),
            (None, Some(_)) => tracing::warn!("`enable_ssl` was turned on; the HTTPS listener starts only with a restart"),
            (Some(_), None) => tracing::warn!("`enable_ssl` was turned off; the HTTPS listener keeps serving until a restart"),
            (None, None) => {}
        }
        self.backend.store(material.backend);
    }
}
