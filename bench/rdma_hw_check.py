"""RDMA hardware check: modeldist's RDMA data plane vs perftest on the same machine and device.

    python bench/rdma_hw_check.py [--device mlx5_0] [--gid-index N] [--size 1GiB] [--piece 4MiB]
                                  [--repeat 5] [--json bench/results/rdma_hw_check.json]

For a machine with a real RDMA NIC (RoCE or InfiniBand) and perftest installed (``ib_write_bw``,
``ib_read_bw``), run as a user allowed to pin ``--size`` twice (``ulimit -l``, or root). pyverbs
must be importable (Debian/Ubuntu: ``python3-pyverbs``; expose only the ``pyverbs`` package to the
venv, e.g. ``PYTHONPATH=<dir with a link to .../dist-packages/pyverbs>``). Everything is loopback
through the NIC (both ends on the same port), so it measures the NIC and the host, not the fabric.

Measured, alternating per repetition:

1. ``ib_write_bw`` and ``ib_read_bw`` (server and client on the device, message = piece size):
   the C baseline for the same work on the same machine. modeldist moves pieces with RDMA READ,
   so ``ib_read_bw`` is the like-for-like one; the issue asks for ``ib_write_bw`` too.
2. modeldist: the real ``RdmaTransport`` (listener + child session, as agents use it), a source
   and a destination of ``--size`` in ``/dev/shm`` mappings registered once, every piece
   requested; ``raw`` (receive only) and ``verified`` (blake3 of every piece on a second thread,
   as the agent does).
3. Python's per-operation cost: one RDMA READ posted and polled at a time from Python (pyverbs)
   on a connected queue-pair pair, small messages: microseconds per operation. Compared with the
   wire time of one piece at the measured rate, this says whether a native (C) data path could
   gain anything: the data plane posts one READ per piece, so Python's share per piece is
   (per-op cost) / (piece wire time).

Also recorded: device, port, link layer, nominal link rate (sysfs), GID used, rdma-core version,
GPUs (``nvidia-smi``) and whether GPUDirect RDMA (``nvidia_peermem``) is loaded, for the record:
modeldist stages into host memory, the GPU copy is the loaders' business.

Reported: medians, link utilisation (modeldist / nominal rate), ratios modeldist / ib_read_bw and
modeldist / ib_write_bw, Python's share per piece. Goal on real hardware: ratio >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import queue
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import blake3  # noqa: E402

from modeldist.config import Config, parse_size  # noqa: E402
from modeldist.errors import RdmaUnavailableError  # noqa: E402
from modeldist.transport.base import Hello, get_transport  # noqa: E402
from modeldist.transport.rdma import verbs  # noqa: E402


from tcp_edge import Source  # noqa: E402  (the same model-in-one-mapping PieceSource)


def shm_buffer(name: str, size: int) -> mmap.mmap:
    path = f"/dev/shm/modeldist-rdma-check-{os.getpid()}-{name}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, size)
        os.posix_fallocate(fd, 0, size)
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)
        os.unlink(path)


def run_modeldist(transport, src: mmap.mmap, dst: mmap.mmap, piece: int, verify: bool) -> tuple[float, set]:
    source = Source(src, piece)
    carriers: set[str] = set()
    with transport.listen("127.0.0.1:0", lambda hello, peer: source) as listener:
        view = memoryview(dst)
        session = transport.connect(listener.address, Hello("00" * 32, b"t", "check"), timeout=30,
                                    regions={"model": dst})
        with session:
            q: "queue.Queue[int | None]" = queue.Queue(maxsize=64)

            def hasher() -> None:
                while (i := q.get()) is not None:
                    blake3.blake3(view[i * piece:i * piece + source.piece_length(i)]).digest()

            t = threading.Thread(target=hasher)
            t0 = time.perf_counter()
            t.start()
            session.request(list(range(source.n)))
            while True:
                i = session.receive(lambda idx, n: view[idx * piece:idx * piece + n], timeout=60)
                if i is None:
                    break
                carriers.add(session.last_transport)
                if verify:
                    q.put(i)
            q.put(None)
            t.join()
            return time.perf_counter() - t0, carriers


def perftest(tool: str, dev: verbs.Device, size: int, piece: int) -> float | None:
    """Average MB/s (10^6) of ``tool`` (ib_write_bw / ib_read_bw) server+client on this port."""
    if shutil.which(tool) is None:
        return None
    iters = max(200, min(20000, size // piece))
    args = [tool, "-d", dev.name, "-i", str(dev.port), "-s", str(piece), "-n", str(iters), "-F", "-p", "18515"]
    if dev.link_layer == verbs.LINK_ETH:
        args += ["-x", str(dev.gid.index)]
    server = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = ""
        for _ in range(40):  # the server needs a moment to listen (longer under emulation)
            time.sleep(0.5)
            r = subprocess.run(args + ["127.0.0.1"], capture_output=True, text=True, timeout=300)
            out = r.stdout + r.stderr
            if r.returncode == 0:
                break
        else:
            print(f"{tool} failed: {out[-500:]}", file=sys.stderr)
            return None
    finally:
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 5 and f[0] == str(piece):
            return float(f[3])
    return None


def per_op_cost(dev: verbs.Device, n: int = 2000, size: int = 64) -> dict:
    """Microseconds per RDMA READ posted and polled from Python, one at a time and in bursts of 16."""
    buf_a, buf_b = mmap.mmap(-1, 1 << 20), mmap.mmap(-1, 1 << 20)
    ra, rb = dev.acquire(buf_a), dev.acquire(buf_b)
    a = verbs.Endpoint(dev, requester=True, depth=32)
    b = verbs.Endpoint(dev, requester=False, depth=1)
    try:
        a.connect(b.info())
        b.connect(a.info())

        def wait(k: int) -> None:
            got = 0
            while got < k:
                for _wr, status in a.poll(32):
                    if status != 0:
                        raise RuntimeError(f"READ failed: {verbs.wc_status_str(status)}")
                    got += 1

        t0 = time.perf_counter()
        for i in range(n):
            a.post_read(i, ra.addr, ra.lkey, size, rb.addr, rb.rkey)
            wait(1)
        single = (time.perf_counter() - t0) / n * 1e6
        t0 = time.perf_counter()
        for i in range(0, n, 16):
            for j in range(16):
                a.post_read(i + j, ra.addr + 4096 * j, ra.lkey, size, rb.addr, rb.rkey)
            wait(16)
        burst = (time.perf_counter() - t0) / (n // 16 * 16) * 1e6
        t0 = time.perf_counter()
        for i in range(n):
            a.poll(32)
        empty_poll = (time.perf_counter() - t0) / n * 1e6
        m, E = verbs._MODS, verbs._E
        t0 = time.perf_counter()
        for i in range(n):  # what post_read builds in Python before the verbs call
            wr = m["wr"].SendWR(wr_id=i, opcode=E.IBV_WR_RDMA_READ, num_sge=1, sg=[m["wr"].SGE(ra.addr, size, ra.lkey)],
                                send_flags=E.IBV_SEND_SIGNALED)
            wr.set_wr_rdma(rb.rkey, rb.addr)
        build = (time.perf_counter() - t0) / n * 1e6
    finally:
        a.close()
        b.close()
        dev.release(ra)
        dev.release(rb)
    return {"read_round_trip_us": single, "read_in_bursts_of_16_us": burst, "empty_poll_us": empty_poll,
            "build_work_request_us": build,
            "message_bytes": size, "ops": n}


def environment(dev: verbs.Device) -> dict:
    sysfs = Path(f"/sys/class/infiniband/{dev.name}/ports/{dev.port}")
    rate = (sysfs / "rate").read_text().strip() if (sysfs / "rate").exists() else ""
    m = re.match(r"([\d.]+) Gb/sec", rate)
    env = {"device": dev.name, "port": dev.port, "description": dev.describe(), "rate": rate,
           "nominal_Bps": float(m.group(1)) * 1e9 / 8 if m else None,
           "netdev": [p.name for p in (Path(f"/sys/class/infiniband/{dev.name}/device/net")).glob("*")]
           if Path(f"/sys/class/infiniband/{dev.name}/device/net").exists() else [],
           "nproc": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}
    try:
        env["rdma_core"] = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "rdma-core"], capture_output=True,
                                          text=True, timeout=10).stdout or None
    except (OSError, subprocess.SubprocessError):
        env["rdma_core"] = None
    gpus = None
    if shutil.which("nvidia-smi"):
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,pci.bus_id", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=30)
        gpus = [g.strip() for g in r.stdout.splitlines() if g.strip()]
    env["gpus"] = gpus
    try:
        env["gpudirect_rdma_module"] = any(line.split()[0] in ("nvidia_peermem", "nv_peer_mem")
                                           for line in Path("/proc/modules").read_text().splitlines())
    except OSError:
        env["gpudirect_rdma_module"] = None
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="RDMA device (default: first with an active port)")
    ap.add_argument("--gid-index", type=int, default=-1)
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--piece", default="4MiB")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    size, piece = parse_size(args.size), parse_size(args.piece)
    try:
        dev = verbs.open_device(args.device, args.gid_index)
    except RdmaUnavailableError as exc:
        sys.exit(f"no usable RDMA device: {exc} (errno {exc.errno_})")
    env = environment(dev)
    print(f"device: {env['description']}; link rate: {env['rate'] or 'unknown'}; GPUs: {env['gpus']}; "
          f"GPUDirect RDMA module: {env['gpudirect_rdma_module']}")
    transport = get_transport("rdma", config=Config.load(env={}, rdma_device=dev.name, rdma_gid_index=dev.gid.index))
    src, dst = shm_buffer("src", size), shm_buffer("dst", size)
    src[:] = os.urandom(1 << 20) * (size >> 20) + os.urandom(size % (1 << 20))
    raw, verified, wbw, rbw = [], [], [], []
    carriers: set[str] = set()
    for _ in range(args.repeat):
        t, c = run_modeldist(transport, src, dst, piece, verify=False)
        raw.append(size / t)
        carriers |= c
        zero = bytes(1 << 20)
        for off in range(0, size, len(zero)):  # the verified run must write every byte again
            dst[off:off + min(len(zero), size - off)] = zero[:min(len(zero), size - off)]
        t, c = run_modeldist(transport, src, dst, piece, verify=True)
        verified.append(size / t)
        carriers |= c
        for tool, out in (("ib_read_bw", rbw), ("ib_write_bw", wbw)):
            v = perftest(tool, dev, size, piece)
            if v is not None:
                out.append(v * 1e6)
    if dst[:] != src[:]:
        sys.exit("received bytes differ from the sent ones")
    if carriers != {"rdma"}:
        sys.exit(f"pieces did not all go over RDMA: {carriers}")
    ops = per_op_cost(dev)
    med = {"modeldist_raw": statistics.median(raw), "modeldist_verified": statistics.median(verified)}
    if rbw:
        med["ib_read_bw"] = statistics.median(rbw)
    if wbw:
        med["ib_write_bw"] = statistics.median(wbw)
    piece_wire_us = piece / med["modeldist_raw"] * 1e6
    line_wire_us = piece / env["nominal_Bps"] * 1e6 if env["nominal_Bps"] else None
    result = {
        "bench": "rdma_hw_check", "size": size, "piece": piece, "repeat": args.repeat, "environment": env,
        "raw_Bps": raw, "verified_Bps": verified, "ib_read_bw_Bps": rbw, "ib_write_bw_Bps": wbw, "median_Bps": med,
        "ratio_raw_vs_ib_read_bw": med["modeldist_raw"] / med["ib_read_bw"] if rbw else None,
        "ratio_raw_vs_ib_write_bw": med["modeldist_raw"] / med["ib_write_bw"] if wbw else None,
        "link_utilisation_raw": med["modeldist_raw"] / env["nominal_Bps"] if env["nominal_Bps"] else None,
        "per_op": ops,
        "python_share_per_piece_at_measured_rate": ops["read_round_trip_us"] / piece_wire_us,
        "python_share_per_piece_at_line_rate": ops["read_round_trip_us"] / line_wire_us if line_wire_us else None,
    }
    print(f"{'':20} {'median':>14}")
    for k, v in med.items():
        print(f"{k:20} {v / 2**20:10.1f} MiB/s")
    for k in ("ratio_raw_vs_ib_read_bw", "ratio_raw_vs_ib_write_bw", "link_utilisation_raw"):
        if result[k] is not None:
            print(f"{k:30} {result[k]:.2f}")
    print(f"python per RDMA READ (post + poll, one at a time): {ops['read_round_trip_us']:.1f} us; in bursts of 16: "
          f"{ops['read_in_bursts_of_16_us']:.1f} us; empty poll: {ops['empty_poll_us']:.1f} us; building the "
          f"work request: {ops['build_work_request_us']:.1f} us")
    print(f"one {piece >> 10} KiB piece on the wire: {piece_wire_us:.0f} us at the measured rate"
          + (f", {line_wire_us:.0f} us at line rate" if line_wire_us else "")
          + f" -> Python's share per piece: {result['python_share_per_piece_at_measured_rate']:.1%}"
          + (f" (at line rate {result['python_share_per_piece_at_line_rate']:.1%})"
             if result["python_share_per_piece_at_line_rate"] is not None else ""))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
