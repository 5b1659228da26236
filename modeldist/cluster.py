"""Client side of the scheduler for people and scripts: stage on every agent, watch, show status.

Owns the protobuf -> value conversion for status (``ClusterStatus``), so the CLI, the demo and
tests read plain objects.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import grpc

from ._fmt import human_bytes as _human  # noqa: F401  (modeldist.demo imports it from here)
from .errors import ModelDistError, OriginError
from .proto import pb, pb_grpc
from .scheduler.service import GRPC_OPTIONS

__all__ = ["NodeRow", "ModelRow", "ClusterStatus", "get_status", "start_stage", "wait_model", "stage_all",
           "print_status"]


@dataclass(frozen=True)
class NodeRow:
    node_id: str
    have: int
    complete: bool
    state: str
    rate_bps: float
    origin_bytes: int
    peer_bytes: int
    bytes_by_transport: dict
    seconds: float
    parents: list          # per stripe: parent node id, or "origin"
    reparented_from: list
    error: str = ""


@dataclass(frozen=True)
class ModelRow:
    model: str
    source: str
    total_bytes: int
    pieces: int
    stripes: int
    replans: int
    nodes: list = field(default_factory=list)


@dataclass(frozen=True)
class ClusterStatus:
    nodes: list            # (node_id, data_addr, alive, last_seen_s)
    models: list


def _stub(address: str, config=None):
    from .config import Config
    from .security import call_metadata, open_channel

    cfg = config or Config.load()
    channel = open_channel(address, cfg, aio=False, options=GRPC_OPTIONS)
    return channel, pb_grpc.SchedulerStub(channel), call_metadata(cfg)


def _rpc_error(address: str, exc: grpc.RpcError) -> ModelDistError:
    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        from .errors import AuthError

        return AuthError(f"scheduler {address} refused the call: {detail}")
    if code == grpc.StatusCode.UNAVAILABLE:
        return ModelDistError(f"scheduler {address} unreachable: {detail}")
    if code == grpc.StatusCode.INVALID_ARGUMENT and detail.startswith("OriginError"):
        return OriginError(detail)
    return ModelDistError(f"scheduler {address}: {detail}")


def get_status(address: str, model: str = "", timeout: float = 10, *, config=None) -> ClusterStatus:
    channel, stub, md = _stub(address, config)
    try:
        r = stub.Status(pb.StatusRequest(model=model), timeout=timeout, metadata=md)
    except grpc.RpcError as exc:
        raise _rpc_error(address, exc) from None
    finally:
        channel.close()
    models = []
    for m in r.models:
        rows = [NodeRow(n.node_id, n.have, n.complete, n.state, n.rate_bps, n.bytes_from_origin, n.bytes_from_peers,
                        dict(n.bytes_by_transport), n.seconds,
                        ["origin" if p.origin else p.node_id for p in sorted(n.parents, key=lambda p: p.stripe)],
                        list(n.reparented_from), n.error)
                for n in m.nodes]
        models.append(ModelRow(m.model, m.source, m.total_bytes, m.pieces, m.stripes, m.replans, rows))
    return ClusterStatus([(n.node_id, n.data_addr, n.alive, n.last_seen_s) for n in r.nodes], models)


def start_stage(address: str, source: str, *, revision: str | None = None, allow=None, piece_size: int = 0,
                nodes=None, timeout: float = 120, config=None) -> tuple[str, int, int]:
    """Ask the scheduler to broadcast ``source``; returns (model digest, nodes, total bytes)."""
    channel, stub, md = _stub(address, config)
    try:
        r = stub.Stage(pb.StageRequest(source=source, revision=revision or "", allow_patterns=allow or [],
                                       piece_size=piece_size, nodes=nodes or []), timeout=timeout, metadata=md)
    except grpc.RpcError as exc:
        raise _rpc_error(address, exc) from None
    finally:
        channel.close()
    return r.model, r.nodes, r.total_bytes


def wait_model(address: str, model: str, *, timeout: float = 3600, on_update=None, poll: float = 0.2,
               config=None) -> ModelRow:
    """Poll until every live node of ``model`` is complete (or failed/dead); return the last status."""
    deadline = time.monotonic() + timeout
    while True:
        st = get_status(address, model, config=config)
        row = next((m for m in st.models if m.model == model), None)
        if row is None:
            raise ModelDistError(f"scheduler does not know model {model[:12]}")
        if on_update is not None:
            on_update(row)
        if all(n.complete or n.state in ("failed", "dead", "excluded") for n in row.nodes):
            return row
        if time.monotonic() > deadline:
            raise ModelDistError(f"model {model[:12]} not complete on every node within {timeout:.0f}s")
        time.sleep(poll)


def node_table(row: ModelRow, title: str = ""):
    from rich.table import Table

    t = Table(title=title or f"model {row.model[:12]} ({_human(row.total_bytes)}, {row.pieces} pieces, "
                             f"{row.stripes} stripes, {row.replans} re-plans)")
    for col in ("node", "state", "pieces", "time", "origin", "peers", "parents (per stripe)"):
        t.add_column(col, no_wrap=col != "parents (per stripe)")
    for n in row.nodes:
        parents = ",".join(n.parents) or "-"
        if n.reparented_from:
            parents += f" (lost {','.join(n.reparented_from)})"
        t.add_row(n.node_id, n.state if n.complete or not n.rate_bps else f"{n.state} {_human(n.rate_bps)}/s",
                  f"{n.have}/{row.pieces}", f"{n.seconds:.2f}s", _human(n.origin_bytes), _human(n.peer_bytes), parents)
    return t


def stage_all(address: str, source: str, *, revision=None, allow=None, piece_size: int = 0, console=None,
              progress=None, timeout: float = 3600, config=None) -> ModelRow:
    model, n_nodes, total = start_stage(address, source, revision=revision, allow=allow, piece_size=piece_size,
                                        config=config)
    if progress is not None:
        with progress:
            task = progress.add_task(f"{n_nodes} nodes", total=total * n_nodes)

            def update(row: ModelRow) -> None:
                progress.update(task, completed=sum(min(total, n.origin_bytes + n.peer_bytes) if not n.complete
                                                    else total for n in row.nodes), total=total * len(row.nodes))

            row = wait_model(address, model, timeout=timeout, on_update=update, config=config)
    else:
        row = wait_model(address, model, timeout=timeout, config=config)
    if console is not None:
        console.print(node_table(row))
        origin = sum(n.origin_bytes for n in row.nodes)
        console.print(f"origin bytes / model size: {origin / max(total, 1):.2f}")
    bad = [n.node_id for n in row.nodes if not n.complete and n.state not in ("dead", "excluded")]
    if bad:
        raise ModelDistError(f"not complete on: {', '.join(bad)}")
    return row


def print_status(address: str, *, model: str | None = None, console=None, as_json: bool = False,
                 config=None) -> None:
    st = get_status(address, model or "", config=config)
    if as_json:
        print(json.dumps({"nodes": [dict(zip(("node_id", "data_addr", "alive", "last_seen_s"), n)) for n in st.nodes],
                          "models": [asdict(m) for m in st.models]}, indent=2))
        return
    from rich.table import Table

    t = Table(title=f"scheduler {address}: {len(st.nodes)} nodes")
    for col in ("node", "data address", "alive", "last seen"):
        t.add_column(col)
    for nid, addr, alive, seen in st.nodes:
        t.add_row(nid, addr, "yes" if alive else "[red]no[/]", f"{seen:.1f}s ago")
    console.print(t)
    for m in st.models:
        console.print(node_table(m))
