//! A private nats-server for one benchmark run, and the client that publishes registrations to it.

use crate::error::{BenchError, Result};
use crate::process::{Spawned, free_port, pinned, require_tool, wait_for_port};
use std::path::Path;
use std::time::Duration;

/// A nats-server on a free loopback port, stopped on drop.
pub struct Nats {
    /// The port.
    pub port: u16,
    _process: Spawned,
}

impl Nats {
    /// Starts nats-server, pinned to `cpus`, logging into `dir`.
    pub fn start(dir: &Path, cpus: Option<&str>) -> Result<Self> {
        require_tool("nats-server", "run `apt-get install -y nats-server`")?;
        let port = free_port()?;
        let args = vec!["-a".to_owned(), "127.0.0.1".to_owned(), "-p".to_owned(), port.to_string()];
        let process = Spawned::start("nats-server", pinned("nats-server", &args, cpus), dir)?;
        wait_for_port("nats-server", port, Duration::from_secs(10))?;
        Ok(Self { port, _process: process })
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A connected client.
    pub async fn client(&self) -> Result<async_nats::Client> {
        async_nats::connect(self.url()).await.map_err(|e| BenchError::Nats(format!("cannot connect to {}: {e}", self.url())))
    }
}

/// Publishes a `router.register` message for `uri` served by the loopback `port` (not flushed).
pub async fn register(client: &async_nats::Client, uri: &str, port: u16) -> Result<()> {
    let payload = serde_json::json!({ "host": "127.0.0.1", "port": port, "uris": [uri] });
    client
        .publish("router.register", payload.to_string().into())
        .await
        .map_err(|e| BenchError::Nats(format!("cannot publish a registration: {e}")))
}

/// Waits until the server has everything published so far.
pub async fn flush(client: &async_nats::Client) -> Result<()> {
    client.flush().await.map_err(|e| BenchError::Nats(format!("cannot flush: {e}")))
}
