//! Making VIP addresses local to the LB, which is also how `lb` records which VIPs are its own.
//!
//! The LB must answer ARP/ND for a VIP and accept its packets. Two ways do that, and both leave a mark in the
//! kernel that survives a restart of `lb`:
//! - an address on a dummy interface (`vip_interface`), where the kernel has dummy links: the interface is
//!   `lb`'s, so every address on it is;
//! - a `local` route in the local table, tagged with routing protocol [`ROUTE_PROTOCOL`], where it has not (this
//!   is the "AnyIP" trick: the kernel treats the address as its own without configuring it on a device). The tag
//!   tells `lb`'s routes from anyone else's.
//!
//! Reading both every time means a kernel switched from one to the other still has its old VIPs found and
//! cleaned up. Changes go through one `ip -batch` process per sync, so 10,000 VIPs are one program run.

use crate::dataplane::DataplaneError;
use crate::tool::{IP, is_absent};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Routing-protocol number on `lb`'s local routes (`proto 83`; 83 is ASCII `S`, unused by the protocols listed
/// in iproute2's `rt_protos`).
pub const ROUTE_PROTOCOL: u8 = 83;

/// Where a VIP address is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On the dummy interface.
    Interface,
    /// As a tagged local route.
    LocalRoute,
}

/// The VIP addresses of one `lb`.
#[derive(Debug)]
pub struct VipAddresses {
    interface: String,
    /// Where new addresses go; decided by [`VipAddresses::prepare`].
    placement: Placement,
    /// Where each owned address was at the last observation, so removals go to the right place.
    seen: BTreeMap<IpAddr, Placement>,
}

fn prefix(address: IpAddr) -> String {
    match address {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// Reads the addresses out of `ip -j` output: the `dst` of routes or the `local` of address entries.
fn parse_addresses(json: &str, field: &str) -> Result<BTreeSet<IpAddr>, DataplaneError> {
    let value: Value = serde_json::from_str(json).map_err(|e| DataplaneError::Observe(format!("`ip -j` printed JSON that does not parse: {e}")))?;
    let entries: Vec<&Value> = match field {
        "local" => value.as_array().into_iter().flatten().flat_map(|link| link.get("addr_info").and_then(Value::as_array).into_iter().flatten()).collect(),
        _ => value.as_array().into_iter().flatten().collect(),
    };
    Ok(entries
        .into_iter()
        .filter_map(|entry| entry.get(field)?.as_str())
        .filter_map(|text| text.split('/').next()?.parse().ok())
        .collect())
}

impl VipAddresses {
    /// The addresses of an `lb` whose dummy interface is `interface`.
    pub fn new(interface: &str) -> Self {
        Self { interface: interface.to_owned(), placement: Placement::LocalRoute, seen: BTreeMap::new() }
    }

    fn interface_exists(&self) -> Result<bool, DataplaneError> {
        match IP.run(&["-j", "link", "show", "dev", &self.interface], None) {
            Ok(_) => Ok(true),
            Err(err) if is_absent(&err) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Decides where new addresses go: the dummy interface if it exists or can be created, else local routes.
    pub fn prepare(&mut self) -> Result<Placement, DataplaneError> {
        let exists = self.interface_exists()?;
        self.placement = if exists {
            Placement::Interface
        } else {
            match IP.run(&["link", "add", &self.interface, "type", "dummy"], None) {
                Ok(_) => {
                    tracing::info!(interface = %self.interface, "created the VIP interface");
                    Placement::Interface
                }
                Err(DataplaneError::Tool { detail, .. }) => {
                    tracing::info!(%detail, protocol = ROUTE_PROTOCOL, "no dummy links here; VIPs become tagged local routes");
                    Placement::LocalRoute
                }
                Err(err) => return Err(err),
            }
        };
        if self.placement == Placement::Interface {
            IP.run(&["link", "set", &self.interface, "up"], None)?;
        }
        Ok(self.placement)
    }

    /// Every VIP address `lb` holds, wherever it is held. Reads only.
    pub fn observe(&mut self) -> Result<BTreeSet<IpAddr>, DataplaneError> {
        let protocol = ROUTE_PROTOCOL.to_string();
        let mut seen = BTreeMap::new();
        for family in ["-4", "-6"] {
            let routes = IP.run(&[family, "-j", "route", "show", "table", "local", "proto", &protocol], None)?;
            for address in parse_addresses(&routes, "dst")? {
                seen.insert(address, Placement::LocalRoute);
            }
        }
        if self.interface_exists()? {
            let addresses = IP.run(&["-j", "address", "show", "dev", &self.interface], None)?;
            for address in parse_addresses(&addresses, "local")? {
                // Link-local IPv6 addresses come with the interface; they are not VIPs.
                if !matches!(address, IpAddr::V6(v6) if v6.is_unicast_link_local()) {
                    seen.insert(address, Placement::Interface);
                }
            }
        }
        let addresses = seen.keys().copied().collect();
        self.seen = seen;
        Ok(addresses)
    }

    /// Adds and removes addresses in one `ip -batch` run.
    pub fn apply(&mut self, add: &[IpAddr], remove: &[IpAddr]) -> Result<(), DataplaneError> {
        if add.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let mut batch = String::new();
        for address in add {
            batch.push_str(&self.command("replace", *address, self.placement));
            self.seen.insert(*address, self.placement);
        }
        for address in remove {
            let placement = self.seen.remove(address).unwrap_or(self.placement);
            batch.push_str(&self.command("del", *address, placement));
        }
        IP.run(&["-force", "-batch", "-"], Some(&batch)).map(drop)
    }

    fn command(&self, verb: &str, address: IpAddr, placement: Placement) -> String {
        match placement {
            Placement::LocalRoute => format!("route {verb} local {} dev lo table local proto {ROUTE_PROTOCOL}\n", prefix(address)),
            Placement::Interface => format!("address {verb} {} dev {}\n", prefix(address), self.interface),
        }
    }

    /// Removes the dummy interface, if there is one (after every address was released).
    pub fn cleanup(&mut self) -> Result<(), DataplaneError> {
        if self.interface_exists()? {
            IP.run(&["link", "del", &self.interface], None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_routes_and_interface_addresses() {
        let routes = r#"[{"type":"local","dst":"198.18.2.10","dev":"lo","scope":"host","flags":[]},{"type":"local","dst":"2001:db8::10","dev":"lo"}]"#;
        let parsed = parse_addresses(routes, "dst").unwrap();
        assert_eq!(parsed, ["198.18.2.10".parse().unwrap(), "2001:db8::10".parse().unwrap()].into_iter().collect());
        let link = r#"[{"ifname":"sy-vip0","addr_info":[{"family":"inet","local":"198.18.2.11","prefixlen":32},{"family":"inet6","local":"fe80::1","prefixlen":64}]}]"#;
        let parsed = parse_addresses(link, "local").unwrap();
        assert_eq!(parsed.len(), 2);
        assert!(parse_addresses("[]", "dst").unwrap().is_empty());
        assert!(parse_addresses("nope", "dst").is_err());
    }

    #[test]
    fn commands_carry_the_ownership_tag() {
        let addresses = VipAddresses::new("sy-vip0");
        let v4: IpAddr = "198.18.2.10".parse().unwrap();
        let v6: IpAddr = "2001:db8::10".parse().unwrap();
        assert_eq!(addresses.command("replace", v4, Placement::LocalRoute), "route replace local 198.18.2.10/32 dev lo table local proto 83\n");
        assert_eq!(addresses.command("del", v6, Placement::Interface), "address del 2001:db8::10/128 dev sy-vip0\n");
    }
}
