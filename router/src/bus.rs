//! The NATS edge: registrations in, `router.start` out.
//!
//! One task owns the [`Registry`] and is the only writer of the route table. It takes every message that is
//! already waiting, applies them in order, and publishes one new table version for the batch, so a flood of
//! registrations costs one pointer swap per batch while a single message is routable at once. The same task
//! prunes on a timer and reacts to the link: after every (re)connect it announces itself with `router.start`,
//! and with `suspend_pruning_if_nats_unavailable` it neither prunes while disconnected nor lets routes expire
//! right after reconnecting. It also applies the removals the proxy asks for (an endpoint whose TLS certificate
//! names someone else), so the proxy stays a reader.

use crate::clock::Clock;
use crate::metrics::RouterMetrics;
use crate::registry::{Outcome, Registry, Removal};
use crate::table::RouteTable;
use arc_swap::ArcSwap;
use async_nats::{Client, Message, Subject, Subscriber};
use futures_util::StreamExt;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use switchyard_config::messages::{MessageLimits, Registration, RouterStart, SUBJECT_GREET, SUBJECT_REGISTER, SUBJECT_START, SUBJECT_UNREGISTER};
use switchyard_runtime::nats::LinkState;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Most messages applied before a new table version is published, so a flood still makes steady progress.
const MAX_BATCH: usize = 4096;

/// Every subject the router reads, in one subscription. NATS keeps one publisher's messages in order only within a
/// subscription; with one per subject, a register and the unregister sent right after it could be applied the other
/// way round, leaving a dead endpoint routable until it expires (or a live one gone until its next refresh).
const SUBJECT_INBOUND: &str = "router.*";

/// How the bus task behaves.
#[derive(Debug, Clone)]
pub struct BusSettings {
    /// Checks applied to every registration.
    pub limits: MessageLimits,
    /// How often pruning runs.
    pub prune_interval: Duration,
    /// Skip pruning while NATS is down, and refresh everything when it returns.
    pub suspend_pruning: bool,
    /// The `router.start` payload.
    pub start: RouterStart,
}

/// Why the bus could not start.
#[derive(Debug, thiserror::Error)]
#[error("could not subscribe to `{subject}` on NATS: {reason}")]
pub struct BusError {
    subject: &'static str,
    reason: String,
}

/// The router's address as emitters should see it: the local address of a route towards the first NATS server
/// (no packet is sent), or loopback when there is none.
pub fn local_ip(nats_host: &str, nats_port: u16) -> IpAddr {
    let probe = || -> std::io::Result<IpAddr> {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        socket.connect((nats_host, nats_port))?;
        Ok(socket.local_addr()?.ip())
    };
    probe().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// Everything the bus task works with.
pub struct Bus {
    /// The connected client.
    pub client: Client,
    /// Connection state.
    pub link: watch::Receiver<LinkState>,
    /// The single writer of routes.
    pub registry: Registry,
    /// Where table versions are published.
    pub table: Arc<ArcSwap<RouteTable>>,
    /// Behaviour.
    pub settings: BusSettings,
    /// Metrics.
    pub metrics: RouterMetrics,
    /// The clock the registry's `now` comes from.
    pub clock: Clock,
    /// Endpoints the proxy found to fail the backend identity check.
    pub removals: mpsc::Receiver<Removal>,
}

enum Action {
    Register,
    Unregister,
}

/// Rate-limits warnings about rejected messages to one a second, with a count of the ones not shown.
struct Throttle {
    last_ms: u64,
    suppressed: u64,
}

impl Throttle {
    fn allow(&mut self, now_ms: u64) -> Option<u64> {
        if self.last_ms != 0 && now_ms.saturating_sub(self.last_ms) < 1000 {
            self.suppressed += 1;
            return None;
        }
        self.last_ms = now_ms;
        Some(std::mem::take(&mut self.suppressed))
    }
}

impl Bus {
    /// Subscribes and runs until `shutdown` fires.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), BusError> {
        let mut inbound = self
            .client
            .subscribe(SUBJECT_INBOUND)
            .await
            .map_err(|e| BusError { subject: SUBJECT_INBOUND, reason: e.to_string() })?;
        let start_payload = serde_json::to_vec(&self.settings.start).unwrap_or_default();
        let mut prune = tokio::time::interval(self.settings.prune_interval);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        prune.tick().await;
        let mut announced_connects = 0;
        let mut throttle = Throttle { last_ms: 0, suppressed: 0 };
        let mut greetings = Vec::new();
        self.publish_table();
        loop {
            let link = *self.link.borrow_and_update();
            if link.connected && link.connects != announced_connects {
                if announced_connects != 0 && self.settings.suspend_pruning {
                    self.registry.refresh_all(self.clock.now_ms());
                    tracing::info!("NATS is back: every route's TTL restarts now");
                }
                announced_connects = link.connects;
                self.announce(&start_payload).await;
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                changed = self.link.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                message = inbound.next() => {
                    let Some(message) = message else { return Ok(()) };
                    self.apply_batch(message, &mut inbound, &mut throttle, &mut greetings);
                    for reply in greetings.drain(..) {
                        if let Err(err) = self.client.publish(reply, start_payload.clone().into()).await {
                            tracing::warn!(%err, "could not answer router.greet");
                        }
                    }
                }
                _ = prune.tick() => self.prune(),
                Some(removal) = self.removals.recv() => self.remove_failed(&removal),
            }
        }
    }

    async fn announce(&self, payload: &[u8]) {
        match self.client.publish(SUBJECT_START, payload.to_vec().into()).await {
            Ok(()) => tracing::info!(id = %self.settings.start.id, "published router.start"),
            Err(err) => tracing::warn!(%err, "could not publish router.start"),
        }
    }

    /// Applies `first` and every message already queued behind it, in the order they came, then publishes once.
    /// The reply subjects of greetings among them go to `greetings`, to be answered after the batch.
    fn apply_batch(&mut self, first: Message, queue: &mut Subscriber, throttle: &mut Throttle, greetings: &mut Vec<Subject>) {
        let mut total = Outcome::default();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(message) = next.take() {
            match message.subject.as_str() {
                SUBJECT_REGISTER => self.apply(&Action::Register, &message, &mut total, throttle),
                SUBJECT_UNREGISTER => self.apply(&Action::Unregister, &message, &mut total, throttle),
                SUBJECT_GREET => greetings.extend(message.reply),
                // `router.start` from this and other routers, and subjects this router does not speak.
                _ => {}
            }
            taken += 1;
            if taken < MAX_BATCH {
                next = futures_util::FutureExt::now_or_never(queue.next()).flatten();
            }
        }
        if total.changed() {
            self.publish_table();
        }
    }

    fn apply(&mut self, action: &Action, message: &Message, total: &mut Outcome, throttle: &mut Throttle) {
        let (subject, label) = match action {
            Action::Register => (SUBJECT_REGISTER, "register"),
            Action::Unregister => (SUBJECT_UNREGISTER, "unregister"),
        };
        let now_ms = self.clock.now_ms();
        let registration = match Registration::parse(&message.payload, &self.settings.limits) {
            Ok(registration) => registration,
            Err(err) => {
                self.metrics.rejected_messages.with_label_values(&[subject, err.reason()]).inc();
                if let Some(suppressed) = throttle.allow(now_ms) {
                    tracing::warn!(subject, reason = err.reason(), suppressed, "rejected a bus message: {err}");
                }
                return;
            }
        };
        let outcome = match action {
            Action::Register => match self.registry.register(&registration, now_ms) {
                Ok(outcome) => outcome,
                Err(err) => {
                    self.metrics.rejected_messages.with_label_values(&[subject, "invalid_header_value"]).inc();
                    if let Some(suppressed) = throttle.allow(now_ms) {
                        tracing::warn!(subject, suppressed, "rejected a bus message: {err}");
                    }
                    return;
                }
            },
            Action::Unregister => self.registry.unregister(&registration, now_ms),
        };
        self.metrics.registry_messages.with_label_values(&[label]).inc();
        if let Some(name) = &outcome.unknown_algorithm {
            tracing::debug!(algorithm = %name, "registration names an unknown balancing algorithm; using the default");
        }
        if outcome.changed() && registration.endpoint_updated_at_ns > 0 {
            let now_ns = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let updated = u128::try_from(registration.endpoint_updated_at_ns).unwrap_or(0);
            if now_ns > updated {
                let seconds = Duration::from_nanos(u64::try_from(now_ns - updated).unwrap_or(u64::MAX)).as_secs_f64();
                self.metrics.registration_latency.observe(seconds);
            }
        }
        total.merge(outcome);
    }

    fn prune(&mut self) {
        let link = *self.link.borrow();
        if self.settings.suspend_pruning && !link.connected {
            tracing::info!("NATS is unavailable: pruning suspended");
            return;
        }
        let outcome = self.registry.prune(self.clock.now_ms());
        if outcome.endpoints_removed > 0 || outcome.routes_removed > 0 {
            self.metrics.pruned_endpoints.inc_by(outcome.endpoints_removed as u64);
            tracing::info!(endpoints = outcome.endpoints_removed, routes = outcome.routes_removed, "pruned stale routes");
            self.publish_table();
        }
    }

    fn remove_failed(&mut self, removal: &Removal) {
        let outcome = self.registry.remove_failed(removal, self.clock.now_ms());
        if outcome.changed() {
            self.metrics.identity_removals.inc_by(outcome.endpoints_removed as u64);
            tracing::warn!(endpoint = removal.endpoint.identity(), route = %removal.route, "removed an endpoint whose TLS certificate does not match its registration");
            self.publish_table();
        }
    }

    fn publish_table(&self) {
        let table = self.registry.table().clone();
        self.metrics.routes.set(i64::try_from(table.len()).unwrap_or(i64::MAX));
        self.metrics.endpoints.set(i64::try_from(self.registry.endpoint_count()).unwrap_or(i64::MAX));
        self.table.store(Arc::new(table));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_allows_one_warning_a_second_and_counts_the_rest() {
        let mut throttle = Throttle { last_ms: 0, suppressed: 0 };
        assert_eq!(throttle.allow(10), Some(0));
        assert_eq!(throttle.allow(500), None);
        assert_eq!(throttle.allow(900), None);
        assert_eq!(throttle.allow(1010), Some(2));
    }
}
