//! Switchyard's benchmark harness, driven by `scripts/bench`.
//!
//! Benchmarks here are measurements, not tests: they compare the router with nginx and haproxy on the same
//! machine in the same run (this machine is shared and noisy, so only ratios within one run mean anything),
//! time the route table and NATS ingest at scale, and write BENCHMARKS.md. The pieces that can regress silently
//! (route lookup, ingest) are also smoke-checked with generous bounds in `tests/`, built from the same route
//! sets, so a check and the number it guards describe the same thing.
//!
//! The binaries: `sample-backend` (the app behind every proxy, also used by `scripts/run`), `route-memory`
//! (bytes per route under a counting allocator), `switchyard-bench` (peer comparison, ingest, report), and
//! `tls-handshakes` (handshake cost with 1 and 1,000 SNI certificates).

pub mod error;
pub mod http;
pub mod ingest;
pub mod instructions;
pub mod load;
pub mod nats;
pub mod peers;
pub mod process;
pub mod report;
pub mod procstat;
pub mod results;
pub mod routes;
pub mod stats;
