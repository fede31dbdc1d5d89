//! Spawning the project's binaries and waiting for them.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary built next to the running test (`target/<profile>/<name>`).
///
/// `SWITCHYARD_BIN_DIR` overrides the directory. A missing binary fails the test with the command that builds it.
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("SWITCHYARD_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("the test knows its own path");
            // target/<profile>/deps/<test> -> target/<profile>
            exe.parent().and_then(Path::parent).expect("test binary lives in target/<profile>/deps").to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "binary `{name}` not found at {}; build it first with `cargo build --bins` (scripts/test does this)",
        path.display()
    );
    path
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener.local_addr().expect("ephemeral port has an address").port()
}

/// Polls `condition` every 20ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    wait_until(timeout, || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
}

/// A child process that is killed when dropped. Its stdout and stderr go to a log file, printed when the test
/// fails so CI output shows what the process said.
pub struct Service {
    name: String,
    child: Child,
    log_path: PathBuf,
    exited: Option<ExitStatus>,
}

impl Service {
    /// Starts `program` with `args`, logging to `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, program: &Path, args: &[&str], envs: &[(&str, &str)], log_dir: &Path) -> Self {
        let log_path = log_dir.join(format!("{name}.log"));
        let log = File::options().create(true).append(true).open(&log_path).expect("create the service log file");
        let err_log = log.try_clone().expect("clone the log file handle");
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null()).stdout(log).stderr(err_log);
        for (key, value) in envs {
            command.env(key, value);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        let child = command.spawn().unwrap_or_else(|err| panic!("could not start {}: {err}", program.display()));
        Self { name: name.to_owned(), child, log_path, exited: None }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal.
    pub fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits in i32"));
        kill(pid, signal).unwrap_or_else(|err| panic!("could not signal {}: {err}", self.name));
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited {
            return Some(status);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.exited.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything the process has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Kills the process and waits for it.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.exited = Some(status);
            }
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("----- last lines of {} ({}) -----", self.name, self.log_path.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
