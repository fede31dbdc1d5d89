//! HTTP/2 through the real router binary: clients get h2 by ALPN (with `:authority` routing like Host), fall back
//! to HTTP/1.1 when h2 is off, and backends registered with `protocol: http2` are reached over h2 (h2c, or ALPN on
//! TLS) so that gRPC-style exchanges, trailers included, pass end to end.

// Helpers outside #[test] functions may panic too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use bytes::Bytes;
use hyper::{Method, Version};
use switchyard_tests::backend::{Reply, Transport};
use switchyard_tests::tls::{self, Call, TestCa, client_config, yaml_string};
use switchyard_tests::{NatsServer, RouterProcess, TestBackend, free_port, publish, registration};

const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

struct Edge {
    _nats: NatsServer,
    router: RouterProcess,
    bus: async_nats::Client,
    ca: TestCa,
}

async fn edge(overrides: &[(&str, &str)]) -> Edge {
    let ca = TestCa::new("edge-ca");
    let cert = ca.issue(&["*.example.com"]);
    let nats = NatsServer::start();
    let ssl_port = free_port().to_string();
    let pem = format!("[{{{}}}]", cert.yaml_pair());
    let mut all: Vec<(&str, &str)> = vec![("enable_ssl", "true"), ("ssl_port", &ssl_port), ("tls_pem", &pem)];
    all.extend_from_slice(overrides);
    let router = RouterProcess::start(&nats, &all);
    let bus = nats.client().await;
    Edge { _nats: nats, router, bus, ca }
}

impl Edge {
    async fn register(&self, message: serde_json::Value, uri: &str) {
        publish(&self.bus, "router.register", &message).await;
        assert!(self.router.routes_eventually_have(uri).await, "route {uri} never appeared");
    }

    async fn send(&self, call: Call<'_>) -> tls::TlsAnswer {
        let host = call.host.to_owned();
        tls::send(self.router.tls_addr(), &host, client_config(&self.ca, None, ALPN), call).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_gets_h2_with_the_same_routing_and_headers() {
    let edge = edge(&[]).await;
    let root = TestBackend::start_with(|_| Reply::ok("root").header("set-cookie", "JSESSIONID=abc").header("connection", "close")).await;
    let api = TestBackend::start("api").await;
    let mut message = registration(root.port(), &["app.example.com"]);
    message["private_instance_id"] = "root-0".into();
    edge.register(message, "app.example.com").await;
    edge.register(registration(api.port(), &["app.example.com/api"]), "app.example.com/api").await;

    let answer = edge.send(Call { method: Method::GET, host: "app.example.com", path: "/api/users?id=7", headers: &[], body: Bytes::new() }).await;
    assert_eq!(answer.version, Version::HTTP_2, "ALPN chose h2");
    assert_eq!((answer.answer.status.as_u16(), answer.answer.text()), (200, "api".to_owned()));
    let seen = api.requests().pop().unwrap();
    assert_eq!(seen.version, Version::HTTP_11, "an http1 backend gets HTTP/1.1");
    assert_eq!(seen.uri, "/api/users?id=7");
    assert_eq!(seen.header("host").as_deref(), Some("app.example.com"), ":authority becomes Host");
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("https"));
    assert!(seen.header("x-forwarded-for").is_some());
    assert_eq!(answer.answer.header("x-vcap-request-id"), seen.header("x-vcap-request-id"));

    // Sticky cookies, and the backend's hop-by-hop headers do not leak into h2.
    let answer = edge.send(Call { method: Method::GET, host: "app.example.com", path: "/", headers: &[], body: Bytes::new() }).await;
    assert_eq!(answer.answer.text(), "root");
    assert!(answer.answer.header("connection").is_none());
    assert!(answer.answer.header_all("set-cookie").iter().any(|c| c.starts_with("__VCAP_ID__=root-0;")), "{:?}", answer.answer.headers);

    // Router errors read the same over h2.
    let answer = edge.send(Call { method: Method::GET, host: "missing.example.com", path: "/x", headers: &[], body: Bytes::new() }).await;
    assert_eq!(answer.answer.status, 404);
    assert_eq!(answer.answer.text(), "404 Not Found: Requested route ('missing.example.com/x') does not exist.\n");

    // POST bodies pass intact.
    let echo = TestBackend::echo().await;
    edge.register(registration(echo.port(), &["echo.example.com"]), "echo.example.com").await;
    let body = Bytes::from(vec![b'x'; 200_000]);
    let answer = edge.send(Call { method: Method::POST, host: "echo.example.com", path: "/", headers: &[], body: body.clone() }).await;
    assert_eq!(answer.answer.body, body);
    let mut log = String::new();
    for _ in 0..100 {
        log = edge.router.access_log();
        if log.lines().count() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(log.contains("\"GET /api/users?id=7 HTTP/2.0\""), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_http2_off_clients_fall_back_to_http1() {
    let edge = edge(&[("enable_http2", "false")]).await;
    let backend = TestBackend::start("app").await;
    edge.register(registration(backend.port(), &["app.example.com"]), "app.example.com").await;
    let answer = edge.send(Call { method: Method::GET, host: "app.example.com", path: "/", headers: &[], body: Bytes::new() }).await;
    assert_eq!(answer.version, Version::HTTP_11);
    assert_eq!(answer.answer.text(), "app");
}

/// A gRPC-style backend: answers a POST with a framed message and `grpc-status` trailers, and says what it saw.
fn grpc_reply(request: &switchyard_tests::Recorded) -> Reply {
    let te = request.header("te").unwrap_or_default();
    let mut message = vec![0u8, 0, 0, 0, 5];
    message.extend_from_slice(b"hello");
    Reply::ok(message)
        .header("content-type", "application/grpc")
        .header("x-seen-version", &format!("{:?}", request.version))
        .header("x-seen-te", &te)
        .trailer("grpc-status", "0")
        .trailer("grpc-message", "ok")
}

async fn grpc_call(edge: &Edge, host: &str) -> tls::TlsAnswer {
    let request = Bytes::from_static(&[0, 0, 0, 0, 2, b'h', b'i']);
    let headers = [("content-type", "application/grpc"), ("te", "trailers")];
    edge.send(Call { method: Method::POST, host, path: "/helloworld.Greeter/SayHello", headers: &headers, body: request }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_style_calls_round_trip_with_trailers_over_h2c_and_tls_backends() {
    let backend_ca = TestCa::new("backend-ca");
    let edge = edge(&[("ca_certs", &yaml_string(backend_ca.pem()))]).await;

    let h2c = TestBackend::start_speaking(Transport::H2c, grpc_reply).await;
    let mut message = registration(h2c.port(), &["grpc.example.com"]);
    message["protocol"] = "http2".into();
    edge.register(message, "grpc.example.com").await;

    let backend_cert = backend_ca.issue(&["grpc.internal"]);
    let tls_h2 = TestBackend::start_speaking(Transport::Tls(backend_cert.server_config(&[b"h2"], None)), grpc_reply).await;
    let message = serde_json::json!({
        "host": "127.0.0.1", "tls_port": tls_h2.port(), "uris": ["grpcs.example.com"],
        "server_cert_domain_san": "grpc.internal", "protocol": "http2"
    });
    edge.register(message, "grpcs.example.com").await;

    for (host, backend) in [("grpc.example.com", &h2c), ("grpcs.example.com", &tls_h2)] {
        for _ in 0..3 {
            let answer = grpc_call(&edge, host).await;
            let a = &answer.answer;
            assert_eq!((a.status.as_u16(), answer.version), (200, Version::HTTP_2), "{host}");
            assert_eq!(&a.body[..], &[0, 0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o'], "{host}");
            assert_eq!(a.header("x-seen-version").as_deref(), Some("HTTP/2.0"), "{host}: the backend is reached over h2");
            assert_eq!(a.header("x-seen-te").as_deref(), Some("trailers"), "{host}: gRPC's te: trailers reaches the backend");
            assert_eq!(a.header("trailer-grpc-status").as_deref(), Some("0"), "{host}: trailers come back: {:?}", a.headers);
            assert_eq!(a.header("trailer-grpc-message").as_deref(), Some("ok"));
        }
        let seen = backend.requests();
        assert_eq!(seen.len(), 3);
        assert_eq!(&seen[0].body[..], &[0, 0, 0, 0, 2, b'h', b'i']);
        assert_eq!(seen[0].header("content-type").as_deref(), Some("application/grpc"));
        let peers: std::collections::HashSet<_> = seen.iter().map(|r| r.peer).collect();
        assert!(peers.len() <= 2, "{host}: one shared h2 connection per worker, not one per call: {peers:?}");
    }

    // A plain HTTP/1.1 client reaches the h2c backend too.
    let answer = edge.router.get("grpc.example.com", "/").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-seen-version").as_deref(), Some("HTTP/2.0"));
}
