#!/usr/bin/env python
"""Benchmark: staging from a local-folder origin vs ``cat file > /dev/null``, file in page cache.

    python bench/origin_read.py [--size 1GiB] [--repeat 5] [--json bench/results/origin_read.json]
                                [--concurrency 1,2,4,8]

Makes one synthetic safetensors file (real ``safetensors`` library) in a temp folder on disk, reads
it once so it sits in the page cache, then measures, alternating in the same run, ``--repeat``
times each:

* ``cat FILE > /dev/null`` (a shell in a subprocess): the page-cache read ceiling of this machine;
* ``modeldist.staging.stage(FILE, config=Config(concurrency=c, store=<fresh temp dir in /dev/shm>))``
  for each ``c``: manifest (header read), store allocation (``posix_fallocate`` + ``mlock`` when
  allowed), ``preadv`` of every piece straight into the shared mapping, blake3 of every piece,
  completion marker. The store is deleted after every repetition, so each one starts empty.

Reports median throughput (file bytes / wall time) and the ratio modeldist/cat for each ``c``.
With ``--breakdown`` (default on) it also times, single-threaded and with modeldist's own pieces,
what one staging run is made of: store allocation, origin reads into the mapping, blake3 hashing,
and ``finish()`` -- to show where the time goes. Everything it writes is deleted at the end.
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def run_cat(path: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(f"cat {shlex.quote(str(path))} > /dev/null", shell=True, check=True)
    return time.perf_counter() - t0


def run_cp(path: Path, root: str) -> float:
    """``cp FILE <store root>``: the same page-cache read plus allocating and filling tmpfs pages,
    i.e. the floor for any copy into a fresh shared-memory store (no hashing)."""
    dest = Path(tempfile.mkdtemp(prefix="modeldist-bench-cp-", dir=root)) / "x"
    try:
        t0 = time.perf_counter()
        subprocess.run(["cp", str(path), str(dest)], check=True)
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(dest.parent, ignore_errors=True)


def run_stage(path: Path, concurrency: int, size: int, root: str) -> float:
    import modeldist
    from modeldist import staging

    store = tempfile.mkdtemp(prefix="modeldist-bench-origin-", dir=root)
    try:
        cfg = modeldist.Config(store=store, concurrency=concurrency)
        t0 = time.perf_counter()
        staged = staging.stage(str(path), config=cfg)
        dt = time.perf_counter() - t0
        if staged.origin_bytes != size:
            raise SystemExit(f"staging read {staged.origin_bytes} bytes from the origin, expected {size}")
        del staged
        return dt
    finally:
        C.drop_dir(store)


def breakdown(path: Path, root: str, mlock: str) -> dict[str, float]:
    """One single-threaded staging run, taken apart with modeldist's own pieces (seconds per phase)."""
    import blake3

    import modeldist
    from modeldist import staging
    from modeldist.store import Store

    store = tempfile.mkdtemp(prefix="modeldist-bench-origin-", dir=root)
    out: dict[str, float] = {}
    try:
        cfg = modeldist.Config(store=store, concurrency=1, mlock=mlock)
        t0 = time.perf_counter()
        origin, manifest = staging.resolve(str(path), config=cfg)
        out["manifest"] = time.perf_counter() - t0
        with origin:
            t0 = time.perf_counter()
            buf = Store(config=cfg).open(manifest)
            out["store_open"] = time.perf_counter() - t0
            with buf:
                n = len(manifest.pieces)
                views = [buf.piece_view(i) for i in range(n)]
                t0 = time.perf_counter()
                for i, p in enumerate(manifest.pieces):
                    origin.read_into(p.file, p.offset, views[i])
                out["origin_reads_into_mapping"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                digests = [blake3.blake3(v).digest() for v in views]
                out["blake3_pieces"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                for i, d in enumerate(digests):
                    buf.commit(i, d)
                out["commit"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                buf.finish()
                out["finish"] = time.perf_counter() - t0
                for v in views:
                    v.release()
                del views
        return out
    finally:
        C.drop_dir(store)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1GiB", help="file size (default 1GiB)")
    ap.add_argument("--repeat", type=int, default=5, help="timed repetitions of each method (default 5)")
    ap.add_argument("--concurrency", default="1,2,4,8", help="comma-separated Config.concurrency values")
    ap.add_argument("--json", default="bench/results/origin_read.json", help="write results here ('' = don't)")
    ap.add_argument("--workdir", default=None, help="parent of the temp folder holding the file "
                    "(default: the system temp dir, on disk)")
    ap.add_argument("--store-root", default="/dev/shm",
                    help="where each repetition's temp store is made (default /dev/shm); several, comma-separated, "
                    "are measured side by side, e.g. /dev/shm,/mnt/huge-tmpfs (modeldist only mlocks under /dev/shm)")
    ap.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                    help="skip the single-threaded per-phase breakdown")
    args = ap.parse_args(argv)

    import modeldist  # noqa: F401 - import cost out of the timings
    from modeldist.manifest import default_piece_size

    size_req = C.parse_size(args.size)
    conc = [int(c) for c in args.concurrency.split(",") if c.strip()]
    roots = [r for r in args.store_root.split(",") if r.strip()]
    work = Path(tempfile.mkdtemp(prefix="modeldist-bench-origin-src-", dir=args.workdir))
    path = work / "model.safetensors"

    def tag(k: int) -> str:  # the first root keeps the plain names
        return "" if k == 0 else f"_root{k}"

    stage_runs = {f"modeldist_c{c}{tag(k)}": (c, root) for k, root in enumerate(roots) for c in conc}
    try:
        print(f"making a {C.human_bytes(size_req)} safetensors file in {work} ...", flush=True)
        made = C.make_single_file(path, size_req)
        size = made["bytes"]
        gc.collect()
        C.warm_page_cache([path])
        print(f"  {made['tensors']} tensors, {C.human_bytes(size)}, piece size "
              f"{C.human_bytes(default_piece_size(size))}; page cache warm", flush=True)
        for k, root in enumerate(roots):
            print(f"  store root{k}: {root} ({C.mount_of(root)})", flush=True)
        cat_version = subprocess.run(["cat", "--version"], capture_output=True, text=True).stdout.splitlines()[:1]

        # warm-up, untimed: one of each
        run_cat(path)
        for c, root in stage_runs.values():
            run_stage(path, c, size, root)

        names = ["cat", "cp", *stage_runs]
        raw: dict[str, list[float]] = {n: [] for n in names}
        for rep in range(args.repeat):
            k = rep % len(names)
            for name in names[k:] + names[:k]:
                gc.collect()
                if name == "cat":
                    raw[name].append(run_cat(path))
                elif name == "cp":
                    raw[name].append(run_cp(path, roots[0]))
                else:
                    c, root = stage_runs[name]
                    raw[name].append(run_stage(path, c, size, root))
            print(f"  rep {rep + 1}/{args.repeat}: " + ", ".join(
                f"{n} {C.human_rate(size / raw[n][-1])}" for n in names), flush=True)

        med_s = {n: C.median(v) for n, v in raw.items()}
        med_bps = {n: size / s for n, s in med_s.items()}
        ratios = {}
        for n in stage_runs:
            ratios[n] = {"throughput_modeldist_over_cat": med_bps[n] / med_bps["cat"],
                         "throughput_modeldist_over_cp_to_store": med_bps[n] / med_bps["cp"],
                         "paired_median": C.median([ct / m for ct, m in zip(raw["cat"], raw[n])])}
            if n.endswith(tuple(tag(k) for k in range(1, len(roots)))):
                base = n.rsplit("_root", 1)[0]
                ratios[n]["throughput_over_root0_same_c"] = med_s[base] / med_s[n]
                ratios[n]["paired_median_over_root0_same_c"] = C.median([b / m for b, m in zip(raw[base], raw[n])])

        phases: dict[str, list[float]] = {}
        if args.breakdown:
            print("breakdown (single thread, modeldist's own pieces) ...", flush=True)
            for rep in range(args.repeat):
                for k, root in enumerate(roots):
                    for mlock in ("auto", "off"):
                        gc.collect()
                        for key, v in breakdown(path, root, mlock).items():
                            phases.setdefault(f"root{k}.mlock_{mlock}.{key}", []).append(v)
        phase_med = {k: C.median(v) for k, v in phases.items()}

        result = {
            "benchmark": "origin_read",
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
            "machine": C.machine_info(),
            "params": {"size_requested": size_req, "repeat": args.repeat, "concurrency": conc,
                       "origin": "local file on disk, page cache warm",
                       "store": "a fresh temp dir under the store root per repetition, deleted after it",
                       "store_roots": {f"root{k}": {"path": r, "mount": C.mount_of(r)} for k, r in enumerate(roots)},
                       "thp_shmem_enabled": C.read_text("/sys/kernel/mm/transparent_hugepage/shmem_enabled"),
                       "cat": cat_version[0] if cat_version else None},
            "file": {"bytes": size, "tensors": made["tensors"], "piece_size": default_piece_size(size)},
            "raw_seconds": raw,
            "median_seconds": med_s,
            "median_throughput_bytes_per_s": med_bps,
            "ratios": ratios,
            "breakdown_raw_seconds": phases,
            "breakdown_median_seconds": phase_med,
            "notes": ("modeldist time = the whole stage() call: header read and manifest, store allocation "
                      "(posix_fallocate + mlock on tmpfs under /dev/shm), preadv into the shared mapping, blake3 "
                      "per piece, finish(). cat copies page cache into one small, cache-resident buffer and throws "
                      "it away. modeldist_cN_rootK = the same on store root K (see params.store_roots)."),
        }
        C.write_json(args.json, result)

        print()
        print(f"file {C.human_bytes(size)}, medians of {args.repeat}; nproc {os.cpu_count()}")
        rows = [["cat > /dev/null", C.human_s(med_s["cat"]), C.human_rate(med_bps["cat"]), "1.00", "1.00"],
                ["cp to store root", C.human_s(med_s["cp"]), C.human_rate(med_bps["cp"]),
                 f"{med_bps['cp'] / med_bps['cat']:.2f}", "-"]]
        for n, (c, root) in stage_runs.items():
            label = f"modeldist stage c={c}" + (f" [{root}]" if len(roots) > 1 else "")
            rows.append([label, C.human_s(med_s[n]), C.human_rate(med_bps[n]),
                         f"{ratios[n]['throughput_modeldist_over_cat']:.2f}", f"{ratios[n]['paired_median']:.2f}"])
        print(C.table(["method", "time", "throughput", "ratio md/cat", "paired"], rows))
        if phase_med:
            print()
            prow = []
            for k in range(len(roots)):
                for mlock in ("auto", "off"):
                    pre = f"root{k}.mlock_{mlock}."
                    mine = {key: v for key, v in phase_med.items() if key.startswith(pre)}
                    total = sum(mine.values())
                    prow += [[key, C.human_s(v), f"{100 * v / total:.0f}%",
                              C.human_rate(size / v) if key[len(pre):] in (
                                  "store_open", "origin_reads_into_mapping", "blake3_pieces") else "-"]
                             for key, v in mine.items()]
                    prow.append([f"{pre}SUM", C.human_s(total), "100%", C.human_rate(size / total)])
            print("single-threaded staging, by phase (medians; store_open = mkdir, posix_fallocate, mmap, "
                  "mlock if on; " + ", ".join(f"root{k} = {r}" for k, r in enumerate(roots)) + "):")
            print(C.table(["phase", "time", "share", "rate"], prow))
        if args.json:
            print(f"\nwrote {args.json}")
        return 0
    finally:
        C.drop_dir(work)


if __name__ == "__main__":
    sys.exit(main())
