//! Route keys: how a registered uri and a request's Host + path become the same comparable thing.
//!
//! A key is `lowercase(host + path)` with the query dropped and empty path segments (including a trailing `/`)
//! removed. Request-side normalisation happens in a stack buffer, because it runs on every request and must not
//! allocate.

use std::fmt;
use std::sync::Arc;

/// Longest host name that can be routed. DNS names are at most 253 bytes; the rest is room for a wildcard.
pub const MAX_HOST_LEN: usize = 255;
// A key records where its host ends in one byte.
const _: () = assert!(MAX_HOST_LEN <= u8::MAX as usize);

/// Keys up to this long (host and path together) live inside the key, so a pool's key is read with the pool, with
/// no other memory to fetch: that is one cache miss less for every route lookup that hits. Longer keys take one
/// allocation. 45 bytes covers typical platform hostnames and keeps a key at 48 bytes.
const INLINE_LEN: usize = 45;

/// A registered route: lower-case host and the context path (`""` or `/seg/seg`), held in one buffer (inline when
/// short), so the host is never stored twice. Keys compare, order and hash as their text (`host` then `path`); the
/// host cannot contain `/`, so the text alone determines where it ends.
#[derive(Clone)]
pub struct RouteKey {
    repr: Repr,
}

#[derive(Clone)]
enum Repr {
    /// `bytes[..len]` is the text; it is always valid UTF-8 (copied from a `str`).
    Inline { host_len: u8, len: u8, bytes: [u8; INLINE_LEN] },
    Heap { host_len: u8, text: Box<str> },
}

impl RouteKey {
    /// Normalises a registration uri (`host[/context/path][?query]`). `None` when there is no host.
    pub fn parse(uri: &str) -> Option<Self> {
        let without_query = uri.split(['?', '#']).next().unwrap_or_default();
        let (host, path) = match without_query.find('/') {
            Some(slash) => without_query.split_at(slash),
            None => (without_query, ""),
        };
        let host_len = u8::try_from(host.len()).ok().filter(|&len| len > 0)?;
        let mut text = String::with_capacity(without_query.len());
        text.push_str(host);
        for segment in path_segments(path) {
            text.push('/');
            text.push_str(segment);
        }
        text.make_ascii_lowercase();
        let mut bytes = [0u8; INLINE_LEN];
        let repr = match (bytes.get_mut(..text.len()), u8::try_from(text.len())) {
            (Some(inline), Ok(len)) => {
                inline.copy_from_slice(text.as_bytes());
                Repr::Inline { host_len, len, bytes }
            }
            _ => Repr::Heap { host_len, text: text.into_boxed_str() },
        };
        Some(Self { repr })
    }

    /// The whole key as bytes: `host` then `path`.
    fn as_bytes(&self) -> &[u8] {
        match &self.repr {
            Repr::Inline { len, bytes, .. } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Repr::Heap { text, .. } => text.as_bytes(),
        }
    }

    /// The whole key: `host` then `path`.
    pub fn as_str(&self) -> &str {
        match &self.repr {
            // Copied from a `str`, so this never fails.
            Repr::Inline { .. } => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
            Repr::Heap { text, .. } => text,
        }
    }

    fn host_len(&self) -> usize {
        match &self.repr {
            Repr::Inline { host_len, .. } | Repr::Heap { host_len, .. } => usize::from(*host_len),
        }
    }

    /// The host's bytes, for comparisons on the lookup path (no UTF-8 check).
    pub(crate) fn host_bytes(&self) -> &[u8] {
        self.as_bytes().get(..self.host_len()).unwrap_or_default()
    }

    /// Lower-case host, possibly a wildcard (`*.example.com`).
    pub fn host(&self) -> &str {
        self.as_str().get(..self.host_len()).unwrap_or_default()
    }

    /// Context path: empty, or `/` followed by segments.
    pub fn path(&self) -> &str {
        self.as_str().get(self.host_len()..).unwrap_or_default()
    }

    /// The path's segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        path_segments(self.path())
    }
}

impl PartialEq for RouteKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for RouteKey {}

impl PartialOrd for RouteKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for RouteKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::hash::Hash for RouteKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl fmt::Debug for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteKey").field("host", &self.host()).field("path", &self.path()).finish()
    }
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Non-empty segments of a path, so `//a/b/` and `/a/b` match the same routes.
pub fn path_segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// A host name the route table is asked for: one a route is registered under, or one a request's host can be
/// routed by.
///
/// A wildcard is held as the suffix it covers (`*.b.com` as `.b.com`), so a request's wildcard candidates are
/// slices of its host, found without copying or rewriting it; that is what lets a lookup work out every
/// candidate's place in the table before it reads any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostName<'a> {
    /// A host matched by its own bytes.
    Exact(&'a [u8]),
    /// `*` followed by `suffix`.
    Wildcard {
        /// What the wildcard covers, from its dot on.
        suffix: &'a [u8],
    },
}

impl<'a> HostName<'a> {
    /// Classifies a host as registered (or as a request names it): one starting with `*.` is a wildcard.
    pub(crate) fn of(host: &'a [u8]) -> Self {
        match host {
            [b'*', suffix @ ..] if suffix.first() == Some(&b'.') => Self::Wildcard { suffix },
            _ => Self::Exact(host),
        }
    }

    /// Whether a host's bytes are this name.
    pub(crate) fn is(self, host: &[u8]) -> bool {
        match self {
            Self::Exact(name) => name == host,
            Self::Wildcard { suffix } => host.split_first().is_some_and(|(&star, rest)| star == b'*' && rest == suffix),
        }
    }
}

/// A request's host, lower-cased, port removed, held in a stack buffer.
pub struct RequestHost {
    buf: [u8; MAX_HOST_LEN],
    len: usize,
}

impl RequestHost {
    /// Reads a Host header (or URI authority) value. `None` when it is empty, too long, or not text.
    pub fn parse(raw: &[u8]) -> Option<Self> {
        let host = strip_port(raw);
        if host.is_empty() || host.len() > MAX_HOST_LEN {
            return None;
        }
        let mut buf = [0u8; MAX_HOST_LEN];
        let dest = buf.get_mut(..host.len())?;
        // Checked and lowered in one pass with no early exit, which the compiler turns into vector code.
        let mut visible = true;
        for (out, &byte) in dest.iter_mut().zip(host) {
            visible &= byte.is_ascii_graphic();
            *out = byte.to_ascii_lowercase();
        }
        visible.then_some(Self { buf, len: host.len() })
    }

    /// The normalised host's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    /// The normalised host.
    pub fn as_str(&self) -> &str {
        // Only ASCII graphic bytes were copied in, so this never fails.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

/// The suffix lengths of the wildcard hosts a table holds (`*.b.com` has a suffix of 6 bytes, `.b.com`).
///
/// A request's wildcard candidates are found from this set rather than from the dots in its host: for each
/// length present, longest first, the host has a candidate if the byte that many bytes from its end is a dot. A
/// table holds wildcards of few distinct lengths, if any, so the walk checks a byte or two instead of scanning
/// the host, and never asks the table for a wildcard no route could be.
#[derive(Debug, Clone)]
pub(crate) struct WildcardLengths {
    /// Wildcard hosts by suffix length, kept by the table's single writer...
    counts: Arc<[u32; MAX_HOST_LEN + 1]>,
    /// ...and a bit for each length that has any, which is all a lookup reads.
    present: [u64; LENGTH_WORDS],
}

const LENGTH_WORDS: usize = (MAX_HOST_LEN + 1).div_ceil(64);

impl WildcardLengths {
    pub(crate) fn new() -> Self {
        Self { counts: Arc::new([0; MAX_HOST_LEN + 1]), present: [0; LENGTH_WORDS] }
    }

    /// Counts a host that gained its first route (`added`) or lost its last; exact hosts are not counted.
    pub(crate) fn count(&mut self, name: HostName<'_>, added: bool) {
        let HostName::Wildcard { suffix } = name else { return };
        let length = suffix.len();
        let Some(count) = Arc::make_mut(&mut self.counts).get_mut(length) else { return };
        *count = if added { *count + 1 } else { count.saturating_sub(1) };
        let bit = 1u64 << (length % 64);
        if let Some(word) = self.present.get_mut(length / 64) {
            *word = if *count > 0 { *word | bit } else { *word & !bit };
        }
    }

    /// The names `host` can be routed by, most specific first: the host itself, then each wildcard covering one
    /// of its suffixes that some host in the table has the length of (with every length present, `a.b.c.com`
    /// gives `a.b.c.com`, `*.b.c.com`, `*.c.com`, `*.com`). Names are the bytes they are (visible ASCII), so none
    /// is checked again for UTF-8.
    pub(crate) fn names<'h>(&self, host: &'h [u8]) -> Names<'h> {
        Names { host, exact: Some(HostName::of(host)), lengths: self.present }
    }
}

/// The walk [`WildcardLengths::names`] returns.
pub(crate) struct Names<'h> {
    host: &'h [u8],
    exact: Option<HostName<'h>>,
    /// Suffix lengths still to try.
    lengths: [u64; LENGTH_WORDS],
}

impl<'h> Iterator for Names<'h> {
    type Item = HostName<'h>;

    fn next(&mut self) -> Option<HostName<'h>> {
        if let Some(exact) = self.exact.take() {
            return Some(exact);
        }
        for (index, word) in self.lengths.iter_mut().enumerate().rev() {
            while *word != 0 {
                let bit = 63 - word.leading_zeros();
                *word &= !(1u64 << bit);
                let length = index * 64 + bit as usize;
                // A length longer than the host leaves no suffix (a leading dot's wildcard covers the whole host).
                let suffix = self.host.len().checked_sub(length).and_then(|start| self.host.get(start..));
                if let Some(suffix @ [b'.', ..]) = suffix {
                    return Some(HostName::Wildcard { suffix });
                }
            }
        }
        None
    }
}

/// Drops a `:port` suffix; keeps an IPv6 literal's brackets. Anything else after a literal's `]` is not a port, so
/// such a host is kept whole (and routes nowhere) rather than shortened to the literal.
fn strip_port(raw: &[u8]) -> &[u8] {
    let is_port = |port: &[u8]| port.iter().all(u8::is_ascii_digit);
    if raw.first() == Some(&b'[') {
        return match raw.iter().position(|&b| b == b']') {
            Some(end) => match raw.get(end + 1..) {
                Some([]) => raw,
                Some([b':', port @ ..]) if is_port(port) => raw.get(..=end).unwrap_or(raw),
                _ => raw,
            },
            None => raw,
        };
    }
    match memchr::memrchr(b':', raw) {
        Some(colon) if raw.get(colon + 1..).is_some_and(is_port) => raw.get(..colon).unwrap_or(raw),
        _ => raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uri: &str) -> String {
        RouteKey::parse(uri).map(|k| k.to_string()).unwrap_or_default()
    }

    #[test]
    fn registration_uris_normalise() {
        assert_eq!(key("App.Example.COM"), "app.example.com");
        assert_eq!(key("app.example.com/"), "app.example.com");
        assert_eq!(key("app.example.com/Foo/Bar/"), "app.example.com/foo/bar");
        assert_eq!(key("app.example.com//foo//bar"), "app.example.com/foo/bar");
        assert_eq!(key("app.example.com/foo?x=1"), "app.example.com/foo");
        assert_eq!(key("*.example.com"), "*.example.com");
        assert!(RouteKey::parse("/foo").is_none());
        assert!(RouteKey::parse("").is_none());
    }

    #[test]
    fn short_and_long_keys_behave_alike() {
        assert_eq!(std::mem::size_of::<RouteKey>(), 48);
        for host_len in [1, 10, INLINE_LEN - 2, INLINE_LEN - 1, INLINE_LEN, INLINE_LEN + 1, 200] {
            let host = format!("{}.C", "A".repeat(host_len.saturating_sub(2).max(1)));
            for path in ["", "/X", "/x/Y/z"] {
                let uri = format!("{host}{path}");
                let key = RouteKey::parse(&uri).unwrap();
                assert_eq!(key.host(), host.to_ascii_lowercase());
                assert_eq!(key.host_bytes(), host.to_ascii_lowercase().as_bytes());
                assert_eq!(key.path(), path.to_ascii_lowercase());
                assert_eq!(key.to_string(), uri.to_ascii_lowercase());
                assert_eq!(key.segments().count(), path.matches('/').count());
                assert_eq!(key, RouteKey::parse(&uri.to_ascii_lowercase()).unwrap());
            }
        }
        // Order and equality follow the text, whichever way each key is held.
        let short = RouteKey::parse("a.com/b").unwrap();
        let long = RouteKey::parse(&format!("a.com/{}", "b".repeat(INLINE_LEN))).unwrap();
        assert!(short < long && short != long);
        assert!(matches!(short.repr, Repr::Inline { .. }) && matches!(long.repr, Repr::Heap { .. }));
    }

    #[test]
    fn request_hosts_drop_ports_and_case() {
        let host = |raw: &str| RequestHost::parse(raw.as_bytes()).map(|h| h.as_str().to_owned());
        assert_eq!(host("App.Example.com:8080").as_deref(), Some("app.example.com"));
        assert_eq!(host("app.example.com").as_deref(), Some("app.example.com"));
        assert_eq!(host("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(host("[::1]").as_deref(), Some("[::1]"));
        // Only a `:port` after an IPv6 literal is dropped; anything else keeps the host whole (the route_lookup fuzz
        // target found `[x]y` routed as `[x]`).
        assert_eq!(host("[::1]evil").as_deref(), Some("[::1]evil"));
        assert_eq!(host("[::1]:80:80").as_deref(), Some("[::1]:80:80"));
        assert_eq!(host("[::1:80").as_deref(), Some("[::1:80"));
        assert_eq!(host("10.0.0.1:80").as_deref(), Some("10.0.0.1"));
        assert_eq!(host(""), None);
        assert_eq!(host(":80"), None);
        assert_eq!(host("a b"), None);
        assert_eq!(host(&"a".repeat(300)), None);
    }

    fn text(name: HostName<'_>) -> String {
        match name {
            HostName::Exact(host) => String::from_utf8_lossy(host).into_owned(),
            HostName::Wildcard { suffix } => format!("*{}", String::from_utf8_lossy(suffix)),
        }
    }

    fn lengths_of(wildcards: &[&str]) -> WildcardLengths {
        let mut lengths = WildcardLengths::new();
        for wildcard in wildcards {
            lengths.count(HostName::of(wildcard.as_bytes()), true);
        }
        lengths
    }

    /// Every length a wildcard can have.
    fn every_length() -> WildcardLengths {
        let suffixes: Vec<String> = (1..=MAX_HOST_LEN).map(|length| format!("*.{}", "a".repeat(length - 1))).collect();
        lengths_of(&suffixes.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Every name the walk offers for a Host value, in order.
    fn candidates(lengths: &WildcardLengths, raw: &[u8]) -> Vec<String> {
        let host = RequestHost::parse(raw).unwrap();
        lengths.names(host.as_bytes()).map(text).collect()
    }

    #[test]
    fn wildcard_candidates_walk_outwards() {
        assert_eq!(candidates(&every_length(), b"a.b.c.com"), ["a.b.c.com", "*.b.c.com", "*.c.com", "*.com"]);
    }

    #[test]
    fn only_wildcards_of_a_present_length_are_candidates() {
        assert_eq!(candidates(&WildcardLengths::new(), b"a.b.c.com"), ["a.b.c.com"]);
        let mut lengths = lengths_of(&["*.c.com", "*.x.y.z", "*.com"]);
        assert_eq!(candidates(&lengths, b"a.b.c.com"), ["a.b.c.com", "*.c.com", "*.com"]);
        // Lengths are counted: `*.com` goes only with the last host of its length.
        lengths.count(HostName::of(b"*.org"), true);
        lengths.count(HostName::of(b"*.com"), false);
        assert_eq!(candidates(&lengths, b"a.b.c.com"), ["a.b.c.com", "*.c.com", "*.com"]);
        lengths.count(HostName::of(b"*.org"), false);
        assert_eq!(candidates(&lengths, b"a.b.c.com"), ["a.b.c.com", "*.c.com"]);
        // Exact hosts do not count.
        lengths.count(HostName::of(b".bb.com"), true);
        assert_eq!(candidates(&lengths, b"a.bb.com"), ["a.bb.com"]);
    }

    #[test]
    fn a_leading_dot_has_a_wildcard_too() {
        // The walk used to skip the wildcard of a leading dot, which the reference model (`crate::reference`) offers.
        assert_eq!(candidates(&every_length(), b".b.com:80"), [".b.com", "*.b.com", "*.com"]);
        assert_eq!(candidates(&every_length(), b".."), ["..", "*..", "*."]);
    }

    #[test]
    fn a_full_length_host_walks_its_wildcards() {
        let long = format!("{}.com", "a".repeat(MAX_HOST_LEN - 4));
        let host = RequestHost::parse(long.as_bytes()).unwrap();
        assert_eq!(host.as_str(), long);
        assert_eq!(candidates(&every_length(), long.as_bytes()).last().map(String::as_str), Some("*.com"));
        let dots = format!(".{}", ".".repeat(MAX_HOST_LEN - 1));
        assert_eq!(candidates(&every_length(), dots.as_bytes()).len(), MAX_HOST_LEN + 1);
    }

    #[test]
    fn only_a_star_and_a_dot_make_a_wildcard() {
        assert_eq!(HostName::of(b"*.b.com"), HostName::Wildcard { suffix: b".b.com" });
        assert_eq!(HostName::of(b"*."), HostName::Wildcard { suffix: b"." });
        for exact in [&b"*"[..], b"*b.com", b"a.*.com", b".b.com"] {
            assert_eq!(HostName::of(exact), HostName::Exact(exact));
        }
        // A request whose Host is itself `*.b.com` asks for the wildcard by name, and finds it.
        let request = RequestHost::parse(b"*.B.com").unwrap();
        let name = WildcardLengths::new().names(request.as_bytes()).next().unwrap();
        assert!(name.is(b"*.b.com") && !name.is(b".b.com") && !name.is(b"x.b.com"));
        assert!(HostName::Exact(b"b.com").is(b"b.com") && !HostName::Exact(b"b.com").is(b"*.b.com"));
    }
}
