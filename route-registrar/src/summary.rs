//! `--check-config` output: what a config would announce, in words, so an operator can review a change before
//! rolling it out.

use std::fmt::Write;
use switchyard_config::duration;
use switchyard_config::registrar::{Announcement, Probe, RegistrarConfig};

/// A few lines describing the validated `config`.
pub fn describe(config: &RegistrarConfig) -> String {
    let mut out = String::new();
    let servers: Vec<String> = config.message_bus_servers.iter().map(|server| server.host.clone()).collect();
    let _ = writeln!(out, "config OK: NATS {}", servers.join(", "));
    // Resolution succeeded during validation; the instance id is only known at run time.
    for route in config.resolved_routes("<instance id>").unwrap_or_default() {
        let target = match &route.announcement {
            Announcement::Router(registration) => {
                let port = if registration.tls_port != 0 { format!("tls {}", registration.tls_port) } else { registration.port.to_string() };
                format!("router.register {} -> {}:{port}", registration.uris.join(" "), registration.host)
            }
            Announcement::Lb(announcement) => {
                format!("lb.register vip {} -> {}:{} weight {}", announcement.vip, announcement.host, announcement.port, announcement.weight)
            }
        };
        let check = match &route.health_check {
            None => "no health check".to_owned(),
            Some(check) => {
                let probe = match &check.probe {
                    Probe::Script(path) => format!("script {path}"),
                    Probe::Http { url, expect_status: Some(status) } => format!("GET {url} expecting {status}"),
                    Probe::Http { url, expect_status: None } => format!("GET {url} expecting 2xx"),
                    Probe::Tcp(address) => format!("connect {address}"),
                };
                format!("check {probe} (timeout {})", duration::format(check.timeout))
            }
        };
        let _ = writeln!(out, "route {}: {target} every {}, {check}", route.name, duration::format(route.interval));
    }
    for glob in &config.dynamic_config_globs {
        let _ = writeln!(out, "route files: {glob} (scanned every {})", duration::format(config.dynamic_config_interval));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_each_route() {
        let config = switchyard_config::parse_yaml::<RegistrarConfig>(
            "message_bus_servers: [{host: \"127.0.0.1:4222\"}]\nhost: 10.0.0.1\nroutes:\n  - {name: web, port: 8080, uris: [web.example.com], registration_interval: 10s, health_check: {tcp: {address: \"127.0.0.1:8080\"}}}\n  - {name: np, type: nodeport, vip: web, port: 30080, registration_interval: 5s}\n",
        )
        .unwrap()
        .value;
        assert_eq!(
            describe(&config),
            "config OK: NATS 127.0.0.1:4222\n\
             route web: router.register web.example.com -> 10.0.0.1:8080 every 10s, check connect 127.0.0.1:8080 (timeout 5s)\n\
             route np: lb.register vip web -> 10.0.0.1:30080 weight 1 every 5s, no health check\n"
        );
    }
}
