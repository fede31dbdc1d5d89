//! The access log: one line per request in gorouter's layout, so existing log pipelines keep parsing it.
//!
//! Formatting happens on the worker thread into a thread-local buffer (no allocation once warm), and whole
//! buffers are handed to a dedicated writer thread, so a slow disk never stalls a request. Buffers are flushed when
//! they pass a size threshold and on each worker's periodic tick.

use crate::endpoint::Endpoint;
use http::{HeaderValue, Method, Uri, Version};
use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime};
use wide::u8x16;

/// Buffers this large are handed to the writer without waiting for the tick.
const FLUSH_AT: usize = 32 * 1024;
/// Buffers in flight to the writer; beyond this, lines are dropped (and counted) rather than blocking requests.
const QUEUE_DEPTH: usize = 256;

/// What the log line says about one request, gathered while it is handled.
#[derive(Debug, Default)]
pub struct Entry {
    /// When the request arrived.
    pub started: Option<SystemTime>,
    /// Host header as sent.
    pub host: Option<HeaderValue>,
    /// Method.
    pub method: Method,
    /// Request target.
    pub uri: Uri,
    /// Protocol version.
    pub version: Version,
    /// Referer header.
    pub referer: Option<HeaderValue>,
    /// User-Agent header.
    pub user_agent: Option<HeaderValue>,
    /// Client address.
    pub client: Option<SocketAddr>,
    /// The endpoint that served the request, if any.
    pub backend: Option<Arc<Endpoint>>,
    /// X-Forwarded-For as sent to the backend.
    pub x_forwarded_for: Option<HeaderValue>,
    /// X-Forwarded-Proto as sent to the backend.
    pub x_forwarded_proto: Option<HeaderValue>,
    /// X-Vcap-Request-Id.
    pub request_id: Option<HeaderValue>,
    /// X-Cf-Routererror, when the router answered with an error.
    pub router_error: Option<HeaderValue>,
}

/// The numbers known only when the response ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    /// Status sent (499 when the client gave up).
    pub status: u16,
    /// Request body bytes received.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// From arrival to the end of the response.
    pub response_time: Duration,
    /// Of which the router's own share (everything but waiting on the backend).
    pub router_time: Duration,
}

/// Whether a byte must be escaped or replaced inside a quoted field.
fn byte_needs_care(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = ONES << 7;

/// Whether any of the eight bytes in `word` is below `n` (`n` at most 0x80). A byte below `n` sets its high bit
/// in the difference while its own high bit is clear; a borrow can only add flags above a byte already flagged, so
/// the answer for the word as a whole is exact.
const fn any_byte_below(word: u64, n: u8) -> bool {
    word.wrapping_sub(ONES * n as u64) & !word & HIGH_BITS != 0
}

/// [`byte_needs_care`] for eight bytes at once.
const fn word_needs_care(word: u64) -> bool {
    any_byte_below(word, 0x20)
        | any_byte_below(word ^ (ONES * b'"' as u64), 1)
        | any_byte_below(word ^ (ONES * b'\\' as u64), 1)
        | any_byte_below(word ^ (ONES * 0x7f), 1)
}

/// [`byte_needs_care`] for sixteen bytes at once.
fn lane_needs_care(lane: [u8; 16]) -> bool {
    let lane = u8x16::new(lane);
    let care = lane.simd_lt(u8x16::splat(0x20))
        | lane.simd_eq(u8x16::splat(b'"'))
        | lane.simd_eq(u8x16::splat(b'\\'))
        | lane.simd_eq(u8x16::splat(0x7f));
    care.to_bitmask() != 0
}

/// Whether any byte of a value needs care. Almost none does, so the question is asked of many bytes at once:
/// sixteen at a time, the last sixteen overlapping those before; a shorter value as two overlapping words. Only
/// values under four bytes are looked at byte by byte.
fn needs_care(bytes: &[u8]) -> bool {
    if let Some(last) = bytes.last_chunk::<16>() {
        return bytes.chunks_exact(16).any(|lane| <[u8; 16]>::try_from(lane).is_ok_and(lane_needs_care)) || lane_needs_care(*last);
    }
    if let (Some(first), Some(last)) = (bytes.first_chunk::<8>(), bytes.last_chunk::<8>()) {
        return word_needs_care(u64::from_le_bytes(*first)) | word_needs_care(u64::from_le_bytes(*last));
    }
    if let (Some(first), Some(last)) = (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
        return word_needs_care(u64::from(u32::from_le_bytes(*first)) | u64::from(u32::from_le_bytes(*last)) << 32);
    }
    bytes.iter().any(|&b| byte_needs_care(b))
}

fn push_quoted(out: &mut Vec<u8>, value: Option<&[u8]>) {
    out.push(b'"');
    match value {
        // Almost every value is plain text: copy it whole.
        Some(bytes) if !bytes.is_empty() && !needs_care(bytes) => out.extend_from_slice(bytes),
        Some(bytes) if !bytes.is_empty() => {
            for &b in bytes {
                match b {
                    b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
                    0..=0x1f | 0x7f => out.push(b'?'),
                    _ => out.push(b),
                }
            }
        }
        _ => out.push(b'-'),
    }
    out.push(b'"');
}

/// Appends `n` as exactly `width` decimal digits, zero-padded (`n` must fit).
fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = itoa::Buffer::new();
    let text = digits.format(n).as_bytes();
    out.extend(std::iter::repeat_n(b'0', width.saturating_sub(text.len())));
    out.extend_from_slice(text);
}

/// Appends a duration as seconds with six decimals (`0.001500`), rounded to the microsecond, without going
/// through floating point or 128-bit division: the fraction is rounded on its own and may carry into the seconds.
fn push_seconds(out: &mut Vec<u8>, duration: Duration) {
    let rounded = duration.subsec_nanos() + 500;
    let seconds = duration.as_secs().saturating_add(u64::from(rounded / 1_000_000_000));
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(digits.format(seconds).as_bytes());
    out.push(b'.');
    push_padded(out, u64::from(rounded % 1_000_000_000 / 1000), 6);
}

/// Appends a client address (`198.18.0.1:5555`, `[::1]:80`).
fn push_socket_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    let mut digits = itoa::Buffer::new();
    match addr {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(digits.format(octet).as_bytes());
            }
        }
        SocketAddr::V6(v6) => {
            // Writing to a Vec cannot fail.
            let _ = write!(out, "[{}]", v6.ip());
        }
    }
    out.push(b':');
    out.extend_from_slice(digits.format(addr.port()).as_bytes());
}

thread_local! {
    /// The formatted `YYYY-MM-DDTHH:MM:SS.` of the last second logged on this thread: every line in the same
    /// second shares it, so only the nanoseconds are formatted per line.
    static SECOND: RefCell<(u64, [u8; 20])> = const { RefCell::new((u64::MAX, [0; 20])) };
}

/// Appends an RFC 3339 timestamp with nanoseconds in UTC (`2023-11-14T22:13:20.123456789Z`).
fn push_timestamp(out: &mut Vec<u8>, at: SystemTime) {
    let since_epoch = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let second = since_epoch.as_secs();
    let cached = SECOND.with(|cell| {
        let mut cached = cell.try_borrow_mut().ok()?;
        if cached.0 != second {
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(second);
            let text = humantime::format_rfc3339_seconds(whole).to_string();
            // `YYYY-MM-DDTHH:MM:SSZ`: keep everything before the `Z` and put the decimal point in its place.
            let prefix = text.as_bytes().get(..19)?;
            cached.1[..19].copy_from_slice(prefix);
            cached.1[19] = b'.';
            cached.0 = second;
        }
        Some(cached.1)
    });
    match cached {
        Some(prefix) => {
            out.extend_from_slice(&prefix);
            push_padded(out, u64::from(since_epoch.subsec_nanos()), 9);
            out.push(b'Z');
        }
        // Years past 9999 do not fit the cached layout; format them the slow way.
        None => {
            let _ = write!(out, "{}", humantime::format_rfc3339_nanos(at));
        }
    }
}

fn header_bytes(value: Option<&HeaderValue>) -> Option<&[u8]> {
    value.map(HeaderValue::as_bytes)
}

/// Appends one line for `entry` to `out`.
pub fn format_line(out: &mut Vec<u8>, entry: &Entry, totals: &Totals) {
    match header_bytes(entry.host.as_ref()) {
        Some(host) if !host.is_empty() => out.extend(host.iter().map(|&b| if b.is_ascii_graphic() { b } else { b'?' })),
        _ => out.push(b'-'),
    }
    out.extend_from_slice(b" - [");
    push_timestamp(out, entry.started.unwrap_or(SystemTime::UNIX_EPOCH));
    out.extend_from_slice(b"] \"");
    out.extend_from_slice(entry.method.as_str().as_bytes());
    out.push(b' ');
    let target = entry.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend(target.bytes().map(|b| if b == b'"' { b'?' } else { b }));
    out.push(b' ');
    out.extend_from_slice(match entry.version {
        Version::HTTP_09 => b"HTTP/0.9",
        Version::HTTP_10 => b"HTTP/1.0",
        Version::HTTP_2 => b"HTTP/2.0",
        Version::HTTP_3 => b"HTTP/3.0",
        _ => b"HTTP/1.1",
    });
    out.extend_from_slice(b"\" ");
    let mut numbers = itoa::Buffer::new();
    out.extend_from_slice(numbers.format(totals.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(numbers.format(totals.bytes_in).as_bytes());
    out.push(b' ');
    out.extend_from_slice(numbers.format(totals.bytes_out).as_bytes());
    out.push(b' ');
    push_quoted(out, header_bytes(entry.referer.as_ref()));
    out.push(b' ');
    push_quoted(out, header_bytes(entry.user_agent.as_ref()));
    out.push(b' ');
    match entry.client {
        Some(client) => {
            out.push(b'"');
            push_socket_addr(out, client);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"\"-\""),
    }
    out.push(b' ');
    push_quoted(out, entry.backend.as_ref().map(|e| e.identity().as_bytes()));
    out.extend_from_slice(b" x_forwarded_for:");
    push_quoted(out, header_bytes(entry.x_forwarded_for.as_ref()));
    out.extend_from_slice(b" x_forwarded_proto:");
    push_quoted(out, header_bytes(entry.x_forwarded_proto.as_ref()));
    out.extend_from_slice(b" vcap_request_id:");
    push_quoted(out, header_bytes(entry.request_id.as_ref()));
    out.extend_from_slice(b" response_time:");
    push_seconds(out, totals.response_time);
    out.extend_from_slice(b" gorouter_time:");
    push_seconds(out, totals.router_time);
    out.extend_from_slice(b" app_id:");
    push_quoted(out, entry.backend.as_ref().map(|e| e.app_id().as_bytes()));
    out.extend_from_slice(b" app_index:");
    push_quoted(out, entry.backend.as_ref().map(|e| e.instance_index().as_bytes()));
    out.extend_from_slice(b" instance_id:");
    push_quoted(out, entry.backend.as_ref().map(|e| e.instance_id().as_bytes()));
    out.extend_from_slice(b" x_cf_routererror:");
    push_quoted(out, header_bytes(entry.router_error.as_ref()));
    out.push(b'\n');
}

/// The handle workers log through. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct AccessLog {
    sender: SyncSender<Vec<u8>>,
    dropped: prometheus::IntCounter,
}

thread_local! {
    static BUFFER: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(FLUSH_AT * 2));
}

impl AccessLog {
    /// Opens (appends to) `path` and starts the writer thread.
    pub fn open(path: &Path, dropped: prometheus::IntCounter) -> std::io::Result<(Self, std::thread::JoinHandle<()>)> {
        let file = File::options().create(true).append(true).open(path)?;
        let (sender, receiver) = sync_channel(QUEUE_DEPTH);
        let writer = std::thread::Builder::new().name("access-log".into()).spawn(move || write_loop(file, &receiver))?;
        Ok((Self { sender, dropped }, writer))
    }

    /// Formats a line into this thread's buffer, handing the buffer over when it is full.
    pub fn record(&self, entry: &Entry, totals: &Totals) {
        BUFFER.with(|cell| {
            let Ok(mut buffer) = cell.try_borrow_mut() else { return };
            format_line(&mut buffer, entry, totals);
            if buffer.len() >= FLUSH_AT {
                self.hand_over(&mut buffer);
            }
        });
    }

    /// Hands this thread's buffered lines to the writer (called on each worker tick and at shutdown).
    pub fn flush_thread(&self) {
        BUFFER.with(|cell| {
            if let Ok(mut buffer) = cell.try_borrow_mut()
                && !buffer.is_empty() {
                    self.hand_over(&mut buffer);
                }
        });
    }

    fn hand_over(&self, buffer: &mut Vec<u8>) {
        let full = std::mem::replace(buffer, Vec::with_capacity(FLUSH_AT * 2));
        match self.sender.try_send(full) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

fn write_loop(file: File, receiver: &Receiver<Vec<u8>>) {
    let mut file = std::io::BufWriter::with_capacity(256 * 1024, file);
    while let Ok(chunk) = receiver.recv() {
        let mut result = file.write_all(&chunk);
        // Drain whatever else is queued before flushing, so bursts cost one write.
        while let Ok(more) = receiver.try_recv() {
            result = result.and_then(|()| file.write_all(&more));
        }
        if let Err(err) = result.and_then(|()| file.flush()) {
            tracing::error!(%err, "access log write failed");
        }
    }
    let _ = file.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_follows_the_gorouter_layout() {
        let entry = Entry {
            started: Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789)),
            host: Some(HeaderValue::from_static("app.example.com")),
            method: Method::GET,
            uri: "/path?q=1".parse().unwrap(),
            version: Version::HTTP_11,
            referer: None,
            user_agent: Some(HeaderValue::from_static("curl/8 \"quoted\"")),
            client: Some("198.18.0.1:5555".parse().unwrap()),
            backend: None,
            x_forwarded_for: Some(HeaderValue::from_static("198.18.0.1")),
            x_forwarded_proto: Some(HeaderValue::from_static("http")),
            request_id: Some(HeaderValue::from_static("abc")),
            router_error: Some(HeaderValue::from_static("unknown_route")),
        };
        let totals = Totals {
            status: 404,
            bytes_in: 0,
            bytes_out: 70,
            response_time: Duration::from_micros(1500),
            router_time: Duration::from_nanos(1_499_600),
        };
        let mut out = Vec::new();
        format_line(&mut out, &entry, &totals);
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line,
            "app.example.com - [2023-11-14T22:13:20.123456789Z] \"GET /path?q=1 HTTP/1.1\" 404 0 70 \"-\" \
             \"curl/8 \\\"quoted\\\"\" \"198.18.0.1:5555\" \"-\" x_forwarded_for:\"198.18.0.1\" \
             x_forwarded_proto:\"http\" vcap_request_id:\"abc\" response_time:0.001500 gorouter_time:0.001500 \
             app_id:\"-\" app_index:\"-\" instance_id:\"-\" x_cf_routererror:\"unknown_route\"\n"
        );
    }

    #[test]
    fn quoted_fields_escape_quotes_and_backslashes_and_hide_control_bytes() {
        let quoted = |value: &[u8]| {
            let mut out = Vec::new();
            push_quoted(&mut out, Some(value));
            out
        };
        assert_eq!(quoted(b"plain text, long enough to span more than one vector of bytes"), b"\"plain text, long enough to span more than one vector of bytes\"");
        assert_eq!(quoted(b"a\\b\"c"), b"\"a\\\\b\\\"c\"");
        assert_eq!(quoted(b"tab\there, bell\x07, del\x7f, newline at the end of a long value\n"), b"\"tab?here, bell?, del?, newline at the end of a long value?\"");
        assert_eq!(quoted(b""), b"\"-\"");
        assert_eq!(quoted("caf\u{e9}".as_bytes()), "\"caf\u{e9}\"".as_bytes());
    }

    proptest::proptest! {
        /// The word and lane tests agree with the byte-by-byte definition at every length, wherever the one byte
        /// that needs care sits among bytes that do not.
        #[test]
        fn needs_care_agrees_with_the_bytewise_definition(
            plain in proptest::collection::vec(proptest::prop_oneof![0x20u8..=0x7e, 0x80u8..=0xff], 0..80),
            special in proptest::prop_oneof![0u8..0x20, proptest::strategy::Just(b'"'), proptest::strategy::Just(b'\\'), proptest::strategy::Just(0x7f)],
            at in proptest::num::usize::ANY,
            other in proptest::num::u8::ANY,
        ) {
            let plain: Vec<u8> = plain.into_iter().filter(|&b| !byte_needs_care(b)).collect();
            proptest::prop_assert!(!needs_care(&plain));
            let mut marked = plain.clone();
            marked.insert(at % (plain.len() + 1), special);
            proptest::prop_assert!(needs_care(&marked));
            marked.insert(at % (marked.len() + 1), other);
            proptest::prop_assert_eq!(needs_care(&marked), marked.iter().any(|&b| byte_needs_care(b)));
        }
    }

    #[test]
    fn every_byte_value_is_judged_alike_at_every_position_and_length() {
        for len in 1..=40 {
            for at in 0..len {
                for b in 0..=u8::MAX {
                    let mut value = vec![b'a'; len];
                    value[at] = b;
                    assert_eq!(needs_care(&value), byte_needs_care(b), "byte {b:#x} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn hand_formatted_fields_match_the_standard_formatting() {
        for nanos in [0u64, 1, 999_999_999, 1_700_000_000_123_456_789, 1_700_000_001_000_000_007, 18_000_000_000_000_000_000] {
            let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos);
            let mut out = Vec::new();
            push_timestamp(&mut out, at);
            assert_eq!(String::from_utf8(out).unwrap(), humantime::format_rfc3339_nanos(at).to_string(), "{nanos}");
        }
        for micros in [0u64, 1, 999_999, 1_000_000, 12_345_678_901] {
            let mut out = Vec::new();
            push_seconds(&mut out, Duration::from_micros(micros));
            #[allow(clippy::cast_precision_loss)]
            let expected = format!("{:.6}", micros as f64 / 1e6);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
        // Rounded to the nearest microsecond, half up, carrying into the seconds.
        for (duration, expected) in [
            (Duration::new(2, 1_499), "2.000001"),
            (Duration::new(2, 1_500), "2.000002"),
            (Duration::new(0, 999_999_499), "0.999999"),
            (Duration::new(0, 999_999_500), "1.000000"),
            (Duration::new(7, 999_999_999), "8.000000"),
            (Duration::MAX, "18446744073709551615.000000"),
        ] {
            let mut out = Vec::new();
            push_seconds(&mut out, duration);
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{duration:?}");
        }
        for addr in ["198.18.0.1:5555", "0.0.0.0:0", "[::1]:80", "[2001:db8::1]:65535"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut out = Vec::new();
            push_socket_addr(&mut out, addr);
            assert_eq!(String::from_utf8(out).unwrap(), addr.to_string());
        }
        let mut out = Vec::new();
        push_quoted(&mut out, Some(b"plain text"));
        push_quoted(&mut out, Some(b"a\"b\\c\x01"));
        push_quoted(&mut out, Some(b""));
        assert_eq!(String::from_utf8(out).unwrap(), "\"plain text\"\"a\\\"b\\\\c?\"\"-\"");
    }
}
