//! An in-memory dataplane for unit tests: it behaves like a kernel that accepts every step, and records them, so
//! tests can assert what a sync asked for without root or a kernel.

use super::{Capabilities, Dataplane, DataplaneError, ObservedServices};
use crate::model::{Step, apply_step};

/// A kernel in memory.
#[derive(Debug, Default)]
pub struct FakeDataplane {
    /// What the "kernel" holds.
    pub services: ObservedServices,
    /// Every step applied, in order.
    pub applied: Vec<Step>,
    /// Whether this fake keeps weight-0 destinations, like IPVS (true) or drops them, like nftables (false).
    pub keeps_zero_weight: bool,
    /// Whether its services are exclusively `lb`'s, like the nftables table.
    pub exclusive: bool,
    /// How many times `prepare` ran.
    pub prepared: u32,
}

impl Dataplane for FakeDataplane {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { keeps_zero_weight_destinations: self.keeps_zero_weight }
    }

    fn prepare(&mut self) -> Result<(), DataplaneError> {
        self.prepared += 1;
        Ok(())
    }

    fn observe(&mut self) -> Result<ObservedServices, DataplaneError> {
        Ok(self.services.clone())
    }

    fn apply(&mut self, _before: &ObservedServices, steps: &[Step]) -> Result<(), DataplaneError> {
        for step in steps {
            apply_step(&mut self.services, step, self.exclusive);
            self.applied.push(step.clone());
        }
        Ok(())
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        self.services.clear();
        Ok(())
    }
}
