//! The `ipvs` dataplane against a real kernel: a Debian kernel booted under QEMU runs the real `lb` binary with
//! `dataplane: ipvs` (tests/vm/lb-ipvs-scenario.sh), and this test asserts on what the guest reports: the IPVS
//! table as `ipvsadm -Sn` prints it, real TCP through an IPv4 and an IPv6 VIP with SNAT, a weight change and a
//! graceful removal,
//! a restart that changes nothing, a foreign service left alone, and 1,000 VIPs x 10 backends from empty.
//!
//! The host kernel has no IPVS, so this is the only place the IPVS client meets the kernel it was written for.

// The report helpers fail the test by panicking with the guest's console attached.
#![allow(clippy::panic)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use switchyard_tests::binary;
use switchyard_tests::vm::{self, Console, GuestSpec};

const VIP: &str = "198.18.100.10:80";
const VIP6_TABLE: [&str; 3] = [
    "-A -t [2001:db8:100::10]:80 -s rr",
    "-a -t [2001:db8:100::10]:80 -r [2001:db8:1::2]:10001 -m -w 1",
    "-a -t [2001:db8:100::10]:80 -r [2001:db8:2::2]:10001 -m -w 1",
];
const FOREIGN: [&str; 2] = ["-A -t 198.18.200.1:8080 -s wlc", "-a -t 198.18.200.1:8080 -r 198.18.1.2:9 -m -w 5"];
const SCALE_VIPS: usize = 1_000;
const SCALE_BACKENDS: usize = 10;
/// The budget CI gives this test, boot and build included.
const BUDGET: Duration = Duration::from_secs(180);

/// 1,000 VIPs with 10 backends each; `first_weight` is the weight of the very first backend. The dataplane is
/// `auto`, which must find IPVS in this kernel.
fn scale_config(first_weight: u32) -> String {
    let mut text = String::from(
        "status: {address: \"127.0.0.1:8091\", user: admin, pass: secret}\n\
         dataplane: auto\nvip_interface: sy-vip0\nsnat: true\nsync_interval: 120s\nhealth_check: {type: none}\nvips:\n",
    );
    for vip in 0..SCALE_VIPS {
        let (third, fourth) = (vip / 250, vip % 250 + 1);
        let _ = writeln!(text, "  - {{name: v{vip}, address: 198.19.{third}.{fourth}, port: 80, scheduler: wrr, backends: [");
        for backend in 0..SCALE_BACKENDS {
            let weight = if vip == 0 && backend == 0 { first_weight } else { 1 };
            let _ = writeln!(text, "      {{host: 198.18.50.{}, port: 10001, weight: {weight}}},", backend + 1);
        }
        text.push_str("    ]}\n");
    }
    text
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
    path
}

fn sorted(lines: &[&str]) -> Vec<String> {
    let mut lines: Vec<String> = lines.iter().map(|line| (*line).to_owned()).collect();
    lines.sort();
    lines
}

/// `ipvsadm -Sn`, sorted: the IPv4 VIP with both cells at these weights, the IPv6 VIP, the foreign service.
fn table(cell1: u32, cell2: u32) -> Vec<String> {
    let mut lines = vec![
        format!("-A -t {VIP} -s wrr"),
        format!("-a -t {VIP} -r 198.18.1.2:10001 -m -w {cell1}"),
        format!("-a -t {VIP} -r 198.18.2.2:10001 -m -w {cell2}"),
    ];
    lines.extend(VIP6_TABLE.map(String::from));
    lines.extend(FOREIGN.map(String::from));
    lines.sort();
    lines
}

struct Report<'a> {
    console: &'a Console,
}

impl Report<'_> {
    fn fail(&self, what: &str) -> ! {
        panic!("{what}\n----- guest console -----\n{}\n-------------------------", self.console.text())
    }

    fn section(&self, name: &str) -> Vec<String> {
        let mut lines = self.console.section(name).unwrap_or_else(|| self.fail(&format!("the guest printed no `{name}` section")));
        lines.retain(|line| !line.trim().is_empty());
        lines
    }

    fn rules(&self, name: &str) -> Vec<String> {
        let mut lines = self.section(name);
        lines.sort();
        lines
    }

    fn result(&self, key: &str) -> String {
        self.console.result(key).unwrap_or_else(|| self.fail(&format!("the guest reported no `{key}`")))
    }

    fn number(&self, key: &str) -> f64 {
        let value = self.result(key);
        value.parse().unwrap_or_else(|_| self.fail(&format!("`{key}` is not a number: {value:?}")))
    }

    fn count(&self, key: &str) -> usize {
        let value = self.result(key);
        value.parse().unwrap_or_else(|_| self.fail(&format!("`{key}` is not a count: {value:?}")))
    }

    fn check(&self, condition: bool, what: &str) {
        if !condition {
            self.fail(what);
        }
    }
}

/// The cell that answered, after checking that it saw the LB's address on its link (SNAT) as the source.
fn answering_cell(report: &Report<'_>, line: &str) -> String {
    let mut words = line.split_whitespace();
    let (Some(cell), Some(source)) = (words.next(), words.next()) else { report.fail(&format!("unexpected answer {line:?}")) };
    let expected_source = match (cell, source.contains(':')) {
        ("cell1", false) => "198.18.1.1",
        ("cell2", false) => "198.18.2.1",
        ("cell1", true) => "2001:db8:1::1",
        ("cell2", true) => "2001:db8:2::1",
        _ => report.fail(&format!("unexpected answer {line:?}")),
    };
    report.check(source == expected_source, &format!("{cell} saw source {source}, not the LB's {expected_source}: no SNAT"));
    cell.to_owned()
}

#[test]
fn ipvs_dataplane_on_a_real_kernel() {
    let started = Instant::now();
    let lb = binary("lb");
    let lb_shown = lb.display().to_string();
    let work = vm::target_dir().join("vm").join("lb-ipvs-inputs");
    std::fs::create_dir_all(&work).expect("create the guest input directory");
    let scale = write(&work, "lb-scale.yaml", &scale_config(1));
    let reweighted = write(&work, "lb-scale-reweighted.yaml", &scale_config(7));
    let mut files = vec![(scale, "/etc/lb-scale.yaml".to_owned()), (reweighted, "/etc/lb-scale-reweighted.yaml".to_owned())];
    // Benchmark runs also time `ipvsadm -R` of the same table, the peer; the test itself does not need it.
    let bench = std::env::var_os("SWITCHYARD_IPVS_BENCH").is_some();
    if bench {
        files.push((write(&work, "lb-bench", "1\n"), "/etc/lb-bench".to_owned()));
    }
    let spec = GuestSpec {
        name: "lb-ipvs".to_owned(),
        scenario: Path::new(env!("CARGO_MANIFEST_DIR")).join("vm/lb-ipvs-scenario.sh"),
        programs: vec![lb],
        files,
    };
    let image = vm::build(&spec);
    let console = vm::boot(&image, BUDGET.saturating_sub(started.elapsed()).saturating_sub(Duration::from_secs(5)));
    let report = Report { console: &console };

    report.check(console.exit == Some(0), "the guest scenario did not run to its end");
    let problems: Vec<&String> = console.lines.iter().filter(|line| line.starts_with("PROBLEM")).collect();
    report.check(problems.is_empty(), &format!("the scenario hit problems: {problems:?}"));

    // The table is exactly what the config asks for, next to the foreign service.
    report.check(report.rules("after-start") == table(1, 1), "after start, the IPVS table is not what the config says");
    for (key, value) in [("sysctl_conntrack", "1"), ("sysctl_expire_nodest_conn", "1"), ("sysctl_expire_quiescent_template", "1")] {
        report.check(report.result(key) == value, &format!("{key} is not {value}"));
    }
    let masquerade = report.section("masquerade").join("\n");
    report.check(masquerade.contains("ct original ip daddr @ipvs_vips4 masquerade"), "no masquerade on the original destination");
    report.check(masquerade.contains("198.18.100.10"), "the VIP address is not in the masquerade set");
    report.check(masquerade.contains("2001:db8:100::10"), "the IPv6 VIP address is not in the masquerade set");

    // Real TCP through the VIP to both cells, each seeing the LB as the source.
    let traffic = report.section("traffic");
    report.check(traffic.len() == 6, "not every request through the VIP was answered");
    let cells: BTreeSet<String> = traffic.iter().map(|line| answering_cell(&report, line)).collect();
    report.check(cells.len() == 2, "the VIP did not spread connections over both cells");
    let traffic6 = report.section("traffic6");
    report.check(traffic6.len() == 4, "not every request through the IPv6 VIP was answered");
    let cells6: BTreeSet<String> = traffic6.iter().map(|line| answering_cell(&report, line)).collect();
    report.check(cells6.len() == 2, "the IPv6 VIP did not spread connections over both cells");
    report.check(report.number("metric_service_connections") >= 6.0, "lb's metrics miss the connections IPVS scheduled");
    report.check(report.number("metric_backend_bytes_out_cell1") > 0.0, "lb's metrics miss IPVS byte counters");
    let vips = report.section("vips").join("\n");
    let vips: serde_json::Value = serde_json::from_str(&vips).unwrap_or_else(|err| report.fail(&format!("/vips is not JSON: {err}")));
    let backends = &vips["vips"][0]["backends"];
    report.check(
        backends.as_array().is_some_and(|list| list.iter().any(|b| b["ipvs"]["stats"]["connections"].as_u64().is_some_and(|n| n > 0))),
        &format!("/vips shows no IPVS counters per backend: {backends}"),
    );

    // One backend's new weight is one netlink request.
    report.check(report.result("reweight_writes") == "1", "a one-backend weight change did not cost exactly one netlink request");
    report.check(report.rules("after-reweight") == table(3, 1), "the weight change did not land as planned");

    // Removing a backend with a live connection drains it, keeps the connection working, then deletes it.
    let held = report.result("held_backend");
    let other = report.result("remaining_backend");
    let held_rule = format!("-a -t {VIP} -r {held} -m -w 0");
    report.check(report.rules("during-drain").contains(&held_rule), "the removed backend was not kept at weight 0 while busy");
    let during = report.section("traffic-during-drain");
    report.check(during.len() == 4, "requests during the drain failed");
    let held_cell = if held.starts_with("198.18.1.") { "cell1" } else { "cell2" };
    for line in &during {
        report.check(answering_cell(&report, line) != held_cell, "a new connection went to the draining backend");
    }
    report.check(answering_cell(&report, &report.result("held_answer")) == held_cell, "the held connection was not served by its backend");
    let after_drain = report.rules("after-drain");
    report.check(!after_drain.iter().any(|line| line.contains(&held)), "the drained backend is still there");
    report.check(after_drain.iter().any(|line| line.contains(&other)), "the remaining backend is gone");

    // A restart changes nothing and flushes nothing.
    report.check(report.rules("before-restart") == report.rules("after-restart"), "the restart changed the IPVS table");
    report.check(report.result("restart_writes") == "0", "lb wrote to IPVS after a restart with nothing to change");
    report.check(report.result("lb_exit") == "0", "lb did not exit cleanly on SIGTERM");
    report.check(
        report.number("conns_after_restart") >= report.number("conns_before_restart") && report.number("conns_before_restart") >= 6.0,
        "IPVS counters went back: the service was recreated",
    );
    let after_restart = report.section("traffic-after-restart");
    report.check(after_restart.len() == 2, "traffic failed after the restart");
    for line in &after_restart {
        answering_cell(&report, line);
    }

    // Cleanup leaves exactly the foreign service.
    report.check(report.rules("after-cleanup") == sorted(&FOREIGN), "lb cleanup touched a service it does not own, or left its own");

    // Scale: from empty in one apply of one request per object; then one change at scale is one request.
    report.check(report.count("scale_services") == SCALE_VIPS, "not every VIP was programmed at scale");
    report.check(report.count("scale_destinations") == SCALE_VIPS * SCALE_BACKENDS, "not every backend was programmed at scale");
    report.check(report.result("scale_dataplane") == "ipvs", "`dataplane: auto` did not pick IPVS on a kernel that has it");
    let objects = SCALE_VIPS * (1 + SCALE_BACKENDS);
    report.check(report.count("scale_first_sync_steps") == objects, "the first sync at scale did not plan one step per object");
    report.check(report.count("scale_first_sync_writes") == objects, "the first sync at scale did not send one request per object");
    report.check(report.count("scale_reweight_steps") == 1, "a one-backend change at scale was not a one-step plan");
    report.check(report.count("scale_reweight_writes") == 1, "a one-backend change at scale was not one netlink request");
    eprintln!(
        "IPVS scale (QEMU TCG guest, {lb_shown}): {SCALE_VIPS} VIPs x {SCALE_BACKENDS} backends from empty: {objects} \
         netlink requests applied in {}s, {}s from process start to applied; one-backend change: {} request; guest \
         ran {:.1}s",
        report.result("scale_apply_seconds"),
        report.result("scale_wall_seconds"),
        report.result("scale_reweight_writes"),
        console.elapsed.as_secs_f64(),
    );
    if bench {
        report.check(report.count("peer_objects") == objects, "ipvsadm -R did not restore the same table");
        eprintln!("peer in the same guest: `ipvsadm -R` of the same {objects} objects took {}s", report.result("peer_ipvsadm_restore_seconds"));
    }
    report.check(started.elapsed() < BUDGET, "the VM test took longer than its 3-minute budget");
}
