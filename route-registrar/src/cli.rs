//! Command-line arguments.
//!
//! Deployments of the original start it as `route-registrar -configPath FILE` (Go's single-dash flags), so that
//! spelling works alongside the usual `--config FILE`; `=` forms are accepted for both.

use std::ffi::OsString;
use std::path::PathBuf;

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// Run with this config file.
    Run(PathBuf),
    /// Validate this config file, print a summary and exit.
    Check(PathBuf),
    /// Print the usage text.
    Help,
}

/// The usage text.
pub const USAGE: &str = "\
route-registrar: keeps this cell's routes announced on NATS while their health checks pass.

Usage:
  route-registrar --config FILE        run (also: -configPath FILE, the original flag)
  route-registrar --check-config FILE  validate FILE, print the routes it announces, exit
  route-registrar --help               show this text

The config is Cloud Foundry route-registrar's JSON or YAML (chosen by the .json extension):
  message_bus_servers[].{host,user,password}, host, availability_zone, unregistration_message_limit,
  dynamic_config_globs, routes[].{name,type,host,port,tls_port,uris,tags,server_cert_domain_san,
  route_service_url,protocol,registration_interval,health_check,options}
Switchyard adds: routes[].type: nodeport with vip and weight (announced on lb.register.<vip>),
  health_check.http: {url, expect_status} and health_check.tcp: {address},
  dynamic_config_interval, and status: {address} for /health and /metrics.

Each route is announced at once and every registration_interval while its check passes; a failing check
sends up to unregistration_message_limit unregisters in a row. A router's router.start triggers an immediate
re-announcement. SIGTERM, SIGINT or SIGUSR1 withdraws every route and exits 0; SIGHUP reloads the config
file (routes, host, route files; NATS and status settings need a restart).
Logs go to stderr (RUST_LOG=debug for more, SWITCHYARD_LOG_FORMAT=json for JSON lines).
";

/// Why the arguments could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}\nRun `route-registrar --help` for usage.")]
pub struct UsageError(String);

/// Reads the arguments that follow the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Invocation, UsageError> {
    let mut args = args.into_iter();
    let mut config: Option<PathBuf> = None;
    let mut check_only = false;
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy().into_owned();
        let (flag, inline) = match text.split_once('=') {
            Some((flag, value)) if flag.starts_with('-') => (flag.to_owned(), Some(value.to_owned())),
            _ => (text.clone(), None),
        };
        match flag.as_str() {
            "-h" | "-help" | "--help" => return Ok(Invocation::Help),
            "--config" | "-config" | "-configPath" | "--configPath" | "--check-config" => {
                let value = match inline {
                    Some(value) => PathBuf::from(value),
                    None => args.next().map(PathBuf::from).ok_or_else(|| UsageError(format!("{flag} needs a file")))?,
                };
                if config.replace(value).is_some() {
                    return Err(UsageError("give the config file once".to_owned()));
                }
                check_only |= flag == "--check-config";
            }
            _ => return Err(UsageError(format!("unknown argument `{text}`"))),
        }
    }
    match config {
        Some(path) if check_only => Ok(Invocation::Check(path)),
        Some(path) => Ok(Invocation::Run(path)),
        None => Err(UsageError("no config file given; use --config FILE".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<Invocation, UsageError> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn accepts_both_spellings() {
        let run = Ok(Invocation::Run(PathBuf::from("/etc/rr.json")));
        assert_eq!(parse_str(&["--config", "/etc/rr.json"]), run);
        assert_eq!(parse_str(&["-configPath", "/etc/rr.json"]), run);
        assert_eq!(parse_str(&["-configPath=/etc/rr.json"]), run);
        assert_eq!(parse_str(&["--config=/etc/rr.json"]), run);
        assert_eq!(parse_str(&["--check-config", "/etc/rr.json"]), Ok(Invocation::Check(PathBuf::from("/etc/rr.json"))));
        assert_eq!(parse_str(&["--help"]), Ok(Invocation::Help));
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        assert!(parse_str(&[]).is_err());
        assert!(parse_str(&["--config"]).is_err());
        assert!(parse_str(&["--verbose"]).is_err());
        assert!(parse_str(&["--config", "a", "--config", "b"]).is_err());
    }
}
