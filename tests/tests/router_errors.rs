//! The router's own answers, on the wire: statuses, `X-Cf-Routererror` values and bodies as gorouter sends them.

use std::time::Duration;
use switchyard_tests::backend::Reply;
use switchyard_tests::http::{self, raw, raw_status};
use switchyard_tests::{NatsServer, RouterProcess, TestBackend, publish, registration};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_gets_404_with_the_gorouter_body() {
    let nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[]);
    let answer = router.get("nope.example.com", "/some/path?q=1").await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.header("x-cf-routererror").as_deref(), Some("unknown_route"));
    assert_eq!(answer.header("cache-control").as_deref(), Some("no-cache, no-store"));
    assert_eq!(answer.text(), "404 Not Found: Requested route ('nope.example.com/some/path') does not exist.\n");
    let logged = switchyard_tests::wait_until(Duration::from_secs(3), || router.access_log().contains("x_cf_routererror:\"unknown_route\""));
    assert!(logged, "access log: {}", router.access_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_request_without_host_gets_400_empty_host() {
    let nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[]);
    let response = raw(router.addr(), b"GET / HTTP/1.0\r\n\r\n", Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&response);
    assert_eq!(raw_status(&response), Some(400), "{text}");
    assert!(text.to_ascii_lowercase().contains("x-cf-routererror: empty_host"), "{text}");
    assert!(text.ends_with("400 Bad Request: Request had empty Host header\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emptied_pool_gets_503_no_endpoints_when_configured_and_404_otherwise() {
    let nats = NatsServer::start();
    let backend = TestBackend::start("app").await;
    let client = nats.client().await;
    let keep = RouterProcess::start(&nats, &[("empty_pool_response_code_503", "true"), ("empty_pool_timeout", "30s")]);
    let plain = RouterProcess::start(&nats, &[]);
    publish(&client, "router.register", &registration(backend.port(), &["app.example.com"])).await;
    for router in [&keep, &plain] {
        assert!(router.wait_for_status("app.example.com", "/", 200, Duration::from_secs(5)).await);
    }
    publish(&client, "router.unregister", &registration(backend.port(), &["app.example.com"])).await;
    assert!(keep.wait_for_status("app.example.com", "/", 503, Duration::from_secs(5)).await);
    let answer = keep.get("app.example.com", "/x").await;
    assert_eq!(answer.header("x-cf-routererror").as_deref(), Some("no_endpoints"));
    assert!(plain.wait_for_status("app.example.com", "/", 404, Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoint_gets_502_endpoint_failure() {
    let nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[]);
    let client = nats.client().await;
    let dead_port = switchyard_tests::free_port();
    publish(&client, "router.register", &registration(dead_port, &["dead.example.com"])).await;
    assert!(router.wait_for_status("dead.example.com", "/", 502, Duration::from_secs(5)).await);
    let answer = router.get("dead.example.com", "/").await;
    let reason = answer.header("x-cf-routererror").unwrap_or_default();
    assert!(reason.starts_with("endpoint_failure (") && reason.contains("dial"), "{reason}");
    assert_eq!(answer.text(), "502 Bad Gateway: Registered endpoint failed to handle the request.\n");
    assert!(router.wait_metric("switchyard_router_bad_gateways_total", 1.0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_head_gets_431() {
    let nats = NatsServer::start();
    let backend = TestBackend::start("app").await;
    let router = RouterProcess::start(&nats, &[("max_header_bytes", "4096")]);
    let client = nats.client().await;
    publish(&client, "router.register", &registration(backend.port(), &["app.example.com"])).await;
    assert!(router.wait_for_status("app.example.com", "/", 200, Duration::from_secs(5)).await);
    let big = "x".repeat(8000);
    let answer = http::get_with(router.addr(), "app.example.com", "/", &[("x-big", &big)]).await;
    assert_eq!(answer.status, 431);
    assert_eq!(answer.header("x-cf-routererror").as_deref(), Some("max-request-size-exceeded"));
    assert!(answer.body.is_empty());
    assert_eq!(backend.count(), 1, "the oversized request never reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_at_max_conns_get_503_connection_limit() {
    let nats = NatsServer::start();
    let backend = TestBackend::start_with(|_| Reply::ok("slow").delay(Duration::from_millis(1500))).await;
    let router = RouterProcess::start(&nats, &[("backends", "{max_conns: 1}")]);
    let client = nats.client().await;
    publish(&client, "router.register", &registration(backend.port(), &["app.example.com"])).await;
    assert!(router.routes_eventually_have("app.example.com").await);
    let addr = router.addr();
    let first = tokio::spawn(async move { http::get(addr, "app.example.com", "/").await });
    assert!(switchyard_tests::wait_until(Duration::from_secs(5), || backend.count() == 1));
    let second = router.get("app.example.com", "/").await;
    assert_eq!(second.status, 503);
    assert_eq!(second.header("x-cf-routererror").as_deref(), Some("Connection Limit Reached"));
    assert_eq!(first.await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_targeting_errors() {
    let nats = NatsServer::start();
    let backend = TestBackend::start("app").await;
    let router = RouterProcess::start(&nats, &[]);
    let client = nats.client().await;
    let mut message = registration(backend.port(), &["app.example.com"]);
    message["app"] = "app-guid".into();
    message["private_instance_index"] = "0".into();
    publish(&client, "router.register", &message).await;
    assert!(router.wait_for_status("app.example.com", "/", 200, Duration::from_secs(5)).await);

    let bad = http::get_with(router.addr(), "app.example.com", "/", &[("x-cf-app-instance", "not-valid")]).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.header("x-cf-routererror").as_deref(), Some("invalid_cf_app_instance_header"));

    let unknown = http::get_with(router.addr(), "app.example.com", "/", &[("x-cf-app-instance", "app-guid:7")]).await;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.header("x-cf-routererror").as_deref(), Some("unknown_route"));

    let good = http::get_with(router.addr(), "app.example.com", "/", &[("x-cf-app-instance", "app-guid:0")]).await;
    assert_eq!(good.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_is_logged_as_499() {
    let nats = NatsServer::start();
    let backend = TestBackend::start_with(|_| Reply::ok("late").delay(Duration::from_secs(2))).await;
    let router = RouterProcess::start(&nats, &[]);
    let client = nats.client().await;
    publish(&client, "router.register", &registration(backend.port(), &["slow.example.com"])).await;
    assert!(router.routes_eventually_have("slow.example.com").await);
    // Send a request and hang up before the backend answers.
    let _ = raw(router.addr(), b"GET /wait HTTP/1.1\r\nHost: slow.example.com\r\n\r\n", Duration::from_millis(300)).await;
    let logged = switchyard_tests::wait_until(Duration::from_secs(5), || router.access_log().contains("\"GET /wait HTTP/1.1\" 499"));
    assert!(logged, "access log: {}", router.access_log());
}

/// Asks `host` for `/`, expects a 502, and returns its `X-Cf-Routererror` and how long the answer took.
async fn timed_502(router: &RouterProcess, host: &str) -> (String, Duration) {
    let started = std::time::Instant::now();
    let answer = router.get(host, "/").await;
    let waited = started.elapsed();
    assert_eq!(answer.status, 502, "{host}");
    (answer.header("x-cf-routererror").unwrap_or_default(), waited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_slower_than_endpoint_timeout_gets_502_after_the_timeout() {
    let nats = NatsServer::start();
    let backend = TestBackend::start_with(|_| Reply::ok("late").delay(Duration::from_secs(3))).await;
    let router = RouterProcess::start(&nats, &[("endpoint_timeout", "500ms")]);
    publish(&nats.client().await, "router.register", &registration(backend.port(), &["slow.example.com"])).await;
    assert!(router.wait_for_status("slow.example.com", "/", 502, Duration::from_secs(10)).await);
    let (reason, waited) = timed_502(&router, "slow.example.com").await;
    assert!(reason.starts_with("endpoint_failure (") && reason.contains("timeout"), "{reason}");
    assert!(waited >= Duration::from_millis(450) && waited < Duration::from_secs(2), "answered after {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_accepts_gets_502_after_the_dial_timeout() {
    // A listener whose accept queue is full drops further SYNs, so a connect to it hangs until the dialler gives
    // up, as it does for a backend host that has vanished from the network.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind");
    socket.listen(0).expect("listen");
    let port = socket.local_addr().ok().and_then(|a| a.as_socket()).map(|a| a.port()).expect("port");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(300), tokio::net::TcpStream::connect(("127.0.0.1", port))).await {
            fillers.push(stream);
        }
    }
    let nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[("endpoint_dial_timeout", "400ms"), ("endpoint_timeout", "20s")]);
    publish(&nats.client().await, "router.register", &registration(port, &["unreachable.example.com"])).await;
    assert!(router.wait_for_status("unreachable.example.com", "/", 502, Duration::from_secs(10)).await);
    let (reason, waited) = timed_502(&router, "unreachable.example.com").await;
    assert!(reason.contains("dial") && reason.contains("timed out"), "{reason}");
    assert!(waited >= Duration::from_millis(350) && waited < Duration::from_secs(3), "answered after {waited:?}");
    drop(fillers);
}
