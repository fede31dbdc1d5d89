//! `lb`: an SNAT layer-4 load balancer that keeps the kernel's forwarding rules equal to "every VIP to every live
//! backend".
//!
//! The crate is split along the line between deciding and doing. The model and the reconciler decide, as pure
//! functions of the desired state and what the kernel holds; dataplanes (IPVS, nftables) only read and write the
//! kernel. Desired state comes from the config file, the JetStream KV bucket and cell announcements, merged
//! through one code path, so start-up, reload and a live announcement are all the same diff.

pub mod commands;
pub mod dataplane;
mod error;
pub mod health;
pub mod intent;
pub mod kv;
pub mod ipvs;
pub mod leases;
pub mod locality;
pub mod metrics;
pub mod model;
pub mod probe;
pub mod reconcile;
pub mod run;
pub mod status;
pub mod sync;
pub mod sysctl;
pub mod tool;

pub use error::LbError;
