//! The registrar's decisions: what to publish, which checks to run, and when to wake up next.
//!
//! Everything time-dependent about a registrar lives here and nowhere else, with no clock and no IO of its own: the
//! caller hands in `now` and an [`Event`] and gets [`Command`]s back, then sleeps until [`Schedule::next_wake`]. That
//! makes the behaviour that matters to operators (announce at once and every interval, withdraw on a failed check
//! but only `unregistration_message_limit` times in a row, re-announce at once for a fresh router or after a NATS
//! reconnect, withdraw everything on the way out) a deterministic function that tests can drive through hours of
//! simulated time in microseconds.
//!
//! Two clocks run per route. Checks follow the configured `registration_interval`, so a health script runs exactly
//! as often as the operator wrote (its timeout is validated to be shorter). Announcements follow the *effective*
//! interval, which a router may shorten through `minimumRegisterIntervalInSeconds`; between two checks the route is
//! re-announced on its last known health. A route's identity is what it puts on the wire (subject and payload): a
//! config change that keeps the payload keeps the route's state, and one that changes it withdraws the old endpoint
//! before announcing the new one, because a router applies an unregister to every uri the message names.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_config::messages::{SUBJECT_LB_REGISTER, SUBJECT_LB_UNREGISTER, SUBJECT_REGISTER, SUBJECT_UNREGISTER};
use switchyard_config::registrar::{Announcement, HealthCheck, ResolvedRoute};

/// A route ready for the schedule: its wire form computed once.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The route's name, for logs and metrics.
    pub name: Arc<str>,
    /// Subject of its announcement.
    pub register_subject: &'static str,
    /// Subject of its withdrawal.
    pub unregister_subject: &'static str,
    /// Last token of both subjects on the wire, if any: the VIP of an `lb` announcement, so that NATS
    /// permissions on `lb.register.<vip>` can say which cells may announce for which tenant.
    pub scope: Option<Arc<str>>,
    /// The JSON payload of both.
    pub payload: Bytes,
    /// Configured interval between checks and announcements.
    pub interval: Duration,
    /// The check gating it, if any.
    pub check: Option<HealthCheck>,
}

impl Route {
    /// Encodes a validated route.
    pub fn new(route: &ResolvedRoute) -> Result<Self, serde_json::Error> {
        let (register_subject, unregister_subject, scope, payload) = match &route.announcement {
            Announcement::Router(registration) => (SUBJECT_REGISTER, SUBJECT_UNREGISTER, None, serde_json::to_vec(registration)?),
            Announcement::Lb(announcement) => {
                (SUBJECT_LB_REGISTER, SUBJECT_LB_UNREGISTER, Some(Arc::from(announcement.vip.as_str())), serde_json::to_vec(announcement)?)
            }
        };
        Ok(Self {
            name: Arc::from(route.name.as_str()),
            register_subject,
            unregister_subject,
            scope,
            payload: Bytes::from(payload),
            interval: route.interval,
            check: route.health_check.clone(),
        })
    }

    fn key(&self) -> Key {
        (self.register_subject, self.payload.clone())
    }
}

/// Identity of a route: what it puts on the wire.
type Key = (&'static str, Bytes);

/// Identifies one check run, so a result that arrives after its route changed or left is recognised and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(u64);

/// Something that happened, handed to [`Schedule::handle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The full set of routes wanted now (the first load, a reload or a dynamic file change alike).
    Routes(Vec<Route>),
    /// Time passed; do what is due.
    Tick,
    /// A check finished.
    CheckDone {
        /// The ticket of the [`CheckRequest`].
        ticket: Ticket,
        /// Whether it passed.
        healthy: bool,
    },
    /// A router published `router.start`: re-announce at once, and announce at least this often from now on.
    RouterStart {
        /// `minimumRegisterIntervalInSeconds`, when the router sent a positive one.
        min_interval: Option<Duration>,
    },
    /// A router answered `router.greet`: announce at least this often from now on.
    RouterInterval(Duration),
    /// The NATS link came back: whatever was said while it was down may be lost, so say the current state again.
    Reconnected,
    /// The process is stopping: withdraw every route.
    Shutdown,
}

/// Why a message is published; for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A route without a check, on its schedule (the first announcement included).
    Scheduled,
    /// A healthy route re-announced between checks, on a router's shorter interval.
    Refresh,
    /// The route's check passed.
    CheckPassed,
    /// The route's check failed.
    CheckFailed,
    /// A router started.
    RouterStart,
    /// NATS reconnected.
    Reconnect,
    /// The route left the config.
    Removed,
    /// The process is stopping.
    Shutdown,
}

impl Why {
    /// Stable label for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Refresh => "refresh",
            Self::CheckPassed => "check_passed",
            Self::CheckFailed => "check_failed",
            Self::RouterStart => "router_start",
            Self::Reconnect => "reconnect",
            Self::Removed => "removed",
            Self::Shutdown => "shutdown",
        }
    }
}

/// A message to put on the bus.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    /// Subject, without its scope.
    pub subject: &'static str,
    /// Last subject token, when the subject is scoped (see [`Route::scope`]).
    pub scope: Option<Arc<str>>,
    /// JSON payload.
    pub payload: Bytes,
    /// The route it is about.
    pub route: Arc<str>,
    /// Why now.
    pub why: Why,
}

/// A check to run; report the outcome with [`Event::CheckDone`] and the same ticket.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckRequest {
    /// Echo this back.
    pub ticket: Ticket,
    /// The route it is for.
    pub route: Arc<str>,
    /// What to run, and its timeout.
    pub check: HealthCheck,
}

/// What the caller must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Publish a message.
    Publish(Publish),
    /// Start a check.
    Check(CheckRequest),
}

/// A route's health as the schedule knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// Its first check has not finished.
    Pending,
    /// Its last check passed, or it has none.
    Healthy,
    /// Its last check failed.
    Unhealthy,
}

impl Health {
    /// Stable label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        }
    }
}

#[derive(Debug)]
struct Entry {
    route: Route,
    health: Health,
    /// When the next check starts (routes with a check only).
    check_due: Instant,
    in_flight: Option<Ticket>,
    /// When a healthy route is next announced without a new check result.
    publish_due: Option<Instant>,
    unregisters_in_a_row: u32,
}

/// The per-route state machines of one registrar process.
#[derive(Debug)]
pub struct Schedule {
    entries: BTreeMap<Key, Entry>,
    unregistration_limit: u32,
    router_interval: Option<Duration>,
    next_ticket: u64,
    stopped: bool,
}

/// The next deadline after `due` on a `period` grid, skipping missed beats instead of bursting to catch up.
fn advance(due: Instant, period: Duration, now: Instant) -> Instant {
    let next = due + period;
    if next <= now { now + period } else { next }
}

/// A route's announcement interval: its own, or a router's when that is shorter.
fn effective(interval: Duration, router: Option<Duration>) -> Duration {
    router.map_or(interval, |router| interval.min(router))
}

/// When a healthy route is re-announced without a new check result. A route with a check is announced by each
/// passing check, so it needs refreshes only while a router asks for announcements more often than it checks.
fn refresh_due(entry: &Entry, router: Option<Duration>) -> Option<Instant> {
    if entry.health != Health::Healthy {
        return None;
    }
    if entry.route.check.is_some() && effective(entry.route.interval, router) >= entry.route.interval {
        return None;
    }
    entry.publish_due
}

impl Schedule {
    /// An empty schedule; `unregistration_limit` caps unregisters sent in a row for a failing route.
    pub fn new(unregistration_limit: u32) -> Self {
        Self { entries: BTreeMap::new(), unregistration_limit, router_interval: None, next_ticket: 0, stopped: false }
    }

    /// Applies `event` at `now` and returns what to do, in order.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Command> {
        let mut out = Vec::new();
        if self.stopped {
            return out;
        }
        match event {
            Event::Routes(routes) => self.set_routes(now, routes, &mut out),
            Event::Tick => {}
            Event::CheckDone { ticket, healthy } => self.check_done(now, ticket, healthy, &mut out),
            Event::RouterStart { min_interval } => {
                if let Some(interval) = min_interval {
                    self.adopt(interval);
                }
                self.announce_all(now, Why::RouterStart, false, &mut out);
            }
            Event::RouterInterval(interval) => {
                self.adopt(interval);
                self.pull_in_refreshes(now);
            }
            Event::Reconnected => self.announce_all(now, Why::Reconnect, true, &mut out),
            Event::Shutdown => {
                self.stopped = true;
                for entry in std::mem::take(&mut self.entries).into_values() {
                    out.push(withdraw(&entry.route, Why::Shutdown));
                }
                return out;
            }
        }
        self.run_due(now, &mut out);
        out
    }

    /// When [`Event::Tick`] should next be delivered; `None` when nothing is scheduled.
    pub fn next_wake(&self) -> Option<Instant> {
        self.entries
            .values()
            .flat_map(|entry| {
                let check = entry.route.check.as_ref().and(entry.in_flight.is_none().then_some(entry.check_due));
                [check, refresh_due(entry, self.router_interval)]
            })
            .flatten()
            .min()
    }

    /// Each route's name and health, in a stable order.
    pub fn health(&self) -> impl Iterator<Item = (&str, Health)> {
        self.entries.values().map(|entry| (&*entry.route.name, entry.health))
    }

    /// The interval routers asked for, if one is shorter than some configured interval.
    pub fn router_interval(&self) -> Option<Duration> {
        self.router_interval
    }

    fn adopt(&mut self, interval: Duration) {
        if interval.is_zero() {
            return;
        }
        self.router_interval = Some(self.router_interval.map_or(interval, |current| current.min(interval)));
    }

    fn set_routes(&mut self, now: Instant, routes: Vec<Route>, out: &mut Vec<Command>) {
        let mut wanted: BTreeMap<Key, Route> = BTreeMap::new();
        for route in routes {
            wanted.entry(route.key()).or_insert(route);
        }
        let gone: Vec<Key> = self.entries.keys().filter(|key| !wanted.contains_key(*key)).cloned().collect();
        for key in gone {
            if let Some(entry) = self.entries.remove(&key)
                && entry.unregisters_in_a_row < self.unregistration_limit
            {
                out.push(withdraw(&entry.route, Why::Removed));
            }
        }
        for (key, route) in wanted {
            let announce_every = effective(route.interval, self.router_interval);
            match self.entries.get_mut(&key) {
                Some(entry) => {
                    if entry.route.check != route.check {
                        // A new check has not vouched for the route yet; without one it is healthy by definition.
                        entry.in_flight = None;
                        entry.check_due = now;
                        if route.check.is_none() {
                            entry.health = Health::Healthy;
                            entry.publish_due = Some(now);
                            entry.unregisters_in_a_row = 0;
                        } else if entry.health == Health::Healthy {
                            entry.health = Health::Pending;
                        }
                    }
                    if entry.route.interval != route.interval {
                        entry.check_due = entry.check_due.min(now + route.interval);
                        entry.publish_due = entry.publish_due.map(|due| due.min(now + announce_every));
                    }
                    entry.route = route;
                }
                None => {
                    let health = if route.check.is_some() { Health::Pending } else { Health::Healthy };
                    let entry = Entry { route, health, check_due: now, in_flight: None, publish_due: Some(now), unregisters_in_a_row: 0 };
                    self.entries.insert(key, entry);
                }
            }
        }
    }

    fn check_done(&mut self, now: Instant, ticket: Ticket, healthy: bool, out: &mut Vec<Command>) {
        let limit = self.unregistration_limit;
        let router_interval = self.router_interval;
        let Some(entry) = self.entries.values_mut().find(|entry| entry.in_flight == Some(ticket)) else { return };
        entry.in_flight = None;
        if healthy {
            entry.health = Health::Healthy;
            entry.unregisters_in_a_row = 0;
            entry.publish_due = Some(now + effective(entry.route.interval, router_interval));
            out.push(announce(&entry.route, Why::CheckPassed));
        } else {
            entry.health = Health::Unhealthy;
            entry.publish_due = None;
            if entry.unregisters_in_a_row < limit {
                entry.unregisters_in_a_row += 1;
                out.push(withdraw(&entry.route, Why::CheckFailed));
            }
        }
    }

    /// Says every route's current state again: healthy ones are announced, and with `withdraw_unhealthy` the
    /// failing ones are withdrawn (a fresh router knows nothing to withdraw; a reconnected bus may have lost it).
    fn announce_all(&mut self, now: Instant, why: Why, withdraw_unhealthy: bool, out: &mut Vec<Command>) {
        let router_interval = self.router_interval;
        for entry in self.entries.values_mut() {
            match entry.health {
                Health::Healthy => {
                    entry.publish_due = Some(now + effective(entry.route.interval, router_interval));
                    out.push(announce(&entry.route, why));
                }
                Health::Unhealthy if withdraw_unhealthy => out.push(withdraw(&entry.route, why)),
                Health::Unhealthy | Health::Pending => {}
            }
        }
    }

    /// After the effective interval shrank, no healthy route waits longer than the new interval.
    fn pull_in_refreshes(&mut self, now: Instant) {
        let router_interval = self.router_interval;
        for entry in self.entries.values_mut() {
            let interval = effective(entry.route.interval, router_interval);
            entry.publish_due = entry.publish_due.map(|due| due.min(now + interval));
        }
    }

    fn run_due(&mut self, now: Instant, out: &mut Vec<Command>) {
        let router_interval = self.router_interval;
        for entry in self.entries.values_mut() {
            if let Some(check) = &entry.route.check
                && entry.in_flight.is_none()
                && entry.check_due <= now
            {
                let ticket = Ticket(self.next_ticket);
                self.next_ticket += 1;
                entry.in_flight = Some(ticket);
                entry.check_due = advance(entry.check_due, entry.route.interval, now);
                out.push(Command::Check(CheckRequest { ticket, route: Arc::clone(&entry.route.name), check: check.clone() }));
            }
            if let Some(due) = refresh_due(entry, router_interval)
                && due <= now
            {
                entry.publish_due = Some(advance(due, effective(entry.route.interval, router_interval), now));
                let why = if entry.route.check.is_some() { Why::Refresh } else { Why::Scheduled };
                out.push(announce(&entry.route, why));
            }
        }
    }
}

fn announce(route: &Route, why: Why) -> Command {
    Command::Publish(Publish { subject: route.register_subject, scope: route.scope.clone(), payload: route.payload.clone(), route: Arc::clone(&route.name), why })
}

fn withdraw(route: &Route, why: Why) -> Command {
    Command::Publish(Publish { subject: route.unregister_subject, scope: route.scope.clone(), payload: route.payload.clone(), route: Arc::clone(&route.name), why })
}

#[cfg(test)]
mod tests;
