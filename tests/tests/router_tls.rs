//! TLS at both ends of the real router binary, with certificates made at test time: SNI choice, client
//! certificates and `X-Forwarded-Client-Cert`, backends verified by SAN (and removed when the SAN is wrong),
//! backend mTLS, gorouter's statuses for TLS failures, and certificate reload without dropping connections.

// Helpers outside #[test] functions may panic too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use nix::sys::signal::Signal;
use std::sync::Arc;
use std::time::Duration;
use switchyard_tests::backend::{Reply, Transport};
use switchyard_tests::router::metric_value;
use switchyard_tests::tls::{self, TestCa, client_config, yaml_string};
use switchyard_tests::{NatsServer, RouterProcess, TestBackend, free_port, publish, registration};

const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];
const HTTP1: &[&[u8]] = &[b"http/1.1"];

/// A router with TLS on, plus its NATS and a NATS client.
struct Edge {
    _nats: NatsServer,
    router: RouterProcess,
    bus: async_nats::Client,
}

async fn edge(overrides: &[(&str, &str)]) -> Edge {
    let nats = NatsServer::start();
    let ssl_port = free_port().to_string();
    let mut all: Vec<(&str, &str)> = vec![("enable_ssl", "true"), ("ssl_port", &ssl_port)];
    all.extend_from_slice(overrides);
    let router = RouterProcess::start(&nats, &all);
    let bus = nats.client().await;
    Edge { _nats: nats, router, bus }
}

impl Edge {
    async fn register(&self, message: serde_json::Value, uri: &str) {
        publish(&self.bus, "router.register", &message).await;
        assert!(self.router.routes_eventually_have(uri).await, "route {uri} never appeared");
    }
}

fn tls_pem(entries: &[&tls::Issued]) -> String {
    let items: Vec<String> = entries.iter().map(|e| format!("{{{}}}", e.yaml_pair())).collect();
    format!("[{}]", items.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_exact_then_wildcard_then_the_first_certificate() {
    let ca = TestCa::new("edge-ca");
    let first = ca.issue(&["a.example.com", "127.0.0.1"]);
    let second = ca.issue(&["b.example.com"]);
    let wildcard = ca.issue(&["*.apps.example.com"]);
    let edge = edge(&[("tls_pem", &tls_pem(&[&first, &second, &wildcard]))]).await;
    let backend = TestBackend::start("app").await;
    edge.register(registration(backend.port(), &["b.example.com"]), "b.example.com").await;
    let client = client_config(&ca, None, ALPN);
    let addr = edge.router.tls_addr();

    // The exact name wins, and the request is routed as usual.
    let answer = tls::get(addr, "b.example.com", Arc::clone(&client), "b.example.com", "/x", &[]).await.unwrap();
    assert_eq!(answer.server_cert, second.der);
    assert_eq!((answer.answer.status.as_u16(), answer.answer.text()), (200, "app".to_owned()));
    let seen = backend.requests().pop().unwrap();
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(seen.header("host").as_deref(), Some("b.example.com"));

    // So does the first certificate's own name: being first makes it the default, not a catch-all.
    let answer = tls::get(addr, "a.example.com", Arc::clone(&client), "a.example.com", "/", &[]).await.unwrap();
    assert_eq!(answer.server_cert, first.der);
    assert_eq!(answer.answer.status, 404);

    // One label under the wildcard gets the wildcard certificate.
    let answer = tls::get(addr, "shop.apps.example.com", Arc::clone(&client), "shop.apps.example.com", "/", &[]).await.unwrap();
    assert_eq!(answer.server_cert, wildcard.der);
    assert_eq!(answer.answer.status, 404);

    // No SNI at all (clients send none for an IP address) gets the first certificate.
    let answer = tls::get(addr, "127.0.0.1", Arc::clone(&client), "b.example.com", "/", &[]).await.unwrap();
    assert_eq!(answer.server_cert, first.der);
    assert_eq!(answer.answer.text(), "app");
    // So does an unknown name, which the client then rightly refuses.
    let err = tls::get(addr, "unknown.example.org", client, "unknown.example.org", "/", &[]).await.unwrap_err();
    assert!(err.contains("handshake") && err.contains("not valid for name \"unknown.example.org\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_versions_and_plain_http_on_the_tls_port() {
    let ca = TestCa::new("edge-ca");
    let cert = ca.issue(&["a.example.com"]);
    let edge = edge(&[("tls_pem", &tls_pem(&[&cert])), ("min_tls_version", "TLSv1.3")]).await;
    // A client limited to TLS 1.2 is refused; TLS 1.3 works.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls12 = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    let err = tls::get(edge.router.tls_addr(), "a.example.com", Arc::new(tls12), "a.example.com", "/", &[]).await.unwrap_err();
    assert!(err.contains("handshake"), "{err}");
    let answer = tls::get(edge.router.tls_addr(), "a.example.com", client_config(&ca, None, ALPN), "a.example.com", "/", &[]).await.unwrap();
    assert_eq!(answer.answer.status, 404);
    // Plain HTTP sent to the TLS port is a failed handshake, counted, and the plain port still serves.
    let raw = switchyard_tests::http::raw(edge.router.tls_addr(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Duration::from_secs(2)).await;
    assert!(switchyard_tests::http::raw_status(&raw).is_none());
    assert!(edge.router.wait_metric("switchyard_router_tls_handshake_errors_total", 2.0).await);
    assert_eq!(edge.router.get("a.example.com", "/").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_refuses_clients_without_a_trusted_certificate() {
    let ca = TestCa::new("edge-ca");
    let clients = TestCa::new("client-ca");
    let strangers = TestCa::new("stranger-ca");
    let cert = ca.issue(&["a.example.com"]);
    let edge = edge(&[
        ("tls_pem", &tls_pem(&[&cert])),
        ("client_cert_validation", "require"),
        ("client_ca_certs", &yaml_string(clients.pem())),
    ])
    .await;
    let backend = TestBackend::start("app").await;
    edge.register(registration(backend.port(), &["a.example.com"]), "a.example.com").await;
    let addr = edge.router.tls_addr();

    let without = tls::get(addr, "a.example.com", client_config(&ca, None, HTTP1), "a.example.com", "/", &[]).await;
    assert!(without.is_err(), "no client certificate must not get through: {without:?}");
    let stranger = strangers.issue_client("stranger");
    let untrusted = tls::get(addr, "a.example.com", client_config(&ca, Some(&stranger), HTTP1), "a.example.com", "/", &[]).await;
    assert!(untrusted.is_err(), "a certificate from an unknown CA must not get through: {untrusted:?}");
    assert_eq!(backend.count(), 0);

    let member = clients.issue_client("member");
    let answer = tls::get(addr, "a.example.com", client_config(&ca, Some(&member), ALPN), "a.example.com", "/", &[]).await.unwrap();
    assert_eq!(answer.answer.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_client_cert_follows_each_mode() {
    use base64::Engine;
    let ca = TestCa::new("edge-ca");
    let clients = TestCa::new("client-ca");
    let cert = ca.issue(&["a.example.com"]);
    let member = clients.issue_client("member");
    let expected_cert = base64::engine::general_purpose::STANDARD.encode(member.der.as_ref());
    let backend = TestBackend::start("app").await;
    let spoof = [("x-forwarded-client-cert", "spoofed")];
    let pem = tls_pem(&[&cert]);
    let client_cas = yaml_string(clients.pem());

    // (mode, plain HTTP, TLS without a certificate, TLS with one)
    type Row<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<&'a str>);
    let matrix: [Row<'_>; 3] = [
        ("always_forward", Some("spoofed"), Some("spoofed"), Some("spoofed")),
        ("forward", None, None, Some("spoofed")),
        ("sanitize_set", None, None, Some(&expected_cert)),
    ];
    for (mode, plain, tls_without, tls_with) in matrix {
        let edge = edge(&[("tls_pem", &pem), ("client_ca_certs", &client_cas), ("forwarded_client_cert", mode)]).await;
        edge.register(registration(backend.port(), &["a.example.com"]), "a.example.com").await;
        let addr = edge.router.tls_addr();
        let seen = |what: &str| {
            let request = backend.requests().pop().unwrap_or_else(|| panic!("{mode}/{what}: nothing reached the backend"));
            request.header_all("x-forwarded-client-cert")
        };

        let answer = switchyard_tests::http::get_with(edge.router.addr(), "a.example.com", "/", &spoof).await;
        assert_eq!(answer.status, 200);
        assert_eq!(seen("plain"), plain.map(str::to_owned).into_iter().collect::<Vec<_>>(), "{mode}: plain HTTP");

        let answer = tls::get(addr, "a.example.com", client_config(&ca, None, HTTP1), "a.example.com", "/", &spoof).await.unwrap();
        assert_eq!(answer.answer.status, 200);
        assert_eq!(seen("tls"), tls_without.map(str::to_owned).into_iter().collect::<Vec<_>>(), "{mode}: TLS without a certificate");

        let answer = tls::get(addr, "a.example.com", client_config(&ca, Some(&member), ALPN), "a.example.com", "/", &spoof).await.unwrap();
        assert_eq!(answer.answer.status, 200);
        assert_eq!(seen("mtls"), tls_with.map(str::to_owned).into_iter().collect::<Vec<_>>(), "{mode}: TLS with a certificate");
    }
}

/// A TLS backend presenting `cert`, optionally requiring a client certificate from `client_ca`.
async fn tls_backend(cert: &tls::Issued, client_ca: Option<&TestCa>, body: &'static str) -> TestBackend {
    TestBackend::start_speaking(Transport::Tls(cert.server_config(HTTP1, client_ca)), move |_| Reply::ok(body)).await
}

fn tls_registration(port: u16, uri: &str, san: &str) -> serde_json::Value {
    serde_json::json!({ "host": "127.0.0.1", "tls_port": port, "uris": [uri], "server_cert_domain_san": san, "private_instance_id": san })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_prove_their_identity_or_get_gorouters_statuses() {
    let backend_ca = TestCa::new("backend-ca");
    let unknown_ca = TestCa::new("unknown-ca");
    let edge_ca = TestCa::new("edge-ca");
    let edge_cert = edge_ca.issue(&["edge.example.com"]);
    let edge = edge(&[
        ("tls_pem", &tls_pem(&[&edge_cert])),
        ("ca_certs", &format!("[{}]", yaml_string(backend_ca.pem()))),
        ("backends", "{max_attempts: 1}"),
        ("worker_threads", "1"),
    ])
    .await;

    let good = tls_backend(&backend_ca.issue(&["app-1.internal"]), None, "secure app").await;
    edge.register(tls_registration(good.port(), "good.example.com", "app-1.internal"), "good.example.com").await;
    let answer = edge.router.get("good.example.com", "/").await;
    assert_eq!((answer.status.as_u16(), answer.text()), (200, "secure app".to_owned()));
    // Keep-alive reuse: a second request goes over the same verified connection.
    assert_eq!(edge.router.get("good.example.com", "/").await.status, 200);
    assert_eq!(good.requests().iter().map(|r| r.peer).collect::<std::collections::HashSet<_>>().len(), 1);

    // The address now answers with another app's certificate: 503 and the endpoint leaves the route.
    edge.register(tls_registration(good.port(), "recycled.example.com", "app-2.internal"), "recycled.example.com").await;
    let answer = edge.router.get("recycled.example.com", "/").await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert_eq!(answer.text(), "503 Service Unavailable\n");
    assert!(answer.header("x-cf-routererror").unwrap().starts_with("endpoint_failure ("), "{answer:?}");
    let mut removed = false;
    for _ in 0..100 {
        if edge.router.routes().await.get("recycled.example.com").is_none() {
            removed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(removed, "the endpoint with the wrong SAN was not removed: {}", edge.router.routes().await);
    assert!(edge.router.routes().await.get("good.example.com").is_some(), "the same backend under its right SAN stays");
    assert!(edge.router.wait_metric("switchyard_router_backend_identity_removals_total", 1.0).await);

    // A certificate from a CA the router does not trust: 526.
    let untrusted = tls_backend(&unknown_ca.issue(&["app-3.internal"]), None, "nope").await;
    edge.register(tls_registration(untrusted.port(), "untrusted.example.com", "app-3.internal"), "untrusted.example.com").await;
    let answer = edge.router.get("untrusted.example.com", "/").await;
    assert_eq!((answer.status.as_u16(), answer.text()), (526, "526 Invalid SSL Certificate\n".to_owned()));
    assert_eq!(untrusted.count(), 0);

    // A backend that does not speak TLS at all: 525.
    let plain = TestBackend::start("plain").await;
    edge.register(tls_registration(plain.port(), "plain.example.com", "app-4.internal"), "plain.example.com").await;
    let answer = edge.router.get("plain.example.com", "/").await;
    assert_eq!((answer.status.as_u16(), answer.text()), (525, "525 SSL Handshake Failed\n".to_owned()));
    let metrics = edge.router.metrics().await;
    assert!(metric_value(&metrics, "switchyard_router_backend_errors_total{kind=\"tls_untrusted\"}").is_some_and(|v| v >= 1.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_tls_dial_is_retried_on_another_endpoint() {
    let backend_ca = TestCa::new("backend-ca");
    let edge_ca = TestCa::new("edge-ca");
    let edge = edge(&[("tls_pem", &tls_pem(&[&edge_ca.issue(&["e"])])), ("ca_certs", &yaml_string(backend_ca.pem()))]).await;
    let plain = TestBackend::start("plain").await;
    let good = tls_backend(&backend_ca.issue(&["app.internal"]), None, "secure").await;
    edge.register(tls_registration(plain.port(), "app.example.com", "app.internal"), "app.example.com").await;
    publish(&edge.bus, "router.register", &tls_registration(good.port(), "app.example.com", "app.internal")).await;
    for _ in 0..100 {
        if edge.router.routes().await["app.example.com"].as_array().is_some_and(|a| a.len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..6 {
        let answer = edge.router.get("app.example.com", "/").await;
        assert_eq!((answer.status.as_u16(), answer.text()), (200, "secure".to_owned()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_mtls_presents_the_routers_certificate() {
    let backend_ca = TestCa::new("backend-ca");
    let router_clients = TestCa::new("router-client-ca");
    let edge_ca = TestCa::new("edge-ca");
    let router_identity = router_clients.issue_client("router");
    let backend = tls_backend(&backend_ca.issue(&["app.internal"]), Some(&router_clients), "mutual").await;

    let with_identity = edge(&[
        ("tls_pem", &tls_pem(&[&edge_ca.issue(&["e"])])),
        ("ca_certs", &yaml_string(backend_ca.pem())),
        ("backends", &format!("{{{}}}", router_identity.yaml_pair())),
    ])
    .await;
    with_identity.register(tls_registration(backend.port(), "app.example.com", "app.internal"), "app.example.com").await;
    let answer = with_identity.router.get("app.example.com", "/").await;
    assert_eq!((answer.status.as_u16(), answer.text()), (200, "mutual".to_owned()));

    let without = edge(&[("tls_pem", &tls_pem(&[&edge_ca.issue(&["e"])])), ("ca_certs", &yaml_string(backend_ca.pem())), ("backends", "{max_attempts: 1}")]).await;
    without.register(tls_registration(backend.port(), "app.example.com", "app.internal"), "app.example.com").await;
    let answer = without.router.get("app.example.com", "/").await;
    assert!(answer.status.as_u16() == 496 || answer.status == 502, "a router without a client certificate is refused: {answer:?}");
    assert_eq!(backend.count(), 1, "only the router with the certificate got through");
}

/// One kept-alive HTTPS/1.1 connection, to show a reload leaves open connections alone.
struct KeptAlive {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    server_cert: rustls_pki_types::CertificateDer<'static>,
}

impl KeptAlive {
    async fn open(addr: std::net::SocketAddr, ca: &TestCa) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("a.example.com").unwrap();
        let tls = tokio_rustls::TlsConnector::from(client_config(ca, None, HTTP1)).connect(name, stream).await.unwrap();
        let server_cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(connection);
        Self { sender, server_cert }
    }

    async fn get(&mut self) -> u16 {
        let request = Request::get("/").header("host", "a.example.com").body(Full::new(Bytes::new())).unwrap();
        let response = self.sender.send_request(request).await.expect("the kept-alive connection still works");
        let status = response.status().as_u16();
        response.into_body().collect().await.unwrap();
        status
    }
}

async fn served_cert(edge: &Edge, ca: &TestCa) -> rustls_pki_types::CertificateDer<'static> {
    tls::get(edge.router.tls_addr(), "a.example.com", client_config(ca, None, HTTP1), "a.example.com", "/", &[]).await.unwrap().server_cert
}

/// Waits for a reload to show (generously: a reload re-reads the system CA store, slow in a debug build on a busy
/// machine).
async fn wait_for_cert(edge: &Edge, ca: &TestCa, expected: &rustls_pki_types::CertificateDer<'static>) -> bool {
    for _ in 0..600 {
        if served_cert(edge, ca).await == *expected {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_sighup_and_on_file_change_without_dropping_connections() {
    let ca = TestCa::new("edge-ca");
    let v1 = ca.issue(&["a.example.com"]);
    let v2 = ca.issue(&["a.example.com"]);
    let v3 = ca.issue(&["a.example.com"]);
    let mut edge = edge(&[("tls_pem", &tls_pem(&[&v1]))]).await;
    let backend = TestBackend::start("app").await;
    edge.register(registration(backend.port(), &["a.example.com"]), "a.example.com").await;
    let mut open = KeptAlive::open(edge.router.tls_addr(), &ca).await;
    assert_eq!(open.server_cert, v1.der);
    assert_eq!(open.get().await, 200);

    // SIGHUP: new handshakes get the new certificate; the open connection carries on.
    edge.router.rewrite_config(&[("tls_pem", &tls_pem(&[&v2]))]);
    edge.router.service.signal(Signal::SIGHUP);
    assert!(wait_for_cert(&edge, &ca, &v2.der).await, "SIGHUP did not reload:\n{}", edge.router.service.log());
    assert_eq!(open.get().await, 200);

    // A bad paste changes nothing and says which key is wrong.
    edge.router.rewrite_config(&[("tls_pem", "[{cert_chain: not-a-certificate, private_key: nope}]")]);
    edge.router.service.signal(Signal::SIGHUP);
    let mut failed_reload = false;
    for _ in 0..3 {
        failed_reload = failed_reload || edge.router.wait_metric("switchyard_router_tls_reloads_total{result=\"error\"}", 1.0).await;
    }
    assert!(failed_reload, "the bad reload was not reported:\n{}", edge.router.service.log());
    assert!(edge.router.service.log().contains("tls_pem[0].cert_chain"), "{}", edge.router.service.log());
    assert_eq!(served_cert(&edge, &ca).await, v2.der);

    // No signal at all: the file changing is enough.
    edge.router.rewrite_config(&[("tls_pem", &tls_pem(&[&v3]))]);
    assert!(wait_for_cert(&edge, &ca, &v3.der).await, "the file change was not picked up:\n{}", edge.router.service.log());
    assert_eq!(open.get().await, 200);
    assert!(edge.router.service.is_running());
}

#[test]
fn bad_certificates_stop_the_start_and_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("edge-ca");
    let cert = ca.issue(&["a.example.com"]);
    let other = ca.issue(&["b.example.com"]);
    for (yaml, key) in [
        (format!("enable_ssl: true\ntls_pem: [{{cert_chain: {}, private_key: {}}}]\n", yaml_string(&cert.cert_pem), yaml_string(&other.key_pem)), "tls_pem[0].private_key"),
        ("enable_ssl: true\ntls_pem: [{cert_chain: garbage, private_key: garbage}]\n".to_owned(), "tls_pem[0].cert_chain"),
        (format!("ca_certs: [{}, oops]\n", yaml_string(ca.pem())), "ca_certs[1]"),
        ("cipher_suites: AES128-SHA\n".to_owned(), "cipher_suites"),
    ] {
        let path = dir.path().join("router.yml");
        std::fs::write(&path, &yaml).unwrap();
        let output = std::process::Command::new(switchyard_tests::binary("router")).arg("--check-config").arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{yaml}\n{stderr}");
        assert!(stderr.contains(&format!("`{key}`")), "expected the key {key} in: {stderr}");
    }
}
