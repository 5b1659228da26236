#!/usr/bin/env python
"""Benchmark: the broadcast planner at scale (DESIGN section 5: "10,000 nodes in under a second").

    python bench/plan_scale.py [--sizes 100,1000,10000] [--repeat 5] [--bw mixed]
                               [--json bench/results/plan_scale.json]

For each N: a synthetic cluster (upload bandwidth uniform in 0.1..4 GB/s by default, 4 zones, 16
racks per zone, fixed seed), then ``plan_broadcast`` timed ``--repeat`` times (median, min, max).
At the largest N, repairs on that plan, each timed ``--repeat`` times from the same base plan (the
planner is pure): ``remove_node`` of an interior node (a forwarder that is not a root), of a stripe
root, and ``add_node`` of a late joiner. Records, for each plan: stripes k, depth, ceil(log_k N),
max fan-out (most child edges of one node, all stripes together) and its slot count, and the
SplitStream check (no node forwards outside its home stripe). Single-threaded, pure Python.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from modeldist.scheduler.planner import NodeInfo, add_node, plan_broadcast, remove_node  # noqa: E402

GOAL_N = 10_000
GOAL_S = 1.0


def cluster(n: int, *, bw: str, seed: int = 0) -> list[NodeInfo]:
    r = random.Random(seed)
    out = []
    for i in range(n):
        up = 1e9 if bw == "equal" else r.uniform(1e8, 4e9)
        zone = r.randrange(4)
        out.append(NodeInfo(f"node-{i:06d}", addr=f"10.{zone}.{i // 250 % 250}.{i % 250}:7070", upload_bps=up,
                            download_bps=up, zone=f"z{zone}", rack=f"z{zone}-r{r.randrange(16)}"))
    return out


def ceil_log(n: int, k: int) -> int:
    d, p = 0, 1
    while p < n and k > 1:
        p *= k
        d += 1
    return d


def describe(plan) -> dict:
    edges: dict[str, int] = {}
    bad = 0
    for t in plan.stripes:
        for par in t.parent.values():
            edges[par] = edges.get(par, 0) + 1
    for t in plan.stripes:
        for par in set(t.parent.values()):
            if plan.home.get(par) != t.stripe:
                bad += 1
    top = max(edges, key=lambda x: (edges[x], x)) if edges else None
    n = len(plan.nodes)
    return {"nodes": n, "stripes": plan.k, "fanout": plan.fanout, "depth": plan.depth(),
            "ceil_log_k_n": ceil_log(n, plan.k), "max_fanout_edges": edges.get(top, 0) if top else 0,
            "max_fanout_node_slots": plan.slots.get(top, 1) if top else 0,
            "nodes_forwarding_outside_home": bad, "epoch": plan.epoch}


def timed(fn, repeat: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000,10000", help="comma-separated node counts")
    ap.add_argument("--repeat", type=int, default=5, help="timed repetitions of each operation (default 5)")
    ap.add_argument("--bw", choices=["mixed", "equal"], default="mixed", help="upload bandwidths (default mixed)")
    ap.add_argument("--json", default="bench/results/plan_scale.json", help="write results here ('' = don't)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",") if x]

    plans_out = []
    base = None
    for n in sizes:
        nodes = cluster(n, bw=args.bw, seed=n)
        times, plan = timed(lambda: plan_broadcast(nodes), args.repeat)
        plans_out.append({"n": n, "plan_seconds": C.summary(times), "raw_seconds": times, **describe(plan)})
        base = plan

    repairs = []
    if base is not None and len(base.nodes) > 1:
        edges: dict[str, int] = {}
        for t in base.stripes:
            for par in t.parent.values():
                edges[par] = edges.get(par, 0) + 1
        roots = set(base.roots())
        interior = max((x for x in edges if x not in roots), key=lambda x: (edges[x], x))
        root = base.roots()[0]
        joiner = NodeInfo("late-joiner", upload_bps=2e9, zone="z1", rack="z1-r3")
        for op, fn in [("remove_node(interior)", lambda: remove_node(base, interior)),
                       ("remove_node(root)", lambda: remove_node(base, root)),
                       ("add_node", lambda: add_node(base, joiner))]:
            times, after = timed(fn, args.repeat)
            repairs.append({"op": op, "n": len(base.nodes), "seconds": C.summary(times), "raw_seconds": times,
                            **{f"after_{k}": v for k, v in describe(after).items()}})

    goal_row = next((p for p in plans_out if p["n"] == GOAL_N), None)
    result = {
        "benchmark": "plan_scale",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": C.machine_info(),
        "params": {"sizes": sizes, "repeat": args.repeat, "bandwidth": args.bw,
                   "cluster": "upload uniform 0.1..4 GB/s" if args.bw == "mixed" else "upload 1 GB/s each",
                   "zones": 4, "racks_per_zone": 16, "stripes": "default (4)", "fanout": "default (k)"},
        "plans": plans_out,
        "repairs_at_largest_n": repairs,
        "goal": {"n": GOAL_N, "seconds": GOAL_S,
                 "median_seconds": goal_row["plan_seconds"]["median"] if goal_row else None,
                 "met": (goal_row["plan_seconds"]["median"] < GOAL_S) if goal_row else None},
        "notes": ("plan_seconds: plan_broadcast only (node list built beforehand). max_fanout_edges: the most "
                  "child edges of one node over all stripes; with SplitStream they are all in its home stripe. "
                  "Repairs start from the same base plan each time (pure functions)."),
    }
    C.write_json(args.json, result)

    rows = [[str(p["n"]), C.human_s(p["plan_seconds"]["median"]), C.human_s(p["plan_seconds"]["min"]),
             C.human_s(p["plan_seconds"]["max"]), str(p["stripes"]), f'{p["depth"]} (log {p["ceil_log_k_n"]})',
             f'{p["max_fanout_edges"]} / {p["max_fanout_node_slots"]} slots', str(p["nodes_forwarding_outside_home"])]
            for p in plans_out]
    print(C.table(["plan N", "median", "min", "max", "k", "depth", "max fan-out", "fwd outside home"], rows))
    print()
    rrows = [[r["op"], str(r["n"]), C.human_s(r["seconds"]["median"]), C.human_s(r["seconds"]["min"]),
              str(r["after_depth"]), f'{r["after_max_fanout_edges"]} / {r["after_max_fanout_node_slots"]} slots',
              str(r["after_nodes_forwarding_outside_home"])] for r in repairs]
    print(C.table(["repair", "N", "median", "min", "depth after", "max fan-out after", "fwd outside home"], rrows))
    if goal_row:
        g = result["goal"]
        print(f"\ngoal: {GOAL_N} nodes in < {GOAL_S:.0f} s: median {C.human_s(g['median_seconds'])} -> "
              f"{'met' if g['met'] else 'NOT met'}")
    if args.json:
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
