"""The public Python API that inference servers call at start-up (DESIGN section 2).

``load`` and ``stream`` hand out tensors that share memory with the node's store; ``snapshot_download``
gives a folder ``from_pretrained`` can read. Until the swarm lands, everything runs in-process,
straight from the origin; ``scheduler``/``agent`` arguments are refused with a ``ConfigError``.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from . import metrics, staging
from .config import Config
from .errors import ConfigError, ModelDistError, OriginError
from .loaders import ModelView, _framework
from .manifest import Manifest
from .store import Store

__all__ = ["load", "stream", "snapshot_download", "resolve_config"]

Patterns = Sequence[str] | str | None


def resolve_config(config: Config | Mapping[str, Any] | str | os.PathLike | None = None, **overrides: Any) -> Config:
    """``config``: a Config, a mapping of settings, or a TOML file; ``overrides`` (non-None) win."""
    if isinstance(config, Config):
        cfg = config.replace(**overrides)
    elif isinstance(config, Mapping):
        cfg = Config.load(**{**config, **{k: v for k, v in overrides.items() if v is not None}})
    else:
        cfg = Config.load(config, **overrides)
    return cfg


def _agent_socket(cfg: Config) -> Path | None:
    if cfg.agent:
        return Path(cfg.agent)
    from .agent.daemon import local_socket_path

    path = local_socket_path(cfg)
    if path.exists():
        return path
    return _ray_agent_socket()


def _ray_agent_socket() -> Path | None:
    """Inside a Ray worker: the socket of this node's modeldist agent actor, if one runs."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not getattr(ray, "is_initialized", lambda: False)():
        return None
    from .ray import ray_agent_socket

    try:
        link = ray_agent_socket(ray.get_runtime_context().get_node_id())
    except Exception:  # noqa: BLE001 - not in a worker, or an old ray: no agent lookup
        return None
    return link if link.exists() else None


def _stage(source: str | os.PathLike, cfg: Config, *, revision: str | None, allow_patterns: Patterns,
           **callbacks: Any) -> staging.StagedModel:
    """Through this node's agent when one runs (weights once per node), else in-process from origin."""
    sock = _agent_socket(cfg)
    if sock is not None:
        from .agent.daemon import ask_local_agent
        from .origin import canonical_source

        t0 = time.monotonic()
        try:
            reply = ask_local_agent(sock, canonical_source(source), revision=revision, allow_patterns=allow_patterns,
                                    timeout=cfg.timeout or 3600)
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            if cfg.agent:
                raise ConfigError(f"no agent answers on {sock}: start `modeldist agent` on this node") from exc
        else:
            path = Path(reply["path"])
            manifest = Manifest.from_json((path / "manifest.json").read_bytes())
            if callbacks.get("on_start"):
                callbacks["on_start"](manifest, [])
            return staging.StagedModel(manifest, path, 0, time.monotonic() - t0)
    if cfg.scheduler:
        raise ConfigError(f"scheduler {cfg.scheduler!r} given but no agent runs on this node: start "
                          f"`modeldist agent --scheduler {cfg.scheduler}` here (or drop scheduler= to read the origin)")
    return staging.stage(os.fspath(source), revision=revision, allow_patterns=allow_patterns, config=cfg, **callbacks)


def _check_device(device: str | None, fw: str) -> None:
    """Refuse a device this process cannot use before any work starts (load and stream alike)."""
    if device in (None, "cpu"):
        return
    if fw != "pt":
        raise ConfigError("device= needs framework='pt'")
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"not a device: {device!r}") from exc
    if dev.type != "cuda":
        raise ConfigError(f"unsupported device {device!r} (expected cuda or cuda:N)")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available in this process")


def load(source: str | os.PathLike, *, framework: str = "numpy", device: str | None = None,
         revision: str | None = None, allow_patterns: Patterns = None, scheduler: str | None = None,
         agent: str | None = None, store: str | None = None, config: Any = None) -> dict[str, Any]:
    """Every tensor of the model at ``source`` as a dict, sharing memory with this node's store.

    Bit-identical to ``safetensors.<framework>.load_file`` of the origin files; a sharded model
    (``*.safetensors.index.json``) loads as one dict. ``device="cuda:N"`` copies to that GPU.
    """
    fw = _framework(framework)
    _check_device(device, fw)
    cfg = resolve_config(config, scheduler=scheduler, agent=agent, store=store)
    t0 = time.monotonic()
    staged = _stage(source, cfg, revision=revision, allow_patterns=allow_patterns)
    view = ModelView(staged.path, staged.manifest)
    tensors = dict(view.tensors(staged.manifest.state_dict_tensors(), fw))
    if device not in (None, "cpu"):
        from .loaders.gpu import to_device

        files = {t.file for t in staged.manifest.state_dict_tensors()}
        tensors = to_device(tensors, device, [b for f in sorted(files) if (b := view.buffer(f)) is not None])
    metrics.MODEL_LOAD_SECONDS.labels(stage="load").observe(time.monotonic() - t0)
    return tensors


def stream(source: str | os.PathLike, *, framework: str = "numpy", device: str | None = None,
           revision: str | None = None, allow_patterns: Patterns = None, scheduler: str | None = None,
           agent: str | None = None, store: str | None = None, config: Any = None) -> Iterator[tuple[str, Any]]:
    """Yield ``(name, tensor)`` in arrival order, each as soon as all its bytes are verified.

    Staging runs in a background thread; if the caller stops early it still completes the store.
    Arguments are checked at the call, before the first ``next()``. Through a local agent, tensors
    come once the node holds the whole model.
    """
    fw = _framework(framework)
    _check_device(device, fw)
    cfg = resolve_config(config, scheduler=scheduler, agent=agent, store=store)
    if cfg.scheduler and _agent_socket(cfg) is None:
        raise ConfigError(f"scheduler {cfg.scheduler!r} given but no agent runs on this node: start "
                          f"`modeldist agent --scheduler {cfg.scheduler}` here (or drop scheduler= to read the origin)")
    return _stream(source, fw, device, revision, allow_patterns, cfg)


def _stream(source, fw: str, device, revision, allow_patterns, cfg: Config) -> Iterator[tuple[str, Any]]:
    events: "queue.SimpleQueue[tuple]" = queue.SimpleQueue()

    def run() -> None:
        try:
            staged = _stage(source, cfg, revision=revision, allow_patterns=allow_patterns,
                            on_start=lambda m, missing: events.put(("start", m, missing)),
                            on_piece=lambda i, n: events.put(("piece", i)))
            events.put(("path", staged.path))
            events.put(("done",))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            events.put(("error", exc))

    worker = threading.Thread(target=run, name="modeldist-stream", daemon=True)
    worker.start()
    # no single wait may outlast what the origin reads themselves are allowed
    stall = cfg.read_timeout * (cfg.retries + 1) + 60

    def next_event() -> tuple:
        try:
            ev = events.get(timeout=stall)
        except queue.Empty:
            raise OriginError(f"{source}: no progress for {stall:.0f}s", source=str(source)) from None
        if ev[0] == "error":
            raise ev[1]
        return ev

    ev = next_event()
    if ev[0] != "start":
        raise ModelDistError(f"internal: unexpected staging event {ev[0]!r}")
    manifest: Manifest = ev[1]
    missing = set(ev[2])
    # in-process staging writes to our store; an agent's store may live elsewhere: wait for its path
    view = ModelView(Store(config=cfg).path_of(manifest.digest), manifest) if missing or _agent_socket(cfg) is None \
        else None
    if view is None:
        ev = next_event()
        view = ModelView(ev[1], manifest)
    entries = manifest.state_dict_tensors()
    waiting: dict[int, int] = {}
    by_piece: dict[int, list[int]] = {}
    ready: list[int] = []
    for k, t in enumerate(entries):
        need = [p for p in manifest.pieces_of_tensor(t) if p in missing]
        if need:
            waiting[k] = len(need)
            for p in need:
                by_piece.setdefault(p, []).append(k)
        else:
            ready.append(k)

    def emit(k: int) -> tuple[str, Any]:
        t = entries[k]
        value = view.tensor(t, fw)
        if device not in (None, "cpu"):
            value = value.to(device)
        return t.name, value

    for k in ready:
        yield emit(k)
    while waiting:
        ev = next_event()
        if ev[0] == "piece":
            for k in by_piece.pop(ev[1], ()):
                waiting[k] -= 1
                if waiting[k] == 0:
                    del waiting[k]
                    yield emit(k)
        elif ev[0] == "done" and waiting:
            raise ModelDistError(f"internal: staging finished with {len(waiting)} tensors incomplete")
    worker.join(timeout=stall)


def snapshot_download(repo_id: str | os.PathLike, *, revision: str | None = None, allow_patterns: Patterns = None,
                      token: str | None = None, scheduler: str | None = None, agent: str | None = None,
                      store: str | None = None, config: Any = None) -> str:
    """Drop-in for ``huggingface_hub.snapshot_download``: a folder with the repo's files.

    ``repo_id`` is an HF repo id (``org/name``), an ``hf://`` URI, a local folder or any URI.
    The folder is this node's store copy (``<store>/<digest>``); treat it as read-only.
    """
    cfg = resolve_config(config, scheduler=scheduler, agent=agent, store=store, hf_token=token)
    source = os.fspath(repo_id)
    if "://" not in source and not Path(source).expanduser().exists():
        source = f"hf://{source}"
    staged = _stage(source, cfg, revision=revision, allow_patterns=allow_patterns)
    return str(staged.path)
