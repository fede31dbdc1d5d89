//! What the router changes in the headers it passes on, in both directions.
//!
//! Edits are made in place on the parsed header map, with values prepared once (per endpoint, per connection) or
//! cut from the thread's slab, so forwarding a request costs no per-request `String`.

use crate::access_log;
use crate::endpoint::Endpoint;
use crate::proxy::answer::Malformed;
use crate::proxy::arena;
use crate::proxy::wire::TransferCodings;
use http::header::{CONNECTION, EXPECT, Entry, HOST, HeaderMap, HeaderName, HeaderValue, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Request-Start`: when the router received the request, in unix milliseconds.
pub const X_REQUEST_START: HeaderName = HeaderName::from_static("x-request-start");
/// `X-Vcap-Request-Id`: a fresh UUID per request.
pub const X_VCAP_REQUEST_ID: HeaderName = HeaderName::from_static("x-vcap-request-id");
/// `X-CF-ApplicationID`.
pub const X_CF_APPLICATION_ID: HeaderName = HeaderName::from_static("x-cf-applicationid");
/// `X-CF-InstanceIndex`.
pub const X_CF_INSTANCE_INDEX: HeaderName = HeaderName::from_static("x-cf-instanceindex");
/// `X-CF-InstanceID`.
pub const X_CF_INSTANCE_ID: HeaderName = HeaderName::from_static("x-cf-instanceid");
/// `X-CF-APP-INSTANCE`: routes a request to one instance.
pub const X_CF_APP_INSTANCE: HeaderName = HeaderName::from_static("x-cf-app-instance");

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers: `Connection` and every header it names, `Keep-Alive`, `Proxy-Connection`, `TE`,
/// `Trailer`, `Transfer-Encoding` (the router frames the body itself, so it never forwards both it and
/// `Content-Length`) and `Upgrade`. For a protocol upgrade, `Upgrade` stays and `Connection: upgrade` is
/// restored, since the switch has to reach the other side.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none of them: one pass over the names is cheaper than a hashed removal per name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if let Some(connection) = headers.get(CONNECTION) {
        let named: Vec<HeaderName> = connection
            .to_str()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|token| !(token.is_empty() || upgrade && token.eq_ignore_ascii_case("upgrade")))
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    for name in [KEEP_ALIVE, PROXY_CONNECTION, TE, TRAILER, TRANSFER_ENCODING] {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

/// Whether a header is one of the fixed hop-by-hop set (`Connection` may name more).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    [CONNECTION, KEEP_ALIVE, PROXY_CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE].contains(name)
}

/// What, in a request hyper accepted, the router still refuses to forward: more than one Host, or transfer codings
/// other than exactly one `chunked`. hyper checks only that `chunked` comes last, so `gzip, chunked` and
/// `chunked, chunked` reach the router; it would strip them and pass on a body still coded, unannounced.
pub fn malformed(headers: &HeaderMap) -> Option<Malformed> {
    if headers.get_all(HOST).iter().nth(1).is_some() {
        return Some(Malformed::RepeatedHost);
    }
    TransferCodings::of(headers).unsupported().then_some(Malformed::TransferCoding)
}

/// Whether a request asks to switch protocols (WebSocket and friends).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers.get_all(CONNECTION).iter().any(|v| {
            v.to_str().unwrap_or_default().split(',').any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
        })
}

/// How `X-Forwarded-Proto` is set.
#[derive(Debug, Clone, Copy)]
pub struct ProtoPolicy {
    /// Always say `https`.
    pub force_https: bool,
    /// Overwrite what the client sent with the real scheme.
    pub sanitize: bool,
}

/// Per-request facts the forwarded headers are built from.
pub struct Forwarding<'a> {
    /// The client's address, preformatted once per connection.
    pub client_ip: &'a HeaderValue,
    /// `http` or `https`, by listener.
    pub scheme: &'static str,
    /// Unix milliseconds when the request arrived.
    pub arrived_unix_ms: u64,
}

/// Sets `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Request-Start` and a fresh `X-Vcap-Request-Id`, and drops
/// `Expect` (the router already answered the client's `100-continue` by reading the body). Returns the request id.
/// With an access-log entry, the `X-Forwarded-*` values and the request id are copied into it here, where they are
/// at hand.
pub fn add_forwarding(headers: &mut HeaderMap, facts: &Forwarding<'_>, proto: ProtoPolicy, mut log: Option<&mut access_log::Entry>) -> Option<HeaderValue> {
    let forwarded_for = match headers.entry(X_FORWARDED_FOR) {
        Entry::Occupied(mut prior) => {
            let total = prior.iter().map(|p| p.len() + 2).sum::<usize>() + facts.client_ip.len();
            let joined = arena::value(total, |slab| {
                for part in prior.iter() {
                    slab.extend_from_slice(part.as_bytes());
                    slab.extend_from_slice(b", ");
                }
                slab.extend_from_slice(facts.client_ip.as_bytes());
            });
            if let Some(value) = joined {
                prior.insert(value);
            }
            prior.into_mut()
        }
        Entry::Vacant(slot) => slot.insert(facts.client_ip.clone()),
    };
    if let Some(entry) = log.as_deref_mut() {
        entry.x_forwarded_for = Some(forwarded_for.clone());
    }
    if proto.force_https || proto.sanitize {
        let scheme = HeaderValue::from_static(if proto.force_https { "https" } else { facts.scheme });
        if let Some(entry) = log.as_deref_mut() {
            entry.x_forwarded_proto = Some(scheme.clone());
        }
        headers.insert(X_FORWARDED_PROTO, scheme);
    } else {
        let sent = match headers.entry(X_FORWARDED_PROTO) {
            Entry::Occupied(sent) => sent.into_mut(),
            Entry::Vacant(slot) => slot.insert(HeaderValue::from_static(facts.scheme)),
        };
        if let Some(entry) = log.as_deref_mut() {
            entry.x_forwarded_proto = Some(sent.clone());
        }
    }
    if let Entry::Vacant(slot) = headers.entry(X_REQUEST_START)
        && let Some(value) = arena::number(facts.arrived_unix_ms) {
            slot.insert(value);
        }
    headers.remove(EXPECT);
    let request_id = arena::uuid();
    if let Some(id) = &request_id {
        headers.insert(X_VCAP_REQUEST_ID, id.clone());
    }
    if let Some(entry) = log {
        entry.request_id.clone_from(&request_id);
    }
    request_id
}

/// Sets the headers that name the instance (overwriting anything the client sent, so they cannot be spoofed).
pub fn add_endpoint(headers: &mut HeaderMap, endpoint: &Endpoint) {
    let values = endpoint.headers();
    for (name, value) in [(X_CF_APPLICATION_ID, values.app_id), (X_CF_INSTANCE_INDEX, values.instance_index), (X_CF_INSTANCE_ID, values.instance_id)] {
        match value {
            Some(value) => headers.insert(name, value),
            None => headers.remove(name),
        };
    }
}

/// Parses `X-CF-APP-INSTANCE: <app guid>:<index>`.
pub fn app_instance(value: &HeaderValue) -> Option<(&[u8], &[u8])> {
    let bytes = value.as_bytes();
    let colon = bytes.iter().position(|&b| b == b':')?;
    let (app, index) = (bytes.get(..colon)?, bytes.get(colon + 1..)?);
    let valid = !app.is_empty()
        && !index.is_empty()
        && index.iter().all(u8::is_ascii_digit)
        && app.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-');
    valid.then_some((app, index))
}

/// An approximation of the request head's size on the wire, for `max_header_bytes`.
pub fn head_size(method: &http::Method, uri: &http::Uri, headers: &HeaderMap) -> usize {
    let line = method.as_str().len() + uri.path_and_query().map_or(1, |pq| pq.as_str().len()) + 12;
    headers.iter().fold(line, |total, (name, value)| total + name.as_str().len() + value.len() + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn hop_by_hop_headers_go_including_those_connection_names() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn one_host_and_one_chunked_coding_or_nothing() {
        assert_eq!(malformed(&map(&[("host", "a"), ("content-length", "5")])), None);
        assert_eq!(malformed(&map(&[("host", "a"), ("transfer-encoding", "chunked")])), None);
        assert_eq!(malformed(&map(&[("transfer-encoding", "Chunked")])), None);
        assert_eq!(malformed(&map(&[("transfer-encoding", "chunked,")])), None, "empty list elements do not count");
        assert_eq!(malformed(&map(&[("host", "a"), ("host", "b")])), Some(Malformed::RepeatedHost));
        assert_eq!(malformed(&map(&[("host", "a"), ("host", "a")])), Some(Malformed::RepeatedHost));
        for codings in [&["gzip, chunked"][..], &["chunked, chunked"], &["chunked", "chunked"], &["identity", "chunked"], &[","], &["chunked;q=1"]] {
            let pairs: Vec<(&str, &str)> = codings.iter().map(|c| ("transfer-encoding", *c)).collect();
            assert_eq!(malformed(&map(&pairs)), Some(Malformed::TransferCoding), "{codings:?}");
        }
        let mut opaque = HeaderMap::new();
        opaque.insert(TRANSFER_ENCODING, HeaderValue::from_bytes(b"chunked\xff").unwrap());
        assert_eq!(malformed(&opaque), Some(Malformed::TransferCoding));
    }

    #[test]
    fn upgrades_keep_their_switch() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-key", "k")]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], "k");
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn forwarding_headers() {
        let ip = HeaderValue::from_static("198.18.0.7");
        let facts = Forwarding { client_ip: &ip, scheme: "http", arrived_unix_ms: 1_700_000_000_123 };
        let plain = ProtoPolicy { force_https: false, sanitize: false };
        let mut log = access_log::Entry::default();
        let logged = |log: &access_log::Entry| (log.x_forwarded_for.clone(), log.x_forwarded_proto.clone());

        let mut h = map(&[("expect", "100-continue")]);
        let id = add_forwarding(&mut h, &facts, plain, Some(&mut log)).unwrap();
        assert_eq!(h["x-forwarded-for"], "198.18.0.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-request-start"], "1700000000123");
        assert_eq!(h["x-vcap-request-id"], id);
        assert_eq!(log.request_id.as_ref(), Some(&id));
        assert_eq!(logged(&log), (Some(h["x-forwarded-for"].clone()), Some(h["x-forwarded-proto"].clone())));
        assert!(h.get("expect").is_none());

        let mut h = map(&[("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2"), ("x-forwarded-proto", "https"), ("x-request-start", "5"), ("x-vcap-request-id", "client")]);
        add_forwarding(&mut h, &facts, plain, Some(&mut log));
        assert_eq!(h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(), ["1.1.1.1, 2.2.2.2, 198.18.0.7"]);
        assert_eq!(h["x-forwarded-proto"], "https", "kept without sanitize");
        assert_eq!(logged(&log), (Some(h["x-forwarded-for"].clone()), Some(h["x-forwarded-proto"].clone())));
        assert_eq!(h["x-request-start"], "5");
        assert_ne!(h["x-vcap-request-id"], "client");

        let mut h = map(&[("x-forwarded-proto", "https"), ("x-forwarded-proto", "ftp")]);
        add_forwarding(&mut h, &facts, ProtoPolicy { force_https: false, sanitize: true }, Some(&mut log));
        assert_eq!(h.get_all("x-forwarded-proto").iter().collect::<Vec<_>>(), ["http"], "every value the client sent is replaced");
        assert_eq!(log.x_forwarded_proto.as_ref(), Some(&h["x-forwarded-proto"]));
        let mut h = map(&[]);
        add_forwarding(&mut h, &facts, ProtoPolicy { force_https: true, sanitize: true }, None);
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn app_instance_header_parsing() {
        let parse = |v: &'static str| app_instance(&HeaderValue::from_static(v)).map(|(a, i)| (a.to_vec(), i.to_vec()));
        assert_eq!(parse("abc-123:2"), Some((b"abc-123".to_vec(), b"2".to_vec())));
        assert_eq!(parse("abc"), None);
        assert_eq!(parse(":1"), None);
        assert_eq!(parse("abc:"), None);
        assert_eq!(parse("abc:x"), None);
        assert_eq!(parse("a b:1"), None);
    }
}
