//! The route table readers see: host → (root pool | context paths) → pool.
//!
//! # Concurrency
//!
//! A [`RouteTable`] value is immutable once published. The registry (the single writer) derives the next version
//! from its own copy and publishes it with one pointer swap (`ArcSwap<RouteTable>` in `bus.rs`); the proxy workers
//! read whichever version the swap last published, with no lock and no wait, and a version lives as long as a
//! reader still holds it. Nothing in a published version is ever written again, apart from the atomics inside
//! pools and endpoints.
//!
//! Structural sharing keeps a derivation cheap. The table is a hash table cut into 4,096 leaves by the top twelve
//! bits of each host's hash, under a two-level fan-out (64 chunks of 64 leaves), every level behind an `Arc`.
//! Changing one host copies the root (64 pointers), one chunk (64 leaves) and one leaf (a few hundred slots at a
//! million routes) the first time they are touched after a publish (`Arc::make_mut`), and nothing else, so a
//! registration costs the same in a table of ten routes as in one of a million, and a batch of registrations
//! copies each touched leaf once. There is no global rehash: each leaf grows and shrinks on its own.
//!
//! # Lookup
//!
//! A leaf is a flat Robin Hood hash table of 16-byte slots (a 32-bit tag and one pointer), so a probe reads one
//! or two adjacent cache lines, and a miss (the exact host and the first wildcards of a wildcard walk usually
//! miss) ends as soon as the probe passes where the key would be, without touching any key. A hit is confirmed
//! against the key of the pool itself (for a host with only a root route, by far the most common case; a key of
//! up to 45 bytes lives inside the pool, so this reads no further memory) or of the host's route list, so the host
//! is stored once. A host with context paths keeps its name and its routes in one allocation, the routes grouped
//! by depth and sorted within a group, so finding the longest match reads that one block and binary-searches each
//! route depth present, deepest first. Paths sort as bytes except that `/` comes before every other byte; in that
//! order a stored path compares with a whole request path as it does with the request's first segments, so a
//! request path in normal form (lower case, no empty segment: the usual case) is compared as it is, with no pass
//! to find where its segments end. Any other is compared segment by segment, case-insensitively, in the same
//! order. Neither allocates.
//!
//! A request names its exact host and then the wildcards above it, and the table is asked only for the wildcards
//! whose suffix length some wildcard host in it has (`route_key::WildcardLengths`). In a big table every name
//! asked for is a cache miss, so the home slots of a request's first few names are read before any is probed: the
//! misses overlap instead of queueing, and a request that misses its exact host and a wildcard before it hits
//! costs little more than an exact hit.

use crate::pool::Pool;
use crate::route_key::{HostName, RequestHost, RouteKey, WildcardLengths};
use compact_str::CompactString;
use std::cmp::Ordering;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use triomphe::ThinArc;
use wide::u8x16;

/// Chunks under the root, and leaves under a chunk.
const FAN_OUT: usize = 64;
/// Bits of a hash that pick the chunk, then the leaf.
const FAN_OUT_BITS: u32 = FAN_OUT.trailing_zeros();
/// A leaf grows when it would be fuller than this (percent)...
const MAX_LOAD_PERCENT: usize = 88;
/// ...to about this full, and shrinks back to it when less full than `SHRINK_LOAD_PERCENT`.
const GROWN_LOAD_PERCENT: usize = 70;
const SHRINK_LOAD_PERCENT: usize = 30;

/// A host's hash, split the way the table uses it.
#[derive(Debug, Clone, Copy)]
struct Hash {
    chunk: usize,
    leaf: usize,
    /// The low 32 bits: kept in the slot, so a probe rejects other hosts without reading their keys, and the
    /// source of the slot a host would like to be in (see [`home`]).
    tag: u32,
}

impl Hash {
    #[expect(clippy::cast_possible_truncation, reason = "the tag is the low 32 bits of the hash, on purpose")]
    fn of(hasher: &foldhash::fast::RandomState, bytes: &[u8]) -> Self {
        let hash = hasher.hash_one(bytes);
        let top = |shift: u32| usize::try_from(hash >> shift).unwrap_or(0) % FAN_OUT;
        Self { chunk: top(64 - FAN_OUT_BITS), leaf: top(64 - 2 * FAN_OUT_BITS), tag: hash as u32 }
    }
}

/// The slot a tag would like to be in, in a leaf of `len` slots (the tag scaled to the leaf, so any size works).
fn home(tag: u32, len: usize) -> usize {
    usize::try_from((u64::from(tag) * len as u64) >> 32).unwrap_or(0)
}

/// One slot of a leaf.
#[derive(Debug, Clone, Default)]
enum Slot {
    #[default]
    Empty,
    /// A host whose only route is at its root: the pool, whose key is the host.
    Root { tag: u32, pool: Arc<Pool> },
    /// A host with context paths (and maybe a root route).
    Paths { tag: u32, routes: HostRoutes },
}

impl Slot {
    fn tag(&self) -> Option<u32> {
        match self {
            Self::Empty => None,
            Self::Root { tag, .. } | Self::Paths { tag, .. } => Some(*tag),
        }
    }

    /// The host's bytes (compared without a UTF-8 check: this runs on every probe that matches a tag).
    fn host(&self) -> &[u8] {
        match self {
            Self::Empty => &[],
            Self::Root { pool, .. } => pool.key().host_bytes(),
            Self::Paths { routes, .. } => routes.host(),
        }
    }

    /// The entry for a host's routes (`(context path, pool)`, any order): `None` when there are none.
    fn of_routes(tag: u32, host: &str, mut routes: Vec<(&str, Arc<Pool>)>) -> Option<Self> {
        match routes.as_slice() {
            [] => None,
            [("", _)] => routes.pop().map(|(_, pool)| Self::Root { tag, pool }),
            _ => Some(Self::Paths { tag, routes: HostRoutes::new(host, routes) }),
        }
    }

    /// The host's routes as `(context path, pool)`.
    fn routes(&self) -> Vec<(&str, Arc<Pool>)> {
        match self {
            Self::Empty => Vec::new(),
            Self::Root { pool, .. } => vec![("", Arc::clone(pool))],
            Self::Paths { routes, .. } => routes.iter().map(|(path, pool)| (path, Arc::clone(pool))).collect(),
        }
    }

    fn for_each_pool<'a>(&'a self, visit: &mut impl FnMut(&'a Arc<Pool>)) {
        match self {
            Self::Empty => {}
            Self::Root { pool, .. } => visit(pool),
            Self::Paths { routes, .. } => routes.routes().iter().for_each(|route| visit(&route.pool)),
        }
    }
}

/// The routes of a host with context paths: the host, then its routes, in one allocation, so a lookup that finds
/// the host's slot reads one more block of memory, not a chain of them. Hosts and paths up to 24 bytes are held
/// inline (longer ones take an allocation each).
#[derive(Debug, Clone)]
struct HostRoutes(ThinArc<HostHeader, PathRoute>);

/// What a host's block holds before its routes.
#[derive(Debug)]
struct HostHeader {
    host: CompactString,
    /// The length of the longest context path: how much of a request path a search can read.
    longest: usize,
}

#[derive(Debug)]
struct PathRoute {
    /// The context path (`""` for the root route).
    path: CompactString,
    /// Segments in the path.
    depth: usize,
    pool: Arc<Pool>,
}

impl HostRoutes {
    fn new(host: &str, mut routes: Vec<(&str, Arc<Pool>)>) -> Self {
        // Deepest first; within a depth, in path order (see [`path_order`]).
        routes.sort_by(|(a, _), (b, _)| path_depth(b).cmp(&path_depth(a)).then_with(|| path_order(a.as_bytes(), b.as_bytes())));
        let longest = routes.iter().map(|(path, _)| path.len()).max().unwrap_or(0);
        let routes = routes.into_iter().map(|(path, pool)| PathRoute {
            path: CompactString::from(path),
            depth: path_depth(path),
            pool,
        });
        Self(ThinArc::from_header_and_iter(HostHeader { host: CompactString::from(host), longest }, routes))
    }

    fn host(&self) -> &[u8] {
        self.0.header.header.host.as_bytes()
    }

    fn routes(&self) -> &[PathRoute] {
        &self.0.slice
    }

    fn path(&self, index: usize) -> &str {
        self.routes().get(index).map_or("", |route| route.path.as_str())
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &Arc<Pool>)> {
        self.routes().iter().map(|route| (route.path.as_str(), &route.pool))
    }

    /// The route whose path is the longest whole-segment prefix of `path`, or (when `exact`) equal to it.
    ///
    /// Each route depth present is searched by bisection, deepest first. A request path whose first `longest + 1`
    /// bytes are already in normal form (the usual case) is compared whole, as bytes, with no pass to find where its
    /// segments end (see [`against_request`]); any other is compared segment by segment. Both agree with the order
    /// the routes are sorted in.
    fn find(&self, path: &str, exact: bool) -> Option<&Arc<Pool>> {
        let routes = self.routes();
        let as_bytes = normal_through(path.as_bytes(), self.0.header.header.longest.saturating_add(1));
        let mut start = 0;
        while let Some(depth) = routes.get(start).map(|route| route.depth) {
            let end = routes.partition_point(|route| route.depth >= depth);
            let order = |stored: &str| {
                if as_bytes { against_request(stored.as_bytes(), path.as_bytes()) } else { compare_path(stored, path, depth) }
            };
            let (mut low, mut high) = (start, end);
            while low < high {
                let middle = low + (high - low) / 2;
                match order(self.path(middle)) {
                    Ordering::Less => low = middle + 1,
                    Ordering::Greater => high = middle,
                    // A request deeper than this route cannot equal a shallower one either.
                    Ordering::Equal if exact && path_depth(path) != depth => return None,
                    Ordering::Equal => return routes.get(middle).map(|route| &route.pool),
                }
            }
            start = end;
        }
        None
    }
}

/// Bytes [`normal_through`] classifies at a time.
const LANE: usize = 16;

/// Which bytes of a block of up to [`LANE`] path bytes are `/`, and which are upper-case letters, as bit masks (bit
/// `i` for byte `i`): a few vector instructions for the whole block.
fn classify(block: &[u8]) -> (u32, u32) {
    let lane = match <[u8; LANE]>::try_from(block) {
        Ok(full) => full,
        Err(_) => {
            let mut short = [0u8; LANE];
            if let Some(head) = short.get_mut(..block.len()) {
                head.copy_from_slice(block);
            }
            short
        }
    };
    let lane = u8x16::new(lane);
    let slashes = lane.simd_eq(u8x16::splat(b'/')).to_bitmask();
    let upper = (lane - u8x16::splat(b'A')).simd_lt(u8x16::splat(26)).to_bitmask();
    (slashes, upper)
}

/// Whether the first `len` bytes of a request path (all of it, if shorter) are in normal form: a leading `/`, no
/// empty segment, no upper-case letter. Such a prefix compares with stored paths as it is.
fn normal_through(path: &[u8], len: usize) -> bool {
    let Some(&first) = path.first() else { return true };
    if first != b'/' {
        return false;
    }
    let read = path.get(..len).unwrap_or(path);
    // Whether the byte before the block is a `/`; the leading `/` is not an empty segment.
    let mut after_slash = false;
    for block in read.chunks(LANE) {
        let (slash, upper) = classify(block);
        let empty = slash & ((slash << 1) | u32::from(after_slash));
        if empty | upper != 0 {
            return false;
        }
        after_slash = slash & (1 << (LANE - 1)) != 0;
    }
    true
}

/// Where a byte sorts in a context path: `/` before every other byte, so that a path orders before any longer
/// path it is a whole-segment prefix of (`/a/b` before `/a/b-c`, though `-` is less than `/` as a byte).
fn path_rank(byte: u8) -> u16 {
    if byte == b'/' { 0 } else { u16::from(byte) + 1 }
}

/// Orders two context paths in normal form by [`path_rank`]: the order the routes of a host are kept in.
fn path_order(a: &[u8], b: &[u8]) -> Ordering {
    match first_difference(a, b) {
        Some(at) => a.get(at).map(|&x| path_rank(x)).cmp(&b.get(at).map(|&y| path_rank(y))),
        None => a.len().cmp(&b.len()),
    }
}

/// Orders a stored context path of `d` segments against the first `d` segments of a request path whose bytes
/// up to one past the stored path's length are in normal form, reading the request path as it is.
///
/// Because `/` sorts first, comparing against the whole request path gives the same answer as against its first
/// `d` segments, except where the stored path is a prefix of the request path: then it is equal to those segments
/// when the request path ends or goes on with a `/`, and shorter than them otherwise.
fn against_request(stored: &[u8], requested: &[u8]) -> Ordering {
    match (path_order(stored, requested.get(..stored.len()).unwrap_or(requested)), requested.get(stored.len())) {
        (Ordering::Equal, Some(b'/') | None) => Ordering::Equal,
        (Ordering::Equal, Some(_)) => Ordering::Less,
        (order, _) => order,
    }
}

/// Bytes [`first_difference`] compares at a time.
const WORD: usize = 8;

/// Where two byte strings first differ, within the shorter one's length: eight bytes at a time, the last eight
/// overlapping the ones before them rather than read one at a time.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    let len = a.len().min(b.len());
    let Some(last) = len.checked_sub(WORD) else { return a.iter().zip(b).position(|(x, y)| x != y) };
    let word = |bytes: &[u8], at: usize| bytes.get(at..at + WORD).and_then(|w| <[u8; WORD]>::try_from(w).ok()).map(u64::from_le_bytes);
    let mut next = 0;
    loop {
        let at = next.min(last);
        let differ = word(a, at).zip(word(b, at)).map_or(0, |(x, y)| x ^ y);
        if differ != 0 {
            // Little-endian: the lowest set byte is the first that differs.
            return Some(at + differ.trailing_zeros() as usize / 8);
        }
        if at == last {
            return None;
        }
        next = at + WORD;
    }
}

/// Segments in a path (empty ones not counted).
fn path_depth(path: &str) -> usize {
    path.split('/').filter(|segment| !segment.is_empty()).count()
}

/// Orders a stored context path (lower-case, normalised: `/seg/seg`) against the normalised form of the first
/// `depth` segments of a requested path (its empty segments dropped, its ASCII letters lowered), in
/// [`path_order`]. It compares a segment at a time in place instead of building the normalised request path.
fn compare_path(stored: &str, requested: &str, depth: usize) -> Ordering {
    let (mut stored, mut requested) = (stored.as_bytes(), requested.as_bytes());
    for _ in 0..depth {
        let Some(start) = requested.iter().position(|&b| b != b'/') else { break };
        let rest = requested.get(start..).unwrap_or_default();
        let (segment, after) = rest.split_at(rest.iter().position(|&b| b == b'/').unwrap_or(rest.len()));
        // The normalised request continues with `/` and the segment.
        match stored.split_first() {
            None => return Ordering::Less,
            Some((&b'/', tail)) => stored = tail,
            Some(_) => return Ordering::Greater,
        }
        for (&a, &b) in stored.iter().zip(segment) {
            let b = b.to_ascii_lowercase();
            if a != b {
                return path_rank(a).cmp(&path_rank(b));
            }
        }
        let Some(tail) = stored.get(segment.len()..) else { return Ordering::Less };
        stored = tail;
        requested = after;
    }
    if stored.is_empty() { Ordering::Equal } else { Ordering::Greater }
}

/// A leaf: a Robin Hood hash table with linear probing, whose slice length is its capacity.
#[derive(Debug, Clone)]
struct Leaf {
    slots: Arc<[Slot]>,
    /// Occupied slots.
    len: usize,
}

/// How far the entry with `tag` at `index` sits from its home, in a leaf of `len` slots.
fn distance(tag: u32, index: usize, len: usize) -> usize {
    let home = home(tag, len);
    if index >= home { index - home } else { index + len - home }
}

impl Leaf {
    fn empty() -> Self {
        Self { slots: Arc::from(Vec::new()), len: 0 }
    }

    /// The slot of the host with `tag`, confirmed by `is_host`.
    fn find(&self, tag: u32, is_host: impl Fn(&Slot) -> bool) -> Option<(usize, &Slot)> {
        let len = self.slots.len();
        let mut index = home(tag, len);
        for probed in 0..len {
            let slot = self.slots.get(index)?;
            let theirs = slot.tag()?;
            if theirs == tag && is_host(slot) {
                return Some((index, slot));
            }
            // Entries along a probe sequence are ordered by home, so one closer to its home than the host would be
            // to its own means the host is not in the leaf.
            if distance(theirs, index, len) < probed {
                return None;
            }
            index = if index + 1 == len { 0 } else { index + 1 };
        }
        None
    }

    /// Places a host that is not in the leaf yet, growing the leaf first when it is full.
    fn insert(&mut self, slot: Slot) {
        if (self.len + 1) * 100 > self.slots.len() * MAX_LOAD_PERCENT {
            self.resize(self.len + 1);
        }
        place(Arc::make_mut(&mut self.slots), slot);
        self.len += 1;
    }

    fn replace(&mut self, index: usize, slot: Slot) {
        if let Some(current) = Arc::make_mut(&mut self.slots).get_mut(index) {
            *current = slot;
        }
    }

    /// Empties the slot at `index`, shifting the entries after it back towards their homes (so the leaf needs no
    /// tombstones), and shrinks a leaf left mostly empty.
    fn remove(&mut self, index: usize) {
        let slots = Arc::make_mut(&mut self.slots);
        let len = slots.len();
        if slots.get_mut(index).map(std::mem::take).is_none() {
            return;
        }
        let mut hole = index;
        loop {
            let next = if hole + 1 == len { 0 } else { hole + 1 };
            match slots.get(next).and_then(Slot::tag) {
                Some(tag) if distance(tag, next, len) > 0 => {
                    slots.swap(hole, next);
                    hole = next;
                }
                _ => break,
            }
        }
        self.len -= 1;
        if self.len * 100 < self.slots.len() * SHRINK_LOAD_PERCENT {
            self.resize(self.len);
        }
    }

    /// Rebuilds the leaf with room for `entries` at the grown load.
    fn resize(&mut self, entries: usize) {
        let capacity = if entries == 0 { 0 } else { entries * 100 / GROWN_LOAD_PERCENT + 1 };
        let mut slots = vec![Slot::Empty; capacity];
        for slot in self.slots.iter().filter(|slot| slot.tag().is_some()) {
            place(&mut slots, slot.clone());
        }
        self.slots = slots.into();
    }
}

/// Puts `slot` where Robin Hood hashing wants it: entries richer (closer to home) than the one being placed give
/// up their place to it and move on. `slots` must have an empty slot.
fn place(slots: &mut [Slot], mut carried: Slot) {
    let len = slots.len();
    let Some(mut tag) = carried.tag() else { return };
    let mut index = home(tag, len);
    let mut travelled = 0;
    for _ in 0..len {
        let Some(current) = slots.get_mut(index) else { return };
        match current.tag() {
            None => {
                *current = carried;
                return;
            }
            Some(theirs) => {
                let theirs_travelled = distance(theirs, index, len);
                if theirs_travelled < travelled {
                    std::mem::swap(current, &mut carried);
                    tag = theirs;
                    travelled = theirs_travelled;
                }
            }
        }
        debug_assert_eq!(distance(tag, index, len), travelled);
        index = if index + 1 == len { 0 } else { index + 1 };
        travelled += 1;
    }
}

/// An immutable version of the routing table. Cloning is O(1).
#[derive(Clone)]
pub struct RouteTable {
    /// Hashes exact hosts...
    hasher: foldhash::fast::RandomState,
    /// ...and, with a seed of its own, the suffix a wildcard covers.
    wildcard_hasher: foldhash::fast::RandomState,
    /// `FAN_OUT` chunks of `FAN_OUT` leaves.
    chunks: Arc<[Arc<[Leaf]>]>,
    routes: usize,
    wildcards: WildcardLengths,
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable").field("routes", &self.routes).finish_non_exhaustive()
    }
}

impl Default for RouteTable {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteTable {
    /// An empty table. Its chunks and leaves all share one empty chunk and one empty leaf until written to.
    pub fn new() -> Self {
        let chunk: Arc<[Leaf]> = vec![Leaf::empty(); FAN_OUT].into();
        Self {
            hasher: foldhash::fast::RandomState::default(),
            wildcard_hasher: foldhash::fast::RandomState::default(),
            chunks: vec![chunk; FAN_OUT].into(),
            routes: 0,
            wildcards: WildcardLengths::new(),
        }
    }

    /// Number of routes (pools).
    pub fn len(&self) -> usize {
        self.routes
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes == 0
    }

    fn leaf(&self, hash: Hash) -> Option<&Leaf> {
        self.chunks.get(hash.chunk)?.get(hash.leaf)
    }

    /// The leaf for `hash`, copied first (with the root and its chunk) if a published version shares it.
    fn leaf_mut(&mut self, hash: Hash) -> Option<&mut Leaf> {
        let chunk = Arc::make_mut(&mut self.chunks).get_mut(hash.chunk)?;
        Arc::make_mut(chunk).get_mut(hash.leaf)
    }

    fn hash(&self, name: HostName<'_>) -> Hash {
        match name {
            HostName::Exact(host) => Hash::of(&self.hasher, host),
            HostName::Wildcard { suffix } => Hash::of(&self.wildcard_hasher, suffix),
        }
    }

    /// The slot holding the host `name`, whose hash is `hash`.
    fn find(&self, name: HostName<'_>, hash: Hash) -> Option<(usize, &Slot)> {
        self.leaf(hash)?.find(hash.tag, |slot| name.is(slot.host()))
    }

    /// The pool serving a request: exact host before wildcards, longest context path within a host. When the
    /// request has wildcards to try, the home slots of its first four names are read before any is probed, so
    /// their cache misses overlap (see the module docs).
    pub fn lookup(&self, host: &RequestHost, path: &str) -> Option<&Arc<Pool>> {
        let mut names = self.wildcards.names(host.as_bytes()).map(|name| (name, self.hash(name)));
        let exact = names.next()?;
        let Some(wildcard) = names.next() else { return self.route(exact, path) };
        let mut ahead = [Some(exact), Some(wildcard), None, None];
        for place in ahead.iter_mut().skip(2) {
            *place = names.next();
        }
        let touched = ahead.iter().flatten().fold(0, |touched, &(_, hash)| touched ^ self.home_tag(hash));
        // Keeps the reads above, whose values nothing else uses.
        std::hint::black_box(touched);
        ahead.into_iter().map_while(|probe| probe).chain(names).find_map(|probe| self.route(probe, path))
    }

    /// The pool serving `path` under the host `name`, if the table has that host.
    fn route(&self, (name, hash): (HostName<'_>, Hash), path: &str) -> Option<&Arc<Pool>> {
        match self.find(name, hash)?.1 {
            Slot::Root { pool, .. } => Some(pool),
            Slot::Paths { routes, .. } => routes.find(path, false),
            Slot::Empty => None,
        }
    }

    /// The tag in the slot a host with `hash` would like to be in (0 when none): reading it brings the slot's
    /// cache line in.
    fn home_tag(&self, hash: Hash) -> u32 {
        self.leaf(hash)
            .and_then(|leaf| leaf.slots.get(home(hash.tag, leaf.slots.len())))
            .and_then(Slot::tag)
            .unwrap_or(0)
    }

    /// The pool registered at exactly `key`.
    pub fn get(&self, key: &RouteKey) -> Option<&Arc<Pool>> {
        let name = HostName::of(key.host().as_bytes());
        match self.find(name, self.hash(name))?.1 {
            Slot::Root { pool, .. } => key.path().is_empty().then_some(pool),
            Slot::Paths { routes, .. } => routes.find(key.path(), true),
            Slot::Empty => None,
        }
    }

    /// Sets (`Some`) or removes (`None`) the pool at `key`. Returns the previous pool.
    pub fn set(&mut self, key: &RouteKey, pool: Option<Arc<Pool>>) -> Option<Arc<Pool>> {
        let (host, path) = (key.host(), key.path());
        let name = HostName::of(host.as_bytes());
        let hash = self.hash(name);
        let existing = self.find(name, hash).map(|(index, slot)| (index, slot.clone()));
        let mut routes = existing.as_ref().map(|(_, slot)| slot.routes()).unwrap_or_default();
        let adding = pool.is_some();
        let position = routes.iter().position(|(route, _)| *route == path);
        let previous = match (position.and_then(|at| routes.get_mut(at)), pool) {
            (Some((_, current)), Some(pool)) => Some(std::mem::replace(current, pool)),
            (Some(_), None) => position.map(|at| routes.swap_remove(at).1),
            (None, Some(pool)) => {
                routes.push((path, pool));
                None
            }
            (None, None) => return None,
        };
        let replacement = Slot::of_routes(hash.tag, host, routes);
        let Some(leaf) = self.leaf_mut(hash) else { return previous };
        match (existing, replacement) {
            (Some((index, _)), Some(slot)) => leaf.replace(index, slot),
            (Some((index, _)), None) => {
                leaf.remove(index);
                self.wildcards.count(name, false);
            }
            (None, Some(slot)) => {
                leaf.insert(slot);
                self.wildcards.count(name, true);
            }
            (None, None) => {}
        }
        match (previous.is_some(), adding) {
            (false, true) => self.routes += 1,
            (true, false) => self.routes -= 1,
            _ => {}
        }
        previous
    }

    /// Visits every pool.
    pub fn for_each_pool<'a>(&'a self, mut visit: impl FnMut(&'a Arc<Pool>)) {
        for chunk in self.chunks.iter() {
            for leaf in chunk.iter() {
                leaf.slots.iter().for_each(|slot| slot.for_each_pool(&mut visit));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_config::messages::LbAlgorithm;

    fn pool(uri: &str) -> Arc<Pool> {
        Arc::new(Pool::new(RouteKey::parse(uri).unwrap(), Vec::new(), LbAlgorithm::RoundRobin, None, 0, 1))
    }

    fn table(uris: &[&str]) -> RouteTable {
        let mut table = RouteTable::new();
        for uri in uris {
            table.set(&RouteKey::parse(uri).unwrap(), Some(pool(uri)));
        }
        table
    }

    fn route(table: &RouteTable, host: &str, path: &str) -> Option<String> {
        let host = RequestHost::parse(host.as_bytes())?;
        table.lookup(&host, path).map(|p| p.key().to_string())
    }

    #[test]
    fn longest_whole_segment_prefix_wins() {
        let t = table(&["app.com", "app.com/foo", "app.com/foo/bar/baz"]);
        assert_eq!(route(&t, "app.com", "/").as_deref(), Some("app.com"));
        assert_eq!(route(&t, "app.com", "/foo").as_deref(), Some("app.com/foo"));
        assert_eq!(route(&t, "app.com", "/foo/").as_deref(), Some("app.com/foo"));
        assert_eq!(route(&t, "app.com", "/foo/bar").as_deref(), Some("app.com/foo"));
        assert_eq!(route(&t, "app.com", "/foo/bar/baz/qux").as_deref(), Some("app.com/foo/bar/baz"));
        assert_eq!(route(&t, "app.com", "/foobar").as_deref(), Some("app.com"));
        assert_eq!(route(&t, "APP.com:80", "/FOO/x").as_deref(), Some("app.com/foo"));
    }

    #[test]
    fn paths_that_differ_by_a_byte_below_slash_are_told_apart() {
        // `-` and `.` are less than `/` as bytes, so these sit next to each other in the search.
        let t = table(&["app.com/a/b", "app.com/a/b-c", "app.com/a-b", "app.com/a/b.c/d", "app.com/a"]);
        for (path, expected) in [
            ("/a/b", "app.com/a/b"),
            ("/a/b/x", "app.com/a/b"),
            ("/a/b-c", "app.com/a/b-c"),
            ("/a/b-c/x", "app.com/a/b-c"),
            ("/a/b-", "app.com/a"),
            ("/a/b.c", "app.com/a"),
            ("/a/b.c/d/e", "app.com/a/b.c/d"),
            ("/a-b/x", "app.com/a-b"),
            ("/a-bc", ""),
            ("/A//B-C/x", "app.com/a/b-c"),
            ("/a//b.c//d", "app.com/a/b.c/d"),
        ] {
            assert_eq!(route(&t, "app.com", path).unwrap_or_default(), expected, "{path}");
        }
    }

    #[test]
    fn context_path_without_root_route_does_not_catch_everything() {
        let t = table(&["app.com/foo"]);
        assert_eq!(route(&t, "app.com", "/foo/x").as_deref(), Some("app.com/foo"));
        assert_eq!(route(&t, "app.com", "/"), None);
        assert_eq!(route(&t, "app.com", "/foobar"), None);
    }

    #[test]
    fn exact_host_beats_wildcards_and_specific_wildcards_beat_general_ones() {
        let t = table(&["*.example.com", "*.b.example.com", "a.b.example.com", "*.com"]);
        assert_eq!(route(&t, "a.b.example.com", "/").as_deref(), Some("a.b.example.com"));
        assert_eq!(route(&t, "x.b.example.com", "/").as_deref(), Some("*.b.example.com"));
        assert_eq!(route(&t, "deep.x.y.example.com", "/").as_deref(), Some("*.example.com"));
        assert_eq!(route(&t, "other.com", "/").as_deref(), Some("*.com"));
        assert_eq!(route(&t, "example.org", "/"), None);
        // A long walk: twelve labels below the most specific wildcard that matches.
        let t3 = table(&["*.com", "*.k.l.com/p"]);
        let deep = "a.b.c.d.e.f.g.h.i.j.k.l.com";
        assert_eq!(route(&t3, deep, "/p").as_deref(), Some("*.k.l.com/p"));
        assert_eq!(route(&t3, deep, "/q").as_deref(), Some("*.com"));
        // The wildcard does not match its own apex.
        let t2 = table(&["*.example.com"]);
        assert_eq!(route(&t2, "example.com", "/"), None);
    }

    #[test]
    fn exact_host_with_unmatched_path_falls_back_to_wildcard() {
        let t = table(&["app.example.com/api", "*.example.com"]);
        assert_eq!(route(&t, "app.example.com", "/api/v1").as_deref(), Some("app.example.com/api"));
        assert_eq!(route(&t, "app.example.com", "/web").as_deref(), Some("*.example.com"));
    }

    #[test]
    fn removal_prunes_and_counts() {
        let mut t = table(&["app.com", "app.com/a/b", "app.com/a/c"]);
        assert_eq!(t.len(), 3);
        assert!(t.set(&RouteKey::parse("app.com/a/b").unwrap(), None).is_some());
        assert_eq!(t.len(), 2);
        assert_eq!(route(&t, "app.com", "/a/b").as_deref(), Some("app.com"));
        assert_eq!(route(&t, "app.com", "/a/c").as_deref(), Some("app.com/a/c"));
        assert!(t.set(&RouteKey::parse("app.com/a/c").unwrap(), None).is_some());
        assert!(t.set(&RouteKey::parse("app.com").unwrap(), None).is_some());
        assert!(t.is_empty());
        assert!(t.set(&RouteKey::parse("app.com").unwrap(), None).is_none());
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn old_versions_are_unaffected_by_new_ones() {
        let before = table(&["app.com"]);
        let mut after = before.clone();
        after.set(&RouteKey::parse("app.com").unwrap(), None);
        after.set(&RouteKey::parse("new.com").unwrap(), Some(pool("new.com")));
        assert_eq!(route(&before, "app.com", "/").as_deref(), Some("app.com"));
        assert_eq!(route(&before, "new.com", "/"), None);
        assert_eq!(route(&after, "app.com", "/"), None);
    }

    #[test]
    fn exact_get_and_iteration() {
        let t = table(&["a.com", "a.com/x", "b.com/y/z"]);
        assert!(t.get(&RouteKey::parse("a.com/x").unwrap()).is_some());
        assert!(t.get(&RouteKey::parse("b.com/y").unwrap()).is_none());
        let mut seen = Vec::new();
        t.for_each_pool(|p| seen.push(p.key().to_string()));
        seen.sort();
        assert_eq!(seen, ["a.com", "a.com/x", "b.com/y/z"]);
    }

    /// Checks every leaf: its count, its load bounds, and the Robin Hood invariants (no gap between an entry and
    /// its home, distances along a run grow by at most one per slot, each entry findable by its own host).
    /// Returns the occupied slots.
    fn check_leaves(table: &RouteTable) -> usize {
        let mut hosts = 0;
        for chunk in table.chunks.iter() {
            for leaf in chunk.iter() {
                let len = leaf.slots.len();
                let occupied = leaf.slots.iter().filter(|slot| slot.tag().is_some()).count();
                assert_eq!(occupied, leaf.len, "leaf count");
                assert!(leaf.len * 100 <= len * MAX_LOAD_PERCENT, "leaf over-full: {} of {len}", leaf.len);
                assert!(leaf.len * 100 >= len * SHRINK_LOAD_PERCENT, "leaf not shrunk: {} of {len}", leaf.len);
                for (index, slot) in leaf.slots.iter().enumerate() {
                    let Some(tag) = slot.tag() else { continue };
                    let travelled = distance(tag, index, len);
                    for back in 1..=travelled {
                        let before = (index + len - back) % len;
                        assert!(leaf.slots[before].tag().is_some(), "gap between an entry and its home");
                    }
                    let previous = &leaf.slots[(index + len - 1) % len];
                    if let Some(theirs) = previous.tag() {
                        assert!(travelled <= distance(theirs, (index + len - 1) % len, len) + 1, "Robin Hood order");
                    }
                    let found = leaf.find(tag, |other| other.host() == slot.host()).map(|(at, _)| at);
                    assert_eq!(found, Some(index), "entry {:?} findable", String::from_utf8_lossy(slot.host()));
                }
                hosts += occupied;
            }
        }
        hosts
    }

    fn key(uri: &str) -> RouteKey {
        RouteKey::parse(uri).unwrap()
    }

    #[test]
    fn leaves_grow_and_shrink_across_many_inserts_and_removes() {
        const HOSTS: usize = 30_000;
        let mut t = RouteTable::new();
        let uri = |i: usize| if i.is_multiple_of(5) { format!("h{i}.example.com/p/{}", i % 7) } else { format!("h{i}.example.com") };
        for i in 0..HOSTS {
            assert!(t.set(&key(&uri(i)), Some(pool(&uri(i)))).is_none());
        }
        assert_eq!(t.len(), HOSTS);
        assert_eq!(check_leaves(&t), HOSTS);
        let largest = t.chunks.iter().flat_map(|chunk| chunk.iter()).map(|leaf| leaf.slots.len()).max().unwrap();
        assert!(largest > 8, "leaves grew past their first sizes ({largest})");
        for i in (0..HOSTS).step_by(97) {
            assert_eq!(route(&t, &format!("H{i}.Example.COM"), &format!("/P/{}/x", i % 7)).as_deref(), Some(uri(i).as_str()));
        }
        // Remove four in five, checking as the leaves shrink.
        for i in (0..HOSTS).filter(|i| i % 5 != 1) {
            assert_eq!(t.set(&key(&uri(i)), None).map(|p| p.key().to_string()), Some(uri(i)));
            if i.is_multiple_of(4_999) {
                check_leaves(&t);
            }
        }
        assert_eq!(t.len(), HOSTS / 5);
        assert_eq!(check_leaves(&t), HOSTS / 5);
        for i in 0..HOSTS {
            let expected = (i % 5 == 1).then(|| uri(i));
            assert_eq!(t.get(&key(&uri(i))).map(|p| p.key().to_string()), expected);
        }
        for i in (0..HOSTS).filter(|i| i % 5 == 1) {
            assert!(t.set(&key(&uri(i)), None).is_some());
        }
        assert!(t.is_empty());
        assert_eq!(check_leaves(&t), 0);
        assert!(t.chunks.iter().flat_map(|chunk| chunk.iter()).all(|leaf| leaf.slots.is_empty()), "empty leaves hold nothing");
    }

    /// Every route of `table`, by walking it.
    fn snapshot(table: &RouteTable) -> Vec<String> {
        let mut seen = Vec::new();
        table.for_each_pool(|p| seen.push(p.key().to_string()));
        seen.sort();
        seen
    }

    #[test]
    fn a_published_version_is_unchanged_by_later_edits() {
        let uris: Vec<String> = (0..5_000usize).map(|i| if i.is_multiple_of(3) { format!("a{i}.com/x/{i}") } else { format!("a{i}.com") }).collect();
        let refs: Vec<&str> = uris.iter().map(String::as_str).collect();
        let published = table(&refs);
        let before = snapshot(&published);
        let old_pool = Arc::clone(published.get(&key("a1.com")).unwrap());
        let mut next = published.clone();
        let mut expected = uris.len();
        for (i, uri) in uris.iter().enumerate() {
            match i % 4 {
                0 => {
                    next.set(&key(uri), None);
                    expected -= 1;
                }
                1 => {
                    next.set(&key(uri), Some(pool(uri)));
                }
                2 => {
                    let deeper = format!("{uri}/deeper");
                    next.set(&key(&deeper), Some(pool(&deeper)));
                    expected += 1;
                }
                _ => {}
            }
        }
        for i in 0..2_000 {
            let uri = format!("new{i}.org");
            next.set(&key(&uri), Some(pool(&uri)));
            expected += 1;
        }
        assert_eq!(snapshot(&published), before, "the published version still holds exactly what it held");
        assert_eq!(published.len(), uris.len());
        check_leaves(&published);
        assert!(Arc::ptr_eq(published.get(&key("a1.com")).unwrap(), &old_pool));
        assert!(!Arc::ptr_eq(next.get(&key("a1.com")).unwrap(), &old_pool), "the edit replaced the pool in the new version");
        assert_eq!(route(&published, "new5.org", "/"), None);
        assert_eq!(route(&next, "new5.org", "/").as_deref(), Some("new5.org"));
        assert_eq!(route(&published, "a2.com", "/deeper"), Some("a2.com".to_owned()));
        assert_eq!(route(&next, "a2.com", "/deeper").as_deref(), Some("a2.com/deeper"));
        assert_eq!(route(&published, "a0.com", "/x/0").as_deref(), Some("a0.com/x/0"));
        assert_eq!(route(&next, "a0.com", "/x/0"), None);
        assert_eq!(next.len(), expected);
        assert_eq!(snapshot(&next).len(), expected);
        check_leaves(&next);
        // Editing the new version again after cloning it leaves that clone alone too.
        let second = next.clone();
        next.set(&key("new5.org"), None);
        assert_eq!(route(&second, "new5.org", "/").as_deref(), Some("new5.org"));
    }

    #[test]
    fn deep_paths_match_the_longest_whole_segment_prefix_at_every_depth() {
        let t = table(&[
            "deep.com/a",
            "deep.com/a/b/c",
            "deep.com/a/b/c/d/e/f",
            "deep.com/a/bc",
            "deep.com/a/b/cd",
            "deep.com/z/y/x/w/v/u/t",
            "deep.com/a/b/c/d/e/g",
            "*.deep.com/a/b",
        ]);
        let cases = [
            ("/a", Some("deep.com/a")),
            ("/a/b", Some("deep.com/a")),
            ("/a/bc/x", Some("deep.com/a/bc")),
            ("/a/b/c", Some("deep.com/a/b/c")),
            ("/a/b/cd", Some("deep.com/a/b/cd")),
            ("/a/b/cde", Some("deep.com/a")),
            ("/a/b/c/d/e", Some("deep.com/a/b/c")),
            ("/a/b/c/d/e/f/g/h/i/j", Some("deep.com/a/b/c/d/e/f")),
            ("/a/b/c/d/e/g", Some("deep.com/a/b/c/d/e/g")),
            ("/A/B/C/D/E/F", Some("deep.com/a/b/c/d/e/f")),
            ("//a//b///c/", Some("deep.com/a/b/c")),
            ("/z/y/x/w/v/u/t/s", Some("deep.com/z/y/x/w/v/u/t")),
            ("/z/y/x/w/v/u", None),
            ("/", None),
            ("", None),
            ("/b", None),
        ];
        for (path, expected) in cases {
            assert_eq!(route(&t, "deep.com", path).as_deref(), expected, "path {path}");
        }
        // A host below deep.com has only the wildcard's route.
        assert_eq!(route(&t, "x.deep.com", "/a/b/c").as_deref(), Some("*.deep.com/a/b"));
        assert_eq!(route(&t, "x.y.deep.com", "/a"), None);
        assert!(t.get(&key("deep.com/a/b")).is_none());
        assert!(t.get(&key("deep.com/A/B/C")).is_some());
    }

    #[test]
    fn matching_ignores_ascii_case_on_both_sides() {
        let t = table(&["MiXeD.Example.COM/Api/V2", "*.Wild.ORG", "ROOT.net"]);
        assert_eq!(route(&t, "mixed.example.com", "/api/v2/x").as_deref(), Some("mixed.example.com/api/v2"));
        assert_eq!(route(&t, "MIXED.EXAMPLE.COM:443", "/API/v2").as_deref(), Some("mixed.example.com/api/v2"));
        assert_eq!(route(&t, "a.B.wild.org", "/").as_deref(), Some("*.wild.org"));
        assert_eq!(route(&t, "Root.Net", "/anything").as_deref(), Some("root.net"));
        // Only ASCII folds: a non-ASCII segment must match byte for byte.
        let t = table(&["u.com/caf\u{e9}"]);
        assert_eq!(route(&t, "u.com", "/CAF\u{e9}").as_deref(), Some("u.com/caf\u{e9}"));
        assert_eq!(route(&t, "u.com", "/CAF\u{c9}"), None);
    }

    #[test]
    fn a_normal_request_path_is_compared_as_it_is_in_the_same_order() {
        for (path, len, normal) in [
            ("/a/b/c", 100, true),
            ("/a/b/", 100, true),
            ("/", 100, true),
            ("", 100, true),
            ("/a/B", 100, false),
            ("/a/B", 3, true),
            ("/a//b", 100, false),
            ("/a//b", 3, true),
            ("//a", 100, false),
            ("a/b", 100, false),
            ("*", 100, false),
        ] {
            assert_eq!(normal_through(path.as_bytes(), len), normal, "{path} through {len}");
        }
        // `/` sorts first, so a path comes before any longer path it is a whole-segment prefix of.
        assert_eq!(path_order(b"/a/b", b"/a/b-c"), Ordering::Less);
        assert_eq!(path_order(b"/a/b", b"/a/b/c"), Ordering::Less);
        assert_eq!(path_order(b"/a-b", b"/a/b"), Ordering::Greater);
        for stored in ["", "/a", "/ab", "/a-b", "/b", "/a/b", "/a/bc", "/a-b/c"] {
            for requested in ["", "/", "/a", "/a/", "/ab", "/a-b", "/a/b", "/a/b/c", "/a-b/c/d", "/b", "/a/bb/x", "/a/b-c"] {
                assert_eq!(
                    against_request(stored.as_bytes(), requested.as_bytes()),
                    compare_path(stored, requested, path_depth(stored)),
                    "{stored} against {requested}"
                );
            }
        }
    }

    /// Whether the first `len` bytes of `path` are in normal form, read one byte at a time.
    fn normal_through_bytewise(path: &str, len: usize) -> bool {
        let read = path.as_bytes().get(..len).unwrap_or(path.as_bytes());
        path.as_bytes().first().is_none_or(|&first| first == b'/')
            && !read.iter().any(u8::is_ascii_uppercase)
            && !read.windows(2).any(|pair| pair == b"//")
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
        /// Paths of every length around the block size, made of slashes, letters of both cases and other bytes, read
        /// up to lengths that end inside a block, at its edge and past the path.
        #[test]
        fn the_block_normal_form_check_agrees_with_a_byte_at_a_time_one(path in "[/aZ.%é]{0,70}", len in 0usize..80) {
            proptest::prop_assert_eq!(normal_through(path.as_bytes(), len), normal_through_bytewise(&path, len));
        }

        /// The word-at-a-time search finds the first difference a byte-at-a-time one finds, in strings whose
        /// lengths fall on both sides of a word.
        #[test]
        fn the_first_difference_is_found_a_word_at_a_time(shared in "[ab]{0,24}", a in "[ab]{0,6}", b in "[ab]{0,6}") {
            let (a, b) = (format!("{shared}{a}"), format!("{shared}{b}"));
            let expected = a.bytes().zip(b.bytes()).position(|(x, y)| x != y);
            proptest::prop_assert_eq!(first_difference(a.as_bytes(), b.as_bytes()), expected);
        }

        /// Reading a request path in normal form as it is orders it against a stored path exactly as the
        /// segment-by-segment comparison does. Segments include `-`, which is less than `/` as a byte.
        #[test]
        fn comparing_a_normal_request_path_whole_agrees_with_comparing_its_segments(
            stored in proptest::collection::vec("[ab-]{1,3}", 0..4),
            requested in proptest::collection::vec("[ab-]{1,3}", 0..5),
            trailing_slash: bool,
        ) {
            let stored: String = stored.iter().map(|segment| format!("/{segment}")).collect();
            let mut requested: String = requested.iter().map(|segment| format!("/{segment}")).collect();
            if trailing_slash {
                requested.push('/');
            }
            proptest::prop_assert!(normal_through(requested.as_bytes(), usize::MAX));
            proptest::prop_assert_eq!(
                against_request(stored.as_bytes(), requested.as_bytes()),
                compare_path(&stored, &requested, path_depth(&stored))
            );
        }
    }

    mod model {
        use super::*;
        use crate::reference::lookup as reference;
        use proptest::prelude::*;
        use std::collections::BTreeSet;

        // `*.a.com` and `*.x.com` share a suffix length, so one leaving must not hide the other from lookups.
        const HOSTS: [&str; 8] = ["a.com", "b.a.com", "*.a.com", "c.b.a.com", "*.b.a.com", "x.com", "*.com", "*.x.com"];
        const REQUEST_HOSTS: [&str; 9] =
            ["a.com", "b.a.com", "c.b.a.com", "d.b.a.com", "e.c.b.a.com", "x.com", "y.x.com", "z.org", "*.a.com"];
        // Segments that are prefixes of one another, and `-` (which sorts before `/`), so the ordering the path
        // search relies on is exercised.
        const SEGMENTS: [&str; 5] = ["p", "q", "pq", "p-q", "r"];

        fn uri(host: usize, path: &[usize]) -> String {
            let mut uri = HOSTS[host].to_owned();
            for segment in path {
                uri.push('/');
                uri.push_str(SEGMENTS[*segment]);
            }
            uri
        }

        fn op() -> impl Strategy<Value = (bool, usize, Vec<usize>)> {
            (any::<bool>(), 0..HOSTS.len(), prop::collection::vec(0..SEGMENTS.len(), 0..3))
        }

        /// A request host and path segments, each with whether it is upper-cased and whether an empty segment
        /// (`//`) precedes it.
        fn request() -> impl Strategy<Value = (usize, Vec<(usize, bool, bool)>)> {
            (0..REQUEST_HOSTS.len(), prop::collection::vec((0..SEGMENTS.len(), any::<bool>(), any::<bool>()), 0..4))
        }

        proptest! {
            #[test]
            fn lookups_match_the_reference_model(ops in prop::collection::vec(op(), 1..40), requests in prop::collection::vec(request(), 1..30)) {
                let mut table = RouteTable::new();
                let mut routes = BTreeSet::new();
                for (insert, host, path) in ops {
                    let uri = uri(host, &path);
                    let key = RouteKey::parse(&uri).unwrap();
                    if insert {
                        table.set(&key, Some(pool(&uri)));
                        routes.insert(uri);
                    } else {
                        table.set(&key, None);
                        routes.remove(&uri);
                    }
                    prop_assert_eq!(table.len(), routes.len());
                }
                for (host, segments) in requests {
                    let path: Vec<String> = segments
                        .iter()
                        .map(|(s, upper, _)| if *upper { SEGMENTS[*s].to_uppercase() } else { SEGMENTS[*s].to_owned() })
                        .collect();
                    let request_path: String = segments
                        .iter()
                        .zip(&path)
                        .map(|((_, _, empty_before), segment)| format!("{}/{segment}", if *empty_before { "/" } else { "" }))
                        .collect();
                    let expected = reference(&routes, REQUEST_HOSTS[host], &path);
                    prop_assert_eq!(route(&table, REQUEST_HOSTS[host], &request_path), expected);
                }
            }
        }

        /// A registered uri among many hosts (enough to grow and shrink leaves), some with context paths.
        fn many_uri(host: usize, path: usize) -> String {
            match path {
                0 => format!("h{host}.many.com"),
                1 => format!("h{host}.many.com/p"),
                _ => format!("h{host}.many.com/p/q"),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(16))]
            #[test]
            fn many_hosts_match_the_model_and_old_versions_hold(
                ops in prop::collection::vec((any::<bool>(), 0..2_500usize, 0..3usize), 1..4_000),
                clone_at in 0..4_000usize,
            ) {
                let mut table = RouteTable::new();
                let mut routes = BTreeSet::new();
                let mut old: Option<(RouteTable, BTreeSet<String>)> = None;
                for (step, (insert, host, path)) in ops.into_iter().enumerate() {
                    if step == clone_at {
                        old = Some((table.clone(), routes.clone()));
                    }
                    let uri = many_uri(host, path);
                    let previous = if insert { table.set(&key(&uri), Some(pool(&uri))) } else { table.set(&key(&uri), None) };
                    let was_there = if insert { !routes.insert(uri.clone()) } else { routes.remove(&uri) };
                    prop_assert_eq!(previous.is_some(), was_there);
                }
                prop_assert_eq!(table.len(), routes.len());
                prop_assert_eq!(check_leaves(&table), routes.iter().map(|uri| uri.split('/').next().unwrap_or_default()).collect::<BTreeSet<_>>().len());
                prop_assert_eq!(snapshot(&table), routes.iter().cloned().collect::<Vec<_>>());
                for host in (0..2_500).step_by(31) {
                    let name = format!("H{host}.Many.com");
                    for path in ["/", "/p", "/P/x", "/p/Q/r", "/pq"] {
                        let expected = reference(&routes, &name.to_ascii_lowercase(), &crate::reference::path_segments(path));
                        prop_assert_eq!(route(&table, &name, path), expected);
                    }
                }
                if let Some((old_table, old_routes)) = old {
                    prop_assert_eq!(old_table.len(), old_routes.len());
                    prop_assert_eq!(snapshot(&old_table), old_routes.into_iter().collect::<Vec<_>>());
                    check_leaves(&old_table);
                }
            }
        }
    }
}
