"""Host file read/write: the jail sees only its read-only binds and its own fresh tmpfs mounts.

Rules under test (ARCHITECTURE.md): tmpfs root with read-only binds of exactly what the image
needs (nsjail #125: read-only binds must really be read-only), a private hidepid /proc (the
zygote and other executions are invisible), no device nodes, no /sys, and artefacts that never
make the host follow a path planted in the work dir (Judge0 CVE-2024-28185/28189).
"""

from __future__ import annotations

import errno
import hashlib
import os
import uuid
from pathlib import Path

import pytest

from sandbox.guest import protocol
from sandbox.host import devices, jail
from sandbox import Outcome

from ._helpers import describe, expect, one, run

ENOENT, EROFS, EACCES, EPERM, EXDEV = errno.ENOENT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EXDEV


def test_etc_shadow_and_root_home_do_not_exist(sb):
    # Expected: ok; /etc holds only the five files the jail config provides, no shadow, no /root.
    assert Path("/etc/shadow").exists()  # the host has one: the jail must not
    r = run(sb, """
        import os
        evidence(shadow=errno_of(open, "/etc/shadow"), gshadow=errno_of(open, "/etc/gshadow"),
                 sudoers=errno_of(open, "/etc/sudoers"), root=errno_of(os.listdir, "/root"),
                 ssh=errno_of(open, "/root/.ssh/authorized_keys"), etc=sorted(os.listdir("/etc")),
                 passwd=open("/etc/passwd").read())
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["shadow"] == ev["gshadow"] == ev["sudoers"] == ev["root"] == ev["ssh"] == ENOENT, ev
    assert set(ev["etc"]) <= {"passwd", "group", "hosts", "ld.so.cache", "localtime"}, ev
    # The jail's passwd is synthetic: no host account is listed.
    # The jail's passwd is synthetic: root and the mapped user uids, no host account.
    rows = [l.split(":") for l in ev["passwd"].splitlines()]
    assert [(r[0], int(r[2])) for r in rows] == [("root", 0)] + [("sandbox", 1000 + i) for i in range(64)], ev


def test_host_secret_files_are_invisible(sb, host_secret):
    # Expected: ok; none of the host's secret files (in /tmp, /var/tmp, /root) is reachable by
    # any path: directly, through /proc/self/root or /proc/1/root, or by listing the parents.
    paths = [str(f) for f in host_secret.files]
    r = run(sb, f"""
        import os, glob
        paths = {paths!r}
        tries = {{}}
        for p in paths:
            for prefix in ("", "/proc/self/root", "/proc/1/root", "/proc/self/cwd/../.."):
                q = prefix + p
                try:
                    tries[q] = open(q).read()
                except OSError as e:
                    tries[q] = e.errno
        listing = {{d: (os.listdir(d) if os.path.isdir(d) else None) for d in ("/tmp", "/var", "/var/tmp", "/")}}
        found = glob.glob("/tmp/sbx-sectest-*") + glob.glob("/var/tmp/sbx-sectest-*")
        evidence(tries=tries, listing=listing, found=found)
    """)
    expect(r, Outcome.OK)
    assert host_secret.token not in r.stdout, describe(r)
    ev = one(r)
    assert all(v == ENOENT for v in ev["tries"].values()), ev
    assert ev["found"] == [], ev
    assert ev["listing"]["/var/tmp"] is None, ev
    assert not any(n.startswith("sbx-sectest-") for n in ev["listing"]["/tmp"]), ev
    for f in host_secret.files:  # still there on the host, unchanged
        assert f.read_text().strip() == host_secret.token


def test_usr_bind_is_read_only_even_for_a_world_writable_host_file(sb):
    # Expected: ok; a 0666 file the host put in /usr cannot be written (EROFS: the bind is
    # read-only, not merely protected by permissions) and no new file appears in /usr.
    target = Path(f"/usr/local/share/sbx-sectest-{uuid.uuid4().hex}.txt")
    created = Path(f"/usr/local/share/sbx-sectest-new-{uuid.uuid4().hex}.txt")
    target.write_text("original\n")
    os.chmod(target, 0o666)
    try:
        r = run(sb, f"""
            import os
            def append():
                with open({str(target)!r}, "a") as f:
                    f.write("pwned\\n")
            def create():
                with open({str(created)!r}, "w") as f:
                    f.write("pwned\\n")
            evidence(append=errno_of(append), create=errno_of(create),
                     mkdir=errno_of(os.mkdir, "/usr/lib/sbx-evil"),
                     chmod=errno_of(os.chmod, {str(target)!r}, 0o777),
                     unlink=errno_of(os.unlink, {str(target)!r}),
                     lib=errno_of(open, "/lib/sbx-evil.so", "w"), bin=errno_of(open, "/bin/sbx-evil", "w"))
        """)
        expect(r, Outcome.OK)
        ev = one(r)
        assert ev["append"] == EROFS and ev["create"] == EROFS and ev["mkdir"] == EROFS, ev
        assert ev["chmod"] == EROFS and ev["unlink"] == EROFS, ev
        assert ev["lib"] == EROFS and ev["bin"] == EROFS, ev
        assert target.read_text() == "original\n"
        assert oct(target.stat().st_mode & 0o777) == oct(0o666)
        assert not created.exists()
        assert not Path("/usr/lib/sbx-evil").exists()
    finally:
        target.unlink(missing_ok=True)
        created.unlink(missing_ok=True)


def test_image_venv_is_read_only(sb):
    # Expected: ok; planting a module or .pth file in the image's site-packages (which every later
    # execution would import) fails with EROFS, and numpy on the host is unchanged.
    site = next(Path("/var/lib/sandbox/images/default/venv/lib").glob("python3*/site-packages"))
    np_init = site / "numpy" / "__init__.py"
    digest = hashlib.sha256(np_init.read_bytes()).hexdigest()
    r = run(sb, f"""
        import os
        site = {str(site)!r}
        def plant(name):
            with open(os.path.join(site, name), "w") as f:
                f.write("import os; os.system('id')\\n")
        def patch():
            with open(os.path.join(site, "numpy", "__init__.py"), "a") as f:
                f.write("\\nraise SystemExit('pwned')\\n")
        evidence(pth=errno_of(plant, "zz_evil.pth"), mod=errno_of(plant, "sitecustomize.py"),
                 patch=errno_of(patch), rename=errno_of(os.rename, os.path.join(site, "numpy"), "/work/np"),
                 mkdir=errno_of(os.mkdir, os.path.join(site, "evilpkg")))
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["pth"] == ev["mod"] == ev["mkdir"] == EROFS, ev
    assert ev["patch"] in (EROFS, EACCES), ev
    assert ev["rename"] in (EROFS, EXDEV), ev
    assert not (site / "zz_evil.pth").exists() and not (site / "sitecustomize.py").exists()
    assert hashlib.sha256(np_init.read_bytes()).hexdigest() == digest
    r2 = sb.run("import numpy; print(numpy.__version__)")
    expect(r2, Outcome.OK)


def test_guest_code_is_read_only(sb):
    # Expected: ok; the engine's own code (/opt/sandbox/guest, run by every later child) cannot be
    # changed or extended, and the host copy is byte-for-byte unchanged.
    guest_root = Path("/var/lib/sandbox/guest")
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in guest_root.rglob("*.py")}
    r = run(sb, """
        import os
        def patch(name):
            with open("/opt/sandbox/guest/" + name, "a") as f:
                f.write("\\nimport os; os._exit(0)\\n")
        def create(name):
            with open("/opt/sandbox/guest/" + name, "w") as f:
                f.write("pwned")
        evidence(runner=errno_of(patch, "runner.py"), zygote=errno_of(patch, "zygote.py"),
                 new=errno_of(create, "evil.py"), unlink=errno_of(os.unlink, "/opt/sandbox/guest/runner.py"),
                 top=errno_of(create, "../sitecustomize.py"), listing=sorted(os.listdir("/opt/sandbox/guest")))
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["runner"] in (EROFS, EACCES) and ev["zygote"] in (EROFS, EACCES), ev
    assert ev["new"] == ev["unlink"] == ev["top"] == EROFS, ev
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in guest_root.rglob("*.py")}
    assert {p: h for p, h in after.items() if p in before} == before
    assert not any(p.name in ("evil.py", "sitecustomize.py") for p in after)


def test_root_filesystem_is_read_only(sb):
    # Expected: ok; the jail's root (a tmpfs nsjail mounts read-only) takes no new files, so
    # nothing can shadow /etc/ld.so.preload or add a directory the next run would use.
    r = run(sb, """
        import os
        evidence(preload=errno_of(open, "/etc/ld.so.preload", "w"), root=errno_of(open, "/evil", "w"),
                 var=errno_of(os.mkdir, "/var/evil"), passwd=errno_of(open, "/etc/passwd", "a"),
                 hosts=errno_of(open, "/etc/hosts", "w"))
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["preload"] == ev["root"] == ev["var"] == EROFS, ev
    assert ev["passwd"] in (EROFS, EACCES) and ev["hosts"] in (EROFS, EACCES), ev


def test_mnt_is_a_fixed_link_into_the_runs_own_tmp(sb):
    # Expected: ok; /mnt is a link the read-only root holds (it cannot be replaced) to /tmp/mnt, a
    # directory of the run's fresh /tmp, whose `data` leads to the working directory.
    r = run(sb, """
        import os
        open("/mnt/x", "w").write("1")
        evidence(link=os.readlink("/mnt"), unlink=errno_of(os.unlink, "/mnt"), data=os.path.realpath("/mnt/data"),
                 landed=os.path.exists("/tmp/mnt/x"), mode=oct(os.stat("/tmp/mnt").st_mode & 0o7777))
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["link"] == jail.MNT_TARGET == "/tmp/mnt" and ev["unlink"] in (EROFS, EACCES, EPERM), ev
    assert ev["data"] == jail.WORKDIR and ev["landed"] and ev["mode"] == "0o1777", ev
    again = run(sb, "import os\nevidence(listing=sorted(os.listdir('/mnt')))")
    assert one(again)["listing"] == ["data"]  # nothing of the run before


def test_symlinks_in_workdir_pointing_outside(sb, host_secret):
    # Expected: ok; links planted in /work lead nowhere useful inside the jail, and the host,
    # collecting artefacts, never follows them (Judge0 CVE-2024-28185): no returned file carries
    # the content of /etc/passwd, the host secret or anything outside the work dir.
    secret = str(host_secret.files[0])
    r = run(sb, f"""
        import os
        links = {{"shadow": "/etc/shadow", "zenv": "/proc/1/environ", "zroot": "/proc/1/root",
                  "secret": {secret!r}, "passwd.txt": "/etc/passwd", "up": "../../..", "self": "/proc/self/root/etc"}}
        for name, target in links.items():
            os.symlink(target, name)
        os.mkdir("d")
        os.symlink("/etc", "d/etc")
        reads = {{}}
        for name in ("shadow", "zenv", "secret", "zroot/etc/passwd", "up/etc/shadow"):
            try:
                reads[name] = open(name).read()[:100]
            except OSError as e:
                reads[name] = e.errno
        with open("plain.txt", "w") as f:
            f.write("mine")
        evidence(reads=reads)
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert all(v == ENOENT for v in ev["reads"].values()), ev
    assert host_secret.token not in r.stdout
    assert [f.path for f in r.files] == ["plain.txt"], [f.path for f in r.files]
    assert all(b"root:" not in f.data and host_secret.token.encode() not in f.data for f in r.files)


def test_hard_links_to_files_outside_fail(sb):
    # Expected: ok; a hard link to a file of a read-only bind (to read it after a later chmod,
    # or to pin a shared inode) fails with EXDEV, and no link appears.
    r = run(sb, """
        import os
        targets = {"passwd": "/etc/passwd", "python": "/usr/bin/python3", "guest": "/opt/sandbox/guest/zygote.py",
                   "ldcache": "/etc/ld.so.cache", "null": "/dev/null"}
        res = {}
        for name, t in targets.items():
            res[name] = errno_of(os.link, t, "/work/" + name)
        res["tmp"] = errno_of(os.link, "/usr/bin/python3", "/tmp/py")
        evidence(res=res, work=sorted(os.listdir("/work")), tmp=sorted(os.listdir("/tmp")))
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert all(v == EXDEV for v in ev["res"].values()), ev
    assert ev["work"] == ["main.py"] and "py" not in ev["tmp"], ev   # only the program's own file


@pytest.mark.parametrize("path", ["/proc/1/environ", "/proc/1/mem", "/proc/1/root/etc/passwd", "/proc/1/maps",
                                  "/proc/1/cmdline", "/proc/1/fd/0", "/proc/1/task/1/mem"])
def test_zygote_proc_entries_are_hidden(sb, path):
    # Expected: ok; hidepid=invisible hides pid 1 (the zygote, another uid): its environment,
    # memory, root, fds and maps are ENOENT, so no peeking at or poking into the zygote.
    r = run(sb, f"""
        import os
        def read():
            fd = os.open({path!r}, os.O_RDWR if {path!r}.endswith("mem") else os.O_RDONLY)
            try:
                return os.read(fd, 64)
            finally:
                os.close(fd)
        try:
            got = read()
            evidence(err=None, got=got.hex())
        except OSError as e:
            evidence(err=e.errno, exists=os.path.exists("/proc/1"), listed="1" in os.listdir("/proc"))
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["err"] == ENOENT, ev
    assert ev["exists"] is False and ev["listed"] is False, ev


def test_hidepid_only_own_processes_visible(sb):
    # Expected: ok; /proc lists only the execution itself: never the zygote or nsjail, and not
    # even its own (non-dumpable) child, which nonetheless exists (kill(pid, 0) succeeds).
    r = run(sb, """
        import os, time
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        visible = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        child_alive = errno_of(os.kill, pid, 0)
        zygote = errno_of(os.kill, 1, 0)
        os.kill(pid, 9); os.waitpid(pid, 0)
        evidence(visible=visible, me=os.getpid(), child=pid, ppid=os.getppid(), child_alive=child_alive,
                 zygote=zygote, parent=errno_of(os.kill, os.getppid(), 0))
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["visible"] == [ev["me"]], ev
    # The parent (the fork server) exists, runs as another uid and is hidden too.
    assert ev["child_alive"] is None and ev["zygote"] == EPERM and ev["parent"] == EPERM, ev
    assert ev["ppid"] not in ev["visible"], ev


def test_proc_self_root_is_the_jail_root(sb):
    # Expected: ok; /proc/self/root and /proc/self/cwd lead back into the jail, not the host.
    r = run(sb, """
        import os
        evidence(root=sorted(os.listdir("/proc/self/root")), slash=sorted(os.listdir("/")),
                 link=os.readlink("/proc/self/root"), cwd=os.readlink("/proc/self/cwd"),
                 shadow=errno_of(open, "/proc/self/root/etc/shadow"),
                 home=errno_of(os.listdir, "/proc/self/root/home"))
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["root"] == ev["slash"] and ev["link"] == "/" and ev["cwd"] == "/work", ev
    assert "home" not in ev["root"] and "root" not in ev["root"] and "sys" not in ev["root"], ev
    assert ev["shadow"] == ENOENT and ev["home"] == ENOENT, ev


def test_mknod_device_nodes_refused(sb):
    # Expected: ok; creating device nodes (kernel memory, the host disk) is refused with EPERM
    # (no CAP_MKNOD; the tmpfs mounts are nodev as a second line) and no node appears.
    r = run(sb, """
        import os, stat
        res = {}
        for where in ("/work", "/tmp", "/dev/shm"):
            res[where + "/mem"] = errno_of(os.mknod, where + "/mem", stat.S_IFCHR | 0o666, os.makedev(1, 1))
            res[where + "/vda"] = errno_of(os.mknod, where + "/vda", stat.S_IFBLK | 0o666, os.makedev(254, 0))
        evidence(res=res, left=[p for p in res if os.path.lexists(p)])
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert all(v == EPERM for v in ev["res"].values()), ev
    assert ev["left"] == [], ev


def test_dev_has_only_harmless_nodes(sb):
    # Expected: ok; /dev holds null, zero, full, random, urandom and shm only; the kernel's
    # memory, log, console, disks and ttys are absent.
    r = run(sb, """
        import os
        probes = {p: errno_of(open, p, "rb") for p in ("/dev/mem", "/dev/kmem", "/dev/port", "/dev/kmsg",
                  "/dev/vda", "/dev/sda", "/dev/tty", "/dev/console", "/dev/ptmx", "/dev/fuse", "/dev/kvm",
                  "/dev/net/tun", "/dev/vsock", "/dev/vhost-vsock")}
        evidence(dev=sorted(os.listdir("/dev")), probes=probes)
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert set(ev["dev"]) <= {"null", "zero", "full", "random", "urandom", "shm"}, ev
    assert all(v == ENOENT for v in ev["probes"].values()), ev


def test_sys_is_absent(sb):
    # Expected: ok; there is no /sys (no cgroup files to raise limits with, no kernel knobs).
    r = run(sb, """
        import os
        def raise_mem():
            with open("/sys/fs/cgroup/memory/memory.limit_in_bytes", "w") as f:
                f.write("-1")
        evidence(exists=os.path.exists("/sys"), cg=errno_of(raise_mem), mk=errno_of(os.mkdir, "/sys"),
                 kernel=errno_of(os.listdir, "/sys/kernel"))
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["exists"] is False and ev["cg"] == ENOENT and ev["kernel"] == ENOENT and ev["mk"] == EROFS, ev


def test_proc_sys_and_sysrq_not_writable(sb):
    # Expected: ok; kernel knobs under /proc/sys and the sysrq trigger cannot be written.
    r = run(sb, """
        def w(path, data):
            with open(path, "w") as f:
                f.write(data)
        evidence(sysrq=errno_of(w, "/proc/sysrq-trigger", "b"), core=errno_of(w, "/proc/sys/kernel/core_pattern", "|/tmp/x"),
                 host=errno_of(w, "/proc/sys/kernel/hostname", "pwned"), drop=errno_of(w, "/proc/sys/vm/drop_caches", "3"),
                 oom=errno_of(w, "/proc/self/oom_score_adj", "-1000"),
                 core_pattern=open("/proc/sys/kernel/core_pattern").read())
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    for k in ("sysrq", "core", "host", "drop"):
        assert ev[k] in (EACCES, EROFS, EPERM, ENOENT), ev  # ENOENT: a kernel without sysrq
    assert ev["oom"] == EACCES, ev  # lowering oom_score_adj needs CAP_SYS_RESOURCE
    assert "/tmp/x" not in ev["core_pattern"], ev


def test_mounts_are_read_only_and_writable_ones_are_noexec(sb):
    # Expected: ok; every mount but the execution's own tmpfs, /proc and three character devices
    # is read-only (nsjail #125), no host directory beyond the image is visible, and the
    # writable mounts are nosuid,nodev,noexec.
    r = run(sb, """
        mounts = []
        for line in open("/proc/self/mountinfo"):
            f = line.split()
            mounts.append((f[4], f[5].split(","), f[3]))
        evidence(mounts=mounts)
    """)
    expect(r, Outcome.OK)
    mounts = one(r)["mounts"]
    writable = {"/work", "/tmp", "/dev/shm", "/proc", *(f"/dev/{n}" for n in devices.NODES)}
    for point, opts, _ in mounts:
        if point not in writable:
            assert "ro" in opts, (point, opts)
    top = {}
    for point, opts, _ in mounts:
        top[point] = opts  # the last mount on a point is the visible one
    for point in ("/work", "/tmp", "/dev/shm"):
        assert {"rw", "nosuid", "nodev", "noexec"} <= set(top[point]), (point, top[point])
    allowed = {"/", "/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc/ld.so.cache", "/etc/localtime", "/etc/passwd",
               "/etc/group", "/etc/hosts", "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom",
               "/var/lib/sandbox/images/default", "/opt/sandbox", "/tmp", "/work", "/dev/shm", "/proc",
               jail.MASK_DIR, *jail.proc_masks(),  # the stand-ins for /proc's host-wide counters (read-only)
               protocol.PACKAGES_MOUNT}  # the package cache's sets (read-only, host/packages.py)
    assert {p for p, _, _ in mounts} <= allowed, mounts
    roots = {root for p, _, root in mounts if p == protocol.PACKAGES_MOUNT}
    assert all(root.endswith("/packages/sets") for root in roots), roots
    roots = {root for p, _, root in mounts if p == "/opt/sandbox"}
    assert all(root.startswith("/var/lib/sandbox/guest/") for root in roots), roots


def test_noexec_workdir_cannot_run_dropped_binaries(sb):
    # Expected: ok; a binary or script written to /work, /tmp or /dev/shm cannot be executed
    # (noexec). (Defence in depth only: ctypes can run native code anyway; the filter is the wall.)
    r = run(sb, """
        import os, shutil, subprocess
        res = {}
        for d in ("/work", "/tmp", "/dev/shm"):
            p = d + "/sh"
            shutil.copyfile("/bin/sh", p)
            os.chmod(p, 0o755)
            res[d] = errno_of(subprocess.run, [p, "-c", "echo EXECUTED"])
            s = d + "/script.sh"
            with open(s, "w") as f:
                f.write("#!/bin/sh\\necho EXECUTED\\n")
            os.chmod(s, 0o755)
            res[d + "-script"] = errno_of(subprocess.run, [s])
        evidence(res=res)
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert "EXECUTED" not in r.stdout, describe(r)
    assert all(v == EACCES for v in ev["res"].values()), ev


def test_kernel_pointers_and_physical_addresses_not_exposed(sb):
    # Expected: ok; without capabilities, /proc/kallsyms shows zeroed addresses (no KASLR bypass),
    # /proc/self/pagemap shows no physical frame numbers (no rowhammer targeting), and the kernel
    # log is unreadable.
    r = run(sb, """
        import os, struct
        addrs = set()
        try:
            with open("/proc/kallsyms") as f:
                for _, line in zip(range(2000), f):
                    addrs.add(line.split()[0])
        except OSError as e:
            addrs = {e.errno}
        buf = bytearray(4096)
        buf[0] = 1
        try:
            with open("/proc/self/pagemap", "rb") as f:
                f.seek(id(buf) // 4096 * 8)
                pfn = struct.unpack("<Q", f.read(8))[0] & ((1 << 55) - 1)
        except OSError as e:
            pfn = -e.errno
        evidence(addrs=sorted(str(a) for a in addrs), pfn=pfn, kmsg=errno_of(open, "/proc/kmsg", "rb"))
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["addrs"] in (["0000000000000000"], [str(EACCES)], [str(ENOENT)]), ev["addrs"][:5]
    assert ev["pfn"] in (0, -EACCES), ev  # zeroed frame numbers, or no pagemap at all
    assert ev["kmsg"] in (EACCES, EPERM, ENOENT), ev
