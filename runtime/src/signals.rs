//! Process signals as lifecycle events.
//!
//! The meaning is the same in every program: SIGTERM and SIGINT stop promptly, SIGUSR1 drains gracefully (router),
//! SIGHUP reloads (lb config, certificates).

use tokio::signal::unix::{SignalKind, signal};

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// SIGTERM or SIGINT: stop quickly.
    Stop,
    /// SIGUSR1: drain and exit.
    Drain,
    /// SIGHUP: reload configuration.
    Reload,
}

/// Listens for the lifecycle signals. Create it early so no signal is missed.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Registers the handlers. Must run inside a tokio runtime.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            usr1: signal(SignalKind::user_defined1())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next signal.
    pub async fn next(&mut self) -> Lifecycle {
        tokio::select! {
            _ = self.term.recv() => Lifecycle::Stop,
            _ = self.int.recv() => Lifecycle::Stop,
            _ = self.usr1.recv() => Lifecycle::Drain,
            _ = self.hup.recv() => Lifecycle::Reload,
        }
    }
}
