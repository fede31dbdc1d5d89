//! `lb`: an SNAT layer-4 load balancer that keeps the kernel's forwarding rules equal to "every VIP to every live
//! backend".
//!
//! The crate is split along the line between deciding and doing. The model and the reconciler decide, as pure
//! functions of the desired state and what the kernel holds; dataplanes (IPVS, nftables) only read and write the
//! kernel. Desired state comes from the config file, the JetStream KV bucket and cell announcements, merged
//! through one code path, so start-up, reload and a live announcement are all the same diff.

pub mod dataplane;
pub mod health;
pub mod intent;
pub mod ipvs;
pub mod leases;
pub mod model;
pub mod reconcile;
