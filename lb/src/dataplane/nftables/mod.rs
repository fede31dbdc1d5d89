//! The nftables dataplane: DNAT rules in a table of `lb`'s own, written in one atomic transaction per sync.
//!
//! Changes go to the kernel as one nf_tables netlink batch ([`netlink`]): `nft` would first read back the whole
//! table to build its cache, tens of milliseconds with 10,000 VIPs however small the change. The table is read
//! back with netlink dumps too: `nft -j list` spends seconds printing 10,000 rules. The `nft` binary declares the
//! table, hook chains and maps and deletes maps (rare, and nft records a map's `typeof` in its user data), replays
//! a change the kernel refused as text (so its error names the command), and reads the table as JSON if a netlink
//! read fails. All knowledge of the ruleset's shape is in [`ruleset`], which is pure; this module only runs `nft`
//! and remembers what the table holds for each VIP (its [`ruleset::Footprint`]), so a change writes only the
//! objects that differ instead of rereading 10,000 VIPs, and how many VIPs each DNAT map serves, so that the sync
//! which takes the last VIP out of a map deletes the map.
//! The table is the ownership record: everything in it is `lb`'s, nothing outside it is touched.

pub mod netlink;
pub mod ruleset;

use super::{Capabilities, Dataplane, DataplaneError, DataplaneSettings, ObservedServices};
use crate::model::{ServiceKey, Step, apply_step};
use crate::tool::{NFT, is_absent};
use netlink::NftSocket;
use ruleset::{Footprint, Listing};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// Drives `nft` for one table.
#[derive(Debug)]
pub struct NftDataplane {
    settings: DataplaneSettings,
    /// What the table holds for each VIP, as of the last listing plus the transactions applied since.
    footprints: BTreeMap<ServiceKey, Footprint>,
    /// The listing [`Dataplane::prepare`] made, kept for the [`Dataplane::observe`] that always follows it, so a
    /// start or a repair lists a big table once rather than twice.
    prepared: Option<Listing>,
    /// The DNAT maps the table holds, so a change declares a map (through `nft`) only when it is new.
    maps: BTreeSet<String>,
    /// VIPs with elements in each DNAT map, by the footprints: a map that drops out is no VIP's any more.
    map_users: BTreeMap<String, usize>,
    /// The netlink socket changes go through, opened on first use.
    socket: Option<NftSocket>,
}

impl NftDataplane {
    /// A dataplane for the table named in `settings`.
    pub fn new(settings: DataplaneSettings) -> Self {
        Self { settings, footprints: BTreeMap::new(), prepared: None, maps: BTreeSet::new(), map_users: BTreeMap::new(), socket: None }
    }

    fn list(&mut self) -> Result<Listing, DataplaneError> {
        let listing = match self.read() {
            Ok(listing) => listing,
            Err(err) => {
                tracing::info!(table = %self.settings.nft_table, error = %err, "could not read the nftables table over netlink; asking nft");
                self.socket = None;
                self.list_through_nft()?
            }
        };
        self.footprints.clone_from(&listing.footprints);
        self.maps.clone_from(&listing.maps);
        self.map_users.clear();
        for footprint in self.footprints.values() {
            count_users(&mut self.map_users, footprint, true);
        }
        Ok(listing)
    }

    /// Reads the table over netlink: `nft -j list` spends seconds printing a big table.
    fn read(&mut self) -> Result<Listing, DataplaneError> {
        let socket = match &mut self.socket {
            Some(socket) => socket,
            None => self.socket.insert(NftSocket::open()?),
        };
        Ok(match socket.list_table(&self.settings.nft_table)? {
            Some(raw) => ruleset::listing_from_raw(&raw, &self.settings),
            None => Listing::default(),
        })
    }

    fn list_through_nft(&self) -> Result<Listing, DataplaneError> {
        let table = &self.settings.nft_table;
        let listing = match nft(&["-j", "list", "table", "inet", table], None) {
            Ok(stdout) => ruleset::parse_listing(&stdout, &self.settings).map_err(DataplaneError::Observe)?,
            // The table not existing yet is the normal state of a fresh machine.
            Err(err) if is_absent(&err) => Listing::default(),
            Err(err) => return Err(err),
        };
        Ok(listing)
    }
}

/// Runs `nft`, telling a kernel without nftables apart from an ordinary failure.
pub fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, DataplaneError> {
    NFT.run(args, stdin).map_err(|err| match err {
        DataplaneError::Tool { detail, .. } if detail.contains("Protocol not supported") || detail.contains("Operation not permitted") => {
            DataplaneError::Unavailable {
                dataplane: "nftables",
                why: format!("the kernel refused nftables; run lb as root on a kernel with nf_tables and nft_nat ({detail})"),
            }
        }
        other => other,
    })
}

impl NftDataplane {
    fn commit(&mut self, changes: &ruleset::Changes) -> Result<(), DataplaneError> {
        let socket = match &mut self.socket {
            Some(socket) => socket,
            None => self.socket.insert(NftSocket::open()?),
        };
        let started = Instant::now();
        let mut batch = socket.batch(&self.settings.nft_table);
        changes.encode(&mut batch);
        let (messages, bytes, encoded) = (batch.messages(), batch.len(), started.elapsed());
        socket.commit(batch)?;
        tracing::debug!(messages, bytes, encode_seconds = encoded.as_secs_f64(), seconds = started.elapsed().as_secs_f64(), "nftables batch committed");
        Ok(())
    }

    /// Deletes the DNAT maps no VIP has elements in any more (the last VIP of a shard went, or moved to the other
    /// kind of map), through `nft` as they were declared. The sync has already succeeded, so a refusal (say, a rule
    /// someone else added still uses the map) is logged and the map is left alone until the table is next listed.
    fn delete_unused_maps(&mut self) {
        let unused: Vec<String> = self.maps.iter().filter(|map| !self.map_users.contains_key(*map)).cloned().collect();
        if unused.is_empty() {
            return;
        }
        let table = &self.settings.nft_table;
        let commands = ruleset::delete_maps(table, &unused);
        match nft(&["-f", "-"], Some(&ruleset::transaction(&commands))) {
            Ok(_) => tracing::debug!(table = %table, maps = ?unused, "deleted DNAT maps no VIP uses"),
            Err(err) => tracing::warn!(table = %table, maps = ?unused, error = %err, "could not delete DNAT maps no VIP uses; they stay, empty"),
        }
        for map in &unused {
            self.maps.remove(map);
        }
    }
}

/// Counts a VIP in (`add`) or out of the maps its elements are in.
fn count_users(users: &mut BTreeMap<String, usize>, footprint: &Footprint, add: bool) {
    // The slots are ordered by map, so each map a VIP uses comes up once.
    let mut previous = None;
    for (map, _) in &footprint.slots {
        if previous == Some(map) {
            continue;
        }
        previous = Some(map);
        match (users.get_mut(map), add) {
            (Some(count), true) => *count += 1,
            (None, true) => {
                users.insert(map.clone(), 1);
            }
            (Some(count), false) if *count > 1 => *count -= 1,
            (Some(_), false) => {
                users.remove(map);
            }
            (None, false) => {}
        }
    }
}

impl Dataplane for NftDataplane {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { keeps_zero_weight_destinations: false }
    }

    fn prepare(&mut self) -> Result<(), DataplaneError> {
        let listing = self.list()?;
        if !listing.base_intact {
            tracing::info!(table = %self.settings.nft_table, "writing the nftables base chains");
            let commands = ruleset::base(&self.settings.nft_table, &self.settings);
            nft(&["-f", "-"], Some(&ruleset::transaction(&commands)))?;
        }
        // Writing the base touches no VIP, so the listing still tells what the VIPs are.
        self.prepared = Some(listing);
        Ok(())
    }

    fn observe(&mut self) -> Result<ObservedServices, DataplaneError> {
        let listing = match self.prepared.take() {
            Some(listing) => listing,
            None => self.list()?,
        };
        for damaged in &listing.damaged {
            tracing::warn!(table = %self.settings.nft_table, %damaged, "an nftables object in lb's table is not as lb wrote it; it will be rewritten");
        }
        Ok(listing.services)
    }

    fn apply(&mut self, before: &ObservedServices, steps: &[Step]) -> Result<(), DataplaneError> {
        self.prepared = None;
        let touched: BTreeSet<ServiceKey> = steps.iter().map(Step::service).collect();
        let mut after: ObservedServices = touched.iter().filter_map(|key| Some((*key, before.get(key)?.clone()))).collect();
        for step in steps {
            apply_step(&mut after, step, true);
        }
        let table = &self.settings.nft_table.clone();
        let mut changes = ruleset::Changes::default();
        let mut footprints = Vec::with_capacity(touched.len());
        let absent = Footprint::default();
        for key in &touched {
            let present = self.footprints.get(key).unwrap_or(&absent);
            footprints.push((*key, changes.service(table, key, present, after.get(key), &self.settings)));
        }
        // New maps are declared first, through nft: an empty map changes no traffic.
        let new_maps: Vec<&String> = changes.maps().filter(|(name, _)| !self.maps.contains(*name)).map(|(_, declaration)| declaration).collect();
        if !new_maps.is_empty() {
            let mut commands = ruleset::skeleton(table);
            commands.extend(new_maps.into_iter().cloned());
            nft(&["-f", "-"], Some(&ruleset::transaction(&commands)))?;
            self.maps.extend(changes.maps().map(|(name, _)| name.clone()));
        }
        // A batch applies whole or not at all, so on failure the footprints still describe the table.
        if let Err(err) = self.commit(&changes) {
            // Replay it as text: nft recreates what someone deleted (the skeleton, the maps), and if the kernel
            // still refuses, nft's error names the command.
            tracing::info!(table = %table, error = %err, "the nftables batch was refused; replaying it through nft");
            self.socket = None;
            let mut commands = ruleset::skeleton(table);
            commands.extend(changes.commands(table));
            nft(&["-f", "-"], Some(&ruleset::transaction(&commands)))?;
        }
        for (key, footprint) in footprints {
            if let Some(previous) = self.footprints.get(&key) {
                count_users(&mut self.map_users, previous, false);
            }
            count_users(&mut self.map_users, &footprint, true);
            if footprint == Footprint::default() {
                self.footprints.remove(&key);
            } else {
                self.footprints.insert(key, footprint);
            }
        }
        self.delete_unused_maps();
        Ok(())
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        self.maps.clear();
        match nft(&["delete", "table", "inet", &self.settings.nft_table], None) {
            Err(err) if is_absent(&err) => Ok(()),
            other => other.map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DestinationKey;
    use ruleset::SlotRange;

    fn footprint(slots: &[(&str, u64)]) -> Footprint {
        let backend = DestinationKey { address: "198.18.4.1".parse().unwrap(), port: 10001 };
        let slots = slots.iter().map(|(map, slot)| ((*map).to_owned(), SlotRange { first: *slot, last: *slot, backend })).collect();
        Footprint { target: None, chain: true, slots }
    }

    #[test]
    fn a_map_keeps_its_count_of_vips_until_the_last_one_leaves() {
        let mut users = BTreeMap::new();
        let (one, two) = (footprint(&[("unweighted4_tcp_7", 0), ("unweighted4_tcp_7", 1)]), footprint(&[("unweighted4_tcp_7", 0)]));
        let moving = footprint(&[("backends4_tcp_7", 0), ("unweighted4_tcp_9", 1)]);
        for vip in [&one, &two, &moving] {
            count_users(&mut users, vip, true);
        }
        // A VIP counts once per map, however many of its elements are there.
        let expected: BTreeMap<String, usize> =
            [("backends4_tcp_7", 1), ("unweighted4_tcp_7", 2), ("unweighted4_tcp_9", 1)].map(|(m, n)| (m.to_owned(), n)).into();
        assert_eq!(users, expected);
        count_users(&mut users, &one, false);
        count_users(&mut users, &moving, false);
        assert_eq!(users, [("unweighted4_tcp_7".to_owned(), 1)].into());
        count_users(&mut users, &two, false);
        // Taking out a VIP that was never counted changes nothing.
        count_users(&mut users, &two, false);
        assert!(users.is_empty());
    }
}
