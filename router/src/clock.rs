//! Time as the pure core sees it: milliseconds on a monotonic clock, passed in by the caller.
//!
//! The registry and pools never read a clock themselves; the IO edges read [`Clock::now_ms`] and hand the value
//! in. That keeps pruning and failure windows deterministic under test.

use std::time::Instant;

/// A monotonic millisecond clock anchored at process start.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    /// A clock whose zero is now.
    pub fn new() -> Self {
        Self { origin: Instant::now() }
    }

    /// Milliseconds since the clock's origin. Starts at 1 so that 0 can mean "never".
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX).saturating_add(1)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
