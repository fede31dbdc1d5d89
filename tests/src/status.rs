//! A blocking client for the status listener every program runs (`/health`, `/metrics`, `/routes`, `/vips`).
//!
//! Blocking on purpose: it is called from `wait_until` polls and from threads that have joined a network
//! namespace, where no async runtime is at hand.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// `GET path` on a fresh connection, with an `Authorization` header if given: the status code and the body, or
/// `None` when nothing answered.
pub fn status_answer(addr: SocketAddr, path: &str, authorization: Option<&str>) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let auth = authorization.map(|value| format!("Authorization: {value}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: status\r\n{auth}Connection: close\r\n\r\n").ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let code = crate::http::raw_status(&response)?;
    let text = String::from_utf8_lossy(&response);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_owned();
    Some((code, body))
}

/// Just the status code of `GET path`, without credentials (for use in `wait_until`).
pub fn status_code(addr: SocketAddr, path: &str) -> Option<u16> {
    status_answer(addr, path, None).map(|(code, _)| code)
}
