"""Compile the seccomp policy (policies/seccomp.toml, sent by the host as JSON) into BPF.

The zygote compiles once with pyseccomp and exports the program; each child loads the bytes
with one prctl. Anything not allowed kills the whole process (outcome policy_violation), and
so does any syscall from a foreign architecture (i386 via int 0x80, x32).
"""

from __future__ import annotations

import errno
import os

import pyseccomp as sc

_OPS = {"eq": sc.EQ, "ne": sc.NE, "lt": sc.LT, "le": sc.LE, "gt": sc.GT, "ge": sc.GE, "masked_eq": sc.MASKED_EQ}


def _action(name: str) -> int:
    if name == "allow":
        return sc.ALLOW
    if name == "kill":
        return sc.KILL_PROCESS
    if name.startswith("E") and hasattr(errno, name):
        return sc.ERRNO(getattr(errno, name))
    raise ValueError(f"unknown seccomp action {name!r}")


def _arg(cond: dict) -> sc.Arg:
    op = _OPS[cond["op"]]
    if op == sc.MASKED_EQ:
        return sc.Arg(cond["arg"], op, cond["mask"], cond["value"])
    return sc.Arg(cond["arg"], op, cond["value"])


def compile_policy(policy: dict) -> bytes:
    """Build the filter described by the policy and return its BPF program."""
    f = sc.SyscallFilter(_action(policy.get("default", "kill")))
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    f.set_attr(sc.Attr.CTL_NNP, 0)  # the child sets no_new_privs itself, earlier, with its caps drop
    for name in policy["allow"]:
        f.add_rule(sc.ALLOW, name)
    for name, err in policy.get("errno", {}).items():
        f.add_rule(_action(err), name)
    for rule in policy.get("rules", []):
        f.add_rule(_action(rule["action"]), rule["syscall"], *(_arg(c) for c in rule["when"]))
    fd = os.memfd_create("seccomp-bpf")
    try:
        f.export_bpf(_Fd(fd))
        return os.pread(fd, 1 << 20, 0)
    finally:
        os.close(fd)


class _Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd
