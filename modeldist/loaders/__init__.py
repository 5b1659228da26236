"""Buffers -> tensors without copying: numpy and torch views over a staged model's files.

Each file is mapped copy-on-write (``MAP_PRIVATE``): tensors are writable like those of
``safetensors.*.load_file``, yet share the node's pages until written, and a write stays private to
the process (the store is never modified by a reader). ``device="cuda:N"`` pins the mapping and
copies asynchronously (``gpu.py``).

Must not: fetch or stage anything; it reads what the store holds.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import ConfigError, StoreError
from ..manifest import Manifest, TensorEntry
from .dtypes import numpy_dtype, torch_dtype

__all__ = ["ModelView", "FRAMEWORKS", "numpy_dtype", "torch_dtype"]

FRAMEWORKS = ("numpy", "np", "pt", "torch")


class ModelView:
    """Read-side mappings of one staged model. Tensors keep their mapping alive by themselves."""

    def __init__(self, path: str | os.PathLike, manifest: Manifest):
        self.path = Path(path)
        self.manifest = manifest
        self._maps: dict[str, mmap.mmap] = {}

    def buffer(self, file: str) -> mmap.mmap | None:
        mm = self._maps.get(file)
        if mm is None:
            entry = self.manifest.file_map[file]
            if entry.size == 0:
                return None
            try:
                with open(self.path / file, "rb") as fh:
                    if os.fstat(fh.fileno()).st_size != entry.size:
                        raise StoreError(f"{self.path / file}: size differs from the manifest", path=str(self.path))
                    mm = mmap.mmap(fh.fileno(), entry.size, access=mmap.ACCESS_COPY)
            except FileNotFoundError as exc:
                raise StoreError(f"{self.path / file}: missing from the store", path=str(self.path)) from exc
            self._maps[file] = mm
        return mm

    def tensor(self, t: TensorEntry, framework: str):
        fw = _framework(framework)
        if fw == "numpy":
            import numpy as np

            dt = numpy_dtype(t.dtype)
            if t.numel == 0:
                return np.empty(t.shape, dtype=dt)
            return np.frombuffer(self.buffer(t.file), dtype=dt, count=t.numel, offset=t.start).reshape(t.shape)
        import torch

        dt = torch_dtype(t.dtype)
        if t.numel == 0:
            return torch.empty(t.shape, dtype=dt)
        return torch.frombuffer(self.buffer(t.file), dtype=dt, count=t.numel, offset=t.start).reshape(t.shape)

    def tensors(self, entries: Iterable[TensorEntry], framework: str) -> Iterator[tuple[str, object]]:
        for t in entries:
            yield t.name, self.tensor(t, framework)

    def close(self) -> None:
        """Drop this view's references; mappings close once no tensor uses them."""
        self._maps.clear()


def _framework(name: str) -> str:
    if name in ("numpy", "np"):
        return "numpy"
    if name in ("pt", "torch"):
        return "pt"
    raise ConfigError(f"unknown framework {name!r}: choose one of {', '.join(FRAMEWORKS)}")
