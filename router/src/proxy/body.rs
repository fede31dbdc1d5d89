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
use crate::proxy::upstream::{self, Pooled};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Access-log fields (left default when no access log is written).
    pub entry: Entry,
    /// Status sent; [`CLIENT_CLOSED`] until a response exists.
    pub status: u16,
    started: Instant,
    backend_time: Duration,
    bytes_in: Option<Arc<AtomicU64>>,
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
            entry: Entry::default(),
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

    /// Shares the counter the request body adds to.
    pub fn count_request_body(&mut self) -> Arc<AtomicU64> {
        Arc::clone(self.bytes_in.get_or_insert_with(Arc::default))
    }

    /// Records the backend that answered (none for a route service), and the connection to return when the
    /// response is read.
    pub fn served_by(&mut self, in_flight: Option<InFlight>, upstream: Option<Pooled>, backend_time: Duration) {
        self.entry.backend = in_flight.as_ref().map(|f| Arc::clone(f.endpoint()));
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
        ACCESS_LOG.with(|cell| {
            let Ok(log) = cell.try_borrow() else { return };
            let Some(log) = log.as_ref() else { return };
            let response_time = self.started.elapsed();
            let totals = Totals {
                status: self.status,
                bytes_in: self.bytes_in.as_ref().map_or(0, |b| b.load(Ordering::Relaxed)),
                bytes_out: self.bytes_out,
                response_time: response_time.as_secs_f64(),
                router_time: response_time.saturating_sub(self.backend_time).as_secs_f64(),
            };
            log.record(&self.entry, &totals);
        });
    }
}

/// The body sent to a backend.
#[derive(Debug)]
pub enum RequestBody {
    /// No body.
    Empty,
    /// The client's body, streamed through and counted.
    Client(Incoming, Arc<AtomicU64>),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Client(body, counted) => {
                let frame = ready!(Pin::new(body).poll_frame(cx));
                if let Some(data) = frame.as_ref().and_then(|f| f.as_ref().ok()).and_then(Frame::data_ref) {
                    counted.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Client(body, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Client(body, _) => body.size_hint(),
        }
    }
}

#[derive(Debug)]
enum Content {
    Upstream(Incoming),
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
    pub fn upstream(body: Incoming, mut exchange: Exchange) -> Self {
        if body.is_end_stream() {
            // Nothing to read (HEAD, 204, 304): the backend connection is free already.
            exchange.finish_upstream(true);
        }
        Self { content: Content::Upstream(body), exchange: Some(exchange) }
    }

    fn count(&mut self, frame: &Frame<Bytes>) {
        if let (Some(exchange), Some(data)) = (self.exchange.as_mut(), frame.data_ref()) {
            exchange.bytes_out += data.len() as u64;
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.content {
            Content::Full(bytes) => bytes.take().map(|b| Ok(Frame::data(b))),
            Content::Upstream(body) => ready!(Pin::new(body).poll_frame(cx)),
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
            Content::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.content {
            Content::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Content::Upstream(body) => body.size_hint(),
        }
    }
}
