//! What the router sends to and reads from plain HTTP/1.1 backends on the path that bodyless requests and small
//! bodies read whole take: every way a response body can be framed (a mebibyte of it too), interim answers,
//! connection reuse and a pooled connection the backend closed, answers that break the protocol (bodies with
//! codings other than one `chunked` among them, on the path streamed bodies take too), small request bodies sent
//! whole and a client that never sends one. The backend here is a raw socket that sends exactly the bytes each
//! test scripts, so no HTTP library on the backend side smooths anything over.
#![allow(clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::{Arc, Mutex};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use switchyard_tests::http::{Ending, raw_exchange, wire};
use switchyard_tests::router::metric_value;
use switchyard_tests::{NatsServer, RouterProcess, publish, registration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted backend does after writing an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Waits for the next request on the connection.
    KeepOpen,
    /// Closes the connection at once.
    Close,
    /// Closes the connection a little later, as a backend that times out idle connections does.
    CloseSoon,
}

/// A backend answering each request with the bytes its script gives for the request's path.
struct ScriptedBackend {
    port: u16,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl ScriptedBackend {
    async fn start(script: fn(&str) -> (Vec<u8>, Then)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the scripted backend");
        let port = listener.local_addr().expect("backend address").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (accepted, served, received) = (Arc::clone(&connections), Arc::clone(&requests), Arc::clone(&bodies));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, script, Arc::clone(&served), Arc::clone(&received)));
            }
        });
        Self { port, connections, requests, bodies }
    }

    /// The bodies of the requests that carried one, in arrival order.
    fn bodies(&self) -> Vec<Vec<u8>> {
        self.bodies.lock().map(|bodies| bodies.clone()).unwrap_or_default()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Serves one connection: reads each request head and the body its `Content-Length` announces, and answers each,
/// without the body when the request is a HEAD.
async fn serve(mut stream: TcpStream, script: fn(&str) -> (Vec<u8>, Then), served: Arc<AtomicUsize>, bodies: Arc<Mutex<Vec<Vec<u8>>>>) {
    let mut received = Vec::new();
    loop {
        let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") else {
            if !read_more(&mut stream, &mut received).await {
                return;
            }
            continue;
        };
        let head = String::from_utf8_lossy(&received[..end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|line| line.split_once(':').filter(|(name, _)| name.eq_ignore_ascii_case("content-length")))
            .and_then(|(_, value)| value.trim().parse().ok())
            .unwrap_or(0);
        while received.len() < end + 4 + length {
            if !read_more(&mut stream, &mut received).await {
                return;
            }
        }
        let body: Vec<u8> = received.drain(..end + 4 + length).skip(end + 4).collect();
        if length > 0 {
            bodies.lock().expect("bodies lock").push(body);
        }
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        served.fetch_add(1, Ordering::SeqCst);
        let (mut answer, then) = script(&path);
        if head.starts_with("HEAD ")
            && let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
                answer.truncate(end + 4);
            }
        if stream.write_all(&answer).await.is_err() {
            return;
        }
        match then {
            Then::KeepOpen => {}
            Then::Close => return,
            Then::CloseSoon => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
        }
    }
}

/// Appends what the connection delivers next; false once it has ended.
async fn read_more(stream: &mut TcpStream, received: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    match stream.read(&mut buf).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            received.extend_from_slice(&buf[..n]);
            true
        }
    }
}

/// A mebibyte of a pattern no shift or repeat of a read buffer reproduces.
fn large_body() -> Vec<u8> {
    (0..LARGE).map(|i| u8::try_from(i % 251).unwrap_or(0)).collect()
}

const LARGE: usize = 1024 * 1024;

fn script(path: &str) -> (Vec<u8>, Then) {
    match path {
        "/large" => return ([format!("HTTP/1.1 200 OK\r\nContent-Length: {LARGE}\r\n\r\n").into_bytes(), large_body()].concat(), Then::KeepOpen),
        "/large-chunked" => {
            let mut answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for chunk in large_body().chunks(100_000) {
                answer.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                answer.extend_from_slice(chunk);
                answer.extend_from_slice(b"\r\n");
            }
            answer.extend_from_slice(b"0\r\n\r\n");
            return (answer, Then::KeepOpen);
        }
        _ => {}
    }
    let (answer, then): (&[u8], Then) = match path {
        "/length" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", Then::KeepOpen),
        "/chunked" => (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst-\r\n6;ext=1\r\nsecond\r\n0\r\nx-sum: 42\r\n\r\n", Then::KeepOpen),
        "/until-close" => (b"HTTP/1.1 200 OK\r\n\r\nuntil the end", Then::Close),
        "/http10" => (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold", Then::Close),
        "/interim" => (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok", Then::KeepOpen),
        "/reason" => (b"HTTP/1.1 299 Quite Fine\r\nContent-Length: 0\r\n\r\n", Then::KeepOpen),
        "/stale" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh", Then::CloseSoon),
        "/garbage" => (b"NOT HTTP AT ALL\r\n\r\n", Then::Close),
        "/two-lengths" => (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", Then::Close),
        "/switch" => (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: nothing\r\n\r\n", Then::Close),
        "/truncated" => (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", Then::Close),
        "/gzip-chunked" => (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\n\x1f\x8b\x08\x00\r\n0\r\n\r\n", Then::CloseSoon),
        "/chunked-gzip" => (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n\x1f\x8b\x08\x00", Then::Close),
        _ => (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", Then::KeepOpen),
    };
    (answer.to_vec(), then)
}

/// A one-worker router (so one pool serves every request) with `host` routed to `backend`.
async fn routed(backend: &ScriptedBackend, host: &str) -> (NatsServer, RouterProcess) {
    let nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[("worker_threads", "1")]);
    publish(&nats.client().await, "router.register", &registration(backend.port, &[host])).await;
    assert!(router.routes_eventually_have(host).await, "route {host} never appeared");
    (nats, router)
}

/// Sends raw request bytes to the router and reads its responses strictly.
async fn exchange(router: &RouterProcess, request: &str) -> Vec<wire::Message> {
    let answer = raw_exchange(router.addr(), request.as_bytes(), Duration::from_secs(5), Duration::from_millis(200)).await;
    answer.responses().unwrap_or_else(|e| panic!("unreadable response to {request:?}: {e}\n{:?}", String::from_utf8_lossy(&answer.received)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_framing_reaches_the_client_intact() {
    let backend = ScriptedBackend::start(script).await;
    let (_nats, router) = routed(&backend, "wire.example.com").await;
    for (path, status, body) in [
        ("/length", 200, "hello"),
        ("/chunked", 200, "first-second"),
        ("/until-close", 200, "until the end"),
        ("/http10", 200, "old"),
        ("/interim", 201, "ok"),
    ] {
        let answer = router.get("wire.example.com", path).await;
        assert_eq!((answer.status.as_u16(), answer.text().as_str()), (status, body), "{path}");
    }
    for path in ["/large", "/large-chunked", "/large"] {
        let answer = router.get("wire.example.com", path).await;
        assert_eq!(answer.status, 200, "{path}");
        assert!(answer.body[..] == large_body()[..], "{path}: {} bytes came through, not the mebibyte sent", answer.body.len());
    }
    let chunked = exchange(&router, "GET /chunked HTTP/1.1\r\nHost: wire.example.com\r\nTE: trailers\r\n\r\n").await;
    let message = chunked.first().expect("an answer to /chunked");
    assert_eq!(message.body, b"first-second");
    assert_eq!(message.header("content-length"), None, "a chunked body must not gain a length");

    let reason = exchange(&router, "GET /reason HTTP/1.1\r\nHost: wire.example.com\r\n\r\n").await;
    assert_eq!(reason.first().map(|m| m.start_line.as_str()), Some("HTTP/1.1 299 Quite Fine"), "the backend's own reason phrase is kept");

    // A HEAD answer has no body whatever its Content-Length says, and the backend connection carries the next
    // request (the scripted backend would answer a second request on it with the bytes a reader that took the
    // length as a body would have eaten).
    let connections = backend.connections();
    let head = raw_exchange(router.addr(), b"HEAD /length HTTP/1.1\r\nHost: wire.example.com\r\n\r\n", Duration::from_secs(5), Duration::from_millis(300)).await;
    let text = String::from_utf8_lossy(&head.received).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200") && text.contains("content-length: 5\r\n") && text.ends_with("\r\n\r\n"), "{text}");
    assert_eq!(head.ending, Ending::Open, "the client connection stays open after a HEAD answer");
    assert_eq!(router.get("wire.example.com", "/length").await.text(), "hello");
    assert_eq!(backend.connections(), connections, "the HEAD and the GET after it went over the pooled connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_connections_are_reused_and_one_the_backend_closed_is_replaced() {
    let backend = ScriptedBackend::start(script).await;
    let (_nats, router) = routed(&backend, "reuse.example.com").await;
    for n in 0..20 {
        let answer = router.get("reuse.example.com", if n % 2 == 0 { "/length" } else { "/chunked" }).await;
        assert_eq!(answer.status, 200, "request {n}");
    }
    assert_eq!((backend.requests(), backend.connections()), (20, 1), "twenty requests in a row share one backend connection");

    // The backend closes its side after answering, as one that times out idle connections does; the next request
    // must not fail on the dead pooled connection.
    assert_eq!(router.get("reuse.example.com", "/stale").await.text(), "fresh");
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..3 {
        assert_eq!(router.get("reuse.example.com", "/length").await.text(), "hello");
    }
    assert_eq!(backend.connections(), 2, "the closed connection was replaced once");
    let metrics = router.metrics().await;
    assert_eq!(metric_value(&metrics, "switchyard_router_upstream_connects_total"), Some(2.0), "{metrics}");
    assert_eq!(metric_value(&metrics, "switchyard_router_backend_errors_total"), None, "no request failed: {metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_break_the_protocol_are_502_and_counted() {
    let backend = ScriptedBackend::start(script).await;
    let (_nats, router) = routed(&backend, "broken.example.com").await;
    for path in ["/garbage", "/two-lengths", "/switch", "/gzip-chunked", "/chunked-gzip"] {
        let answer = router.get("broken.example.com", path).await;
        assert_eq!(answer.status, 502, "{path}: {}", answer.text());
        let error = answer.header("x-cf-routererror").unwrap_or_default();
        assert!(error.starts_with("endpoint_failure"), "{path}: {error}");
    }
    // A request with a body takes the other way to the backend; a coded body is refused there too, never passed
    // on with its coding unannounced.
    let posted = exchange(&router, "POST /gzip-chunked HTTP/1.1\r\nHost: broken.example.com\r\nContent-Length: 2\r\n\r\nhi").await;
    let answer = posted.first().expect("an answer to the POST");
    assert!(answer.start_line.starts_with("HTTP/1.1 502"), "{}: {:?}", answer.start_line, String::from_utf8_lossy(&answer.body));
    assert_eq!(answer.header("transfer-encoding"), None);
    let metrics = router.metrics().await;
    assert_eq!(metric_value(&metrics, "switchyard_router_backend_errors_total{kind=\"protocol\"}"), Some(6.0), "{metrics}");

    // A body cut short after the head was sent on: the client sees the answer end early, never a complete one.
    let truncated = raw_exchange(router.addr(), b"GET /truncated HTTP/1.1\r\nHost: broken.example.com\r\n\r\n", Duration::from_secs(5), Duration::from_millis(200)).await;
    let messages = wire::messages(&truncated.received, wire::Side::Response).map(|(found, _)| found).unwrap_or_default();
    assert!(messages.iter().all(|m| !m.complete || m.body.len() < 10), "{:?}", String::from_utf8_lossy(&truncated.received));
    assert_eq!(router.get("broken.example.com", "/length").await.text(), "hello", "the router still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_bodies_go_whole_with_their_head_and_large_ones_stream() {
    let backend = ScriptedBackend::start(script).await;
    let (_nats, router) = routed(&backend, "post.example.com").await;
    let post = |path: &str, body: &[u8]| {
        let mut request = format!("POST {path} HTTP/1.1\r\nHost: post.example.com\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        request.extend_from_slice(body);
        request
    };
    // Bodies up to the size read whole, then one over it (streamed by the general client, which keeps a pool of its
    // own): each answered, each body intact, and the small ones all over one pooled backend connection.
    // A GET first: bodyless requests are sent whole too, so sharing its connection shows the small POSTs were.
    assert_eq!(router.get("post.example.com", "/length").await.text(), "hello");
    let sizes = [8 * 1024, 1, 100, 1000, 5000, 0, 8 * 1024 + 1];
    for (n, &size) in sizes.iter().enumerate() {
        let body: Vec<u8> = (0..size).map(|i| u8::try_from((i * 7 + n) % 251).unwrap_or(0)).collect();
        let answers = raw_exchange(router.addr(), &post("/length", &body), Duration::from_secs(5), Duration::from_millis(200)).await;
        let messages = answers.responses().unwrap_or_else(|e| panic!("POST of {size} bytes: {e}"));
        assert_eq!(messages.first().map(|m| (m.start_line.as_str(), m.body.as_slice())), Some(("HTTP/1.1 200 OK", &b"hello"[..])), "POST of {size} bytes");
        if size > 0 {
            assert_eq!(backend.bodies().last(), Some(&body), "the {size}-byte body arrived intact");
        }
        if size <= 8 * 1024 {
            assert_eq!(backend.connections(), 1, "the POST of {size} bytes went over the one pooled backend connection");
        }
    }
    assert_eq!(backend.bodies().len(), sizes.len() - 1, "every body was sent once");

    // A small body that arrives in pieces, with pauses between them, is joined whole before it goes out.
    let body: Vec<u8> = (0..3000_u32).map(|i| u8::try_from(i % 251).unwrap_or(0)).collect();
    let request = post("/length", &body);
    let connections = backend.connections();
    let mut client = TcpStream::connect(router.addr()).await.expect("connect to the router");
    for piece in [&request[..request.len() - 2000], &request[request.len() - 2000..request.len() - 1000], &request[request.len() - 1000..]] {
        client.write_all(piece).await.expect("send a piece");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0_u8; 1024];
        while !answer.ends_with(b"hello") {
            match client.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    });
    assert!(read.await.is_ok(), "no answer to the body sent in pieces: {:?}", String::from_utf8_lossy(&answer));
    assert!(answer.starts_with(b"HTTP/1.1 200 OK") && answer.ends_with(b"hello"), "{:?}", String::from_utf8_lossy(&answer));
    assert_eq!(backend.bodies().last(), Some(&body), "the body sent in pieces arrived whole and intact");
    assert_eq!(backend.connections(), connections, "and went over a pooled connection, with its head");

    // A client that announces a small body and leaves before sending it: the backend sees nothing, and the
    // request is logged as given up.
    let requests = backend.requests();
    let cut = raw_exchange(router.addr(), b"POST /length HTTP/1.1\r\nHost: post.example.com\r\nContent-Length: 100\r\n\r\nonly part", Duration::from_secs(2), Duration::ZERO).await;
    assert!(cut.received.is_empty() || String::from_utf8_lossy(&cut.received).starts_with("HTTP/1.1 "), "{:?}", String::from_utf8_lossy(&cut.received));
    let logged = switchyard_tests::wait_until(Duration::from_secs(5), || router.access_log().contains("\"POST /length HTTP/1.1\" 499"));
    assert!(logged, "access log: {}", router.access_log());
    assert_eq!(backend.requests(), requests, "no part of the cut request reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_body_that_never_arrives_is_408_after_endpoint_timeout_and_reaches_no_backend() {
    let backend = ScriptedBackend::start(script).await;
    let nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[("endpoint_timeout", "1s")]);
    publish(&nats.client().await, "router.register", &registration(backend.port, &["stall.example.com"])).await;
    assert!(router.routes_eventually_have("stall.example.com").await);

    let started = std::time::Instant::now();
    let stalled = raw_exchange(router.addr(), b"POST /length HTTP/1.1\r\nHost: stall.example.com\r\nContent-Length: 100\r\n\r\nten bytes.", Duration::from_secs(10), Duration::from_millis(200)).await;
    let waited = started.elapsed();
    let messages = stalled.responses().unwrap_or_else(|e| panic!("unreadable answer: {e}: {:?}", String::from_utf8_lossy(&stalled.received)));
    let answer = messages.first().expect("an answer to the stalled request");
    assert!(answer.start_line.starts_with("HTTP/1.1 408"), "{}", answer.start_line);
    assert_eq!(answer.header("x-cf-routererror"), Some("request_body_timeout"));
    assert_eq!(stalled.ending, Ending::Closed, "the connection ends with the answer");
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(5), "answered after {waited:?}");
    assert_eq!((backend.connections(), backend.requests()), (0, 0), "nothing reached the backend");
    let metrics = router.metrics().await;
    assert_eq!(metric_value(&metrics, "switchyard_router_backend_errors_total"), None, "the backend is not blamed: {metrics}");
}
