//! The real `lb` on a test host: a network namespace of the test's own, with the status listener and, when the
//! test needs one, a `nats-server` inside the same namespace.
//!
//! `lb` rewrites the kernel's forwarding state, so it only ever runs in a namespace; everything that talks to it
//! (status reads, NATS clients) therefore has to run inside that namespace too, and these helpers do that.

use crate::netns::Netns;
use crate::process::{Service, binary, wait_until};
use serde_json::Value;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Where a test `lb` serves its status page, inside its namespace.
pub const STATUS_ADDR: &str = "127.0.0.1:8090";
/// `admin:secret`, the credentials for `/vips` every test `lb` is given by [`config`].
pub const AUTH: &str = "Basic YWRtaW46c2VjcmV0";
/// The NATS server a test starts inside the LB namespace with [`start_nats`].
pub const NATS_URL: &str = "nats://127.0.0.1:4222";

/// An `lb` config: status on [`STATUS_ADDR`] behind `admin:secret`, the nftables dataplane, quick syncs and health
/// checks, then `extra` (top-level keys) and the `vips` list.
pub fn config(extra: &str, vips: &str) -> String {
    format!(
        "status: {{address: {STATUS_ADDR}, user: admin, pass: secret}}\n\
         dataplane: nftables\n\
         sync_interval: 2s\n\
         sync_min_interval: 50ms\n\
         health_check: {{type: tcp, interval: 200ms, timeout: 200ms, rise: 2, fall: 2}}\n\
         {extra}\n\
         vips:\n{vips}"
    )
}

/// Starts `lb run --config <config>` in `netns` and waits until it has completed a clean kernel sync.
pub fn start(netns: &Netns, config: &Path, log_dir: &Path) -> Service {
    let config = config.to_str().expect("config paths are UTF-8");
    let lb = netns.spawn("lb", &binary("lb"), &["run", "--config", config], &[], log_dir);
    let synced = wait_until(Duration::from_secs(10), || {
        status(netns, "/vips").is_some_and(|vips| {
            vips.pointer("/sync/syncs").and_then(Value::as_u64) >= Some(1) && vips.pointer("/sync/last_error").is_none_or(Value::is_null)
        })
    });
    assert!(synced, "lb did not complete a sync:\n{}", lb.log());
    lb
}

/// Runs a one-shot `lb` command (`plan`, `vip put FILE`, ...) in `netns`: exit code, stdout and stderr.
pub fn command(netns: &Netns, args: &[&str]) -> (i32, String, String) {
    let output = netns.output(binary("lb").to_str().expect("binary paths are UTF-8"), args);
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `GET path` on the status listener in `netns`, with `authorization` if given: status code and body.
pub fn status_answer(netns: &Netns, path: &str, authorization: Option<&str>) -> Option<(u16, String)> {
    let path = path.to_owned();
    let authorization = authorization.map(str::to_owned);
    let addr: SocketAddr = STATUS_ADDR.parse().expect("the status address parses");
    netns.enter(move || crate::status::status_answer(addr, &path, authorization.as_deref()))
}

/// `GET path` with the right credentials, parsed as JSON (or as a string for non-JSON answers).
pub fn status(netns: &Netns, path: &str) -> Option<Value> {
    let (_, body) = status_answer(netns, path, Some(AUTH))?;
    Some(serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

/// Starts `nats-server` on 127.0.0.1:4222 inside `netns`, with `args` added, and waits until it is ready.
pub fn start_nats(netns: &Netns, args: &[&str], log_dir: &Path) -> Service {
    let mut all = vec!["-a", "127.0.0.1", "-p", "4222"];
    all.extend_from_slice(args);
    let mut nats = netns.spawn("nats-server", &crate::nats::nats_server_binary(), &all, &[], log_dir);
    let ready = wait_until(Duration::from_secs(10), || nats.log().contains(crate::nats::READY_LINE) || !nats.is_running());
    assert!(ready && nats.log().contains(crate::nats::READY_LINE), "nats-server did not start in {}:\n{}", netns.name(), nats.log());
    nats
}

/// Runs the async `work` to completion on a thread inside `netns`, so every socket it opens (a NATS client, say)
/// lives in the namespace.
pub fn block_on_in<T, F>(netns: &Netns, work: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: Future<Output = T>,
{
    netns.enter(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime for the namespace thread");
        runtime.block_on(work())
    })
}
