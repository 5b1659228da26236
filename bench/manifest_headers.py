#!/usr/bin/env python
"""Building a manifest from a many-shard model on S3: headers fetched in parallel vs one by one.

    python bench/manifest_headers.py [--shards 64] [--latency-ms 25] [--repeat 3] \\
        [--json bench/results/manifest_headers.json]

moto's S3 server on loopback holds a synthetic model of ``--shards`` safetensors files (written by
the safetensors library); a proxy in front of it (tests/swarm_helpers.CountingProxy) holds every
request for ``--latency-ms`` (a WAN origin: S3 from another region, the Hub). Measured alternately
in one process: ``Origin.manifest()`` as shipped (each file's length prefix and header fetched in
parallel, then parsed in order) and with the prefetch disabled (two reads per file, in a row, as
before). Reports medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modeldist.demo import generate_model  # noqa: E402
from modeldist.origin import open_origin  # noqa: E402
from modeldist.origin.base import Origin  # noqa: E402
from tests.swarm_helpers import CountingProxy, MotoServer, aws_env  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=64)
    ap.add_argument("--latency-ms", type=float, default=25.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.update(aws_env(work))
        src = work / "model"
        generate_model(src, args.shards << 20, shards=args.shards)
        delay = args.latency_ms / 1000
        with MotoServer(work) as moto:
            moto.upload_folder(src, "bench-bucket", "model")
            with CountingProxy(moto.port, faults=lambda req: time.sleep(delay) or None) as proxy:
                uri = f"s3://bench-bucket/model?endpoint_override=127.0.0.1:{proxy.port}&scheme=http"
                shipped = Origin._prefetch_headers
                times: dict[str, list[float]] = {"one_by_one": [], "parallel": []}
                digests = set()
                try:
                    for _ in range(args.repeat):
                        for mode in times:
                            Origin._prefetch_headers = shipped if mode == "parallel" else (lambda self, l, a: {})
                            t0 = time.perf_counter()
                            with open_origin(uri) as origin:
                                m = origin.manifest()
                            times[mode].append(time.perf_counter() - t0)
                            digests.add(m.digest)
                finally:
                    Origin._prefetch_headers = shipped
    assert len(digests) == 1, "both ways must give the same manifest"
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["one_by_one"] / med["parallel"]
    print(f"{args.shards} shards, {args.latency_ms:.0f} ms per request: one by one {med['one_by_one']:.2f} s, "
          f"parallel {med['parallel']:.2f} s -> {ratio:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"benchmark": "manifest_headers", "args": vars(args),
                                               "seconds": times, "median_s": med, "ratio": ratio}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
