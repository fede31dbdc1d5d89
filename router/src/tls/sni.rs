//! Choosing the server certificate by SNI: the exact name first, then a wildcard one label up, then the first
//! certificate configured.
//!
//! A router fronts thousands of domains, so the choice is two hash probes, never a scan of the certificates: the
//! names are indexed once, when the config is loaded (or reloaded), and the handshake only looks them up. A wildcard
//! `*.example.com` covers exactly one label (`a.example.com`, not `a.b.example.com`), as TLS clients check it; the
//! index follows the same rule so it never hands out a certificate the client would reject.

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;

/// Names to values, with the SNI lookup rules. Generic so the rules are tested without certificates.
#[derive(Debug, Clone)]
pub struct NameIndex<T> {
    exact: HashMap<Box<str>, T, foldhash::fast::RandomState>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<Box<str>, T, foldhash::fast::RandomState>,
    first: Option<T>,
}

impl<T> Default for NameIndex<T> {
    fn default() -> Self {
        Self { exact: HashMap::default(), wildcard: HashMap::default(), first: None }
    }
}

fn normalise(name: &str) -> std::borrow::Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) { name.to_ascii_lowercase().into() } else { name.into() }
}

impl<T: Clone> NameIndex<T> {
    /// Adds a value for the names it serves (certificate SANs). On a name two values share, the one added first
    /// wins, so the config's order decides; the first value added is also the fallback.
    pub fn add<'a>(&mut self, names: impl IntoIterator<Item = &'a str>, value: T) {
        for name in names {
            let name = normalise(name);
            match name.strip_prefix("*.") {
                Some(parent) if !parent.is_empty() => self.wildcard.entry(parent.into()).or_insert_with(|| value.clone()),
                _ => self.exact.entry(name.as_ref().into()).or_insert_with(|| value.clone()),
            };
        }
        if self.first.is_none() {
            self.first = Some(value);
        }
    }

    /// The value for a client's SNI (or for no SNI at all).
    pub fn choose(&self, sni: Option<&str>) -> Option<&T> {
        let Some(sni) = sni else { return self.first.as_ref() };
        let sni = normalise(sni);
        if let Some(found) = self.exact.get(sni.as_ref()) {
            return Some(found);
        }
        let parent = sni.split_once('.').map(|(_, parent)| parent).filter(|p| !p.is_empty());
        parent.and_then(|p| self.wildcard.get(p)).or(self.first.as_ref())
    }

    /// Distinct names indexed (exact and wildcard).
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }
}

/// The resolver rustls asks during each handshake.
#[derive(Debug, Default)]
pub struct SniResolver(pub NameIndex<Arc<CertifiedKey>>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.choose(client_hello.server_name()).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> NameIndex<&'static str> {
        let mut index = NameIndex::default();
        index.add(["default.test"], "default");
        index.add(["app.example.com", "api.example.com"], "app");
        index.add(["*.example.com"], "wild");
        index.add(["*.deep.example.com", "APP.example.com"], "deep");
        index
    }

    #[test]
    fn exact_beats_wildcard_beats_first() {
        let index = index();
        assert_eq!(index.choose(Some("app.example.com")), Some(&"app"), "exact, and the earlier cert keeps a shared name");
        assert_eq!(index.choose(Some("API.Example.com.")), Some(&"app"), "case and a trailing dot do not matter");
        assert_eq!(index.choose(Some("other.example.com")), Some(&"wild"));
        assert_eq!(index.choose(Some("x.deep.example.com")), Some(&"deep"));
        assert_eq!(index.choose(Some("a.b.example.com")), Some(&"default"), "a wildcard covers one label only");
        assert_eq!(index.choose(Some("example.com")), Some(&"default"), "a wildcard does not cover its apex");
        assert_eq!(index.choose(Some("unknown.test")), Some(&"default"));
        assert_eq!(index.choose(None), Some(&"default"));
        assert_eq!(index.len(), 5);
    }

    #[test]
    fn an_empty_index_chooses_nothing() {
        let index: NameIndex<u8> = NameIndex::default();
        assert!(index.is_empty());
        assert_eq!(index.choose(Some("a.b")), None);
    }
}
