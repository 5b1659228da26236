"""One model's buffers in a node's store: a shared mapping per file, the piece bitmap, the digests.

Layout (DESIGN section 6)::

    <store>/<digest>/<file's relative path>     the file itself, mapped MAP_SHARED and filled in place
    <store>/<digest>/manifest.json              the manifest (with every piece digest once complete)
    <store>/<digest>/.modeldist/pieces          one byte per piece: 1 = written and verified
    <store>/<digest>/.modeldist/digests         32 bytes per piece: blake3 of what was written
    <store>/<digest>/.modeldist/lock            flock held by the one writer
    <store>/<digest>/.modeldist/complete        written only when every piece is verified

Free space is checked when a model is opened, and each piece's range is reserved with
``posix_fallocate`` (and locked with ``mlock`` when asked) by the writer just before it writes the
piece (``writable_piece``): a full tmpfs or disk fails with a clear ``StoreError`` (ENOSPC), never a
SIGBUS on first touch, and the page allocation runs in the parallel writers, not serially up front. A writer restarted on a
store resumes: pieces whose byte is set are not fetched again (re-hashed first when
``verify_on_resume``).

Must not: fetch anything (staging and agents do), or hand out tensors (loaders do).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import mmap
import os
import threading
import time
from pathlib import Path

import blake3

from ..errors import IntegrityError, StoreError
from ..manifest import Manifest

__all__ = ["ModelBuffer", "STATE_DIR", "COMPLETE_MARKER"]

log = logging.getLogger(__name__)

STATE_DIR = ".modeldist"
COMPLETE_MARKER = f"{STATE_DIR}/complete"
DIGEST_BYTES = 32


class ModelBuffer:
    """Writable buffers of one model. Context manager; ``close()`` is safe twice.

    Only one process writes a model at a time (``flock``); ``lock_timeout`` bounds the wait.
    """

    def __init__(self, directory: Path, manifest: Manifest, *, mlock: str = "off",
                 lock_timeout: float = 600.0, verify_on_resume: bool = True):
        self.dir = Path(directory)
        self.manifest = manifest
        self._maps: dict[str, mmap.mmap] = {}
        self._fds: list[int] = []
        self._locked: list[tuple[int, int]] = []
        self._file_fds: dict[str, int] = {}
        self._addrs: dict[str, int] = {}
        self._mlock_mode = "off"
        self._mlock_failed = False
        self._lock_fd: int | None = None
        self._bitmap: mmap.mmap | None = None
        self._digests: mmap.mmap | None = None
        self._mutex = threading.Lock()
        self._closed = False
        try:
            self._open(mlock, lock_timeout, verify_on_resume)
        except BaseException:
            self.close()
            raise

    # --- setup ------------------------------------------------------------------------------

    def _open(self, mlock: str, lock_timeout: float, verify_on_resume: bool) -> None:
        state = self.dir / STATE_DIR
        try:
            state.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _store_error(exc, state) from exc
        self._lock_fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + lock_timeout
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreError(f"{self.dir}: another process has been writing this model for more "
                                     f"than {lock_timeout:.0f}s", path=str(self.dir)) from None
                time.sleep(0.05)
        if self.is_complete:
            return  # a writer that finished while we waited; nothing to map for writing
        if not (self.dir / "manifest.json").exists():
            (self.dir / "manifest.json").write_bytes(self.manifest.to_json())
        n = len(self.manifest.pieces)
        self._bitmap = self._state_map("pieces", max(n, 1))
        self._digests = self._state_map("digests", max(n, 1) * DIGEST_BYTES)
        for f in self.manifest.files:
            path = self.dir / f.path
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise _store_error(exc, path) from exc
            self._fds.append(fd)
            self._file_fds[f.path] = fd
            if os.fstat(fd).st_size != f.size:
                os.ftruncate(fd, f.size)
            if f.size == 0:
                continue
            mm = mmap.mmap(fd, f.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            self._maps[f.path] = mm
            anchor = ctypes.c_char.from_buffer(mm)
            self._addrs[f.path] = ctypes.addressof(anchor)
            del anchor  # release the buffer export so the mapping can close
        self._mlock_mode = mlock
        self._check_space()
        if verify_on_resume:
            self._verify_present()

    def _state_map(self, name: str, size: int) -> mmap.mmap:
        path = self.dir / STATE_DIR / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._fds.append(fd)
        st = os.fstat(fd).st_size
        if st != size:
            if st:  # a state file of another layout: start over rather than trust it
                log.warning("%s: state file %s has the wrong size, resetting", self.dir, name)
            os.ftruncate(fd, 0)
            os.ftruncate(fd, size)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            raise _store_error(exc, path) from exc
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)

    def _check_space(self) -> None:
        """Fail at once, not half-way, when the store cannot hold what is still missing."""
        need = sum(self.manifest.pieces[i].length for i in self.missing())
        st = os.statvfs(self.dir)
        free = st.f_bavail * st.f_frsize
        if need > free:
            raise StoreError(f"{self.dir}: no space left in the store: {need} bytes needed, {free} free",
                             path=str(self.dir), errno_=errno.ENOSPC)

    def writable_piece(self, index: int) -> memoryview:
        """``piece_view`` for a writer: the piece's pages reserved (and locked) first."""
        p = self.manifest.pieces[index]
        try:
            os.posix_fallocate(self._file_fds[p.file], p.offset, p.length)
        except OSError as exc:
            raise _store_error(exc, self.dir / p.file) from exc
        if self._mlock_mode != "off" and not self._mlock_failed:
            self._mlock(self._addrs[p.file] + p.offset, p.length, strict=self._mlock_mode == "on")
        return self.piece_view(index)

    _libc = None

    def _mlock(self, addr: int, size: int, strict: bool) -> None:
        libc = ModelBuffer._libc or ctypes.CDLL(None, use_errno=True)
        ModelBuffer._libc = libc
        if libc.mlock(ctypes.c_void_p(addr), ctypes.c_size_t(size)) != 0:
            err = ctypes.get_errno()
            if strict:
                raise StoreError(f"mlock of {size} bytes failed: {os.strerror(err)}", errno_=err)
            log.debug("mlock not allowed (%s); carrying on unlocked", os.strerror(err))
            self._mlock_failed = True
            return
        with self._mutex:
            if not self._locked:
                self._locked = [(self._addrs[f], len(mm)) for f, mm in self._maps.items()]

    def _verify_present(self) -> None:
        """Re-hash pieces recorded as present; clear the ones that do not match."""
        present = [i for i in range(len(self.manifest.pieces)) if self.has(i)]
        bad = 0
        for i in present:
            expect = self.expected_digest(i)
            if expect is None or blake3.blake3(self.piece_view(i)).digest() != expect:
                self._bitmap[i] = 0
                bad += 1
        if present:
            log.info("%s: resuming with %d/%d pieces present (%d failed re-verification)",
                     self.dir.name, len(present) - bad, len(self.manifest.pieces), bad)

    # --- pieces -----------------------------------------------------------------------------

    @property
    def is_complete(self) -> bool:
        return (self.dir / COMPLETE_MARKER).exists()

    def has(self, index: int) -> bool:
        if self._bitmap is None:
            return self.is_complete
        return self._bitmap[index] == 1

    def missing(self) -> list[int]:
        if self._bitmap is None:
            return []
        bm = self._bitmap
        return [i for i in range(len(self.manifest.pieces)) if bm[i] != 1]

    def piece_view(self, index: int) -> memoryview:
        """Writable view of piece ``index`` inside its file's mapping (no copy)."""
        p = self.manifest.pieces[index]
        mm = self._maps[p.file]
        return memoryview(mm)[p.offset:p.offset + p.length]

    def expected_digest(self, index: int) -> bytes | None:
        """The digest a piece must have: the manifest's, else the one recorded when it was written."""
        d = self.manifest.pieces[index].digest
        if d is not None:
            return bytes.fromhex(d)
        if self._digests is None:
            return None
        raw = self._digests[index * DIGEST_BYTES:(index + 1) * DIGEST_BYTES]
        return None if raw == bytes(DIGEST_BYTES) else raw

    def commit(self, index: int, digest: bytes) -> None:
        """Record piece ``index`` as written, with the blake3 of its bytes.

        When the manifest already carries a digest for it, they must match (else IntegrityError
        and the piece stays missing).
        """
        want = self.manifest.pieces[index].digest
        if want is not None and bytes.fromhex(want) != digest:
            raise IntegrityError(f"piece {index} does not match its manifest digest", piece=index)
        with self._mutex:
            self._digests[index * DIGEST_BYTES:(index + 1) * DIGEST_BYTES] = digest
            self._bitmap[index] = 1  # after the digest and the data: the byte is the commit point

    def drop(self, indices) -> None:
        with self._mutex:
            for i in indices:
                self._bitmap[i] = 0

    def file_view(self, path: str) -> memoryview:
        mm = self._maps.get(path)
        return memoryview(mm) if mm is not None else memoryview(b"")

    def regions(self) -> dict[str, mmap.mmap]:
        """The model's mappings (file path -> writable MAP_SHARED mmap) that ``piece_view`` points into:
        what an RDMA transport registers, one memory region per file (empty files have none)."""
        return dict(self._maps)

    def finish(self) -> Manifest:
        """All pieces present -> write the manifest with digests and the completion marker."""
        missing = self.missing()
        if missing:
            raise StoreError(f"{self.dir}: {len(missing)} pieces still missing", path=str(self.dir))
        digests = [self.expected_digest(i).hex() for i in range(len(self.manifest.pieces))]
        final = self.manifest.with_digests(digests)
        for mm in self._maps.values():
            mm.flush()  # durable before the marker says so (a no-op cost on tmpfs)
        tmp = self.dir / f"{STATE_DIR}/manifest.json.tmp"
        tmp.write_bytes(final.to_json())
        os.replace(tmp, self.dir / "manifest.json")
        marker = self.dir / COMPLETE_MARKER
        marker.write_text(final.content_digest or "")
        self.manifest = final
        return final

    # --- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._locked:
            libc = ctypes.CDLL(None, use_errno=True)
            for addr, size in self._locked:
                libc.munlock(ctypes.c_void_p(addr), ctypes.c_size_t(size))
            self._locked.clear()
        for mm in [*self._maps.values(), self._bitmap, self._digests]:
            if mm is not None:
                try:
                    mm.close()
                except BufferError:
                    # a view is still exported (a caller holds one); the mapping closes with it
                    log.debug("%s: mapping still in use at close", self.dir)
        self._maps.clear()
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> "ModelBuffer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _store_error(exc: OSError, path: Path) -> StoreError:
    if exc.errno == errno.ENOSPC:
        msg = f"{path}: no space left in the store (need room for the whole model)"
    else:
        msg = f"{path}: {exc.strerror or exc}"
    return StoreError(msg, path=str(path), errno_=exc.errno)
