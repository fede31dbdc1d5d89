//! `route-memory`: route-table memory per route, counted by the allocator rather than guessed from RSS.
//!
//! Every allocation of this process goes through a counting wrapper around the system allocator, so the bytes
//! live after building a registry of N routes (one endpoint each), minus the bytes live before, are exactly what
//! the route table holds: hash-table leaves, per-host path lists, pools and
//! endpoints (header values an endpoint builds on its first request are not included: none is routed here).
//! Allocator overhead (size-class rounding, free lists) is not included. Prints one JSON object on stdout.

use cap::Cap;
use clap::Parser;
use std::alloc::System;
use std::process::ExitCode;
use std::time::Instant;
use switchyard_benches::results::RouteMemory;
use switchyard_benches::routes::{Detail, Shape, build_registry};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// Measures route-table memory per route at a given size.
#[derive(Debug, Parser)]
#[command(name = "route-memory", about)]
struct Cli {
    /// Routes to register.
    #[arg(long, default_value_t = 1_000_000)]
    routes: usize,
}

/// Live bytes per route, and the seconds the build took.
fn measure(routes: usize, detail: Detail) -> Result<(f64, f64), String> {
    let before = ALLOCATOR.allocated();
    let started = Instant::now();
    let registry = build_registry(routes, detail, |i| (Shape::Exact, i)).map_err(|e| e.to_string())?;
    let build_seconds = started.elapsed().as_secs_f64();
    let live = ALLOCATOR.allocated().saturating_sub(before);
    if registry.table().len() != routes {
        return Err(format!("built {} routes instead of {routes}", registry.table().len()));
    }
    Ok((live as f64 / routes as f64, build_seconds))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let run = || -> Result<RouteMemory, String> {
        let (minimal_bytes_per_route, build_seconds) = measure(cli.routes, Detail::Minimal)?;
        let (typical_bytes_per_route, _) = measure(cli.routes, Detail::Typical)?;
        Ok(RouteMemory { routes: cli.routes, minimal_bytes_per_route, typical_bytes_per_route, build_seconds })
    };
    match run().and_then(|result| serde_json::to_string(&result).map_err(|e| e.to_string())) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
