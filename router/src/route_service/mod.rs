//! Route services: an auth, rate-limit or logging proxy an operator binds in front of an app's route.
//!
//! A request for a bound route that has not been through its route service yet goes there instead of to the app,
//! carrying where it was headed (`X-CF-Forwarded-Url`) and a signature over that URL and the time
//! ([`signature`]). The route service does its work and calls the forwarded URL, which brings the request back to
//! a router with the signature; a signature that verifies, is recent, and names this same route lets the request
//! through to the app, with the three headers removed. A missing secret means route services are not supported
//! at all (502), never that the service is skipped: a route bound to an auth proxy must never be reachable
//! around it.

pub mod signature;

use crate::endpoint::{DialTarget, UpstreamKey};
use http::header::{HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Uri};
use signature::{Keys, SignatureError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use switchyard_config::router::RouterConfig;

/// `X-CF-Forwarded-Url`: where the request was going before it was sent to the route service.
pub const X_CF_FORWARDED_URL: HeaderName = HeaderName::from_static("x-cf-forwarded-url");
/// `X-CF-Proxy-Signature`: the sealed `{forwarded_url, requested_time}`.
pub const X_CF_PROXY_SIGNATURE: HeaderName = HeaderName::from_static("x-cf-proxy-signature");
/// `X-CF-Proxy-Metadata`: the nonce the signature was sealed with.
pub const X_CF_PROXY_METADATA: HeaderName = HeaderName::from_static("x-cf-proxy-metadata");

/// A route service a route is bound to, as registered. Parsed once, when the route's pool is built.
#[derive(Debug, PartialEq, Eq)]
pub struct Binding {
    /// The URL as registered.
    pub url: Box<str>,
    /// Where to send requests; `None` if the URL cannot be dialled (requests then fail rather than bypass it).
    pub target: Option<Destination>,
}

/// A parsed route-service URL.
#[derive(Debug, PartialEq, Eq)]
pub struct Destination {
    /// Connection key: the host and port, verified over TLS against the URL's host name.
    pub upstream: UpstreamKey,
    /// The `Host` header to send.
    pub authority: HeaderValue,
    /// The request target to send (the URL's path and query).
    pub path: Uri,
}

impl Binding {
    /// Parses a registered `route_service_url` (already checked to start with `https://`).
    pub fn parse(url: &str) -> Self {
        Self { url: url.into(), target: Destination::parse(url) }
    }
}

impl Destination {
    fn parse(url: &str) -> Option<Self> {
        let uri: Uri = url.parse().ok()?;
        if uri.scheme() != Some(&Scheme::HTTPS) {
            return None;
        }
        let authority = uri.authority()?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return None;
        }
        let port = authority.port_u16().unwrap_or(443);
        let path = uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        Some(Self {
            upstream: UpstreamKey { target: DialTarget::new(host, port), tls_name: Some(Arc::new(host.to_owned())), http2: false },
            authority: HeaderValue::from_str(authority.as_str()).ok()?,
            path: Uri::from(path),
        })
    }
}

/// The router-wide route-service settings.
#[derive(Debug)]
pub struct RouteServices {
    keys: Option<Keys>,
    timeout: Duration,
    recommend_https: bool,
    /// Most connection attempts to a route service per request.
    pub max_attempts: u32,
}

/// What to do with a request for a route bound to a route service.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No secret is configured: route services are not supported.
    Unsupported,
    /// First visit: send it to the route service.
    ToService,
    /// Back from the route service with a good signature for this URL: on to the app.
    Returned(String),
    /// The signature is not acceptable.
    Refused(SignatureError),
}

impl RouteServices {
    /// Derives the signing keys (slow on purpose: call once).
    pub fn from_config(config: &RouterConfig) -> Self {
        Self {
            keys: Keys::new(&config.route_services_secret, &config.route_services_secret_decrypt_only),
            timeout: config.route_services_timeout,
            recommend_https: config.route_services_recommend_https,
            max_attempts: config.route_services.max_attempts.max(1),
        }
    }

    /// Looks at a request's headers: a signature means it claims to be coming back from the route service.
    pub fn inspect(&self, headers: &HeaderMap, now: SystemTime) -> Verdict {
        let Some(keys) = &self.keys else { return Verdict::Unsupported };
        let Some(signature) = headers.get(X_CF_PROXY_SIGNATURE) else { return Verdict::ToService };
        let metadata = headers.get(X_CF_PROXY_METADATA).map_or(&b""[..], HeaderValue::as_bytes);
        match keys.verify(signature.as_bytes(), metadata, now, self.timeout) {
            Ok(url) => Verdict::Returned(url),
            Err(err) => Verdict::Refused(err),
        }
    }

    /// Adds the three route-service headers for a request whose original `host` and request `target` are given.
    /// Returns false if signing failed (the request must then not go anywhere).
    pub fn sign(&self, headers: &mut HeaderMap, host: &[u8], target: &str, now: SystemTime) -> bool {
        let Some(keys) = &self.keys else { return false };
        let url = forwarded_url(self.recommend_https, host, target);
        let nonce: [u8; ring::aead::NONCE_LEN] = rand::random();
        let Some(signed) = keys.sign(&url, now, nonce) else { return false };
        let values = (HeaderValue::from_str(&url), HeaderValue::from_str(&signed.signature), HeaderValue::from_str(&signed.metadata));
        let (Ok(url), Ok(signature), Ok(metadata)) = values else { return false };
        headers.insert(X_CF_FORWARDED_URL, url);
        headers.insert(X_CF_PROXY_SIGNATURE, signature);
        headers.insert(X_CF_PROXY_METADATA, metadata);
        true
    }
}

/// Removes the route-service headers (before a returning request goes to the app).
pub fn strip(headers: &mut HeaderMap) {
    headers.remove(X_CF_FORWARDED_URL);
    headers.remove(X_CF_PROXY_SIGNATURE);
    headers.remove(X_CF_PROXY_METADATA);
}

/// A Host header without its port (`[::1]:80` → `[::1]`).
pub fn host_without_port(host: &[u8]) -> &[u8] {
    let end = if host.first() == Some(&b'[') {
        host.iter().position(|&b| b == b']').map_or(host.len(), |i| i + 1)
    } else {
        host.iter().position(|&b| b == b':').unwrap_or(host.len())
    };
    host.get(..end).unwrap_or(host)
}

/// `X-CF-Forwarded-Url`: the URL the client asked for, as the route service should call it back.
pub fn forwarded_url(https: bool, host: &[u8], target: &str) -> String {
    let scheme = if https { "https" } else { "http" };
    format!("{scheme}://{}{target}", String::from_utf8_lossy(host_without_port(host)))
}

/// The host and path a forwarded URL names, to find its route.
pub fn url_route(url: &str) -> Option<(String, String)> {
    let uri: Uri = url.parse().ok()?;
    Some((uri.host()?.to_owned(), uri.path().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(secret: &str) -> RouterConfig {
        RouterConfig { route_services_secret: secret.into(), route_services_timeout: Duration::from_secs(60), ..RouterConfig::default() }
    }

    #[test]
    fn bindings_parse_https_urls_only() {
        let b = Binding::parse("https://auth.example.com:8443/check?x=1");
        let target = b.target.unwrap();
        assert_eq!(target.upstream.target, DialTarget::Name("auth.example.com".into(), 8443));
        assert_eq!(target.upstream.tls_name.as_deref().map(String::as_str), Some("auth.example.com"));
        assert_eq!(target.authority, "auth.example.com:8443");
        assert_eq!(target.path, "/check?x=1");
        let ip = Binding::parse("https://127.0.0.1").target.unwrap();
        assert_eq!(ip.upstream.target, DialTarget::Addr("127.0.0.1".parse().unwrap(), 443));
        assert_eq!(ip.path, "/");
        assert!(Binding::parse("http://auth.example.com").target.is_none());
        assert!(Binding::parse("https://").target.is_none());
    }

    #[test]
    fn forwarded_urls_drop_the_port() {
        assert_eq!(forwarded_url(true, b"app.example.com:8443", "/a?b=1"), "https://app.example.com/a?b=1");
        assert_eq!(forwarded_url(false, b"[::1]:80", "/"), "http://[::1]/");
        assert_eq!(url_route("https://app.example.com/a/b?c=1"), Some(("app.example.com".into(), "/a/b".into())));
    }

    #[test]
    fn a_signed_request_comes_back_verified() {
        let services = RouteServices::from_config(&config("secret"));
        let mut headers = HeaderMap::new();
        assert_eq!(services.inspect(&headers, SystemTime::now()), Verdict::ToService);
        assert!(services.sign(&mut headers, b"app.example.com", "/x", SystemTime::now()));
        assert_eq!(headers[X_CF_FORWARDED_URL], "https://app.example.com/x");
        assert_eq!(services.inspect(&headers, SystemTime::now()), Verdict::Returned("https://app.example.com/x".into()));
        let later = SystemTime::now() + Duration::from_secs(120);
        assert!(matches!(services.inspect(&headers, later), Verdict::Refused(SignatureError::Expired(_))));
        strip(&mut headers);
        assert!(headers.is_empty());
        let unsupported = RouteServices::from_config(&config(""));
        assert_eq!(unsupported.inspect(&headers, SystemTime::now()), Verdict::Unsupported);
        assert!(!unsupported.sign(&mut headers, b"a", "/", SystemTime::now()));
    }
}
