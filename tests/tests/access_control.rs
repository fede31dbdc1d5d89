//! Access control, end to end, on the real binaries.
//!
//! Two things stand between an attacker and the routing state: the admin views (`/routes`, `/vips`) and the NATS
//! bus the state is learned from. Unit tests show the checks exist; these show they hold on the wire, where a
//! mistake is an outage or a hijacked route. The admin views must refuse every near miss of the password (one
//! byte off, one byte longer or shorter) exactly as they refuse no password at all. The router must reach a bus
//! that demands TLS with client certificates and a password, learn routes through it, and learn nothing with a
//! wrong password. `lb` must do the same over TLS, and take an announcement only from a publisher the NATS server
//! let publish on that VIP's own subject: an unscoped `lb.register` is ignored unless `nats.unscoped_subjects`
//! allows it, and a cell allowed one VIP cannot announce another. A program the bus refuses a subscription says
//! which permission to grant.

// Test code: a panic is a failed test, with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use base64::Engine;
use nix::sys::signal::Signal;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use switchyard_tests::lb::{self, AUTH, NATS_URL, block_on_in};
use switchyard_tests::netns::Netns;
use switchyard_tests::router::{RouterProcess, metric_value, publish, registration};
use switchyard_tests::status::status_answer;
use switchyard_tests::tls::{Issued, TestCa, client_config, yaml_string};
use switchyard_tests::{NatsServer, Service, TestBackend, binary, free_port, wait_until};

fn basic(credentials: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials))
}

/// Every way to miss `admin:secret`, by what it tries.
fn near_misses() -> Vec<(&'static str, Option<String>)> {
    vec![
        ("no credentials", None),
        ("a wrong user", Some(basic("root:secret"))),
        ("the user in another case", Some(basic("Admin:secret"))),
        ("a wrong password", Some(basic("admin:hunter2"))),
        ("a password wrong in the last byte", Some(basic("admin:secreu"))),
        ("a password wrong in the first byte", Some(basic("admin:Secret"))),
        ("a password one byte longer", Some(basic("admin:secret!"))),
        ("a password three times as long", Some(basic("admin:secretsecretsecret"))),
        ("a password one byte shorter", Some(basic("admin:secre"))),
        ("an empty password", Some(basic("admin:"))),
        ("the user alone", Some(basic("admin"))),
        ("the password alone", Some(basic(":secret"))),
        ("credentials not in base64", Some("Basic admin:secret".to_owned())),
        ("another scheme", Some(format!("Bearer {}", base64::engine::general_purpose::STANDARD.encode("admin:secret")))),
    ]
}

/// Asserts `get` (a GET of one admin view with an optional `Authorization`) refuses every near miss with a bare
/// 401, and returns the body it serves to the right credentials.
fn assert_guarded(view: &str, get: impl Fn(Option<&str>) -> Option<(u16, String)>) -> String {
    for (case, authorization) in near_misses() {
        let (code, body) = get(authorization.as_deref()).unwrap_or_else(|| panic!("{view} did not answer {case}"));
        assert_eq!(code, 401, "{view} with {case} answered {code}: {body}");
        assert_eq!(body, "401 Unauthorized\n", "{view} with {case} must say nothing more");
    }
    let (code, body) = get(Some(AUTH)).unwrap_or_else(|| panic!("{view} did not answer the right credentials"));
    assert_eq!(code, 200, "{view} with the right credentials: {body}");
    body
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routes_views_of_the_router_refuse_every_near_miss_of_the_password() {
    let nats = NatsServer::start();
    let backend = TestBackend::start("guarded").await;
    let (status_port, routes_port) = (free_port(), free_port());
    let status = format!("{{host: 127.0.0.1, port: {status_port}, user: admin, pass: secret, routes: {{port: {routes_port}}}}}");
    let router = RouterProcess::spawn(&nats, &[("status", &status)]);
    let up = wait_until(Duration::from_secs(15), || {
        router.service.log().contains("published router.start") && status_answer(local(status_port), "/health", None).is_some_and(|(code, _)| code == 200)
    });
    assert!(up, "the router did not start:\n{}", router.service.log());
    let client = nats.client().await;
    assert!(registered(&client, &router, backend.port(), "guarded.example.com").await, "the route was not learned:\n{}", router.service.log());

    // Both listeners serve `/routes` behind the same credentials, and only to the right ones.
    for (listener, port) in [("status", status_port), ("status.routes", routes_port)] {
        let view = format!("/routes on the {listener} listener");
        let body = tokio::task::spawn_blocking(move || assert_guarded(&view, |auth| status_answer(local(port), "/routes", auth))).await.unwrap();
        let routes: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(routes["guarded.example.com"][0]["address"], format!("127.0.0.1:{}", backend.port()), "{body}");
    }
    // Health and metrics stay open on the status listener (load balancers and Prometheus carry no password); the
    // loopback routes listener serves nothing but `/routes`.
    let open = tokio::task::spawn_blocking(move || {
        [
            status_answer(local(status_port), "/health", None).map(|(code, _)| code),
            status_answer(local(status_port), "/metrics", None).map(|(code, _)| code),
            status_answer(local(routes_port), "/health", Some(AUTH)).map(|(code, _)| code),
            status_answer(local(routes_port), "/metrics", Some(AUTH)).map(|(code, _)| code),
        ]
    })
    .await
    .unwrap();
    assert_eq!(open, [Some(200), Some(200), Some(404), Some(404)]);

    // A router configured without a status user refuses everyone, whatever they send.
    let unset_port = free_port();
    let unset = RouterProcess::spawn(&nats, &[("status", &format!("{{host: 127.0.0.1, port: {unset_port}}}"))]);
    let refused = tokio::task::spawn_blocking(move || {
        assert!(wait_until(Duration::from_secs(15), || status_answer(local(unset_port), "/health", None).is_some_and(|(code, _)| code == 200)));
        [None, Some(AUTH.to_owned()), Some(basic(":")), Some(basic("admin:"))]
            .map(|auth| status_answer(local(unset_port), "/routes", auth.as_deref()).map(|(code, _)| code))
    })
    .await
    .unwrap();
    assert_eq!(refused, [Some(401); 4], "{}", unset.service.log());
}

/// Publishes a registration of `port` for `uri` every 50ms, as an emitter repeats it, until `router` routes `uri`
/// (or 10s pass); returns whether it did.
async fn registered(bus: &async_nats::Client, router: &RouterProcess, port: u16, uri: &str) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        publish(bus, "router.register", &registration(port, &[uri])).await;
        if router.get(uri, "/").await.status == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The bus's PKI: a CA, the server's certificate for 127.0.0.1, and client certificates by name, with the files
/// `nats-server` reads.
struct BusPki {
    ca: TestCa,
    dir: tempfile::TempDir,
}

impl BusPki {
    fn new() -> Self {
        Self { ca: TestCa::new("switchyard bus CA"), dir: tempfile::tempdir().unwrap() }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The `tls` block of a `nats-server` that presents a certificate from this CA and demands a client
    /// certificate from it too.
    fn server_block(&self) -> String {
        let server = self.ca.issue(&["127.0.0.1"]);
        let cert = self.write("server.pem", &server.cert_pem);
        let key = self.write("server.key", &server.key_pem);
        let ca = self.write("ca.pem", self.ca.pem());
        // A generous handshake timeout: the machine is shared and debug builds are slow.
        format!("tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 5\n}}\n", cert.display(), key.display(), ca.display())
    }

    /// A client of the bus: its certificate, user and password.
    fn client(&self, user: &'static str, pass: &'static str) -> BusClient {
        let identity = self.ca.issue_client(user);
        BusClient { user, pass, tls: client_config(&self.ca, Some(&identity), &[]), identity: Arc::new(identity) }
    }
}

/// One identity on the bus.
#[derive(Clone)]
struct BusClient {
    user: &'static str,
    pass: &'static str,
    tls: Arc<rustls::ClientConfig>,
    identity: Arc<Issued>,
}

impl BusClient {
    /// Connects over TLS with the certificate and password; every event the client sees (a server's
    /// permissions error among them) goes to the returned receiver as text.
    async fn connect(&self, url: &str) -> Result<(async_nats::Client, tokio::sync::mpsc::UnboundedReceiver<String>), String> {
        let (events, received) = tokio::sync::mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .user_and_password(self.user.to_owned(), self.pass.to_owned())
            .require_tls(true)
            .tls_client_config((*self.tls).clone())
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    let _ = events.send(event.to_string());
                }
            })
            .connect(url)
            .await
            .map_err(|err| err.to_string())?;
        Ok((client, received))
    }

    /// This client's `nats.*` keys, as the router and `lb` spell them, with `pass` as the password.
    fn keys(&self, ca: &TestCa, pass: &str) -> String {
        format!(
            "user: {}, pass: {}, tls_enabled: true, ca_certs: {}, cert_chain: {}, private_key: {}",
            self.user,
            yaml_string(pass),
            yaml_string(ca.pem()),
            yaml_string(&self.identity.cert_pem),
            yaml_string(&self.identity.key_pem)
        )
    }
}

const ROUTER_PASS: &str = "router-bus-password";
const APP_PASS: &str = "app-bus-password";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_learns_routes_over_a_bus_demanding_tls_client_certificates_and_a_password() {
    let pki = BusPki::new();
    let users = format!("authorization {{\n  users: [\n    {{user: router, password: \"{ROUTER_PASS}\"}}\n    {{user: app, password: \"{APP_PASS}\"}}\n  ]\n}}\n");
    let nats = NatsServer::start_with_config(&format!("{}{users}", pki.server_block()));
    let router_identity = pki.client("router", ROUTER_PASS);
    let app = pki.client("app", APP_PASS);

    // The server really demands all three: a client missing any one of them is refused.
    let refused = [
        ("no TLS", async_nats::ConnectOptions::new().user_and_password("app".into(), APP_PASS.into())),
        (
            "no client certificate",
            async_nats::ConnectOptions::new()
                .user_and_password("app".into(), APP_PASS.into())
                .require_tls(true)
                .tls_client_config((*client_config(&pki.ca, None, &[])).clone()),
        ),
        ("no password", async_nats::ConnectOptions::new().require_tls(true).tls_client_config((*app.tls).clone())),
    ];
    for (missing, options) in refused {
        let connected = options.connection_timeout(Duration::from_secs(5)).connect(nats.url()).await;
        assert!(connected.is_err(), "a client with {missing} was let in");
    }

    let nats_keys = |pass: &str| format!("{{hosts: [{{hostname: 127.0.0.1, port: {}}}], {}}}", nats.port(), router_identity.keys(&pki.ca, pass));
    let router = RouterProcess::start(&nats, &[("nats", &nats_keys(ROUTER_PASS))]);
    let (bus, _) = app.connect(&nats.url()).await.expect("the app connects with its certificate and password");
    let backend = TestBackend::start("over-tls").await;
    assert!(registered(&bus, &router, backend.port(), "secure.example.com").await, "a registration over the TLS bus did not make a route:\n{}", router.service.log());
    let answer = router.get("secure.example.com", "/").await;
    assert_eq!((answer.status.as_u16(), answer.text()), (200, "over-tls".to_owned()));
    assert_eq!(metric_value(&router.metrics().await, "switchyard_router_nats_connected "), Some(1.0));

    // The same router with a wrong password: it serves, but never gets onto the bus and learns nothing, not even
    // a registration the good router has plainly received.
    let wrong = RouterProcess::spawn(&nats, &[("nats", &nats_keys("not-the-router-password"))]);
    let wrong_status = wrong.status_addr();
    let healthy = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(15), || status_answer(wrong_status, "/health", None).is_some_and(|(code, _)| code == 200))
    });
    assert!(healthy.await.unwrap(), "{}", wrong.service.log());
    let late = TestBackend::start("late").await;
    assert!(registered(&bus, &router, late.port(), "late.example.com").await, "{}", router.service.log());
    // Let the refused router retry for a while (it retries every 25ms at first, then every second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let metrics = wrong.metrics().await;
    assert_eq!(metric_value(&metrics, "switchyard_router_nats_connected "), Some(0.0), "{metrics}");
    assert_eq!(metric_value(&metrics, "switchyard_router_nats_connects_total "), Some(0.0), "{metrics}");
    assert_eq!(wrong.routes().await, serde_json::json!({}));
    assert_eq!(wrong.get("late.example.com", "/").await.status, 404);
    assert!(!wrong.service.log().contains("published router.start"), "{}", wrong.service.log());
    assert!(wrong.service.log().to_lowercase().contains("authorization violation"), "the log should say why:\n{}", wrong.service.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_the_bus_will_not_let_subscribe_says_which_permission_to_grant() {
    // Allowed the subjects one by one, but not the one subscription the router reads them through.
    let users = "authorization {\n  users: [\n    {user: narrow, password: \"narrow-pass\", permissions: {publish: [\">\"], \
                 subscribe: [\"router.register\", \"router.unregister\", \"router.greet\", \"_INBOX.>\"]}}\n  ]\n}\n";
    let nats = NatsServer::start_with_config(users);
    let keys = format!("{{hosts: [{{hostname: 127.0.0.1, port: {}}}], user: narrow, pass: narrow-pass}}", nats.port());
    let router = RouterProcess::start(&nats, &[("nats", &keys)]);
    let told = wait_until(Duration::from_secs(10), || {
        router.service.log().contains("does not let this user subscribe to `router.*`: grant its subscribe permission")
    });
    assert!(told, "the log should say which permission is missing:\n{}", router.service.log());
}

// ---- lb ----------------------------------------------------------------------------------------------------

const WEB_VIP: &str = "198.18.0.10";
const API_VIP: &str = "198.18.0.11";
const DB_VIP: &str = "198.18.0.12";
const LB_PASS: &str = "lb-bus-password";
const CELL_WEB_PASS: &str = "cell-web-password";
const LEGACY_PASS: &str = "legacy-cell-password";
const WATCHER_PASS: &str = "watcher-password";
const OPERATOR_PASS: &str = "operator-password";

/// Who may do what on the LB's bus. `lb` subscribes to announcements and to its inboxes, and drives the JetStream
/// API (the VIP bucket's stream, its ordered consumer and that consumer's flow control); a cell may announce only
/// its own VIP; a legacy cell may use only the unscoped subjects; an operator may write the VIP bucket; the watcher
/// only listens, to show what was on the bus.
fn lb_bus_config(pki: &BusPki, store: &Path) -> String {
    format!(
        "{tls}jetstream {{\n  store_dir: \"{store}\"\n}}\n\
         authorization {{\n  users: [\n\
         {{user: lb, password: \"{LB_PASS}\", permissions: {{publish: [\"$JS.API.>\", \"$JS.FC.>\", \"$JS.ACK.>\"], subscribe: [\"lb.>\", \"_INBOX.>\"]}}}}\n\
         {{user: cell-web, password: \"{CELL_WEB_PASS}\", permissions: {{publish: [\"lb.register.web\", \"lb.unregister.web\"], subscribe: {{deny: \">\"}}}}}}\n\
         {{user: legacy-cell, password: \"{LEGACY_PASS}\", permissions: {{publish: [\"lb.register\", \"lb.unregister\"], subscribe: {{deny: \">\"}}}}}}\n\
         {{user: watcher, password: \"{WATCHER_PASS}\", permissions: {{publish: {{deny: \">\"}}, subscribe: [\"lb.>\"]}}}}\n\
         {{user: operator, password: \"{OPERATOR_PASS}\", permissions: {{publish: [\"$JS.API.>\", \"$JS.FC.>\", \"$JS.ACK.>\", \"$KV.lb_vips.>\"], subscribe: [\"_INBOX.>\"]}}}}\n\
         ]\n}}\n",
        tls = pki.server_block(),
        store = store.display(),
    )
}

fn lb_config(pki: &BusPki, lb: &BusClient, unscoped: bool) -> String {
    let nats = format!("nats: {{servers: ['{NATS_URL}'], {}, unscoped_subjects: {unscoped}}}\nbackend_stale_threshold: 5m", lb.keys(&pki.ca, LB_PASS));
    let vips = format!("  - {{name: web, address: {WEB_VIP}, port: 80}}\n  - {{name: api, address: {API_VIP}, port: 80}}\n");
    lb::config(&nats, &vips)
}

fn announcement(vip: &str, host: &str, port: u16) -> String {
    format!(r#"{{"vip":"{vip}","host":"{host}","port":{port}}}"#)
}

/// What one round of publishing showed.
#[derive(Debug)]
struct Round {
    /// Events each publisher's client reported, by user (a server's permissions error lands here).
    events: Vec<(&'static str, String)>,
    /// Subjects the watcher saw, in order.
    seen: Vec<String>,
}

/// Inside `netns`: the watcher subscribes to `lb.>`, then each `(publisher, subject, payload)` is published on its
/// own connection and flushed, in order. Waits until the watcher has seen `expect_seen` messages (or 5s), then a
/// little longer for late events, and reports.
fn publish_round(netns: &Netns, watcher: &BusClient, messages: Vec<(BusClient, &'static str, String)>, expect_seen: usize) -> Round {
    let watcher = watcher.clone();
    block_on_in(netns, move || async move {
        use futures_util::StreamExt;
        let (watching, _) = watcher.connect(NATS_URL).await.expect("the watcher connects");
        let mut subscription = watching.subscribe("lb.>").await.expect("the watcher subscribes");
        watching.flush().await.expect("the subscription reaches the server");
        let mut publishers = Vec::new();
        for (publisher, subject, payload) in messages {
            let (client, events) = publisher.connect(NATS_URL).await.unwrap_or_else(|err| panic!("{} connects: {err}", publisher.user));
            client.publish(subject, payload.into()).await.expect("publish");
            client.flush().await.expect("flush");
            publishers.push((publisher.user, client, events));
        }
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while seen.len() < expect_seen {
            match tokio::time::timeout_at(deadline, subscription.next()).await {
                Ok(Some(message)) => seen.push(message.subject.to_string()),
                _ => break,
            }
        }
        // Anything the watcher should not have seen would have arrived by now too.
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(10), subscription.next()).await {
            seen.push(message.subject.to_string());
        }
        let mut events = Vec::new();
        for (user, _client, mut received) in publishers {
            while let Ok(event) = received.try_recv() {
                events.push((user, event));
            }
        }
        Round { events, seen }
    })
}

/// The backends `/vips` lists for VIP `name`.
fn backends(netns: &Netns, name: &str) -> Vec<Value> {
    let vips = lb::status(netns, "/vips").expect("/vips answers");
    let vip = vips["vips"].as_array().and_then(|all| all.iter().find(|v| v["name"] == name).cloned());
    vip.unwrap_or_else(|| panic!("no VIP `{name}` in {vips}"))["backends"].as_array().cloned().unwrap_or_default()
}

/// The backend `host:port` of VIP `name`, if `/vips` lists it.
fn backend(netns: &Netns, name: &str, host: &str, port: u16) -> Option<Value> {
    backends(netns, name).into_iter().find(|b| b["host"] == host && b["port"] == port)
}

fn lb_metric(netns: &Netns, prefix: &str) -> Option<f64> {
    let metrics = lb::status(netns, "/metrics").expect("/metrics answers");
    metric_value(metrics.as_str().expect("metrics are text"), prefix)
}

/// Has `publisher` announce `host:port` for VIP `web` on `subject`, repeating as cells do (lb subscribes only
/// once it is on the bus), until `/vips` lists it as learned from NATS.
fn announce_until_taken(netns: &Netns, watcher: &BusClient, (publisher, subject): (&BusClient, &'static str), (host, port): (&str, u16), lb: &Service) {
    let payload = announcement("web", host, port);
    let taken = wait_until(Duration::from_secs(15), || {
        publish_round(netns, watcher, vec![(publisher.clone(), subject, payload.clone())], 1);
        backend(netns, "web", host, port).is_some()
    });
    assert!(taken, "{} announcing {host}:{port} on {subject} did not reach /vips\n{}", publisher.user, lb.log());
    assert_eq!(backend(netns, "web", host, port).unwrap()["source"], "nats");
}

/// The web cell's announcement of `198.18.1.2:port` on its own subject, used as a marker.
fn marker(cell_web: &BusClient, port: u16) -> (BusClient, &'static str, String) {
    (cell_web.clone(), "lb.register.web", announcement("web", "198.18.1.2", port))
}

/// Waits until `/vips` lists the marker on `port`.
fn wait_listed(netns: &Netns, port: u16, lb: &Service) {
    let listed = wait_until(Duration::from_secs(5), || backend(netns, "web", "198.18.1.2", port).is_some());
    assert!(listed, "marker {port} did not reach /vips\n{}", lb.log());
}

const REGISTERED_OK: &str = "switchyard_lb_announcement_messages_total{action=\"register\",result=\"ok\"}";
const REGISTERED_REFUSED: &str = "switchyard_lb_announcement_messages_total{action=\"register\",result=\"rejected\"}";

#[test]
fn lb_takes_announcements_over_tls_only_on_the_subjects_it_allows_and_the_bus_permits() {
    let netns = Netns::new("lb");
    let dir = tempfile::tempdir().unwrap();
    let pki = BusPki::new();
    let conf = pki.write("nats.conf", &lb_bus_config(&pki, &dir.path().join("jetstream")));
    let nats = lb::start_nats(&netns, &["-c", conf.to_str().unwrap()], dir.path());
    let lb_identity = pki.client("lb", LB_PASS);
    let cell_web = pki.client("cell-web", CELL_WEB_PASS);
    let legacy = pki.client("legacy-cell", LEGACY_PASS);
    let watcher = pki.client("watcher", WATCHER_PASS);

    let config = dir.path().join("lb.yaml");
    std::fs::write(&config, lb_config(&pki, &lb_identity, false)).unwrap();
    let mut service = lb::start(&netns, &config, dir.path());
    // lb is on the bus over TLS with its own certificate and password, and its permissions are enough to read the
    // VIP bucket through JetStream.
    assert!(wait_until(Duration::from_secs(10), || service.log().contains("VIP bucket read")), "{}\n{}", service.log(), nats.log());
    assert_eq!(lb_metric(&netns, "switchyard_lb_nats_connected "), Some(1.0));

    // The one-shot commands reach the same bus with the keys of the config they are given: an operator publishes a
    // VIP into the bucket with its own certificate and password, lb serves it, and `lb vip ls` and `lb plan` read
    // the bucket back with lb's.
    let operator = pki.client("operator", OPERATOR_PASS);
    let operator_config = dir.path().join("operator.yaml");
    std::fs::write(&operator_config, format!("nats: {{servers: ['{NATS_URL}'], {}}}\n", operator.keys(&pki.ca, OPERATOR_PASS))).unwrap();
    let db = dir.path().join("db.yaml");
    std::fs::write(&db, format!("name: db\naddress: {DB_VIP}\nport: 5432\n")).unwrap();
    let (code, stdout, stderr) = lb::command(&netns, &["vip", "put", db.to_str().unwrap(), "--config", operator_config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("published VIP `db`"), "{stdout}");
    let served = wait_until(Duration::from_secs(5), || {
        lb::status(&netns, "/vips").is_some_and(|v| v["vips"].as_array().is_some_and(|vips| vips.iter().any(|vip| vip["name"] == "db" && vip["source"] == "kv")))
    });
    assert!(served, "the operator's VIP did not reach lb\n{}", service.log());
    let config_arg = config.to_str().unwrap();
    let (code, stdout, stderr) = lb::command(&netns, &["vip", "ls", "--config", config_arg]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("tcp/{DB_VIP}:5432")), "{stdout}");
    let (code, stdout, stderr) = lb::command(&netns, &["plan", "--config", config_arg]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("3 VIPs"), "{stdout}");

    // The web cell announces on its own VIP's subject: lb takes it (cells repeat until lb has subscribed). Each
    // later round ends with a marker from the web cell on a fresh port: once `/vips` lists it, lb has read all
    // that came before, so the counts below are exact.
    announce_until_taken(&netns, &watcher, (&cell_web, "lb.register.web"), ("198.18.1.2", 10001), &service);
    publish_round(&netns, &watcher, vec![marker(&cell_web, 10002)], 1);
    wait_listed(&netns, 10002, &service);
    let ok = lb_metric(&netns, REGISTERED_OK).expect("the scoped announcements were counted");
    assert_eq!(lb_metric(&netns, REGISTERED_REFUSED), None);

    // A legacy cell announces on the unscoped subject: it is on the bus, but lb (unscoped_subjects: false) does not
    // even subscribe to it, so it is neither taken nor counted.
    let round = publish_round(&netns, &watcher, vec![(legacy.clone(), "lb.register", announcement("web", "198.18.4.2", 10001)), marker(&cell_web, 10003)], 2);
    assert_eq!(round.seen, ["lb.register", "lb.register.web"], "{round:?}");
    assert!(round.events.iter().all(|(_, event)| !event.contains("Violation")), "{round:?}");
    wait_listed(&netns, 10003, &service);
    assert_eq!(backend(&netns, "web", "198.18.4.2", 10001), None, "the unscoped announcement was taken");
    assert_eq!(lb_metric(&netns, REGISTERED_OK), Some(ok + 1.0), "only the marker may be counted");
    assert_eq!(lb_metric(&netns, REGISTERED_REFUSED), None);

    // The web cell tries to announce the api VIP, on api's subject and on the unscoped one: the NATS server refuses
    // both publishes, nothing reaches the bus, and api gets no backend.
    let forbidden = announcement("api", "198.18.1.2", 10009);
    let round = publish_round(
        &netns,
        &watcher,
        vec![(cell_web.clone(), "lb.register.api", forbidden.clone()), (cell_web.clone(), "lb.register", forbidden.clone()), marker(&cell_web, 10004)],
        1,
    );
    assert_eq!(round.seen, ["lb.register.web"], "{round:?}");
    for subject in ["lb.register.api", "lb.register"] {
        let refusal = format!("Permissions Violation for Publish to \"{subject}\"");
        assert!(round.events.iter().any(|(user, event)| *user == "cell-web" && event.contains(&refusal)), "no `{refusal}` in {round:?}");
    }
    assert!(nats.log().contains("Publish Violation"), "{}", nats.log());
    wait_listed(&netns, 10004, &service);
    assert_eq!(lb_metric(&netns, REGISTERED_OK), Some(ok + 2.0));
    assert_eq!(backends(&netns, "api"), Vec::<Value>::new());

    // It may publish on its own subject, but naming another VIP there gets it no further: lb refuses and counts it.
    let round = publish_round(&netns, &watcher, vec![(cell_web.clone(), "lb.register.web", forbidden), marker(&cell_web, 10005)], 2);
    assert_eq!(round.seen, ["lb.register.web", "lb.register.web"], "{round:?}");
    wait_listed(&netns, 10005, &service);
    assert_eq!(lb_metric(&netns, REGISTERED_REFUSED), Some(1.0), "{}", service.log());
    assert_eq!(lb_metric(&netns, REGISTERED_OK), Some(ok + 3.0));
    assert!(service.log().contains("sent on the subject of VIP `web` but names VIP `api`"), "{}", service.log());
    assert_eq!(backends(&netns, "api"), Vec::<Value>::new());

    // Allowing the unscoped subjects is a NATS setting: a reload says it needs a restart and changes nothing ...
    std::fs::write(&config, lb_config(&pki, &lb_identity, true)).unwrap();
    service.signal(Signal::SIGHUP);
    assert!(wait_until(Duration::from_secs(5), || service.log().contains("configuration reloaded")), "{}", service.log());
    let log = service.log();
    let warning = log.lines().find(|line| line.contains("takes effect only when lb restarts")).unwrap_or_else(|| panic!("no restart warning:\n{log}"));
    assert!(warning.contains("nats"), "{warning}");
    let round = publish_round(&netns, &watcher, vec![(legacy.clone(), "lb.register", announcement("web", "198.18.4.2", 10001)), marker(&cell_web, 10006)], 2);
    assert_eq!(round.seen, ["lb.register", "lb.register.web"], "{round:?}");
    wait_listed(&netns, 10006, &service);
    assert_eq!(backend(&netns, "web", "198.18.4.2", 10001), None, "the reload must not have changed the subscriptions");

    // ... and after a restart the legacy cell's unscoped announcement is taken.
    service.signal(Signal::SIGTERM);
    assert!(service.wait_exit(Duration::from_secs(5)).is_some(), "lb did not stop on SIGTERM");
    let service = lb::start(&netns, &config, dir.path());
    announce_until_taken(&netns, &watcher, (&legacy, "lb.register"), ("198.18.4.2", 10001), &service);
    assert_eq!(backends(&netns, "api"), Vec::<Value>::new());
}

#[test]
fn vips_on_the_lb_status_listener_refuse_every_near_miss_of_the_password() {
    let netns = Netns::new("lb");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lb.yaml");
    std::fs::write(&config, lb::config("", &format!("  - {{name: web, address: {WEB_VIP}, port: 80, backends: [{{host: 198.18.1.2, port: 10001}}]}}\n"))).unwrap();
    let service = lb::start(&netns, &config, dir.path());

    let body = assert_guarded("/vips", |auth| lb::status_answer(&netns, "/vips", auth));
    let vips: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(vips["vips"][0]["name"], "web", "{body}");
    assert_eq!(vips["vips"][0]["backends"][0]["host"], "198.18.1.2", "{body}");
    // Health and metrics stay open; other paths are simply not there.
    let open = ["/health", "/metrics", "/nothing"].map(|path| lb::status_answer(&netns, path, None).map(|(code, _)| code));
    assert_eq!(open, [Some(200), Some(200), Some(404)]);

    // An lb with no status user refuses everyone, the old credentials included.
    drop(service);
    std::fs::write(&config, lb::config("", "  []\n").replace(", user: admin, pass: secret", "")).unwrap();
    let service = netns.spawn("lb", &binary("lb"), &["run", "--config", config.to_str().unwrap()], &[], dir.path());
    assert!(wait_until(Duration::from_secs(10), || lb::status_answer(&netns, "/health", None).is_some_and(|(code, _)| code == 200)), "{}", service.log());
    let refused = [None, Some(AUTH.to_owned()), Some(basic(":")), Some(basic("admin:"))].map(|auth| lb::status_answer(&netns, "/vips", auth.as_deref()).map(|(code, _)| code));
    assert_eq!(refused, [Some(401); 4], "{}", service.log());
}
