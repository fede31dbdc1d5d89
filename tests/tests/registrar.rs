//! End-to-end tests of the real `route-registrar` binary against a real `nats-server`: the messages it publishes
//! over time, health gating, the unregistration limit, killed scripts, router.start, NATS restarts, shutdown,
//! NodePorts for `lb`, route files, and Cloud Foundry configs taken as they are.

use nix::sys::signal::Signal;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use switchyard_tests::registrar::{BusMessage, BusRecorder, RegistrarProcess, describe, make_certificates, metric, script};
use switchyard_tests::{NatsServer, TestBackend};

fn count(messages: &[BusMessage], subject: &str) -> usize {
    messages.iter().filter(|m| m.subject == subject).count()
}

fn for_port(messages: &[BusMessage], subject: &str, port: u64) -> Vec<BusMessage> {
    messages.iter().filter(|m| m.subject == subject && m.number("port") == port).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announces_at_start_and_every_interval() {
    let nats = NatsServer::start();
    let bus = BusRecorder::start(&nats).await;
    let started = Instant::now();
    let registrar = RegistrarProcess::start(
        &nats,
        "routes:\n  - {name: web, port: 8080, uris: [web.example.com, web.example.com/api], tags: {component: web}, registration_interval: 200ms}\n",
    );
    let messages = bus.wait_for("six registrations", Duration::from_secs(5), |m| count(m, "router.register") >= 6).await;
    let first = messages.first().expect("a message");
    assert!(first.at.duration_since(started) < Duration::from_secs(1), "first registration took {:?}", first.at.duration_since(started));
    assert_eq!(count(&messages, "router.unregister"), 0, "{}", describe(&messages));
    for pair in messages.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(gap >= Duration::from_millis(100) && gap <= Duration::from_millis(450), "gap of {gap:?}:\n{}", describe(&messages));
    }
    let instance = first.text("private_instance_id").to_owned();
    assert_eq!(instance.len(), 36, "a UUID: {instance}");
    for message in &messages {
        assert_eq!(message.text("host"), "127.0.0.1");
        assert_eq!(message.number("port"), 8080);
        assert_eq!(message.body["uris"], json!(["web.example.com", "web.example.com/api"]));
        assert_eq!(message.body["tags"], json!({"component": "web"}));
        assert_eq!(message.text("private_instance_id"), instance, "one instance id per process");
    }
    let health = switchyard_tests::http::get(([127, 0, 0, 1], registrar.status_port.unwrap_or_default()).into(), "status", "/health").await;
    assert_eq!((health.status.as_u16(), health.text()), (200, "ok\n".to_owned()));
    let metrics = registrar.metrics().await;
    let sent = metric(&metrics, "switchyard_registrar_publishes_total{result=\"sent\",subject=\"router.register\"}").unwrap_or_default();
    assert!(sent >= 6.0, "publishes by subject:\n{metrics}");
    assert_eq!(metric(&metrics, "switchyard_registrar_nats_connected"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_check_unregisters_up_to_the_limit() {
    let nats = NatsServer::start();
    let bus = BusRecorder::start(&nats).await;
    let work = tempfile::tempdir().expect("scratch directory");
    let flag = work.path().join("healthy");
    std::fs::write(&flag, "").expect("mark healthy");
    let check = script(work.path(), "check", &format!("test -f {}", flag.display()));
    let registrar = RegistrarProcess::start(
        &nats,
        &format!(
            "unregistration_message_limit: 2\nroutes:\n  - {{name: app, port: 9000, uris: [app.example.com], registration_interval: 200ms, health_check: {{name: file, script_path: {}}}}}\n",
            check.display()
        ),
    );
    bus.wait_for("a registration", Duration::from_secs(5), |m| count(m, "router.register") >= 2).await;

    std::fs::remove_file(&flag).expect("mark unhealthy");
    let failed_at = Instant::now();
    let messages = bus.wait_for("two unregistrations", Duration::from_secs(3), |m| count(m, "router.unregister") >= 2).await;
    let first_unregister = messages.iter().find(|m| m.subject == "router.unregister").expect("an unregister");
    assert!(first_unregister.at.duration_since(failed_at) < Duration::from_millis(450), "{}", describe(&messages));
    // Several more failing checks: the limit keeps the bus quiet, and nothing is announced.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let quiet = bus.messages();
    let after_failure: Vec<BusMessage> = quiet.iter().filter(|m| m.at > first_unregister.at).cloned().collect();
    assert_eq!(count(&quiet, "router.unregister"), 2, "limit of 2 exceeded:\n{}", describe(&quiet));
    assert_eq!(count(&after_failure, "router.register"), 0, "announced while failing:\n{}", describe(&quiet));
    let metrics = registrar.metrics().await;
    assert!(metric(&metrics, "switchyard_registrar_health_checks_total{result=\"unhealthy\",route=\"app\"}").unwrap_or_default() >= 4.0, "{metrics}");
    assert_eq!(metric(&metrics, "switchyard_registrar_routes{health=\"unhealthy\"}"), Some(1.0), "{metrics}");

    // Healthy again: announced within an interval, and the limit starts over.
    bus.clear();
    std::fs::write(&flag, "").expect("mark healthy again");
    bus.wait_for("a registration after recovery", Duration::from_millis(600), |m| count(m, "router.register") >= 1).await;
    std::fs::remove_file(&flag).expect("mark unhealthy again");
    bus.wait_for("two unregistrations after the second failure", Duration::from_secs(3), |m| count(m, "router.unregister") >= 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_times_out_is_killed_with_its_children() {
    let nats = NatsServer::start();
    let bus = BusRecorder::start(&nats).await;
    let work = tempfile::tempdir().expect("scratch directory");
    let pids = work.path().join("pids");
    let hang = script(work.path(), "hang", &format!("sleep 30 &\necho $$ $! >> {}\nwait", pids.display()));
    let registrar = RegistrarProcess::start(
        &nats,
        &format!(
            "routes:\n  - {{name: slow, port: 9001, uris: [slow.example.com], registration_interval: 300ms, health_check: {{name: hang, script_path: {}, timeout: 100ms}}}}\n",
            hang.display()
        ),
    );
    let messages = bus.wait_for("an unregistration", Duration::from_secs(3), |m| count(m, "router.unregister") >= 1).await;
    assert_eq!(count(&messages, "router.register"), 0, "a hung check must not announce:\n{}", describe(&messages));
    // Let a few checks time out, then every script and every `sleep` they started must be gone.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let recorded = std::fs::read_to_string(&pids).expect("the script recorded its pids");
    let all: Vec<&str> = recorded.split_whitespace().collect();
    assert!(all.len() >= 4, "expected several timed-out checks: {recorded}");
    let running: Vec<&&str> = all
        .iter()
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z ")))
        .collect();
    // The check started last may still be running; it is within its 100ms timeout.
    assert!(running.len() <= 2, "timed-out checks left processes behind: {running:?} of {recorded}");
    let metrics = registrar.metrics().await;
    assert!(metric(&metrics, "switchyard_registrar_health_checks_total{result=\"timeout\",route=\"slow\"}").unwrap_or_default() >= 3.0, "{metrics}");
    assert!(metrics.contains("switchyard_registrar_health_check_duration_seconds_bucket{route=\"slow\""), "{metrics}");
    drop(registrar);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_start_triggers_an_immediate_reregistration() {
    let nats = NatsServer::start();
    let bus = BusRecorder::start(&nats).await;
    let _registrar = RegistrarProcess::start(&nats, "routes:\n  - {name: web, port: 8080, uris: [web.example.com], registration_interval: 30s}\n");
    bus.wait_for("the first registration", Duration::from_secs(5), |m| count(m, "router.register") == 1).await;
    let start = json!({"id": "0-9d5c", "hosts": ["127.0.0.1"], "minimumRegisterIntervalInSeconds": 1, "pruneThresholdInSeconds": 120});
    let published = Instant::now();
    bus.publish("router.start", &start).await;
    let messages = bus.wait_for("a registration right after router.start", Duration::from_secs(2), |m| count(m, "router.register") == 2).await;
    let reaction = messages[1].at.duration_since(published);
    eprintln!("re-registered {} us after router.start", reaction.as_micros());
    assert!(reaction < Duration::from_millis(200), "re-registered {reaction:?} after router.start");
    // The router asked for 1s; the configured 30s no longer applies.
    let messages = bus.wait_for("registrations every second", Duration::from_millis(2600), |m| count(m, "router.register") >= 4).await;
    let gap = messages[3].at.duration_since(messages[2].at);
    assert!(gap > Duration::from_millis(800) && gap < Duration::from_millis(1300), "gap {gap:?}:\n{}", describe(&messages));
}

/// How many messages the `BUS` stream holds.
async fn stored(nats: &NatsServer) -> u64 {
    let Ok(client) = async_nats::connect(nats.url()).await else { return 0 };
    match async_nats::jetstream::new(client).get_stream("BUS").await {
        Ok(mut stream) => stream.info().await.map(|info| info.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_announced_again_after_a_nats_restart() {
    use async_nats::jetstream;
    // A JetStream stream records the bus on the server itself, so nothing is missed while clients reconnect.
    let mut nats = NatsServer::start_jetstream();
    let stream_config = jetstream::stream::Config {
        name: "BUS".into(),
        subjects: vec!["router.register".into(), "router.unregister".into()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    };
    jetstream::new(nats.client().await).create_stream(stream_config).await.expect("create the recording stream");
    let registrar = RegistrarProcess::start(&nats, "routes:\n  - {name: web, port: 8080, uris: [web.example.com], registration_interval: 30s}\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    while stored(&nats).await < 1 {
        assert!(Instant::now() < deadline, "no registration recorded:\n{}", registrar.service.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    nats.restart();
    let restarted = Instant::now();
    let deadline = restarted + Duration::from_secs(5);
    while stored(&nats).await < 2 {
        assert!(Instant::now() < deadline, "not announced again after the restart:\n{}", registrar.service.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Well before the 30s interval: the reconnect itself caused it.
    let took = restarted.elapsed();
    eprintln!("re-announced within {} ms of the NATS restart", took.as_millis());
    assert!(took < Duration::from_secs(3), "re-announced {took:?} after the restart");
    let client = nats.client().await;
    let stream = jetstream::new(client).get_stream("BUS").await.expect("the recording stream exists");
    let second = stream.get_raw_message(2).await.expect("the second recorded message");
    assert_eq!(second.subject.as_str(), "router.register");
    let body: serde_json::Value = serde_json::from_slice(&second.payload).expect("JSON");
    assert_eq!(body["uris"], json!(["web.example.com"]));
    let metrics = registrar.metrics().await;
    assert_eq!(metric(&metrics, "switchyard_registrar_nats_connects_total"), Some(2.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_unregisters_everything_and_exits_zero() {
    let nats = NatsServer::start();
    let bus = BusRecorder::start(&nats).await;
    let mut registrar = RegistrarProcess::start(
        &nats,
        "routes:\n  - {name: web, port: 8080, uris: [web.example.com], registration_interval: 10s}\n  - {name: web-np, type: nodeport, vip: web, port: 30080, registration_interval: 10s}\n",
    );
    bus.wait_for("both announcements", Duration::from_secs(5), |m| count(m, "router.register") == 1 && count(m, "lb.register.web") == 1).await;
    registrar.service.signal(Signal::SIGTERM);
    let status = registrar.service.wait_exit(Duration::from_secs(5)).expect("the registrar exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}:\n{}", registrar.service.log());
    let messages = bus.wait_for("both withdrawals", Duration::from_secs(2), |m| count(m, "router.unregister") == 1 && count(m, "lb.unregister.web") == 1).await;
    let registered = messages.iter().find(|m| m.subject == "router.register").map(|m| m.body.clone());
    let unregistered = messages.iter().find(|m| m.subject == "router.unregister").map(|m| m.body.clone());
    assert_eq!(registered, unregistered, "the withdrawal names the same endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodeport_routes_go_to_lb_register_with_health_gating() {
    let nats = NatsServer::start();
    let bus = BusRecorder::start(&nats).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a NodePort stand-in");
    let nodeport = listener.local_addr().expect("address").port();
    let _registrar = RegistrarProcess::start(
        &nats,
        &format!(
            "routes:\n  - {{name: web-np, type: nodeport, vip: web, port: {nodeport}, weight: 2, registration_interval: 200ms, health_check: {{tcp: {{address: \"127.0.0.1:{nodeport}\"}}}}}}\n"
        ),
    );
    // Announcements go out on the VIP's own subject, which NATS permissions can grant per tenant.
    let messages = bus.wait_for("lb registrations", Duration::from_secs(5), |m| count(m, "lb.register.web") >= 2).await;
    assert_eq!(count(&messages, "lb.register"), 0, "nothing goes out on the unscoped subject");
    assert_eq!(messages[0].body, json!({"vip": "web", "host": "127.0.0.1", "port": nodeport, "weight": 2}));
    assert_eq!(count(&messages, "router.register"), 0, "a nodeport is not an HTTP route");
    drop(listener);
    let messages = bus.wait_for("an lb withdrawal", Duration::from_secs(2), |m| count(m, "lb.unregister.web") >= 1).await;
    let withdrawal = messages.iter().find(|m| m.subject == "lb.unregister.web").expect("an lb.unregister.web");
    assert_eq!(withdrawal.body, messages[0].body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_foundry_json_config_is_accepted_as_is() {
    let nats = NatsServer::start_with_config("authorization {\n  user: nats\n  password: \"s3cret-pass\"\n}\n");
    let client = async_nats::ConnectOptions::with_user_and_password("nats".into(), "s3cret-pass".into())
        .connect(nats.url())
        .await
        .expect("connect with credentials");
    let bus = BusRecorder::attach(client).await;
    let work = tempfile::tempdir().expect("scratch directory");
    let check = script(work.path(), "health_check", "exit 0");
    // The shape Cloud Foundry's deployment templates render, including keys Switchyard has no use for.
    let config = json!({
        "message_bus_servers": [{"host": format!("127.0.0.1:{}", nats.port()), "user": "nats", "password": "s3cret-pass"}],
        "routing_api": {"api_url": "", "oauth_url": "", "client_id": "", "client_secret": "", "ca_certs": "", "skip_ssl_validation": false},
        "nats_mtls_config": {"enabled": false, "cert_path": "", "key_path": "", "ca_path": ""},
        "dynamic_config_globs": [],
        "host": "127.0.0.1",
        "availability_zone": "z1",
        "unregistration_message_limit": 5,
        "routes": [{
            "name": "uaa",
            "port": 8080,
            "tls_port": 8443,
            "server_cert_domain_san": "uaa.service.cf.internal",
            "uris": ["uaa.sys.example.com", "*.uaa.sys.example.com"],
            "tags": {"component": "uaa"},
            "route_service_url": "",
            "registration_interval": "200ms",
            "health_check": {"name": "uaa-healthchecker", "script_path": check.display().to_string(), "timeout": ""},
            "options": {"loadbalancing": "least-connection"}
        }]
    });
    let registrar = RegistrarProcess::spawn(&config.to_string(), "registrar.json", "-configPath");
    let messages = bus.wait_for("a registration", Duration::from_secs(5), |m| count(m, "router.register") >= 1).await;
    let registration = &messages[0];
    assert_eq!((registration.number("port"), registration.number("tls_port")), (8080, 8443));
    assert_eq!(registration.text("server_cert_domain_san"), "uaa.service.cf.internal");
    assert_eq!(registration.text("availability_zone"), "z1");
    assert_eq!(registration.body["options"], json!({"loadbalancing": "least-connection"}));
    let log = registrar.service.log();
    let warning = log.lines().find(|line| line.contains("config keys not used")).unwrap_or_else(|| panic!("no ignored-keys warning:\n{log}"));
    assert!(warning.contains("routing_api"), "{warning}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_mtls_config_connects_with_client_certificates() {
    let pki = tempfile::tempdir().expect("certificate directory");
    let certs = make_certificates(pki.path());
    let nats = NatsServer::start_with_config(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
        certs.server.0.display(),
        certs.server.1.display(),
        certs.ca.display()
    ));
    let client = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(certs.ca.clone())
        .add_client_certificate(certs.client.0.clone(), certs.client.1.clone())
        .connect(nats.url())
        .await
        .expect("connect over mutual TLS");
    let bus = BusRecorder::attach(client).await;
    let config = json!({
        "message_bus_servers": [{"host": format!("127.0.0.1:{}", nats.port()), "user": "", "password": ""}],
        "nats_mtls_config": {"enabled": true, "cert_path": certs.client.0, "key_path": certs.client.1, "ca_path": certs.ca},
        "host": "127.0.0.1",
        "routes": [{"name": "tls", "port": 8080, "uris": ["tls.example.com"], "registration_interval": "200ms"}]
    });
    let registrar = RegistrarProcess::spawn(&config.to_string(), "registrar.json", "--config");
    bus.wait_for("a registration over TLS", Duration::from_secs(5), |m| count(m, "router.register") >= 1).await;
    assert!(!registrar.service.log().contains("config keys not used"), "{}", registrar.service.log());

    // Without the client certificate the server refuses the registrar, and the log says so.
    let refused = json!({
        "message_bus_servers": [{"host": format!("127.0.0.1:{}", nats.port())}],
        "nats_mtls_config": {"enabled": true, "ca_path": certs.ca},
        "host": "127.0.0.1",
        "routes": [{"name": "refused", "port": 8081, "uris": ["refused.example.com"], "registration_interval": "200ms"}]
    });
    let refused = RegistrarProcess::spawn(&refused.to_string(), "registrar.json", "--config");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let messages = bus.messages();
    assert!(messages.iter().all(|m| m.number("port") != 8081), "registered without a client certificate:\n{}", describe(&messages));
    drop(refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_files_are_picked_up_changed_and_dropped() {
    let nats = NatsServer::start();
    let bus = BusRecorder::start(&nats).await;
    let work = tempfile::tempdir().expect("scratch directory");
    let routes = work.path().join("routes");
    std::fs::create_dir(&routes).expect("route directory");
    let route_file = |name: &str, port: u16| {
        format!("routes:\n  - {{name: {name}, port: {port}, uris: [{name}.example.com], registration_interval: 200ms}}\n")
    };
    std::fs::write(routes.join("a.yml"), route_file("a", 7001)).expect("write a.yml");
    let _registrar = RegistrarProcess::start(
        &nats,
        &format!("dynamic_config_globs: [\"{}/*.yml\"]\ndynamic_config_interval: 100ms\n", routes.display()),
    );
    // Present at start-up: announced with the first load.
    bus.wait_for("a.yml's route", Duration::from_secs(5), |m| !for_port(m, "router.register", 7001).is_empty()).await;

    // Added at run time.
    std::fs::write(routes.join("b.yml"), route_file("b", 7002)).expect("write b.yml");
    bus.wait_for("b.yml's route", Duration::from_secs(2), |m| !for_port(m, "router.register", 7002).is_empty()).await;

    // Changed: the old endpoint is withdrawn before the new one is announced.
    std::fs::write(routes.join("a.yml"), route_file("a", 7003)).expect("rewrite a.yml");
    let messages = bus.wait_for("a.yml's new route", Duration::from_secs(2), |m| !for_port(m, "router.register", 7003).is_empty()).await;
    let withdrawn = for_port(&messages, "router.unregister", 7001);
    let announced = for_port(&messages, "router.register", 7003);
    assert_eq!(withdrawn.len(), 1, "{}", describe(&messages));
    assert!(withdrawn[0].at <= announced[0].at);

    // A broken edit is reported and withdraws nothing.
    std::fs::write(routes.join("b.yml"), "routes: [{name: b, port: 7002}]\n").expect("break b.yml");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let messages = bus.messages();
    assert!(for_port(&messages, "router.unregister", 7002).is_empty(), "a bad edit withdrew b:\n{}", describe(&messages));
    let last_b = for_port(&messages, "router.register", 7002).last().map(|m| m.at).expect("b announced");
    assert!(last_b.elapsed() < Duration::from_millis(400), "b is still announced after the bad edit");

    // Removed: withdrawn, and no longer announced.
    std::fs::remove_file(routes.join("a.yml")).expect("remove a.yml");
    let messages = bus.wait_for("a.yml's route withdrawn", Duration::from_secs(2), |m| for_port(m, "router.unregister", 7003).len() == 1).await;
    let gone_at = for_port(&messages, "router.unregister", 7003)[0].at;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let late: Vec<BusMessage> = for_port(&bus.messages(), "router.register", 7003).into_iter().filter(|m| m.at > gone_at).collect();
    assert!(late.is_empty(), "a removed route was announced again:\n{}", describe(&late));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_is_refused_with_the_key_named() {
    let config = "message_bus_servers: [{host: \"127.0.0.1:4222\"}]\nhost: 127.0.0.1\nroutes:\n  - {name: web, port: 8080, uris: [web.example.com], registration_interval: 2s, health_check: {script_path: /bin/true, timeout: 5s}}\n";
    let mut registrar = RegistrarProcess::spawn(config, "registrar.yml", "--config");
    let status = registrar.service.wait_exit(Duration::from_secs(5)).expect("a bad config stops the registrar");
    assert_eq!(status.code(), Some(2));
    let log = registrar.service.log();
    assert!(log.contains("routes[0].health_check.timeout") && log.contains("shorter than"), "{log}");

    let help = std::process::Command::new(switchyard_tests::binary("route-registrar")).arg("--help").output().expect("run --help");
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("-configPath") && text.contains("nodeport"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_checks_gate_router_registrations() {
    let nats = NatsServer::start();
    let bus = BusRecorder::start(&nats).await;
    let healthy = Arc::new(AtomicBool::new(true));
    let state = Arc::clone(&healthy);
    let backend = TestBackend::start_with(move |_| {
        let status = if state.load(Ordering::SeqCst) { 200 } else { 503 };
        switchyard_tests::backend::Reply::ok("").status(status)
    })
    .await;
    let _registrar = RegistrarProcess::start(
        &nats,
        &format!(
            "routes:\n  - {{name: app, port: {port}, uris: [app.example.com], registration_interval: 200ms, health_check: {{http: {{url: \"http://127.0.0.1:{port}/health\"}}}}}}\n",
            port = backend.port()
        ),
    );
    bus.wait_for("registrations", Duration::from_secs(5), |m| count(m, "router.register") >= 2).await;
    assert!(backend.requests().iter().all(|r| r.uri == "/health" && r.method == "GET"));
    healthy.store(false, Ordering::SeqCst);
    bus.wait_for("an unregistration", Duration::from_secs(2), |m| count(m, "router.unregister") >= 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_routes_through_the_same_diff() {
    let nats = NatsServer::start();
    let bus = BusRecorder::start(&nats).await;
    let route = |port: u16| format!("routes:\n  - {{name: web, port: {port}, uris: [web.example.com], registration_interval: 200ms}}\n");
    let registrar = RegistrarProcess::start(&nats, &route(8080));
    bus.wait_for("the first route", Duration::from_secs(5), |m| count(m, "router.register") >= 1).await;
    let original = std::fs::read_to_string(&registrar.config).expect("read the config back");
    std::fs::write(&registrar.config, original.replace(&route(8080), &route(8081))).expect("rewrite the config");
    registrar.service.signal(Signal::SIGHUP);
    let messages = bus.wait_for("the new route", Duration::from_secs(2), |m| !for_port(m, "router.register", 8081).is_empty()).await;
    let withdrawn = for_port(&messages, "router.unregister", 8080);
    assert_eq!(withdrawn.len(), 1, "{}", describe(&messages));
    // A broken config on reload is refused and changes nothing.
    std::fs::write(&registrar.config, "routes: [{name: web}]\n").expect("break the config");
    registrar.service.signal(Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let messages = bus.messages();
    assert!(for_port(&messages, "router.unregister", 8081).is_empty(), "a bad reload withdrew routes:\n{}", describe(&messages));
    assert!(registrar.service.log().contains("reload failed"), "{}", registrar.service.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_greeting_router_shortens_the_interval() {
    let nats = NatsServer::start();
    let bus = BusRecorder::start(&nats).await;
    // Stand in for a running router: answer router.greet the way gorouter does.
    let router = nats.client().await;
    let mut greets = router.subscribe("router.greet").await.expect("subscribe to router.greet");
    router.flush().await.expect("flush");
    let answering = tokio::spawn(async move {
        use futures_util::StreamExt;
        let answer = json!({"id": "0-greeter", "hosts": ["127.0.0.1"], "minimumRegisterIntervalInSeconds": 1, "pruneThresholdInSeconds": 120});
        while let Some(greet) = greets.next().await {
            if let Some(reply) = greet.reply {
                let _ = router.publish(reply, answer.to_string().into()).await;
            }
        }
    });
    let _registrar = RegistrarProcess::start(&nats, "routes:\n  - {name: web, port: 8080, uris: [web.example.com], registration_interval: 30s}\n");
    let messages = bus.wait_for("announcements every second", Duration::from_secs(4), |m| count(m, "router.register") >= 3).await;
    let gap = messages[2].at.duration_since(messages[1].at);
    assert!(gap > Duration::from_millis(800) && gap < Duration::from_millis(1300), "gap {gap:?}:\n{}", describe(&messages));
    answering.abort();
}
