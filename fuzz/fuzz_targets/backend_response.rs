//! What a backend sends back on a plain HTTP/1.1 connection, as the router reads it.
//!
//! Backends are tenants' code: any of them may answer with anything, and a response that panics the reader takes
//! down every request on that worker. Beyond not panicking, the reading must not depend on how the bytes were cut
//! into reads: the same bytes delivered in one piece or in many give the same head, the same body, the same
//! trailers and the same error, and a head that is not complete yet consumes nothing but the interim answers before it.
#![no_main]

use bytes::BytesMut;
use http::Method;
use libfuzzer_sys::fuzz_target;
use switchyard_router::proxy::wire::{BodyDecoder, Decoded, Framing, ProtocolError, parse_response_head};

/// What reading a whole response produced: status, headers, body, trailers, or the error it ended in.
#[derive(Debug, PartialEq)]
enum Outcome {
    Head(ProtocolError),
    Incomplete,
    Read { status: u16, headers: Vec<(String, Vec<u8>)>, body: Vec<u8>, trailers: Vec<(String, Vec<u8>)>, error: Option<ProtocolError> },
}

fuzz_target!(|input: &[u8]| {
    let Some((&control, response)) = input.split_first() else { return };
    let method = if control & 1 == 0 { Method::GET } else { Method::HEAD };
    let piece = usize::from(control >> 1).max(1);
    let whole = read(response, &method, response.len().max(1));
    let cut = read(response, &method, piece);
    assert_eq!(whole, cut, "reading in pieces of {piece} bytes changed the outcome");
});

/// Reads `response` delivered `piece` bytes at a time, then the end of the connection.
fn read(response: &[u8], method: &Method, piece: usize) -> Outcome {
    let mut pieces = response.chunks(piece);
    let mut buf = BytesMut::new();
    let head = loop {
        let before = buf.clone();
        match parse_response_head(&mut buf, method, &mut http::HeaderMap::new()) {
            Ok(Some(head)) => break head,
            Ok(None) => {
                // Interim answers before it may be gone; nothing else is.
                assert!(before.ends_with(&buf), "an incomplete head consumed bytes");
                match pieces.next() {
                    Some(more) => buf.extend_from_slice(more),
                    None => return Outcome::Incomplete,
                }
            }
            Err(error) => return Outcome::Head(error),
        }
    };
    let fields = |map: &http::HeaderMap| map.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect::<Vec<_>>();
    let (status, headers) = (head.parts.status.as_u16(), fields(&head.parts.headers));
    let (mut body, mut trailers, mut error) = (Vec::new(), Vec::new(), None);
    let sized = match head.framing {
        Framing::Empty => Some(0),
        Framing::Length(length) => Some(length),
        Framing::Chunked | Framing::UntilClose => None,
    };
    let mut decoder = BodyDecoder::new(head.framing);
    loop {
        match decoder.decode(&mut buf) {
            Ok(Decoded::Data(data)) => {
                assert!(!data.is_empty(), "an empty data frame");
                body.extend_from_slice(&data);
            }
            Ok(Decoded::Trailers(fields_read)) => trailers = fields(&fields_read),
            Ok(Decoded::End) => break,
            Ok(Decoded::NeedMore) => match pieces.next() {
                Some(more) => buf.extend_from_slice(more),
                None => {
                    if let Err(at_eof) = decoder.at_eof() {
                        error = Some(at_eof);
                        break;
                    }
                }
            },
            Err(failed) => {
                error = Some(failed);
                break;
            }
        }
    }
    if let (Some(expected), None) = (sized, &error) {
        assert_eq!(body.len() as u64, expected, "a sized body decoded to another size");
    }
    Outcome::Read { status, headers, body, trailers, error }
}
