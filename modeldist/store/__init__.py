"""A node's store: where models live as shared, mappable buffers (``/dev/shm/modeldist`` or a folder).

``Store`` finds, opens and evicts models by manifest digest; ``ModelBuffer`` (``buffer.py``) is one
model's writable mappings, piece bitmap and digests. Readers (loaders, other processes) map the
same files read-only, so the weights exist once per node.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..config import Config
from ..errors import ManifestError, StoreError
from ..manifest import Manifest
from .buffer import COMPLETE_MARKER, STATE_DIR, ModelBuffer

__all__ = ["Store", "ModelBuffer", "COMPLETE_MARKER", "STATE_DIR"]

#: (path, mtime, size, inode) of a completed manifest.json -> its parsed Manifest
_MANIFESTS: dict[tuple, Manifest] = {}


class Store:
    def __init__(self, root: str | os.PathLike | None = None, *, config: Config | None = None):
        self.config = config or Config.load()
        self.root = Path(root) if root is not None else self.config.store_path
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create store {self.root}: {exc.strerror}", path=str(self.root),
                             errno_=exc.errno) from exc

    @property
    def in_memory(self) -> bool:
        return str(self.root.resolve()).startswith("/dev/shm")

    def path_of(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ManifestError(f"not a manifest digest: {digest!r}")
        return self.root / digest

    def is_complete(self, digest: str) -> bool:
        return (self.path_of(digest) / COMPLETE_MARKER).exists()

    def manifest(self, digest: str) -> Manifest:
        """The completed manifest (with piece digests) of a staged model.

        Parsed once per process per file version: ``load()`` of a staged model must cost
        milliseconds, and re-validating thousands of pieces each call does not.
        """
        path = self.path_of(digest) / "manifest.json"
        try:
            st = path.stat()
            key = (str(path), st.st_mtime_ns, st.st_size, st.st_ino)
            m = _MANIFESTS.get(key)
            if m is None:
                m = Manifest.from_json(path.read_bytes())
                if m.digest != digest:
                    raise StoreError(f"{path}: manifest is for another model", path=str(path))
                if len(_MANIFESTS) > 64:
                    _MANIFESTS.clear()
                _MANIFESTS[key] = m
        except FileNotFoundError as exc:
            raise StoreError(f"{digest[:12]} is not in store {self.root}", path=str(path)) from exc
        return m

    def open(self, manifest: Manifest, *, lock_timeout: float = 600.0) -> ModelBuffer:
        """Writable buffers for ``manifest`` (created, or resumed from what is already there)."""
        mode = self.config.mlock
        if mode == "auto" and not self.in_memory:
            mode = "off"  # locking a disk-backed model larger than RAM would be harmful
        return ModelBuffer(self.path_of(manifest.digest), manifest, mlock=mode, lock_timeout=lock_timeout,
                           verify_on_resume=self.config.verify_on_resume)

    def models(self) -> list[tuple[str, bool]]:
        """(digest, complete) for every model folder in the store."""
        out = []
        for child in sorted(self.root.iterdir()) if self.root.exists() else []:
            if child.is_dir() and len(child.name) == 64 and (child / STATE_DIR).is_dir():
                out.append((child.name, (child / COMPLETE_MARKER).exists()))
        return out

    def evict(self, digest: str) -> bool:
        path = self.path_of(digest)
        if not path.exists():
            return False
        shutil.rmtree(path)
        return True
