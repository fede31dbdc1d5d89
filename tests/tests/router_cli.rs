//! The router's command line: gorouter-compatible config loading, `--check-config`, and clear errors.

// Test code: a panic is a failed test, with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;
use switchyard_tests::{NatsServer, RouterProcess, binary, wait_until};

fn run(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(binary("router")).args(args).output().expect("run router");
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn write(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("router.yml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "port: 8888\nstatus: {user: admin, pass: hunter2}\nnats: {hosts: [{hostname: 10.0.0.4, port: 4222}], user: n, pass: hunter3}\ndroplet_stale_threshold: 90s\n");
    let (code, stdout, _) = run(&["--check-config", &path]);
    assert_eq!(code, 0);
    let config: serde_json::Value = serde_json::from_str(&stdout).expect("effective config is JSON");
    assert_eq!(config["port"], 8888);
    assert_eq!(config["droplet_stale_threshold"], "90s");
    assert_eq!(config["backends"]["max_attempts"], 3, "defaults are filled in");
    assert!(!stdout.contains("hunter2") && !stdout.contains("hunter3"), "{stdout}");
}

#[test]
fn invalid_configs_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("backends: {max_attempts: 0}", "backends.max_attempts"),
        ("droplet_stale_threshold: 120", "droplet_stale_threshold"),
        ("balancing_algorithm: fastest", "balancing_algorithm"),
        ("port: [1]", "port"),
    ] {
        let path = write(&dir, text);
        let (code, _, stderr) = run(&["--check-config", &path]);
        assert_eq!(code, 2, "{text}");
        assert!(stderr.contains(&format!("`{key}`")), "{text}: {stderr}");
        let (code, _, stderr) = run(&["--config", &path]);
        assert_eq!(code, 2, "{text}");
        assert!(stderr.contains(key), "{stderr}");
    }
    let (code, _, stderr) = run(&["-c", "/nonexistent/router.yml"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("cannot read /nonexistent/router.yml"), "{stderr}");
}

#[test]
fn help_explains_both_modes() {
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("--config") && stdout.contains("-c") && stdout.contains("--check-config"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gorouter_only_keys_are_accepted_with_one_warning() {
    let nats = NatsServer::start();
    let router = RouterProcess::start(
        &nats,
        &[("logging", "{level: info, syslog: vcap.gorouter}"), ("go_max_procs", "8"), ("route_services_internal_server_port", "7070")],
    );
    assert!(wait_until(Duration::from_secs(5), || router.service.log().contains("config keys not used by this router were ignored")));
    let log = router.service.log();
    let warning = log.lines().find(|l| l.contains("were ignored")).unwrap();
    for key in ["logging", "go_max_procs", "route_services_internal_server_port"] {
        assert!(warning.contains(key), "{warning}");
    }
    assert_eq!(log.matches("were ignored").count(), 1, "one warning, not one per key");
}
