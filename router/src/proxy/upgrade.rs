//! Protocol upgrades (WebSocket and others): the handshake goes to the backend on a connection of its own, and
//! after `101 Switching Protocols` the router becomes a byte tunnel between client and backend, with no request
//! timeout for as long as both sides keep it open.

use super::{ConnInfo, Proxy};
use crate::endpoint::InFlight;
use crate::pool::{Attempted, Choice, Pool};
use crate::proxy::answer::RouterError;
use crate::proxy::body::{Exchange, RequestBody, ResponseBody, UpstreamBody};
use crate::proxy::headers;
use http::request::Parts;
use http_body::Body as _;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::Arc;

/// Forwards an upgrade request and, if the backend agrees, splices the two connections together.
pub(super) async fn tunnel(
    proxy: &Proxy,
    mut parts: Parts,
    body: Incoming,
    pool: &Pool,
    preferred: Option<usize>,
    mut exchange: Exchange,
    conn: &ConnInfo,
) -> Response<ResponseBody> {
    let route = format!("{}{}", pool.key().host(), parts.uri.path());
    let client_side = parts.extensions.remove::<OnUpgrade>();
    let limits = proxy.limits();
    let mut tried = Attempted::default();
    let mut request = Request::from_parts(parts, if body.is_end_stream() { RequestBody::Empty } else { RequestBody::Client(body, exchange.count_request_body()) });
    let mut last_error = String::from("no endpoint could take the request");
    for attempt in 0..proxy.settings.max_attempts {
        let index = match proxy.pick(pool, attempt, preferred, None, tried, &limits) {
            Choice::Endpoint(index) => index,
            Choice::AtLimit if attempt == 0 => return RouterError::ConnectionLimit.respond(&route, Some(exchange)),
            _ => break,
        };
        tried.add(index);
        let Some(endpoint) = pool.endpoint(index) else { break };
        headers::add_endpoint(request.headers_mut(), endpoint);
        let mut connection = match Box::pin(proxy.dialer.connect(&endpoint.upstream().as_http1(), true)).await {
            Ok(connection) => connection,
            Err(error) => {
                proxy.blame(endpoint, &error.into());
                last_error = format!("dial {}", endpoint.identity());
                continue;
            }
        };
        let in_flight = InFlight::start(Arc::clone(endpoint));
        let sent = tokio::time::timeout(proxy.settings.endpoint_timeout, connection.send(request)).await;
        let mut response = match sent {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                let error = super::AttemptError::Broken(error.into_error());
                proxy.blame(endpoint, &error);
                return RouterError::EndpointFailure(error.to_string()).respond(&route, Some(exchange));
            }
            Err(_) => {
                proxy.blame(endpoint, &super::AttemptError::Timeout);
                return RouterError::EndpointFailure(super::AttemptError::Timeout.to_string()).respond(&route, Some(exchange));
            }
        };
        endpoint.mark_healthy();
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        headers::strip_hop_by_hop(response.headers_mut(), switching);
        exchange.status = response.status().as_u16();
        if switching {
            let backend_side = hyper::upgrade::on(&mut response);
            conn.activity.become_tunnel();
            if let Some(client_side) = client_side {
                tokio::spawn(async move {
                    let _in_flight = in_flight;
                    let (client, backend) = match tokio::try_join!(client_side, backend_side) {
                        Ok(pair) => pair,
                        Err(err) => {
                            tracing::debug!(%err, "upgrade did not complete");
                            return;
                        }
                    };
                    let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
                    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                        tracing::debug!(%err, "tunnel closed with an error");
                    }
                });
            }
            let (response_parts, _) = response.into_parts();
            // The tunnel task holds the in-flight count; the exchange only names the backend for the log.
            if let Some(entry) = exchange.entry.as_deref_mut() {
                entry.backend = Some(Arc::clone(endpoint));
            }
            return Response::from_parts(response_parts, ResponseBody::full(bytes::Bytes::new(), Some(exchange)));
        }
        // The backend declined the switch: relay its answer; the connection is not pooled.
        let (response_parts, incoming) = response.into_parts();
        exchange.served_by(Some(in_flight), None, std::time::Duration::ZERO);
        return Response::from_parts(response_parts, ResponseBody::upstream(UpstreamBody::Hyper(incoming), exchange));
    }
    RouterError::EndpointFailure(last_error).respond(&route, Some(exchange))
}
