//! Client helpers: a plain HTTP/1.1 client for ordinary requests, and raw byte exchanges for asserting exactly
//! what went over the wire.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub mod wire;

/// A whole response.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// Every value of a header.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request on a fresh connection and reads the whole answer.
pub async fn send(addr: SocketAddr, request: Request<Full<Bytes>>) -> Result<Answer, String> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request))
        .await
        .map_err(|_| "response timed out".to_owned())?
        .map_err(|e| format!("send: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
    Ok(Answer { status: parts.status, headers: parts.headers, body })
}

/// `GET http://<host><path>` sent to `addr`.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Answer {
    get_with(addr, host, path, &[]).await
}

/// `GET` with extra headers.
pub async fn get_with(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut builder = Request::get(path).header("host", host);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(Bytes::new())).expect("valid test request");
    send(addr, request).await.unwrap_or_else(|e| panic!("GET {host}{path} via {addr} failed: {e}"))
}

/// Writes `bytes` and reads until the peer closes or `timeout` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect for a raw exchange");
    stream.write_all(bytes).await.expect("write raw request");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, stream.read_to_end(&mut out)).await;
    out
}

/// The status code of the first response in raw bytes, if any.
pub fn raw_status(bytes: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(bytes.get(..bytes.len().min(64))?).ok()?;
    text.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

/// How the server left a raw exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It closed the connection (FIN).
    Closed,
    /// It reset the connection (usually: closed with unread request bytes still queued).
    Reset,
    /// The connection was still open when the exchange stopped waiting.
    Open,
}

/// What came back from a raw exchange.
#[derive(Debug, Clone)]
pub struct RawExchange {
    /// Every byte received.
    pub received: Vec<u8>,
    /// How the connection ended.
    pub ending: Ending,
    /// Whether every request byte could be written (a server may close before reading them all).
    pub sent_all: bool,
}

impl RawExchange {
    /// The responses in the received bytes, read strictly.
    pub fn responses(&self) -> Result<Vec<wire::Message>, String> {
        wire::messages(&self.received, wire::Side::Response).map(|(found, _)| found)
    }
}

/// Writes `bytes` (concurrently with reading, so a server that answers early and stops reading cannot stall the
/// writer), and reads until the server closes, `timeout` passes, or the received responses are complete and
/// nothing more arrives for `quiet`. A connection the server keeps open therefore costs `quiet`, not `timeout`.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration, quiet: Duration) -> RawExchange {
    let stream = TcpStream::connect(addr).await.expect("connect for a raw exchange");
    let (mut reader, mut writer) = stream.into_split();
    let request = bytes.to_vec();
    let written = tokio::spawn(async move {
        let sent = writer.write_all(&request).await.is_ok();
        // Keep the write half open: closing it would tell the server the client is gone.
        (sent, writer)
    });
    let deadline = tokio::time::Instant::now() + timeout;
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let ending = loop {
        let settled = wire::messages(&received, wire::Side::Response)
            .is_ok_and(|(found, left)| left == 0 && !found.is_empty() && found.iter().all(|m| m.complete && m.framing != wire::Framing::UntilClose));
        let wait = if settled { quiet.min(deadline.saturating_duration_since(tokio::time::Instant::now())) } else { deadline.saturating_duration_since(tokio::time::Instant::now()) };
        match tokio::time::timeout(wait, reader.read(&mut buf)).await {
            Err(_) => break Ending::Open,
            Ok(Ok(0)) => break Ending::Closed,
            Ok(Ok(n)) => received.extend_from_slice(buf.get(..n).unwrap_or_default()),
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionReset => break Ending::Reset,
            Ok(Err(err)) => panic!("reading a raw exchange from {addr}: {err}"),
        }
    };
    if ending == Ending::Open && !written.is_finished() {
        written.abort();
    }
    let sent_all = matches!(tokio::time::timeout(Duration::from_secs(5), written).await, Ok(Ok((true, _))));
    RawExchange { received, ending, sent_all }
}
