"""The RDMA transport beyond the shared contract: real verbs on a real device (soft-RoCE in the VM of
``tests/rdma/vm.sh``; skipped, with the reason, where there is no RDMA device).

Must show: device and GID selection (RoCE v2, IPv4-mapped GID; explicit device / index; typed
errors with errno for a wrong one); one memory region per mapping, shared by every session and
gone when the last one ends; a verbs failure injected mid-transfer on either end (the child's queue
pair forced into the error state, the ``rdma_fail_after`` setting, the parent's queue pair forced
into the error state) finishes the session over TCP with every byte identical and the fallback
counted; old peers (a TCP child, a TCP parent) interoperate; a read-only source mapping (a complete
store) is served by RDMA; reads split into several work requests with the send queue full.
"""

from __future__ import annotations

import errno
import mmap
import os
import platform
import re
import time

import pytest

from modeldist import metrics
from modeldist.config import Config
from modeldist.errors import RdmaUnavailableError
from modeldist.transport.base import get_transport
from modeldist.transport.rdma import check, verbs
from modeldist.transport.tcp import wire
from tests.test_transport_contract import PIECE, Dest, MappedSource, counter, hello, payload, receive_all, serve

pytestmark = pytest.mark.rdma


def rdma(**settings):
    return get_transport("rdma", config=Config.load(env={}, **settings))


def fallbacks(side: str, reason: str) -> float:
    return counter(metrics.TRANSPORT_FALLBACKS, side=side, reason=reason)


def test_device_gid_and_errors():
    desc = check(Config.load(env={}))
    dev = verbs.open_device(None, -1)
    assert dev.name in desc
    if dev.link_layer == verbs.LINK_ETH:  # RoCE: v2 with an IPv4-mapped address when there is one
        assert dev.gid.roce_v2, desc
        if any(g.roce_v2 and g.ipv4 for g in dev.gids):
            assert dev.gid.ipv4 is not None
        if os.environ.get("RXE_IP"):
            assert dev.gid.ipv4 == os.environ["RXE_IP"]
    same = verbs.open_device(dev.name, dev.gid.index)
    assert same.gid == dev.gid
    with pytest.raises(RdmaUnavailableError) as info:
        verbs.open_device("no-such-device0", -1)
    assert info.value.errno_ == errno.ENODEV and "no-such-device0" in str(info.value)
    with pytest.raises(RdmaUnavailableError) as info:
        verbs.open_device(dev.name, 100_000)
    assert info.value.errno_ == errno.EADDRNOTAVAIL
    with pytest.raises(RdmaUnavailableError) as info:
        dev.acquire(bytearray(0))
    assert info.value.errno_ == errno.EINVAL
    ep = verbs.Endpoint(dev, requester=True, depth=4)
    try:
        other = wire.QpInfo(ep.qp.qp_num, 1, dev.gid.raw, 0, 3, 1, 3 - dev.link_layer)
        with pytest.raises(RdmaUnavailableError) as info:
            ep.connect(other)
        assert info.value.errno_ == errno.EPROTONOSUPPORT
    finally:
        ep.close()


def test_a_queue_pair_reaches_only_its_own_models_memory():
    """One protection domain per model: an edge of model A cannot RDMA-READ model B's region, even
    with B's rkey and address; the same read from A's region works."""
    dev = verbs.open_device(None, -1)
    a_mem, b_mem, dst = mmap.mmap(-1, 1 << 16), mmap.mmap(-1, 1 << 16), mmap.mmap(-1, 1 << 16)
    a_mem[:5], b_mem[:5] = b"AAAAA", b"BBBBB"
    ra, rb, rd = dev.acquire(a_mem, "model-a"), dev.acquire(b_mem, "model-b"), dev.acquire(dst, "model-a")
    child = verbs.Endpoint(dev, requester=True, depth=4, domain="model-a")
    parent = verbs.Endpoint(dev, requester=False, depth=1, domain="model-a")
    try:
        child.connect(parent.info())
        parent.connect(child.info())

        def read(region) -> int:
            child.post_read(1, rd.addr, rd.lkey, 5, region.addr, region.rkey)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                for _wr, status in child.poll():
                    return status
                time.sleep(0.001)
            raise AssertionError("no completion")

        assert read(ra) == 0 and dst[:5] == b"AAAAA"
        status = read(rb)
        assert status != 0 and verbs.wc_errno(status) == errno.EACCES, verbs.wc_status_str(status)
        assert dst[:5] == b"AAAAA"
    finally:
        child.close()
        parent.close()
        for r in (ra, rb, rd):
            dev.release(r)


def test_one_region_per_mapping_shared_by_sessions():
    dev = verbs.open_device(None, -1)
    base = dev.regions()
    src = MappedSource(payload(16 * PIECE, seed=21), files=2, held=True)
    t = rdma()
    with serve(t, src) as listener:
        dests = [Dest(src) for _ in range(3)]
        sessions = [t.connect(listener.address, hello(f"c{k}"), timeout=10, regions=d.regions())
                    for k, d in enumerate(dests)]
        try:
            for s in sessions:
                s.request(list(range(src.piece_count())))
            # 2 source mappings (one registration, shared by the 3 parent ends) + 3 destinations
            deadline = time.monotonic() + 10
            while dev.regions() != base + 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert dev.regions() == base + 5
            for i in range(src.piece_count()):
                src.release(i)
            for s, d in zip(sessions, dests):
                got, carriers = receive_all(s, d)
                assert set(carriers) == {"rdma"} and bytes(d.buf) == src.data
        finally:
            for s in sessions:
                s.close()
    assert dev.regions() == base  # deregistered with the last session


def _broken_midway(t, src, dest, breaker, after=5):
    with serve(t, src) as listener:
        with t.connect(listener.address, hello(), timeout=20, regions=dest.regions()) as session:
            session.request(list(range(src.piece_count())))
            got, carriers = [], []
            while (i := session.receive(dest, timeout=20)) is not None:
                got.append(i)
                carriers.append(session.last_transport)
                if len(got) == after and breaker is not None:
                    breaker(session, listener)
    return got, carriers


@pytest.mark.parametrize("how", ["child-qp-error", "rdma_fail_after", "parent-qp-error"])
def test_failure_mid_transfer_finishes_over_tcp(how):
    src = MappedSource(payload(64 * PIECE + 999, seed=22), files=2)
    dest = Dest(src)
    before = {(s, r): fallbacks(s, r) for s in ("child", "parent") for r in ("setup", "transfer")}
    rx_tcp = counter(metrics.BYTES_RECEIVED, source="peer", transport="tcp")
    if how == "child-qp-error":
        got, carriers = _broken_midway(rdma(), src, dest, lambda s, _l: s.break_queue_pair())
    elif how == "rdma_fail_after":
        got, carriers = _broken_midway(rdma(rdma_fail_after=5), src, dest, None)
    else:
        def break_parent(_s, listener):
            edges = listener.rdma_edges()
            assert len(edges) == 1
            edges[0].ep.to_error()
        got, carriers = _broken_midway(rdma(), src, dest, break_parent)
    assert sorted(got) == list(range(src.piece_count())) and len(got) == len(set(got))
    assert bytes(dest.buf) == src.data                       # nothing lost, nothing corrupted
    assert carriers[:5] == ["rdma"] * 5 and "tcp" in carriers  # RDMA first, then TCP
    assert carriers[-1] == "tcp"
    assert fallbacks("child", "transfer") == before[("child", "transfer")] + 1
    assert fallbacks("parent", "transfer") == before[("parent", "transfer")] + 1
    assert fallbacks("child", "setup") == before[("child", "setup")]
    tcp_bytes = sum(src.piece_length(i) for i, c in zip(got, carriers) if c == "tcp")
    assert counter(metrics.BYTES_RECEIVED, source="peer", transport="tcp") - rx_tcp == tcp_bytes
    assert src.sent_by["rdma"] + src.sent_by["tcp"] == len(src.data)
    assert src.sent_by["tcp"] == tcp_bytes


def test_tcp_child_with_rdma_parent():
    """An older (TCP-only) child: the RDMA listener serves it plain TCP."""
    src = MappedSource(payload(10 * PIECE, seed=23))
    dest = Dest(src)
    with serve(rdma(), src) as listener:
        with get_transport("tcp").connect(listener.address, hello(), timeout=10) as session:
            session.request(list(range(src.piece_count())))
            got, carriers = receive_all(session, dest)
    assert bytes(dest.buf) == src.data and set(carriers) == {"tcp"}
    assert src.sent_by == {"tcp": len(src.data)}


def test_rdma_child_with_tcp_parent():
    """An older (TCP-only) parent ignores the hello's RDMA flag: the session is TCP."""
    src = MappedSource(payload(10 * PIECE, seed=24))
    dest = Dest(src)
    before = fallbacks("child", "transfer")
    with serve(get_transport("tcp"), src) as listener:
        with rdma().connect(listener.address, hello(), timeout=10, regions=dest.regions()) as session:
            session.request(list(range(src.piece_count())))
            got, carriers = receive_all(session, dest)
    assert bytes(dest.buf) == src.data and set(carriers) == {"tcp"}
    assert fallbacks("child", "transfer") == before


def test_read_only_source_mapping(tmp_path):
    """A complete store is served from read-only mappings, registered for remote read only. Kernels
    before 6.2 cannot pin a read-only shared mapping for RDMA (ib_umem_get asks FOLL_WRITE|FOLL_FORCE:
    EFAULT); there those pieces go over TCP on the same session, still intact."""
    data = payload(12 * PIECE + 5, seed=25)
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    with open(path, "rb") as fh:
        ro = mmap.mmap(fh.fileno(), len(data), access=mmap.ACCESS_READ)
    src = MappedSource(data, files=1)
    src.maps = {"model-0.safetensors": ro}
    dest = Dest(src)
    with serve(rdma(), src) as listener:
        with rdma().connect(listener.address, hello(), timeout=10, regions=dest.regions()) as session:
            session.request(list(range(src.piece_count())))
            got, carriers = receive_all(session, dest)
    assert bytes(dest.buf) == data
    kernel = tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", platform.release()).groups())
    assert set(carriers) == ({"rdma"} if kernel >= (6, 2) else {"tcp"})


def test_reads_split_into_work_requests_with_a_full_send_queue():
    src = MappedSource(payload(20 * PIECE + 100, seed=26), files=1)
    dest = Dest(src)
    with serve(rdma(), src) as listener:
        with rdma().connect(listener.address, hello(), timeout=20, regions=dest.regions()) as session:
            session._chunk = 4096  # 16+ work requests per piece, far more than the send queue holds
            session.request(list(range(src.piece_count())))
            got, carriers = receive_all(session, dest)
    assert bytes(dest.buf) == src.data and set(carriers) == {"rdma"}
