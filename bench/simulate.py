#!/usr/bin/env python
"""Broadcast simulator: the real planner (``modeldist.scheduler.planner``) against four baselines.

    python bench/simulate.py                       # every suite; table + bench/results/simulate.json + .png
    python bench/simulate.py --suite headline,failures [--jobs 2] [--json PATH] [--png PATH]
    python bench/simulate.py --suite custom --nodes 1000 --model-size 1TB --piece-size 1GiB \\
        --link-gbps 100 [--origin-gbps 100] [--slow-frac 0.1] [--fail-frac 0.01 --fail-at 0.5] \\
        [--joiners 10 --join-at 0.5] [--strategies modeldist,chain,binary,naive,swarm]

A flow-level, piece-granular event simulation (``bench/sim``): every node has an uplink and a
downlink, shared equally by the transfers using them; a piece moves as one flow and a node forwards
a piece only once it holds all of it. Strategies:

    modeldist        plan_broadcast (k striped trees); remove_node on failures, add_node for joiners
    modeldist+spare  WHAT-IF (not the planner): the same plans, then edges of over-loaded nodes moved
                     to nodes with unused upload slots in any stripe (see bench/sim/strategies.py)
    chain            origin -> n0 -> n1 -> ... (pipelined)
    binary           pipelined binary tree (fastest nodes on top)
    naive            every node reads the whole model from the origin at once
    swarm            BitTorrent-like: random peer graph, rarest first, 4 downloads in flight from
                     distinct random peers, 4 upload slots per node (origin too)

Times are reported as ratios to S/B (model size / link rate). ``predict()`` (below) is the hook a
network testbed calls to compare its measured time with the simulated one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common as C  # noqa: E402  (puts the repository root on sys.path)

from sim.run import Scenario, predict, simulate  # noqa: E402,F401  (predict: the testbed's hook)

__all__ = ["predict", "simulate", "Scenario", "SUITES"]

GIB = 1 << 30
TB = 10 ** 12
ALL = ["modeldist", "chain", "binary", "naive", "swarm"]


def parse_bytes(text: str) -> float:
    """``1TB`` = 1e12, ``1TiB`` = 2**40, ``1GiB``, ``512MiB``, ``4e9``."""
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([KMGT]?)(i?)B?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    num, unit, binary = m.groups()
    mult = {"": 1, "K": 1, "M": 2, "G": 3, "T": 4}[unit]
    base = 1024 if binary else 1000
    return float(num) * (base ** mult if unit else 1)


# ----------------------------------------------------------------------------------------------
# suites: (suite, Scenario, strategy) tasks


def _base(**kw) -> Scenario:
    d = dict(nodes=1000, model_bytes=TB, piece_bytes=GIB, link_bps=100e9)
    d.update(kw)
    return Scenario(**d)


def suite_headline():
    sc = _base(label="1000 nodes, 1 TB, 1 GiB pieces, 100 Gb/s")
    return [("headline", sc, s) for s in ALL]


def suite_failures():
    out = []
    sc = _base(fail_frac=0.01, fail_at=0.5, label="1% of nodes fail at 0.5 S/B, repair at once")
    out += [("failures", sc, s) for s in ALL + ["modeldist+spare"]]
    for at in (0.25, 0.75):
        out.append(("failures", replace(sc, fail_at=at, label=f"1% fail at {at} S/B"), "modeldist"))
    out.append(("failures", replace(sc, repair_delay_s=1.0, label="1% fail at 0.5 S/B, repair after 1 s"), "modeldist"))
    out.append(("failures", replace(sc, fail_frac=0.05, label="5% fail at 0.5 S/B"), "modeldist"))
    out.append(("failures", replace(sc, fail_frac=0.05, label="5% fail at 0.5 S/B"), "modeldist+spare"))
    big = _base(nodes=10000, piece_bytes=TB / 256, fail_frac=0.01, label="10,000 nodes, 256 pieces, 1% fail at 0.5")
    out += [("failures", big, s) for s in ("modeldist", "modeldist+spare")]
    return out


def suite_joiners():
    sc = _base(joiners=10, join_at=0.5, label="+10 nodes (1%) join at 0.5 S/B")
    return [("joiners", sc, s) for s in ALL + ["modeldist+spare"]]


def suite_hetero():
    sc = _base(slow_frac=0.1, slow_factor=0.5, label="10% of nodes at half rate (up and down)")
    return [("hetero", sc, s) for s in ALL]


def suite_scaling():
    out = []
    for n in (100, 300, 1000, 3000, 10000):
        sc = _base(nodes=n, piece_bytes=TB / 256, label=f"{n} nodes, 1 TB in 256 pieces")
        for s in ALL:
            if s == "swarm" and n > 3000:
                continue  # ~40 us per piece transfer: 10,000 x 256 is over the time budget
            out.append(("scaling", sc, s))
    return out


def suite_pieces():
    out = []
    for pb in (16 * GIB, 4 * GIB, GIB, GIB // 4):
        sc = _base(piece_bytes=pb, label=f"piece {C.human_bytes(pb)}")
        out += [("pieces", sc, s) for s in ("modeldist", "chain", "binary")]
    return out


def suite_origin():
    out = []
    for f in (0.5, 2.0):
        sc = _base(origin_bps=f * 100e9, label=f"origin uplink {f:g} x B")
        out += [("origin", sc, s) for s in ("modeldist", "swarm" if f == 2.0 else "modeldist")]
    return [o for i, o in enumerate(out) if o not in out[:i]]


def suite_validate():
    """The fast local sharing rule against exact max-min fairness, on small runs."""
    out = []
    for extra, lab in (({}, "plain"), ({"fail_frac": 0.05}, "5% fail"), ({"slow_frac": 0.2}, "20% half rate"),
                       ({"joiners": 5}, "+5 joiners")):
        for fair in ("local", "maxmin"):
            sc = Scenario(nodes=100, model_bytes=TB, piece_bytes=TB / 64, link_bps=100e9, fairness=fair,
                          label=f"100 nodes, 64 pieces, {lab}, {fair}", **extra)
            out += [("validate", sc, s) for s in ALL]
    return out


SUITES = {"headline": suite_headline, "failures": suite_failures, "joiners": suite_joiners, "hetero": suite_hetero,
          "scaling": suite_scaling, "pieces": suite_pieces, "origin": suite_origin, "validate": suite_validate}


# ----------------------------------------------------------------------------------------------


def _run(task):
    suite, sc, strategy = task
    res = simulate(sc, strategy)
    res["suite"] = suite
    return _clean(res)


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item"):  # numpy scalar
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no inf/nan: None = never finished (see "incomplete")
    return x


def _f(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def print_table(results: list[dict]) -> str:
    rows = []
    for r in results:
        sc = r["scenario"]
        notes = []
        if r.get("nodes_failed"):
            notes.append(f"{r['nodes_failed']} failed")
        if r.get("joiner_time_max_over_sb") is not None:
            notes.append(f"joiners {r['joiner_time_max_over_sb']:.3f} S/B after join")
        if r.get("fast_nodes_time_to_all_over_sb") is not None:
            notes.append(f"fast nodes {r['fast_nodes_time_to_all_over_sb']:.3f}")
        if r.get("info_spare_moves"):
            notes.append(f"{r['info_spare_moves']} edges moved")
        if r.get("incomplete"):
            notes.append(f"{r['incomplete']} never finished")
        rows.append([r["suite"], r["strategy"], str(sc["nodes"]), str(r["pieces"]), _f(r["time_to_all_over_sb"]),
                     _f(r["p50_over_sb"]), _f(r["time_to_all_over_lower_bound"]), _f(r["origin_bytes_over_model"], 2),
                     f"{r['cpu_s']:.1f}", sc["label"] + ("; " + ", ".join(notes) if notes else "")])
    headers = ["suite", "strategy", "N", "pieces", "all/(S/B)", "p50/(S/B)", "all/LB", "origin/S", "cpu s", "scenario"]
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    left = {0, 1, len(headers) - 1}

    def line(r):
        return "  ".join(str(c).ljust(w) if i in left else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def plot(results: list[dict], path: str) -> None:
    """Time to all / (S/B) against N (log x): every strategy (log y), a zoom on the ones near 1,
    and origin bytes / S."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = [r for r in results if r["suite"] == "scaling"]
    if not rs:
        return
    fig, (ax, axz, ax2) = plt.subplots(1, 3, figsize=(16, 4.8))
    styles = {"modeldist": ("tab:blue", "o"), "chain": ("tab:orange", "s"), "binary": ("tab:green", "^"),
              "naive": ("tab:red", "v"), "swarm": ("tab:purple", "D")}
    for s, (col, mk) in styles.items():
        pts = sorted((r["scenario"]["nodes"], r["time_to_all_over_sb"], r["origin_bytes_over_model"]) for r in rs
                     if r["strategy"] == s and r["time_to_all_over_sb"] is not None)
        if not pts:
            continue
        xs = [p[0] for p in pts]
        for a in (ax, axz):
            a.plot(xs, [p[1] for p in pts], marker=mk, color=col, label=s)
        ax2.plot(xs, [p[2] for p in pts], marker=mk, color=col, label=s)
    md = sorted((r["scenario"]["nodes"], r["ideal_over_sb"]) for r in rs if r["strategy"] == "modeldist")
    if md:
        axz.plot([p[0] for p in md], [p[1] for p in md], ls=":", color="black", lw=1,
                 label="S/B + depth*k*piece/B (modeldist ideal)")
    sc = rs[0]["scenario"]
    for a in (ax, axz, ax2):
        a.set_xscale("log")
        a.set_xlabel("nodes N")
        a.grid(True, which="both", alpha=0.3)
        a.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax2.set_yscale("log")
    axz.set_ylim(0.9, 2.6)
    ax.set_ylabel("time to all / (S/B)")
    axz.set_ylabel("time to all / (S/B)")
    ax.set_title(f"time to all: S = {sc['model_bytes'] / TB:g} TB in {rs[0]['pieces']} pieces, B = {sc['link_bps'] / 1e9:g} Gb/s",
                 fontsize=10)
    axz.set_title("zoom (chain leaves the frame above 300 nodes)", fontsize=10)
    ax2.set_ylabel("origin bytes / S")
    ax2.set_title("bytes read from the origin", fontsize=10)
    ax.legend(fontsize=8)
    axz.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="all", help=f"comma list of {', '.join(SUITES)}, custom, or all")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="processes (default 2)")
    ap.add_argument("--json", default=str(HERE / "results" / "simulate.json"), help="'' to skip")
    ap.add_argument("--png", default=str(HERE / "results" / "simulate_scaling.png"), help="'' to skip")
    g = ap.add_argument_group("custom suite")
    g.add_argument("--strategies", default=",".join(ALL))
    g.add_argument("--nodes", type=int, default=1000)
    g.add_argument("--model-size", type=parse_bytes, default=TB)
    g.add_argument("--piece-size", type=parse_bytes, default=GIB)
    g.add_argument("--link-gbps", type=float, default=100.0)
    g.add_argument("--origin-gbps", type=float, default=None)
    g.add_argument("--slow-frac", type=float, default=0.0)
    g.add_argument("--slow-factor", type=float, default=0.5)
    g.add_argument("--fail-frac", type=float, default=0.0)
    g.add_argument("--fail-at", type=float, default=0.5, help="in units of S/B")
    g.add_argument("--repair-delay", type=float, default=0.0, help="seconds")
    g.add_argument("--joiners", type=int, default=0)
    g.add_argument("--join-at", type=float, default=0.5, help="in units of S/B")
    g.add_argument("--stripes", type=int, default=None)
    g.add_argument("--fairness", choices=("local", "maxmin"), default="local")
    g.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    names = list(SUITES) if a.suite == "all" else [s.strip() for s in a.suite.split(",") if s.strip()]
    tasks = []
    for name in names:
        if name == "custom":
            sc = Scenario(nodes=a.nodes, model_bytes=a.model_size, piece_bytes=a.piece_size, link_bps=a.link_gbps * 1e9,
                          origin_bps=a.origin_gbps * 1e9 if a.origin_gbps else None, slow_frac=a.slow_frac,
                          slow_factor=a.slow_factor, fail_frac=a.fail_frac, fail_at=a.fail_at,
                          repair_delay_s=a.repair_delay, joiners=a.joiners, join_at=a.join_at, stripes=a.stripes,
                          fairness=a.fairness, seed=a.seed, label="custom")
            tasks += [("custom", sc, s.strip()) for s in a.strategies.split(",") if s.strip()]
        elif name in SUITES:
            tasks += SUITES[name]()
        else:
            ap.error(f"unknown suite {name!r}")
    # longest first (swarm, big N), so the two processes finish together
    order = sorted(range(len(tasks)), key=lambda i: -(tasks[i][1].nodes * tasks[i][1].n_pieces
                                                      * (6 if tasks[i][2] == "swarm" else 1)))
    t0 = time.perf_counter()
    results: list[dict | None] = [None] * len(tasks)
    if a.jobs > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(a.jobs) as ex:
            futs = {i: ex.submit(_run, tasks[i]) for i in order}
            for i in order:
                results[i] = futs[i].result()
                r = results[i]
                print(f"  {r['suite']:9s} {r['strategy']:16s} N={r['scenario']['nodes']:<6d} "
                      f"{_f(r['time_to_all_over_sb'])} S/B  ({r['cpu_s']:.1f} s CPU, {r['wall_s']:.1f} s wall)  {r['scenario']['label']}", flush=True)
    else:
        for i in order:
            results[i] = _run(tasks[i])
            r = results[i]
            print(f"  {r['suite']:9s} {r['strategy']:16s} N={r['scenario']['nodes']:<6d} "
                  f"{_f(r['time_to_all_over_sb'])} S/B  ({r['cpu_s']:.1f} s CPU, {r['wall_s']:.1f} s wall)  {r['scenario']['label']}", flush=True)
    wall = time.perf_counter() - t0
    res = [r for r in results if r is not None]
    print()
    print(print_table(res))
    print(f"\n{len(res)} runs in {wall:.0f} s with {a.jobs} process(es)")
    doc = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]] if argv is None else ["simulate.py", *argv]),
           "machine": C.machine_info(), "wall_s": wall, "jobs": a.jobs,
           "model": {"rate_rule": "each link shared equally by its flows; a flow runs at the smaller of its two shares",
                     "pipelining": "piece granularity: a node forwards a piece once it holds all of it",
                     "not_modelled": "latency, protocol/CPU overhead, core network, piece verification time"},
           "results": res}
    if a.json:
        C.write_json(a.json, doc)
        print(f"wrote {a.json}")
    if a.png:
        plot(res, a.png)
        if any(r["suite"] == "scaling" for r in res):
            print(f"wrote {a.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
