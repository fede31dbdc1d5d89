//! The hop to a route service: the signed request goes to the service's URL instead of to an app instance.
//!
//! The route service is one destination, not a pool, so there is no balancing; connection failures are retried on
//! fresh connections up to `route_services.max_attempts`. Connections are pooled like any backend's, keyed by the
//! service's address and TLS name.

use super::{Attempt, Failure, Forwarded, Proxy};
use crate::proxy::body::RequestBody;
use crate::route_service::Binding;
use http::Request;
use http::header::HOST;

impl Proxy {
    /// Sends a request (already signed) to the route service `binding` names.
    pub(super) async fn to_route_service(&self, mut request: Request<RequestBody>, binding: &Binding) -> Result<Forwarded, Failure> {
        let Some(destination) = &binding.target else {
            tracing::warn!(url = %binding.url, "route service URL cannot be dialled");
            return Err(Failure::Endpoint(None));
        };
        *request.uri_mut() = destination.path.clone();
        request.headers_mut().insert(HOST, destination.authority.clone());
        let mut last_error = None;
        for attempt in 0..self.settings.route_services.max_attempts {
            if attempt > 0 {
                self.metrics.retries.inc();
            }
            match self.attempt(&destination.upstream, &binding.url, request).await {
                Attempt::Answered(response, connection, backend_time) => {
                    return Ok(Forwarded { response, in_flight: None, connection, backend_time });
                }
                Attempt::Retry(returned, error) => {
                    self.metrics.backend_errors.with_label_values(&[error.kind()]).inc();
                    tracing::debug!(url = %binding.url, %error, "route service attempt failed");
                    request = returned;
                    last_error = Some(error);
                }
                Attempt::Failed(error) => {
                    self.metrics.backend_errors.with_label_values(&[error.kind()]).inc();
                    return Err(Failure::Endpoint(Some(error)));
                }
                Attempt::ClientFault(fault) => return Err(Failure::Client(fault)),
            }
        }
        Err(Failure::Endpoint(last_error))
    }
}
