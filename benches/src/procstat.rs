//! What the kernel knows about a process: CPU time and resident memory, read from /proc.
//!
//! CPU per request is the growth of a process's utime+stime (all its threads) across a load run divided by the
//! requests served, the same way for every proxy, so no proxy's own accounting is trusted. The system part is kept
//! apart too: on loopback most of a proxy's CPU is the kernel's TCP work, the same for every proxy, and the split
//! shows how much of a difference between proxies is their own code.

use std::io;
use std::path::PathBuf;

/// `(utime, stime)` in clock ticks, from the text of `/proc/<pid>/stat`. The command name may hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    // After the name: state, ppid, ..., utime is field 14 of the line and stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime, stime))
}

/// CPU a process has used, all threads, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuTime {
    /// In the process's own code.
    pub user: f64,
    /// In the kernel on its behalf.
    pub system: f64,
}

impl CpuTime {
    /// User and system together.
    pub fn total(self) -> f64 {
        self.user + self.system
    }
}

/// The parent pid, from the text of `/proc/<pid>/stat`.
pub fn parse_parent(stat: &str) -> Option<u32> {
    stat.get(stat.rfind(')')? + 1..)?.split_whitespace().nth(1)?.parse().ok()
}

/// `VmRSS` in bytes, from the text of `/proc/<pid>/status`.
pub fn parse_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn read(pid: u32, file: &str) -> io::Result<String> {
    std::fs::read_to_string(PathBuf::from(format!("/proc/{pid}/{file}")))
}

fn unreadable(pid: u32, what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("cannot read {what} of process {pid} from /proc"))
}

/// The CPU the process has used.
pub fn cpu_time(pid: u32) -> io::Result<CpuTime> {
    let (user, system) = parse_cpu_ticks(&read(pid, "stat")?).ok_or_else(|| unreadable(pid, "CPU time"))?;
    let per_second = clock_ticks_per_second();
    Ok(CpuTime { user: user as f64 / per_second, system: system as f64 / per_second })
}

/// Resident memory of the process in bytes.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    parse_rss_bytes(&read(pid, "status")?).ok_or_else(|| unreadable(pid, "VmRSS"))
}

/// The processes whose parent is `pid` (nginx's workers under its master).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| read(child, "stat").ok().and_then(|stat| parse_parent(&stat)) == Some(pid))
        .collect()
}

fn clock_ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as f64,
        _ => 100.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 500 0 0 0 1234 567 0 0 20 0 3 0 100 1000 200 18446744073709551615";

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        assert_eq!(parse_cpu_ticks(STAT), Some((1234, 567)));
        assert_eq!(parse_parent(STAT), Some(1));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn rss_comes_from_vmrss() {
        assert_eq!(parse_rss_bytes("Name:\tx\nVmHWM:\t 9 kB\nVmRSS:\t  2048 kB\n"), Some(2048 * 1024));
        assert_eq!(parse_rss_bytes("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_is_readable() {
        let me = std::process::id();
        assert!(cpu_time(me).unwrap().total() >= 0.0);
        assert!(rss_bytes(me).unwrap() > 0);
    }
}
