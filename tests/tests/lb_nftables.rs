//! `lb` with the nftables dataplane, proven with real packets.
//!
//! Each test builds its own hosts as network namespaces: a client, an LB running the real `lb` binary, and two
//! cells serving HTTP on a NodePort. Cells have no route back to the client's subnet, so a request only gets an
//! answer when the LB masquerades it. Addresses: client net 198.18.0.0/24 (the VIPs live there too, so the
//! client finds them by ARP), cell nets 198.18.1.0/24 and 198.18.4.0/24.

// Test code: a panic is a failed test, with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;
use switchyard_tests::lb::{NATS_URL, block_on_in, config, start_nats, status};
use switchyard_tests::netns::{Netns, link};
use switchyard_tests::{Service, binary, wait_until};

const VIP: &str = "198.18.0.10";

struct Hosts {
    dir: tempfile::TempDir,
    client: Netns,
    lb: Netns,
    cells: [Netns; 2],
}

/// The LB's address on each cell's link: what cells see as the source once SNAT works.
const LB_ON_CELL: [&str; 2] = ["198.18.1.1", "198.18.4.1"];
const CELL: [&str; 2] = ["198.18.1.2", "198.18.4.2"];

fn hosts() -> Hosts {
    let client = Netns::new("client");
    let lb = Netns::new("lb");
    let cells = [Netns::new("cell1"), Netns::new("cell2")];
    link(&client, "sy0", "198.18.0.2/24", &lb, "sy0", "198.18.0.1/24");
    link(&lb, "sy1", "198.18.1.1/24", &cells[0], "sy0", "198.18.1.2/24");
    link(&lb, "sy2", "198.18.4.1/24", &cells[1], "sy0", "198.18.4.2/24");
    for cell in &cells {
        // The premise of the SNAT proof: a cell cannot reach the client's network at all.
        let route = cell.output("ip", &["route", "get", "198.18.0.2"]);
        assert!(!route.status.success(), "cell {} must have no route to the client", cell.name());
    }
    Hosts { dir: tempfile::tempdir().expect("temp dir"), client, lb, cells }
}

impl Hosts {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write a test file");
        path
    }

    /// Starts an HTTP server on cell `index` at `port`, answering with `name` and the peer address.
    fn serve(&self, index: usize, port: u16, name: &str) -> Service {
        let cell = &self.cells[index];
        let listen = format!("0.0.0.0:{port}");
        let service = cell.spawn(name, &binary("peer_echo"), &[&listen, name], &[], self.dir.path());
        let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let up = wait_until(Duration::from_secs(5), || cell.enter(move || TcpStream::connect_timeout(&target, Duration::from_millis(100)).is_ok()));
        assert!(up, "{name} did not start:\n{}", service.log());
        service
    }

    fn start_lb(&self, config: &Path) -> Service {
        switchyard_tests::lb::start(&self.lb, config, self.dir.path())
    }

    fn lb_command(&self, args: &[&str]) -> (i32, String, String) {
        switchyard_tests::lb::command(&self.lb, args)
    }

    fn ruleset(&self) -> String {
        self.lb.sh("nft list table inet switchyard; ip route show table local proto 83")
    }

    /// Who answers `count` fresh connections to `vip`: (server name, source address it saw) per answer.
    fn spread(&self, vip: &str, count: usize) -> Vec<(String, String)> {
        (0..count).map(|_| get(&self.client, vip).unwrap_or_else(|err| panic!("GET http://{vip}/ failed: {err}"))).collect()
    }

    /// The servers that answered `count` fresh connections; a failed request counts as `failed: <reason>`.
    fn served_by(&self, vip: &str, count: usize) -> std::collections::BTreeSet<String> {
        (0..count).map(|_| get(&self.client, vip).map_or_else(|err| format!("failed: {err}"), |(name, _)| name)).collect()
    }

    /// Waits until `count` consecutive requests are all answered by servers in `names`.
    fn wait_served_only_by(&self, vip: &str, names: &[&str], lb: &Service) {
        let ok = wait_until(Duration::from_secs(10), || {
            (0..8).all(|_| get(&self.client, vip).is_ok_and(|(name, _)| names.contains(&name.as_str())))
        });
        assert!(ok, "{vip} is not served only by {names:?}; last: {:?}\n{}\nlb log:\n{}", get(&self.client, vip), self.ruleset(), lb.log());
    }
}

/// One `GET /` on a fresh connection from `client` to `vip:80`: the answering server's name and the source
/// address it saw.
fn get(client: &Netns, vip: &str) -> Result<(String, String), String> {
    let target: SocketAddr = format!("{vip}:80").parse().map_err(|e| format!("{e}"))?;
    client.enter(move || get_from_here(target))
}

/// One `GET /` on a fresh connection to `target`, from the namespace the calling thread is in.
fn get_from_here(target: SocketAddr) -> Result<(String, String), String> {
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(2)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n").map_err(|e| format!("send: {e}"))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| format!("receive: {e}"))?;
    parse_answer(&answer)
}

fn parse_answer(answer: &str) -> Result<(String, String), String> {
    let body = answer.split("\r\n\r\n").nth(1).ok_or_else(|| format!("not HTTP: {answer:?}"))?;
    let mut words = body.split_whitespace();
    let name = words.next().ok_or("empty body")?.to_owned();
    let peer: SocketAddr = words.next().ok_or("no peer in body")?.parse().map_err(|e| format!("peer: {e}"))?;
    Ok((name, peer.ip().to_string()))
}

/// A keep-alive connection held open across events.
struct Held {
    reader: BufReader<TcpStream>,
}

impl Held {
    fn open(client: &Netns, vip: &str) -> Self {
        let target: SocketAddr = format!("{vip}:80").parse().unwrap();
        let stream = client.enter(move || TcpStream::connect_timeout(&target, Duration::from_secs(2)).expect("connect through the VIP"));
        stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Self { reader: BufReader::new(stream) }
    }

    fn request(&mut self) -> Result<(String, String), String> {
        self.reader.get_mut().write_all(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n").map_err(|e| format!("send: {e}"))?;
        let mut head = String::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).map_err(|e| format!("receive: {e}"))? == 0 {
                return Err("the connection was closed".to_owned());
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().map_err(|e| format!("length: {e}"))?;
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
        parse_answer(&format!("{head}{}", String::from_utf8_lossy(&body)))
    }
}

fn web_vip(backends: &[usize]) -> String {
    weighted_web_vip(&backends.iter().map(|index| (*index, 1)).collect::<Vec<_>>())
}

/// The `web` VIP with these cells at these weights.
fn weighted_web_vip(backends: &[(usize, u32)]) -> String {
    let mut text = format!("  - name: web\n    address: {VIP}\n    port: 80\n    backends:\n");
    for (index, weight) in backends {
        text.push_str(&format!("      - {{host: {}, port: 10001, weight: {weight}}}\n", CELL[*index]));
    }
    if backends.is_empty() {
        text.push_str("      []\n");
    }
    text
}

fn both() -> std::collections::BTreeSet<String> {
    ["cell1", "cell2"].map(str::to_owned).into_iter().collect()
}

fn names(answers: &[(String, String)]) -> std::collections::BTreeSet<String> {
    answers.iter().map(|(name, _)| name.clone()).collect()
}

#[test]
fn a_vip_reaches_both_cells_through_snat_and_follows_the_file() {
    let hosts = hosts();
    let _servers = [hosts.serve(0, 10001, "cell1"), hosts.serve(1, 10001, "cell2")];
    let empty = "  - {name: empty, address: 198.18.0.12, port: 80}\n";
    let path = hosts.write("lb.yaml", &config("", &format!("{}{empty}", web_vip(&[0, 1]))));
    let lb = hosts.start_lb(&path);

    // Both cells serve the VIP, and each sees the LB's own address on its link as the source.
    let answers = hosts.spread(VIP, 12);
    assert_eq!(names(&answers), both());
    for (name, source) in &answers {
        let expected = if name == "cell1" { LB_ON_CELL[0] } else { LB_ON_CELL[1] };
        assert_eq!(source, expected, "{name} saw {source}: the LB did not masquerade");
    }

    // A VIP with no backends refuses connections at once instead of letting them time out.
    let refused = hosts.client.enter(|| TcpStream::connect_timeout(&"198.18.0.12:80".parse().unwrap(), Duration::from_secs(2)).map(drop));
    assert_eq!(refused.map_err(|e| e.kind()), Err(std::io::ErrorKind::ConnectionRefused));

    // A bad reload (two VIPs on one address:port) is refused, names the key and changes nothing.
    let before = hosts.ruleset();
    let clash = "  - {name: clash, address: 198.18.0.10, port: 80}\n";
    hosts.write("lb.yaml", &config("", &format!("{}{clash}", web_vip(&[0, 1]))));
    lb.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(wait_until(Duration::from_secs(5), || lb.log().contains("reload failed")), "{}", lb.log());
    assert!(lb.log().contains("vips[1]"), "the reload error should name the key:\n{}", lb.log());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(hosts.ruleset(), before);
    assert_eq!(names(&hosts.spread(VIP, 6)).len(), 2);

    // Someone deletes lb's table by hand: the periodic repair (sync_interval: 2s) puts it back.
    hosts.lb.sh("nft delete table inet switchyard");
    assert!(wait_until(Duration::from_secs(10), || hosts.ruleset() == before), "the ruleset was not repaired:\n{}\n{}", hosts.ruleset(), lb.log());
    assert_eq!(names(&hosts.spread(VIP, 6)).len(), 2);

    // Removing cell2 from the file takes it out of rotation on SIGHUP.
    hosts.write("lb.yaml", &config("", &web_vip(&[0])));
    lb.signal(nix::sys::signal::Signal::SIGHUP);
    hosts.wait_served_only_by(VIP, &["cell1"], &lb);
    let vips = status(&hosts.lb, "/vips").unwrap();
    let web = &vips["vips"][0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["backends"].as_array().unwrap().len(), 1);
    assert_eq!(web["backends"][0]["source"], "file");
    // The empty VIP left the file: its service and its address (released just after the nft transaction) go.
    assert!(wait_until(Duration::from_secs(5), || !hosts.ruleset().contains("198.18.0.12")), "{}", hosts.ruleset());
    assert_netlink_only(&lb);
}

/// lb wrote and read its table over netlink throughout: `nft` had to neither replay a refused batch nor list the
/// table (either would still work, and so would hide a netlink encoding `nft` does not share).
fn assert_netlink_only(lb: &Service) {
    let log = lb.log();
    assert!(!log.contains("replaying it through nft") && !log.contains("asking nft"), "lb fell back to nft:\n{log}");
}

#[test]
fn health_checks_skip_a_dead_cell_and_a_restart_changes_nothing() {
    let hosts = hosts();
    let mut servers = vec![hosts.serve(0, 10001, "cell1"), hosts.serve(1, 10001, "cell2")];
    let path = hosts.write("lb.yaml", &config("", &weighted_web_vip(&[(0, 1), (1, 3)])));
    let mut lb = hosts.start_lb(&path);
    // Weighted round robin: of every 4 connections, cell2 takes 3. Its weight makes its slots an interval.
    let answers = hosts.spread(VIP, 8);
    assert_eq!(answers.iter().filter(|(name, _)| name == "cell2").count(), 6, "{answers:?}");
    assert!(hosts.ruleset().contains(". 1-3 : 198.18.4.2 . 10001"), "{}", hosts.ruleset());

    // Kill cell2's server: once its checks fail, it is skipped, but it stays known (weight 0, health down). cell1
    // alone has weight 1, so the VIP moves to an exact-match map.
    servers.pop();
    hosts.wait_served_only_by(VIP, &["cell1"], &lb);
    let ruleset = hosts.ruleset();
    assert!(ruleset.contains("unweighted4_tcp_") && !ruleset.contains(". 1-3 :"), "{ruleset}");
    // The interval map the VIP left served no other VIP, so the same sync deleted it.
    assert!(!ruleset.contains("backends4_tcp_"), "{ruleset}");
    let vips = status(&hosts.lb, "/vips").unwrap();
    let cell2 = vips["vips"][0]["backends"].as_array().unwrap().iter().find(|b| b["host"] == CELL[1]).cloned().unwrap();
    assert_eq!((cell2["health"].as_str(), cell2["effective_weight"].as_u64()), (Some("down"), Some(0)));
    let metrics = status(&hosts.lb, "/metrics").unwrap();
    assert!(metrics.as_str().unwrap().contains("switchyard_lb_backends{health=\"down\"} 1"), "{metrics}");

    // It comes back once it passes `rise` checks.
    servers.push(hosts.serve(1, 10001, "cell2"));
    assert!(wait_until(Duration::from_secs(10), || hosts.served_by(VIP, 6).len() == 2), "cell2 did not return\n{}", lb.log());
    let ruleset = hosts.ruleset();
    assert!(ruleset.contains(". 1-3 : 198.18.4.2 . 10001") && !ruleset.contains("unweighted4_tcp_"), "{ruleset}");

    // Restart lb with a connection open through the VIP.
    let mut held = Held::open(&hosts.client, VIP);
    let (first, _) = held.request().unwrap();
    let before = hosts.ruleset();
    lb.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(lb.wait_exit(Duration::from_secs(5)).is_some(), "lb did not stop on SIGTERM");
    let (code, stdout, stderr) = hosts.lb_command(&["plan", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("no changes: the kernel matches the intent"), "{stdout}");
    lb = hosts.start_lb(&path);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hosts.ruleset(), before, "a restart with nothing changed must not rewrite the ruleset");
    let metrics = status(&hosts.lb, "/metrics").unwrap();
    let metrics = metrics.as_str().unwrap();
    assert!(metrics.contains("switchyard_lb_syncs_total{result=\"ok\"}"), "{metrics}");
    assert!(metrics.contains("switchyard_lb_plan_size_count 0"), "the restarted lb wrote to the kernel:\n{metrics}\n{}", lb.log());
    assert_eq!(held.request().map(|(name, _)| name), Ok(first), "the held connection must survive the restart");

    // `lb cleanup` removes everything lb owns.
    drop(lb);
    let (code, stdout, stderr) = hosts.lb_command(&["cleanup", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("delete service tcp/198.18.0.10:80"), "{stdout}");
    assert_eq!(hosts.lb.sh("nft list tables; ip route show table local proto 83"), "");
}

/// Publishes `(subject, payload)` pairs on the NATS server inside the LB namespace.
fn publish(lb: &Netns, messages: Vec<(String, String)>) {
    block_on_in(lb, || async move {
        let client = async_nats::connect(NATS_URL).await.expect("connect to NATS in the LB namespace");
        for (subject, payload) in messages {
            client.publish(subject, payload.into()).await.unwrap();
        }
        client.flush().await.unwrap();
    });
}

/// Writes a raw value into the VIP bucket, bypassing `lb vip put`'s checks, as a careless tool might.
fn kv_put_raw(lb: &Netns, key: &'static str, value: &'static str) {
    block_on_in(lb, move || async move {
        let client = async_nats::connect(NATS_URL).await.unwrap();
        let store = async_nats::jetstream::new(client).get_key_value("lb_vips").await.unwrap();
        store.put(key, value.into()).await.unwrap();
    });
}

fn announcement(cell: usize, port: u16, vip: &str, stale: u64) -> String {
    format!(r#"{{"vip":"{vip}","host":"{}","port":{port},"weight":1,"stale_threshold_in_seconds":{stale}}}"#, CELL[cell])
}

#[test]
fn announcements_and_published_vips_go_live_without_a_restart() {
    let hosts = hosts();
    let _servers = [hosts.serve(0, 10001, "cell1"), hosts.serve(1, 10001, "cell2"), hosts.serve(0, 10002, "cell1-api"), hosts.serve(1, 10002, "cell2-api")];
    let store = hosts.path("jetstream");
    let nats = start_nats(&hosts.lb, &["-js", "-sd", store.to_str().unwrap()], hosts.dir.path());

    let web = format!("  - {{name: web, address: {VIP}, port: 80}}\n");
    let path = hosts.write("lb.yaml", &config(&format!("nats: {{servers: ['{NATS_URL}']}}\nbackend_stale_threshold: 30s"), &web));
    let lb = hosts.start_lb(&path);
    let lb_pid = lb.pid();

    // Cells announce their NodePort: both serve the VIP.
    // Like real cells, they repeat their announcements until lb (which subscribes once NATS is up) hears them.
    let both_cells = || vec![("lb.register".into(), announcement(0, 10001, "web", 0)), ("lb.register.web".into(), announcement(1, 10001, "web", 0))];
    assert!(wait_until(Duration::from_secs(10), || {
        publish(&hosts.lb, both_cells());
        hosts.served_by(VIP, 6) == both()
    }), "announced cells are not both served\n{}", lb.log());
    let vips = status(&hosts.lb, "/vips").unwrap();
    assert!(vips["vips"][0]["backends"].as_array().unwrap().iter().all(|b| b["source"] == "nats"), "{vips}");

    // An unregister takes cell2 out of rotation.
    publish(&hosts.lb, vec![("lb.unregister".into(), announcement(1, 10001, "web", 0))]);
    hosts.wait_served_only_by(VIP, &["cell1"], &lb);

    // A burst from one cell, sent back to back, is applied in the order it was sent: NodePorts announced and then
    // withdrawn end up gone, and cell2, withdrawn again and then announced again, ends up back in rotation.
    let mut burst = Vec::new();
    for port in 20000..20200 {
        burst.push(("lb.register.web".into(), announcement(0, port, "web", 0)));
        burst.push(("lb.unregister.web".into(), announcement(0, port, "web", 0)));
    }
    burst.push(("lb.unregister.web".into(), announcement(1, 10001, "web", 0)));
    burst.push(("lb.register.web".into(), announcement(1, 10001, "web", 0)));
    publish(&hosts.lb, burst);
    let expected = [(CELL[0], 10001), (CELL[1], 10001)];
    let web_backends = || -> Vec<(String, u64)> {
        let vips = status(&hosts.lb, "/vips").unwrap_or_default();
        let backends = vips["vips"].as_array().and_then(|all| all.iter().find(|v| v["name"] == "web")).map(|web| web["backends"].clone());
        let mut listed: Vec<(String, u64)> = backends.and_then(|b| b.as_array().cloned()).unwrap_or_default().iter().map(|b| (b["host"].as_str().unwrap_or_default().to_owned(), b["port"].as_u64().unwrap_or_default())).collect();
        listed.sort();
        listed
    };
    let in_order = wait_until(Duration::from_secs(5), || web_backends() == expected.map(|(host, port)| (host.to_owned(), port)));
    assert!(in_order, "after the burst web's backends are {:?}, not {expected:?}\n{}", web_backends(), lb.log());
    assert!(wait_until(Duration::from_secs(5), || hosts.served_by(VIP, 6) == both()), "{}", lb.log());

    // An announcement nobody refreshes is pruned after its threshold.
    publish(&hosts.lb, vec![("lb.register".into(), announcement(1, 10001, "web", 1))]);
    assert!(wait_until(Duration::from_secs(5), || hosts.served_by(VIP, 6) == both()), "{}", lb.log());
    hosts.wait_served_only_by(VIP, &["cell1"], &lb);

    // Cells announce the api NodePorts first, then an operator publishes the api VIP: it starts working.
    publish(&hosts.lb, vec![("lb.register.api".into(), announcement(0, 10002, "api", 0)), ("lb.register.api".into(), announcement(1, 10002, "api", 0))]);
    let api = hosts.write("api.yaml", "name: api\naddress: 198.18.0.11\nport: 80\nscheduler: wrr\n");
    let (code, stdout, stderr) = hosts.lb_command(&["vip", "put", api.to_str().unwrap(), "--nats", NATS_URL]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("published VIP `api` (tcp/198.18.0.11:80)"), "{stdout}");
    let api_ok = wait_until(Duration::from_secs(10), || hosts.served_by("198.18.0.11", 6) == ["cell1-api", "cell2-api"].map(str::to_owned).into_iter().collect());
    assert!(api_ok, "the published VIP did not go live\n{}\n{}", hosts.ruleset(), lb.log());
    assert_eq!(lb.pid(), lb_pid);
    let (code, stdout, _) = hosts.lb_command(&["vip", "ls", "--nats", NATS_URL]);
    assert_eq!(code, 0);
    assert!(stdout.contains("api") && stdout.contains("tcp/198.18.0.11:80") && stdout.contains("wrr"), "{stdout}");

    // Bad VIPs are refused with a clear error and change nothing.
    let before = hosts.ruleset();
    let cases = [
        ("port0.yaml", "name: bad\naddress: 198.18.0.13\nport: 0\n", "`port`"),
        ("address.yaml", "name: bad\naddress: 198.18.0.300\nport: 80\n", "`address`"),
        ("scheduler.yaml", "name: bad\naddress: 198.18.0.13\nport: 80\nscheduler: fastest\n", "`scheduler`"),
        ("duplicate.yaml", "name: other\naddress: 198.18.0.11\nport: 80\n", "already uses tcp/198.18.0.11:80"),
    ];
    for (file, text, expected) in cases {
        let bad = hosts.write(file, text);
        let (code, stdout, stderr) = hosts.lb_command(&["vip", "put", bad.to_str().unwrap(), "--nats", NATS_URL]);
        assert_eq!(code, 2, "{file}: {stdout}{stderr}");
        assert!(stderr.contains(expected), "{file}: {stderr}");
    }
    // A broken value written straight into the bucket is refused by lb, and the last good api VIP stays.
    kv_put_raw(&hosts.lb, "api", r#"{"name":"api","address":"198.18.0.11","port":0}"#);
    assert!(wait_until(Duration::from_secs(5), || status(&hosts.lb, "/vips").is_some_and(|v| v["rejected"].as_array().is_some_and(|r| !r.is_empty()))));
    let vips = status(&hosts.lb, "/vips").unwrap();
    assert_eq!(vips["rejected"][0]["vip"], "api");
    assert_eq!(vips["rejected"][0]["source"], "kv");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(hosts.ruleset(), before);
    assert_eq!(names(&hosts.spread("198.18.0.11", 4)).len(), 2);
    assert_eq!(names(&hosts.spread(VIP, 4)), ["cell1".to_owned()].into_iter().collect());

    // A restart keeps announced backends (adopted from the kernel until cells re-announce) and KV VIPs: nothing
    // is rewritten, and a plan against the restarted state is empty.
    let before = hosts.ruleset();
    drop(lb);
    let (code, stdout, stderr) = hosts.lb_command(&["plan", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("no changes: the kernel matches the intent"), "{stdout}");
    let lb = hosts.start_lb(&path);
    assert!(wait_until(Duration::from_secs(5), || status(&hosts.lb, "/vips").is_some_and(|v| v["vips"].as_array().is_some_and(|vips| vips.len() == 2))));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(hosts.ruleset(), before, "{}", lb.log());
    let vips = status(&hosts.lb, "/vips").unwrap();
    assert!(vips["vips"][1]["backends"].as_array().unwrap().iter().all(|b| b["source"] == "kernel"), "{vips}");

    // Removing the VIP from the bucket takes it down.
    let (code, stdout, stderr) = hosts.lb_command(&["vip", "rm", "api", "--nats", NATS_URL]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("removed VIP `api`"), "{stdout}");
    assert!(wait_until(Duration::from_secs(5), || !hosts.ruleset().contains("198.18.0.11")), "{}", hosts.ruleset());
    assert_netlink_only(&lb);
    drop(lb);
    drop(nats);
}

#[test]
fn a_bad_config_is_refused_before_the_kernel_is_touched() {
    let lb = Netns::new("lb");
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("vips: [{name: a, address: 198.18.0.300, port: 80}]", "vips[0].address"),
        ("vips: [{name: a, address: 198.18.0.10, port: 0}]", "vips[0].port"),
        ("vips: [{name: a, address: 198.18.0.10, port: 80, scheduler: fastest}]", "vips[0].scheduler"),
        ("vips: [{name: a, address: 198.18.0.10, port: 80}, {name: b, address: 198.18.0.10, port: 80}]", "vips[1]"),
    ];
    for (text, key) in cases {
        let path = dir.path().join("lb.yaml");
        std::fs::write(&path, format!("dataplane: nftables\n{text}\n")).unwrap();
        // `lb --config FILE` is `lb run --config FILE`.
        for command in [&["run"][..], &["plan"], &[]] {
            let args: Vec<&str> = command.iter().copied().chain(["--config", path.to_str().unwrap()]).collect();
            let output = lb.output(binary("lb").to_str().unwrap(), &args);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{args:?} {text}: {stderr}");
            assert!(stderr.contains(&format!("config key `{key}`")), "{args:?} {text}: {stderr}");
        }
    }
    assert_eq!(lb.sh("nft list tables; ip route show table local proto 83"), "");
}

#[test]
fn traffic_through_a_vip_survives_lb_restarts_without_a_failed_connection() {
    let hosts = hosts();
    let _servers = [hosts.serve(0, 10001, "cell1"), hosts.serve(1, 10001, "cell2")];
    let path = hosts.write("lb.yaml", &config("", &web_vip(&[0, 1])));
    let mut lb = hosts.start_lb(&path);
    assert_eq!(names(&hosts.spread(VIP, 6)), both());

    // A client opens a fresh connection through the VIP every 10 ms, and holds one keep-alive connection,
    // while lb is restarted three times (SIGTERM, and once SIGKILL, as a crash would).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client_stop = std::sync::Arc::clone(&stop);
    let target: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let traffic = std::thread::scope(|scope| {
        let traffic = scope.spawn(|| {
            hosts.client.enter(move || {
                let (mut ok, mut failures) = (0u32, Vec::new());
                while !client_stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match get_from_here(target) {
                        Ok(_) => ok += 1,
                        Err(err) => failures.push(err),
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                (ok, failures)
            })
        });
        let mut held = Held::open(&hosts.client, VIP);
        let (first, _) = held.request().unwrap();
        for kill in [false, true, false] {
            std::thread::sleep(Duration::from_millis(700));
            if kill {
                lb.kill();
            } else {
                lb.signal(nix::sys::signal::Signal::SIGTERM);
                assert!(lb.wait_exit(Duration::from_secs(5)).is_some(), "lb did not stop on SIGTERM");
            }
            // The kernel keeps forwarding while no lb runs at all.
            std::thread::sleep(Duration::from_millis(300));
            lb = hosts.start_lb(&path);
        }
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(held.request().map(|(name, _)| name), Ok(first), "the held connection must survive every restart");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        traffic.join().unwrap()
    });
    let (ok, failures) = traffic;
    println!("through three lb restarts: {ok} connections answered, {} failed", failures.len());
    assert!(ok > 100, "too little traffic to judge: {ok}");
    assert!(failures.is_empty(), "connections failed while lb restarted: {failures:?}\n{}", lb.log());
}
