"""RDMA data plane (DESIGN section 6): pyverbs RC queue pairs, with the edge's TCP session as the side
channel and the fallback.

One edge, step by step (frames in ``transport/tcp/wire.py``):

1. The child registers its destination buffers (``connect(..., regions=...)``: the model's store
   mappings, one memory region each, shared by every session of the process, in the protection
   domain of that model: a queue pair of one model's edge cannot reach another model's memory) and
   opens the usual TCP session with ``HELLO_RDMA`` set in the hello's flags.
2. A parent that can serve over RDMA registers the source's mappings (``PieceSource.regions()``),
   creates an RC queue pair and answers ``OK_RDMA`` + its QP info (qp_num, psn, gid, lid, mtu,
   READ depth); the child creates its queue pair, connects it (RTR, RTS) and sends its own QP
   info; the parent connects its queue pair. Any failure on either side (no device, no memory
   registration, QP setup) turns the edge into a plain TCP session (child: QP info with qp_num 0;
   parent: plain ``OK``), and an older parent ignores the flag and answers ``OK``: the session is
   TCP from the start. Nothing else differs.
3. For each piece, as soon as the parent holds it verified, it sends an ``RDMA`` frame (index,
   length, rkey, address inside its region); the child calls ``dest(index, length)`` (so it, not
   the parent, decides where the bytes land, and a parent never gets write access to a child's
   memory) and RDMA-READs the piece straight into that view: into its registered mapping at the
   piece's offset, or, for a destination outside every region, through a registered bounce buffer.
   Up to ``WINDOW`` pieces are in flight; completions are polled (with the socket watched in the
   same loop, so new announcements are posted while earlier reads run) with the caller's deadline.
   When a read completes, ``receive`` returns its index and the child sends ``ACK`` (the parent
   counts the bytes sent, ``transport="rdma"``). A piece the parent cannot serve from a registered
   region is sent as a plain ``PIECE`` frame on the same session (per-piece fallback).
4. If a verbs operation fails mid-session (a completion with an error status, a failed post), the
   child forces its queue pair into the error state, drains the flushed work, and sends
   ``FALLBACK``; the parent re-sends every piece it announced that was not acknowledged, and all
   the rest, as ``PIECE`` frames over TCP into the same destination views. Nothing is lost, and
   the agent verifies every piece (blake3) whatever carried it.

Metrics: bytes received/sent by transport (``rdma`` vs ``tcp`` for pieces that went over the side
channel), ``modeldist_transport_fallbacks{side, reason}``; ``ChildSession.last_transport`` says per
piece which transport carried it (the agent's per-transport byte counts come from it).

Settings (``Config``): ``rdma_device`` (default: the first device with an active port),
``rdma_gid_index`` (default: RoCE v2 with an IPv4-mapped address, the one of the TCP session's
local address when there is one), and the test hook ``rdma_fail_after`` (``MODELDIST_RDMA_FAIL_AFTER``:
the child end of every RDMA session forces its queue pair into the error state after that many
pieces, a real verbs failure mid-transfer).

Memory: registration pins the mapping (all of it, at once). Stores on tmpfs (the default,
``/dev/shm``) can always be registered; a writable file-backed store on disk cannot on kernels that
refuse long-term pins of such mappings (6.5 and later): those sessions fall back to TCP, logged.
The memlock limit (``ulimit -l``) must cover the model unless the agent has CAP_IPC_LOCK.

TLS: with ``data_tls`` this transport refuses to start (ConfigError): RDMA READs move the pieces
between memories in clear, whatever protects the side channel. ``modeldist agent --data-tls`` picks
TCP under ``--rdma auto`` and refuses ``--rdma on``.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import mmap
import select
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from ... import metrics
from ...errors import ModelDistError, RdmaUnavailableError, TransportError
from ..base import Authorizer, ChildSession, Hello, Listener, Transport, register
from ..tcp import (IDLE_LIMIT, PIECE_WAIT, TcpChildSession, TcpListener, _recv_exact_fn, _sendall2,
                   open_session)
from ..tcp import wire
from . import verbs

__all__ = ["RdmaTransport", "RdmaListener", "RdmaChildSession", "check", "WINDOW"]

log = logging.getLogger(__name__)

#: RDMA pieces a parent announces to one child before it waits for acknowledgements
WINDOW = 16
#: how long a parent with RDMA pieces in flight waits for its next piece before it reads acknowledgements
ACK_POLL = 0.005
#: how long the child's receive loop sleeps between completion polls while reads are in flight
POLL_WAIT = 0.0002
#: bounce buffers at least this large (destinations outside every registered region)
BOUNCE_MIN = 1 << 20


def check(config=None) -> str:
    """Open the RDMA device these settings select (``Config``); its description, or raise
    ``RdmaUnavailableError`` saying why there is none (with an errno)."""
    from ...config import Config

    cfg = config if config is not None else Config.load()
    return verbs.open_device(cfg.rdma_device, cfg.rdma_gid_index).describe()


class RdmaTransport(Transport):
    """``rdma``: RC queue pairs where both ends can, TCP (same session) for everything else."""

    name = "rdma"

    def __init__(self, config=None):
        from ...config import Config

        self.config = config if config is not None else Config.load()
        if self.config.data_tls:
            # the side channel could run over TLS, but the pieces themselves would not: refuse rather
            # than move the weights in clear on a node that asked for an encrypted data plane
            from ...errors import ConfigError

            raise ConfigError("the rdma transport cannot be combined with data_tls (--data-tls): RDMA moves "
                              "the weights unencrypted; use the tcp transport (--rdma off)")
        self._warned = False

    def device(self) -> verbs.Device | None:
        """This process's RDMA device, or None (logged once per transport) when there is none."""
        try:
            return verbs.open_device(self.config.rdma_device, self.config.rdma_gid_index)
        except RdmaUnavailableError as exc:
            if not self._warned:
                self._warned = True
                log.warning("RDMA unavailable (%s, errno %s): data sessions use TCP", exc, exc.errno_)
            return None

    def listen(self, address: str, authorize: Authorizer) -> Listener:
        return RdmaListener(address, authorize, self)

    def connect(self, address: str, hello: Hello, *, timeout: float, regions=None) -> ChildSession:
        dev = self.device()
        if dev is None:
            metrics.TRANSPORT_FALLBACKS.labels(side="child", reason="setup").inc()
            sock, _ = open_session(address, hello, timeout)
            return TcpChildSession(sock, address)
        acquired: list[verbs.Region] = []
        for name, buf in (regions or {}).items():
            try:
                acquired.append(dev.acquire(buf, hello.model))
            except RdmaUnavailableError as exc:
                log.info("%s not registered for RDMA (%s): pieces there arrive through a bounce buffer", name, exc)
        ep = None
        sock = None
        try:
            sock, status = open_session(address, hello, timeout, flags=wire.HELLO_RDMA, accept=(wire.OK, wire.OK_RDMA))
            if status == wire.OK_RDMA:
                parent = wire.read_qp_info(_recv_exact_fn(sock, address))
                try:
                    ep = verbs.Endpoint(dev, requester=True, depth=2 * WINDOW, local_ip=sock.getsockname()[0],
                                        domain=hello.model)
                    ep.connect(parent)
                    sock.sendall(wire.encode_qp_info(ep.info()))
                except RdmaUnavailableError as exc:
                    log.warning("RDMA edge to %s could not be set up (%s, errno %s): carrying on over TCP",
                                address, exc, exc.errno_)
                    metrics.TRANSPORT_FALLBACKS.labels(side="child", reason="setup").inc()
                    if ep is not None:
                        ep.close()
                        ep = None
                    sock.sendall(wire.encode_qp_info(wire.NO_RDMA))
        except BaseException as exc:
            if ep is not None:
                ep.close()
            for r in acquired:
                dev.release(r)
            if sock is not None:
                sock.close()
            if isinstance(exc, OSError) and not isinstance(exc, ModelDistError):
                raise TransportError(f"handshake with {address} failed: {exc}", peer=address,
                                     errno_=exc.errno) from exc
            raise
        if ep is None:  # the parent serves TCP only (an older one, or no RDMA there), or setup failed
            for r in acquired:
                dev.release(r)
            return TcpChildSession(sock, address)
        return RdmaChildSession(sock, address, dev, ep, acquired, fail_after=self.config.rdma_fail_after)


# --- parent side ------------------------------------------------------------------------------


class _ParentEdge:
    """The parent's end of one RDMA edge: its queue pair and the source's registered mappings."""

    def __init__(self, dev: verbs.Device, ep: verbs.Endpoint):
        self.dev = dev
        self.ep = ep
        self.regions: list[verbs.Region] = []
        self._tried: set[int] = set()

    def add(self, buf, name: str = "") -> bool:
        try:
            self.regions.append(self.dev.acquire(buf, self.ep.domain))
            return True
        except RdmaUnavailableError as exc:
            log.info("%s not registered for RDMA (%s): its pieces go over TCP", name or "a buffer", exc)
            return False

    def add_source(self, source) -> None:
        regions = getattr(source, "regions", None)
        if regions is None:
            return
        for name, buf in regions().items():
            self._tried.add(id(buf))
            self.add(buf, name)

    def locate(self, view: memoryview) -> tuple[int, int] | None:
        """(rkey, address) of ``view`` inside a registered region, or None (send it over TCP)."""
        addr, n = verbs.buffer_address(view)
        for r in self.regions:
            if r.contains(addr, n):
                return r.rkey, addr
        obj = getattr(view, "obj", None)
        if isinstance(obj, mmap.mmap) and id(obj) not in self._tried:
            self._tried.add(id(obj))  # a source without regions(): register the mapping it serves from
            if self.add(obj):
                return self.locate(view)
        return None

    def close(self) -> None:
        self.ep.to_error()
        self.ep.close()  # no READ is served after this, so the regions can go
        for r in self.regions:
            self.dev.release(r)
        self.regions.clear()


class RdmaListener(TcpListener):
    """The TCP listener, with RDMA edges for children that ask for them."""

    transport_name = "rdma"

    def __init__(self, address: str, authorize: Authorizer, transport: RdmaTransport, *, io_timeout: float = 30.0):
        self._rdma = transport
        self._edges: set[_ParentEdge] = set()
        super().__init__(address, authorize, io_timeout=io_timeout)

    def rdma_edges(self) -> list[_ParentEdge]:
        """The RDMA edges being served now (diagnostics and fault-injection tests)."""
        with self._lock:
            return list(self._edges)

    def _accepted(self, conn, recv_exact, hello: Hello, flags: int, source, peer: str):
        if not flags & wire.HELLO_RDMA:
            return super()._accepted(conn, recv_exact, hello, flags, source, peer)
        dev = self._rdma.device()
        edge = None
        if dev is not None:
            ep = None
            try:
                ep = verbs.Endpoint(dev, requester=False, depth=1, local_ip=conn.getsockname()[0], domain=hello.model)
                edge = _ParentEdge(dev, ep)
                edge.add_source(source)
            except RdmaUnavailableError as exc:
                log.warning("RDMA edge to %s could not be set up (%s, errno %s): serving over TCP", peer, exc,
                            exc.errno_)
                if edge is not None:
                    edge.close()
                elif ep is not None:
                    ep.close()
                edge = None
        if edge is None:
            metrics.TRANSPORT_FALLBACKS.labels(side="parent", reason="setup").inc()
            conn.sendall(wire.encode_reply(wire.OK))
            return None
        try:
            conn.sendall(wire.encode_reply(wire.OK_RDMA) + wire.encode_qp_info(edge.ep.info()))
            child = wire.read_qp_info(recv_exact)
            if child.qp_num == 0:  # the child could not set up its end: plain TCP
                edge.close()
                return None
            edge.ep.connect(child)
        except RdmaUnavailableError as exc:
            log.warning("RDMA edge to %s could not be connected (%s, errno %s): serving over TCP", peer, exc,
                        exc.errno_)
            metrics.TRANSPORT_FALLBACKS.labels(side="parent", reason="setup").inc()
            edge.close()
            return None
        except BaseException:
            edge.close()
            raise
        with self._lock:
            self._edges.add(edge)
        return edge

    def _session_ended(self, state) -> None:
        with self._lock:
            self._edges.discard(state)
        state.close()

    def _send_pieces(self, conn, source, pending: list[int], state=None, *, stream: bool = False) -> None:
        if state is None:
            return super()._send_pieces(conn, source, pending, stream=stream)
        edge: _ParentEdge = state
        outstanding: dict[int, int] = {}  # announced over RDMA, not acknowledged yet: index -> length
        rdma = True
        poller = select.poll()
        poller.register(conn, select.POLLIN)
        recv_exact = _recv_exact_fn(conn, "child")
        idle_since = time.monotonic()
        while (pending or outstanding) and not self._closed.is_set():
            progressed = False
            if pending and (not rdma or len(outstanding) < WINDOW):
                for pos in range(min(64, len(pending))):
                    i = pending[pos]
                    # the first pending piece may be waited for (woken as soon as the job holds it);
                    # briefly while acknowledgements may be arriving
                    view = source.wait_piece(i, (ACK_POLL if outstanding else PIECE_WAIT) if pos == 0 else 0)
                    if view is None:
                        continue
                    del pending[pos]
                    loc = edge.locate(view) if rdma else None
                    if loc is not None:
                        conn.sendall(wire.FRAME.pack(wire.T_RDMA, i, len(view)) + wire.RDMA_EXT.pack(*loc))
                        outstanding[i] = len(view)
                    else:
                        _sendall2(conn, wire.FRAME.pack(wire.T_PIECE, i, len(view)), view)
                        source.sent(len(view), "tcp")
                    progressed = True
                    break
            if outstanding:
                full = len(outstanding) >= WINDOW or not pending
                events = poller.poll(self._io_timeout * 1000 if full else 0)
                if not events and full:
                    raise TransportError(f"child acknowledged no RDMA piece for {self._io_timeout:.0f}s")
                handled = 0
                while events and handled < 256:
                    kind, index, _ = wire.FRAME.unpack(recv_exact(wire.FRAME.size))
                    if kind == wire.T_ACK:
                        length = outstanding.pop(index, None)
                        if length is None:
                            raise TransportError(f"child acknowledged piece {index}, which is not in flight")
                        source.sent(length, "rdma")
                    elif kind == wire.T_FALLBACK:
                        log.info("child fell back to TCP with %d RDMA pieces unacknowledged: re-sending them",
                                 len(outstanding))
                        metrics.TRANSPORT_FALLBACKS.labels(side="parent", reason="transfer").inc()
                        rdma = False
                        pending[:0] = list(outstanding)  # in the order they were announced
                        outstanding.clear()
                    else:
                        raise TransportError(f"unexpected frame type {kind} from the child")
                    handled += 1
                    progressed = True
                    events = poller.poll(0) if outstanding else []
            if progressed:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > IDLE_LIMIT:
                return


# --- child side -------------------------------------------------------------------------------


@dataclass
class _Read:
    index: int
    view: memoryview
    addr: int
    length: int
    bounce: verbs.Region | None
    remaining: int = 0  # work requests (chunks) not completed yet


class RdmaChildSession(TcpChildSession):
    """Child end of an RDMA edge: RDMA READs for announced pieces, TCP frames for the rest."""

    _KINDS = (wire.T_PIECE, wire.T_RDMA, wire.T_END)

    def __init__(self, sock, peer: str, dev: verbs.Device, ep: verbs.Endpoint, regions: list[verbs.Region], *,
                 fail_after: int = 0):
        super().__init__(sock, peer)
        self._dev = dev
        self._ep: verbs.Endpoint | None = ep
        self._domain = ep.domain
        self._regions = regions
        self._tried: set[int] = set()
        self._rdma = True
        self._fail_after = fail_after
        self._rdma_done = 0
        self._chunk = dev.max_msg
        self._pieces: dict[int, _Read] = {}            # index -> read in flight
        self._wrs: dict[int, _Read] = {}               # posted work request id -> its read
        self._backlog: collections.deque = collections.deque()  # chunks waiting for send-queue room
        self._sq_free = ep.depth
        self._next_wr = 1
        self._ready: collections.deque = collections.deque()   # (index, transport) to return
        self._owed: dict[int, memoryview] = {}         # RDMA failed: arrives again over TCP, into this view
        self._ended = False
        self._ext = bytearray(wire.RDMA_EXT.size)
        self._bounce_free: list[verbs.Region] = []
        self._bounce_all: list[verbs.Region] = []
        self._verbs = threading.Lock()                 # verbs calls vs close() from another thread
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        self.last_transport = "rdma"
        self.fallback_error: TransportError | None = None

    @property
    def rdma_active(self) -> bool:
        return self._rdma

    def break_queue_pair(self) -> None:
        """Force this edge's queue pair into the error state (tests: a verbs failure mid-transfer)."""
        with self._verbs:
            if self._ep is not None and not self._closed:
                self._ep.to_error()

    # --- receive ---

    def receive(self, dest: Callable[[int, int], memoryview], timeout: float,
                progress: Callable[[int, int], None] | None = None) -> int | None:
        # pieces land whole here (no cut-through over RDMA: a hop costs microseconds): no progress
        last = time.monotonic()
        while True:
            if self._ready:
                i, how = self._ready.popleft()
                self.last_transport = how
                return i
            if self._closed:
                raise TransportError(f"{self.peer}: session closed", peer=self.peer)
            if self._ended and not self._pieces:
                return None
            progressed = False
            if self._pieces:
                progressed = self._poll()
                if self._ready:
                    continue
            if not self._ended:
                # reads in flight: look at the socket without blocking, then sleep briefly (poll()'s
                # millisecond timeout is too coarse); none: block on the socket until the deadline
                wait = 0 if self._pieces else max(0.0, timeout - (time.monotonic() - last)) * 1000
                if not self._poller.poll(wait):
                    if self._pieces and not progressed:
                        time.sleep(POLL_WAIT)
                else:  # readable, or hung up / closed: the read says which
                    if self._closed:
                        raise TransportError(f"{self.peer}: session closed", peer=self.peer)
                    try:
                        got = self._frame(dest, timeout)
                    except TransportError:
                        raise
                    except OSError as exc:  # the socket was closed under us (close() from another thread)
                        raise TransportError(f"{self.peer}: {exc}", peer=self.peer, errno_=exc.errno) from exc
                    if got is not None:
                        self.last_transport = "tcp"
                        return got
                    progressed = True
            elif not progressed:
                time.sleep(POLL_WAIT)
            now = time.monotonic()
            if progressed:
                last = now
            elif now - last > timeout:
                raise TransportError(f"{self.peer}: no data for {timeout:.1f}s (stalled)", peer=self.peer)

    def _frame(self, dest, timeout: float) -> int | None:
        """Read one frame; the index of a piece that arrived whole over TCP, else None."""
        self._recv_into(memoryview(self._head), timeout)
        head = wire.parse_frame_head(bytes(self._head), self._KINDS)
        if head.kind == wire.T_END:
            self._ended = True
            return None
        if head.kind == wire.T_RDMA:
            self._recv_into(memoryview(self._ext), timeout)
        if head.index in self._pieces or (head.kind == wire.T_RDMA and head.index in self._owed):
            raise TransportError(f"{self.peer}: piece {head.index} announced twice", peer=self.peer)
        view = self._owed.pop(head.index, None) if head.kind == wire.T_PIECE else None
        if view is None:
            view = dest(head.index, head.length)
        if len(view) != head.length:
            raise TransportError(f"{self.peer}: piece {head.index} has length {head.length}, expected {len(view)}",
                                 peer=self.peer)
        if view.readonly:
            raise TransportError(f"{self.peer}: destination of piece {head.index} is read-only", peer=self.peer)
        if head.kind == wire.T_PIECE:
            self._recv_into(view, timeout)
            metrics.BYTES_RECEIVED.labels(source="peer", transport="tcp").inc(head.length)
            return head.index
        if not self._rdma:  # announced before the parent saw our FALLBACK: it comes again over TCP
            self._owed[head.index] = view
            return None
        rkey, raddr = wire.RDMA_EXT.unpack(self._ext)
        self._start_read(head.index, view, raddr, rkey)
        return None

    # --- RDMA reads ---

    def _local(self, view: memoryview, addr: int, n: int) -> int | None:
        """lkey of a registered, writable region holding ``view``, or None."""
        for r in self._regions:
            if r.writable and r.contains(addr, n):
                return r.lkey
        obj = getattr(view, "obj", None)
        if isinstance(obj, mmap.mmap) and id(obj) not in self._tried:
            self._tried.add(id(obj))  # no regions given: register the mapping the views point into
            try:
                self._regions.append(self._dev.acquire(obj, self._domain))
            except RdmaUnavailableError as exc:
                log.info("destination mapping not registered for RDMA (%s): using a bounce buffer", exc)
                return None
            return self._local(view, addr, n)
        return None

    def _take_bounce(self, n: int) -> verbs.Region:
        for k, b in enumerate(self._bounce_free):
            if b.length >= n:
                return self._bounce_free.pop(k)
        b = self._dev.scratch(max(n, BOUNCE_MIN), self._domain)
        self._bounce_all.append(b)
        return b

    def _start_read(self, index: int, view: memoryview, raddr: int, rkey: int) -> None:
        n = len(view)
        if n == 0:  # nothing to read (a parent sends these as PIECE frames anyway)
            rd = self._pieces[index] = _Read(index, view, 0, 0, None)
            self._complete(rd)
            return
        addr, _ = verbs.buffer_address(view)
        bounce = None
        try:
            lkey = self._local(view, addr, n)
            if lkey is None:
                bounce = self._take_bounce(n)
                laddr, lkey = bounce.addr, bounce.lkey
            else:
                laddr = addr
        except RdmaUnavailableError as exc:
            self._owed[index] = view
            self._fallback(f"no local memory for RDMA: {exc}", exc.errno_)
            return
        rd = _Read(index, view, addr, n, bounce)
        self._pieces[index] = rd
        for off in range(0, n, self._chunk):
            k = min(self._chunk, n - off)
            self._backlog.append((rd, laddr + off, lkey, k, raddr + off, rkey))
            rd.remaining += 1
        self._post()

    def _post(self) -> None:
        failure = None
        with self._verbs:
            if self._closed or not self._rdma or self._ep is None:
                return
            while self._backlog and self._sq_free > 0:
                rd, laddr, lkey, k, raddr, rkey = self._backlog[0]
                wr_id = self._next_wr
                try:
                    self._ep.post_read(wr_id, laddr, lkey, k, raddr, rkey)
                except TransportError as exc:
                    failure = exc
                    break
                self._next_wr += 1
                self._backlog.popleft()
                self._wrs[wr_id] = rd
                self._sq_free -= 1
        if failure is not None:
            self._fallback(str(failure), failure.errno_)

    def _poll(self) -> bool:
        failure = None
        with self._verbs:
            if self._closed or not self._rdma or self._ep is None:
                return False
            try:
                done = self._ep.poll(32)
            except TransportError as exc:
                done, failure = [], exc
        if failure is not None:
            self._fallback(str(failure), failure.errno_)
            return True
        if not done:
            return False
        for wr_id, status in done:
            rd = self._wrs.pop(wr_id, None)
            self._sq_free += 1
            if status != 0:
                self._fallback(f"RDMA READ failed: {verbs.wc_status_str(status)}", verbs.wc_errno(status))
                return True
            if rd is None:
                continue
            rd.remaining -= 1
            if rd.remaining == 0:
                self._complete(rd)
        if self._backlog and self._rdma:
            self._post()
        return True

    def _complete(self, rd: _Read) -> None:
        del self._pieces[rd.index]
        if rd.bounce is not None:
            ctypes.memmove(rd.addr, rd.bounce.addr, rd.length)
            self._bounce_free.append(rd.bounce)
        metrics.BYTES_RECEIVED.labels(source="peer", transport="rdma").inc(rd.length)
        try:
            self.sock.sendall(wire.FRAME.pack(wire.T_ACK, rd.index, 0))
        except OSError as exc:
            raise TransportError(f"{self.peer}: {exc}", peer=self.peer, errno_=exc.errno) from exc
        self._ready.append((rd.index, "rdma"))
        self._rdma_done += 1
        if self._fail_after and self._rdma_done == self._fail_after:
            log.warning("fault injection (rdma_fail_after=%d): breaking the queue pair to %s", self._fail_after,
                        self.peer)
            self.break_queue_pair()

    def _fallback(self, reason: str, err: int | None) -> None:
        """RDMA broke: stop it, make sure no READ lands any more, ask the parent to re-send over TCP."""
        if not self._rdma:
            return
        self._rdma = False
        self.fallback_error = TransportError(f"{self.peer}: {reason}", peer=self.peer, errno_=err)
        log.warning("RDMA edge to %s failed (%s, errno %s): %d pieces in flight, carrying on over TCP", self.peer,
                    reason, err, len(self._pieces))
        metrics.TRANSPORT_FALLBACKS.labels(side="child", reason="transfer").inc()
        with self._verbs:
            ep = self._ep
            if ep is not None and not self._closed:
                ep.to_error()
                deadline = time.monotonic() + 5.0
                while self._wrs and time.monotonic() < deadline:  # flushed work completes at once
                    try:
                        done = ep.poll(64)
                    except TransportError:
                        break
                    for wr_id, _ in done:
                        self._wrs.pop(wr_id, None)
                    if not done:
                        time.sleep(0.001)
                if self._wrs:  # not all flushed: destroying the queue pair guarantees no more DMA
                    ep.close()
                    self._ep = None
            self._wrs.clear()
        for rd in self._pieces.values():
            self._owed[rd.index] = rd.view
            if rd.bounce is not None:
                self._bounce_free.append(rd.bounce)
        self._pieces.clear()
        self._backlog.clear()
        try:
            self.sock.sendall(wire.FRAME.pack(wire.T_FALLBACK, 0, 0))
        except OSError as exc:
            raise TransportError(f"{self.peer}: {exc}", peer=self.peer, errno_=exc.errno) from exc

    def close(self) -> None:
        if self._closed:
            return
        super().close()  # wakes a receive blocked on the socket
        with self._verbs:
            if self._ep is not None:
                self._ep.to_error()
                self._ep.close()
                self._ep = None
            for r in self._regions:
                self._dev.release(r)
            self._regions.clear()
            for b in self._bounce_all:
                self._dev.drop_scratch(b)
            self._bounce_all.clear()
            self._bounce_free.clear()


register("rdma", RdmaTransport)
