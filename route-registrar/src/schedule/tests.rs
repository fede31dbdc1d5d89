use super::*;
use proptest::prelude::*;
use std::collections::{BTreeSet, HashMap};
use switchyard_config::messages::{LbRegistration, Registration};
use switchyard_config::registrar::Probe;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn http_route(name: &str, port: u16, interval: Duration, checked: bool) -> Route {
    let registration = Registration { host: "10.0.0.1".into(), port, uris: vec![format!("{name}.example.com")], ..Registration::default() };
    let check = checked.then(|| HealthCheck { name: "check".into(), probe: Probe::Script("/bin/true".into()), timeout: interval / 2 });
    Route::new(&ResolvedRoute { name: name.into(), announcement: Announcement::Router(Box::new(registration)), interval, health_check: check }).unwrap()
}

/// (subject, route, why) of each publish, in order.
fn published(commands: &[Command]) -> Vec<(&'static str, String, Why)> {
    commands
        .iter()
        .filter_map(|command| match command {
            Command::Publish(p) => Some((p.subject, p.route.to_string(), p.why)),
            Command::Check(_) => None,
        })
        .collect()
}

fn tickets(commands: &[Command]) -> Vec<Ticket> {
    commands
        .iter()
        .filter_map(|command| match command {
            Command::Check(request) => Some(request.ticket),
            Command::Publish(_) => None,
        })
        .collect()
}

fn reg(name: &str, why: Why) -> (&'static str, String, Why) {
    (SUBJECT_REGISTER, name.to_owned(), why)
}

fn unreg(name: &str, why: Why) -> (&'static str, String, Why) {
    (SUBJECT_UNREGISTER, name.to_owned(), why)
}

#[test]
fn announces_at_once_then_every_interval() {
    let t0 = Instant::now();
    let mut schedule = Schedule::new(5);
    let out = schedule.handle(t0, Event::Routes(vec![http_route("a", 1, ms(200), false)]));
    assert_eq!(published(&out), vec![reg("a", Why::Scheduled)]);
    assert_eq!(schedule.next_wake(), Some(t0 + ms(200)));
    assert!(schedule.handle(t0 + ms(199), Event::Tick).is_empty());
    assert_eq!(published(&schedule.handle(t0 + ms(200), Event::Tick)), vec![reg("a", Why::Scheduled)]);
    assert_eq!(schedule.next_wake(), Some(t0 + ms(400)));
    // A late wake-up publishes once and does not try to catch up the missed beats.
    assert_eq!(published(&schedule.handle(t0 + ms(1000), Event::Tick)).len(), 1);
    assert_eq!(schedule.next_wake(), Some(t0 + ms(1200)));
}

#[test]
fn health_gates_announcements_and_the_unregistration_limit_holds() {
    let t0 = Instant::now();
    let mut schedule = Schedule::new(2);
    let out = schedule.handle(t0, Event::Routes(vec![http_route("a", 1, ms(100), true)]));
    assert!(published(&out).is_empty(), "nothing is announced before the first check passes");
    let mut ticket = tickets(&out)[0];
    let mut now = t0;
    let mut outcomes = Vec::new();
    for healthy in [true, false, false, false, false, true, false] {
        now += ms(10);
        outcomes.push(published(&schedule.handle(now, Event::CheckDone { ticket, healthy })));
        now = schedule.next_wake().unwrap();
        let out = schedule.handle(now, Event::Tick);
        assert!(published(&out).is_empty());
        ticket = tickets(&out)[0];
    }
    assert_eq!(
        outcomes,
        vec![
            vec![reg("a", Why::CheckPassed)],
            vec![unreg("a", Why::CheckFailed)],
            vec![unreg("a", Why::CheckFailed)],
            vec![],
            vec![],
            vec![reg("a", Why::CheckPassed)],
            vec![unreg("a", Why::CheckFailed)],
        ]
    );
}

#[test]
fn checks_follow_the_configured_interval_and_never_overlap() {
    let t0 = Instant::now();
    let mut schedule = Schedule::new(5);
    let first = tickets(&schedule.handle(t0, Event::Routes(vec![http_route("a", 1, ms(100), true)])));
    assert_eq!(first.len(), 1);
    assert_eq!(schedule.next_wake(), None, "nothing else is due while the only check runs");
    // The result is late (a slow kill): the check due at 100ms starts as soon as it is in, once.
    let out = schedule.handle(t0 + ms(150), Event::CheckDone { ticket: first[0], healthy: true });
    assert_eq!(tickets(&out).len(), 1);
    assert!(tickets(&schedule.handle(t0 + ms(150), Event::Tick)).is_empty());
    assert_eq!(schedule.next_wake(), None);
}

#[test]
fn stale_results_are_ignored() {
    let t0 = Instant::now();
    let mut schedule = Schedule::new(5);
    let ticket = tickets(&schedule.handle(t0, Event::Routes(vec![http_route("a", 1, ms(100), true)])))[0];
    schedule.handle(t0, Event::Routes(vec![http_route("b", 2, ms(100), true)]));
    assert!(schedule.handle(t0 + ms(10), Event::CheckDone { ticket, healthy: true }).is_empty());
    assert!(schedule.handle(t0 + ms(10), Event::CheckDone { ticket: Ticket(999), healthy: true }).is_empty());
}

#[test]
fn router_start_reannounces_at_once_and_shortens_the_interval() {
    let t0 = Instant::now();
    let mut schedule = Schedule::new(5);
    let out = schedule.handle(t0, Event::Routes(vec![http_route("plain", 1, ms(10_000), false), http_route("checked", 2, ms(10_000), true)]));
    let ticket = tickets(&out)[0];
    // A router starts while the check is still running: only the healthy route is re-announced.
    let out = schedule.handle(t0 + ms(5), Event::RouterStart { min_interval: Some(Duration::from_secs(2)) });
    assert_eq!(published(&out), vec![reg("plain", Why::RouterStart)]);
    assert_eq!(schedule.router_interval(), Some(Duration::from_secs(2)));
    schedule.handle(t0 + ms(10), Event::CheckDone { ticket, healthy: true });
    // Both routes now refresh every 2s; the checked one on its last result.
    let out = schedule.handle(t0 + ms(2005), Event::Tick);
    assert_eq!(published(&out), vec![reg("plain", Why::Scheduled)]);
    let out = schedule.handle(t0 + ms(2010), Event::Tick);
    assert_eq!(published(&out), vec![reg("checked", Why::Refresh)]);
    // A longer interval from another router changes nothing.
    schedule.handle(t0 + ms(2020), Event::RouterStart { min_interval: Some(Duration::from_secs(30)) });
    assert_eq!(schedule.router_interval(), Some(Duration::from_secs(2)));
}

#[test]
fn a_greeting_router_shortens_the_interval_without_reannouncing() {
    let t0 = Instant::now();
    let mut schedule = Schedule::new(5);
    schedule.handle(t0, Event::Routes(vec![http_route("a", 1, ms(10_000), false)]));
    assert!(schedule.handle(t0 + ms(1), Event::RouterInterval(Duration::from_secs(1))).is_empty());
    assert_eq!(schedule.next_wake(), Some(t0 + ms(1001)));
}

#[test]
fn reconnect_says_the_current_state_again() {
    let t0 = Instant::now();
    let mut schedule = Schedule::new(1);
    let out = schedule.handle(t0, Event::Routes(vec![http_route("up", 1, ms(100), false), http_route("down", 2, ms(100), true)]));
    schedule.handle(t0, Event::CheckDone { ticket: tickets(&out)[0], healthy: false });
    let out = schedule.handle(t0 + ms(1), Event::Reconnected);
    // Routes are keyed by their payload; "down" (port 2) sorts after "up" (port 1).
    assert_eq!(published(&out), vec![reg("up", Why::Reconnect), unreg("down", Why::Reconnect)]);
}

#[test]
fn config_changes_diff_against_what_runs() {
    let t0 = Instant::now();
    let mut schedule = Schedule::new(5);
    schedule.handle(t0, Event::Routes(vec![http_route("keep", 1, ms(100), false), http_route("move", 2, ms(100), false)]));
    // Same payload, new interval: no withdrawal, state kept, next announcement pulled in.
    let mut moved = http_route("move", 3, ms(100), false);
    moved.name = Arc::from("move");
    let out = schedule.handle(t0 + ms(10), Event::Routes(vec![http_route("keep", 1, ms(50), false), moved]));
    assert_eq!(published(&out), vec![unreg("move", Why::Removed), reg("move", Why::Scheduled)], "old endpoint withdrawn before the new one");
    assert_eq!(schedule.next_wake(), Some(t0 + ms(60)));
    let out = schedule.handle(t0 + ms(20), Event::Routes(vec![]));
    assert_eq!(published(&out), vec![unreg("keep", Why::Removed), unreg("move", Why::Removed)]);
    assert_eq!(schedule.next_wake(), None);
}

#[test]
fn identical_routes_are_announced_once() {
    let t0 = Instant::now();
    let mut schedule = Schedule::new(5);
    let out = schedule.handle(t0, Event::Routes(vec![http_route("a", 1, ms(100), false), http_route("a", 1, ms(100), false)]));
    assert_eq!(published(&out).len(), 1);
}

#[test]
fn dropping_a_check_makes_the_route_healthy_at_once() {
    let t0 = Instant::now();
    let mut schedule = Schedule::new(5);
    let out = schedule.handle(t0, Event::Routes(vec![http_route("a", 1, ms(100), true)]));
    schedule.handle(t0, Event::CheckDone { ticket: tickets(&out)[0], healthy: false });
    let out = schedule.handle(t0 + ms(1), Event::Routes(vec![http_route("a", 1, ms(100), false)]));
    assert_eq!(published(&out), vec![reg("a", Why::Scheduled)]);
}

#[test]
fn shutdown_withdraws_everything_and_ends_the_schedule() {
    let t0 = Instant::now();
    let mut schedule = Schedule::new(1);
    let lb = LbRegistration { vip: "web".into(), host: "10.0.0.1".into(), port: 30000, weight: 1, stale_threshold_in_seconds: 0 };
    let lb = Route::new(&ResolvedRoute { name: "np".into(), announcement: Announcement::Lb(lb), interval: ms(100), health_check: None }).unwrap();
    let out = schedule.handle(t0, Event::Routes(vec![http_route("a", 1, ms(100), false), lb]));
    assert_eq!(published(&out), vec![("lb.register", "np".to_owned(), Why::Scheduled), reg("a", Why::Scheduled)]);
    let out = schedule.handle(t0 + ms(5), Event::Shutdown);
    assert_eq!(published(&out), vec![("lb.unregister", "np".to_owned(), Why::Shutdown), unreg("a", Why::Shutdown)]);
    assert!(schedule.handle(t0 + ms(500), Event::Tick).is_empty());
    assert!(schedule.handle(t0 + ms(500), Event::Reconnected).is_empty());
    assert_eq!(schedule.next_wake(), None);
}

#[test]
fn payloads_are_the_wire_messages() {
    let route = http_route("a", 8080, ms(100), false);
    let decoded = Registration::parse(&route.payload, &Default::default()).unwrap();
    assert_eq!((decoded.port, decoded.uris), (8080, vec!["a.example.com".to_owned()]));
}

/// What the property test may do next.
#[derive(Debug, Clone)]
enum Step {
    /// Wake exactly when the schedule asked to.
    Wake,
    /// Let this much time pass and tick (a late or early wake-up).
    Advance(u64),
    /// Finish the oldest outstanding check.
    Finish(bool),
    RouterStart(u64),
    Reconnect,
    /// Switch to route set n.
    Config(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => Just(Step::Wake),
        2 => (0u64..400).prop_map(Step::Advance),
        5 => any::<bool>().prop_map(Step::Finish),
        1 => (0u64..3).prop_map(Step::RouterStart),
        1 => Just(Step::Reconnect),
        1 => (0usize..3).prop_map(Step::Config),
    ]
}

fn route_sets() -> Vec<Vec<Route>> {
    vec![
        vec![http_route("a", 1, ms(100), false), http_route("b", 2, ms(300), true), http_route("c", 3, ms(250), true)],
        vec![http_route("a", 1, ms(150), false), http_route("b", 2, ms(300), true)],
        vec![http_route("b", 2, ms(200), false), http_route("d", 4, ms(100), true), http_route("a", 5, ms(100), false)],
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_for_any_history(limit in 1u32..4, steps in proptest::collection::vec(step(), 1..120)) {
        let sets = route_sets();
        let t0 = Instant::now();
        let mut now = t0;
        let mut schedule = Schedule::new(limit);
        // Per route key: the outstanding ticket, the last check result, unregisters since the last register.
        let mut outstanding: Vec<(Ticket, Key)> = Vec::new();
        let mut last_result: HashMap<Key, bool> = HashMap::new();
        let mut failed_in_a_row: HashMap<Key, u32> = HashMap::new();
        let mut live: BTreeSet<Key> = BTreeSet::new();
        let mut current = 0usize;
        let mut last_announced: HashMap<Key, Instant> = HashMap::new();
        let key_of = |name: &str, set: usize| sets[set].iter().find(|r| &*r.name == name).map(Route::key);

        let mut out = schedule.handle(now, Event::Routes(sets[0].clone()));
        live.extend(sets[0].iter().map(Route::key));
        for step in steps.iter().cloned().chain(std::iter::once(Step::Wake)) {
            for command in &out {
                match command {
                    Command::Check(request) => {
                        let key = key_of(&request.route, current).expect("checks are only for live routes");
                        prop_assert!(outstanding.iter().all(|(_, k)| *k != key), "two checks in flight for {}", request.route);
                        outstanding.push((request.ticket, key));
                    }
                    Command::Publish(p) => {
                        let key = (if p.subject == SUBJECT_UNREGISTER { SUBJECT_REGISTER } else { p.subject }, p.payload.clone());
                        if p.subject == SUBJECT_REGISTER {
                            prop_assert!(live.contains(&key), "announced a route that is not configured: {}", p.route);
                            let checked = sets[current].iter().any(|r| r.key() == key && r.check.is_some());
                            if checked {
                                prop_assert_eq!(last_result.get(&key), Some(&true), "announced {} without a passing check", p.route);
                            }
                            failed_in_a_row.insert(key.clone(), 0);
                            last_announced.insert(key, now);
                        } else if p.why == Why::CheckFailed {
                            let count = failed_in_a_row.entry(key).or_insert(0);
                            *count += 1;
                            prop_assert!(*count <= limit, "{} unregisters in a row for {}", count, p.route);
                        }
                    }
                }
            }
            // No busy loop: nothing is left due at `now`.
            if let Some(wake) = schedule.next_wake() {
                prop_assert!(wake > now);
            }
            out = match step {
                Step::Wake => {
                    if let Some(wake) = schedule.next_wake() {
                        // A route without a check is never silent for longer than its interval (300ms at most).
                        for route in sets[current].iter().filter(|route| route.check.is_none()) {
                            let at = last_announced.get(&route.key());
                            prop_assert!(at.is_some(), "{} was never announced", route.name);
                            prop_assert!(at.is_some_and(|at| wake <= *at + ms(300)), "{} left silent", route.name);
                        }
                        now = wake;
                    }
                    schedule.handle(now, Event::Tick)
                }
                Step::Advance(n) => {
                    now += ms(n);
                    schedule.handle(now, Event::Tick)
                }
                Step::Finish(healthy) => {
                    if outstanding.is_empty() {
                        Vec::new()
                    } else {
                        let (ticket, key) = outstanding.remove(0);
                        if live.contains(&key) {
                            last_result.insert(key, healthy);
                        }
                        schedule.handle(now, Event::CheckDone { ticket, healthy })
                    }
                }
                Step::RouterStart(seconds) => schedule.handle(now, Event::RouterStart { min_interval: (seconds > 0).then(|| Duration::from_secs(seconds)) }),
                Step::Reconnect => schedule.handle(now, Event::Reconnected),
                Step::Config(n) => {
                    // A route whose check changed starts over: its outstanding check and last result no longer count.
                    for route in &sets[n] {
                        let before = sets[current].iter().find(|old| old.key() == route.key());
                        if before.is_none_or(|old| old.check != route.check) {
                            outstanding.retain(|(_, key)| *key != route.key());
                            last_result.remove(&route.key());
                        }
                    }
                    current = n;
                    let wanted: BTreeSet<Key> = sets[n].iter().map(Route::key).collect();
                    // A route that left and came back is a new route: its unregistration count starts over.
                    for key in wanted.difference(&live) {
                        failed_in_a_row.remove(key);
                    }
                    live = wanted;
                    outstanding.retain(|(_, key)| live.contains(key));
                    schedule.handle(now, Event::Routes(sets[n].clone()))
                }
            };
        }
        let out = schedule.handle(now, Event::Shutdown);
        let withdrawn: BTreeSet<Key> = out
            .iter()
            .filter_map(|c| match c { Command::Publish(p) if p.subject == SUBJECT_UNREGISTER => Some((SUBJECT_REGISTER, p.payload.clone())), _ => None })
            .collect();
        prop_assert_eq!(withdrawn, live, "shutdown withdraws every configured route");
    }
}
