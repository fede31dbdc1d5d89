//! Connections to backends: dialling (plain or TLS, HTTP/1.1 or HTTP/2) and per-worker reuse.
//!
//! Each worker runs its own single-threaded runtime, so its connections live in a plain thread-local map with no
//! lock and no atomic. Connections are keyed by [`UpstreamKey`] (address, TLS name, protocol), never by address
//! alone, so a connection verified for one certificate name is never handed to an endpoint that expects another.
//!
//! - HTTP/1.1 connections carry one request at a time: a request checks one out, and its response body checks it
//!   back in once read to the end. Idle ones are reused most-recent first and swept on the worker tick.
//! - An HTTP/2 connection multiplexes, so the worker keeps one per key and every request shares it.
//! - Plain HTTP/1.1 connections the request's own task drives (`direct.rs`) are pooled apart from hyper's: a
//!   request takes a connection of the kind its path needs.

use crate::endpoint::UpstreamKey;
use crate::proxy::body::RequestBody;
use crate::proxy::direct::DirectConn;
use crate::tls::{BackendTls, TlsFailure};
use arc_swap::ArcSwap;
use futures_util::future::Either;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Most idle HTTP/1.1 connections kept per backend per worker.
const MAX_IDLE_PER_TARGET: usize = 64;
/// Idle connections older than this are closed (backends commonly close at 60s or more).
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);

enum Sender {
    Http1(http1::SendRequest<RequestBody>),
    Http2(http2::SendRequest<RequestBody>),
}

/// A connection checked out for one request.
pub struct Pooled {
    key: UpstreamKey,
    sender: Sender,
}

impl fmt::Debug for Pooled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pooled").field("key", &self.key).finish_non_exhaustive()
    }
}

/// The origin-form target (`/path?query`) of a request whose target is absolute.
pub fn origin_form(uri: &Uri) -> Uri {
    let target = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    target.parse().unwrap_or_else(|_| Uri::from_static("/"))
}

/// Gives a request the absolute target HTTP/2 wants (`:scheme` and `:authority`), from its Host header.
fn make_absolute(request: &mut Request<RequestBody>, tls: bool) {
    if request.uri().scheme().is_some() {
        return;
    }
    let Some(authority) = request.headers().get(HOST).and_then(|h| Authority::try_from(h.as_bytes()).ok()) else { return };
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

impl Pooled {
    /// Waits until the connection can take a request; an error means it is closed.
    pub fn ready(&mut self) -> impl Future<Output = Result<(), hyper::Error>> + '_ {
        match &mut self.sender {
            Sender::Http1(sender) => Either::Left(sender.ready()),
            Sender::Http2(sender) => Either::Right(sender.ready()),
        }
    }

    /// Whether the connection speaks HTTP/2.
    pub fn is_http2(&self) -> bool {
        matches!(self.sender, Sender::Http2(_))
    }

    /// Sends a request. If it could not be written at all, the error gives it back.
    ///
    /// Not an `async fn`: the returned future is hyper's own (the HTTP/2 one boxed), so the request is not held
    /// twice in every request's state, which would be copied around with it.
    pub fn send(&mut self, mut request: Request<RequestBody>) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<RequestBody>>>> {
        match &mut self.sender {
            Sender::Http1(sender) => {
                // A request that was offered to an HTTP/2 endpoint first carries an absolute target.
                if request.uri().scheme().is_some() {
                    *request.uri_mut() = origin_form(request.uri());
                }
                Either::Left(sender.try_send_request(request))
            }
            Sender::Http2(sender) => {
                make_absolute(&mut request, self.key.tls_name.is_some());
                Either::Right(Box::pin(sender.try_send_request(request)))
            }
        }
    }

    fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::Http1(sender) => sender.is_closed(),
            Sender::Http2(sender) => sender.is_closed(),
        }
    }
}

struct Idle<C> {
    connection: C,
    since: Instant,
}

#[derive(Default)]
struct Connections {
    idle: HashMap<UpstreamKey, Vec<Idle<http1::SendRequest<RequestBody>>>, foldhash::fast::RandomState>,
    direct: HashMap<UpstreamKey, Vec<Idle<DirectConn>>, foldhash::fast::RandomState>,
    shared: HashMap<UpstreamKey, http2::SendRequest<RequestBody>, foldhash::fast::RandomState>,
}

thread_local! {
    static CONNECTIONS: RefCell<Connections> = RefCell::new(Connections::default());
}

/// Takes an open connection for `key`, if this worker has one.
pub fn check_out(key: &UpstreamKey) -> Option<Pooled> {
    CONNECTIONS.with(|cell| {
        let mut connections = cell.try_borrow_mut().ok()?;
        if key.http2 {
            let shared = connections.shared.get(key)?;
            if shared.is_closed() {
                connections.shared.remove(key);
                return None;
            }
            return Some(Pooled { key: key.clone(), sender: Sender::Http2(shared.clone()) });
        }
        let idle = connections.idle.get_mut(key)?;
        while let Some(candidate) = idle.pop() {
            if !candidate.connection.is_closed() {
                return Some(Pooled { key: key.clone(), sender: Sender::Http1(candidate.connection) });
            }
        }
        None
    })
}

/// Takes an open plain connection for `key`, if this worker has one.
pub fn check_out_direct(key: &UpstreamKey) -> Option<DirectConn> {
    CONNECTIONS.with(|cell| {
        let mut connections = cell.try_borrow_mut().ok()?;
        let idle = connections.direct.get_mut(key)?;
        std::iter::from_fn(|| idle.pop()).map(|idle| idle.connection).find(DirectConn::is_open)
    })
}

/// Returns a plain connection whose last response was read to the end.
pub fn check_in_direct(connection: DirectConn) {
    CONNECTIONS.with(|cell| {
        if let Ok(mut connections) = cell.try_borrow_mut() {
            let idle = match connections.direct.get_mut(connection.key()) {
                Some(idle) => idle,
                None => connections.direct.entry(connection.key().clone()).or_default(),
            };
            if idle.len() < MAX_IDLE_PER_TARGET {
                idle.push(Idle { connection, since: Instant::now() });
            }
        }
    });
}

/// Returns a connection whose last response was read to the end.
pub fn check_in(pooled: Pooled) {
    if pooled.is_closed() {
        return;
    }
    let Sender::Http1(sender) = pooled.sender else {
        // HTTP/2 connections stay in the shared map while they are open.
        return;
    };
    CONNECTIONS.with(|cell| {
        if let Ok(mut connections) = cell.try_borrow_mut() {
            let idle = connections.idle.entry(pooled.key).or_default();
            if idle.len() < MAX_IDLE_PER_TARGET {
                idle.push(Idle { connection: sender, since: Instant::now() });
            }
        }
    });
}

fn share(key: &UpstreamKey, sender: &http2::SendRequest<RequestBody>) {
    CONNECTIONS.with(|cell| {
        if let Ok(mut connections) = cell.try_borrow_mut() {
            connections.shared.insert(key.clone(), sender.clone());
        }
    });
}

/// Closes connections idle too long or closed by the backend; called on the worker tick.
pub fn sweep() {
    CONNECTIONS.with(|cell| {
        if let Ok(mut connections) = cell.try_borrow_mut() {
            let now = Instant::now();
            connections.idle.retain(|_, idle| {
                idle.retain(|c| !c.connection.is_closed() && now.duration_since(c.since) < IDLE_TIMEOUT);
                !idle.is_empty()
            });
            connections.direct.retain(|_, idle| {
                idle.retain(|c| c.connection.is_open() && now.duration_since(c.since) < IDLE_TIMEOUT);
                !idle.is_empty()
            });
            connections.shared.retain(|_, sender| !sender.is_closed());
        }
    });
}

/// Why a dial failed. Nothing was sent, so the request may always go to another endpoint.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// TCP connect failed.
    #[error("dial {target}: {source}")]
    Connect {
        /// Where.
        target: String,
        /// Why.
        source: std::io::Error,
    },
    /// TCP connect took longer than `endpoint_dial_timeout`.
    #[error("dial {target}: timed out")]
    Timeout {
        /// Where.
        target: String,
    },
    /// The TLS handshake failed.
    #[error("dial {target}: {failure}")]
    Tls {
        /// Where.
        target: String,
        /// How.
        failure: TlsFailure,
    },
    /// The HTTP handshake on the new connection failed.
    #[error("dial {target}: {source}")]
    Handshake {
        /// Where.
        target: String,
        /// Why.
        source: hyper::Error,
    },
}

/// Opens backend connections: `endpoint_dial_timeout` for TCP and again for TLS, with the backend TLS settings
/// current at the time of the dial.
#[derive(Clone)]
pub struct Dialer {
    /// Longest wait for the TCP connection, and then for the TLS handshake.
    pub timeout: Duration,
    /// Trust and client certificate for TLS backends (swapped on reload).
    pub tls: Arc<ArcSwap<BackendTls>>,
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dialer").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Dialer {
    /// Opens a new connection for `key`. `upgrades` keeps an HTTP/1.1 connection usable for a protocol switch
    /// (callers pass an HTTP/1.1 key for those).
    pub async fn connect(&self, key: &UpstreamKey, upgrades: bool) -> Result<Pooled, DialError> {
        let stream = self.open(key).await?;
        let Some(name) = &key.tls_name else {
            return handshake(TokioIo::new(stream), key, upgrades).await;
        };
        let target = &key.target;
        let tls = self.tls.load_full();
        let secured = match tokio::time::timeout(self.timeout, tls.handshake(stream, name, key.http2)).await {
            Ok(Ok(secured)) => secured,
            Ok(Err(failure)) => return Err(DialError::Tls { target: target.to_string(), failure }),
            Err(_) => return Err(DialError::Tls { target: target.to_string(), failure: TlsFailure::Handshake("timed out".to_owned()) }),
        };
        handshake(TokioIo::new(secured), key, upgrades).await
    }

    /// Opens a new plain connection for `key`, for the request's own task to drive.
    pub async fn connect_direct(&self, key: &UpstreamKey) -> Result<DirectConn, DialError> {
        Ok(DirectConn::new(key.clone(), self.open(key).await?))
    }

    /// Opens the TCP connection for `key`.
    async fn open(&self, key: &UpstreamKey) -> Result<TcpStream, DialError> {
        let target = &key.target;
        let connecting = async {
            match target {
                crate::endpoint::DialTarget::Addr(ip, port) => TcpStream::connect((*ip, *port)).await,
                crate::endpoint::DialTarget::Name(name, port) => TcpStream::connect((name.as_ref(), *port)).await,
            }
        };
        let stream = match tokio::time::timeout(self.timeout, connecting).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(DialError::Connect { target: target.to_string(), source }),
            Err(_) => return Err(DialError::Timeout { target: target.to_string() }),
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// Starts HTTP on a connected (and possibly secured) stream, and runs the connection on this worker.
async fn handshake<T>(io: T, key: &UpstreamKey, upgrades: bool) -> Result<Pooled, DialError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let failed = |source| DialError::Handshake { target: key.target.to_string(), source };
    if key.http2 {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new()).handshake(io).await.map_err(failed)?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "HTTP/2 backend connection ended with an error");
            }
        });
        share(key, &sender);
        return Ok(Pooled { key: key.clone(), sender: Sender::Http2(sender) });
    }
    let (sender, connection) = http1::Builder::new().handshake(io).await.map_err(failed)?;
    if upgrades {
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!(%err, "backend connection ended with an error");
            }
        });
    } else {
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "backend connection ended with an error");
            }
        });
    }
    Ok(Pooled { key: key.clone(), sender: Sender::Http1(sender) })
}
