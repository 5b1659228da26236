"""End to end over RDMA: a real scheduler and real agents (separate processes, ``LocalCluster``) with
``--rdma on``, the real model (all-MiniLM-L6-v2) broadcast from its folder, on a real RDMA device
(soft-RoCE in the VM of ``tests/rdma/vm.sh``; skipped where there is none).

Must show: every store bit-identical to the origin; the peer bytes went over RDMA (the agents'
``bytes_by_transport`` in the scheduler's status, and their /metrics: received and sent bytes
labelled ``rdma``, no fallback); in one broadcast, an agent with ``--rdma off`` (fed and feeding
over TCP) and an agent whose RDMA sessions break mid-transfer (``MODELDIST_RDMA_FAIL_AFTER``, a
real queue-pair error) still end bit-identical, the broken sessions finishing over TCP.
"""

from __future__ import annotations

import time

import pytest

from modeldist.cluster import get_status, stage_all
from modeldist.demo import LocalCluster, free_port, verify_store
from tests.swarm_helpers import scrape

pytestmark = [pytest.mark.rdma, pytest.mark.slow]

#: the VM emulates its CPU (TCG): agents start and hash slowly there, and a busy agent's heartbeat
#: can be late by seconds (the default 3 s would declare it dead and re-plan, which is not tested here)
START = 240
BROADCAST = 480
DEAD_AFTER = 60.0


def rx(m: dict, transport: str) -> float:
    return m.get(f'modeldist_received_bytes_total{{source="peer",transport="{transport}"}}', 0.0)


def tx(m: dict, transport: str) -> float:
    return m.get(f'modeldist_sent_bytes_total{{transport="{transport}"}}', 0.0)


def fallbacks(m: dict, side: str, reason: str) -> float:
    return m.get(f'modeldist_transport_fallbacks_total{{reason="{reason}",side="{side}"}}', 0.0)


def start_agent(cluster: LocalCluster, node: str, args: list[str], env: dict | None = None) -> None:
    saved = cluster.env
    if env:
        cluster.env = {**saved, **env}
    try:
        cluster.start_agent(node, args)
    finally:
        cluster.env = saved


def logs_tail(cluster: LocalCluster) -> str:
    out = []
    for log in sorted(cluster.logs.glob("*.log")):
        out.append(f"----- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
    return "\n".join(out)


@pytest.mark.timeout(START + BROADCAST + 60)
def test_broadcast_over_rdma(tmp_path, minilm_dir):
    ports = {f"r{i}": free_port() for i in range(3)}
    with LocalCluster(tmp_path, 0, piece_size="1MiB", dead_after=DEAD_AFTER) as cluster:
        for node, port in ports.items():
            start_agent(cluster, node, ["--rdma", "on", "--metrics-port", str(port)])
        cluster.wait_registered(3, timeout=START)
        t0 = time.monotonic()
        row = stage_all(cluster.address, str(minilm_dir), timeout=BROADCAST)
        seconds = time.monotonic() - t0
        total = row.total_bytes
        peer = 0
        for n in row.nodes:
            assert verify_store(cluster.store_of(n.node_id), row.model, minilm_dir) == [], logs_tail(cluster)
            assert n.bytes_by_transport.get("rdma", 0) == n.peer_bytes, (n.node_id, n.bytes_by_transport)
            assert n.bytes_by_transport.get("tcp", 0) == 0, (n.node_id, n.bytes_by_transport)
            peer += n.peer_bytes
        origin = sum(n.origin_bytes for n in row.nodes)
        assert origin == total and peer == 2 * total  # the origin read once; the rest peer to peer, by RDMA
        received = sent = 0.0
        for node, port in ports.items():
            m = scrape(port)
            received += rx(m, "rdma")
            sent += tx(m, "rdma")
            assert rx(m, "tcp") == 0 and tx(m, "tcp") == 0, node
            assert sum(v for k, v in m.items() if k.startswith("modeldist_transport_fallbacks_total")) == 0, node
        assert received == sent == peer
        print(f"\nRDMA broadcast: {total / 2**20:.1f} MiB to 3 agents in {seconds:.1f}s, "
              f"{peer / 2**20:.1f} MiB peer-to-peer over RDMA ({peer / seconds / 2**20:.1f} MiB/s aggregate, "
              f"soft-RoCE under emulation)")


@pytest.mark.timeout(START + BROADCAST + 60)
def test_fallback_in_one_broadcast(tmp_path, minilm_dir):
    """r0, r1: --rdma on; broken: --rdma on, its RDMA sessions fail after 2 pieces; plain: --rdma off.

    Four nodes, four stripes: each node is the root of one stripe and gets the three others from
    the three other roots, so ``broken`` has two RDMA parents and one TCP parent, and ``plain`` is
    fed by RDMA-capable parents over TCP and feeds them over TCP."""
    ports = {n: free_port() for n in ("r0", "r1", "broken", "plain")}
    with LocalCluster(tmp_path, 0, piece_size="1MiB", dead_after=DEAD_AFTER) as cluster:
        start_agent(cluster, "r0", ["--rdma", "on", "--metrics-port", str(ports["r0"])])
        start_agent(cluster, "r1", ["--rdma", "on", "--metrics-port", str(ports["r1"])])
        start_agent(cluster, "broken", ["--rdma", "on", "--metrics-port", str(ports["broken"])],
                    env={"MODELDIST_RDMA_FAIL_AFTER": "2"})
        start_agent(cluster, "plain", ["--rdma", "off", "--metrics-port", str(ports["plain"])])
        cluster.wait_registered(4, timeout=START)
        row = stage_all(cluster.address, str(minilm_dir), timeout=BROADCAST)
        nodes = {n.node_id: n for n in row.nodes}
        for n in row.nodes:
            assert verify_store(cluster.store_of(n.node_id), row.model, minilm_dir) == [], logs_tail(cluster)
            by = n.bytes_by_transport
            assert by.get("rdma", 0) + by.get("tcp", 0) == n.peer_bytes, (n.node_id, by)
        m = {node: scrape(port) for node, port in ports.items()}
        # the --rdma off agent: everything it got and gave went over TCP
        plain = nodes["plain"]
        assert plain.bytes_by_transport.get("rdma", 0) == 0 and rx(m["plain"], "rdma") == 0
        assert tx(m["plain"], "rdma") == 0
        # RDMA moved bytes between the others
        assert sum(rx(x, "rdma") for x in m.values()) > 0
        # the broken agent's RDMA sessions failed for real mid-transfer and finished over TCP
        broken = nodes["broken"]
        assert fallbacks(m["broken"], "child", "transfer") >= 1, (broken.bytes_by_transport, broken.parents,
                                                                   logs_tail(cluster))
        assert broken.bytes_by_transport.get("tcp", 0) > 0
        assert sum(fallbacks(x, "parent", "transfer") for x in m.values()) == fallbacks(m["broken"], "child",
                                                                                         "transfer")
        status = get_status(cluster.address)
        assert all(alive for _nid, _addr, alive, _seen in status.nodes)
