//! The routing rules written the slow, obvious way, for tests to hold the real table and route keys to.
//!
//! The table is built for speed (copy-on-write hashed leaves, paths grouped by depth and binary-searched, request hosts rewritten in a stack buffer), which
//! makes its edge cases hard to see by reading. These functions state the same rules with plain strings and
//! linear scans: the property test in [`crate::table`] and the `route_lookup` fuzz target compare the real lookup
//! with them. They are compiled only for tests and for the `fuzzing` feature; nothing in the router calls them.

use crate::route_key::MAX_HOST_LEN;
use std::collections::BTreeSet;

/// The key a registration uri names, written `host/seg/seg`: lower case, query and fragment dropped, empty path
/// segments removed. `None` when the uri names no host, or one too long to route.
pub fn route_key(uri: &str) -> Option<String> {
    let uri = uri.split(['?', '#']).next().unwrap_or_default();
    let mut parts = uri.split('/');
    let host = parts.next().unwrap_or_default();
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return None;
    }
    let mut key = host.to_ascii_lowercase();
    for segment in parts.filter(|segment| !segment.is_empty()) {
        key.push('/');
        key.push_str(&segment.to_ascii_lowercase());
    }
    Some(key)
}

/// The host a request's Host header names, lower case and without its port. A port is the digits after the last
/// `:`; a host starting with `[` is an IPv6 literal that runs to the first `]`, so only a `:port` after that
/// bracket is a port. `None` when nothing is left, when it is too long, or when it holds anything but visible
/// ASCII.
pub fn request_host(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    let is_port = |port: &str| port.bytes().all(|b| b.is_ascii_digit());
    let host = if text.starts_with('[') {
        match text.split_once(']') {
            Some((literal, rest)) if rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port) => {
                text.get(..=literal.len()).unwrap_or(text)
            }
            _ => text,
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) if is_port(port) => host,
            _ => text,
        }
    };
    if host.is_empty() || host.len() > MAX_HOST_LEN || !host.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

/// The non-empty segments of a request path.
pub fn path_segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|segment| !segment.is_empty()).collect()
}

/// The route (one of `routes`, keys as [`route_key`] writes them) serving a request for normalised `host` and
/// path `segments`: the exact host first, then `*.` wildcards from the most specific, and within a host the
/// route whose path is the longest whole-segment prefix of the request's, ignoring ASCII case.
pub fn lookup<S: AsRef<str>>(routes: &BTreeSet<String>, host: &str, segments: &[S]) -> Option<String> {
    let mut candidates = vec![host.to_owned()];
    let labels: Vec<&str> = host.split('.').collect();
    for i in 1..labels.len() {
        candidates.push(format!("*.{}", labels.get(i..).unwrap_or_default().join(".")));
    }
    for candidate in candidates {
        let best = routes
            .iter()
            .filter_map(|route| {
                let mut parts = route.split('/');
                let route_host = parts.next()?;
                let route_path: Vec<&str> = parts.collect();
                let matches = route_host == candidate
                    && route_path.len() <= segments.len()
                    && route_path.iter().zip(segments).all(|(a, b)| a.eq_ignore_ascii_case(b.as_ref()));
                matches.then_some((route_path.len(), route.clone()))
            })
            .max();
        if let Some((_, route)) = best {
            return Some(route);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_states_the_documented_rules() {
        assert_eq!(route_key("App.com//Foo/?q=/x").as_deref(), Some("app.com/foo"));
        assert_eq!(route_key("/foo"), None);
        assert_eq!(request_host(b"App.com:8080").as_deref(), Some("app.com"));
        assert_eq!(request_host(b"[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(request_host(b"[::1]x").as_deref(), Some("[::1]x"));
        let routes: BTreeSet<String> = ["app.com", "app.com/foo", "*.app.com"].map(String::from).into();
        assert_eq!(lookup(&routes, "app.com", &["FOO", "bar"]).as_deref(), Some("app.com/foo"));
        assert_eq!(lookup(&routes, "x.y.app.com", &path_segments("/foo")).as_deref(), Some("*.app.com"));
        assert_eq!(lookup(&routes, ".app.com", &path_segments("/")).as_deref(), Some("*.app.com"));
        assert_eq!(lookup(&routes, "app.org", &path_segments("/")), None);
    }
}
