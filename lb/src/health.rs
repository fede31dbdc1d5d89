//! Backend health as a pure rise/fall state machine, fed probe results by the IO side.
//!
//! Keeping the machine free of timers and sockets makes its one subtle rule easy to pin down in tests: a backend
//! is assumed up when it first appears (so a restart or a new announcement does not pull healthy backends out of
//! rotation while the first probes run), but it is on probation, and a single failed first probe takes it out.
//! After that it takes `fall` consecutive failures to go down and `rise` consecutive successes to come back, so
//! one lost probe does not flap a backend. An unhealthy backend keeps its place with weight 0; it is never deleted.

use serde::Serialize;

/// Whether a backend should receive new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// In rotation.
    Up,
    /// Out of rotation (weight 0) until it rises again.
    Down,
}

impl Health {
    /// The lowercase name, for metrics labels and `/vips`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

/// Rise and fall thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
}

/// One backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthState {
    health: Health,
    /// Consecutive results that disagree with `health`.
    streak: u32,
    /// Whether any probe result has arrived yet.
    probed: bool,
}

impl Default for HealthState {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthState {
    /// A backend just seen: up, on probation.
    pub fn new() -> Self {
        Self { health: Health::Up, streak: 0, probed: false }
    }

    /// A backend known to have been out of rotation (found at weight 0 in the kernel after a restart): down
    /// until it rises.
    pub fn down() -> Self {
        Self { health: Health::Down, streak: 0, probed: false }
    }

    /// Current health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Records one probe result; returns the new health when it changed.
    pub fn record(&mut self, success: bool, thresholds: Thresholds) -> Option<Health> {
        let first = !self.probed;
        self.probed = true;
        let agrees = success == (self.health == Health::Up);
        if agrees {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = match self.health {
            // On probation one failure is enough: a dead backend should not get traffic for `fall` intervals.
            Health::Up if first => 1,
            Health::Up => thresholds.fall,
            Health::Down => thresholds.rise,
        };
        if self.streak < needed {
            return None;
        }
        self.streak = 0;
        self.health = if success { Health::Up } else { Health::Down };
        Some(self.health)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds { rise: 2, fall: 3 };

    fn feed(state: &mut HealthState, results: &[bool]) -> Vec<Option<Health>> {
        results.iter().map(|ok| state.record(*ok, T)).collect()
    }

    #[test]
    fn a_new_backend_is_up_and_stays_up_while_probes_pass() {
        let mut state = HealthState::new();
        assert_eq!(state.health(), Health::Up);
        assert_eq!(feed(&mut state, &[true, true, true]), vec![None, None, None]);
    }

    #[test]
    fn a_dead_new_backend_goes_down_on_its_first_probe() {
        let mut state = HealthState::new();
        assert_eq!(state.record(false, T), Some(Health::Down));
    }

    #[test]
    fn fall_consecutive_failures_take_it_down() {
        let mut state = HealthState::new();
        state.record(true, T);
        assert_eq!(feed(&mut state, &[false, false, true, false, false]), vec![None, None, None, None, None]);
        assert_eq!(state.record(false, T), Some(Health::Down));
    }

    #[test]
    fn rise_consecutive_successes_bring_it_back() {
        let mut state = HealthState::new();
        state.record(false, T);
        assert_eq!(feed(&mut state, &[true, false, true]), vec![None, None, None]);
        assert_eq!(state.record(true, T), Some(Health::Up));
        assert_eq!(state.health(), Health::Up);
    }

    #[test]
    fn a_backend_found_out_of_rotation_must_rise() {
        let mut state = HealthState::down();
        assert_eq!(state.record(true, T), None);
        assert_eq!(state.record(true, T), Some(Health::Up));
    }

    #[test]
    fn thresholds_of_one_switch_on_every_change() {
        let one = Thresholds { rise: 1, fall: 1 };
        let mut state = HealthState::new();
        state.record(true, one);
        assert_eq!(state.record(false, one), Some(Health::Down));
        assert_eq!(state.record(true, one), Some(Health::Up));
    }

    #[test]
    fn every_sequence_respects_rise_and_fall() {
        // Exhaustive over all 10-probe sequences: a change of health is always preceded by enough agreeing results.
        for bits in 0u32..1024 {
            let mut state = HealthState::new();
            let mut run_ok = 0;
            let mut run_fail = 0;
            for i in 0..10 {
                let ok = bits & (1 << i) != 0;
                if ok {
                    run_ok += 1;
                    run_fail = 0;
                } else {
                    run_fail += 1;
                    run_ok = 0;
                }
                match state.record(ok, T) {
                    Some(Health::Up) => assert!(run_ok >= T.rise, "{bits:010b} rose after {run_ok}"),
                    Some(Health::Down) => assert!(run_fail >= T.fall || i == 0, "{bits:010b} fell after {run_fail}"),
                    None => {}
                }
            }
        }
    }
}
