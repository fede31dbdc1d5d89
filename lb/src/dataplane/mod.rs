//! The contract between the reconciler and the kernel machinery that forwards packets.
//!
//! The reconciler decides; a dataplane only reads and writes. Reading ([`Dataplane::observe`]) reports every
//! service the machinery holds, so the reconciler can tell its own from other people's and converge after a
//! restart instead of flushing. Writing ([`Dataplane::apply`]) takes the plan's steps in order: IPVS sends one
//! netlink message per step, so a one-backend change is one message; nftables folds the steps into one atomic
//! transaction, so a packet never sees half a sync. Neither decides anything on its own, which keeps both thin
//! and lets one pure function, tested without a kernel, own all the decisions.

pub mod nftables;

#[cfg(test)]
pub mod fake;

use crate::model::{ObservedService, ServiceKey, Step};
use std::collections::BTreeMap;
use switchyard_config::lb::DataplaneKind;

/// The services a dataplane holds, by identity.
pub type ObservedServices = BTreeMap<ServiceKey, ObservedService>;

/// What the dataplane can express, which shapes the plan the reconciler makes for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Whether a destination at weight 0 stays in the kernel (IPVS) or simply is not in rotation (nftables, which
    /// leaves established flows to conntrack and so has no notion of an idle destination).
    pub keeps_zero_weight_destinations: bool,
}

/// Settings every dataplane receives from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneSettings {
    /// Masquerade traffic forwarded to backends.
    pub snat: bool,
    /// Packet-mark bits that flag forwarded traffic for the masquerade rule.
    pub snat_mark: u32,
    /// Name of the nftables table `lb` owns (the nftables dataplane's rules, the IPVS dataplane's masquerade).
    pub nft_table: String,
}

/// Name of the nftables table `lb` owns.
pub const NFT_TABLE: &str = "switchyard";

/// Why a dataplane operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The kernel or the machine lacks what this dataplane needs; retrying will not help.
    #[error("the {dataplane} dataplane is unavailable: {why}")]
    Unavailable {
        /// Which dataplane.
        dataplane: &'static str,
        /// What is missing and how to get it.
        why: String,
    },
    /// The kernel refused a request.
    #[error("the kernel refused to {operation}: {detail}")]
    Kernel {
        /// What was asked, e.g. `add destination 198.18.1.2:10001 to tcp/198.18.2.10:80`.
        operation: String,
        /// The kernel's answer.
        detail: String,
        /// Whether the same request may succeed later (a busy kernel, a race with another writer).
        retryable: bool,
    },
    /// A helper program (`nft`, `ip`) failed.
    #[error("`{program}` failed: {detail}")]
    Tool {
        /// The program.
        program: &'static str,
        /// Its exit status and error output.
        detail: String,
        /// Whether running it again may succeed.
        retryable: bool,
    },
    /// A program `lb` drives is not installed.
    #[error("the `{program}` program is not installed; install it with `apt-get install -y {package}`")]
    Missing {
        /// The program.
        program: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// What the kernel reported could not be understood.
    #[error("could not read the kernel state: {0}")]
    Observe(String),
}

impl DataplaneError {
    /// Whether retrying the same operation may succeed; the sync loop retries on its next round either way, but a
    /// non-retryable error is also logged as needing an operator.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unavailable { .. } | Self::Missing { .. } | Self::Observe(_) => false,
            Self::Kernel { retryable, .. } | Self::Tool { retryable, .. } => *retryable,
        }
    }
}

/// A kernel forwarding machinery `lb` can drive.
///
/// Methods take `&mut self` so an implementation may keep a socket or a cache; they block (netlink round trips,
/// running `nft`), so the sync loop calls them off the async runtime.
pub trait Dataplane: Send {
    /// Short name for logs, metrics and `/vips` (`ipvs`, `nftables`, `fake`).
    fn name(&self) -> &'static str;

    /// What this dataplane can express.
    fn capabilities(&self) -> Capabilities;

    /// Makes the machine ready: kernel modules, sysctls, base tables and chains, the masquerade rule. Idempotent,
    /// and it never removes a service; called at start-up before the first observe.
    fn prepare(&mut self) -> Result<(), DataplaneError>;

    /// Reads every service the dataplane holds, owned by `lb` or not.
    fn observe(&mut self) -> Result<ObservedServices, DataplaneError>;

    /// Applies `steps` in order. `before` is the state observed just before; a dataplane that writes whole
    /// services at once derives the new state from it. On error, the steps before the failing one may have been
    /// applied; the next sync observes again and converges.
    fn apply(&mut self, before: &ObservedServices, steps: &[Step]) -> Result<(), DataplaneError>;

    /// Removes the dataplane-wide objects `prepare` made (tables, masquerade). Called by `lb cleanup` after every
    /// owned service has been deleted.
    fn cleanup(&mut self) -> Result<(), DataplaneError>;

    /// The kernel's traffic counters, for dataplanes whose kernel keeps them (IPVS); `/vips` and `/metrics` show
    /// them.
    fn traffic(&self) -> Option<crate::ipvs::Traffic> {
        None
    }
}

/// Opens the dataplane the config names; `auto` picks IPVS when the running kernel has it.
pub fn open(kind: DataplaneKind, settings: DataplaneSettings) -> Result<Box<dyn Dataplane>, DataplaneError> {
    match kind {
        DataplaneKind::Nftables => Ok(Box::new(nftables::NftDataplane::new(settings))),
        DataplaneKind::Ipvs => Ok(Box::new(crate::ipvs::IpvsDataplane::new(settings))),
        DataplaneKind::Auto => {
            if crate::ipvs::kernel_has_ipvs() {
                open(DataplaneKind::Ipvs, settings)
            } else {
                open(DataplaneKind::Nftables, settings)
            }
        }
    }
}
