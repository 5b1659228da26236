"""The one place settings are resolved: arguments > ``MODELDIST_*`` environment > config file > defaults.

Owns the ``Config`` dataclass and the only reads of ``os.environ`` for modeldist's own settings
(HF and AWS variables belong to their libraries). The config file is TOML: ``$MODELDIST_CONFIG``,
else ``~/.config/modeldist/config.toml`` if it exists, with the same keys as the dataclass fields.

Must not: write the environment, configure logging, or do any I/O beyond reading the config file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

__all__ = ["Config", "parse_size", "DEFAULT_SHM_STORE"]

DEFAULT_SHM_STORE = "/dev/shm/modeldist"
MIB = 1 << 20

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: int | str) -> int:
    """``4194304``, ``"4MiB"``, ``"4M"``, ``"512k"`` -> bytes (binary units)."""
    if isinstance(value, bool):
        raise ConfigError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"size must be >= 0, got {value}")
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ConfigError(f"not a size: {value!r} (examples: 4194304, 4MiB, 512k)")
    unit = (m.group(2) or "").lower()[:1]
    return int(m.group(1)) * _UNITS[unit]


@dataclass(frozen=True)
class Config:
    """Every knob of modeldist. Build one with ``Config.load(**overrides)``."""

    #: "shm" (``/dev/shm/modeldist``) or a folder on disk for models larger than RAM.
    store: str = "shm"
    #: Piece size in bytes; None = about total/1000 rounded to a power of two, clamped to 1..64 MiB.
    piece_size: int | None = None
    #: Parallel origin reads (threads) when staging.
    concurrency: int = 8
    #: Parallel origin reads of a stripe seed in the swarm. Few, so the seed's pieces land one after
    #: the other in stripe order and its children get a steady stream instead of clumps of
    #: ``concurrency`` pieces that all finish at once (bench/results/broadcast_profile.json).
    seed_concurrency: int = 2
    #: Cut-through forwarding (TCP data plane): a node forwards a piece's bytes to its children while
    #: it still receives them, so each hop of a tree adds one 128 KiB slice of delay instead of a
    #: whole piece; everyone still verifies every piece (transport/base.py). Off: whole pieces only.
    cut_through: bool = True
    #: Attempts per origin read before giving up with OriginError.
    retries: int = 5
    #: First retry delay in seconds; doubles each attempt (with jitter), capped at 10 s.
    retry_backoff: float = 0.2
    #: Deadline in seconds for a whole staging run (None = no overall deadline; each read still has one).
    timeout: float | None = None
    #: Deadline in seconds for one origin read operation.
    read_timeout: float = 120.0
    #: Lock staged buffers in memory: "auto" (try, carry on if not allowed), "on" (fail if not), "off".
    mlock: str = "auto"
    #: Re-hash pieces recorded as present when resuming an incomplete model.
    verify_on_resume: bool = True
    #: Scheduler address (the swarm); None = straight from origin.
    scheduler: str | None = None
    #: Local agent socket; None = use one if running, else work in-process.
    agent: str | None = None
    #: Hugging Face token; None = huggingface_hub's own lookup (HF_TOKEN, token file).
    hf_token: str | None = field(default=None, repr=False)
    #: File holding the cluster token every gRPC call must carry (None = no token).
    token_file: str | None = None
    #: gRPC TLS: this process's certificate and key (PEM); a server with them serves TLS.
    tls_cert: str | None = None
    tls_key: str | None = None
    #: CA (PEM) to trust; on a server it also demands client certificates (mutual TLS).
    tls_ca: str | None = None
    #: Data plane over TLS 1.3 (mutual: both ends present ``tls_cert`` and verify the other's against
    #: ``tls_ca``; no hostname check, the cluster CA is the trust anchor). Needs all three TLS files.
    data_tls: bool = False
    #: RDMA device for the data plane (e.g. mlx5_0, rxe0); None = the first one with an active port.
    rdma_device: str | None = None
    #: GID index on that port; -1 = automatic (RoCE v2 with an IPv4-mapped address first).
    rdma_gid_index: int = -1
    #: Fault injection for tests: the child end of every RDMA session forces its queue pair into the
    #: error state after this many pieces, mid-transfer (the session must finish over TCP); 0 = never.
    rdma_fail_after: int = 0

    def __post_init__(self) -> None:
        if self.piece_size is not None and not (4096 <= self.piece_size <= 1 << 30 and self.piece_size % 4096 == 0):
            # whole pages: a reader's copy-on-write page never straddles a piece still being written
            raise ConfigError(f"piece_size must be a multiple of 4 KiB between 4 KiB and 1 GiB, got {self.piece_size}")
        if self.concurrency < 1 or self.concurrency > 256:
            raise ConfigError(f"concurrency must be 1..256, got {self.concurrency}")
        if self.seed_concurrency < 1 or self.seed_concurrency > 256:
            raise ConfigError(f"seed_concurrency must be 1..256, got {self.seed_concurrency}")
        if self.retries < 1:
            raise ConfigError(f"retries must be >= 1, got {self.retries}")
        if not self.retry_backoff >= 0:
            raise ConfigError("retry_backoff must be >= 0")
        if self.mlock not in ("auto", "on", "off"):
            raise ConfigError(f"mlock must be auto, on or off, got {self.mlock!r}")
        if not self.read_timeout > 0:  # also refuses NaN
            raise ConfigError("read_timeout must be > 0")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError(f"timeout must be > 0 seconds (or none), got {self.timeout}")
        if not self.store:
            raise ConfigError("store must be 'shm' or a folder")
        if self.rdma_gid_index < -1:
            raise ConfigError(f"rdma_gid_index must be >= 0 (or -1 = automatic), got {self.rdma_gid_index}")
        if self.data_tls and not (self.tls_cert and self.tls_key and self.tls_ca):
            missing = [flag for flag, v in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key),
                                            ("--tls-ca", self.tls_ca)) if not v]
            raise ConfigError(f"--data-tls needs {', '.join(missing)} (settings tls_cert, tls_key, tls_ca): "
                              "every data session is mutual TLS with this node's certificate, verified against "
                              "the cluster CA")
        if self.rdma_fail_after < 0:
            raise ConfigError(f"rdma_fail_after must be >= 0, got {self.rdma_fail_after}")

    @property
    def store_path(self) -> Path:
        return Path(DEFAULT_SHM_STORE) if self.store == "shm" else Path(self.store).expanduser()

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def load(cls, config_file: str | os.PathLike | None = None, *, env: Mapping[str, str] | None = None,
             **overrides: Any) -> "Config":
        """Resolve settings. ``overrides`` whose value is None are ignored (= not given)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        path = config_file or env.get("MODELDIST_CONFIG")
        if path is None:
            default = Path("~/.config/modeldist/config.toml").expanduser()
            path = default if default.is_file() else None
        if path is not None:
            values.update(_from_file(Path(path)))
        for f in fields(cls):
            raw = env.get(f"MODELDIST_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return cls(**{k: _coerce(k, v) for k, v in values.items()})


def _from_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    section = data.get("modeldist", data)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [modeldist] must be a table")
    return dict(section)


_TYPES = {f.name: f.type for f in fields(Config)}


def _coerce(name: str, value: Any) -> Any:
    kind = _TYPES[name]
    try:
        if name == "piece_size":
            return None if value in (None, "", "auto") else parse_size(value)
        if "bool" in kind:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if kind.startswith("float"):
            if value in (None, "", "none"):
                return None
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if name == "mlock" and isinstance(value, bool):
            return "on" if value else "off"
        return None if value is None else str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad value for {name}: {value!r}") from exc
