//! Network namespaces as test hosts: a client, an LB and cells, joined by veth links, each with its own
//! addresses, routes, firewall and processes, so tests exercise real packets through the real kernel.
//!
//! Every namespace is named `sy-<pid>-<n>-<role>`, unique per test process and per namespace, so tests running in
//! parallel never collide, and removed when its guard drops, also when the test fails. A test process killed
//! outright cannot run its guards; the next one to create a namespace removes those whose process is gone.
//! Only 198.18.0.0/15 and loopback addresses belong in these namespaces.
//!
//! Code in the test process reaches into a namespace with [`Netns::enter`]: it runs a closure on a thread that
//! has joined the namespace, and every socket made there (a TCP connection, a NATS client) keeps living in the
//! namespace after the thread ends.

// Harness code: a failed setup step is a failed test, so it panics with the reason rather than returning errors.
#![allow(clippy::expect_used, clippy::panic)]

use crate::process::Service;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

const PREFIX: &str = "sy-";
static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> Output {
    Command::new("ip").args(args).output().unwrap_or_else(|err| panic!("could not run `ip` ({err}); install it with `apt-get install -y iproute2`"))
}

fn check(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Removes namespaces left by test processes that no longer exist.
fn remove_orphans() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|rest| rest.split('-').next()).and_then(|pid| pid.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// A network namespace owned by the test, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace for `role` (a short word: `client`, `lb`, `cell1`) with loopback up.
    pub fn new(role: &str) -> Self {
        remove_orphans();
        let name = format!("{PREFIX}{}-{}-{role}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        check(&format!("creating namespace {name} (tests need root)"), &ip(&["netns", "add", &name]));
        let netns = Self { name };
        netns.sh("ip link set lo up");
        netns
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `program args` inside the namespace and returns its output, whatever the exit status.
    pub fn output(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("could not run {program} in {}: {err}", self.name))
    }

    /// Runs a shell command inside the namespace; panics with its output if it fails. Returns stdout.
    pub fn sh(&self, script: &str) -> String {
        let output = self.output("sh", &["-c", script]);
        check(&format!("`{script}` in {}", self.name), &output);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Starts a long-running process inside the namespace, killed when the returned service drops.
    pub fn spawn(&self, name: &str, program: &Path, args: &[&str], envs: &[(&str, &str)], log_dir: &Path) -> Service {
        let program = program.to_str().expect("program paths are UTF-8");
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        Service::spawn(name, Path::new("ip"), &full, envs, log_dir)
    }

    /// Runs `work` on a thread inside the namespace and returns its result. Sockets created by `work` stay in
    /// the namespace for their whole life, wherever they are used afterwards.
    pub fn enter<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let handle = std::fs::File::open(&path).unwrap_or_else(|err| panic!("open {path}: {err}"));
            nix::sched::setns(&handle, nix::sched::CloneFlags::CLONE_NEWNET).unwrap_or_else(|err| panic!("join {path}: {err}"));
            work()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Adds `address` (CIDR) to `device` and brings the device up.
    pub fn address(&self, device: &str, address: &str) {
        self.sh(&format!("ip addr add {address} dev {device} && ip link set {device} up"));
    }

    /// Adds a route, e.g. `198.18.2.0/24 via 198.18.0.1`.
    pub fn route(&self, route: &str) {
        self.sh(&format!("ip route add {route}"));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Joins two namespaces with a veth pair: `a_device` in `a` with `a_address`, `b_device` in `b` with
/// `b_address` (CIDR), both up. The pair disappears with either namespace.
pub fn link(a: &Netns, a_device: &str, a_address: &str, b: &Netns, b_device: &str, b_address: &str) {
    let output = ip(&["link", "add", a_device, "netns", a.name(), "type", "veth", "peer", "name", b_device, "netns", b.name()]);
    check(&format!("creating veth {a_device}/{b_device} between {} and {}", a.name(), b.name()), &output);
    a.address(a_device, a_address);
    b.address(b_device, b_address);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_unique_linked_and_removed() {
        let name;
        {
            let left = Netns::new("left");
            let right = Netns::new("right");
            assert_ne!(left.name(), right.name());
            link(&left, "sy0", "198.18.0.1/24", &right, "sy0", "198.18.0.2/24");
            let listener = right.enter(|| std::net::TcpListener::bind("198.18.0.2:0").unwrap());
            let target = listener.local_addr().unwrap();
            let stream = left.enter(move || std::net::TcpStream::connect(target).unwrap());
            let (_, peer) = listener.accept().unwrap();
            assert_eq!(peer, stream.local_addr().unwrap());
            assert_eq!(peer.ip().to_string(), "198.18.0.1");
            name = left.name().to_owned();
        }
        assert!(!Path::new(&format!("/run/netns/{name}")).exists());
    }
}
