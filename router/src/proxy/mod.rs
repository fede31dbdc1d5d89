//! The request path: from a client request to a backend response, with the routing semantics gorouter users
//! rely on (error answers, forwarded headers, retries, sticky sessions, instance targeting, connection limits,
//! upgrades).
//!
//! Concurrency: each worker thread owns a [`Proxy`] and its own connection pool. The only state shared between
//! threads is the route table (read through a lock-free pointer swap) and per-endpoint atomics. Nothing on this
//! path blocks or takes a lock.

pub mod activity;
pub mod answer;
pub mod arena;
pub mod body;
pub mod direct;
pub mod headers;
mod service_hop;
pub mod sticky;
pub mod trace;
mod upgrade;
pub mod upstream;
pub mod wire;
pub mod xfcc;

use crate::access_log::Entry;
use crate::clock::Clock;
use crate::endpoint::{Endpoint, InFlight, UpstreamKey};
use crate::metrics::{LocalMetrics, RouterMetrics};
use crate::pool::{Attempted, Choice, Limits, Pool};
use crate::registry::Removal;
use crate::route_key::RequestHost;
use crate::route_service::signature::SignatureError;
use crate::route_service::{self as route_services, RouteServices, Verdict};
use crate::table::RouteTable;
use crate::tls::TlsFailure;
use activity::Activity;
use answer::{Malformed, RouterError};
use arc_swap::ArcSwap;
use body::{BodyFault, Exchange, RequestBody, ResponseBody, UpstreamBody};
use direct::{DirectBody, DirectError};
use headers::{Forwarding, ProtoPolicy, X_CF_APP_INSTANCE, X_VCAP_REQUEST_ID};
use http::header::{CONNECTION, HOST, REFERER, TE, TRANSFER_ENCODING, USER_AGENT};
use http_body::Body as _;
use http::{HeaderValue, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};
use switchyard_config::router::{ForwardedClientCert, RouterConfig};
use tokio::sync::mpsc;
use trace::TraceSettings;
use upstream::{DialError, Dialer, Pooled, origin_form};
use wire::{ProtocolError, TransferCodings};
use xfcc::ClientCert;

/// How long a failed endpoint is passed over while others are available.
const FAILURE_WINDOW: Duration = Duration::from_secs(10);

/// The request-path settings, derived once from the config.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Most endpoints tried per request.
    pub max_attempts: u32,
    /// Most requests in flight per endpoint (0: no limit).
    pub max_conns: u32,
    /// Longest wait for a backend's response headers.
    pub endpoint_timeout: Duration,
    /// Largest request head accepted.
    pub max_header_bytes: usize,
    /// Backend cookies that make a session sticky.
    pub sticky_cookie_names: Vec<String>,
    /// Always mark `__VCAP_ID__` Secure.
    pub secure_cookies: bool,
    /// Answer 503 for an emptied pool (it exists only in this mode).
    pub empty_pool_503: bool,
    /// `X-Forwarded-Proto` policy.
    pub proto: ProtoPolicy,
    /// Trace headers to emit.
    pub trace: TraceSettings,
    /// `X-Forwarded-Client-Cert` policy.
    pub forwarded_client_cert: ForwardedClientCert,
    /// Route-service keys and limits (shared by the workers: deriving the keys is slow on purpose).
    pub route_services: Arc<RouteServices>,
}

impl ProxySettings {
    /// Derives the settings from a validated config.
    pub fn from_config(config: &RouterConfig) -> Self {
        let tenant = &config.tracing.w3c_tenant_id;
        Self {
            max_attempts: config.backends.max_attempts.max(1),
            max_conns: config.backends.max_conns,
            endpoint_timeout: config.endpoint_timeout,
            max_header_bytes: config.max_header_bytes,
            sticky_cookie_names: config.sticky_session_cookie_names.clone(),
            secure_cookies: config.secure_cookies,
            empty_pool_503: config.empty_pool_response_code_503,
            proto: ProtoPolicy { force_https: config.force_forwarded_proto_https, sanitize: config.sanitize_forwarded_proto },
            trace: TraceSettings {
                zipkin: config.tracing.enable_zipkin,
                w3c: config.tracing.enable_w3c,
                tracestate_key: if tenant.is_empty() { "gorouter".to_owned() } else { format!("{tenant}@gorouter") },
            },
            forwarded_client_cert: config.forwarded_client_cert,
            route_services: Arc::new(RouteServices::from_config(config)),
        }
    }
}

/// One client connection, as the request path needs it.
#[derive(Debug)]
pub struct ConnInfo {
    /// Peer address.
    pub client: SocketAddr,
    /// Peer IP, preformatted for `X-Forwarded-For`.
    pub client_ip: HeaderValue,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Phase tracking for the connection's timeouts.
    pub activity: Arc<Activity>,
    /// The client certificate, on TLS connections that presented one.
    pub client_cert: ClientCert,
}

impl ConnInfo {
    /// Describes a freshly accepted connection.
    pub fn new(client: SocketAddr, scheme: &'static str, activity: Arc<Activity>) -> Self {
        let ip = client.ip().to_string();
        let client_ip = HeaderValue::from_str(&ip).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { client, client_ip, scheme, activity, client_cert: ClientCert::None }
    }
}

/// The request handler of one worker.
pub struct Proxy {
    table: Arc<ArcSwap<RouteTable>>,
    settings: ProxySettings,
    clock: Clock,
    metrics: RouterMetrics,
    dialer: Dialer,
    removals: mpsc::Sender<Removal>,
    closing: Arc<AtomicBool>,
}

/// A backend's answer and what to keep until its body has been sent.
struct Forwarded {
    response: Response<UpstreamBody>,
    in_flight: Option<InFlight>,
    /// hyper's client connection, to return once the body is read (a direct body returns its own).
    connection: Option<Pooled>,
    backend_time: Duration,
}

/// Why forwarding gave up.
enum Failure {
    /// Every endpoint is at `max_conns`.
    AtLimit,
    /// Attempts failed; the last error, if any attempt was made.
    Endpoint(Option<AttemptError>),
    /// The client's request body failed while it was being sent: nobody on the backend side is to blame.
    Client(BodyFault),
}

impl Failure {
    fn answer(self) -> RouterError {
        match self {
            Self::AtLimit => RouterError::ConnectionLimit,
            Self::Endpoint(Some(AttemptError::Dial(DialError::Tls { target, failure }))) => {
                let reason = format!("dial {target}: {failure}");
                RouterError::BackendTls(failure, reason)
            }
            Self::Endpoint(Some(error)) => RouterError::EndpointFailure(error.to_string()),
            Self::Endpoint(None) => RouterError::EndpointFailure("no endpoint could take the request".to_owned()),
            Self::Client(_) => RouterError::MalformedRequest(Malformed::Body),
        }
    }
}

/// How one attempt on one endpoint ended.
enum Attempt {
    Answered(Response<UpstreamBody>, Option<Pooled>, Duration),
    /// Nothing reached the backend: the request may go to another endpoint.
    Retry(Request<RequestBody>, AttemptError),
    /// The request may have reached the backend: stop.
    Failed(AttemptError),
    /// Reading the client's body failed, which failed the attempt: stop, and blame the client.
    ClientFault(BodyFault),
}

/// Why an attempt failed, with whether the endpoint is to blame.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("{0}")]
    Dial(#[from] DialError),
    #[error("timeout awaiting response headers")]
    Timeout,
    #[error("connection closed before the response: {0}")]
    Broken(hyper::Error),
    #[error("{0}")]
    Direct(DirectError),
    /// An answer hyper read but the router will not pass on.
    #[error("{0}")]
    Answer(ProtocolError),
}

impl AttemptError {
    fn kind(&self) -> &'static str {
        match self {
            Self::Dial(DialError::Tls { failure, .. }) => failure.kind(),
            Self::Dial(_) => "dial",
            Self::Timeout => "timeout",
            Self::Broken(err) if err.is_parse() => "protocol",
            Self::Broken(_) => "closed",
            Self::Direct(error) => error.kind(),
            Self::Answer(_) => "protocol",
        }
    }
}

/// The requested host and path, as the error bodies quote it.
fn route_text(host: &[u8], uri: &Uri) -> String {
    format!("{}{}", String::from_utf8_lossy(host), uri.path())
}

/// Whether a backend connection ended before any byte of an answer: a clean close (EOF) or a reset, the two ways
/// a backend that stopped, or timed out an idle connection, ends it.
fn closed_without_answer(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() {
        return true;
    }
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            return matches!(io.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe);
        }
        cause = inner.source();
    }
    false
}

fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

impl Proxy {
    /// A handler reading routes from `table`, dialling backends with `dialer`, and asking the registry (through
    /// `removals`) to drop endpoints that fail the backend identity check. Once `closing` is set (a drain has
    /// begun), HTTP/1 connections are closed after the answer they are giving.
    pub fn new(
        table: Arc<ArcSwap<RouteTable>>,
        settings: ProxySettings,
        clock: Clock,
        metrics: RouterMetrics,
        dialer: Dialer,
        removals: mpsc::Sender<Removal>,
        closing: Arc<AtomicBool>,
    ) -> Self {
        Self { table, settings, clock, metrics, dialer, removals, closing }
    }

    /// Handles one request.
    ///
    /// A request framed with `Transfer-Encoding` is answered and then its connection is closed. hyper has already
    /// resolved a `Transfer-Encoding` + `Content-Length` conflict in favour of the chunks, but a front proxy that
    /// read the other header would disagree about where the next request starts; closing means no byte after the
    /// body is ever read as a request.
    ///
    /// While draining, every HTTP/1 answer says `Connection: close`. A server that closes an idle keep-alive
    /// connection races the client's next request on it, and the client sees that request fail; closing right
    /// after an answer, which the client was told about, loses nothing. (HTTP/2 connections get a GOAWAY instead,
    /// which names the last stream served.)
    pub async fn serve(&self, request: Request<Incoming>, conn: &ConnInfo) -> Response<ResponseBody> {
        let close = request.headers().contains_key(TRANSFER_ENCODING)
            || (request.version() != Version::HTTP_2 && self.closing.load(Ordering::Relaxed));
        let mut response = self.route(request, conn).await;
        if close {
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    async fn route(&self, request: Request<Incoming>, conn: &ConnInfo) -> Response<ResponseBody> {
        let mut exchange = Exchange::begin(conn.activity.begin(), Instant::now());
        let (mut parts, body) = request.into_parts();
        let arrived_wall = SystemTime::now();
        let host_header = parts.headers.get(HOST);
        // An absolute-form target's authority (or HTTP/2's `:authority`) wins over the Host header (RFC 9112,
        // 3.2.2).
        let host_value = match parts.uri.authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
            None => host_header.cloned(),
        };
        if body::access_log_enabled() {
            exchange.entry = Some(Box::new(Entry {
                started: Some(arrived_wall),
                // The Host as sent, if there was one.
                host: host_header.cloned().or_else(|| host_value.clone()),
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                version: parts.version,
                referer: parts.headers.get(REFERER).cloned(),
                user_agent: parts.headers.get(USER_AGENT).cloned(),
                client: Some(conn.client),
                ..Entry::default()
            }));
        }
        let raw_host: &[u8] = host_value.as_ref().map_or(b"", HeaderValue::as_bytes);
        let requested_uri = parts.uri.clone();
        let fail = |error: RouterError, exchange: Exchange| error.respond(&route_text(raw_host, &requested_uri), Some(exchange));
        if headers::head_size(&parts.method, &parts.uri, &parts.headers) > self.settings.max_header_bytes {
            return fail(RouterError::HeadersTooLarge, exchange);
        }
        if let Some(what) = headers::malformed(&parts.headers) {
            return fail(RouterError::MalformedRequest(what), exchange);
        }
        if parts.method == Method::CONNECT {
            return fail(RouterError::UnsupportedMethod, exchange);
        }
        if raw_host.is_empty() {
            return fail(RouterError::EmptyHost, exchange);
        }
        let Some(host) = RequestHost::parse(raw_host) else {
            return fail(RouterError::UnknownRoute, exchange);
        };
        let lookup_started = Instant::now();
        let pool = self.table.load().lookup(&host, parts.uri.path()).cloned();
        LocalMetrics::lookup(lookup_started.elapsed().as_secs_f64());
        let Some(pool) = pool else {
            return fail(RouterError::UnknownRoute, exchange);
        };
        if pool.is_empty() {
            let error = if self.settings.empty_pool_503 { RouterError::NoEndpoints } else { RouterError::UnknownRoute };
            return fail(error, exchange);
        }
        let targeted = match parts.headers.get(X_CF_APP_INSTANCE) {
            None => None,
            Some(value) => match headers::app_instance(value) {
                None => return fail(RouterError::InvalidAppInstanceHeader, exchange),
                Some((app, index)) => match pool.find_app_instance(app, index) {
                    Some(found) => Some(found),
                    None => {
                        let error = RouterError::UnknownInstance {
                            app: String::from_utf8_lossy(app).into_owned(),
                            index: String::from_utf8_lossy(index).into_owned(),
                        };
                        return fail(error, exchange);
                    }
                },
            },
        };
        let requested_instance: Option<Vec<u8>> =
            sticky::requested_instance(&parts.headers, &self.settings.sticky_cookie_names).map(<[u8]>::to_vec);
        let preferred = targeted.or_else(|| requested_instance.as_deref().and_then(|id| pool.find_instance(id)));
        let hash_key = pool.hash_policy().and_then(|policy| parts.headers.get(policy.header())).cloned();

        let upgrade = headers::is_upgrade(&parts.headers);
        let mut via_service = None;
        let mut from_service = false;
        if let Some(binding) = pool.route_service() {
            match self.settings.route_services.inspect(&parts.headers, arrived_wall) {
                Verdict::Unsupported => return fail(RouterError::RouteServiceUnsupported, exchange),
                _ if upgrade => return fail(RouterError::RouteServiceUpgrade, exchange),
                Verdict::ToService => {
                    let target = requested_uri.path_and_query().map_or("/", |pq| pq.as_str());
                    if !self.settings.route_services.sign(&mut parts.headers, raw_host, target, arrived_wall) {
                        return fail(RouterError::EndpointFailure("could not sign the route service request".to_owned()), exchange);
                    }
                    via_service = Some(Arc::clone(binding));
                }
                Verdict::Returned(url) => {
                    if !self.same_route(&url, &pool) {
                        tracing::info!(forwarded_url = %url, route = %pool.key(), "route service signature is for another route");
                        return fail(RouterError::RouteServiceInvalid, exchange);
                    }
                    route_services::strip(&mut parts.headers);
                    from_service = true;
                }
                Verdict::Refused(SignatureError::Expired(by)) => {
                    tracing::info!(expired_by = ?by, route = %pool.key(), "route service signature expired");
                    return fail(RouterError::RouteServiceExpired, exchange);
                }
                Verdict::Refused(err) => {
                    tracing::info!(%err, route = %pool.key(), "route service signature refused");
                    return fail(RouterError::RouteServiceInvalid, exchange);
                }
            }
        }
        // gRPC needs `te: trailers` to reach an HTTP/2 backend; every other TE value is hop-by-hop.
        let te_trailers = parts.version == Version::HTTP_2 && parts.headers.get(TE).is_some_and(|te| te == "trailers");
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        if te_trailers {
            parts.headers.insert(TE, HeaderValue::from_static("trailers"));
        }
        // A request back from the route service carries the header the route service decided on.
        if !from_service {
            xfcc::apply(&mut parts.headers, self.settings.forwarded_client_cert, &conn.client_cert);
        }
        let arrived_unix_ms = arrived_wall.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
        let facts = Forwarding { client_ip: &conn.client_ip, scheme: conn.scheme, arrived_unix_ms };
        let request_id = headers::add_forwarding(&mut parts.headers, &facts, self.settings.proto, exchange.entry.as_deref_mut());
        if self.settings.trace.zipkin || self.settings.trace.w3c {
            trace::add_trace_headers(&mut parts.headers, &self.settings.trace);
        }
        if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            parts.uri = origin_form(&parts.uri);
            // The request was routed by the target's authority, so that is the Host the backend gets, whatever
            // Host the client sent beside it (RFC 9112, 3.2.2): a backend must never see one name while the
            // router routed by another. HTTP/2 clients often send `:authority` alone.
            if let Some(host) = &host_value {
                parts.headers.insert(HOST, host.clone());
            }
        }
        // The client's own framing decides whether a body can be read whole (see `RequestBody::read_small`).
        let from_http1 = parts.version != Version::HTTP_2;
        parts.version = Version::HTTP_11;

        if upgrade {
            return upgrade::tunnel(self, parts, body, &pool, preferred, exchange, conn).await;
        }

        let body = if body.is_end_stream() { RequestBody::Empty } else { RequestBody::Client(body, exchange.count_request_body()) };
        // A small body is read whole first, within the time a backend would have had to answer it. Boxed: most
        // requests have no body, and inline this state would be copied with every one of them.
        let body = match body {
            RequestBody::Client(..) => match Box::pin(tokio::time::timeout(self.settings.endpoint_timeout, body.read_small(from_http1))).await {
                Ok(read) => read,
                Err(_) => return fail(RouterError::BodyTimeout, exchange),
            },
            _ => Ok(body),
        };
        let forwarded = match body {
            Err(fault) => Err(Failure::Client(fault)),
            Ok(body) => {
                let request = Request::from_parts(parts, body);
                match &via_service {
                    Some(binding) => self.to_route_service(request, binding).await,
                    None => self.forward(request, &pool, preferred, hash_key.as_ref()).await,
                }
            }
        };
        match forwarded {
            Ok(Forwarded { response, in_flight, connection, backend_time }) => {
                let (mut response_parts, upstream_body) = response.into_parts();
                headers::strip_hop_by_hop(&mut response_parts.headers, false);
                // The router speaks HTTP/1.1 to the client whatever the backend spoke; hyper adapts it for
                // HTTP/1.0 clients.
                response_parts.version = Version::HTTP_11;
                if let Some(id) = request_id
                    && let http::header::Entry::Vacant(slot) = response_parts.headers.entry(X_VCAP_REQUEST_ID) {
                        slot.insert(id);
                    }
                if let Some(endpoint) = in_flight.as_ref().map(InFlight::endpoint) {
                    let path = if pool.key().path().is_empty() { "/" } else { pool.key().path() };
                    let pin = sticky::Pin {
                        instance_id: endpoint.private_instance_id(),
                        path,
                        requested: requested_instance.as_deref(),
                        secure_cookies: self.settings.secure_cookies,
                    };
                    sticky::pin_session(&mut response_parts.headers, &pin, &self.settings.sticky_cookie_names);
                }
                exchange.status = response_parts.status.as_u16();
                exchange.served_by(in_flight, connection, backend_time);
                Response::from_parts(response_parts, ResponseBody::upstream(upstream_body, exchange))
            }
            Err(Failure::Client(BodyFault::Gone)) => {
                // The client left in the middle of its body: no one will read an answer, and the exchange logs
                // the request as given up (499).
                drop(exchange);
                RouterError::MalformedRequest(Malformed::Body).respond(&route_text(raw_host, &requested_uri), None)
            }
            Err(failure) => {
                let error = failure.answer();
                if matches!(error, RouterError::EndpointFailure(_)) {
                    self.metrics.bad_gateways.inc();
                }
                fail(error, exchange)
            }
        }
    }

    /// Whether a route service's signed URL names the route this request reached (a signature is good for the
    /// route it was made for, not for any route bound to the same service).
    fn same_route(&self, url: &str, pool: &Pool) -> bool {
        let Some((host, path)) = route_services::url_route(url) else { return false };
        let Some(host) = RequestHost::parse(host.as_bytes()) else { return false };
        self.table.load().lookup(&host, &path).is_some_and(|found| found.key() == pool.key())
    }

    fn limits(&self) -> Limits {
        Limits {
            max_conns: self.settings.max_conns,
            failure_window_ms: u64::try_from(FAILURE_WINDOW.as_millis()).unwrap_or(u64::MAX),
            now_ms: self.clock.now_ms(),
        }
    }

    /// Picks the endpoint for attempt number `attempt`: the targeted or sticky one first if it can take the
    /// request, then the pool's algorithm.
    fn pick(&self, pool: &Pool, attempt: u32, preferred: Option<usize>, hash_key: Option<&HeaderValue>, tried: Attempted, limits: &Limits) -> Choice {
        if attempt == 0
            && let Some(index) = preferred {
                let usable = pool.endpoint(index).is_some_and(|e| limits.max_conns == 0 || e.in_flight() < limits.max_conns);
                if usable {
                    return Choice::Endpoint(index);
                }
            }
        pool.choose(hash_key.map(HeaderValue::as_bytes), tried, limits)
    }

    async fn forward(&self, mut request: Request<RequestBody>, pool: &Pool, preferred: Option<usize>, hash_key: Option<&HeaderValue>) -> Result<Forwarded, Failure> {
        let limits = self.limits();
        let mut tried = Attempted::default();
        let mut last_error: Option<AttemptError> = None;
        for attempt in 0..self.settings.max_attempts {
            let index = match self.pick(pool, attempt, preferred, hash_key, tried, &limits) {
                Choice::Endpoint(index) => index,
                Choice::AtLimit if last_error.is_none() => return Err(Failure::AtLimit),
                Choice::AtLimit | Choice::Empty | Choice::Exhausted => break,
            };
            tried.add(index);
            let Some(endpoint) = pool.endpoint(index) else { break };
            if attempt > 0 {
                self.metrics.retries.inc();
            }
            let in_flight = InFlight::start(Arc::clone(endpoint));
            headers::add_endpoint(request.headers_mut(), endpoint);
            match self.attempt(endpoint.upstream(), endpoint.identity(), request).await {
                Attempt::Answered(response, connection, backend_time) => {
                    endpoint.mark_healthy();
                    return Ok(Forwarded { response, in_flight: Some(in_flight), connection, backend_time });
                }
                Attempt::Retry(returned, error) => {
                    self.blame(endpoint, &error);
                    if matches!(&error, AttemptError::Dial(DialError::Tls { failure: TlsFailure::NameMismatch(_), .. })) {
                        self.remove(pool, endpoint);
                    }
                    request = returned;
                    last_error = Some(error);
                }
                Attempt::Failed(error) => {
                    self.blame(endpoint, &error);
                    return Err(Failure::Endpoint(Some(error)));
                }
                Attempt::ClientFault(fault) => return Err(Failure::Client(fault)),
            }
        }
        Err(Failure::Endpoint(last_error))
    }

    /// Asks the registry to drop an endpoint whose certificate names someone else. If the queue is full the
    /// request is dropped: the next request that meets the endpoint asks again.
    fn remove(&self, pool: &Pool, endpoint: &Arc<Endpoint>) {
        tracing::warn!(endpoint = endpoint.identity(), route = %pool.key(), "backend certificate does not match the registration; removing the endpoint");
        let removal = Removal { route: pool.key().clone(), endpoint: Arc::clone(endpoint) };
        if self.removals.try_send(removal).is_err() {
            tracing::debug!("removal queue is full; a later request will ask again");
        }
    }

    fn blame(&self, endpoint: &Endpoint, error: &AttemptError) {
        self.metrics.backend_errors.with_label_values(&[error.kind()]).inc();
        endpoint.mark_failed(self.clock.now_ms());
        tracing::debug!(endpoint = endpoint.identity(), %error, "backend attempt failed");
    }

    /// Gets a connection: a pooled one if any is open, else a new one.
    async fn connection(&self, key: &UpstreamKey, pooled_allowed: bool) -> Result<(Pooled, bool), DialError> {
        if pooled_allowed {
            while let Some(mut pooled) = upstream::check_out(key) {
                if pooled.ready().await.is_ok() {
                    return Ok((pooled, true));
                }
            }
        }
        // Boxed: dialling (TCP, TLS, HTTP/2 handshakes) is a large future that most requests, reusing a pooled
        // connection, never run; inline it would be copied around with every request's state.
        let fresh = Box::pin(self.dialer.connect(key, false)).await?;
        self.metrics.upstream_connects.inc();
        Ok((fresh, false))
    }

    /// One attempt on one endpoint. A pooled connection that turns out closed (the backend timed it out just as
    /// the request went) is replaced by a fresh one, once, when the request can be sent again: it was never
    /// written, or it is idempotent and bodyless. An idempotent, bodyless request whose fresh connection closed
    /// before any answer (the backend died under it) goes back to the caller to try another endpoint.
    async fn attempt(&self, key: &UpstreamKey, identity: &str, mut request: Request<RequestBody>) -> Attempt {
        if key.tls_name.is_none() && !key.http2 && request.body().whole().is_some() {
            return self.attempt_direct(key, identity, request).await;
        }
        let mut pooled_allowed = true;
        loop {
            let (mut connection, reused) = match self.connection(key, pooled_allowed).await {
                Ok(pair) => pair,
                Err(error) => return Attempt::Retry(request, error.into()),
            };
            let replay = (is_idempotent(request.method()) && matches!(request.body(), RequestBody::Empty)).then(|| {
                let mut copy = Request::new(RequestBody::Empty);
                *copy.method_mut() = request.method().clone();
                *copy.uri_mut() = request.uri().clone();
                *copy.version_mut() = request.version();
                *copy.headers_mut() = request.headers().clone();
                copy
            });
            let tally = request.body().tally();
            let method = request.method().clone();
            let sent = Instant::now();
            let outcome = tokio::time::timeout(self.settings.endpoint_timeout, connection.send(request)).await;
            match outcome {
                Err(_) => return Attempt::Failed(AttemptError::Timeout),
                Ok(Ok(response)) => {
                    let waited = sent.elapsed();
                    LocalMetrics::backend(waited.as_secs_f64());
                    if wire::has_body(&method, response.status()) && TransferCodings::of(response.headers()).unsupported() {
                        // Dropping the unread answer closes its connection.
                        return Attempt::Failed(AttemptError::Answer(ProtocolError::TransferCoding));
                    }
                    return Attempt::Answered(response.map(UpstreamBody::Hyper), Some(connection), waited);
                }
                Ok(Err(mut error)) => {
                    if let Some(fault) = tally.as_ref().and_then(|t| t.fault()) {
                        tracing::debug!(endpoint = identity, ?fault, error = %error.error(), "the client's request body failed");
                        return Attempt::ClientFault(fault);
                    }
                    // Replay only when the backend closed without answering, as it does when it times out an idle
                    // connection or dies; any other failure may have been seen by the backend.
                    let closed_unanswered = closed_without_answer(error.error());
                    let recovered = error.take_message().or_else(|| replay.filter(|_| closed_unanswered));
                    let error = AttemptError::Broken(error.into_error());
                    match recovered {
                        Some(again) if reused && pooled_allowed => {
                            tracing::debug!(endpoint = identity, %error, "pooled connection was closed; sending again on a new one");
                            request = again;
                            pooled_allowed = false;
                        }
                        Some(again) if !reused => return Attempt::Retry(again, error),
                        _ => return Attempt::Failed(error),
                    }
                }
            }
        }
    }

    /// [`Self::attempt`] for a request with no body or a small one read whole, to a plain HTTP/1.1 backend, on a
    /// connection this task drives.
    /// The request is only read until an answer comes, so sending it again needs no copy; the rules for when it may
    /// go again are the same.
    async fn attempt_direct(&self, key: &UpstreamKey, identity: &str, request: Request<RequestBody>) -> Attempt {
        // Taken apart so that the exchange can reuse the request's header map for the answer's.
        let (mut parts, body) = request.into_parts();
        let mut pooled_allowed = true;
        loop {
            let pooled = if pooled_allowed { upstream::check_out_direct(key) } else { None };
            let (mut connection, reused) = match pooled {
                Some(pooled) => (pooled, true),
                None => match Box::pin(self.dialer.connect_direct(key)).await {
                    Ok(fresh) => {
                        self.metrics.upstream_connects.inc();
                        (fresh, false)
                    }
                    Err(error) => return Attempt::Retry(Request::from_parts(parts, body), error.into()),
                },
            };
            let sent = Instant::now();
            let whole = body.whole().unwrap_or_default();
            let exchange = connection.exchange(&parts.method, &parts.uri, &mut parts.headers, whole);
            match tokio::time::timeout(self.settings.endpoint_timeout, exchange).await {
                Err(_) => return Attempt::Failed(AttemptError::Timeout),
                Ok(Ok(head)) => {
                    let waited = sent.elapsed();
                    LocalMetrics::backend(waited.as_secs_f64());
                    let body = DirectBody::new(connection, &head);
                    return Attempt::Answered(Response::from_parts(head.parts, UpstreamBody::Direct(body)), None, waited);
                }
                Ok(Err(error)) => {
                    let again = error.unsent() || (error.unanswered() && is_idempotent(&parts.method) && whole.is_empty());
                    let error = AttemptError::Direct(error);
                    match again {
                        true if reused && pooled_allowed => {
                            tracing::debug!(endpoint = identity, %error, "pooled connection was closed; sending again on a new one");
                            pooled_allowed = false;
                        }
                        true if !reused => return Attempt::Retry(Request::from_parts(parts, body), error),
                        _ => return Attempt::Failed(error),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod future_sizes {
    //! A request's state machine is moved (copied) several times per request, so its size is a hot-path cost. Rare,
    //! large work (dialling with TLS and HTTP/2 handshakes, HTTP/2 sends) is boxed to keep it out; this guards that.
    //! Today the request future is 4,464 bytes and an attempt 1,776, the request taken apart so its header map can
    //! carry the answer's (4,456 and 1,768 before that; 4,344 and 1,720 before small bodies were read whole; 4,992
    //! before the access-log fields were boxed; 5,040 and 1,400 before the direct HTTP/1.1 exchange; the plain HTTP/1.1
    //! router before TLS had 4,888 and 1,336); with the dialler inline they were 11,280 and 7,256.
    use super::*;

    fn size_of_future<A, F: std::future::Future>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn request_futures_stay_small() {
        let config = RouterConfig::default();
        let live = crate::tls::Live::new(crate::tls::Material::build(&config).unwrap());
        let (removals, _queue) = mpsc::channel(1);
        let table = Arc::new(ArcSwap::from_pointee(RouteTable::new()));
        let dialer = Dialer { timeout: Duration::from_secs(1), tls: live.backend };
        let proxy = Proxy::new(table, ProxySettings::from_config(&config), Clock::new(), RouterMetrics::new(), dialer, removals, Arc::default());
        let conn = ConnInfo::new("127.0.0.1:1".parse().unwrap(), "http", Arc::new(Activity::default()));
        let key = UpstreamKey { target: crate::endpoint::DialTarget::new("a", 1), tls_name: None, http2: false };
        let route = size_of_future(|r: Request<Incoming>| proxy.serve(r, &conn));
        let attempt = size_of_future(|r: Request<RequestBody>| proxy.attempt(&key, "a", r));
        assert!(route <= 6 * 1024, "the request future grew to {route} bytes");
        assert!(attempt <= 2 * 1024, "the attempt future grew to {attempt} bytes");
    }
}
