"""Raw-TCP data plane: the default transport and the fallback for RDMA.

Parent: one listener thread accepts; one thread per session authorizes the hello, reads the one
request, and sends each requested piece as soon as the job holds it, straight from the mapping
(``sendmsg`` of header + memoryview: no copy in Python). Child: ``recv_into`` straight into the
destination view. Large socket buffers; every blocking call has a deadline (socket timeouts).

Cut-through (``config.cut_through``, on by default; base.py): the child asks for it in its hello
(``HELLO_STREAM``). The parent then also sends, as ``STREAM`` frames, pieces its job is still
receiving, chunk by chunk as they land, and a ``VERDICT`` for each once its job verified (or gave
up) the piece; a child forwarding pieces on receives them in ``STREAM_CHUNK`` slices and reports
each (``progress``).

TLS (``TcpTransport(config)`` with ``config.data_tls``; ``security.data_tls_contexts``): both ends
wrap the connected socket in TLS 1.3 before the hello (mutual: the parent demands a certificate
signed by the cluster CA, the child verifies the parent's; no hostname check). An ``SSLSocket``
takes neither ``sendmsg`` nor ``MSG_WAITALL`` nor kernel-side deadlines, so a TLS session uses
``sendall`` of header then payload and a ``recv_into`` loop with Python socket timeouts (same
deadlines); the plain path is untouched. A failed handshake and a TLS/plaintext mismatch (one end
without ``--data-tls``) are ``TlsError`` at once on the end that sees it, never a hang, and counted
(``modeldist_auth_refusals_total{plane="data",reason="tls"}``).
"""

from __future__ import annotations

import logging
import errno
import socket
import ssl
import struct
import threading
import time
from typing import Callable, Sequence

from ... import metrics
from ...errors import AuthError, ModelDistError, TlsError, TransportError
from ..base import Authorizer, ChildSession, Hello, Listener, Transport, register
from . import wire

__all__ = ["TcpTransport", "TcpListener", "TcpChildSession", "TlsChildSession", "open_session", "split_addr"]

log = logging.getLogger(__name__)

SOCK_BUF = 8 << 20
#: how long a parent waits for a requested piece it does not hold yet before moving on to others
PIECE_WAIT = 0.05
#: a session with no piece sendable for this long ends (the child re-plans)
IDLE_LIMIT = 300.0
#: open data sessions per listener, and per peer address (a child needs one per parent edge)
MAX_SESSIONS = 1024
MAX_SESSIONS_PER_PEER = 64
#: Linux SO_MAX_PACING_RATE (not exported by Python's socket module): TCP's own pacing, no fq needed
SO_MAX_PACING_RATE = getattr(socket, "SO_MAX_PACING_RATE", 47)
#: the one answer to an unauthorized hello, whatever the reason
REFUSED = "session refused"
#: a piece a child forwards on lands (and is reported) in slices of this size: each hop of a tree
#: delays the stream by about one slice at the stripe's rate instead of one whole piece
STREAM_CHUNK = 128 << 10


def _deadlines(sock: socket.socket, seconds: float) -> None:
    """Blocking socket with kernel-side timeouts (SO_RCVTIMEO/SO_SNDTIMEO).

    Python's own timeout mode polls before every recv/send (one extra syscall each); a blocking
    socket with kernel timeouts keeps the same deadline at half the syscalls, and lets
    ``MSG_WAITALL`` fill a whole piece in one call.
    """
    sock.settimeout(None)
    sec = int(seconds)
    tv = struct.pack("ll", sec, int((seconds - sec) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


def _tls_refused(peer: str, detail: object) -> None:
    """Count and log a data session that failed TLS (handshake, certificate, or TLS on one end only)."""
    metrics.AUTH_REFUSALS.labels(plane="data", reason="tls").inc()
    log.warning("data session with %s refused (TLS): %s", peer, detail)


def _shutdown(sock: socket.socket) -> None:
    """Shut the connection down at the socket level (wakes a thread blocked on it; for an SSLSocket,
    unlike ``SSLSocket.shutdown``, without dropping its TLS state under that thread)."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _tune(sock: socket.socket) -> None:
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCK_BUF)
        except OSError:
            pass
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def split_addr(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise TransportError(f"bad address {address!r} (expected host:port)", peer=address)
    return host.strip("[]"), int(port)


def _recv_exact_fn(sock: socket.socket, peer: str):
    def recv_exact(n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = sock.recv_into(view[got:], n - got)
            if k == 0:
                raise TransportError("connection closed by peer", peer=peer)
            got += k
        return bytes(buf)
    return recv_exact


class TcpChildSession(ChildSession):
    last_transport = "tcp"
    _KINDS = (wire.T_PIECE, wire.T_STREAM, wire.T_VERDICT, wire.T_END)

    def __init__(self, sock: socket.socket, peer: str):
        self.sock = sock
        self.peer = peer
        self._closed = False
        self._ended = False
        self._head = bytearray(wire.FRAME.size)
        self._timeout = -1.0
        # cut-through pieces received whose verdict has not come yet, and the verdicts that came
        self._unjudged: set[int] = set()
        self._verdicts: dict[int, bool] = {}
        self._vcond = threading.Condition()

    def request(self, indices: Sequence[int]) -> None:
        try:
            self.sock.sendall(wire.encode_request(list(indices)))
        except OSError as exc:
            raise TransportError(f"request to {self.peer} failed: {exc}", peer=self.peer, errno_=exc.errno) from exc

    def _recv_into(self, view: memoryview, timeout: float) -> None:
        if timeout != self._timeout:
            _deadlines(self.sock, timeout)
            self._timeout = timeout
        got, n = 0, len(view)
        while got < n:
            try:
                k = self.sock.recv_into(view[got:], n - got, socket.MSG_WAITALL)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    raise TransportError(f"{self.peer}: no data for {timeout:.1f}s (stalled)", peer=self.peer) from None
                raise TransportError(f"{self.peer}: {exc}", peer=self.peer, errno_=exc.errno) from exc
            if k == 0:
                raise TransportError(f"{self.peer}: connection closed", peer=self.peer)
            got += k

    def receive(self, dest: Callable[[int, int], memoryview], timeout: float,
                progress: Callable[[int, int], None] | None = None) -> int | None:
        while True:
            self._recv_into(memoryview(self._head), timeout)
            head = wire.parse_frame_head(bytes(self._head), self._KINDS)
            if head.kind == wire.T_END:
                with self._vcond:
                    self._ended = True
                    self._vcond.notify_all()
                return None
            if head.kind != wire.T_VERDICT:
                break
            with self._vcond:
                if head.index not in self._unjudged:
                    raise TransportError(f"{self.peer}: verdict on piece {head.index}, which it did not stream",
                                         peer=self.peer)
                self._unjudged.discard(head.index)
                self._verdicts[head.index] = head.length == 1
                self._vcond.notify_all()
        view = dest(head.index, head.length)
        if len(view) != head.length:
            raise TransportError(f"{self.peer}: piece {head.index} has length {head.length}, expected {len(view)}",
                                 peer=self.peer)
        streamed = head.kind == wire.T_STREAM
        if streamed:
            with self._vcond:
                self._unjudged.add(head.index)
        self.streaming = streamed
        if progress is None:
            self._recv_into(view, timeout)
        else:
            for start in range(0, head.length, STREAM_CHUNK):
                end = min(start + STREAM_CHUNK, head.length)
                self._recv_into(view[start:end], timeout)
                progress(head.index, end)
        self.streaming = False
        self.last_streamed = streamed
        metrics.BYTES_RECEIVED.labels(source="peer", transport="tcp").inc(head.length)
        return head.index

    def verdict(self, index: int, timeout: float) -> bool | None:
        deadline = time.monotonic() + timeout
        with self._vcond:
            while index not in self._verdicts:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed or self._ended or index not in self._unjudged:
                    return None
                self._vcond.wait(left)
            return self._verdicts.pop(index)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with self._vcond:
                self._vcond.notify_all()
            _shutdown(self.sock)
            self.sock.close()


class TlsChildSession(TcpChildSession):
    """A child session over TLS: the same frames, received with a ``recv_into`` loop under a Python
    socket timeout (an SSLSocket has no ``MSG_WAITALL`` and ignores kernel deadlines; each call
    returns at most one TLS record, 16 KiB)."""

    def _recv_into(self, view: memoryview, timeout: float) -> None:
        if timeout != self._timeout:
            self.sock.settimeout(timeout)
            self._timeout = timeout
        recv_into = self.sock.recv_into
        got, n = 0, len(view)
        while got < n:
            try:
                k = recv_into(view[got:], n - got)
            except TimeoutError:
                raise TransportError(f"{self.peer}: no data for {timeout:.1f}s (stalled)", peer=self.peer) from None
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                raise TransportError(f"{self.peer}: connection closed", peer=self.peer) from None
            except ssl.SSLError as exc:
                raise TlsError(f"{self.peer}: TLS: {exc}", peer=self.peer) from exc
            except OSError as exc:
                raise TransportError(f"{self.peer}: {exc}", peer=self.peer, errno_=exc.errno) from exc
            if k == 0:
                raise TransportError(f"{self.peer}: connection closed", peer=self.peer)
            got += k


class TcpListener(Listener):
    #: label of this listener's sessions in metrics (a subclass serves another transport)
    transport_name = "tcp"

    def __init__(self, address: str, authorize: Authorizer, *, io_timeout: float = 30.0, tls=None):
        host, port = split_addr(address)
        self._authorize = authorize
        self._tls = tls  # security.DataTls or None (plain TCP)
        self._io_timeout = io_timeout
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        _tune(self.sock)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise TransportError(f"cannot listen on {address}: {exc.strerror}", peer=address, errno_=exc.errno) from exc
        self.sock.listen(256)
        self.sock.settimeout(0.2)
        h, p = self.sock.getsockname()[:2]
        self.address = f"{h}:{p}" if family == socket.AF_INET else f"[{h}]:{p}"
        self._closed = threading.Event()
        self._sessions: set[socket.socket] = set()
        self._per_host: dict[str, int] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, name="modeldist-tcp-accept", daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, addr = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            _tune(conn)
            with self._lock:
                if self._closed.is_set():
                    conn.close()
                    return
                host = addr[0]
                if len(self._sessions) >= MAX_SESSIONS or self._per_host.get(host, 0) >= MAX_SESSIONS_PER_PEER:
                    # over a limit: a one-line refusal, no thread, no payload
                    metrics.REFUSALS.labels(what="sessions").inc()
                    log.warning("refusing data session from %s: session limit reached", host)
                    try:
                        conn.settimeout(1.0)
                        conn.sendall(wire.encode_reply(wire.BUSY, "too many sessions"))
                    except OSError:
                        pass
                    conn.close()
                    continue
                self._per_host[host] = self._per_host.get(host, 0) + 1
                self._sessions.add(conn)
                self._threads = [t for t in self._threads if t.is_alive()]
                t = threading.Thread(target=self._serve, args=(conn, f"{addr[0]}:{addr[1]}"),
                                     name="modeldist-tcp-serve", daemon=True)
                self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket, peer: str) -> None:
        metrics.ACTIVE_SESSIONS.labels(transport=self.transport_name).inc()
        state = None
        raw = conn
        try:
            conn.settimeout(self._io_timeout)
            if self._tls is not None:
                conn = self._tls_accept(raw, peer)
            recv_exact = _recv_exact_fn(conn, peer)
            hello, version, flags = wire.read_hello_flags(recv_exact)
            if version != wire.VERSION:
                conn.sendall(wire.encode_reply(wire.BAD_VERSION, f"version {version} not supported"))
                return
            try:
                source = self._authorize(hello, peer)
            except ModelDistError as exc:
                # a bad ticket and a model this node has no job for get the same answer, byte for
                # byte: a peer without a valid ticket learns nothing, not even which models are
                # here (DESIGN 9). The reason stays in this node's log (and metrics).
                if not isinstance(exc, AuthError):
                    metrics.AUTH_REFUSALS.labels(plane="data", reason="unknown_model").inc()
                conn.sendall(wire.encode_reply(wire.AUTH, REFUSED))
                log.warning("refused data session from %s (%s): %s", peer, hello.node_id, exc)
                return
            state = self._accepted(conn, recv_exact, hello, flags, source, peer)
            _pace(conn, source, hello.node_id)
            pending = wire.read_request(recv_exact, source.piece_count())
            if self._tls is None:
                _deadlines(conn, self._io_timeout)  # TLS: stays in timeout mode (same deadline)
            stream = bool(flags & wire.HELLO_STREAM) and callable(getattr(source, "wait_sendable", None))
            self._send_pieces(conn, source, pending, state, stream=stream)
            conn.sendall(wire.FRAME.pack(wire.T_END, 0, 0))
        except (TransportError, OSError) as exc:
            if isinstance(exc, TlsError):
                _tls_refused(peer, exc)
            elif isinstance(exc, TransportError) and ("limit" in str(exc) or "magic" in str(exc)):
                metrics.REFUSALS.labels(what="data_frame").inc()
            if not self._closed.is_set():
                log.debug("session with %s ended: %s", peer, exc)
        except Exception:  # noqa: BLE001 - a serving thread must never die silently
            log.exception("session with %s failed", peer)
        finally:
            if state is not None:
                self._session_ended(state)
            metrics.ACTIVE_SESSIONS.labels(transport=self.transport_name).dec()
            with self._lock:
                self._sessions.discard(conn)
                self._sessions.discard(raw)
                host = peer.rsplit(":", 1)[0]
                self._per_host[host] = self._per_host.get(host, 1) - 1
                if self._per_host[host] <= 0:
                    self._per_host.pop(host, None)
            try:
                conn.close()
                raw.close()
            except OSError:
                pass

    def _tls_accept(self, raw: socket.socket, peer: str) -> ssl.SSLSocket:
        """Server side of the TLS handshake (under the socket's timeout); the TLS socket replaces the
        raw one among the sessions ``close()`` wakes. Raises TlsError (counted by ``_serve``).

        A child that sends a plain hello instead (it runs without ``--data-tls``) gets a plain
        ``TLS_REQUIRED`` reply, so it fails at once with a clear reason instead of a reset.
        """
        try:
            first = raw.recv(1, socket.MSG_PEEK)
            if first == wire.MAGIC[:1]:
                wire.read_hello_flags(_recv_exact_fn(raw, peer))  # consume it: the reply is not lost to a reset
                raw.sendall(wire.encode_reply(wire.TLS_REQUIRED, "this node requires TLS on data sessions "
                                                                 "(--data-tls)"))
                raise wire.TlsMismatch(f"plaintext session from {peer}: the child runs without --data-tls",
                                       peer=peer)
            conn = self._tls.server.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            with self._lock:
                self._sessions.discard(raw)
                self._sessions.add(conn)
            try:
                conn.do_handshake()
            except BaseException:
                conn.close()
                raise
        except (ssl.SSLError, OSError) as exc:
            if self._closed.is_set():
                raise TransportError("listener closed", peer=peer) from None
            if isinstance(exc, TlsError):
                raise
            if isinstance(exc, TransportError):  # not even a modeldist hello
                raise TlsError(f"TLS handshake with {peer} failed: {exc}", peer=peer) from exc
            detail = f"timed out after {self._io_timeout:.1f}s" if isinstance(exc, TimeoutError) else exc
            raise TlsError(f"TLS handshake with {peer} failed: {detail}", peer=peer) from exc
        return conn

    def _accepted(self, conn: socket.socket, recv_exact, hello: Hello, flags: int, source, peer: str):
        """The hello is authorized: answer it; returns per-session state for ``_send_pieces``.

        Plain TCP ignores the hello's flags (an RDMA-capable child then carries on over TCP).
        """
        conn.sendall(wire.encode_reply(wire.OK))
        return None

    def _session_ended(self, state) -> None:
        """Release what ``_accepted`` set up (called once per session that got that far)."""

    def _send_pieces(self, conn: socket.socket, source, pending: list[int], state=None, *,
                     stream: bool = False) -> None:
        """Send pieces as they become available, earliest-requested first (a small window); with
        ``stream``, also pieces the source is still receiving (cut-through), then their verdicts."""
        idle_since = time.monotonic()
        window = 64
        send = _sendall2 if self._tls is None else _sendall2_tls
        unjudged: dict[int, int] = {}  # streamed piece -> fill generation; verdict not sent yet
        while (pending or unjudged) and not self._closed.is_set():
            sent_any = False
            if unjudged:
                self._send_verdicts(conn, source, unjudged)
                if not pending:
                    if not unjudged:
                        break
                    if time.monotonic() - idle_since > self._io_timeout:
                        raise TransportError(f"{len(unjudged)} streamed pieces not verified here within "
                                             f"{self._io_timeout:.0f}s")
                    # the last pieces' checks: woken by the commit (or wait a moment)
                    source.wait_piece(next(iter(unjudged)), PIECE_WAIT)
                    continue
            for pos in range(min(window, len(pending))):
                i = pending[pos]
                view = source.wait_piece(i, 0 if (pos or stream) else PIECE_WAIT)
                if view is not None:
                    send(conn, wire.FRAME.pack(wire.T_PIECE, i, len(view)), view)
                    source.sent(len(view), "tcp")
                elif stream and (fill := source.fill_state(i)) is not None:
                    unjudged[i] = fill[0]
                    self._stream_piece(conn, source, i, *fill)
                else:
                    continue
                del pending[pos]
                sent_any = True
                idle_since = time.monotonic()
                break
            if not sent_any:
                if stream and pending:
                    # nothing to send: wait for the first piece to land or start landing (other
                    # pieces of the window are looked at again after PIECE_WAIT)
                    source.wait_sendable(pending[0], PIECE_WAIT)
                if time.monotonic() - idle_since > IDLE_LIMIT:
                    return
        if unjudged:
            self._send_verdicts(conn, source, unjudged)

    def _stream_piece(self, conn: socket.socket, source, i: int, gen: int, view: memoryview) -> None:
        """Send piece ``i`` while the source receives it (fill ``gen``), slice by slice as it lands.
        If that fill is given up, or stalls for the I/O deadline, the session ends (the child drops
        the partial piece; a frame cannot be taken back)."""
        length = len(view)
        conn.sendall(wire.FRAME.pack(wire.T_STREAM, i, length))
        sent = 0
        while sent < length:
            landed = source.wait_fill(i, gen, sent, self._io_timeout)
            if landed < 0:
                raise TransportError(f"piece {i}: its reception here was given up mid-stream")
            if landed == sent:
                raise TransportError(f"piece {i}: no bytes from upstream for {self._io_timeout:.0f}s")
            conn.sendall(view[sent:landed])
            sent = landed
        source.sent(length, "tcp")

    @staticmethod
    def _send_verdicts(conn: socket.socket, source, unjudged: dict[int, int]) -> None:
        for i, gen in list(unjudged.items()):
            verdict = source.fill_verdict(i, gen)
            if verdict is not None:
                conn.sendall(wire.FRAME.pack(wire.T_VERDICT, i, int(verdict)))
                del unjudged[i]

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self.sock.close()
        except OSError:
            pass
        with self._lock:
            for s in list(self._sessions):
                _shutdown(s)
            threads = list(self._threads)
        self._acceptor.join(timeout=5)
        for t in threads:
            t.join(timeout=5)


def _pace(conn: socket.socket, source, child: str) -> None:
    """Cap this session's send rate at the source's ``send_rate(child)`` (bytes/s; 0 or absent = none)."""
    rate = getattr(source, "send_rate", None)
    rate = rate(child) if callable(rate) else 0
    if rate and rate > 0:
        try:
            conn.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, min(int(rate), 0xFFFFFFFF))
        except OSError as exc:  # not Linux, or an old kernel: unpaced
            log.debug("no pacing: %s", exc)


def _sendall2(conn: socket.socket, head: bytes, view: memoryview) -> None:
    """Header and payload in one syscall when the kernel takes it all (sendmsg), else the rest."""
    sent = conn.sendmsg([head, view])
    total = len(head) + len(view)
    if sent < total:
        if sent < len(head):
            conn.sendall(head[sent:])
            conn.sendall(view)
        else:
            conn.sendall(view[sent - len(head):])


def _sendall2_tls(conn: ssl.SSLSocket, head: bytes, view: memoryview) -> None:
    """``_sendall2`` for a TLS session (an SSLSocket has no ``sendmsg``): header, then payload."""
    conn.sendall(head)
    conn.sendall(view)


def open_session(address: str, hello: Hello, timeout: float, flags: int = 0,
                 accept: tuple[int, ...] = (wire.OK,), tls=None) -> tuple[socket.socket, int]:
    """Connect (over TLS with ``tls``, a ``security.DataTls``), send the hello, read the reply:
    (socket, reply status in ``accept``).

    The socket is left in timeout mode (``timeout``) for the rest of the handshake.
    """
    host, port = split_addr(address)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise TransportError(f"cannot connect to {address}: {exc}", peer=address, errno_=exc.errno) from exc
    try:
        _tune(sock)
        sock.settimeout(timeout)
        if tls is not None:
            sock = tls.client.wrap_socket(sock, server_side=False, do_handshake_on_connect=False)
            sock.do_handshake()
        sock.sendall(wire.encode_hello(hello, flags))
        # TLS 1.3: a parent that refuses our certificate says so here, at the first read
        status, message = wire.read_reply(_recv_exact_fn(sock, address))
    except (OSError, TransportError) as exc:
        sock.close()
        if isinstance(exc, wire.TlsMismatch):  # plain here, the parent answered in TLS
            _tls_refused(address, exc)
            raise wire.TlsMismatch(f"{address}: {exc}", peer=address) from None
        if tls is not None and not (isinstance(exc, TransportError) and "connection closed" not in str(exc)):
            if isinstance(exc, TimeoutError):
                detail = f"timed out after {timeout:.1f}s"
            elif isinstance(exc, (TransportError, ssl.SSLEOFError, ConnectionError)):
                detail = "the peer closed the connection (does it run with --data-tls?)"
            else:
                detail = str(exc)
            _tls_refused(address, f"handshake failed: {detail}")
            raise TlsError(f"TLS handshake with {address} failed: {detail}", peer=address) from exc
        if isinstance(exc, TransportError):
            raise
        raise TransportError(f"handshake with {address} failed: {exc}", peer=address) from exc
    if status not in accept:
        sock.close()
        if status == wire.TLS_REQUIRED:
            _tls_refused(address, message)
            raise wire.TlsMismatch(f"{address} refused the session: it requires TLS on data sessions "
                                   "(--data-tls) and this node runs without it", peer=address)
        if status == wire.AUTH:
            raise AuthError(f"{address} refused the session: {message}")
        raise TransportError(f"{address} refused the session ({status}): {message}", peer=address)
    return sock, status


class TcpTransport(Transport):
    """``tcp``; with ``config.data_tls`` every session (both ends) is mutual TLS 1.3."""

    name = "tcp"

    def __init__(self, config=None):
        self.tls = None
        self.flags = wire.HELLO_STREAM if config is None or config.cut_through else 0
        if config is not None and config.data_tls:
            from ...security import data_tls_contexts  # ConfigError now if a file is missing or bad

            self.tls = data_tls_contexts(config)

    def listen(self, address: str, authorize: Authorizer) -> Listener:
        return TcpListener(address, authorize, tls=self.tls)

    def connect(self, address: str, hello: Hello, *, timeout: float, regions=None) -> ChildSession:
        sock, _ = open_session(address, hello, timeout, flags=self.flags, tls=self.tls)
        return (TcpChildSession if self.tls is None else TlsChildSession)(sock, address)


register("tcp", TcpTransport)
