"""Broadcast benchmark on the network testbed: ideal vs naive pull vs modeldist, over shaped links.

    sudo .venv/bin/python bench/broadcast.py --nodes 2,4,8,16 --rate 100mbit --repeat 2 --naive-repeat 1 \
        [--source DIR] [--size 256MiB] [--piece-size 1MiB] \
        --json bench/results/broadcast_sweep.json --plot bench/results/broadcast_sweep.png
    ... --nodes 8 --slow-fraction 0.25 --slow-factor 0.5   # a quarter of the nodes at half rate
    ... --nodes 8 --kill-at 0.5                            # kill -9 a forwarding agent at 0.5 x ideal

For each N, in one ``bench.testbed.Testbed`` (origin + N nodes in network namespaces, every host's
upload and download capped at R with ``tbf``) with moto's S3 server in the origin namespace
holding the model:

- **ideal**: S / R, model bytes over the link rate (with slow nodes: S / the slowest download);
- **naive**: every node fetches every file of the model from the S3 origin at once (``curl``, one
  signed whole-object GET per file); time = max over nodes from the common start. Bound: N S / R,
  since the origin's uplink carries N copies;
- **modeldist**: a fresh scheduler in the origin namespace and one agent per node (``modeldist
  agent``, fixed data port, store under /dev/shm, ``--upload-bps``/``--download-bps`` R/8), ``start_stage`` +
  ``wait_model``; time = max over nodes of the scheduler's per-node seconds (from the job's creation
  in the Stage RPC, after the manifest is built, to the node's store marked complete), and p50;
  every store checked byte for byte against the origin folder (``verify_store``); origin bytes =
  sum of the agents' origin counters.

Recorded per run besides: TCP goodput of one link (iperf3, if installed), CPU of the machine by
kind (agents, scheduler, moto, kernel softirq, other tenants: the machine may be shared), tbf drops,
the plan (parents per stripe), a progress timeline, and **when every piece became verified on every
node** (the stores' piece bitmaps, sampled every 50 ms), from which the origin's rate, the lag of
each tree level behind its parent and the tail after the origin's last piece are derived.
Repetitions alternate naive and modeldist; reported values are medians over repetitions. Before
each run it waits (bounded) for the machine to be quiet (``--max-busy``).

Experiments without editing modeldist: ``--agent-env KEY=VALUE`` (e.g. MODELDIST_CONCURRENCY=2),
``--agent-patch FILE`` (a Python file exec'd in every agent before it starts: a monkeypatch of a
proposed change, recorded with its source in the JSON), ``--piece-size``, ``--mtu 9000``.

Must run as root (namespaces). Everything it creates is removed at the end, also on errors and
Ctrl-C / SIGTERM (the testbed's teardown); on an error the logs are kept in /tmp/mdtb-logs.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.testbed import PYTHON, THIS as TESTBED_PY, Testbed, TestbedError, parse_rate  # noqa: E402
from modeldist.config import Config, parse_size  # noqa: E402
from modeldist.demo import _same  # noqa: E402  (one byte-compare for stores vs origin)

SCHED_PORT = 7070
DATA_PORT = 7100
CLK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------------------------
# small utilities


def _cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as fh:
        vals = [int(x) for x in fh.readline().split()[1:]]
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


def _stat_fields() -> list[int]:
    with open("/proc/stat") as fh:
        return [int(x) for x in fh.readline().split()[1:]]


def _proc_cpu_s(pid: int, split: bool = False):
    """CPU seconds of a process (user + system), or (user, system) with ``split``."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        u, s = int(fields[11]) / CLK, int(fields[12]) / CLK
        return (u, s) if split else u + s
    except (OSError, IndexError, ValueError):
        return None


class CpuMeter:
    """Where the machine's CPU went during a window: our namespaces' processes (by kind), this
    process, kernel softirq (the shaped network: veth, bridge, tbf), and everything else, which
    on a shared machine includes other people's work."""

    def __init__(self, tb: Testbed):
        self.tb = tb
        self.inodes = {}
        for ns in tb.namespaces():
            try:
                self.inodes[os.stat(f"/run/netns/{ns}").st_ino] = ns
            except OSError:
                pass

    def _procs(self) -> dict[int, tuple[str, float]]:
        out = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            pid = int(d)
            try:
                ino = os.stat(f"/proc/{pid}/ns/net").st_ino
            except OSError:
                continue
            if ino not in self.inodes and pid != os.getpid():
                continue
            c = _proc_cpu_s(pid, split=True)
            if c is None:
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                cmd = ""
            out[pid] = (_kind(cmd, pid), c)
        return out

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.s0 = _stat_fields()
        self.p0 = self._procs()

    def stop(self) -> dict:
        s1 = _stat_fields()
        p1 = self._procs()
        wall = time.monotonic() - self.t0
        d = [b - a for a, b in zip(self.s0, s1)]
        total = sum(d) or 1
        busy = total - d[3] - d[4]
        by_kind: dict[str, float] = {}
        sys_kind: dict[str, float] = {}
        for pid, (kind, c) in p1.items():
            base = self.p0.get(pid, (kind, (0.0, 0.0)))[1]
            by_kind[kind] = by_kind.get(kind, 0.0) + (c[0] + c[1] - base[0] - base[1])
            sys_kind[kind] = sys_kind.get(kind, 0.0) + (c[1] - base[1])
        ours = sum(by_kind.values())
        softirq = d[6] / CLK
        machine = busy / CLK
        return {"wall_s": wall, "ncpu": os.cpu_count(), "busy_frac": busy / total,
                "machine_busy_cpu_s": machine, "softirq_cpu_s": softirq,
                "ours_cpu_s": {k: round(v, 2) for k, v in sorted(by_kind.items())},
                "ours_sys_cpu_s": {k: round(v, 2) for k, v in sorted(sys_kind.items())},
                # whatever is left: other processes on this machine, kernel threads, exited processes
                "other_cpu_s": max(0.0, machine - ours - softirq)}


def _kind(cmd: str, pid: int) -> str:
    if pid == os.getpid():
        return "bench"
    for key in ("agent", "scheduler", "stage-wait", "moto", "curl", "iperf3"):
        if key in cmd:
            return key
    return "other-in-netns"


def machine_quiet(max_busy: float, timeout: float, log=print) -> dict:
    """Wait (up to ``timeout`` s) until the machine is idle enough: the busy fraction over 2 s below
    ``max_busy``. Returns what was seen (the run goes ahead either way)."""
    deadline = time.monotonic() + timeout
    waited = 0.0
    while True:
        b0, t0 = _cpu_times()
        time.sleep(2.0)
        b1, t1 = _cpu_times()
        busy = (b1 - b0) / max(1, t1 - t0)
        if busy <= max_busy or time.monotonic() > deadline:
            if busy > max_busy:
                log(f"  machine still {busy:.0%} busy after waiting {waited:.0f}s: running anyway")
            return {"busy_before": busy, "waited_s": waited, "loadavg": os.getloadavg()}
        waited += 2.0


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _model_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


class Events:
    """JSON lines from a helper's stdout, read on a thread, taken with deadlines."""

    def __init__(self, proc: subprocess.Popen):
        self.q: "queue.Queue[dict | None]" = queue.Queue()
        self.t = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.t.start()

    def _read(self, proc) -> None:
        for line in proc.stdout:
            try:
                self.q.put(json.loads(line))
            except ValueError:
                continue
        self.q.put(None)

    def next(self, timeout: float) -> dict | None:
        try:
            return self.q.get(timeout=max(0.01, timeout))
        except queue.Empty:
            raise TimeoutError(f"no event within {timeout:.0f}s") from None


# ----------------------------------------------------------------------------------------------
# measurements


def measure_goodput(tb: Testbed, seconds: float = 3.0) -> float | None:
    """TCP goodput (bit/s) of one shaped path (the fastest node -> origin) with iperf3; None without iperf3."""
    if shutil.which("iperf3") is None:
        return None
    node = max(range(tb.n), key=lambda i: (tb.rate_of(i), -i))
    srv = tb.run("origin", ["iperf3", "-s", "-B", tb.origin_addr, "-p", "5201"], stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
    try:
        tb.wait_listening(node, tb.origin_addr, 5201, timeout=15, proc=srv)
        time.sleep(0.2)  # the probe connection above counts as a client for iperf3: let it settle
        out = tb.run_checked(node, ["iperf3", "-c", tb.origin_addr, "-p", "5201", "-t", str(seconds), "-J"],
                             timeout=seconds + 30)
        j = json.loads(out)
        return float(j["end"]["sum_received"]["bits_per_second"])
    except (TestbedError, ValueError, KeyError):
        return None
    finally:
        tb.stop(srv)


def run_naive(tb: Testbed, origin_dir: Path, key_prefix: str, *, timeout: float, verify: bool) -> dict:
    """Every node GETs every object at once; per-node time from the common start."""
    urls = tb.object_urls(origin_dir, key_prefix)
    procs = []
    dests = []
    meter = CpuMeter(tb)
    meter.start()
    t0 = time.monotonic()
    for i in range(tb.n):
        dest = tb.workdir / f"naive-n{i}"
        dests.append(dest)
        # signed like any S3 client (moto refuses anonymous GETs of private objects)
        # retried like any real client (huggingface_hub, boto3) when the loaded origin drops a connection
        argv = ["curl", "-sS", "--fail", "--max-time", str(int(timeout)), "--create-dirs",
                "--retry", "5", "--retry-all-errors", "--retry-delay", "1",
                "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", "testing:testing"]
        for rel, url in urls:
            argv += ["-o", str(dest / rel), url]
        procs.append(tb.run(i, argv, log=tb.workdir / "logs" / f"naive-n{i}.log"))
    ends: list[float | None] = [None] * tb.n
    deadline = t0 + timeout + 30
    while any(e is None for e in ends):
        now = time.monotonic()
        for i, p in enumerate(procs):
            if ends[i] is None and p.poll() is not None:
                ends[i] = now - t0
        if now > deadline:
            for p in procs:
                tb.stop(p)
            raise TestbedError(f"naive pull not finished after {timeout:.0f}s")
        time.sleep(0.01)
    cpu = meter.stop()
    bad = [i for i, p in enumerate(procs) if p.returncode != 0]
    if bad:
        raise TestbedError(f"naive pull failed on nodes {bad}: see {tb.workdir / 'logs'}")
    files = _model_files(origin_dir)
    for i, dest in enumerate(dests):
        for f in files:
            got = dest / f.relative_to(origin_dir)
            if not got.is_file() or got.stat().st_size != f.stat().st_size or (verify and not _same(got, f)):
                raise TestbedError(f"naive pull: node {i} has a wrong {got}")
        shutil.rmtree(dest, ignore_errors=True)
    return {"max_s": max(ends), "p50_s": statistics.median(ends), "per_node_s": ends,
            "cpu_busy": cpu["busy_frac"], "cpu": cpu}


def run_modeldist(tb: Testbed, source_uri: str, origin_dir: Path, *, piece_size: int, dead_after: float,
                  timeout: float, kill_at_s: float | None = None, timeline: float = 0.25,
                  agent_env: dict | None = None, verify: bool = True, sample_pieces: bool = True,
                  agent_patches: list[str] | None = None) -> dict:
    """A fresh scheduler and N agents, one broadcast, every store verified; then all stopped."""
    from modeldist.demo import verify_store

    logs = tb.workdir / "logs"
    sched_addr = f"{tb.origin_addr}:{SCHED_PORT}"
    py = [PYTHON, "-m", "modeldist.cli"]
    # experiments: agents may run with Python files exec'd first (monkeypatches of a proposed fix),
    # so a change can be measured here before it is made in modeldist
    agent_py = py if not agent_patches else [
        PYTHON, "-c", "".join(f"exec(compile(open({p!r}).read(), {p!r}, 'exec'));" for p in agent_patches)
        + "from modeldist.cli import main; main()"]
    sched = tb.run("origin", py + ["scheduler", "--listen", sched_addr, "--dead-after", str(dead_after)],
                   log=logs / "scheduler.log", name="scheduler")
    agents: dict[str, subprocess.Popen] = {}
    stores: dict[str, Path] = {}
    helper = None
    sampler = None
    try:
        tb.wait_listening("origin", tb.origin_addr, SCHED_PORT, timeout=60, proc=sched)
        for i in range(tb.n):
            nid = f"n{i}"
            stores[nid] = tb.workdir / f"store-{nid}"
            a = f"{tb.addr(i)}:{DATA_PORT}"
            agents[nid] = tb.run(i, agent_py + ["agent", "--scheduler", sched_addr, "--listen", a, "--advertise", a,
                                          "--store", str(stores[nid]), "--node-id", nid,
                                          "--upload-bps", str(tb.rate_of(i) / 8),
                                          "--download-bps", str(tb.rate_of(i) / 8)],
                                 log=logs / f"agent-{nid}.log", env=agent_env, name=nid)
        with open(logs / "stage-wait.log", "ab") as errlog:
            helper = tb.run("origin", [PYTHON, str(TESTBED_PY), "stage-wait", "--scheduler", sched_addr,
                                       "--source", source_uri, "--expect", str(tb.n), "--piece-size", str(piece_size),
                                       "--timeout", str(timeout), "--progress", str(timeline)],
                            stdout=subprocess.PIPE, stderr=errlog, text=True)
        ev = Events(helper)
        deadline = time.monotonic() + 180 + timeout
        plan = None
        started = None
        progress = []
        killed = None
        meter = CpuMeter(tb)
        sampler = PieceSampler(stores) if sample_pieces else None
        while True:
            now = time.monotonic()
            kill_due = started["_mono"] + kill_at_s if (kill_at_s is not None and killed is None
                                                        and started is not None) else None
            if kill_due is not None and now >= kill_due:
                killed = _pick_victim(plan)
                tb.kill(agents[killed])
                killed_at = time.monotonic() - started["_mono"]
                continue
            left = deadline - now
            if kill_due is not None:
                left = min(left, kill_due - now)
            try:
                e = ev.next(left)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise TestbedError(f"broadcast not finished within {timeout:.0f}s (logs: {logs})") from None
                continue
            if e is None:
                raise TestbedError(f"stage-wait ended without a result (logs: {logs})")
            kind = e["event"]
            if kind == "error":
                raise TestbedError(f"stage-wait: {e['message']} (logs: {logs})")
            if kind == "registered":
                meter.start()
            elif kind == "started":
                started = e
                started["_mono"] = time.monotonic() - max(0.0, time.time() - e["t"])
                if sampler is not None:
                    sampler.start(e["model"], started["_mono"])
            elif kind == "plan":
                plan = e
            elif kind == "progress" and started is not None:
                progress.append([round(e["t"] - started["t"], 3), e["have"]])
            elif kind == "done":
                row = e["row"]
                break
        cpu = meter.stop()
        arrivals = sampler.stop() if sampler is not None else None
        nodes = row["nodes"]
        done = [x for x in nodes if x["complete"]]
        bad = {}
        if verify:
            for x in done:
                diff = verify_store(stores[x["node_id"]], row["model"], origin_dir)
                if diff:
                    bad[x["node_id"]] = diff
        if bad:
            raise TestbedError(f"stores differ from the origin: {bad}")
        missing = [x["node_id"] for x in nodes if not x["complete"] and x["node_id"] != killed]
        if missing:
            raise TestbedError(f"not complete on {missing}: {[(x['node_id'], x['state'], x['error']) for x in nodes]}")
        secs = [x["seconds"] for x in done]
        out = {
            "max_s": max(secs), "p50_s": statistics.median(secs),
            "per_node_s": {x["node_id"]: x["seconds"] for x in nodes},
            "wall_s": e["t"] - started["t"],
            "stage_rpc_s": started["t_reply"] - started["t"],
            "origin_bytes": sum(x["origin_bytes"] for x in nodes),
            "peer_bytes": sum(x["peer_bytes"] for x in nodes),
            "model": row["model"], "pieces": row["pieces"], "stripes": row["stripes"], "replans": row["replans"],
            "parents": {x["node_id"]: x["parents"] for x in nodes},
            "initial_parents": plan["parents"] if plan else None,
            "depth": _depth(plan["parents"]) if plan else None,
            "reparented": {x["node_id"]: x["reparented_from"] for x in nodes if x["reparented_from"]},
            "states": {x["node_id"]: x["state"] for x in nodes},
            "cpu_busy": cpu["busy_frac"], "cpu": cpu,
            "timeline": progress,
            "piece_arrivals": arrivals,
        }
        if killed is not None:
            out["killed"] = {"node": killed, "at_s": killed_at,
                             "was_parent_of": sorted(k for k, ps in (plan or {}).get("parents", {}).items()
                                                     if killed in ps)}
        return out
    finally:
        if sampler is not None:
            sampler.stop()
        for p in ([helper] if helper is not None else []) + list(agents.values()) + [sched]:
            tb.stop(p)
        for s in stores.values():
            shutil.rmtree(s, ignore_errors=True)


def phases(timeline: list, pieces: int, piece_bytes: float, rate_Bps: float) -> dict:
    """From the progress timeline: when every node held its first piece, 10/50/90 % of the pieces,
    and the slowest node's rate between 10 % and 90 % as a fraction of the link rate."""
    if not timeline:
        return {}
    nodes = sorted(timeline[-1][1])

    def t_at(frac: float):
        need = max(1, int(frac * pieces + 0.999999))
        ts = [next((t for t, h in timeline if h.get(n, 0) >= need), None) for n in nodes]
        return max(ts) if all(t is not None for t in ts) else None

    out = {"first_piece_all_s": t_at(0), "p10_all_s": t_at(0.10), "p50_all_s": t_at(0.5), "p90_all_s": t_at(0.9)}
    if out["p10_all_s"] is not None and out["p90_all_s"] is not None and out["p90_all_s"] > out["p10_all_s"]:
        out["mid_rate_frac"] = 0.8 * pieces * piece_bytes / (out["p90_all_s"] - out["p10_all_s"]) / rate_Bps
    return out


class PieceSampler:
    """Per node, when each piece became verified: reads every store's piece bitmap
    (``<store>/<model>/.modeldist/pieces``, one byte per piece, set at commit) every ``every`` s
    from this process. Read-only; modeldist is not touched."""

    def __init__(self, stores: dict[str, Path], every: float = 0.05):
        self.stores = stores
        self.every = every
        self.model: str | None = None
        self.t0 = 0.0
        self.arrival: dict[str, dict[int, float]] = {k: {} for k in stores}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="bench-piece-sampler", daemon=True)

    def start(self, model: str, t0_mono: float) -> None:
        self.model, self.t0 = model, t0_mono
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)
        self._sample()  # one last look: pieces committed since the previous sample

    def _sample(self) -> None:
        now = time.monotonic() - self.t0
        for nid, store in self.stores.items():
            try:
                bits = (store / self.model / ".modeldist" / "pieces").read_bytes()
            except OSError:
                continue
            seen = self.arrival[nid]
            for i, b in enumerate(bits):
                if b == 1 and i not in seen:
                    seen[i] = round(now, 3)

    def stop(self) -> dict[str, list]:
        self._stop.set()
        if self._t.is_alive():
            self._t.join(timeout=5)
        return {nid: [a.get(i) for i in range(max(a) + 1)] if a else [] for nid, a in self.arrival.items()}


def _pick_victim(plan: dict | None) -> str:
    """A forwarding node that is no stripe's root (its children must be re-parented), else any."""
    parents = (plan or {}).get("parents") or {}
    feeding = {p for ps in parents.values() for p in ps if p != "origin"}
    roots = {n for n, ps in parents.items() if "origin" in ps}
    for cands in (sorted(feeding - roots), sorted(set(parents) - roots), sorted(parents)):
        if cands:
            return cands[0]
    raise TestbedError("no plan to pick a victim from")


def _depth(parents: dict) -> int:
    """Max over stripes of the tree depth (hops from the origin), from per-node parent lists."""
    best = 0
    if not parents:
        return 0
    k = len(next(iter(parents.values())))
    for s in range(k):
        for n in parents:
            d, cur, seen = 0, n, set()
            while cur != "origin" and cur not in seen:
                seen.add(cur)
                cur = parents[cur][s] if cur in parents else "origin"
                d += 1
            best = max(best, d)
    return best


# ----------------------------------------------------------------------------------------------
# one N


def bench_one(n: int, rate_bps: float, origin_dir: Path, args, log=print) -> dict:
    model_bytes = sum(f.stat().st_size for f in _model_files(origin_dir))
    n_slow = int(round(n * args.slow_fraction)) if args.slow_fraction else 0
    overrides = {i: rate_bps * args.slow_factor for i in range(n_slow)}
    piece_size = parse_size(args.piece_size) if args.piece_size else 0
    min_rate = min([rate_bps, *overrides.values()])
    ideal = model_bytes * 8 / min_rate
    naive_bound = n * model_bytes * 8 / rate_bps
    agent_env = dict(kv.split("=", 1) for kv in args.agent_env)
    with Testbed(nodes=n, rate_bps=rate_bps, overrides=overrides, latency_ms=args.latency_ms,
                 mtu=args.mtu, keep_logs=args.keep_logs, logs_on_error="/tmp/mdtb-logs", nice=args.nice) as tb:
        log(f"N={n}: testbed {tb.prefix} up ({n_slow} slow nodes)" if n_slow else f"N={n}: testbed {tb.prefix} up")
        tb.start_s3(fast_range=not args.stock_moto)
        key_prefix = "model"
        source = tb.upload(origin_dir, key_prefix)
        goodput = None if args.no_calibrate else measure_goodput(tb)
        if goodput:
            log(f"  iperf3 goodput node -> origin: {goodput / 1e6:.1f} Mbit/s ({goodput / rate_bps:.3f} of R)")
        naive_runs, md_runs = [], []
        for rep in range(args.repeat):
            order = ["naive", "modeldist"] if rep % 2 == 0 else ["modeldist", "naive"]
            for what in order:
                if what == "naive" and (args.skip_naive or args.kill_at is not None or rep >= args.naive_repeat):
                    continue
                quiet = machine_quiet(args.max_busy, args.quiet_timeout, log=log) if args.max_busy < 1 else None
                drops0 = tb.qdisc_drops()
                if what == "naive":
                    r = run_naive(tb, origin_dir, key_prefix, timeout=naive_bound * 3 + 120, verify=args.verify_naive)
                    r["machine_before"] = quiet
                    r["drops"] = {k: v - drops0.get(k, 0) for k, v in tb.qdisc_drops().items() if v - drops0.get(k, 0)}
                    naive_runs.append(r)
                    log(f"  rep {rep}: naive      max {r['max_s']:7.2f} s  p50 {r['p50_s']:7.2f} s  "
                        f"({r['max_s'] / ideal:.2f} x ideal, cpu {r['cpu_busy']:.0%})")
                elif what == "modeldist":
                    kill_at_s = args.kill_at * ideal if args.kill_at is not None else None
                    r = run_modeldist(tb, source, origin_dir, piece_size=piece_size, dead_after=args.dead_after,
                                      timeout=ideal * 10 + 120, kill_at_s=kill_at_s, agent_env=agent_env,
                                      agent_patches=[str(Path(p).resolve()) for p in args.agent_patch])
                    r["drops"] = {k: v - drops0.get(k, 0) for k, v in tb.qdisc_drops().items() if v - drops0.get(k, 0)}
                    r["phases"] = phases(r["timeline"], r["pieces"], model_bytes / r["pieces"], min_rate / 8)
                    r["machine_before"] = quiet
                    md_runs.append(r)
                    extra = f", killed {r['killed']['node']} at {r['killed']['at_s']:.1f}s" if "killed" in r else ""
                    log(f"  rep {rep}: modeldist  max {r['max_s']:7.2f} s  p50 {r['p50_s']:7.2f} s  "
                        f"({r['max_s'] / ideal:.3f} x ideal, origin/model {r['origin_bytes'] / model_bytes:.3f}, "
                        f"{r['pieces']} pieces, {r['stripes']} stripes, depth {r['depth']}, "
                        f"cpu {r['cpu_busy']:.0%}: ours {sum(r['cpu']['ours_cpu_s'].values()):.1f}s "
                        f"softirq {r['cpu']['softirq_cpu_s']:.1f}s other {r['cpu']['other_cpu_s']:.1f}s{extra})")
                    ph = r["phases"]
                    if ph.get("mid_rate_frac"):
                        log(f"      first piece on all {ph['first_piece_all_s']:.2f}s, 10% {ph['p10_all_s']:.2f}s, "
                            f"90% {ph['p90_all_s']:.2f}s, 10->90% rate {ph['mid_rate_frac']:.3f} R")
        links = tb.describe()
    md_max = _median([r["max_s"] for r in md_runs])
    res = {
        "nodes": n, "rate_bps": rate_bps, "model_bytes": model_bytes,
        "ideal_s": ideal,
        "naive_s": _median([r["max_s"] for r in naive_runs]),
        "naive_bound_s": naive_bound,
        "modeldist_s": md_max,
        "p50_s": _median([r["p50_s"] for r in md_runs]),
        "origin_bytes": _median([r["origin_bytes"] for r in md_runs]),
        "modeldist_over_ideal": md_max / ideal if md_max else None,
        "naive_over_ideal": (_median([r["max_s"] for r in naive_runs]) or 0) / ideal if naive_runs else None,
        "origin_over_model": (_median([r["origin_bytes"] for r in md_runs]) or 0) / model_bytes,
        "goodput_bps": goodput,
        "goodput_ideal_s": model_bytes * 8 / goodput if goodput else None,
        "slow_nodes": sorted(overrides), "slow_rate_bps": rate_bps * args.slow_factor if overrides else None,
        "piece_size": piece_size or "auto", "agent_env": agent_env,
        "cut_through": Config.load(env={**os.environ, **agent_env}).cut_through,
        "agent_patches": {p: Path(p).read_text() for p in args.agent_patch},
        "naive_runs": naive_runs, "modeldist_runs": md_runs, "links": links,
    }
    if overrides:
        fast = [v for r in md_runs for k, v in r["per_node_s"].items() if int(k[1:]) not in overrides]
        slow = [v for r in md_runs for k, v in r["per_node_s"].items() if int(k[1:]) in overrides]
        res["fast_ideal_s"] = model_bytes * 8 / rate_bps
        res["fast_max_s"] = max(fast) if fast else None
        res["slow_max_s"] = max(slow) if slow else None
        log(f"  fast nodes: max {res['fast_max_s']:.2f} s (their own ideal {res['fast_ideal_s']:.2f} s); "
            f"slow nodes: max {res['slow_max_s']:.2f} s (ideal {ideal:.2f} s)")
    return res


def plot(results: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["nodes"] for r in results]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(ns, [r["ideal_s"] for r in results], "k--", marker="o", label="ideal  S/R")
    if any(r["naive_s"] for r in results):
        ax.plot(ns, [r["naive_s"] for r in results], marker="s", label="naive pull (every node from S3)")
        ax.plot(ns, [r["naive_bound_s"] for r in results], ":", color="gray", label="naive bound  N S/R")
    ax.plot(ns, [r["modeldist_s"] for r in results], marker="^", label="modeldist (max over nodes)")
    ax.plot(ns, [r["p50_s"] for r in results], marker="v", alpha=0.6, label="modeldist (p50)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns])
    ax.set_xlabel("nodes N")
    ax.set_ylabel("time until every node holds the model (s)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    for r in results:
        if r["modeldist_s"]:
            ax.annotate(f"{r['modeldist_s'] / r['ideal_s']:.2f}x", (r["nodes"], r["modeldist_s"]),
                        textcoords="offset points", xytext=(4, 6), fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="4", help="N, or a comma list for a sweep (2,4,8,16)")
    ap.add_argument("--rate", default="200mbit", help="link rate, both ways, per host (200mbit, 1gbit, 2e8)")
    ap.add_argument("--source", default=None, help="model folder (default: a generated --size model)")
    ap.add_argument("--size", default="256MiB", help="size of the generated model")
    ap.add_argument("--piece-size", default=None, help="piece size (default: modeldist's automatic choice)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--naive-repeat", type=int, default=None,
                    help="naive pull in only the first K repetitions (it takes N times longer); default: all")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, help="PNG of time vs N")
    ap.add_argument("--slow-fraction", type=float, default=0.0, help="fraction of nodes at --slow-factor x rate")
    ap.add_argument("--slow-factor", type=float, default=0.5)
    ap.add_argument("--kill-at", type=float, default=None, help="kill -9 a forwarding agent at this x ideal time")
    ap.add_argument("--dead-after", type=float, default=3.0)
    ap.add_argument("--latency-ms", type=float, default=20.0, help="tbf queue (latency) per link")
    ap.add_argument("--mtu", type=int, default=9000,
                    help="MTU of every link (default 9000: jumbo frames, as on cluster fabrics; at 1500 "
                         "TCP/IP headers alone cap goodput at 0.958 R)")
    ap.add_argument("--agent-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the agents, e.g. MODELDIST_CONCURRENCY=2 (repeatable)")
    ap.add_argument("--max-busy", type=float, default=0.15,
                    help="before each run, wait until the machine is at most this busy (1 = do not wait)")
    ap.add_argument("--quiet-timeout", type=float, default=300.0, help="longest wait for a quiet machine (s)")
    ap.add_argument("--nice", type=int, default=0,
                    help="niceness of every benchmark process (e.g. -10 on a machine shared with other work)")
    ap.add_argument("--agent-patch", action="append", default=[], metavar="FILE",
                    help="experiment: exec this Python file in every agent before it starts (repeatable)")
    ap.add_argument("--keep-logs", default=None, help="copy every process's log into this folder")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--verify-naive", action="store_true", help="compare naive downloads byte for byte too")
    ap.add_argument("--stock-moto", action="store_true", help="moto as shipped (a full object copy per ranged GET)")
    ap.add_argument("--no-calibrate", action="store_true", help="skip the iperf3 goodput probe")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench/broadcast.py needs root (network namespaces)")
    if args.naive_repeat is None:
        args.naive_repeat = args.repeat
    if args.nice:
        os.nice(args.nice)
    ns = [int(x) for x in str(args.nodes).split(",") if x]
    rate = parse_rate(args.rate)
    work = Path(f"/dev/shm/mdtb-{os.getpid()}-src")
    results = []
    t_start = time.time()
    try:
        if args.source:
            origin_dir = Path(args.source).resolve()
        else:
            from modeldist.demo import generate_model

            origin_dir = work / "model"
            print(f"generating a {args.size} model in {origin_dir} ...", flush=True)
            generate_model(origin_dir, parse_size(args.size))
        for n in ns:
            results.append(bench_one(n, rate, origin_dir, args, log=lambda s: print(s, flush=True)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    print()
    hdr = f"{'N':>3} {'rate':>9} {'model':>10} {'ideal s':>8} {'naive s':>8} {'md max s':>9} {'md p50 s':>9} " \
          f"{'md/ideal':>8} {'naive/ideal':>11} {'origin/model':>12}"
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        def f(x, fmt):
            return format(x, fmt) if x is not None else "-"
        print(f"{r['nodes']:>3} {r['rate_bps'] / 1e6:>5.0f}Mb/s {_human(r['model_bytes']):>10} {r['ideal_s']:>8.2f} "
              f"{f(r['naive_s'], '8.2f'):>8} {f(r['modeldist_s'], '9.2f'):>9} {f(r['p50_s'], '9.2f'):>9} "
              f"{f(r['modeldist_over_ideal'], '8.3f'):>8} {f(r['naive_over_ideal'], '11.2f'):>11} "
              f"{r['origin_over_model']:>12.3f}")
        rows.append(r)
    if args.json:
        from bench._common import machine_info, write_json

        diff = subprocess.run(["git", "diff", "HEAD", "--", "modeldist"], cwd=ROOT, capture_output=True).stdout
        import hashlib

        doc = {"benchmark": "broadcast (network testbed)", "args": vars(args), "machine": machine_info(),
               "modeldist_uncommitted_diff_sha256": hashlib.sha256(diff).hexdigest() if diff else None,
               "seconds": time.time() - t_start, "results": results}
        if len(results) == 1:
            doc.update({k: results[0][k] for k in ("nodes", "rate_bps", "model_bytes", "ideal_s", "naive_s",
                                                    "modeldist_s", "p50_s", "origin_bytes")})
        write_json(args.json, doc)
        print(f"wrote {args.json}")
    if args.plot:
        plot(results, args.plot, f"broadcast of {_human(results[0]['model_bytes'])} at "
                                 f"{rate / 1e6:.0f} Mbit/s per link (tbf, netns)")
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
