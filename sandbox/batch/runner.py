"""The local dispatcher: items through one Sandbox with a bounded number of calls in flight."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import InvalidInputError
from ..types import Runner
from .items import Item, Options
from .scoring import evaluate


def as_item(obj: Item | dict, index: int) -> Item:
    return obj if isinstance(obj, Item) else Item.from_dict(obj, index)


def run_local(items: Iterable[Item | dict], sandbox: Runner | None = None, *, workers: int | None = None,
              options: Options | None = None) -> Iterator[dict[str, Any]]:
    """Yield one record per item as each finishes (completion order).

    At most `workers` items are in flight, never more than the sandbox's capacity (a runner without
    one, such as a RemoteSandbox, gets `workers`, default 1), so the batch never queues calls in a
    sandbox other callers share. Without `sandbox`, one is started with `workers` slots (default:
    one per core) and closed at the end.
    """
    from ..client import Sandbox

    opts = options or Options()
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise InvalidInputError(f"workers must be a positive integer, not {workers!r}")
    own = sandbox is None
    sb = Sandbox(slots=workers) if own else sandbox
    try:
        capacity = getattr(sb, "capacity", None) or workers or 1
        limit = min(workers or capacity, capacity)
        source = iter(enumerate(items))
        with concurrent.futures.ThreadPoolExecutor(max_workers=limit, thread_name_prefix="sandbox-batch") as pool:
            pending: set[concurrent.futures.Future] = set()
            try:
                while True:
                    while len(pending) < limit:
                        nxt = next(source, None)
                        if nxt is None:
                            break
                        pending.add(pool.submit(evaluate, sb, as_item(nxt[1], nxt[0]), opts))
                    if not pending:
                        return
                    done, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                    for fut in done:
                        yield fut.result()
            finally:
                for fut in pending:
                    fut.cancel()
    finally:
        if own:
            sb.close()
