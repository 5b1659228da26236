"""The TCP data-plane wire format: handshake and frames, encoded and parsed with limits.

All integers little-endian. Child -> parent::

    HELLO    magic "MDP1" | u16 version | u16 flags | 32 B model digest | u16 token_len | token
             | u16 id_len | node id (UTF-8)
    REQUEST  u8 1 | u32 count | count x u32 piece index        (exactly one per session)

Parent -> child::

    REPLY    magic "MDP1" | u8 status | u16 msg_len | message (UTF-8)
    PIECE    u8 2 | u32 index | u32 length | payload
    END      u8 4 | u32 0 | u32 0                               (nothing more will come)

Cut-through (the child sets ``HELLO_STREAM``; a parent that ignores flags only ever sends PIECE)::

    STREAM   u8 8 | u32 index | u32 length | payload              (a piece the parent is still
             receiving itself, not verified yet: its bytes go on as they arrive)
    VERDICT  u8 9 | u32 index | u32 1 = the parent verified it, 0 = it did not (its upstream sent
             bad bytes: the child drops the piece without blaming this parent). One per STREAM,
             after its payload, maybe after other frames; all before END.

RDMA extension (``transport/rdma``; a plain TCP peer never sees any of it). The child sets
``HELLO_RDMA`` in the hello's flags; a parent that ignores flags (an older one) answers ``OK`` and
the session is plain TCP. A parent that can serve over RDMA answers ``OK_RDMA`` and then::

    parent -> child  QP_INFO  u8 7 | u32 qp_num | u32 psn | 16 B gid | u16 lid | u8 mtu | u8 rd_atomic
                              | u8 link_layer | u8 0            (its RC queue pair)
    child -> parent  QP_INFO  (the same; qp_num 0 = "no RDMA here", the session carries on as TCP)
    child -> parent  REQUEST  as above
    parent -> child  RDMA     u8 3 | u32 index | u32 length | u32 rkey | u64 address
                              (the piece may be RDMA-READ from the parent's memory region there)
                     PIECE / END as above (PIECE for a piece that is not in a registered region, and
                              for every piece after a FALLBACK)
    child -> parent  ACK      u8 5 | u32 index | u32 0          (piece read; counts as sent)
                     FALLBACK u8 6 | u32 0 | u32 0              (RDMA broke: every RDMA piece not
                              acknowledged is sent again as PIECE frames, and the rest too)

TLS (``--data-tls``): the same frames inside a TLS 1.3 session that both ends open right after the
TCP connection. A parser that meets a TLS record where a hello or reply should be raises
``TlsMismatch`` (one end runs without ``--data-tls``); a TLS parent that gets a plain hello reads it
and answers a plain ``REPLY`` with status ``TLS_REQUIRED``, then closes.

Parsers take exactly the bytes they need and check every length against its limit before
reading a payload; anything else is ``TransportError`` (or ``AuthError`` for a refused hello).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ...errors import TlsError, TransportError
from ..base import Hello

MAGIC = b"MDP1"
VERSION = 1
MAX_TOKEN = 1024
MAX_NODE_ID = 256
MAX_REQUEST = 16_000_000
MAX_PIECE = 1 << 30

OK, AUTH, UNKNOWN_MODEL, BUSY, BAD_VERSION, BAD_REQUEST, OK_RDMA, TLS_REQUIRED = range(8)

#: hello flags
HELLO_RDMA = 0x1
HELLO_STREAM = 0x2  # the child takes STREAM and VERDICT frames (cut-through forwarding)

T_REQUEST, T_PIECE, T_RDMA, T_END, T_ACK, T_FALLBACK, T_QP_INFO, T_STREAM, T_VERDICT = 1, 2, 3, 4, 5, 6, 7, 8, 9
FRAME = struct.Struct("<BII")  # type, index, length
RDMA_EXT = struct.Struct("<IQ")  # rkey, remote address (follows an RDMA frame head)
QP_INFO = struct.Struct("<BII16sHBBBB")  # type, qp_num, psn, gid, lid, mtu, rd_atomic, link layer, 0
_HELLO_HEAD = struct.Struct("<4sHH32sH")
_REPLY_HEAD = struct.Struct("<4sBH")


class TlsMismatch(TlsError):
    """One end of a session speaks TLS (``--data-tls``) and the other does not."""


def _tls_record(head: bytes) -> bool:
    """Whether these bytes start a TLS record (handshake 0x16 or alert 0x15, version 3.x)."""
    return len(head) >= 2 and head[0] in (0x15, 0x16) and head[1] == 3


def encode_hello(h: Hello, flags: int = 0) -> bytes:
    node = h.node_id.encode()
    if len(h.token) > MAX_TOKEN or len(node) > MAX_NODE_ID:
        raise TransportError("hello too large")
    return (_HELLO_HEAD.pack(MAGIC, VERSION, flags, bytes.fromhex(h.model), len(h.token)) + h.token
            + struct.pack("<H", len(node)) + node)


def read_hello(recv_exact) -> tuple[Hello, int]:
    """Parse a hello from ``recv_exact(n) -> bytes``; returns (hello, version)."""
    hello, version, _flags = read_hello_flags(recv_exact)
    return hello, version


def read_hello_flags(recv_exact) -> tuple[Hello, int, int]:
    """``read_hello`` that also returns the hello's flags (unknown bits are the caller's to ignore)."""
    magic, version, flags, digest, tlen = _HELLO_HEAD.unpack(recv_exact(_HELLO_HEAD.size))
    if magic != MAGIC:
        if _tls_record(magic):
            raise TlsMismatch("the child started a TLS handshake: it runs with --data-tls, this node does not")
        raise TransportError("not a modeldist data session (bad magic)")
    if tlen > MAX_TOKEN:
        raise TransportError(f"token length {tlen} over the limit {MAX_TOKEN}")
    token = recv_exact(tlen)
    (nlen,) = struct.unpack("<H", recv_exact(2))
    if nlen > MAX_NODE_ID:
        raise TransportError(f"node id length {nlen} over the limit {MAX_NODE_ID}")
    try:
        node = recv_exact(nlen).decode()
    except UnicodeDecodeError as exc:
        raise TransportError("node id is not UTF-8") from exc
    return Hello(digest.hex(), token, node), version, flags


def encode_reply(status: int, message: str = "") -> bytes:
    msg = message.encode()[:1024]
    return _REPLY_HEAD.pack(MAGIC, status, len(msg)) + msg


def read_reply(recv_exact) -> tuple[int, str]:
    magic, status, mlen = _REPLY_HEAD.unpack(recv_exact(_REPLY_HEAD.size))
    if magic != MAGIC:
        if _tls_record(magic):
            raise TlsMismatch("the parent answered in TLS: it runs with --data-tls, this node does not")
        raise TransportError("peer is not a modeldist agent (bad magic in reply)")
    if mlen > 1024:
        raise TransportError("reply message too long")
    return status, recv_exact(mlen).decode(errors="replace")


def encode_request(indices) -> bytes:
    if len(indices) > MAX_REQUEST:
        raise TransportError("request too large")
    return struct.pack(f"<BI{len(indices)}I", T_REQUEST, len(indices), *indices)


def read_request(recv_exact, n_pieces: int) -> list[int]:
    kind, count = struct.unpack("<BI", recv_exact(5))
    if kind != T_REQUEST:
        raise TransportError(f"expected a request frame, got type {kind}")
    if count > min(MAX_REQUEST, n_pieces):
        raise TransportError(f"request for {count} pieces, model has {n_pieces}")
    indices = list(struct.unpack(f"<{count}I", recv_exact(4 * count)))
    if any(i >= n_pieces for i in indices):
        raise TransportError("request names a piece outside the model")
    return indices


@dataclass(frozen=True)
class FrameHead:
    kind: int
    index: int
    length: int


def parse_frame_head(raw: bytes, kinds: tuple[int, ...] = (T_PIECE, T_END)) -> FrameHead:
    """Parse a parent -> child frame head; ``kinds`` are the types this session may see."""
    if len(raw) != FRAME.size:
        raise TransportError(f"frame head of {len(raw)} bytes, expected {FRAME.size}")
    kind, index, length = FRAME.unpack(raw)
    if kind not in kinds:
        raise TransportError(f"unknown frame type {kind}")
    if length > MAX_PIECE:
        raise TransportError(f"frame length {length} over the limit")
    return FrameHead(kind, index, length)


@dataclass(frozen=True)
class QpInfo:
    """One end of an RDMA edge: what the other end needs to connect its RC queue pair to it."""

    qp_num: int          # 0 = this end does not do RDMA (the session stays TCP)
    psn: int
    gid: bytes           # 16 bytes
    lid: int
    mtu: int             # ibv_mtu enum value (1 = 256 ... 5 = 4096)
    rd_atomic: int       # outstanding RDMA READs this end can take (as responder) or issue
    link_layer: int      # 1 = InfiniBand, 2 = Ethernet (RoCE)


NO_RDMA = QpInfo(0, 0, bytes(16), 0, 0, 0, 0)


def encode_qp_info(q: QpInfo) -> bytes:
    if len(q.gid) != 16:
        raise TransportError("gid must be 16 bytes")
    return QP_INFO.pack(T_QP_INFO, q.qp_num, q.psn & 0xFFFFFF, q.gid, q.lid, q.mtu, q.rd_atomic, q.link_layer, 0)


def read_qp_info(recv_exact) -> QpInfo:
    kind, qpn, psn, gid, lid, mtu, rd, ll, _ = QP_INFO.unpack(recv_exact(QP_INFO.size))
    if kind != T_QP_INFO:
        raise TransportError(f"expected a QP info frame, got type {kind}")
    if qpn >= 1 << 24 or psn >= 1 << 24 or (qpn and not (1 <= mtu <= 5)):
        raise TransportError("malformed QP info")
    return QpInfo(qpn, psn, gid, lid, mtu, rd, ll)
