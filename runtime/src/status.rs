//! The status listener every program runs: a tiny HTTP/1.1 server for `/health`, `/metrics` and each program's
//! own read-only views (`/routes`, `/vips`).
//!
//! It lives on the control side, never on the proxy's hot path, so handlers may build whole JSON documents.
//! Anything beyond health and metrics sits behind basic auth. The check compares SHA-256 digests of the given and
//! the expected `user:pass` in constant time, so neither which byte differs nor how long the secret is shows in
//! the time a refusal takes (the expected digest is made once, when the credentials are configured).

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ring::digest::{SHA256, digest};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A status response: small, fully buffered.
pub type StatusResponse = Response<Full<Bytes>>;

/// Answers status requests.
pub trait StatusHandler: Send + Sync + 'static {
    /// Produces the answer for one request.
    fn handle(&self, request: &Request<Incoming>) -> StatusResponse;
}

/// A plain-text answer.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> StatusResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// A JSON answer.
pub fn json<T: serde::Serialize>(value: &T) -> StatusResponse {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("could not encode the answer: {err}\n")),
    }
}

/// The Prometheus exposition.
pub fn metrics(body: Vec<u8>) -> StatusResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    response
}

/// 404 for paths the listener does not serve.
pub fn not_found() -> StatusResponse {
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// Basic-auth credentials. With no user configured, every request is refused: an admin view is never open by
/// accident.
#[derive(Clone)]
pub struct BasicAuth {
    /// SHA-256 of `user:pass`; only the digest is kept.
    expected: Option<[u8; DIGEST_LEN]>,
}

const DIGEST_LEN: usize = 32;

/// The SHA-256 of `bytes`. Its length is fixed, so comparing two of them takes the same time whatever the
/// lengths of what was hashed.
fn fingerprint(bytes: &[u8]) -> [u8; DIGEST_LEN] {
    let mut out = [0; DIGEST_LEN];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

impl BasicAuth {
    /// Credentials to require; empty user means "refuse everyone".
    pub fn new(user: &str, pass: &str) -> Self {
        let expected = (!user.is_empty()).then(|| fingerprint(format!("{user}:{pass}").as_bytes()));
        Self { expected }
    }

    /// Whether the request carries the right credentials.
    pub fn allows<B>(&self, request: &Request<B>) -> bool {
        let Some(expected) = &self.expected else { return false };
        let Some(header) = request.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return false };
        let Some(encoded) = header.strip_prefix("Basic ").or_else(|| header.strip_prefix("basic ")) else { return false };
        let Ok(given) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else { return false };
        // Fixed-size digests compared in constant time: no early exit on a short, long or nearly right secret.
        bool::from(fingerprint(&given).ct_eq(expected))
    }

    /// The 401 answer that asks for credentials.
    pub fn challenge() -> StatusResponse {
        let mut response = text(StatusCode::UNAUTHORIZED, "401 Unauthorized\n");
        response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"switchyard\""));
        response
    }
}

/// Serves `handler` on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, handler: Arc<dyn StatusHandler>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                tracing::warn!(%err, "status listener accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = Arc::clone(&handler);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = handler.handle(&request);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                () = shutdown.cancelled() => {}
                result = connection => {
                    if let Err(err) = result {
                        tracing::debug!(%err, "status connection ended with an error");
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_with(auth: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().uri("/routes");
        if let Some(auth) = auth {
            builder = builder.header(AUTHORIZATION, auth);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn basic_auth_checks_credentials() {
        let auth = BasicAuth::new("admin", "secret");
        let good = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("admin:secret"));
        let wrong = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("admin:secreT"));
        assert!(auth.allows(&request_with(Some(&good))));
        assert!(!auth.allows(&request_with(Some(&wrong))));
        assert!(!auth.allows(&request_with(Some("Basic !!!"))));
        assert!(!auth.allows(&request_with(Some("Bearer x"))));
        assert!(!auth.allows(&request_with(None)));
    }

    #[test]
    fn near_misses_of_any_length_are_refused() {
        let auth = BasicAuth::new("admin", "secret");
        let basic = |credentials: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials));
        for near in ["admin:secreu", "admin:secre", "admin:secret\0", "admin:secretsecret", "admin:", "admin", "Admin:secret", ":secret", ""] {
            assert!(!auth.allows(&request_with(Some(&basic(near)))), "{near:?} was let in");
        }
        assert!(auth.allows(&request_with(Some(&basic("admin:secret").replacen("Basic", "basic", 1)))));
    }

    #[test]
    fn only_a_digest_of_the_secret_is_kept() {
        let auth = BasicAuth::new("admin", "secret");
        assert_eq!(auth.expected, Some(fingerprint(b"admin:secret")));
        assert_ne!(fingerprint(b"admin:secret"), fingerprint(b"admin:secreu"));
        assert_eq!(fingerprint(b"").len(), fingerprint(&[b'x'; 4096]).len());
    }

    #[test]
    fn no_configured_user_refuses_everyone() {
        let auth = BasicAuth::new("", "");
        let empty = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(":"));
        assert!(!auth.allows(&request_with(Some(&empty))));
    }
}
