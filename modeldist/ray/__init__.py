"""Cluster-wide preload as Ray actors (DESIGN section 7).

``preload(source)`` finds or starts the scheduler actor (named, detached, on the head node unless
told otherwise) and one agent actor per selected alive node (hard node affinity), runs the
broadcast and returns a ``PreloadReport``. Agent actors stay up as named detached actors, so
``modeldist.load()`` in any task or actor on that node maps the weights from the agent's store with
no transfer: each agent links its local socket at ``/tmp/modeldist-ray/<ray node id>.sock``, which
``load()`` looks up when it runs inside a Ray worker.

The control plane is the same gRPC scheduler and agents as outside Ray; actors only host them
(each in a thread with its own event loop) and answer a few calls.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, ModelDistError

__all__ = ["preload", "shutdown", "evict", "PreloadReport", "NodeReport", "NAMESPACE", "RAY_SOCKET_DIR",
           "ray_agent_socket"]

NAMESPACE = "modeldist"
SCHEDULER_NAME = "modeldist-scheduler"
RAY_SOCKET_DIR = Path("/tmp/modeldist-ray")


@dataclass(frozen=True)
class NodeReport:
    node_id: str
    seconds: float
    bytes_by_source: dict = field(default_factory=lambda: {"origin": 0, "peer": 0})
    bytes_by_transport: dict = field(default_factory=dict)
    store: str = ""
    error: str | None = None


@dataclass(frozen=True)
class PreloadReport:
    model: str
    source: str
    seconds: float
    nodes: list

    @property
    def ok(self) -> bool:
        return all(n.error is None for n in self.nodes)


def ray_agent_socket(node_id: str) -> Path:
    return RAY_SOCKET_DIR / f"{node_id}.sock"


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("modeldist.ray needs ray: pip install 'modeldist[ray]'") from exc
    return ray


class _LoopThread:
    """An asyncio loop in a daemon thread, for hosting our asyncio services inside an actor."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)


class SchedulerHost:
    """Actor body: the gRPC scheduler on this node's IP, any free port."""

    def __init__(self, host: str):
        from ..scheduler.service import serve

        self._ready = threading.Event()
        self._address = ""
        self._lt = _LoopThread("modeldist-ray-scheduler")

        def ready(address: str) -> None:
            self._address = address
            self._ready.set()

        self._future = self._lt.submit(serve(f"{host}:0", ready=ready))
        if not self._ready.wait(60):
            raise ModelDistError("scheduler did not start within 60s")

    def address(self) -> str:
        return self._address


class AgentHost:
    """Actor body: this node's agent, its store, and the Ray socket link."""

    def __init__(self, scheduler: str, node_id: str, host: str, store: str):
        from ..agent import Agent
        from ..config import Config

        self.node_id = node_id
        self.config = Config.load(store=store)
        self.agent = Agent(scheduler=scheduler, listen=f"{host}:0", node_id=node_id, config=self.config)
        ready = threading.Event()
        self._lt = _LoopThread("modeldist-ray-agent")
        self._future = self._lt.submit(self.agent.run(ready=lambda a: ready.set()))
        deadline = time.monotonic() + 60
        while not ready.wait(0.2):
            if self._future.done():
                self._future.result()  # raises what stopped it
            if time.monotonic() > deadline:
                raise ModelDistError(f"agent on {node_id} did not register within 60s")
        RAY_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
        link = ray_agent_socket(node_id)
        tmp = link.with_suffix(".tmp")
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(self.agent.store.root / "agent.sock")
        os.replace(tmp, link)

    def info(self) -> dict:
        return {"node_id": self.node_id, "data_addr": self.agent.data_addr, "store": str(self.agent.store.root)}

    def wait(self, model: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while model not in self.agent.jobs:
            if time.monotonic() > deadline:
                return self._report(model, error=f"no assignment within {timeout:.0f}s")
            time.sleep(0.05)
        job = self.agent.jobs[model]
        ok = job.wait_complete(max(0.0, deadline - time.monotonic()))
        return self._report(model, error=None if ok else (job.error or f"not complete within {timeout:.0f}s"))

    def _report(self, model: str, error: str | None) -> dict:
        job = self.agent.jobs.get(model)
        if job is None:
            return {"node_id": self.node_id, "seconds": 0.0, "bytes_by_source": {"origin": 0, "peer": 0},
                    "bytes_by_transport": {}, "store": str(self.agent.store.root), "error": error}
        c = job.counters
        seconds = (job.finished_at or time.monotonic()) - job.started
        return {"node_id": self.node_id, "seconds": seconds, "bytes_by_source": {"origin": c.origin, "peer": c.peer},
                "bytes_by_transport": dict(c.by_transport), "store": str(self.agent.store.root), "error": error}

    def counters(self, model: str) -> dict:
        return self._report(model, None)

    def evict(self, model: str) -> bool:
        job = self.agent.jobs.pop(model, None)
        if job is not None:
            job.close()
        return self.agent.store.evict(model)

    def stop(self) -> None:
        self.agent.stop()
        link = ray_agent_socket(self.node_id)
        if link.is_symlink():
            link.unlink()


def _head_node_id(ray) -> str:
    for n in ray.nodes():
        if n.get("Alive") and any(k.startswith("node:__internal_head__") for k in n.get("Resources", {})):
            return n["NodeID"]
    return ray.get_runtime_context().get_node_id()


def _actor(ray, cls, name: str, node_id: str, *args):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote_cls = ray.remote(num_cpus=0, max_concurrency=64)(cls)
    return remote_cls.options(
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(*args)


def _agent(ray, nid: str, scheduler: str, ip: str, store: str):
    """The node's agent actor, started if missing, restarted if it serves another store."""
    from ..config import Config

    want = str(Config.load(store=store).store_path)
    name = f"modeldist-agent-{nid}"
    deadline = time.monotonic() + 120
    while True:
        try:
            actor = _actor(ray, AgentHost, name, nid, scheduler, nid, ip, store)
            info = ray.get(actor.info.remote(), timeout=180)
        except ValueError:  # the name of a just-killed actor is not released yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
            continue
        if info["store"] == want:
            return actor
        try:
            ray.get(actor.stop.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - killing it below either way
            pass
        ray.kill(actor)
        if time.monotonic() > deadline:
            raise ModelDistError(f"cannot restart the agent on {nid} with store {want}")


def _node_ip(node: dict) -> str:
    return node.get("NodeManagerAddress") or "127.0.0.1"


def preload(source: str, *, revision: str | None = None, nodes: list[str] | None = None, store: str | None = None,
            timeout: float | None = None, scheduler_node: str | None = None, piece_size: int = 0,
            progress: bool | None = None) -> PreloadReport:
    """Broadcast ``source`` to every selected alive Ray node (all when ``nodes`` is None).

    ``store``: "shm" (default) or a folder; ``{node_id}`` in it becomes each node's Ray node id, so
    nodes sharing a machine keep separate stores. Idempotent: a second call for a model already
    everywhere returns at once from the stores.
    """
    from ..cluster import get_status, start_stage
    from ..origin import canonical_source

    ray = _ray()
    if not ray.is_initialized():
        ray.init()
    t0 = time.monotonic()
    timeout = timeout or 3600.0
    alive = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
    chosen = list(alive) if nodes is None else [n for n in nodes if n in alive]
    if not chosen:
        raise ConfigError("no alive Ray node selected" + (f" (asked for {nodes})" if nodes else ""))
    head = scheduler_node or _head_node_id(ray)
    sched = _actor(ray, SchedulerHost, SCHEDULER_NAME, head, _node_ip(alive.get(head, {})))
    address = ray.get(sched.address.remote(), timeout=120)
    agents = {nid: _agent(ray, nid, address, _node_ip(alive[nid]), (store or "shm").replace("{node_id}", nid))
              for nid in chosen}
    src = canonical_source(source)
    model, _, total = start_stage(address, src, revision=revision, nodes=chosen, piece_size=piece_size)
    refs = {nid: a.wait.remote(model, timeout) for nid, a in agents.items()}
    show = progress if progress is not None else _interactive()
    pending = dict(refs)
    results: dict[str, dict] = {}
    bar = _Bar(total * len(chosen)) if show else None
    deadline = t0 + timeout + 60
    try:
        while pending:
            ready, _ = ray.wait(list(pending.values()), num_returns=len(pending), timeout=0.5)
            for ref in ready:
                nid = next(k for k, v in pending.items() if v == ref)
                del pending[nid]
                try:
                    results[nid] = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a node that died mid-preload: reported, not raised
                    results[nid] = {"node_id": nid, "seconds": time.monotonic() - t0,
                                    "bytes_by_source": {"origin": 0, "peer": 0}, "bytes_by_transport": {},
                                    "store": (store or "shm").replace("{node_id}", nid),
                                    "error": f"node lost during preload: {type(exc).__name__}"}
            if bar is not None:
                try:
                    row = next((m for m in get_status(address, model).models if m.model == model), None)
                    if row is not None:
                        bar.update(sum(total if n.complete else n.origin_bytes + n.peer_bytes for n in row.nodes))
                except ModelDistError:
                    pass
            if time.monotonic() > deadline:
                for nid in pending:
                    results[nid] = {"node_id": nid, "seconds": timeout, "bytes_by_source": {"origin": 0, "peer": 0},
                                    "bytes_by_transport": {}, "store": "", "error": "timed out"}
                break
    finally:
        if bar is not None:
            bar.close()
    reports = [NodeReport(**results[nid]) for nid in chosen]
    return PreloadReport(model=model, source=src, seconds=time.monotonic() - t0, nodes=reports)


def evict(source: str, *, revision: str | None = None) -> int:
    """Remove a model from every agent's store; returns how many stores held it."""
    from ..manifest import Manifest
    from ..origin import canonical_source

    ray = _ray()
    digest = Manifest.from_source(canonical_source(source), revision=revision).digest
    count = 0
    for a in _agent_actors(ray):
        try:
            count += bool(ray.get(a.evict.remote(digest), timeout=60))
        except Exception:  # noqa: BLE001 - a dead agent holds nothing to evict
            pass
    return count


def shutdown() -> None:
    """Stop every modeldist agent and the scheduler actor (stores are kept)."""
    ray = _ray()
    for a in _agent_actors(ray):
        try:
            ray.get(a.stop.remote(), timeout=30)
        except Exception:  # noqa: BLE001
            pass
        ray.kill(a)
    try:
        ray.kill(ray.get_actor(SCHEDULER_NAME, namespace=NAMESPACE))
    except ValueError:
        pass


def _agent_actors(ray) -> list:
    out = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("namespace") == NAMESPACE and entry.get("name", "").startswith("modeldist-agent-"):
            try:
                out.append(ray.get_actor(entry["name"], namespace=NAMESPACE))
            except ValueError:
                pass
    return out


def _interactive() -> bool:
    import sys

    return sys.stderr.isatty()


class _Bar:
    def __init__(self, total: int):
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        self.p = Progress("preload", BarColumn(), DownloadColumn(), TransferSpeedColumn())
        self.p.start()
        self.task = self.p.add_task("preload", total=total)

    def update(self, done: int) -> None:
        self.p.update(self.task, completed=done)

    def close(self) -> None:
        self.p.stop()
