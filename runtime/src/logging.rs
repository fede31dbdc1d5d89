//! Structured logs through `tracing`, the same way for every program.
//!
//! Level comes from `RUST_LOG` (default `info`); `SWITCHYARD_LOG_FORMAT=json` switches to one JSON object per line
//! for log shippers. Logs go to stderr so that stdout stays free for command output (`--check-config`, `lb plan`).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call more than once; later calls are no-ops.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("SWITCHYARD_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    // try_init fails only when a subscriber is already set, which is fine.
    let _already_set = if json { builder.json().try_init() } else { builder.try_init() };
}
