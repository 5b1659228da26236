"""Where bytes first come from: local folders and files, Hugging Face Hub, any ``pyarrow.fs`` URI.

``open_origin(source)`` picks the implementation from the source string; every origin lists the
model's files and reads byte ranges with retries (``base.Origin``).
"""

from __future__ import annotations

import os
import re

from ..config import Config
from ..errors import OriginError
from .base import Origin, OriginFile, is_transient

__all__ = ["Origin", "OriginFile", "open_origin", "is_transient", "canonical_source", "warm_up"]

_SCHEME_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*)://")


def open_origin(source: str | os.PathLike, *, revision: str | None = None,
                config: Config | None = None) -> Origin:
    """``hf://org/name[@rev]`` -> HF; ``scheme://...`` -> pyarrow.fs; anything else -> local path."""
    cfg = config or Config.load()
    src = os.fspath(source)
    m = _SCHEME_RE.match(src)
    if m is None:
        from .local import LocalOrigin

        return LocalOrigin(src, revision=revision, config=cfg)
    scheme = m.group(1).lower()
    if scheme == "hf":
        from .hf import HfOrigin

        return HfOrigin(src, revision=revision, config=cfg)
    from .fs import FsOrigin

    return FsOrigin(src, revision=revision, config=cfg)


def canonical_source(source: str | os.PathLike) -> str:
    """A stable spelling of a source for labels (absolute local paths)."""
    src = os.fspath(source)
    if _SCHEME_RE.match(src):
        return src
    return os.path.abspath(os.path.expanduser(src))


def warm_up() -> None:
    """Load the object-store client (pyarrow.fs, the AWS SDK) ahead of the first origin read.

    An agent calls it once at start, on a background thread: a stripe root then opens its origin
    as soon as its assignment comes instead of paying the import and SDK set-up first (0.1-0.3 s on
    a busy 2-core node: the first piece of the stripe, and so every node, waits for it). Best
    effort: a failure here shows again, with its reason, at the first real open.
    """
    try:
        import pyarrow.fs as pafs

        pafs.initialize_s3()
    except Exception:  # noqa: BLE001 - best effort (no S3 support in this pyarrow build, ...)
        pass
