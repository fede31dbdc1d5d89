//! A minimal keep-alive HTTP/1.1 client over one connection, for readiness checks, metrics scrapes and the
//! probes that find out when a route becomes routable. Load itself comes from wrk and oha, not from here.

use crate::error::{BenchError, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;

/// One keep-alive connection, re-opened when the server closes it.
pub struct Client {
    addr: SocketAddr,
    sender: Option<SendRequest<Empty<Bytes>>>,
}

/// A response's status and body.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: Bytes,
}

fn failed(addr: SocketAddr, problem: impl std::fmt::Display) -> BenchError {
    BenchError::BadRun { what: format!("HTTP client to {addr}"), problem: problem.to_string() }
}

impl Client {
    /// A client for `addr`; connects on first use.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, sender: None }
    }

    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>> {
        let stream = tokio::net::TcpStream::connect(self.addr).await.map_err(|e| failed(self.addr, e))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| failed(self.addr, e))?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// `GET path` with `Host: host` (and optional basic-auth header value).
    pub async fn get(&mut self, host: &str, path: &str, authorization: Option<&str>) -> Result<Answer> {
        let mut sender = match self.sender.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.connect().await?,
        };
        sender.ready().await.map_err(|e| failed(self.addr, e))?;
        let mut request = hyper::Request::get(path).header(hyper::header::HOST, host);
        if let Some(value) = authorization {
            request = request.header(hyper::header::AUTHORIZATION, value);
        }
        let request = request.body(Empty::new()).map_err(|e| failed(self.addr, e))?;
        let response = sender.send_request(request).await.map_err(|e| failed(self.addr, e))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| failed(self.addr, e))?.to_bytes();
        self.sender = Some(sender);
        Ok(Answer { status, body })
    }
}

/// The value of the first sample of `name` (a metric without labels) in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lines_are_matched_by_exact_name() {
        let text = "# HELP x\nswitchyard_router_routes_total 9\nswitchyard_router_routes 1234\n";
        assert_eq!(metric(text, "switchyard_router_routes"), Some(1234.0));
        assert_eq!(metric(text, "switchyard_router_missing"), None);
    }
}
