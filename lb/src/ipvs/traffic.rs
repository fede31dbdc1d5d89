//! What IPVS says about the traffic it carries, kept for `/vips` and `/metrics`.
//!
//! The kernel counts connections, packets and bytes per service and per real server. Every observe of the
//! dataplane leaves its reading here; the sync loop reads the kernel only now and then, so a scrape or a `/vips`
//! request older than [`FRESH_FOR`] re-reads it on a connection of its own (at most once per [`FRESH_FOR`], however
//! many scrapers there are). The
//! Prometheus collector turns the reading into metrics at scrape time, so a VIP that disappears stops being
//! exported without anyone removing label sets by hand. The netlink request counters prove what an update cost:
//! a one-backend change must show up as one write. Per backend, only what an operator acts on is exported
//! (connections, weight, scheduled connections, bytes): at 10,000 backends every extra family is 10,000 series.

use super::client::IpvsClient;
use super::dataplane::read_kernel;
use super::objects::Stats;
use crate::model::{DestinationKey, ServiceKey};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How old a reading may be before a scrape or `/vips` reads the kernel again.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// Counters of one real server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DestinationTraffic {
    /// Weight as the kernel holds it.
    pub weight: u32,
    /// Established connections.
    pub active_connections: u32,
    /// Other connections (closing, or UDP).
    pub inactive_connections: u32,
    /// Cumulative counters.
    pub stats: Stats,
}

/// Counters of one service and its real servers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceTraffic {
    /// Service totals (including real servers since removed).
    pub stats: Stats,
    /// Per real server.
    pub destinations: BTreeMap<DestinationKey, DestinationTraffic>,
}

/// Whether a netlink request read the kernel or changed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Dumps and lookups.
    Read,
    /// Changes.
    Write,
}

#[derive(Default)]
struct Shared {
    services: Mutex<BTreeMap<ServiceKey, ServiceTraffic>>,
    reads: AtomicU64,
    writes: AtomicU64,
    reader: Mutex<Reader>,
}

/// The status side's own view of the kernel: a connection, and when the reading was last refreshed.
#[derive(Default)]
struct Reader {
    client: Option<IpvsClient>,
    refreshed: Option<Instant>,
}

/// The latest IPVS reading, shared between the dataplane (which writes it) and the status listener (which reads it).
#[derive(Clone, Default)]
pub struct Traffic {
    shared: Arc<Shared>,
}

impl Traffic {
    /// Replaces the reading with a fresh one.
    pub fn replace(&self, services: BTreeMap<ServiceKey, ServiceTraffic>) {
        *self.shared.services.lock().unwrap_or_else(PoisonError::into_inner) = services;
        self.shared.reader.lock().unwrap_or_else(PoisonError::into_inner).refreshed = Some(Instant::now());
    }

    /// The reading of every service, refreshed first if it is older than [`FRESH_FOR`].
    pub fn services(&self) -> BTreeMap<ServiceKey, ServiceTraffic> {
        self.refresh();
        self.shared.services.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The reading of one service, refreshed first if it is older than [`FRESH_FOR`].
    pub fn service(&self, key: &ServiceKey) -> Option<ServiceTraffic> {
        self.refresh();
        self.shared.services.lock().unwrap_or_else(PoisonError::into_inner).get(key).cloned()
    }

    /// Reads the kernel again unless the reading is fresh. A failure keeps the old reading and is logged: counters
    /// a little stale are better than a status page that fails.
    fn refresh(&self) {
        let mut reader = self.shared.reader.lock().unwrap_or_else(PoisonError::into_inner);
        if reader.refreshed.is_some_and(|at| at.elapsed() < FRESH_FOR) {
            return;
        }
        reader.refreshed = Some(Instant::now());
        if reader.client.is_none() {
            match IpvsClient::connect() {
                Ok(client) => reader.client = Some(client),
                Err(error) => {
                    tracing::debug!(%error, "could not read IPVS counters");
                    return;
                }
            }
        }
        let Some(client) = reader.client.as_mut() else { return };
        let start = client.requests_sent();
        let reading = read_kernel(client);
        self.count_requests(Purpose::Read, client.requests_sent() - start);
        match reading {
            Ok((_, services)) => *self.shared.services.lock().unwrap_or_else(PoisonError::into_inner) = services,
            Err(error) => {
                tracing::debug!(%error, "could not read IPVS counters");
                reader.client = None;
            }
        }
    }

    /// Counts netlink requests sent.
    pub fn count_requests(&self, purpose: Purpose, requests: u64) {
        let counter = match purpose {
            Purpose::Read => &self.shared.reads,
            Purpose::Write => &self.shared.writes,
        };
        counter.fetch_add(requests, Ordering::Relaxed);
    }

    /// Netlink requests sent so far for `purpose`.
    pub fn requests(&self, purpose: Purpose) -> u64 {
        match purpose {
            Purpose::Read => self.shared.reads.load(Ordering::Relaxed),
            Purpose::Write => self.shared.writes.load(Ordering::Relaxed),
        }
    }

    /// A Prometheus collector over this reading, named under `switchyard_<program>_ipvs_`.
    pub fn collector(&self, program: &str) -> TrafficCollector {
        TrafficCollector::new(self.clone(), program)
    }
}

/// Exports the latest IPVS reading as Prometheus metrics.
pub struct TrafficCollector {
    traffic: Traffic,
    /// Serialises scrapes: each one resets and refills the vectors below.
    families: Mutex<Families>,
    descs: Vec<Desc>,
}

struct Families {
    requests: IntCounterVec,
    service_connections: IntCounterVec,
    service_packets: IntCounterVec,
    service_bytes: IntCounterVec,
    connections: IntGaugeVec,
    weight: IntGaugeVec,
    scheduled: IntCounterVec,
    bytes: IntCounterVec,
}

impl TrafficCollector {
    fn new(traffic: Traffic, program: &str) -> Self {
        let namespace = format!("{}_{program}", switchyard_runtime::metrics::NAMESPACE);
        let opts = |name: &str, help: &str| Opts::new(format!("ipvs_{name}"), help).namespace(namespace.clone());
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(opts(name, help), labels).unwrap_or_else(|_| switchyard_runtime::metrics::invalid_metric(name))
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(opts(name, help), labels).unwrap_or_else(|_| switchyard_runtime::metrics::invalid_metric(name))
        };
        let families = Families {
            requests: counter("netlink_requests_total", "IPVS netlink requests sent, by purpose (read, write).", &["purpose"]),
            service_connections: counter("service_connections_total", "Connections IPVS scheduled for a VIP.", &["vip"]),
            service_packets: counter("service_packets_total", "Packets through a VIP, by direction (in from clients, out to them).", &["vip", "direction"]),
            service_bytes: counter("service_bytes_total", "Bytes through a VIP, by direction.", &["vip", "direction"]),
            connections: gauge("backend_connections", "Connections IPVS holds to a backend, by state (active, inactive).", &["vip", "backend", "state"]),
            weight: gauge("backend_weight", "Backend weight in the kernel; 0 while draining.", &["vip", "backend"]),
            scheduled: counter("backend_connections_total", "Connections IPVS scheduled to a backend.", &["vip", "backend"]),
            bytes: counter("backend_bytes_total", "Bytes through a backend, by direction.", &["vip", "backend", "direction"]),
        };
        let descs = families.collectors().iter().flat_map(|c| c.desc().into_iter().cloned()).collect();
        Self { traffic, families: Mutex::new(families), descs }
    }
}

impl Families {
    fn collectors(&self) -> [&dyn Collector; 8] {
        [
            &self.requests,
            &self.service_connections,
            &self.service_packets,
            &self.service_bytes,
            &self.connections,
            &self.weight,
            &self.scheduled,
            &self.bytes,
        ]
    }

    fn reset(&self) {
        for vec in [&self.requests, &self.service_connections, &self.service_packets, &self.service_bytes, &self.scheduled, &self.bytes] {
            vec.reset();
        }
        self.connections.reset();
        self.weight.reset();
    }
}

fn gauge_value(value: u32) -> i64 {
    i64::from(value)
}

impl Collector for TrafficCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        families.reset();
        families.requests.with_label_values(&["read"]).inc_by(self.traffic.requests(Purpose::Read));
        families.requests.with_label_values(&["write"]).inc_by(self.traffic.requests(Purpose::Write));
        for (key, service) in self.traffic.services() {
            let vip = key.to_string();
            let stats = &service.stats;
            families.service_connections.with_label_values(&[&vip]).inc_by(stats.connections);
            families.service_packets.with_label_values(&[&vip, "in"]).inc_by(stats.packets_in);
            families.service_packets.with_label_values(&[&vip, "out"]).inc_by(stats.packets_out);
            families.service_bytes.with_label_values(&[&vip, "in"]).inc_by(stats.bytes_in);
            families.service_bytes.with_label_values(&[&vip, "out"]).inc_by(stats.bytes_out);
            for (destination, traffic) in &service.destinations {
                let backend = destination.to_string();
                let labels = [vip.as_str(), backend.as_str()];
                families.connections.with_label_values(&[&vip, &backend, "active"]).set(gauge_value(traffic.active_connections));
                families.connections.with_label_values(&[&vip, &backend, "inactive"]).set(gauge_value(traffic.inactive_connections));
                families.weight.with_label_values(&labels).set(gauge_value(traffic.weight));
                families.scheduled.with_label_values(&labels).inc_by(traffic.stats.connections);
                families.bytes.with_label_values(&[&vip, &backend, "in"]).inc_by(traffic.stats.bytes_in);
                families.bytes.with_label_values(&[&vip, &backend, "out"]).inc_by(traffic.stats.bytes_out);
            }
        }
        families.collectors().iter().flat_map(|c| c.collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use prometheus::{Encoder, Registry, TextEncoder};
    use std::net::IpAddr;

    fn scrape(collector: TrafficCollector) -> String {
        let registry = Registry::new();
        registry.register(Box::new(collector)).unwrap();
        let mut out = Vec::new();
        TextEncoder::new().encode(&registry.gather(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn exports_the_latest_reading() {
        let traffic = Traffic::default();
        let vip = ServiceKey { address: IpAddr::from([198, 18, 2, 10]), port: 80, protocol: Protocol::Tcp };
        let cell = DestinationKey { address: IpAddr::from([198, 18, 1, 2]), port: 10001 };
        let destination = DestinationTraffic {
            weight: 2,
            active_connections: 3,
            inactive_connections: 1,
            stats: Stats { connections: 9, bytes_in: 100, bytes_out: 2000, ..Stats::default() },
        };
        let service = ServiceTraffic { stats: Stats { connections: 12, ..Stats::default() }, destinations: [(cell, destination)].into() };
        traffic.replace([(vip, service)].into());
        traffic.count_requests(Purpose::Write, 1);
        traffic.count_requests(Purpose::Read, 5);

        let text = scrape(traffic.collector("lb"));
        for line in [
            r#"switchyard_lb_ipvs_netlink_requests_total{purpose="write"} 1"#,
            r#"switchyard_lb_ipvs_netlink_requests_total{purpose="read"} 5"#,
            r#"switchyard_lb_ipvs_service_connections_total{vip="tcp/198.18.2.10:80"} 12"#,
            r#"switchyard_lb_ipvs_backend_connections{backend="198.18.1.2:10001",state="active",vip="tcp/198.18.2.10:80"} 3"#,
            r#"switchyard_lb_ipvs_backend_weight{backend="198.18.1.2:10001",vip="tcp/198.18.2.10:80"} 2"#,
            r#"switchyard_lb_ipvs_backend_bytes_total{backend="198.18.1.2:10001",direction="out",vip="tcp/198.18.2.10:80"} 2000"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }

        // A VIP that is gone is no longer exported.
        traffic.replace(BTreeMap::new());
        let text = scrape(traffic.collector("lb"));
        assert!(!text.contains("198.18.2.10"), "{text}");
    }
}
