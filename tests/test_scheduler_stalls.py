"""The scheduler's verdict on stall reports (``SchedulerService._on_failure``), fed directly.

A child reports its parent ``stalled`` (read deadline between pieces), ``stalled_mid_piece`` or
``unreachable``. The parent's control plane still reports, so the silence timer never fires. The
scheduler must demote a parent that holds pieces it owes the child and does not send them, and
must leave alone a parent that is merely waiting on its own slow upstream (pieces move between
reports) — under a flaky origin every parent looks like that for a while. Real manifest, real
planner, real service object; no processes.
"""

from __future__ import annotations

import secrets
import time

import pytest

from modeldist.config import Config
from modeldist.demo import generate_model
from modeldist.manifest import Manifest
from modeldist.proto import pb
from modeldist.scheduler import planner
from modeldist.scheduler import service as svc
from modeldist.scheduler.service import DIGEST, ModelJob, NodeProgress, NodeState, SchedulerService

NODES = [f"n{i}" for i in range(6)]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Manifest:
    folder = tmp_path_factory.mktemp("model")
    generate_model(folder, 4 << 20)
    return Manifest.from_source(str(folder), piece_size=64 << 10)


@pytest.fixture
def sched(manifest):
    s = SchedulerService(Config.load(env={}), dead_after=60.0)
    for n in NODES:
        s.nodes[n] = NodeState(spec=pb.NodeSpec(node_id=n, data_addr=f"127.0.0.1:{7000 + int(n[1:])}"))
    plan = planner.plan_broadcast([s._info(n) for n in NODES])
    job = ModelJob(manifest=manifest, manifest_json=manifest.to_json(), source="x", revision="", key=secrets.token_bytes(32),
                   plan=plan, digests=bytearray(DIGEST * len(manifest.pieces)), known=bytearray(len(manifest.pieces)))
    for n in NODES:
        job.progress[n] = NodeProgress()
    s.jobs[manifest.digest] = job
    return s, job


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    """The scheduler's clock, set by hand: ``clock[0]``; starts at the real one, so after the nodes
    were last seen (whatever the machine's uptime)."""
    now = [time.monotonic()]
    monkeypatch.setattr(svc.time, "monotonic", lambda: now[0])
    return now


def edge(job: ModelJob) -> tuple[str, str, int]:
    """A (child, forwarding parent, stripe) edge of the plan (the parent is not a root)."""
    for t in job.plan.stripes:
        for child, parent in sorted(t.parent.items()):
            if parent != t.root:
                return child, parent, t.stripe
    raise AssertionError("no interior non-root parent in the plan")


def pieces_of(job: ModelJob, stripe: int) -> list[int]:
    return list(job.plan.pieces_of_stripe(stripe, len(job.manifest.pieces)))


def report(s: SchedulerService, job: ModelJob, child: str, parent: str, kind: str, piece: int = 0) -> None:
    s._on_failure(job, child, pb.Failure(peer=parent, piece=piece, kind=kind, detail="test"))


def forwards(job: ModelJob, node: str) -> bool:
    return bool(job.plan.children_of(node))


def test_parent_waiting_on_its_upstream_is_not_demoted(sched, clock):
    s, job = sched
    child, parent, stripe = edge(job)
    ps = pieces_of(job, stripe)
    # each report: the parent holds one piece more, the child got the previous one in between
    for step in range(6):
        job.progress[parent].have.add(ps[step])
        if step:
            job.progress[child].have.add(ps[step - 1])
        report(s, job, child, parent, "stalled")
        clock[0] += 5.0
    assert forwards(job, parent), "a parent that keeps delivering (slowly) was demoted"
    assert child in job.plan.children_of(parent)


def test_parent_that_keeps_owing_a_piece_is_demoted(sched, clock):
    s, job = sched
    child, parent, stripe = edge(job)
    ps = pieces_of(job, stripe)
    job.progress[parent].have.update(ps[:3])
    report(s, job, child, parent, "stalled")
    assert forwards(job, parent), "one report is not evidence enough"
    clock[0] += 0.2
    report(s, job, child, parent, "unreachable")
    assert forwards(job, parent), "too soon: the piece may be on its way"
    clock[0] += 2.0
    report(s, job, child, parent, "stalled")
    assert not forwards(job, parent), "owed the same pieces for 2 s and never sent them"
    assert parent in job.plan.nodes, "demoted to a leaf, not removed: its own download goes on"
    assert job.plan.home[parent] is None
    assert child in job.plan.nodes and parent not in job.plan.parents_of(child)


def test_stall_in_the_middle_of_a_piece_demotes_at_once(sched):
    s, job = sched
    child, parent, stripe = edge(job)
    piece = pieces_of(job, stripe)[0]
    report(s, job, child, parent, "stalled_mid_piece", piece)
    assert not forwards(job, parent)
    assert parent in job.plan.nodes


def test_mid_piece_report_about_a_piece_the_parent_does_not_feed_is_ignored(sched):
    s, job = sched
    child, parent, stripe = edge(job)
    other = next(t.stripe for t in job.plan.stripes if job.plan.parents_of(child)[t.stripe] != parent)
    report(s, job, child, parent, "stalled_mid_piece", pieces_of(job, other)[0])
    assert forwards(job, parent)


def test_stall_inside_a_cut_through_piece_counts_once_the_parent_held_it(sched):
    """A child cut off inside a piece its parent was streaming (cut-through) proves nothing while the
    parent has not reported holding that piece (its own upstream may be what stalls); once it has,
    the stall is the parent's, as for a whole piece."""
    s, job = sched
    child, parent, stripe = edge(job)
    piece = pieces_of(job, stripe)[0]
    report(s, job, child, parent, "stalled_mid_stream", piece)
    assert forwards(job, parent), "demoted for a piece it was still receiving itself"
    job.progress[parent].have.add(piece)
    report(s, job, child, parent, "stalled_mid_stream", piece)
    assert not forwards(job, parent)
    assert parent in job.plan.nodes


def test_stall_inside_a_cut_through_piece_of_a_silent_parent_demotes_it(sched, clock):
    """Reports and data both stopped (a wedged or stopped process): the parent, not its upstream."""
    s, job = sched
    child, parent, stripe = edge(job)
    piece = pieces_of(job, stripe)[0]
    clock[0] += svc.SILENT_MIN_HEARTBEATS * s.heartbeat + 1.0  # < dead_after (60 s)
    s.nodes[child].last_seen = clock[0]  # the reporter itself is alive
    report(s, job, child, parent, "stalled_mid_stream", piece)
    assert not forwards(job, parent)
    assert parent in job.plan.nodes, "demoted, not declared dead"


def test_returning_node_new_parents_get_their_assignments(sched):
    """A node that re-registers (agent restarted on its store) rejoins as a late joiner; the parents
    it gets are told at once (children and their downloads set their pacing), not at their next
    ticket refresh."""
    import asyncio

    s, job = sched
    node = NODES[-1]
    job.plan = planner.remove_node(job.plan, node)
    for n in NODES:
        s.nodes[n].queue = asyncio.Queue()
    spec = pb.NodeSpec(node_id=node, data_addr="127.0.0.1:7999", download_bps=42e6)
    asyncio.run(s.Register(pb.RegisterRequest(node=spec), None))
    assert node in job.plan.nodes
    parents = {p for p in job.plan.parents_of(node) if p}
    assert parents
    for p in parents:
        sent = []
        while not s.nodes[p].queue.empty():
            sent.append(s.nodes[p].queue.get_nowait())
        a = [m.assignment for m in sent if m.WhichOneof("kind") == "assignment"]
        assert a and node in a[-1].children, (p, sent)
        rates = dict(zip(a[-1].children, a[-1].children_download_bps))
        assert rates[node] == 42e6
