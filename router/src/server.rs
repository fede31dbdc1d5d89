//! The proxy's threads: one single-threaded runtime per worker, each with its own listening sockets
//! (`SO_REUSEPORT`, so the kernel spreads connections), its own [`Proxy`] and its own backend connection pool.
//!
//! Thread-per-core keeps every per-request structure local to one core; the workers share only the route table,
//! endpoint counters and the TLS settings (read with one atomic load per TLS connection). The control thread (NATS,
//! registry, status, signals) tells workers when to stop accepting and when to stop for good.
//!
//! A worker serves plain HTTP/1.1 on `port` and, with `enable_ssl`, TLS on `ssl_port`, where ALPN picks HTTP/2 or
//! HTTP/1.1 per connection. Both feed the same request handler; the plain path pays nothing for TLS existing.

use crate::access_log::AccessLog;
use crate::metrics::{LocalMetrics, RouterMetrics};
use crate::proxy::activity::{Activity, Timeouts, TimedIo};
use crate::proxy::xfcc::ClientCert;
use crate::proxy::body::ResponseBody;
use crate::proxy::{ConnInfo, Proxy, body, upstream};
use crate::tls::frontend::ALPN_H2;
use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use socket2::{Domain, Protocol, Socket, Type};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The TLS listener of a worker and the settings it hands each connection.
pub struct TlsListener {
    /// The listening socket on `ssl_port`.
    pub listener: std::net::TcpListener,
    /// Current server settings (swapped on reload).
    pub config: Arc<ArcSwap<ServerConfig>>,
}

/// Everything a worker needs, built by the control thread.
pub struct WorkerSetup {
    /// The request handler (one per worker).
    pub proxy: Arc<Proxy>,
    /// The plain-HTTP listening socket, unless `disable_http`.
    pub listener: Option<std::net::TcpListener>,
    /// The TLS listening socket, with `enable_ssl`.
    pub tls: Option<TlsListener>,
    /// Client connection timeouts.
    pub timeouts: Timeouts,
    /// Largest request head hyper will buffer (kept above `max_header_bytes` so the router answers 431 itself).
    pub max_buf_size: usize,
    /// Shared metrics.
    pub metrics: RouterMetrics,
    /// Access log, if enabled.
    pub access_log: Option<AccessLog>,
}

/// How the control thread steers the workers.
#[derive(Clone, Default)]
pub struct WorkerControl {
    /// A drain has begun: HTTP/1 answers close their connections (see [`Proxy::serve`]).
    pub closing: Arc<AtomicBool>,
    /// Stop accepting and let open connections finish (graceful drain).
    pub drain: CancellationToken,
    /// Stop now: abandon whatever is still open.
    pub stop: CancellationToken,
}

/// Binds a listening socket that several workers can share the port of.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Runs one worker on the current thread until drained or stopped.
pub fn run_worker(setup: WorkerSetup, control: WorkerControl) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(worker(setup, control))
}

/// What every connection task of a worker shares (one reference count per connection).
struct Serving {
    proxy: Arc<Proxy>,
    timeouts: Timeouts,
    max_buf_size: usize,
    drain: CancellationToken,
    open: AtomicUsize,
    metrics: RouterMetrics,
}

/// Counts a connection open for as long as it lives.
struct OpenGuard(Arc<Serving>);

impl OpenGuard {
    fn new(serving: &Arc<Serving>) -> Self {
        serving.open.fetch_add(1, Ordering::Relaxed);
        serving.metrics.connections.inc();
        Self(Arc::clone(serving))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.metrics.connections.dec();
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a connection may still start a request once its worker stops accepting. Clients that connected
/// just before the listener closed have their first request in flight; closing their connection at once would
/// fail it. Busy connections close by themselves after their answer (`Connection: close` while draining).
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Accepts on `listener`, or never when there is none (so `select!` can treat both listeners alike).
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

async fn worker(setup: WorkerSetup, control: WorkerControl) -> std::io::Result<()> {
    LocalMetrics::install(&setup.metrics);
    body::install(setup.access_log.clone(), setup.metrics.client_disconnects.clone());
    let plain = setup.listener.map(TcpListener::from_std).transpose()?;
    let secure = match setup.tls {
        Some(tls) => Some((TcpListener::from_std(tls.listener)?, tls.config)),
        None => None,
    };
    let serving = Arc::new(Serving {
        proxy: setup.proxy,
        timeouts: setup.timeouts,
        max_buf_size: setup.max_buf_size,
        drain: control.drain.clone(),
        open: AtomicUsize::new(0),
        metrics: setup.metrics.clone(),
    });
    let ticker = tokio::spawn(tick(setup.access_log.is_some()));

    loop {
        let (accepted, tls) = tokio::select! {
            () = control.drain.cancelled() => break,
            () = control.stop.cancelled() => break,
            accepted = accept(plain.as_ref()) => (accepted, None),
            accepted = accept(secure.as_ref().map(|(listener, _)| listener)) => (accepted, secure.as_ref().map(|(_, config)| config.load_full())),
        };
        let (stream, client) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // Usually EMFILE: back off briefly instead of spinning.
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        spawn_connection(&serving, stream, client, tls);
    }
    // Connections the kernel completed before the listeners close are clients that already sent (or are sending)
    // a request: when draining, serve them rather than reset them.
    if !control.stop.is_cancelled() {
        let queues = plain.map(|listener| (listener, None)).into_iter();
        for (listener, tls) in queues.chain(secure.map(|(listener, config)| (listener, Some(config.load_full())))) {
            for (stream, client) in accept_backlog(listener) {
                spawn_connection(&serving, stream, client, tls.clone());
            }
        }
    }
    // Draining: open connections finish their requests; stop() ends the wait.
    while serving.open.load(Ordering::Relaxed) > 0 && !control.stop.is_cancelled() {
        tokio::select! {
            () = control.stop.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    ticker.abort();
    body::flush_access_log();
    LocalMetrics::flush();
    Ok(())
}

fn spawn_connection(serving: &Arc<Serving>, stream: TcpStream, client: SocketAddr, tls: Option<Arc<ServerConfig>>) {
    let guard = OpenGuard::new(serving);
    tokio::spawn(async move {
        let serving = &guard.0;
        let result = match tls {
            None => serve_plain(serving, stream, client).await,
            Some(config) => serve_tls(serving, stream, client, config).await,
        };
        if let Err(err) = result {
            tracing::debug!(%err, "client connection ended with an error");
        }
        drop(guard);
    });
}

/// Takes every connection waiting in a listener's queue, then closes the listener. Connections that arrive later
/// are refused by the kernel, which clients tell apart from a failed request.
fn accept_backlog(listener: TcpListener) -> Vec<(TcpStream, SocketAddr)> {
    let mut accepted = Vec::new();
    let Ok(listener) = listener.into_std() else { return accepted };
    while let Ok((stream, client)) = listener.accept() {
        match stream.set_nonblocking(true).and_then(|()| TcpStream::from_std(stream)) {
            Ok(stream) => accepted.push((stream, client)),
            Err(err) => tracing::debug!(%err, "could not take over a queued connection"),
        }
    }
    accepted
}

async fn serve_plain(serving: &Serving, stream: TcpStream, client: SocketAddr) -> Result<(), hyper::Error> {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::default());
    let io = TimedIo::new(stream, Arc::clone(&activity), serving.timeouts);
    serve_http1(serving, io, Arc::new(ConnInfo::new(client, "http", activity))).await
}

/// Runs the TLS handshake (inside the connection timeouts, so a stalled handshake is closed like a stalled
/// request head), then serves the protocol ALPN chose.
async fn serve_tls(serving: &Serving, stream: TcpStream, client: SocketAddr, config: Arc<ServerConfig>) -> Result<(), hyper::Error> {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::default());
    let io = TimedIo::new(stream, Arc::clone(&activity), serving.timeouts);
    let tls = match tokio_rustls::TlsAcceptor::from(config).accept(io).await {
        Ok(tls) => tls,
        Err(err) => {
            serving.metrics.tls_handshake_errors.inc();
            tracing::debug!(%client, %err, "client TLS handshake failed");
            return Ok(());
        }
    };
    let (_, session) = tls.get_ref();
    let http2 = session.alpn_protocol() == Some(ALPN_H2);
    let mut conn = ConnInfo::new(client, "https", Arc::clone(&activity));
    conn.client_cert = ClientCert::from_peer(session.peer_certificates());
    if http2 {
        activity.become_multiplexed();
        serve_http2(serving, tls, Arc::new(conn)).await
    } else {
        serve_http1(serving, tls, Arc::new(conn)).await
    }
}

/// The request handler of one connection, whichever protocol it speaks.
fn handler(
    serving: &Serving,
    conn: Arc<ConnInfo>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = hyper::Response<ResponseBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<hyper::Response<ResponseBody>, Infallible>> + Send + 'static,
> {
    let proxy = Arc::clone(&serving.proxy);
    hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let proxy = Arc::clone(&proxy);
        let conn = Arc::clone(&conn);
        async move { Ok::<_, Infallible>(proxy.serve(request, &conn).await) }
    })
}

async fn serve_http1<T>(serving: &Serving, io: T, conn: Arc<ConnInfo>) -> Result<(), hyper::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .max_buf_size(serving.max_buf_size)
        .serve_connection(TokioIo::new(io), handler(serving, conn))
        .with_upgrades();
    until_drained(connection, &serving.drain, |connection| connection.graceful_shutdown()).await
}

async fn serve_http2<T>(serving: &Serving, io: T, conn: Arc<ConnInfo>) -> Result<(), hyper::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_header_list_size(u32::try_from(serving.max_buf_size).unwrap_or(u32::MAX))
        .serve_connection(TokioIo::new(io), handler(serving, conn));
    until_drained(connection, &serving.drain, |connection| connection.graceful_shutdown()).await
}

/// Drives a connection to its end; when draining starts, gives it [`DRAIN_GRACE`] to start a request (or close
/// after its answer), then asks it to finish the requests in flight and close.
async fn until_drained<C, E>(connection: C, drain: &CancellationToken, shutdown: impl FnOnce(Pin<&mut C>)) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => return result,
        () = drain.cancelled() => {}
    }
    tokio::select! {
        result = connection.as_mut() => return result,
        () = tokio::time::sleep(DRAIN_GRACE) => {}
    }
    shutdown(connection.as_mut());
    connection.await
}

/// Periodic per-worker housekeeping: hand access-log lines to the writer, fold local metrics into the shared
/// ones, and close idle backend connections.
async fn tick(access_log: bool) {
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        interval.tick().await;
        ticks += 1;
        if access_log {
            body::flush_access_log();
        }
        if ticks.is_multiple_of(10) {
            LocalMetrics::flush();
        }
        if ticks.is_multiple_of(50) {
            upstream::sweep();
        }
    }
}
