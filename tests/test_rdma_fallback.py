"""The RDMA transport where RDMA is missing (any machine; no device needed): it must be TCP, and say so.

Must show: with no usable device (here: ``open_device`` failing as it does on a machine without
RDMA), the ``rdma`` transport serves and fetches every byte over plain TCP sessions and counts the
fallback; a TCP parent ignores the hello's RDMA flag and an RDMA-capable parent without a device
answers a plain OK (old and new peers interoperate); the wire extension's frames parse and reject
malformed input; pyverbs' enum names of rdma-core 44 (module constants) and newer (enum classes)
both resolve; ``--rdma on`` refuses to start without a device, ``auto`` picks TCP, with the reason;
the settings are validated.
"""

from __future__ import annotations

import enum
import errno
import subprocess
import sys
import types

import pytest

from modeldist import metrics
from modeldist.cli import _data_transport
from modeldist.config import Config
from modeldist.errors import ConfigError, RdmaUnavailableError, TransportError
from modeldist.transport.base import get_transport
from modeldist.transport.rdma import verbs
from modeldist.transport.tcp import TcpChildSession, open_session, wire
from tests.test_transport_contract import PIECE, Dest, MappedSource, counter, hello, payload, receive_all, serve


@pytest.fixture
def no_rdma(monkeypatch):
    def unavailable(name=None, gid_index=-1):
        raise RdmaUnavailableError("no RDMA device on this machine (test)", errno_=errno.ENODEV)
    monkeypatch.setattr(verbs, "open_device", unavailable)


def test_rdma_transport_without_a_device_is_tcp(no_rdma):
    t = get_transport("rdma", config=Config.load(env={}))
    src = MappedSource(payload(9 * PIECE + 3, seed=31))
    dest = Dest(src)
    before = counter(metrics.TRANSPORT_FALLBACKS, side="child", reason="setup")
    with serve(t, src) as listener:
        with t.connect(listener.address, hello(), timeout=10, regions=dest.regions()) as session:
            session.request(list(range(src.piece_count())))
            got, carriers = receive_all(session, dest)
    assert bytes(dest.buf) == src.data and set(carriers) == {"tcp"}
    assert src.sent_by == {"tcp": len(src.data)}
    assert counter(metrics.TRANSPORT_FALLBACKS, side="child", reason="setup") == before + 1


@pytest.mark.parametrize("parent", ["tcp", "rdma-without-device"])
def test_a_flagged_hello_gets_a_plain_ok_from_a_parent_without_rdma(parent, no_rdma):
    t = get_transport("tcp" if parent == "tcp" else "rdma", config=Config.load(env={}))
    src = MappedSource(payload(4 * PIECE, seed=32))
    dest = Dest(src)
    with serve(t, src) as listener:
        sock, status = open_session(listener.address, hello(), 10, flags=wire.HELLO_RDMA,
                                    accept=(wire.OK, wire.OK_RDMA))
        assert status == wire.OK
        with TcpChildSession(sock, listener.address) as session:
            session.request(list(range(src.piece_count())))
            receive_all(session, dest)
    assert bytes(dest.buf) == src.data


def test_wire_extension_round_trips_and_limits():
    h = hello()
    raw = wire.encode_hello(h, wire.HELLO_RDMA)
    pos = 0

    def recv_exact(n):
        nonlocal pos
        pos += n
        return raw[pos - n:pos]

    assert wire.read_hello_flags(recv_exact) == (h, wire.VERSION, wire.HELLO_RDMA)
    pos = 0
    assert wire.read_hello(recv_exact) == (h, wire.VERSION)  # the old API is unchanged
    q = wire.QpInfo(0x123456, 0xABCDEF, bytes(range(16)), 7, 3, 16, 2)
    raw = wire.encode_qp_info(q)
    pos = 0
    assert wire.read_qp_info(recv_exact) == q
    assert wire.QP_INFO.size == len(raw) == 31
    with pytest.raises(TransportError):
        raw, pos = wire.QP_INFO.pack(wire.T_QP_INFO, 1 << 24, 0, bytes(16), 0, 3, 1, 2, 0), 0
        wire.read_qp_info(recv_exact)
    with pytest.raises(TransportError):
        raw, pos = wire.QP_INFO.pack(wire.T_QP_INFO, 5, 0, bytes(16), 0, 0, 1, 2, 0), 0  # no MTU
        wire.read_qp_info(recv_exact)
    with pytest.raises(TransportError):
        raw, pos = wire.QP_INFO.pack(wire.T_PIECE, 5, 0, bytes(16), 0, 3, 1, 2, 0), 0
        wire.read_qp_info(recv_exact)
    raw, pos = wire.encode_qp_info(wire.NO_RDMA), 0
    assert wire.read_qp_info(recv_exact).qp_num == 0
    with pytest.raises(TransportError):
        wire.encode_qp_info(wire.QpInfo(1, 1, b"short", 0, 3, 1, 2))
    # a plain TCP child never accepts RDMA frames; an RDMA child does
    head = wire.FRAME.pack(wire.T_RDMA, 1, 10)
    with pytest.raises(TransportError):
        wire.parse_frame_head(head)
    assert wire.parse_frame_head(head, (wire.T_PIECE, wire.T_RDMA, wire.T_END)).kind == wire.T_RDMA


def test_enum_names_of_old_and_new_pyverbs():
    old = types.ModuleType("pyverbs.enums")
    old.IBV_WR_RDMA_READ = 4

    class ibv_wr_opcode(enum.IntEnum):  # rdma-core >= 59: cpdef enums become enum classes
        IBV_WR_RDMA_WRITE = 0
        IBV_WR_RDMA_READ = 4

    new = types.ModuleType("pyverbs.libibverbs_enums")
    new.ibv_wr_opcode = ibv_wr_opcode
    assert verbs._const(old, "IBV_WR_RDMA_READ") == verbs._const(new, "IBV_WR_RDMA_READ") == 4
    with pytest.raises(RdmaUnavailableError):
        verbs._const(new, "IBV_NO_SUCH_THING")


def test_rdma_setting_on_auto_off(no_rdma):
    cfg = Config.load(env={})
    assert _data_transport("off", cfg) == "tcp"
    assert _data_transport("auto", cfg) == "tcp"
    with pytest.raises(RdmaUnavailableError, match="--rdma on: no RDMA device") as info:
        _data_transport("on", cfg)
    assert info.value.errno_ == errno.ENODEV
    with pytest.raises(ConfigError):
        _data_transport("sometimes", cfg)


def test_agent_with_rdma_on_and_no_such_device_refuses_to_start():
    env = {"PATH": "/usr/bin:/bin", "MODELDIST_RDMA_DEVICE": "no-such-rdma-device0"}
    r = subprocess.run([sys.executable, "-m", "modeldist.cli", "agent", "--scheduler", "127.0.0.1:1", "--rdma", "on"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1
    assert r.stderr.strip().startswith("error: --rdma on:") and "Traceback" not in r.stderr


def test_rdma_settings_are_validated():
    c = Config.load(env={"MODELDIST_RDMA_DEVICE": "mlx5_1", "MODELDIST_RDMA_GID_INDEX": "3",
                         "MODELDIST_RDMA_FAIL_AFTER": "2"})
    assert (c.rdma_device, c.rdma_gid_index, c.rdma_fail_after) == ("mlx5_1", 3, 2)
    assert Config.load(env={}).rdma_gid_index == -1 and Config.load(env={}).rdma_device is None
    for bad in ({"rdma_gid_index": -2}, {"rdma_fail_after": -1}, {"rdma_gid_index": "x"}):
        with pytest.raises(ConfigError):
            Config.load(env={}, **bad)
