"""Scenarios: build nodes and links, run one strategy, summarise; and ``predict`` for the testbed."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .engine import Engine
from .strategies import STRATEGIES

__all__ = ["Scenario", "simulate", "predict", "ideal_modeldist"]

GIB = 1 << 30


@dataclass
class Scenario:
    nodes: int = 1000                 # cluster nodes at t=0
    model_bytes: float = 1e12         # S
    piece_bytes: float = GIB
    link_bps: float = 100e9           # B: every node's uplink and downlink, bits/s
    origin_bps: float | None = None   # origin uplink, bits/s (None: = link_bps)
    down_bps: float | None = None     # nodes' downlink, bits/s (None: = link_bps)
    slow_frac: float = 0.0            # this fraction of nodes (random) runs at slow_factor * B, both ways
    slow_factor: float = 0.5
    fail_frac: float = 0.0            # this fraction of the initial nodes (random) dies at fail_at
    fail_at: float = 0.5              # in units of S/B
    repair_delay_s: float = 0.0       # failure -> repaired plan (detection + re-plan)
    joiners: int = 0                  # nodes that join at join_at
    join_at: float = 0.5              # in units of S/B
    stripes: int | None = None        # modeldist: k (None: the planner's default)
    swarm_degree: int = 32
    swarm_slots: int = 4
    origin_degree: int | None = None  # swarm: the origin's neighbours (None: = swarm_degree)
    upload_slots: int = 4             # swarm: concurrent uploads per node (BitTorrent unchoke slots)
    origin_upload_slots: int | None = None  # swarm: the origin's (None: = upload_slots)
    fairness: str = "local"           # engine rate rule: local (fast) or maxmin (exact, slow: checks)
    forward_bytes: float | None = None  # modeldist cut-through: relays forward in units of this many bytes
                                        # (the agents' STREAM_CHUNK) instead of whole pieces (None)
    seed: int = 0
    label: str = ""

    @property
    def s_over_b(self) -> float:
        return self.model_bytes * 8 / self.link_bps

    @property
    def n_pieces(self) -> int:
        return max(1, math.ceil(self.model_bytes / self.piece_bytes))


def _sizes(sc: Scenario, unit: float | None = None) -> list[float]:
    """The units a strategy moves: pieces, or ``unit``-byte slices (cut-through forwarding: a relay
    sends a piece on slice by slice as it lands, so a slice is what crosses a tree level at a time)."""
    unit = float(unit or sc.piece_bytes)
    n = max(1, math.ceil(sc.model_bytes / unit))
    last = sc.model_bytes - unit * (n - 1)
    return [unit] * (n - 1) + [float(last)]


def simulate(sc: Scenario, strategy: str) -> dict:
    """Run ``strategy`` on ``sc``; a dict of results (seconds, ratios to S/B, origin bytes / S, ...)."""
    rng = np.random.default_rng(sc.seed)
    n0, nj = sc.nodes, sc.joiners
    n = n0 + nj
    B = sc.link_bps / 8
    Bo = (sc.origin_bps or sc.link_bps) / 8
    rate = np.full(n, B)
    drate = np.full(n, (sc.down_bps or sc.link_bps) / 8)
    slow = np.zeros(n, dtype=bool)
    if sc.slow_frac > 0:
        slow[rng.choice(n, int(round(sc.slow_frac * n)), replace=False)] = True
        rate[slow] *= sc.slow_factor
        drate[slow] *= sc.slow_factor
    up = [float(x) for x in rate] + [Bo]
    down = [float(x) for x in drate] + [Bo]
    sizes = _sizes(sc, sc.forward_bytes if strategy.startswith("modeldist") else None)
    eng = Engine(up, down, eps=1e-6 * sc.piece_bytes / B, fairness=sc.fairness)
    opts = {"stripes": sc.stripes, "swarm_degree": sc.swarm_degree, "swarm_slots": sc.swarm_slots,
            "origin_degree": sc.origin_degree or sc.swarm_degree, "upload_slots": sc.upload_slots,
            "origin_upload_slots": sc.origin_upload_slots or sc.upload_slots}
    strat = STRATEGIES[strategy](eng, n_initial=n0, n_total=n, sizes=sizes, up=up, down=down,
                                 rng=np.random.default_rng(sc.seed + 1), options=opts)
    sb = sc.s_over_b
    failed: list[int] = []
    if sc.fail_frac > 0:
        failed = sorted(int(x) for x in rng.choice(n0, max(1, int(round(sc.fail_frac * n0))), replace=False))
    joiners = list(range(n0, n))
    pending = {"joins": 1 if joiners else 0}

    wall0 = time.perf_counter()
    cpu0 = time.process_time()
    strat.begin()
    if failed:
        tf = sc.fail_at * sb

        def do_fail():
            strat.fail(failed)
            eng.at(eng.now + sc.repair_delay_s, lambda: strat.repair(failed))
        eng.at(tf, do_fail)
    if joiners:
        def do_join():
            pending["joins"] = 0
            strat.join(joiners)
        eng.at(sc.join_at * sb, do_join)
    eng.stop = lambda: strat.all_done() and not pending["joins"] and not eng.timers
    eng.run()
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0

    alive = [v for v in range(n) if strat.alive[v]]
    done = np.array([strat.done[v] for v in alive])
    incomplete = int(np.isnan(done).sum())
    t_all = math.inf if incomplete else float(done.max())
    p50 = float(np.nanmedian(done)) if len(done) else math.nan
    # lower bound: every node must take S through its downlink; the origin must send S once
    lb = max(sc.model_bytes / min(down[v] for v in alive), sc.model_bytes / Bo) if alive else math.nan
    if joiners:
        lb = max(lb, sc.join_at * sb + sc.model_bytes / min(down[v] for v in joiners))
    res = {
        "strategy": strategy, "label": sc.label, "scenario": asdict(sc), "pieces": sc.n_pieces,
        "s_over_b_s": sb, "time_to_all_s": t_all, "p50_s": p50,
        "time_to_all_over_sb": t_all / sb, "p50_over_sb": p50 / sb,
        "lower_bound_s": lb, "time_to_all_over_lower_bound": t_all / lb,
        "origin_bytes_over_model": eng.sent[n] / sc.model_bytes,
        "peer_bytes_over_model": sum(eng.sent[:n]) / sc.model_bytes,
        "nodes_alive": len(alive), "nodes_failed": len(failed), "incomplete": incomplete,
        "flows": eng.flows_done, "flows_aborted": eng.flows_aborted, "batches": eng.batches,
        "wall_s": wall, "cpu_s": cpu,
    }
    if joiners:
        jd = np.array([strat.done[v] - strat.joined_at[v] for v in joiners if strat.alive[v]])
        res["joiner_time_max_s"] = float(jd.max()) if len(jd) else math.nan
        res["joiner_time_max_over_sb"] = res["joiner_time_max_s"] / sb
    if sc.slow_frac > 0 and hasattr(strat, "parent"):
        # fast nodes that get some stripe through a slow node: capped at that node's download share
        def slow_above(v: int) -> bool:
            for s in range(strat.k):
                p = strat.parent[s][v]
                while p >= 0 and p != n:
                    if slow[p]:
                        return True
                    p = strat.parent[s][p]
            return False
        hit = [v for v in alive if not slow[v] and slow_above(v)]
        res["fast_nodes_below_a_slow_node"] = len(hit)
        res["fast_nodes_below_a_slow_node_time_to_all_over_sb"] = (
            float(max(strat.done[v] for v in hit)) / sb if hit else None)
        rest = [strat.done[v] for v in alive if not slow[v] and v not in set(hit)]
        res["other_fast_nodes_time_to_all_over_sb"] = float(max(rest)) / sb if rest else None
    if sc.slow_frac > 0:
        fast_done = np.array([strat.done[v] for v in alive if not slow[v]])
        res["fast_nodes_time_to_all_over_sb"] = float(np.nanmax(fast_done)) / sb if len(fast_done) else math.nan
        slow_done = np.array([strat.done[v] for v in alive if slow[v]])
        res["slow_nodes_time_to_all_over_sb"] = float(np.nanmax(slow_done)) / sb if len(slow_done) else math.nan
    res.update({f"info_{k}": v for k, v in strat.info.items()})
    if strategy == "modeldist":
        d = strat.info["initial_plan"]["depth"]
        k = strat.info["initial_plan"]["k"]
        res["ideal_s"] = ideal_modeldist(sc, d, k)
        res["ideal_over_sb"] = res["ideal_s"] / sb
    return res


def ideal_modeldist(sc: Scenario, depth: int, k: int) -> float:
    """Homogeneous striped trees, origin rate >= B: each stripe (S/k) flows at B/k per edge, and each
    hop below the root adds one piece time at B/k (one slice with cut-through):
    (largest stripe) / (B/k) + depth * k * piece / B."""
    B = sc.link_bps / 8
    Bo = (sc.origin_bps or sc.link_bps) / 8
    per_edge = min(B / k, Bo / k)
    sizes = _sizes(sc, sc.forward_bytes)
    stripe_bytes = max(sum(sizes[s::k]) for s in range(k))
    return stripe_bytes / per_edge + depth * (sc.forward_bytes or sc.piece_bytes) / per_edge


def predict(nodes: int, rate_bps: float, model_bytes: float, piece_bytes: float, strategy: str = "modeldist",
            *, origin_bps: float | None = None, down_bps: float | None = None, stripes: int | None = None,
            seed: int = 0, detail: bool = False):
    """Predicted time to all (seconds) for a broadcast of ``model_bytes`` in pieces of ``piece_bytes``
    to ``nodes`` nodes whose uplink and downlink are both ``rate_bps`` (bits/s, as ``tc ... rate``);
    the origin's uplink is ``origin_bps`` (default: ``rate_bps``). ``down_bps``: the nodes' downlink
    when it differs from the uplink (e.g. a testbed that shapes only egress: pass something large).
    ``strategy``: modeldist, chain, binary, naive, swarm (or modeldist+spare). Links are the only
    limit: no latency, no CPU, no protocol overhead, no piece verification, so a measurement should
    come out at or above this. ``detail=True`` returns the whole result dict (p50, origin bytes /
    model size, plan depth, ...). Deterministic for a given ``seed`` (only the swarm is random)."""
    sc = Scenario(nodes=nodes, model_bytes=model_bytes, piece_bytes=piece_bytes, link_bps=rate_bps,
                  origin_bps=origin_bps, down_bps=down_bps, stripes=stripes, seed=seed, label="predict")
    res = simulate(sc, strategy)
    return res if detail else res["time_to_all_s"]
