//! The Switchyard router: an HTTP reverse proxy that routes by Host and context path to app instances it learns
//! from gorouter-protocol registrations on NATS.
//!
//! The crate is split along one line: a pure core that decides (route keys, the table, pools and balancing,
//! the registry that turns messages into table versions) and IO edges that act (the NATS link, the proxy's
//! sockets, the status listener, the access log). The core takes `now` and inputs and returns outputs, so it is
//! tested exhaustively without sockets; the edges are tested end to end against real processes.
//!
//! TLS (both ends), HTTP/2 and route services sit beside the plain HTTP/1.1 path rather than inside it: a
//! connection or request that does not use them pays a branch, not a lock or an allocation.

pub mod access_log;
pub mod app;
pub mod bus;
pub mod clock;
pub mod endpoint;
pub mod maglev;
pub mod metrics;
pub mod pool;
pub mod proxy;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod reference;
pub mod registry;
pub mod reload;
pub mod route_key;
pub mod route_service;
pub mod server;
pub mod status;
pub mod table;
pub mod tls;
