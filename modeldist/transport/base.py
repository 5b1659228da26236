"""The one data-plane interface (DESIGN section 6) and the registry of implementations by name.

A *session* is one parent-child edge for one model. The child connects and presents a ``Hello``
(model digest, session token, its node id); the parent authorizes it, the child sends the list of
pieces it wants, and the parent sends each one as soon as it holds it verified (pipelining), reading
from its store mapping; the child receives each piece straight into its own mapping.

Implementations: ``tcp`` (default and fallback) and ``rdma`` (pyverbs RC queue pairs, with the TCP
session as side channel and per-piece fallback to it; ``transport/rdma``). Every blocking call has
a deadline; failures are ``TransportError`` with ``.peer``.

Memory: a transport that moves bytes by DMA (RDMA) registers the model's buffers once per session
(one region per store mapping, not per piece): the parent learns them from
``PieceSource.regions()``, the child from ``connect(..., regions=...)``. Both are optional: a
piece outside every region still arrives (over TCP on the same session, or through a bounce
buffer).

Cut-through (TCP; ``Config.cut_through``): a parent need not hold a piece verified to send it. A
source that is itself receiving the piece (``fill_state``) streams its bytes to the child as they
land (``wait_fill``), and tells the child afterwards whether it verified them (``fill_verdict``;
``ChildSession.verdict`` on the child). The child verifies every piece itself either way; the
verdict only says whom to blame when its check fails: a parent that verified what it sent is
corrupt, one that did not passed on its upstream's bad bytes and is not. So each hop of a tree adds
one chunk of delay instead of one whole piece.

Must not: verify digests or decide whom to fetch from (the agent does).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, Protocol, Sequence

from ..errors import ConfigError

__all__ = ["Hello", "PieceSource", "Transport", "ChildSession", "Listener", "register", "get_transport",
           "transports"]


@dataclass(frozen=True)
class Hello:
    model: str        # manifest digest (64 hex)
    token: bytes      # session token from the scheduler
    node_id: str      # the child


class PieceSource(Protocol):
    """What a parent serves one model from (the agent's job)."""

    def piece_count(self) -> int: ...

    def piece_length(self, index: int) -> int: ...

    def wait_piece(self, index: int, timeout: float) -> memoryview | None:
        """The verified bytes of ``index`` once held; None if not held within ``timeout``."""

    def sent(self, nbytes: int, transport: str) -> None:
        """Account bytes sent to a child."""

    # Optional (looked up with getattr): ``regions() -> Mapping[str, buffer]``, the model's
    # mappings (file path -> mmap or memoryview) that ``wait_piece`` views point into, for
    # transports that register memory (RDMA). Sources without it are served over TCP frames.
    # ``send_rate(child_node_id) -> float``: bytes/s that child's session is paced at (0 = unpaced).
    # Cut-through (all four or none): ``wait_sendable(index, timeout)`` returns once ``index`` is held
    # or starts landing; ``fill_state(index) -> (generation, view) | None`` for a piece
    # being received now and not held yet; ``wait_fill(index, generation, have, timeout) -> int``:
    # bytes landed once more than ``have`` (the length once verified, -1 if that fill was given up,
    # ``have`` on timeout); ``fill_verdict(index, generation) -> bool | None`` (None: undecided).


#: Parent side: hello -> the source to serve from; raise AuthError / TransportError to refuse.
Authorizer = Callable[[Hello, str], PieceSource]


class ChildSession(ABC):
    """Child side of one edge. Context manager; ``close()`` is safe twice and wakes a blocked recv."""

    peer: str
    #: the transport that carried the piece the last ``receive()`` returned ("tcp", "rdma")
    last_transport: str = ""
    #: whether that piece was cut through (the parent had not verified it when it sent it)
    last_streamed: bool = False
    #: whether ``receive()`` is in the middle of a cut-through piece now
    streaming: bool = False

    @abstractmethod
    def request(self, indices: Sequence[int]) -> None:
        """Ask for these pieces, in this order of preference (one request per session)."""

    @abstractmethod
    def receive(self, dest: Callable[[int, int], memoryview], timeout: float,
                progress: Callable[[int, int], None] | None = None) -> int | None:
        """Receive the next piece into ``dest(index, length)``; return its index.

        Returns None when the parent has sent everything it will send. A piece the parent could
        not get in time raises nothing: it is simply not sent (the child re-requests elsewhere).
        ``progress(index, landed)``, if given, is told as the piece's bytes land (a prefix of
        ``landed`` bytes), so this node can forward them on before the piece is whole.
        """

    def verdict(self, index: int, timeout: float) -> bool | None:
        """For a cut-through piece: whether the parent verified it (waits up to ``timeout`` for
        the parent to say; None if it did not, or the session ended first)."""
        return None

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> "ChildSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Listener(ABC):
    """Parent side: accepts sessions and serves them until closed."""

    address: str

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Transport(ABC):
    name: ClassVar[str]

    @abstractmethod
    def listen(self, address: str, authorize: Authorizer) -> Listener:
        """Start serving on ``address`` (``host:port``; port 0 = any)."""

    @abstractmethod
    def connect(self, address: str, hello: Hello, *, timeout: float, regions=None) -> ChildSession:
        """Open a session to a parent and complete the handshake.

        ``regions``: the destination buffers (name -> mmap/memoryview) that ``receive``'s ``dest``
        views will point into, registered up front by transports that need it (RDMA); optional.
        """


#: name -> factory(config) (config: a modeldist Config or None for the defaults)
_REGISTRY: dict[str, Callable[..., Transport]] = {}


def register(name: str, factory: Callable[..., Transport]) -> None:
    _REGISTRY[name] = factory


def transports() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_transport(name: str, config=None) -> Transport:
    """A transport by name; ``config`` (a modeldist ``Config``) carries its settings (RDMA device...)."""
    _load_builtin()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown transport {name!r}: choose one of {', '.join(sorted(_REGISTRY))}") from None
    return factory(config)


def _load_builtin() -> None:
    if "tcp" not in _REGISTRY:
        from . import tcp  # noqa: F401 - registers itself
    if "rdma" not in _REGISTRY:
        from . import rdma  # noqa: F401 - registers itself (pyverbs is imported only when used)
