"""sandbox.batch.ray on a real local Ray cluster: two nodes on this machine, one node actor each.

The cluster is small (one CPU and a 200 MB object store per node, no dashboard) and is shut down
by the fixture whatever the tests do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import ray
from ray.cluster_utils import Cluster

from sandbox.batch import Options, humaneval
from sandbox.batch.ray import NodePool

NODE = {"num_cpus": 1, "object_store_memory": 200 << 20}
SANDBOX = str(Path(sys.executable).with_name("sandbox"))


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    try:
        c.add_node(**NODE)
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _jails_of(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children() if p.name() == "nsjail"]


def _ids_once(records: list[dict]) -> dict:
    out = {}
    for r in records:
        assert r["id"] not in out, f"{r['id']} reported twice"
        out[r["id"]] = r
    return out


def test_humaneval_164_of_164_through_two_node_actors(cluster):
    problems = humaneval.load_problems()
    samples = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()]
    with NodePool() as pool:
        assert len(pool.actors) == 2 and pool.capacity == 2  # one slot per node CPU
        stats = pool.stats()["actors"]
        assert len({a["node_id"] for a in stats}) == 2
        assert all(a["pid"] != os.getpid() for a in stats)
        # the Sandboxes live in the actors: each actor's process is the parent of its own jail
        assert all(len(_jails_of(a["pid"])) == 1 for a in stats)
        records = list(pool.run(humaneval.items_for(samples, problems), Options(timeout=10)))
        served = [a["completed"] for a in pool.stats()["actors"]]
    recs = _ids_once(records)
    assert len(recs) == 164
    failed = {k: r["first_failure"] for k, r in recs.items() if r["status"] != "passed"}
    assert failed == {}
    assert humaneval.scores(records, [1]) == {"pass@1": 1.0}
    assert all(n > 0 for n in served) and sum(served) == 164, served  # both nodes did work
    assert all(isinstance(r, dict) and json.loads(json.dumps(r)) == r for r in records)  # plain dicts


def test_a_node_actor_killed_mid_batch_loses_no_result_and_duplicates_none(cluster):
    items = [{"id": f"item-{i}", "code": "import time\ntime.sleep(0.4)\ndef f():\n    return 1\n",
              "tests": "assert f() == 1\n"} for i in range(24)]
    records = []
    with NodePool(restarts_per_node=1) as pool:
        victim = pool.actors[0]
        for rec in pool.run(items):
            records.append(rec)
            if len(records) == 4:
                assert victim.inflight > 0  # the victim holds work when it dies
                os.kill(victim.info["pid"], signal.SIGKILL)
        stats = pool.stats()
    recs = _ids_once(records)
    assert sorted(recs) == sorted(i["id"] for i in items)
    assert all(r["status"] == "passed" for r in recs.values()), [r for r in records if r["status"] != "passed"]
    assert pool.requeued >= 1
    assert not victim.alive
    assert sum(a["completed"] for a in stats["actors"]) == len(items)


def test_cli_batch_run_on_the_cluster(cluster, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [{"id": i, "code": "print(sum(map(int, input().split())))\n",
              "tests": [{"stdin": f"{i} {i}", "expected_stdout": str(2 * i)}]} for i in range(10)]
    lines.append({"id": "wrong", "code": "print(0)\n", "tests": [{"stdin": "", "expected_stdout": "1"}]})
    inp.write_text("".join(json.dumps(x) + "\n" for x in lines))
    p = subprocess.run([SANDBOX, "batch", "run", str(inp), "-o", str(out), "--ray", cluster.address, "--ordered"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in recs] == list(range(10)) + ["wrong"]
    assert [r["status"] for r in recs] == ["passed"] * 10 + ["failed"]
    assert "11 items (passed 10, failed 1)" in p.stderr
