"""Cut-through forwarding (transport/base.py, ``Config.cut_through``): a relay sends a piece on while
it still receives it, and says afterwards whether it verified it.

Real pieces: a relay ``Job`` (store, fetcher, verifier) fed by a scripted grandparent that speaks the
wire format and can stop, corrupt or cut a piece half-way; the relay serves a child over the real
TCP listener, the child being a bare session or a second ``Job``.

Must show: the child gets a piece's first bytes while the relay does not hold it yet; each streamed
piece is verified by the child and carries the relay's verdict; bad bytes from the grandparent are
dropped by the child without blaming the relay (the relay blames the grandparent), and the child
then completes bit-identical; a piece cut off upstream ends the child's session without a
"stalled mid-piece" accusation against the relay; a child that turns cut-through off only ever gets
verified whole pieces; a verdict on a piece that was never streamed is a protocol error.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import closing, contextmanager
from pathlib import Path

import blake3
import pytest

from modeldist import metrics
from modeldist.agent.job import Job, ParentRef
from modeldist.config import Config
from modeldist.errors import TransportError
from modeldist.manifest import Manifest
from modeldist.store import Store
from modeldist.transport.base import Hello, get_transport
from modeldist.transport.tcp import STREAM_CHUNK, wire

from .models import write_big

PIECE = 4 * STREAM_CHUNK  # several slices per piece
KEY = b"k" * 32


@pytest.fixture
def model(tmp_path, isolated_store):
    src = write_big(tmp_path / "origin", 6 * PIECE, tensor_bytes=PIECE)
    cfg = Config.load(store=str(tmp_path / "unused"), piece_size=PIECE)
    m = Manifest.from_source(str(src), config=cfg)
    blobs = []
    for p in m.pieces:
        with open(Path(src) / p.file, "rb") as fh:
            fh.seek(p.offset)
            blobs.append(fh.read(p.length))
    return m, blobs, str(src)


class ScriptedParent:
    """A grandparent on loopback: answers the hello, reads the request, then runs ``script(conn,
    requested)``; each connection runs the script again (``self.sessions`` counts them)."""

    def __init__(self, script):
        self.script = script
        self.sessions = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)

        def recv_exact(n: int) -> bytes:
            out = b""
            while len(out) < n:
                got = conn.recv(n - len(out))
                if not got:
                    raise ConnectionError("closed")
                out += got
            return out

        try:
            wire.read_hello_flags(recv_exact)
            conn.sendall(wire.encode_reply(wire.OK))
            requested = wire.read_request(recv_exact, 1 << 20)
            self.sessions += 1
            self.script(conn, requested)
        except OSError:
            pass

    def __enter__(self) -> "ScriptedParent":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self._thread.join(timeout=5)


def send_piece(conn, i: int, data: bytes) -> None:
    conn.sendall(wire.FRAME.pack(wire.T_PIECE, i, len(data)) + data)


def make_job(model, tmp_path: Path, name: str, *, stall: float = 10.0, cut_through: bool = True) -> Job:
    m, blobs, src = model
    cfg = Config.load(env={}, store=str(tmp_path / f"store-{name}"), piece_size=PIECE, cut_through=cut_through)
    job = Job(node_id=name, manifest=m, source=src, revision=None, key=KEY, ticket=b"ticket", stripes=1,
              store=Store(config=cfg), config=cfg, stall_timeout=stall)
    job.add_digests(list(range(len(blobs))), b"".join(blake3.blake3(b).digest() for b in blobs))
    return job


@contextmanager
def relay_chain(model, tmp_path: Path, script, *, edge=None, stall: float = 10.0):
    """A grandparent running ``script`` -> a relay ``Job`` fetching from it and serving over
    ``edge`` (plain TCP by default) for a child "child": yields (relay, its listener); all closed
    after."""
    with ScriptedParent(script) as gp, closing(make_job(model, tmp_path, "relay", stall=stall)) as relay, \
            (edge or get_transport("tcp")).listen("127.0.0.1:0", lambda hello, peer: relay) as listener:
        relay.apply([ParentRef("gp", gp.address)], children=["child"])
        yield relay, listener


def wait_until(pred, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def counter(result: str) -> float:
    return metrics.PIECES.labels(result=result)._value.get()


@pytest.fixture(params=["tcp", "tcp-tls"])
def edge(request):
    """The relay -> child edge's transport (the same object serves and connects)."""
    if request.param == "tcp":
        return get_transport("tcp")
    c = request.getfixturevalue("tls_certs")
    return get_transport("tcp", config=Config.load(env={}, data_tls=True, tls_cert=c["server.pem"],
                                                    tls_key=c["server.key"], tls_ca=c["ca.pem"]))


def test_relay_streams_a_piece_before_it_holds_it(model, tmp_path, edge):
    m, blobs, _ = model
    half = PIECE // 2
    go = threading.Event()

    def script(conn, requested):
        conn.sendall(wire.FRAME.pack(wire.T_PIECE, 0, PIECE) + blobs[0][:half])
        go.wait(20)
        conn.sendall(blobs[0][half:])
        for i in requested[1:]:
            send_piece(conn, i, blobs[i])
        conn.sendall(wire.FRAME.pack(wire.T_END, 0, 0))

    seen: list[tuple[int, int, bool]] = []  # (piece, bytes landed at the child, relay held it then)
    buf = bytearray(sum(len(b) for b in blobs))
    offsets = [sum(len(b) for b in blobs[:i]) for i in range(len(blobs))]

    def dest(i, n):
        return memoryview(buf)[offsets[i]:offsets[i] + n]

    result: dict = {}
    with relay_chain(model, tmp_path, script, edge=edge) as (relay, listener), \
            edge.connect(listener.address, Hello(m.digest, b"t", "child"), timeout=10) as s:
        s.request(range(len(blobs)))

        def child():
            result["first"] = s.receive(dest, 20, progress=lambda i, n: seen.append((i, n, bool(relay.have[i]))))
            result["streamed"] = s.last_streamed
            rest = []
            while (i := s.receive(dest, 20)) is not None:  # the verdict comes among these
                rest.append(i)
            result["rest"] = rest
            result["verdict"] = s.verdict(0, 0)

        t = threading.Thread(target=child, daemon=True)
        t.start()
        # the first half crossed the relay while the relay has not got the piece whole
        wait_until(lambda: any(n >= half for _, n, _ in seen), what="half a piece at the child")
        assert not relay.have[0]
        assert all(not held for _, n, held in seen if n <= half), seen
        go.set()
        t.join(30)
        assert result["first"] == 0 and result["streamed"] is True and result["verdict"] is True
        assert sorted(result["rest"]) == list(range(1, len(blobs)))
        assert bytes(buf) == b"".join(blobs)
        assert relay.wait_complete(10)


def test_bad_bytes_upstream_are_dropped_without_blaming_the_relay(model, tmp_path):
    m, blobs, _ = model
    bad = bytearray(blobs[0])
    bad[PIECE - 7] ^= 0xFF  # wrong near the end: the child has most of it before anyone can tell
    child = make_job(model, tmp_path, "child")

    def corrupt(conn, requested):
        if 0 in requested:
            conn.sendall(wire.FRAME.pack(wire.T_PIECE, 0, PIECE) + bad[:PIECE // 2])
            wait_until(lambda: child._landing(0) is not None, what="the child streaming the piece from the relay")
            conn.sendall(bad[PIECE // 2:])
        time.sleep(30)  # the relay hangs up on it

    def honest(conn, requested):
        for i in requested:
            send_piece(conn, i, blobs[i])
        conn.sendall(wire.FRAME.pack(wire.T_END, 0, 0))

    dropped = counter("dropped")
    with closing(child), ScriptedParent(honest) as good, \
            relay_chain(model, tmp_path, corrupt) as (relay, listener):
        child.apply([ParentRef("relay", listener.address)])
        wait_until(lambda: counter("dropped") > dropped, what="the child dropping the bad piece")
        relay_failures = relay.take_report()["failures"]
        assert [(f[0], f[2]) for f in relay_failures] == [("gp", "corrupt")], relay_failures
        relay.apply([ParentRef("gp2", good.address)], children=["child"])  # the scheduler's re-plan
        assert child.wait_complete(30), child.take_report()
        failures = child.take_report()["failures"]
        assert not [f for f in failures if f[2] == "corrupt"], failures
        data = b"".join(bytes(child.buf.piece_view(i)) for i in range(len(blobs)))
        assert data == b"".join(blobs)


def test_piece_cut_off_upstream_is_not_the_relays_stall(model, tmp_path):
    """The grandparent goes silent half-way through a piece: the child's read deadline fires before
    the relay's, but the relay never held that piece, so the child must not say 'stalled mid-piece'
    about it (the scheduler takes that as proof and demotes the relay)."""
    m, blobs, _ = model

    def stall(conn, requested):
        conn.sendall(wire.FRAME.pack(wire.T_PIECE, 0, PIECE) + blobs[0][:PIECE // 2])
        time.sleep(30)

    failures: list = []
    with closing(make_job(model, tmp_path, "child", stall=1.0)) as child, \
            relay_chain(model, tmp_path, stall, stall=30) as (relay, listener):
        child.apply([ParentRef("relay", listener.address)])
        wait_until(lambda: failures.extend(child.take_report()["failures"]) or failures, what="a child report")
    kinds = {f[2] for f in failures if f[0] == "relay"}
    # said as "cut off in a piece it was streaming": the scheduler demotes only if the relay
    # reported holding that piece (tests/test_scheduler_stalls.py)
    assert kinds and "stalled_mid_piece" not in kinds, failures
    assert ("relay", 0, "stalled_mid_stream") in {f[:3] for f in failures}, failures


def test_relay_giving_up_a_piece_ends_the_stream(model, tmp_path):
    m, blobs, _ = model

    asked = threading.Event()

    def cut(conn, requested):
        conn.sendall(wire.FRAME.pack(wire.T_PIECE, 0, PIECE) + blobs[0][:PIECE // 2])
        asked.wait(20)
        time.sleep(0.3)  # the relay streams the first half to the child meanwhile
        conn.close()  # mid-piece: the relay gives up this fill

    buf = bytearray(PIECE)
    with relay_chain(model, tmp_path, cut) as (relay, listener), \
            get_transport("tcp").connect(listener.address, Hello(m.digest, b"t", "child"), timeout=10) as s:
        s.request([0])
        asked.set()
        t0 = time.monotonic()
        with pytest.raises(TransportError):
            s.receive(lambda i, n: memoryview(buf)[:n], 20)
        assert s.streaming, "the session ended inside a cut-through piece"
        assert time.monotonic() - t0 < 10


def test_child_without_cut_through_gets_whole_verified_pieces(model, tmp_path):
    m, blobs, _ = model
    go = threading.Event()

    def script(conn, requested):
        conn.sendall(wire.FRAME.pack(wire.T_PIECE, 0, PIECE) + blobs[0][:PIECE // 2])
        go.wait(20)
        conn.sendall(blobs[0][PIECE // 2:])
        conn.sendall(wire.FRAME.pack(wire.T_END, 0, 0))

    plain = get_transport("tcp", config=Config.load(env={}, cut_through=False))
    buf = bytearray(PIECE)
    landed: list[int] = []
    got: dict = {}
    with relay_chain(model, tmp_path, script) as (relay, listener), \
            plain.connect(listener.address, Hello(m.digest, b"t", "child"), timeout=10) as s:
        s.request([0])
        t = threading.Thread(target=lambda: got.setdefault(
            "i", s.receive(lambda i, n: memoryview(buf)[:n], 20, progress=lambda i, n: landed.append(n))))
        t.start()
        wait_until(lambda: getattr(relay._landing(0), "landed", 0) >= PIECE // 2, what="half a piece at the relay")
        time.sleep(0.3)
        assert landed == [], "a child without cut-through got bytes of an unverified piece"
        go.set()
        t.join(20)
    assert got["i"] == 0 and not s.last_streamed and bytes(buf) == blobs[0]


def test_verdict_on_a_piece_never_streamed_is_refused(model):
    m, blobs, _ = model

    def script(conn, requested):
        conn.sendall(wire.FRAME.pack(wire.T_VERDICT, 3, 1))
        time.sleep(5)

    with ScriptedParent(script) as gp, \
            get_transport("tcp").connect(gp.address, Hello(m.digest, b"t", "c"), timeout=10) as s:
        s.request([0])
        with pytest.raises(TransportError, match="did not stream"):
            s.receive(lambda i, n: memoryview(bytearray(n)), 10)
