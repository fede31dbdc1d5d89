//! Running the real `route-registrar` binary in a test, and watching what it puts on the bus.
//!
//! The registrar's contract is the sequence of messages it publishes over time, so tests record every
//! `router.*` / `lb.*` announcement with its arrival time and assert on that timeline.

use crate::http;
use crate::nats::NatsServer;
use crate::process::{Service, binary, free_port, wait_for_port};
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running registrar.
pub struct RegistrarProcess {
    /// The process (killed on drop, log printed if the test fails).
    pub service: Service,
    /// The config file it was started with.
    pub config: PathBuf,
    /// Its status listener port, when the config has one.
    pub status_port: Option<u16>,
    dir: tempfile::TempDir,
}

impl RegistrarProcess {
    /// Starts a registrar on `nats` announcing as `127.0.0.1`, with a status listener, and `extra` YAML appended
    /// (typically `routes:` and per-test keys). Waits until its status listener answers.
    pub fn start(nats: &NatsServer, extra: &str) -> Self {
        let status_port = free_port();
        let config = format!(
            "message_bus_servers: [{{host: \"127.0.0.1:{}\"}}]\nhost: 127.0.0.1\nstatus: {{address: \"127.0.0.1:{status_port}\"}}\n{extra}",
            nats.port()
        );
        let registrar = Self::spawn(&config, "registrar.yml", "--config");
        let status = SocketAddr::from(([127, 0, 0, 1], status_port));
        assert!(wait_for_port(status, Duration::from_secs(10)), "registrar status listener did not come up:\n{}", registrar.service.log());
        Self { status_port: Some(status_port), ..registrar }
    }

    /// Writes `config` as `file_name` in a fresh directory and starts the registrar with `flag FILE`, without
    /// waiting for anything.
    pub fn spawn(config: &str, file_name: &str, flag: &str) -> Self {
        let dir = tempfile::tempdir().expect("create a registrar directory");
        let path = dir.path().join(file_name);
        std::fs::write(&path, config).expect("write the registrar config");
        let path_arg = path.display().to_string();
        let service = Service::spawn("route-registrar", &binary("route-registrar"), &[flag, &path_arg], &[], dir.path());
        Self { service, config: path, status_port: None, dir }
    }

    /// A scratch directory that lives as long as the registrar.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `/metrics` of the status listener.
    pub async fn metrics(&self) -> String {
        let port = self.status_port.expect("this registrar was started with a status listener");
        http::get(SocketAddr::from(([127, 0, 0, 1], port)), "status", "/metrics").await.text()
    }
}

/// Writes an executable `/bin/sh` script into `dir`.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write a script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("make the script executable");
    path
}

/// One message seen on the bus.
#[derive(Debug, Clone)]
pub struct BusMessage {
    /// When the recorder received it.
    pub at: Instant,
    /// Its subject.
    pub subject: String,
    /// Its payload as JSON (`null` if it was not JSON).
    pub body: serde_json::Value,
}

impl BusMessage {
    /// A string field of the payload.
    pub fn text(&self, field: &str) -> &str {
        self.body.get(field).and_then(serde_json::Value::as_str).unwrap_or_default()
    }

    /// An integer field of the payload.
    pub fn number(&self, field: &str) -> u64 {
        self.body.get(field).and_then(serde_json::Value::as_u64).unwrap_or_default()
    }
}

/// Records every `router.register`, `router.unregister`, `lb.register.<vip>` and `lb.unregister.<vip>` (and the
/// unscoped `lb.*` subjects) on a NATS server.
pub struct BusRecorder {
    messages: Arc<Mutex<Vec<BusMessage>>>,
    task: tokio::task::JoinHandle<()>,
    /// The recorder's client, also usable to publish.
    pub client: async_nats::Client,
}

/// The subjects a registrar publishes on.
pub const REGISTRAR_SUBJECTS: [&str; 6] =
    ["router.register", "router.unregister", "lb.register", "lb.unregister", "lb.register.*", "lb.unregister.*"];

impl BusRecorder {
    /// Subscribes (and flushes, so nothing published after this returns is missed).
    pub async fn start(nats: &NatsServer) -> Self {
        Self::attach(nats.client().await).await
    }

    /// Records through `client` (for servers that need credentials).
    pub async fn attach(client: async_nats::Client) -> Self {
        let messages = Arc::new(Mutex::new(Vec::new()));
        let mut streams = Vec::new();
        for subject in REGISTRAR_SUBJECTS {
            streams.push(client.subscribe(subject).await.expect("subscribe on the test NATS server"));
        }
        client.flush().await.expect("flush the subscriptions");
        let sink = Arc::clone(&messages);
        let task = tokio::spawn(async move {
            let mut all = futures_util::stream::select_all(streams);
            while let Some(message) = all.next().await {
                let body = serde_json::from_slice(&message.payload).unwrap_or(serde_json::Value::Null);
                let record = BusMessage { at: Instant::now(), subject: message.subject.to_string(), body };
                sink.lock().expect("recorder lock").push(record);
            }
        });
        Self { messages, task, client }
    }

    /// Everything recorded so far.
    pub fn messages(&self) -> Vec<BusMessage> {
        self.messages.lock().expect("recorder lock").clone()
    }

    /// Everything recorded so far on `subject`.
    pub fn on(&self, subject: &str) -> Vec<BusMessage> {
        self.messages().into_iter().filter(|m| m.subject == subject).collect()
    }

    /// Publishes `payload` on `subject` and flushes, so it is on the server when this returns.
    pub async fn publish(&self, subject: &str, payload: &serde_json::Value) {
        let bytes = serde_json::to_vec(payload).expect("JSON encodes");
        self.client.publish(subject.to_owned(), bytes.into()).await.expect("publish to NATS");
        self.client.flush().await.expect("flush NATS");
    }

    /// Forgets what was recorded.
    pub fn clear(&self) {
        self.messages.lock().expect("recorder lock").clear();
    }

    /// Waits up to `timeout` until `done` holds for the recording; fails the test with the recording otherwise.
    pub async fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&[BusMessage]) -> bool) -> Vec<BusMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if done(&messages) {
                return messages;
            }
            if Instant::now() >= deadline {
                panic!("timed out after {timeout:?} waiting for {what}; recorded:\n{}", describe(&messages));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for BusRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The recording as lines `+<ms> <subject> <payload>`, relative to the first message.
pub fn describe(messages: &[BusMessage]) -> String {
    let Some(first) = messages.first() else { return "  (nothing)".to_owned() };
    messages.iter().map(|m| format!("  +{}ms {} {}\n", m.at.duration_since(first.at).as_millis(), m.subject, m.body)).collect()
}

/// The value of the first metric line starting with `prefix` (name plus labels).
pub fn metric(metrics: &str, prefix: &str) -> Option<f64> {
    metrics.lines().find(|line| line.starts_with(prefix)).and_then(|line| line.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

/// PEM files for a test CA, a server certificate for `127.0.0.1` and a client certificate, all signed by the CA.
pub struct TestCertificates {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server's certificate and key.
    pub server: (PathBuf, PathBuf),
    /// The client's certificate and key.
    pub client: (PathBuf, PathBuf),
}

/// Makes [`TestCertificates`] in `dir` with the `openssl` command.
pub fn make_certificates(dir: &Path) -> TestCertificates {
    let run = |args: &[&str]| {
        let output = std::process::Command::new("openssl").args(args).current_dir(dir).output().unwrap_or_else(|err| {
            panic!("openssl is needed to make test certificates ({err}); run `apt-get install -y openssl` (scripts/test installs it)")
        });
        assert!(output.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    };
    let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[&["req", "-x509"][..], &key[..], &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=switchyard test CA"]].concat());
    for (name, extension) in [("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"), ("client", "extendedKeyUsage=clientAuth")] {
        std::fs::write(dir.join(format!("{name}.ext")), extension).expect("write an extension file");
        run(&[&["req"][..], &key[..], &["-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr"), "-subj", &format!("/CN={name}")]].concat());
        run(&[
            "x509", "-req", "-in", &format!("{name}.csr"), "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-out", &format!("{name}.pem"), "-extfile", &format!("{name}.ext"),
        ]);
    }
    TestCertificates {
        ca: dir.join("ca.pem"),
        server: (dir.join("server.pem"), dir.join("server.key")),
        client: (dir.join("client.pem"), dir.join("client.key")),
    }
}
