//! The load generators: `wrk` for throughput at saturation (closed loop, keep-alive connections), and `oha` at a
//! fixed rate for latency (open loop: with `--latency-correction` each request's latency counts from when it
//! was due, not from when a free connection let it go, so a stall shows in the percentiles instead of hiding).
//!
//! `oha` also sends a fixed number of requests, GETs or small POSTs, for the instruction count.
//!
//! Both reports are read strictly: a run with socket errors or any answer other than 200 fails, because a proxy
//! answering 404 or 502 quickly would otherwise look fast.

use crate::error::{BenchError, Result};
use crate::process::{output, pinned};
use crate::results::{POST_BODY_BYTES, RequestKind};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// How to install `oha`, which Debian does not package.
pub const OHA_INSTALL: &str = "run `cargo install oha --locked`";

/// What a saturation run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Saturation {
    /// Requests completed.
    pub requests: u64,
    /// Requests per second.
    pub requests_per_second: f64,
}

/// What a fixed-rate run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Requests completed.
    pub requests: u64,
    /// Achieved rate.
    pub requests_per_second: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// 99.9th percentile, milliseconds.
    pub p999_ms: f64,
}

/// One load run against a target.
#[derive(Debug, Clone)]
pub struct Load<'a> {
    /// `http://127.0.0.1:port/`
    pub url: String,
    /// Host header.
    pub host: &'a str,
    /// Keep-alive connections.
    pub connections: u32,
    /// How long.
    pub duration: Duration,
    /// CPUs the generator runs on.
    pub cpus: Option<&'a str>,
}

impl Load<'_> {
    /// Runs `wrk` (one thread) and reads its report.
    pub fn saturate(&self) -> Result<Saturation> {
        let args = vec![
            "-t1".to_owned(),
            format!("-c{}", self.connections),
            format!("-d{}s", self.duration.as_secs().max(1)),
            "-H".to_owned(),
            format!("Host: {}", self.host),
            self.url.clone(),
        ];
        let text = output("wrk", pinned("wrk", &args, self.cpus))?;
        parse_wrk(&text)
    }

    /// Runs `oha` at `rate` requests per second and reads its JSON report.
    pub fn fixed_rate(&self, rate: f64) -> Result<Latency> {
        self.oha(&[
            "--latency-correction".to_owned(),
            // Requests in flight at the deadline finish and count, instead of being reported as errors.
            "-w".to_owned(),
            "-q".to_owned(),
            format!("{}", rate.round().max(1.0)),
            "-z".to_owned(),
            format!("{}s", self.duration.as_secs().max(1)),
        ])
    }

    /// Sends exactly `requests` requests of `kind` as fast as the connections allow (the duration is not used), with
    /// `oha`.
    pub fn count(&self, requests: u64, kind: RequestKind) -> Result<Latency> {
        let latency = self.oha(&count_mode(requests, kind))?;
        if latency.requests != requests {
            return Err(BenchError::BadRun { what: "oha".to_owned(), problem: format!("{} answers to {requests} requests", latency.requests) });
        }
        Ok(latency)
    }

    fn oha(&self, mode: &[String]) -> Result<Latency> {
        let mut args = vec!["--no-tui".to_owned(), "--output-format".to_owned(), "json".to_owned()];
        args.extend_from_slice(mode);
        args.extend(["-c".to_owned(), self.connections.to_string(), "-H".to_owned(), format!("Host: {}", self.host), self.url.clone()]);
        let text = output("oha", pinned("oha", &args, self.cpus))?;
        parse_oha(&text)
    }
}

/// `oha`'s arguments for a batch of exactly `requests` requests of `kind`.
fn count_mode(requests: u64, kind: RequestKind) -> Vec<String> {
    let mut mode = vec!["-n".to_owned(), requests.to_string()];
    if kind == RequestKind::Post {
        mode.extend(["-m".to_owned(), "POST".to_owned(), "-d".to_owned(), "x".repeat(POST_BODY_BYTES)]);
    }
    mode
}

fn parse_error(what: &str, problem: impl Into<String>) -> BenchError {
    BenchError::Parse { what: what.to_owned(), problem: problem.into() }
}

/// Reads wrk's text report. Fails on socket errors and on non-2xx/3xx answers.
pub fn parse_wrk(text: &str) -> Result<Saturation> {
    let mut requests = None;
    let mut requests_per_second = None;
    for line in text.lines().map(str::trim) {
        if let Some((count, _)) = line.split_once(" requests in ") {
            requests = count.trim().parse::<u64>().ok();
        } else if let Some(rate) = line.strip_prefix("Requests/sec:") {
            requests_per_second = rate.trim().parse::<f64>().ok();
        } else if let Some(bad) = line.strip_prefix("Non-2xx or 3xx responses:") {
            return Err(BenchError::BadRun { what: "wrk".to_owned(), problem: format!("{} answers were not 2xx/3xx", bad.trim()) });
        } else if line.starts_with("Socket errors:") {
            return Err(BenchError::BadRun { what: "wrk".to_owned(), problem: line.to_owned() });
        }
    }
    match (requests, requests_per_second) {
        (Some(requests), Some(requests_per_second)) if requests > 0 => Ok(Saturation { requests, requests_per_second }),
        _ => Err(parse_error("wrk", format!("no request count or rate in:\n{text}"))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OhaReport {
    summary: OhaSummary,
    latency_percentiles: BTreeMap<String, Option<f64>>,
    #[serde(default)]
    status_code_distribution: BTreeMap<String, u64>,
    #[serde(default)]
    error_distribution: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OhaSummary {
    requests_per_sec: f64,
}

/// Reads oha's JSON report (latencies in seconds). Fails on errors and on answers other than 200.
pub fn parse_oha(text: &str) -> Result<Latency> {
    let report: OhaReport = serde_json::from_str(text).map_err(|e| parse_error("oha", e.to_string()))?;
    if !report.error_distribution.is_empty() {
        return Err(BenchError::BadRun { what: "oha".to_owned(), problem: format!("errors: {:?}", report.error_distribution) });
    }
    let not_ok: u64 = report.status_code_distribution.iter().filter(|(code, _)| code.as_str() != "200").map(|(_, n)| n).sum();
    if not_ok > 0 {
        return Err(BenchError::BadRun { what: "oha".to_owned(), problem: format!("answers other than 200: {:?}", report.status_code_distribution) });
    }
    let requests = report.status_code_distribution.values().sum();
    let ms = |key: &str| {
        report.latency_percentiles.get(key).copied().flatten().map(|s| s * 1000.0).ok_or_else(|| parse_error("oha", format!("no {key} latency")))
    };
    Ok(Latency { requests, requests_per_second: report.summary.requests_per_sec, p50_ms: ms("p50")?, p99_ms: ms("p99")?, p999_ms: ms("p99.9")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 8s test @ http://127.0.0.1:8080/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms  200.00us   5.00ms   90.00%
    Req/Sec    31.30k     1.20k   33.00k    80.00%
  250400 requests in 8.00s, 40.11MB read
Requests/sec:  31299.87
Transfer/sec:      5.01MB
";

    #[test]
    fn wrk_report_is_read() {
        assert_eq!(parse_wrk(WRK).unwrap(), Saturation { requests: 250_400, requests_per_second: 31_299.87 });
    }

    #[test]
    fn wrk_runs_with_bad_answers_or_socket_errors_fail() {
        let bad = WRK.replace("Requests/sec", "  Non-2xx or 3xx responses: 12\nRequests/sec");
        assert!(matches!(parse_wrk(&bad), Err(BenchError::BadRun { .. })));
        let errors = WRK.replace("Requests/sec", "  Socket errors: connect 0, read 3, write 0, timeout 0\nRequests/sec");
        assert!(matches!(parse_wrk(&errors), Err(BenchError::BadRun { .. })));
        assert!(matches!(parse_wrk("nothing"), Err(BenchError::Parse { .. })));
    }

    const OHA: &str = r#"{"summary":{"successRate":1.0,"total":8.0,"requestsPerSec":9999.5},
        "latencyPercentiles":{"p10":0.0001,"p50":0.0002,"p99":0.0015,"p99.9":0.004,"p99.99":0.009},
        "statusCodeDistribution":{"200":80000},"errorDistribution":{}}"#;

    #[test]
    fn a_counted_batch_of_posts_carries_a_body_of_the_stated_size() {
        assert_eq!(count_mode(500, RequestKind::Get), ["-n", "500"]);
        let post = count_mode(500, RequestKind::Post);
        assert_eq!(post[..5], ["-n", "500", "-m", "POST", "-d"]);
        assert_eq!(post[5].len(), POST_BODY_BYTES);
    }

    #[test]
    fn oha_report_is_read_in_milliseconds() {
        let latency = parse_oha(OHA).unwrap();
        assert_eq!(latency.requests, 80_000);
        assert!((latency.p50_ms - 0.2).abs() < 1e-9);
        assert!((latency.p99_ms - 1.5).abs() < 1e-9);
        assert!((latency.p999_ms - 4.0).abs() < 1e-9);
    }

    #[test]
    fn oha_runs_with_errors_or_other_statuses_fail() {
        let not_found = OHA.replace(r#"{"200":80000}"#, r#"{"200":79000,"404":1000}"#);
        assert!(matches!(parse_oha(&not_found), Err(BenchError::BadRun { .. })));
        let errors = OHA.replace(r#""errorDistribution":{}"#, r#""errorDistribution":{"connection reset":3}"#);
        assert!(matches!(parse_oha(&errors), Err(BenchError::BadRun { .. })));
    }
}
