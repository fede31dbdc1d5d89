//! Running health checks: a script, an HTTP GET or a TCP connect, each bounded by its timeout.
//!
//! A health check runs on the cell next to a workload that may be in trouble, so a check must never outlive its
//! timeout or leave anything behind. A script runs in a process group of its own; on timeout the whole group is
//! killed (the script and whatever it started: a hung `curl`, a `sleep`) before the script is reaped, so the group
//! id cannot have been reused by then. A check whose task is dropped (shutdown) kills its group the same way.

use bytes::Bytes;
use http_body_util::Empty;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;
use switchyard_config::registrar::{HealthCheck, Probe};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::process::Command;

/// How a check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It passed.
    Healthy,
    /// It failed; why, in words.
    Unhealthy(String),
    /// It did not finish within its timeout (a script was killed with its process group).
    TimedOut,
}

impl Outcome {
    /// Whether the route may be announced.
    pub fn is_healthy(&self) -> bool {
        matches!(self, Self::Healthy)
    }

    /// Stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Unhealthy(_) => "unhealthy",
            Self::TimedOut => "timeout",
        }
    }
}

/// Script output kept for the log, per stream.
const OUTPUT_LIMIT: usize = 2048;

/// Runs `check` once.
pub async fn run(check: &HealthCheck) -> Outcome {
    match &check.probe {
        Probe::Script(path) => run_script(path, check.timeout).await,
        Probe::Http { url, expect_status } => bounded(check.timeout, http_get(url, *expect_status)).await,
        Probe::Tcp(address) => bounded(check.timeout, tcp_connect(address)).await,
    }
}

async fn bounded(timeout: Duration, probe: impl Future<Output = Result<(), String>>) -> Outcome {
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(())) => Outcome::Healthy,
        Ok(Err(why)) => Outcome::Unhealthy(why),
        Err(_) => Outcome::TimedOut,
    }
}

async fn tcp_connect(address: &str) -> Result<(), String> {
    TcpStream::connect(address).await.map(drop).map_err(|err| format!("connect to {address}: {err}"))
}

async fn http_get(url: &str, expect_status: Option<u16>) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|err| format!("url {url}: {err}"))?;
    let authority = uri.authority().ok_or_else(|| format!("url {url} names no host"))?.clone();
    let address = if authority.port().is_some() { authority.to_string() } else { format!("{authority}:80") };
    let stream = TcpStream::connect(&address).await.map_err(|err| format!("connect to {address}: {err}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|err| format!("{url}: {err}"))?;
    tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::USER_AGENT, "switchyard-route-registrar")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|err| format!("{url}: {err}"))?;
    let status = sender.send_request(request).await.map_err(|err| format!("GET {url}: {err}"))?.status();
    let healthy = match expect_status {
        Some(expected) => status.as_u16() == expected,
        None => status.is_success(),
    };
    if healthy { Ok(()) } else { Err(format!("GET {url} answered {status}")) }
}

/// Kills a script's whole process group unless disarmed; armed from spawn until the script is reaped.
struct GroupKiller(Option<Pid>);

impl GroupKiller {
    fn kill(&mut self) {
        if let Some(group) = self.0.take()
            && let Err(err) = killpg(group, Signal::SIGKILL)
            && err != nix::errno::Errno::ESRCH
        {
            tracing::warn!(%err, group = group.as_raw(), "could not kill a health check's process group");
        }
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A script that is open for writing when its check is due cannot be executed (`ETXTBSY`): a deploy tool is
/// replacing it, or another thread forked while it had the file open. Both pass within moments, so the run is
/// tried again this many times, this far apart, before the check counts as failed.
const BUSY_RETRIES: u32 = 5;
const BUSY_PAUSE: Duration = Duration::from_millis(20);

async fn run_script(path: &str, timeout: Duration) -> Outcome {
    let mut command = Command::new(path);
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
    let mut busy = 0;
    let mut child = loop {
        match command.spawn() {
            Ok(child) => break child,
            Err(err) if err.kind() == std::io::ErrorKind::ExecutableFileBusy && busy < BUSY_RETRIES => {
                busy += 1;
                tokio::time::sleep(BUSY_PAUSE).await;
            }
            Err(err) => return Outcome::Unhealthy(format!("could not run {path}: {err}")),
        }
    };
    let group = child.id().and_then(|pid| i32::try_from(pid).ok()).map(Pid::from_raw);
    let mut killer = GroupKiller(group);
    let stdout = child.stdout.take().map(|out| tokio::spawn(read_limited(out)));
    let stderr = child.stderr.take().map(|err| tokio::spawn(read_limited(err)));
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            // Kill the group while the script is still unreaped, so its id cannot belong to anyone else yet.
            killer.kill();
            let _reaped = child.wait().await;
            return Outcome::TimedOut;
        }
    };
    // Reaped: the group id may be reused from here on, so it must never be signalled again.
    killer.0 = None;
    let output = collect_output(stdout, stderr).await;
    match status {
        Ok(status) if status.success() => {
            if !output.is_empty() {
                tracing::debug!(script = path, %output, "health check output");
            }
            Outcome::Healthy
        }
        Ok(status) => {
            let how = match (status.code(), status.signal()) {
                (Some(code), _) => format!("exited with {code}"),
                (None, Some(signal)) => format!("killed by signal {signal}"),
                (None, None) => "ended".to_owned(),
            };
            let output = if output.is_empty() { String::new() } else { format!(": {output}") };
            Outcome::Unhealthy(format!("{path} {how}{output}"))
        }
        Err(err) => Outcome::Unhealthy(format!("waiting for {path}: {err}")),
    }
}

async fn read_limited(mut stream: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buffer = [0u8; 1024];
    // Read to the end so the script never blocks on a full pipe, keeping only the beginning.
    while let Ok(n) = stream.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        let room = OUTPUT_LIMIT.saturating_sub(kept.len());
        kept.extend_from_slice(buffer.get(..n.min(room)).unwrap_or_default());
    }
    kept
}

/// The script's output, trimmed to one line for logs. Something the script started may still hold the pipes open,
/// so this waits only briefly.
async fn collect_output(stdout: Option<tokio::task::JoinHandle<Vec<u8>>>, stderr: Option<tokio::task::JoinHandle<Vec<u8>>>) -> String {
    let mut text = String::new();
    for reader in [stdout, stderr].into_iter().flatten() {
        let abort = reader.abort_handle();
        if let Ok(Ok(bytes)) = tokio::time::timeout(Duration::from_millis(100), reader).await {
            let part = String::from_utf8_lossy(&bytes);
            let part = part.trim();
            if !part.is_empty() {
                if !text.is_empty() {
                    text.push_str(" | ");
                }
                text.push_str(part);
            }
        }
        abort.abort();
    }
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &tempfile::TempDir, name: &str, body: &str) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.display().to_string()
    }

    fn check(probe: Probe, timeout_ms: u64) -> HealthCheck {
        HealthCheck { name: "t".into(), probe, timeout: Duration::from_millis(timeout_ms) }
    }

    #[tokio::test]
    async fn script_exit_status_decides() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(run(&check(Probe::Script(script(&dir, "ok", "exit 0")), 2000)).await, Outcome::Healthy);
        let failed = run(&check(Probe::Script(script(&dir, "bad", "echo broken >&2; exit 3")), 2000)).await;
        let Outcome::Unhealthy(why) = failed else { panic!("{failed:?}") };
        assert!(why.contains("exited with 3") && why.contains("broken"), "{why}");
        let missing = run(&check(Probe::Script("/nonexistent/check".into()), 2000)).await;
        assert!(matches!(missing, Outcome::Unhealthy(ref why) if why.contains("could not run")), "{missing:?}");
    }

    #[tokio::test]
    async fn a_script_still_open_for_writing_runs_once_it_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = script(&dir, "busy", "exit 0");
        // While this process holds the file open for writing, the kernel refuses to execute it.
        let writer = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        let closing = tokio::spawn(async move {
            tokio::time::sleep(BUSY_PAUSE * 2).await;
            drop(writer);
        });
        assert_eq!(run(&check(Probe::Script(path.clone()), 2000)).await, Outcome::Healthy);
        closing.await.unwrap();
        // A file that stays busy fails the check after the retries, naming the cause.
        let _held = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        let busy = run(&check(Probe::Script(path), 2000)).await;
        assert!(matches!(busy, Outcome::Unhealthy(ref why) if why.contains("busy")), "{busy:?}");
    }

    #[tokio::test]
    async fn a_timed_out_script_dies_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let body = format!("sleep 30 &\necho $$ $! > {}\nwait", pids.display());
        let started = std::time::Instant::now();
        assert_eq!(run(&check(Probe::Script(script(&dir, "hang", &body)), 300)).await, Outcome::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
        let text = std::fs::read_to_string(&pids).unwrap();
        for pid in text.split_whitespace() {
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "));
            // The grandchild is reparented and reaped asynchronously; give it a moment.
            let gone = !alive || (0..50).any(|_| {
                std::thread::sleep(Duration::from_millis(20));
                std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| stat.contains(") Z "))
            });
            assert!(gone, "process {pid} survived the timeout");
        }
    }

    #[tokio::test]
    async fn tcp_and_http_probes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    let mut request = vec![0u8; 1024];
                    let n = stream.read(&mut request).await.unwrap_or(0);
                    let status = if request.get(..n).is_some_and(|r| r.starts_with(b"GET /ok ")) { "200 OK" } else { "503 Service Unavailable" };
                    let _ = stream.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes()).await;
                });
            }
        });
        assert_eq!(run(&check(Probe::Tcp(address.to_string()), 1000)).await, Outcome::Healthy);
        let ok = Probe::Http { url: format!("http://{address}/ok"), expect_status: None };
        assert_eq!(run(&check(ok, 1000)).await, Outcome::Healthy);
        let down = Probe::Http { url: format!("http://{address}/down"), expect_status: None };
        assert!(matches!(run(&check(down, 1000)).await, Outcome::Unhealthy(why) if why.contains("503")));
        let expected = Probe::Http { url: format!("http://{address}/down"), expect_status: Some(503) };
        assert_eq!(run(&check(expected, 1000)).await, Outcome::Healthy);
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        assert!(matches!(run(&check(Probe::Tcp(closed.to_string()), 1000)).await, Outcome::Unhealthy(_)));
    }
}
