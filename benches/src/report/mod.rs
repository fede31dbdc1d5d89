//! BENCHMARKS.md from a results directory: one table per metric, ratios to nginx and haproxy from the same
//! run, the issue's targets marked met or missed, the machine, how to reproduce, and the plot.
//!
//! Rendering is a pure function of [`Inputs`], so its shape is unit-tested; [`collect`] does the reading.

pub mod svg;

use crate::error::Result;
use crate::results::{self, Ingest, Instructions, Logging, POST_BODY_BYTES, Peers, RequestKind, RouteMemory};
use crate::routes::{LOOKUPS_PER_ITERATION, Shape};
use crate::stats::{median, ratio};
use std::fmt::Write as _;
use std::path::Path;

/// A route lookup figure from criterion.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// Routes in the table.
    pub routes: usize,
    /// Which kind of route.
    pub shape: Shape,
    /// Median nanoseconds per lookup.
    pub median_ns: f64,
}

/// Everything the report shows.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Machine description lines.
    pub machine: Vec<(String, String)>,
    /// When and how the run was made.
    pub run: String,
    /// Peer comparison.
    pub peers: Option<Peers>,
    /// Instructions per request under callgrind.
    pub instructions: Option<Instructions>,
    /// Route lookups.
    pub lookups: Vec<Lookup>,
    /// Route memory.
    pub memory: Option<RouteMemory>,
    /// NATS ingest.
    pub ingest: Option<Ingest>,
    /// Output of the nftables scale script.
    pub lb: Option<String>,
    /// Lines quoted from the IPVS VM test.
    pub ipvs: Option<String>,
    /// Output of the TLS handshake benchmark.
    pub tls: Option<String>,
    /// Stages of the run that failed, one per line.
    pub failures: Option<String>,
    /// File name of the plot, relative to BENCHMARKS.md.
    pub plot: String,
}

const TARGETS: [&str; 5] = ["direct", "nginx", "haproxy", "router-1t", "router-2t"];

fn saturation_median(peers: &Peers, target: &str, logging: Logging, value: impl Fn(&results::SaturationRun) -> Option<f64>) -> Option<f64> {
    let values: Vec<f64> = peers.saturation.iter().filter(|r| r.target == target && r.logging == logging).filter_map(value).collect();
    median(&values)
}

fn saturation_range(peers: &Peers, target: &str, logging: Logging, value: impl Fn(&results::SaturationRun) -> Option<f64>) -> String {
    let values: Vec<f64> = peers.saturation.iter().filter(|r| r.target == target && r.logging == logging).filter_map(value).collect();
    match (values.iter().copied().reduce(f64::min), values.iter().copied().reduce(f64::max)) {
        (Some(min), Some(max)) if values.len() > 1 => format!(" ({}–{})", number(min), number(max)),
        _ => String::new(),
    }
}

fn latency_median(peers: &Peers, target: &str, logging: Logging, value: impl Fn(&results::LatencyRun) -> f64) -> Option<f64> {
    let values: Vec<f64> = peers.latency.iter().filter(|r| r.target == target && r.logging == logging).map(value).collect();
    median(&values)
}

fn number(value: f64) -> String {
    if value >= 100.0 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "report figures are far below u64::MAX")]
        let whole = value.round() as u64;
        let text = whole.to_string();
        let mut grouped = String::new();
        for (index, digit) in text.chars().enumerate() {
            if index > 0 && (text.len() - index).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        grouped
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

fn cell(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), number)
}

/// Microseconds, to a tenth, so a column of them lines up whatever their size.
fn micros(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.1}"))
}

fn times(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.2}×"))
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

/// One of the issue's targets and how this run did against it.
struct Goal {
    what: String,
    goal: String,
    measured: String,
    met: Option<bool>,
}

fn peer_targets(peers: &Peers, out: &mut Vec<Goal>) {
    let rps = |t: &str, l| saturation_median(peers, t, l, |r| Some(r.requests_per_second));
    let cpu = |t: &str, l| saturation_median(peers, t, l, |r| r.cpu_us_per_request);
    let p99 = |t: &str, l| latency_median(peers, t, l, |r| r.p99_ms);
    for logging in Logging::ALL {
        let suffix = match logging {
            Logging::On => "log + metrics on",
            Logging::Off => "log + metrics off",
        };
        for peer in ["nginx", "haproxy"] {
            let r = ratio(cpu("router-1t", logging), cpu(peer, logging));
            out.push(Goal {
                what: format!("router CPU/request vs {peer} ({suffix})"),
                goal: "≤ 0.80×".to_owned(),
                measured: times(r),
                met: r.map(|r| r <= 0.8),
            });
        }
        let r = ratio(rps("router-1t", logging), rps("nginx", logging));
        out.push(Goal { what: format!("router throughput, 1 thread, vs nginx ({suffix})"), goal: "≥ 1.20×".to_owned(), measured: times(r), met: r.map(|r| r >= 1.2) });
        let r = ratio(rps("router-2t", logging), rps("router-1t", logging));
        out.push(Goal { what: format!("router 2 threads vs its 1 thread ({suffix})"), goal: "≥ 1.70×".to_owned(), measured: times(r), met: r.map(|r| r >= 1.7) });
        let r = ratio(p99("router-1t", logging), p99("nginx", logging));
        out.push(Goal { what: format!("router p99 at the fixed rate vs nginx ({suffix})"), goal: "≤ 1.00×".to_owned(), measured: times(r), met: r.map(|r| r <= 1.0) });
    }
}

fn scale_targets(inputs: &Inputs, out: &mut Vec<Goal>) {
    let million: Vec<&Lookup> = inputs.lookups.iter().filter(|l| l.routes == 1_000_000).collect();
    let worst = million.iter().map(|l| l.median_ns).reduce(f64::max);
    out.push(Goal {
        what: "route lookup at 1M routes, slowest kind (median)".to_owned(),
        goal: "≤ 150 ns".to_owned(),
        measured: worst.map_or_else(|| "–".to_owned(), |ns| format!("{ns:.0} ns")),
        met: worst.map(|ns| ns <= 150.0),
    });
    let memory = inputs.memory.as_ref();
    out.push(Goal {
        what: "route-table memory per route at 1M routes (minimal registrations, every endpoint having served)".to_owned(),
        goal: "≤ 300 B".to_owned(),
        measured: memory.map_or_else(
            || "–".to_owned(),
            |m| format!("{:.0} B ({:.0} B before any request)", m.served_bytes_per_route, m.minimal_bytes_per_route),
        ),
        met: memory.map(|m| m.served_bytes_per_route <= 300.0),
    });
    let ingest = inputs.ingest.as_ref();
    out.push(Goal {
        what: format!("{} registrations routable after the last publish", ingest.map_or(100_000, |i| i.registrations)),
        goal: "≤ 1 s, all of them".to_owned(),
        measured: ingest.map_or_else(
            || "–".to_owned(),
            |i| format!("{:.3} s, {} of {} routable", i.routable_after_last_publish_seconds, i.routable, i.registrations),
        ),
        met: ingest.map(|i| i.routable == i.registrations && i.routable_after_last_publish_seconds <= 1.0),
    });
    let lb = inputs.lb.as_deref().unwrap_or_default();
    let syncs = figures_after(lb, "first sync from empty: ");
    let first_sync = median(&syncs);
    out.push(Goal {
        what: "LB: 10k VIPs × 10 backends, plan + nftables sync from empty (nft_scale.sh's first sync, median of its runs)".to_owned(),
        goal: "≤ 1 s".to_owned(),
        measured: first_sync.map_or_else(|| "–".to_owned(), |s| format!("{s:.2} s{}", spread(&syncs, "s", 2))),
        met: first_sync.map(|s| s <= 1.0),
    });
    let changes: Vec<f64> = lb.lines().filter(|line| line.contains("announcement to applied")).filter_map(|line| figure_after(line, "median ")).collect();
    let change = median(&changes);
    out.push(Goal {
        what: "LB: a single-backend change applied after the announcement (median)".to_owned(),
        goal: "≤ 20 ms".to_owned(),
        measured: change.map_or_else(|| "–".to_owned(), |ms| format!("{ms:.1} ms{}", spread(&changes, "ms", 1))),
        met: change.map(|ms| ms <= 20.0),
    });
    out.push(Goal {
        what: "publish → routable p99 at 1k msgs/s".to_owned(),
        goal: "≤ 5 ms".to_owned(),
        measured: ingest.map_or_else(|| "–".to_owned(), |i| format!("{:.2} ms", i.latency.p99_ms)),
        met: ingest.map(|i| i.latency.p99_ms <= 5.0),
    });
}

/// The number at the start of `text` (digits and a point).
fn leading_number(text: &str) -> Option<f64> {
    let end = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    text.get(..end)?.parse().ok()
}

/// The number that follows `label` in the LB script's output.
fn figure_after(text: &str, label: &str) -> Option<f64> {
    leading_number(text.split(label).nth(1)?)
}

/// Every number that follows `label` in the output of several runs of the LB script, one per run.
fn figures_after(text: &str, label: &str) -> Vec<f64> {
    text.split(label).skip(1).filter_map(leading_number).collect()
}

/// How many runs a median came from and their range (` (3 runs: 0.75–1.01 s)`); nothing for a single run.
fn spread(values: &[f64], unit: &str, decimals: usize) -> String {
    let low = values.iter().copied().reduce(f64::min);
    let high = values.iter().copied().reduce(f64::max);
    match (low, high) {
        (Some(low), Some(high)) if values.len() > 1 => format!(" ({} runs: {low:.decimals$}–{high:.decimals$} {unit})", values.len()),
        _ => String::new(),
    }
}

fn peer_tables(md: &mut String, peers: &Peers) {
    let _ = writeln!(
        md,
        "Each figure is the median of {} rounds ({}s wrk runs, {} keep-alive connections, targets interleaved and \
         rotated each round); the range across rounds is in brackets. Placement: {}.\n",
        peers.rounds, peers.saturation_seconds, peers.connections, peers.placement
    );
    for logging in Logging::ALL {
        let rps = |t: &str| saturation_median(peers, t, logging, |r| Some(r.requests_per_second));
        let cpu = |t: &str| saturation_median(peers, t, logging, |r| r.cpu_us_per_request);
        let _ = writeln!(md, "### Throughput at saturation, {}\n", logging.describe());
        let _ = writeln!(md, "| target | req/s | × nginx | × haproxy | × direct |\n|---|---:|---:|---:|---:|");
        for target in TARGETS {
            let _ = writeln!(
                md,
                "| {target} | {}{} | {} | {} | {} |",
                cell(rps(target)),
                saturation_range(peers, target, logging, |r| Some(r.requests_per_second)),
                times(ratio(rps(target), rps("nginx"))),
                times(ratio(rps(target), rps("haproxy"))),
                times(ratio(rps(target), rps("direct")))
            );
        }
        let _ = writeln!(md, "\n### Proxy CPU per request, {}\n", logging.describe());
        let _ = writeln!(
            md,
            "| proxy | µs CPU/request | of which system (kernel) | user µs/request | × nginx | × haproxy | RSS after load (MiB) |\n\
             |---|---:|---:|---:|---:|---:|---:|"
        );
        for target in TARGETS.iter().filter(|t| **t != "direct") {
            let rss = saturation_median(peers, target, logging, |r| r.rss_bytes.map(|b| b as f64 / 1048576.0));
            let system = saturation_median(peers, target, logging, |r| r.system_us_per_request);
            let user = saturation_median(peers, target, logging, |r| Some(r.cpu_us_per_request? - r.system_us_per_request?));
            let share = ratio(system, cpu(target)).map_or_else(String::new, |s| format!(" ({:.0}%)", s * 100.0));
            let _ = writeln!(
                md,
                "| {target} | {}{} | {}{share} | {} | {} | {} | {} |",
                cell(cpu(target)),
                saturation_range(peers, target, logging, |r| r.cpu_us_per_request),
                micros(system),
                micros(user),
                times(ratio(cpu(target), cpu("nginx"))),
                times(ratio(cpu(target), cpu("haproxy"))),
                rss.map_or_else(|| "–".to_owned(), |m| format!("{m:.1}"))
            );
        }
        let rate = peers.latency.iter().find(|r| r.logging == logging).map(|r| r.rate);
        let _ = writeln!(
            md,
            "\n### Latency at a fixed rate of {} req/s (half of nginx's saturation rate; open loop, oha --latency-correction), {}\n",
            cell(rate),
            logging.describe()
        );
        let _ = writeln!(md, "| target | p50 ms | p99 ms | p99.9 ms | p99 × nginx | p99 × haproxy | achieved req/s |\n|---|---:|---:|---:|---:|---:|---:|");
        let p99 = |t: &str| latency_median(peers, t, logging, |r| r.p99_ms);
        for target in TARGETS {
            let _ = writeln!(
                md,
                "| {target} | {} | {} | {} | {} | {} | {} |",
                cell(latency_median(peers, target, logging, |r| r.p50_ms)),
                cell(p99(target)),
                cell(latency_median(peers, target, logging, |r| r.p999_ms)),
                times(ratio(p99(target), p99("nginx"))),
                times(ratio(p99(target), p99("haproxy"))),
                cell(latency_median(peers, target, logging, |r| r.achieved_rate)),
            );
        }
        md.push('\n');
    }
}

fn instruction_table(md: &mut String, instructions: Option<&Instructions>) {
    md.push_str("### Instructions per request (callgrind)\n\n");
    let Some(instructions) = instructions else {
        md.push_str("Not run.\n\n");
        return;
    };
    let _ = writeln!(
        md,
        "User-space instructions each proxy's process ran per request (all threads), counted by callgrind over a fixed batch \
         of requests from {} keep-alive connections after {} uncounted ones. The kernel's share, most of each request's CPU \
         above, is not in it, nor are cache misses: this is not a CPU time. It moves by about a percent between runs, where \
         the times above move by tens of percent, so it is the figure to judge a change to the router's hot path by. Under \
         callgrind nginx runs without its master process, and the router's /metrics is not scraped.\n",
        instructions.connections,
        number(instructions.warmup as f64)
    );
    for kind in RequestKind::ALL {
        let counts: Vec<&results::InstructionCount> = instructions.counts.iter().filter(|c| c.request == kind).collect();
        if counts.is_empty() {
            continue;
        }
        let _ = writeln!(md, "{}\n", match kind {
            RequestKind::Get => "`GET /`, answered with the backend's short body:".to_owned(),
            RequestKind::Post => format!("`POST /` with a {POST_BODY_BYTES}-byte body, which the backend echoes:"),
        });
        instruction_rows(md, &counts);
    }
}

/// One table of instruction counts, all of one kind of request.
fn instruction_rows(md: &mut String, counts: &[&results::InstructionCount]) {
    let per_request = |target: &str, logging: Logging| {
        counts.iter().find(|c| c.target == target && c.logging == logging).and_then(|c| c.per_request())
    };
    md.push_str("| proxy | log + metrics on | × nginx | × haproxy | log + metrics off | × nginx | × haproxy | requests counted |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for target in ["nginx", "haproxy", "router-1t"] {
        let mut row = format!("| {target} |");
        for logging in Logging::ALL {
            let count = per_request(target, logging);
            let _ = write!(
                row,
                " {} | {} | {} |",
                cell(count),
                times(ratio(count, per_request("nginx", logging))),
                times(ratio(count, per_request("haproxy", logging)))
            );
        }
        let requests = counts.iter().find(|c| c.target == target).map(|c| c.requests as f64);
        let _ = writeln!(md, "{row} {} |", cell(requests));
    }
    md.push('\n');
}

/// The plot of throughput and p99 per target.
pub fn plot(peers: &Peers) -> String {
    let groups = |value: &dyn Fn(&str, Logging) -> Option<f64>| {
        TARGETS.iter().map(|t| svg::Group { label: (*t).to_owned(), on: value(t, Logging::On), off: value(t, Logging::Off) }).collect()
    };
    let throughput = svg::Panel {
        title: "Throughput at saturation".to_owned(),
        unit: "requests/s (median), higher is better".to_owned(),
        groups: groups(&|t, l| saturation_median(peers, t, l, |r| Some(r.requests_per_second))),
    };
    let p99 = svg::Panel {
        title: "p99 latency at a fixed rate".to_owned(),
        unit: "milliseconds (median of rounds), lower is better".to_owned(),
        groups: groups(&|t, l| latency_median(peers, t, l, |r| r.p99_ms)),
    };
    svg::render(&[throughput, p99], "same machine, same run")
}

/// The whole BENCHMARKS.md text.
pub fn render(inputs: &Inputs) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Benchmarks\n\nGenerated by `scripts/bench` ({}). Do not edit by hand: run it again.\n\n\
         This machine is small, shared and noisy, so absolute numbers move from run to run; the ratios between \
         targets measured in the same run are what to read. Every figure below, including the misses, is what \
         the run measured.\n",
        inputs.run
    );
    if let Some(failures) = &inputs.failures {
        let _ = writeln!(md, "**Stages that failed in this run** (their sections say \"not run\"):\n\n{}\n", failures.trim());
    }
    let _ = writeln!(md, "## Targets (issue 6)\n\n| target | goal | measured | |\n|---|---|---|---|");
    let mut targets = Vec::new();
    if let Some(peers) = &inputs.peers {
        peer_targets(peers, &mut targets);
    }
    scale_targets(inputs, &mut targets);
    for t in &targets {
        let _ = writeln!(md, "| {} | {} | {} | {} |", t.what, t.goal, t.measured, verdict(t.met));
    }
    md.push('\n');

    let _ = writeln!(md, "## Proxies: router vs nginx vs haproxy\n");
    match &inputs.peers {
        Some(peers) => {
            let _ = writeln!(md, "![throughput and p99 per proxy]({})\n", inputs.plot);
            peer_tables(&mut md, peers);
        }
        None => md.push_str("Not run.\n\n"),
    }
    md.push_str(SETUP);
    instruction_table(&mut md, inputs.instructions.as_ref());

    let _ = writeln!(
        md,
        "## Route lookup\n\nMedian time per lookup (criterion), including normalising the Host as the proxy does. Each table \
         holds a third of each kind of route; each iteration routes {LOOKUPS_PER_ITERATION} different requests spread over \
         the table.\n"
    );
    if inputs.lookups.is_empty() {
        md.push_str("Not run.\n\n");
    } else {
        let mut sizes: Vec<usize> = inputs.lookups.iter().map(|l| l.routes).collect();
        sizes.sort_unstable();
        sizes.dedup();
        let _ = writeln!(md, "| routes | {} |\n|---:|{}", Shape::ALL.map(|s| format!("{} (ns)", s.name())).join(" | "), "---:|".repeat(Shape::ALL.len()));
        for size in sizes {
            let cells: Vec<String> = Shape::ALL
                .iter()
                .map(|shape| {
                    inputs.lookups.iter().find(|l| l.routes == size && l.shape == *shape).map_or_else(|| "–".to_owned(), |l| format!("{:.0}", l.median_ns))
                })
                .collect();
            let _ = writeln!(md, "| {} | {} |", number(size as f64), cells.join(" | "));
        }
        md.push('\n');
    }

    md.push_str("## Route-table memory\n\n");
    match &inputs.memory {
        Some(m) => {
            let _ = writeln!(
                md,
                "Bytes live in the allocator after building {} exact-host routes (one endpoint each) through the registry, per \
                 route, counted by a counting global allocator (allocator overhead not included).\n\n\
                 | registrations carry | bytes per route |\n|---|---:|\n\
                 | host, port, uri | {:.0} |\n\
                 | host, port, uri, once every endpoint has served a request (its text is then shared with the header values it adds) | {:.0} |\n\
                 | host, port, uri, app GUID, instance GUID, index, a tag (as Cloud Foundry's emitters send) | {:.0} |\n\n\
                 Building the {} minimal routes took {:.2} s.\n",
                number(m.routes as f64),
                m.minimal_bytes_per_route,
                m.served_bytes_per_route,
                m.typical_bytes_per_route,
                number(m.routes as f64),
                m.build_seconds
            );
        }
        None => md.push_str("Not run.\n\n"),
    }

    md.push_str("## NATS ingest\n\n");
    match &inputs.ingest {
        Some(i) => {
            let _ = writeln!(
                md,
                "A release router (one worker thread) on a private nats-server. Bulk: {} registrations of new routes published as \
                 fast as one client can, then the router's `switchyard_router_routes` gauge polled every 5 ms; 200 of the routes \
                 are then requested through the proxy.\n\n\
                 | measure | value |\n|---|---:|\n\
                 | publishing took | {:.3} s |\n\
                 | routes that became routable | {} of {} |\n\
                 | last route routable after the last publish | {:.3} s |\n\
                 | ingest rate (first publish to last routable) | {} registrations/s |\n\
                 | publish → routable at {} msgs/s, p50 | {:.3} ms |\n\
                 | publish → routable at {} msgs/s, p99 | {:.3} ms |\n\
                 | publish → routable, slowest of {} | {:.3} ms |\n",
                number(i.registrations as f64),
                i.publish_seconds,
                number(i.routable as f64),
                number(i.registrations as f64),
                i.routable_after_last_publish_seconds,
                number(i.registrations_per_second),
                number(i.latency.rate),
                i.latency.p50_ms,
                number(i.latency.rate),
                i.latency.p99_ms,
                number(i.latency.samples as f64),
                i.latency.max_ms
            );
            if i.routable < i.registrations {
                let _ = writeln!(
                    md,
                    "{} registrations were lost: the router's NATS subscription overflowed (its log says \"slow consumers\"), \
                     so those routes would wait for the emitters' next refresh.\n",
                    number((i.registrations - i.routable) as f64)
                );
            }
            md.push_str(
                "Latency: each new route is published (and flushed) at a fixed rate, and probe connections request it until \
                 the router answers 200; the time counts from just before the publish.\n\n",
            );
        }
        None => md.push_str("Not run.\n\n"),
    }

    md.push_str("## LB\n\n");
    match &inputs.lb {
        Some(text) => {
            let runs = figures_after(text, "first sync from empty: ").len();
            let how = if runs > 1 { format!(", {runs} runs, each from empty in a fresh namespace; the targets above take the median") } else { String::new() };
            let _ = writeln!(md, "nftables dataplane, measured by `lb/bench/nft_scale.sh` (release `lb`, in a network namespace of its own{how}):\n\n```\n{}\n```\n", text.trim());
        }
        None => md.push_str("The nftables scale measurement (`lb/bench/nft_scale.sh`) was not run.\n\n"),
    }
    match &inputs.ipvs {
        Some(text) => {
            let _ = writeln!(md, "IPVS dataplane, quoted from the VM test (`SWITCHYARD_IPVS_BENCH=1`, a Debian kernel under QEMU TCG software emulation, so far slower than hardware):\n\n```\n{}\n```\n", text.trim());
        }
        None => md.push_str("The IPVS scale figures (from the QEMU test) were not collected in this run (`scripts/bench` collects them without `--quick`).\n\n"),
    }

    md.push_str("## TLS handshakes with many SNI certificates\n\n");
    match &inputs.tls {
        Some(text) => {
            let _ = writeln!(
                md,
                "`tls-handshakes`: full handshakes (no resumption) against the release router, one worker thread, with 1 and with \
                 1,000 certificates chosen by SNI; each handshake is verified against the name asked for.\n\n{}\n",
                text.trim()
            );
        }
        None => md.push_str("The TLS handshake benchmark (`tls-handshakes`) did not produce numbers in this run.\n\n"),
    }

    md.push_str("## Machine\n\n| | |\n|---|---|\n");
    for (key, value) in &inputs.machine {
        let _ = writeln!(md, "| {key} | {} |", value.replace('|', "/"));
    }
    md.push_str(REPRODUCE);
    md
}

const SETUP: &str = "How the proxies are set up: one backend (`sample-backend`, hyper, one thread, a 35-byte body) behind every \
proxy on loopback. nginx: one worker, upstream keep-alive (64 idle connections), Host-based `server`, no per-connection \
request limit. haproxy: `nbthread 1`, `http-reuse always`, a Host ACL. Both add X-Forwarded-For, X-Forwarded-Proto and a \
request id; the router adds what gorouter adds (X-Forwarded-*, X-Request-Start, X-Vcap-Request-Id, X-CF-*). \
On this 2-core machine the two-thread router shares CPU 1 with the backend and the load generators, so its figures \
show contention rather than scaling: judging the 1.7× scaling target needs at least 4 cores (2 for the router, 2 for \
the load). The router \
learns its route from a real nats-server. CPU per request is the growth of the proxy process's utime+stime in \
/proc/<pid>/stat (all threads; nginx's worker) over a wrk run, divided by the requests wrk counted; the stime part \
is shown on its own, since on loopback it is mostly the kernel's TCP work on the same reads and writes whichever \
proxy makes them, and only the user part is the proxy's own code. \"On\": nginx writes a \
buffered access log (64k buffer, 1 s flush), haproxy logs `option httplog` lines to stdout redirected to a file, the router \
writes its gorouter-format access log and its /metrics is scraped every second. \"Off\": no access logs and no scraping; \
the router's metrics cannot be switched off, so they are still counted. Every run must answer only 200s, or the run fails.\n\n";

const REPRODUCE: &str = "\n## Reproduce\n\n```\nscripts/bench            # everything, about 15 minutes\nscripts/bench --quick    # one short round of each, about 5 minutes\n```\n\n\
`scripts/bench` installs what is missing (nginx, haproxy, wrk, nats-server, valgrind from Debian; oha with `cargo install oha --locked`), builds \
the release binaries, runs `cargo bench -p switchyard-benches --bench route_lookup`, `route-memory`, `switchyard-bench ingest` \
`switchyard-bench peers` and `switchyard-bench instructions`, the LB scale script and (full mode) the IPVS VM test, then writes this file and the plot with \
`switchyard-bench report`. Raw numbers and every process's log stay in the results directory it prints.\n";

/// Reads a results directory (and criterion's output) into [`Inputs`].
pub fn collect(results_dir: &Path, criterion_dir: &Path) -> Result<Inputs> {
    let text = |name: &str| std::fs::read_to_string(results_dir.join(name)).ok().filter(|t| !t.trim().is_empty());
    Ok(Inputs {
        machine: machine(),
        run: String::new(),
        peers: results::load(&results_dir.join("peers.json"))?,
        instructions: results::load(&results_dir.join("instructions.json"))?,
        lookups: lookups(criterion_dir),
        memory: results::load(&results_dir.join("memory.json"))?,
        ingest: results::load(&results_dir.join("ingest.json"))?,
        lb: text("lb.txt"),
        ipvs: text("ipvs.txt"),
        tls: text("tls.txt"),
        failures: text("failures.txt"),
        plot: String::new(),
    })
}

fn lookups(criterion_dir: &Path) -> Vec<Lookup> {
    let mut found = Vec::new();
    for shape in Shape::ALL {
        let Ok(entries) = std::fs::read_dir(criterion_dir.join("route_lookup").join(shape.name())) else { continue };
        for entry in entries.flatten() {
            let Some(routes) = entry.file_name().to_str().and_then(|s| s.parse::<usize>().ok()) else { continue };
            let estimates = entry.path().join("new").join("estimates.json");
            let Ok(text) = std::fs::read_to_string(&estimates) else { continue };
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
            if let Some(per_iteration) = json.pointer("/median/point_estimate").and_then(serde_json::Value::as_f64) {
                found.push(Lookup { routes, shape, median_ns: per_iteration / LOOKUPS_PER_ITERATION as f64 });
            }
        }
    }
    found.sort_by_key(|l| l.routes);
    found
}

fn command_line(program: &str, args: &[&str]) -> String {
    match std::process::Command::new(program).args(args).output() {
        Ok(output) => {
            let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
            text.lines().next().unwrap_or_default().trim().to_owned()
        }
        Err(_) => "not installed".to_owned(),
    }
}

fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim().to_owned())).unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total = memory.lines().find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse::<f64>().ok());
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    vec![
        ("CPU".to_owned(), format!("{model}, {cores} cores")),
        ("memory".to_owned(), total.map_or_else(String::new, |kib| format!("{:.1} GiB", kib / 1048576.0))),
        ("kernel".to_owned(), command_line("uname", &["-sr"])),
        ("nginx".to_owned(), command_line("nginx", &["-v"])),
        ("haproxy".to_owned(), command_line("haproxy", &["-v"])),
        ("wrk".to_owned(), command_line("wrk", &["-v"])),
        ("oha".to_owned(), command_line("oha", &["--version"])),
        ("nats-server".to_owned(), command_line("nats-server", &["--version"])),
        ("rustc".to_owned(), command_line("rustc", &["--version"])),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{LatencyRun, SaturationRun};

    fn peers() -> Peers {
        let mut peers = Peers { rounds: 1, saturation_seconds: 8, latency_seconds: 8, connections: 32, placement: "p".to_owned(), ..Peers::default() };
        for (target, rps, cpu, p99) in [("direct", 80000.0, None, 1.0), ("nginx", 30000.0, Some(20.0), 2.0), ("haproxy", 25000.0, Some(25.0), 2.5), ("router-1t", 40000.0, Some(15.0), 1.5), ("router-2t", 60000.0, Some(16.0), 1.2)] {
            for logging in Logging::ALL {
                peers.saturation.push(SaturationRun { target: target.to_owned(), logging, round: 0, requests_per_second: rps, cpu_us_per_request: cpu, system_us_per_request: cpu.map(|c| c * 0.6), rss_bytes: Some(1 << 20) });
                peers.latency.push(LatencyRun { target: target.to_owned(), logging, round: 0, rate: 15000.0, achieved_rate: 15000.0, p50_ms: 0.5, p99_ms: p99, p999_ms: 3.0 });
            }
        }
        peers
    }

    #[test]
    fn targets_are_judged_against_peers_of_the_same_run() {
        let inputs = Inputs { peers: Some(peers()), plot: "x.svg".to_owned(), ..Inputs::default() };
        let md = render(&inputs);
        assert!(md.contains("| router CPU/request vs nginx (log + metrics on) | ≤ 0.80× | 0.75× | **met** |"), "{md}");
        assert!(md.contains("| router CPU/request vs haproxy (log + metrics on) | ≤ 0.80× | 0.60× | **met** |"));
        assert!(md.contains("| router throughput, 1 thread, vs nginx (log + metrics on) | ≥ 1.20× | 1.33× | **met** |"));
        assert!(md.contains("| router 2 threads vs its 1 thread (log + metrics on) | ≥ 1.70× | 1.50× | **missed** |"));
        assert!(md.contains("| router-1t | 40,000 | 1.33× | 1.60× | 0.50× |"));
        assert!(md.contains("| nginx | 20.0 | 12.0 (60%) | 8.0 | 1.00× | 0.80× | 1.0 |"), "{md}");
        assert!(md.contains("route lookup at 1M routes, slowest kind (median) | ≤ 150 ns | – | not measured |"));
        assert!(md.contains("![throughput and p99 per proxy](x.svg)"));
    }

    #[test]
    fn instruction_counts_are_set_beside_nginx_and_haproxy() {
        let count = |target: &str, logging, request, instructions| results::InstructionCount { target: target.to_owned(), logging, request, requests: 10_000, instructions };
        let instructions = Instructions {
            warmup: 2000,
            connections: 32,
            counts: vec![
                count("nginx", Logging::On, RequestKind::Get, 300_000_000),
                count("haproxy", Logging::On, RequestKind::Get, 500_000_000),
                count("router-1t", Logging::On, RequestKind::Get, 400_000_000),
                count("nginx", Logging::Off, RequestKind::Get, 250_000_000),
            ],
        };
        let md = render(&Inputs { instructions: Some(instructions.clone()), ..Inputs::default() });
        assert!(md.contains("`GET /`, answered with the backend's short body:\n\n| proxy |"), "{md}");
        assert!(md.contains("| router-1t | 40,000 | 1.33× | 0.80× | – | – | – | 10,000 |"), "{md}");
        assert!(md.contains("| nginx | 30,000 | 1.00× | 0.60× | 25,000 | 1.00× | – | 10,000 |"), "{md}");
        assert!(!md.contains("`POST /`"), "no POST table without POST counts: {md}");
        // POSTs get a table of their own, set against the other proxies' POSTs only.
        let mut with_posts = instructions;
        with_posts.counts.push(count("nginx", Logging::On, RequestKind::Post, 350_000_000));
        with_posts.counts.push(count("router-1t", Logging::On, RequestKind::Post, 420_000_000));
        let md = render(&Inputs { instructions: Some(with_posts), ..Inputs::default() });
        let (gets, posts) = md.split_once("`POST /` with a 100-byte body, which the backend echoes:").expect("a POST table");
        assert!(gets.contains("| router-1t | 40,000 | 1.33× | 0.80× |"), "{md}");
        assert!(posts.contains("| router-1t | 42,000 | 1.20× | – | – | – | – | 10,000 |"), "{md}");
        assert!(posts.contains("| haproxy | – | – | – | – | – | – | – |"), "{md}");
        assert!(render(&Inputs::default()).contains("### Instructions per request (callgrind)\n\nNot run."));
    }

    #[test]
    fn scale_figures_and_losses_are_reported() {
        let inputs = Inputs {
            lookups: vec![Lookup { routes: 1_000_000, shape: Shape::Exact, median_ns: 90.0 }, Lookup { routes: 1_000_000, shape: Shape::Wildcard, median_ns: 180.0 }],
            memory: Some(RouteMemory { routes: 1_000_000, minimal_bytes_per_route: 250.0, typical_bytes_per_route: 400.0, served_bytes_per_route: 290.0, build_seconds: 2.0 }),
            ingest: Some(Ingest {
                registrations: 100_000,
                routable: 90_000,
                publish_seconds: 0.3,
                routable_after_last_publish_seconds: 0.4,
                registrations_per_second: 80_000.0,
                latency: results::IngestLatency { rate: 1000.0, samples: 5000, p50_ms: 0.5, p99_ms: 3.0, max_ms: 8.0 },
            }),
            ..Inputs::default()
        };
        let md = render(&inputs);
        assert!(md.contains("| ≤ 150 ns | 180 ns | **missed** |"));
        assert!(md.contains("| ≤ 300 B | 290 B (250 B before any request) | **met** |"));
        assert!(md.contains("0.400 s, 90000 of 100000 routable | **missed** |"));
        assert!(md.contains("10,000 registrations were lost"));
        assert!(md.contains("| 1,000,000 | 90 | – | 180 |"));
    }

    #[test]
    fn lb_figures_are_read_from_the_scale_script() {
        let lb = "plan from empty (10000 VIPs x 10 backends): 0.774s  [120000 changes:]\n\
                  first sync from empty: 21.008372905s for 120000 changes; process start to converged: 21.601s\n\
                  single-backend change, announcement to applied (20 samples): median 170.5 ms, p90 180.2 ms, max 187.1 ms\n";
        let md = render(&Inputs { lb: Some(lb.to_owned()), ..Inputs::default() });
        assert!(md.contains("| ≤ 1 s | 21.01 s | **missed** |"), "{md}");
        assert!(md.contains("| ≤ 20 ms | 170.5 ms | **missed** |"));
        // Several runs: the median of each figure, with the runs' range.
        let runs = "# run 1 of 3\nfirst sync from empty: 0.91s for 120000 changes\nsingle-backend change, announcement to applied (20 samples): median 14.0 ms\n\
                    # run 2 of 3\nfirst sync from empty: 1.2s for 120000 changes\nsingle-backend change, announcement to applied (20 samples): median 12.5 ms\n\
                    # run 3 of 3\nfirst sync from empty: 0.8s for 120000 changes\nsingle-backend change, announcement to applied (20 samples): median 21.0 ms\n";
        let md = render(&Inputs { lb: Some(runs.to_owned()), ..Inputs::default() });
        assert!(md.contains("| ≤ 1 s | 0.91 s (3 runs: 0.80–1.20 s) | **met** |"), "{md}");
        assert!(md.contains("| ≤ 20 ms | 14.0 ms (3 runs: 12.5–21.0 ms) | **met** |"), "{md}");
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(number(1234567.4), "1,234,567");
        assert_eq!(number(123.0), "123");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(number(1.23456), "1.235");
    }
}
