//! The router over time: announcing itself on NATS, pruning, surviving NATS outages and bad messages, start-up
//! delay, drain and stop.

use futures_util::StreamExt;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};
use switchyard_tests::backend::Reply;
use switchyard_tests::router::{metric_value, status_code};
use switchyard_tests::{NatsServer, RouterProcess, TestBackend, publish, registration, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announces_router_start_and_answers_greet() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let mut starts = client.subscribe("router.start").await.unwrap();
    client.flush().await.unwrap();
    let _router = RouterProcess::start(&nats, &[("index", "3"), ("droplet_stale_threshold", "90s"), ("start_response_delay_interval", "0s")]);
    let message = tokio::time::timeout(Duration::from_secs(10), starts.next()).await.expect("router.start arrives").unwrap();
    let start: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    assert!(start["id"].as_str().unwrap().starts_with("3-"), "{start}");
    assert_eq!(start["hosts"].as_array().unwrap().len(), 1);
    assert_eq!(start["pruneThresholdInSeconds"], 90);
    assert_eq!(start["minimumRegisterIntervalInSeconds"], 0);
    let reply = tokio::time::timeout(Duration::from_secs(5), client.request("router.greet", "".into())).await.unwrap().unwrap();
    let greet: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(greet, start, "router.greet answers with the start message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_not_refreshed_within_their_ttl_are_pruned() {
    let backend = TestBackend::start("app").await;
    let nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[("droplet_stale_threshold", "1s"), ("prune_stale_droplets_interval", "100ms")]);
    let client = nats.client().await;
    publish(&client, "router.register", &registration(backend.port(), &["app.example.com"])).await;
    assert!(router.wait_for_status("app.example.com", "/", 200, Duration::from_secs(5)).await);
    // Refreshing keeps it alive past one TTL.
    let registered = Instant::now();
    let mut last_refresh = registered;
    while registered.elapsed() < Duration::from_millis(1600) {
        publish(&client, "router.register", &registration(backend.port(), &["app.example.com"])).await;
        last_refresh = Instant::now();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(router.get("app.example.com", "/").await.status, 200);
    }
    // Without refreshes it is gone after the TTL plus at most one prune interval.
    assert!(router.wait_for_status("app.example.com", "/", 404, Duration::from_secs(5)).await);
    let gone_after = last_refresh.elapsed();
    assert!(gone_after >= Duration::from_millis(1000), "pruned too early: {gone_after:?}");
    assert!(router.wait_metric("switchyard_router_pruned_endpoints_total", 1.0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_is_suspended_while_nats_is_down() {
    let backend = TestBackend::start("app").await;
    let mut nats = NatsServer::start();
    let router = RouterProcess::start(
        &nats,
        &[("droplet_stale_threshold", "1s"), ("prune_stale_droplets_interval", "100ms"), ("suspend_pruning_if_nats_unavailable", "true")],
    );
    {
        let client = nats.client().await;
        publish(&client, "router.register", &registration(backend.port(), &["app.example.com"])).await;
        assert!(router.wait_for_status("app.example.com", "/", 200, Duration::from_secs(5)).await);
    }
    nats.stop();
    // Three TTLs without NATS: the route stays.
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(3) {
        assert_eq!(router.get("app.example.com", "/").await.status, 200, "pruned during the outage");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    nats.resume();
    // The router reconnects, announces itself again, and the route gets a fresh TTL from then on.
    let reconnected = wait_until(Duration::from_secs(10), || router.service.log().matches("published router.start").count() >= 2);
    assert!(reconnected, "router did not announce itself after reconnecting:\n{}", router.service.log());
    assert_eq!(router.get("app.example.com", "/").await.status, 200, "still routable right after reconnecting");
    // Nobody re-registers, so it is pruned one TTL later.
    assert!(router.wait_for_status("app.example.com", "/", 404, Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_suspension_an_outage_prunes_as_usual() {
    let backend = TestBackend::start("app").await;
    let mut nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[("droplet_stale_threshold", "1s"), ("prune_stale_droplets_interval", "100ms")]);
    let client = nats.client().await;
    publish(&client, "router.register", &registration(backend.port(), &["app.example.com"])).await;
    assert!(router.wait_for_status("app.example.com", "/", 200, Duration::from_secs(5)).await);
    nats.stop();
    assert!(router.wait_for_status("app.example.com", "/", 404, Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_and_unregistrations_apply_in_the_order_they_were_sent() {
    let nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[]);
    let client = nats.client().await;
    // Back to back, with no pause for the router to catch up: a route registered then withdrawn must end up gone,
    // one withdrawn then registered again (an instance restarting on the same port) must end up routable.
    let send = |subject: &'static str, uri: String| {
        let payload = serde_json::to_vec(&registration(8080, &[&uri])).unwrap();
        let client = client.clone();
        async move { client.publish(subject, payload.into()).await.unwrap() }
    };
    for i in 0..500 {
        send("router.register", format!("gone-{i}.example.com")).await;
        send("router.unregister", format!("gone-{i}.example.com")).await;
        send("router.unregister", format!("back-{i}.example.com")).await;
        send("router.register", format!("back-{i}.example.com")).await;
    }
    send("router.register", "last.example.com".to_owned()).await;
    client.flush().await.unwrap();
    assert!(router.routes_eventually_have("last.example.com").await);
    let routes = router.routes().await;
    let routes = routes.as_object().unwrap();
    let gone: Vec<&String> = routes.keys().filter(|uri| uri.starts_with("gone-")).collect();
    let back = routes.keys().filter(|uri| uri.starts_with("back-")).count();
    assert!(gone.is_empty(), "{} routes withdrawn after registering are still there, among them {:?}", gone.len(), &gone[..gone.len().min(5)]);
    assert_eq!(back, 500, "of 500 routes registered again after a withdrawal, {back} are routable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_hostile_messages_are_counted_and_harmless() {
    let backend = TestBackend::start("app").await;
    let nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[]);
    let client = nats.client().await;
    let many_uris: Vec<String> = (0..10_000).map(|i| format!("u{i}.example.com")).collect();
    let bad: Vec<Vec<u8>> = vec![
        b"not json at all".to_vec(),
        b"{\"host\": ".to_vec(),
        b"[1,2,3]".to_vec(),
        br#"{"host":"127.0.0.1","port":0,"uris":["zero.example.com"]}"#.to_vec(),
        br#"{"host":"127.0.0.1","port":99999,"uris":["big.example.com"]}"#.to_vec(),
        br#"{"host":"127.0.0.1","port":80,"uris":["crlf.example.com"],"app":"a\r\nSet-Cookie: x=1"}"#.to_vec(),
        br#"{"host":"224.0.0.1","port":80,"uris":["multicast.example.com"]}"#.to_vec(),
        br#"{"host":"127.0.0.1","port":80,"uris":["rs.example.com"],"route_service_url":"http://plain"}"#.to_vec(),
        serde_json::to_vec(&serde_json::json!({"host": "127.0.0.1", "port": 80, "uris": many_uris})).unwrap(),
        vec![b' '; 300 * 1024],
    ];
    for payload in bad {
        client.publish("router.register", payload.into()).await.unwrap();
    }
    client.flush().await.unwrap();
    // A good message after the bad ones still works.
    publish(&client, "router.register", &registration(backend.port(), &["good.example.com"])).await;
    assert!(router.wait_for_status("good.example.com", "/", 200, Duration::from_secs(5)).await);
    let routes = router.routes().await;
    assert_eq!(routes.as_object().unwrap().len(), 1, "only the good route exists: {routes}");
    let metrics = router.metrics().await;
    for reason in ["malformed", "missing_port", "control_character", "invalid_host", "route_service_not_https", "too_many_uris", "too_large"] {
        let line = format!("switchyard_router_rejected_messages_total{{reason=\"{reason}\",subject=\"router.register\"}}");
        assert!(metric_value(&metrics, &line).is_some_and(|v| v >= 1.0), "no rejection counted for {reason}:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_delay_keeps_the_proxy_closed_and_health_at_503() {
    let nats = NatsServer::start();
    let router = RouterProcess::spawn(&nats, &[("start_response_delay_interval", "2s")]);
    assert!(wait_until(Duration::from_secs(5), || status_code(router.status_addr(), "/health") == Some(503)));
    assert!(std::net::TcpStream::connect(router.addr()).is_err(), "proxy must not listen during the delay");
    assert!(wait_until(Duration::from_secs(10), || status_code(router.status_addr(), "/health") == Some(200)));
    assert!(std::net::TcpStream::connect(router.addr()).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_drains_and_lets_in_flight_requests_finish() {
    let backend = TestBackend::start_with(|_| Reply::ok("finished").delay(Duration::from_millis(1500))).await;
    let nats = NatsServer::start();
    let mut router = RouterProcess::start(&nats, &[("drain_wait", "500ms"), ("drain_timeout", "10s")]);
    let client = nats.client().await;
    publish(&client, "router.register", &registration(backend.port(), &["slow.example.com"])).await;
    assert!(router.routes_eventually_have("slow.example.com").await);
    let addr = router.addr();
    let in_flight = tokio::spawn(async move { switchyard_tests::http::get(addr, "slow.example.com", "/").await });
    assert!(wait_until(Duration::from_secs(5), || backend.count() == 1));
    router.service.signal(Signal::SIGUSR1);
    assert!(wait_until(Duration::from_secs(2), || status_code(router.status_addr(), "/health") == Some(503)), "health reports draining");
    let answer = in_flight.await.unwrap();
    assert_eq!((answer.status.as_u16(), answer.text()), (200, "finished".to_owned()));
    let status = router.service.wait_exit(Duration::from_secs(10)).expect("router exits after draining");
    assert!(status.success(), "{status:?}");
    assert!(std::net::TcpStream::connect(addr).is_err(), "no longer accepting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_stop_quickly() {
    let backend = TestBackend::start_with(|_| Reply::ok("never").delay(Duration::from_secs(30))).await;
    let nats = NatsServer::start();
    let client = nats.client().await;
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let mut router = RouterProcess::start(&nats, &[("drain_timeout", "60s")]);
        publish(&client, "router.register", &registration(backend.port(), &["slow.example.com"])).await;
        assert!(router.routes_eventually_have("slow.example.com").await);
        let addr = router.addr();
        let held = backend.count();
        let _stuck = tokio::spawn(async move { switchyard_tests::http::send(addr, hyper::Request::get("/").header("host", "slow.example.com").body(Default::default()).unwrap()).await });
        assert!(wait_until(Duration::from_secs(5), || backend.count() == held + 1));
        let asked = Instant::now();
        router.service.signal(signal);
        let status = router.service.wait_exit(Duration::from_secs(5)).expect("router stops");
        assert!(status.success(), "{signal}: {status:?}");
        assert!(asked.elapsed() < Duration::from_secs(2), "{signal} took {:?}", asked.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_fails_over_to_the_next_nats_server_and_announces_itself_there() {
    let backend = TestBackend::start("ok").await;
    let mut servers = [NatsServer::start(), NatsServer::start()];
    let hosts = format!(
        "{{hosts: [{{hostname: 127.0.0.1, port: {}}}, {{hostname: 127.0.0.1, port: {}}}]}}",
        servers[0].port(),
        servers[1].port()
    );
    let router = RouterProcess::start(&servers[0], &[("nats", &hosts)]);
    // The servers are not clustered, so a registration reaches the router only through the server it is on.
    let clients = [servers[0].client().await, servers[1].client().await];
    let mut current = None;
    for _ in 0..50 {
        for (index, client) in clients.iter().enumerate() {
            publish(client, "router.register", &registration(backend.port(), &[&format!("via-{index}.example.com")])).await;
        }
        let routes = router.routes().await;
        current = (0..2).find(|index| routes.get(format!("via-{index}.example.com")).is_some());
        if current.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let current = current.expect("the router is connected to one of the two servers");
    let other = 1 - current;
    let mut starts = clients[other].subscribe("router.start").await.unwrap();
    servers[current].stop();
    let announced = tokio::time::timeout(Duration::from_secs(15), starts.next()).await;
    assert!(matches!(announced, Ok(Some(_))), "no router.start on the other server after the first one died:\n{}", router.service.log());
    publish(&clients[other], "router.register", &registration(backend.port(), &["after.example.com"])).await;
    assert!(router.wait_for_status("after.example.com", "/", 200, Duration::from_secs(5)).await);
    assert_eq!(router.get(&format!("via-{current}.example.com"), "/").await.status, 200, "routes learnt before the failover stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_endpoints_guard_routes_and_expose_metrics() {
    let backend = TestBackend::start("app").await;
    let nats = NatsServer::start();
    let router = RouterProcess::start(&nats, &[]);
    let client = nats.client().await;
    let mut message = registration(backend.port(), &["app.example.com/path"]);
    message["private_instance_id"] = "iid".into();
    message["tags"] = serde_json::json!({"component": "web"});
    publish(&client, "router.register", &message).await;
    assert!(router.routes_eventually_have("app.example.com/path").await);
    let routes = router.routes().await;
    let endpoint = &routes["app.example.com/path"][0];
    assert_eq!(endpoint["address"], format!("127.0.0.1:{}", backend.port()));
    assert_eq!(endpoint["ttl"], 120);
    assert_eq!(endpoint["tls"], false);
    assert_eq!(endpoint["protocol"], "http1");
    assert_eq!(endpoint["tags"]["component"], "web");

    let unauthenticated = switchyard_tests::http::get(router.status_addr(), "status", "/routes").await;
    assert_eq!(unauthenticated.status, 401);
    let wrong = switchyard_tests::http::get_with(router.status_addr(), "status", "/routes", &[("authorization", "Basic YWRtaW46bm9wZQ==")]).await;
    assert_eq!(wrong.status, 401);

    router.get("app.example.com", "/path").await;
    assert!(router.wait_metric("switchyard_router_requests_total", 1.0).await);
    let metrics = router.metrics().await;
    for family in [
        "switchyard_router_registry_messages_total{action=\"register\"}",
        "switchyard_router_responses_total{status_class=\"2xx\"}",
        "switchyard_router_routes ",
        "switchyard_router_route_lookup_seconds_count",
        "switchyard_router_backend_latency_seconds_count",
        "switchyard_router_nats_connected ",
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.lines().any(|l| l.starts_with(family)), "missing {family}:\n{metrics}");
    }
}
