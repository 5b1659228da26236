"""Origin: anything ``pyarrow.fs`` opens (``file://``, ``s3://``, ``gs://``, ``hdfs://``), by ranged reads.

S3-compatible servers: ``s3://bucket/prefix?endpoint_override=host:port&scheme=http`` (pyarrow's
URI options); credentials from the usual AWS variables. Each thread keeps its own input handle per
file (a handle's position is not shared), and reads go with ``readinto`` straight into the
caller's buffer.
"""

from __future__ import annotations

import threading

from ..errors import OriginError
from .base import Origin, OriginFile

__all__ = ["FsOrigin"]


class FsOrigin(Origin):
    def __init__(self, uri: str, **kwargs):
        super().__init__(uri, **kwargs)
        import pyarrow.fs as pafs

        self._pafs = pafs
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(uri)
        except (ValueError, OSError, TypeError) as exc:  # pyarrow raises ArrowInvalid (ValueError) for bad URIs
            raise OriginError(f"{uri}: cannot open: {exc}", source=uri) from exc
        self.root = self.root.rstrip("/")
        self._local = threading.local()
        self._handles: list = []
        self._hlock = threading.Lock()
        self._single: str | None = None

    def _list(self) -> list[OriginFile]:
        pafs = self._pafs
        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.File:
            self._single = info.base_name
            return [_entry(info.base_name, info)]
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{self.source}: not found")
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True))
        out = []
        prefix = self.root + "/" if self.root else ""
        for i in infos:
            if i.type != pafs.FileType.File:
                continue
            rel = i.path[len(prefix):] if i.path.startswith(prefix) else i.path
            if any(part in (".git", ".cache") for part in rel.split("/")[:-1]):
                continue
            out.append(_entry(rel, i))
        return sorted(out, key=lambda f: f.path)

    def _full(self, rel: str) -> str:
        if self._single is not None:
            return self.root
        return f"{self.root}/{rel}" if self.root else rel

    def _handle(self, rel: str):
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = {}
        h = handles.get(rel)
        if h is None or h.closed:
            h = self.fs.open_input_file(self._full(rel))
            handles[rel] = h
            with self._hlock:
                self._handles.append(h)
        return h

    def _read_into(self, path: str, offset: int, buf: memoryview) -> int:
        h = self._handle(path)
        try:
            h.seek(offset)
            return h.readinto(buf)
        except BaseException:
            # a failed handle may be half-broken (dropped connection): open a fresh one next time
            self._local.handles.pop(path, None)
            raise

    def _close(self) -> None:
        with self._hlock:
            for h in self._handles:
                try:
                    h.close()
                except OSError:
                    pass
            self._handles.clear()


def _entry(rel: str, info) -> OriginFile:
    mtime = getattr(info, "mtime_ns", None)
    return OriginFile(rel, int(info.size), None, f"{info.size}-{mtime}")
