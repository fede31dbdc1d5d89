//! Child processes of a benchmark: proxies, backends, NATS, load generators.
//!
//! Each is pinned to the CPUs the run assigns (through `taskset`, which execs the program so the pid is the
//! program's own), logs to a file in the run directory, and is stopped when its guard drops: SIGTERM first, so
//! nginx's master takes its workers down with it, then SIGKILL if it lingers.

use crate::error::{BenchError, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running child process, stopped on drop.
#[derive(Debug)]
pub struct Spawned {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Builds the command line that runs `program args` pinned to `cpus` (a taskset list such as `0` or `0,1`).
pub fn pinned(program: &str, args: &[String], cpus: Option<&str>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(cpus).arg(program).args(args);
            command
        }
        None => {
            let mut command = Command::new(program);
            command.args(args);
            command
        }
    }
}

impl Spawned {
    /// Starts `command` as `name`, with stdout and stderr in `<dir>/<name>.log`.
    pub fn start(name: &str, mut command: Command, dir: &Path) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let file = |path: &Path| std::fs::File::options().create(true).append(true).open(path).map_err(|source| BenchError::File { path: path.to_owned(), source });
        let out = file(&log)?;
        let err = file(&log)?;
        let child = command.stdin(Stdio::null()).stdout(out).stderr(err).spawn().map_err(|source| BenchError::Spawn { what: name.to_owned(), source })?;
        Ok(Self { name: name.to_owned(), child, log })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines the process wrote.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines.get(lines.len().saturating_sub(30)..).unwrap_or_default().join("\n")
    }

    /// Fails if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            _ => Err(BenchError::Exited { what: self.name.clone(), log: self.log_tail() }),
        }
    }

    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `command` to completion and returns its stdout; fails with its stderr when it exits non-zero.
pub fn output(what: &str, mut command: Command) -> Result<String> {
    let output = command.stdin(Stdio::null()).output().map_err(|source| BenchError::Spawn { what: what.to_owned(), source })?;
    if !output.status.success() {
        return Err(BenchError::BadRun { what: what.to_owned(), problem: format!("{}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim()) });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether `tool` is on PATH.
pub fn has_tool(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// Fails with the install command when `tool` is missing.
pub fn require_tool(tool: &'static str, install: &'static str) -> Result<()> {
    if has_tool(tool) { Ok(()) } else { Err(BenchError::MissingTool { tool, install }) }
}

/// Waits until something accepts connections on loopback `port`.
pub fn wait_for_port(what: &str, port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BenchError::Timeout { what: format!("{what} on port {port}"), seconds: timeout.as_secs() })
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| BenchError::Spawn { what: "a free loopback port".to_owned(), source })?;
    listener.local_addr().map(|a| a.port()).map_err(|source| BenchError::Spawn { what: "a free loopback port".to_owned(), source })
}
