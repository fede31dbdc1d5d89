//! route-registrar: keeps a cell's routes and NodePorts announced on NATS while they are healthy.
//!
//! The crate is split the way the rest of Switchyard is: [`schedule`] decides (pure, clock-free, exhaustively
//! tested), and the other modules carry its decisions out against the world: NATS, health probes, route files,
//! signals and the status listener.

pub mod schedule;
pub mod probe;
pub mod sources;
