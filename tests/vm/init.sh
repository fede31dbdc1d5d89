#!/bin/busybox sh
# The guest's /init: mount the pseudo filesystems, load the kernel modules in the order build-guest.sh wrote, run
# /scenario.sh, report how it ended on the serial console, and power off so QEMU exits.
#
# Lines starting with "VM:" are the harness's own; the scenario prints its results between them.
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
# The root of an initramfs is not a mount point; `ip netns` needs / to be one it can make shared.
mount --make-rshared / 2>/dev/null

echo "VM: kernel $(uname -r)"
while read -r module; do
    insmod "/lib/modules/$module" || echo "VM: insmod $module failed"
done </lib/modules/load-order
/usr/sbin/ip link set lo up

# If the scenario is still running late, show what every process is doing and the logs so far, so a timeout
# in CI explains itself. It only reports; the host decides when to give up.
(
    sleep "${WATCHDOG_SECONDS:-100}"
    echo "VM: watchdog: the scenario is still running; processes and log tails follow"
    ps -o pid,stat,args
    for log in /tmp/*.log; do
        [ -f "$log" ] || continue
        echo "VM: watchdog: tail of $log"
        tail -n 30 "$log"
    done
) &

echo "VM: scenario start"
sh /scenario.sh
echo "VM: scenario exit $?"
sync
poweroff -f
