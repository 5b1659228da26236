"""Synthetic models for tests, written with the real ``safetensors`` library (never by hand).

- ``write_all_dtypes(dir)``: one file with a tensor of every dtype this torch can save, 0-d, empty and
  odd-shaped tensors among them.
- ``write_sharded(dir, n_shards)``: a sharded model (shards + ``model.safetensors.index.json``) written
  by ``huggingface_hub.save_torch_state_dict``.
- ``write_big(dir, total_bytes)``: a model of about ``total_bytes`` of F16/BF16 weights in several
  files, written one shard at a time so memory stays at about one shard.

Malformed files are *derived* from real ones: ``split_safetensors`` takes a file written by
safetensors apart, ``join_safetensors`` puts an edited header back in front of the data.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

__all__ = [
    "TORCH_DTYPES",
    "write_all_dtypes",
    "write_sharded",
    "write_big",
    "split_safetensors",
    "join_safetensors",
    "raw_bytes",
]

# safetensors dtype name -> torch attribute; only those this torch has are used.
_CANDIDATES = [
    ("BOOL", "bool"), ("U8", "uint8"), ("I8", "int8"), ("I16", "int16"), ("U16", "uint16"),
    ("I32", "int32"), ("U32", "uint32"), ("I64", "int64"), ("U64", "uint64"), ("F16", "float16"),
    ("BF16", "bfloat16"), ("F32", "float32"), ("F64", "float64"), ("C64", "complex64"),
    ("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("F8_E8M0", "float8_e8m0fnu"),
    ("F8_E4M3FNUZ", "float8_e4m3fnuz"), ("F8_E5M2FNUZ", "float8_e5m2fnuz"),
]


def _saveable(attr: str) -> bool:
    dt = getattr(torch, attr, None)
    if dt is None:
        return False
    try:
        from safetensors.torch import save

        save({"x": torch.zeros(1, dtype=dt)})
    except Exception:  # noqa: BLE001 - this safetensors/torch pair cannot store it
        return False
    return True


#: safetensors dtype name -> torch dtype, for every dtype this torch + safetensors can write.
TORCH_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, attr) for name, attr in _CANDIDATES if _saveable(attr)}

# odd shapes, one per dtype in turn (prime sizes, size-1 axes, a long thin one)
_ODD_SHAPES = [(3, 5, 7), (1,), (17,), (2, 3, 1, 5), (1, 1, 1, 1, 1), (13, 3), (7, 1, 11), (31,), (5, 2, 3)]


def _random(dtype: torch.dtype, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A tensor of random *bits* (NaN payloads, subnormals, negative zeros: all of it)."""
    numel = math.prod(shape)
    if dtype == torch.bool:  # any byte other than 0/1 is not a valid torch bool
        return torch.randint(0, 2, (numel,), generator=gen, dtype=torch.uint8).view(torch.bool).reshape(shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (numel * itemsize,), generator=gen, dtype=torch.uint8)
    return raw.view(dtype).reshape(shape)


def raw_bytes(t: torch.Tensor) -> bytes:
    """The bytes of a tensor as safetensors stores them (C order, little endian)."""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def write_all_dtypes(directory: str | Path, *, seed: int = 0, filename: str = "model.safetensors") -> Path:
    """One safetensors file with, for every dtype: an odd-shaped, a 0-d and an empty (0, 3) tensor.

    Also a (3, 0, 2) empty tensor and a few extra odd shapes. Returns the file's path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for k, (name, dt) in enumerate(TORCH_DTYPES.items()):
        key = name.lower()
        tensors[f"{key}.odd"] = _random(dt, _ODD_SHAPES[k % len(_ODD_SHAPES)], gen)
        tensors[f"{key}.scalar"] = _random(dt, (), gen)
        tensors[f"{key}.empty"] = _random(dt, (0, 3), gen)
    tensors["f32.empty_middle"] = _random(torch.float32, (3, 0, 2), gen)
    tensors["bf16.long"] = _random(torch.bfloat16, (1, 1021), gen)
    tensors["u8.prime"] = _random(torch.uint8, (4099,), gen)
    tensors["i64.cube"] = _random(torch.int64, (5, 5, 5), gen)
    path = directory / filename
    save_file(tensors, str(path), metadata={"format": "pt", "writer": "tests.models"})
    return path


def write_sharded(directory: str | Path, n_shards: int = 3, *, seed: int = 1, tensor_bytes: int = 6000) -> Path:
    """A model in ``n_shards`` shards plus ``model.safetensors.index.json``; returns the folder.

    Two tensors of ``tensor_bytes`` bytes per shard, mixed dtypes, written by huggingface_hub.
    """
    from huggingface_hub import save_torch_state_dict

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    kinds = [torch.float32, torch.bfloat16, torch.int64, torch.float16, torch.uint8, torch.int32]
    state: dict[str, torch.Tensor] = {}
    for i in range(2 * n_shards):
        dt = kinds[i % len(kinds)]
        itemsize = torch.empty((), dtype=dt).element_size()
        if tensor_bytes % itemsize:
            raise ValueError(f"tensor_bytes={tensor_bytes} is not a multiple of {itemsize}")
        n = tensor_bytes // itemsize
        shape = (n // 10, 10) if n % 10 == 0 and i % 2 else (n,)
        state[f"model.layers.{i}.weight"] = _random(dt, shape, gen)
    save_torch_state_dict(state, directory, max_shard_size=2 * tensor_bytes)
    shards = sorted(directory.glob("model-*.safetensors"))
    if len(shards) != n_shards or not (directory / "model.safetensors.index.json").is_file():
        raise RuntimeError(f"huggingface_hub wrote {len(shards)} shards, expected {n_shards}")
    return directory


def write_big(directory: str | Path, total_bytes: int, *, shard_bytes: int = 256 << 20,
              tensor_bytes: int = 64 << 20, seed: int = 2) -> Path:
    """About ``total_bytes`` (rounded down to 2 KiB) of F16/BF16 tensors in ``model-XXXXX.safetensors``
    files of at most ``shard_bytes`` each; one shard in memory at a time. Returns the folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    row = 2048  # bytes per row: 1024 half-precision values
    left = total_bytes - total_bytes % row
    shard = k = 0
    while left > 0:
        state: dict[str, torch.Tensor] = {}
        room = min(shard_bytes, left)
        while room > 0:
            nbytes = min(tensor_bytes, room)
            bits = torch.from_numpy(rng.integers(0, 1 << 16, size=nbytes // 2, dtype=np.uint16))
            dt = torch.float16 if k % 2 == 0 else torch.bfloat16
            state[f"model.layers.{k}.weight"] = bits.view(dt).reshape(nbytes // row, row // 2)
            room -= nbytes
            left -= nbytes
            k += 1
        save_file(state, str(directory / f"model-{shard:05d}.safetensors"), metadata={"format": "pt"})
        del state
        shard += 1
    return directory


# ---------------------------------------------------------------------------------------------
# deriving malformed files from real ones


def split_safetensors(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """A file written by safetensors -> (its header as a dict, its data region)."""
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join_safetensors(header: dict[str, Any] | bytes, data: bytes, *, length: int | None = None) -> bytes:
    """Header (a dict, serialised compactly, or raw bytes) + data -> file bytes.

    ``length`` overrides the 8-byte header length (to lie about it).
    """
    hb = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(hb) if length is None else length) + hb + data
