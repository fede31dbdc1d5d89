//! Instructions per request: each proxy runs under callgrind, which counts every instruction its process runs in
//! user space.
//!
//! The CPU times of the peer comparison move by tens of percent between runs on this shared machine; an
//! instruction count of the same work moves by about a percent. It is the figure to judge a change to the router's
//! hot path by, and it sets the router beside nginx and haproxy without the noise. It leaves out the kernel's
//! share of a request (most of it, see the CPU tables) and says nothing of cache misses or stalls, so it
//! complements the timings rather than replacing them.
//!
//! Each proxy starts under callgrind and, for each kind of request, serves a warm-up batch (connections open, pools and
//! caches filled). Then its counters are zeroed, it serves exactly the counted batch, and its counters are dumped: the
//! dump's total over the batch is the figure. The router's metrics are not scraped here, so no per-second work lands in
//! a count that the slow-down under callgrind would stretch. Next to each count goes a profile: the functions that ran
//! the most instructions themselves, per request, read from the same dump.
//!
//! GETs are the common case. Small POSTs are counted too, because a request with a body takes other paths through
//! every proxy (the body is read, framed and written to the backend) and those must not quietly grow expensive.

use crate::error::{BenchError, Result};
use crate::load::OHA_INSTALL;
use crate::peers::targets::{self, Running};
use crate::peers::{Binaries, Lineup, Stand};
use crate::process::{output, require_tool};
use crate::results::{InstructionCount, Instructions, Logging, RequestKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How the count is run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Requests counted per proxy and logging mode.
    pub requests: u64,
    /// Uncounted requests first.
    pub warmup: u64,
    /// The kinds of request counted, one batch each.
    pub kinds: Vec<RequestKind>,
    /// What is counted, and where everything runs.
    pub lineup: Lineup,
}

/// Counts every target in every logging mode, for every kind of request. Progress goes to stderr.
pub fn run(plan: &Plan, binaries: &Binaries<'_>, dir: &Path) -> Result<Instructions> {
    require_tool("valgrind", "run `apt-get install -y valgrind`")?;
    require_tool("callgrind_control", "run `apt-get install -y valgrind`")?;
    require_tool("oha", OHA_INSTALL)?;
    let lineup = &plan.lineup;
    let mut stand = Stand::start(binaries.backend, dir, lineup.load_cpus.as_deref())?;
    let under = ["valgrind".to_owned(), "--tool=callgrind".to_owned(), format!("--callgrind-out-file={}/callgrind.%p", dir.display())];
    let mut measured = Instructions { warmup: plan.warmup, connections: lineup.connections, counts: Vec::new() };
    for &logging in &lineup.logging {
        for &target in &lineup.targets {
            let mut running = targets::start(target, logging, &stand.environment(dir, binaries.router, lineup, &under))?;
            for &kind in &plan.kinds {
                let count = count(plan, &mut running, logging, kind, dir)?;
                if let Some(per_request) = count.per_request() {
                    eprintln!("   {:>10}, {}, {}: {per_request:.0} instructions per request", count.target, logging.describe(), kind.name());
                }
                measured.counts.push(count);
            }
            stand.ensure_backend()?;
        }
    }
    Ok(measured)
}

fn count(plan: &Plan, running: &mut Running, logging: Logging, kind: RequestKind, dir: &Path) -> Result<InstructionCount> {
    let name = running.target.name();
    let pid = running.measured_pid.ok_or_else(|| BenchError::BadRun { what: name.clone(), problem: "no process to count".to_owned() })?;
    // A fixed count of requests: the load's duration does not apply.
    let load = plan.lineup.load(running, Duration::ZERO);
    load.count(plan.warmup, kind)?;
    control(pid, "-z")?;
    load.count(plan.requests, kind)?;
    let before = latest_dump(dir, pid)?.map_or(0, |(part, _)| part);
    control(pid, "-d")?;
    running.ensure_running()?;
    let dump = match latest_dump(dir, pid)? {
        Some((part, path)) if part > before => path,
        _ => return Err(BenchError::BadRun { what: format!("callgrind for {name}"), problem: format!("no new dump of process {pid} in {}", dir.display()) }),
    };
    let text = std::fs::read_to_string(&dump).map_err(|source| BenchError::File { path: dump.clone(), source })?;
    let instructions = parse_summary(&text).ok_or_else(|| BenchError::Parse { what: dump.display().to_string(), problem: "no `summary:` line".to_owned() })?;
    let profile = dir.join(format!("profile-{name}-{logging:?}-{}.txt", kind.name()));
    std::fs::write(&profile, render_profile(&self_costs(&text), plan.requests, PROFILE_LINES)).map_err(|source| BenchError::File { path: profile, source })?;
    Ok(InstructionCount { target: name, logging, request: kind, requests: plan.requests, instructions })
}

/// Functions listed in each profile.
const PROFILE_LINES: usize = 60;

/// Runs `callgrind_control <option> <pid>` (`-z` zeroes the counters, `-d` dumps them and waits for the file).
fn control(pid: u32, option: &str) -> Result<()> {
    let mut command = Command::new("callgrind_control");
    command.arg(option).arg(pid.to_string());
    // It exits 0 even when it finds no such process, and says so on stdout.
    let said = output("callgrind_control", command)?;
    match said.lines().find(|line| line.starts_with("Error")) {
        Some(error) => Err(BenchError::BadRun { what: format!("callgrind_control {option} {pid}"), problem: error.to_owned() }),
        None => Ok(()),
    }
}

/// The newest dump of process `pid` (`callgrind.<pid>.<part>`), with its part number.
fn latest_dump(dir: &Path, pid: u32) -> Result<Option<(u32, PathBuf)>> {
    let prefix = format!("callgrind.{pid}.");
    let entries = std::fs::read_dir(dir).map_err(|source| BenchError::File { path: dir.to_owned(), source })?;
    Ok(entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let part = entry.file_name().to_str()?.strip_prefix(&prefix)?.parse::<u32>().ok()?;
            Some((part, entry.path()))
        })
        .max_by_key(|(part, _)| *part))
}

fn parse_summary(dump: &str) -> Option<u64> {
    dump.lines().find_map(|line| line.strip_prefix("summary:")).and_then(|total| total.split_whitespace().next()?.parse().ok())
}

/// Instructions each function ran itself (not in its callees), most first, from a callgrind dump.
///
/// A dump names each function once, as `fn=(id) name`, and by `(id)` alone after that (`cfn=` shares the ids).
/// Cost lines (`<position> <cost>`) belong to the current `fn=`, except the one after a `calls=` line, which is
/// what that call cost in all and belongs to the callee.
fn self_costs(dump: &str) -> Vec<(String, u64)> {
    let mut names: HashMap<&str, &str> = HashMap::new();
    let mut costs: HashMap<&str, u64> = HashMap::new();
    let mut current: Option<&str> = None;
    let mut call_cost_next = false;
    for line in dump.lines() {
        if let Some(spec) = line.strip_prefix("fn=").or_else(|| line.strip_prefix("cfn=")) {
            let (id, name) = spec.split_once(' ').map_or((spec, None), |(id, name)| (id, Some(name)));
            let name = match name {
                Some(name) => *names.entry(id).or_insert(name),
                None => names.get(id).copied().unwrap_or(id),
            };
            if line.starts_with("fn=") {
                current = Some(name);
            }
        } else if line.starts_with("calls=") {
            call_cost_next = true;
        } else if line.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '*')) {
            let cost = line.split_whitespace().nth(1).and_then(|c| c.parse::<u64>().ok()).unwrap_or(0);
            if std::mem::take(&mut call_cost_next) {
                continue;
            }
            if let Some(name) = current {
                *costs.entry(name).or_default() += cost;
            }
        }
    }
    let mut sorted: Vec<(String, u64)> = costs.into_iter().map(|(name, cost)| (name.to_owned(), cost)).collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sorted
}

/// The first `lines` functions of a profile, as instructions per request and share of the whole.
fn render_profile(costs: &[(String, u64)], requests: u64, lines: usize) -> String {
    let total: u64 = costs.iter().map(|(_, cost)| cost).sum();
    let mut text = format!("{:>10} {:>6}  function (instructions it ran itself, per request)\n", "per req", "share");
    for (name, cost) in costs.iter().take(lines) {
        let per_request = *cost as f64 / requests.max(1) as f64;
        let share = 100.0 * *cost as f64 / total.max(1) as f64;
        text.push_str(&format!("{per_request:>10.0} {share:>5.1}%  {name}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_total_is_its_summary_line() {
        let dump = "# callgrind format\nversion: 1\npart: 2\n\npositions: line\nevents: Ir\nsummary: 732929512\n\nob=(3) libc\n";
        assert_eq!(parse_summary(dump), Some(732_929_512));
        assert_eq!(parse_summary("events: Ir\ntotals: 5\n"), None);
    }

    #[test]
    fn self_costs_leave_out_what_callees_ran() {
        let dump = "events: Ir\nsummary: 175\nfl=(1) a.rs\nfn=(1) main\n1 10\ncfn=(2) work\ncalls=3 5\n2 150\n+1 5\n\
                    fn=(2)\n5 100\ncfn=(3) <T as Trait>::poll\ncalls=1 9\n* 50\nfn=(3)\n9 50\nfn=(1)\n3 10\n";
        let costs = self_costs(dump);
        assert_eq!(costs, [("work".to_owned(), 100), ("<T as Trait>::poll".to_owned(), 50), ("main".to_owned(), 25)]);
        let profile = render_profile(&costs, 5, 2);
        assert!(profile.contains("        20  57.1%  work\n"), "{profile}");
        assert!(profile.contains("        10  28.6%  <T as Trait>::poll\n"), "{profile}");
        assert!(!profile.contains("main"));
    }

    #[test]
    fn the_newest_dump_of_a_process_is_found() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["callgrind.41.1", "callgrind.41.10", "callgrind.41.2", "callgrind.4.99", "callgrind.41", "callgrind.41.x"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let (part, path) = latest_dump(dir.path(), 41).unwrap().unwrap();
        assert_eq!(part, 10);
        assert!(path.ends_with("callgrind.41.10"));
        assert_eq!(latest_dump(dir.path(), 7).unwrap(), None);
    }
}
