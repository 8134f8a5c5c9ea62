"""File locks on device nodes: the one lockable inode every jail could share (see README, "File
locks"). Two real nsjail jails, configured as jail.config() makes a slot's jail, each run a
small program: one holds a write lock on /dev/null, the other tries to lock it.

With the host's /dev/null bound into both (the positive control), the second sees the first's
lock: the channel exists. With devices.private_nodes() bound instead, it does not.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from sandbox.host import devices, jail
from sandbox.host.image import load_any, state_dir
from sandbox.limits import JailSettings

HOLDER = ("import fcntl, os, struct, time\n"
          "fd = os.open('/dev/null', os.O_RDWR)\n"
          "fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0, 1, 0) + bytes(4))\n"
          "print('HELD', flush=True)\n"
          "time.sleep(6)\n")
PROBE = ("import fcntl, os, struct\n"
         "fd = os.open('/dev/null', os.O_RDWR)\n"
         "try:\n"
         "    fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack('hhqqi', fcntl.F_RDLCK, 0, 0, 1, 0) + bytes(4))\n"
         "    print('FREE', flush=True)\n"
         "except OSError as e:\n"
         "    print('BUSY', e.errno, flush=True)\n")


def _config(private: Path | None) -> str:
    """A slot's jail config, with the host's device nodes bound instead of private ones if None."""
    nodes = devices.private_nodes(private) if private is not None else \
        {f"/dev/{name}": Path(f"/dev/{name}") for name in devices.NODES}
    return jail.config(load_any("default"), JailSettings.from_policy(), nodes)


def _start(cfg: str, code: str) -> subprocess.Popen:
    run_dir = state_dir() / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="nsjail-test-", suffix=".cfg", dir=run_dir)
    with os.fdopen(fd, "w") as f:
        f.write(cfg)
    image = load_any("default")
    # As the jail's root (an unprivileged host uid), where the zygote runs; locks ignore uids.
    cmd = [str(jail.nsjail_binary()), "--config", path, "--quiet", "--",
           str(image.python), "-I", "-c", code]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"PATH": "/usr/bin:/bin"}, start_new_session=True)
    proc.cfg_path = path  # type: ignore[attr-defined]
    return proc


def _race(private_a: Path | None, private_b: Path | None) -> str:
    holder = _start(_config(private_a), HOLDER)
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line == "HELD\n", (line, holder.stderr.read() if holder.poll() is not None else "")
        probe = _start(_config(private_b), PROBE)
        out, err = probe.communicate(timeout=60)
        os.unlink(probe.cfg_path)
        return out.strip() or err
    finally:
        holder.kill()
        holder.wait()
        os.unlink(holder.cfg_path)


def test_shared_host_dev_null_carries_a_lock_between_jails():
    # Positive control: the channel the private nodes close. (If this stops holding, the probe
    # below proves nothing.)
    assert _race(None, None).startswith("BUSY"), "expected the shared /dev/null to show the other jail's lock"


def test_private_device_nodes_keep_locks_inside_the_jail():
    with tempfile.TemporaryDirectory(dir=state_dir()) as d:
        os.chmod(d, 0o755)
        assert _race(Path(d) / "a", Path(d) / "b") == "FREE"


def test_the_engines_jails_have_their_own_device_nodes(sb):
    # Expected: ok; inside a slot's jail /dev/null, /dev/zero and /dev/full are the same devices
    # as the host's but other inodes (devices.private_nodes, bound by jail.spawn), so the lock
    # channel above is closed in the engine itself, not only in this test's jails.
    code = ("import os, json\n"
            "print(json.dumps({n: [os.stat('/dev/' + n).st_ino, os.major(os.stat('/dev/' + n).st_rdev),"
            " os.minor(os.stat('/dev/' + n).st_rdev)] for n in ('null', 'zero', 'full', 'random', 'urandom')}))")
    r = sb.run(code)
    assert r.outcome.value == "ok", (r.outcome, r.stderr)
    import json
    seen = json.loads(r.stdout)
    for name, (ino, major, minor) in seen.items():
        host = os.stat(f"/dev/{name}")
        assert (major, minor) == (os.major(host.st_rdev), os.minor(host.st_rdev)), (name, seen)
        assert ino != host.st_ino, f"/dev/{name} in the jail is the host's inode: locks on it cross jails"
