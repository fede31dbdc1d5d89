//! The router's own answers: gorouter's status codes, `X-Cf-Routererror` values and plain-text bodies, exactly,
//! because clients, monitors and support runbooks match on them.

use crate::proxy::body::{Exchange, ResponseBody};
use crate::tls::TlsFailure;
use http::header::{CACHE_CONTROL, CONNECTION, CONTENT_TYPE, HeaderName, HeaderValue, X_CONTENT_TYPE_OPTIONS};
use http::{Response, StatusCode};

/// The header that says why the router, not the app, answered.
pub const X_CF_ROUTERERROR: HeaderName = HeaderName::from_static("x-cf-routererror");

/// gorouter's statuses for backend TLS failures: 503 for a certificate naming someone else (the endpoint is
/// stale), 526 for an untrusted certificate, 496 when the backend refuses the router's certificate, 525 otherwise.
fn tls_status(failure: &TlsFailure) -> StatusCode {
    let code = match failure {
        TlsFailure::NameMismatch(_) => 503,
        TlsFailure::Untrusted(_) => 526,
        TlsFailure::ClientCertRejected(_) => 496,
        TlsFailure::Handshake(_) => 525,
    };
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY)
}

fn tls_body(failure: &TlsFailure) -> &'static str {
    match failure {
        TlsFailure::NameMismatch(_) => "503 Service Unavailable",
        TlsFailure::Untrusted(_) => "526 Invalid SSL Certificate",
        TlsFailure::ClientCertRejected(_) => "496 SSL Certificate Required",
        TlsFailure::Handshake(_) => "525 SSL Handshake Failed",
    }
}

/// What is wrong with a request that hyper parsed but the router will not forward, because a backend (or a proxy
/// in front) could read it differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// More than one Host field line: which one names the route?
    RepeatedHost,
    /// A transfer coding other than one `chunked` (`gzip, chunked`, `chunked, chunked`, two field lines): the
    /// router decodes only the chunks, so the backend would get coded bytes with nothing saying so.
    TransferCoding,
    /// The body's chunked framing did not decode.
    Body,
}

impl Malformed {
    fn detail(self) -> &'static str {
        match self {
            Self::RepeatedHost => "More than one Host header",
            Self::TransferCoding => "Unsupported Transfer-Encoding",
            Self::Body => "Malformed request body",
        }
    }
}

/// Why the router answered itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterError {
    /// No route for the Host and path.
    UnknownRoute,
    /// HTTP/1.0 request without a Host.
    EmptyHost,
    /// The route exists but has no endpoints.
    NoEndpoints,
    /// Every attempt on a backend failed; the reason is the last failure.
    EndpointFailure(String),
    /// Request head over `max_header_bytes`.
    HeadersTooLarge,
    /// Every endpoint is at `backends.max_conns`.
    ConnectionLimit,
    /// `X-CF-APP-INSTANCE` is not `<guid>:<index>`.
    InvalidAppInstanceHeader,
    /// A request the router will not forward as it stands.
    MalformedRequest(Malformed),
    /// A method the router does not proxy (CONNECT: the router is not a tunnel to arbitrary hosts).
    UnsupportedMethod,
    /// Every attempt failed and the last one failed the backend's TLS handshake.
    BackendTls(TlsFailure, String),
    /// The route is bound to a route service, but no `route_services_secret` is configured.
    RouteServiceUnsupported,
    /// A protocol upgrade (WebSocket) for a route bound to a route service.
    RouteServiceUpgrade,
    /// A request came back from a route service with a signature older than `route_services_timeout`.
    RouteServiceExpired,
    /// A request came back from a route service with a signature that does not verify, or names another route.
    RouteServiceInvalid,
    /// The client announced a small body (read whole before forwarding) and did not send it within
    /// `endpoint_timeout`.
    BodyTimeout,
    /// `X-CF-APP-INSTANCE` names an instance the route does not have.
    UnknownInstance {
        /// App GUID asked for.
        app: String,
        /// Instance index asked for.
        index: String,
    },
}

impl RouterError {
    fn status(&self) -> StatusCode {
        match self {
            Self::UnknownRoute => StatusCode::NOT_FOUND,
            Self::EmptyHost | Self::InvalidAppInstanceHeader | Self::UnknownInstance { .. } | Self::MalformedRequest(_) => StatusCode::BAD_REQUEST,
            Self::NoEndpoints | Self::ConnectionLimit => StatusCode::SERVICE_UNAVAILABLE,
            Self::EndpointFailure(_) => StatusCode::BAD_GATEWAY,
            Self::UnsupportedMethod => StatusCode::METHOD_NOT_ALLOWED,
            Self::BackendTls(failure, _) => tls_status(failure),
            Self::RouteServiceUnsupported | Self::RouteServiceInvalid => StatusCode::BAD_GATEWAY,
            Self::RouteServiceUpgrade => StatusCode::SERVICE_UNAVAILABLE,
            Self::RouteServiceExpired => StatusCode::GATEWAY_TIMEOUT,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn header(&self) -> HeaderValue {
        match self {
            Self::UnknownRoute | Self::UnknownInstance { .. } => HeaderValue::from_static("unknown_route"),
            Self::EmptyHost => HeaderValue::from_static("empty_host"),
            Self::NoEndpoints => HeaderValue::from_static("no_endpoints"),
            Self::HeadersTooLarge => HeaderValue::from_static("max-request-size-exceeded"),
            Self::ConnectionLimit => HeaderValue::from_static("Connection Limit Reached"),
            Self::InvalidAppInstanceHeader => HeaderValue::from_static("invalid_cf_app_instance_header"),
            Self::UnsupportedMethod => HeaderValue::from_static("unsupported_method"),
            Self::MalformedRequest(_) => HeaderValue::from_static("malformed_request"),
            Self::BodyTimeout => HeaderValue::from_static("request_body_timeout"),
            Self::RouteServiceUnsupported | Self::RouteServiceUpgrade => HeaderValue::from_static("route_service_unsupported"),
            Self::RouteServiceExpired => HeaderValue::from_static("route_service_signature_expired"),
            Self::RouteServiceInvalid => HeaderValue::from_static("route_service_signature_invalid"),
            Self::EndpointFailure(reason) | Self::BackendTls(_, reason) => {
                let text: String = format!("endpoint_failure ({reason})").chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect();
                HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("endpoint_failure"))
            }
        }
    }

    fn body(&self, route: &str) -> String {
        match self {
            Self::UnknownRoute => format!("404 Not Found: Requested route ('{route}') does not exist.\n"),
            Self::EmptyHost => "400 Bad Request: Request had empty Host header\n".to_owned(),
            Self::NoEndpoints => format!("503 Service Unavailable: Requested route ('{route}') has no available endpoints.\n"),
            Self::EndpointFailure(_) => "502 Bad Gateway: Registered endpoint failed to handle the request.\n".to_owned(),
            Self::HeadersTooLarge => String::new(),
            Self::ConnectionLimit => "503 Service Unavailable: Connection Limit Reached\n".to_owned(),
            Self::InvalidAppInstanceHeader => "400 Bad Request: Invalid X-CF-App-Instance Header\n".to_owned(),
            Self::UnsupportedMethod => "405 Method Not Allowed\n".to_owned(),
            Self::MalformedRequest(what) => format!("400 Bad Request: {}\n", what.detail()),
            Self::BodyTimeout => "408 Request Timeout: The request body did not arrive in time.\n".to_owned(),
            Self::BackendTls(failure, _) => format!("{}\n", tls_body(failure)),
            Self::RouteServiceUnsupported => "502 Bad Gateway: Support for route services is disabled.\n".to_owned(),
            Self::RouteServiceUpgrade => "503 Service Unavailable: Websocket requests are not supported for routes bound to Route Services.\n".to_owned(),
            Self::RouteServiceExpired => "504 Gateway Timeout: Route service request expired.\n".to_owned(),
            Self::RouteServiceInvalid => "502 Bad Gateway: Failed to validate Route Service Signature.\n".to_owned(),
            Self::UnknownInstance { app, index } => {
                format!("400 Bad Request: Requested instance ('{index}') with guid ('{app}') does not exist for route ('{route}')\n")
            }
        }
    }

    /// The full answer. `route` is the requested host and path (no scheme, no query).
    pub fn respond(&self, route: &str, mut exchange: Option<Exchange>) -> Response<ResponseBody> {
        let status = self.status();
        let header = self.header();
        if let Some(exchange) = exchange.as_mut() {
            exchange.status = status.as_u16();
            if let Some(entry) = exchange.entry.as_deref_mut() {
                entry.router_error = Some(header.clone());
            }
        }
        let body = self.body(route);
        let has_body = !body.is_empty();
        let mut response = Response::new(ResponseBody::full(body, exchange));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(X_CF_ROUTERERROR, header);
        if has_body {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        }
        if *self == Self::UnknownRoute {
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store"));
        }
        if *self == Self::BodyTimeout {
            // The rest of the body may still come: nothing after it on this connection can be read as a request.
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_route_matches_gorouter() {
        let response = RouterError::UnknownRoute.respond("app.example.com/path", None);
        assert_eq!(response.status(), 404);
        assert_eq!(response.headers()["x-cf-routererror"], "unknown_route");
        assert_eq!(response.headers()["cache-control"], "no-cache, no-store");
    }

    #[test]
    fn endpoint_failure_reason_is_sanitised() {
        let response = RouterError::EndpointFailure("dial 10.0.0.1:80: refused\r\nx".into()).respond("a", None);
        assert_eq!(response.status(), 502);
        assert_eq!(response.headers()["x-cf-routererror"], "endpoint_failure (dial 10.0.0.1:80: refused??x)");
    }

    #[test]
    fn backend_tls_failures_use_gorouters_statuses() {
        for (failure, status, body) in [
            (TlsFailure::NameMismatch("a".into()), 503, "503 Service Unavailable\n"),
            (TlsFailure::Untrusted("x".into()), 526, "526 Invalid SSL Certificate\n"),
            (TlsFailure::ClientCertRejected("x".into()), 496, "496 SSL Certificate Required\n"),
            (TlsFailure::Handshake("x".into()), 525, "525 SSL Handshake Failed\n"),
        ] {
            let error = RouterError::BackendTls(failure, "dial 10.0.0.1:443: why".into());
            assert_eq!(error.status().as_u16(), status);
            assert_eq!(error.body("a"), body);
            assert_eq!(error.header(), "endpoint_failure (dial 10.0.0.1:443: why)");
        }
    }

    #[test]
    fn malformed_requests_are_400_and_say_what_was_wrong() {
        for (what, body) in [
            (Malformed::RepeatedHost, "400 Bad Request: More than one Host header\n"),
            (Malformed::TransferCoding, "400 Bad Request: Unsupported Transfer-Encoding\n"),
            (Malformed::Body, "400 Bad Request: Malformed request body\n"),
        ] {
            let error = RouterError::MalformedRequest(what);
            assert_eq!(error.status(), 400);
            assert_eq!(error.header(), "malformed_request");
            assert_eq!(error.body("a"), body);
        }
    }

    #[test]
    fn a_body_that_did_not_arrive_is_408_and_ends_the_connection() {
        let response = RouterError::BodyTimeout.respond("a", None);
        assert_eq!(response.status(), 408);
        assert_eq!(response.headers()["x-cf-routererror"], "request_body_timeout");
        assert_eq!(response.headers()["connection"], "close");
    }

    #[test]
    fn header_limit_has_no_body() {
        let response = RouterError::HeadersTooLarge.respond("a", None);
        assert_eq!(response.status(), 431);
        assert!(response.headers().get("content-type").is_none());
    }
}
