//! Trace context for backends: B3 (Zipkin) and W3C `traceparent`, when enabled.
//!
//! The router is a hop in the trace: it keeps an incoming trace id and starts a new span for its hop, or starts a
//! new trace when the client sent none. Generated ids come from the thread-local random generator.

use crate::proxy::arena;
use http::header::{HeaderMap, HeaderName, HeaderValue};

const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Which trace formats to emit.
#[derive(Debug, Clone, Default)]
pub struct TraceSettings {
    /// B3 headers.
    pub zipkin: bool,
    /// W3C headers.
    pub w3c: bool,
    /// The `tracestate` key: `gorouter`, or `<tenant>@gorouter`.
    pub tracestate_key: String,
}

/// `bytes` random bytes (at most 16) as lower-case hex.
fn random_hex(bytes: usize) -> String {
    let text = format!("{:032x}", rand::random::<u128>());
    text.get(..bytes * 2).unwrap_or(&text).to_owned()
}

fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn set(headers: &mut HeaderMap, name: HeaderName, text: &str) {
    if let Some(value) = arena::value(text.len(), |slab| slab.extend_from_slice(text.as_bytes())) {
        headers.insert(name, value);
    }
}

/// Adds or continues trace headers on a request going to a backend.
pub fn add_trace_headers(headers: &mut HeaderMap, settings: &TraceSettings) {
    if settings.zipkin {
        let incoming_span = headers.get(B3_SPAN_ID).cloned();
        if !headers.contains_key(B3_TRACE_ID) {
            set(headers, B3_TRACE_ID, &random_hex(16));
        }
        if let Some(parent) = incoming_span {
            headers.insert(B3_PARENT_SPAN_ID, parent);
        }
        set(headers, B3_SPAN_ID, &random_hex(8));
    }
    if settings.w3c {
        let span = random_hex(8);
        let continued = headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()).and_then(|text| {
            let mut parts = text.split('-');
            let (version, trace, _parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            let valid = version == "00" && is_lower_hex(trace, 32) && trace != "0".repeat(32) && is_lower_hex(flags, 2);
            valid.then(|| format!("00-{trace}-{span}-{flags}"))
        });
        let traceparent = continued.unwrap_or_else(|| format!("00-{}-{span}-01", random_hex(16)));
        set(headers, TRACEPARENT, &traceparent);
        let own_entry = format!("{}={span}", settings.tracestate_key);
        let others: Vec<String> = headers
            .get_all(TRACESTATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty() && entry.split('=').next() != Some(settings.tracestate_key.as_str()))
            .map(str::to_owned)
            .take(31)
            .collect();
        let tracestate = std::iter::once(own_entry).chain(others).collect::<Vec<_>>().join(",");
        match HeaderValue::from_str(&tracestate) {
            Ok(value) => {
                headers.insert(TRACESTATE, value);
            }
            Err(_) => {
                headers.remove(TRACESTATE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> TraceSettings {
        TraceSettings { zipkin: true, w3c: true, tracestate_key: "gorouter".into() }
    }

    #[test]
    fn starts_new_traces() {
        let mut h = HeaderMap::new();
        add_trace_headers(&mut h, &settings());
        assert!(is_lower_hex(h["x-b3-traceid"].to_str().unwrap(), 32));
        assert!(is_lower_hex(h["x-b3-spanid"].to_str().unwrap(), 16));
        let tp = h["traceparent"].to_str().unwrap().to_owned();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!((parts[0], parts[3]), ("00", "01"));
        assert_eq!(h["tracestate"].to_str().unwrap(), format!("gorouter={}", parts[2]));
    }

    #[test]
    fn continues_incoming_traces() {
        let mut h = HeaderMap::new();
        h.insert("x-b3-traceid", HeaderValue::from_static("463ac35c9f6413ad48485a3953bb6124"));
        h.insert("x-b3-spanid", HeaderValue::from_static("a2fb4a1d1a96d312"));
        h.insert("traceparent", HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"));
        h.insert("tracestate", HeaderValue::from_static("gorouter=old,vendor=x"));
        add_trace_headers(&mut h, &settings());
        assert_eq!(h["x-b3-traceid"], "463ac35c9f6413ad48485a3953bb6124");
        assert_eq!(h["x-b3-parentspanid"], "a2fb4a1d1a96d312");
        assert_ne!(h["x-b3-spanid"], "a2fb4a1d1a96d312");
        let tp = h["traceparent"].to_str().unwrap();
        assert!(tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && tp.ends_with("-00"));
        assert!(!tp.contains("b7ad6b7169203331"));
        let ts = h["tracestate"].to_str().unwrap();
        assert!(ts.starts_with("gorouter=") && ts.ends_with(",vendor=x") && !ts.contains("old"));
    }
}
