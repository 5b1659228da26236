"""The Origin interface: list a model's files and read byte ranges of them, with retries.

Owns the contract every origin implements and the one retry policy (exponential backoff with
jitter; transient errors retried, permanent ones raised at once, all as ``OriginError``), plus the
count of bytes read from the origin.

Must not: know about stores, pieces or transports.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

from ..config import Config
from ..errors import ModelDistError, OriginError

__all__ = ["Origin", "OriginFile", "is_transient"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OriginFile:
    """One file as the origin lists it. ``sha256`` when the origin knows it (HF LFS);
    ``version`` is the origin's change token otherwise (mtime, ETag)."""

    path: str
    size: int
    sha256: str | None = None
    version: str | None = None


_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_transient(exc: BaseException) -> bool:
    """Could retrying the same read succeed?"""
    if isinstance(exc, OriginError):
        return exc.transient
    if isinstance(exc, ModelDistError):
        return False
    if isinstance(exc, _PERMANENT):
        return False
    return isinstance(exc, (OSError, ConnectionError, TimeoutError, EOFError))


class Origin(ABC):
    """Where the bytes of a model first come from. Thread-safe: staging reads in parallel."""

    def __init__(self, source: str, *, revision: str | None = None, config: Config | None = None):
        self.source = source
        self.revision = revision
        self.config = config or Config.load()
        self._bytes_read = 0
        self._reads = 0
        self._lock = threading.Lock()
        self._listing: list[OriginFile] | None = None
        self._closed = False

    # --- to implement -----------------------------------------------------------------------

    @abstractmethod
    def _list(self) -> list[OriginFile]:
        """The model's files (paths relative to the model root, '/'-separated)."""

    @abstractmethod
    def _read_into(self, path: str, offset: int, buf: memoryview) -> int:
        """One attempt: read up to len(buf) bytes at ``offset`` into ``buf``; return the count."""

    def _close(self) -> None:
        """Release handles (called once)."""

    # --- public -----------------------------------------------------------------------------

    @property
    def bytes_read(self) -> int:
        """Bytes read from the origin so far (headers and pieces, retries counted once per byte)."""
        return self._bytes_read

    @property
    def reads(self) -> int:
        return self._reads

    def list_files(self) -> list[OriginFile]:
        if self._listing is None:
            self._listing = self._retry(self._list, what="list files")
        return self._listing

    def read_into(self, path: str, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with the bytes of ``path`` at ``offset``, retrying transient errors."""
        view = memoryview(buf).cast("B")
        done = 0

        def attempt() -> None:
            nonlocal done
            while done < len(view):
                n = self._read_into(path, offset + done, view[done:])
                if n <= 0:
                    raise OriginError(f"{self.source}: {path}: unexpected end of file at offset "
                                      f"{offset + done}", source=self.source, transient=False)
                done += n
                with self._lock:
                    self._bytes_read += n

        self._retry(attempt, what=f"read {path}@{offset}+{len(view)}")
        with self._lock:
            self._reads += 1

    def read(self, path: str, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.read_into(path, offset, memoryview(buf))
        return bytes(buf)

    def manifest(self, *, piece_size: int | None = None, allow_patterns: Sequence[str] | str | None = None):
        """The manifest (headers only). The headers of all files are fetched in parallel first: one
        round trip per file instead of two per file in a row (a 100-shard model on S3 or the Hub
        takes seconds otherwise); ``Manifest.build`` then parses them in order, strictly."""
        from ..manifest import Manifest

        listing = self.list_files()
        cache = self._prefetch_headers(listing, allow_patterns)

        def read(path: str, offset: int, length: int) -> bytes:
            got = cache.pop((path, offset, length), None)
            return got if got is not None else self.read(path, offset, length)

        return Manifest.build(listing, read, source=self.source, revision=self.revision,
                              piece_size=piece_size, allow_patterns=allow_patterns)

    def _prefetch_headers(self, listing, allow_patterns) -> dict[tuple[str, int, int], bytes]:
        """(path, offset, length) -> bytes of what ``Manifest.build`` will read: each safetensors
        file's length prefix and header, each index file whole. Best effort: a read or a length that
        fails here is left out, and the build reads it again (and raises the error in order)."""
        from concurrent.futures import ThreadPoolExecutor

        from ..manifest import MAX_INDEX_BYTES, header_length, select_files

        files = [f for f in select_files(listing, allow_patterns)
                 if (f.path.endswith(".safetensors") and f.size >= 8)
                 or (f.path.endswith(".safetensors.index.json") and f.size <= MAX_INDEX_BYTES)]
        if len(files) < 2:
            return {}

        def fetch(f) -> list[tuple[tuple[str, int, int], bytes]]:
            try:
                if not f.path.endswith(".safetensors"):
                    return [((f.path, 0, f.size), self.read(f.path, 0, f.size))]
                head = self.read(f.path, 0, 8)
                n = header_length(head, f.size, f.path)  # ManifestError: the build says so, in order
                return [((f.path, 0, 8), head), ((f.path, 8, n), self.read(f.path, 8, n))]
            except (ModelDistError, OSError) as exc:
                log.debug("%s: header prefetch of %s failed (%s); read again in order", self.source, f.path, exc)
                return []

        with ThreadPoolExecutor(max_workers=min(16, len(files)), thread_name_prefix="modeldist-headers") as pool:
            return dict(kv for got in pool.map(fetch, files) for kv in got)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> "Origin":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- retry policy -----------------------------------------------------------------------

    def _retry(self, fn, *, what: str):
        cfg = self.config
        deadline = time.monotonic() + cfg.read_timeout
        last: BaseException | None = None
        for attempt in range(cfg.retries):
            if self._closed:
                raise OriginError(f"{self.source}: origin closed", source=self.source)
            try:
                return fn()
            except BaseException as exc:  # noqa: BLE001 - classified below, re-raised typed
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                if not is_transient(exc):
                    if isinstance(exc, ModelDistError):
                        raise
                    raise OriginError(f"{self.source}: cannot {what}: {exc}", source=self.source) from exc
                last = exc
            delay = min(10.0, cfg.retry_backoff * (2 ** attempt)) * random.uniform(0.5, 1.5)
            if attempt + 1 >= cfg.retries or time.monotonic() + delay > deadline:
                break
            log.warning("origin %s: %s failed (%s), retry %d/%d in %.2fs", self.source, what, last,
                        attempt + 1, cfg.retries - 1, delay)
            time.sleep(delay)
        raise OriginError(f"{self.source}: cannot {what} after {attempt + 1} attempt(s): {last}",
                          source=self.source, transient=True) from last
