"""Origin: a Hugging Face Hub model repo, ``hf://org/name[@revision]``, through ``huggingface_hub``.

Listing: online, ``HfApi.model_info(files_metadata=True)`` gives each file's size and the LFS
sha256 the hub reports, and pins the revision to its commit; offline (``HF_HUB_OFFLINE=1``) or
when the hub cannot be reached, the local HF cache (``HF_HOME``/``HF_HUB_CACHE``) is used, where the
blob name of an LFS file is its sha256. Reads: from the cached file when the cache has it, else
ranged reads over ``HfFileSystem`` (token honoured). Files the cache does not have in offline mode
are an ``OriginError`` naming them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import OriginError
from .base import Origin, OriginFile
from .local import LocalOrigin

__all__ = ["HfOrigin", "parse_hf_source"]

_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def parse_hf_source(source: str) -> tuple[str, str | None]:
    """``hf://org/name@rev`` or ``org/name`` -> (repo_id, revision)."""
    rest = source[len("hf://"):] if source.startswith("hf://") else source
    revision = None
    if "@" in rest:
        rest, revision = rest.split("@", 1)
        revision = revision or None
    rest = rest.strip("/")
    if not _REPO_RE.match(rest) or ".." in rest:
        raise OriginError(f"{source}: not a Hugging Face repo id (expected hf://org/name[@revision])",
                          source=source)
    return rest, revision


class HfOrigin(Origin):
    def __init__(self, source: str, *, revision: str | None = None, **kwargs):
        repo_id, rev = parse_hf_source(source)
        super().__init__(source, revision=revision or rev, **kwargs)
        self.repo_id = repo_id
        self.token = self.config.hf_token
        self.commit: str | None = None
        self._cache: LocalOrigin | None = None   # the cached snapshot folder, when there is one
        self._fs = None

    @staticmethod
    def _offline() -> bool:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)

    def _list(self) -> list[OriginFile]:
        if not self._offline():
            try:
                return self._list_online()
            except OriginError:
                raise
            except Exception as exc:  # noqa: BLE001 - hub unreachable: fall back to the cache below
                self._online_error = exc
        return self._list_cached()

    def _list_online(self) -> list[OriginFile]:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        try:
            info = HfApi().model_info(self.repo_id, revision=self.revision, files_metadata=True,
                                      token=self.token)
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            raise OriginError(f"{self.source}: {exc}", source=self.source) from exc
        self.commit = info.sha
        out = []
        for s in info.siblings or []:
            lfs = getattr(s, "lfs", None)
            sha = getattr(lfs, "sha256", None) if lfs is not None else None
            out.append(OriginFile(s.rfilename, int(s.size or 0), sha, f"git:{getattr(s, 'blob_id', None)}"))
        self._attach_cache()
        return out

    def _attach_cache(self) -> None:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            folder = snapshot_download(self.repo_id, revision=self.commit or self.revision,
                                       local_files_only=True, token=self.token)
        except (LocalEntryNotFoundError, OSError, ValueError):
            return
        self._cache = LocalOrigin(folder, config=self.config)

    def _list_cached(self) -> list[OriginFile]:
        self._attach_cache()
        if self._cache is None:
            why = getattr(self, "_online_error", None)
            raise OriginError(
                f"{self.source}: not in the local Hugging Face cache"
                + (f" and the hub is unreachable ({why})" if why else " (HF_HUB_OFFLINE is set)"),
                source=self.source)
        self.commit = self._cache.path.name
        out = []
        for f in self._cache.list_files():
            blob = os.path.realpath(self._cache.path / f.path)
            name = Path(blob).name
            sha = name if _SHA256_RE.match(name) else None
            out.append(OriginFile(f.path, f.size, sha, f"git:{name}"))
        return out

    def _in_cache(self, path: str) -> bool:
        return self._cache is not None and (self._cache.path / path).is_file()

    def _read_into(self, path: str, offset: int, buf: memoryview) -> int:
        if self._in_cache(path):
            return self._cache._read_into(path, offset, buf)  # noqa: SLF001 - same retry loop wraps it
        if self._offline():
            raise OriginError(f"{self.source}: {path} is not in the local cache and HF_HUB_OFFLINE is set",
                              source=self.source)
        if self._fs is None:
            from huggingface_hub import HfFileSystem

            self._fs = HfFileSystem(token=self.token)
        rev = self.commit or self.revision or "main"
        data = self._fs.cat_file(f"{self.repo_id}@{rev}/{path}", start=offset, end=offset + len(buf))
        buf[: len(data)] = data
        return len(data)

    def _close(self) -> None:
        if self._cache is not None:
            self._cache.close()
