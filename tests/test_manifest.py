"""Manifest, strict safetensors/index parsing and the load path against the real ``safetensors``.

DESIGN sections 2, 4 and 9: ``load`` is bit-identical to ``safetensors.{numpy,torch}.load_file`` for
every dtype; a sharded model loads as one dict; malformed headers and indexes are a
``ManifestError`` (fast, and nothing lands in the store or outside it); the manifest's JSON form is
stable and re-validated; pieces tile files exactly.

Every model here is written by the real ``safetensors`` / ``huggingface_hub`` (``tests.models``);
malformed files are derived from such files by editing their bytes.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import struct
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modeldist
from modeldist import Manifest
from modeldist.errors import ManifestError
from modeldist.manifest import (
    DTYPE_BITS,
    MAX_HEADER_BYTES,
    MAX_PIECE,
    MIN_PIECE,
    default_piece_size,
    header_length,
    normalize_relpath,
    parse_safetensors_header,
)
from modeldist.store import COMPLETE_MARKER, Store
from tests.models import (
    TORCH_DTYPES,
    join_safetensors,
    raw_bytes,
    split_safetensors,
    write_all_dtypes,
    write_big,
    write_sharded,
)

FAST = 1.0  # seconds a refusal of a malformed input may take
HYPO = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ML_DTYPES = {
    "BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "F8_E8M0": getattr(ml_dtypes, "float8_e8m0fnu", None), "F8_E4M3FNUZ": ml_dtypes.float8_e4m3fnuz,
    "F8_E5M2FNUZ": ml_dtypes.float8_e5m2fnuz,
}


def completed_models(store: Path) -> list[Path]:
    """Model folders in ``store`` that carry a completion marker."""
    if not store.exists():
        return []
    return [d for d in store.iterdir() if (d / COMPLETE_MARKER).exists()]


def all_paths(root: Path, *, skip: Path | None = None) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None and Path(dirpath) == skip:
            dirnames[:] = []
            continue
        for name in filenames + dirnames:
            out.add(os.path.join(dirpath, name))
    return out


def tensor_dtype_name(path: Path, name: str) -> str:
    with safetensors.safe_open(str(path), "pt") as f:
        return f.get_slice(name).get_dtype()


def assert_same_pt(got: torch.Tensor, ref: torch.Tensor, name: str) -> None:
    assert got.dtype == ref.dtype, name
    assert tuple(got.shape) == tuple(ref.shape), name
    a = got.contiguous().reshape(-1).view(torch.uint8)
    b = ref.contiguous().reshape(-1).view(torch.uint8)
    assert torch.equal(a, b), f"{name}: bytes differ"


# =============================================================================================
# every dtype, bit-identical


@pytest.fixture
def all_dtypes_file(tmp_path) -> Path:
    return write_all_dtypes(tmp_path / "model")


def test_all_dtypes_model_covers_every_dtype(all_dtypes_file):
    m = Manifest.from_source(str(all_dtypes_file))
    dtypes = {t.dtype for t in m.tensors}
    for required in ["BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64", "F16", "BF16", "F32", "F64",
                     "F8_E4M3", "F8_E5M2"]:
        assert required in dtypes
    assert set(TORCH_DTYPES) <= dtypes
    shapes = {t.shape for t in m.tensors}
    assert () in shapes and (0, 3) in shapes and (3, 0, 2) in shapes


def test_load_pt_bit_identical_for_every_dtype(all_dtypes_file):
    ref = safetensors.torch.load_file(str(all_dtypes_file))
    got = modeldist.load(all_dtypes_file.parent, framework="pt")
    assert set(got) == set(ref)
    for name, t in ref.items():
        assert_same_pt(got[name], t, name)


def test_load_single_file_source(all_dtypes_file):
    ref = safetensors.torch.load_file(str(all_dtypes_file))
    got = modeldist.load(str(all_dtypes_file), framework="torch")
    assert set(got) == set(ref)
    for name, t in ref.items():
        assert_same_pt(got[name], t, name)


def test_load_numpy_bit_identical_for_every_dtype(all_dtypes_file):
    ref_pt = safetensors.torch.load_file(str(all_dtypes_file))
    got = modeldist.load(all_dtypes_file.parent, framework="numpy")
    assert set(got) == set(ref_pt)
    with safetensors.safe_open(str(all_dtypes_file), "np") as f:
        for name, t in ref_pt.items():
            arr = got[name]
            assert isinstance(arr, np.ndarray), name
            assert arr.shape == tuple(t.shape), name
            assert arr.tobytes() == raw_bytes(t), f"{name}: bytes differ"
            st_name = f.get_slice(name).get_dtype()
            try:
                ref_np = f.get_tensor(name)
            except Exception:  # noqa: BLE001 - safetensors.numpy has no such dtype (BF16, F8_*)
                ref_np = None
            if ref_np is not None:
                assert arr.dtype == ref_np.dtype, name
                assert arr.shape == ref_np.shape, name
                assert arr.tobytes() == ref_np.tobytes(), name
            else:
                assert st_name in ML_DTYPES, f"{name}: safetensors.numpy cannot load {st_name}"
                assert arr.dtype == np.dtype(ML_DTYPES[st_name]), name


def test_numpy_load_file_agrees_where_safetensors_numpy_can_load(tmp_path):
    """A model of only the dtypes safetensors.numpy knows: load == safetensors.numpy.load_file."""
    rng = np.random.default_rng(5)
    arrays = {
        f"{dt}.{k}": rng.integers(0, 256, size=math.prod(shape) * np.dtype(dt).itemsize, dtype=np.uint8)
        .view(dt).reshape(shape)
        for dt in ["uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float16",
                   "float32", "float64", "complex64"]
        for k, shape in enumerate([(), (0, 3), (3, 5, 7), (1,)])
    }
    arrays["bool.x"] = rng.integers(0, 2, size=(4, 3), dtype=np.uint8).astype(bool)
    (tmp_path / "m").mkdir()
    safetensors.numpy.save_file(arrays, str(tmp_path / "m" / "model.safetensors"))
    ref = safetensors.numpy.load_file(str(tmp_path / "m" / "model.safetensors"))
    got = modeldist.load(tmp_path / "m", framework="np")
    assert set(got) == set(ref)
    for name, a in ref.items():
        assert got[name].dtype == a.dtype, name
        assert got[name].shape == a.shape, name
        assert got[name].tobytes() == a.tobytes(), name


def test_stream_yields_the_same_tensors(all_dtypes_file):
    ref = safetensors.torch.load_file(str(all_dtypes_file))
    got = dict(modeldist.stream(all_dtypes_file.parent, framework="pt"))
    assert set(got) == set(ref)
    for name, t in ref.items():
        assert_same_pt(got[name], t, name)


def test_loaded_tensors_share_the_store_but_writes_stay_private(all_dtypes_file, isolated_store):
    first = modeldist.load(all_dtypes_file.parent, framework="numpy")
    arr = first["u8.prime"]
    assert not arr.flags.owndata  # a view over the store's mapping, not a copy
    assert arr.flags.writeable  # like safetensors.numpy.load_file
    before = arr.copy()
    arr[:] = 0
    again = modeldist.load(all_dtypes_file.parent, framework="numpy")
    assert np.array_equal(again["u8.prime"], before)
    digest, = [d.name for d in completed_models(isolated_store)]
    m = Store(isolated_store).manifest(digest)
    t, = [t for t in m.tensors if t.name == "u8.prime"]
    data = (isolated_store / digest / t.file).read_bytes()[t.start:t.end]
    assert data == before.tobytes()


# =============================================================================================
# sharded models


@pytest.fixture
def sharded(tmp_path) -> Path:
    return write_sharded(tmp_path / "work" / "model", 3)


def shard_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("model-*-of-*.safetensors"))


def test_sharded_loads_as_one_dict(sharded):
    ref: dict[str, torch.Tensor] = {}
    for shard in shard_files(sharded):
        part = safetensors.torch.load_file(str(shard))
        assert not set(part) & set(ref)
        ref.update(part)
    assert len(shard_files(sharded)) == 3
    got = modeldist.load(sharded, framework="pt")
    assert set(got) == set(ref)
    for name, t in ref.items():
        assert_same_pt(got[name], t, name)
    got_np = modeldist.load(sharded, framework="numpy")
    assert set(got_np) == set(ref)
    for name, t in ref.items():
        assert got_np[name].tobytes() == raw_bytes(t)
        assert got_np[name].shape == tuple(t.shape)


def test_sharded_manifest_lists_the_shards(sharded):
    m = Manifest.from_source(str(sharded))
    shards = [p.name for p in shard_files(sharded)]
    assert list(m.weight_files) == shards
    kinds = {f.path: f.kind for f in m.files}
    assert kinds["model.safetensors.index.json"] == "index"
    assert all(kinds[s] == "safetensors" for s in shards)
    wmap = json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    assert {t.name: t.file for t in m.state_dict_tensors()} == wmap


def test_index_decides_the_weight_files(sharded):
    """A stray safetensors file beside the shards (not in the index) is not part of the state dict."""
    safetensors.torch.save_file({"model.layers.0.weight": torch.zeros(3)}, str(sharded / "consolidated.safetensors"))
    m = Manifest.from_source(str(sharded))
    assert "consolidated.safetensors" in m.file_map
    assert "consolidated.safetensors" not in m.weight_files
    got = modeldist.load(sharded, framework="pt")
    ref = {}
    for shard in shard_files(sharded):
        ref.update(safetensors.torch.load_file(str(shard)))
    assert set(got) == set(ref)
    for name, t in ref.items():
        assert_same_pt(got[name], t, name)


def _edit_index(folder: Path, fn) -> None:
    path = folder / "model.safetensors.index.json"
    obj = json.loads(path.read_text())
    fn(obj, folder)
    path.write_text(json.dumps(obj, indent=2))


def _move_to_other_shard(obj, folder):
    wmap = obj["weight_map"]
    first = next(iter(wmap))
    others = sorted(set(wmap.values()) - {wmap[first]})
    wmap[first] = others[-1]


def _ghost(obj, folder):
    obj["weight_map"]["model.ghost.weight"] = next(iter(obj["weight_map"].values()))


def _missing_shard(obj, folder):
    obj["weight_map"][next(iter(obj["weight_map"]))] = "model-00004-of-00003.safetensors"


def _deleted_shard(obj, folder):
    (folder / sorted(set(obj["weight_map"].values()))[1]).unlink()


def _set_first(value):
    def edit(obj, folder):
        obj["weight_map"][next(iter(obj["weight_map"]))] = value(folder) if callable(value) else value
    return edit


def _absolute(folder: Path) -> str:
    return str(folder.parent / "abs" / "path.safetensors")


BAD_INDEXES = {
    "tensor_not_in_its_shard": _move_to_other_shard,
    "tensor_in_no_shard": _ghost,
    "shard_not_present": _missing_shard,
    "shard_deleted": _deleted_shard,
    "dotdot": _set_first("../x.safetensors"),
    "dotdot_nested": _set_first("sub/../../x.safetensors"),
    "dotdot_deep": _set_first("../../../../../../../../tmp/x.safetensors"),
    "absolute_literal": _set_first("/abs/path.safetensors"),
    "absolute_in_tmp": _set_first(_absolute),
    "backslash": _set_first("..\\x.safetensors"),
    "nul": _set_first("x.safetensors\x00.json"),
    "empty_name": _set_first(""),
    "shard_name_not_string": _set_first(123),
    "empty_weight_map": lambda obj, folder: obj.__setitem__("weight_map", {}),
    "weight_map_list": lambda obj, folder: obj.__setitem__("weight_map", [["a", "b"]]),
    "no_weight_map": lambda obj, folder: obj.pop("weight_map"),
}


@pytest.mark.parametrize("case", sorted(BAD_INDEXES))
def test_bad_index_is_a_manifest_error(case, sharded, tmp_path, isolated_store):
    _edit_index(sharded, BAD_INDEXES[case])
    before = all_paths(tmp_path.parent, skip=isolated_store)
    for call in (lambda: Manifest.from_source(str(sharded)), lambda: modeldist.load(sharded)):
        t0 = time.monotonic()
        with pytest.raises(ManifestError):
            call()
        assert time.monotonic() - t0 < FAST
    assert completed_models(isolated_store) == []
    assert all_paths(tmp_path.parent, skip=isolated_store) == before
    for above in [sharded.parent, tmp_path, tmp_path.parent]:
        assert not list(above.glob("**/x.safetensors"))
    assert not Path(_absolute(sharded)).exists()
    assert not Path("/abs/path.safetensors").exists()


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'{"weight_map": {"a": "b", "a": "c"}}', b"\xff\xfe{}",
                                 b'{"weight_map": {"a": NaN}}'])
def test_unparseable_index_is_a_manifest_error(raw, sharded, isolated_store):
    (sharded / "model.safetensors.index.json").write_bytes(raw)
    with pytest.raises(ManifestError):
        Manifest.from_source(str(sharded))
    with pytest.raises(ManifestError):
        modeldist.load(sharded)
    assert completed_models(isolated_store) == []


def test_index_in_a_subfolder_names_shards_relative_to_itself(tmp_path):
    write_sharded(tmp_path / "model" / "sub", 2)
    m = Manifest.from_source(str(tmp_path / "model"))
    assert all(w.startswith("sub/model-") for w in m.weight_files)
    got = modeldist.load(tmp_path / "model", framework="pt")
    ref = {}
    for shard in shard_files(tmp_path / "model" / "sub"):
        ref.update(safetensors.torch.load_file(str(shard)))
    assert set(got) == set(ref)


# =============================================================================================
# malformed safetensors files, derived from a real one


def _base_file() -> bytes:
    rng = np.random.default_rng(3)
    return safetensors.numpy.save(
        {
            "alpha": rng.standard_normal((2, 3)).astype(np.float32),
            "beta": np.arange(4, dtype=np.int64),
            "gamma": np.arange(5, dtype=np.uint8),
            "abcdef": np.ones(3, dtype=np.float16),
        },
        metadata={"format": "np", "note": "zzzzzz"},
    )


BASE = _base_file()


def _header_len(raw: bytes) -> int:
    return struct.unpack("<Q", raw[:8])[0]


def _in_data_order(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


def _edit(fn):
    """A case that edits the parsed header dict (and may return new data)."""
    def make(raw: bytes) -> bytes:
        header, data = split_safetensors(raw)
        out = fn(header, data)
        return join_safetensors(header, data if out is None else out)
    return make


def _set(name: str, key: str, value):
    def fn(header, data):
        header[name][key] = value
    return _edit(fn)


def _drop(name: str, key: str):
    def fn(header, data):
        del header[name][key]
    return _edit(fn)


def _overlap(header, data):
    second = _in_data_order(header)[1]
    b, e = header[second]["data_offsets"]
    header[second]["data_offsets"] = [b - 2, e - 2]


def _alias(header, data):
    header["alias"] = dict(header[_in_data_order(header)[0]])


def _past_end(header, data):
    last = _in_data_order(header)[-1]
    info = header[last]
    b, e = info["data_offsets"]
    bits = DTYPE_BITS[info["dtype"]] // 8
    info["shape"] = [(e - b) // bits + 8]
    info["data_offsets"] = [b, e + 8 * bits]


def _begin_past_end(header, data):
    first = _in_data_order(header)[0]
    b, e = header[first]["data_offsets"]
    header[first]["data_offsets"] = [len(data) + 64, len(data) + 64 + (e - b)]


def _gap(header, data):
    order = _in_data_order(header)
    cut = header[order[0]]["data_offsets"][1]
    for name in order[1:]:
        b, e = header[name]["data_offsets"]
        header[name]["data_offsets"] = [b + 8, e + 8]
    return data[:cut] + bytes(8) + data[cut:]


def _leading_gap(header, data):
    for name in _in_data_order(header):
        b, e = header[name]["data_offsets"]
        header[name]["data_offsets"] = [b + 8, e + 8]
    return bytes(8) + data


def _end_before_begin(header, data):
    name = _in_data_order(header)[0]
    b, e = header[name]["data_offsets"]
    header[name]["data_offsets"] = [e, b]


def _raw_header(fn):
    """A case that edits the header's text (bytes), keeping the data."""
    def make(raw: bytes) -> bytes:
        n = _header_len(raw)
        return join_safetensors(fn(raw[8:8 + n]), raw[8 + n:])
    return make


def _replace(old: bytes, new: bytes):
    """Same-length byte edit of a real file (the header length stays right)."""
    assert len(old) == len(new)

    def make(raw: bytes) -> bytes:
        assert raw.count(old) == 1, old
        return raw.replace(old, new)
    return make


def _length(value_of):
    def make(raw: bytes) -> bytes:
        return struct.pack("<Q", value_of(raw)) + raw[8:]
    return make


MALFORMED = {
    # truncation and lengths
    "truncated_in_data": lambda raw: raw[:-3],
    "truncated_to_header": lambda raw: raw[:8 + _header_len(raw)],
    "truncated_in_header": lambda raw: raw[:8 + _header_len(raw) // 2],
    "only_the_length": lambda raw: raw[:8],
    "shorter_than_8_bytes": lambda raw: raw[:5],
    "empty_file": lambda raw: b"",
    "header_length_past_end": _length(lambda raw: len(raw)),
    "header_length_over_100MB": _length(lambda raw: MAX_HEADER_BYTES + 1),
    "header_length_2_64_minus_1": _length(lambda raw: (1 << 64) - 1),
    "header_length_zero": _length(lambda raw: 0),
    "header_length_one": _length(lambda raw: 1),
    "header_length_short_by_one": _length(lambda raw: _header_len(raw) - 1),
    "trailing_bytes": lambda raw: raw + bytes(8),
    # not JSON / not an object
    "header_not_json": _raw_header(lambda h: b"{not json at all" + b" " * 4),
    "header_trailing_garbage": _raw_header(lambda h: h.rstrip() + b"}"),
    "header_json_list": _raw_header(lambda h: json.dumps([json.loads(h)]).encode()),
    "header_json_string": _raw_header(lambda h: b'"' + b"x" * 30 + b'"'),
    "header_json_number": _raw_header(lambda h: b"12345678"),
    "header_json_null": _raw_header(lambda h: b"null    "),
    "header_with_bom": _raw_header(lambda h: b"\xef\xbb\xbf" + h),
    "header_nan": _raw_header(lambda h: h.replace(b'"shape":[2,3]', b'"shape":[NaN,3]')),
    "header_infinity": _raw_header(lambda h: h.replace(b'"shape":[2,3]', b'"shape":[Infinity,3]')),
    "header_deep_nesting": _raw_header(lambda h: b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    "header_huge_integer": _raw_header(lambda h: h.replace(b'"shape":[2,3]', b'"shape":[' + b"9" * 5000 + b",3]")),
    "non_utf8_metadata_value": _replace(b'"np"', b'"\xff\xfe"'),
    "non_utf8_tensor_name": _replace(b'"beta"', b'"\xc3\x28\xa0\xa1"'),
    "lone_surrogate_tensor_name": _replace(b'"abcdef"', b'"\\ud800"'),
    "lone_surrogate_metadata_value": _replace(b'"zzzzzz"', b'"\\udc00"'),
    # keys
    "duplicate_tensor_name": _replace(b'"gamma"', b'"alpha"'),
    "duplicate_metadata": _raw_header(lambda h: h.rstrip()[:-1] + b',"__metadata__":{"a":"b"}}'),
    "entry_not_object": _edit(lambda h, d: h.__setitem__("alpha", [1, 2])),
    "entry_null": _edit(lambda h, d: h.__setitem__("alpha", None)),
    # offsets
    "overlapping_offsets": _edit(_overlap),
    "same_offsets_twice": _edit(_alias),
    "offsets_past_end": _edit(_past_end),
    "begin_past_end": _edit(_begin_past_end),
    "gap_between_tensors": _edit(_gap),
    "gap_before_first_tensor": _edit(_leading_gap),
    "end_before_begin": _edit(_end_before_begin),
    "offsets_string": _set("alpha", "data_offsets", "0,24"),
    "offsets_one_number": _set("alpha", "data_offsets", [0]),
    "offsets_three_numbers": _set("alpha", "data_offsets", [0, 24, 24]),
    "offsets_object": _set("alpha", "data_offsets", {"begin": 0, "end": 24}),
    "offsets_null": _set("alpha", "data_offsets", None),
    "offsets_float": _set("alpha", "data_offsets", [0.0, 24.0]),
    "offsets_bool": _set("alpha", "data_offsets", [False, 24]),
    "offsets_negative": _set("alpha", "data_offsets", [-24, 0]),
    "offsets_missing": _drop("alpha", "data_offsets"),
    # shape and dtype
    "shape_times_dtype_too_small": _set("alpha", "shape", [2, 2]),
    "shape_times_dtype_too_big": _set("alpha", "shape", [2, 4]),
    "dtype_wrong_size": _set("alpha", "dtype", "F16"),
    "unknown_dtype": _set("alpha", "dtype", "F128"),
    "dtype_lowercase": _set("alpha", "dtype", "f32"),
    "dtype_number": _set("alpha", "dtype", 32),
    "dtype_null": _set("alpha", "dtype", None),
    "dtype_list": _set("alpha", "dtype", ["F32"]),
    "dtype_object": _set("alpha", "dtype", {"name": "F32"}),
    "dtype_missing": _drop("alpha", "dtype"),
    "negative_dims": _set("alpha", "shape", [-2, -3]),  # product 6: the right size
    "float_dims": _set("alpha", "shape", [2.0, 3]),
    "bool_dim": _set("alpha", "shape", [True, 6]),  # True * 6 == 6
    "string_dim": _set("alpha", "shape", ["2", 3]),
    "null_dim": _set("alpha", "shape", [None, 3]),
    "dim_2_64": _set("alpha", "shape", [1 << 64, 0]),
    "shape_not_list": _set("alpha", "shape", "2x3"),
    "shape_missing": _drop("alpha", "shape"),
    # __metadata__
    "metadata_int_value": _edit(lambda h, d: h.__setitem__("__metadata__", {"format": 1})),
    "metadata_null_value": _edit(lambda h, d: h.__setitem__("__metadata__", {"format": None})),
    "metadata_list_value": _edit(lambda h, d: h.__setitem__("__metadata__", {"format": ["np"]})),
    "metadata_nested": _edit(lambda h, d: h.__setitem__("__metadata__", {"format": {"a": "b"}})),
    "metadata_not_object": _edit(lambda h, d: h.__setitem__("__metadata__", ["format", "np"])),
    "metadata_string": _edit(lambda h, d: h.__setitem__("__metadata__", "np")),
}

def test_base_file_and_unedited_rewrite_are_valid(tmp_path):
    """The helpers themselves do not break a file: every failure below comes from its edit."""
    for i, raw in enumerate([BASE, _edit(lambda h, d: None)(BASE), _raw_header(lambda h: h)(BASE)]):
        path = tmp_path / f"ok{i}" / "model.safetensors"
        path.parent.mkdir()
        path.write_bytes(raw)
        ref = safetensors.numpy.load_file(str(path))
        got = modeldist.load(str(path))
        assert set(got) == set(ref)
        for name, a in ref.items():
            assert got[name].tobytes() == a.tobytes() and got[name].dtype == a.dtype


@pytest.fixture(params=sorted(MALFORMED))
def malformed(request, tmp_path) -> tuple[str, Path]:
    raw = MALFORMED[request.param](BASE)
    assert raw != BASE
    path = tmp_path / "bad" / "model.safetensors"
    path.parent.mkdir()
    path.write_bytes(raw)
    return request.param, path


def test_malformed_file_is_a_manifest_error(malformed, isolated_store):
    case, path = malformed
    for source in (str(path), str(path.parent)):
        t0 = time.monotonic()
        with pytest.raises(ManifestError):
            Manifest.from_source(source)
        assert time.monotonic() - t0 < FAST, f"{case}: from_source too slow"
        t0 = time.monotonic()
        with pytest.raises(ManifestError):
            modeldist.load(source)
        assert time.monotonic() - t0 < FAST, f"{case}: load too slow"
    assert completed_models(isolated_store) == []


def test_malformed_file_is_also_refused_by_safetensors(malformed):
    """Sanity of the cases: the reference implementation (Rust safetensors) refuses every one too."""
    case, path = malformed
    with pytest.raises(Exception):
        with safetensors.safe_open(str(path), "np") as f:
            for k in f.keys():
                f.get_slice(k)


# =============================================================================================
# parser properties (hypothesis)

_NP_DTYPES = [np.dtype(d) for d in ["bool", "uint8", "int8", "int16", "uint16", "int32", "uint32", "int64",
                                    "uint64", "float16", "float32", "float64", "complex64"]]
_NP_DTYPES += [np.dtype(ml_dtypes.bfloat16), np.dtype(ml_dtypes.float8_e4m3fn), np.dtype(ml_dtypes.float8_e5m2)]

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12).filter(
    lambda s: s != "__metadata__")


@st.composite
def arrays(draw):
    dt = draw(st.sampled_from(_NP_DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))
    n = math.prod(shape) * dt.itemsize
    raw = draw(st.binary(min_size=n, max_size=n))
    if dt == np.dtype(bool):
        raw = bytes(b & 1 for b in raw)
    return np.frombuffer(raw, dtype=np.uint8).view(dt).reshape(shape) if n else np.zeros(shape, dtype=dt)


state_dicts = st.dictionaries(names, arrays(), max_size=6)
metadatas = st.none() | st.dictionaries(names, st.text(max_size=10), max_size=3)


def _serialise(tensors, metadata) -> bytes:
    return safetensors.numpy.save(tensors, metadata=metadata)


def _parse_file(raw: bytes):
    """header_length + parse_safetensors_header over a whole file's bytes."""
    n = header_length(raw[:8], len(raw), "f")
    return n, parse_safetensors_header(raw[8:8 + n], len(raw), "f")


def _check_parse_result(raw: bytes, n: int, entries, metadata) -> None:
    """Post-conditions of any successful parse: tensors tile the data region exactly."""
    cursor = 8 + n
    for t in entries:
        assert t.start == cursor and t.end >= t.start
        assert math.prod(t.shape) * DTYPE_BITS[t.dtype] == 8 * t.nbytes
        assert all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in t.shape)
        cursor = t.end
    assert cursor == len(raw)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hypothesis")


@HYPO
@given(tensors=state_dicts, metadata=metadatas)
def test_parser_recovers_what_safetensors_wrote(tensors, metadata, scratch):
    raw = _serialise(tensors, metadata)
    try:
        safetensors.deserialize(raw)
    except Exception:  # noqa: BLE001
        # safetensors 0.8 writes '{},"__metadata__":{}}' for save({}, metadata={}): a file it cannot
        # read back itself. modeldist must refuse it too, cleanly.
        with pytest.raises(ManifestError):
            _parse_file(raw)
        return
    n, (entries, meta) = _parse_file(raw)
    _check_parse_result(raw, n, entries, meta)
    assert meta == (metadata or {})
    assert {t.name for t in entries} == set(tensors)
    path = scratch / "case.safetensors"
    path.write_bytes(raw)
    by_name = {t.name: t for t in entries}
    with safetensors.safe_open(str(path), "np") as f:
        assert set(f.keys()) == set(tensors)
        assert (f.metadata() or {}) == meta
        starts = [by_name[k].start for k in f.offset_keys()]
        assert starts == sorted(starts)
        for name, arr in tensors.items():
            t = by_name[name]
            sl = f.get_slice(name)
            assert t.dtype == sl.get_dtype()
            assert list(t.shape) == list(sl.get_shape()) == list(arr.shape)
            assert t.file == "f"
            assert raw[t.start:t.end] == arr.tobytes()
            if t.dtype not in ML_DTYPES:
                assert raw[t.start:t.end] == f.get_tensor(name).tobytes()


def _timed(fn, *args):
    t0 = time.monotonic()
    try:
        return fn(*args)
    except ManifestError:
        return None
    finally:
        assert time.monotonic() - t0 < 2 * FAST


@HYPO
@given(first8=st.binary(max_size=12), file_size=st.integers(0, 1 << 64))
def test_header_length_fuzz(first8, file_size):
    n = _timed(header_length, first8, file_size)
    if n is not None:
        assert 2 <= n <= MAX_HEADER_BYTES and 8 + n <= file_size


@HYPO
@given(header=st.binary(max_size=600), extra=st.integers(0, 1 << 40))
def test_parse_arbitrary_bytes_only_raises_manifest_error(header, extra):
    _timed(parse_safetensors_header, header, 8 + len(header) + extra)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@HYPO
@given(obj=json_values, extra=st.integers(0, 64))
def test_parse_arbitrary_json_only_raises_manifest_error(obj, extra):
    header = json.dumps(obj).encode()
    _timed(parse_safetensors_header, header, 8 + len(header) + extra)


# near-valid headers: the right keys with plausible or junk values, to reach the deep checks
junk_dims = st.integers(-3, 6) | st.booleans() | st.floats(-1, 6) | st.none() | st.text(max_size=2)
entries_st = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(sorted(DTYPE_BITS)) | json_values,
        "shape": st.lists(st.integers(0, 6), max_size=3) | st.lists(junk_dims, max_size=3) | json_values,
        "data_offsets": st.lists(st.integers(0, 80), min_size=2, max_size=2) | json_values,
        "extra": json_values,
    },
)


@HYPO
@given(obj=st.dictionaries(st.sampled_from(["a", "b", "c", "__metadata__"]), entries_st | json_values, max_size=4),
       extra=st.integers(0, 100))
def test_parse_near_valid_headers_only_raises_manifest_error(obj, extra):
    header = json.dumps(obj).encode()
    _timed(parse_safetensors_header, header, 8 + len(header) + extra)


mutations = st.lists(
    st.tuples(st.sampled_from(["flip", "set", "delete", "insert", "truncate"]), st.integers(0, 1 << 16),
              st.integers(0, 255), st.binary(min_size=1, max_size=4)),
    min_size=1, max_size=4)


def _mutate(raw: bytes, ops) -> bytes:
    b = bytearray(raw)
    for op, pos, byte, blob in ops:
        if not b:
            break
        i = pos % len(b)
        if op == "flip":
            b[i] ^= 1 << (byte % 8)
        elif op == "set":
            b[i] = byte
        elif op == "delete":
            del b[i:i + 1 + byte % 4]
        elif op == "insert":
            b[i:i] = blob
        else:
            del b[i:]
    return bytes(b)


@HYPO
@given(tensors=state_dicts, metadata=metadatas, ops=mutations, header_only=st.booleans())
def test_mutated_files_never_accepted_when_safetensors_refuses(tensors, metadata, ops, header_only):
    """Byte mutations of real files: only ManifestError, and never looser than safetensors itself."""
    raw = _serialise(tensors, metadata)
    if header_only:  # aim the mutations at the header, where the parser works
        n = _header_len(raw)
        ops = [(op, 8 + pos % max(n, 1), byte, blob) for op, pos, byte, blob in ops]
    bad = _mutate(raw, ops)
    t0 = time.monotonic()
    try:
        n, (entries, meta) = _parse_file(bad)
    except ManifestError:
        return
    finally:
        assert time.monotonic() - t0 < 2 * FAST
    _check_parse_result(bad, n, entries, meta)
    ref = safetensors.deserialize(bad)  # must not raise: modeldist accepted the file
    assert {name: (info["dtype"], list(info["shape"])) for name, info in ref} == {
        t.name: (t.dtype, list(t.shape)) for t in entries}
    by_name = {t.name: t for t in entries}
    for name, info in ref:
        assert bytes(info["data"]) == bad[by_name[name].start:by_name[name].end]


@HYPO
@given(tensors=state_dicts, path=st.lists(st.sampled_from(["a", "b", "c", "__metadata__", "dtype", "shape",
                                                            "data_offsets", 0, 1]), min_size=1, max_size=3),
       value=json_values)
def test_json_level_mutations_only_raise_manifest_error(tensors, path, value):
    raw = _serialise(tensors, None)
    header, data = split_safetensors(raw)
    node = header
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) and isinstance(key, str) else (
            node[key] if isinstance(node, list) and isinstance(key, int) and key < len(node) else None)
        if node is None:
            break
    last = path[-1]
    if isinstance(node, dict) and isinstance(last, str):
        node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and last < len(node):
        node[last] = value
    else:
        header[str(last)] = value
    bad = join_safetensors(header, data)
    t0 = time.monotonic()
    try:
        n, (entries, meta) = _parse_file(bad)
    except ManifestError:
        return
    finally:
        assert time.monotonic() - t0 < 2 * FAST
    _check_parse_result(bad, n, entries, meta)


path_chars = st.sampled_from(["a", "b", ".", "..", "/", "\\", "\x00", ":", "é", " ", "-", "C:"])


@HYPO
@given(parts=st.lists(path_chars, max_size=12))
def test_normalize_relpath_properties(parts):
    path = "".join(parts)
    components = path.split("/")
    try:
        out = normalize_relpath(path)
    except ManifestError:
        return
    assert not path.startswith("/"), f"{path!r} is absolute but was accepted"
    assert ".." not in components, f"{path!r} has '..' but was accepted"
    assert isinstance(out, str) and out
    assert not out.startswith("/")
    assert ".." not in out.split("/") and "." not in out.split("/") and "" not in out.split("/")
    assert "\\" not in out and "\x00" not in out
    assert normalize_relpath(out) == out


@HYPO
@given(before=st.lists(st.sampled_from(["a", "b.safetensors", ".", "x"]), max_size=3),
       after=st.lists(st.sampled_from(["a", "b.safetensors", ".", "x"]), max_size=3), absolute=st.booleans())
def test_normalize_relpath_refuses_dotdot_and_absolute(before, after, absolute):
    path = "/".join([*before, "..", *after])
    with pytest.raises(ManifestError):
        normalize_relpath(path)
    if absolute:
        with pytest.raises(ManifestError):
            normalize_relpath("/" + "/".join([*before, "x", *after]))


@pytest.mark.parametrize("bad", ["", "/", "/etc/passwd", "//server/share", "..", "../x", "a/../../x", "a/..", ".",
                                 "./", "a\\b", "C:/x", "c:x", "x\x00y", None, 3, b"a", ["a"], "a" * 5000])
def test_normalize_relpath_refuses(bad):
    with pytest.raises(ManifestError):
        normalize_relpath(bad)


@pytest.mark.parametrize("given_, expected", [("a", "a"), ("./a", "a"), ("a//b", "a/b"), ("a/./b", "a/b"),
                                              ("sub/model.safetensors", "sub/model.safetensors")])
def test_normalize_relpath_normalises(given_, expected):
    assert normalize_relpath(given_) == expected


# =============================================================================================
# manifest JSON


@pytest.fixture
def manifest(sharded) -> Manifest:
    (sharded / "README.md").write_text("# a model\n")
    (sharded / "empty.txt").write_bytes(b"")
    return Manifest.from_source(str(sharded), piece_size=4096)


def test_to_json_is_stable(manifest, sharded):
    a = manifest.to_json()
    assert a == manifest.to_json()
    again = Manifest.from_source(str(sharded), piece_size=4096)
    assert again.to_json() == a and again.digest == manifest.digest
    obj = json.loads(a)
    assert json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() == a
    assert obj["digest"] == manifest.digest and len(manifest.digest) == 64


def test_from_json_round_trip(manifest):
    back = Manifest.from_json(manifest.to_json())
    assert back == manifest
    assert back.digest == manifest.digest
    assert back.to_json() == manifest.to_json()
    assert Manifest.from_json(manifest.to_json().decode()) == manifest
    full = manifest.with_digests([f"{i:064x}" for i in range(len(manifest.pieces))])
    assert full.digest == manifest.digest  # piece digests are content, not identity
    assert Manifest.from_json(full.to_json()) == full


def test_store_manifest_round_trips(sharded, isolated_store):
    modeldist.load(sharded)
    digest, = [d.name for d in completed_models(isolated_store)]
    raw = (isolated_store / digest / "manifest.json").read_bytes()
    m = Manifest.from_json(raw)
    assert m.digest == digest and m.complete
    assert m.to_json() == raw


def _first_st(d):
    return next(i for i, f in enumerate(d["files"]) if f["kind"] == "safetensors")


def _split_piece(d):
    k, p = next((i, p) for i, p in enumerate(d["pieces"]) if p[2] > 1024)
    d["pieces"][k:k + 1] = [[p[0], p[1], 1024, None], [p[0], p[1] + 1024, p[2] - 1024, None]]


def _merge_pieces(d):
    k = next(i for i, (a, b) in enumerate(zip(d["pieces"], d["pieces"][1:])) if a[0] == b[0])
    a, b = d["pieces"][k], d["pieces"][k + 1]
    d["pieces"][k:k + 2] = [[a[0], a[1], a[2] + b[2], None]]


def _interleave(d):
    by_file: dict[str, list] = {}
    for p in d["pieces"]:
        by_file.setdefault(p[0], []).append(p)
    a, b = [f for f, ps in by_file.items() if len(ps) >= 2][:2]
    out = [p for p in d["pieces"] if p[0] not in (a, b)]
    out += [by_file[a][0], by_file[b][0], *by_file[a][1:], *by_file[b][1:]]
    d["pieces"] = out


def _rename(new_path: str, old_path: str = "README.md"):
    """Rename one file everywhere it is named (files, pieces, tensors, weight_files): consistent."""
    def edit(d):
        for f in d["files"]:
            if f["path"] == old_path:
                f["path"] = new_path
        for p in d["pieces"]:
            if p[0] == old_path:
                p[0] = new_path
        for t in d["tensors"]:
            if t["file"] == old_path:
                t["file"] = new_path
        d["weight_files"] = [new_path if w == old_path else w for w in d["weight_files"]]
        d["files"].sort(key=lambda f: f["path"])
    return edit


def _tensor_outside(d):
    t = d["tensors"][0]
    size = next(f["size"] for f in d["files"] if f["path"] == t["file"])
    n = t["end"] - t["start"]
    t["start"], t["end"] = size, size + n


TAMPERED = {
    "digest_changed": lambda d: d.__setitem__("digest", "0" * 64),
    "sha256_changed": lambda d: d["files"][0].__setitem__("sha256", "a" * 64),
    "tensor_renamed": lambda d: d["tensors"][0].__setitem__("name", "evil"),
    "file_size_changed": lambda d: d["files"][_first_st(d)].__setitem__("size", d["files"][_first_st(d)]["size"] + 1),
    "piece_shortened": lambda d: d["pieces"][0].__setitem__(2, d["pieces"][0][2] - 1),
    "piece_dropped": lambda d: d["pieces"].pop(),
    "piece_added": lambda d: d["pieces"].append([d["pieces"][-1][0], 1 << 30, 4096, None]),
    "piece_offset_shifted": lambda d: d["pieces"][1].__setitem__(1, d["pieces"][1][1] + 1),
    "piece_unknown_file": lambda d: d["pieces"][0].__setitem__(0, "other.safetensors"),
    "piece_longer_than_piece_size": _merge_pieces,
    "piece_size_changed": lambda d: d.__setitem__("piece_size", 8192),
    "piece_split_in_two": _split_piece,
    "pieces_interleaved": _interleave,
    "piece_digest_not_hex": lambda d: d["pieces"][0].__setitem__(3, "Z" * 64),
    "piece_size_zero": lambda d: d.__setitem__("piece_size", 0),
    "tensor_outside_its_file": _tensor_outside,
    "tensor_end_past_file": lambda d: d["tensors"][0].__setitem__("end", 1 << 40),
    "tensor_unknown_file": lambda d: d["tensors"][0].__setitem__("file", "nope.safetensors"),
    "tensor_shape_mismatch": lambda d: d["tensors"][0].__setitem__("shape", [1, 2, 3]),
    "tensor_unknown_dtype": lambda d: d["tensors"][0].__setitem__("dtype", "F128"),
    "file_path_dotdot": _rename("../x.safetensors"),
    "file_path_dotdot_inside": _rename("a/../../x.safetensors"),
    "file_path_absolute": _rename("/etc/passwd"),
    "file_path_backslash": _rename("..\\x"),
    "file_path_reserved_complete_marker": _rename(COMPLETE_MARKER),
    "file_path_reserved_state_dir": _rename(".modeldist/pieces"),
    "file_path_reserved_manifest": _rename("manifest.json"),
    "tensor_file_dotdot": lambda d: d["tensors"][0].__setitem__("file", "../x.safetensors"),
    "piece_file_dotdot": lambda d: d["pieces"][0].__setitem__(0, "../x.safetensors"),
    "weight_file_dotdot": lambda d: d["weight_files"].__setitem__(0, "../x.safetensors"),
    "weight_file_unknown": lambda d: d["weight_files"].append("nope.safetensors"),
    "file_listed_twice": lambda d: d["files"].append(dict(d["files"][0])),
    "file_size_negative": lambda d: d["files"][0].__setitem__("size", -1),
    "file_size_bool": lambda d: d["files"][0].__setitem__("size", True),
    "file_kind_unknown": lambda d: d["files"][0].__setitem__("kind", "exe"),
    "schema_unknown": lambda d: d.__setitem__("schema", 2),
    "files_missing": lambda d: d.pop("files"),
    "pieces_not_list": lambda d: d.__setitem__("pieces", {"0": 1}),
    "piece_too_short": lambda d: d["pieces"].__setitem__(0, ["model.safetensors"]),
}


#: Edits that only change the identity: the digest is what catches them.
IDENTITY_ONLY = {"digest_changed", "sha256_changed", "tensor_renamed"}


@pytest.mark.parametrize("digest", ["kept", "omitted"])
@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_tampered_manifest_json_is_refused(case, digest, manifest):
    """Manifests cross the network. ``kept``: the sender left the old digest in place. ``omitted``:
    no digest field (accepted by from_json, and equivalent to a sender who recomputed the digest,
    which is a plain blake3 anyone can compute): the structural checks alone must refuse it."""
    if digest == "omitted" and case in IDENTITY_ONLY:
        pytest.skip("a consistent manifest of another model, once its digest is recomputed")
    d = json.loads(manifest.to_json())
    TAMPERED[case](d)
    if digest == "omitted":
        d.pop("digest", None)
    raw = json.dumps(d).encode()
    assert raw != manifest.to_json()
    with pytest.raises(ManifestError):
        Manifest.from_json(raw)


def test_manifest_without_digest_field_is_accepted(manifest):
    d = json.loads(manifest.to_json())
    del d["digest"]
    assert Manifest.from_json(json.dumps(d)) == manifest


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b'{"schema": 1, "files": NaN}', b"\xff",
                                 b'{"schema": 1, "schema": 1}'])
def test_unparseable_manifest_json_is_refused(raw):
    with pytest.raises(ManifestError):
        Manifest.from_json(raw)


# =============================================================================================
# piece layout

MiB = 1 << 20


@pytest.mark.parametrize("total, expected", [
    (0, MiB), (1, MiB), (10 * MiB, MiB), (1000 * MiB, MiB), (1 << 30, MiB),
    (3 << 30, 4 * MiB), (4 << 30, 4 * MiB), (6 << 30, 8 * MiB), (16 << 30, 16 * MiB),
    (100 * 10**9, 64 * MiB), (64 << 30, 64 * MiB), (1 << 40, 64 * MiB), (1 << 50, 64 * MiB),
])
def test_default_piece_size_table(total, expected):
    assert default_piece_size(total) == expected


@HYPO
@given(total=st.integers(0, 1 << 55))
def test_default_piece_size_properties(total):
    ps = default_piece_size(total)
    assert MIN_PIECE == MiB and MAX_PIECE == 64 * MiB
    assert MIN_PIECE <= ps <= MAX_PIECE
    assert ps & (ps - 1) == 0  # a power of two
    target = total / 1000
    if MIN_PIECE * 2 <= target <= MAX_PIECE / 2:
        assert target / math.sqrt(2) - 1 <= ps <= target * math.sqrt(2) + 1  # nearest power of two
    if total >= 1:
        assert default_piece_size(total - 1) <= ps  # monotone


def _assert_tiles(m: Manifest) -> None:
    ps = m.piece_size
    i = 0
    for f in m.files:
        count = -(-f.size // ps)
        if f.size == 0:
            assert f.path not in m.first_piece
        else:
            assert m.first_piece[f.path] == i
        for k in range(count):
            p = m.pieces[i]
            assert p.index == i and p.file == f.path
            assert p.offset == k * ps
            assert p.length == (ps if k < count - 1 else f.size - k * ps)
            assert p.length >= 1
            i += 1
    assert i == len(m.pieces)
    for f in m.files:
        assert sum(p.length for p in m.pieces if p.file == f.path) == f.size


def _assert_tensor_cover(m: Manifest) -> None:
    for t in m.tensors:
        idx = m.pieces_of_tensor(t)
        if t.nbytes == 0:
            assert len(idx) == 0, t.name
            continue
        pieces = [m.pieces[i] for i in idx]
        assert all(p.file == t.file for p in pieces), t.name
        assert pieces[0].offset <= t.start < pieces[0].offset + pieces[0].length, t.name
        assert pieces[-1].offset < t.end <= pieces[-1].offset + pieces[-1].length, t.name
        for a, b in zip(pieces, pieces[1:]):
            assert a.offset + a.length == b.offset, t.name


@pytest.mark.parametrize("piece_size", [4096, 8192, 65536, None])
def test_pieces_tile_files_and_cover_tensors(piece_size, sharded, tmp_path):
    write_all_dtypes(sharded)  # + model.safetensors, not in the index: a file of its own
    (sharded / "empty.txt").write_bytes(b"")
    (sharded / "README.md").write_text("x" * 5000)
    m = Manifest.from_source(str(sharded), piece_size=piece_size)
    assert m.piece_size == (piece_size or default_piece_size(m.total_size))
    assert m.total_size == sum((sharded / f.path).stat().st_size for f in m.files)
    _assert_tiles(m)
    _assert_tensor_cover(m)
    empty = [t for t in m.tensors if t.nbytes == 0]
    assert empty  # the all-dtypes file has empty tensors
    for t in m.tensors:
        assert 0 < m.file_map[t.file].data_start <= t.start <= t.end <= m.file_map[t.file].size


def test_piece_size_from_config_env(sharded, monkeypatch):
    monkeypatch.setenv("MODELDIST_PIECE_SIZE", "8KiB")
    m = Manifest.from_source(str(sharded))
    assert m.piece_size == 8192
    _assert_tiles(m)


def test_pieces_of_range():
    m = Manifest(files=(), tensors=(), pieces=(), piece_size=4096)
    assert list(m.pieces_of_range("x", 5, 5)) == []


# =============================================================================================
# a 2 GB model


@pytest.mark.slow
def test_two_gigabyte_model(tmp_path, isolated_store):
    model = write_big(tmp_path / "big", 2 * 10**9)
    try:
        files = sorted(model.glob("*.safetensors"))
        assert len(files) >= 4
        m = Manifest.from_source(str(model))
        assert m.piece_size == default_piece_size(m.total_size) == 2 * MiB
        assert m.total_size == sum(f.stat().st_size for f in files) >= 2 * 10**9 - 2048
        t0 = time.monotonic()
        tensors = modeldist.load(model, framework="pt")
        elapsed = time.monotonic() - t0
        assert len(tensors) == len(m.tensors)
        assert {t.dtype for t in m.tensors} == {"F16", "BF16"}
        rng = random.Random(0)
        names = [t.name for t in m.tensors]
        sample = {names[0], names[-1], *rng.sample(names, 4)}
        by_name = {t.name: t for t in m.tensors}
        for name in sorted(sample):
            with safetensors.safe_open(str(model / by_name[name].file), "pt") as f:
                assert_same_pt(tensors[name], f.get_tensor(name), name)
        digest = m.digest
        folder = isolated_store / digest
        assert (folder / COMPLETE_MARKER).exists()
        for f in files:
            assert (folder / f.name).stat().st_size == f.stat().st_size
        staged = Store(isolated_store).manifest(digest)
        assert staged.complete and staged.digest == digest
        del tensors
        # staged once: a second load reads nothing from the origin and is fast
        t0 = time.monotonic()
        again = modeldist.load(model, framework="numpy")
        assert time.monotonic() - t0 < max(5.0, elapsed / 2)
        assert len(again) == len(m.tensors)
        del again
    finally:  # 4 GB on disk: do not leave it for pytest's keep-three-runs policy
        shutil.rmtree(model, ignore_errors=True)
        shutil.rmtree(isolated_store, ignore_errors=True)
