//! Kernel settings `lb` needs (`net.ipv4.ip_forward`, and `net.ipv4.vs.conntrack` for IPVS), written through
//! `/proc/sys` only when they differ, so a restart writes nothing.

use crate::dataplane::DataplaneError;
use std::path::PathBuf;

fn path(name: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(name.replace('.', "/"))
}

/// Sets `name` (dotted, e.g. `net.ipv4.ip_forward`) to `value` unless it already has it.
pub fn ensure(name: &str, value: &str) -> Result<(), DataplaneError> {
    let path = path(name);
    let refuse = |detail: String| DataplaneError::Kernel { operation: format!("set {name}={value}"), detail, retryable: false };
    let current = std::fs::read_to_string(&path).map_err(|err| refuse(format!("{}: {err}", path.display())))?;
    if current.trim() == value {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(|err| refuse(format!("{}: {err} (lb must run as root)", path.display())))?;
    tracing::info!(sysctl = name, value, "kernel setting changed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_proc_paths() {
        assert_eq!(path("net.ipv4.vs.conntrack"), PathBuf::from("/proc/sys/net/ipv4/vs/conntrack"));
    }

    #[test]
    fn an_unknown_setting_names_itself() {
        let err = ensure("net.switchyard.nonexistent", "1").unwrap_err();
        assert!(err.to_string().contains("set net.switchyard.nonexistent=1"), "{err}");
    }
}
