//! The one error type for configuration problems.
//!
//! Operators fix configs by reading the error, so every error carries the dotted path of the key at fault and a
//! sentence about what is wrong with it.

use std::fmt;

/// A configuration problem, tied to the key that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `backends.max_attempts`; empty when the whole document is at fault.
    pub key: String,
    /// What is wrong, as a sentence fragment an operator can act on.
    pub problem: String,
}

impl ConfigError {
    /// An error about `key`.
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { key: key.into(), problem: problem.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "config: {}", self.problem)
        } else {
            write!(f, "config key `{}`: {}", self.key, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Checks a value after deserialisation, for rules serde cannot express (ranges, cross-field constraints).
pub trait Validate {
    /// Returns the first problem found, naming its key.
    fn validate(&self) -> Result<(), ConfigError>;
}
