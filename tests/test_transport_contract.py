"""The data-plane contract (DESIGN section 6, ``transport/base.py``), the same tests for every transport.

Parametrised over ``tcp``, ``tcp-tls`` (the tcp transport with ``data_tls``: both ends mutual TLS
1.3 with test certificates) and ``rdma``; the ``rdma`` cases carry the ``rdma`` marker, so they skip
(with the reason) on a machine without an RDMA device and run for real inside the soft-RoCE VM
(``tests/rdma/vm.sh``). A real listener and real child sessions on loopback; sources and
destinations are shared memory mappings like the store's (and, for the edge cases, plain bytes).

Must show, for each transport: every requested piece arrives bit-identical, exactly once, into the
view ``dest`` gave, then ``receive`` returns None; pieces are sent as the parent gets them
(pipelining); a subset in any order; destinations and sources outside any registered memory; a
refused or unknown session; ``close()`` from another thread wakes a blocked ``receive``; a
stalled parent is reported within the deadline; several children at once; the listener closing
under a session; byte accounting on both ends and in metrics, per transport. Over RDMA with
mapped buffers on both ends every piece must actually travel by RDMA (``last_transport``).
"""

from __future__ import annotations

import errno
import mmap
import random
import socket
import threading
import time

import pytest

from modeldist import metrics
from modeldist.config import Config
from modeldist.errors import AuthError, TransportError
from modeldist.transport.base import Hello, get_transport

TRANSPORTS = [pytest.param("tcp", id="tcp"), pytest.param("tcp-tls", id="tcp-tls"),
              pytest.param("rdma", id="rdma", marks=pytest.mark.rdma)]
MODEL = "ab" * 32
TOKEN = b"contract-token"
PIECE = 64 << 10


@pytest.fixture(params=TRANSPORTS)
def transport(request):
    if request.param == "tcp-tls":
        c = request.getfixturevalue("tls_certs")
        t = get_transport("tcp", config=Config.load(env={}, data_tls=True, tls_cert=c["server.pem"],
                                                     tls_key=c["server.key"], tls_ca=c["ca.pem"]))
        assert t.tls is not None
        return t
    return get_transport(request.param, config=Config.load(env={}))


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


class MappedSource:
    """A store-like PieceSource: the model's bytes in shared mappings (``files`` of them), pieces
    inside files, each piece available once released (all at once unless ``held``)."""

    def __init__(self, data: bytes, piece: int = PIECE, files: int = 2, held: bool = False):
        self.data = data
        self.maps: dict[str, mmap.mmap] = {}
        self.pieces: list[tuple[str, int, int]] = []
        per_file = -(-len(data) // files)
        for k in range(files):
            chunk = data[k * per_file:(k + 1) * per_file]
            if not chunk:
                continue
            mm = mmap.mmap(-1, len(chunk))
            mm[:] = chunk
            name = f"model-{k}.safetensors"
            self.maps[name] = mm
            for off in range(0, len(chunk), piece):
                self.pieces.append((name, off, min(piece, len(chunk) - off)))
        self.have = [not held] * len(self.pieces)
        self.cond = threading.Condition()
        self.sent_by: dict[str, int] = {}
        self.served: list[int] = []

    def offset(self, i: int) -> int:
        name, off, _ = self.pieces[i]
        return sum(len(self.maps[n]) for n in list(self.maps)[:list(self.maps).index(name)]) + off

    def release(self, i: int) -> None:
        with self.cond:
            self.have[i] = True
            self.cond.notify_all()

    def piece_count(self) -> int:
        return len(self.pieces)

    def piece_length(self, i: int) -> int:
        return self.pieces[i][2]

    def wait_piece(self, i: int, timeout: float):
        with self.cond:
            if not self.cond.wait_for(lambda: self.have[i], timeout):
                return None
            self.served.append(i)
        name, off, n = self.pieces[i]
        return memoryview(self.maps[name])[off:off + n]

    def sent(self, nbytes: int, transport: str) -> None:
        with self.cond:
            self.sent_by[transport] = self.sent_by.get(transport, 0) + nbytes

    def regions(self):
        return dict(self.maps)


class CopySource(MappedSource):
    """Serves every piece as a fresh bytes copy (no mapping, no regions()): like a filtering proxy."""

    regions = None  # type: ignore[assignment]

    def wait_piece(self, i: int, timeout: float):
        view = super().wait_piece(i, timeout)
        return None if view is None else memoryview(bytearray(view))


class Dest:
    """The child's side: one shared mapping with the model's layout, or a plain bytearray."""

    def __init__(self, src: MappedSource, mapped: bool = True):
        self.src = src
        size = len(src.data)
        self.buf = mmap.mmap(-1, size) if mapped else bytearray(size)
        self.calls: list[int] = []

    def __call__(self, index: int, length: int) -> memoryview:
        assert length == self.src.piece_length(index)
        self.calls.append(index)
        off = self.src.offset(index)
        return memoryview(self.buf)[off:off + length]

    def regions(self):
        return {"model": self.buf} if isinstance(self.buf, mmap.mmap) else {}

    def piece(self, i: int) -> bytes:
        off = self.src.offset(i)
        return bytes(self.buf[off:off + self.src.piece_length(i)])


def serve(transport, source, *, token=TOKEN):
    def authorize(hello: Hello, peer: str):
        if hello.model != MODEL:
            raise TransportError(f"no job for model {hello.model[:12]}", peer=peer)
        if hello.token != token:
            raise AuthError("bad session token")
        return source
    return transport.listen("127.0.0.1:0", authorize)


def hello(node="child", model=MODEL, token=TOKEN) -> Hello:
    return Hello(model, token, node)


def receive_all(session, dest, timeout=30.0) -> tuple[list[int], list[str]]:
    got, carriers = [], []
    while True:
        i = session.receive(dest, timeout=timeout)
        if i is None:
            return got, carriers
        got.append(i)
        carriers.append(session.last_transport)


def counter(c, **labels) -> float:
    return c.labels(**labels)._value.get()


# ------------------------------------------------------------------------------------------------


def test_every_piece_arrives_bit_identical_once(transport):
    src = MappedSource(payload(37 * PIECE + 12345), files=2)
    dest = Dest(src)
    order = list(range(src.piece_count()))
    random.Random(7).shuffle(order)
    name = transport.name
    before_rx = counter(metrics.BYTES_RECEIVED, source="peer", transport=name)
    before_tx = counter(metrics.BYTES_SENT, transport=name)
    with serve(transport, src) as listener:
        with transport.connect(listener.address, hello(), timeout=10, regions=dest.regions()) as session:
            session.request(order)
            got, carriers = receive_all(session, dest)
    assert sorted(got) == sorted(order) and len(got) == len(set(got))
    assert sorted(dest.calls) == sorted(order)          # dest called once per piece
    assert bytes(dest.buf) == src.data
    assert set(carriers) == {name}, "mapped buffers on both ends: every piece over the transport itself"
    total = len(src.data)
    assert counter(metrics.BYTES_RECEIVED, source="peer", transport=name) - before_rx == total
    assert src.sent_by == {name: total}
    # the parent's accounting is done when it sees the acknowledgement / has sent the frame
    assert counter(metrics.BYTES_SENT, transport=name) - before_tx <= total


def test_pieces_are_sent_as_the_parent_gets_them(transport):
    src = MappedSource(payload(12 * PIECE, seed=2), files=1, held=True)
    dest = Dest(src)
    n = src.piece_count()
    released: list[float] = []

    def feeder():
        for i in range(n):
            time.sleep(0.05)
            released.append(time.monotonic())
            src.release(i)

    with serve(transport, src) as listener:
        with transport.connect(listener.address, hello(), timeout=10, regions=dest.regions()) as session:
            session.request(list(range(n)))
            t = threading.Thread(target=feeder)
            t.start()
            arrived = []
            try:
                while (i := session.receive(dest, timeout=10)) is not None:
                    arrived.append((i, time.monotonic()))
            finally:
                t.join()
    assert [i for i, _ in arrived] == list(range(n))    # released in order, so received in order
    assert arrived[0][1] < released[-1]                 # the first was here before the last existed
    assert bytes(dest.buf) == src.data


def test_a_subset_in_any_order(transport):
    src = MappedSource(payload(20 * PIECE + 1, seed=3), files=3)
    dest = Dest(src)
    want = [17, 3, 20, 0, 9, 9 + 1]
    with serve(transport, src) as listener:
        with transport.connect(listener.address, hello(), timeout=10, regions=dest.regions()) as session:
            session.request(want)
            got, _ = receive_all(session, dest)
    assert sorted(got) == sorted(want)
    for i in want:
        assert dest.piece(i) == bytes(src.wait_piece(i, 0))
    untouched = set(range(src.piece_count())) - set(want)
    assert all(not any(dest.piece(i)) for i in untouched)


def test_destination_outside_any_registered_memory(transport):
    """A plain bytearray destination, no regions: RDMA reads through a bounce buffer."""
    src = MappedSource(payload(9 * PIECE + 77, seed=4))
    dest = Dest(src, mapped=False)
    with serve(transport, src) as listener:
        with transport.connect(listener.address, hello(), timeout=10) as session:
            session.request(list(range(src.piece_count())))
            got, carriers = receive_all(session, dest)
    assert sorted(got) == list(range(src.piece_count()))
    assert bytes(dest.buf) == src.data
    assert set(carriers) == {transport.name}


def test_mapped_destination_without_regions_argument(transport):
    """``regions`` is optional: the child may learn its mapping from the views ``dest`` returns."""
    src = MappedSource(payload(6 * PIECE, seed=5))
    dest = Dest(src)
    with serve(transport, src) as listener:
        with transport.connect(listener.address, hello(), timeout=10) as session:
            session.request(list(range(src.piece_count())))
            got, carriers = receive_all(session, dest)
    assert bytes(dest.buf) == src.data
    assert set(carriers) == {transport.name}


def test_source_without_mappings(transport):
    """Pieces served as fresh copies (no regions): they still arrive, over the side channel if need be."""
    src = CopySource(payload(8 * PIECE + 5, seed=6))
    dest = Dest(src)
    with serve(transport, src) as listener:
        with transport.connect(listener.address, hello(), timeout=10, regions=dest.regions()) as session:
            session.request(list(range(src.piece_count())))
            got, carriers = receive_all(session, dest)
    assert bytes(dest.buf) == src.data
    assert set(carriers) <= {transport.name, "tcp"}
    assert sum(src.sent_by.values()) == len(src.data)


def test_large_pieces(transport):
    src = MappedSource(payload(3 * (8 << 20) + 4096, seed=8), piece=8 << 20, files=1)
    dest = Dest(src)
    with serve(transport, src) as listener:
        with transport.connect(listener.address, hello(), timeout=30, regions=dest.regions()) as session:
            session.request(list(range(src.piece_count())))
            got, _ = receive_all(session, dest)
    assert sorted(got) == [0, 1, 2, 3]
    assert bytes(dest.buf) == src.data


def test_several_children_at_once(transport):
    src = MappedSource(payload(24 * PIECE + 3, seed=9), files=2)
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def child(k: int) -> None:
        try:
            dest = Dest(src)
            with transport.connect(listener.address, hello(f"child{k}"), timeout=10, regions=dest.regions()) as s:
                order = list(range(src.piece_count()))
                random.Random(k).shuffle(order)
                s.request(order)
                receive_all(s, dest)
            results[k] = bytes(dest.buf)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with serve(transport, src) as listener:
        threads = [threading.Thread(target=child, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert set(results) == {0, 1, 2} and all(v == src.data for v in results.values())
    assert sum(src.sent_by.values()) == 3 * len(src.data)


def test_refused_and_unknown_sessions(transport):
    src = MappedSource(payload(2 * PIECE))
    with serve(transport, src) as listener:
        with pytest.raises(AuthError) as wrong_token:
            transport.connect(listener.address, hello(token=b"wrong"), timeout=10)
        # a model the parent has no job for: the very same refusal (nothing learnt about which
        # models it holds), counted apart in its metrics
        before = counter(metrics.AUTH_REFUSALS, plane="data", reason="unknown_model")
        with pytest.raises(AuthError) as unknown:
            transport.connect(listener.address, hello(model="cd" * 32), timeout=10)
        assert str(unknown.value) == str(wrong_token.value)
        assert listener.address in str(unknown.value)
        assert counter(metrics.AUTH_REFUSALS, plane="data", reason="unknown_model") == before + 1
    assert src.served == []


def test_connecting_to_nothing_is_a_transport_error_with_errno(transport):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(TransportError) as info:
            transport.connect(f"127.0.0.1:{port}", hello(), timeout=5)
    assert info.value.errno_ == errno.ECONNREFUSED
    assert info.value.peer == f"127.0.0.1:{port}"


def test_close_wakes_a_blocked_receive(transport):
    src = MappedSource(payload(4 * PIECE), held=True)  # the parent never gets anything
    dest = Dest(src)
    outcome: list[object] = []
    with serve(transport, src) as listener:
        session = transport.connect(listener.address, hello(), timeout=10, regions=dest.regions())
        session.request([0, 1, 2, 3])

        def blocked():
            try:
                outcome.append(session.receive(dest, timeout=60))
            except TransportError as exc:
                outcome.append(exc)

        t = threading.Thread(target=blocked)
        t.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        session.close()
        t.join(10)
        session.close()  # safe twice
        assert not t.is_alive() and time.monotonic() - t0 < 5
    assert len(outcome) == 1 and isinstance(outcome[0], TransportError)


def test_a_stalled_parent_is_reported_within_the_deadline(transport):
    src = MappedSource(payload(4 * PIECE), held=True)
    dest = Dest(src)
    with serve(transport, src) as listener:
        with transport.connect(listener.address, hello(), timeout=10, regions=dest.regions()) as session:
            session.request([0, 1])
            t0 = time.monotonic()
            with pytest.raises(TransportError, match="stalled"):
                session.receive(dest, timeout=0.5)
            assert time.monotonic() - t0 < 3


def test_a_stalled_parent_after_some_pieces(transport):
    src = MappedSource(payload(6 * PIECE, seed=10), held=True)
    for i in (0, 1, 2):
        src.release(i)
    dest = Dest(src)
    with serve(transport, src) as listener:
        with transport.connect(listener.address, hello(), timeout=10, regions=dest.regions()) as session:
            session.request(list(range(6)))
            got = [session.receive(dest, timeout=10) for _ in range(3)]
            with pytest.raises(TransportError, match="stalled"):
                session.receive(dest, timeout=0.5)
    assert sorted(got) == [0, 1, 2]
    assert all(dest.piece(i) == bytes(src.wait_piece(i, 0)) for i in got)


def test_listener_closing_ends_the_session(transport):
    src = MappedSource(payload(4 * PIECE), held=True)
    src.release(0)
    dest = Dest(src)
    listener = serve(transport, src)
    try:
        session = transport.connect(listener.address, hello(), timeout=10, regions=dest.regions())
        session.request([0, 1, 2, 3])
        assert session.receive(dest, timeout=10) == 0
    finally:
        listener.close()
    with session:
        with pytest.raises(TransportError):
            while session.receive(dest, timeout=5) is not None:
                pass
            raise TransportError("ended without the pieces")


def test_a_destination_of_the_wrong_length_is_refused(transport):
    src = MappedSource(payload(3 * PIECE, seed=11))
    with serve(transport, src) as listener:
        with transport.connect(listener.address, hello(), timeout=10) as session:
            session.request([0])
            with pytest.raises(TransportError):
                session.receive(lambda i, n: memoryview(bytearray(n - 1)), timeout=10)


class PacedSource(MappedSource):
    def __init__(self, data: bytes, rate: float):
        super().__init__(data)
        self.rate = rate

    def send_rate(self, child: str | None = None) -> float:
        self.asked_for = child
        return self.rate


def test_tcp_session_is_paced_at_the_sources_send_rate():
    """A source with ``send_rate()`` caps its sessions (SO_MAX_PACING_RATE): on loopback 4 MiB at
    4 MiB/s cannot arrive in much under a second (unpaced it takes milliseconds). A lower bound
    only: a busy machine can make it slower, never faster."""
    transport = get_transport("tcp", config=Config.load(env={}))
    data = payload(4 << 20, seed=7)
    src = PacedSource(data, rate=4 << 20)
    dest = Dest(src)
    with serve(transport, src) as listener:
        t0 = time.monotonic()
        with transport.connect(listener.address, hello(), timeout=10) as session:
            session.request(range(len(src.pieces)))
            got, _ = receive_all(session, dest)
        elapsed = time.monotonic() - t0
    assert sorted(got) == list(range(len(src.pieces)))
    assert bytes(dest.buf) == data
    assert elapsed > 0.7, f"4 MiB paced at 4 MiB/s arrived in {elapsed:.2f}s"
    assert src.asked_for == "child"  # the rate is the one for the child in the hello


def test_job_send_rate_is_a_fair_share_of_upload():
    from modeldist.agent.job import PACE_FRACTION, Job

    job = Job.__new__(Job)  # only the rate arithmetic: no store, no threads
    job.k, job.children, job.children_bps, job.upload_bps = 4, [], {}, 0.0
    assert job.send_rate() == 0.0                      # unknown upload: unpaced
    job.upload_bps = 100e6
    assert job.send_rate() == pytest.approx(PACE_FRACTION * 25e6)  # fewer children than stripes: 1/k
    job.children = [f"c{i}" for i in range(10)]
    assert job.send_rate("c0") == pytest.approx(PACE_FRACTION * 10e6)


def test_job_send_rate_follows_the_childs_download():
    """min(upload / children, the child's download / k): a slow parent with two fast children gives
    each half its upload; a fast parent does not push a slow child past its share of its download."""
    from modeldist.agent.job import PACE_FRACTION, Job

    job = Job.__new__(Job)
    job.k, job.upload_bps = 4, 50e6                    # a slow node: half of the others' 100e6
    job.children, job.children_bps = ["a", "b"], {"a": 100e6, "b": 0.0}
    assert job.send_rate("a") == pytest.approx(PACE_FRACTION * 25e6)     # upload / 2 (was upload / k)
    assert job.send_rate("b") == pytest.approx(PACE_FRACTION * 12.5e6)   # unknown download: as fast as us
    job.upload_bps = 100e6
    job.children, job.children_bps = ["slow"], {"slow": 50e6}
    assert job.send_rate("slow") == pytest.approx(PACE_FRACTION * 12.5e6)  # its download / k
