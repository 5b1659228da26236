"""Fuzzing the TCP data-plane wire format and the handshake (issue #7, DESIGN section 9).

Every input to the frame parsers (``transport/tcp/wire.py``) and to a real listener's handshake
must end in a correct result or a typed error (``TransportError`` / ``AuthError``): no other
exception, no hang, no read past a limit, no payload for a hello that is not authorized, and every
connection closed by the server within a deadline. The parsers read through ``recv_exact`` from a
finite buffer that raises ``TransportError`` at its end, like the real one
(``transport/tcp/__init__.py: _recv_exact_fn``). The long-running, coverage-guided version of the
parser fuzzing is ``tests/fuzz/fuzz_wire.py`` (atheris).
"""

from __future__ import annotations

import logging
import mmap
import random
import socket
import struct
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from modeldist.errors import AuthError, TransportError
from modeldist.transport.tcp import REFUSED
from modeldist.security import check_ticket, mint_ticket
from modeldist.transport.base import Hello, get_transport
from modeldist.transport.tcp import REFUSED, TcpChildSession, TcpListener
from modeldist.transport.tcp import wire

TYPED = (TransportError, AuthError)
FAST = 1.0  # seconds any one parse may take (they are straight-line code: this only catches a hang)
HYPO = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NET = settings(max_examples=150, deadline=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
U32 = st.integers(0, (1 << 32) - 1)


class Feed:
    """``recv_exact`` over a finite byte string: exactly ``n`` bytes, or TransportError at the end."""

    def __init__(self, data: bytes):
        self.data = bytes(data)
        self.pos = 0
        self.asked: list[int] = []

    def __call__(self, n: int) -> bytes:
        self.asked.append(n)
        assert 0 <= n, f"recv_exact({n})"
        if self.pos + n > len(self.data):
            self.pos = len(self.data)
            raise TransportError("connection closed by peer", peer="fuzz")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    @property
    def consumed(self) -> bytes:
        return self.data[:self.pos]


def parse(fn, *args):
    """Run a parser: its result, or None for a typed error; anything else fails the test."""
    t0 = time.monotonic()
    try:
        return fn(*args)
    except TYPED:
        return None
    finally:
        assert time.monotonic() - t0 < FAST


# --- strategies ------------------------------------------------------------------------------

digests = st.binary(min_size=32, max_size=32).map(bytes.hex)
node_ids = st.text(max_size=wire.MAX_NODE_ID).filter(lambda s: len(s.encode()) <= wire.MAX_NODE_ID)
hellos = st.builds(Hello, digests, st.binary(max_size=wire.MAX_TOKEN), node_ids)
qp_infos = st.one_of(
    st.builds(wire.QpInfo, st.integers(1, (1 << 24) - 1), st.integers(0, (1 << 24) - 1),
              st.binary(min_size=16, max_size=16), st.integers(0, 0xFFFF), st.integers(1, 5),
              st.integers(0, 255), st.integers(0, 255)),
    st.builds(wire.QpInfo, st.just(0), st.integers(0, (1 << 24) - 1), st.binary(min_size=16, max_size=16),
              st.integers(0, 0xFFFF), st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)),
)
ALL_KINDS = (wire.T_REQUEST, wire.T_PIECE, wire.T_RDMA, wire.T_END, wire.T_ACK, wire.T_FALLBACK, wire.T_QP_INFO)
kind_sets = st.sets(st.sampled_from(ALL_KINDS), min_size=1).map(lambda s: tuple(sorted(s)))


@st.composite
def requests(draw):
    n_pieces = draw(st.one_of(st.integers(1, 64), st.integers(1, 1 << 32)))
    # a request names at most n_pieces pieces (the parser's bound; a child asks for each piece once)
    indices = draw(st.lists(st.integers(0, min(n_pieces, 1 << 32) - 1), max_size=min(64, n_pieces)))
    return n_pieces, indices


def mutate(draw, data: bytes) -> bytes:
    """A few random edits of a valid encoding: byte flips and sets, truncation, insertion, deletion."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "u16", "u32"]))
        pos = draw(st.integers(0, max(len(buf), 1) - 1))
        if op == "flip" and buf:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif op == "truncate":
            del buf[draw(st.integers(0, len(buf))):]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and buf:
            del buf[pos:pos + draw(st.integers(1, 8))]
        elif op in ("u16", "u32") and len(buf) >= 4:  # an interesting length where a length field may be
            size = 2 if op == "u16" else 4
            at = min(pos, len(buf) - size)
            value = draw(st.sampled_from([0, 1, 0x7FFF, 0xFFFF, wire.MAX_TOKEN, wire.MAX_TOKEN + 1,
                                          wire.MAX_NODE_ID + 1, (1 << 31) - 1, (1 << 32) - 1]))
            buf[at:at + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
    return bytes(buf)


def mutated(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.composite(lambda draw: mutate(draw, draw(valid)))()


def stream(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Bytes a parser may meet: valid, mutated valid, truncated valid, or arbitrary."""
    return st.one_of(valid, mutated(valid), valid.flatmap(lambda b: st.integers(0, len(b)).map(lambda k: b[:k])),
                     st.binary(max_size=2048), st.binary(max_size=64).map(lambda b: wire.MAGIC + b))


# --- round trips: encode then parse gives the same value, consuming exactly the encoding -----


@HYPO
@given(hello=hellos, flags=st.integers(0, 0xFFFF))
def test_hello_round_trip(hello, flags):
    raw = wire.encode_hello(hello, flags)
    feed = Feed(raw)
    assert wire.read_hello_flags(feed) == (hello, wire.VERSION, flags)
    assert feed.pos == len(raw)
    assert wire.read_hello(Feed(raw)) == (hello, wire.VERSION)


@HYPO
@given(status=st.integers(0, 255), message=st.text(max_size=300))
def test_reply_round_trip(status, message):
    raw = wire.encode_reply(status, message)
    feed = Feed(raw)
    expect = message if len(message.encode()) <= 1024 else message.encode()[:1024].decode(errors="replace")
    assert wire.read_reply(feed) == (status, expect)
    assert feed.pos == len(raw)


@HYPO
@given(status=st.integers(0, 255), message=st.text(min_size=200, max_size=1100))
def test_reply_long_message_is_cut_not_refused(status, message):
    raw = wire.encode_reply(status, message)
    assert wire.read_reply(Feed(raw)) == (status, message.encode()[:1024].decode(errors="replace"))


@HYPO
@given(req=requests())
def test_request_round_trip(req):
    n_pieces, indices = req
    raw = wire.encode_request(indices)
    feed = Feed(raw)
    assert wire.read_request(feed, n_pieces) == indices
    assert feed.pos == len(raw)


@HYPO
@given(kinds=kind_sets, data=st.data())
def test_frame_head_round_trip(kinds, data):
    kind = data.draw(st.sampled_from(kinds))
    index, length = data.draw(U32), data.draw(st.integers(0, wire.MAX_PIECE))
    assert wire.parse_frame_head(wire.FRAME.pack(kind, index, length), kinds) == wire.FrameHead(kind, index, length)


@HYPO
@given(q=qp_infos)
def test_qp_info_round_trip(q):
    raw = wire.encode_qp_info(q)
    feed = Feed(raw)
    assert wire.read_qp_info(feed) == q
    assert feed.pos == len(raw) == wire.QP_INFO.size
    assert wire.read_qp_info(Feed(wire.encode_qp_info(wire.NO_RDMA))) == wire.NO_RDMA


# --- arbitrary, truncated and mutated bytes: a correct parse or a typed error, never more -----

READ_LIMIT = max(wire._HELLO_HEAD.size, wire.MAX_TOKEN, wire.MAX_NODE_ID)


@HYPO
@given(raw=stream(st.builds(wire.encode_hello, hellos, st.integers(0, 0xFFFF))))
def test_hello_parser_on_any_bytes(raw):
    feed = Feed(raw)
    got = parse(wire.read_hello_flags, feed)
    assert max(feed.asked) <= READ_LIMIT  # every length checked against its limit before reading
    if got is not None:
        hello, version, flags = got
        assert len(hello.model) == 64 and len(hello.token) <= wire.MAX_TOKEN
        assert len(hello.node_id.encode()) <= wire.MAX_NODE_ID
        assert wire.MAGIC + struct.pack("<H", version) + wire.encode_hello(hello, flags)[6:] == feed.consumed
    assert parse(wire.read_hello, Feed(raw)) == (None if got is None else got[:2])


@HYPO
@given(raw=stream(st.builds(wire.encode_reply, st.integers(0, 255), st.text(max_size=64))))
def test_reply_parser_on_any_bytes(raw):
    feed = Feed(raw)
    got = parse(wire.read_reply, feed)
    assert max(feed.asked) <= 1024
    if got is not None:
        status, message = got
        assert feed.consumed[4] == status and feed.pos == 7 + struct.unpack("<H", feed.consumed[5:7])[0]
        assert isinstance(message, str)


@HYPO
@given(raw=stream(requests().map(lambda r: wire.encode_request(r[1]))), n_pieces=st.integers(0, 1 << 32))
def test_request_parser_on_any_bytes(raw, n_pieces):
    feed = Feed(raw)
    got = parse(wire.read_request, feed, n_pieces)
    assert max(feed.asked) <= max(5, 4 * min(wire.MAX_REQUEST, n_pieces))
    if got is not None:
        assert all(0 <= i < n_pieces for i in got)
        assert wire.encode_request(got) == feed.consumed


@HYPO
@given(raw=stream(st.builds(wire.FRAME.pack, st.sampled_from(ALL_KINDS), U32, U32)), kinds=kind_sets)
def test_frame_head_parser_on_any_bytes(raw, kinds):
    got = parse(wire.parse_frame_head, raw, kinds)
    if got is not None:
        assert len(raw) == wire.FRAME.size and got.kind in kinds and got.length <= wire.MAX_PIECE
        assert wire.FRAME.pack(got.kind, got.index, got.length) == raw


@HYPO
@given(raw=stream(qp_infos.map(wire.encode_qp_info)))
def test_qp_info_parser_on_any_bytes(raw):
    feed = Feed(raw)
    got = parse(wire.read_qp_info, feed)
    if got is not None:
        assert got.qp_num < 1 << 24 and got.psn < 1 << 24 and len(got.gid) == 16
        assert not got.qp_num or 1 <= got.mtu <= 5
        assert wire.encode_qp_info(got)[:-1] == feed.consumed[:-1]  # the last byte is padding


def test_frame_head_of_the_wrong_size_is_a_transport_error():
    """Regression: a head of any length but 9 bytes was a ``struct.error``, not a TransportError."""
    for raw in (b"", b"\x02", wire.FRAME.pack(wire.T_PIECE, 0, 0)[:-1], wire.FRAME.pack(wire.T_PIECE, 0, 0) + b"\0"):
        with pytest.raises(TransportError):
            wire.parse_frame_head(raw)


# --- the child side: a parent that sends anything -------------------------------------------

CHILD_PIECES = [17, 64, 64, 1, 0, 64]  # piece lengths of a small model


@NET
@given(raw=stream(st.lists(st.sampled_from(range(len(CHILD_PIECES))), max_size=6).map(
    lambda idx: b"".join(wire.FRAME.pack(wire.T_PIECE, i, CHILD_PIECES[i]) + bytes([i]) * CHILD_PIECES[i]
                         for i in idx) + wire.FRAME.pack(wire.T_END, 0, 0))))
def test_child_session_on_any_parent_bytes(raw):
    """Frames from a parent go through ``parse_frame_head`` into ``dest``, which (like the agent's)
    refuses an index or length outside the model: pieces land only inside their own views."""
    area = bytearray(sum(CHILD_PIECES) + 64)  # the model, then a guard area nobody may write
    offsets = [sum(CHILD_PIECES[:i]) for i in range(len(CHILD_PIECES))]

    def dest(index: int, length: int) -> memoryview:
        if not (0 <= index < len(CHILD_PIECES)) or length != CHILD_PIECES[index]:
            raise TransportError(f"piece {index} with a bad length {length}")
        return memoryview(area)[offsets[index]:offsets[index] + length]

    parent, child = socket.socketpair()
    session = TcpChildSession(child, "fuzz-parent")
    try:
        parent.sendall(raw)
        parent.shutdown(socket.SHUT_WR)
        t0, got = time.monotonic(), []
        for _ in range(len(raw) // wire.FRAME.size + 2):
            try:
                i = session.receive(dest, timeout=2.0)
            except TYPED:
                break
            if i is None:
                break
            got.append(i)
        else:
            pytest.fail("the child session never ended")
        assert time.monotonic() - t0 < 2 * FAST
        # what must have happened: walk the stream ourselves; each piece's bytes (a cut last one
        # in part) land in its own view, nowhere else, and receive() returned the complete ones
        expect, pos, indices = bytearray(len(area)), 0, []
        while True:
            try:
                head = wire.parse_frame_head(raw[pos:pos + wire.FRAME.size])
            except TransportError:
                break
            if head.kind == wire.T_END or not (0 <= head.index < len(CHILD_PIECES)) \
                    or head.length != CHILD_PIECES[head.index]:
                break
            body = raw[pos + wire.FRAME.size:pos + wire.FRAME.size + head.length]
            expect[offsets[head.index]:offsets[head.index] + len(body)] = body
            if len(body) < head.length:
                break
            indices.append(head.index)
            pos += wire.FRAME.size + head.length
        assert got == indices
        assert area == expect
    finally:
        session.close()
        parent.close()


# --- the handshake against a real listener --------------------------------------------------

KEY = b"fuzz-session-key-0123456789abcdef"
MODEL = random.Random(7).randbytes(32).hex()
NODE = "child-1"
PIECE_LENGTHS = [4096, 4096, 1000, 4096, 1]
DEADLINE = 5.0  # seconds within which the server must have closed every connection


class RealSource:
    """A PieceSource over a shared mapping of real bytes; counts what it hands out."""

    def __init__(self):
        self.data = random.Random(11).randbytes(sum(PIECE_LENGTHS))
        self.map = mmap.mmap(-1, len(self.data))
        self.map[:] = self.data
        self.offsets = [sum(PIECE_LENGTHS[:i]) for i in range(len(PIECE_LENGTHS))]
        self.lock = threading.Lock()
        self.served = 0

    def piece_count(self):
        return len(PIECE_LENGTHS)

    def piece_length(self, i):
        return PIECE_LENGTHS[i]

    def wait_piece(self, i, timeout):
        with self.lock:
            self.served += 1
        return memoryview(self.map)[self.offsets[i]:self.offsets[i] + PIECE_LENGTHS[i]]

    def sent(self, nbytes, transport):
        pass

    def piece(self, i) -> bytes:
        return self.data[self.offsets[i]:self.offsets[i] + PIECE_LENGTHS[i]]


class Watch(logging.Handler):
    """Everything a listener logs at ERROR (a serving thread that hit a non-typed exception) and
    every exception that escaped a thread."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self.escaped: list[threading.ExceptHookArgs] = []

    def emit(self, record):
        self.records.append(record)

    def hook(self, args):
        self.escaped.append(args)


@pytest.fixture(scope="module")
def served():
    """(listener, source, authorized hellos, watch): a real TCP listener whose authorizer is the
    agent's (a job for MODEL, then an HMAC ticket bound to node and model)."""
    src = RealSource()
    authorized: list[Hello] = []

    def authorize(hello: Hello, peer: str):
        if hello.model != MODEL:
            raise TransportError(f"this node has no job for model {hello.model[:12]}", peer=peer)
        check_ticket(KEY, hello.token, hello.node_id, hello.model)
        authorized.append(hello)
        return src

    watch = Watch()
    logger = logging.getLogger("modeldist.transport.tcp")
    logger.addHandler(watch)
    old_hook, threading.excepthook = threading.excepthook, watch.hook
    listener = get_transport("tcp").listen("127.0.0.1:0", authorize)
    try:
        yield listener, src, authorized, watch
    finally:
        listener.close()
        threading.excepthook = old_hook
        logger.removeHandler(watch)


def exchange(address: str, data: bytes, *, half_close: bool = True, deadline: float = DEADLINE) -> tuple[bytes, bool]:
    """Send ``data`` (then half-close), read until the server closes: (what came back, reset?).

    Fails if the server has not closed the connection within ``deadline``; every socket call has one.
    """
    host, port = address.rsplit(":", 1)
    end = time.monotonic() + deadline
    sock = socket.create_connection((host, int(port)), timeout=deadline)
    out, reset = bytearray(), False
    try:
        sock.settimeout(deadline)
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except socket.timeout:
            pytest.fail(f"sending {len(data)} bytes took over {deadline}s")
        except OSError:  # EPIPE, ECONNRESET, ENOTCONN: the server refused early, our bytes unread
            reset = True
        while True:
            left = end - time.monotonic()
            if left <= 0:
                pytest.fail(f"the server did not close the connection within {deadline}s "
                            f"(sent {data[:80]!r}..., got {bytes(out[:80])!r}...)")
            sock.settimeout(left)
            try:
                chunk = sock.recv(1 << 16)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return bytes(out), True
            if not chunk:
                return bytes(out), reset
            out += chunk
    finally:
        sock.close()


def expected_reply(data: bytes, src: RealSource) -> tuple[bytes, bool]:
    """What the server must answer to ``data``: (the exact bytes, whether the hello is authorized)."""
    feed = Feed(data)
    try:
        hello, version, _ = wire.read_hello_flags(feed)
    except TransportError:
        return b"", False  # not a hello: nothing back
    if version != wire.VERSION:
        return wire.encode_reply(wire.BAD_VERSION, f"version {version} not supported"), False
    if hello.model != MODEL:
        return wire.encode_reply(wire.AUTH, REFUSED), False  # the same answer as a bad ticket
    try:
        check_ticket(KEY, hello.token, hello.node_id, hello.model)
    except AuthError:
        return wire.encode_reply(wire.AUTH, REFUSED), False
    out = wire.encode_reply(wire.OK)
    try:
        indices = wire.read_request(feed, len(PIECE_LENGTHS))
    except TransportError:
        return out, True
    for i in indices:
        out += wire.FRAME.pack(wire.T_PIECE, i, PIECE_LENGTHS[i]) + src.piece(i)
    return out + wire.FRAME.pack(wire.T_END, 0, 0), True


GOOD = wire.encode_hello(Hello(MODEL, mint_ticket(KEY, NODE, MODEL, ttl=3600), NODE))
session_hellos = st.one_of(
    st.just(GOOD),
    st.builds(lambda node, flags: wire.encode_hello(Hello(MODEL, mint_ticket(KEY, node, MODEL, ttl=3600), node), flags),
              node_ids, st.integers(0, 0xFFFF)),
    node_ids.filter(lambda n: n != NODE).map(                       # a ticket of someone else
        lambda n: wire.encode_hello(Hello(MODEL, mint_ticket(KEY, NODE, MODEL, ttl=3600), n))),
    st.builds(lambda tok: wire.encode_hello(Hello(MODEL, tok, NODE)), st.binary(max_size=64)),
    st.builds(lambda ttl: wire.encode_hello(Hello(MODEL, mint_ticket(KEY, NODE, MODEL, ttl=ttl), NODE)),
              st.integers(-3600, -1)),                               # expired
    st.builds(wire.encode_hello, hellos),                            # another model, any token
)
session_requests = st.one_of(
    st.lists(st.integers(0, len(PIECE_LENGTHS) - 1), max_size=8).map(wire.encode_request),
    st.lists(U32, max_size=4).map(wire.encode_request),
    st.binary(max_size=32),
    st.just(b""),
)
valid_sessions = st.builds(
    lambda node, flags, idx: wire.encode_hello(Hello(MODEL, mint_ticket(KEY, node, MODEL, ttl=3600), node), flags)
    + wire.encode_request(idx),
    st.one_of(st.just(NODE), node_ids), st.integers(0, 0xFFFF),
    st.lists(st.integers(0, len(PIECE_LENGTHS) - 1), min_size=1, max_size=len(PIECE_LENGTHS)))
session_bytes = st.one_of(
    valid_sessions,
    mutated(valid_sessions),
    st.builds(lambda h, r: h + r, session_hellos, session_requests),
    mutated(st.builds(lambda h, r: h + r, session_hellos, session_requests)),
    st.binary(max_size=512),
    st.binary(max_size=128).map(lambda b: wire.MAGIC + b),
)


@NET
@given(data=session_bytes)
def test_listener_handshake_on_any_bytes(served, data):
    listener, src, authorized, watch = served
    before_served, before_auth = src.served, len(authorized)
    got, reset = exchange(listener.address, data)
    expect, ok = expected_reply(data, src)
    event(f"authorized={ok} reset={reset} payload={len(expect) > 7 + 9 and ok}")
    if reset:
        assert expect.startswith(got)  # a reset may cut what we read, never change it
    else:
        assert got == expect
    if not ok:
        assert src.served == before_served and len(authorized) == before_auth  # no payload touched
    assert not watch.records, watch.records[0].getMessage()
    assert not watch.escaped, watch.escaped[0]


def test_listener_still_serves_after_fuzzing(served):
    listener, src, _, watch = served
    for data in (b"", b"\0" * 100, GOOD[:10], GOOD + b"\x01\xff\xff\xff\xff", GOOD + wire.encode_request([0]) + b"junk"):
        exchange(listener.address, data)
    with get_transport("tcp").connect(listener.address, Hello(MODEL, mint_ticket(KEY, NODE, MODEL), NODE),
                                      timeout=DEADLINE) as s:
        s.request([4, 0, 2])
        buf = {}

        def dest(i, n):
            buf[i] = bytearray(n)
            return memoryview(buf[i])

        got = [s.receive(dest, timeout=DEADLINE) for _ in range(4)]
    assert got == [4, 0, 2, None] and all(bytes(buf[i]) == src.piece(i) for i in (4, 0, 2))
    assert listener._acceptor.is_alive()
    assert not watch.records and not watch.escaped


@pytest.mark.timeout(60)
def test_a_silent_or_stalled_client_is_closed_within_the_io_timeout():
    """Without a half-close the server must still end the session (its socket deadlines)."""
    src = RealSource()

    def authorize(hello: Hello, peer: str):
        check_ticket(KEY, hello.token, hello.node_id, hello.model)
        return src

    listener = TcpListener("127.0.0.1:0", authorize, io_timeout=0.5)
    try:
        for data in (b"", GOOD[:7], GOOD[:-1], GOOD, GOOD + wire.encode_request([0, 1])[:6]):
            t0 = time.monotonic()
            got, _ = exchange(listener.address, data, half_close=False, deadline=3.0)
            assert time.monotonic() - t0 < 3.0
            assert got in (b"", wire.encode_reply(wire.OK))
        assert src.served == 0
    finally:
        listener.close()


# --- the atheris harness (tests/fuzz/fuzz_wire.py) stays runnable --------------------------


def test_fuzz_harness_targets_run_clean():
    """Every target of the long-running harness, on its seeds and a few hundred random mutations
    of them (its ``--engine random``, in-process): no finding, and the harness has not rotted."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent / "fuzz" / "fuzz_wire.py"
    spec = importlib.util.spec_from_file_location("modeldist_fuzz_wire", path)
    harness = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = harness  # its dataclasses look their module up
    spec.loader.exec_module(harness)
    rng = random.Random(0)
    for name, target in harness.load_targets(instrument=False).items():
        stats = harness.Stats(name, None, Path("/nonexistent"), slow=2.0)
        for data in target.seeds + [harness.mutate(rng, target.seeds, target.max_len) for _ in range(300)]:
            stats.run_one(target.fn, data)
        assert stats.inputs == len(target.seeds) + 300
        assert not stats.findings, (name, list(stats.findings.values())[0]["traceback"])
