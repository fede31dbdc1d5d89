//! Route services through the real router binary: a route bound to an https route service sends first-time
//! requests there with a signature; the service calls the forwarded URL back; the router lets a good, recent
//! signature for the same route through to the app and refuses the rest (tampered 502, expired 504, another
//! route's 502). Without a secret, bound routes are refused rather than served around the service.

// Helpers outside #[test] functions may panic too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_tests::http::{self, Answer};
use switchyard_tests::tls::{TestCa, yaml_string};
use switchyard_tests::{NatsServer, RouterProcess, TestBackend, publish, registration};
use tokio::net::TcpListener;

const SIGNATURE: &str = "x-cf-proxy-signature";
const METADATA: &str = "x-cf-proxy-metadata";
const FORWARDED_URL: &str = "x-cf-forwarded-url";

/// What the route service saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    uri: String,
    headers: hyper::HeaderMap,
}

impl Seen {
    fn header(&self, name: &str) -> String {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
    }
}

/// An https route service that checks nothing, marks the request, and calls the forwarded URL back through the
/// router (plain HTTP to `router`), returning what came back.
struct RouteService {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::AbortHandle,
}

impl Drop for RouteService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn call_back(request: Request<Incoming>, router: SocketAddr, seen: Arc<Mutex<Vec<Seen>>>) -> Response<Full<Bytes>> {
    let (parts, _) = request.into_parts();
    seen.lock().unwrap().push(Seen { uri: parts.uri.to_string(), headers: parts.headers.clone() });
    let forwarded: hyper::Uri = parts.headers[FORWARDED_URL].to_str().unwrap().parse().unwrap();
    let mut back = Request::builder()
        .method(parts.method)
        .uri(forwarded.path_and_query().map_or("/", |pq| pq.as_str()))
        .header("host", forwarded.host().unwrap())
        .header("x-checked-by", "route-service");
    for name in [SIGNATURE, METADATA, FORWARDED_URL] {
        back = back.header(name, parts.headers[name].clone());
    }
    let answer = http::send(router, back.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    let mut response = Response::new(Full::new(answer.body));
    *response.status_mut() = answer.status;
    response.headers_mut().insert("x-via", "route-service".parse().unwrap());
    if let Some(error) = answer.headers.get("x-cf-routererror") {
        response.headers_mut().insert("x-cf-routererror", error.clone());
    }
    response
}

impl RouteService {
    async fn start(cert: &switchyard_tests::tls::Issued, router: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = cert.server_config(&[b"http/1.1"], None);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let config = Arc::clone(&config);
                let seen = Arc::clone(&recorded);
                tokio::spawn(async move {
                    let Ok(tls) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await else { return };
                    let service = hyper::service::service_fn(move |request| {
                        let seen = Arc::clone(&seen);
                        async move { Ok::<_, Infallible>(call_back(request, router, seen).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
                });
            }
        });
        Self { addr, seen, task: task.abort_handle() }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("the route service saw a request")
    }
}

struct Bound {
    _nats: NatsServer,
    router: RouterProcess,
    bus: async_nats::Client,
    app: TestBackend,
}

async fn bound_router(overrides: &[(&str, &str)]) -> (Bound, TestCa) {
    let ca = TestCa::new("route-service-ca");
    let nats = NatsServer::start();
    let trust = yaml_string(ca.pem());
    let mut all = vec![("ca_certs", trust.as_str()), ("route_services_recommend_https", "false")];
    all.extend_from_slice(overrides);
    let router = RouterProcess::start(&nats, &all);
    let bus = nats.client().await;
    let app = TestBackend::start("app").await;
    (Bound { _nats: nats, router, bus, app }, ca)
}

impl Bound {
    async fn bind(&self, uri: &str, service_url: &str) {
        let mut message = registration(self.app.port(), &[uri]);
        message["route_service_url"] = service_url.into();
        publish(&self.bus, "router.register", &message).await;
        assert!(self.router.routes_eventually_have(uri).await, "route {uri} never appeared");
    }

    /// Sends a request straight to the router with the route-service headers of `seen` (a replay), optionally
    /// altered.
    async fn replay(&self, host: &str, path: &str, seen: &Seen, signature: &str) -> Answer {
        let headers = [(SIGNATURE, signature), (METADATA, &seen.header(METADATA)), (FORWARDED_URL, &seen.header(FORWARDED_URL))];
        http::get_with(self.router.addr(), host, path, &headers).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_service_round_trip_and_the_signatures_it_carries() {
    let (bound, ca) = bound_router(&[("route_services_secret", "correct horse"), ("route_services_timeout", "2s")]).await;
    let service = RouteService::start(&ca.issue(&["localhost"]), bound.router.addr()).await;
    bound.bind("app.example.com", &service.url("/auth?tenant=1")).await;
    bound.bind("other.example.com", &service.url("/auth")).await;

    // First visit: to the route service, then back through the router to the app.
    let answer = bound.router.get("app.example.com:8080", "/orders?id=7").await;
    assert_eq!((answer.status.as_u16(), answer.text()), (200, "app".to_owned()), "{answer:?}");
    assert_eq!(answer.header("x-via").as_deref(), Some("route-service"));
    let seen = service.last();
    assert_eq!(seen.uri, "/auth?tenant=1", "the route service is called at its own URL");
    assert_eq!(seen.header("host"), format!("localhost:{}", service.addr.port()));
    assert_eq!(seen.header(FORWARDED_URL), "http://app.example.com/orders?id=7");
    assert!(!seen.header(SIGNATURE).is_empty() && !seen.header(METADATA).is_empty());
    assert!(!seen.header("x-forwarded-for").is_empty(), "forwarding headers go to the route service as well");
    let at_app = bound.app.requests().pop().unwrap();
    assert_eq!(at_app.uri, "/orders?id=7");
    assert_eq!(at_app.header("x-checked-by").as_deref(), Some("route-service"));
    for name in [SIGNATURE, METADATA, FORWARDED_URL] {
        assert!(at_app.header(name).is_none(), "{name} must not reach the app");
    }
    assert_eq!(bound.app.count(), 1);

    // A fresh signature replayed directly goes to the app (it is a bearer token until it expires) ...
    let good = seen.header(SIGNATURE);
    let answer = bound.replay("app.example.com", "/orders?id=7", &seen, &good).await;
    assert_eq!((answer.status.as_u16(), answer.text()), (200, "app".to_owned()));
    assert!(answer.header("x-via").is_none());
    assert_eq!(bound.app.count(), 2);

    // ... but not to another route bound to the same service,
    let answer = bound.replay("other.example.com", "/", &seen, &good).await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.header("x-cf-routererror").as_deref(), Some("route_service_signature_invalid"));

    // nor when tampered with,
    let mut tampered: Vec<u8> = good.clone().into_bytes();
    tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
    let answer = bound.replay("app.example.com", "/orders?id=7", &seen, std::str::from_utf8(&tampered).unwrap()).await;
    assert_eq!((answer.status.as_u16(), answer.text()), (502, "502 Bad Gateway: Failed to validate Route Service Signature.\n".to_owned()));
    let answer = bound.replay("app.example.com", "/orders?id=7", &seen, "not-base64!").await;
    assert_eq!(answer.status, 502);

    // nor once route_services_timeout has passed.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let answer = bound.replay("app.example.com", "/orders?id=7", &seen, &good).await;
    assert_eq!(answer.status, 504);
    assert_eq!(answer.header("x-cf-routererror").as_deref(), Some("route_service_signature_expired"));
    assert_eq!(bound.app.count(), 2, "refused requests never reach the app");

    // WebSocket upgrades cannot go through a route service.
    let upgrade = [("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-version", "13"), ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")];
    let answer = http::get_with(bound.router.addr(), "app.example.com", "/", &upgrade).await;
    assert_eq!((answer.status.as_u16(), answer.header("x-cf-routererror")), (503, Some("route_service_unsupported".to_owned())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_from_a_rotated_out_secret_still_verify() {
    let (old, ca) = bound_router(&[("route_services_secret", "old secret")]).await;
    let service = RouteService::start(&ca.issue(&["localhost"]), old.router.addr()).await;
    old.bind("app.example.com", &service.url("/")).await;
    assert_eq!(old.router.get("app.example.com", "/").await.status, 200);
    let seen = service.last();

    let (rotated, _) = bound_router(&[("route_services_secret", "new secret"), ("route_services_secret_decrypt_only", "old secret")]).await;
    rotated.bind("app.example.com", &service.url("/")).await;
    let answer = rotated.replay("app.example.com", "/", &seen, &seen.header(SIGNATURE)).await;
    assert_eq!((answer.status.as_u16(), answer.text()), (200, "app".to_owned()));
    let (other, _) = bound_router(&[("route_services_secret", "new secret")]).await;
    other.bind("app.example.com", &service.url("/")).await;
    assert_eq!(other.replay("app.example.com", "/", &seen, &seen.header(SIGNATURE)).await.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_bound_routes_are_refused_not_bypassed() {
    let (bound, ca) = bound_router(&[]).await;
    let service = RouteService::start(&ca.issue(&["localhost"]), bound.router.addr()).await;
    bound.bind("app.example.com", &service.url("/")).await;
    let answer = bound.router.get("app.example.com", "/").await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.header("x-cf-routererror").as_deref(), Some("route_service_unsupported"));
    assert_eq!(answer.text(), "502 Bad Gateway: Support for route services is disabled.\n");
    assert_eq!(bound.app.count(), 0);
    assert!(service.seen.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_untrusted_route_service_is_a_bad_gateway() {
    let (bound, _) = bound_router(&[("route_services_secret", "s"), ("route_services", "{max_attempts: 2}")]).await;
    let stranger = TestCa::new("stranger");
    let service = RouteService::start(&stranger.issue(&["localhost"]), bound.router.addr()).await;
    bound.bind("untrusted.example.com", &service.url("/")).await;
    let answer = bound.router.get("untrusted.example.com", "/").await;
    assert_eq!(answer.status, 526, "{answer:?}");
    let closed = switchyard_tests::free_port();
    bound.bind("gone.example.com", &format!("https://127.0.0.1:{closed}/")).await;
    let answer = bound.router.get("gone.example.com", "/").await;
    assert_eq!(answer.status, 502);
    assert!(answer.header("x-cf-routererror").unwrap().starts_with("endpoint_failure (dial 127.0.0.1:"), "{answer:?}");
    assert_eq!(bound.app.count(), 0);
}
