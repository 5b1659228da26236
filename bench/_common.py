"""Shared helpers of the benchmarks in ``bench/``: synthetic models, machine info, statistics, output.

Models are written with the real ``safetensors`` library (``safetensors.torch.save_file``), one
shard at a time, so peak memory is about two shards whatever the model size.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/x.py` from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from modeldist._fmt import human_bytes as _human_bytes  # noqa: E402
from modeldist.config import parse_size  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20

__all__ = ["parse_size", "make_model", "make_single_file", "machine_info", "median", "summary", "write_json",
           "drop_dir", "warm_page_cache", "read_text", "mount_of", "human_bytes", "human_rate", "human_s", "table", "GIB", "MIB"]


# ----------------------------------------------------------------------------------------------
# synthetic models


def _random_tensor(rng: np.random.Generator, shape: tuple[int, ...], dtype):
    """A torch tensor of ``shape``/``dtype`` filled with random bits (NaNs included: bytes are what count)."""
    import torch

    itemsize = torch.empty((), dtype=dtype).element_size()
    n = int(np.prod(shape)) * itemsize
    raw = np.frombuffer(rng.bytes(n), dtype=np.uint8).copy()  # writable, owned
    return torch.from_numpy(raw).view(dtype).reshape(shape)


def _layer_specs(hidden: int, inter: int, layer: int):
    """Tensors of one transformer-like layer: (name, shape, dtype name). A mix of F16/BF16/F32."""
    attn = "F16" if layer % 2 == 0 else "BF16"
    mlp = "BF16" if layer % 3 else "F32" if layer % 6 == 0 else "F16"
    p = f"model.layers.{layer}"
    return [
        (f"{p}.input_layernorm.weight", (hidden,), "F32"),
        (f"{p}.self_attn.q_proj.weight", (hidden, hidden), attn),
        (f"{p}.self_attn.q_proj.bias", (hidden,), "F32"),
        (f"{p}.self_attn.k_proj.weight", (hidden // 4, hidden), attn),
        (f"{p}.self_attn.k_proj.bias", (hidden // 4,), "F32"),
        (f"{p}.self_attn.v_proj.weight", (hidden // 4, hidden), attn),
        (f"{p}.self_attn.v_proj.bias", (hidden // 4,), "F32"),
        (f"{p}.self_attn.o_proj.weight", (hidden, hidden), attn),
        (f"{p}.post_attention_layernorm.weight", (hidden,), "F32"),
        (f"{p}.mlp.gate_proj.weight", (inter, hidden), mlp),
        (f"{p}.mlp.up_proj.weight", (inter, hidden), mlp),
        (f"{p}.mlp.down_proj.weight", (hidden, inter), mlp),
    ]


_BYTES = {"F16": 2, "BF16": 2, "F32": 4}


def _torch_dtype(name: str):
    import torch

    return {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}[name]


def model_specs(total: int, *, hidden: int | None = None) -> list[tuple[str, tuple[int, ...], str]]:
    """A transformer-shaped list of tensors of about ``total`` bytes (F16/BF16/F32 mixed)."""
    if hidden is None:
        hidden = 2048 if total >= 512 * MIB else 512 if total >= 16 * MIB else 128
    inter = hidden * 11 // 4
    vocab = 32000 if hidden >= 1024 else 4096
    specs = [("model.embed_tokens.weight", (vocab, hidden), "BF16")]
    tail = [("model.norm.weight", (hidden,), "F32"), ("lm_head.weight", (vocab, hidden), "F16")]

    def size(items):
        return sum(int(np.prod(s)) * _BYTES[d] for _, s, d in items)

    layer = 0
    while size(specs) + size(tail) + size(_layer_specs(hidden, inter, layer)) <= total or layer == 0:
        specs.extend(_layer_specs(hidden, inter, layer))
        layer += 1
    return specs + tail


def make_model(folder: str | os.PathLike, total: int, *, shard_size: int = 512 * MIB, seed: int = 0,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write a sharded safetensors model (``model-0000i-of-0000n.safetensors`` + index) of about
    ``total`` bytes into ``folder``; return a description (files, tensors, bytes, dtypes)."""
    import torch  # noqa: F401 - safetensors.torch needs it
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    specs = model_specs(total)
    shards: list[list[tuple[str, tuple[int, ...], str]]] = [[]]
    acc = 0
    for spec in specs:
        nbytes = int(np.prod(spec[1])) * _BYTES[spec[2]]
        if shards[-1] and acc + nbytes > shard_size:
            shards.append([])
            acc = 0
        shards[-1].append(spec)
        acc += nbytes
    n = len(shards)
    weight_map: dict[str, str] = {}
    dtypes: dict[str, int] = {}
    t0 = time.perf_counter()
    for k, shard in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        tensors = {}
        for tname, shape, dt in shard:
            tensors[tname] = _random_tensor(rng, shape, _torch_dtype(dt))
            weight_map[tname] = name
            dtypes[dt] = dtypes.get(dt, 0) + 1
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        del tensors
        log(f"  wrote {name} ({human_bytes((folder / name).stat().st_size)}, {len(shard)} tensors)")
    files = sorted(p for p in folder.glob("*.safetensors"))
    nbytes = sum(p.stat().st_size for p in files)
    index = {"metadata": {"total_size": nbytes}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return {"folder": str(folder), "files": len(files), "tensors": len(specs), "bytes": nbytes,
            "tensors_by_dtype": dtypes, "shard_size": shard_size, "seconds_to_write": time.perf_counter() - t0}


def make_single_file(path: str | os.PathLike, total: int, *, seed: int = 0) -> dict[str, Any]:
    """One safetensors file of about ``total`` bytes (same tensor mix as ``make_model``)."""
    import torch  # noqa: F401
    from safetensors.torch import save_file

    rng = np.random.default_rng(seed)
    specs = model_specs(total)
    tensors = {name: _random_tensor(rng, shape, _torch_dtype(dt)) for name, shape, dt in specs}
    save_file(tensors, str(path), metadata={"format": "pt"})
    del tensors
    return {"path": str(path), "tensors": len(specs), "bytes": Path(path).stat().st_size}


def warm_page_cache(paths: Iterable[str | os.PathLike], chunk: int = 8 * MIB) -> int:
    """Read every file once so that later reads come from the page cache; return the bytes read."""
    total = 0
    buf = bytearray(chunk)
    view = memoryview(buf)
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while n := fh.readinto(view):
                total += n
    return total


def drop_dir(path: str | os.PathLike) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# machine and results


def _version(mod: str) -> str | None:
    try:
        m = __import__(mod)
    except Exception:  # noqa: BLE001 - absent or broken: report None
        return None
    return getattr(m, "__version__", None)


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except Exception:  # noqa: BLE001
        return None


def machine_info() -> dict[str, Any]:
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        blake3_version = __import__("importlib.metadata").metadata.version("blake3")
    except Exception:  # noqa: BLE001
        blake3_version = None
    try:
        safetensors_version = __import__("importlib.metadata").metadata.version("safetensors")
    except Exception:  # noqa: BLE001
        safetensors_version = _version("safetensors")
    status = _git("status", "--porcelain", "--", "modeldist")
    return {
        "nproc": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu": cpu,
        "mem_total_bytes": mem,
        "platform": platform.platform(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "torch": _version("torch"),
        "safetensors": safetensors_version,
        "blake3": blake3_version,
        "ml_dtypes": _version("ml_dtypes"),
        "modeldist": _version("modeldist"),
        "git_commit": _git("rev-parse", "HEAD"),
        "modeldist_tree_dirty": bool(status) if status is not None else None,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def read_text(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def mount_of(path: str | os.PathLike) -> str | None:
    """The /proc/mounts line of the file system holding ``path`` (type and options matter here)."""
    target = os.path.realpath(path)
    best = None
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mnt = parts[1]
            if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and (best is None or len(mnt) >= len(best[1])):
                best = parts
    except OSError:
        return None
    return " ".join(best[1:4]) if best else None


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def write_json(path: str | os.PathLike | None, obj: Any) -> None:
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def human_bytes(n: float) -> str:
    return _human_bytes(n, digits=2)


def human_rate(bps: float) -> str:
    return human_bytes(bps) + "/s"


def human_s(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(str(c).rjust(w) if k else str(c).ljust(w) for k, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)
