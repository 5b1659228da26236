"""What a model is: files, tensors, pieces, digests; the strict safetensors header and index parser.

Owns the value objects (``Manifest``, ``FileEntry``, ``TensorEntry``, ``Piece``), their stable JSON
form and the manifest digest, and every check on untrusted headers (DESIGN section 9).

Identity. ``Manifest.digest`` names the model everywhere (store folders, plans, metrics). It is the
blake3 of the canonical JSON of the *identity form*: the files (path, size, and the origin's sha256,
or the origin's version token such as mtime/ETag when it gives no sha256), the tensors and the piece
layout. It is known after reading only the headers, so a node can find a staged model without
reading the weights. Piece digests are content checks: the seed fills them in as it reads the origin
(``Manifest.with_digests``); they are in ``manifest.json`` of a completed store but not in the
identity form, so the digest does not change when they arrive. Source and revision are labels, not
identity: the same files from two origins with the same sha256s are the same model.

Must not: do I/O itself (``from_source`` delegates reads to ``modeldist.origin``).
"""

from __future__ import annotations

import itertools
import json
import math
import posixpath
import re
import struct
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Callable, Iterable, Sequence

import blake3

from .errors import ManifestError

__all__ = [
    "Manifest",
    "FileEntry",
    "TensorEntry",
    "Piece",
    "DTYPE_BITS",
    "MAX_HEADER_BYTES",
    "parse_safetensors_header",
    "header_length",
    "parse_index",
    "normalize_relpath",
    "default_piece_size",
    "SCHEMA_VERSION",
]

SCHEMA_VERSION = 1

#: Every dtype safetensors knows, with its size in bits.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8, "I8": 8,
    "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "U16": 16, "I16": 16, "F16": 16, "BF16": 16,
    "U32": 32, "I32": 32, "F32": 32,
    "U64": 64, "I64": 64, "F64": 64, "C64": 64,
}

# Limits on untrusted input (DESIGN section 9). safetensors itself caps the header at 100 MB.
MAX_HEADER_BYTES = 100_000_000
MAX_INDEX_BYTES = 64 << 20
MAX_TENSORS_PER_FILE = 1_000_000
MAX_NDIM = 64
MAX_NAME_CHARS = 65_536
MAX_FILES = 100_000
MAX_PATH_CHARS = 4096
MAX_PIECES = 10_000_000
MAX_FILE_BYTES = 1 << 50
MIN_PIECE = 1 << 20
MAX_PIECE = 64 << 20

#: Names the store keeps for itself beside the model's files (``<store>/<digest>/...``).
RESERVED_NAMES = ("manifest.json", ".modeldist")


def default_piece_size(total_bytes: int) -> int:
    """About total/1000, rounded to a power of two, clamped to 1..64 MiB (DESIGN section 4)."""
    if total_bytes <= 0:
        return MIN_PIECE
    target = total_bytes / 1000
    size = 1 << max(0, round(math.log2(max(target, 1))))
    return min(MAX_PIECE, max(MIN_PIECE, size))


def normalize_relpath(path: Any, *, what: str = "file name") -> str:
    """A file name from a manifest, index or origin listing -> a normalised relative POSIX path.

    Refuses absolute paths, ``..``, backslashes, NUL and empty names rather than guessing.
    """
    if not isinstance(path, str) or not path:
        raise ManifestError(f"{what} must be a non-empty string, got {path!r}")
    if len(path) > MAX_PATH_CHARS:
        raise ManifestError(f"{what} longer than {MAX_PATH_CHARS} characters")
    if "\x00" in path or "\\" in path:
        raise ManifestError(f"{what} {path!r} contains a NUL or a backslash")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise ManifestError(f"{what} {path!r} is absolute")
    parts = path.split("/")
    if ".." in parts:
        raise ManifestError(f"{what} {path!r} points outside the model folder ('..')")
    norm = posixpath.normpath(path)
    if norm in (".", "") or norm.startswith("/"):
        raise ManifestError(f"{what} {path!r} is not a file path")
    if len(norm) > 1 and norm[1] == ":":  # "./C:" normalises to a drive-like name: refused like "C:"
        raise ManifestError(f"{what} {path!r} is absolute")
    return norm


# ----------------------------------------------------------------------------------------------
# Value objects


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor: where its bytes are in its file (absolute offsets, header included)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of the model. ``kind``: ``safetensors``, ``index`` (a shard index) or ``file``."""

    path: str
    size: int
    kind: str = "file"
    sha256: str | None = None
    version: str | None = None
    #: 8 + header length for safetensors files: where tensor data starts.
    data_start: int = 0
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Piece:
    """A byte range of one file: the unit that moves, is verified and is counted."""

    index: int
    file: str
    offset: int
    length: int
    digest: str | None = None


@dataclass(frozen=True)
class Manifest:
    """A model: files, tensors and pieces. Build with ``from_source`` or ``build``; never mutated."""

    files: tuple[FileEntry, ...]
    tensors: tuple[TensorEntry, ...]
    pieces: tuple[Piece, ...]
    piece_size: int
    source: str = ""
    revision: str | None = None
    #: The safetensors files whose tensors form the model's state dict, in load order.
    weight_files: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not (4096 <= self.piece_size <= 1 << 30):
            raise ManifestError(f"piece size out of range: {self.piece_size}")
        if len(self.files) > MAX_FILES:
            raise ManifestError(f"more than {MAX_FILES} files")
        if len(self.pieces) > MAX_PIECES:
            raise ManifestError(f"more than {MAX_PIECES} pieces")

    # --- derived views -------------------------------------------------------------------------

    @cached_property
    def file_map(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files}

    @cached_property
    def first_piece(self) -> dict[str, int]:
        """File path -> index of its first piece (files with size 0 have none)."""
        first: dict[str, int] = {}
        for p in self.pieces:
            first.setdefault(p.file, p.index)
        return first

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def complete(self) -> bool:
        """True when every piece carries its digest."""
        return all(p.digest is not None for p in self.pieces)

    def pieces_of_range(self, file: str, start: int, end: int) -> range:
        """Indices of the pieces holding bytes [start, end) of ``file`` (empty for an empty range)."""
        if end <= start:
            return range(0)
        first = self.first_piece[file]
        return range(first + start // self.piece_size, first + (end - 1) // self.piece_size + 1)

    def pieces_of_tensor(self, tensor: TensorEntry) -> range:
        return self.pieces_of_range(tensor.file, tensor.start, tensor.end)

    def state_dict_tensors(self) -> list[TensorEntry]:
        """Tensors of ``weight_files``; two tensors of one name is an error (pass allow_patterns)."""
        files = set(self.weight_files)
        seen: dict[str, str] = {}
        out = []
        for t in self.tensors:
            if t.file not in files:
                continue
            if t.name in seen:
                raise ManifestError(
                    f"tensor {t.name!r} is in both {seen[t.name]} and {t.file}: "
                    "select one set of weights with allow_patterns")
            seen[t.name] = t.file
            out.append(t)
        return out

    # --- identity and (de)serialisation --------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "piece_size": self.piece_size,
            "files": [
                {"path": f.path, "size": f.size, "kind": f.kind,
                 # a sha256 identifies the content; without one, the origin's version token does
                 "content": f"sha256:{f.sha256}" if f.sha256 else f"version:{f.version}"}
                for f in self.files
            ],
            "tensors": [[t.name, t.dtype, list(t.shape), t.file, t.start, t.end] for t in self.tensors],
            "weight_files": list(self.weight_files),
        }

    @cached_property
    def digest(self) -> str:
        """blake3 (hex, 64 chars) of the canonical identity form; names the model everywhere."""
        return blake3.blake3(_canonical(self._identity())).hexdigest()

    @cached_property
    def content_digest(self) -> str | None:
        """blake3 over all piece digests, once they are known (None before)."""
        if not self.complete:
            return None
        h = blake3.blake3()
        for p in self.pieces:
            h.update(bytes.fromhex(p.digest))  # type: ignore[arg-type]
        return h.hexdigest()

    def with_digests(self, digests: Sequence[str | None]) -> "Manifest":
        if len(digests) != len(self.pieces):
            raise ManifestError(f"{len(digests)} digests for {len(self.pieces)} pieces")
        pieces = tuple(replace(p, digest=d) for p, d in zip(self.pieces, digests))
        return replace(self, pieces=pieces)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "digest": self.digest,
            "source": self.source,
            "revision": self.revision,
            "piece_size": self.piece_size,
            "weight_files": list(self.weight_files),
            "files": [
                {"path": f.path, "size": f.size, "kind": f.kind, "sha256": f.sha256, "version": f.version,
                 "data_start": f.data_start, "metadata": dict(f.metadata)}
                for f in self.files
            ],
            "tensors": [
                {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "file": t.file,
                 "start": t.start, "end": t.end}
                for t in self.tensors
            ],
            "pieces": [[p.file, p.offset, p.length, p.digest] for p in self.pieces],
        }

    def to_json(self) -> bytes:
        """Stable JSON (sorted keys, no spaces): equal manifests give equal bytes."""
        return _canonical(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str) -> "Manifest":
        """Parse and re-validate a manifest (they cross the network: untrusted)."""
        if isinstance(data, str):
            data = data.encode()
        if len(data) > MAX_HEADER_BYTES * 4:
            raise ManifestError("manifest JSON too large")
        obj = _loads_strict(data, "manifest")
        try:
            if obj.get("schema") != SCHEMA_VERSION:
                raise ManifestError(f"unsupported manifest schema {obj.get('schema')!r}")
            files = tuple(
                FileEntry(path=normalize_relpath(f["path"]), size=_nonneg(f["size"], "file size"),
                          kind=_choice(f.get("kind", "file"), ("file", "safetensors", "index"), "kind"),
                          sha256=_opt_hex(f.get("sha256"), 64, "sha256"),
                          version=_opt_str(f.get("version")), data_start=_nonneg(f.get("data_start", 0), "data_start"),
                          metadata=tuple(sorted((str(k), str(v)) for k, v in (f.get("metadata") or {}).items())))
                for f in obj["files"])
            tensors = tuple(
                TensorEntry(name=_opt_str(t["name"]) or "", dtype=_choice(t["dtype"], DTYPE_BITS, "dtype"),
                            shape=tuple(_nonneg(d, "dim") for d in t["shape"]), file=normalize_relpath(t["file"]),
                            start=_nonneg(t["start"], "start"), end=_nonneg(t["end"], "end"))
                for t in obj["tensors"])
            pieces = tuple(
                Piece(index=i, file=normalize_relpath(p[0]), offset=_nonneg(p[1], "offset"),
                      length=_nonneg(p[2], "length"), digest=_opt_hex(p[3], 64, "piece digest"))
                for i, p in enumerate(obj["pieces"]))
            m = cls(files=files, tensors=tensors, pieces=pieces, piece_size=_nonneg(obj["piece_size"], "piece_size"),
                    source=str(obj.get("source") or ""), revision=_opt_str(obj.get("revision")),
                    weight_files=tuple(normalize_relpath(w) for w in obj.get("weight_files", [])))
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ManifestError(f"malformed manifest: {exc!r}") from exc
        _check_layout(m)
        if obj.get("digest") not in (None, m.digest):
            raise ManifestError("manifest digest does not match its content")
        return m

    # --- construction --------------------------------------------------------------------------

    @classmethod
    def build(cls, listing: Iterable["OriginFileLike"], read: Callable[[str, int, int], bytes], *,
              source: str = "", revision: str | None = None, piece_size: int | None = None,
              allow_patterns: Sequence[str] | str | None = None) -> "Manifest":
        """Make a manifest from an origin listing, reading only safetensors headers and index files.

        ``read(path, offset, length)`` returns exactly ``length`` bytes of a file.
        """
        chosen = _filter(listing, allow_patterns)
        if len(chosen) > MAX_FILES:
            raise ManifestError(f"more than {MAX_FILES} files")
        files: list[FileEntry] = []
        tensors: list[TensorEntry] = []
        indexes: dict[str, dict[str, str]] = {}
        for of in chosen:
            path = normalize_relpath(of.path)
            if path.split("/")[0] in RESERVED_NAMES:
                raise ManifestError(f"file name {path!r} is reserved by the store layout")
            size = _nonneg(of.size, "file size")
            if size > MAX_FILE_BYTES:
                raise ManifestError(f"{path}: file too large ({size} bytes)")
            if path.endswith(".safetensors"):
                n = header_length(read(path, 0, 8) if size >= 8 else b"", size, path)
                entries, metadata = parse_safetensors_header(read(path, 8, n), size, path)
                files.append(FileEntry(path, size, "safetensors", of.sha256, of.version, 8 + n,
                                       tuple(sorted(metadata.items()))))
                tensors.extend(entries)
            elif path.endswith(".safetensors.index.json"):
                if size > MAX_INDEX_BYTES:
                    raise ManifestError(f"{path}: index larger than {MAX_INDEX_BYTES} bytes")
                indexes[path] = parse_index(read(path, 0, size), path)
                files.append(FileEntry(path, size, "index", of.sha256, of.version))
            else:
                files.append(FileEntry(path, size, "file", of.sha256, of.version))
        files.sort(key=lambda f: f.path)
        tensors.sort(key=lambda t: (t.file, t.start, t.name))
        weight_files = _weight_files(files, tensors, indexes)
        total = sum(f.size for f in files)
        ps = piece_size or default_piece_size(total)
        pieces = []
        for f in files:
            for off in range(0, f.size, ps):
                pieces.append(Piece(len(pieces), f.path, off, min(ps, f.size - off)))
                if len(pieces) > MAX_PIECES:
                    raise ManifestError(f"more than {MAX_PIECES} pieces: use a larger piece size")
        return cls(files=tuple(files), tensors=tuple(tensors), pieces=tuple(pieces), piece_size=ps,
                   source=source, revision=revision, weight_files=weight_files)

    @classmethod
    def from_source(cls, source: str, *, revision: str | None = None, piece_size: int | None = None,
                    allow_patterns: Sequence[str] | str | None = None, config: Any = None) -> "Manifest":
        """The manifest of a model at ``source`` (reads headers and index files only)."""
        from .config import Config
        from .origin import open_origin

        cfg = config if config is not None else Config.load()
        with open_origin(source, revision=revision, config=cfg) as origin:
            return origin.manifest(piece_size=piece_size or cfg.piece_size, allow_patterns=allow_patterns)


class OriginFileLike:  # typing only: what Manifest.build needs from an origin listing
    path: str
    size: int
    sha256: str | None
    version: str | None


# ----------------------------------------------------------------------------------------------
# Strict parsers for untrusted input


def header_length(first8: bytes, file_size: int, path: str = "<file>") -> int:
    """The safetensors header length N from the file's first 8 bytes, checked against the file."""
    if len(first8) < 8 or file_size < 8:
        raise ManifestError(f"{path}: too short for a safetensors file ({file_size} bytes)")
    (n,) = struct.unpack("<Q", first8[:8])
    if n > MAX_HEADER_BYTES:
        raise ManifestError(f"{path}: header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes")
    if n < 2 or 8 + n > file_size:
        raise ManifestError(f"{path}: header length {n} does not fit in a file of {file_size} bytes")
    return n


def parse_safetensors_header(header: bytes, file_size: int, path: str = "<file>"
                             ) -> tuple[list[TensorEntry], dict[str, str]]:
    """Parse the JSON header of a safetensors file (the N bytes after the length), strictly.

    Checks what safetensors checks (offsets tile the data region exactly, shape x dtype size ==
    byte length, known dtypes) plus limits (header size, tensor count, rank, name length).
    Returns tensors with absolute file offsets, sorted by offset, and the ``__metadata__`` dict.
    """
    n = len(header)
    if n > MAX_HEADER_BYTES:
        raise ManifestError(f"{path}: header exceeds {MAX_HEADER_BYTES} bytes")
    data_start = 8 + n
    if data_start > file_size:
        raise ManifestError(f"{path}: header runs past the end of the file")
    if not header[:1] == b"{":
        raise ManifestError(f"{path}: header is not a JSON object")
    obj = _loads_strict(header, f"{path}: header")
    metadata: dict[str, str] = {}
    entries: list[TensorEntry] = []
    if len(obj) > MAX_TENSORS_PER_FILE + 1:
        raise ManifestError(f"{path}: more than {MAX_TENSORS_PER_FILE} tensors")
    for name, info in obj.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in info.items()):
                raise ManifestError(f"{path}: __metadata__ must map strings to strings")
            metadata = dict(info)
            continue
        if len(name) > MAX_NAME_CHARS:
            raise ManifestError(f"{path}: tensor name longer than {MAX_NAME_CHARS} characters")
        if not isinstance(info, dict):
            raise ManifestError(f"{path}: tensor {name!r}: entry is not an object")
        dtype = info.get("dtype")
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise ManifestError(f"{path}: tensor {name!r}: unknown dtype {dtype!r}")
        shape = info.get("shape")
        if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(_is_uint(d) for d in shape):
            raise ManifestError(f"{path}: tensor {name!r}: shape must be a list of at most "
                                f"{MAX_NDIM} non-negative integers, got {shape!r}")
        offsets = info.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_uint(o) for o in offsets)):
            raise ManifestError(f"{path}: tensor {name!r}: data_offsets must be [begin, end], got {offsets!r}")
        begin, end = offsets
        if end < begin:
            raise ManifestError(f"{path}: tensor {name!r}: data_offsets end {end} < begin {begin}")
        if data_start + end > file_size:
            raise ManifestError(f"{path}: tensor {name!r}: bytes [{begin}, {end}) run past the end of the file")
        bits = math.prod(shape) * DTYPE_BITS[dtype]
        if bits % 8:
            raise ManifestError(f"{path}: tensor {name!r}: {bits} bits is not a whole number of bytes")
        if bits // 8 != end - begin:
            raise ManifestError(f"{path}: tensor {name!r}: shape {shape} x {dtype} is {bits // 8} bytes "
                                f"but data_offsets span {end - begin}")
        entries.append(TensorEntry(name, dtype, tuple(shape), path, data_start + begin, data_start + end))
    entries.sort(key=lambda t: (t.start, t.end))
    cursor = data_start
    for t in entries:
        if t.start != cursor:
            what = "overlaps the previous tensor" if t.start < cursor else "leaves a gap before it"
            raise ManifestError(f"{path}: tensor {t.name!r} at offset {t.start - data_start} {what}")
        cursor = t.end
    if cursor != file_size:
        raise ManifestError(f"{path}: tensors cover {cursor - data_start} bytes but the data region "
                            f"is {file_size - data_start} bytes")
    return entries, metadata


def parse_index(data: bytes, path: str = "<index>") -> dict[str, str]:
    """Parse a ``*.safetensors.index.json``: tensor name -> shard path relative to the model root."""
    if len(data) > MAX_INDEX_BYTES:
        raise ManifestError(f"{path}: index larger than {MAX_INDEX_BYTES} bytes")
    obj = _loads_strict(data, f"{path}")
    weight_map = obj.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ManifestError(f"{path}: 'weight_map' must be a non-empty object")
    base = posixpath.dirname(path)
    out = {}
    for name, shard in weight_map.items():
        rel = normalize_relpath(shard, what=f"{path}: shard name")
        out[name] = normalize_relpath(posixpath.join(base, rel)) if base else rel
    return out


# ----------------------------------------------------------------------------------------------
# helpers


def _weight_files(files: list[FileEntry], tensors: list[TensorEntry],
                  indexes: dict[str, dict[str, str]]) -> tuple[str, ...]:
    st_files = {f.path for f in files if f.kind == "safetensors"}
    by_file: dict[str, set[str]] = {}
    for t in tensors:
        by_file.setdefault(t.file, set()).add(t.name)
    indexed: list[str] = []
    for ipath, wmap in sorted(indexes.items()):
        for name, shard in wmap.items():
            if shard not in st_files:
                raise ManifestError(f"{ipath}: shard {shard!r} (tensor {name!r}) is not in the model")
            if name not in by_file.get(shard, ()):
                raise ManifestError(f"{ipath}: tensor {name!r} is not in shard {shard!r}")
        for shard in sorted(set(wmap.values())):
            if shard not in indexed:
                indexed.append(shard)
    if indexed:
        return tuple(indexed)
    return tuple(sorted(st_files))


def select_files(listing: Iterable[Any], patterns: Sequence[str] | str | None) -> list[Any]:
    """The files of ``listing`` that ``Manifest.build`` takes with these ``allow_patterns``."""
    return _filter(listing, patterns)


def _filter(listing: Iterable[Any], patterns: Sequence[str] | str | None) -> list[Any]:
    items = list(listing)
    if patterns is None:
        return items
    from fnmatch import fnmatchcase

    pats = [patterns] if isinstance(patterns, str) else list(patterns)
    return [f for f in items if any(fnmatchcase(f.path, p) for p in pats)]


def _check_layout(m: Manifest) -> None:
    """Cross-checks of a deserialised manifest: pieces tile files, tensors lie inside them."""
    sizes = {}
    for f in m.files:
        if f.path in sizes:
            raise ManifestError(f"file {f.path!r} listed twice")
        if f.path.split("/")[0] in RESERVED_NAMES:
            raise ManifestError(f"file name {f.path!r} is reserved by the store layout")
        sizes[f.path] = f.size
    # the layout is a function of (files, piece_size): pieces_of_range relies on exactly this one
    expected = ((f.path, off, min(m.piece_size, f.size - off))
                for f in m.files for off in range(0, f.size, m.piece_size))
    for k, (p, e) in enumerate(itertools.zip_longest(m.pieces, expected)):
        if p is None or e is None or (p.file, p.offset, p.length) != e:
            raise ManifestError(f"piece {k} does not follow the piece layout")
    for t in m.tensors:
        if t.file not in sizes or not (0 <= t.start <= t.end <= sizes[t.file]):
            raise ManifestError(f"tensor {t.name!r} lies outside its file")
        if math.prod(t.shape) * DTYPE_BITS[t.dtype] != 8 * (t.end - t.start):
            raise ManifestError(f"tensor {t.name!r}: shape and dtype do not match its byte range")
    for w in m.weight_files:
        if w not in sizes:
            raise ManifestError(f"weight file {w!r} is not in the manifest")


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ManifestError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise ManifestError(f"invalid JSON number {name}")


def _loads_strict(data: bytes, what: str) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{what}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except ManifestError as exc:
        raise ManifestError(f"{what}: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise ManifestError(f"{what}: invalid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"{what}: must be a JSON object")
    try:  # json accepts "\ud800" escapes; such a string cannot be encoded again (serde_json refuses it)
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ManifestError(f"{what}: a string holds a lone UTF-16 surrogate (invalid Unicode)") from None
    return obj


def _is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < (1 << 63)


def _nonneg(v: Any, what: str) -> int:
    if not _is_uint(v):
        raise ManifestError(f"{what} must be a non-negative integer, got {v!r}")
    return v


def _opt_str(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise ManifestError(f"expected a string, got {v!r}")
    return v


_HEX = {64: re.compile(r"[0-9a-f]{64}")}


def _opt_hex(v: Any, length: int, what: str) -> str | None:
    if v is None:
        return None
    pattern = _HEX.get(length) or _HEX.setdefault(length, re.compile(f"[0-9a-f]{{{length}}}"))
    if not (isinstance(v, str) and pattern.fullmatch(v)):
        raise ManifestError(f"{what} must be {length} lowercase hex characters, got {v!r}")
    return v


def _choice(v: Any, allowed: Iterable[str], what: str) -> str:
    if v not in allowed:
        raise ManifestError(f"unknown {what} {v!r}")
    return v
