"""The broadcast over real shaped links (DESIGN section 10): network namespaces, veth pairs, a
bridge, ``tbf`` both ways on every host's link (``bench/testbed.py``), moto's S3 server as the
origin in its own namespace, a real scheduler and one real agent per node namespace.

Checks bytes, not time: every store bit-identical to the origin folder, the origin read exactly
once (origin bytes == model size), and nothing left behind (namespaces, work folder, processes),
also when the process that built a testbed is terminated or killed. Timing is the benchmark's job
(``bench/broadcast.py``). Needs root and iproute2; skipped elsewhere (``netns`` marker).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench.testbed import PYTHON, THIS as TESTBED_PY, Testbed, cleanup_stale, list_namespaces
from modeldist.demo import verify_store

pytestmark = [pytest.mark.netns]

ROOT = Path(__file__).resolve().parent.parent
RATE = 200e6  # bit/s, each host, both ways
N = 3


def _events(proc: subprocess.Popen, timeout: float):
    """JSON lines from the stage-wait helper until 'done' or 'error' (deadline on the whole wait)."""
    deadline = time.monotonic() + timeout
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"broadcast not finished within {timeout:.0f}s")
        if not sel.select(timeout=min(left, 1.0)):
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            raise AssertionError("stage-wait helper ended without a result")
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            ev = json.loads(line)
            yield ev
            if ev["event"] in ("done", "error"):
                return


def _ours(prefix: str) -> list[str]:
    return [ns for ns in list_namespaces() if ns == prefix or ns.startswith(prefix + "-")]


def test_broadcast_over_shaped_links_is_bit_identical_and_reads_origin_once(minilm_dir):
    with Testbed(nodes=N, rate_bps=RATE) as tb:
        prefix, workdir = tb.prefix, tb.workdir
        # every host's link shaped both ways: upload on its eth0, download on its bridge port
        links = tb.describe()
        for ns in [tb.origin_ns, *tb.node_ns]:
            assert any("tbf" in line and "dev eth0" in line and "rate 200Mbit" in line for line in links[ns]), links[ns]
        for port in ["po", *(f"p{i}" for i in range(N))]:
            assert any("tbf" in line and f"dev {port} " in line and "rate 200Mbit" in line
                       for line in links[tb.bridge_ns]), links[tb.bridge_ns]

        tb.start_s3()
        source = tb.upload(minilm_dir, "minilm")
        sched = f"{tb.origin_addr}:7070"
        cli = [PYTHON, "-m", "modeldist.cli"]
        logs = workdir / "logs"
        tb.run("origin", cli + ["scheduler", "--listen", sched, "--dead-after", "5"], log=logs / "scheduler.log")
        tb.wait_listening("origin", tb.origin_addr, 7070, timeout=30)
        stores = {}
        for i in range(N):
            nid, addr = f"n{i}", f"{tb.addr(i)}:7100"
            stores[nid] = workdir / f"store-{nid}"
            tb.run(i, cli + ["agent", "--scheduler", sched, "--listen", addr, "--advertise", addr,
                             "--store", str(stores[nid]), "--node-id", nid, "--upload-bps", str(RATE / 8)],
                   log=logs / f"agent-{nid}.log")
        helper = tb.run("origin", [PYTHON, str(TESTBED_PY), "stage-wait", "--scheduler", sched, "--source", source,
                                   "--expect", str(N), "--timeout", "90", "--register-timeout", "60"],
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        events = list(_events(helper, timeout=150))
        last = events[-1]
        assert last["event"] == "done", f"{last} (logs: {logs})"
        row = last["row"]
        model_size = sum(p.stat().st_size for p in minilm_dir.rglob("*") if p.is_file())
        assert row["total_bytes"] == model_size
        assert sorted(n["node_id"] for n in row["nodes"]) == sorted(stores)
        assert all(n["complete"] for n in row["nodes"]), row["nodes"]
        for n in row["nodes"]:
            assert verify_store(stores[n["node_id"]], row["model"], minilm_dir) == [], n["node_id"]
        # the origin is read exactly once in total: each stripe root reads its stripe, nobody else
        # reads anything (the scheduler's header reads for the manifest are not a node's bytes)
        assert sum(n["origin_bytes"] for n in row["nodes"]) == model_size
        assert sum(n["origin_bytes"] + n["peer_bytes"] for n in row["nodes"]) == N * model_size
        assert sum(1 for n in row["nodes"] if n["origin_bytes"]) == row["stripes"]
        procs = list(tb.procs)
    assert not _ours(prefix)
    assert not workdir.exists()
    assert all(p.returncode is not None for p in procs)


_CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from bench.testbed import Testbed
    tb = Testbed(nodes=2, rate_bps=100e6).start()
    tb.run(0, ["sleep", "300"])
    print(tb.prefix, flush=True)
    time.sleep(300)
""")


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_nothing_left_behind_when_the_owner_is_terminated_or_killed(how):
    child = subprocess.Popen([sys.executable, "-c", _CHILD.format(root=str(ROOT))], stdout=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        prefix = child.stdout.readline().strip()
        assert prefix.startswith("mdtb-"), prefix
        assert len(_ours(prefix)) == 4  # bridge, origin, 2 nodes
        if how == "sigterm":
            child.send_signal(signal.SIGTERM)  # the testbed's handler tears down, then exits
            assert child.wait(timeout=30) == 128 + signal.SIGTERM
        else:
            child.kill()  # no handler runs: the next testbed (or cleanup_stale) removes the leftovers
            child.wait(timeout=30)
            assert _ours(prefix)
            assert prefix in " ".join(cleanup_stale())
        assert not _ours(prefix)
        assert not Path("/dev/shm", prefix).exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
