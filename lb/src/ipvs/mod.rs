//! The IPVS dataplane: the kernel's own layer-4 load balancer, programmed over generic netlink.
//!
//! Operators trust IPVS for SNAT VIP fronts: in-kernel schedulers, per-server connection counts, and draining by
//! weight. There is no maintained Rust client for its netlink family, so this module carries one: the message
//! codec is pure and tested byte for byte ([`codec`]), the socket is a thin blocking edge ([`client`]), and the
//! objects it speaks of mirror the kernel's ([`objects`]). On top sit the dataplane the reconciler drives
//! ([`dataplane`]), the check that lets a removed backend go only once it is idle ([`drain`]), the masquerade that
//! makes it SNAT ([`snat`]) and the counters it reports ([`traffic`]).

pub mod client;
pub mod codec;
pub mod dataplane;
pub mod drain;
pub mod error;
pub mod objects;
pub mod snat;
pub mod traffic;

pub use client::{IpvsClient, Refusal};
pub use codec::Change;
pub use dataplane::{IpvsDataplane, kernel_has_ipvs};
pub use error::{IpvsError, Object, Operation};
pub use objects::{
    Destination, DestinationEntry, DestinationKey, Forwarding, Protocol, Service, ServiceEntry, ServiceFlags,
    ServiceKey, Stats,
};
pub use traffic::{Traffic, TrafficCollector};
