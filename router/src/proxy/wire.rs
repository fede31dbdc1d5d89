//! HTTP/1.1 toward a backend, as bytes in and decisions out, with no IO.
//!
//! The plain HTTP/1.1 path to a backend writes and reads its socket inside the request's own task (see
//! `direct.rs`); everything that must be exactly right about the protocol lives here instead, where it is tested
//! and fuzzed without sockets: the request head written, the response head read (interim answers skipped), how
//! the response body is framed (RFC 9112, 6.3), whether the connection may carry another request, and the body
//! decoder that turns received bytes into data and trailers.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri, Version, response};
use smallvec::SmallVec;
use std::mem::MaybeUninit;
use std::ops::Range;

/// Most header lines in a response head, or in a chunked body's trailers.
pub const MAX_HEADERS: usize = 100;
/// Largest response head accepted (the same bound hyper's client applies).
pub const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;
/// Room a response's header map keeps for the headers the router adds on the way out (`X-Vcap-Request-Id`, a
/// sticky-session cookie): growing a full map rehashes it, which costs more than all the rest of reading a small
/// head.
const SPARE_HEADER_SLOTS: usize = 2;
/// The fewest slots a response's header map is given. Once the response is written, hyper's HTTP/1 server keeps
/// the emptied map for the next request on the client connection, and the router then adds its seven forwarding
/// headers to that request: a map this large holds a small request and them without regrowing. That request's map
/// in turn carries its answer's headers, so on a keep-alive connection no map is made per request. (Larger costs
/// more to clear than it saves; this is a speed matter only.)
const MIN_HEADER_SLOTS: usize = 12;
/// Longest chunk-size line (with its extensions) or trailer section accepted.
const MAX_CHUNK_LINE_BYTES: usize = 16 * 1024;

/// How a response broke the protocol. None of these is retried: the backend has seen the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The status line or a header line is not HTTP/1.x.
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    /// The head did not end within [`MAX_HEAD_BYTES`].
    #[error("response head longer than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// A header name or value that HTTP does not allow.
    #[error("invalid header in the response")]
    Header,
    /// `101 Switching Protocols` to a request that asked for no switch.
    #[error("unrequested 101 Switching Protocols")]
    UnrequestedSwitch,
    /// `Transfer-Encoding` in an HTTP/1.0 response, which cannot have one.
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncoding,
    /// A body coded other than with one `chunked` (`gzip, chunked`, `chunked, gzip`): the router removes the
    /// chunks only, so the client would get coded bytes with nothing saying so.
    #[error("unsupported Transfer-Encoding in the response")]
    TransferCoding,
    /// `Content-Length` is not a number, or two of them disagree.
    #[error("invalid Content-Length in the response")]
    ContentLength,
    /// A chunk of a chunked body is framed badly.
    #[error("malformed chunk in the response body")]
    Chunk,
    /// The trailers of a chunked body are malformed.
    #[error("malformed trailers in the response body")]
    Trailers,
    /// The connection ended before the body did.
    #[error("response body ended early")]
    Incomplete,
}

/// Appends the head of `method target` with `headers` to `out`. The target is always sent in origin form.
pub fn encode_request_head(method: &Method, uri: &Uri, headers: &HeaderMap, out: &mut Vec<u8>) {
    let target = uri.path_and_query().map_or("/", |pq| if pq.as_str().is_empty() { "/" } else { pq.as_str() });
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The transfer codings that `Transfer-Encoding` field lines name, tallied line by line.
///
/// `chunked` is the only coding the router takes off and puts back (or not) per hop; any other would be passed on
/// with its header gone, so a message is accepted only with none at all or exactly one `chunked`.
#[derive(Debug, Default, Clone, Copy)]
pub struct TransferCodings {
    named: bool,
    chunked: u32,
    other: bool,
}

impl TransferCodings {
    /// The codings of every `Transfer-Encoding` line of `headers`. Every request is checked and almost none has
    /// the header, so the common answer is found inline and only the tally is a call.
    #[inline]
    pub fn of(headers: &HeaderMap) -> Self {
        let lines = headers.get_all(http::header::TRANSFER_ENCODING);
        if lines.iter().next().is_none() {
            return Self::default();
        }
        Self::tally(lines)
    }

    fn tally(lines: http::header::GetAll<'_, HeaderValue>) -> Self {
        let mut codings = Self::default();
        for line in lines {
            codings.add(line.as_bytes());
        }
        codings
    }

    /// Adds one line's list (empty list elements do not count).
    pub fn add(&mut self, line: &[u8]) {
        self.named = true;
        for coding in line.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|c| !c.is_empty()) {
            if coding.eq_ignore_ascii_case(b"chunked") {
                self.chunked = self.chunked.saturating_add(1);
            } else {
                self.other = true;
            }
        }
    }

    /// Whether any `Transfer-Encoding` line was seen.
    pub fn named(self) -> bool {
        self.named
    }

    /// Whether lines were seen and they name something other than exactly one `chunked`.
    pub fn unsupported(self) -> bool {
        self.named && (self.other || self.chunked != 1)
    }
}

/// Where a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// There is none (a HEAD request, 204, 304, or `Content-Length: 0`).
    Empty,
    /// After this many bytes.
    Length(u64),
    /// At the last chunk.
    Chunked,
    /// When the backend closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    /// Status, version and headers, for the response sent on.
    pub parts: response::Parts,
    /// How the body is framed.
    pub framing: Framing,
    /// Whether the connection may carry another request once the body has been read.
    pub reusable: bool,
}

/// What the framing headers of a head say.
#[derive(Debug, Default)]
struct FramingHeaders {
    content_length: Option<u64>,
    codings: TransferCodings,
    close: bool,
    keep_alive: bool,
}

impl FramingHeaders {
    fn read(&mut self, name: &[u8], value: &[u8]) -> Result<(), ProtocolError> {
        if name.eq_ignore_ascii_case(b"content-length") {
            for item in value.split(|&b| b == b',') {
                let length = parse_length(item.trim_ascii()).ok_or(ProtocolError::ContentLength)?;
                if self.content_length.is_some_and(|seen| seen != length) {
                    return Err(ProtocolError::ContentLength);
                }
                self.content_length = Some(length);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.codings.add(value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        Ok(())
    }

    /// The framing of a response with `status` to a `method` request, and whether the connection can be reused.
    fn decide(&self, method: &Method, status: StatusCode, version: Version) -> Result<(Framing, bool), ProtocolError> {
        let persistent = if version == Version::HTTP_11 { !self.close } else { self.keep_alive && !self.close };
        if !has_body(method, status) {
            return Ok((Framing::Empty, persistent));
        }
        if self.codings.named() {
            if version == Version::HTTP_10 {
                return Err(ProtocolError::TransferEncoding);
            }
            if self.codings.unsupported() {
                return Err(ProtocolError::TransferCoding);
            }
            // With both headers the length is a lie someone may believe: never read another response after it.
            return Ok((Framing::Chunked, persistent && self.content_length.is_none()));
        }
        Ok(match self.content_length {
            Some(0) => (Framing::Empty, persistent),
            Some(length) => (Framing::Length(length), persistent),
            None => (Framing::UntilClose, false),
        })
    }
}

/// Whether an answer with `status` to a `method` request has a body: not to HEAD, and not with 1xx, 204 or 304,
/// whatever its headers say (RFC 9112, 6.3).
pub fn has_body(method: &Method, status: StatusCode) -> bool {
    !(*method == Method::HEAD || status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED)
}

/// A decimal `Content-Length`: digits only.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |total, &b| b.is_ascii_digit().then(|| total * 10 + u64::from(b - b'0')))
}

/// Reads a response head from the front of `buf`, skipping interim (1xx) answers, and removes it from `buf`.
/// `Ok(None)`: the head is not complete yet; read more and call again.
///
/// The head's headers go into `spare`'s map, emptied, so that a map the caller needs no more once an answer has
/// come (the request's) is reused instead of a new one made for every answer. `Ok(None)` leaves `spare` as it
/// was; any other outcome may leave it empty.
pub fn parse_response_head(buf: &mut BytesMut, method: &Method, spare: &mut HeaderMap) -> Result<Option<Head>, ProtocolError> {
    loop {
        let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => return Err(ProtocolError::HeadTooLarge),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(ProtocolError::HeadTooLarge),
            Err(error) => return Err(ProtocolError::Head(error)),
        };
        let code = parsed.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| ProtocolError::Head(httparse::Error::Status))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ProtocolError::UnrequestedSwitch);
        }
        if status.is_informational() {
            buf.advance(length);
            continue;
        }
        let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        // Where each header sits in the head, so the values can share the head's memory once it is split off.
        let base = buf.as_ptr() as usize;
        let span = |part: &[u8]| {
            let at = part.as_ptr() as usize - base;
            at..at + part.len()
        };
        // Iterated in place, never moved: at 1 KiB inline, each move of it is a copy that shows in the profile.
        let mut spans: SmallVec<[(Range<usize>, Range<usize>); 32]> = SmallVec::new();
        let mut framing = FramingHeaders::default();
        for header in parsed.headers.iter() {
            framing.read(header.name.as_bytes(), header.value)?;
            spans.push((span(header.name.as_bytes()), span(header.value)));
        }
        let reason = parsed.reason.filter(|reason| !reason.is_empty() && Some(*reason) != status.canonical_reason()).map(|r| span(r.as_bytes()));
        let head = buf.split_to(length).freeze();
        let mut headers = std::mem::take(spare);
        headers.clear();
        headers.reserve((spans.len() + SPARE_HEADER_SLOTS).max(MIN_HEADER_SLOTS));
        for (name, value) in &spans {
            let name = head.get(name.clone()).and_then(|name| HeaderName::from_bytes(name).ok()).ok_or(ProtocolError::Header)?;
            let value = HeaderValue::from_maybe_shared(head.slice(value.clone())).map_err(|_| ProtocolError::Header)?;
            headers.append(name, value);
        }
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = status;
        parts.version = version;
        parts.headers = headers;
        if let Some(reason) = reason
            && let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(head.slice(reason)) {
                parts.extensions.insert(phrase);
            }
        if framing.codings.named() && framing.content_length.is_some() {
            // The length does not describe the body: it must not reach the client (RFC 9112, 6.3).
            parts.headers.remove(http::header::CONTENT_LENGTH);
        }
        let (framing, reusable) = framing.decide(method, status, version)?;
        return Ok(Some(Head { parts, framing, reusable }));
    }
}

/// What the body decoder found in the bytes it was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The trailer fields after the last chunk; the body is complete.
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// Nothing yet: read more.
    NeedMore,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data, with this much of it left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// Turns the bytes of a response body, as they arrive, into data and trailers.
#[derive(Debug)]
pub struct BodyDecoder {
    state: State,
}

impl BodyDecoder {
    /// A decoder for a body framed by `framing`.
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(length) => State::Length(length),
            Framing::Chunked => State::Chunked(Chunk::Size),
            Framing::UntilClose => State::UntilClose,
        };
        Self { state }
    }

    /// Whether the whole body has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Body bytes still expected, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(left) => Some(left),
            State::Done => Some(0),
            State::Chunked(_) | State::UntilClose => None,
        }
    }

    /// Decodes from the front of `buf`, removing what it used.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ProtocolError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::UntilClose if buf.is_empty() => return Ok(Decoded::NeedMore),
                State::UntilClose => return Ok(Decoded::Data(buf.split().freeze())),
                State::Length(_) | State::Chunked(Chunk::Data(_)) if buf.is_empty() => return Ok(Decoded::NeedMore),
                State::Length(left) => {
                    let data = take(buf, left);
                    self.state = if left == data.len() as u64 { State::Done } else { State::Length(left - data.len() as u64) };
                    return Ok(Decoded::Data(data));
                }
                State::Chunked(Chunk::Data(left)) => {
                    let data = take(buf, left);
                    self.state = State::Chunked(if left == data.len() as u64 { Chunk::DataEnd } else { Chunk::Data(left - data.len() as u64) });
                    return Ok(Decoded::Data(data));
                }
                State::Chunked(Chunk::Size) => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.state = State::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
                    }
                    Ok(httparse::Status::Partial) if buf.len() >= MAX_CHUNK_LINE_BYTES => return Err(ProtocolError::Chunk),
                    Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
                    Err(httparse::InvalidChunkSize) => return Err(ProtocolError::Chunk),
                },
                State::Chunked(Chunk::DataEnd) => match buf.get(..2) {
                    None if buf.first().is_none_or(|&b| b == b'\r') => return Ok(Decoded::NeedMore),
                    Some(b"\r\n") => {
                        buf.advance(2);
                        self.state = State::Chunked(Chunk::Size);
                    }
                    _ => return Err(ProtocolError::Chunk),
                },
                State::Chunked(Chunk::Trailers) => return self.trailers(buf),
            }
        }
    }

    /// Reads the trailer section that ends a chunked body.
    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Decoded, ProtocolError> {
        match buf.get(..2) {
            Some(b"\r\n") => {
                buf.advance(2);
                self.state = State::Done;
                return Ok(Decoded::End);
            }
            None if buf.first().is_none_or(|&b| b == b'\r') => return Ok(Decoded::NeedMore),
            _ => {}
        }
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (used, fields) = match httparse::parse_headers(buf, &mut slots) {
            Ok(httparse::Status::Complete(parsed)) => parsed,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_CHUNK_LINE_BYTES => return Err(ProtocolError::Trailers),
            Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
            Err(_) => return Err(ProtocolError::Trailers),
        };
        let mut trailers = HeaderMap::with_capacity(fields.len());
        for field in fields {
            let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| ProtocolError::Trailers)?;
            let value = HeaderValue::from_bytes(field.value).map_err(|_| ProtocolError::Trailers)?;
            trailers.append(name, value);
        }
        buf.advance(used);
        self.state = State::Done;
        Ok(Decoded::Trailers(trailers))
    }

    /// The connection ended: the end of a body that runs until the close, and a truncated body otherwise.
    pub fn at_eof(&mut self) -> Result<(), ProtocolError> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            State::Length(_) | State::Chunked(_) => Err(ProtocolError::Incomplete),
        }
    }
}

/// Up to `limit` bytes from the front of `buf`.
fn take(buf: &mut BytesMut, limit: u64) -> Bytes {
    let length = usize::try_from(limit).map_or(buf.len(), |limit| limit.min(buf.len()));
    buf.split_to(length).freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head_of(bytes: &[u8], method: &Method) -> (Result<Option<Head>, ProtocolError>, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        let parsed = parse_response_head(&mut buf, method, &mut HeaderMap::new());
        (parsed, buf)
    }

    fn head(bytes: &[u8]) -> Head {
        match head_of(bytes, &Method::GET).0 {
            Ok(Some(head)) => head,
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    #[test]
    fn a_spare_map_is_kept_until_an_answer_comes_then_holds_only_the_answers_headers() {
        let mut request_headers = HeaderMap::new();
        request_headers.insert(http::header::HOST, HeaderValue::from_static("app.example.com"));
        request_headers.insert(http::header::USER_AGENT, HeaderValue::from_static("curl"));
        let kept = request_headers.clone();
        // An incomplete head, and interim answers before it, leave the request's headers as they were: it may go again.
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert!(matches!(parse_response_head(&mut buf, &Method::GET, &mut request_headers), Ok(None)));
        assert_eq!(request_headers, kept);
        buf.extend_from_slice(b"ngth: 2\r\nServer: x\r\n\r\nok");
        let head = match parse_response_head(&mut buf, &Method::GET, &mut request_headers) {
            Ok(Some(head)) => head,
            other => panic!("expected a complete head, got {other:?}"),
        };
        let names: Vec<&str> = head.parts.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-length", "server"], "only the answer's headers");
        assert!(head.parts.headers.capacity() >= MIN_HEADER_SLOTS);
        assert!(request_headers.is_empty(), "the request's map went to the answer");
    }

    fn error(bytes: &[u8]) -> ProtocolError {
        match head_of(bytes, &Method::GET).0 {
            Err(error) => error,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// Everything a decoder yields from `pieces` fed one after another, then the end of the connection.
    fn decode_all(framing: Framing, pieces: &[&[u8]]) -> Result<(Vec<u8>, Option<HeaderMap>, BytesMut), ProtocolError> {
        let mut decoder = BodyDecoder::new(framing);
        let mut buf = BytesMut::new();
        let (mut body, mut trailers) = (Vec::new(), None);
        let mut pieces = pieces.iter();
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::Trailers(fields) => trailers = Some(fields),
                Decoded::End => return Ok((body, trailers, buf)),
                Decoded::NeedMore => match pieces.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None => decoder.at_eof()?,
                },
            }
        }
    }

    #[test]
    fn the_request_head_is_origin_form_with_every_header_in_order() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("app.example"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let mut out = Vec::new();
        encode_request_head(&Method::GET, &"http://app.example/p/q?x=1".parse().unwrap(), &headers, &mut out);
        assert_eq!(out, b"GET /p/q?x=1 HTTP/1.1\r\nhost: app.example\r\nx-a: 1\r\nx-a: 2\r\n\r\n");
        out.clear();
        encode_request_head(&Method::DELETE, &"http://app.example".parse().unwrap(), &HeaderMap::new(), &mut out);
        assert_eq!(out, b"DELETE / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn a_head_is_taken_off_the_buffer_and_the_body_bytes_stay() {
        let (parsed, rest) = head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Thing: a b\r\n\r\nhello", &Method::GET);
        let head = parsed.unwrap().unwrap();
        assert_eq!(head.parts.status, StatusCode::OK);
        assert_eq!(head.parts.version, Version::HTTP_11);
        assert_eq!(head.parts.headers["x-thing"], "a b");
        assert_eq!(head.parts.headers["content-length"], "5");
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.reusable);
        assert!(head.parts.extensions.get::<hyper::ext::ReasonPhrase>().is_none());
        assert_eq!(&rest[..], b"hello");
    }

    #[test]
    fn an_incomplete_head_asks_for_more_and_consumes_nothing() {
        let whole = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        for cut in 0..whole.len() {
            let (parsed, rest) = head_of(&whole[..cut], &Method::GET);
            assert_eq!(parsed.unwrap().map(|h| h.framing), None, "cut at {cut}");
            assert_eq!(&rest[..], &whole[..cut]);
        }
        assert_eq!(head(whole).framing, Framing::Empty);
    }

    #[test]
    fn interim_answers_are_skipped_but_an_unrequested_switch_is_an_error() {
        let (parsed, rest) = head_of(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno", &Method::GET);
        let head = parsed.unwrap().unwrap();
        assert_eq!(head.parts.status, StatusCode::NOT_FOUND);
        assert!(!head.parts.headers.contains_key("link"));
        assert_eq!(&rest[..], b"no");
        assert_eq!(error(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"), ProtocolError::UnrequestedSwitch);
    }

    #[test]
    fn bodies_are_framed_as_rfc_9112_says() {
        assert_eq!(head(b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n").framing, Framing::Empty);
        assert_eq!(head(b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n").framing, Framing::Empty);
        let (to_head, _) = head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", &Method::HEAD);
        assert_eq!(to_head.unwrap().unwrap().framing, Framing::Empty);
        let chunked = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!((chunked.framing, chunked.reusable), (Framing::Chunked, true));
        let unframed = head(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((unframed.framing, unframed.reusable), (Framing::UntilClose, false));
        assert_eq!(head(b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n").framing, Framing::Length(7));
    }

    #[test]
    fn codings_other_than_one_chunked_are_refused_where_a_body_follows() {
        for codings in ["gzip, chunked", "chunked, gzip", "gzip", "chunked, chunked", "identity", ",", "chunked;q=1"] {
            let wire = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {codings}\r\n\r\n");
            assert_eq!(error(wire.as_bytes()), ProtocolError::TransferCoding, "{codings}");
            let bodyless = format!("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: {codings}\r\n\r\n");
            assert_eq!(head(bodyless.as_bytes()).framing, Framing::Empty, "{codings}: a 304 has no body to decode");
        }
        assert_eq!(error(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"), ProtocolError::TransferCoding);
        assert_eq!(head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n").framing, Framing::Chunked, "empty list elements do not count");
    }

    #[test]
    fn both_length_and_chunks_mean_chunks_no_length_forwarded_and_no_reuse() {
        let both = head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((both.framing, both.reusable), (Framing::Chunked, false));
        assert!(!both.parts.headers.contains_key("content-length"));
    }

    #[test]
    fn bad_lengths_and_bad_heads_are_protocol_errors() {
        assert_eq!(error(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"), ProtocolError::ContentLength);
        assert_eq!(error(b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n"), ProtocolError::ContentLength);
        assert_eq!(error(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"), ProtocolError::ContentLength);
        assert_eq!(error(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n"), ProtocolError::ContentLength);
        assert_eq!(error(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), ProtocolError::TransferEncoding);
        assert!(matches!(error(b"HTTP/1.1 2000 OK\r\n\r\n"), ProtocolError::Head(_)));
        assert!(matches!(error(b"SMTP ready\r\n\r\n"), ProtocolError::Head(_)));
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for n in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{n}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(error(&many), ProtocolError::HeadTooLarge);
        let endless = [b"HTTP/1.1 200 OK\r\nx-big: ".as_slice(), &vec![b'a'; MAX_HEAD_BYTES]].concat();
        assert_eq!(error(&endless), ProtocolError::HeadTooLarge);
    }

    #[test]
    fn the_connection_header_and_the_version_decide_reuse() {
        assert!(!head(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n").reusable);
        assert!(!head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").reusable);
        let old = head(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n");
        assert!(old.reusable);
        assert_eq!(old.parts.version, Version::HTTP_10);
    }

    #[test]
    fn an_unusual_reason_phrase_is_kept_for_the_client() {
        let custom = head(b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 0\r\n\r\n");
        let phrase = custom.parts.extensions.get::<hyper::ext::ReasonPhrase>().map(|p| p.as_bytes().to_vec());
        assert_eq!(phrase.as_deref(), Some(b"Fine Thanks".as_slice()));
    }

    #[test]
    fn a_length_body_ends_at_its_length_and_leaves_what_follows() {
        let (body, trailers, rest) = decode_all(Framing::Length(5), &[b"he", b"llo", b"HTTP"]).unwrap();
        assert_eq!((body.as_slice(), trailers, &rest[..]), (b"hello".as_slice(), None, b"".as_slice()));
        let (body, _, rest) = decode_all(Framing::Length(5), &[b"helloHTTP"]).unwrap();
        assert_eq!((body.as_slice(), &rest[..]), (b"hello".as_slice(), b"HTTP".as_slice()));
        assert_eq!(decode_all(Framing::Length(5), &[b"hel"]).unwrap_err(), ProtocolError::Incomplete);
        assert_eq!(BodyDecoder::new(Framing::Length(5)).remaining(), Some(5));
        assert!(BodyDecoder::new(Framing::Empty).is_done());
    }

    #[test]
    fn a_close_delimited_body_ends_with_the_connection() {
        let (body, _, _) = decode_all(Framing::UntilClose, &[b"to the ", b"end"]).unwrap();
        assert_eq!(body, b"to the end");
    }

    #[test]
    fn chunks_with_extensions_and_trailers_decode() {
        let wire = b"5;name=value\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\ngrpc-status: 0\r\nx-more: yes\r\n\r\nNEXT";
        let (body, trailers, rest) = decode_all(Framing::Chunked, &[wire]).unwrap();
        assert_eq!(body, b"hello 0123456789");
        let trailers = trailers.unwrap();
        assert_eq!((&trailers["grpc-status"], &trailers["x-more"]), (&HeaderValue::from_static("0"), &HeaderValue::from_static("yes")));
        assert_eq!(&rest[..], b"NEXT");
        let (_, trailers, rest) = decode_all(Framing::Chunked, &[b"0\r\n\r\n"]).unwrap();
        assert_eq!((trailers, &rest[..]), (None, b"".as_slice()));
    }

    #[test]
    fn misframed_chunks_are_errors() {
        assert_eq!(decode_all(Framing::Chunked, &[b"zz\r\n"]).unwrap_err(), ProtocolError::Chunk);
        assert_eq!(decode_all(Framing::Chunked, &[b"2\r\nabXY"]).unwrap_err(), ProtocolError::Chunk);
        assert_eq!(decode_all(Framing::Chunked, &[b"2\r\nab\r\n0\r\nbad trailer\r\n\r\n"]).unwrap_err(), ProtocolError::Trailers);
        assert_eq!(decode_all(Framing::Chunked, &[b"2\r\nab\r\n"]).unwrap_err(), ProtocolError::Incomplete);
        assert_eq!(decode_all(Framing::Chunked, &[&vec![b'1'; MAX_CHUNK_LINE_BYTES]]).unwrap_err(), ProtocolError::Chunk);
    }

    /// A body sent as `sizes` chunks, with optional trailers.
    fn chunked(body: &[u8], sizes: &[usize], trailer: bool) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut rest = body;
        for &size in sizes.iter().cycle().take(body.len() + 1) {
            if rest.is_empty() {
                break;
            }
            let (chunk, after) = rest.split_at(size.clamp(1, rest.len()));
            wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
            rest = after;
        }
        wire.extend_from_slice(if trailer { b"0\r\nx-sum: 1\r\n\r\n".as_slice() } else { b"0\r\n\r\n" });
        wire
    }

    proptest! {
        #[test]
        fn chunked_bodies_decode_the_same_however_the_reads_split_them(
            body in proptest::collection::vec(any::<u8>(), 0..600),
            sizes in proptest::collection::vec(1usize..200, 1..8),
            cuts in proptest::collection::vec(1usize..40, 1..30),
            trailer in any::<bool>(),
        ) {
            let wire = chunked(&body, &sizes, trailer);
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut rest = wire.as_slice();
            for &cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (piece, after) = rest.split_at(cut.min(rest.len()));
                pieces.push(piece);
                rest = after;
            }
            let (decoded, trailers, left) = decode_all(Framing::Chunked, &pieces).unwrap();
            prop_assert_eq!(decoded, body);
            prop_assert_eq!(trailers.is_some(), trailer);
            prop_assert!(left.is_empty());
        }

        #[test]
        fn any_bytes_as_a_response_give_a_head_an_error_or_a_request_for_more(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let (parsed, rest) = head_of(&bytes, &Method::GET);
            match parsed {
                Ok(None) => prop_assert_eq!(&rest[..], bytes.as_slice()),
                Ok(Some(head)) => {
                    prop_assert!(bytes.ends_with(&rest) && rest.len() < bytes.len());
                    let mut decoder = BodyDecoder::new(head.framing);
                    let mut rest = rest;
                    let mut before = rest.len() + 1;
                    while let Ok(Decoded::Data(_) | Decoded::Trailers(_)) = decoder.decode(&mut rest) {
                        prop_assert!(rest.len() < before || decoder.is_done(), "the decoder must make progress");
                        before = rest.len();
                    }
                }
                Err(_) => {}
            }
        }
    }
}
