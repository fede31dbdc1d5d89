//! What the router does to requests and responses on their way through: routing precedence, forwarded headers,
//! retries, sticky sessions, instance targeting, bodies of every shape, upgrades.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::Request;
use std::time::Duration;
use switchyard_tests::backend::{Reply, websocket_echo};
use switchyard_tests::http::{self, raw, raw_status};
use switchyard_tests::{NatsServer, RouterProcess, TestBackend, publish, registration};

async fn router_with(routes: &[(&TestBackend, &[&str])]) -> (NatsServer, RouterProcess) {
    let nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[]);
    let client = nats.client().await;
    for (backend, uris) in routes {
        publish(&client, "router.register", &registration(backend.port(), uris)).await;
    }
    for (_, uris) in routes {
        for uri in *uris {
            assert!(router.routes_eventually_have(&uri.to_lowercase()).await, "route {uri} never appeared");
        }
    }
    (nats, router)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_paths_and_wildcards_take_precedence_as_gorouter_does() {
    let root = TestBackend::start("root").await;
    let api = TestBackend::start("api").await;
    let api_v2 = TestBackend::start("api-v2").await;
    let wildcard = TestBackend::start("wildcard").await;
    let deep_wildcard = TestBackend::start("deep-wildcard").await;
    let (_nats, router) = router_with(&[
        (&root, &["app.example.com"]),
        (&api, &["app.example.com/api"]),
        (&api_v2, &["app.example.com/api/v2"]),
        (&wildcard, &["*.example.com"]),
        (&deep_wildcard, &["*.deep.example.com"]),
    ])
    .await;
    let cases = [
        ("app.example.com", "/", "root"),
        ("app.example.com", "/apis", "root"),
        ("app.example.com", "/api", "api"),
        ("APP.example.com:1234", "/API/users?x=1", "api"),
        ("app.example.com", "/api/v2/thing", "api-v2"),
        ("app.example.com", "/api/v3", "api"),
        ("other.example.com", "/api", "wildcard"),
        ("a.b.example.com", "/", "wildcard"),
        ("x.deep.example.com", "/", "deep-wildcard"),
        ("y.x.deep.example.com", "/", "deep-wildcard"),
    ];
    for (host, path, expected) in cases {
        let answer = router.get(host, path).await;
        assert_eq!((answer.status.as_u16(), answer.text()), (200, expected.to_owned()), "{host}{path}");
    }
    assert_eq!(router.get("example.com", "/").await.status, 404, "a wildcard does not cover its apex");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_reach_the_backend_and_hop_by_hop_ones_do_not() {
    let backend = TestBackend::start("ok").await;
    let nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[]);
    let client = nats.client().await;
    let mut message = registration(backend.port(), &["app.example.com"]);
    message["app"] = "guid-123".into();
    message["private_instance_id"] = "instance-abc".into();
    message["private_instance_index"] = "3".into();
    publish(&client, "router.register", &message).await;
    assert!(router.routes_eventually_have("app.example.com").await);

    let request = Request::get("/some/path?b=2&a=1")
        .header("host", "app.example.com")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("x-cf-applicationid", "spoofed")
        .header("x-vcap-request-id", "client-chosen")
        .header("referer", "https://ref.example.com/")
        .header("user-agent", "switchyard-test/1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = http::send(router.addr(), request).await.unwrap();
    assert_eq!(answer.status, 200);
    let seen = &backend.requests()[0];
    assert_eq!(seen.uri, "/some/path?b=2&a=1");
    assert_eq!(seen.header("host").as_deref(), Some("app.example.com"));
    assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("http"));
    let start: u128 = seen.header("x-request-start").unwrap().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    assert!(now - start < 10_000, "X-Request-Start is unix milliseconds");
    let request_id = seen.header("x-vcap-request-id").unwrap();
    assert_eq!(request_id.len(), 36);
    assert_ne!(request_id, "client-chosen");
    assert_eq!(answer.header("x-vcap-request-id").as_deref(), Some(request_id.as_str()), "echoed to the client");
    assert_eq!(seen.header("x-cf-applicationid").as_deref(), Some("guid-123"));
    assert_eq!(seen.header("x-cf-instanceindex").as_deref(), Some("3"));
    assert_eq!(seen.header("x-cf-instanceid").as_deref(), Some("instance-abc"));
    for hop in ["x-private", "keep-alive", "proxy-connection"] {
        assert!(seen.header(hop).is_none(), "{hop} must not be forwarded");
    }
    assert!(seen.header("connection").is_none_or(|c| !c.contains("x-private")));

    // The access log says what the backend was sent.
    let expected = [
        "app.example.com - [".to_owned(),
        "\"GET /some/path?b=2&a=1 HTTP/1.1\" 200 0 2 \"https://ref.example.com/\" \"switchyard-test/1\" \"127.0.0.1:".to_owned(),
        format!("\"127.0.0.1:{}\" x_forwarded_for:\"203.0.113.9, 127.0.0.1\" x_forwarded_proto:\"http\" vcap_request_id:\"{request_id}\" ", backend.port()),
        "app_id:\"guid-123\" app_index:\"3\" instance_id:\"instance-abc\" x_cf_routererror:\"-\"\n".to_owned(),
    ];
    let logged = switchyard_tests::wait_until(Duration::from_secs(3), || router.access_log().contains(&expected[3]));
    let log = router.access_log();
    assert!(logged, "access log: {log}");
    for part in &expected {
        assert!(log.contains(part.as_str()), "{part:?} is not in the access log: {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_retried_on_the_live_one() {
    let live = TestBackend::start("live").await;
    let dead_port = switchyard_tests::free_port();
    let nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[]);
    let client = nats.client().await;
    publish(&client, "router.register", &registration(dead_port, &["app.example.com"])).await;
    publish(&client, "router.register", &registration(live.port(), &["app.example.com"])).await;
    for _ in 0..250 {
        if router.routes().await["app.example.com"].as_array().is_some_and(|a| a.len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..20 {
        let answer = router.get("app.example.com", "/").await;
        assert_eq!((answer.status.as_u16(), answer.text()), (200, "live".to_owned()));
    }
    assert_eq!(live.count(), 20);
    assert!(router.wait_metric("switchyard_router_retries_total", 1.0).await);
    assert!(router.wait_metric("switchyard_router_backend_errors_total{kind=\"dial\"}", 1.0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_sessions_return_to_their_instance() {
    let session = |name: &'static str| move |_: &switchyard_tests::Recorded| Reply::ok(name).header("set-cookie", "JSESSIONID=s1; Path=/; Max-Age=600");
    let one = TestBackend::start_with(session("one")).await;
    let two = TestBackend::start_with(session("two")).await;
    let nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[]);
    let client = nats.client().await;
    for (backend, id) in [(&one, "instance-one"), (&two, "instance-two")] {
        let mut message = registration(backend.port(), &["sticky.example.com"]);
        message["private_instance_id"] = id.into();
        publish(&client, "router.register", &message).await;
    }
    for _ in 0..250 {
        if router.routes().await["sticky.example.com"].as_array().is_some_and(|a| a.len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = router.get("sticky.example.com", "/").await;
    let cookies = first.header_all("set-cookie");
    let vcap = cookies.iter().find(|c| c.starts_with("__VCAP_ID__=")).expect("router pins the session").clone();
    assert!(vcap.contains("Path=/") && vcap.contains("HttpOnly") && vcap.contains("Max-Age=600"), "{vcap}");
    let instance = vcap.trim_start_matches("__VCAP_ID__=").split(';').next().unwrap().to_owned();
    let expected = if instance == "instance-one" { "one" } else { "two" };
    assert_eq!(first.text(), expected);
    let cookie = format!("JSESSIONID=s1; __VCAP_ID__={instance}");
    for _ in 0..10 {
        let answer = http::get_with(router.addr(), "sticky.example.com", "/", &[("cookie", &cookie)]).await;
        assert_eq!(answer.text(), expected, "a sticky request goes back to its instance");
    }
    // Without the session cookie the request is balanced normally.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        seen.insert(http::get_with(router.addr(), "sticky.example.com", "/", &[("cookie", &format!("__VCAP_ID__={instance}"))]).await.text());
    }
    assert_eq!(seen.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_instance_header_targets_one_instance() {
    let zero = TestBackend::start("zero").await;
    let one = TestBackend::start("one").await;
    let nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[]);
    let client = nats.client().await;
    for (backend, index) in [(&zero, "0"), (&one, "1")] {
        let mut message = registration(backend.port(), &["app.example.com"]);
        message["app"] = "the-app".into();
        message["private_instance_index"] = index.into();
        publish(&client, "router.register", &message).await;
    }
    for _ in 0..250 {
        if router.routes().await["app.example.com"].as_array().is_some_and(|a| a.len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..10 {
        let answer = http::get_with(router.addr(), "app.example.com", "/", &[("x-cf-app-instance", "the-app:1")]).await;
        assert_eq!(answer.text(), "one");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_over_instances() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let (_nats, router) = router_with(&[(&a, &["rr.example.com"]), (&b, &["rr.example.com"])]).await;
    for _ in 0..250 {
        if router.routes().await["rr.example.com"].as_array().is_some_and(|x| x.len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..40 {
        assert_eq!(router.get("rr.example.com", "/").await.status, 200);
    }
    // Round-robin alternates; fresh connections may land between turns, so allow a small imbalance.
    assert!(a.count().abs_diff(b.count()) <= 4, "a={} b={}", a.count(), b.count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mebibyte_post_arrives_intact_both_ways() {
    let echo = TestBackend::echo().await;
    let (_nats, router) = router_with(&[(&echo, &["echo.example.com"])]).await;
    let body: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let request = Request::post("/upload")
        .header("host", "echo.example.com")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let answer = http::send(router.addr(), request).await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len(), body.len());
    assert!(answer.body == body, "echoed body differs");
    assert_eq!(echo.requests()[0].body.len(), body.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_stream_both_ways_and_never_carry_content_length_too() {
    let chunks = vec![Bytes::from_static(b"first-"), Bytes::from_static(b"second-"), Bytes::from_static(b"third")];
    let backend = TestBackend::start_with(move |_| Reply::ok("").chunked(chunks.clone())).await;
    let (_nats, router) = router_with(&[(&backend, &["chunky.example.com"])]).await;
    // Transfer-Encoding and Content-Length together: the body is framed by chunks, and the backend must not
    // receive both headers.
    let request = b"POST /in HTTP/1.1\r\nHost: chunky.example.com\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\
                    Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let response = raw(router.addr(), request, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&response).to_string();
    assert_eq!(raw_status(&response), Some(200), "{text}");
    assert!(text.to_ascii_lowercase().contains("transfer-encoding: chunked"), "response is streamed in chunks: {text}");
    assert!(text.contains("first-") && text.contains("second-") && text.contains("third"), "{text}");
    let seen = &backend.requests()[0];
    assert_eq!(&seen.body[..], b"hello world");
    let framing = (seen.header("transfer-encoding"), seen.header("content-length"));
    assert!(!(framing.0.is_some() && framing.1.is_some()), "both TE and CL forwarded: {framing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_honoured() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = TestBackend::echo().await;
    let (_nats, router) = router_with(&[(&echo, &["echo.example.com"])]).await;
    let mut stream = tokio::net::TcpStream::connect(router.addr()).await.unwrap();
    stream
        .write_all(b"PUT /x HTTP/1.1\r\nHost: echo.example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut interim)).await.expect("100 Continue arrives").unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("hello"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_are_tunnelled() {
    let (ws_addr, _ws) = websocket_echo().await;
    let nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[]);
    let client = nats.client().await;
    publish(&client, "router.register", &registration(ws_addr.port(), &["ws.example.com"])).await;
    assert!(router.routes_eventually_have("ws.example.com").await);
    let url = format!("ws://{}/socket", router.addr());
    let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    request.headers_mut().insert("host", "ws.example.com".parse().unwrap());
    let (mut socket, response) = tokio_tungstenite::connect_async(request).await.expect("upgrade through the router");
    assert_eq!(response.status(), 101);
    for text in ["hello", "through", "the router"] {
        socket.send(tokio_tungstenite::tungstenite::Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    socket.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_proto_is_kept_sanitized_or_forced_as_configured() {
    let backend = TestBackend::start("ok").await;
    let nats = NatsServer::start();
    let client = nats.client().await;
    // (router config, what the client sends, what the backend must see)
    let cases: [(&[(&str, &str)], _, _); 3] = [
        (&[], "https", "https"),
        (&[("sanitize_forwarded_proto", "true")], "https", "http"),
        (&[("force_forwarded_proto_https", "true")], "http", "https"),
    ];
    for (overrides, sent, expected) in cases {
        let router = RouterProcess::start(&nats, overrides);
        publish(&client, "router.register", &registration(backend.port(), &["proto.example.com"])).await;
        assert!(router.routes_eventually_have("proto.example.com").await);
        let before = backend.requests().len();
        let answer = http::get_with(router.addr(), "proto.example.com", "/", &[("x-forwarded-proto", sent)]).await;
        assert_eq!(answer.status, 200);
        let seen = backend.requests();
        assert_eq!(seen.len(), before + 1);
        assert_eq!(seen[before].header("x-forwarded-proto").as_deref(), Some(expected), "{overrides:?} with the client sending {sent}");
        let logged = format!("x_forwarded_proto:\"{expected}\"");
        assert!(switchyard_tests::wait_until(Duration::from_secs(3), || router.access_log().contains(&logged)), "{logged} not in {}", router.access_log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_may_choose_its_own_balancing_algorithm() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[("balancing_algorithm", "round-robin")]);
    let client = nats.client().await;
    for backend in [&a, &b] {
        let mut message = registration(backend.port(), &["hashed.example.com"]);
        message["options"] = serde_json::json!({"lb_algo": "hash", "hash_header": "X-User"});
        publish(&client, "router.register", &message).await;
    }
    for _ in 0..250 {
        if router.routes().await["hashed.example.com"].as_array().is_some_and(|x| x.len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut homes = std::collections::BTreeSet::new();
    for user in 0..16 {
        let user = format!("user-{user}");
        let first = http::get_with(router.addr(), "hashed.example.com", "/", &[("x-user", &user)]).await.text();
        for _ in 0..4 {
            let again = http::get_with(router.addr(), "hashed.example.com", "/", &[("x-user", &user)]).await.text();
            assert_eq!(again, first, "{user} always reaches the same instance");
        }
        homes.insert(first);
    }
    assert_eq!(homes.into_iter().collect::<Vec<_>>(), ["a", "b"], "users are spread over both instances");
}
