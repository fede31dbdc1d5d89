//! The router facing hostile input: malformed and ambiguous HTTP from clients, requests that try to use it as an
//! open proxy, and bad registrations on the bus.
//!
//! These exist because the router is the one component every tenant's traffic crosses. A request that the router
//! frames one way and a backend frames another lets one client smuggle a request into someone else's connection;
//! a router that dials whatever an absolute URI names is an open proxy into the platform's network; and a
//! registration with a CR/LF in it could poison the route table or put a header into every response. Each case is
//! sent over a real socket to the real binary. The backends record the raw bytes the router sent them, and a strict
//! parser of their own (`switchyard_tests::http::wire`), not hyper's, judges them: hyper would quietly normalise
//! exactly the duplicates and conflicts these tests look for. Every case prints one line, so the test log is
//! also the record of how the router behaves.

// The helpers below are part of the tests: a failed expectation in them is a failed test.
#![allow(clippy::expect_used, clippy::panic, clippy::indexing_slicing, reason = "test helpers: a failed expectation is a failed test")]

use std::time::{Duration, Instant};
use switchyard_tests::http::{Ending, raw_exchange};
use switchyard_tests::router::metric_value;
use switchyard_tests::http::wire::{self, Framing, Side};
use switchyard_tests::{NatsServer, Recorded, RouterProcess, TestBackend, publish, registration};

/// The route every HTTP vector is aimed at.
const HOST: &str = "hostile.example.com";
/// A name that is registered nowhere and, being under `.invalid` (RFC 6761), never resolves: if the router ever
/// tried to reach it, the attempt could not leave the machine.
const UNREGISTERED: &str = "unregistered.invalid";

/// What a vector must lead to.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// The router's HTTP parser refuses it with this 4xx before the router sees a request (so without
    /// `X-Cf-Routererror`), and no byte of it reaches a backend.
    Refused(u16),
    /// The router itself refuses it with this 4xx and `X-Cf-Routererror`, and no byte of it reaches a backend.
    RefusedBy(u16, &'static str),
    /// Legal if unusual: forwarded as exactly one request with this target and body, framed unambiguously, and
    /// the connection stays open.
    Forwarded(Sent),
    /// The body goes bad after part of it was streamed on: the client gets this 4xx and `X-Cf-Routererror`, and
    /// the backend sees nothing, or one request cut short that it cannot take for a whole one.
    Abandoned(u16, &'static str),
    /// Forwarded as above, and because the client's framing was suspicious the router closes the connection
    /// after answering, so nothing after the body is ever read as a request.
    ForwardedThenClosed(Sent),
}

/// The one request a backend must receive.
#[derive(Debug, Clone, Copy)]
struct Sent {
    target: &'static str,
    body: &'static [u8],
    /// Header fields that must arrive, each exactly once with this value.
    headers: &'static [(&'static str, &'static str)],
}

const fn sent(target: &'static str, body: &'static [u8]) -> Sent {
    Sent { target, body, headers: &[] }
}

struct Vector {
    name: &'static str,
    bytes: Vec<u8>,
    want: Want,
}

fn vector(name: &'static str, bytes: impl Into<Vec<u8>>, want: Want) -> Vector {
    Vector { name, bytes: bytes.into(), want }
}

/// A request head aimed at [`HOST`]: `method target`, then `headers` (each a full line without CRLF).
fn head(method: &str, target: &str, headers: &[&str]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: {HOST}\r\n").into_bytes();
    for line in headers {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn with_body(mut head: Vec<u8>, body: &[u8]) -> Vec<u8> {
    head.extend_from_slice(body);
    head
}

/// A second request, hidden where only a parser that disagrees about the first one's end would find it.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: hostile.example.com\r\n\r\n";

fn corpus(backend_port: u16) -> Vec<Vector> {
    use Want::{Abandoned, Forwarded, ForwardedThenClosed, Refused, RefusedBy};
    const MALFORMED: &str = "malformed_request";
    let chunked_hello = b"5\r\nhello\r\n0\r\n\r\n";
    let smuggled_after_chunks = format!("0\r\n\r\n{SMUGGLED}");
    let long_extension = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(64 * 1024));
    let smuggle_chunk = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    vec![
        // Both framing headers: the chunks win, the length is dropped, and the connection closes after the answer.
        vector("te-then-cl", with_body(head("POST", "/te-cl", &["Transfer-Encoding: chunked", "Content-Length: 4"]), chunked_hello), ForwardedThenClosed(sent("/te-cl", b"hello"))),
        vector("cl-then-te", with_body(head("POST", "/cl-te", &["Content-Length: 4", "Transfer-Encoding: chunked"]), chunked_hello), ForwardedThenClosed(sent("/cl-te", b"hello"))),
        // CL.TE: a length covering a zero chunk plus a whole second request. Read by its chunks the body is empty,
        // and the second request must never be read as one.
        vector(
            "cl-te-smuggle",
            with_body(head("POST", "/cl-te-smuggle", &[&format!("Content-Length: {}", smuggled_after_chunks.len()), "Transfer-Encoding: chunked"]), smuggled_after_chunks.as_bytes()),
            ForwardedThenClosed(sent("/cl-te-smuggle", b"")),
        ),
        // Repeating the same length is ambiguous in form only; it is forwarded with one Content-Length.
        vector("duplicate-cl", with_body(head("POST", "/dup-cl", &["Content-Length: 5", "Content-Length: 5"]), b"hello"), Forwarded(Sent { target: "/dup-cl", body: b"hello", headers: &[("content-length", "5")] })),
        vector("duplicate-cl-list", with_body(head("POST", "/dup-cl-list", &["Content-Length: 5, 5"]), b"hello"), Refused(400)),
        vector("conflicting-cl", with_body(head("POST", "/conflict", &["Content-Length: 5", "Content-Length: 6"]), b"hello!"), Refused(400)),
        vector("cl-plus-sign", with_body(head("POST", "/cl", &["Content-Length: +5"]), b"hello"), Refused(400)),
        vector("cl-negative", with_body(head("POST", "/cl", &["Content-Length: -1"]), b"hello"), Refused(400)),
        vector("cl-hex", with_body(head("POST", "/cl", &["Content-Length: 0x5"]), b"hello"), Refused(400)),
        vector("cl-overflow", with_body(head("POST", "/cl", &["Content-Length: 184467440737095516160"]), b"hello"), Refused(400)),
        // obs-fold: a header continued on the next line.
        vector("obs-fold", head("GET", "/fold", &["X-Folded: first", " second"]), Refused(400)),
        vector("obs-fold-te", with_body(head("POST", "/fold", &["Transfer-Encoding:", " chunked"]), chunked_hello), Refused(400)),
        // Chunk sizes no parser should guess at.
        vector("chunk-size-non-hex", with_body(head("POST", "/chunks", &["Transfer-Encoding: chunked"]), b"zz\r\nhello\r\n0\r\n\r\n"), RefusedBy(400, MALFORMED)),
        vector("chunk-size-overflow", with_body(head("POST", "/chunks", &["Transfer-Encoding: chunked"]), b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n"), RefusedBy(400, MALFORMED)),
        vector("chunk-size-negative", with_body(head("POST", "/chunks", &["Transfer-Encoding: chunked"]), b"-5\r\nhello\r\n0\r\n\r\n"), RefusedBy(400, MALFORMED)),
        vector("chunk-size-bad-after-data", with_body(head("POST", "/chunks-late", &["Transfer-Encoding: chunked"]), b"5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n"), Abandoned(400, MALFORMED)),
        // Chunk extensions are legal and meaningless to the router: dropped when it re-frames the body.
        vector("chunk-extension", with_body(head("POST", "/ext", &["Transfer-Encoding: chunked"]), b"5;name=value\r\nhello\r\n0;last\r\n\r\n"), ForwardedThenClosed(sent("/ext", b"hello"))),
        vector("chunk-extension-quoted", with_body(head("POST", "/ext-q", &["Transfer-Encoding: chunked"]), b"5;name=\"a quoted; value\"\r\nhello\r\n0\r\n\r\n"), ForwardedThenClosed(sent("/ext-q", b"hello"))),
        vector("chunk-extension-64k", with_body(head("POST", "/ext-long", &["Transfer-Encoding: chunked"]), long_extension.as_bytes()), RefusedBy(400, MALFORMED)),
        // Trailers may not reframe anything; the router does not pass them on.
        vector("trailer-with-framing", with_body(head("POST", "/trailer", &["Transfer-Encoding: chunked"]), b"5\r\nhello\r\n0\r\nContent-Length: 99\r\nX-Trailer: t\r\n\r\n"), ForwardedThenClosed(sent("/trailer", b"hello"))),
        // Transfer-Encoding where it cannot be, or with codings the router does not decode.
        vector("te-on-http10", with_body(format!("POST /old HTTP/1.0\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes(), chunked_hello), Refused(400)),
        vector("te-gzip", with_body(head("POST", "/gzip", &["Transfer-Encoding: gzip"]), b"hello"), Refused(400)),
        vector("te-gzip-chunked", with_body(head("POST", "/gzip-chunked", &["Transfer-Encoding: gzip, chunked"]), chunked_hello), RefusedBy(400, MALFORMED)),
        vector("te-chunked-chunked", with_body(head("POST", "/chunked-twice", &["Transfer-Encoding: chunked, chunked"]), chunked_hello), RefusedBy(400, MALFORMED)),
        vector("te-two-lines", with_body(head("POST", "/te-lines", &["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"]), chunked_hello), RefusedBy(400, MALFORMED)),
        vector("te-chunked-then-identity", with_body(head("POST", "/te-identity", &["Transfer-Encoding: chunked", "Transfer-Encoding: identity"]), chunked_hello), Refused(400)),
        vector("te-xchunked", with_body(head("POST", "/xchunked", &["Transfer-Encoding: xchunked"]), chunked_hello), Refused(400)),
        vector("te-vertical-tab", with_body(head("POST", "/vt", &["Transfer-Encoding:\x0bchunked"]), chunked_hello), Refused(400)),
        // Header names that are not tokens.
        vector("space-before-colon", head("GET", "/names", &["X-Space : 1"]), Refused(400)),
        vector("space-before-colon-te", with_body(head("POST", "/names", &["Transfer-Encoding : chunked", "Content-Length: 5"]), b"hello"), Refused(400)),
        vector("name-with-at-sign", head("GET", "/names", &["X-Bad@Name: 1"]), Refused(400)),
        vector("name-with-parenthesis", head("GET", "/names", &["X(Bad): 1"]), Refused(400)),
        vector("name-with-control-byte", head("GET", "/names", &["X\x01Y: 1"]), Refused(400)),
        vector("name-non-ascii", head("GET", "/names", &["X-\u{fc}ber: 1"]), Refused(400)),
        vector("line-without-colon", head("GET", "/names", &["NoColonHere"]), Refused(400)),
        // The request is not for the platform at all.
        vector("absolute-form-unknown-host", head("GET", &format!("http://{UNREGISTERED}/"), &[]), RefusedBy(404, "unknown_route")),
        vector("connect-to-backend", format!("CONNECT 127.0.0.1:{backend_port} HTTP/1.1\r\nHost: 127.0.0.1:{backend_port}\r\n\r\n"), RefusedBy(405, "unsupported_method")),
        vector("connect-to-route", format!("CONNECT {HOST}:80 HTTP/1.1\r\nHost: {HOST}:80\r\n\r\n"), RefusedBy(405, "unsupported_method")),
        vector("missing-host", "GET / HTTP/1.1\r\n\r\n", RefusedBy(400, "empty_host")),
        vector("two-hosts", format!("GET /two-hosts HTTP/1.1\r\nHost: {HOST}\r\nHost: {UNREGISTERED}\r\n\r\n"), RefusedBy(400, MALFORMED)),
        // Sizes.
        vector("uri-64k", head("GET", &format!("/{}", "a".repeat(64 * 1024)), &[]), Refused(414)),
        vector("uri-1m", head("GET", &format!("/{}", "a".repeat(1024 * 1024)), &[]), Refused(414)),
        vector("too-many-headers", head("GET", "/many", &(0..200).map(|i| format!("X-H{i}: v")).collect::<Vec<_>>().iter().map(String::as_str).collect::<Vec<_>>()), Refused(431)),
        // Bytes that would end a line (or a string) somewhere else.
        vector("nul-in-value", head("GET", "/nul", &["X-Nul: a\0b"]), Refused(400)),
        vector("bare-cr-in-value", head("GET", "/cr", &["X-Cr: a\rX-Injected: yes"]), Refused(400)),
        // A lone LF ends a line as CRLF does (RFC 9112, 2.2, as Go reads it too): two fields, each passed on as its
        // own CRLF-terminated line, so no parser behind the router can join them back into one.
        vector("bare-lf-in-value", head("GET", "/lf", &["X-Lf: a\nX-Second: yes"]), Forwarded(Sent { target: "/lf", body: b"", headers: &[("x-lf", "a"), ("x-second", "yes")] })),
        vector("crlf-in-target", format!("GET /a\r\nX-Injected: yes HTTP/1.1\r\nHost: {HOST}\r\n\r\n"), Refused(400)),
        vector("bare-cr-in-target", format!("GET /a\rb HTTP/1.1\r\nHost: {HOST}\r\n\r\n"), Refused(400)),
        vector("bare-lf-in-target", format!("GET /a\nb HTTP/1.1\r\nHost: {HOST}\r\n\r\n"), Refused(400)),
        // Percent-encoded, a CR/LF is just text in a path: forwarded verbatim, never decoded into the head.
        vector("encoded-crlf-in-target", head("GET", "/a%0d%0aX-Injected:%20yes", &[]), Forwarded(sent("/a%0d%0aX-Injected:%20yes", b""))),
        // A whole request inside a body is body.
        vector("request-inside-cl-body", with_body(head("POST", "/outer", &[&format!("Content-Length: {}", SMUGGLED.len())]), SMUGGLED.as_bytes()), Forwarded(sent("/outer", SMUGGLED.as_bytes()))),
        vector("request-inside-chunk", with_body(head("POST", "/outer-chunked", &["Transfer-Encoding: chunked"]), smuggle_chunk.as_bytes()), ForwardedThenClosed(sent("/outer-chunked", SMUGGLED.as_bytes()))),
    ]
}

/// What one vector led to, on both sides of the router.
struct Outcome {
    statuses: Vec<u16>,
    /// The first response's `X-Cf-Routererror`.
    router_error: Option<String>,
    ending: Ending,
    /// The requests the backend received, read strictly from its wire bytes.
    forwarded: Vec<wire::Message>,
    /// The same requests as the backend's HTTP server saw them.
    recorded: Vec<Recorded>,
}

impl Outcome {
    fn summary(&self) -> String {
        let client = match (self.statuses.as_slice(), self.ending) {
            ([], Ending::Open) => "no answer, still open".to_owned(),
            ([], ending) => format!("no answer, {ending:?}"),
            (statuses, ending) => format!(
                "{statuses:?}{} then {}",
                self.router_error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default(),
                if ending == Ending::Open { "kept open".to_owned() } else { format!("{ending:?}") }
            ),
        };
        let backend = match self.forwarded.as_slice() {
            [] => "backend saw nothing".to_owned(),
            requests => requests
                .iter()
                .map(|m| format!("backend saw `{}` {:?} body {:?}{}", m.start_line, m.framing, String::from_utf8_lossy(&m.body), if m.complete { "" } else { " (cut short)" }))
                .collect::<Vec<_>>()
                .join("; "),
        };
        format!("{client}; {backend}")
    }
}

/// Waits until the backend has received nothing new for a while, so late bytes are counted with their vector.
async fn settle(backend: &TestBackend) {
    let mut last = (backend.wire_mark(), backend.count());
    let mut stable_since = Instant::now();
    let give_up = Instant::now() + Duration::from_secs(5);
    while stable_since.elapsed() < Duration::from_millis(300) && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = (backend.wire_mark(), backend.count());
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
    }
}

async fn send_vector(router: &RouterProcess, backend: &TestBackend, bytes: &[u8]) -> Result<Outcome, String> {
    let (mark, recorded_before) = (backend.wire_mark(), backend.count());
    let exchange = raw_exchange(router.addr(), bytes, Duration::from_secs(20), Duration::from_millis(500)).await;
    settle(backend).await;
    let responses = exchange.responses().map_err(|e| format!("the router's answer is not plain HTTP/1.1: {e}: {:?}", String::from_utf8_lossy(&exchange.received)))?;
    let mut forwarded = Vec::new();
    for connection in backend.wire_since(mark) {
        let (requests, left) = wire::messages(&connection, Side::Request).map_err(|e| format!("the router sent the backend ambiguous bytes: {e}: {:?}", String::from_utf8_lossy(&connection)))?;
        if left != 0 {
            return Err(format!("the router sent the backend {left} bytes that are not a whole request head: {:?}", String::from_utf8_lossy(&connection)));
        }
        forwarded.extend(requests);
    }
    Ok(Outcome {
        statuses: responses.iter().filter_map(wire::Message::status).collect(),
        router_error: responses.first().and_then(|r| r.header("x-cf-routererror")).map(str::to_owned),
        ending: exchange.ending,
        forwarded,
        recorded: backend.requests().into_iter().skip(recorded_before).collect(),
    })
}

/// The checks every vector must pass, whatever it is.
fn check_invariants(outcome: &Outcome) -> Result<(), String> {
    if outcome.statuses.iter().any(|s| *s >= 500) {
        return Err("the router answered with a 5xx".to_owned());
    }
    if outcome.statuses.is_empty() && outcome.ending == Ending::Open {
        return Err("the router neither answered nor closed: it hangs".to_owned());
    }
    if outcome.statuses.len() > 1 {
        return Err("the client got more than one response to one request".to_owned());
    }
    if outcome.forwarded.len() > 1 || outcome.recorded.len() > 1 {
        return Err("more than one request reached the backend".to_owned());
    }
    if outcome.forwarded.iter().any(|m| m.target().is_some_and(|t| t.contains("smuggled"))) || outcome.recorded.iter().any(|r| r.uri.contains("smuggled")) {
        return Err("a smuggled request reached the backend".to_owned());
    }
    for request in &outcome.forwarded {
        for name in ["x-injected", "x-trailer"] {
            if request.header(name).is_some() {
                return Err(format!("`{name}` reached the backend as a header"));
            }
        }
    }
    Ok(())
}

fn check_want(want: Want, outcome: &Outcome) -> Result<(), String> {
    let forwarded_as = |Sent { target, body, headers }: Sent| -> Result<(), String> {
        let [request] = outcome.forwarded.as_slice() else { return Err("expected exactly one request at the backend".to_owned()) };
        let [recorded] = outcome.recorded.as_slice() else { return Err("the backend's HTTP server did not see exactly one request".to_owned()) };
        if !request.complete || recorded.body_error.is_some() {
            return Err(format!("the forwarded request was cut short ({:?})", recorded.body_error));
        }
        if request.target() != Some(target) || request.body != body || recorded.body != body {
            return Err(format!("expected `{target}` with body {:?}", String::from_utf8_lossy(body)));
        }
        let framed_length = request.header("content-length").map(|l| l == body.len().to_string());
        let framed_ok = match request.framing {
            Framing::Length => framed_length == Some(true),
            Framing::Chunked => true,
            Framing::None => body.is_empty(),
            Framing::UntilClose => false,
        };
        if !framed_ok {
            return Err(format!("the forwarded framing {:?} does not match the body", request.framing));
        }
        for (name, value) in headers {
            if request.header_all(name) != [*value] {
                return Err(format!("expected exactly one `{name}: {value}` at the backend, got {:?}", request.header_all(name)));
            }
        }
        if outcome.statuses != [200] {
            return Err("the client did not get the backend's 200".to_owned());
        }
        Ok(())
    };
    let refused = |status: u16, router_error: Option<&str>| -> Result<(), String> {
        if !outcome.forwarded.is_empty() || !outcome.recorded.is_empty() {
            return Err("a refused request reached the backend".to_owned());
        }
        if outcome.statuses != [status] || outcome.router_error.as_deref() != router_error {
            return Err(format!("expected {status} with X-Cf-Routererror {router_error:?}"));
        }
        Ok(())
    };
    match want {
        Want::Refused(status) => refused(status, None),
        Want::RefusedBy(status, router_error) => refused(status, Some(router_error)),
        Want::Abandoned(status, router_error) => {
            if outcome.statuses != [status] || outcome.router_error.as_deref() != Some(router_error) {
                return Err(format!("expected {status} with X-Cf-Routererror {router_error:?}"));
            }
            if outcome.forwarded.iter().any(|m| m.complete) || outcome.recorded.iter().any(|r| r.body_error.is_none()) {
                return Err("the backend received a whole request from a body that went bad".to_owned());
            }
            Ok(())
        }
        Want::Forwarded(sent) => {
            forwarded_as(sent)?;
            if outcome.ending != Ending::Open {
                return Err("a well-formed request closed the connection".to_owned());
            }
            Ok(())
        }
        Want::ForwardedThenClosed(sent) => {
            forwarded_as(sent)?;
            if outcome.ending == Ending::Open {
                return Err("the connection stayed open after a request with suspicious framing".to_owned());
            }
            Ok(())
        }
    }
}

async fn routed_router() -> (NatsServer, RouterProcess, TestBackend) {
    let backend = TestBackend::start("app").await;
    let nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[]);
    let client = nats.client().await;
    publish(&client, "router.register", &registration(backend.port(), &[HOST])).await;
    assert!(router.wait_for_status(HOST, "/", 200, Duration::from_secs(10)).await, "the route never became routable");
    (nats, router, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http_is_refused_or_forwarded_unambiguously() {
    let (_nats, mut router, backend) = routed_router().await;
    let vectors = corpus(backend.port());
    let mut failures = Vec::new();
    for vector in &vectors {
        let verdict = match send_vector(&router, &backend, &vector.bytes).await {
            Ok(outcome) => {
                let verdict = check_invariants(&outcome).and_then(|()| check_want(vector.want, &outcome));
                println!("{:<28} {:<6} {}", vector.name, if verdict.is_ok() { "ok" } else { "WRONG" }, outcome.summary());
                verdict
            }
            Err(err) => {
                println!("{:<28} WRONG  {err}", vector.name);
                Err(err)
            }
        };
        if let Err(err) = verdict {
            failures.push(format!("{}: {err} (wanted {:?})", vector.name, vector.want));
        }
    }
    assert!(router.service.is_running(), "the router died during the corpus:\n{}", router.service.log());
    assert_eq!(router.get(HOST, "/after").await.status, 200, "the route still works after the corpus");
    // A client's bad body is the client's fault: no vector may count against the backend.
    let metrics = router.metrics().await;
    let blamed: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_router_bad_gateways_total") || l.starts_with("switchyard_router_backend_errors_total"))
        .filter(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v > 0.0))
        .collect();
    assert!(blamed.is_empty(), "hostile clients were counted as backend failures: {blamed:?}");
    assert!(failures.is_empty(), "{} of {} vectors were handled wrongly:\n{}", failures.len(), vectors.len(), failures.join("\n"));
}

/// Sends `request` on its own connection and returns the router's (first) answer.
async fn answer_to(router: &RouterProcess, name: &str, request: &str) -> wire::Message {
    let exchange = raw_exchange(router.addr(), request.as_bytes(), Duration::from_secs(20), Duration::from_millis(300)).await;
    let responses = exchange.responses().unwrap_or_else(|e| panic!("{name}: the answer is not plain HTTP/1.1: {e}"));
    let answer = responses.into_iter().next().unwrap_or_else(|| panic!("{name}: no answer ({:?})", exchange.ending));
    println!("{name:<48} {} ({})", answer.status().unwrap_or(0), answer.header("x-cf-routererror").unwrap_or("-"));
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_is_not_an_open_proxy() {
    let app = TestBackend::start("app").await;
    let other = TestBackend::start("other").await;
    // Live on loopback but registered nowhere: the router must never connect to it, whatever a request names.
    let bystander = TestBackend::start("bystander").await;
    let nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[]);
    let client = nats.client().await;
    publish(&client, "router.register", &registration(app.port(), &["app.example.com"])).await;
    publish(&client, "router.register", &registration(other.port(), &["other.example.com"])).await;
    for host in ["app.example.com", "other.example.com"] {
        assert!(router.wait_for_status(host, "/", 200, Duration::from_secs(10)).await, "{host} never became routable");
    }
    let backends = [&app, &other, &bystander];
    let seen = || backends.map(|b| (b.count(), b.wire_mark()));
    let by = bystander.port();
    // The router routes an absolute-form target by its authority (RFC 9112, 3.2.2) and ignores the Host beside
    // it, so each of these names a route that does not exist, whatever its Host says. The last column is the
    // route the 404 quotes, which shows which name was looked up.
    let refused = [
        ("authority unregistered, Host registered", format!("GET http://{UNREGISTERED}/x HTTP/1.1\r\nHost: app.example.com\r\n\r\n"), format!("{UNREGISTERED}/x")),
        ("https authority unregistered", format!("GET https://{UNREGISTERED}/x HTTP/1.1\r\nHost: app.example.com\r\n\r\n"), format!("{UNREGISTERED}/x")),
        ("authority unregistered, no Host", format!("GET http://{UNREGISTERED}/x HTTP/1.1\r\n\r\n"), format!("{UNREGISTERED}/x")),
        ("Host unregistered", format!("GET /x HTTP/1.1\r\nHost: {UNREGISTERED}\r\n\r\n"), format!("{UNREGISTERED}/x")),
        ("authority a live loopback server", format!("GET http://127.0.0.1:{by}/x HTTP/1.1\r\nHost: app.example.com\r\n\r\n"), format!("127.0.0.1:{by}/x")),
        ("Host a live loopback server", format!("GET /x HTTP/1.1\r\nHost: 127.0.0.1:{by}\r\n\r\n"), format!("127.0.0.1:{by}/x")),
        ("userinfo naming a route, then loopback", format!("GET http://app.example.com@127.0.0.1:{by}/x HTTP/1.1\r\nHost: app.example.com\r\n\r\n"), format!("app.example.com@127.0.0.1:{by}/x")),
    ];
    for (name, request, route) in &refused {
        let before = seen();
        let answer = answer_to(&router, name, request).await;
        assert_eq!((answer.status(), answer.header("x-cf-routererror")), (Some(404), Some("unknown_route")), "{name}");
        assert_eq!(String::from_utf8_lossy(&answer.body), format!("404 Not Found: Requested route ('{route}') does not exist.\n"), "{name}");
        settle(&bystander).await;
        assert_eq!(seen(), before, "{name}: a refused request reached a backend");
    }
    // CONNECT is refused before any lookup, whatever it names.
    let before = seen();
    let connect = answer_to(&router, "CONNECT to a live loopback server", &format!("CONNECT 127.0.0.1:{by} HTTP/1.1\r\nHost: 127.0.0.1:{by}\r\n\r\n")).await;
    assert_eq!((connect.status(), connect.header("x-cf-routererror")), (Some(405), Some("unsupported_method")));
    settle(&bystander).await;
    assert_eq!(seen(), before, "CONNECT reached a backend");

    // Routed by the authority: the backend it names answers, in origin form, and sees that name as its Host,
    // never the Host the client sent beside it.
    for (authority, host, backend) in [("app.example.com", UNREGISTERED, &app), ("other.example.com", "app.example.com", &other)] {
        let name = format!("authority {authority}, Host {host}");
        let before = backend.count();
        let answer = answer_to(&router, &name, &format!("GET http://{authority}/by-authority?q=1 HTTP/1.1\r\nHost: {host}\r\n\r\n")).await;
        assert_eq!(answer.status(), Some(200), "{name}");
        settle(backend).await;
        let requests = backend.requests();
        let [received] = requests.get(before..).unwrap_or_default() else { panic!("{name}: {} requests reached {authority}", requests.len() - before) };
        assert_eq!(received.uri, "/by-authority?q=1", "{name}: forwarded in origin form");
        assert_eq!(received.header_all("host"), [authority], "{name}: the backend sees the name the request was routed by");
    }
    assert_eq!(bystander.wire_mark(), 0, "the router sent bytes to a server no route names");
}

/// Reads a `switchyard_router_rejected_messages_total` sample (0 when the label set has not appeared yet).
fn rejected(metrics: &str, subject: &str, reason: &str) -> f64 {
    metric_value(metrics, &format!("switchyard_router_rejected_messages_total{{reason=\"{reason}\",subject=\"{subject}\"}}")).unwrap_or(0.0)
}

/// One bad message and the reason it must be rejected with.
struct BadMessage {
    name: String,
    subject: &'static str,
    payload: Vec<u8>,
    reason: &'static str,
}

fn bad(name: impl Into<String>, payload: &serde_json::Value, reason: &'static str) -> BadMessage {
    BadMessage { name: name.into(), subject: "router.register", payload: serde_json::to_vec(payload).expect("JSON encodes"), reason }
}

/// Publishes each message and checks it was rejected for its reason, that the router still serves, that `good`
/// still answers (when given), and that `/routes` holds only `allowed` uris.
async fn reject_each(router: &mut RouterProcess, client: &async_nats::Client, messages: Vec<BadMessage>, good: Option<&str>, allowed: &[&str]) {
    for message in messages {
        let before = rejected(&router.metrics().await, message.subject, message.reason);
        client.publish(message.subject, message.payload.into()).await.expect("publish to NATS");
        client.flush().await.expect("flush NATS");
        let mut counted = false;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !counted && Instant::now() < deadline {
            let metrics = router.metrics().await;
            counted = rejected(&metrics, message.subject, message.reason) > before;
            if !counted {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let routes = router.routes().await;
        let uris: Vec<&String> = routes.as_object().map(|o| o.keys().collect()).unwrap_or_default();
        let routes_clean = uris.iter().all(|u| allowed.contains(&u.as_str()));
        let alive = router.service.is_running();
        let good_status = match good {
            Some(host) if alive => Some(router.get(host, "/").await.status.as_u16()),
            _ => None,
        };
        println!(
            "{:<44} {:<16} {} {}",
            message.name,
            message.subject,
            if counted { format!("rejected: {}", message.reason) } else { format!("NOT counted as {}", message.reason) },
            good_status.map(|s| format!("(good route: {s})")).unwrap_or_default()
        );
        assert!(alive, "the router died on {}:\n{}", message.name, router.service.log());
        assert!(counted, "{} was not counted as rejected with reason {}:\n{}", message.name, message.reason, router.metrics().await);
        assert!(routes_clean, "{} left an entry in /routes: {uris:?}", message.name);
        if good.is_some() {
            assert_eq!(good_status, Some(200), "the known-good route stopped answering after {}", message.name);
        }
    }
}

/// The same valid registration with one field replaced.
fn with_field(base: &serde_json::Value, field: &str, value: serde_json::Value) -> serde_json::Value {
    let mut message = base.clone();
    match field.split_once('.') {
        Some((outer, inner)) => message[outer][inner] = value,
        None => message[field] = value,
    }
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_are_rejected_counted_and_leave_the_table_alone() {
    let good = TestBackend::start("good").await;
    let nats = NatsServer::start();
    let mut router = RouterProcess::start(&nats, &[]);
    let client = nats.client().await;
    let good_registration = registration(good.port(), &["good.example.com"]);
    publish(&client, "router.register", &good_registration).await;
    assert!(router.wait_for_status("good.example.com", "/", 200, Duration::from_secs(10)).await);

    // Each message would be valid but for the one thing wrong with it, and names a uri of its own, so an
    // accepted one would show in /routes.
    let base = |n: usize| serde_json::json!({"host": "127.0.0.1", "port": good.port(), "uris": [format!("bad-{n}.example.com")]});
    let controls = [("crlf", "\r\nSet-Cookie: stolen=1"), ("lf", "\nX-Injected: 1"), ("cr", "\r"), ("nul", "\0"), ("esc", "\u{1b}[2J"), ("del", "\u{7f}"), ("nel", "\u{85}")];
    let fields = [
        ("host", "control_character"),
        ("uris", "invalid_uri"),
        ("app", "control_character"),
        ("private_instance_id", "control_character"),
        ("private_instance_index", "control_character"),
        ("server_cert_domain_san", "control_character"),
        ("route_service_url", "control_character"),
        ("isolation_segment", "control_character"),
        ("availability_zone", "control_character"),
        ("protocol", "control_character"),
        ("tags.component", "control_character"),
        ("options.lb_algo", "control_character"),
        ("options.loadbalancing", "control_character"),
        ("options.hash_header", "control_character"),
    ];
    let mut messages = Vec::new();
    for (field, reason) in fields {
        for (control_name, control) in controls {
            let n = messages.len();
            let value = match field {
                "host" => serde_json::json!(format!("127.0.0.1{control}")),
                "uris" => serde_json::json!([format!("bad-{n}.example.com/{control}")]),
                "route_service_url" => serde_json::json!(format!("https://rs.example.com/{control}")),
                "protocol" => serde_json::json!(format!("http1{control}")),
                _ => serde_json::json!(format!("value{control}")),
            };
            messages.push(bad(format!("{field} with {control_name}"), &with_field(&base(n), field, value), reason));
        }
    }
    let mut tag_key = base(messages.len());
    tag_key["tags"] = serde_json::json!({"comp\r\nonent": "web"});
    messages.push(bad("tags key with crlf", &tag_key, "control_character"));
    for (name, host, reason) in [
        ("host not a name", "not a host!", "invalid_host"),
        ("host with a port", "127.0.0.1:8080", "invalid_host"),
        ("host as a URL", "http://127.0.0.1/", "invalid_host"),
        ("host with an empty label", "cell..example.com", "invalid_host"),
        ("host over 253 bytes", &format!("{}.example.com", "a".repeat(250)), "invalid_host"),
        ("host empty", "", "missing_host"),
        ("host short-form IPv4", "127.1", "invalid_host"),
        ("host decimal IPv4", "2130706433", "invalid_host"),
        ("host hexadecimal IPv4", "0x7f000001", "invalid_host"),
        ("host octal IPv4", "0177.0.0.1", "invalid_host"),
        ("host multicast", "224.0.0.1", "invalid_host"),
        ("host multicast SSDP", "239.255.255.250", "invalid_host"),
        ("host multicast IPv6", "ff02::1", "invalid_host"),
        ("host multicast mapped", "::ffff:224.0.0.1", "invalid_host"),
        ("host multicast short form", "224.1", "invalid_host"),
        ("host broadcast", "255.255.255.255", "invalid_host"),
        ("host broadcast mapped", "::ffff:255.255.255.255", "invalid_host"),
        ("host broadcast decimal", "4294967295", "invalid_host"),
        ("host unspecified", "0.0.0.0", "invalid_host"),
        ("host unspecified IPv6", "::", "invalid_host"),
        ("host unspecified mapped", "::ffff:0.0.0.0", "invalid_host"),
        ("host unspecified short form", "0", "invalid_host"),
    ] {
        let n = messages.len();
        messages.push(bad(name, &with_field(&base(n), "host", serde_json::json!(host)), reason));
    }
    let n = messages.len();
    messages.push(bad("port 0", &with_field(&base(n), "port", serde_json::json!(0)), "missing_port"));
    let mut both_zero = base(n + 1);
    both_zero["port"] = serde_json::json!(0);
    both_zero["tls_port"] = serde_json::json!(0);
    messages.push(bad("port 0 and tls_port 0", &both_zero, "missing_port"));
    messages.push(bad("port -1", &with_field(&base(n + 2), "port", serde_json::json!(-1)), "malformed"));
    messages.push(bad("port 65536", &with_field(&base(n + 3), "port", serde_json::json!(65536)), "malformed"));
    let many: Vec<String> = (0..10_000).map(|i| format!("many-{i}.example.com")).collect();
    messages.push(bad("10k uris", &with_field(&base(0), "uris", serde_json::json!(many)), "too_many_uris"));
    // Valid JSON, a real registration, just too big: over the 256 KiB default, and at NATS's own 1 MiB cap.
    for (name, size) in [("payload of 256 KiB + 1", 256 * 1024 + 1), ("payload of 1 MiB", 1024 * 1024)] {
        let mut message = base(messages.len());
        message["padding"] = serde_json::json!("");
        let overhead = serde_json::to_vec(&message).expect("JSON encodes").len();
        message["padding"] = serde_json::json!("p".repeat(size - overhead));
        let payload = serde_json::to_vec(&message).expect("JSON encodes");
        assert_eq!(payload.len(), size);
        messages.push(BadMessage { name: name.to_owned(), subject: "router.register", payload, reason: "too_large" });
    }
    // A withdrawal of the good endpoint carrying a bad field is refused as a whole: the good route stays.
    let mut withdrawal = good_registration.clone();
    withdrawal["app"] = serde_json::json!("app\r\nX-Injected: 1");
    messages.push(BadMessage { name: "unregister of the good route with crlf".to_owned(), subject: "router.unregister", payload: serde_json::to_vec(&withdrawal).expect("JSON encodes"), reason: "control_character" });

    let count = messages.len();
    reject_each(&mut router, &client, messages, Some("good.example.com"), &["good.example.com"]).await;
    // A well-formed DNS name is a valid backend host in gorouter's protocol, so it is accepted; it is resolved
    // only when a request is sent to it, which this test never does (and `.invalid` never resolves).
    publish(&client, "router.register", &serde_json::json!({"host": "cell-7.invalid", "port": 8080, "uris": ["named.example.com"]})).await;
    assert!(router.routes_eventually_have("named.example.com").await, "a DNS-name host was refused");
    // After all of them, a fresh good registration still takes.
    publish(&client, "router.register", &registration(good.port(), &["after.example.com"])).await;
    assert!(router.wait_for_status("after.example.com", "/", 200, Duration::from_secs(10)).await, "the table took no new route after {count} bad messages");
    assert_eq!(router.get("good.example.com", "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_backends_are_refused_when_the_config_says_so() {
    let nats = NatsServer::start();
    let nats_config = format!("{{hosts: [{{hostname: 127.0.0.1, port: {}}}], allow_loopback_backends: false}}", nats.port());
    let mut router = RouterProcess::start(&nats, &[("nats", &nats_config)]);
    let client = nats.client().await;
    // A route this router accepts, to a TEST-NET-1 address (RFC 5737) that nothing here ever sends a request to:
    // it only has to stay in the table.
    let test_net = serde_json::json!({"host": "192.0.2.10", "port": 8080, "uris": ["good.example.com"]});
    publish(&client, "router.register", &test_net).await;
    assert!(router.routes_eventually_have("good.example.com").await, "the non-loopback route was not accepted");
    let mut messages = Vec::new();
    for host in ["127.0.0.1", "127.255.255.254", "::1", "::ffff:127.0.0.1", "localhost", "LOCALHOST", "app.localhost", "127.1", "2130706433", "0x7f000001"] {
        let message = serde_json::json!({"host": host, "port": 8080, "uris": [format!("loopback-{}.example.com", messages.len())]});
        messages.push(bad(format!("loopback host {host}"), &message, "invalid_host"));
    }
    reject_each(&mut router, &client, messages, None, &["good.example.com"]).await;
    // Still serving: the table kept its route, health is good, and the proxy answers (404 for a name it lacks;
    // nothing is dialled).
    assert!(router.routes().await.get("good.example.com").is_some(), "the accepted route is gone");
    assert_eq!(switchyard_tests::router::status_code(router.status_addr(), "/health"), Some(200));
    assert_eq!(router.get(UNREGISTERED, "/").await.status, 404);
    assert!(router.service.is_running(), "the router is still running");
}
