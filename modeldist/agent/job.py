"""One model on one agent: execute this node's part of the plan, and serve it to children.

A ``Job`` owns the model's ``ModelBuffer``, the table of piece digests (from the scheduler, which
got them from the stripe seeds), and one *fetcher* thread per distinct parent: a peer fetcher opens
a data session, asks for the missing pieces of the stripes that parent feeds, receives each straight
into the mapping, verifies it (blake3 against the scheduler's digest) and commits it, which wakes
any child session waiting for that piece (pipelining). An origin fetcher reads its stripe from the
origin and publishes the digests it computes. A bad piece is dropped and reported, and that parent
is not trusted again by this job until the scheduler re-plans.

Threads only (data plane); the agent's asyncio loop drains ``take_report()``.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import blake3

from .. import metrics
from ..config import Config
from ..errors import AuthError, IntegrityError, ModelDistError, StoreError, TransportError
from ..manifest import Manifest
from ..origin import open_origin
from ..staging import fill_from_origin
from ..store import ModelBuffer, Store
from ..transport.base import Hello, get_transport

__all__ = ["Job", "ParentRef"]

log = logging.getLogger(__name__)

DIGEST = 32
#: share of a child's fair rate a parent paces at: a little under, so TCP/IP headers fit too
PACE_FRACTION = 0.98


@dataclass(frozen=True)
class ParentRef:
    """Where one stripe comes from: a peer (node id + data address) or the origin."""

    node_id: str = ""
    addr: str = ""

    @property
    def origin(self) -> bool:
        return not self.node_id


@dataclass
class _Fill:
    """One reception of a piece from a peer, as children streaming it see it."""

    gen: int                      # which reception (a piece may be received again after a failure)
    landed: int = 0               # bytes landed so far, a prefix of the piece
    verified: bool | None = None  # None: still landing; True: verified and committed; False: given up


@dataclass
class Counters:
    origin: int = 0
    peer: int = 0
    sent: int = 0
    by_transport: dict[str, int] = field(default_factory=dict)


class Job:
    def __init__(self, *, node_id: str, manifest: Manifest, source: str, revision: str | None, key: bytes,
                 ticket: bytes,
                 stripes: int, store: Store, config: Config, transport: str = "tcp", stall_timeout: float = 30.0,
                 upload_bps: float = 0.0, manifest_json: bytes = b""):
        self.node_id = node_id
        self.manifest = manifest
        #: the manifest as the scheduler sent it (a restarted scheduler gets it back from us)
        self.manifest_json = manifest_json or manifest.to_json()
        self.model = manifest.digest
        self.epoch = -1                # of the assignment being executed (-1: none yet)
        self.children: list[str] = []  # node ids allowed to fetch from here (their count sets the pacing)
        self.children_bps: dict[str, float] = {}  # their downloads, bytes/s, where known (pacing too)
        self.source = source
        self.revision = revision or None
        self.key = key          # checks children's tickets
        self.ticket = ticket    # presented to parents
        self.k = stripes
        self.config = config
        self.transport = get_transport(transport, config=config)
        self.stall_timeout = stall_timeout
        self.upload_bps = upload_bps
        self.n = len(manifest.pieces)
        self.started = time.monotonic()
        self.finished_at: float | None = None
        self.cond = threading.Condition()
        self.counters = Counters()
        self.error: str | None = None
        self.buf: ModelBuffer = store.open(manifest, lock_timeout=60)
        self._complete_store = self.buf.is_complete
        if self._complete_store:
            # a finished store: serve it read-only from a fresh mapping of the final manifest
            self.buf.close()
            final = store.manifest(self.model)
            self.buf = _CompleteBuffer(store.path_of(self.model), final)
        self.have = bytearray(self.n)
        self.digests = bytearray(self.n * DIGEST)
        self.known = bytearray(self.n)
        for i in range(self.n):
            if self.buf.has(i):
                self.have[i] = 1
                d = self.buf.expected_digest(i)
                if d is not None:
                    self._set_digest(i, d)
        # outbound report state (drained by the agent's asyncio loop)
        self._new_have: list[int] = [i for i in range(self.n) if self.have[i]]
        # held pieces (resumed or complete store): their digests go to the scheduler too, so this
        # node's children can verify what it serves even when it reads nothing from the origin
        self._new_digests: list[int] = [i for i in range(self.n) if self.have[i] and self.known[i]]
        self._failures: list[tuple[str, int, str, str]] = []
        # cut-through: the latest reception of each piece from a peer (children stream it from here)
        self._fills: dict[int, _Fill] = {}
        self._fill_gen = 0
        self._fetchers: dict[ParentRef, _Fetcher] = {}
        self._parents: list[ParentRef] = []
        self._closed = False
        self.complete = all(self.have) if self.n else True
        if self.complete:
            self._finish()

    # --- digests from the scheduler -------------------------------------------------------

    def _set_digest(self, i: int, d: bytes) -> None:
        self.digests[i * DIGEST:(i + 1) * DIGEST] = d
        self.known[i] = 1

    def add_digests(self, indices, blob: bytes) -> None:
        if len(blob) != DIGEST * len(indices):
            log.warning("%s: malformed digest batch from scheduler", self.model[:12])
            return
        with self.cond:
            for j, i in enumerate(indices):
                if 0 <= i < self.n:
                    self._set_digest(i, blob[j * DIGEST:(j + 1) * DIGEST])
            self.cond.notify_all()

    def wait_digest(self, i: int, timeout: float, cancel: threading.Event | None = None) -> bytes | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.known[i]:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed or (cancel is not None and cancel.is_set()):
                    return None
                self.cond.wait(left)
            return bytes(self.digests[i * DIGEST:(i + 1) * DIGEST])

    # --- PieceSource (serving children) ----------------------------------------------------

    def piece_count(self) -> int:
        return self.n

    def piece_length(self, index: int) -> int:
        return self.manifest.pieces[index].length

    def wait_piece(self, index: int, timeout: float) -> memoryview | None:
        if not self.have[index]:
            if timeout <= 0:
                return None
            deadline = time.monotonic() + timeout
            with self.cond:
                while not self.have[index]:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._closed:
                        return None
                    self.cond.wait(left)
        return self.buf.piece_view(index)

    # cut-through (optional PieceSource methods, base.py): a piece's bytes go on to children while
    # they arrive; children learn at the end whether this node verified them (``fill_verdict``)

    def _landing(self, index: int) -> _Fill | None:
        """The reception of ``index`` now under way (not verified or given up yet), if any."""
        f = self._fills.get(index)
        return f if f is not None and f.verified is None and not self._closed else None

    def _outcome(self, index: int, gen: int) -> bool | None:
        """How fill ``gen`` of ``index`` ended: True verified, False given up (or replaced by a later
        one), None still landing."""
        f = self._fills.get(index)
        if f is None or f.gen != gen:
            return False
        if f.verified is None and self._closed:
            return False
        return f.verified

    def wait_sendable(self, index: int, timeout: float) -> None:
        """Wait until ``index`` is held or starts landing (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (self.have[index] or self._landing(index) or self._closed):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.cond.wait(left)

    def fill_state(self, index: int) -> tuple[int, memoryview] | None:
        """(generation, view) of a piece being received now and not held yet; else None."""
        with self.cond:
            f = self._landing(index)
            if f is None or self.have[index]:
                return None
            return f.gen, self.buf.piece_view(index)

    def wait_fill(self, index: int, gen: int, have: int, timeout: float) -> int:
        """Bytes of fill ``gen`` landed (a prefix), once more than ``have``; the piece's length once
        verified; -1 if that fill was given up (bad bytes, broken session: the stream must end);
        ``have`` when nothing new came within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                done = self._outcome(index, gen)
                if done is not None:
                    return self.piece_length(index) if done else -1
                landed = self._fills[index].landed
                if landed > have:
                    return landed
                left = deadline - time.monotonic()
                if left <= 0:
                    return have
                self.cond.wait(left)

    def fill_verdict(self, index: int, gen: int) -> bool | None:
        """Whether fill ``gen`` of ``index`` was verified and committed (None: not decided yet)."""
        with self.cond:
            return self._outcome(index, gen)

    def begin_fill(self, index: int) -> int:
        """A fetcher starts receiving ``index`` into the buffer: a new fill generation."""
        with self.cond:
            self._fill_gen += 1
            self._fills[index] = _Fill(self._fill_gen)
            self.cond.notify_all()
            return self._fill_gen

    def fill_progress(self, index: int, gen: int, landed: int) -> None:
        with self.cond:
            f = self._fills.get(index)
            if f is not None and f.gen == gen and f.verified is None and landed > f.landed:
                f.landed = landed
                self.cond.notify_all()

    def end_fill(self, index: int, gen: int) -> None:
        """Fill ``gen`` ends without a commit (bad bytes, session gone, re-plan): streams of it stop."""
        with self.cond:
            f = self._fills.get(index)
            if f is not None and f.gen == gen and f.verified is None:
                f.verified = False
                self.cond.notify_all()

    def sent(self, nbytes: int, transport: str) -> None:
        with self.cond:
            self.counters.sent += nbytes
        metrics.BYTES_SENT.labels(transport=transport).inc(nbytes)

    def send_rate(self, child: str | None = None) -> float:
        """Pace of one child session, bytes/s (0 = unpaced): a fair share of this node's upload,
        and no more than the child's fair share of its download.

        ``min(upload / children, child's download / k)``, a little under: the k parents feeding a
        child together fill its download link without any one stripe running ahead and the others
        starving, and no child edge is starved by its siblings (bench/results/broadcast_profile.json:
        the tail after the origin's last piece shrinks 3-5x). A child whose download is unknown is
        taken to be as fast as this node (``upload / max(k, children)``). So a slow parent with few
        fast children gives each its whole share instead of upload/k: it can catch up with what
        the parent holds, instead of falling further behind it (broadcast_hetero).
        """
        if self.upload_bps <= 0:
            return 0.0
        down = self.children_bps.get(child) or self.upload_bps
        return PACE_FRACTION * min(self.upload_bps / max(len(self.children), 1), down / max(self.k, 1))

    def regions(self) -> dict:
        """The store mappings pieces are served from (registered by the RDMA transport)."""
        return self.buf.regions()

    # --- plan execution --------------------------------------------------------------------

    def apply(self, parents: list[ParentRef], children: list[str] | None = None,
              children_bps: dict[str, float] | None = None) -> None:
        """New parents per stripe: restart only the fetchers whose stripes changed."""
        if children is not None:
            self.children = list(children)
            self.children_bps = dict(children_bps or {})
        if self._closed or self.complete:
            self._parents = parents
            return
        groups: dict[ParentRef, list[int]] = {}
        for s, p in enumerate(parents):
            groups.setdefault(p, []).append(s)
        for ref, fetcher in list(self._fetchers.items()):
            if groups.get(ref) != fetcher.stripes or not fetcher.is_alive():
                fetcher.stop()
                del self._fetchers[ref]
        for ref, stripes in groups.items():
            if ref not in self._fetchers:
                f = _Fetcher(self, ref, stripes)
                self._fetchers[ref] = f
                f.start()
        self._parents = parents

    def missing_in(self, stripes: list[int]) -> list[int]:
        return [i for s in stripes for i in range(s, self.n, self.k) if not self.have[i]]

    def commit(self, i: int, digest: bytes, *, source: str, transport: str, nbytes: int) -> None:
        if source != "origin":  # origin pieces were committed to the buffer by fill_from_origin
            self.buf.commit(i, digest)
        with self.cond:
            first = not self.have[i]
            self.have[i] = 1
            fill = self._fills.get(i)
            if fill is not None and fill.verified is None:
                fill.verified = True
            if first:
                self._new_have.append(i)
                if source == "origin":
                    self._set_digest(i, digest)
                    self._new_digests.append(i)
                    self.counters.origin += nbytes
                else:
                    self.counters.peer += nbytes
                self.counters.by_transport[transport] = self.counters.by_transport.get(transport, 0) + nbytes
            self.cond.notify_all()
            done = first and all(self.have)
        if done:
            self._finish()

    def report_failure(self, peer: str, piece: int, kind: str, detail: str) -> None:
        with self.cond:
            self._failures.append((peer, piece, kind, detail))

    def _finish(self) -> None:
        """Every piece verified: check files against the origin's sha256, write the marker."""
        try:
            if not self._complete_store:
                for f in self.manifest.files:
                    if f.sha256:
                        h = hashlib.sha256(self.buf.file_view(f.path)).hexdigest()
                        if h != f.sha256:
                            raise IntegrityError(f"{f.path}: sha256 does not match the origin's", path=f.path)
                self.manifest = self.buf.finish()
                self._complete_store = True
        except (ModelDistError, OSError) as exc:
            self.error = str(exc)
            log.error("%s: cannot complete: %s", self.model[:12], exc)
            return
        with self.cond:
            self.complete = True
            self.finished_at = time.monotonic()
            self.cond.notify_all()
        metrics.MODEL_LOAD_SECONDS.labels(stage="broadcast").observe(self.finished_at - self.started)
        log.info("%s: complete in %.2fs", self.model[:12], self.finished_at - self.started)

    def take_report(self) -> dict:
        with self.cond:
            out = {
                "have": self._new_have, "digests": self._new_digests, "failures": self._failures,
                "complete": self.complete, "error": self.error or "",
                "origin": self.counters.origin, "peer": self.counters.peer, "sent": self.counters.sent,
                "by_transport": dict(self.counters.by_transport),
            }
            self._new_have, self._new_digests, self._failures = [], [], []
            out["digest_blob"] = self._digest_blob(out["digests"])
        return out

    def _digest_blob(self, indices) -> bytes:
        return b"".join(bytes(self.digests[i * DIGEST:(i + 1) * DIGEST]) for i in indices)

    def resume_state(self) -> dict:
        """Everything a restarted scheduler needs from this job (one consistent snapshot)."""
        with self.cond:
            have = [i for i in range(self.n) if self.have[i]]
            held = [i for i in have if self.known[i]]
            return {
                "have": have, "complete": self.complete, "parents": list(self._parents),
                "digest_indices": held,
                "digest_blob": self._digest_blob(held),
                "origin": self.counters.origin, "peer": self.counters.peer, "sent": self.counters.sent,
                "by_transport": dict(self.counters.by_transport),
            }

    def wait_complete(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.complete and not self.error:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 1.0))
        return self.complete

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self.cond:
            self.cond.notify_all()
        for f in self._fetchers.values():
            f.stop()
        self._fetchers.clear()
        self.buf.close()


class _CompleteBuffer:
    """Read-only stand-in for a ModelBuffer of a model already complete in the store."""

    def __init__(self, path, manifest: Manifest):
        import mmap
        import os

        self.dir = path
        self.manifest = manifest
        self.is_complete = True
        self._maps = {}
        for f in manifest.files:
            if f.size:
                with open(path / f.path, "rb") as fh:
                    if os.fstat(fh.fileno()).st_size != f.size:
                        raise StoreError(f"{path / f.path}: size differs from the manifest", path=str(path))
                    self._maps[f.path] = mmap.mmap(fh.fileno(), f.size, access=mmap.ACCESS_READ)

    def has(self, i: int) -> bool:
        return True

    def expected_digest(self, i: int) -> bytes | None:
        d = self.manifest.pieces[i].digest
        return bytes.fromhex(d) if d else None

    def piece_view(self, i: int) -> memoryview:
        p = self.manifest.pieces[i]
        return memoryview(self._maps[p.file])[p.offset:p.offset + p.length]

    def file_view(self, path: str) -> memoryview:
        return memoryview(self._maps[path]) if path in self._maps else memoryview(b"")

    def regions(self) -> dict:
        return dict(self._maps)

    def commit(self, i: int, digest: bytes) -> None:
        raise StoreError("model is complete and read-only")

    def finish(self) -> Manifest:
        return self.manifest

    def close(self) -> None:
        for mm in self._maps.values():
            try:
                mm.close()
            except BufferError:
                pass
        self._maps.clear()


class _Fetcher:
    """Fetches the missing pieces of some stripes from one parent (a peer or the origin)."""

    def __init__(self, job: Job, ref: ParentRef, stripes: list[int]):
        self.job = job
        self.ref = ref
        self.stripes = stripes
        self._stop = threading.Event()
        self._session = None
        self._receiving: int | None = None  # the piece whose payload is on its way (peer sessions)
        self._streamed = False              # ... and whether the parent was cutting it through
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"modeldist-fetch-{ref.node_id or 'origin'}")

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        with self.job.cond:
            self.job.cond.notify_all()  # wakes a verifier waiting for a digest
        s = self._session
        if s is not None:
            s.close()  # wakes a blocked receive
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        job = self.job
        backoff = 0.1
        while not self._stop.is_set():
            todo = job.missing_in(self.stripes)
            if not todo:
                return
            try:
                if self.ref.origin:
                    self._from_origin(todo)
                else:
                    self._from_peer(todo)
                backoff = 0.1
            except IntegrityError as exc:
                job.report_failure(self.ref.node_id, exc.piece if exc.piece is not None else 0, "corrupt", str(exc))
                log.warning("%s: corrupt piece from %s: %s; waiting for a re-plan", job.model[:12],
                            self.ref.node_id, exc)
                return  # this parent is not trusted again until the scheduler re-plans
            except AuthError as exc:
                # also what a parent answers before it has this job (the plan reached it a moment
                # after us): back off and ask again, like any other refusal
                job.report_failure(self.ref.node_id, 0, "refused", str(exc))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            except (TransportError, OSError) as exc:
                mid, self._receiving = self._receiving, None
                if self._stop.is_set():
                    return
                kind = "stalled" if "stalled" in str(exc) else "unreachable"
                if kind == "stalled" and mid is not None:
                    # a whole piece: the parent held it when it started sending it. A cut-through
                    # one proves that only if the parent has reported holding it since (the
                    # scheduler checks): its own upstream may be what stalls
                    kind = "stalled_mid_stream" if self._streamed else "stalled_mid_piece"
                job.report_failure(self.ref.node_id or "origin", mid or 0, kind, str(exc))
                log.info("%s: %s from %s: %s%s", job.model[:12], kind.split("_")[0], self.ref.node_id or "origin", exc,
                         f" (in the middle of piece {mid})" if mid is not None and kind != "unreachable" else "")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            except ModelDistError as exc:
                job.error = str(exc)
                job.report_failure(self.ref.node_id or "origin", 0, "error", str(exc))
                log.error("%s: %s", job.model[:12], exc)
                return

    def _from_origin(self, todo: list[int]) -> None:
        job = self.job
        with open_origin(job.source, revision=job.revision, config=job.config) as origin:
            def landed(i: int, n: int) -> None:
                job.commit(i, job.buf.expected_digest(i), source="origin", transport="origin", nbytes=n)

            # fill_from_origin writes, hashes and commits to the buffer; the job's commit in
            # ``landed`` then publishes the piece and its digest to children and the scheduler
            fill_from_origin(job.buf, origin, todo, concurrency=job.config.seed_concurrency,
                             on_piece=landed, cancel=self._stop)

    def _from_peer(self, todo: list[int]) -> None:
        """Receive on this thread, verify and commit on a second one (blake3 releases the GIL), so
        the socket keeps draining while the previous piece is hashed."""
        job = self.job
        hello = Hello(job.model, job.ticket, job.node_id)
        session = job.transport.connect(self.ref.addr, hello, timeout=job.stall_timeout, regions=job.buf.regions())
        self._session = session
        checks: "queue.Queue[tuple[int, float, str, bool] | None]" = queue.Queue(maxsize=64)
        failure: list[BaseException] = []
        fills: dict[int, int] = {}  # pieces of this session being received here -> fill generation

        def verifier() -> None:
            while True:
                item = checks.get()
                if item is None:
                    return
                i, started, carrier, streamed = item
                try:
                    want = job.wait_digest(i, job.stall_timeout, cancel=self._stop)
                    if want is None and self._stop.is_set():
                        return  # re-planned: the piece stays missing and is fetched again
                    if want is None:
                        raise TransportError(f"no digest for piece {i} from the scheduler within "
                                             f"{job.stall_timeout:.0f}s", peer=self.ref.addr)
                    view = job.buf.piece_view(i)
                    got = blake3.blake3(view).digest()
                    if got != want and streamed and session.verdict(i, job.stall_timeout) is not True:
                        # cut through from a parent that had not verified it either, and did not
                        # (or could not say it did): its upstream's fault, or a broken session.
                        # Dropped without blame; fetched again in the next session.
                        job.end_fill(i, fills[i])
                        metrics.PIECES.labels(result="dropped").inc()
                        log.info("%s: piece %d from %s dropped: its parent did not verify it either",
                                 job.model[:12], i, self.ref.node_id)
                        continue
                    if got != want:
                        metrics.PIECES.labels(result="corrupt").inc()
                        raise IntegrityError(f"piece {i} from {self.ref.node_id} does not match its digest", piece=i)
                    job.commit(i, got, source="peer", transport=carrier, nbytes=len(view))
                    metrics.PIECES.labels(result="ok").inc()
                    metrics.PIECE_SECONDS.observe(time.monotonic() - started)
                except BaseException as exc:  # noqa: BLE001 - handed to the receiving thread
                    failure.append(exc)
                    session.close()  # wakes the receiver; the rest of this session is not trusted
                    return

        vt = threading.Thread(target=verifier, name="modeldist-verify", daemon=True)
        vt.start()
        try:
            if self._stop.is_set():
                return
            session.request(todo)
            scratch = bytearray(job.manifest.piece_size)
            mine: set[int] = set()

            def dest(index: int, length: int) -> memoryview:
                if not (0 <= index < job.n) or length != job.manifest.pieces[index].length:
                    raise TransportError(f"{self.ref.node_id} sent piece {index} with a bad length", peer=self.ref.addr)
                if job.have[index] or index in mine:
                    return memoryview(scratch)[:length]  # already here (or on its way): discard
                mine.add(index)
                self._receiving = index
                view = job.buf.writable_piece(index)
                fills[index] = job.begin_fill(index)  # children may stream it from now on
                return view

            def progress(index: int, landed: int) -> None:
                gen = fills.get(index)
                if gen is not None:
                    job.fill_progress(index, gen, landed)

            while not self._stop.is_set() and not failure:
                started = time.monotonic()
                # pieces land in slices only where children can take them on at once
                i = session.receive(dest, timeout=job.stall_timeout, progress=progress if job.children else None)
                self._receiving = None
                if i is None:
                    break
                if i not in mine:
                    continue
                item = (i, started, session.last_transport or job.transport.name, session.last_streamed)
                while not failure:
                    try:
                        checks.put(item, timeout=0.5)
                        break
                    except queue.Full:
                        continue
        except TransportError:
            self._streamed = session.streaming  # cut off inside a cut-through piece
            if not failure:
                raise
        finally:
            while vt.is_alive():
                try:
                    checks.put(None, timeout=0.5)
                    break
                except queue.Full:
                    continue
            vt.join(timeout=job.stall_timeout + 5)
            self._session = None
            session.close()
            for i, gen in fills.items():
                if not job.have[i]:
                    job.end_fill(i, gen)  # cut off, dropped or not verified: its streams end too
        if failure:
            raise failure[0]
