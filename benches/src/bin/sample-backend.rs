//! `sample-backend`: a small, fast HTTP/1.1 app for demos and benchmarks.
//!
//! It answers every request with a short fixed body (or echoes the request body for POST/PUT), so that in a
//! benchmark the proxy in front of it, not the app, is what gets measured. `/health` answers `ok` for health
//! checks.

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;

/// A small HTTP app that answers a fixed body, echoes POST/PUT bodies, and serves /health.
#[derive(Debug, Parser)]
#[command(name = "sample-backend", version, about)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Body of every GET answer.
    #[arg(long, default_value = "Hello from a Switchyard sample app\n")]
    body: String,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

async fn answer(request: Request<Incoming>, body: Bytes) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = match (request.method(), request.uri().path()) {
        (_, "/health") => Bytes::from_static(b"ok\n"),
        (&Method::POST | &Method::PUT, _) => request.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default(),
        _ => body,
    };
    Ok(Response::new(Full::new(reply)))
}

async fn serve(cli: Cli) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    eprintln!("sample-backend listening on {}", listener.local_addr()?);
    let body = Bytes::from(cli.body);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| answer(request, body.clone()));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(cli.threads.max(1)).enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
