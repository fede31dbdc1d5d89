//! A strict reader of HTTP/1.1 messages as raw bytes, for judging what a proxy put on the wire.
//!
//! The tests that use it want to know exactly what the router sent and answered, so it is deliberately not
//! hyper's parser (which would quietly drop a duplicate `Content-Length`, or a `Content-Length` next to
//! `Transfer-Encoding`, before a test could see it). Anything that two parsers could read differently is an
//! error here: both framing headers, repeated `Content-Length`, bare CR or LF, folded lines, control bytes in a
//! value, a malformed chunk.

/// One message read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The request line or status line.
    pub start_line: String,
    /// Header fields in wire order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, with any chunked framing removed.
    pub body: Vec<u8>,
    /// How the body was delimited.
    pub framing: Framing,
    /// Whether the whole message arrived (false when the bytes stop inside the body).
    pub complete: bool,
}

/// How a message's body was delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body and no framing header.
    None,
    /// `Content-Length`.
    Length,
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// A response body running to the end of the connection.
    UntilClose,
}

impl Message {
    /// Every value of a header (names compared case-insensitively).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).into_iter().next()
    }

    /// A response's status code.
    pub fn status(&self) -> Option<u16> {
        self.start_line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
    }

    /// A request's target.
    pub fn target(&self) -> Option<&str> {
        self.start_line.split(' ').nth(1)
    }
}

/// Which side sent the bytes: a response body may run until close, a request body never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Bytes a client sent.
    Request,
    /// Bytes a server sent.
    Response,
}

/// Reads every message in `bytes`. A trailing message that stops inside its head is left out (the bytes are
/// counted in the second value); one that stops inside its body is returned with `complete: false`. An `Err` says
/// what in the bytes was not plain, unambiguous HTTP/1.1.
pub fn messages(bytes: &[u8], side: Side) -> Result<(Vec<Message>, usize), String> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some(head_end) = find(rest, b"\r\n\r\n") else { break };
        let head = rest.get(..head_end).unwrap_or_default();
        let after_head = rest.get(head_end + 4..).unwrap_or_default();
        let (start_line, headers) = parse_head(head)?;
        let mut message = Message { start_line, headers, body: Vec::new(), framing: Framing::None, complete: true };
        let used = read_body(&mut message, after_head, side)?;
        rest = after_head.get(used..).unwrap_or_default();
        let complete = message.complete;
        out.push(message);
        if !complete {
            break;
        }
    }
    Ok((out, rest.len()))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn printable(text: &[u8]) -> String {
    text.iter().take(80).flat_map(|&b| std::ascii::escape_default(b)).map(char::from).collect()
}

fn parse_head(head: &[u8]) -> Result<(String, Vec<(String, String)>), String> {
    let mut lines = Vec::new();
    let mut rest = head;
    loop {
        let (line, next) = match find(rest, b"\r\n") {
            Some(end) => (rest.get(..end).unwrap_or_default(), Some(rest.get(end + 2..).unwrap_or_default())),
            None => (rest, None),
        };
        if line.contains(&b'\r') || line.contains(&b'\n') {
            return Err(format!("bare CR or LF in the head line {:?}", printable(line)));
        }
        lines.push(line);
        match next {
            Some(next) => rest = next,
            None => break,
        }
    }
    let mut lines = lines.into_iter();
    let start = lines.next().unwrap_or_default();
    if start.is_empty() || start.iter().any(|&b| b.is_ascii_control()) {
        return Err(format!("bad start line {:?}", printable(start)));
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            return Err(format!("folded header line {:?}", printable(line)));
        }
        let colon = line.iter().position(|&b| b == b':').ok_or_else(|| format!("header line without a colon {:?}", printable(line)))?;
        let (name, value) = (line.get(..colon).unwrap_or_default(), line.get(colon + 1..).unwrap_or_default());
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(format!("header name is not a token {:?}", printable(name)));
        }
        if value.iter().any(|&b| b != b'\t' && (b.is_ascii_control())) {
            return Err(format!("control byte in the value of {:?}", printable(name)));
        }
        let value = String::from_utf8_lossy(value).trim_matches([' ', '\t']).to_owned();
        headers.push((String::from_utf8_lossy(name).into_owned(), value));
    }
    Ok((String::from_utf8_lossy(start).into_owned(), headers))
}

/// Fills in the body; returns how many bytes after the head it used.
fn read_body(message: &mut Message, bytes: &[u8], side: Side) -> Result<usize, String> {
    let lengths = message.header_all("content-length").len();
    let codings = message.header_all("transfer-encoding").len();
    if lengths > 0 && codings > 0 {
        return Err(format!("both Transfer-Encoding and Content-Length in {:?}", message.start_line));
    }
    if lengths > 1 {
        return Err(format!("{lengths} Content-Length fields in {:?}", message.start_line));
    }
    if codings > 1 {
        return Err(format!("{codings} Transfer-Encoding fields in {:?}", message.start_line));
    }
    if let Some(coding) = message.header("transfer-encoding") {
        if !coding.eq_ignore_ascii_case("chunked") {
            return Err(format!("Transfer-Encoding {coding:?} is not exactly chunked"));
        }
        message.framing = Framing::Chunked;
        return read_chunks(message, bytes);
    }
    if let Some(length) = message.header("content-length") {
        if length.is_empty() || !length.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("Content-Length {length:?} is not a number"));
        }
        let length: usize = length.parse().map_err(|_| format!("Content-Length {length:?} is out of range"))?;
        message.framing = Framing::Length;
        let available = length.min(bytes.len());
        message.body = bytes.get(..available).unwrap_or_default().to_vec();
        message.complete = available == length;
        return Ok(available);
    }
    let bodyless = message.status().is_some_and(|s| s < 200 || s == 204 || s == 304);
    if side == Side::Response && !bodyless {
        message.framing = Framing::UntilClose;
        message.body = bytes.to_vec();
        return Ok(bytes.len());
    }
    Ok(0)
}

fn read_chunks(message: &mut Message, bytes: &[u8]) -> Result<usize, String> {
    let mut at = 0;
    loop {
        let rest = bytes.get(at..).unwrap_or_default();
        let Some(line_end) = find(rest, b"\r\n") else {
            message.complete = false;
            return Ok(bytes.len());
        };
        let line = rest.get(..line_end).unwrap_or_default();
        let size = line.split(|&b| b == b';').next().unwrap_or_default();
        if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!("bad chunk size line {:?}", printable(line)));
        }
        let size = usize::from_str_radix(&String::from_utf8_lossy(size), 16).map_err(|e| format!("chunk size: {e}"))?;
        at += line_end + 2;
        if size == 0 {
            // Trailer fields, then the empty line.
            loop {
                let rest = bytes.get(at..).unwrap_or_default();
                let Some(end) = find(rest, b"\r\n") else {
                    message.complete = false;
                    return Ok(bytes.len());
                };
                at += end + 2;
                if end == 0 {
                    return Ok(at);
                }
            }
        }
        let Some(data) = bytes.get(at..at + size) else {
            message.body.extend_from_slice(bytes.get(at..).unwrap_or_default());
            message.complete = false;
            return Ok(bytes.len());
        };
        message.body.extend_from_slice(data);
        at += size;
        match bytes.get(at..at + 2) {
            Some(b"\r\n") => at += 2,
            Some(_) => return Err("chunk data not followed by CRLF".to_owned()),
            None => {
                message.complete = false;
                return Ok(bytes.len());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_length_chunked_and_pipelined_messages() {
        let bytes = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nhi\r\n0\r\nT: 1\r\n\r\n";
        let (found, left) = messages(bytes, Side::Request).unwrap();
        assert_eq!(left, 0);
        assert_eq!(found.len(), 2);
        assert_eq!((found[0].target(), found[0].body.as_slice(), found[0].framing), (Some("/a"), &b"abc"[..], Framing::Length));
        assert_eq!((found[1].target(), found[1].body.as_slice(), found[1].framing), (Some("/b"), &b"hi"[..], Framing::Chunked));
    }

    #[test]
    fn refuses_anything_two_parsers_could_disagree_on() {
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(messages(bad, Side::Request).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_body_cut_short_is_incomplete() {
        let (found, _) = messages(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", Side::Request).unwrap();
        assert!(!found[0].complete);
        let (found, _) = messages(b"HTTP/1.1 200 OK\r\n\r\nuntil close", Side::Response).unwrap();
        assert_eq!((found[0].framing, found[0].body.as_slice()), (Framing::UntilClose, &b"until close"[..]));
    }
}
