//! The proxy's threads: one single-threaded runtime per worker, each with its own listening socket
//! (`SO_REUSEPORT`, so the kernel spreads connections), its own [`Proxy`] and its own backend connection pool.
//!
//! Thread-per-core keeps every per-request structure local to one core; the workers share only the route table
//! and endpoint counters. The control thread (NATS, registry, status, signals) tells workers when to stop
//! accepting and when to stop for good.

use crate::access_log::AccessLog;
use crate::metrics::{LocalMetrics, RouterMetrics};
use crate::proxy::activity::{Timeouts, TimedIo};
use crate::proxy::{ConnInfo, Proxy, body, upstream};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use socket2::{Domain, Protocol, Socket, Type};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Everything a worker needs, built by the control thread.
pub struct WorkerSetup {
    /// The request handler (one per worker).
    pub proxy: Arc<Proxy>,
    /// Its listening socket.
    pub listener: std::net::TcpListener,
    /// Client connection timeouts.
    pub timeouts: Timeouts,
    /// Largest request head hyper will buffer (kept above `max_header_bytes` so the router answers 431 itself).
    pub max_buf_size: usize,
    /// Shared metrics.
    pub metrics: RouterMetrics,
    /// Access log, if enabled.
    pub access_log: Option<AccessLog>,
    /// `http` or `https`.
    pub scheme: &'static str,
}

/// How the control thread steers the workers.
#[derive(Clone, Default)]
pub struct WorkerControl {
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

async fn worker(setup: WorkerSetup, control: WorkerControl) -> std::io::Result<()> {
    LocalMetrics::install(&setup.metrics);
    body::install(setup.access_log.clone(), setup.metrics.client_disconnects.clone());
    let listener = TcpListener::from_std(setup.listener)?;
    let open = Arc::new(AtomicUsize::new(0));
    let ticker = tokio::spawn(tick(setup.access_log.is_some()));

    loop {
        let accepted = tokio::select! {
            () = control.drain.cancelled() => break,
            () = control.stop.cancelled() => break,
            accepted = listener.accept() => accepted,
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
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(ConnInfo::new(client, setup.scheme));
        let io = TimedIo::new(stream, Arc::clone(&conn.activity), setup.timeouts);
        let proxy = Arc::clone(&setup.proxy);
        let graceful = control.drain.clone();
        let open = Arc::clone(&open);
        let gauge = setup.metrics.connections.clone();
        let max_buf_size = setup.max_buf_size;
        open.fetch_add(1, Ordering::Relaxed);
        gauge.inc();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let proxy = Arc::clone(&proxy);
                let conn = Arc::clone(&conn);
                async move { Ok::<_, Infallible>(proxy.serve(request, &conn).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(None)
                .max_buf_size(max_buf_size)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = graceful.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = result {
                tracing::debug!(%err, "client connection ended with an error");
            }
            gauge.dec();
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    // Draining: open connections finish their requests; stop() ends the wait.
    while open.load(Ordering::Relaxed) > 0 && !control.stop.is_cancelled() {
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
