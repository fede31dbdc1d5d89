//! Maglev consistent hashing: a lookup table mapping a key's hash to an endpoint, built so that adding or
//! removing one endpoint moves only about 1/n of the keys, and every endpoint owns an equal share of slots.
//!
//! The hash functions use fixed seeds, so every router instance builds the same table for the same endpoint set
//! and a key lands on the same instance whichever router serves it.

use std::hash::BuildHasher;

const SEED_OFFSET: u64 = 0x5357_4954_4348_0001;
const SEED_SKIP: u64 = 0x5357_4954_4348_0002;
const SEED_KEY: u64 = 0x5357_4954_4348_0003;

/// Table sizes: primes, so that every skip value generates a full permutation.
const PRIMES: [usize; 10] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, LARGEST_TABLE];
const LARGEST_TABLE: usize = 131_071;

fn hash_with(seed: u64, value: &[u8]) -> u64 {
    foldhash::fast::FixedState::with_seed(seed).hash_one(value)
}

/// Hash of a request key (for example a header value), for [`slot`].
pub fn key_hash(key: &[u8]) -> u64 {
    hash_with(SEED_KEY, key)
}

/// The table size used for `endpoints` entries: a prime at least 100 times larger, within bounds.
pub fn table_size(endpoints: usize) -> usize {
    let wanted = endpoints.saturating_mul(100);
    PRIMES.iter().copied().find(|&p| p >= wanted).unwrap_or(LARGEST_TABLE)
}

/// Builds the lookup table for endpoints named by `names` (stable identities such as `host:port`).
/// Slot values index into `names`. Empty input gives an empty table.
#[allow(
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    reason = "slots are reduced modulo the table size, indices come from enumerate, and pools hold far fewer than 2^32 endpoints"
)]
pub fn build(names: &[&str]) -> Box<[u32]> {
    if names.is_empty() {
        return Box::new([]);
    }
    let size = table_size(names.len());
    let size_u64 = size as u64;
    let permutations: Vec<(u64, u64)> = names
        .iter()
        .map(|name| {
            let offset = hash_with(SEED_OFFSET, name.as_bytes()) % size_u64;
            let skip = hash_with(SEED_SKIP, name.as_bytes()) % (size_u64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; names.len()];
    let mut table = vec![u32::MAX; size];
    let mut filled = 0;
    'fill: loop {
        for (index, &(offset, skip)) in permutations.iter().enumerate() {
            let cursor = &mut next[index];
            loop {
                let slot = ((offset + *cursor * skip) % size_u64) as usize;
                *cursor += 1;
                if table[slot] == u32::MAX {
                    table[slot] = index as u32;
                    filled += 1;
                    break;
                }
            }
            if filled == size {
                break 'fill;
            }
        }
    }
    table.into_boxed_slice()
}

/// The slot for `hash` in a table of `len` slots; walking forward from it gives fallbacks in a stable order.
#[allow(clippy::cast_possible_truncation, reason = "the result is below len, which is a usize")]
pub fn slot(hash: u64, len: usize) -> usize {
    if len == 0 { 0 } else { (hash % len as u64) as usize }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250)).collect()
    }

    #[test]
    fn every_slot_is_filled_evenly() {
        let owned = names(7);
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        let table = build(&refs);
        assert_eq!(table.len(), table_size(7));
        let mut counts = [0usize; 7];
        for &slot in table.iter() {
            counts[slot as usize] += 1;
        }
        let ideal = table.len() / 7;
        for count in counts {
            assert!(count.abs_diff(ideal) <= 1, "uneven share {count} vs {ideal}");
        }
    }

    #[test]
    fn removing_one_endpoint_moves_few_keys() {
        let owned = names(10);
        let before: Vec<&str> = owned.iter().map(String::as_str).collect();
        let after: Vec<&str> = before.iter().copied().filter(|n| *n != before[3]).collect();
        let (t1, t2) = (build(&before), build(&after));
        let mut moved = 0;
        let keys = 10_000u32;
        for key in 0..keys {
            let h = key_hash(&key.to_le_bytes());
            let a = before[t1[slot(h, t1.len())] as usize];
            let b = after[t2[slot(h, t2.len())] as usize];
            if a != b && a != before[3] {
                moved += 1;
            }
        }
        // Keys of surviving endpoints should almost all stay; allow a few percent of churn.
        assert!(moved < keys / 20, "{moved} keys moved");
    }

    #[test]
    fn tables_are_identical_across_builds() {
        let owned = names(5);
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        assert_eq!(build(&refs), build(&refs));
        assert!(build(&[]).is_empty());
    }
}
