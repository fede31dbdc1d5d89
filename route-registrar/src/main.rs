//! The `route-registrar` binary: parse arguments, load the config, run until told to stop.

use std::process::ExitCode;
use switchyard_route_registrar::cli::{self, Invocation, USAGE};
use switchyard_route_registrar::{service, sources, summary};

fn main() -> ExitCode {
    let invocation = match cli::parse(std::env::args_os().skip(1)) {
        Ok(invocation) => invocation,
        Err(err) => {
            eprintln!("route-registrar: {err}");
            return ExitCode::from(2);
        }
    };
    let (path, check_only) = match invocation {
        Invocation::Help => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Invocation::Check(path) => (path, true),
        Invocation::Run(path) => (path, false),
    };
    switchyard_runtime::logging::init();
    let loaded = match sources::read_config(&path) {
        Ok(loaded) => loaded,
        Err(err) => {
            tracing::error!(%err, "config refused");
            eprintln!("route-registrar: {err}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        service::warn_ignored(&path, &loaded.ignored_keys);
        print!("{}", summary::describe(&loaded.value));
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("route-registrar: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(service::run(path, loaded)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(%err, "route-registrar stopped");
            eprintln!("route-registrar: {err}");
            ExitCode::FAILURE
        }
    }
}
