//! Shared, IO-free configuration and wire types for Switchyard.
//!
//! Everything that crosses a process boundary (the NATS messages of the gorouter protocol, the `lb` announcements)
//! or is written by an operator (config files) is described here once, so the three programs and their tests agree
//! on one schema. Nothing in this crate opens a file or a socket: callers hand in text and get typed values or an
//! error that names the offending key. That keeps parsing deterministic, cheap to test, and fuzzable.

pub mod duration;
pub mod error;
pub mod lb;
pub mod load;
pub mod messages;
pub mod nats_auth;
pub mod registrar;
pub mod router;

pub use error::ConfigError;
pub use load::{Loaded, parse_json, parse_yaml};
