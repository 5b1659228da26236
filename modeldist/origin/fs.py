"""Origin: anything ``pyarrow.fs`` opens (``file://``, ``s3://``, ``gs://``, ``hdfs://``), by ranged reads.

S3-compatible servers: ``s3://bucket/prefix?endpoint_override=host:port&scheme=http`` (pyarrow's
URI options); credentials from the usual AWS variables. Each thread keeps its own input handle per
file (a handle's position is not shared), and reads go with ``readinto`` straight into the
caller's buffer.

S3 is opened with pyarrow's own retries off (``AwsStandardS3RetryStrategy(max_attempts=1)``) and
with connect and request (inactivity) timeouts of ``attempt_timeout(config)``: one attempt ends
within that, and the retry policy of ``base.Origin`` (``retries``, ``retry_backoff``, the
``read_timeout`` deadline) is the only one that decides; otherwise the AWS SDK retries a 5xx or a
stalled socket internally, dozens of times, for minutes, behind one attempt of ours. The URI's
options (``endpoint_override``, ``scheme``, ``region``, credentials) are parsed by pyarrow as before.

A read cut short (a connection dropped mid-body) either raises (retried whole) or returns fewer
bytes, and ``base.Origin.read_into`` asks again for the rest; a read that returns nothing before the
end of the object is a transient ``OriginError`` here, never a complete piece.
"""

from __future__ import annotations

import logging
import threading

from ..config import Config
from ..errors import OriginError
from .base import Origin, OriginFile

__all__ = ["FsOrigin", "attempt_timeout"]

log = logging.getLogger(__name__)

#: The AWS SDK enforces its request timeout in whole seconds (curl's low-speed time): below 1 s it is off.
_MIN_ATTEMPT_TIMEOUT = 1.0


def attempt_timeout(config: Config) -> float:
    """Seconds one S3 attempt may go without progress (connect, or no byte received): the
    ``read_timeout`` of one read operation shared by its ``retries`` attempts, at least 1 s."""
    return max(_MIN_ATTEMPT_TIMEOUT, config.read_timeout / config.retries)


class FsOrigin(Origin):
    def __init__(self, uri: str, **kwargs):
        super().__init__(uri, **kwargs)
        import pyarrow.fs as pafs

        self._pafs = pafs
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(uri)
            if self.fs.type_name == "s3":
                self.fs = _bounded_s3(self.fs, self.config)
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
            n = h.readinto(buf)
            if n <= 0 < len(buf) and offset < h.size():
                # nothing where the object has bytes: a cut-off body, not the end of the file
                raise OriginError(f"{self.source}: {path}: short read at offset {offset} of {h.size()}",
                                  source=self.source, transient=True)
            return n
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


def _bounded_s3(fs, config: Config):
    """The same S3 filesystem (every option pyarrow parsed from the URI, credentials included),
    with pyarrow's internal retries off and each attempt bounded by ``attempt_timeout(config)``."""
    import pyarrow.fs as pafs

    import pyarrow

    rebuild, args = fs.__reduce__()  # pyarrow pickles an S3FileSystem as (_reconstruct, (kwargs,))
    if len(args) != 1 or not isinstance(args[0], dict):
        log.warning("pyarrow %s pickles S3FileSystem in an unknown way; S3 reads keep pyarrow's own "
                    "retries and timeouts", pyarrow.__version__)
        return fs
    kwargs = dict(args[0])
    limit = attempt_timeout(config)
    kwargs.update(connect_timeout=limit, request_timeout=limit,
                  retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
    return rebuild(kwargs)


def _entry(rel: str, info) -> OriginFile:
    mtime = getattr(info, "mtime_ns", None)
    return OriginFile(rel, int(info.size), None, f"{info.size}-{mtime}")
