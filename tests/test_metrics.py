"""/metrics of a real scheduler and agents after a broadcast: the counters match what moved."""

from __future__ import annotations

import pytest

from modeldist.cluster import stage_all
from modeldist.demo import LocalCluster, free_port, verify_store
from tests.swarm_helpers import scrape


@pytest.mark.timeout(180)
def test_agent_metrics_match_bytes_moved(tmp_path, minilm_dir):
    ports = {f"m{i}": free_port() for i in range(3)}
    with LocalCluster(tmp_path, 0, piece_size="1MiB") as cluster:
        for node, port in ports.items():
            cluster.start_agent(node, ["--metrics-port", str(port)])
        cluster.wait_registered(3)
        row = stage_all(cluster.address, str(minilm_dir))
        total = row.total_bytes
        origin = peer = sent = 0.0
        for n in row.nodes:
            assert verify_store(cluster.store_of(n.node_id), row.model, minilm_dir) == []
            m = scrape(ports[n.node_id])
            got_origin = m.get('modeldist_received_bytes_total{source="origin",transport="origin"}', 0.0)
            # agents default to --rdma auto: peer bytes are tcp here, rdma where there is a device
            got_peer = sum(m.get(f'modeldist_received_bytes_total{{source="peer",transport="{t}"}}', 0.0)
                           for t in ("tcp", "rdma"))
            # the agent's own metrics agree with what it reported to the scheduler
            assert got_origin == n.origin_bytes
            assert got_peer >= n.peer_bytes  # received bytes include any duplicate a re-plan discards
            assert m.get('modeldist_pieces_total{result="ok"}', 0) >= 1
            assert m.get('modeldist_pieces_total{result="corrupt"}', 0) == 0
            origin += got_origin
            peer += got_peer
            sent += sum(m.get(f'modeldist_sent_bytes_total{{transport="{t}"}}', 0.0) for t in ("tcp", "rdma"))
        assert origin == total                  # the origin was read once in total
        assert peer == sent == 2 * total        # every peer byte received was sent by a peer
