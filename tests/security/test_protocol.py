"""The engine's protocol and outcome derivation against a hostile program.

Rules under test: stdout/stderr are plain pipes (a forged frame there is just text); the result
channel (fd 3) is capped and validated by the zygote and again by the host, which re-checks
every artefact (paths, PNGs, sizes); the outcome comes from the engine's timers, cgroup counters
and wait status, never from what the program claims (os._exit(137) is not an OOM kill, and a
program cannot send itself SIGSYS to fake a policy violation); hostile exceptions cannot take the
runner down; bad inputs are refused before anything runs.
"""

from __future__ import annotations

import os

import pytest

from sandbox import InvalidInputError, Outcome

from ._helpers import assert_alive, describe, expect, one, run

def test_forged_frames_on_stdout_are_plain_output(sb):
    # Expected: ok; a frame prefix with absurd lengths and a complete fake "reply" frame written to
    # fd 1 come back verbatim as stdout; the host's framing is not confused.
    r = run(sb, r"""
        import json, os, struct
        huge = b"SBX1" + struct.pack(">IQ", 0xFFFFFFFF, 2**63)
        head = json.dumps({"status": "done", "timed_out": True, "exit_code": -31}).encode()
        fake = b"SBX1" + struct.pack(">IQ", len(head), 0) + head
        os.write(1, huge + fake)
        os.write(1, b"\nafter\n")
    """)
    expect(r, Outcome.OK)
    assert r.stdout.startswith("SBX1") and r.stdout.endswith("\nafter\n"), describe(r)
    assert '"exit_code": -31' in r.stdout and r.exit_code == 0
    assert_alive(sb)


def test_forged_frames_on_stderr_are_plain_output(sb):
    # Expected: ok; the same on fd 2.
    r = run(sb, r"""
        import os, struct
        os.write(2, b"SBX1" + struct.pack(">IQ", 0x7FFFFFFF, 2**62) + b'{"status":"setup_failed"}')
    """)
    expect(r, Outcome.OK)
    assert r.stderr.startswith("SBX1") and "setup_failed" in r.stderr, describe(r)
    assert_alive(sb)


def test_garbage_on_the_result_channel(sb):
    # Expected: error (ResultChannelError: the frame the runner appends no longer parses), never
    # sandbox_error; the engine and the next run are unaffected.
    r = run(sb, r"""
        import os
        os.write(3, b"\x00garbage\xff" * 1000)
        print("done")
    """)
    expect(r, Outcome.ERROR, Outcome.OK)
    assert r.outcome is Outcome.ERROR and r.error is not None and r.error.type == "ResultChannelError", describe(r)
    assert r.stdout == "done\n"
    assert_alive(sb)


def test_result_frame_with_absurd_lengths(sb):
    # Expected: error (ResultChannelError), never sandbox_error; a prefix claiming a 4 GiB header
    # and an exabyte body is rejected from its 16 bytes, nothing is allocated for it.
    r = run(sb, r"""
        import os, struct
        os.write(3, b"SBX1" + struct.pack(">IQ", 0xFFFFFFFF, 2**60))
        os._exit(0)
    """)
    expect(r, Outcome.ERROR)
    assert r.error.type == "ResultChannelError", describe(r)
    r = run(sb, r"""
        import os, struct
        os.write(3, b"SBX1" + struct.pack(">IQ", 10, 2**60) + b"{}")
        os._exit(0)
    """)
    expect(r, Outcome.ERROR)
    assert r.error.type == "ResultChannelError", describe(r)
    assert_alive(sb)


def test_result_channel_flood_is_capped(sb):
    # Expected: error (ResultChannelError: result exceeded its cap); the zygote keeps draining
    # and drops the excess, the host never receives more than the cap.
    r = run(sb, r"""
        import os
        block = b"\0" * (1 << 20)
        for _ in range(8):
            os.write(3, block)
        os._exit(0)
    """, limits={"max_images": 0, "max_file_bytes": 1, "max_output_bytes": 1})
    expect(r, Outcome.ERROR)
    assert r.error.type == "ResultChannelError" and "exceeded" in r.error.message, describe(r)
    assert_alive(sb)


def test_forged_result_frame_cannot_smuggle_unsafe_artefacts(sb):
    # Expected: ok; a complete, well-formed result frame forged on fd 3 (then _exit, so the runner
    # never writes its own) lists files at ../../etc/cron.d/..., /etc/passwd and a backslash path,
    # and images that are not PNGs or are badly named: the host drops every one of them (with a
    # note) and keeps only the honest file.
    r = run(sb, r"""
        import json, os, struct
        png = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000") + b"\0" * 20
        files = [("../../etc/cron.d/sbx-sectest", b"* * * * * root id\n"), ("/etc/passwd", b"root::0:0::/:/bin/sh\n"),
                 ("..\\..\\evil.txt", b"x"), ("ok.txt", b"fine")]
        images = [("../../evil.png", png), ("figure_1.png", b"not a png at all"), ("figure_2.png; rm -rf /", png)]
        head = {"error": None, "exit_code": 0,
                "images": [{"name": n, "size": len(d)} for n, d in images], "images_dropped": 0,
                "files": [{"path": p, "size": len(d)} for p, d in files], "files_dropped": 0}
        body = b"".join(d for _, d in images) + b"".join(d for _, d in files)
        h = json.dumps(head).encode()
        os.write(3, b"SBX1" + struct.pack(">IQ", len(h), len(body)) + h + body)
        os._exit(0)
    """)
    expect(r, Outcome.OK)
    assert [f.path for f in r.files] == ["ok.txt"], [f.path for f in r.files]
    assert r.images == [], r.images
    assert "unsafe path" in r.stderr and "not a valid PNG" in r.stderr, describe(r)
    assert not os.path.exists("/etc/cron.d/sbx-sectest")


def test_tampered_runner_cannot_smuggle_unsafe_artefacts(sb):
    # Expected: ok; user code replaces the runner's own file collector (it shares the process)
    # to report a path escaping the work dir: the host re-validates and drops it.
    r = run(sb, r"""
        import sys
        runner = sys.modules["guest.runner"]
        runner._collect_files = lambda *a, **k: ([("../../../tmp/sbx-sectest-escape", b"pwned"), ("ok.txt", b"y")], 0)
        runner.FIGURES.images.append(("figure_1.png", b"GIF89a not a png", b""))
    """)
    expect(r, Outcome.OK)
    assert [f.path for f in r.files] == ["ok.txt"] and r.images == [], describe(r)
    assert not os.path.exists("/tmp/sbx-sectest-escape")


def test_real_files_with_hostile_names_are_dropped(sb):
    # Expected: ok; files really written to /work under names with control characters or
    # backslashes are not returned (the host refuses such paths), the others are.
    r = run(sb, r"""
        for name in ("evil\nname.txt", "tab\tname.txt", "back\\slash.txt", "esc\x1b[31m.txt", "good.txt"):
            with open(name, "w") as f:
                f.write("x")
    """)
    expect(r, Outcome.OK)
    assert [f.path for f in r.files] == ["good.txt"], [f.path for f in r.files]
    assert "unsafe path" in r.stderr


def test_closing_fds_0_to_3(sb):
    # Expected: error (the runner cannot write its result after the program closed fd 3, and exits
    # 70), never sandbox_error or crashed; the next run works.
    r = run(sb, """
        import os
        for fd in (0, 1, 2, 3):
            try:
                os.close(fd)
            except OSError:
                pass  # the runner already closed fd 0 after reading the request
        x = sum(range(1000))
    """)
    expect(r, Outcome.ERROR)
    assert r.exit_code == 70, describe(r)
    assert_alive(sb)


def test_closing_fds_and_reopening_them_elsewhere(sb):
    # Expected: ok or error but never sandbox_error: the program points fds 1-3 at /dev/null and a
    # file; the engine copes.
    r = run(sb, """
        import os
        null = os.open("/dev/null", os.O_WRONLY)
        f = os.open("/work/captured", os.O_WRONLY | os.O_CREAT)
        os.dup2(null, 1); os.dup2(f, 2); os.dup2(null, 3)
        print("into the void")
    """)
    expect(r, Outcome.OK, Outcome.ERROR)
    assert r.stdout == "", describe(r)
    assert_alive(sb)


def test_exit_137_is_not_an_oom_kill(sb):
    # Expected: error with exit_code 137; the outcome comes from the cgroup OOM counter, not
    # from an exit status that looks like SIGKILL.
    r = run(sb, """
        import os
        os._exit(137)
    """)
    expect(r, Outcome.ERROR)
    assert r.exit_code == 137, describe(r)


def test_sys_exit_codes_are_reported_as_given(sb):
    # Expected: error with the exit code the program chose (sys.exit(3), sys.exit(-1) -> 255,
    # sys.exit("message") -> 1 with the message on stderr).
    for code, want, text in (("3", 3, ""), ("-1", 255, ""), ("'bye bye'", 1, "bye bye")):
        r = run(sb, f"import sys\nsys.exit({code})\n")
        expect(r, Outcome.ERROR)
        assert r.exit_code == want and text in r.stderr, describe(r)


SIGSYS_SENDERS = [
    ("kill", "os.kill(os.getpid(), signal.SIGSYS)"),
    ("raise_signal", "signal.raise_signal(signal.SIGSYS)"),
    ("killpg", "os.killpg(os.getpgrp(), signal.SIGSYS)"),
    ("pthread_kill", "signal.pthread_kill(threading.get_ident(), signal.SIGSYS)"),
    # A forked child signalling its parent: the child exits 42 only if its kill got EPERM.
    ("from_child", "pid = os.fork()\nif pid == 0:\n    os._exit(42 if errno_of(os.kill, os.getppid(), signal.SIGSYS) == 1 else 0)\n"
                   "if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 42:\n    raise PermissionError(1, 'refused in child')"),
]


@pytest.mark.parametrize("name,send", SIGSYS_SENDERS, ids=[s[0] for s in SIGSYS_SENDERS])
def test_program_cannot_fake_a_policy_violation_by_sending_sigsys(sb, name, send):
    # Expected: ok; sending SIGSYS (reserved for the filter) is refused with EPERM, so the program
    # survives and no policy_violation is reported.
    r = run(sb, f"""
        import os, signal, threading
        try:
{chr(10).join("            " + line for line in send.splitlines())}
            evidence(err=None)
        except PermissionError as e:
            evidence(err=e.errno)
        print("SURVIVED")
    """)
    expect(r, Outcome.OK)
    assert one(r)["err"] == 1 and "SURVIVED" in r.stdout, describe(r)


def test_program_cannot_fake_a_policy_violation_with_its_own_seccomp_filter(sb):
    # Expected: NOT policy_violation. The program stacks its own seccomp filter that answers
    # getppid with SECCOMP_RET_TRAP, which makes the kernel deliver SIGSYS; the death then looks
    # exactly like the engine's filter killing it. The engine promises "a SIGSYS death always
    # means a policy violation": that needs the seccomp() syscall refused (it is allowed today).
    r = run(sb, """
        import os, struct
        def stmt(code, k): return struct.pack("HBBI", code, 0, 0, k)
        def jeq(k, jt, jf): return struct.pack("HBBI", 0x15, jt, jf, k)
        prog = stmt(0x20, 0) + jeq(110, 0, 1) + stmt(0x06, 0x00030000) + stmt(0x06, 0x7FFF0000)
        buf = _ct.create_string_buffer(prog)
        class Fprog(_ct.Structure):
            _fields_ = [("len", _ct.c_ushort), ("filter", _ct.c_void_p)]
        fp = Fprog(len(prog) // 8, _ct.addressof(buf))
        ret, err = raw_syscall(317, 1, 0, _ct.addressof(fp))   # seccomp(SET_MODE_FILTER)
        evidence(installed=ret == 0, err=err)
        os.getppid()
        print("SURVIVED")
    """)
    assert r.outcome is not Outcome.POLICY_VIOLATION, (
        "a program forged a policy_violation with its own seccomp filter (RET_TRAP -> SIGSYS)\n" + describe(r))


def test_system_exit_with_hostile_code_object(sb):
    # Expected: error (exit 1); SystemExit carrying an object whose __str__ raises cannot take the
    # runner down.
    r = run(sb, """
        class Code:
            def __str__(self):
                raise RuntimeError("no str for you")
            __repr__ = __str__
        raise SystemExit(Code())
    """)
    expect(r, Outcome.ERROR)
    assert r.exit_code == 1, describe(r)
    assert_alive(sb)


def test_system_exit_raised_from_atexit_and_del(sb):
    # Expected: ok or error, never sandbox_error: SystemExit/exceptions raised from an atexit
    # handler and from __del__ during teardown are contained.
    r = run(sb, """
        import atexit, sys
        class D:
            def __del__(self):
                raise SystemExit(9)
        keep = D()
        atexit.register(lambda: sys.exit(5))
        atexit.register(lambda: 1 / 0)
        print("body done")
    """)
    expect(r, Outcome.OK, Outcome.ERROR)
    assert r.stdout.startswith("body done"), describe(r)
    assert_alive(sb)


def test_huge_exception_message_is_clipped(sb):
    # Expected: error; a 20 MB exception message is clipped to 64 KiB in error.message and the
    # traceback stays bounded, the reply stays small.
    r = run(sb, """
        raise ValueError("x" * 20_000_000)
    """)
    expect(r, Outcome.ERROR)
    assert r.error.type == "ValueError", describe(r)
    assert len(r.error.message) <= (64 << 10) + 100 and len(r.error.traceback) <= (256 << 10) + 100
    assert "characters cut" in r.error.message


def test_recursion_error(sb):
    # Expected: error with type RecursionError and the user's line.
    r = run(sb, """
        def f(n):
            return f(n + 1)
        f(0)
    """)
    expect(r, Outcome.ERROR)
    assert r.error.type == "RecursionError" and r.error.line is not None, describe(r)


def test_c_stack_overflow_is_crashed_not_engine_failure(sb):
    # Expected: crashed (SIGSEGV from overflowing a 512 KiB thread stack in a deeply nested repr
    # with the recursion limit lifted); the engine survives.
    r = run(sb, """
        import sys, threading
        sys.setrecursionlimit(10**8)
        threading.stack_size(512 << 10)
        x = []
        for _ in range(1_000_000):
            x = [x]
        print("BEFORE", flush=True)
        t = threading.Thread(target=repr, args=(x,))
        t.start(); t.join()
        print("SURVIVED")
    """)
    expect(r, Outcome.CRASHED)
    assert r.stdout == "BEFORE\n" and r.exit_code == -11, describe(r)
    assert_alive(sb)


def test_exception_whose_str_raises(sb):
    # Expected: error; the message falls back to a placeholder, the type is still reported.
    r = run(sb, """
        class Evil(Exception):
            def __str__(self):
                raise RuntimeError("boom")
            def __repr__(self):
                raise RuntimeError("boom")
        raise Evil()
    """)
    expect(r, Outcome.ERROR)
    assert r.error.type == "__main__.Evil" and "unprintable" in r.error.message, describe(r)


def test_exception_whose_str_never_returns(sb):
    # Expected: timeout; the runner formats the exception inside the execution's wall clock, so a
    # __str__ that loops forever ends in timeout rather than a stuck slot.
    r = run(sb, """
        class Stuck(Exception):
            def __str__(self):
                while True:
                    pass
        raise Stuck()
    """, timeout=2)
    expect(r, Outcome.TIMEOUT)
    assert_alive(sb)


def test_nul_bytes_in_code(sb):
    # Expected: error (the code does not compile), never sandbox_error.
    r = sb.run("print(1)\0print(2)\n")
    expect(r, Outcome.ERROR)
    assert r.error is not None and r.error.type in ("SyntaxError", "ValueError"), describe(r)


def test_invalid_utf8_output(sb):
    # Expected: ok; invalid UTF-8 and lone surrogates on stdout/stderr are replaced, not fatal.
    r = run(sb, r"""
        import os, sys
        os.write(1, b"\xff\xfe\xc3(\xed\xa0\x80end\n")
        print("\udcff", file=sys.stderr)
    """)
    expect(r, Outcome.OK)
    assert r.stdout.endswith("end\n") and "\ufffd" in r.stdout, describe(r)


@pytest.mark.parametrize("kwargs", [
    {"files": {"../escape.txt": b"x"}},
    {"files": {"/etc/passwd": b"x"}},
    {"files": {"a/../../b": b"x"}},
    {"files": {"nul\0name": b"x"}},
    {"files": {"dir": b"x", "dir/file": b"y"}},
    {"files": {"ctrl\nname": b"x"}},
    {"files": {"x": 12345}},
    {"filename": "../main.py"},
    {"filename": "/tmp/main.py"},
    {"limits": {"timeout_seconds": -1}},
    {"limits": {"memory_bytes": 0}},
    {"limits": {"no_such_limit": 1}},
], ids=["dotdot", "absolute", "inner-dotdot", "nul", "file-and-dir", "newline", "not-bytes", "filename-dotdot",
        "filename-absolute", "negative-timeout", "zero-memory", "unknown-limit"])
def test_bad_inputs_are_refused_before_anything_runs(sb, kwargs):
    # Expected: InvalidInputError raised by run() itself; no execution happens.
    before = sb.stats()
    with pytest.raises(InvalidInputError):
        sb.run("open('/work/RAN', 'w').write('x'); print('RAN')", **kwargs)
    assert sb.stats().replacements == before.replacements


def test_code_that_is_not_a_string_is_refused(sb):
    # Expected: InvalidInputError for bytes code and for oversize code.
    with pytest.raises(InvalidInputError):
        sb.run(b"print(1)")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        sb.run("#" * 100, limits={"max_code_bytes": 10})


def test_deeply_nested_json_in_the_result_frame_does_not_kill_the_jail(sb):
    # Expected: error (ResultChannelError) or ok, never sandbox_error. A 16-byte prefix and a
    # header of 100 000 nested brackets: the zygote's json.loads raises RecursionError, which is
    # not a ValueError; unless it is caught, the zygote (the jail's pid 1) dies, the run ends in
    # sandbox_error and the slot must be rebuilt (seconds of imports) for a 200 KB attack.
    before = sb.stats().replacements
    r = run(sb, """
        import os, struct
        h = b"[" * 100_000 + b"]" * 100_000
        os.write(3, b"SBX1" + struct.pack(">IQ", len(h), 0) + h)
        os._exit(0)
    """)
    assert r.outcome in (Outcome.ERROR, Outcome.OK), describe(r)
    assert sb.stats().replacements == before, "the jail died and had to be replaced"
    assert_alive(sb)


@pytest.mark.parametrize("depth", [900, 950, 975, 990])
def test_nested_json_near_the_recursion_limit_does_not_raise_in_the_caller(sb, depth):
    # Expected: ok or error, and Sandbox.run() returns. A result header nested just below the
    # zygote's recursion limit parses in the zygote, is re-encoded into its reply, and must then
    # be parsed by the host, whose own stack is deeper: the host must not raise RecursionError
    # out of run() (the API never raises for what the code does) nor lose the slot.
    before = sb.stats().replacements
    code = f"""
        import os, struct
        inner = b'{{"a":' * {depth} + b'1' + b'}}' * {depth}
        h = b'{{"error": null, "exit_code": 0, "images": [], "files": [], "x": ' + inner + b'}}'
        os.write(3, b"SBX1" + struct.pack(">IQ", len(h), 0) + h)
        os._exit(0)
    """
    try:
        r = run(sb, code)
    except RecursionError as exc:  # noqa: PERF203
        raise AssertionError(f"Sandbox.run() raised {exc!r} for a program's result frame") from None
    assert r.outcome in (Outcome.OK, Outcome.ERROR), describe(r)
    assert sb.stats().replacements == before, "the jail was replaced"


def test_forged_output_paths_never_clash(sb):
    # Expected: ok, and the returned files form a valid tree. Input names that clash (a file and a
    # directory of the same name) are refused; output paths from a forged result frame are only
    # checked one by one, so "a" and "a/b" both come back and any caller that writes the files out
    # (the CLI's --out) fails on the second one (FileExistsError, a traceback instead of output).
    r = run(sb, """
        import json, os, struct
        files = [("a", b"file"), ("a/b", b"nested"), ("dup.txt", b"1"), ("dup.txt", b"2")]
        head = {"error": None, "exit_code": 0, "images": [], "images_dropped": 0,
                "files": [{"path": p, "size": len(d)} for p, d in files], "files_dropped": 0}
        body = b"".join(d for _, d in files)
        h = json.dumps(head).encode()
        os.write(3, b"SBX1" + struct.pack(">IQ", len(h), len(body)) + h + body)
        os._exit(0)
    """)
    expect(r, Outcome.OK, Outcome.ERROR)
    paths = [f.path for f in r.files]
    assert len(paths) == len(set(paths)), f"duplicate output paths returned: {paths}"
    clashes = [(p, q) for p in paths for q in paths if q.startswith(p + "/")]
    assert clashes == [], f"an output file is also a directory of another output: {clashes}"


def test_a_jail_header_with_a_long_number_nan_or_infinity_is_refused():
    # A header from a jail (parse_header with max_values) is parsed at a small constant per value:
    # numbers longer than protocol.MAX_NUMBER characters, NaN and infinities are refused.
    from sandbox.guest import protocol
    for raw in (b'{"a": ' + b"1" * 25 + b"}", b'{"a": 1.' + b"0" * 30 + b"}", b'{"a": NaN}', b'{"a": 1e999}',
                b'{"a": -Infinity}'):
        with pytest.raises(protocol.ProtocolError):
            protocol.parse_header(raw, max_values=100)
    assert protocol.parse_header(b'{"a": 123, "b": -1.5e3}', max_values=100) == {"a": 123, "b": -1500.0}
