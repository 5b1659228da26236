"""One uncapped loopback edge: modeldist's TCP data plane vs iperf3, in the same run.

    python bench/tcp_edge.py [--size 1GiB] [--piece 4MiB] [--repeat 5] [--json bench/results/tcp_edge.json]
    python bench/tcp_edge.py --tls [--json bench/results/tcp_edge_tls.json]

A parent serves a model-sized shared-memory buffer through the real ``TcpTransport`` listener;
a child session requests every piece and receives each straight into its own shared-memory
buffer (``recv_into``). Measured per repetition, alternating with ``iperf3 -c 127.0.0.1`` (one
stream, same duration order of magnitude): raw transport throughput, and throughput with the
agent's blake3 verification of every piece on the receiving side. Reports medians and the ratio
modeldist / iperf3 (goal >= 0.8). Needs iperf3 (Debian package).

``--tls`` adds the same two measurements over TLS (``data_tls``: mutual TLS 1.3, certificates from a
throw-away CA made for the run with ``tests/tls_helpers.py``), and reports TLS / plain. Every
repetition measures each method once, in an order that rotates from one repetition to the next.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import blake3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modeldist.config import Config, parse_size  # noqa: E402
from modeldist.transport.base import Hello, get_transport  # noqa: E402


class Source:
    def __init__(self, mm: mmap.mmap, piece: int):
        self.mm, self.piece = mm, piece
        self.n = -(-len(mm) // piece)

    def piece_count(self) -> int:
        return self.n

    def piece_length(self, i: int) -> int:
        return min(self.piece, len(self.mm) - i * self.piece)

    def wait_piece(self, i: int, timeout: float):
        return memoryview(self.mm)[i * self.piece:i * self.piece + self.piece_length(i)]

    def sent(self, nbytes: int, transport: str) -> None:
        pass

    def regions(self):
        """The mapping pieces are served from (registered by the RDMA transport; TCP ignores it)."""
        return {"model": self.mm}


def shm_buffer(name: str, size: int) -> mmap.mmap:
    path = f"/dev/shm/modeldist-bench-{os.getpid()}-{name}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, size)
    os.posix_fallocate(fd, 0, size)
    mm = mmap.mmap(fd, size)
    os.close(fd)
    os.unlink(path)
    return mm


def zero(mm: mmap.mmap, chunk: int = 64 << 20) -> None:
    blank = bytes(chunk)
    for off in range(0, len(mm), chunk):
        n = min(chunk, len(mm) - off)
        mm[off:off + n] = blank[:n]


def same(a: mmap.mmap, b: mmap.mmap, chunk: int = 64 << 20) -> bool:
    va, vb = memoryview(a), memoryview(b)
    return len(a) == len(b) and all(va[o:o + chunk] == vb[o:o + chunk] for o in range(0, len(a), chunk))


def run_modeldist(src_mm: mmap.mmap, dst_mm: mmap.mmap, piece: int, verify: bool, config=None) -> float:
    tcp = get_transport("tcp", config=config)
    source = Source(src_mm, piece)
    with tcp.listen("127.0.0.1:0", lambda hello, peer: source) as listener:
        session = tcp.connect(listener.address, Hello("00" * 32, b"t", "bench"), timeout=30)
        with session:
            view = memoryview(dst_mm)
            # as the agent does: receive on this thread, hash on another (blake3 releases the GIL)
            q: "queue.Queue[int | None]" = queue.Queue(maxsize=64)

            def hasher() -> None:
                while (i := q.get()) is not None:
                    blake3.blake3(view[i * piece:i * piece + source.piece_length(i)]).digest()

            t = threading.Thread(target=hasher)
            t0 = time.perf_counter()
            t.start()
            session.request(list(range(source.n)))
            while True:
                i = session.receive(lambda idx, n: view[idx * piece:idx * piece + n], timeout=30)
                if i is None:
                    break
                if verify:
                    q.put(i)
            q.put(None)
            t.join()
            return time.perf_counter() - t0


def run_iperf3(size: int) -> float:
    server = subprocess.Popen(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", "5299"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", "5299", "-n", str(size), "-J"], capture_output=True,
                             text=True, timeout=120, check=True).stdout
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 8
    finally:
        server.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--piece", default="4MiB")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--tls", action="store_true", help="also measure the data plane over TLS (data_tls)")
    args = ap.parse_args()
    if shutil.which("iperf3") is None:
        sys.exit("iperf3 not found: apt-get install iperf3")
    size, piece = parse_size(args.size), parse_size(args.piece)
    src, dst = shm_buffer("src", size), shm_buffer("dst", size)
    src[:] = os.urandom(1 << 20) * (size >> 20) + os.urandom(size % (1 << 20))
    methods = {
        "modeldist_raw": lambda: size / run_modeldist(src, dst, piece, verify=False),
        "modeldist_verified": lambda: size / run_modeldist(src, dst, piece, verify=True),
        "iperf3": lambda: run_iperf3(size),
    }
    certs_dir = None
    if args.tls:
        from tests.tls_helpers import make_certs

        certs_dir = tempfile.TemporaryDirectory(prefix="modeldist-bench-tls-")
        c = make_certs(Path(certs_dir.name))
        tls = Config.load(env={}, data_tls=True, tls_cert=c["server.pem"], tls_key=c["server.key"], tls_ca=c["ca.pem"])
        methods["modeldist_tls_raw"] = lambda: size / run_modeldist(src, dst, piece, verify=False, config=tls)
        methods["modeldist_tls_verified"] = lambda: size / run_modeldist(src, dst, piece, verify=True, config=tls)
    runs: dict[str, list[float]] = {k: [] for k in methods}
    names = list(methods)
    for rep in range(args.repeat):
        for k in names[rep % len(names):] + names[:rep % len(names)]:
            check = rep == 0 and k.startswith("modeldist")  # first time: prove every byte arrives
            if check:
                zero(dst)
            runs[k].append(methods[k]())
            if check and not same(dst, src):
                sys.exit(f"{k}: received bytes differ from the sent ones")
    if certs_dir is not None:
        certs_dir.cleanup()
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "bench": "tcp_edge", "size": size, "piece": piece, "repeat": args.repeat, "tls": args.tls,
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release(),
                    "openssl": __import__("ssl").OPENSSL_VERSION, "load_avg_start": os.getloadavg()},
        "raw_Bps": runs["modeldist_raw"], "verified_Bps": runs["modeldist_verified"], "iperf3_Bps": runs["iperf3"],
        "median_Bps": med,
        "ratio_raw_vs_iperf3": med["modeldist_raw"] / med["iperf3"],
        "ratio_verified_vs_iperf3": med["modeldist_verified"] / med["iperf3"],
    }
    if args.tls:
        result.update({
            "tls_raw_Bps": runs["modeldist_tls_raw"], "tls_verified_Bps": runs["modeldist_tls_verified"],
            "ratio_tls_raw_vs_raw": med["modeldist_tls_raw"] / med["modeldist_raw"],
            "ratio_tls_verified_vs_verified": med["modeldist_tls_verified"] / med["modeldist_verified"],
            "ratio_tls_raw_vs_iperf3": med["modeldist_tls_raw"] / med["iperf3"],
            # paired: the median of per-repetition ratios (same repetition, neighbouring in time)
            "paired_ratio_tls_raw_vs_raw": statistics.median(
                t / r for t, r in zip(runs["modeldist_tls_raw"], runs["modeldist_raw"])),
        })
    print(f"{'':24} {'median':>12}  ratio vs iperf3")
    for k, v in med.items():
        print(f"{k:24} {v / 2**30:9.2f} GiB/s  {v / med['iperf3']:.2f}")
    if args.tls:
        print(f"TLS / plain: raw {result['ratio_tls_raw_vs_raw']:.2f} (paired {result['paired_ratio_tls_raw_vs_raw']:.2f}),"
              f" verified {result['ratio_tls_verified_vs_verified']:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
