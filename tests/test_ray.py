"""Cluster-wide preload on a real multi-node Ray cluster (ray.cluster_utils.Cluster, one machine)."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = [c.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=c.address, namespace="modeldist-test", log_to_driver=False)
    c.wait_for_nodes()
    try:
        yield c, nodes
    finally:
        import modeldist.ray as mray

        try:
            mray.shutdown()
        finally:
            ray.shutdown()
            c.shutdown()


def test_preload_three_nodes_then_load_without_transfer(cluster, minilm_dir, tmp_path):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    import modeldist.ray as mray

    store = str(tmp_path / "stores" / "{node_id}")
    report = mray.preload(str(minilm_dir), store=store, progress=False)
    assert report.ok, [n.error for n in report.nodes]
    alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    assert sorted(n.node_id for n in report.nodes) == sorted(alive) and len(alive) == 3
    m = modeldist_manifest = __import__("modeldist").Manifest.from_source(str(minilm_dir))
    total = m.total_size
    # every store bit-identical; the origin read once in total; figures consistent with the stores
    assert sum(n.bytes_by_source["origin"] for n in report.nodes) == total
    for n in report.nodes:
        folder = Path(n.store) / report.model
        assert Path(n.store) == Path(store.replace("{node_id}", n.node_id))
        assert (folder / ".modeldist" / "complete").exists()
        for f in m.files:
            assert _sha(folder / f.path) == _sha(minilm_dir / f.path), (n.node_id, f.path)
        assert n.bytes_by_source["origin"] + n.bytes_by_source["peer"] == total
        assert n.bytes_by_transport.get("tcp", 0) == n.bytes_by_source["peer"]

    # idempotent: a second call returns from the stores, moving nothing
    t0 = time.monotonic()
    again = mray.preload(str(minilm_dir), store=store, progress=False)
    assert again.ok and again.model == report.model
    assert time.monotonic() - t0 < 30
    before = {n.node_id: n.bytes_by_source for n in again.nodes}
    assert before == {n.node_id: n.bytes_by_source for n in report.nodes}

    # a task on each node maps the weights through its local agent: no new transfer
    @ray.remote(num_cpus=0)
    def load_here(src: str) -> tuple[str, str, str]:
        import numpy as np

        import modeldist

        t = modeldist.load(src)
        h = hashlib.sha256()
        for k in sorted(t):
            h.update(k.encode())
            h.update(np.ascontiguousarray(t[k]).view(np.uint8).tobytes())
        base = next(iter(t.values())).base
        return ray.get_runtime_context().get_node_id(), h.hexdigest(), str(type(base))

    from safetensors.numpy import load_file

    ref = load_file(minilm_dir / "model.safetensors")
    h = hashlib.sha256()
    for k in sorted(ref):
        h.update(k.encode())
        h.update(ref[k].view("uint8").tobytes())
    outs = ray.get([load_here.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False))
                    .remote(str(minilm_dir)) for nid in alive], timeout=180)
    assert sorted(o[0] for o in outs) == sorted(alive)
    assert all(o[1] == h.hexdigest() for o in outs)
    agents = {nid: ray.get_actor(f"modeldist-agent-{nid}", namespace=mray.NAMESPACE) for nid in alive}
    after = {nid: ray.get(a.counters.remote(report.model))["bytes_by_source"] for nid, a in agents.items()}
    assert after == before  # the agents' counters did not move: the loads were served by mapping

    # eviction removes the model from every node's store
    assert mray.evict(str(minilm_dir)) == 3
    for n in report.nodes:
        assert not (Path(n.store) / report.model).exists()


def test_node_removed_mid_preload(cluster, tmp_path):
    import ray

    import modeldist.ray as mray
    from modeldist.demo import generate_model

    c, nodes = cluster
    src = tmp_path / "big"
    generate_model(src, 192 << 20, shards=4)
    store = str(tmp_path / "stores2" / "{node_id}")
    victim = nodes[-1]
    victim_id = victim.node_id
    result = {}

    def run() -> None:
        result["report"] = mray.preload(str(src), store=store, progress=False, piece_size=1 << 20, timeout=300)

    t = threading.Thread(target=run)
    t.start()
    # remove the node once its agent holds part of the model
    deadline = time.monotonic() + 120
    vstore = Path(store.replace("{node_id}", victim_id))
    while time.monotonic() < deadline:
        bms = list(vstore.glob("*/.modeldist/pieces"))
        if bms and 0 < bms[0].read_bytes().count(1) < len(bms[0].read_bytes()):
            break
        time.sleep(0.01)
    c.remove_node(victim)
    t.join(timeout=360)
    assert not t.is_alive()
    report = result["report"]
    by_id = {n.node_id: n for n in report.nodes}
    assert by_id[victim_id].error is not None  # the report says what happened to that node
    survivors = [n for n in report.nodes if n.node_id != victim_id]
    assert survivors and all(n.error is None for n in survivors), [n.error for n in survivors]
    for n in survivors:
        folder = Path(n.store) / report.model
        assert (folder / ".modeldist" / "complete").exists()
        for f in src.iterdir():
            assert _sha(folder / f.name) == _sha(f)
