//! Health probes: the IO half of health checking. Each backend gets one task that probes it on the configured
//! interval and reports the bare result; the rise/fall decision is [`crate::health`]'s.
//!
//! Probes go straight to the backend's `host:port` from the LB, the same path forwarded traffic takes, so a cell
//! that cannot be reached from the LB is taken out even if it looks fine from elsewhere. A backend shared by
//! several VIPs is probed once.

use crate::model::DestinationKey;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use switchyard_config::lb::{HealthCheckConfig, HealthCheckKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One probe result.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// The backend probed.
    pub backend: DestinationKey,
    /// `Ok` or why it failed.
    pub outcome: Result<(), String>,
}

/// Probes `backend` once.
pub async fn probe(check: &HealthCheckConfig, backend: DestinationKey) -> Result<(), String> {
    let address = SocketAddr::new(backend.address, backend.port);
    let attempt = async {
        let mut stream = TcpStream::connect(address).await.map_err(|e| format!("connect: {e}"))?;
        if check.kind != HealthCheckKind::Http {
            return Ok(());
        }
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: switchyard-lb-health\r\nConnection: close\r\n\r\n",
            check.path
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
        let mut head = Vec::with_capacity(64);
        let mut buffer = [0u8; 64];
        while head.len() < 12 {
            let read = stream.read(&mut buffer).await.map_err(|e| format!("receive: {e}"))?;
            if read == 0 {
                return Err("the backend closed the connection before answering".to_owned());
            }
            head.extend_from_slice(buffer.get(..read).unwrap_or_default());
        }
        let status = status_code(&head).ok_or_else(|| "the answer is not HTTP".to_owned())?;
        if status == check.expect_status { Ok(()) } else { Err(format!("answered {status}, expected {}", check.expect_status)) }
    };
    match tokio::time::timeout(check.timeout, attempt).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("no answer within {}", switchyard_config::duration::format(check.timeout))),
    }
}

/// The status code of an HTTP/1.x status line.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head.get(..12)?).ok()?;
    if !line.starts_with("HTTP/1.") {
        return None;
    }
    line.get(9..12)?.parse().ok()
}

/// The probe tasks, one per backend.
pub struct Prober {
    check: HealthCheckConfig,
    results: mpsc::UnboundedSender<ProbeResult>,
    tasks: BTreeMap<DestinationKey, JoinHandle<()>>,
}

impl Prober {
    /// A prober that reports to `results`.
    pub fn new(check: HealthCheckConfig, results: mpsc::UnboundedSender<ProbeResult>) -> Self {
        Self { check, results, tasks: BTreeMap::new() }
    }

    /// Changes the check; every probe restarts with it.
    pub fn set_check(&mut self, check: HealthCheckConfig) {
        if check != self.check {
            self.check = check;
            for (_, task) in std::mem::take(&mut self.tasks) {
                task.abort();
            }
        }
    }

    /// Whether backends are probed at all.
    pub fn is_active(&self) -> bool {
        self.check.kind != HealthCheckKind::None
    }

    /// Probes exactly `backends`: starts what is new, stops what is gone.
    pub fn track<'a>(&mut self, backends: impl IntoIterator<Item = &'a DestinationKey>) {
        if self.check.kind == HealthCheckKind::None {
            return;
        }
        let wanted: std::collections::BTreeSet<DestinationKey> = backends.into_iter().copied().collect();
        self.tasks.retain(|backend, task| {
            let keep = wanted.contains(backend);
            if !keep {
                task.abort();
            }
            keep
        });
        for backend in wanted {
            if self.tasks.contains_key(&backend) {
                continue;
            }
            let check = self.check.clone();
            let results = self.results.clone();
            let task = tokio::spawn(async move {
                // Spread first probes over a little time so thousands of backends do not all connect at once.
                let spread = Duration::from_millis(u64::from(backend.port % 97) * 2).min(check.interval);
                tokio::time::sleep(spread).await;
                let mut ticks = tokio::time::interval(check.interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    let outcome = probe(&check, backend).await;
                    if results.send(ProbeResult { backend, outcome }).is_err() {
                        return;
                    }
                }
            });
            self.tasks.insert(backend, task);
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn check(kind: HealthCheckKind) -> HealthCheckConfig {
        HealthCheckConfig { kind, timeout: Duration::from_millis(500), ..HealthCheckConfig::default() }
    }

    fn key(address: SocketAddr) -> DestinationKey {
        DestinationKey { address: address.ip(), port: address.port() }
    }

    async fn http_server(answer: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 512];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(answer).await;
            }
        });
        address
    }

    #[tokio::test]
    async fn tcp_probes_need_a_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        assert_eq!(probe(&check(HealthCheckKind::Tcp), key(address)).await, Ok(()));
        drop(listener);
        let err = probe(&check(HealthCheckKind::Tcp), key(address)).await.unwrap_err();
        assert!(err.starts_with("connect:"), "{err}");
    }

    #[tokio::test]
    async fn http_probes_check_the_status() {
        let good = http_server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(probe(&check(HealthCheckKind::Http), key(good)).await, Ok(()));
        let bad = http_server(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        assert_eq!(probe(&check(HealthCheckKind::Http), key(bad)).await, Err("answered 503, expected 200".to_owned()));
        let garbage = http_server(b"SSH-2.0-OpenSSH_9.2p1\r\n").await;
        assert_eq!(probe(&check(HealthCheckKind::Http), key(garbage)).await, Err("the answer is not HTTP".to_owned()));
    }

    #[tokio::test]
    async fn a_silent_backend_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let err = probe(&check(HealthCheckKind::Http), key(address)).await.unwrap_err();
        assert_eq!(err, "no answer within 500ms");
        drop(listener);
    }

    #[tokio::test]
    async fn the_prober_reports_for_each_tracked_backend() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = key(listener.local_addr().unwrap());
        let down = DestinationKey { address: up.address, port: 1 };
        let (sender, mut receiver) = mpsc::unbounded_channel();
        let mut prober = Prober::new(HealthCheckConfig { interval: Duration::from_millis(50), ..check(HealthCheckKind::Tcp) }, sender);
        prober.track([&up, &down]);
        let mut seen = BTreeMap::new();
        while seen.len() < 2 {
            let result = receiver.recv().await.unwrap();
            seen.insert(result.backend, result.outcome.is_ok());
        }
        assert_eq!(seen.get(&up), Some(&true));
        assert_eq!(seen.get(&down), Some(&false));
        prober.track([]);
        assert!(prober.tasks.is_empty());
    }
}
