//! Test PKI and TLS clients.
//!
//! Certificates are made at test time with rcgen (ECDSA P-256, fast), so no test depends on a checked-in file or
//! on a date. The clients speak HTTP/1.1 or HTTP/2 over TLS, as ALPN decides, with a chosen SNI and optional
//! client certificate, and report the certificate the server showed so SNI choices can be asserted.

use crate::http::Answer;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    pem: String,
}

/// A certificate and its key.
pub struct Issued {
    /// PEM of the certificate.
    pub cert_pem: String,
    /// PEM (PKCS#8) of the private key.
    pub key_pem: String,
    /// DER of the certificate.
    pub der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl TestCa {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        Self { der: cert.der().clone(), pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// The CA certificate as PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    fn issue_for(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Issued {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("certificate names");
        params.distinguished_name.push(DnType::CommonName, names.first().map_or("client", String::as_str));
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign the certificate");
        Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone(), key_der: key.serialize_der() }
    }

    /// A server certificate for these DNS names (or IP addresses).
    pub fn issue(&self, names: &[&str]) -> Issued {
        self.issue_for(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate with this common name.
    pub fn issue_client(&self, name: &str) -> Issued {
        self.issue_for(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A trust store holding just this CA.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).expect("trust the test CA");
        roots
    }
}

/// A string as a YAML (JSON-style) scalar, for multi-line PEM in a config override.
pub fn yaml_string(text: &str) -> String {
    serde_json::to_string(text).expect("strings encode")
}

impl Issued {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// `{cert_chain: ..., private_key: ...}`, as one `tls_pem` entry or `backends` identity in YAML.
    pub fn yaml_pair(&self) -> String {
        format!("cert_chain: {}, private_key: {}", yaml_string(&self.cert_pem), yaml_string(&self.key_pem))
    }

    /// Server settings presenting this certificate, offering `alpn`, and requiring a client certificate from
    /// `client_ca` if given.
    pub fn server_config(&self, alpn: &[&[u8]], client_ca: Option<&TestCa>) -> Arc<ServerConfig> {
        let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().expect("versions");
        let builder = match client_ca {
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider())
                    .build()
                    .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(vec![self.der.clone()], self.key()).expect("server certificate");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// Client settings trusting `ca`, presenting `identity` if given, offering `alpn`.
pub fn client_config(ca: &TestCa, identity: Option<&Issued>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().expect("versions").with_root_certificates(ca.roots());
    let mut config = match identity {
        Some(identity) => builder.with_client_auth_cert(vec![identity.der.clone()], identity.key()).expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A response over TLS, with what the connection negotiated.
#[derive(Debug)]
pub struct TlsAnswer {
    /// The response.
    pub answer: Answer,
    /// HTTP/2 or HTTP/1.1, as ALPN chose.
    pub version: Version,
    /// The certificate the server presented.
    pub server_cert: CertificateDer<'static>,
}

/// One request to send over TLS.
pub struct Call<'a> {
    /// Method.
    pub method: Method,
    /// Host: `:authority` on HTTP/2 (no Host header), Host on HTTP/1.1.
    pub host: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// Extra headers.
    pub headers: &'a [(&'a str, &'a str)],
    /// Body.
    pub body: Bytes,
}

/// Connects with `sni`, then sends `GET <path>` for `host` with extra `headers`.
pub async fn get(addr: SocketAddr, sni: &str, config: Arc<ClientConfig>, host: &str, path: &str, headers: &[(&str, &str)]) -> Result<TlsAnswer, String> {
    send(addr, sni, config, Call { method: Method::GET, host, path, headers, body: Bytes::new() }).await
}

/// Connects with `sni` and sends `call` in whichever protocol ALPN chose. Response trailers are folded into the
/// answer's headers with a `trailer-` prefix.
pub async fn send(addr: SocketAddr, sni: &str, config: Arc<ClientConfig>, call: Call<'_>) -> Result<TlsAnswer, String> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| format!("server name: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, stream).await.map_err(|e| format!("handshake: {e}"))?;
    let (_, session) = tls.get_ref();
    let server_cert = session.peer_certificates().and_then(<[_]>::first).cloned().ok_or("no server certificate")?;
    let h2 = session.alpn_protocol() == Some(b"h2");
    let Call { method, host, path, headers, body } = call;
    let builder = if h2 {
        Request::builder().method(method).uri(format!("https://{host}{path}"))
    } else {
        Request::builder().method(method).uri(path).header("host", host)
    };
    let builder = headers.iter().fold(builder, |b, (name, value)| b.header(*name, *value));
    let request = builder.body(Full::new(body)).map_err(|e| format!("request: {e}"))?;
    let io = TokioIo::new(tls);
    let response = if h2 {
        let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(connection);
        tokio::time::timeout(Duration::from_secs(30), sender.send_request(request)).await.map_err(|_| "response timed out".to_owned())?
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(connection);
        tokio::time::timeout(Duration::from_secs(30), sender.send_request(request)).await.map_err(|_| "response timed out".to_owned())?
    }
    .map_err(|e| format!("send: {e}"))?;
    let version = response.version();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.map_err(|e| format!("body: {e}"))?;
    let trailers = collected.trailers().cloned();
    let mut headers = parts.headers;
    for (name, value) in trailers.iter().flatten() {
        if let Ok(name) = hyper::header::HeaderName::from_bytes(format!("trailer-{name}").as_bytes()) {
            headers.append(name, value.clone());
        }
    }
    Ok(TlsAnswer { answer: Answer { status: parts.status, headers, body: collected.to_bytes() }, version, server_cert })
}
