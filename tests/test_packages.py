"""Packages on demand (host/packages.py): a package the image lacks imports and works in a run and
in a session; what the policy refuses (not allowed, source only, would replace a pinned package,
over the size cap) is an InvalidInputError that names it, and leaves nothing in the cache; a
repeated request is a look-up; concurrent requests resolve once. The wheelhouse is written by the
tests themselves (tests/_packages.py), so nothing here needs a network except the one test that
downloads a real package from the index (PyPI, which `make test` needs anyway)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from sandbox import InvalidInputError, Result
from sandbox.host import image as images
from sandbox.host.packages import PackageStore
from sandbox.limits import PackageSettings

from _packages import BIG, DEPENDENT, HELLO, NOT_ALLOWED, OLD_NUMPY, SOURCE_ONLY, PackageWorld

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with PackageWorld(tmp_path_factory.mktemp("packages"),
                      allow=[HELLO, DEPENDENT, BIG, SOURCE_ONLY, OLD_NUMPY, "humanize"]) as w:
        yield w


def test_the_test_packages_are_not_in_the_image(psb):
    names = set(images.load_any("default").manifest["packages"])
    assert not {HELLO, DEPENDENT, BIG} & names
    r = psb.run("import sbtest_hello")
    assert r.outcome.value == "error" and r.error.type == "ModuleNotFoundError", (r.outcome, r.error)


def test_a_package_imports_and_works_in_a_run(psb, world):
    r = psb.run("import sbtest_dependent, sbtest_hello\nprint(sbtest_dependent.VALUE)\nprint(sbtest_hello.__file__)",
                packages=[DEPENDENT])
    assert r.outcome.value == "ok", (r.stderr, r.error)
    value, where = r.stdout.splitlines()
    assert value == "hello dep"                       # the dependency came with it, at the version it pins
    assert where.startswith("/opt/packages/")
    assert r.usage.packages_ms > 0
    again = psb.run("import sbtest_dependent\nprint(sbtest_dependent.VALUE)", packages=[DEPENDENT])
    assert again.stdout == "hello dep\n"
    assert again.usage.packages_ms < 50               # a cached set is a look-up, not a resolution
    assert Result.from_dict(again.to_dict()).usage.packages_ms == again.usage.packages_ms
    # a run that asks for nothing sees nothing of it
    r = psb.run("import sbtest_hello")
    assert r.error is not None and r.error.type == "ModuleNotFoundError"


def test_a_version_specifier_picks_the_version(psb):
    r = psb.run("import sbtest_hello; print(sbtest_hello.greet('x'))", packages=[f"{HELLO}==1.0"])
    assert r.stdout == "hello x\n", (r.stderr, r.error)
    r = psb.run("import sbtest_hello; print(sbtest_hello.greet('x'))", packages=[HELLO])
    assert r.stdout == "hello x, v2\n", (r.stderr, r.error)   # the newest in the wheelhouse


def test_a_pinned_package_with_a_matching_version_is_the_images(psb):
    numpy = images.load_any("default").manifest["packages"]["numpy"]
    r = psb.run("import numpy; print(numpy.__version__)", packages=[f"numpy=={numpy}"])
    assert r.stdout == f"{numpy}\n" and r.usage.packages_ms == 0


def test_a_session_with_packages_and_install(psb):
    with psb.session(packages=[HELLO]) as s:
        assert s.packages == {HELLO: "2.0"}
        assert s.run("import sbtest_hello; print(sbtest_hello.greet('s'))").stdout == "hello s, v2\n"
        r = s.run("import sbtest_dependent")
        assert r.error is not None and r.error.type == "ModuleNotFoundError"
        assert s.install([DEPENDENT]) == {HELLO: "1.0", DEPENDENT: "1.0"}   # resolved together
        r = s.run("import sbtest_dependent; print(sbtest_dependent.VALUE)")
        # sbtest_hello was imported before the install: the session keeps that module
        assert r.outcome.value == "ok" and r.stdout.startswith("hello dep"), (r.stderr, r.error)
        assert s.run("x = 1").usage.packages_ms == 0


def test_a_refused_install_leaves_the_session_as_it_was(psb, world):
    before = world.entries()
    with psb.session(packages=[f"{HELLO}==2.0"]) as s:
        with pytest.raises(InvalidInputError, match="sbtest-hello"):
            s.install([DEPENDENT])   # needs sbtest-hello==1.0
        assert s.packages == {HELLO: "2.0"}
        assert s.run("import sbtest_hello; print(sbtest_hello.greet('s'))").stdout == "hello s, v2\n"
    assert world.entries()[1] == before[1] == []


@pytest.mark.parametrize("spec,message", [
    (NOT_ALLOWED, "'sbtest-forbidden' is not allowed"),
    (SOURCE_ONLY, "'sbtest-source': no wheel.*source distributions are never built"),
    ("numpy==1.0", "'numpy==1.0' conflicts with the image's numpy=="),
    (OLD_NUMPY, "need numpy<1.0, which conflicts with the image's numpy=="),
    (BIG, "'sbtest-big' makes the set larger than max_set_bytes"),
], ids=["not-allowed", "source-only", "pinned", "pinned-by-a-dependency", "over-the-cap"])
def test_refusals_name_the_package_and_leave_nothing(psb, world, spec, message):
    sets, staging = world.entries()
    with pytest.raises(InvalidInputError, match=message):
        psb.run("print(1)", packages=[spec])
    opened = len(psb.sessions())
    with pytest.raises(InvalidInputError, match=message):
        psb.session(packages=[spec])
    assert len(psb.sessions()) == opened               # no session was opened for a refused request
    assert world.entries() == (sets, [])                # no set, no staging directory left


@pytest.mark.parametrize("bad,message", [
    ("humanize", "must be a list"),
    (["humanize @ https://example.com/h.whl"], "URLs, paths and environment markers"),
    (["humanize; python_version > '3'"], "URLs, paths and environment markers"),
    (["-e ."], "options are not accepted"),
    (["not a requirement!"], "not a valid requirement"),
    ([HELLO, HELLO.upper()], "named twice"),
    ([f"p{i}" for i in range(17)], "17 packages exceed"),
])
def test_malformed_requests_are_refused(psb, bad, message):
    with pytest.raises(InvalidInputError, match=message):
        psb.run("print(1)", packages=bad)


def test_concurrent_requests_for_one_set_resolve_once(psb, world):
    store = PackageStore(psb.image, world.settings())
    spec = [f"{HELLO}>=1.0,<2"]
    barrier = threading.Barrier(4)
    got, errors = [], []

    def ask():
        barrier.wait()
        try:
            got.append(store.prepare(spec))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len({g.key for g in got}) == 1
    assert sorted(g.cached for g in got) == [False, True, True, True]   # one resolution, three look-ups


def test_download_off_serves_only_the_cache(psb, world):
    psb.run("print(1)", packages=[f"{HELLO}==1.0"])    # in the cache now
    offline = PackageStore(psb.image, world.settings(download=False))
    assert offline.prepare([f"{HELLO}==1.0"]).packages == {HELLO: "1.0"}
    with pytest.raises(InvalidInputError, match="on-demand download is off"):
        offline.prepare([f"{HELLO}<1.0"])
    # `sandbox packages add` is the operator's way in even then
    assert offline.prepare([f"{HELLO}>0.5,<1.5"], operator=True).packages == {HELLO: "1.0"}


def test_the_cache_layout_hides_sets(psb, world):
    r = psb.run("print(1)", packages=[DEPENDENT])
    assert r.outcome.value == "ok"
    sets = world.cache / "sets"
    assert oct(sets.stat().st_mode & 0o777) == "0o711"   # traversable by a jail, not listable
    for key in os.listdir(sets):
        assert len(key) == 64
        for dirpath, dirnames, filenames in os.walk(sets / key):
            for n in dirnames + filenames:
                st = os.lstat(os.path.join(dirpath, n))
                assert st.st_uid == 0 and not st.st_mode & 0o022, (dirpath, n)


def _cli(world, *args, timeout=300):
    env = {**os.environ, **world.env(), "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "sandbox", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_the_cli(world):
    p = _cli(world, "run", "-c", "import sbtest_dependent; print(sbtest_dependent.VALUE)", "--package", DEPENDENT)
    assert p.returncode == 0 and p.stdout == "hello dep\n", p.stderr
    p = _cli(world, "run", "-c", "print(1)", "--package", NOT_ALLOWED)
    assert p.returncode == 2 and "'sbtest-forbidden' is not allowed" in p.stderr, p.stderr
    p = _cli(world, "packages", "add", f"{HELLO}==2.0")
    assert p.returncode == 0 and "sbtest-hello==2.0" in p.stderr, p.stderr
    p = _cli(world, "packages", "list", "--json")
    listed = json.loads(p.stdout)
    assert any(s["packages"] == {HELLO: "2.0"} for s in listed), listed
    p = _cli(world, "packages", "remove", DEPENDENT)
    assert p.returncode == 0 and "removed" in p.stderr
    listed = json.loads(_cli(world, "packages", "list", "--json").stdout)
    assert listed and not any(DEPENDENT in s["packages"] for s in listed)
    p = _cli(world, "packages", "prune", "--days", "0")
    assert p.returncode == 0
    assert json.loads(_cli(world, "packages", "list", "--json").stdout) == []
    assert list((world.cache / "requests").iterdir()) == []      # the remembered requests went with them
    assert len(list((world.cache / "locks").iterdir())) <= 256   # lock stripes, not a file per request
    p = _cli(world, "doctor")
    assert "packages" in p.stdout and "wheelhouse" in p.stdout, p.stdout


def test_a_real_download_from_the_index(tmp_path):
    # PyPI is reachable wherever `make test` runs (it installs the venv from there).
    with PackageWorld(tmp_path, allow=["humanize"], wheelhouse="") as w, w.sandbox(slots=1) as s:
        assert "humanize" not in images.load_any("default").manifest["packages"]
        r = s.run("import humanize; print(humanize.naturalsize(3000000))", packages=["humanize"])
        assert r.outcome.value == "ok" and r.stdout == "3.0 MB\n", (r.stderr, r.error)
        assert r.usage.packages_ms > 0


def test_the_cache_cap_evicts_idle_sets_and_refuses_when_all_are_busy(psb, world, tmp_path):
    from _packages import bindable_dir

    cache = bindable_dir("sandbox-pkgcap-")
    try:
        first = PackageStore(psb.image, world.settings(cache_dir=str(cache))).prepare([f"{HELLO}==1.0"])
        store = PackageStore(psb.image, world.settings(cache_dir=str(cache), max_cache_bytes=first.size + 100))
        with pytest.raises(InvalidInputError, match="package cache is full"):
            store.prepare([f"{HELLO}==2.0"])    # the first set was used just now: it stays
        assert [s["key"] for s in store.sets()] == [first.key]
        os.utime(first.path, (0, 0))            # idle for a long time
        second = store.prepare([f"{HELLO}==2.0"])
        assert [s["key"] for s in store.sets()] == [second.key]
        assert not first.path.exists()
    finally:
        import shutil
        shutil.rmtree(cache, ignore_errors=True)


def test_async_sandbox_takes_packages(world):
    import asyncio

    from sandbox import AsyncSandbox

    async def main():
        with world.policy_env():
            asb = await AsyncSandbox(slots=1).start()
        try:
            r = await asb.run("import sbtest_hello; print(sbtest_hello.greet('a'))", packages=[f"{HELLO}==1.0"])
            assert r.stdout == "hello a\n", (r.stderr, r.error)
            async with asb.session(packages=[f"{HELLO}==1.0"]) as s:
                assert await s.install([DEPENDENT]) == {HELLO: "1.0", DEPENDENT: "1.0"}
                r = await s.run("import sbtest_dependent; print(sbtest_dependent.VALUE)")
                assert r.stdout == "hello dep\n", (r.stderr, r.error)
        finally:
            await asb.close()

    asyncio.run(main())


def test_a_cache_a_jail_cannot_bind_is_refused_with_its_name(psb):
    store = PackageStore(psb.image, PackageSettings(cache_dir="/tmp/sandbox-packages-here"))
    with pytest.raises(InvalidInputError, match="/tmp/sandbox-packages-here is under a directory every jail"):
        store.ensure()
    assert not os.path.exists("/tmp/sandbox-packages-here")
