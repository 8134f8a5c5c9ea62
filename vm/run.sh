#!/usr/bin/env bash
# `make test-cgroup2`: run the engine on a cgroup v2 host. Builds (once, cached) a Debian 12 VM,
# boots it with qemu (KVM when it works here, else TCG software emulation) with only the unified
# cgroup hierarchy mounted, shares the checkout and the host's built image read-only, and runs
# vm/guest-check.sh inside. Exits with the guest's result. Needs root and qemu-system-x86.
#
# Settings (environment): VM_CACHE (/var/cache/sandbox-vm), VM_MEMORY_MB (4096), VM_CPUS (2),
# VM_TIMEOUT (seconds for the whole guest run, 7200), VM_ACCEL (auto, kvm or tcg), VM_TESTS (pytest
# arguments replacing the default test list).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
VM_CACHE=${VM_CACHE:-/var/cache/sandbox-vm}
VM_MEMORY_MB=${VM_MEMORY_MB:-4096}
VM_CPUS=${VM_CPUS:-2}
VM_TIMEOUT=${VM_TIMEOUT:-7200}
VM_ACCEL=${VM_ACCEL:-auto}
image_dir=${SANDBOX_HOME:-/var/lib/sandbox}/images/default
log() { echo "[vm $(date +%T)] $*"; }

[[ $(id -u) == 0 ]] || { echo "run as root (sudo make test-cgroup2)" >&2; exit 2; }
command -v qemu-system-x86_64 >/dev/null || { echo "missing qemu: apt-get install qemu-system-x86" >&2; exit 2; }
[[ -f "$image_dir/manifest.json" ]] || { echo "the host image is not built: run sudo make image first" >&2; exit 2; }

t_start=$SECONDS
vm=$("$here/build-image.sh" | tail -1)
log "VM image: $vm ($(cat "$vm/kernel-version"))"

run=$(mktemp -d "$VM_CACHE/run.XXXXXX")
qemu=
# Whatever ends this script (a CI timeout, Ctrl-C) ends the VM too.
trap '{ [[ -n $qemu ]] && kill "$qemu" 2>/dev/null; } || true; rm -rf "$run"' EXIT
trap 'exit 130' INT TERM HUP
# The guest gets what a fresh clone has: the files git tracks (with their working-tree content).
if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [[ -e "$f" ]] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf "$run/src.tar")
else
    tar -C "$repo" --exclude=.venv --exclude=results --exclude=bench-results -cf "$run/src.tar" .
fi

cp /etc/ssl/certs/ca-certificates.crt "$run/" 2>/dev/null || true
# VM_TESTS="tests/a.py tests/b.py::test_c" runs only those inside (default: vm/guest-check.sh's list).
[[ -n ${VM_TESTS:-} ]] && echo "$VM_TESTS" >"$run/tests"
# The host's pip cache, shared: under emulation every downloaded byte costs CPU (TLS included).
pip_cache=${PIP_CACHE_DIR:-/root/.cache/pip}
mkdir -p "$pip_cache"

# Which accelerator works here: a KVM guest must get its kernel as far as the root-mount panic.
probe() {
    rm -f "$run/probe.log"
    timeout 20 qemu-system-x86_64 -accel kvm -cpu host -m 256 -nodefaults -display none -no-reboot \
        -serial "file:$run/probe.log" -kernel "$vm/vmlinuz" -append "console=ttyS0 panic=-1 root=/dev/null" \
        >/dev/null 2>&1 || true
    grep -q "Kernel panic" "$run/probe.log" 2>/dev/null
}
accel=$VM_ACCEL
if [[ $accel == auto ]]; then
    accel=tcg
    if [[ -w /dev/kvm ]]; then
        if probe; then accel=kvm; else log "KVM did not boot a kernel within 20 s: using TCG software emulation"; fi
    fi
fi
cpu=max; [[ $accel == kvm ]] && cpu=host
log "booting: accel=$accel, $VM_CPUS vCPUs, $VM_MEMORY_MB MiB, timeout ${VM_TIMEOUT}s; console follows"

: >"$run/console.log"
timeout --kill-after=30 "$VM_TIMEOUT" qemu-system-x86_64 \
    -machine q35 -accel "$accel" -cpu "$cpu" -smp "$VM_CPUS" -m "$VM_MEMORY_MB" \
    -nodefaults -display none -no-reboot \
    -chardev "file,id=console,path=$run/console.log" -serial chardev:console \
    -kernel "$vm/vmlinuz" -initrd "$vm/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 quiet loglevel=3 systemd.show_status=0 fsck.mode=skip panic=-1" \
    -drive "file=$vm/rootfs.ext4,format=raw,if=virtio,snapshot=on" \
    -netdev user,id=net0 -device virtio-net-pci,netdev=net0 \
    -device virtio-rng-pci \
    -virtfs "local,path=$repo,mount_tag=src,security_model=none,readonly=on" \
    -virtfs "local,path=$image_dir,mount_tag=image,security_model=none,readonly=on" \
    -virtfs "local,path=$run,mount_tag=out,security_model=none" \
    -virtfs "local,path=$pip_cache,mount_tag=pipcache,security_model=none" \
    >"$run/qemu.log" 2>&1 &
qemu=$!
tail -n +1 -f --pid="$qemu" "$run/console.log" &
tailer=$!
status=0
wait "$qemu" || status=$?
sleep 1; kill "$tailer" 2>/dev/null || true; wait "$tailer" 2>/dev/null || true
cp "$run/console.log" "$VM_CACHE/last-console.log"

if (( status != 0 )); then
    log "qemu ended with status $status$( ((status == 124)) && echo " (the ${VM_TIMEOUT}s timeout)")"
    tail -5 "$run/qemu.log"
fi
if [[ ! -f "$run/rc" ]]; then
    log "FAIL: the guest left no result (console saved in $VM_CACHE/last-console.log)"
    exit 1
fi
rc=$(cat "$run/rc")
log "guest result: $([[ $rc == 0 ]] && echo PASS || echo FAIL); total $((SECONDS - t_start)) s (console: $VM_CACHE/last-console.log)"
[[ $rc == 0 ]]
