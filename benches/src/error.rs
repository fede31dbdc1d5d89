//! Why a benchmark could not produce its numbers, and what to do about it.

use std::path::PathBuf;

/// A benchmark failure. Each says which part failed; `retryable` says whether running again may help (the
/// machine is shared, so a port taken or a process slow to start can pass on a second try).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A tool the benchmark drives is not installed.
    #[error("`{tool}` is not installed; {install} (scripts/bench installs it)")]
    MissingTool {
        /// The command.
        tool: &'static str,
        /// How to install it.
        install: &'static str,
    },
    /// A process could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// What was started.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A process exited while the benchmark needed it.
    #[error("{what} exited early; its last output:\n{log}")]
    Exited {
        /// Which process.
        what: String,
        /// The end of its log.
        log: String,
    },
    /// Something did not become ready in time.
    #[error("{what} was not ready within {seconds}s")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the wait was.
        seconds: u64,
    },
    /// A load run reported errors or answers other than 200, so its numbers would not mean what they say.
    #[error("{what}: {problem}")]
    BadRun {
        /// Which run.
        what: String,
        /// What was wrong.
        problem: String,
    },
    /// A tool's output could not be read.
    #[error("cannot read the output of {what}: {problem}")]
    Parse {
        /// Which tool.
        what: String,
        /// What was wrong.
        problem: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// NATS refused or dropped the connection.
    #[error("NATS: {0}")]
    Nats(String),
}

impl BenchError {
    /// Whether running the benchmark again may succeed without changing anything.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Spawn { .. } | Self::Exited { .. } | Self::Timeout { .. } | Self::BadRun { .. } | Self::Nats(_))
    }
}

/// Shorthand for benchmark results.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;
