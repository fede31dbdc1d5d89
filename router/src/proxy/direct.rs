//! Plain HTTP/1.1 to a backend, driven by the request's own task.
//!
//! Most requests through the router are bodyless (GET, HEAD, DELETE...) or carry a small body, to plain HTTP/1.1
//! backends. For those, a client connection run as a task of its own (fed through a channel, answering through
//! another) costs more than the exchange itself: the request's task writes the head (and the small body, read whole
//! beforehand, in the same write), reads the response head and hands the socket to the response body, which reads
//! the rest as the client takes it and puts the connection back in the worker's pool once the body is complete.
//! The protocol decisions are `wire.rs`'s; this module only moves bytes.
//!
//! Requests with a larger or unsized body, upgrades, TLS and HTTP/2 backends keep the general client in
//! `upstream.rs`.

use crate::endpoint::UpstreamKey;
use crate::proxy::upstream;
use crate::proxy::wire::{self, BodyDecoder, Decoded, Head, ProtocolError};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Uri};
use http_body::{Body, Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Room made in the read buffer before a read: the first read of an answer...
const READ_ROOM: usize = 8 * 1024;
/// ...and at most this much, doubling each time a body read fills the room, so a large body takes few reads.
const MAX_READ_ROOM: usize = 256 * 1024;

/// How an exchange on a plain connection failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// No byte of the request could be written: the backend has not seen it.
    #[error("connection closed before the request was sent: {0}")]
    Unsent(io::Error),
    /// The backend closed or reset the connection before any byte of an answer.
    #[error("connection closed before the response")]
    Unanswered(Option<io::Error>),
    /// Reading failed, or the connection ended, part of the way through the answer.
    #[error("connection broken during the response: {0}")]
    Broken(io::Error),
    /// The answer broke the protocol.
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
}

impl DirectError {
    /// Whether the backend cannot have acted on the request, so it may go out again even if not idempotent.
    pub fn unsent(&self) -> bool {
        matches!(self, Self::Unsent(_))
    }

    /// Whether the connection ended without any answer, as it does when a backend times out an idle connection or
    /// dies: an idempotent request may go out again.
    pub fn unanswered(&self) -> bool {
        match self {
            Self::Unsent(_) => true,
            Self::Unanswered(None) => true,
            Self::Unanswered(Some(error)) => matches!(error.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe),
            Self::Broken(_) | Self::Protocol(_) => false,
        }
    }

    /// The `kind` label of the backend-error metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Protocol(_) => "protocol",
            Self::Unsent(_) | Self::Unanswered(_) | Self::Broken(_) => "closed",
        }
    }
}

/// An open plain connection to a backend, and what it has read but not yet used.
#[derive(Debug)]
pub struct DirectConn {
    key: UpstreamKey,
    stream: TcpStream,
    received: BytesMut,
    head: Vec<u8>,
}

impl DirectConn {
    /// Wraps a freshly connected stream to the backend `key` names.
    pub fn new(key: UpstreamKey, stream: TcpStream) -> Self {
        Self { key, stream, received: BytesMut::new(), head: Vec::new() }
    }

    /// The backend this connection goes to.
    pub fn key(&self) -> &UpstreamKey {
        &self.key
    }

    /// Whether an idle connection can take a request: the backend has not closed it and has sent nothing
    /// unasked. Checking costs no system call unless the socket has been readable since it was last read dry.
    pub fn is_open(&self) -> bool {
        if !self.received.is_empty() {
            return false;
        }
        let mut context = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut context) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(self.stream.try_read(&mut [0u8; 1]), Err(error) if error.kind() == io::ErrorKind::WouldBlock),
        }
    }

    /// Sends a request, head and `body` in one write where the socket takes it, and reads the response head.
    /// Once any of an answer has come the request cannot go again, so its header map (`headers`) is emptied and
    /// reused for the answer's; an error that leaves the request free to go again leaves `headers` as they were.
    pub async fn exchange(&mut self, method: &Method, uri: &Uri, headers: &mut HeaderMap, body: &[u8]) -> Result<Head, DirectError> {
        self.head.clear();
        wire::encode_request_head(method, uri, headers, &mut self.head);
        if !body.is_empty() {
            self.head.extend_from_slice(body);
        }
        let mut written = 0;
        while let Some(rest) = self.head.get(written..).filter(|rest| !rest.is_empty()) {
            // Once any byte has gone, the backend may have begun on the request: it is no longer unsent.
            let failed = |error: io::Error| if written == 0 { DirectError::Unsent(error) } else { DirectError::Unanswered(Some(error)) };
            match self.stream.write(rest).await {
                Ok(0) => return Err(failed(io::ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                Err(error) => return Err(failed(error)),
            }
        }
        loop {
            if !self.received.is_empty()
                && let Some(head) = wire::parse_response_head(&mut self.received, method, headers)? {
                    return Ok(head);
                }
            self.received.reserve(READ_ROOM);
            match self.stream.read_buf(&mut self.received).await {
                Ok(0) if self.received.is_empty() => return Err(DirectError::Unanswered(None)),
                Ok(0) => return Err(DirectError::Broken(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(error) if self.received.is_empty() => return Err(DirectError::Unanswered(Some(error))),
                Err(error) => return Err(DirectError::Broken(error)),
            }
        }
    }
}

/// A backend's response body, read from its connection as the client takes it.
#[derive(Debug)]
pub struct DirectBody {
    connection: Option<DirectConn>,
    decoder: BodyDecoder,
    reusable: bool,
    room: usize,
}

impl DirectBody {
    /// The body that follows `head` on `connection`.
    pub fn new(connection: DirectConn, head: &Head) -> Self {
        let mut body = Self { connection: Some(connection), decoder: BodyDecoder::new(head.framing), reusable: head.reusable, room: READ_ROOM };
        if body.decoder.is_done() {
            body.release();
        }
        body
    }

    /// Gives the connection back to the pool if it can carry another request.
    fn release(&mut self) {
        if let Some(connection) = self.connection.take()
            && self.reusable && self.decoder.is_done() && connection.received.is_empty() {
                upstream::check_in_direct(connection);
            }
    }
}

impl Body for DirectBody {
    type Data = Bytes;
    type Error = DirectError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, DirectError>>> {
        let this = self.get_mut();
        loop {
            let Some(connection) = this.connection.as_mut() else { return Poll::Ready(None) };
            let frame = match this.decoder.decode(&mut connection.received) {
                Ok(Decoded::Data(data)) => Frame::data(data),
                Ok(Decoded::Trailers(trailers)) => Frame::trailers(trailers),
                Ok(Decoded::End) => {
                    this.release();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {
                    connection.received.reserve(this.room);
                    let read = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut connection.stream), cx, &mut connection.received));
                    match read {
                        Ok(filled) if filled >= this.room => this.room = (this.room * 2).min(MAX_READ_ROOM),
                        Ok(0) => {
                            this.reusable = false;
                            if let Err(error) = this.decoder.at_eof() {
                                this.connection = None;
                                return Poll::Ready(Some(Err(error.into())));
                            }
                        }
                        Ok(_) => {}
                        Err(error) => {
                            this.connection = None;
                            return Poll::Ready(Some(Err(DirectError::Broken(error))));
                        }
                    }
                    continue;
                }
                Err(error) => {
                    this.connection = None;
                    return Poll::Ready(Some(Err(error.into())));
                }
            };
            // The client's side stops polling once the body says it is complete, so let go of the connection now.
            if this.decoder.is_done() {
                this.release();
            }
            return Poll::Ready(Some(Ok(frame)));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.decoder.remaining().map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: io::ErrorKind) -> io::Error {
        io::Error::new(kind, "from the socket")
    }

    #[test]
    fn only_a_request_never_written_may_go_again_whatever_its_method() {
        let cases = [
            (DirectError::Unsent(io(io::ErrorKind::BrokenPipe)), true, true, "closed"),
            (DirectError::Unanswered(None), false, true, "closed"),
            (DirectError::Unanswered(Some(io(io::ErrorKind::ConnectionReset))), false, true, "closed"),
            (DirectError::Unanswered(Some(io(io::ErrorKind::TimedOut))), false, false, "closed"),
            (DirectError::Broken(io(io::ErrorKind::UnexpectedEof)), false, false, "closed"),
            (DirectError::Protocol(ProtocolError::ContentLength), false, false, "protocol"),
        ];
        for (error, unsent, unanswered, kind) in cases {
            assert_eq!((error.unsent(), error.unanswered(), error.kind()), (unsent, unanswered, kind), "{error:?}");
        }
    }
}
