//! The nftables dataplane: DNAT rules in a table of `lb`'s own, written in one atomic transaction per sync.
//!
//! It drives the `nft` binary with JSON (`nft -j`), the interface nftables itself keeps stable for programs, and
//! keeps all knowledge of the ruleset's shape in [`ruleset`], which is pure. This module only runs `nft`.
//! The table is the ownership record: everything in it is `lb`'s, nothing outside it is touched.

pub mod ruleset;

use super::{Capabilities, Dataplane, DataplaneError, DataplaneSettings, ObservedServices};
use crate::model::{Step, apply_step};
use crate::tool::{NFT, is_absent};

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

    fn list(&self) -> Result<ruleset::Listing, DataplaneError> {
        let table = &self.settings.nft_table;
        match nft(&["-j", "list", "table", "inet", table], None) {
            Ok(stdout) => ruleset::parse_listing(&stdout, &self.settings).map_err(DataplaneError::Observe),
            // The table not existing yet is the normal state of a fresh machine.
            Err(err) if is_absent(&err) => Ok(ruleset::Listing::default()),
            Err(err) => Err(err),
        }
    }
}

/// Runs `nft`, telling a kernel without nftables apart from an ordinary failure.
pub fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, DataplaneError> {
    NFT.run(args, stdin).map_err(|err| match err {
        DataplaneError::Tool { detail, .. } if detail.contains("Protocol not supported") || detail.contains("Operation not permitted") => {
            DataplaneError::Unavailable {
                dataplane: "nftables",
                why: format!("the kernel refused nftables; run lb as root on a kernel with nf_tables and nft_nat ({detail})"),
            }
        }
        other => other,
    })
}

impl Dataplane for NftDataplane {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { keeps_zero_weight_destinations: false }
    }

    fn prepare(&mut self) -> Result<(), DataplaneError> {
        if self.list()?.base_intact {
            return Ok(());
        }
        tracing::info!(table = %self.settings.nft_table, "writing the nftables base chains");
        let commands = ruleset::base(&self.settings.nft_table, &self.settings);
        nft(&["-j", "-f", "-"], Some(&ruleset::transaction(commands))).map(drop)
    }

    fn observe(&mut self) -> Result<ObservedServices, DataplaneError> {
        let listing = self.list()?;
        for damaged in &listing.damaged {
            tracing::warn!(table = %self.settings.nft_table, %damaged, "an nftables object in lb's table is not as lb wrote it; it will be rewritten");
        }
        Ok(listing.services)
    }

    fn apply(&mut self, before: &ObservedServices, steps: &[Step]) -> Result<(), DataplaneError> {
        let mut after = before.clone();
        for step in steps {
            apply_step(&mut after, step, true);
        }
        let table = &self.settings.nft_table;
        let mut commands = ruleset::skeleton(table);
        let touched: std::collections::BTreeSet<_> = steps.iter().map(Step::service).collect();
        for key in &touched {
            commands.extend(ruleset::service_commands(table, key, before.get(key), after.get(key), &self.settings));
        }
        nft(&["-j", "-f", "-"], Some(&ruleset::transaction(commands))).map(drop)
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        match nft(&["delete", "table", "inet", &self.settings.nft_table], None) {
            Err(err) if is_absent(&err) => Ok(()),
            other => other.map(drop),
        }
    }
}
