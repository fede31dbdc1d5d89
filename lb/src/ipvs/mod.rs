//! The IPVS dataplane: the kernel's own layer-4 load balancer, programmed over generic netlink.
//!
//! Operators trust IPVS for SNAT VIP fronts: in-kernel schedulers, per-server connection counts, and draining by
//! weight. There is no maintained Rust client for its netlink family, so this module carries one: the message
//! codec is pure and tested byte for byte ([`codec`]), the socket is a thin blocking edge ([`client`]), and the
//! objects it speaks of mirror the kernel's ([`objects`]).

pub mod client;
pub mod codec;
pub mod error;
pub mod objects;

pub use client::{IpvsClient, Refusal};
pub use codec::Change;
pub use error::{IpvsError, Object, Operation};
pub use objects::{
    Destination, DestinationEntry, DestinationKey, Forwarding, Protocol, Service, ServiceEntry, ServiceFlags,
    ServiceKey, Stats,
};
