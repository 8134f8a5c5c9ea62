"""Network: only AF_UNIX sockets exist for user code (seccomp refuses every other family with
EAFNOSUPPORT before the kernel sees it), the jail has its own empty network namespace, and
nothing an execution leaves listening survives into the next one.
"""

from __future__ import annotations

import errno
import socket
import uuid

import pytest

from sandbox import Outcome

from ._helpers import describe, expect, one, run

FAMILIES = [
    ("inet_stream", "AF_INET", "SOCK_STREAM", 0),
    ("inet_dgram", "AF_INET", "SOCK_DGRAM", 0),
    ("inet6_stream", "AF_INET6", "SOCK_STREAM", 0),
    ("raw_icmp", "AF_INET", "SOCK_RAW", 1),
    ("raw_ipv6", "AF_INET6", "SOCK_RAW", 58),
    ("netlink_route", "AF_NETLINK", "SOCK_RAW", 0),
    ("netlink_audit", "AF_NETLINK", "SOCK_RAW", 9),
    ("packet", "AF_PACKET", "SOCK_RAW", 0x0300),
    ("vsock", "AF_VSOCK", "SOCK_STREAM", 0),
    ("alg", "AF_ALG", "SOCK_SEQPACKET", 0),
    ("bluetooth", "AF_BLUETOOTH", "SOCK_STREAM", 0),
]


@pytest.mark.parametrize("name,family,kind,proto", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_non_unix_socket_families_are_refused(sb, name, family, kind, proto):
    # Expected: ok; socket() fails with EAFNOSUPPORT (the filter's answer; the kernel would
    # have created most of these, or answered EPERM/EACCES), so no socket fd ever exists.
    r = run(sb, f"""
        import socket, os
        fam = getattr(socket, {family!r}, None) or {{"AF_ALG": 38, "AF_BLUETOOTH": 31, "AF_VSOCK": 40}}[{family!r}]
        before = sorted(os.listdir("/proc/self/fd"))
        try:
            s = socket.socket(fam, getattr(socket, {kind!r}), {proto})
            evidence(err=None, fd=s.fileno())
        except OSError as e:
            evidence(err=e.errno, fds_same=sorted(os.listdir("/proc/self/fd")) == before)
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["err"] == errno.EAFNOSUPPORT and ev["fds_same"], ev


def test_socketpair_of_inet_family_is_refused(sb):
    # Expected: ok; socketpair() is filtered on its family too: AF_UNIX works, anything else
    # gets EAFNOSUPPORT from the filter.
    r = run(sb, """
        import socket
        a, b = socket.socketpair(socket.AF_UNIX)
        a.send(b"ping")
        ret, err = raw_syscall(53, socket.AF_INET, socket.SOCK_STREAM, 0, 0)
        ret6, err6 = raw_syscall(53, socket.AF_NETLINK, socket.SOCK_RAW, 0, 0)
        evidence(unix=b.recv(4).decode(), inet=(ret, err), netlink=(ret6, err6))
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["unix"] == "ping", ev
    assert ev["inet"] == [-1, errno.EAFNOSUPPORT] and ev["netlink"] == [-1, errno.EAFNOSUPPORT], ev


def test_socket_family_with_high_bits_set_is_not_smuggled(sb):
    # Expected: ok; AF_INET with garbage in the upper 32 bits of the register (the kernel reads
    # an int) is compared as a 64-bit value by the filter: not AF_UNIX, so refused.
    r = run(sb, """
        ret, err = raw_syscall(41, (1 << 32) | 2, 1, 0)
        ret2, err2 = raw_syscall(41, (1 << 32) | 1, 1, 0)
        evidence(inet=(ret, err), unix_high=(ret2, err2))
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["inet"] == [-1, errno.EAFNOSUPPORT], ev
    assert ev["unix_high"][0] == -1, ev  # refused too: only the exact value 1 is AF_UNIX


def test_dns_and_http_fail(sb):
    # Expected: ok; name resolution and an HTTP request to a literal IP both fail (no resolver
    # reachable, no inet sockets), and the program learns nothing about the host network.
    r = run(sb, """
        import socket, urllib.request
        res = {}
        for host in ("example.com", "localhost", "metadata.google.internal"):
            try:
                res[host] = socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)[0][4]
            except OSError as e:
                res[host] = type(e).__name__
        try:
            urllib.request.urlopen("http://169.254.169.254/latest/meta-data/", timeout=2)
            res["http"] = "CONNECTED"
        except Exception as e:
            res["http"] = repr(e)
        evidence(res=res)
    """)
    expect(r, Outcome.OK)
    ev = one(r)["res"]
    assert ev["example.com"] == "gaierror" and ev["metadata.google.internal"] == "gaierror", ev
    assert "CONNECTED" not in ev["http"] and "Address family not supported" in ev["http"], ev


def test_network_namespace_has_only_loopback(sb):
    # Expected: ok; the jail's network namespace has one interface, lo, with no traffic and no
    # routes, and /etc/hosts is the jail's own.
    r = run(sb, """
        ifaces = [l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]]
        routes = open("/proc/net/route").read().splitlines()[1:]
        evidence(ifaces=ifaces, routes=routes, hosts=open("/etc/hosts").read(),
                 tcp=open("/proc/net/tcp").read().splitlines()[1:], unix=open("/proc/net/unix").read().splitlines()[1:])
    """)
    expect(r, Outcome.OK)
    ev = one(r)
    assert ev["ifaces"] == ["lo"] and ev["routes"] == [] and ev["tcp"] == [], ev
    assert ev["hosts"] == "127.0.0.1 localhost sandbox\n", ev


def test_host_abstract_unix_socket_unreachable(sb):
    # Expected: ok; an abstract AF_UNIX socket listening on the host (abstract names live in the
    # network namespace, not the filesystem) cannot be reached from the jail: ECONNREFUSED.
    name = f"sbx-sectest-host-{uuid.uuid4().hex}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind("\0" + name)
    srv.listen(5)
    srv.setblocking(False)
    try:
        r = run(sb, f"""
            import socket
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            evidence(err=errno_of(s.connect, "\\0" + {name!r}))
        """)
        expect(r, Outcome.OK)
        assert one(r)["err"] == errno.ECONNREFUSED, describe(r)
        with pytest.raises(BlockingIOError):
            srv.accept()  # nothing got through
    finally:
        srv.close()


def test_host_unix_socket_files_unreachable(sb):
    # Expected: ok; well-known host daemon sockets (docker, systemd, dbus, nscd) do not exist in
    # the jail's filesystem.
    r = run(sb, """
        import socket
        res = {}
        for p in ("/var/run/docker.sock", "/run/docker.sock", "/run/systemd/private", "/run/dbus/system_bus_socket",
                  "/var/run/nscd/socket", "/run/containerd/containerd.sock"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            res[p] = errno_of(s.connect, p)
        evidence(res=res)
    """)
    expect(r, Outcome.OK)
    assert all(v == errno.ENOENT for v in one(r)["res"].values()), describe(r)


def test_abstract_socket_left_listening_by_one_run_is_gone_in_the_next(sb1):
    # Expected: ok twice; run 1 forks a daemon that listens on an abstract socket (shared by all
    # runs of the jail's network namespace) and proves it answers; the zygote kills it when run 1
    # ends, so run 2 gets ECONNREFUSED instead of a channel to the previous execution.
    name = f"sbx-sectest-{uuid.uuid4().hex}"
    r1 = run(sb1, f"""
        import os, socket, time
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind("\\0" + {name!r})
        srv.listen(8)
        if os.fork() == 0:
            try:
                os.setsid()  # refused: nothing leaves the execution's process group
            except PermissionError:
                pass
            while True:
                c, _ = srv.accept()
                c.sendall(b"leaked-from-run-1")
                c.close()
        srv.close()
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect("\\0" + {name!r})
        evidence(got=c.recv(100).decode())
    """)
    expect(r1, Outcome.OK)
    assert one(r1)["got"] == "leaked-from-run-1", describe(r1)
    r2 = run(sb1, f"""
        import socket
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            c.connect("\\0" + {name!r})
            evidence(err=None, got=c.recv(100).decode())
        except OSError as e:
            evidence(err=e.errno)
    """)
    expect(r2, Outcome.OK)
    assert one(r2)["err"] == errno.ECONNREFUSED, describe(r2)


def test_unix_socket_file_in_tmp_does_not_survive(sb1):
    # Expected: ok twice; a socket file bound in /tmp (and one in /work) by run 1 is gone in run 2
    # (fresh tmpfs mounts, and its owner was killed).
    r1 = run(sb1, """
        import os, socket
        for p in ("/tmp/sbx.sock", "/work/sbx.sock", "/dev/shm/sbx.sock"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(p); s.listen(1)
        if os.fork() == 0:
            import time; time.sleep(60)
        evidence(made=sorted(os.listdir("/tmp")))
    """)
    expect(r1, Outcome.OK)
    assert "sbx.sock" in one(r1)["made"]
    r2 = run(sb1, """
        import os, socket
        res = {}
        for p in ("/tmp/sbx.sock", "/work/sbx.sock", "/dev/shm/sbx.sock"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            res[p] = (os.path.lexists(p), errno_of(s.connect, p))
        evidence(res=res)
    """)
    expect(r2, Outcome.OK)
    assert all(v == [False, errno.ENOENT] for v in one(r2)["res"].values()), describe(r2)
