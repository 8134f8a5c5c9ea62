#!/usr/bin/env bash
# Runs inside the cgroup v2 VM at boot (sandbox-vm-check.service), from the read-only shared
# checkout. Installs the project with the README's own command, runs `sandbox doctor`, the example
# and the cgroup-dependent tests, checks nothing is left behind, and leaves its exit status in
# /mnt/out/rc for the host. Every step is bounded by a timeout.
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
# Under software emulation byte-compiling every installed module (ray, playwright, ...) at install
# time costs minutes; Python compiles what the run imports anyway. The install command is the README's.
export PIP_COMPILE=0  # pip install --no-compile (PIP_NO_COMPILE=1 would mean the opposite)

say() { echo "[guest $(date +%T)] $*"; }
fail=0
step() {  # step NAME TIMEOUT_SECONDS COMMAND...: run, report, remember a failure
    local name=$1 limit=$2; shift 2
    say "== $name (timeout ${limit}s): $*"
    local t0=$SECONDS rc=0
    timeout --kill-after=10 "$limit" "$@" || rc=$?
    if (( rc == 0 )); then say "== $name: ok in $((SECONDS - t0)) s"
    else say "== $name: FAILED (exit $rc) after $((SECONDS - t0)) s"; fail=1; fi
    return $rc
}

finish() {
    say "RESULT: $([[ $fail == 0 ]] && echo PASS || echo FAIL)"
    echo "$fail" >/mnt/out/rc
    sync
}

mkdir -p /mnt/out /var/lib/sandbox/images/default
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out /mnt/out || { say "cannot mount the results share"; exit 1; }
trap finish EXIT

say "kernel $(uname -r), $(nproc) vCPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
# The point of this VM: only the unified hierarchy is mounted.
say "cgroup mounts:"; grep -E ' cgroup2? ' /proc/mounts
if [[ $(awk '$2 == "/sys/fs/cgroup" {print $3}' /proc/mounts) != cgroup2 ]] || grep -q ' cgroup ' /proc/mounts; then
    say "not a pure cgroup v2 host"; fail=1; exit 1
fi
say "root cgroup.subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"

# Trust what the host trusts (its network may re-sign TLS with a local CA), and tell pip as the host does.
if [[ -s /mnt/out/ca-certificates.crt ]]; then
    cp /mnt/out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
    export PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
fi

# The host's built image, at the same path and read-only: `sandbox image build` finds its lock up to date.
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose,ro image /var/lib/sandbox/images/default \
    || { say "cannot mount the image share"; fail=1; exit 1; }

mkdir -p /root/.cache/pip
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 pipcache /root/.cache/pip || say "no pip cache shared: downloading"
say "pip cache: $(du -sh /root/.cache/pip 2>&1 | cut -f1) in /root/.cache/pip ($(grep -c ' /root/.cache/pip ' /proc/mounts) mount)"

[[ -f /var/lib/sandbox/images/default/manifest.json ]] \
    || { say "the host's image is gone (rebuilt on the host during this run?): run again"; fail=1; exit 1; }

# A fresh copy of the checkout (the files git tracks, as the host listed them).
rm -rf /root/sandbox && mkdir /root/sandbox && tar -xf /mnt/out/src.tar -C /root/sandbox || { fail=1; exit 1; }
cd /root/sandbox

# The README's set-up command: installs the project, verifies the image, runs doctor and the example.
# A failed example is reported, and the tests still run when the install itself went through.
step "make run (README set-up, doctor, example)" 2700 make run || [[ -x .venv/bin/sandbox ]] || exit 1
ls -l results/ 2>/dev/null
say "pip cache after the install: $(du -sh /root/.cache/pip 2>&1 | cut -f1) ($(.venv/bin/pip cache dir 2>&1))"
step "sandbox doctor" 300 .venv/bin/sandbox doctor

# tests/test_sessions.py and tests/security/test_sessions.py: per-session cgroups below a jail's (a v2 leaf).
tests=(vm/guest_tests tests/test_cgroups.py tests/security/test_resources.py tests/test_limits.py
       tests/test_outcomes.py tests/test_pool.py tests/test_fail_closed.py $(ls tests/test_session*.py tests/security/test_session*.py 2>/dev/null))
[[ -s /mnt/out/tests ]] && read -r -a tests </mnt/out/tests
step "cgroup-dependent tests" 5400 .venv/bin/python -m pytest -v --color=no -p no:cacheprovider "${tests[@]}"

# Cleanup: no jail, no slot cgroup left behind.
left=$(find /sys/fs/cgroup/sandbox -mindepth 1 -type d 2>/dev/null | tr '\n' ' ')
if [[ -n "$left" ]]; then say "cgroups left behind: $left"; fail=1; else say "no cgroup left under /sys/fs/cgroup/sandbox"; fi
if pgrep -x nsjail >/dev/null; then say "nsjail processes left: $(pgrep -a -x nsjail)"; fail=1; else say "no nsjail process left"; fi
