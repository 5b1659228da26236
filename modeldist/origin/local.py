"""Origin: a local folder (every file under it) or a single local file.

Reads with ``os.preadv`` straight into the caller's buffer (no intermediate copy); one descriptor
per file, shared by all threads (positional reads need no seek).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..errors import OriginError
from .base import Origin, OriginFile

__all__ = ["LocalOrigin"]

#: Folders never part of a model: VCS data and huggingface_hub's local-dir bookkeeping.
SKIP_DIRS = {".git", ".cache", ".hg", ".svn", "__pycache__"}


class LocalOrigin(Origin):
    def __init__(self, path: str | os.PathLike, **kwargs):
        super().__init__(str(path), **kwargs)
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise OriginError(f"{self.path}: no such file or folder", source=self.source)
        self._fds: dict[str, int] = {}
        self._fd_lock = threading.Lock()

    def _file(self, rel: str) -> Path:
        return self.path if self.path.is_file() else self.path / rel

    def _list(self) -> list[OriginFile]:
        if self.path.is_file():
            return [_entry(self.path.name, self.path)]
        out = []
        for dirpath, dirnames, filenames in os.walk(self.path, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            for name in sorted(filenames):
                full = Path(dirpath) / name
                if not full.is_file():  # dangling symlink, socket, ...
                    continue
                out.append(_entry(full.relative_to(self.path).as_posix(), full))
        return out

    def _fd(self, rel: str) -> int:
        with self._fd_lock:
            fd = self._fds.get(rel)
            if fd is None:
                fd = os.open(self._file(rel), os.O_RDONLY | os.O_CLOEXEC)
                self._fds[rel] = fd
            return fd

    def _read_into(self, path: str, offset: int, buf: memoryview) -> int:
        return os.preadv(self._fd(path), [buf], offset)

    def _close(self) -> None:
        with self._fd_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def _entry(rel: str, full: Path) -> OriginFile:
    st = full.stat()
    return OriginFile(rel, st.st_size, None, f"{st.st_size}-{st.st_mtime_ns}")
