//! The IO edges the three Switchyard programs share: logging, the NATS link, metrics, the status listener,
//! process signals and limits.
//!
//! Each program has its own pure core; what they have in common is how they talk to the outside world. Keeping
//! that here means the router, `lb` and `route-registrar` log, reconnect, expose metrics and stop the same way,
//! and an operator who learns one knows all three.

pub mod limits;
pub mod logging;
pub mod metrics;
pub mod nats;
pub mod signals;
pub mod status;
