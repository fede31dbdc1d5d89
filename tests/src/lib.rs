//! The end-to-end test harness: real `nats-server`, real Switchyard binaries, real sockets.
//!
//! Tests built on this start their own NATS server on a free loopback port, their own backends and their own
//! router/registrar/lb processes, so each test is isolated and may kill and restart any part. A missing
//! dependency fails the test with the command that installs it; nothing is ever skipped.

// A harness that cannot set up has nothing to report but a failed test, with the reason: it may panic.
#![allow(clippy::expect_used, clippy::panic, reason = "test harness: a failed setup is a failed test")]

pub mod backend;
pub mod http;
pub mod lb;
pub mod load;
pub mod nats;
pub mod netns;
pub mod process;
pub mod registrar;
pub mod router;
pub mod status;
pub mod tls;
pub mod vm;

pub use backend::{Recorded, TestBackend};
pub use nats::NatsServer;
pub use process::{Service, binary, free_port, wait_for_port, wait_until};
pub use router::{RouterProcess, publish, registration};
