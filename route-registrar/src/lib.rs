//! route-registrar: keeps a cell's routes and NodePorts announced on NATS while they are healthy.
//!
//! The crate is split the way the rest of Switchyard is: [`schedule`] decides (pure, clock-free, exhaustively
//! tested), and the other modules carry its decisions out against the world: NATS ([`service`]), health probes
//! ([`probe`]), config and route files ([`sources`]), metrics, and the command line.

pub mod cli;
pub mod metrics;
pub mod probe;
pub mod schedule;
pub mod service;
pub mod sources;
pub mod summary;
