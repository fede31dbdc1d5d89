//! `router`: the command line. Reads and checks the config, then hands over to [`switchyard_router::app`].

use clap::Parser;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use switchyard_config::router::RouterConfig;
use switchyard_router::tls::Material;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Switchyard's HTTP router: routes requests by Host and context path to app instances learned from NATS
/// registrations (gorouter's protocol and config keys).
#[derive(Debug, Parser)]
#[command(name = "router", version, about, long_about = None)]
struct Cli {
    /// Run with this config file (gorouter YAML; `-c` is gorouter's flag).
    #[arg(short = 'c', long = "config", value_name = "FILE", conflicts_with = "check_config")]
    config: Option<PathBuf>,
    /// Check this config file, print the effective config (secrets redacted) and exit: 0 if valid, 2 if not.
    #[arg(long = "check-config", value_name = "FILE")]
    check_config: Option<PathBuf>,
}

/// Reads and checks the config, certificates included, before anything listens.
fn load(path: &Path) -> Result<(RouterConfig, Material), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let loaded = switchyard_config::parse_yaml::<RouterConfig>(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if !loaded.ignored_keys.is_empty() {
        tracing::warn!(keys = %loaded.ignored_keys.join(", "), "config keys not used by this router were ignored");
    }
    let material = Material::build(&loaded.value).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((loaded.value, material))
}

/// The effective config as JSON, with every secret replaced.
fn redacted(config: &RouterConfig) -> String {
    let mut value = serde_json::to_value(config).unwrap_or_default();
    fn scrub(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, item) in map.iter_mut() {
                    let secret = matches!(key.as_str(), "pass" | "password" | "private_key" | "route_services_secret" | "route_services_secret_decrypt_only");
                    if secret && item.as_str().is_some_and(|s| !s.is_empty()) {
                        *item = serde_json::Value::String("<redacted>".to_owned());
                    } else {
                        scrub(item);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(scrub),
            _ => {}
        }
    }
    scrub(&mut value);
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

fn main() -> ExitCode {
    switchyard_runtime::logging::init();
    // One crypto provider for the whole process (NATS, client TLS, backend TLS): ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    if let Some(path) = cli.check_config {
        return match load(&path) {
            Ok((config, _)) => {
                println!("{}", redacted(&config));
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::from(2)
            }
        };
    }
    let Some(path) = cli.config else {
        eprintln!("error: no config given; run `router --config FILE` (see `router --help`)");
        return ExitCode::from(2);
    };
    let (config, material) = match load(&path) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().thread_name("control").build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the control runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(switchyard_router::app::run(config, material, path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
