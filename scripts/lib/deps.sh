# Shared helpers for scripts/: install what is missing, print progress. Source it; do not run it.

step() { printf '\n==> %s\n' "$*" >&2; }

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

apt_updated=""

# ensure_packages cmd:package [cmd:package ...] installs each Debian package whose command is missing.
# A path (starting with /) may stand in for a command, for packages without one on PATH.
ensure_packages() {
    local missing=() pair cmd pkg
    for pair in "$@"; do
        cmd="${pair%%:*}"; pkg="${pair#*:}"
        if [[ "$cmd" == /* ]]; then [[ -e "$cmd" ]] && continue; else command -v "$cmd" >/dev/null 2>&1 && continue; fi
        missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    install_packages "${missing[@]}"
}

# install_packages pkg... runs apt-get non-interactively, updating the index once per run.
install_packages() {
    [[ $(id -u) -eq 0 ]] || die "need root to install ${*}; run: sudo apt-get install -y ${*}"
    step "installing ${*}"
    if [[ -z "$apt_updated" ]]; then
        apt-get update -qq || die "apt-get update failed; cannot install ${*}"
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
        || die "could not install ${*}; install them by hand with apt-get"
}

# ensure_vm_packages installs what the IPVS test's QEMU guest is built from (tests/vm): scripts/test runs that
# test, and a full scripts/bench times the IPVS dataplane in it.
ensure_vm_packages() {
    ensure_packages qemu-system-x86_64:qemu-system-x86 cpio:cpio depmod:kmod strip:binutils \
        /usr/sbin/ipvsadm:ipvsadm /bin/busybox:busybox-static
}

ensure_rust() {
    command -v cargo >/dev/null 2>&1 || die "cargo is not installed; install a Rust toolchain (https://rustup.rs)"
}
