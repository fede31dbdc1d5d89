//! `route-memory`: route-table memory per route, counted by the allocator rather than guessed from RSS.
//!
//! Every allocation of this process goes through a counting wrapper around the system allocator, so the bytes
//! live after building a registry of N routes (one endpoint each), minus the bytes live before, are exactly what
//! the route table holds: hash-table leaves, per-host path lists, pools and endpoints. An endpoint's text buffer
//! gets its shared reference count on its first request (the header values it adds are slices of it), so the
//! minimal table is measured twice: as built, and after every endpoint has made its header values, as it would
//! once every route has seen traffic.
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

/// What one table cost.
struct Measured {
    /// Live bytes per route as built.
    built: f64,
    /// Live bytes per route once every endpoint has made its header values.
    served: f64,
    /// Seconds the build took.
    build_seconds: f64,
}

fn measure(routes: usize, detail: Detail) -> Result<Measured, String> {
    let before = ALLOCATOR.allocated();
    let started = Instant::now();
    let registry = build_registry(routes, detail, |i| (Shape::Exact, i)).map_err(|e| e.to_string())?;
    let build_seconds = started.elapsed().as_secs_f64();
    let built = ALLOCATOR.allocated().saturating_sub(before);
    if registry.table().len() != routes {
        return Err(format!("built {} routes instead of {routes}", registry.table().len()));
    }
    registry.table().for_each_pool(|pool| {
        for endpoint in pool.endpoints() {
            std::hint::black_box(endpoint.headers());
        }
    });
    let served = ALLOCATOR.allocated().saturating_sub(before);
    let per_route = |bytes: usize| bytes as f64 / routes as f64;
    Ok(Measured { built: per_route(built), served: per_route(served), build_seconds })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let run = || -> Result<RouteMemory, String> {
        let minimal = measure(cli.routes, Detail::Minimal)?;
        let typical = measure(cli.routes, Detail::Typical)?;
        Ok(RouteMemory {
            routes: cli.routes,
            minimal_bytes_per_route: minimal.built,
            typical_bytes_per_route: typical.built,
            served_bytes_per_route: minimal.served,
            build_seconds: minimal.build_seconds,
        })
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
