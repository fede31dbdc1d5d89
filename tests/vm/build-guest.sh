#!/usr/bin/env bash
# Builds a bootable guest for the real-kernel tests: a Debian kernel (fetched once and cached) and an initramfs
# holding busybox, the given programs with the shared libraries they load, the kernel modules the scenario needs
# (in load order), iproute2, nftables, ipvsadm and a scenario script that /init runs.
#
# Usage: build-guest.sh --cache DIR --out DIR --scenario FILE [--bin PATH]... [--file SRC:DEST]...
#
# Writes OUT/vmlinuz and OUT/initrd.cpio. The kernel package is resolved from `linux-image-amd64` (override with
# SWITCHYARD_VM_KERNEL=linux-image-6.1.0-NN-amd64), downloaded with `apt-get download` and unpacked with
# `dpkg-deb -x` into CACHE, so a warm run needs no network. Progress goes to stderr; errors say what to install.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="" out="" scenario=""
bins=() files=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cache) cache="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --scenario) scenario="$2"; shift 2 ;;
        --bin) bins+=("$2"); shift 2 ;;
        --file) files+=("$2"); shift 2 ;;
        *) echo "build-guest: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ -n "$cache" && -n "$out" && -n "$scenario" ]] || { echo "usage: $0 --cache DIR --out DIR --scenario FILE [--bin PATH]... [--file SRC:DEST]..." >&2; exit 2; }

say() { printf 'build-guest: %s\n' "$*" >&2; }
die() { printf 'build-guest: error: %s\n' "$*" >&2; exit 1; }

need() {
    local cmd="$1" package="$2"
    command -v "$cmd" >/dev/null 2>&1 || [[ -x "$cmd" ]] \
        || die "\`$cmd\` is missing; install it with: apt-get install -y --no-install-recommends $package"
}
need cpio cpio
need depmod kmod
need dpkg-deb dpkg
need strip binutils
need /usr/sbin/ip iproute2
need /usr/sbin/nft nftables
need /usr/sbin/ipvsadm ipvsadm
[[ -x /bin/busybox ]] || die "busybox is missing; install it with: apt-get install -y --no-install-recommends busybox-static"

# Modules the scenarios load, in order; their dependencies come first, from modules.dep. libcrc32c only has a soft
# dependency on a crc32c implementation, so the generic one is named explicitly.
modules=(crc32c_generic libcrc32c nf_defrag_ipv4 nf_defrag_ipv6 nf_conntrack
    ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_sh ip_vs_mh
    veth dummy nfnetlink nf_tables nf_nat nft_chain_nat nft_masq nft_ct)

# --- the kernel, fetched once -------------------------------------------------------------------------------
kernel_dir="$cache/kernel"
find_kernel() { ls "$kernel_dir"/root/boot/vmlinuz-* 2>/dev/null | head -n 1; }
if [[ -z "$(find_kernel)" ]]; then
    need apt-get apt
    package="${SWITCHYARD_VM_KERNEL:-}"
    resolve() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'; }
    if [[ -z "$package" ]]; then
        package="$(resolve || true)"
        if [[ -z "$package" ]]; then
            say "apt has no linux-image-amd64 candidate yet; running apt-get update"
            apt-get update -qq >&2 || die "apt-get update failed; cannot find a Debian kernel package to boot"
            package="$(resolve || true)"
        fi
    fi
    [[ -n "$package" ]] || die "no Debian kernel package found (apt-cache depends linux-image-amd64 names none); set SWITCHYARD_VM_KERNEL=linux-image-6.1.0-NN-amd64"
    say "fetching kernel package $package (once; cached in $kernel_dir)"
    mkdir -p "$cache"
    staging="$(mktemp -d "$cache/kernel.XXXXXX")"
    trap 'rm -rf "$staging"' EXIT
    # apt drops privileges to _apt for downloads when it can; a directory it may write keeps that quiet.
    chmod 0777 "$staging"
    (cd "$staging" && apt-get download -q "$package" >&2) \
        || die "apt-get download $package failed; the VM test needs Debian's kernel package (network access to the Debian mirror)"
    dpkg-deb -x "$staging"/*.deb "$staging/root" || die "dpkg-deb could not unpack $package"
    release="$(ls "$staging/root/lib/modules")"
    depmod -b "$staging/root" "$release" || die "depmod failed for $release"
    rm -f "$staging"/*.deb
    rm -rf "$kernel_dir"
    mv "$staging" "$kernel_dir"
    trap - EXIT
fi
vmlinuz="$(find_kernel)"
release="$(ls "$kernel_dir/root/lib/modules")"
module_root="$kernel_dir/root/lib/modules/$release"
say "kernel $release"

# --- the initramfs ------------------------------------------------------------------------------------------
mkdir -p "$out"
root="$(mktemp -d "$out/root.XXXXXX")"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,proc,sys,dev,tmp,run,etc,var,root,lib/modules}
ln -s ../run "$root/var/run"

# copy_with_libs SRC DEST: a program and every shared library ldd lists for it, at the same paths.
copy_with_libs() {
    local src="$1" dest="$2" lib
    mkdir -p "$(dirname "$root$dest")"
    if [[ "$dest" == /bin/busybox ]]; then
        cp "$src" "$root$dest"
    else
        strip -o "$root$dest" "$src" 2>/dev/null || cp "$src" "$root$dest"
    fi
    chmod 0755 "$root$dest"
    for lib in $(ldd "$src" 2>/dev/null | grep -oE '/[^ ]+' || true); do
        [[ -e "$root$lib" ]] && continue
        mkdir -p "$(dirname "$root$lib")"
        cp -L "$lib" "$root$lib"
    done
}

copy_with_libs /bin/busybox /bin/busybox
copy_with_libs /usr/sbin/ip /usr/sbin/ip
copy_with_libs /usr/sbin/nft /usr/sbin/nft
copy_with_libs /usr/sbin/ipvsadm /usr/sbin/ipvsadm
for bin in ${bins[@]+"${bins[@]}"}; do
    [[ -x "$bin" ]] || die "program $bin does not exist; build it first"
    copy_with_libs "$bin" "/usr/bin/$(basename "$bin")"
done
for pair in ${files[@]+"${files[@]}"}; do
    src="${pair%%:*}" dest="${pair#*:}"
    mkdir -p "$(dirname "$root$dest")"
    cp "$src" "$root$dest"
done
cp "$here/init.sh" "$root/init"
cp "$scenario" "$root/scenario.sh"
chmod 0755 "$root/init" "$root/scenario.sh"
# nft and ip look names up through NSS; give them the files they expect.
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
printf '127.0.0.1 localhost\n' >"$root/etc/hosts"

# Modules in load order: each one's dependencies (from modules.dep, deepest first), then itself.
declare -A dep_line=() loaded=()
while IFS=: read -r path deps; do
    name="$(basename "$path" .ko)"
    dep_line["$name"]="$path:$deps"
done <"$module_root/modules.dep"
order=()
add_module() {
    local name="$1" entry path deps dep i
    local -a dep_list
    [[ -n "${loaded[$name]:-}" ]] && return 0
    if [[ -z "${dep_line[$name]:-}" ]]; then
        grep -q "/$name.ko\$" "$module_root/modules.builtin" 2>/dev/null && { loaded["$name"]=1; return 0; }
        die "kernel $release has no module $name"
    fi
    entry="${dep_line[$name]}"
    path="${entry%%:*}" deps="${entry#*:}"
    read -r -a dep_list <<<"$deps"
    for ((i = ${#dep_list[@]} - 1; i >= 0; i--)); do
        dep="$(basename "${dep_list[$i]}" .ko)"
        add_module "$dep"
    done
    loaded["$name"]=1
    order+=("$path")
}
for module in "${modules[@]}"; do add_module "$module"; done
: >"$root/lib/modules/load-order"
for path in "${order[@]}"; do
    cp "$module_root/$path" "$root/lib/modules/"
    basename "$path" >>"$root/lib/modules/load-order"
done

(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) >"$out/initrd.cpio.tmp"
mv "$out/initrd.cpio.tmp" "$out/initrd.cpio"
cp "$vmlinuz" "$out/vmlinuz"
say "guest ready: $out/vmlinuz, $out/initrd.cpio ($(du -h "$out/initrd.cpio" | cut -f1)), ${#order[@]} modules"
