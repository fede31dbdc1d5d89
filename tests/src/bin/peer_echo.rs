//! A tiny HTTP/1.1 server for tests inside network namespaces, where in-process backends cannot run: it answers
//! every request with its own name and the address the request came from, so a test sees which backend served
//! it and whether the source was rewritten (SNAT). Keep-alive is honoured, so a test can hold one connection
//! open across events (an `lb` restart) and use it again.
//!
//! Usage: `peer_echo <listen address> <name>`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

fn serve(stream: TcpStream, name: &str) -> std::io::Result<()> {
    let peer = stream.peer_addr()?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut close = false;
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            if header.trim().is_empty() {
                break;
            }
            if header.to_ascii_lowercase().starts_with("connection:") && header.to_ascii_lowercase().contains("close") {
                close = true;
            }
        }
        let body = format!("{name} {peer}\n");
        write!(writer, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len())?;
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(name)) = (args.next(), args.next()) else {
        eprintln!("usage: peer_echo <listen address> <name>");
        std::process::exit(2);
    };
    let listener = TcpListener::bind(&listen).unwrap_or_else(|err| {
        eprintln!("peer_echo: cannot listen on {listen}: {err}");
        std::process::exit(1);
    });
    println!("peer_echo {name} listening on {listen}");
    for stream in listener.incoming().flatten() {
        let name = name.clone();
        std::thread::spawn(move || {
            let _ = serve(stream, &name);
        });
    }
}
