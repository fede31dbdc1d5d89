//! A real Linux kernel under QEMU, for what the host kernel cannot do (IPVS).
//!
//! The guest is built by `tests/vm/build-guest.sh`: a Debian kernel fetched once into `target/vm/kernel`, and an
//! initramfs holding busybox, the programs a test names and a scenario script. The guest's `/init` runs the
//! scenario and prints its results on the serial console, which QEMU hands to this process as standard output.
//! Tests assert on that text, so what they check is what the real kernel and the real binaries did. A missing
//! QEMU or kernel package fails the test with the command that installs it; nothing is skipped.

// This is test harness code: a failed expectation here is a failed test, with the message saying why.
#![allow(clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The marker `/init` prints when the scenario has ended, followed by its exit status.
const EXIT_MARKER: &str = "VM: scenario exit ";

/// What goes into a guest.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// Name of the guest; its image lives in `target/vm/<name>`.
    pub name: String,
    /// Shell script `/init` runs (busybox `sh`).
    pub scenario: PathBuf,
    /// Programs copied to `/usr/bin`, with the shared libraries they load.
    pub programs: Vec<PathBuf>,
    /// Extra files: (host path, guest path).
    pub files: Vec<(PathBuf, String)>,
}

/// A built guest: kernel and initramfs.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// The kernel.
    pub kernel: PathBuf,
    /// The initramfs (uncompressed cpio).
    pub initrd: PathBuf,
}

/// The `target/` directory of the running test (`target/<profile>/deps/<test>` → `target`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    exe.ancestors().nth(3).expect("test binary lives in target/<profile>/deps").to_path_buf()
}

fn vm_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vm")
}

/// Fails the test, saying what to install, when a host program the VM tests need is missing.
pub fn require_host_tools() {
    let tools = [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("cpio", "cpio"),
        ("depmod", "kmod"),
        ("dpkg-deb", "dpkg"),
        ("strip", "binutils"),
        ("nft", "nftables"),
        ("ipvsadm", "ipvsadm"),
        ("ip", "iproute2"),
    ];
    let mut missing: Vec<&str> = tools.iter().filter(|(program, _)| !on_path(program)).map(|(_, package)| *package).collect();
    if !Path::new("/bin/busybox").exists() {
        missing.push("busybox-static");
    }
    assert!(
        missing.is_empty(),
        "the real-kernel test needs programs that are not installed; run: \
         DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {} (scripts/test does this)",
        missing.join(" ")
    );
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
        || ["/usr/sbin", "/sbin"].iter().any(|dir| Path::new(dir).join(program).is_file())
}

/// Builds the guest (fetching the kernel package on first use).
pub fn build(spec: &GuestSpec) -> GuestImage {
    require_host_tools();
    let cache = target_dir().join("vm");
    let out = cache.join(&spec.name);
    let mut command = Command::new("bash");
    command
        .arg(vm_dir().join("build-guest.sh"))
        .arg("--cache")
        .arg(&cache)
        .arg("--out")
        .arg(&out)
        .arg("--scenario")
        .arg(&spec.scenario);
    for program in &spec.programs {
        command.arg("--bin").arg(program);
    }
    for (host, guest) in &spec.files {
        command.arg("--file").arg(format!("{}:{guest}", host.display()));
    }
    let status = command.status().expect("run tests/vm/build-guest.sh");
    assert!(
        status.success(),
        "building the guest failed ({status}); its error above says what is missing (the kernel comes from \
         `apt-get download linux-image-amd64`'s dependency, qemu from `apt-get install qemu-system-x86`)"
    );
    GuestImage { kernel: out.join("vmlinuz"), initrd: out.join("initrd.cpio") }
}

/// What the guest printed on its serial console.
#[derive(Debug, Clone)]
pub struct Console {
    /// Every line, in order, without carriage returns.
    pub lines: Vec<String>,
    /// The scenario's exit status, if it got that far.
    pub exit: Option<i32>,
    /// How long the guest ran.
    pub elapsed: Duration,
}

impl Console {
    /// The lines between `==> BEGIN <name>` and `==> END <name>`, if the scenario printed that section.
    pub fn section(&self, name: &str) -> Option<Vec<String>> {
        let begin = format!("==> BEGIN {name}");
        let end = format!("==> END {name}");
        let start = self.lines.iter().position(|line| line.trim_end() == begin)?;
        let rest = self.lines.get(start + 1..)?;
        let stop = rest.iter().position(|line| line.trim_end() == end)?;
        Some(rest.get(..stop)?.to_vec())
    }

    /// The value of the last `RESULT <key> <value>` line for `key`.
    pub fn result(&self, key: &str) -> Option<String> {
        let prefix = format!("RESULT {key} ");
        self.lines.iter().rev().find_map(|line| line.strip_prefix(&prefix).map(|value| value.trim().to_owned()))
    }

    /// The whole console, for failure messages.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// Boots the guest and collects its console until it powers off or `timeout` passes (then QEMU is killed).
pub fn boot(image: &GuestImage, timeout: Duration) -> Console {
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        // Two vCPUs let the program under test and the scenario's tools run side by side (multi-threaded TCG).
        .args(["-accel", "tcg", "-smp", "2", "-m", "512", "-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|err| {
            panic!("could not start qemu-system-x86_64 ({err}); install it with: apt-get install -y --no-install-recommends qemu-system-x86")
        });
    let stdout = child.stdout.take().expect("qemu's stdout is piped");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line).replace('\r', "");
            if sender.send(text).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = started + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok(line) => {
                if std::env::var_os("SWITCHYARD_VM_ECHO").is_some() {
                    eprintln!("guest| {line}");
                }
                lines.push(line);
            }
            // QEMU closed the console (it powered off), or time ran out.
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let exit = lines.iter().find_map(|line| line.strip_prefix(EXIT_MARKER).and_then(|code| code.trim().parse().ok()));
    Console { lines, exit, elapsed: started.elapsed() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_and_results_are_read_from_the_console() {
        let console = Console {
            lines: ["noise", "==> BEGIN rules", "-A -t 1.2.3.4:80 -s rr", "==> END rules", "RESULT writes 1", "VM: scenario exit 0"]
                .map(String::from)
                .to_vec(),
            exit: Some(0),
            elapsed: Duration::ZERO,
        };
        assert_eq!(console.section("rules"), Some(vec!["-A -t 1.2.3.4:80 -s rr".to_owned()]));
        assert_eq!(console.section("missing"), None);
        assert_eq!(console.result("writes").as_deref(), Some("1"));
    }
}
