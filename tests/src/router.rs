//! Running the real `router` binary in a test, with a config the test shapes.

use crate::http::{self, Answer};
use crate::nats::NatsServer;
use crate::process::{Service, binary, free_port, wait_until};
pub use crate::status::status_code;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A running router.
pub struct RouterProcess {
    /// The process (killed on drop, log printed if the test fails).
    pub service: Service,
    /// Proxy port.
    pub port: u16,
    /// Status port.
    pub status_port: u16,
    /// Where its access log goes.
    pub access_log: PathBuf,
    /// HTTPS port, when the test's overrides set `ssl_port`.
    pub ssl_port: Option<u16>,
    keys: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

/// Status credentials every test router uses.
pub const STATUS_USER: &str = "admin";
/// Status password every test router uses.
pub const STATUS_PASS: &str = "secret";

impl RouterProcess {
    /// Starts a router on `nats` with test defaults (no start delay, access log on) and waits until it serves
    /// and has subscribed to registrations (it announces `router.start` only after subscribing).
    /// `overrides` replace or add top-level YAML keys, e.g. `("droplet_stale_threshold", "2s")`.
    pub fn start(nats: &NatsServer, overrides: &[(&str, &str)]) -> Self {
        Self::start_with_env(nats, overrides, &[])
    }

    /// [`RouterProcess::start`] with extra environment variables for the process.
    pub fn start_with_env(nats: &NatsServer, overrides: &[(&str, &str)], envs: &[(&str, &str)]) -> Self {
        let router = Self::spawn_with_env(nats, overrides, envs);
        let health = SocketAddr::from(([127, 0, 0, 1], router.status_port));
        let healthy = wait_until(Duration::from_secs(15), || status_code(health, "/health") == Some(200));
        assert!(healthy, "router did not become healthy:\n{}", router.service.log());
        let subscribed = wait_until(Duration::from_secs(15), || router.service.log().contains("published router.start"));
        assert!(subscribed, "router did not subscribe to NATS:\n{}", router.service.log());
        router
    }

    /// Starts a router without waiting for it (for tests of start-up itself).
    pub fn spawn(nats: &NatsServer, overrides: &[(&str, &str)]) -> Self {
        Self::spawn_with_env(nats, overrides, &[])
    }

    fn spawn_with_env(nats: &NatsServer, overrides: &[(&str, &str)], envs: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("create a router directory");
        let port = free_port();
        let status_port = free_port();
        let access_log = dir.path().join("access.log");
        let mut keys: Vec<(String, String)> = vec![
            ("port".into(), port.to_string()),
            ("status".into(), format!("{{host: 127.0.0.1, port: {status_port}, user: {STATUS_USER}, pass: {STATUS_PASS}}}")),
            ("nats".into(), format!("{{hosts: [{{hostname: 127.0.0.1, port: {}}}]}}", nats.port())),
            ("start_response_delay_interval".into(), "0s".into()),
            ("access_log".into(), format!("{{file: {}}}", access_log.display())),
            ("worker_threads".into(), "2".into()),
        ];
        apply_overrides(&mut keys, overrides);
        let ssl_port = keys.iter().find(|(k, _)| k == "ssl_port").and_then(|(_, v)| v.parse().ok());
        let config = write_config(dir.path(), &keys);
        let config_arg = config.display().to_string();
        let service = Service::spawn("router", &binary("router"), &["--config", &config_arg], envs, dir.path());
        Self { service, port, status_port, access_log, ssl_port, keys, dir }
    }

    /// Rewrites the config file with further overrides (the router picks TLS changes up without a restart).
    pub fn rewrite_config(&self, overrides: &[(&str, &str)]) {
        let mut keys = self.keys.clone();
        apply_overrides(&mut keys, overrides);
        write_config(self.dir.path(), &keys);
    }

    /// The HTTPS address (the test must have set `ssl_port`).
    pub fn tls_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ssl_port.expect("the router was started with an ssl_port override")))
    }

    /// The proxy address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The status address.
    pub fn status_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.status_port))
    }

    /// A scratch directory that lives as long as the router.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// `GET http://<host><path>` through the router.
    pub async fn get(&self, host: &str, path: &str) -> Answer {
        http::get(self.addr(), host, path).await
    }

    /// `/routes` as JSON.
    pub async fn routes(&self) -> serde_json::Value {
        let auth = format!("Basic {}", base64_encode(&format!("{STATUS_USER}:{STATUS_PASS}")));
        let answer = http::get_with(self.status_addr(), "status", "/routes", &[("authorization", &auth)]).await;
        assert_eq!(answer.status, 200, "/routes answered {}: {}", answer.status, answer.text());
        serde_json::from_slice(&answer.body).expect("/routes is JSON")
    }

    /// `/metrics` text.
    pub async fn metrics(&self) -> String {
        http::get(self.status_addr(), "status", "/metrics").await.text()
    }

    /// Waits until a metric line starting with `prefix` reaches at least `at_least`.
    pub async fn wait_metric(&self, prefix: &str, at_least: f64) -> bool {
        for _ in 0..250 {
            if metric_value(&self.metrics().await, prefix).is_some_and(|v| v >= at_least) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Polls `GET host/path` until it answers `status`.
    pub async fn wait_for_status(&self, host: &str, path: &str, status: u16, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.get(host, path).await.status == status {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// The access log so far (lines reach the file within about 100ms of a response).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(&self.access_log).unwrap_or_default()
    }
}

fn apply_overrides(keys: &mut Vec<(String, String)>, overrides: &[(&str, &str)]) {
    for (key, value) in overrides {
        match keys.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = (*value).to_owned(),
            None => keys.push(((*key).to_owned(), (*value).to_owned())),
        }
    }
}

/// Writes the config atomically (a rename), so a router watching the file never reads half of it.
fn write_config(dir: &std::path::Path, keys: &[(String, String)]) -> PathBuf {
    let yaml: String = keys.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
    let config = dir.join("router.yml");
    let partial = dir.join("router.yml.partial");
    std::fs::write(&partial, yaml).expect("write the router config");
    std::fs::rename(&partial, &config).expect("move the router config into place");
    config
}

/// The value of the first metric line starting with `prefix` (name plus optional labels).
pub fn metric_value(metrics: &str, prefix: &str) -> Option<f64> {
    metrics.lines().find(|line| line.starts_with(prefix)).and_then(|line| line.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

fn base64_encode(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Publishes `payload` on `subject` and flushes, so it is on the server when this returns.
pub async fn publish(client: &async_nats::Client, subject: &str, payload: &serde_json::Value) {
    client.publish(subject.to_owned(), serde_json::to_vec(payload).expect("JSON encodes").into()).await.expect("publish to NATS");
    client.flush().await.expect("flush NATS");
}

/// A `router.register` payload for a loopback backend.
pub fn registration(port: u16, uris: &[&str]) -> serde_json::Value {
    serde_json::json!({ "host": "127.0.0.1", "port": port, "uris": uris })
}

impl RouterProcess {
    /// Waits until `/routes` lists `uri`.
    pub async fn routes_eventually_have(&self, uri: &str) -> bool {
        for _ in 0..250 {
            if self.routes().await.get(uri).is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}
