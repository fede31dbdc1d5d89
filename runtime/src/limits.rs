//! Process limits a proxy outgrows at once.
//!
//! Every client connection, and every backend connection behind it, holds a file descriptor. Distributions start
//! processes with a soft limit of 1,024 descriptors, which a router in front of a busy platform passes in
//! seconds, while the hard limit is usually far higher. Raising the soft limit to the hard one at start-up, as
//! long-running servers commonly do, means an operator does not have to remember a `ulimit` line for the
//! program to survive its first burst.

/// Raises the soft limit on open files to the hard limit. Returns the limit now in force; a failure is logged and
/// the program carries on with what it has.
pub fn raise_open_file_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            tracing::debug!(limit, "open file limit");
            Some(limit)
        }
        Err(err) => {
            tracing::warn!(%err, "could not raise the open file limit; connections beyond it will be refused");
            None
        }
    }
}
