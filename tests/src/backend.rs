//! In-process HTTP backends on real loopback sockets, recording exactly what reached them.
//!
//! Tests assert at the backend: which headers arrived, whether a body arrived intact, how many requests each
//! instance saw. The reply is programmable per request.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{HeaderMap, Request, Response, Version};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

/// One request as the backend received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Request target as sent (origin form).
    pub uri: String,
    /// HTTP version.
    pub version: Version,
    /// Headers as received.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// The peer address (the router's side of the connection).
    pub peer: SocketAddr,
}

impl Recorded {
    /// A header value as text, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// Every value of a header, as text.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect()
    }
}

/// What the backend answers.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body; sent with Content-Length unless `chunks` is set.
    pub body: Bytes,
    /// Send these chunks with chunked encoding instead of `body`.
    pub chunks: Option<Vec<Bytes>>,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Reply {
    /// 200 with `body`.
    pub fn ok(body: impl Into<Bytes>) -> Self {
        Self { status: 200, headers: Vec::new(), body: body.into(), chunks: None, delay: Duration::ZERO }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the status.
    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Delays the answer.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Streams the body in these chunks (chunked transfer encoding).
    pub fn chunked(mut self, chunks: Vec<Bytes>) -> Self {
        self.chunks = Some(chunks);
        self
    }
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;
type ReplyBody = http_body_util::Either<Full<Bytes>, StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>>;

/// A running backend.
pub struct TestBackend {
    addr: SocketAddr,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl TestBackend {
    /// A backend answering 200 with `name` as the body.
    pub async fn start(name: &str) -> Self {
        let body = Bytes::copy_from_slice(name.as_bytes());
        Self::start_with(move |_| Reply::ok(body.clone())).await
    }

    /// A backend answering 200 with the request body echoed back.
    pub async fn echo() -> Self {
        Self::start_with(|request| Reply::ok(request.body.clone())).await
    }

    /// A backend answering with `handler`.
    pub async fn start_with(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a backend port");
        Self::serve(listener, Arc::new(handler))
    }

    /// A backend on a specific loopback port (to revive a killed one at the same address).
    pub async fn start_on(port: u16, handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind the requested backend port");
        Self::serve(listener, Arc::new(handler))
    }

    fn serve(listener: TcpListener, handler: Handler) -> Self {
        let addr = listener.local_addr().expect("backend has an address");
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let accept_recorded = Arc::clone(&recorded);
        let accept_tasks = Arc::clone(&tasks);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else { continue };
                let handler = Arc::clone(&handler);
                let recorded = Arc::clone(&accept_recorded);
                let connection = tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let handler = Arc::clone(&handler);
                        let recorded = Arc::clone(&recorded);
                        async move { Ok::<_, Infallible>(answer(request, peer, &handler, &recorded).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
                accept_tasks.lock().expect("task list lock").push(connection.abort_handle());
            }
        });
        tasks.lock().expect("task list lock").push(accept.abort_handle());
        Self { addr, recorded, tasks }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded.lock().expect("recorded lock").clone()
    }

    /// How many requests were received.
    pub fn count(&self) -> usize {
        self.recorded.lock().expect("recorded lock").len()
    }

    /// Closes the listener and every open connection, as a crashed process would.
    pub fn kill(&self) {
        for task in self.tasks.lock().expect("task list lock").drain(..) {
            task.abort();
        }
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn answer(request: Request<Incoming>, peer: SocketAddr, handler: &Handler, recorded: &Mutex<Vec<Recorded>>) -> Response<ReplyBody> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let record = Recorded {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        version: parts.version,
        headers: parts.headers,
        body,
        peer,
    };
    let reply = handler(&record);
    recorded.lock().expect("recorded lock").push(record);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let body = match reply.chunks {
        Some(chunks) => {
            let frames: Vec<Result<Frame<Bytes>, Infallible>> = chunks.into_iter().map(|c| Ok(Frame::data(c))).collect();
            http_body_util::Either::Right(StreamBody::new(futures_util::stream::iter(frames)))
        }
        None => http_body_util::Either::Left(Full::new(reply.body)),
    };
    let mut response = Response::new(body);
    *response.status_mut() = hyper::StatusCode::from_u16(reply.status).expect("test replies use valid statuses");
    for (name, value) in reply.headers {
        response.headers_mut().append(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
            hyper::header::HeaderValue::from_str(&value).expect("valid header value"),
        );
    }
    response
}

/// A WebSocket server that echoes every message back.
pub async fn websocket_echo() -> (SocketAddr, AbortHandle) {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a websocket port");
    let addr = listener.local_addr().expect("websocket listener has an address");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_close() {
                        break;
                    }
                    if socket.send(message).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, task.abort_handle())
}
