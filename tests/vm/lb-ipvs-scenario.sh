#!/bin/sh
# The IPVS scenario, run by the guest's /init on a real Debian kernel. It drives the real `lb` binary with
# `dataplane: ipvs` and prints what the kernel holds and what traffic did; tests/tests/lb_ipvs_vm.rs asserts on it.
#
# Hosts, each in its own network namespace except the LB (the guest's own namespace, where lb runs):
#   client 198.18.0.2/24 --- 198.18.0.1 [LB, VIP 198.18.100.10:80] 198.18.1.1 --- cell1 198.18.1.2:10001
#                                                                    198.18.2.1 --- cell2 198.18.2.2:10001
# and the same in IPv6 (client 2001:db8::2, VIP [2001:db8:100::10]:80, cells 2001:db8:1::2 and 2001:db8:2::2).
# Cells have no route back to the client: replies reach it only because the LB masquerades.
#
# Output: "==> BEGIN name" / "==> END name" around listings, "RESULT key value" for single facts, and
# "PROBLEM ..." for anything that went wrong on the way (the host test fails on any).

IP=/usr/sbin/ip
VIP=198.18.100.10
VIP6=2001:db8:100::10
STATUS=127.0.0.1:8090
CONFIG=/etc/lb.yaml

problem() { echo "PROBLEM $*"; }
phase() { echo "PHASE $1 at $(cut -d' ' -f1 /proc/uptime)s"; }

# uptime_s: whole seconds since boot, read from /proc (busybox date has no sub-second clock).
uptime_s() { read -r up _ </proc/uptime; echo "${up%%.*}"; }

# wait_for SECONDS COMMAND...: runs COMMAND until it succeeds; false once SECONDS have passed. Emulation can be
# slow and uneven, so the limit is time, not a number of tries.
wait_for() {
    deadline=$(( $(uptime_s) + $1 )); shift
    while :; do
        "$@" >/dev/null 2>&1 && return 0
        [ "$(uptime_s)" -ge "$deadline" ] && return 1
        sleep 0.3
    done
}

section() {
    name="$1"; shift
    echo "==> BEGIN $name"
    "$@"
    echo "==> END $name"
}

rules() { ipvsadm -Sn | sort; }
has_rule() { ipvsadm -Sn | grep -qxF -- "$1"; }
lacks_rule() { ! ipvsadm -Sn | grep -qF -- "$1"; }

# metric [NETNS] NAME: the value of one exposed sample (0 when absent).
metric() {
    value=$(timeout 5 wget -q -O - "http://$STATUS/metrics" | grep -F "$1 " | grep -vF '#' | head -n 1 | awk '{ print $2 }')
    echo "${value:-0}"
}
metric_at_least() { [ "$(metric "$1")" -ge "$2" ]; }
writes() { metric 'switchyard_lb_ipvs_netlink_requests_total{purpose="write"}'; }

get() { $IP netns exec client timeout 5 wget -q -O - "http://$VIP/cgi-bin/who"; }
get6() { $IP netns exec client timeout 5 wget -q -O - "http://[$VIP6]/cgi-bin/who"; }

write_config() {
    cat >"$CONFIG" <<EOF
status: {address: "$STATUS", user: admin, pass: secret}
dataplane: ipvs
vip_interface: sy-vip0
snat: true
sync_interval: 2s
health_check: {type: none}
vips:
  - name: web
    address: $VIP
    port: 80
    protocol: tcp
    scheduler: wrr
    backends:
$1
  - name: web6
    address: "$VIP6"
    port: 80
    protocol: tcp
    scheduler: rr
    backends:
      - {host: "2001:db8:1::2", port: 10001, weight: 1}
      - {host: "2001:db8:2::2", port: 10001, weight: 1}
EOF
}
CELL1_W1='      - {host: 198.18.1.2, port: 10001, weight: 1}'
CELL1_W3='      - {host: 198.18.1.2, port: 10001, weight: 3}'
CELL2_W1='      - {host: 198.18.2.2, port: 10001, weight: 1}'

start_lb() {
    RUST_LOG=info lb --config "$CONFIG" >>/tmp/lb.log 2>&1 &
    LB_PID=$!
}
stop_lb() {
    kill -TERM "$LB_PID"
    wait "$LB_PID"
    echo "RESULT lb_exit $?"
}

# --- hosts ----------------------------------------------------------------------------------------------------
$IP netns add client
$IP link add c0 type veth peer name eth0 netns client
$IP addr add 198.18.0.1/24 dev c0
$IP link set c0 up
$IP -n client addr add 198.18.0.2/24 dev eth0
$IP -n client link set eth0 up
$IP -n client link set lo up
$IP -n client route add default via 198.18.0.1
$IP addr add 2001:db8::1/64 dev c0 nodad
$IP -n client addr add 2001:db8::2/64 dev eth0 nodad
$IP -n client -6 route add default via 2001:db8::1
for i in 1 2; do
    $IP netns add "cell$i"
    $IP link add "k$i" type veth peer name eth0 netns "cell$i"
    $IP addr add "198.18.$i.1/24" dev "k$i"
    $IP link set "k$i" up
    $IP -n "cell$i" addr add "198.18.$i.2/24" dev eth0
    $IP -n "cell$i" link set eth0 up
    $IP -n "cell$i" link set lo up
    $IP addr add "2001:db8:$i::1/64" dev "k$i" nodad
    $IP -n "cell$i" addr add "2001:db8:$i::2/64" dev eth0 nodad
    mkdir -p "/www/cell$i/cgi-bin"
    cat >"/www/cell$i/cgi-bin/who" <<EOF
#!/bin/sh
# busybox httpd writes peers in brackets, IPv4 ones as [::ffff:a.b.c.d]
peer=\${REMOTE_ADDR#\\[}
peer=\${peer#::ffff:}
printf 'Content-Type: text/plain\r\n\r\n'
echo "cell$i \${peer%]}"
EOF
    chmod +x "/www/cell$i/cgi-bin/who"
    $IP netns exec "cell$i" httpd -f -p 10001 -h "/www/cell$i" &
done

# A service lb does not own: it must come through everything untouched.
ipvsadm -A -t 198.18.200.1:8080 -s wlc
ipvsadm -a -t 198.18.200.1:8080 -r 198.18.1.2:9 -m -w 5

phase start
# --- first start: program from the config ---------------------------------------------------------------------
write_config "$CELL1_W1
$CELL2_W1"
start_lb
wait_for 30 has_rule "-a -t $VIP:80 -r 198.18.2.2:10001 -m -w 1" || problem "lb did not program the VIP"
wait_for 10 metric_at_least 'switchyard_lb_syncs_total{result="ok"}' 1 || problem "lb reported no successful sync"
section after-start rules
section masquerade nft list table inet switchyard
echo "RESULT sysctl_conntrack $(cat /proc/sys/net/ipv4/vs/conntrack)"
echo "RESULT sysctl_expire_nodest_conn $(cat /proc/sys/net/ipv4/vs/expire_nodest_conn)"
echo "RESULT sysctl_expire_quiescent_template $(cat /proc/sys/net/ipv4/vs/expire_quiescent_template)"

# --- traffic through the VIP, answered only thanks to SNAT -------------------------------------------------------
echo "==> BEGIN traffic"
for n in 1 2 3 4 5 6; do get || echo "request $n failed"; done
echo "==> END traffic"
echo "==> BEGIN traffic6"
for n in 1 2 3 4; do get6 || echo "request $n failed"; done
echo "==> END traffic6"
# The kernel's counters, as lb reports them; read after a sync so they include the requests above.
wait_for 10 metric_at_least 'switchyard_lb_ipvs_service_connections_total{vip="tcp/198.18.100.10:80"}' 6 \
    || problem "lb's IPVS connection counter did not reach 6"
echo "RESULT metric_service_connections $(metric 'switchyard_lb_ipvs_service_connections_total{vip="tcp/198.18.100.10:80"}')"
echo "RESULT metric_backend_bytes_out_cell1 $(metric 'switchyard_lb_ipvs_backend_bytes_total{backend="198.18.1.2:10001",direction="out",vip="tcp/198.18.100.10:80"}')"
# /vips ends without a newline; the section marker must start a line of its own.
vips() { timeout 5 wget -q -O - "http://admin:secret@$STATUS/vips"; echo; }
section vips vips

phase reweight
# --- change one backend's weight: one netlink request ---------------------------------------------------------
before=$(writes)
write_config "$CELL1_W3
$CELL2_W1"
kill -HUP "$LB_PID"
wait_for 20 has_rule "-a -t $VIP:80 -r 198.18.1.2:10001 -m -w 3" || problem "the new weight did not reach the kernel"
wait_for 10 metric_at_least 'switchyard_lb_ipvs_netlink_requests_total{purpose="write"}' $(( before + 1 )) \
    || problem "the write counter did not move after the weight change"
echo "RESULT reweight_writes $(( $(writes) - before ))"
section after-reweight rules

phase drain
# --- remove a backend that carries a connection: drained, then deleted ---------------------------------------
mkfifo /tmp/hold
($IP netns exec client nc "$VIP" 80 </tmp/hold >/tmp/held.out 2>&1) &
exec 3>/tmp/hold
# The connection is open but has sent nothing: httpd waits for the request. Find the backend IPVS gave it.
held_by() {
    ipvsadm -Ln | awk -v vip="$VIP:80" '
        $2 == vip { on = 1; next }
        /^(TCP|UDP)/ { on = 0 }
        on && $1 == "->" && $5 ~ /^[0-9]+$/ && $5 > 0 { print $2 }'
}
connection_held() { [ -n "$(held_by)" ]; }
wait_for 10 connection_held || problem "the held connection never became active"
held=$(held_by | head -n 1)
echo "RESULT held_backend $held"
case "$held" in
    198.18.1.2:10001) keep="$CELL2_W1"; other=198.18.2.2:10001 ;;
    *) keep="$CELL1_W3"; other=198.18.1.2:10001 ;;
esac
write_config "$keep"
kill -HUP "$LB_PID"
wait_for 20 has_rule "-a -t $VIP:80 -r $held -m -w 0" || problem "the removed backend was not drained to weight 0"
section during-drain rules
echo "==> BEGIN traffic-during-drain"
for n in 1 2 3 4; do get || echo "request $n failed"; done
echo "==> END traffic-during-drain"
# The drained backend's established connection still works: finish its request now.
printf 'GET /cgi-bin/who HTTP/1.0\r\n\r\n' >&3
exec 3>&-
wait_for 10 grep -q "^cell" /tmp/held.out || problem "the held connection got no answer"
echo "RESULT held_answer $(grep '^cell' /tmp/held.out)"
wait_for 20 lacks_rule "-r $held" || problem "the drained backend was not deleted after its connection ended"
section after-drain rules
echo "RESULT remaining_backend $other"

phase restart
# --- restart lb: nothing changes, nothing is flushed ------------------------------------------------------------
conns() { ipvsadm -Ln --stats | awk -v vip="$VIP:80" '$2 == vip { print $3 }'; }
conns_before=$(conns)
section before-restart rules
stop_lb
start_lb
wait_for 30 metric_at_least 'switchyard_lb_syncs_total{result="ok"}' 2 || problem "lb did not sync twice after the restart"
echo "RESULT restart_writes $(writes)"
section after-restart rules
echo "RESULT conns_before_restart $conns_before"
echo "RESULT conns_after_restart $(conns)"
echo "==> BEGIN traffic-after-restart"
for n in 1 2; do get || echo "request $n failed"; done
echo "==> END traffic-after-restart"

phase cleanup
# --- cleanup removes what lb owns and nothing else --------------------------------------------------------------
stop_lb
lb cleanup --config "$CONFIG" >>/tmp/lb.log 2>&1 || problem "lb cleanup failed"
section after-cleanup rules
nft list table inet switchyard >/dev/null 2>&1 && problem "lb cleanup left its nftables table behind"

phase scale
# --- scale: 1,000 VIPs x 10 backends from empty, in a fresh namespace -------------------------------------------
# /metrics carries tens of thousands of series at this size, slow to render under emulation, so this part reads
# lb's own summary of each apply from its JSON log instead.
if [ -f /etc/lb-scale.yaml ]; then
    $IP netns add scale
    $IP -n scale link set lo up
    applies() { grep -c '"message":"applied IPVS steps"' /tmp/lb-scale.log; }
    applied_at_least() { [ "$(applies)" -ge "$1" ]; }
    last_apply() { grep '"message":"applied IPVS steps"' /tmp/lb-scale.log | tail -n 1; }
    field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }
    started=$(cut -d' ' -f1 /proc/uptime)
    SWITCHYARD_LOG_FORMAT=json RUST_LOG=warn,switchyard_lb::ipvs=info,switchyard_lb::run=info \
        $IP netns exec scale lb --config /etc/lb-scale.yaml >/tmp/lb-scale.log 2>&1 &
    SCALE_PID=$!
    wait_for 120 applied_at_least 1 || problem "the 1,000-VIP sync did not finish"
    finished=$(cut -d' ' -f1 /proc/uptime)
    apply=$(last_apply)
    echo "RESULT scale_dataplane $(grep '"read the kernel"' /tmp/lb-scale.log | sed -n 's/.*"dataplane":"\([a-z]*\)".*/\1/p')"
    echo "RESULT scale_wall_seconds $(awk -v a="$started" -v b="$finished" 'BEGIN { printf "%.2f", b - a }')"
    echo "RESULT scale_apply_seconds $(echo "$apply" | field elapsed_seconds)"
    echo "RESULT scale_first_sync_steps $(echo "$apply" | field steps)"
    echo "RESULT scale_first_sync_writes $(echo "$apply" | field netlink_requests)"
    $IP netns exec scale ipvsadm -Sn >/tmp/scale.rules
    echo "RESULT scale_services $(grep -c '^-A' /tmp/scale.rules)"
    echo "RESULT scale_destinations $(grep -c '^-a' /tmp/scale.rules)"

    phase scale-reweight
    cp /etc/lb-scale-reweighted.yaml /etc/lb-scale.yaml
    kill -HUP "$SCALE_PID"
    wait_for 60 applied_at_least 2 || problem "lb applied nothing after the one-backend change at scale"
    apply=$(last_apply)
    echo "RESULT scale_reweight_steps $(echo "$apply" | field steps)"
    echo "RESULT scale_reweight_writes $(echo "$apply" | field netlink_requests)"
    $IP netns exec scale ipvsadm -Sn | grep -q -- '-r 198.18.50.1:10001 -m -w 7$' \
        || problem "the one-backend change did not reach the kernel at scale"
    kill -TERM "$SCALE_PID"
    wait "$SCALE_PID"
fi

# --- benchmark only (SWITCHYARD_IPVS_BENCH=1 on the host): the peer, ipvsadm restoring the same 11,000 objects
# into an empty namespace (one request and one wait per object), measured in the same guest ------------------------
if [ -f /etc/lb-bench ] && [ -f /tmp/scale.rules ]; then
    phase scale-peer
    $IP netns add peer
    # The kernel refuses real servers in a namespace with no local routing table yet; loopback makes one.
    $IP -n peer link set lo up
    started=$(cut -d' ' -f1 /proc/uptime)
    $IP netns exec peer ipvsadm -R </tmp/scale.rules || problem "ipvsadm -R failed"
    finished=$(cut -d' ' -f1 /proc/uptime)
    echo "RESULT peer_ipvsadm_restore_seconds $(awk -v a="$started" -v b="$finished" 'BEGIN { printf "%.2f", b - a }')"
    echo "RESULT peer_objects $($IP netns exec peer ipvsadm -Sn | wc -l)"
fi

phase end
echo "==> BEGIN lb-log"
tail -n 40 /tmp/lb.log
echo "==> END lb-log"
