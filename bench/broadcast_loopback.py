"""Broadcast a synthetic model to N agents on loopback (real scheduler and agent processes).

    python bench/broadcast_loopback.py [--size 1GiB] [--nodes 2,4,8] [--repeat 3] [--piece-size 4MiB]
                                       [--json bench/results/broadcast_loopback.json]

For each N: time until every agent holds the model verified (max over nodes, from the scheduler's
per-node seconds, and wall time of ``stage --all``), per-node rate, origin bytes / model size (the
agents' own counters; goal 1.00). Stores live in /dev/shm. On loopback every link is as fast as
memory and all processes share the machine's cores, so this measures CPU cost and correctness of
the pipeline, not network behaviour (that is the netns testbed's job).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modeldist.cluster import stage_all  # noqa: E402
from modeldist.config import parse_size  # noqa: E402
from modeldist.demo import LocalCluster, generate_model, verify_store  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--nodes", default="2,4,8")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--piece-size", default="4MiB")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    size = parse_size(args.size)
    base = Path(tempfile.mkdtemp(prefix="modeldist-bench-", dir="/dev/shm"))
    results = []
    try:
        origin = base / "origin"
        generate_model(origin, size, shards=8)
        for n in [int(x) for x in args.nodes.split(",")]:
            runs = []
            for rep in range(args.repeat):
                work = base / f"n{n}-r{rep}"
                with LocalCluster(work, n, piece_size=args.piece_size) as cluster:
                    t0 = time.monotonic()
                    row = stage_all(cluster.address, str(origin))
                    wall = time.monotonic() - t0
                    bad = {x.node_id: verify_store(cluster.store_of(x.node_id), row.model, origin) for x in row.nodes}
                    bad = {k: v for k, v in bad.items() if v}
                    if bad:
                        sys.exit(f"verification failed: {bad}")
                    runs.append({
                        "wall_s": wall,
                        "max_node_s": max(x.seconds for x in row.nodes),
                        "p50_node_s": statistics.median(x.seconds for x in row.nodes),
                        "origin_bytes": sum(x.origin_bytes for x in row.nodes),
                        "peer_bytes": sum(x.peer_bytes for x in row.nodes),
                    })
                shutil.rmtree(work, ignore_errors=True)
            model_bytes = row.total_bytes
            med_max = statistics.median(r["max_node_s"] for r in runs)
            results.append({
                "nodes": n, "model_bytes": model_bytes, "runs": runs,
                "median_max_node_s": med_max,
                "median_wall_s": statistics.median(r["wall_s"] for r in runs),
                "per_node_rate_Bps": model_bytes / med_max,
                "origin_bytes_over_model": statistics.median(r["origin_bytes"] for r in runs) / model_bytes,
            })
            r = results[-1]
            print(f"N={n:2d}  time to all {med_max:6.2f} s  per-node {r['per_node_rate_Bps'] / 2**20:7.1f} MiB/s  "
                  f"origin/model {r['origin_bytes_over_model']:.2f}", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "bench": "broadcast_loopback", "piece_size": args.piece_size, "repeat": args.repeat,
            "machine": {"nproc": os.cpu_count(), "python": platform.python_version()}, "results": results},
            indent=2))


if __name__ == "__main__":
    main()
