"""The per-node agent daemon: registers with the scheduler, executes plans, serves children.

Control plane in one asyncio loop (``grpc.aio``): Register, then the Join stream (assignments,
digests, cancels) and the Report stream (progress every 50 ms, heartbeat every second) run side by
side; if either breaks, the agent re-registers with backoff and carries on with its jobs. Data
plane in threads (``Job``, the transport listener). A local Unix socket (``<store>/agent.sock``)
lets ``modeldist.load()`` on this node ask for a model and map it from this agent's store, so the
weights exist once per node.

Must not: block the event loop on I/O (store and origin work goes to the executor).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

import grpc

from ..config import Config
from ..errors import ManifestError, ModelDistError, TransportError
from ..manifest import Manifest
from ..origin import warm_up
from ..proto import pb, pb_grpc
from ..scheduler.service import GRPC_OPTIONS
from ..security import call_metadata, check_ticket, open_channel
from ..store import Store
from ..transport.base import Hello, get_transport
from .job import Job, ParentRef

__all__ = ["Agent", "SOCKET_NAME"]

log = logging.getLogger(__name__)

SOCKET_NAME = "agent.sock"
REPORT_EVERY = 0.05


class Agent:
    def __init__(self, *, scheduler: str, listen: str = "127.0.0.1:0", node_id: str | None = None,
                 config: Config | None = None, labels: dict[str, str] | None = None, upload_bps: float = 0.0,
                 download_bps: float = 0.0, transport: str = "tcp", advertise: str | None = None,
                 stall_timeout: float = 30.0):
        self.config = config or Config.load()
        self.scheduler = scheduler
        self.listen_addr = listen
        self.labels = dict(labels or {})
        self.upload_bps = upload_bps
        self.download_bps = download_bps
        self.transport_name = transport
        self.advertise = advertise
        self.stall_timeout = stall_timeout
        self.store = Store(config=self.config)
        self.jobs: dict[str, Job] = {}
        self._node_id = node_id
        self.listener = None
        self.data_addr = ""
        self._heartbeat = 1.0
        self._stopping = asyncio.Event()
        self._md = call_metadata(self.config)
        self._scheduler_id: str | None = None
        #: model -> why this node could not take its assignment (reported once to the scheduler)
        self._refused: dict[str, str] = {}

    @property
    def node_id(self) -> str:
        return self._node_id or f"{socket.gethostname()}:{self.data_addr.rsplit(':', 1)[-1]}"

    # --- data plane ----------------------------------------------------------------------

    def _authorize(self, hello: Hello, peer: str) -> Job:
        job = self.jobs.get(hello.model)
        if job is None:
            raise TransportError(f"this node has no job for model {hello.model[:12]}", peer=peer)
        check_ticket(job.key, hello.token, hello.node_id, hello.model)  # AuthError: refused before any payload
        return job

    # --- control plane -------------------------------------------------------------------

    async def run(self, ready=None) -> None:
        threading.Thread(target=warm_up, name="modeldist-warm-up", daemon=True).start()
        transport = get_transport(self.transport_name, config=self.config)
        self.listener = transport.listen(self.listen_addr, self._authorize)
        self.data_addr = self.advertise or self.listener.address
        local = await self._start_local_socket()
        loop = asyncio.get_running_loop()
        announced = False
        backoff = 0.2
        try:
            while not self._stopping.is_set():
                channel = open_channel(self.scheduler, self.config, aio=True, options=GRPC_OPTIONS)
                try:
                    stub = pb_grpc.SchedulerStub(channel)
                    spec = pb.NodeSpec(node_id=self.node_id, data_addr=self.data_addr, upload_bps=self.upload_bps,
                                       download_bps=self.download_bps, labels=self.labels,
                                       transports=[self.transport_name, *(["tls"] if self.config.data_tls else [])])
                    # what this node executes goes with it: a restarted scheduler rebuilds its jobs from it
                    resume = await loop.run_in_executor(None, self._resume_msgs)
                    reply = await stub.Register(pb.RegisterRequest(node=spec, resume=resume), timeout=30,
                                                metadata=self._md)
                    self._heartbeat = reply.heartbeat_s or 1.0
                    if self._scheduler_id is not None and reply.scheduler_id != self._scheduler_id:
                        log.warning("scheduler %s restarted: resuming %d job(s) with it", self.scheduler,
                                    len(resume))
                        for job in self.jobs.values():
                            job.epoch = -1  # its plan epochs start over
                    self._scheduler_id = reply.scheduler_id
                    log.info("registered with %s as %s (data %s)", self.scheduler, self.node_id, self.data_addr)
                    if not announced and ready is not None:
                        ready(self)
                        announced = True
                    backoff = 0.2
                    tasks = [asyncio.ensure_future(self._join(stub, loop)),
                             asyncio.ensure_future(self._report(stub))]
                    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    for t in pending:
                        t.cancel()
                    for t in tasks:
                        try:
                            await t
                        except (asyncio.CancelledError, grpc.RpcError):
                            pass
                except grpc.RpcError as exc:
                    code = exc.code() if hasattr(exc, "code") else exc
                    details = exc.details() if hasattr(exc, "details") else ""
                    log.warning("scheduler %s: %s%s; retrying in %.1fs", self.scheduler, code,
                                f" ({details})" if details else "", backoff)
                finally:
                    await channel.close()
                if self._stopping.is_set():
                    break
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        finally:
            if local is not None:
                local.close()
            await loop.run_in_executor(None, self._close_data)

    def stop(self) -> None:
        self._stopping.set()

    def _close_data(self) -> None:
        if self.listener is not None:
            self.listener.close()
        for job in self.jobs.values():
            job.close()

    async def _join(self, stub, loop) -> None:
        async for upd in stub.Join(pb.JoinRequest(node_id=self.node_id), metadata=self._md):
            kind = upd.WhichOneof("kind")
            if kind == "assignment":
                try:
                    await loop.run_in_executor(None, self._on_assignment, upd.assignment)
                except ModelDistError as exc:
                    # e.g. a store without room for the model: say so, so the scheduler re-parents
                    # this node's children instead of leaving them waiting for it
                    log.error("cannot take assignment for %s: %s", upd.assignment.model[:12], exc)
                    self._refused[upd.assignment.model] = f"{type(exc).__name__}: {exc}"
            elif kind == "digests":
                job = self.jobs.get(upd.digests.model)
                if job is not None:
                    job.add_digests(list(upd.digests.indices), upd.digests.digests)
            elif kind == "cancel":
                job = self.jobs.pop(upd.cancel.model, None)
                if job is not None:
                    log.warning("model %s cancelled here: %s", upd.cancel.model[:12], upd.cancel.reason)
                    await loop.run_in_executor(None, job.close)

    def _on_assignment(self, a) -> None:
        job = self.jobs.get(a.model)
        if job is None:
            if not a.manifest_json:
                raise ManifestError("assignment without a manifest for a model this node does not know")
            manifest = Manifest.from_json(a.manifest_json)
            if manifest.digest != a.model:
                raise ManifestError("assignment manifest does not match its model digest")
            job = Job(node_id=self.node_id, manifest=manifest, source=a.source, revision=a.revision,
                      manifest_json=bytes(a.manifest_json),
                      key=bytes(a.session_key), ticket=bytes(a.ticket), stripes=a.stripes, store=self.store, config=self.config,
                      transport=self.transport_name, stall_timeout=self.stall_timeout,
                      upload_bps=self.upload_bps)
            self.jobs[a.model] = job
        if a.epoch < job.epoch:
            return  # an older plan overtaken by a newer one
        if a.ticket:
            job.ticket = bytes(a.ticket)  # re-issued before the old one expires
        if a.session_key and bytes(a.session_key) != job.key:
            job.key = bytes(a.session_key)  # a scheduler that rebuilt the job without this node's key
        job.epoch = a.epoch
        parents = [ParentRef() if p.origin else ParentRef(p.node_id, p.data_addr)
                   for p in sorted(a.parents, key=lambda p: p.stripe)]
        rates = list(a.children_download_bps)
        job.apply(parents, children=list(a.children),
                  children_bps=dict(zip(a.children, rates)) if len(rates) == len(a.children) else {})

    def _resume_msgs(self) -> list:
        return [_resume_msg(job) for job in list(self.jobs.values()) if job.error is None]

    async def _report(self, stub) -> None:
        async def reports():
            last_beat = 0.0
            while True:
                sent = False
                for model in list(self._refused):
                    yield pb.ProgressReport(node_id=self.node_id, model=model, error=self._refused.pop(model))
                    sent = True
                for model, job in list(self.jobs.items()):
                    r = job.take_report()
                    if r["have"] or r["digests"] or r["failures"] or r["complete"] != getattr(job, "_reported_complete", None):
                        job._reported_complete = r["complete"]
                        yield _progress_msg(self.node_id, model, r)
                        sent = True
                now = time.monotonic()
                if not sent and now - last_beat >= self._heartbeat:
                    yield pb.ProgressReport(node_id=self.node_id, heartbeat=True)
                    last_beat = now
                elif sent:
                    last_beat = now
                await asyncio.sleep(REPORT_EVERY)

        await stub.Report(reports(), metadata=self._md)

    # --- local socket for load() on this node ---------------------------------------------

    async def _start_local_socket(self):
        path = self.store.root / SOCKET_NAME
        try:
            if path.exists():
                path.unlink()
            return await asyncio.start_unix_server(self._serve_local, path=str(path))
        except OSError as exc:
            log.warning("no local socket at %s: %s", path, exc)
            return None

    async def _serve_local(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=10)
            req = json.loads(line or b"{}")
            if req.get("op") != "stage" or not isinstance(req.get("source"), str):
                raise ModelDistError("expected {'op': 'stage', 'source': ...}")
            result = await self.stage_here(req["source"], revision=req.get("revision"),
                                           allow_patterns=req.get("allow_patterns"),
                                           timeout=float(req.get("timeout") or 3600))
            writer.write(json.dumps({"ok": True, **result}).encode() + b"\n")
        except (ModelDistError, ValueError, asyncio.TimeoutError, grpc.RpcError) as exc:
            msg = exc.details() if isinstance(exc, grpc.RpcError) and hasattr(exc, "details") else str(exc)
            writer.write(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {msg}"}).encode() + b"\n")
        finally:
            try:
                await writer.drain()
            except ConnectionError:
                pass
            writer.close()

    async def stage_here(self, source: str, *, revision=None, allow_patterns=None, timeout: float = 3600) -> dict:
        """Join (or start) the broadcast of ``source`` for this node and wait until it is complete."""
        async with open_channel(self.scheduler, self.config, aio=True, options=GRPC_OPTIONS) as channel:
            stub = pb_grpc.SchedulerStub(channel)
            reply = await stub.Stage(pb.StageRequest(source=source, revision=revision or "",
                                                     allow_patterns=allow_patterns or [], nodes=[self.node_id],
                                                     piece_size=self.config.piece_size or 0), timeout=120,
                                     metadata=self._md)
        deadline = time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        while reply.model not in self.jobs:
            if time.monotonic() > deadline:
                raise ModelDistError(f"no assignment for {reply.model[:12]} within {timeout:.0f}s")
            await asyncio.sleep(0.05)
        job = self.jobs[reply.model]
        ok = await loop.run_in_executor(None, job.wait_complete, max(0.0, deadline - time.monotonic()))
        if not ok:
            raise ModelDistError(job.error or f"model {reply.model[:12]} not complete within {timeout:.0f}s")
        return {"model": reply.model, "path": str(self.store.path_of(reply.model))}


def _progress_msg(node_id: str, model: str, r: dict):
    msg = pb.ProgressReport(node_id=node_id, model=model, have=r["have"], complete=r["complete"],
                            bytes_from_origin=r["origin"], bytes_from_peers=r["peer"], bytes_sent=r["sent"],
                            bytes_by_transport=r["by_transport"], error=r["error"])
    if r["digests"]:
        msg.digests.model = model
        msg.digests.indices.extend(r["digests"])
        msg.digests.digests = r["digest_blob"]
    for peer, piece, kind, detail in r["failures"]:
        msg.failures.append(pb.Failure(peer=peer, piece=piece, kind=kind, detail=detail[:500]))
    return msg


def _resume_msg(job: Job):
    """What this node executes for ``job``: enough for a restarted scheduler to rebuild it."""
    st = job.resume_state()
    msg = pb.ResumeJob(model=job.model, manifest_json=job.manifest_json, source=job.source,
                       revision=job.revision or "", session_key=job.key, epoch=max(job.epoch, 0), stripes=job.k,
                       children=job.children, complete=st["complete"], have=st["have"],
                       bytes_from_origin=st["origin"], bytes_from_peers=st["peer"], bytes_sent=st["sent"],
                       bytes_by_transport=st["by_transport"])
    for s, p in enumerate(st["parents"]):
        msg.parents.append(pb.Parent(stripe=s, origin=True) if p.origin
                           else pb.Parent(stripe=s, node_id=p.node_id, data_addr=p.addr))
    msg.digests.model = job.model
    msg.digests.indices.extend(st["digest_indices"])
    msg.digests.digests = st["digest_blob"]
    return msg


def local_socket_path(config: Config) -> Path:
    return config.store_path / SOCKET_NAME


def ask_local_agent(path: str | os.PathLike, source: str, *, revision=None, allow_patterns=None,
                    timeout: float = 3600) -> dict:
    """Client side of the local socket: have this node's agent stage ``source``; returns {model, path}."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(os.fspath(path))
        req = {"op": "stage", "source": source, "revision": revision, "timeout": timeout,
               "allow_patterns": [allow_patterns] if isinstance(allow_patterns, str) else allow_patterns}
        s.sendall(json.dumps(req).encode() + b"\n")
        s.settimeout(timeout + 30)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    reply = json.loads(data or b"{}")
    if not reply.get("ok"):
        raise ModelDistError(f"agent: {reply.get('error', 'no answer')}")
    return reply
