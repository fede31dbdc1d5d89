//! The kernel's IPVS objects as this client names them.
//!
//! These types mirror what the kernel stores (a virtual service, its real servers, their counters) rather than
//! what an operator writes, so the client can describe any service it finds, including services some other tool
//! created, and the dataplane maps the `lb` model onto them in one place.

use std::fmt;
use std::net::IpAddr;

/// The layer-4 protocol of a virtual service; IPVS supports exactly these three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
    /// SCTP (IP protocol 132).
    Sctp,
}

impl Protocol {
    /// The IP protocol number the kernel uses.
    pub fn number(self) -> u16 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }

    /// The protocol for an IP protocol number, if IPVS supports it.
    pub fn from_number(number: u16) -> Option<Self> {
        match number {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            132 => Some(Self::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        })
    }
}

/// What identifies a virtual service in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceKey {
    /// A service on `address:port` for one protocol; the only kind `lb` creates.
    Socket {
        /// Transport protocol.
        protocol: Protocol,
        /// Virtual address (IPv4 or IPv6).
        address: IpAddr,
        /// Virtual port.
        port: u16,
    },
    /// A service matching packets by firewall mark; only ever observed, so a dump never fails on one.
    FirewallMark {
        /// Whether the service is for IPv6 packets.
        ipv6: bool,
        /// The mark.
        mark: u32,
    },
}

impl ServiceKey {
    /// A service on `address:port/protocol`.
    pub fn socket(protocol: Protocol, address: IpAddr, port: u16) -> Self {
        Self::Socket { protocol, address, port }
    }

    /// Whether the service carries IPv6 traffic.
    pub fn is_ipv6(&self) -> bool {
        match self {
            Self::Socket { address, .. } => address.is_ipv6(),
            Self::FirewallMark { ipv6, .. } => *ipv6,
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Socket { protocol, address, port } => write!(f, "{protocol} {}", SocketText(*address, *port)),
            Self::FirewallMark { ipv6, mark } => write!(f, "fwmark {mark} ({})", if *ipv6 { "ipv6" } else { "ipv4" }),
        }
    }
}

/// `address:port`, with brackets around IPv6 addresses.
struct SocketText(IpAddr, u16);

impl fmt::Display for SocketText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(address) => write!(f, "{address}:{}", self.1),
            IpAddr::V6(address) => write!(f, "[{address}]:{}", self.1),
        }
    }
}

/// Service flags (`IP_VS_SVC_F_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ServiceFlags(pub u32);

impl ServiceFlags {
    /// Persistent: a client goes back to the same real server while its template lives.
    pub const PERSISTENT: Self = Self(0x0001);
    /// Set by the kernel on every hashed service; it is not a setting, so decoding drops it.
    pub const HASHED: Self = Self(0x0002);
    /// One-packet scheduling for UDP: every datagram is scheduled on its own.
    pub const ONE_PACKET: Self = Self(0x0004);
    /// Scheduler flag 1 (`sh-fallback`, `mh-fallback`).
    pub const SCHED1: Self = Self(0x0008);
    /// Scheduler flag 2 (`sh-port`, `mh-port`).
    pub const SCHED2: Self = Self(0x0010);
    /// Scheduler flag 3.
    pub const SCHED3: Self = Self(0x0020);

    /// No flags.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// These flags plus `other`.
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// These flags without `other`.
    pub const fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }
}

/// A virtual service's settings: what `NEW_SERVICE` and `SET_SERVICE` carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Service {
    /// What the service answers to.
    pub key: ServiceKey,
    /// Scheduler name (`rr`, `wrr`, `lc`, `wlc`, `sh`, `mh`, ...); the kernel module must exist.
    pub scheduler: String,
    /// Flags, without the kernel's own `HASHED` bit.
    pub flags: ServiceFlags,
    /// Persistence timeout in seconds (used with [`ServiceFlags::PERSISTENT`]).
    pub timeout: u32,
    /// Persistence granularity as a prefix length: 32 (IPv4) or 128 (IPv6) means per client address.
    pub netmask: u8,
}

impl Service {
    /// A non-persistent service with scheduler `scheduler`, per-client granularity and no flags.
    pub fn new(key: ServiceKey, scheduler: impl Into<String>) -> Self {
        let netmask = if key.is_ipv6() { 128 } else { 32 };
        Self { key, scheduler: scheduler.into(), flags: ServiceFlags::empty(), timeout: 0, netmask }
    }
}

/// How IPVS forwards to a real server (`IP_VS_CONN_F_*` forwarding methods).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forwarding {
    /// NAT ("masquerading"): the destination address is rewritten. The only method `lb` uses.
    Masquerade,
    /// Delivered to a local socket.
    Local,
    /// IP-in-IP tunnel.
    Tunnel,
    /// Direct routing (gatewaying).
    DirectRoute,
    /// Bypass.
    Bypass,
}

impl Forwarding {
    /// The kernel's number for this method.
    pub fn number(self) -> u32 {
        match self {
            Self::Masquerade => 0,
            Self::Local => 1,
            Self::Tunnel => 2,
            Self::DirectRoute => 3,
            Self::Bypass => 4,
        }
    }

    /// The method for a kernel number (the forwarding bits of the connection flags).
    pub fn from_number(number: u32) -> Option<Self> {
        match number & 0x7 {
            0 => Some(Self::Masquerade),
            1 => Some(Self::Local),
            2 => Some(Self::Tunnel),
            3 => Some(Self::DirectRoute),
            4 => Some(Self::Bypass),
            _ => None,
        }
    }
}

/// What identifies a real server within its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestinationKey {
    /// Real server address.
    pub address: IpAddr,
    /// Real server port.
    pub port: u16,
}

impl fmt::Display for DestinationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SocketText(self.address, self.port).fmt(f)
    }
}

/// A real server's settings: what `NEW_DEST` and `SET_DEST` carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Destination {
    /// Which real server.
    pub key: DestinationKey,
    /// Forwarding method.
    pub forwarding: Forwarding,
    /// Scheduling weight; 0 takes the server out of rotation while existing connections go on.
    pub weight: u32,
    /// Connection count above which the server gets no new connections; 0 means no limit.
    pub upper_threshold: u32,
    /// Connection count below which an overloaded server is used again; 0 means no limit.
    pub lower_threshold: u32,
}

impl Destination {
    /// A masqueraded real server with `weight` and no thresholds.
    pub fn masquerade(address: IpAddr, port: u16, weight: u32) -> Self {
        Self {
            key: DestinationKey { address, port },
            forwarding: Forwarding::Masquerade,
            weight,
            upper_threshold: 0,
            lower_threshold: 0,
        }
    }
}

/// Traffic counters (`STATS64`), cumulative since the object was created; rates are the kernel's estimates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
pub struct Stats {
    /// Connections scheduled.
    pub connections: u64,
    /// Packets from clients.
    pub packets_in: u64,
    /// Packets to clients.
    pub packets_out: u64,
    /// Bytes from clients.
    pub bytes_in: u64,
    /// Bytes to clients.
    pub bytes_out: u64,
    /// Connections per second.
    pub connections_rate: u64,
    /// Packets per second from clients.
    pub packets_in_rate: u64,
    /// Packets per second to clients.
    pub packets_out_rate: u64,
    /// Bytes per second from clients.
    pub bytes_in_rate: u64,
    /// Bytes per second to clients.
    pub bytes_out_rate: u64,
}

/// A service as a dump reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Its settings.
    pub service: Service,
    /// Its counters.
    pub stats: Stats,
}

/// A real server as a dump reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationEntry {
    /// Its settings.
    pub destination: Destination,
    /// Established connections.
    pub active_connections: u32,
    /// Connections in other states (closing, or UDP).
    pub inactive_connections: u32,
    /// Persistence templates pointing at it.
    pub persistent_connections: u32,
    /// Its counters.
    pub stats: Stats,
}

impl DestinationEntry {
    /// Connections that still use the server; a drained server may go once this is 0.
    pub fn connections(&self) -> u64 {
        u64::from(self.active_connections) + u64::from(self.inactive_connections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_render_for_people() {
        let v4 = ServiceKey::socket(Protocol::Tcp, "198.18.0.10".parse().unwrap(), 80);
        let v6 = ServiceKey::socket(Protocol::Udp, "2001:db8::1".parse().unwrap(), 53);
        assert_eq!(v4.to_string(), "tcp 198.18.0.10:80");
        assert_eq!(v6.to_string(), "udp [2001:db8::1]:53");
        assert_eq!(ServiceKey::FirewallMark { ipv6: false, mark: 7 }.to_string(), "fwmark 7 (ipv4)");
        let dest = DestinationKey { address: "2001:db8::2".parse().unwrap(), port: 8080 };
        assert_eq!(dest.to_string(), "[2001:db8::2]:8080");
    }

    #[test]
    fn new_service_defaults_to_per_client_granularity() {
        let v4 = Service::new(ServiceKey::socket(Protocol::Tcp, "198.18.0.10".parse().unwrap(), 80), "rr");
        let v6 = Service::new(ServiceKey::socket(Protocol::Tcp, "2001:db8::1".parse().unwrap(), 80), "rr");
        assert_eq!((v4.netmask, v6.netmask), (32, 128));
    }

    #[test]
    fn numbers_round_trip() {
        for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            assert_eq!(Protocol::from_number(protocol.number()), Some(protocol));
        }
        assert_eq!(Protocol::from_number(1), None);
        for method in [Forwarding::Masquerade, Forwarding::Local, Forwarding::Tunnel, Forwarding::DirectRoute, Forwarding::Bypass] {
            assert_eq!(Forwarding::from_number(method.number()), Some(method));
        }
        assert_eq!(Forwarding::from_number(7), None);
    }

    #[test]
    fn flags_compose() {
        let flags = ServiceFlags::empty().with(ServiceFlags::PERSISTENT).with(ServiceFlags::HASHED);
        assert!(flags.contains(ServiceFlags::PERSISTENT));
        assert_eq!(flags.without(ServiceFlags::HASHED), ServiceFlags::PERSISTENT);
    }
}
