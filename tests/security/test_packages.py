"""Packages on demand, attacked (host/packages.py, guest/runner.py, the jail's read-only mount).

- A package set cannot be written from a jail: not its files, not its directories, not the cache.
- One tenant's set reveals nothing of another's request: the cache's directory cannot be listed from
  a jail, a set's name is a keyed hash no tenant can compute, and a run's sys.path holds only its set.
- The jail still has no network while it uses a package set, even when the package's own code (run
  at import) tries to reach out.
- A wheel is hostile too: a member with an absolute path, a `..` component or a symlink is refused
  on the host before anything lands in the cache, and nothing is left behind.
"""

from __future__ import annotations

import errno
import hashlib
import hmac

import pytest

from sandbox import InvalidInputError, Outcome

from _packages import DEPENDENT, HELLO, PackageWorld, make_wheel

from ._helpers import describe, expect, one, run

NOSY = "sbtest-nosy"          # its module tries the network when it is imported
ESCAPES = {
    "sbtest-dotdot": {"../../escaped.py": "x = 1\n"},
    "sbtest-absolute": {"/tmp/escaped.py": "x = 1\n"},
}
SYMLINK = "sbtest-symlink"


def _hostile_wheels(directory):
    make_wheel(directory, NOSY, "1.0", {"sbtest_nosy.py": (
        "import socket, errno\n"
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 443), timeout=2)\n"
        "    REACHED = 'CONNECTED'\n"
        "except OSError as e:\n"
        "    REACHED = e.errno\n")})
    for name, files in ESCAPES.items():
        make_wheel(directory, name, "1.0", {f"{name.replace('-', '_')}.py": "", **files})
    path = make_wheel(directory, SYMLINK, "1.0", {"sbtest_symlink.py": ""})
    import zipfile
    with zipfile.ZipFile(path, "a") as zf:
        info = zipfile.ZipInfo("sbtest_symlink_link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with PackageWorld(tmp_path_factory.mktemp("packages-sec"), allow=[HELLO, DEPENDENT, NOSY, SYMLINK, *ESCAPES]) as w:
        _hostile_wheels(w.wheelhouse)
        yield w


def test_a_set_cannot_be_written_from_the_jail(psb):
    # Expected: ok; every write into the set (a new file, its files, its directories, the cache's
    # directory) fails: the mount is read-only and everything in it belongs to the host's root.
    r = run(psb, """
        import sbtest_hello, os
        pkg = os.path.dirname(sbtest_hello.__file__)
        site = os.path.dirname(pkg)
        setdir = os.path.dirname(site)
        res = {
            "new_file": errno_of(open, os.path.join(pkg, "planted.py"), "w"),
            "append": errno_of(open, sbtest_hello.__file__, "a"),
            "unlink": errno_of(os.unlink, sbtest_hello.__file__),
            "rename": errno_of(os.rename, pkg, pkg + "_moved"),
            "chmod": errno_of(os.chmod, sbtest_hello.__file__, 0o777),
            "mkdir_in_set": errno_of(os.mkdir, os.path.join(setdir, "x")),
            "mkdir_in_cache": errno_of(os.mkdir, "/opt/packages/planted"),
            "rmdir_set": errno_of(os.rmdir, setdir),
            "utime": errno_of(os.utime, sbtest_hello.__file__),
        }
        evidence(res=res, where=pkg)
    """, packages=[HELLO])
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["where"].startswith("/opt/packages/"), ev
    for what, err in ev["res"].items():
        assert err in (errno.EROFS, errno.EACCES, errno.EPERM), (what, ev)
    # and the set is as it was
    r = psb.run("import sbtest_hello; print(sbtest_hello.greet('x'))", packages=[HELLO])
    assert r.stdout == "hello x, v2\n", describe(r)


def test_one_tenants_set_is_not_visible_from_another_run(psb, world):
    # Expected: ok; tenant A's run uses a set; tenant B's run (another set, or none) cannot list the
    # cache, does not have A's set on its path, and cannot name it: the name is an HMAC under a host
    # secret, not a hash B could compute from the public wheel hashes.
    a = psb.run("import sbtest_dependent, sys; print([p for p in sys.path if p.startswith('/opt/packages')][0])",
                packages=[DEPENDENT])
    assert a.outcome is Outcome.OK, describe(a)
    a_set = a.stdout.strip()
    r = run(psb, """
        import os, sys
        evidence(list_cache=errno_of(os.listdir, "/opt/packages"),
                 scandir=errno_of(lambda: list(os.scandir("/opt/packages"))),
                 on_path=[p for p in sys.path if p.startswith("/opt/packages")],
                 glob=__import__("glob").glob("/opt/packages/*"))
    """, packages=[HELLO])
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["list_cache"] == errno.EACCES and ev["scandir"] == errno.EACCES, ev
    assert ev["glob"] == [], ev
    assert len(ev["on_path"]) == 1 and ev["on_path"][0] != a_set, ev
    # the set's name is not the plain hash of what it holds
    found = psb.packages.prepare([DEPENDENT])
    meta = found.packages
    lines = "\n".join(f"{n}=={meta[n]}" for n in sorted(meta))
    assert found.key != hashlib.sha256(lines.encode()).hexdigest()
    assert found.key != hmac.new(b"", lines.encode(), hashlib.sha256).hexdigest()
    secret = world.cache / "secret"
    assert secret.stat().st_mode & 0o777 == 0o600 and not (world.cache / "sets" / "secret").exists()


def test_no_network_with_a_package_set(psb):
    # Expected: ok; the package's import-time connection attempt fails (EAFNOSUPPORT: only AF_UNIX
    # sockets exist), and the run's own probes find one interface, lo, no route, no resolver.
    r = run(psb, """
        import socket, sbtest_nosy
        res = {"package": sbtest_nosy.REACHED}
        try:
            socket.getaddrinfo("pypi.org", 443)
            res["dns"] = "RESOLVED"
        except OSError as e:
            res["dns"] = type(e).__name__
        res["inet"] = errno_of(socket.socket, socket.AF_INET, socket.SOCK_STREAM)
        res["ifaces"] = [l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]]
        res["routes"] = open("/proc/net/route").read().splitlines()[1:]
        evidence(**res)
    """, packages=[NOSY])
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["package"] == errno.EAFNOSUPPORT, ev
    assert ev["inet"] == errno.EAFNOSUPPORT and ev["dns"] == "gaierror", ev
    assert ev["ifaces"] == ["lo"] and ev["routes"] == [], ev


@pytest.mark.parametrize("name,message", [
    ("sbtest-dotdot", "unsafe path '../../escaped.py'"),
    ("sbtest-absolute", "unsafe path '/tmp/escaped.py'"),
    (SYMLINK, "'sbtest_symlink_link', which is not a regular file"),
], ids=["dotdot", "absolute", "symlink"])
def test_a_hostile_wheel_is_refused_on_the_host(psb, world, name, message):
    before = world.entries()
    with pytest.raises(InvalidInputError, match=message):
        psb.run("print(1)", packages=[name])
    assert world.entries() == (before[0], [])
    assert not (world.cache / "escaped.py").exists() and not (world.cache.parent / "escaped.py").exists()
    import os
    assert not os.path.exists("/tmp/escaped.py")


@pytest.mark.parametrize("plant", ["symlink", "hardlink", "fifo"])
def test_the_host_adopts_no_link_the_unpacking_jail_planted(tmp_path, plant):
    # Expected: what a subverted unpacking jail leaves behind (a symlink to a host file, a hard link,
    # a fifo) is refused before the host chowns anything or the set enters the cache.
    import os

    from sandbox.errors import SandboxError
    from sandbox.host.packages import _adopt

    site = tmp_path / "site"
    (site / "pkg").mkdir(parents=True)
    (site / "pkg" / "__init__.py").write_text("")
    victim = tmp_path / "victim"
    victim.write_text("host file")
    os.chown(victim, 12345, 12345)
    if plant == "symlink":
        os.symlink(victim, site / "pkg" / "evil")
    elif plant == "hardlink":
        os.link(victim, site / "pkg" / "evil")
    else:
        os.mkfifo(site / "pkg" / "evil")
    with pytest.raises(SandboxError, match="hard link|not a file or directory"):
        _adopt(site, 1 << 20)
    assert os.stat(victim).st_uid == 12345   # never chowned through the link
