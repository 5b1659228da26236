"""Authentication for both planes (DESIGN section 9).

Control plane (gRPC): optional TLS (server certificate) or mutual TLS (``tls_ca`` set: clients
must present a certificate signed by it), and an optional cluster token that every call carries
in its metadata (``x-modeldist-token``), checked in constant time by a server interceptor.

Data plane: the scheduler gives each model a random session key and each node of that model a
*ticket* = ``expiry (8 bytes, big-endian unix seconds) || HMAC-SHA256(key, node_id 0 model 0
expiry)``. A child presents its ticket in the session hello; the parent, which holds the model's
key, checks binding (node id, model), expiry and MAC before it reads a byte of payload or sends
one. Tickets are short-lived and re-issued by the scheduler before they expire.

Data plane encryption (``data_tls``, ``modeldist agent --data-tls``): every data session is TLS 1.3
with the same certificate, key and CA as gRPC. It is mutual: the parent requires a client certificate
signed by ``tls_ca``, the child verifies the parent's against it. There is no hostname check: peers
are addressed by the IP:port the scheduler relays, not by name, so a certificate signed by the
cluster CA is what identifies a cluster member (the HMAC ticket inside the session still binds node
and model). Each node's certificate serves both ends, so it must allow serverAuth and clientAuth
(or carry no extended key usage). A failed handshake, or a TLS/plaintext mismatch, is a
``TransportError`` counted as ``modeldist_auth_refusals_total{plane="data",reason="tls"}``.

Every refusal is a typed ``AuthError``, logged and counted (``modeldist_auth_refusals_total``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import ssl
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from . import metrics
from .config import Config
from .errors import AuthError, ConfigError

__all__ = ["TOKEN_HEADER", "read_token", "mint_ticket", "check_ticket", "server_credentials",
           "channel_credentials", "TokenInterceptor", "call_metadata", "open_channel", "TICKET_TTL", "DataTls",
           "data_tls_contexts"]

log = logging.getLogger(__name__)

TOKEN_HEADER = "x-modeldist-token"
TICKET_TTL = 600.0
_MAC = 32


def read_token(path: str | None) -> str | None:
    if not path:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc.strerror}") from exc
    if len(token) < 16:
        raise ConfigError(f"token in {path} is too short (at least 16 characters)")
    return token


def _mac(key: bytes, node_id: str, model: str, expiry: int) -> bytes:
    msg = node_id.encode() + b"\0" + model.encode() + b"\0" + struct.pack(">Q", expiry)
    return hmac.new(key, msg, hashlib.sha256).digest()


def mint_ticket(key: bytes, node_id: str, model: str, *, ttl: float = TICKET_TTL, now: float | None = None) -> bytes:
    expiry = int((now if now is not None else time.time()) + ttl)
    return struct.pack(">Q", expiry) + _mac(key, node_id, model, expiry)


def check_ticket(key: bytes, ticket: bytes, node_id: str, model: str, *, now: float | None = None) -> None:
    """Raise AuthError unless ``ticket`` was minted with ``key`` for (node_id, model) and is unexpired."""
    if len(ticket) != 8 + _MAC:
        _refuse("data", "malformed", f"malformed ticket from {node_id!r}")
    (expiry,) = struct.unpack(">Q", ticket[:8])
    if not hmac.compare_digest(ticket[8:], _mac(key, node_id, model, expiry)):
        _refuse("data", "bad_mac", f"ticket of {node_id!r} is not valid for this model")
    if expiry < (now if now is not None else time.time()):
        _refuse("data", "expired", f"ticket of {node_id!r} expired")


def _refuse(plane: str, reason: str, message: str):
    metrics.AUTH_REFUSALS.labels(plane=plane, reason=reason).inc()
    log.warning("refused (%s plane): %s", plane, message)
    raise AuthError(message)


# --- data-plane TLS ------------------------------------------------------------------------


@dataclass(frozen=True)
class DataTls:
    """The two ends of a data session under TLS: ``server`` (parent) and ``client`` (child) contexts."""

    server: ssl.SSLContext
    client: ssl.SSLContext


def data_tls_contexts(cfg: Config) -> DataTls | None:
    """None unless ``cfg.data_tls``; else mutual TLS 1.3 contexts from ``tls_cert``/``tls_key``/``tls_ca``
    (ConfigError, saying which, when one is missing, unreadable or not a valid PEM / key pair)."""
    if not cfg.data_tls:
        return None
    missing = [flag for flag, v in (("--tls-cert", cfg.tls_cert), ("--tls-key", cfg.tls_key),
                                    ("--tls-ca", cfg.tls_ca)) if not v]
    if missing:
        raise ConfigError(f"--data-tls needs {', '.join(missing)}")
    return DataTls(_data_context(cfg, ssl.PROTOCOL_TLS_SERVER), _data_context(cfg, ssl.PROTOCOL_TLS_CLIENT))


def _data_context(cfg: Config, protocol: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False           # peers are IP:port from the scheduler; the cluster CA is the anchor
    ctx.verify_mode = ssl.CERT_REQUIRED  # both ways: the parent demands the child's certificate too
    for path, what in ((cfg.tls_cert, "TLS certificate"), (cfg.tls_key, "TLS key"), (cfg.tls_ca, "TLS CA")):
        _read(path, what)                # a missing/unreadable file: ConfigError naming it
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"--data-tls: cannot use certificate {cfg.tls_cert} with key {cfg.tls_key}: {exc}") from exc
    try:
        ctx.load_verify_locations(cafile=cfg.tls_ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"--data-tls: cannot use CA {cfg.tls_ca}: {exc}") from exc
    return ctx


# --- gRPC ----------------------------------------------------------------------------------


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc


def server_credentials(cfg: Config):
    """None for plaintext; TLS when cert and key are set; mutual TLS when a CA is set too."""
    if not (cfg.tls_cert or cfg.tls_key):
        if cfg.tls_ca:
            raise ConfigError("--tls-ca needs --tls-cert and --tls-key on the server")
        return None
    cert, key = _read(cfg.tls_cert, "TLS certificate"), _read(cfg.tls_key, "TLS key")
    if not (cert and key):
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    ca = _read(cfg.tls_ca, "TLS CA")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def channel_credentials(cfg: Config):
    """None for plaintext; else TLS trusting ``tls_ca`` (system roots when unset), with our own
    certificate when ``tls_cert``/``tls_key`` are set (mutual TLS)."""
    if not (cfg.tls_ca or cfg.tls_cert):
        return None
    return grpc.ssl_channel_credentials(root_certificates=_read(cfg.tls_ca, "TLS CA"),
                                        private_key=_read(cfg.tls_key, "TLS key"),
                                        certificate_chain=_read(cfg.tls_cert, "TLS certificate"))


def open_channel(address: str, cfg: Config, *, aio: bool, options=()):
    creds = channel_credentials(cfg)
    mod = grpc.aio if aio else grpc
    if creds is None:
        return mod.insecure_channel(address, options=list(options))
    return mod.secure_channel(address, creds, options=list(options))


def call_metadata(cfg: Config) -> tuple:
    token = read_token(cfg.token_file)
    return ((TOKEN_HEADER, token),) if token else ()


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call whose metadata lacks the cluster token (when one is configured)."""

    def __init__(self, token: str):
        self._token = token.encode()

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong cluster token")

        async def deny_stream(request_iterator, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong cluster token")

        async def deny_server_stream(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong cluster token")
            yield  # pragma: no cover - makes this an async generator

        self._deny = {
            (False, False): grpc.unary_unary_rpc_method_handler(deny),
            (True, False): grpc.stream_unary_rpc_method_handler(deny_stream),
            (False, True): grpc.unary_stream_rpc_method_handler(deny_server_stream),
        }

    async def intercept_service(self, continuation, handler_call_details):
        given = dict(handler_call_details.invocation_metadata or ()).get(TOKEN_HEADER, "")
        given = given.encode() if isinstance(given, str) else given
        if hmac.compare_digest(given, self._token):
            return await continuation(handler_call_details)
        reason = "missing" if not given else "wrong"
        metrics.AUTH_REFUSALS.labels(plane="control", reason=f"{reason}_token").inc()
        log.warning("refused %s: %s cluster token", handler_call_details.method, reason)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return self._deny[(bool(handler.request_streaming), bool(handler.response_streaming))]
