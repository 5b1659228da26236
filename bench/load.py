#!/usr/bin/env python
"""Benchmark: ``modeldist.load`` of an already staged model vs ``safetensors.*.load_file``.

    python bench/load.py [--size 2GiB] [--repeat 5] [--json bench/results/load.json]

Makes a sharded synthetic safetensors model (F16/BF16/F32, written shard by shard with the real
``safetensors`` library) in a temp folder on disk, stages it once into a temp store (``/dev/shm``
by default), reads the origin files once so they sit in the page cache, then measures, alternating
in the same run, ``--repeat`` times each:

* ``modeldist.load(src, framework="numpy"|"pt")``: the model is already staged, so this is header
  read + manifest + store check + mapping + one view per tensor (no byte of weight is copied);
* ``safetensors.numpy.load_file`` / ``safetensors.torch.load_file`` over every shard of the origin
  (from the page cache);
* for each result, the time to touch every byte of every tensor (an OR-reduce over an integer view)
  -- modeldist's views are faulted in lazily on first touch, so this is where their cost shows;
* ``modeldist.staging.stage`` alone (the part of ``load`` that is not tensor views).

Reports medians, ratios safetensors/modeldist measured side by side (goal: >= 10x for the load
call), raw timings and machine info. Everything it writes is deleted at the end.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import ml_dtypes  # noqa: E402,F401 - registers bfloat16 with numpy (safetensors.numpy needs it for BF16)


def touch_numpy(a: np.ndarray) -> int:
    """Read every byte of ``a`` (contiguous); return a value that depends on all of them."""
    flat = a.reshape(-1).view(np.uint8)
    n = flat.nbytes
    if n == 0:
        return 0
    head = n - n % 8
    acc = 0
    if head:
        acc = int(np.bitwise_or.reduce(flat[:head].view(np.uint64)))
    if head != n:
        acc |= int(np.bitwise_or.reduce(flat[head:]))
    return acc


def touch_torch(t) -> int:
    if t.numel() == 0:
        return 0
    import torch

    return touch_numpy(t.reshape(-1).view(torch.uint8).numpy())


def touch_all(tensors: dict, framework: str) -> int:
    f = touch_numpy if framework == "numpy" else touch_torch
    acc = 0
    for v in tensors.values():
        acc |= f(v)
    return acc


def nbytes_of(tensors: dict, framework: str) -> int:
    if framework == "numpy":
        return sum(v.nbytes for v in tensors.values())
    return sum(v.numel() * v.element_size() for v in tensors.values())


def rss() -> dict[str, int]:
    """Resident memory of this process by kind (bytes): anonymous, file-backed, shared memory."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                key, val = line.split(":", 1)
                out[key] = int(val.split()[0]) * 1024
    return out


def same_bytes(a: dict, b: dict, framework: str) -> bool:
    """Bit-identical dicts (names, dtypes, shapes, bytes)."""
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if x.dtype != y.dtype or tuple(x.shape) != tuple(y.shape):
            return False
        if framework == "pt":
            import torch

            x = x.reshape(-1).view(torch.uint8).numpy()
            y = y.reshape(-1).view(torch.uint8).numpy()
        else:
            x = x.reshape(-1).view(np.uint8)
            y = y.reshape(-1).view(np.uint8)
        if not np.array_equal(x, y):
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="2GiB", help="model size (default 2GiB)")
    ap.add_argument("--shard-size", default="512MiB", help="max shard size (default 512MiB)")
    ap.add_argument("--repeat", type=int, default=5, help="timed repetitions of each method (default 5)")
    ap.add_argument("--json", default="bench/results/load.json", help="write results here ('' = don't)")
    ap.add_argument("--workdir", default=None, help="parent of the temp folder holding the origin model "
                    "(default: the system temp dir, on disk)")
    ap.add_argument("--store", default="shm", help="'shm' = a temp store under /dev/shm (default), "
                    "'disk' = a temp store next to the origin")
    args = ap.parse_args(argv)

    import torch
    import safetensors
    import safetensors.numpy as stnp
    import safetensors.torch as stpt

    import modeldist
    from modeldist import staging

    size = C.parse_size(args.size)
    shard = C.parse_size(args.shard_size)
    work = Path(tempfile.mkdtemp(prefix="modeldist-bench-load-", dir=args.workdir))
    store_dir = (Path(tempfile.mkdtemp(prefix="modeldist-bench-store-", dir="/dev/shm")) if args.store == "shm"
                 else work / "store")
    src = work / "model"
    try:
        print(f"making a {C.human_bytes(size)} model in {src} ...", flush=True)
        model = C.make_model(src, size, shard_size=shard)
        files = sorted(str(p) for p in src.glob("*.safetensors"))
        print(f"  {model['files']} shards, {model['tensors']} tensors, {C.human_bytes(model['bytes'])}, "
              f"dtypes {model['tensors_by_dtype']}", flush=True)

        cfg = modeldist.Config(store=str(store_dir))
        t0 = time.perf_counter()
        staged = staging.stage(str(src), config=cfg)
        stage_s = time.perf_counter() - t0
        print(f"staged once into {store_dir} in {C.human_s(stage_s)} "
              f"(piece size {C.human_bytes(staged.manifest.piece_size)}, {len(staged.manifest.pieces)} pieces)",
              flush=True)
        warmed = C.warm_page_cache(files)
        print(f"page cache warmed ({C.human_bytes(warmed)} read)", flush=True)

        def st_numpy():
            out = {}
            for f in files:
                out.update(stnp.load_file(f))
            return out

        def st_torch():
            out = {}
            for f in files:
                out.update(stpt.load_file(f))
            return out

        methods = {
            "modeldist_numpy": ("numpy", lambda: modeldist.load(str(src), framework="numpy", config=cfg)),
            "safetensors_numpy": ("numpy", st_numpy),
            "modeldist_pt": ("pt", lambda: modeldist.load(str(src), framework="pt", config=cfg)),
            "safetensors_pt": ("pt", st_torch),
        }

        # warm-up (imports, lazy dtype tables) and correctness: modeldist == safetensors, bit for bit
        checks = {}
        for fw, md, st in (("numpy", "modeldist_numpy", "safetensors_numpy"), ("pt", "modeldist_pt", "safetensors_pt")):
            a = methods[md][1]()
            b = methods[st][1]()
            checks[fw] = same_bytes(a, b, fw)
            n_tensors = len(a)
            del a, b
            gc.collect()
            print(f"check {fw}: modeldist == safetensors bit for bit: {checks[fw]} ({n_tensors} tensors)", flush=True)
        staging.stage(str(src), config=cfg)

        raw: dict[str, dict[str, list[float]]] = {m: {"load": [], "touch": []} for m in methods}
        raw["modeldist_stage_only"] = {"load": [], "touch": []}
        order = list(methods) + ["modeldist_stage_only"]
        loaded_bytes: dict[str, int] = {}
        rss_growth: dict[str, dict[str, dict[str, int]]] = {}
        for rep in range(args.repeat):
            k = rep % len(order)
            for name in order[k:] + order[:k]:  # rotate the order so no method always goes first
                gc.collect()
                if name == "modeldist_stage_only":
                    t0 = time.perf_counter()
                    staging.stage(str(src), config=cfg)
                    raw[name]["load"].append(time.perf_counter() - t0)
                    continue
                fw, fn = methods[name]
                r0 = rss()
                t0 = time.perf_counter()
                d = fn()
                t1 = time.perf_counter()
                r1 = rss()
                touch_all(d, fw)
                t2 = time.perf_counter()
                r2 = rss()
                rss_growth[name] = {"after_load": {k: r1[k] - r0[k] for k in r0},
                                    "after_touch": {k: r2[k] - r0[k] for k in r0}}
                raw[name]["load"].append(t1 - t0)
                raw[name]["touch"].append(t2 - t1)
                loaded_bytes[name] = nbytes_of(d, fw)
                del d
            print(f"  rep {rep + 1}/{args.repeat}: " + ", ".join(
                f"{n} {C.human_s(raw[n]['load'][-1])}" for n in order), flush=True)
        gc.collect()

        med = {}
        for name, r in raw.items():
            med[name] = {"load": C.median(r["load"])}
            if r["touch"]:
                med[name]["touch"] = C.median(r["touch"])
                med[name]["load_plus_touch"] = C.median([a + b for a, b in zip(r["load"], r["touch"])])
        ratios = {}
        for fw in ("numpy", "pt"):
            md, st = raw[f"modeldist_{fw}"], raw[f"safetensors_{fw}"]
            ratios[fw] = {
                "load_safetensors_over_modeldist": med[f"safetensors_{fw}"]["load"] / med[f"modeldist_{fw}"]["load"],
                "load_paired_median": C.median([s / m for s, m in zip(st["load"], md["load"])]),
                "load_plus_touch_safetensors_over_modeldist":
                    med[f"safetensors_{fw}"]["load_plus_touch"] / med[f"modeldist_{fw}"]["load_plus_touch"],
                "touch_modeldist_over_safetensors": med[f"modeldist_{fw}"]["touch"] / med[f"safetensors_{fw}"]["touch"],
                "goal_load_ratio": 10.0,
                "meets_goal": med[f"safetensors_{fw}"]["load"] / med[f"modeldist_{fw}"]["load"] >= 10.0,
            }

        result = {
            "benchmark": "load",
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
            "machine": C.machine_info(),
            "params": {"size_requested": size, "shard_size": shard, "repeat": args.repeat,
                       "store": "tmpfs /dev/shm" if args.store == "shm" else "disk",
                       "store_mount": C.mount_of(store_dir.parent),
                       "origin_mount": C.mount_of(work),
                       "origin": "disk (temp folder), page cache warm",
                       "safetensors_backend": "default (mmap)"},
            "model": {**{k: v for k, v in model.items() if k != "folder"},
                      "piece_size": staged.manifest.piece_size, "pieces": len(staged.manifest.pieces)},
            "initial_stage_seconds": stage_s,
            "bit_identical": checks,
            "loaded_bytes": loaded_bytes,
            "rss_growth_last_rep_bytes": rss_growth,
            "raw_seconds": raw,
            "median_seconds": med,
            "ratios": ratios,
            "notes": ("load = the call itself; touch = OR-reduce over every byte of every tensor right after. "
                      "modeldist returns copy-on-write views of the store's mappings, so its pages are faulted in "
                      "during touch; safetensors has already copied every byte into fresh memory during load."),
        }
        C.write_json(args.json, result)

        rows = []
        for name in methods:
            m = med[name]
            rows.append([name, C.human_s(m["load"]), C.human_s(m["touch"]), C.human_s(m["load_plus_touch"]),
                         C.human_rate(model["bytes"] / m["load_plus_touch"])])
        rows.append(["modeldist stage() only", C.human_s(med["modeldist_stage_only"]["load"]), "-", "-", "-"])
        print()
        print(f"model {C.human_bytes(model['bytes'])}, {model['files']} shards, {model['tensors']} tensors; "
              f"medians of {args.repeat}; nproc {os.cpu_count()}")
        print(C.table(["method", "load", "touch all", "load+touch", "load+touch rate"], rows))
        print()
        rrows = []
        for fw in ("numpy", "pt"):
            r = ratios[fw]
            rrows.append([fw, f"{r['load_safetensors_over_modeldist']:.1f}x", f"{r['load_paired_median']:.1f}x",
                          f"{r['load_plus_touch_safetensors_over_modeldist']:.2f}x",
                          f"{r['touch_modeldist_over_safetensors']:.2f}x",
                          "yes" if r["meets_goal"] else "NO"])
        print(C.table(["framework", "load st/md", "paired", "load+touch st/md", "touch md/st", ">=10x"], rrows))
        print()
        grows = []
        for name in methods:
            g = rss_growth[name]
            grows.append([name] + [C.human_bytes(g[when][k]) for when in ("after_load", "after_touch")
                                   for k in ("RssAnon", "RssFile", "RssShmem")])
        print("resident memory growth (last rep): anon/file/shmem after load, then after touch")
        print(C.table(["method", "anon", "file", "shmem", "anon'", "file'", "shmem'"], grows))
        if args.json:
            print(f"\nwrote {args.json}")
        return 0
    finally:
        C.drop_dir(work)
        if args.store == "shm":
            C.drop_dir(store_dir)


if __name__ == "__main__":
    sys.exit(main())
