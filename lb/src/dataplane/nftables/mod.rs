//! The nftables dataplane: DNAT rules in a table of `lb`'s own, written in one atomic transaction per sync.

use super::{Capabilities, Dataplane, DataplaneError, DataplaneSettings, ObservedServices};
use crate::model::Step;

/// Drives `nft` for one table.
#[derive(Debug)]
pub struct NftDataplane {
    settings: DataplaneSettings,
}

impl NftDataplane {
    /// A dataplane for the table named in `settings`.
    pub fn new(settings: DataplaneSettings) -> Self {
        Self { settings }
    }

    fn not_yet(&self) -> DataplaneError {
        DataplaneError::Unavailable { dataplane: "nftables", why: format!("table {} is not wired yet", self.settings.nft_table) }
    }
}

impl Dataplane for NftDataplane {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { keeps_zero_weight_destinations: false }
    }

    fn prepare(&mut self) -> Result<(), DataplaneError> {
        Err(self.not_yet())
    }

    fn observe(&mut self) -> Result<ObservedServices, DataplaneError> {
        Err(self.not_yet())
    }

    fn apply(&mut self, _before: &ObservedServices, _steps: &[Step]) -> Result<(), DataplaneError> {
        Err(self.not_yet())
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        Err(self.not_yet())
    }
}
