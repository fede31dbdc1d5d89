//! Bodies flowing through the proxy, and the bookkeeping that must happen exactly once when a response ends.
//!
//! A response body carries the request's [`Exchange`]: the access-log entry, the in-flight count on the endpoint,
//! the backend connection to hand back to the pool, and the connection's busy mark. When the body ends (or is
//! dropped because the client went away) the exchange is finished: the log line is written, metrics counted, and
//! the backend connection returned only if its response was read to the end.

use crate::access_log::{self, Entry, Totals};
use crate::endpoint::InFlight;
use crate::metrics::LocalMetrics;
use crate::proxy::activity::BusyGuard;
use crate::proxy::direct::{DirectBody, DirectError};
use crate::proxy::upstream::{self, Pooled};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

thread_local! {
    static ACCESS_LOG: RefCell<Option<access_log::AccessLog>> = const { RefCell::new(None) };
    static DISCONNECTS: RefCell<Option<prometheus::IntCounter>> = const { RefCell::new(None) };
}

/// Installs this worker thread's access log and the client-disconnect counter.
pub fn install(log: Option<access_log::AccessLog>, disconnects: prometheus::IntCounter) {
    ACCESS_LOG.with(|cell| *cell.borrow_mut() = log);
    DISCONNECTS.with(|cell| *cell.borrow_mut() = Some(disconnects));
}

/// Hands this thread's buffered access-log lines to the writer.
pub fn flush_access_log() {
    ACCESS_LOG.with(|cell| {
        if let Ok(log) = cell.try_borrow()
            && let Some(log) = log.as_ref() {
                log.flush_thread();
            }
    });
}

/// Whether this thread writes an access log (so the handler knows whether to gather the entry).
pub fn access_log_enabled() -> bool {
    ACCESS_LOG.with(|cell| cell.try_borrow().is_ok_and(|log| log.is_some()))
}

/// Status logged for a request whose client went away before the response.
pub const CLIENT_CLOSED: u16 = 499;

/// One request's life, finished when dropped.
#[derive(Debug)]
pub struct Exchange {
    /// Access-log fields, when an access log is written. Boxed: the exchange travels inside the response through
    /// every layer that returns it, and the fields are most of its size.
    pub entry: Option<Box<Entry>>,
    /// Status sent; [`CLIENT_CLOSED`] until a response exists.
    pub status: u16,
    started: Instant,
    backend_time: Duration,
    bytes_in: Option<Arc<BodyTally>>,
    bytes_out: u64,
    in_flight: Option<InFlight>,
    upstream: Option<Pooled>,
    upstream_complete: bool,
    _busy: BusyGuard,
}

impl Exchange {
    /// Starts an exchange for a request that arrived at `started`.
    pub fn begin(busy: BusyGuard, started: Instant) -> Self {
        Self {
            entry: None,
            status: CLIENT_CLOSED,
            started,
            backend_time: Duration::ZERO,
            bytes_in: None,
            bytes_out: 0,
            in_flight: None,
            upstream: None,
            upstream_complete: false,
            _busy: busy,
        }
    }

    /// Shares the tally the request body keeps.
    pub fn count_request_body(&mut self) -> Arc<BodyTally> {
        Arc::clone(self.bytes_in.get_or_insert_with(Arc::default))
    }

    /// Records the backend that answered (none for a route service), and the connection to return when the
    /// response is read.
    pub fn served_by(&mut self, in_flight: Option<InFlight>, upstream: Option<Pooled>, backend_time: Duration) {
        if let Some(entry) = self.entry.as_deref_mut() {
            entry.backend = in_flight.as_ref().map(|f| Arc::clone(f.endpoint()));
        }
        self.in_flight = in_flight;
        self.upstream = upstream;
        self.backend_time = backend_time;
    }

    fn finish_upstream(&mut self, complete: bool) {
        self.upstream_complete = complete;
        if !complete {
            self.upstream = None;
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if self.upstream_complete
            && let Some(pooled) = self.upstream.take() {
                upstream::check_in(pooled);
            }
        if self.status == CLIENT_CLOSED {
            DISCONNECTS.with(|cell| {
                if let Ok(counter) = cell.try_borrow()
                    && let Some(counter) = counter.as_ref() {
                        counter.inc();
                    }
            });
        }
        LocalMetrics::request_done(self.status);
        let Some(entry) = self.entry.as_deref() else { return };
        ACCESS_LOG.with(|cell| {
            let Ok(log) = cell.try_borrow() else { return };
            let Some(log) = log.as_ref() else { return };
            let response_time = self.started.elapsed();
            let totals = Totals {
                status: self.status,
                bytes_in: self.bytes_in.as_ref().map_or(0, |b| b.bytes.load(Ordering::Relaxed)),
                bytes_out: self.bytes_out,
                response_time,
                router_time: response_time.saturating_sub(self.backend_time),
            };
            log.record(entry, &totals);
        });
    }
}

/// How reading a client's request body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// The client framed it badly (a bad chunk size, chunk extensions over hyper's limit, ...).
    Malformed,
    /// The client went away (or reset its stream) before the body's end.
    Gone,
}

impl BodyFault {
    const NONE: u8 = 0;

    fn code(self) -> u8 {
        match self {
            Self::Malformed => 1,
            Self::Gone => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Malformed),
            2 => Some(Self::Gone),
            _ => None,
        }
    }

    /// Reads a body error. hyper reports the bytes it could not decode as I/O errors of kind `InvalidData` or
    /// `InvalidInput` underneath its own error; an early end, a reset or anything else means the client is gone.
    pub fn of(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut cause = Some(error);
        while let Some(error) = cause {
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                return match io.kind() {
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => Self::Malformed,
                    _ => Self::Gone,
                };
            }
            cause = error.source();
        }
        Self::Gone
    }
}

/// What a request body tells its exchange: how many bytes came from the client, and whether reading them failed.
/// A failed client body fails the backend request too, and the proxy must not blame the backend for that.
#[derive(Debug, Default)]
pub struct BodyTally {
    bytes: AtomicU64,
    fault: AtomicU8,
}

impl BodyTally {
    /// Why the client's body failed, if it did.
    pub fn fault(&self) -> Option<BodyFault> {
        BodyFault::from_code(self.fault.load(Ordering::Relaxed))
    }

    fn fail(&self, fault: BodyFault) {
        let _ = self.fault.compare_exchange(BodyFault::NONE, fault.code(), Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// Largest client body read whole before the request goes to a backend. Below the smallest initial TCP send
/// buffer, so head and body leave in one write: the backend cannot answer early, before the router has finished
/// sending, and have its answer lost to a reset of the rest.
pub const BUFFERED_BODY_LIMIT: u64 = 8 * 1024;

/// The body sent to a backend.
#[derive(Debug)]
pub enum RequestBody {
    /// No body.
    Empty,
    /// The client's body, streamed through and tallied.
    Client(Incoming, Arc<BodyTally>),
    /// A small client body, already read whole (and tallied); `None` once sent.
    Buffered(Option<Bytes>),
}

impl RequestBody {
    /// The client body's tally, if a client body is still to be read.
    pub fn tally(&self) -> Option<Arc<BodyTally>> {
        match self {
            Self::Empty | Self::Buffered(_) => None,
            Self::Client(_, tally) => Some(Arc::clone(tally)),
        }
    }

    /// The bytes of a body read whole: empty for no body. `None` for a body still streaming from the client.
    pub fn whole(&self) -> Option<&[u8]> {
        match self {
            Self::Empty | Self::Buffered(None) => Some(&[]),
            Self::Buffered(Some(bytes)) => Some(bytes),
            Self::Client(..) => None,
        }
    }

    /// Reads a client body of a known length up to [`BUFFERED_BODY_LIMIT`] whole, so it can go to a backend with
    /// its head in one write; any other body is returned as it is. HTTP/1 only: there a body with a length has no
    /// trailers to lose.
    pub async fn read_small(self, http1: bool) -> Result<Self, BodyFault> {
        let Self::Client(mut incoming, tally) = self else { return Ok(self) };
        let length = match incoming.size_hint().exact() {
            Some(length) if http1 && length <= BUFFERED_BODY_LIMIT => length,
            _ => return Ok(Self::Client(incoming, tally)),
        };
        // A small body usually arrives as one frame, which is kept as it is; only a body in pieces is copied.
        let mut first: Option<Bytes> = None;
        let mut joined: Option<bytes::BytesMut> = None;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut incoming).poll_frame(cx)).await {
            let frame = frame.map_err(|error| BodyFault::of(&error))?;
            let Ok(data) = frame.into_data() else { continue };
            tally.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            match (&mut joined, first.take()) {
                (Some(joined), _) => joined.extend_from_slice(&data),
                (None, None) => first = Some(data),
                (None, Some(earlier)) => {
                    let mut pieces = bytes::BytesMut::with_capacity(usize::try_from(length).unwrap_or_default());
                    pieces.extend_from_slice(&earlier);
                    pieces.extend_from_slice(&data);
                    joined = Some(pieces);
                }
            }
        }
        Ok(Self::Buffered(Some(joined.map_or_else(|| first.unwrap_or_default(), bytes::BytesMut::freeze))))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Buffered(whole) => Poll::Ready(whole.take().map(|bytes| Ok(Frame::data(bytes)))),
            Self::Client(body, tally) => {
                let frame = ready!(Pin::new(body).poll_frame(cx));
                match &frame {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            tally.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                        }
                    }
                    Some(Err(error)) => tally.fail(BodyFault::of(error)),
                    None => {}
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty | Self::Buffered(None) => true,
            Self::Buffered(Some(_)) => false,
            Self::Client(body, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty | Self::Buffered(None) => SizeHint::with_exact(0),
            Self::Buffered(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Self::Client(body, _) => body.size_hint(),
        }
    }
}

/// A backend's response body, from whichever client read its head.
#[derive(Debug)]
pub enum UpstreamBody {
    /// Read by hyper's client connection.
    Hyper(Incoming),
    /// Read by the request's own task from a plain connection.
    Direct(DirectBody),
}

/// Why a backend's body could not be relayed to the end.
#[derive(Debug, thiserror::Error)]
pub enum ResponseBodyError {
    /// From hyper's client connection.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// From a plain connection.
    #[error(transparent)]
    Direct(#[from] DirectError),
}

#[derive(Debug)]
enum Content {
    Hyper(Incoming),
    Direct(DirectBody),
    Full(Option<Bytes>),
}

/// The body sent to the client.
#[derive(Debug)]
pub struct ResponseBody {
    content: Content,
    exchange: Option<Exchange>,
}

impl ResponseBody {
    /// A complete body the router wrote itself.
    pub fn full(bytes: impl Into<Bytes>, exchange: Option<Exchange>) -> Self {
        let bytes = bytes.into();
        Self { content: Content::Full((!bytes.is_empty()).then_some(bytes)), exchange }
    }

    /// The backend's body, streamed through.
    pub fn upstream(body: UpstreamBody, mut exchange: Exchange) -> Self {
        let content = match body {
            UpstreamBody::Hyper(body) => Content::Hyper(body),
            UpstreamBody::Direct(body) => Content::Direct(body),
        };
        let mut body = Self { content, exchange: None };
        if body.is_end_stream() {
            // Nothing to read (HEAD, 204, 304): the backend connection is free already.
            exchange.finish_upstream(true);
        }
        body.exchange = Some(exchange);
        body
    }

    fn count(&mut self, frame: &Frame<Bytes>) {
        if let (Some(exchange), Some(data)) = (self.exchange.as_mut(), frame.data_ref()) {
            exchange.bytes_out += data.len() as u64;
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        let this = self.get_mut();
        let polled = match &mut this.content {
            Content::Full(bytes) => bytes.take().map(|b| Ok(Frame::data(b))),
            Content::Hyper(body) => ready!(Pin::new(body).poll_frame(cx)).map(|frame| frame.map_err(ResponseBodyError::from)),
            Content::Direct(body) => ready!(Pin::new(body).poll_frame(cx)).map(|frame| frame.map_err(ResponseBodyError::from)),
        };
        match &polled {
            Some(Ok(frame)) => {
                this.count(frame);
                // hyper stops polling once a body reports its end, so a body that is complete after this frame
                // will never be polled to `None`: finish here.
                if this.is_end_stream()
                    && let Some(mut exchange) = this.exchange.take() {
                        exchange.finish_upstream(true);
                    }
            }
            Some(Err(_)) => {
                if let Some(exchange) = this.exchange.as_mut() {
                    exchange.finish_upstream(false);
                }
            }
            None => {
                // Finish now rather than at drop, so the backend connection is reusable at once.
                if let Some(mut exchange) = this.exchange.take() {
                    exchange.finish_upstream(true);
                }
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        match &self.content {
            Content::Full(bytes) => bytes.is_none(),
            Content::Hyper(body) => body.is_end_stream(),
            Content::Direct(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.content {
            Content::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Content::Hyper(body) => body.size_hint(),
            Content::Direct(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that wraps another, as hyper's own error wraps the I/O error its decoder raised.
    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("error reading a body from connection")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn wrapped(kind: std::io::ErrorKind) -> Wrapped {
        Wrapped(std::io::Error::new(kind, "from the decoder"))
    }

    #[test]
    fn undecodable_bodies_are_the_clients_fault_and_early_ends_mean_it_left() {
        assert_eq!(BodyFault::of(&wrapped(std::io::ErrorKind::InvalidData)), BodyFault::Malformed);
        assert_eq!(BodyFault::of(&wrapped(std::io::ErrorKind::InvalidInput)), BodyFault::Malformed);
        assert_eq!(BodyFault::of(&wrapped(std::io::ErrorKind::UnexpectedEof)), BodyFault::Gone);
        assert_eq!(BodyFault::of(&wrapped(std::io::ErrorKind::ConnectionReset)), BodyFault::Gone);
        let no_io: Box<dyn std::error::Error> = "stream reset".into();
        assert_eq!(BodyFault::of(no_io.as_ref()), BodyFault::Gone);
    }

    #[test]
    fn the_first_fault_is_the_one_kept() {
        let tally = BodyTally::default();
        assert_eq!(tally.fault(), None);
        tally.fail(BodyFault::Malformed);
        tally.fail(BodyFault::Gone);
        assert_eq!(tally.fault(), Some(BodyFault::Malformed));
    }
}
