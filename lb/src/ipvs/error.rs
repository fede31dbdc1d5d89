//! What can go wrong talking to the kernel's IPVS, said so that the caller knows what failed, on which object,
//! and whether trying again can help.

use super::objects::{DestinationKey, ServiceKey};
use nix::errno::Errno;
use std::fmt;
use std::io;

/// What the client was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Opening the netlink socket.
    Open,
    /// Asking the generic netlink controller for the IPVS family.
    ResolveFamily,
    /// Dumping services.
    ListServices,
    /// Dumping a service's real servers.
    ListDestinations,
    /// Sending a batch of changes.
    Apply,
    /// Creating a service.
    AddService,
    /// Changing a service.
    UpdateService,
    /// Deleting a service.
    DeleteService,
    /// Adding a real server.
    AddDestination,
    /// Changing a real server.
    UpdateDestination,
    /// Removing a real server.
    DeleteDestination,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Open => "open a generic netlink socket",
            Self::ResolveFamily => "resolve the IPVS netlink family",
            Self::ListServices => "list IPVS services",
            Self::ListDestinations => "list IPVS destinations",
            Self::Apply => "apply IPVS changes",
            Self::AddService => "add IPVS service",
            Self::UpdateService => "update IPVS service",
            Self::DeleteService => "delete IPVS service",
            Self::AddDestination => "add IPVS destination",
            Self::UpdateDestination => "update IPVS destination",
            Self::DeleteDestination => "delete IPVS destination",
        })
    }
}

/// The kernel object a failed request was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    /// Nothing in particular (the socket, the family).
    None,
    /// A service.
    Service(ServiceKey),
    /// A real server of a service.
    Destination(ServiceKey, DestinationKey),
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => Ok(()),
            Self::Service(service) => write!(f, " {service}"),
            Self::Destination(service, destination) => write!(f, " {destination} of {service}"),
        }
    }
}

/// A failure of the IPVS client.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    /// The kernel has no IPVS family: the `ip_vs` module is not loaded or not built.
    #[error(
        "the kernel has no IPVS support (generic netlink family `IPVS` not found); load it with `modprobe ip_vs`, \
         or use `dataplane: nftables`"
    )]
    Unavailable,
    /// A socket call failed.
    #[error("could not {operation}: {source}")]
    Io {
        /// What the client was doing.
        operation: Operation,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused a request.
    #[error("kernel refused to {operation}{object}: {} (errno {errno})", Errno::from_raw(*.errno).desc())]
    Kernel {
        /// What the client asked for.
        operation: Operation,
        /// The object concerned.
        object: Object,
        /// The positive errno the kernel returned.
        errno: i32,
    },
    /// The kernel's answer did not parse, or did not answer the question.
    #[error("unexpected answer from the kernel to {operation}: {detail}")]
    Protocol {
        /// What the client was doing.
        operation: Operation,
        /// What was wrong.
        detail: String,
    },
}

impl IpvsError {
    /// The errno behind the failure, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { errno, .. } => Some(*errno),
            Self::Io { source, .. } => source.raw_os_error(),
            Self::Unavailable | Self::Protocol { .. } => None,
        }
    }

    /// Whether the same request may succeed later without a change of configuration.
    ///
    /// Resource shortages and lost answers pass; so does a table that changed under us (`EEXIST`, `ENOENT`,
    /// `ESRCH`), because the next sync re-reads the kernel and plans again. A request the kernel finds invalid, a
    /// missing privilege, a missing IPVS or a missing scheduler module (`ENOENT` when creating or changing a
    /// service) will fail the same way until someone acts.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unavailable | Self::Protocol { .. } => false,
            Self::Kernel { operation: Operation::AddService | Operation::UpdateService, errno: 2, .. } => false,
            Self::Io { .. } | Self::Kernel { .. } => !matches!(
                self.errno().map(Errno::from_raw),
                Some(
                    Errno::EINVAL
                        | Errno::EPERM
                        | Errno::EACCES
                        | Errno::EAFNOSUPPORT
                        | Errno::EPROTONOSUPPORT
                        | Errno::EOPNOTSUPP
                        | Errno::ERANGE
                )
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvs::objects::Protocol;

    #[test]
    fn kernel_errors_name_the_object_and_errno() {
        let service = ServiceKey::socket(Protocol::Tcp, "198.18.0.10".parse().unwrap(), 80);
        let destination = DestinationKey { address: "198.18.1.2".parse().unwrap(), port: 10001 };
        let error = IpvsError::Kernel {
            operation: Operation::AddDestination,
            object: Object::Destination(service, destination),
            errno: 17,
        };
        assert_eq!(
            error.to_string(),
            "kernel refused to add IPVS destination 198.18.1.2:10001 of tcp 198.18.0.10:80: File exists (errno 17)"
        );
        assert_eq!(error.errno(), Some(17));
        assert!(error.is_retryable());
        let invalid = IpvsError::Kernel { operation: Operation::AddService, object: Object::Service(service), errno: 22 };
        assert!(!invalid.is_retryable());
        let no_scheduler = IpvsError::Kernel { operation: Operation::AddService, object: Object::Service(service), errno: 2 };
        assert!(!no_scheduler.is_retryable());
        let gone = IpvsError::Kernel { operation: Operation::DeleteDestination, object: Object::Destination(service, destination), errno: 2 };
        assert!(gone.is_retryable());
        assert!(!IpvsError::Unavailable.is_retryable());
        assert!(IpvsError::Unavailable.to_string().contains("modprobe ip_vs"));
    }
}
