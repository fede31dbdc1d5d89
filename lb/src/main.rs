//! The `lb` binary: parses the command line, then hands over to the library. Logs go to stderr; command output
//! (`lb plan`, `lb vip ls`) goes to stdout.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use switchyard_lb::LbError;
use switchyard_lb::commands::{self, BucketTarget};

/// SNAT layer-4 load balancer: keeps the kernel's forwarding rules equal to every VIP and its live backends.
#[derive(Debug, Parser)]
#[command(name = "lb", version)]
struct Cli {
    /// Config file (YAML).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the load balancer (the default).
    Run,
    /// Print what a sync would change in the kernel now, changing nothing.
    Plan,
    /// Remove every service, VIP address and table this lb owns.
    Cleanup,
    /// Manage the VIPs in the JetStream bucket.
    Vip {
        #[command(subcommand)]
        command: VipCommand,
        /// NATS server URL; defaults to the first of `nats.servers` in --config. The credentials and TLS keys of
        /// --config (`nats.user`, `nats.tls_enabled`, ...) are used either way.
        #[arg(long, global = true, value_name = "URL")]
        nats: Option<String>,
        /// Bucket name; defaults to `nats.vip_bucket` in --config, else `lb_vips`.
        #[arg(long, global = true, value_name = "NAME")]
        bucket: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum VipCommand {
    /// Publish the VIP described in FILE (YAML or JSON, one VIP).
    Put {
        /// The VIP file.
        file: PathBuf,
    },
    /// List the VIPs in the bucket.
    Ls,
    /// Remove a VIP from the bucket.
    Rm {
        /// VIP name.
        name: String,
    },
}

fn require_config(config: Option<&PathBuf>, command: &str) -> Result<PathBuf, LbError> {
    config.cloned().ok_or_else(|| LbError::Vip(format!("`lb {command}` needs --config FILE")))
}

fn bucket_target(config: Option<&PathBuf>, nats: Option<String>, bucket: Option<String>) -> Result<BucketTarget, LbError> {
    let from_file = match config {
        Some(path) => switchyard_lb::run::load_config(path)?.nats,
        None => None,
    };
    let url = nats
        .or_else(|| from_file.as_ref().and_then(|n| n.servers.first().cloned()))
        .ok_or_else(|| LbError::Vip("say which NATS server holds the bucket: --nats URL, or --config FILE with `nats.servers`".to_owned()))?;
    let bucket = bucket.or_else(|| from_file.as_ref().map(|n| n.vip_bucket.clone())).unwrap_or_else(|| "lb_vips".to_owned());
    Ok(BucketTarget { url, bucket, keys: from_file })
}

async fn dispatch(cli: Cli) -> Result<Option<String>, LbError> {
    let config = cli.config.as_ref();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => switchyard_lb::run::run(&require_config(config, "run")?).await.map(|()| None),
        Command::Plan => commands::plan(&require_config(config, "plan")?).await.map(Some),
        Command::Cleanup => commands::cleanup(&require_config(config, "cleanup")?).map(Some),
        Command::Vip { command, nats, bucket } => {
            let target = bucket_target(config, nats, bucket)?;
            match command {
                VipCommand::Put { file } => commands::vip_put(&target, &file).await,
                VipCommand::Ls => commands::vip_ls(&target).await,
                VipCommand::Rm { name } => commands::vip_rm(&target, &name).await,
            }
            .map(Some)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One-shot commands print their result on stdout; their logs would only be noise unless asked for.
    if matches!(cli.command, None | Some(Command::Run)) || std::env::var_os("RUST_LOG").is_some() {
        switchyard_runtime::logging::init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("lb: could not start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(output) => {
            if let Some(text) = output {
                // A reader that went away (`lb plan | head`) is not an error of lb's.
                let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("lb: {err}");
            ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(1))
        }
    }
}
