//! Connections to backends: dialling, and a keep-alive pool per worker thread.
//!
//! Each worker runs its own single-threaded runtime, so its pool is a plain thread-local map with no lock and
//! no atomic: a request checks a connection out, and its response body checks it back in once the response has
//! been read to the end. Idle connections are reused most-recent first (the warmest) and swept on the worker tick
//! once idle too long.

use crate::endpoint::DialTarget;
use crate::proxy::body::RequestBody;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Most idle connections kept per backend per worker.
const MAX_IDLE_PER_TARGET: usize = 64;
/// Idle connections older than this are closed (backends commonly close at 60s or more).
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// A connection checked out for one request.
pub struct Pooled {
    target: DialTarget,
    sender: SendRequest<RequestBody>,
}

impl fmt::Debug for Pooled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pooled").field("target", &self.target).finish_non_exhaustive()
    }
}

impl Pooled {
    /// Wraps a connection to `target`.
    pub fn new(target: DialTarget, sender: SendRequest<RequestBody>) -> Self {
        Self { target, sender }
    }

    /// The request side of the connection.
    pub fn sender(&mut self) -> &mut SendRequest<RequestBody> {
        &mut self.sender
    }
}

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

#[derive(Default)]
struct IdlePool {
    by_target: HashMap<DialTarget, Vec<Idle>, foldhash::fast::RandomState>,
}

thread_local! {
    static IDLE: RefCell<IdlePool> = RefCell::new(IdlePool::default());
}

/// Takes an idle connection to `target`, if one is open.
pub fn check_out(target: &DialTarget) -> Option<Pooled> {
    IDLE.with(|cell| {
        let mut pool = cell.try_borrow_mut().ok()?;
        let idle = pool.by_target.get_mut(target)?;
        while let Some(candidate) = idle.pop() {
            if !candidate.sender.is_closed() {
                return Some(Pooled { target: target.clone(), sender: candidate.sender });
            }
        }
        None
    })
}

/// Returns a connection whose last response was read to the end.
pub fn check_in(pooled: Pooled) {
    if pooled.sender.is_closed() {
        return;
    }
    IDLE.with(|cell| {
        if let Ok(mut pool) = cell.try_borrow_mut() {
            let idle = pool.by_target.entry(pooled.target).or_default();
            if idle.len() < MAX_IDLE_PER_TARGET {
                idle.push(Idle { sender: pooled.sender, since: Instant::now() });
            }
        }
    });
}

/// Closes connections idle too long or closed by the backend; called on the worker tick.
pub fn sweep() {
    IDLE.with(|cell| {
        if let Ok(mut pool) = cell.try_borrow_mut() {
            let now = Instant::now();
            pool.by_target.retain(|_, idle| {
                idle.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < IDLE_TIMEOUT);
                !idle.is_empty()
            });
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
    /// The HTTP/1 handshake on the new connection failed.
    #[error("dial {target}: {source}")]
    Handshake {
        /// Where.
        target: String,
        /// Why.
        source: hyper::Error,
    },
}

fn describe(target: &DialTarget) -> String {
    match target {
        DialTarget::Addr(addr) => addr.to_string(),
        DialTarget::Name(name, port) => format!("{name}:{port}"),
    }
}

/// Opens a new connection to `target`. `upgrades` keeps the connection usable for a protocol switch.
pub async fn connect(target: &DialTarget, timeout: Duration, upgrades: bool) -> Result<Pooled, DialError> {
    let connecting = async {
        match target {
            DialTarget::Addr(addr) => TcpStream::connect(addr).await,
            DialTarget::Name(name, port) => TcpStream::connect((name.as_ref(), *port)).await,
        }
    };
    let stream = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(DialError::Connect { target: describe(target), source }),
        Err(_) => return Err(DialError::Timeout { target: describe(target) }),
    };
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| DialError::Handshake { target: describe(target), source })?;
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
    Ok(Pooled { target: target.clone(), sender })
}
