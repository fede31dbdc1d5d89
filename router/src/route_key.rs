//! Route keys: how a registered uri and a request's Host + path become the same comparable thing.
//!
//! A key is `lowercase(host + path)` with the query dropped and empty path segments (including a trailing `/`)
//! removed. Request-side normalisation happens in a stack buffer, because it runs on every request and must not
//! allocate.

use std::fmt;

/// Longest host name that can be routed. DNS names are at most 253 bytes; the rest is room for a wildcard.
pub const MAX_HOST_LEN: usize = 255;

/// A registered route: lower-case host and the context path (`""` or `/seg/seg`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    host: Box<str>,
    path: Box<str>,
}

impl RouteKey {
    /// Normalises a registration uri (`host[/context/path][?query]`). `None` when there is no host.
    pub fn parse(uri: &str) -> Option<Self> {
        let without_query = uri.split(['?', '#']).next().unwrap_or_default();
        let (host, path) = match without_query.find('/') {
            Some(slash) => without_query.split_at(slash),
            None => (without_query, ""),
        };
        if host.is_empty() || host.len() > MAX_HOST_LEN {
            return None;
        }
        let mut normalised_path = String::with_capacity(path.len());
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            normalised_path.push('/');
            normalised_path.push_str(&segment.to_ascii_lowercase());
        }
        Some(Self { host: host.to_ascii_lowercase().into_boxed_str(), path: normalised_path.into_boxed_str() })
    }

    /// Lower-case host, possibly a wildcard (`*.example.com`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Context path: empty, or `/` followed by segments.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The path's segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        path_segments(&self.path)
    }
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.host, self.path)
    }
}

/// Non-empty segments of a path, so `//a/b/` and `/a/b` match the same routes.
pub fn path_segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// A request's host, lower-cased, port removed, held in a stack buffer.
pub struct RequestHost {
    buf: [u8; MAX_HOST_LEN + 1],
    len: usize,
}

impl RequestHost {
    /// Reads a Host header (or URI authority) value. `None` when it is empty, too long, or not text.
    pub fn parse(raw: &[u8]) -> Option<Self> {
        let host = strip_port(raw);
        if host.is_empty() || host.len() > MAX_HOST_LEN {
            return None;
        }
        let mut buf = [0u8; MAX_HOST_LEN + 1];
        let dest = buf.get_mut(..host.len())?;
        for (out, byte) in dest.iter_mut().zip(host) {
            if !byte.is_ascii_graphic() {
                return None;
            }
            *out = byte.to_ascii_lowercase();
        }
        Some(Self { buf, len: host.len() })
    }

    /// The normalised host.
    pub fn as_str(&self) -> &str {
        // Only ASCII graphic bytes were copied in, so this never fails.
        std::str::from_utf8(self.buf.get(..self.len).unwrap_or_default()).unwrap_or_default()
    }

    /// Calls `visit` with the exact host, then each wildcard that covers it, most specific first
    /// (`a.b.c.com`, `*.b.c.com`, `*.c.com`, `*.com`), until `visit` returns `Some`.
    pub fn find_map<R>(&mut self, mut visit: impl FnMut(&str) -> Option<R>) -> Option<R> {
        if let Some(found) = visit(self.as_str()) {
            return Some(found);
        }
        let len = self.len;
        let mut start = 0;
        // Each wildcard candidate is written in place: the byte before a dot becomes `*`. Later candidates lie
        // to the right of earlier ones, so overwriting is safe.
        while let Some(offset) = self.buf.get(start..len)?.iter().position(|&b| b == b'.') {
            let dot = start + offset;
            if dot == 0 {
                start = dot + 1;
                continue;
            }
            *self.buf.get_mut(dot - 1)? = b'*';
            let candidate = std::str::from_utf8(self.buf.get(dot - 1..len)?).ok()?;
            if let Some(found) = visit(candidate) {
                return Some(found);
            }
            start = dot + 1;
        }
        None
    }
}

/// Drops a `:port` suffix; keeps an IPv6 literal's brackets.
fn strip_port(raw: &[u8]) -> &[u8] {
    if raw.first() == Some(&b'[') {
        return match raw.iter().position(|&b| b == b']') {
            Some(end) => raw.get(..=end).unwrap_or(raw),
            None => raw,
        };
    }
    match raw.iter().rposition(|&b| b == b':') {
        Some(colon) if raw.get(colon + 1..).is_some_and(|port| port.iter().all(u8::is_ascii_digit)) => {
            raw.get(..colon).unwrap_or(raw)
        }
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
    fn request_hosts_drop_ports_and_case() {
        let host = |raw: &str| RequestHost::parse(raw.as_bytes()).map(|h| h.as_str().to_owned());
        assert_eq!(host("App.Example.com:8080").as_deref(), Some("app.example.com"));
        assert_eq!(host("app.example.com").as_deref(), Some("app.example.com"));
        assert_eq!(host("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(host("10.0.0.1:80").as_deref(), Some("10.0.0.1"));
        assert_eq!(host(""), None);
        assert_eq!(host(":80"), None);
        assert_eq!(host("a b"), None);
        assert_eq!(host(&"a".repeat(300)), None);
    }

    #[test]
    fn wildcard_candidates_walk_outwards() {
        let mut host = RequestHost::parse(b"a.b.c.com").unwrap();
        let mut seen = Vec::new();
        let found: Option<()> = host.find_map(|candidate| {
            seen.push(candidate.to_owned());
            None
        });
        assert!(found.is_none());
        assert_eq!(seen, ["a.b.c.com", "*.b.c.com", "*.c.com", "*.com"]);
    }

    #[test]
    fn candidate_walk_stops_at_first_hit() {
        let mut host = RequestHost::parse(b"x.y.com").unwrap();
        let found = host.find_map(|c| (c == "*.y.com").then_some(7));
        assert_eq!(found, Some(7));
    }
}
