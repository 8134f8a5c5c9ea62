"""Evaluation at scale: run many programs against their tests, locally or across a Ray cluster.

    from sandbox import batch
    for record in batch.run([{"id": 1, "code": "def f(): return 2", "tests": "assert f() == 2"}]):
        print(record["id"], record["status"])       # passed

Records come back as each item finishes; see `scoring` for the statuses and `items` for the input.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ..types import Runner
from .items import Case, Item, Options, parse_line
from .runner import run_local
from .scoring import STATUSES, evaluate, normalise, same_output

__all__ = ["run", "Item", "Case", "Options", "STATUSES", "evaluate", "parse_line", "normalise", "same_output"]


def run(items: Iterable[Item | dict], sandbox: Runner | None = None, *, workers: int | None = None,
        timeout: float | None = None, memory_mb: int | None = None, retries: int = 2, fail_fast: bool = True,
        float_tol: float | None = None, max_output_chars: int = 2000,
        ray: str | None = None) -> Iterator[dict[str, Any]]:
    """Yield one record (a plain dict) per item as each finishes.

    Locally through `sandbox` (or a Sandbox of `workers` slots started for the batch); with
    `ray="auto"`, "local" or a cluster address, through one node actor per Ray node
    (`sandbox.batch.ray`; `workers` is then the slots per node, default its CPU count).
    """
    options = Options(timeout=timeout, memory_mb=memory_mb, retries=retries, fail_fast=fail_fast,
                      float_tol=float_tol, max_output_chars=max_output_chars)
    if ray is not None:
        from . import ray as sandbox_ray

        return sandbox_ray.run(items, address=ray, options=options, slots_per_node=workers)
    return run_local(items, sandbox, workers=workers, options=options)
