"""The TCP data-plane wire format: handshake and frames, encoded and parsed with limits.

All integers little-endian. Child -> parent::

    HELLO    magic "MDP1" | u16 version | u16 flags | 32 B model digest | u16 token_len | token
             | u16 id_len | node id (UTF-8)
    REQUEST  u8 1 | u32 count | count x u32 piece index        (exactly one per session)

Parent -> child::

    REPLY    magic "MDP1" | u8 status | u16 msg_len | message (UTF-8)
    PIECE    u8 2 | u32 index | u32 length | payload
    END      u8 4 | u32 0 | u32 0                               (nothing more will come)

Parsers take exactly the bytes they need and check every length against its limit before
reading a payload; anything else is ``TransportError`` (or ``AuthError`` for a refused hello).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ...errors import TransportError
from ..base import Hello

MAGIC = b"MDP1"
VERSION = 1
MAX_TOKEN = 1024
MAX_NODE_ID = 256
MAX_REQUEST = 16_000_000
MAX_PIECE = 1 << 30

OK, AUTH, UNKNOWN_MODEL, BUSY, BAD_VERSION, BAD_REQUEST = range(6)

T_REQUEST, T_PIECE, T_END = 1, 2, 4
FRAME = struct.Struct("<BII")  # type, index, length
_HELLO_HEAD = struct.Struct("<4sHH32sH")
_REPLY_HEAD = struct.Struct("<4sBH")


def encode_hello(h: Hello) -> bytes:
    node = h.node_id.encode()
    if len(h.token) > MAX_TOKEN or len(node) > MAX_NODE_ID:
        raise TransportError("hello too large")
    return (_HELLO_HEAD.pack(MAGIC, VERSION, 0, bytes.fromhex(h.model), len(h.token)) + h.token
            + struct.pack("<H", len(node)) + node)


def read_hello(recv_exact) -> tuple[Hello, int]:
    """Parse a hello from ``recv_exact(n) -> bytes``; returns (hello, version)."""
    magic, version, _flags, digest, tlen = _HELLO_HEAD.unpack(recv_exact(_HELLO_HEAD.size))
    if magic != MAGIC:
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
    return Hello(digest.hex(), token, node), version


def encode_reply(status: int, message: str = "") -> bytes:
    msg = message.encode()[:1024]
    return _REPLY_HEAD.pack(MAGIC, status, len(msg)) + msg


def read_reply(recv_exact) -> tuple[int, str]:
    magic, status, mlen = _REPLY_HEAD.unpack(recv_exact(_REPLY_HEAD.size))
    if magic != MAGIC:
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


def parse_frame_head(raw: bytes) -> FrameHead:
    kind, index, length = FRAME.unpack(raw)
    if kind not in (T_PIECE, T_END):
        raise TransportError(f"unknown frame type {kind}")
    if length > MAX_PIECE:
        raise TransportError(f"frame length {length} over the limit")
    return FrameHead(kind, index, length)
