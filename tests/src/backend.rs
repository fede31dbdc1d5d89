//! In-process HTTP backends on real loopback sockets, recording exactly what reached them.
//!
//! Tests assert at the backend: which headers arrived, whether a body arrived intact, how many requests each
//! instance saw, and (from a log of the raw bytes read off each connection) exactly what the router put on the
//! wire, before hyper's parser normalises it. The reply is programmable per request. A backend speaks HTTP/1.1 by default, or HTTP/2 without
//! TLS (h2c), or TLS with ALPN choosing HTTP/2 or HTTP/1.1 ([`Transport`]).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{HeaderMap, Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
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
    /// The whole body (empty when it could not be read to its end).
    pub body: Bytes,
    /// Why the body could not be read to its end (the sender broke off or framed it badly), if it could not.
    pub body_error: Option<String>,
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
    /// Trailers sent after the body (as gRPC sends its status).
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    /// 200 with `body`.
    pub fn ok(body: impl Into<Bytes>) -> Self {
        Self { status: 200, headers: Vec::new(), body: body.into(), chunks: None, delay: Duration::ZERO, trailers: None }
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

    /// Sends a trailer after the body.
    pub fn trailer(mut self, name: &str, value: &str) -> Self {
        let trailers = self.trailers.get_or_insert_with(HeaderMap::new);
        trailers.append(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).expect("valid trailer name"),
            hyper::header::HeaderValue::from_str(value).expect("valid trailer value"),
        );
        self
    }
}

/// How a backend speaks to the router.
#[derive(Clone, Default)]
pub enum Transport {
    /// Plain HTTP/1.1.
    #[default]
    Http1,
    /// Plain HTTP/2 with prior knowledge (h2c).
    H2c,
    /// TLS; HTTP/2 when ALPN picks `h2`, else HTTP/1.1.
    Tls(Arc<rustls::ServerConfig>),
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;
type ReplyBody = http_body_util::Either<Full<Bytes>, StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>>;

/// Bytes a backend read from the network, in arrival order, with the connection they came on.
type WireLog = Arc<Mutex<Vec<(usize, Bytes)>>>;

/// A running backend.
pub struct TestBackend {
    addr: SocketAddr,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    wire: WireLog,
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
        Self::start_speaking(Transport::Http1, handler).await
    }

    /// A backend speaking `transport`, answering with `handler`.
    pub async fn start_speaking(transport: Transport, handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a backend port");
        Self::serve(listener, transport, Arc::new(handler))
    }

    /// A backend on a specific loopback port (to revive a killed one at the same address).
    pub async fn start_on(port: u16, handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind the requested backend port");
        Self::serve(listener, Transport::Http1, Arc::new(handler))
    }

    fn serve(listener: TcpListener, transport: Transport, handler: Handler) -> Self {
        let addr = listener.local_addr().expect("backend has an address");
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let wire: WireLog = Arc::new(Mutex::new(Vec::new()));
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let accept_recorded = Arc::clone(&recorded);
        let accept_wire = Arc::clone(&wire);
        let accept_tasks = Arc::clone(&tasks);
        let accept = tokio::spawn(async move {
            let mut connections = 0;
            loop {
                let Ok((stream, peer)) = listener.accept().await else { continue };
                connections += 1;
                let stream = WireTap { inner: stream, connection: connections, log: Arc::clone(&accept_wire) };
                let handler = Arc::clone(&handler);
                let recorded = Arc::clone(&accept_recorded);
                let transport = transport.clone();
                let connection = tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let handler = Arc::clone(&handler);
                        let recorded = Arc::clone(&recorded);
                        async move { Ok::<_, Infallible>(answer(request, peer, &handler, &recorded).await) }
                    });
                    match transport {
                        Transport::Http1 => serve_io(TokioIo::new(stream), false, service).await,
                        Transport::H2c => serve_io(TokioIo::new(stream), true, service).await,
                        Transport::Tls(config) => {
                            // A failed handshake is what some tests are about; the router reports it.
                            let Ok(tls) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await else { return };
                            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                            serve_io(TokioIo::new(tls), h2, service).await;
                        }
                    }
                });
                accept_tasks.lock().expect("task list lock").push(connection.abort_handle());
            }
        });
        tasks.lock().expect("task list lock").push(accept.abort_handle());
        Self { addr, recorded, wire, tasks }
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

    /// A mark in the log of bytes received, for [`TestBackend::wire_since`].
    pub fn wire_mark(&self) -> usize {
        self.wire.lock().expect("wire log lock").len()
    }

    /// The bytes received on the network since `mark`, exactly as they arrived (before any HTTP parsing), one
    /// entry per connection in the order the connections first sent something.
    pub fn wire_since(&self, mark: usize) -> Vec<Vec<u8>> {
        let log = self.wire.lock().expect("wire log lock");
        let mut connections: Vec<(usize, Vec<u8>)> = Vec::new();
        for (connection, bytes) in log.iter().skip(mark) {
            match connections.iter_mut().find(|(c, _)| c == connection) {
                Some((_, received)) => received.extend_from_slice(bytes),
                None => connections.push((*connection, bytes.to_vec())),
            }
        }
        connections.into_iter().map(|(_, bytes)| bytes).collect()
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

/// A connection that copies everything read from it into the backend's wire log, so tests can check the exact
/// bytes the router sent, including what an HTTP parser would normalise away (duplicate or conflicting framing
/// headers).
struct WireTap {
    inner: tokio::net::TcpStream,
    connection: usize,
    log: WireLog,
}

impl tokio::io::AsyncRead for WireTap {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(fresh) = buf.filled().get(before..).filter(|fresh| !fresh.is_empty()) {
            this.log.lock().expect("wire log lock").push((this.connection, Bytes::copy_from_slice(fresh)));
        }
        polled
    }
}

impl tokio::io::AsyncWrite for WireTap {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

async fn serve_io<I, S>(io: I, h2: bool, service: S)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = ReplyBody> + Send,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, service).await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).with_upgrades().await;
    }
}

async fn answer(request: Request<Incoming>, peer: SocketAddr, handler: &Handler, recorded: &Mutex<Vec<Recorded>>) -> Response<ReplyBody> {
    let (parts, body) = request.into_parts();
    let (body, body_error) = match body.collect().await {
        Ok(collected) => (collected.to_bytes(), None),
        Err(err) => (Bytes::new(), Some(err.to_string())),
    };
    let record = Recorded {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        version: parts.version,
        headers: parts.headers,
        body,
        body_error,
        peer,
    };
    let reply = handler(&record);
    recorded.lock().expect("recorded lock").push(record);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let body = match (reply.chunks, reply.trailers) {
        (None, None) => http_body_util::Either::Left(Full::new(reply.body)),
        (chunks, trailers) => {
            let chunks = chunks.unwrap_or_else(|| vec![reply.body]);
            let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = chunks.into_iter().map(|c| Ok(Frame::data(c))).collect();
            frames.extend(trailers.map(|t| Ok(Frame::trailers(t))));
            http_body_util::Either::Right(StreamBody::new(futures_util::stream::iter(frames)))
        }
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
