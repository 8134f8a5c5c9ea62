#!/bin/sh
# The container's entry point: make the cgroup tree the engine needs, then exec `sandbox serve "$@"`.
# On cgroup v2 with a private cgroup namespace the container's processes sit in its root cgroup,
# where no controller can be delegated below ("no internal processes"): move them to a leaf first.
set -eu
if [ -f /sys/fs/cgroup/cgroup.controllers ] && [ -w /sys/fs/cgroup/cgroup.procs ]; then
    mkdir -p /sys/fs/cgroup/init
    for pid in $(cat /sys/fs/cgroup/cgroup.procs); do
        echo "$pid" > /sys/fs/cgroup/init/cgroup.procs 2>/dev/null || true
    done
fi
sandbox doctor >&2 || { echo "sandbox: this container cannot run jails safely (see above)" >&2; exit 3; }
exec sandbox serve "$@"
