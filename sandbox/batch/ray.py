"""The same batch across machines: one node actor per Ray node, fed by a driver-side dispatcher.

    from sandbox.batch.ray import NodePool
    with NodePool(address="auto") as pool:              # one warm Sandbox per node, sized to its CPUs
        for record in pool.run(items):                  # plain dicts, as each item finishes
            ...

Each node actor builds its `Sandbox` in its own process (never in the driver) and runs up to
its capacity of items at once (`max_concurrency` = its slots). The dispatcher hands an item to an
actor as soon as one of its slots frees up (plus `prefetch` queued in the actor, to hide the
round trip), and when an actor dies it re-queues that actor's in-flight items and starts a
replacement on the same node if the node is still alive: no item is lost, none is reported twice.

Ray is an optional extra (from the checkout: `pip install -e '.[ray]'`); only this module imports it.

A cluster started with `ray start` (Ray 2.60) checks a token on every connection when the head was
started with token authentication (`RAY_AUTH_MODE=token`, or a token in `~/.ray/auth_token`): the
driver needs the same token, in `RAY_AUTH_TOKEN` or a file named by `RAY_AUTH_TOKEN_PATH` (with
`RAY_AUTH_MODE=token`). Without it Ray's client retries for about 20 s, a warning a second; here
those lines are held back and the failure says what to set (docs/batch.md).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .items import Item, Options
from .runner import as_item
from .scoring import INFRA_ERROR, evaluate
from ..errors import InvalidInputError, SandboxUnavailableError

log = logging.getLogger("sandbox.batch.ray")
LOCAL_RAY = {"include_dashboard": False, "object_store_memory": 200 << 20}  # `--ray local`: keep Ray small
MAX_REQUEUES = 3  # an item whose node actor died this many times is reported as an infra_error


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SandboxUnavailableError("the Ray integration needs Ray: pip install -e '.[ray]' (from the sandbox "
                                      "checkout)") from None
    return ray


TOKEN_HELP = ("the cluster uses token authentication (Ray 2.60): give the driver the cluster's token, "
              "RAY_AUTH_MODE=token with RAY_AUTH_TOKEN=TOKEN or RAY_AUTH_TOKEN_PATH=FILE (print it on the head "
              "with `ray get-auth-token`)")
WORKER_PORTS = range(10002, 20000)   # Ray's default --min-worker-port..--max-worker-port


def token_configured() -> bool:
    """Would Ray's client send a token (from the environment or ~/.ray/auth_token)?"""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or os.path.isfile(path)


def connect_failure(address: str | None, error: str, held: str) -> str:
    """One message for a failed connection, naming the likely cause."""
    text = f"cannot connect to a Ray cluster at {address!r}"
    if "InvalidAuthToken" in held or "Unauthenticated" in held or "InvalidAuthToken" in error:
        return (f"{text}: the token " + ("given is not this cluster's" if token_configured() else "is missing")
                + f": {TOKEN_HELP}")
    port = (address or "").rpartition(":")[2]
    hint = ""
    if port.isdigit() and int(port) in WORKER_PORTS:
        hint = (f"; port {port} is inside Ray's worker port range ({WORKER_PORTS.start}-{WORKER_PORTS.stop - 1}): "
                "start the head with another --port (such as the default 6379)")
    return f"{text}: {error.splitlines()[0] if error else 'no answer'}{hint}. Start one with `ray start --head`, or use --ray local"


class _HeldStderr:
    """fd 2 sent to a temporary file for a while; `text` is what was written there."""

    def __init__(self) -> None:
        import tempfile

        self.file = tempfile.TemporaryFile()
        self.text = ""

    def replay(self) -> None:
        if self.text:
            os.write(2, self.text.encode())


@contextlib.contextmanager
def _held_stderr() -> Iterator[_HeldStderr]:
    held = _HeldStderr()
    try:
        saved = os.dup(2)
    except OSError:
        yield held
        return
    try:
        os.dup2(held.file.fileno(), 2)
        yield held
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        held.file.seek(0)
        held.text = held.file.read().decode("utf-8", "replace")
        held.file.close()


class NodeRunner:
    """The node actor's body: a warm Sandbox built in the actor's own process."""

    def __init__(self, slots: int, image: str = "default") -> None:
        from ..client import Sandbox

        self.sb = Sandbox(slots=slots, image=image)

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "capacity": self.sb.capacity,
                "start_seconds": round(self.sb.start_seconds, 3)}

    def evaluate(self, item: Item, options: Options) -> dict[str, Any]:
        return evaluate(self.sb, item, options)

    def close(self) -> None:
        self.sb.close()


@dataclass
class _Actor:
    node_id: str
    slots: int
    cpus: float
    handle: Any
    ready: Any = None                 # ObjectRef of info() while starting
    info: dict = field(default_factory=dict)
    inflight: int = 0
    completed: int = 0
    alive: bool = True


class NodePool:
    """One node actor per alive Ray node; `run()` dispatches items over them.

    `address`: "auto" (a running cluster), "ray://host:port", or "local" (start a one-node Ray
    here). If Ray is already initialised in this process, that session is used as it is.
    `slots_per_node`: slots of each node's Sandbox (default: the node's CPU count).
    """

    def __init__(self, address: str | None = "auto", *, slots_per_node: int | None = None, image: str = "default",
                 prefetch: int = 1, restarts_per_node: int = 2, start_timeout: float = 300.0) -> None:
        if slots_per_node is not None and (not isinstance(slots_per_node, int) or slots_per_node < 1):
            raise InvalidInputError(f"slots_per_node must be a positive integer, not {slots_per_node!r}")
        if prefetch < 0 or restarts_per_node < 0:
            raise InvalidInputError("prefetch and restarts_per_node must be >= 0")
        ray = _ray()
        self._ray = ray
        self._owns_ray = False
        if not ray.is_initialized():
            local = address in (None, "local")
            with _held_stderr() as held:  # Ray's client logs every failed attempt on fd 2
                try:
                    ray.init(address="local" if local else address, log_to_driver=False,
                             logging_level=logging.WARNING, configure_logging=False, **(LOCAL_RAY if local else {}))
                    failure = None
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    failure = str(exc)
            if failure is not None:
                raise SandboxUnavailableError(connect_failure(address, failure, held.text)) from None
            held.replay()
            self._owns_ray = True
        self.image = image
        self.prefetch = prefetch
        self.slots_per_node = slots_per_node
        self.restarts_left: dict[str, int] = {}
        self.requeued = 0
        self._actors: list[_Actor] = []
        self._closed = False
        self._cls = ray.remote(NodeRunner)
        try:
            for node in ray.nodes():
                if node.get("Alive"):
                    self.restarts_left[node["NodeID"]] = restarts_per_node
                    self._start(node["NodeID"], float(node.get("Resources", {}).get("CPU", 1.0)))
            self._wait_started(start_timeout)
        except BaseException:
            self.close()
            raise

    # --- actors -------------------------------------------------------------------------------

    def _start(self, node_id: str, cpus: float) -> _Actor:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        slots = self.slots_per_node or max(1, int(cpus))
        handle = self._cls.options(
            num_cpus=min(float(slots), cpus), max_concurrency=slots, max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        ).remote(slots, self.image)
        actor = _Actor(node_id=node_id, slots=slots, cpus=cpus, handle=handle, ready=handle.info.remote())
        self._actors.append(actor)
        return actor

    def _wait_started(self, timeout: float) -> None:
        starting = {a.ready: a for a in self._actors if a.ready is not None}
        ready, not_ready = self._ray.wait(list(starting), num_returns=len(starting), timeout=timeout)
        for ref in ready:
            self._started(starting[ref], ref)
        for ref in not_ready:
            a = starting[ref]
            log.warning("node %s: the node actor did not start within %.0f s; leaving that node out",
                        a.node_id, timeout)
            self._drop(a)
        if not self.actors:
            raise SandboxUnavailableError("no node actor started on any Ray node (see the warnings above)")

    def _started(self, actor: _Actor, ref: Any) -> bool:
        actor.ready = None
        try:
            actor.info = self._ray.get(ref)
            return True
        except Exception as exc:  # noqa: BLE001 - a node that cannot run sandboxes is left out, loudly
            log.warning("node %s: the node actor failed to start: %s", actor.node_id, _short(exc))
            self._drop(actor)
            return False

    def _drop(self, actor: _Actor) -> None:
        actor.alive = False
        try:
            self._ray.kill(actor.handle)
        except Exception:  # noqa: BLE001 - it may be gone already
            pass

    def _replace(self, actor: _Actor) -> None:
        """An actor died: start another on its node if the node lives and has restarts left."""
        self._drop(actor)
        alive = {n["NodeID"] for n in self._ray.nodes() if n.get("Alive")}
        if actor.node_id in alive and self.restarts_left.get(actor.node_id, 0) > 0:
            self.restarts_left[actor.node_id] -= 1
            log.warning("node %s: node actor died; starting a replacement", actor.node_id)
            self._start(actor.node_id, actor.cpus)

    @property
    def actors(self) -> list[_Actor]:
        """Node actors that are up (started and not dead)."""
        return [a for a in self._actors if a.alive and a.ready is None]

    @property
    def capacity(self) -> int:
        """Runs the whole pool executes at once: the sum of the node actors' slots."""
        return sum(a.slots for a in self.actors)

    def stats(self) -> dict[str, Any]:
        return {"nodes": len(self.actors), "capacity": self.capacity, "requeued": self.requeued,
                "actors": [{"node_id": a.node_id, "slots": a.slots, "alive": a.alive, "completed": a.completed,
                            **a.info} for a in self._actors]}

    # --- dispatch -----------------------------------------------------------------------------

    def run(self, items: Iterable[Item | dict], options: Options | None = None) -> Iterator[dict[str, Any]]:
        """Yield one record (a plain dict) per item as each finishes, in completion order."""
        if self._closed:
            raise SandboxUnavailableError("the node pool is closed")
        ray = self._ray
        opts = options or Options()
        opts_ref = ray.put(opts)
        source = iter(enumerate(items))
        exhausted = False
        retry: collections.deque[Item] = collections.deque()
        inflight: dict[Any, tuple[_Actor, Item]] = {}
        lost: dict[Any, int] = {}

        def next_item() -> Item | None:
            nonlocal exhausted
            if retry:
                return retry.popleft()
            if exhausted:
                return None
            nxt = next(source, None)
            if nxt is None:
                exhausted = True
                return None
            return as_item(nxt[1], nxt[0])

        try:
            while True:
                for actor in self.actors:
                    while actor.inflight < actor.slots + self.prefetch:
                        item = next_item()
                        if item is None:
                            break
                        inflight[actor.handle.evaluate.remote(item, opts_ref)] = (actor, item)
                        actor.inflight += 1
                starting = {a.ready: a for a in self._actors if a.alive and a.ready is not None}
                if not inflight:
                    if exhausted and not retry:
                        return
                    if not starting:
                        raise SandboxUnavailableError(
                            f"every node actor died; {len(retry)} item(s) were not run")
                refs = list(inflight) + list(starting)
                ready, _ = ray.wait(refs, num_returns=1, timeout=5.0)
                if ready:
                    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                for ref in ready:
                    if ref in starting:
                        self._started(starting[ref], ref)
                        continue
                    actor, item = inflight.pop(ref)
                    actor.inflight -= 1
                    try:
                        record = ray.get(ref)
                    except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                        # The actor died or is unreachable: its result never arrived, so the
                        # item runs again elsewhere and is reported exactly once.
                        lost[item.id] = lost.get(item.id, 0) + 1
                        if lost[item.id] > MAX_REQUEUES:
                            yield _infra_record(item, f"its node actor died {lost[item.id]} times")
                        else:
                            retry.append(item)
                            self.requeued += 1
                        if actor.alive:
                            log.warning("node %s: lost its node actor (%s); re-queued its work",
                                        actor.node_id, _short(exc))
                            self._replace(actor)
                        continue
                    except ray.exceptions.RayTaskError as exc:
                        record = _infra_record(item, f"the node actor raised: {_short(exc)}")
                    actor.completed += 1
                    yield record
        finally:
            for ref in inflight:
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001
                    pass

    def close(self) -> None:
        """Close every node's Sandbox, then the actors (and Ray, if this pool started it)."""
        if self._closed:
            return
        self._closed = True
        ray = self._ray
        live = [a for a in self._actors if a.alive]
        try:
            ray.wait([a.handle.close.remote() for a in live], num_returns=len(live), timeout=60)
        except Exception:  # noqa: BLE001 - best effort; the kill below ends them anyway
            pass
        for a in live:
            self._drop(a)
        if self._owns_ray:
            ray.shutdown()

    def __enter__(self) -> NodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run(items: Iterable[Item | dict], address: str | None = "auto", *, options: Options | None = None,
        slots_per_node: int | None = None, image: str = "default") -> Iterator[dict[str, Any]]:
    """A NodePool for one batch: yield a record per item as each finishes, then close the pool."""
    pool = NodePool(address, slots_per_node=slots_per_node, image=image)
    try:
        yield from pool.run(items, options)
    finally:
        pool.close()


def _infra_record(item: Item, message: str) -> dict[str, Any]:
    return {"id": item.id, "status": INFRA_ERROR, "passed": 0,
            "total": len(item.tests) if isinstance(item.tests, tuple) else 1,
            "first_failure": {"case": 0, "status": INFRA_ERROR, "message": message}, "cases": [], "attempts": 1,
            **({"meta": item.meta} if item.meta is not None else {})}


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:300]


__all__ = ["NodePool", "NodeRunner", "run"]
