"""Every Prometheus metric of modeldist, defined once (DESIGN section 8). Names start ``modeldist_``.

Must not: start servers on import. ``serve(port)`` starts the ``/metrics`` endpoint on request.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

__all__ = ["BYTES_RECEIVED", "BYTES_SENT", "TRANSPORT_FALLBACKS", "PIECES", "PIECE_SECONDS", "MODEL_LOAD_SECONDS",
           "ACTIVE_SESSIONS", "SCHEDULER_NODES", "PLANS", "REPLANS", "PIECES_REPORTED", "AUTH_REFUSALS", "REFUSALS",
           "serve"]

BYTES_RECEIVED = Counter(
    "modeldist_received_bytes", "Bytes received, by source (origin, peer) and transport (origin, tcp, rdma).",
    ["source", "transport"])
BYTES_SENT = Counter("modeldist_sent_bytes", "Bytes sent to peers, by transport.", ["transport"])
TRANSPORT_FALLBACKS = Counter(
    "modeldist_transport_fallbacks",
    "Data sessions that carried on over TCP instead of RDMA, by side (child, parent) and reason "
    "(setup: RDMA could not be set up for the edge; transfer: a verbs operation failed mid-session).",
    ["side", "reason"])
PIECES = Counter("modeldist_pieces", "Pieces received, by result (ok, corrupt, timeout).", ["result"])
PIECE_SECONDS = Histogram(
    "modeldist_piece_seconds", "Time to fetch and verify one piece.",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
MODEL_LOAD_SECONDS = Histogram(
    "modeldist_model_load_seconds", "Time to stage a model or map it into tensors.", ["stage"],
    buckets=(0.001, 0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800))
ACTIVE_SESSIONS = Gauge("modeldist_active_sessions", "Open data-plane sessions.", ["transport"])
SCHEDULER_NODES = Gauge("modeldist_scheduler_nodes", "Nodes the scheduler considers alive.")
PLANS = Counter("modeldist_plans", "Broadcast plans built from scratch.")
REPLANS = Counter("modeldist_replans", "Incremental re-plans, by reason (failure, join).", ["reason"])
REFUSALS = Counter("modeldist_limit_refusals", "Inputs refused for exceeding a limit, by what.", ["what"])
AUTH_REFUSALS = Counter("modeldist_auth_refusals", "Refused calls and data sessions, by plane and reason.",
                        ["plane", "reason"])
PIECES_REPORTED = Counter("modeldist_scheduler_piece_failures", "Piece failures reported to the scheduler.",
                          ["result"])


def serve(port: int, addr: str = "127.0.0.1") -> None:
    """Expose ``/metrics`` of this process on ``addr:port``."""
    start_http_server(port, addr=addr, registry=REGISTRY)
