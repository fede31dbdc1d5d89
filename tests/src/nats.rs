//! A real `nats-server` per test, on a free loopback port, that the test may stop and restart.

use crate::process::{Service, free_port, wait_until};
use std::path::PathBuf;
use std::time::Duration;

/// What `nats-server` logs once it accepts clients on its own port.
pub const READY_LINE: &str = "Server is ready";

/// A running (or stopped) NATS server owned by one test.
pub struct NatsServer {
    port: u16,
    jetstream: bool,
    config: Option<String>,
    dir: tempfile::TempDir,
    service: Option<Service>,
    starts: u32,
}

/// The installed `nats-server`; a missing one fails the test with the command that installs it.
pub fn nats_server_binary() -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin"] {
        let path = PathBuf::from(dir).join("nats-server");
        if path.exists() {
            return path;
        }
    }
    panic!("nats-server is not installed; run `apt-get install -y nats-server` (scripts/test installs it)");
}

impl NatsServer {
    /// Starts a plain server.
    pub fn start() -> Self {
        Self::launch(false, None)
    }

    /// Starts a server with JetStream enabled (for key-value buckets).
    pub fn start_jetstream() -> Self {
        Self::launch(true, None)
    }

    /// Starts a server with extra config-file text (authorization, TLS, ...). `{port}` and `{dir}` are
    /// replaced by the server's port and data directory.
    pub fn start_with_config(config: &str) -> Self {
        Self::launch(false, Some(config.to_owned()))
    }

    fn launch(jetstream: bool, config: Option<String>) -> Self {
        let dir = tempfile::tempdir().expect("create a NATS data directory");
        let mut server = Self { port: free_port(), jetstream, config, dir, service: None, starts: 0 };
        server.resume();
        server
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut service) = self.service.take() {
            service.kill();
        }
    }

    /// Starts the server again on the same port (and the same JetStream store).
    pub fn resume(&mut self) {
        assert!(self.service.is_none(), "NATS server is already running");
        self.starts += 1;
        let binary = nats_server_binary();
        let port = self.port.to_string();
        let store = self.dir.path().join("store");
        let store = store.to_str().expect("temp paths are UTF-8").to_owned();
        let mut args = vec!["-a", "127.0.0.1", "-p", port.as_str()];
        let config_path = self.dir.path().join("nats.conf");
        let config_arg;
        if let Some(config) = &self.config {
            let text = config.replace("{port}", &port).replace("{dir}", &self.dir.path().display().to_string());
            std::fs::write(&config_path, text).expect("write the NATS config");
            config_arg = config_path.display().to_string();
            args.extend(["-c", config_arg.as_str()]);
        }
        if self.jetstream {
            args.extend(["-js", "-sd", store.as_str()]);
        }
        let name = format!("nats-server-{}", self.starts);
        let mut service = Service::spawn(&name, &binary, &args, &[], self.dir.path());
        // An open port alone proves nothing: tests run side by side, and another test's process may have taken the
        // port between `free_port` and this start. Only the server's own "ready" line says the port is its own.
        let ready = wait_until(Duration::from_secs(10), || service.log().contains(READY_LINE) || !service.is_running());
        if !ready || !service.log().contains(READY_LINE) {
            let log = service.log();
            if self.starts == 1 && log.contains("address already in use") {
                // First start only: nothing depends on the port yet, so take another one.
                self.starts = 0;
                self.port = free_port();
                return self.resume();
            }
            panic!("nats-server did not start on 127.0.0.1:{}:\n{log}", self.port);
        }
        self.service = Some(service);
    }

    /// Stops and starts again.
    pub fn restart(&mut self) {
        self.stop();
        self.resume();
    }

    /// A client connected to this server.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url()).await.expect("connect a test client to NATS")
    }
}
