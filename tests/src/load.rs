//! A bounded, closed-loop HTTP/1.1 load generator for fault tests.
//!
//! The fault tests claim "no request that reached the router failed", so this generator must tell a failed
//! request from one that never started. It keeps one keep-alive connection per worker and sends with hyper's
//! `try_send_request`: when a connection dies before the request was written, hyper hands the request back, and
//! it is resent on a fresh connection without counting as a failure, as any HTTP client does. A refused connect
//! (nothing listening) is counted apart, because it is the documented end of a drain, not a failure. Every other
//! error, and every status the test did not expect, is a failure with its reason kept for the report.
//!
//! Runs are bounded by a duration and stop by themselves; they only ever target the address they are given
//! (loopback in every test).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// The router's proxy address.
    pub addr: SocketAddr,
    /// Host headers, used in turn by each worker.
    pub hosts: Vec<String>,
    /// Concurrent connections.
    pub connections: usize,
    /// How long to run.
    pub duration: Duration,
    /// Time from one request's start to the worker's next (zero: back to back). Pacing below saturation keeps
    /// the offered rate steady whatever the latency, so a fault shows up as failures rather than as a lower rate.
    pub pace: Duration,
    /// Longest a single request may take before it counts as failed.
    pub request_timeout: Duration,
}

impl LoadSpec {
    /// `connections` workers sending to `hosts` for `duration`, each starting a request every `pace`.
    pub fn new(addr: SocketAddr, hosts: &[&str], connections: usize, duration: Duration, pace: Duration) -> Self {
        Self {
            addr,
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            connections,
            duration,
            pace,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// What a run saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that were sent and then failed (reset, closed mid-answer, timed out), with reasons.
    pub failures: Vec<String>,
    /// Requests handed back unsent by a connection that had closed, and sent again.
    pub resent: u64,
    /// Connects refused (nothing listening).
    pub refused: u64,
    /// Latency of every answered request.
    pub latencies: Vec<Duration>,
}

impl LoadReport {
    /// Answered requests.
    pub fn answered(&self) -> u64 {
        self.statuses.values().sum()
    }

    /// Answers with a status other than `expected`.
    pub fn unexpected(&self, expected: u16) -> u64 {
        self.statuses.iter().filter(|(status, _)| **status != expected).map(|(_, n)| n).sum()
    }

    /// The `q` quantile (0..=1) of answered latencies.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let index = ((sorted.len() - 1) as f64 * q).round() as usize;
        sorted.get(index).copied().unwrap_or_default()
    }

    /// One line for the test log.
    pub fn summary(&self) -> String {
        format!(
            "{} answered {:?}, {} failed, {} resent unsent, {} refused, p50 {:?}, p99 {:?}{}",
            self.answered(),
            self.statuses,
            self.failures.len(),
            self.resent,
            self.refused,
            self.quantile(0.5),
            self.quantile(0.99),
            self.failures.first().map(|f| format!(", first failure: {f}")).unwrap_or_default()
        )
    }

    /// Adds another run's results to this one.
    pub fn merge(&mut self, other: Self) {
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        self.failures.extend(other.failures);
        self.resent += other.resent;
        self.refused += other.refused;
        self.latencies.extend(other.latencies);
    }
}

/// Runs `spec` to its end.
pub async fn run(spec: LoadSpec) -> LoadReport {
    let spec = Arc::new(spec);
    let deadline = Instant::now() + spec.duration;
    let total = Arc::new(Mutex::new(LoadReport::default()));
    let workers: Vec<_> = (0..spec.connections)
        .map(|index| {
            let spec = Arc::clone(&spec);
            let total = Arc::clone(&total);
            tokio::spawn(async move {
                let report = worker(&spec, index, deadline).await;
                total.lock().unwrap_or_else(PoisonError::into_inner).merge(report);
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    total.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> std::io::Result<Sender> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn worker(spec: &LoadSpec, index: usize, deadline: Instant) -> LoadReport {
    let mut report = LoadReport::default();
    let mut sender: Option<Sender> = None;
    let mut turn = index;
    let mut ticks = (!spec.pace.is_zero()).then(|| {
        let mut ticks = tokio::time::interval(spec.pace);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    while Instant::now() < deadline {
        if let Some(ticks) = ticks.as_mut() {
            ticks.tick().await;
        }
        let ready = match sender.as_mut() {
            Some(open) => open.ready().await.is_ok(),
            None => false,
        };
        if !ready {
            match connect(spec.addr).await {
                Ok(fresh) => sender = Some(fresh),
                Err(err) => {
                    if err.kind() == std::io::ErrorKind::ConnectionRefused {
                        report.refused += 1;
                    } else {
                        report.failures.push(format!("connect: {err}"));
                    }
                    sender = None;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let Some(open) = sender.as_mut() else { continue };
        let host = spec.hosts.get(turn % spec.hosts.len().max(1)).cloned().unwrap_or_default();
        turn += 1;
        let Ok(request) = Request::get("/").header("host", host.as_str()).body(Empty::new()) else {
            report.failures.push(format!("cannot build a request for host {host:?}"));
            break;
        };
        let started = Instant::now();
        match tokio::time::timeout(spec.request_timeout, open.try_send_request(request)).await {
            Err(_) => {
                report.failures.push(format!("{host}: no answer within {:?}", spec.request_timeout));
                sender = None;
            }
            Ok(Err(mut unsent)) => {
                if unsent.take_message().is_some() {
                    report.resent += 1;
                } else {
                    report.failures.push(format!("{host}: {}", unsent.error()));
                }
                sender = None;
            }
            Ok(Ok(response)) => {
                let status = response.status().as_u16();
                match response.into_body().collect().await {
                    Ok(_) => {
                        *report.statuses.entry(status).or_default() += 1;
                        report.latencies.push(started.elapsed());
                    }
                    Err(err) => {
                        report.failures.push(format!("{host}: body after {status}: {err}"));
                        sender = None;
                    }
                }
            }
        }
    }
    report
}
