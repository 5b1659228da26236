"""Every error modeldist raises on purpose.

Owns the exception family (DESIGN section 9). Each class also inherits the builtin a caller would
naturally catch (``ValueError`` for bad input, ``OSError`` for I/O, ``PermissionError`` for auth), so
``except OSError`` keeps working around modeldist calls. Every error pickles with its extra
attributes: they cross process boundaries (agents, Ray workers).

Must not: import anything from modeldist, or do I/O.
"""

from __future__ import annotations

__all__ = [
    "ModelDistError",
    "ConfigError",
    "ManifestError",
    "OriginError",
    "StoreError",
    "TransportError",
    "RdmaUnavailableError",
    "TlsError",
    "IntegrityError",
    "PlanError",
    "AuthError",
    "DtypeError",
]


class ModelDistError(Exception):
    """Root of every error modeldist raises on purpose."""


class ConfigError(ModelDistError, ValueError):
    """A setting or argument is invalid or not supported here."""


class ManifestError(ModelDistError, ValueError):
    """A safetensors header, an index file or a manifest is malformed or violates a limit."""


class OriginError(ModelDistError, OSError):
    """The origin (local folder, HF Hub, object store) could not be read.

    ``transient`` says whether a retry could help; ``source`` names the origin.
    """

    def __init__(self, message: str, *, source: str | None = None, transient: bool = False):
        super().__init__(message)
        self.source = source
        self.transient = transient

    def __reduce__(self):
        return (_rebuild, (type(self), self.args, {"source": self.source, "transient": self.transient}))

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class StoreError(ModelDistError, OSError):
    """The node's store (shared memory or disk folder) could not hold or serve a model."""

    def __init__(self, message: str, *, path: str | None = None, errno_: int | None = None):
        super().__init__(message)
        self.path = path
        self.errno_ = errno_

    def __reduce__(self):
        return (_rebuild, (type(self), self.args, {"path": self.path, "errno_": self.errno_}))

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TransportError(ModelDistError, OSError):
    """A data-plane session failed; ``peer`` names the other end."""

    def __init__(self, message: str, *, peer: str | None = None, errno_: int | None = None):
        super().__init__(message)
        self.peer = peer
        self.errno_ = errno_

    def __reduce__(self):
        return (_rebuild, (type(self), self.args, {"peer": self.peer, "errno_": self.errno_}))

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RdmaUnavailableError(TransportError):
    """No usable RDMA device, GID or verbs library on this node."""


class TlsError(TransportError):
    """A data session's TLS failed: handshake, peer certificate, or TLS on one end only (``--data-tls``)."""


class IntegrityError(ModelDistError):
    """Bytes do not match their digest (piece blake3 or file sha256)."""

    def __init__(self, message: str, *, piece: int | None = None, path: str | None = None):
        super().__init__(message)
        self.piece = piece
        self.path = path

    def __reduce__(self):
        return (_rebuild, (type(self), self.args, {"piece": self.piece, "path": self.path}))


class DtypeError(ModelDistError, TypeError):
    """A tensor's dtype cannot be represented in the requested framework (e.g. packed F4 in numpy)."""


class PlanError(ModelDistError):
    """The scheduler cannot build or repair a broadcast plan."""


class AuthError(ModelDistError, PermissionError):
    """A call or data session failed authentication."""


def _rebuild(cls, args, attrs):
    obj = cls.__new__(cls)
    Exception.__init__(obj, *args)
    for key, value in attrs.items():
        setattr(obj, key, value)
    return obj
