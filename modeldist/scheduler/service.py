"""The gRPC Scheduler service: registration, plans, digests, progress, repair (``grpc.aio``).

All state lives in one asyncio loop; nothing here waits on a node: each node has its own outbound
queue drained by its ``Join`` stream, so a slow node only delays itself. A node whose ``Report``
stream breaks, or that is silent for ``dead_after`` seconds, is declared dead: every plan it was
in is repaired incrementally (``planner.remove_node``) and only the nodes whose parents changed get
a new assignment. Digests computed by stripe seeds are collected and pushed to every node of the
model in batches, so children verify what their parents send against what the origin held.

Restart: the scheduler keeps no state on disk; its nodes hold it. Agents re-register with what
they execute (``ResumeJob``: manifest, session key, parents per stripe, pieces and digests held),
the data plane carries on meanwhile, and a job seen again is rebuilt once every node it names is
back or ``resume_grace`` has passed: the same trees (``planner.restore_plan``), nodes that did not
come back repaired away, the digest table from what the nodes hold (a stripe root's word first).

Must not: touch model bytes beyond the safetensors headers it reads to build a manifest.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field

import grpc

from .. import metrics
from ..config import Config
from ..errors import ModelDistError, PlanError
from ..manifest import Manifest
from ..proto import pb, pb_grpc
from ..security import TICKET_TTL, TokenInterceptor, mint_ticket, read_token, server_credentials
from ..staging import resolve
from . import planner
from .planner import BroadcastPlan, NodeInfo

__all__ = ["SchedulerService", "serve"]

log = logging.getLogger(__name__)

DIGEST = 32
#: shortest time a parent must owe a child a piece it holds before a report demotes it (s)
SUSPECT_MIN_S = 1.0
#: a parent silent for this many heartbeats whose child is cut off inside a piece it was cutting
#: through is taken as stalled itself (not its upstream)
SILENT_MIN_HEARTBEATS = 3
GRPC_OPTIONS = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]


@dataclass
class NodeState:
    spec: pb.NodeSpec
    alive: bool = True
    last_seen: float = field(default_factory=time.monotonic)
    queue: asyncio.Queue | None = None
    sent_manifest: set = field(default_factory=set)


@dataclass
class NodeProgress:
    have: set = field(default_factory=set)
    complete: bool = False
    origin: int = 0
    peer: int = 0
    sent: int = 0
    by_transport: dict = field(default_factory=dict)
    error: str = ""
    state: str = "fetching"
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    rate_mark: tuple[float, int] = (0.0, 0)
    rate: float = 0.0
    reparented_from: list = field(default_factory=list)
    last_parents: tuple = ()


@dataclass
class ModelJob:
    manifest: Manifest
    manifest_json: bytes
    source: str
    revision: str
    key: bytes                     # data-session key of this model (tickets are minted with it)
    plan: BroadcastPlan | None
    digests: bytearray
    known: bytearray
    progress: dict[str, NodeProgress] = field(default_factory=dict)
    pending_digests: list[int] = field(default_factory=list)
    replans: int = 0
    excluded: set = field(default_factory=set)
    #: (child, parent) -> (since, pieces the parent held and owed the child then): a parent
    #: still owing any of them at a later stall/unreachable report is not forwarding
    suspect: dict = field(default_factory=dict)
    #: while rebuilding after a scheduler restart (plan is None): node -> what it said it executes
    resumed: dict | None = None
    resume_since: float = 0.0


class SchedulerService(pb_grpc.SchedulerServicer):
    def __init__(self, config: Config | None = None, *, heartbeat: float = 1.0, dead_after: float = 5.0,
                 resume_grace: float = 6.0):
        self.config = config or Config.load()
        self.heartbeat = heartbeat
        self.dead_after = dead_after
        self.resume_grace = resume_grace
        #: random per process: agents that see it change know plan epochs start over
        self.instance = secrets.token_hex(8)
        self.nodes: dict[str, NodeState] = {}
        self.jobs: dict[str, ModelJob] = {}
        self._tasks: list[asyncio.Task] = []

    # --- lifecycle -----------------------------------------------------------------------

    def start_background(self) -> None:
        self._tasks.append(asyncio.ensure_future(self._monitor()))
        self._tasks.append(asyncio.ensure_future(self._flush_digests()))

    async def stop_background(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass

    # --- RPCs ----------------------------------------------------------------------------

    async def Register(self, request, context):
        spec = request.node
        if not spec.node_id or not spec.data_addr:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node_id and data_addr are required")
        # one data plane per cluster: a TLS agent and a plaintext one cannot talk to each other, and
        # their failing sessions would look like stalls. Refuse the odd one, loudly.
        tls = "tls" in spec.transports
        others = {n: "tls" in s.spec.transports for n, s in self.nodes.items() if s.alive and n != spec.node_id}
        if others and any(v != tls for v in others.values()):
            other = next(n for n, v in others.items() if v != tls)
            log.error("refusing %s: data-plane TLS %s, but %s has it %s", spec.node_id, "on" if tls else "off", other,
                      "off" if tls else "on")
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"data-plane TLS mismatch: this agent has --data-tls {'on' if tls else 'off'}, "
                                f"registered agents (e.g. {other}) have it {'off' if tls else 'on'}")
        old = self.nodes.get(spec.node_id)
        if old is not None and not old.alive:
            log.info("node %s is back", spec.node_id)
        self.nodes[spec.node_id] = NodeState(spec=spec)
        metrics.SCHEDULER_NODES.set(sum(1 for n in self.nodes.values() if n.alive))
        for r in request.resume:
            self._resume(spec.node_id, r)
        # a node that comes back (restart on its store) rejoins its unfinished broadcasts as a
        # late joiner: it resumes from its own pieces and fetches only what it lacks
        for job in self.jobs.values():
            if job.plan is None:
                continue  # being rebuilt: the node is part of it
            prog = job.progress.get(spec.node_id)
            if prog is not None and spec.node_id not in job.plan.nodes and spec.node_id not in job.excluded:
                # its new parents learn of it now (their pacing counts their children); its own
                # assignment follows at Join
                self._add_late(job, spec.node_id)
                job.replans += 1
                prog.state = "fetching" if not prog.complete else "complete"
                if not prog.complete:
                    prog.finished = None  # its clock runs again
                metrics.REPLANS.labels(reason="join").inc()
        log.info("registered %s at %s", spec.node_id, spec.data_addr)
        return pb.RegisterReply(node_id=spec.node_id, heartbeat_s=self.heartbeat, dead_after_s=self.dead_after,
                                scheduler_id=self.instance)

    async def Join(self, request, context):
        node = self.nodes.get(request.node_id)
        if node is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "register first")
        node.queue = q = asyncio.Queue()
        node.sent_manifest = set()
        node.alive = True
        node.last_seen = time.monotonic()
        # a node that (re)joins gets its current assignments and every digest known so far
        for job in self.jobs.values():
            if job.plan is not None and request.node_id in job.plan.nodes:
                self._send_assignment(job, request.node_id)
                self._send_known_digests(job, request.node_id)
        try:
            while True:
                msg = await q.get()
                if msg is None:
                    return
                yield msg
        finally:
            if node.queue is q:
                node.queue = None

    async def Report(self, request_iterator, context):
        node_id = None
        try:
            async for r in request_iterator:
                node_id = r.node_id
                node = self.nodes.get(node_id)
                if node is None:
                    continue
                node.last_seen = time.monotonic()
                node.alive = True
                if r.model:
                    self._on_progress(node_id, r)
        except asyncio.CancelledError:
            raise
        except grpc.RpcError:
            pass
        finally:
            if node_id is not None and node_id in self.nodes and self.nodes[node_id].alive:
                # the stream broke: the process is gone or cut off; repair now, not after a timeout
                self._declare_dead(node_id, "report stream closed")
        return pb.ReportAck()

    async def Stage(self, request, context):
        if not request.source:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "source is required")
        cfg = self.config.replace(piece_size=request.piece_size or None)
        loop = asyncio.get_running_loop()
        try:
            manifest = await loop.run_in_executor(None, _manifest_of, request.source, request.revision or None,
                                                  list(request.allow_patterns) or None, cfg)
        except ModelDistError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{type(exc).__name__}: {exc}")
        alive = [n for n, s in self.nodes.items() if s.alive]
        wanted = [n for n in (request.nodes or alive) if n in self.nodes and self.nodes[n].alive]
        if not wanted:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no registered agent to stage on")
        job = self.jobs.get(manifest.digest)
        if job is not None and job.plan is None:
            self._finish_resume(job)  # being rebuilt after a restart: settle it now, then add to it
        if job is None:
            infos = [self._info(n) for n in sorted(wanted)]
            plan = planner.plan_broadcast(infos)
            job = ModelJob(manifest=manifest, manifest_json=manifest.to_json(), source=request.source,
                           revision=request.revision, key=secrets.token_bytes(32), plan=plan,
                           digests=bytearray(DIGEST * len(manifest.pieces)), known=bytearray(len(manifest.pieces)))
            self.jobs[manifest.digest] = job
            metrics.PLANS.inc()
            for n in plan.nodes:
                job.progress[n] = NodeProgress()
                self._send_assignment(job, n)
            log.info("model %s: %d nodes, %d stripes, depth %d", manifest.digest[:12], len(plan.nodes), plan.k,
                     plan.depth())
        else:
            for n in wanted:
                if n not in job.plan.nodes and n not in job.excluded:
                    job.progress[n] = NodeProgress()
                    job.replans += 1
                    metrics.REPLANS.labels(reason="join").inc()
                    self._add_late(job, n)
                    self._send_known_digests(job, n)
        return pb.StageReply(model=manifest.digest, nodes=len(job.plan.nodes), total_bytes=manifest.total_size)

    async def Status(self, request, context):
        now = time.monotonic()
        reply = pb.StatusReply()
        for nid, s in sorted(self.nodes.items()):
            reply.nodes.append(pb.NodeStatus(node_id=nid, data_addr=s.spec.data_addr, alive=s.alive,
                                             last_seen_s=now - s.last_seen, labels=dict(s.spec.labels)))
        for digest, job in self.jobs.items():
            if request.model and request.model != digest:
                continue
            ms = pb.ModelStatus(model=digest, source=job.source, total_bytes=job.manifest.total_size,
                                pieces=len(job.manifest.pieces), stripes=job.plan.k if job.plan else 0,
                                replans=job.replans)
            for nid, prog in sorted(job.progress.items()):
                np_ = pb.NodeProgress(
                    node_id=nid, have=len(prog.have), complete=prog.complete, rate_bps=prog.rate,
                    bytes_from_origin=prog.origin, bytes_from_peers=prog.peer, state=prog.state, error=prog.error,
                    bytes_by_transport=prog.by_transport, reparented_from=prog.reparented_from,
                    seconds=((prog.finished or now) - prog.started))
                if job.plan is not None and nid in job.plan.nodes:
                    np_.parents.extend(self._parents_pb(job, nid))
                ms.nodes.append(np_)
            reply.models.append(ms)
        return reply

    # --- internals -----------------------------------------------------------------------

    def _info(self, node_id: str) -> NodeInfo:
        spec = self.nodes[node_id].spec
        return NodeInfo(node_id, spec.data_addr, spec.upload_bps, spec.download_bps,
                        spec.labels.get("zone", ""), spec.labels.get("rack", ""))

    def _parents_pb(self, job: ModelJob, node_id: str) -> list:
        out = []
        for s, p in enumerate(job.plan.parents_of(node_id)):
            if p is None:
                out.append(pb.Parent(stripe=s, origin=True))
            else:
                out.append(pb.Parent(stripe=s, node_id=p, data_addr=self.nodes[p].spec.data_addr))
        return out

    def _send_assignment(self, job: ModelJob, node_id: str) -> None:
        node = self.nodes.get(node_id)
        if node is None or node.queue is None or job.plan is None:
            return
        digest = job.manifest.digest
        children = sorted(job.plan.children_of(node_id))
        a = pb.Assignment(model=digest, source=job.source, revision=job.revision, stripes=job.plan.k,
                          children=children, session_key=job.key,
                          children_download_bps=[self._download_of(c) for c in children],
                          ticket=mint_ticket(job.key, node_id, digest, ttl=TICKET_TTL), epoch=job.plan.epoch)
        a.parents.extend(self._parents_pb(job, node_id))
        if digest not in node.sent_manifest:
            a.manifest_json = job.manifest_json
            node.sent_manifest.add(digest)
        prog = job.progress.get(node_id)
        if prog is not None:
            prog.last_parents = tuple(job.plan.parents_of(node_id))
        node.queue.put_nowait(pb.PlanUpdate(assignment=a))

    def _download_of(self, node_id: str) -> float:
        node = self.nodes.get(node_id)
        return float(node.spec.download_bps) if node is not None else 0.0

    def _send_known_digests(self, job: ModelJob, node_id: str) -> None:
        """Every digest known so far, to a node that joins a running (or finished) broadcast."""
        node = self.nodes.get(node_id)
        known = [i for i in range(len(job.known)) if job.known[i]]
        if node is not None and node.queue is not None and known:
            node.queue.put_nowait(self._digests_msg(job, known))

    def _digests_msg(self, job: ModelJob, indices: list[int]):
        blob = b"".join(bytes(job.digests[i * DIGEST:(i + 1) * DIGEST]) for i in indices)
        return pb.PlanUpdate(digests=pb.Digests(model=job.manifest.digest, indices=indices, digests=blob))

    def _on_progress(self, node_id: str, r) -> None:
        job = self.jobs.get(r.model)
        if job is None or node_id not in job.progress:
            return
        prog = job.progress[node_id]
        n = len(job.manifest.pieces)
        prog.have.update(i for i in r.have if i < n)
        if r.digests.indices:
            blob = r.digests.digests
            if len(blob) == DIGEST * len(r.digests.indices) and node_id in self._roots(job):
                for j, i in enumerate(r.digests.indices):
                    if _learn_digest(job, i, blob[j * DIGEST:(j + 1) * DIGEST]) is None:
                        job.pending_digests.append(i)
        prog.origin, prog.peer, prog.sent = r.bytes_from_origin, r.bytes_from_peers, r.bytes_sent
        prog.by_transport = dict(r.bytes_by_transport)
        now = time.monotonic()
        got = prog.origin + prog.peer
        t0, b0 = prog.rate_mark
        if now - t0 >= 1.0:
            prog.rate = (got - b0) / (now - t0) if t0 else 0.0
            prog.rate_mark = (now, got)
        if r.error and prog.state != "failed":
            prog.error = r.error
            prog.state = "failed"
            log.error("model %s failed on %s: %s", job.manifest.digest[:12], node_id, r.error)
            if job.plan is not None and node_id in job.plan.nodes:
                # its children must not wait for it (a full store, a broken origin): re-parent them.
                # Not excluded: staged again (after freeing space), it joins like any node
                self._drop(job, node_id, f"failed here: {r.error[:200]}", "failed")
        if r.complete and not prog.complete:
            prog.complete = True
            prog.state = "complete"
            prog.finished = now
            log.info("model %s complete on %s", job.manifest.digest[:12], node_id)
        for f in r.failures:
            self._on_failure(job, node_id, f)

    def _on_failure(self, job: ModelJob, reporter: str, f) -> None:
        peer = f.peer
        if job.plan is None:
            return  # rebuilding: the reporter's fetcher retries; it reports again after
        if f.kind == "corrupt" and peer in job.plan.nodes:
            log.warning("model %s: %s reports corrupt piece %d from %s: excluding it", job.manifest.digest[:12],
                        reporter, f.piece, peer)
            metrics.PIECES_REPORTED.labels(result="corrupt").inc()
            self._exclude(job, peer, "served corrupt data", "excluded")
        elif f.kind in ("unreachable", "stalled", "stalled_mid_piece", "stalled_mid_stream") and peer in self.nodes:
            node = self.nodes[peer]
            if time.monotonic() - node.last_seen > self.dead_after:
                self._declare_dead(peer, f"{f.kind} per {reporter}")
                return
            # its control plane still reports. A parent that sends nothing because it has nothing
            # yet (its own upstream is slow) is fine; one that holds pieces it owes the reporter
            # and does not deliver them has a broken data plane: it stops forwarding (demoted to
            # a leaf, its children re-parented at once) instead of waiting for a silence that
            # never comes. Evidence: a stall in the middle of a piece (the parent held it, it was
            # sending it), or pieces it owed at an earlier report still owed at this one.
            if peer not in job.plan.nodes or reporter not in job.plan.nodes or job.plan.home.get(peer) is None:
                return  # not a forwarder (any more): nothing to take away from it
            owed = self._owed(job, peer, reporter)
            now = time.monotonic()
            # cut off in the middle of a piece the parent held: a whole one (it held it when it
            # started); a cut-through one if it has reported holding it since, or if it has not
            # reported at all for a few heartbeats (a node whose reports and data both stopped is
            # wedged, not waiting on its upstream; dead_after would take it out later)
            pp = job.progress.get(peer)
            held = f.kind == "stalled_mid_piece" or (f.kind == "stalled_mid_stream" and (
                (pp is not None and f.piece in pp.have) or now - node.last_seen > SILENT_MIN_HEARTBEATS * self.heartbeat))
            mid = (held and f.piece < len(job.manifest.pieces)
                   and job.plan.parents_of(reporter)[job.plan.stripe_of(f.piece)] == peer)
            since, before = job.suspect.get((reporter, peer), (now, set()))
            if mid or (before & owed and now - since >= SUSPECT_MIN_S):
                log.warning("model %s: %s does not send %s pieces it holds (%s, %s): demoting it to a leaf",
                            job.manifest.digest[:12], peer, reporter, f.kind,
                            f"piece {f.piece} cut off" if mid else f"{len(before & owed)} owed for {now - since:.1f}s")
                metrics.PIECES_REPORTED.labels(result="stalled").inc()
                job.suspect = {e: v for e, v in job.suspect.items() if peer not in e}
                self._demote(job, peer, f"{f.kind} per {reporter}")
            elif owed and not (before & owed):
                job.suspect[(reporter, peer)] = (now, owed)  # suspected from now on

    def _owed(self, job: ModelJob, parent: str, child: str) -> set[int]:
        """Pieces ``parent`` holds (as far as its reports say) that it should be sending ``child``."""
        stripes = {s for s, p in enumerate(job.plan.parents_of(child)) if p == parent}
        pp, cp = job.progress.get(parent), job.progress.get(child)
        if not stripes or pp is None or cp is None:
            return set()
        k = job.plan.k
        return {i for i in pp.have if i % k in stripes and i not in cp.have}

    def _demote(self, job: ModelJob, peer: str, why: str) -> None:
        """``peer`` stops forwarding: out of the trees, back in as a leaf everywhere (late-joiner
        style). Its own download goes on (only the stripes whose parent changes restart)."""
        if len(job.plan.nodes) <= 1:
            return
        self._remove_from_job(job, peer, f"demoted: {why}")
        if peer in job.plan.nodes:
            return  # (the repair could not remove it)
        self._add_late(job, peer)
        if peer in job.progress:
            job.progress[peer].state = "fetching" if not job.progress[peer].complete else "complete"

    def _add_late(self, job: ModelJob, node_id: str) -> None:
        """``node_id`` joins the running plan as a leaf everywhere (``planner.add_node``); it and its
        new parents (their children count sets their pacing) get their assignments."""
        job.plan = planner.add_node(job.plan, self._info(node_id))
        self._send_assignment(job, node_id)
        for p in set(p for p in job.plan.parents_of(node_id) if p):
            self._send_assignment(job, p)

    def _drop(self, job: ModelJob, peer: str, reason: str, state: str) -> None:
        """Out of this broadcast: children re-parented, its own job here cancelled."""
        self._remove_from_job(job, peer, reason)
        node = self.nodes.get(peer)
        if node is not None and node.queue is not None:
            node.queue.put_nowait(pb.PlanUpdate(cancel=pb.Cancel(model=job.manifest.digest, reason=reason)))
        if peer in job.progress:
            job.progress[peer].state = state

    def _exclude(self, job: ModelJob, peer: str, reason: str, state: str) -> None:
        """``_drop`` for good: never planned into this broadcast again."""
        job.excluded.add(peer)
        self._drop(job, peer, reason, state)

    def _declare_dead(self, node_id: str, why: str) -> None:
        node = self.nodes.get(node_id)
        if node is None or not node.alive:
            return
        node.alive = False
        log.warning("node %s declared dead (%s)", node_id, why)
        metrics.SCHEDULER_NODES.set(sum(1 for n in self.nodes.values() if n.alive))
        if node.queue is not None:
            node.queue.put_nowait(None)
        for job in self.jobs.values():
            if job.plan is not None and node_id in job.plan.nodes:
                self._remove_from_job(job, node_id, why)
            if node_id in job.progress and not job.progress[node_id].complete:
                job.progress[node_id].state = "dead"
                job.progress[node_id].finished = time.monotonic()  # its clock stops at death

    def _remove_from_job(self, job: ModelJob, node_id: str, why: str) -> None:
        if len(job.plan.nodes) <= 1:
            return  # nothing left to repair
        before = {n: tuple(job.plan.parents_of(n)) for n in job.plan.nodes if n != node_id}
        try:
            job.plan = planner.remove_node(job.plan, node_id)
        except PlanError as exc:
            log.error("cannot repair plan of %s: %s", job.manifest.digest[:12], exc)
            return
        job.replans += 1
        metrics.REPLANS.labels(reason="failure").inc()
        for n, old in before.items():
            new = tuple(job.plan.parents_of(n))
            if new != old:
                if node_id in old and n in job.progress:
                    job.progress[n].reparented_from.append(node_id)
                self._send_assignment(job, n)
        log.info("model %s re-planned without %s (%s): epoch %d", job.manifest.digest[:12], node_id, why,
                 job.plan.epoch)

    # --- rebuilding after a restart ----------------------------------------------------------

    def _roots(self, job: ModelJob) -> set[str]:
        """Nodes whose digests are taken as the origin's: stripe roots (as they said, while rebuilding)."""
        if job.plan is not None:
            return set(job.plan.roots())
        return {n for n, r in (job.resumed or {}).items() if any(p.origin for p in r.parents)}

    def _resume(self, node_id: str, r) -> None:
        """A re-registering node says it is in broadcast ``r.model``: rebuild that job from it."""
        job = self.jobs.get(r.model)
        if job is None:
            try:
                manifest = Manifest.from_json(bytes(r.manifest_json))
            except ModelDistError as exc:
                log.warning("%s: cannot resume model %s: %s", node_id, r.model[:12], exc)
                return
            if manifest.digest != r.model or len(r.session_key) < 16:
                log.warning("%s: cannot resume model %s: manifest or key does not match", node_id, r.model[:12])
                return
            n = len(manifest.pieces)
            job = ModelJob(manifest=manifest, manifest_json=manifest.to_json(), source=r.source, revision=r.revision,
                           key=bytes(r.session_key), plan=None, digests=bytearray(DIGEST * n), known=bytearray(n),
                           resumed={}, resume_since=time.monotonic())
            self.jobs[r.model] = job
            log.info("model %s: rebuilding from its nodes (first: %s)", r.model[:12], node_id)
        n = len(job.manifest.pieces)
        if node_id in job.excluded:
            return
        prog = NodeProgress(have={i for i in r.have if i < n}, complete=r.complete, origin=r.bytes_from_origin,
                            peer=r.bytes_from_peers, sent=r.bytes_sent, by_transport=dict(r.bytes_by_transport),
                            state="complete" if r.complete else "fetching")
        if r.complete:
            prog.finished = prog.started
        job.progress[node_id] = prog
        if job.plan is None:
            job.resumed[node_id] = r
        # (a node back after the rebuild joins as a late joiner: Register's loop adds it)

    def _resume_ready(self, job: ModelJob) -> bool:
        """Every node the resumed reports name (parents, children) is back and has said its part."""
        named = set(job.resumed)
        for r in job.resumed.values():
            named.update(p.node_id for p in r.parents if not p.origin)
            named.update(r.children)
        return all(n in job.resumed and self.nodes.get(n) is not None and self.nodes[n].alive for n in named)

    def _finish_resume(self, job: ModelJob) -> None:
        resumed, job.resumed = job.resumed or {}, None
        digest = job.manifest.digest
        live = {n: r for n, r in resumed.items() if n in self.nodes and self.nodes[n].alive}
        parents = {n: [None if p.origin else p.node_id for p in sorted(r.parents, key=lambda p: p.stripe)]
                   for n, r in live.items() if r.parents}
        addrs = {p.node_id: p.data_addr for r in resumed.values() for p in r.parents if not p.origin}
        infos = [self._info(n) for n in parents]
        infos += [planner.NodeInfo(g, a) for g, a in sorted(addrs.items()) if g not in parents]
        epoch = max((r.epoch for r in resumed.values()), default=0) + 1
        plan = None
        if parents:
            try:
                plan = planner.restore_plan(infos, parents, epoch=epoch)
            except PlanError as exc:
                log.warning("model %s: the nodes' plans do not fit together (%s): planning afresh", digest[:12], exc)
        if plan is None and live:
            plan = planner.plan_broadcast([self._info(n) for n in sorted(live)], epoch=epoch)
        if plan is None:
            log.warning("model %s: none of its nodes is back; dropping it", digest[:12])
            self.jobs.pop(digest, None)
            return
        for n in sorted(set(live) - set(plan.nodes)):
            plan = planner.add_node(plan, self._info(n))  # it had no assignment yet
        # the digest table: a stripe root's word first (it read the origin), then anyone's; a
        # node that disagrees is logged (and its pieces were verified against the same table)
        roots = set(plan.roots())
        conflicts = 0
        for n in sorted(live, key=lambda n: (n not in roots, n)):
            d = live[n].digests
            if len(d.digests) != DIGEST * len(d.indices):
                continue
            for j, i in enumerate(d.indices):
                if _learn_digest(job, i, d.digests[j * DIGEST:(j + 1) * DIGEST]) is False:
                    conflicts += 1
        if conflicts:
            log.error("model %s: %d piece digests reported differently by resumed nodes", digest[:12], conflicts)
        job.pending_digests = []
        job.plan = plan
        job.replans += 1
        metrics.REPLANS.labels(reason="resume").inc()
        for n, prog in job.progress.items():
            if n not in plan.nodes and not prog.complete and prog.state == "fetching":
                prog.state = "dead"
        for n in plan.nodes:
            node = self.nodes.get(n)
            if node is not None and n in resumed:
                node.sent_manifest.add(digest)  # it has the manifest
            self._send_assignment(job, n)
            self._send_known_digests(job, n)
        log.info("model %s rebuilt after a restart: %d nodes (%d did not come back), %d stripes, epoch %d",
                 digest[:12], len(plan.nodes), len(set(addrs) - set(live)), plan.k, plan.epoch)

    async def _flush_digests(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            for job in self.jobs.values():
                if not job.pending_digests or job.plan is None:
                    continue  # (held while rebuilding: every known digest goes out when it is done)
                batch, job.pending_digests = job.pending_digests, []
                msg = self._digests_msg(job, batch)
                for n in job.plan.nodes:
                    node = self.nodes.get(n)
                    if node is not None and node.queue is not None:
                        node.queue.put_nowait(msg)

    async def _monitor(self) -> None:
        refreshed = time.monotonic()
        while True:
            await asyncio.sleep(min(self.heartbeat, 0.5))
            now = time.monotonic()
            if now - refreshed > TICKET_TTL / 3:
                # data-session tickets are short-lived: re-issue them (same plan epoch) well before expiry
                refreshed = now
                for job in self.jobs.values():
                    for n in (job.plan.nodes if job.plan is not None else ()):
                        self._send_assignment(job, n)
            for job in list(self.jobs.values()):
                if job.plan is None and (self._resume_ready(job) or now - job.resume_since >= self.resume_grace):
                    self._finish_resume(job)
            for nid, node in list(self.nodes.items()):
                if node.alive and now - node.last_seen > self.dead_after:
                    self._declare_dead(nid, f"silent for {now - node.last_seen:.1f}s")


def _learn_digest(job: ModelJob, i: int, digest: bytes) -> bool | None:
    """Record piece ``i``'s digest unless known: None = learnt now; True/False = already known,
    the same / a different one; an index outside the model counts as already known."""
    if not 0 <= i < len(job.known):
        return True
    if not job.known[i]:
        job.digests[i * DIGEST:(i + 1) * DIGEST] = digest
        job.known[i] = 1
        return None
    return bytes(job.digests[i * DIGEST:(i + 1) * DIGEST]) == bytes(digest)


def _manifest_of(source: str, revision: str | None, allow, cfg: Config) -> Manifest:
    origin, manifest = resolve(source, revision=revision, allow_patterns=allow, config=cfg)
    origin.close()
    return manifest


async def serve(listen: str, *, config: Config | None = None, heartbeat: float = 1.0, dead_after: float = 5.0,
                resume_grace: float = 6.0, ready=None) -> None:
    """Run the scheduler on ``listen`` until cancelled. ``ready(address)`` is called once listening."""
    cfg = config or Config.load()
    token = read_token(cfg.token_file)
    server = grpc.aio.server(options=GRPC_OPTIONS, interceptors=[TokenInterceptor(token)] if token else None)
    service = SchedulerService(cfg, heartbeat=heartbeat, dead_after=dead_after, resume_grace=resume_grace)
    pb_grpc.add_SchedulerServicer_to_server(service, server)
    creds = server_credentials(cfg)
    port = server.add_secure_port(listen, creds) if creds is not None else server.add_insecure_port(listen)
    if port == 0:
        raise ModelDistError(f"cannot listen on {listen}")
    await server.start()
    service.start_background()
    host = listen.rsplit(":", 1)[0]
    if ready is not None:
        ready(f"{host}:{port}")
    try:
        await server.wait_for_termination()
    finally:
        await service.stop_background()
        await server.stop(grace=1)
