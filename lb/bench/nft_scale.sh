#!/usr/bin/env bash
# Measures the nftables dataplane at scale, inside a network namespace of its own (needs root, nft, ip,
# nats-server, python3). Not a test: it prints timings to compare runs on the same machine.
#
#   lb/bench/nft_scale.sh [LB_BINARY] [VIPS] [BACKENDS_PER_VIP] [LATENCY_SAMPLES]
#
# 1. `lb plan` against an empty kernel: parse the config, read the kernel, plan VIPS x BACKENDS.
# 2. `lb run` from empty: the first sync's duration (the plan, then the nftables transaction alongside ip -batch;
#    each part reported).
# 3. `lb plan` against the converged kernel: the cost of a no-change sync (read everything, plan nothing).
# 4. Single-backend change latency: publish one lb.register on NATS, time until lb logs "kernel updated".
set -euo pipefail
LB=${1:-target/release/lb}
VIPS=${2:-10000}
BACKENDS=${3:-10}
SAMPLES=${4:-20}
NS="sy-bench-$$"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
in_ns() { ip netns exec "$NS" "$@"; }

python3 - "$VIPS" "$BACKENDS" > "$WORK/lb.yaml" <<'PY'
import sys
vips, backends = int(sys.argv[1]), int(sys.argv[2])
print("status: {address: 127.0.0.1:8090}")
print("dataplane: nftables")
print("nats: {servers: ['nats://127.0.0.1:4222']}")
print("health_check: {type: none}")
print("sync_interval: 1h")
print("vips:")
for i in range(vips):
    print(f"  - name: v{i}")
    print(f"    address: 198.18.{16 + i // 250}.{1 + i % 250}")
    print(f"    port: 80")
    print(f"    backends:")
    for b in range(backends):
        print(f"      - {{host: 198.19.{b}.{1 + i % 250}, port: {10000 + i // 250}}}")
PY

ip netns exec "$NS" nats-server -a 127.0.0.1 -p 4222 -js -sd "$WORK/js" > "$WORK/nats.log" 2>&1 &
PIDS+=($!)
sleep 0.5

seconds() { python3 -c 'import time; print(time.time())'; }
elapsed() { python3 -c "print(f'{$2 - $1:.3f}')"; }

t0=$(seconds); in_ns "$LB" plan --config "$WORK/lb.yaml" > "$WORK/plan1"; t1=$(seconds)
echo "plan from empty ($VIPS VIPs x $BACKENDS backends): $(elapsed "$t0" "$t1")s  [$(sed -n 2p "$WORK/plan1")]"

SWITCHYARD_LOG_FORMAT=json ip netns exec "$NS" "$LB" run --config "$WORK/lb.yaml" > "$WORK/lb.log" 2>&1 &
PIDS+=($!)
t0=$(seconds)
until grep -q '"kernel updated"' "$WORK/lb.log"; do sleep 0.05; done
t1=$(seconds)
first=$(grep '"kernel updated"' "$WORK/lb.log" | head -1 | python3 -c 'import json,sys; f=json.loads(sys.stdin.readline())["fields"]; print(f["changes"], f["seconds"], f["plan_seconds"], f["dataplane_seconds"], f["addresses_seconds"])')
read -r changes total planned dataplane addresses <<< "$first"
echo "first sync from empty: ${total}s for $changes changes (plan ${planned}s, then nftables ${dataplane}s alongside ip -batch ${addresses}s); process start to converged: $(elapsed "$t0" "$t1")s"
echo "ruleset: $(in_ns nft list table inet switchyard | wc -l) lines, $(in_ns ip route show table local proto 83 | wc -l) VIP routes"

t0=$(seconds); in_ns "$LB" plan --config "$WORK/lb.yaml" > "$WORK/plan2"; t1=$(seconds)
echo "plan against the converged kernel: $(elapsed "$t0" "$t1")s  [$(tail -1 "$WORK/plan2")]"

in_ns python3 - "$WORK/lb.log" "$SAMPLES" <<'PY'
import json, socket, statistics, sys, time, datetime
log, samples = sys.argv[1], int(sys.argv[2])
nats = socket.create_connection(("127.0.0.1", 4222))
nats.recv(4096)
nats.sendall(b'CONNECT {"verbose":false}\r\n')
def updates():
    with open(log) as f:
        return [json.loads(l) for l in f if '"kernel updated"' in l]
latencies, syncs, transactions = [], [], []
for n in range(samples):
    seen = len(updates())
    payload = json.dumps({"vip": "v0", "host": f"198.19.200.{n + 1}", "port": 10000}).encode()
    start = time.time()
    nats.sendall(b"PUB lb.register %d\r\n%s\r\nPING\r\n" % (len(payload), payload))
    while len(updates()) == seen:
        time.sleep(0.001)
    record = updates()[seen]
    applied = datetime.datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
    latencies.append((applied - start) * 1000)
    syncs.append(record["fields"]["seconds"] * 1000)
    transactions.append(record["fields"]["dataplane_seconds"] * 1000)
    time.sleep(0.25)
latencies.sort()
print(f"single-backend change, announcement to applied ({samples} samples): median {statistics.median(latencies):.1f} ms, "
      f"p90 {latencies[int(len(latencies) * 0.9) - 1]:.1f} ms, max {latencies[-1]:.1f} ms "
      f"(of which the sync: median {statistics.median(syncs):.1f} ms, its nftables transaction {statistics.median(transactions):.1f} ms)")
PY
