//! Source NAT for IPVS flows: an nftables masquerade that matches connections by their original destination.
//!
//! Cells must answer through the LB, so a forwarded connection leaves with the LB's address. IPVS rewrites the
//! destination itself, outside netfilter's NAT, so `ct status dnat` never matches its flows; with
//! `net.ipv4.vs.conntrack=1` the conntrack entry still records the VIP as the original destination, and that is
//! what the rule matches. nft 1.0 cannot put `ct original proto-dst` into a set key, so the set holds VIP
//! addresses: a VIP address is `lb`'s (it made it local), and only IPVS sends packets for a local address out
//! again, so matching the address alone catches exactly the flows `lb` forwarded.
//!
//! The set is kept in step with the services `lb` adds and deletes, and lives in the kernel with them, so a restart
//! of `lb` neither rebuilds it nor opens a window without masquerade. The scripts are built as text (pure) and
//! handed to `nft -f -` in one transaction each.

use crate::dataplane::DataplaneError;
use crate::tool::NFT;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

const SET_V4: &str = "ipvs_vips4";
const SET_V6: &str = "ipvs_vips6";
const CHAIN: &str = "ipvs_snat";

/// The transaction that makes the table, the VIP sets and the masquerade chain exist, without touching the sets'
/// elements. The chain is flushed and refilled in the same transaction, so running it twice leaves one copy of
/// each rule and no packet ever sees the chain empty.
pub fn prepare_script(table: &str) -> String {
    format!(
        "add table inet {table}\n\
         add set inet {table} {SET_V4} {{ type ipv4_addr; }}\n\
         add set inet {table} {SET_V6} {{ type ipv6_addr; }}\n\
         add chain inet {table} {CHAIN} {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         flush chain inet {table} {CHAIN}\n\
         add rule inet {table} {CHAIN} ct original ip daddr @{SET_V4} masquerade fully-random\n\
         add rule inet {table} {CHAIN} ct original ip6 daddr @{SET_V6} masquerade fully-random\n"
    )
}

/// The transaction that adds and removes VIP addresses, or `None` when there is nothing to do. A removal is
/// preceded by an add of the same element, so removing an address that is already gone is not an error.
pub fn update_script(table: &str, add: &BTreeSet<IpAddr>, remove: &BTreeSet<IpAddr>) -> Option<String> {
    if add.is_empty() && remove.is_empty() {
        return None;
    }
    let mut script = String::new();
    for address in add.iter().chain(remove) {
        let _ = writeln!(script, "add element inet {table} {} {{ {address} }}", set_of(*address));
    }
    for address in remove {
        let _ = writeln!(script, "delete element inet {table} {} {{ {address} }}", set_of(*address));
    }
    Some(script)
}

/// The transaction that removes the table, whether or not it exists.
pub fn cleanup_script(table: &str) -> String {
    format!("add table inet {table}\ndelete table inet {table}\n")
}

/// Runs `script` as one `nft -f -` transaction.
pub fn run(script: &str) -> Result<(), DataplaneError> {
    NFT.run(&["-f", "-"], Some(script)).map(drop)
}

fn set_of(address: IpAddr) -> &'static str {
    if address.is_ipv6() { SET_V6 } else { SET_V4 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_builds_sets_and_a_masquerade_on_the_original_destination() {
        let script = prepare_script("switchyard");
        assert!(script.contains("add chain inet switchyard ipvs_snat { type nat hook postrouting priority srcnat;"));
        assert!(script.contains("flush chain inet switchyard ipvs_snat\n"));
        assert!(script.contains("ct original ip daddr @ipvs_vips4 masquerade fully-random"));
        assert!(script.contains("ct original ip6 daddr @ipvs_vips6 masquerade fully-random"));
        // The sets are declared with `add`, which keeps existing elements.
        assert!(!script.contains("flush set"));
    }

    #[test]
    fn updates_touch_only_the_named_addresses() {
        let add: BTreeSet<IpAddr> = ["198.18.2.10".parse().unwrap(), "2001:db8::10".parse().unwrap()].into();
        let remove: BTreeSet<IpAddr> = ["198.18.2.11".parse().unwrap()].into();
        let script = update_script("t", &add, &remove).unwrap();
        assert_eq!(
            script,
            "add element inet t ipvs_vips4 { 198.18.2.10 }\n\
             add element inet t ipvs_vips6 { 2001:db8::10 }\n\
             add element inet t ipvs_vips4 { 198.18.2.11 }\n\
             delete element inet t ipvs_vips4 { 198.18.2.11 }\n"
        );
        assert_eq!(update_script("t", &BTreeSet::new(), &BTreeSet::new()), None);
    }

    #[test]
    fn cleanup_tolerates_a_missing_table() {
        assert_eq!(cleanup_script("t"), "add table inet t\ndelete table inet t\n");
    }
}
