"""Single-node staging: origin -> this node's store, in parallel, verified, resumable.

Owns the seed's read path: ``concurrency`` threads take missing pieces from a shared queue, read
each from the origin straight into its place in the mapping, hash it (blake3) and commit it; when
a file is whole and the origin gave its sha256, the file is checked against it (a mismatch drops
the file's pieces and raises ``IntegrityError``). ``stage`` returns the completed model.

Must not: know about tensors (loaders) or peers (agent); it is what an agent does for its
origin stripe, on one node.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import blake3

from . import metrics
from .config import Config
from .errors import IntegrityError, ModelDistError, OriginError
from .manifest import Manifest
from .origin import Origin, canonical_source, open_origin
from .store import ModelBuffer, Store

__all__ = ["StagedModel", "stage", "resolve", "fill_from_origin"]

log = logging.getLogger(__name__)

#: Called after each piece lands: (piece index, bytes).
PieceCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class StagedModel:
    """A model complete in a store: its manifest (with piece digests) and folder."""

    manifest: Manifest
    path: Path
    #: Bytes read from the origin by this call (0 when the store already had the model).
    origin_bytes: int = 0
    seconds: float = 0.0


def resolve(source: str, *, revision: str | None = None, allow_patterns: Sequence[str] | str | None = None,
            config: Config | None = None) -> tuple[Origin, Manifest]:
    """Open the origin and build the manifest (headers only). The caller closes the origin."""
    cfg = config or Config.load()
    origin = open_origin(source, revision=revision, config=cfg)
    try:
        manifest = origin.manifest(piece_size=cfg.piece_size, allow_patterns=allow_patterns)
    except BaseException:
        origin.close()
        raise
    return origin, manifest


def stage(source: str, *, revision: str | None = None, allow_patterns: Sequence[str] | str | None = None,
          config: Config | None = None, on_piece: PieceCallback | None = None,
          on_start: Callable[[Manifest, list[int]], None] | None = None) -> StagedModel:
    """Make sure the model at ``source`` is complete in this node's store; return it.

    ``on_start(manifest, missing)`` is called once the work is known; ``on_piece`` per piece.
    """
    cfg = config or Config.load()
    t0 = time.monotonic()
    origin, manifest = resolve(canonical_source(source), revision=revision, allow_patterns=allow_patterns,
                               config=cfg)
    with origin:
        store = Store(config=cfg)
        if store.is_complete(manifest.digest):
            final = store.manifest(manifest.digest)
            if on_start:
                on_start(final, [])
            return StagedModel(final, store.path_of(manifest.digest), 0, time.monotonic() - t0)
        header_bytes = origin.bytes_read
        with store.open(manifest) as buf:
            if buf.is_complete:  # another process finished it while we waited for the lock
                final = store.manifest(manifest.digest)
                if on_start:
                    on_start(final, [])
                return StagedModel(final, buf.dir, 0, time.monotonic() - t0)
            missing = buf.missing()
            if on_start:
                on_start(manifest, missing)
            deadline = None if cfg.timeout is None else t0 + cfg.timeout
            fill_from_origin(buf, origin, missing, concurrency=cfg.concurrency, on_piece=on_piece,
                             deadline=deadline)
            final = buf.finish()
            seconds = time.monotonic() - t0
            metrics.MODEL_LOAD_SECONDS.labels(stage="stage").observe(seconds)
            return StagedModel(final, buf.dir, origin.bytes_read - header_bytes, seconds)


def fill_from_origin(buf: ModelBuffer, origin: Origin, indices: Sequence[int], *, concurrency: int = 8,
                     on_piece: PieceCallback | None = None, deadline: float | None = None,
                     cancel: threading.Event | None = None) -> None:
    """Read ``indices`` from ``origin`` into ``buf`` with ``concurrency`` threads; raise the first error.

    Setting ``cancel`` stops the workers after their current piece (no error is raised).
    """
    manifest = buf.manifest
    todo: "queue.SimpleQueue[int]" = queue.SimpleQueue()
    for i in indices:
        todo.put(i)
    # a file is checked against the origin's sha256 when its last missing piece lands here (a
    # stripe seed that fills only part of a file never triggers it: the agent checks at the end)
    remaining = _FileCountdown(manifest, buf.missing())
    stop = threading.Event()
    cancelled = cancel if cancel is not None else threading.Event()
    errors: list[BaseException] = []

    def worker() -> None:
        while not (stop.is_set() or cancelled.is_set()):
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            try:
                if deadline is not None and time.monotonic() > deadline:
                    raise OriginError(f"{origin.source}: staging deadline passed", source=origin.source)
                piece = manifest.pieces[i]
                started = time.monotonic()
                view = buf.writable_piece(i)
                origin.read_into(piece.file, piece.offset, view)
                buf.commit(i, blake3.blake3(view).digest())
                metrics.BYTES_RECEIVED.labels(source="origin", transport="origin").inc(piece.length)
                metrics.PIECES.labels(result="ok").inc()
                metrics.PIECE_SECONDS.observe(time.monotonic() - started)
                if remaining.done(piece.file):
                    _check_file_sha256(buf, piece.file)
                if on_piece is not None:
                    on_piece(i, piece.length)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                if isinstance(exc, IntegrityError):
                    metrics.PIECES.labels(result="corrupt").inc()
                errors.append(exc)
                stop.set()
                return

    n = max(1, min(concurrency, len(indices)))
    threads = [threading.Thread(target=worker, name=f"modeldist-origin-{k}", daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.5)
                if deadline is not None and time.monotonic() > deadline + 30:
                    stop.set()
                    raise OriginError(f"{origin.source}: origin reads did not finish before the deadline",
                                      source=origin.source)
    except BaseException:
        stop.set()  # KeyboardInterrupt: let workers stop after their current piece
        for t in threads:
            t.join(timeout=5)
        raise
    if errors:
        exc = errors[0]
        if isinstance(exc, ModelDistError):
            raise exc
        raise OriginError(f"{origin.source}: staging failed: {exc}", source=origin.source) from exc


class _FileCountdown:
    """Counts the pieces still to land per file, to know when a file is whole."""

    def __init__(self, manifest: Manifest, indices: Sequence[int]):
        self._left: dict[str, int] = {}
        for i in indices:
            f = manifest.pieces[i].file
            self._left[f] = self._left.get(f, 0) + 1
        self._lock = threading.Lock()

    def done(self, file: str) -> bool:
        with self._lock:
            self._left[file] -= 1
            return self._left[file] == 0


def _check_file_sha256(buf: ModelBuffer, path: str) -> None:
    entry = buf.manifest.file_map[path]
    if not entry.sha256:
        return
    h = hashlib.sha256()
    h.update(buf.file_view(path))
    if h.hexdigest() != entry.sha256:
        first = buf.manifest.first_piece.get(path, 0)
        count = -(-entry.size // buf.manifest.piece_size)
        buf.drop(range(first, first + count))
        raise IntegrityError(f"{path}: sha256 {h.hexdigest()[:16]}... does not match the origin's "
                             f"{entry.sha256[:16]}...", path=path)
