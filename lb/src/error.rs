//! The errors `lb` reports to an operator: each says where it came from and what to do, as one sentence.

use crate::dataplane::DataplaneError;
use crate::kv::KvError;
use std::net::SocketAddr;
use std::path::PathBuf;
use switchyard_config::ConfigError;

/// Why an `lb` command failed.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// The config file could not be read.
    #[error("could not read the config file {}: {source}", path.display())]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is invalid.
    #[error("{}: {source}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// The key at fault and the problem.
        source: ConfigError,
    },
    /// A VIP given on the command line is invalid, or clashes with the bucket.
    #[error("{0}")]
    Vip(String),
    /// The kernel side failed.
    #[error(transparent)]
    Kernel(#[from] DataplaneError),
    /// The VIP bucket failed.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// NATS could not be used.
    #[error("NATS: {0}")]
    Nats(String),
    /// The status listener could not bind.
    #[error("could not listen on {address} for the status listener: {source}; is another lb running? Change `status.address` if so")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("could not install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The sync thread could not start.
    #[error("could not start the sync thread: {0}")]
    Thread(std::io::Error),
}

impl LbError {
    /// The process exit code: 2 for bad input an operator must fix, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::ReadConfig { .. } | Self::Config { .. } | Self::Vip(_) => 2,
            _ => 1,
        }
    }
}
