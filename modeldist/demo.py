"""``modeldist demo``: a scheduler and N agents as separate processes on loopback, a broadcast,
every byte verified on every node, and a summary table. Also the demo model generator.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .cluster import _human, get_status, node_table, stage_all
from .errors import ModelDistError

__all__ = ["generate_model", "LocalCluster", "run_demo", "free_port"]


def generate_model(folder: Path, total: int, shards: int = 4) -> None:
    """A sharded safetensors model with an index and a config, written by the safetensors library."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per_shard = max(total // shards, 1 << 16)
    weight_map = {}
    for s in range(shards):
        tensors = {}
        left, k = per_shard, 0
        while left > 0:
            n = min(left, 8 << 20) // 2
            data = rng.standard_normal(n, dtype=np.float32).astype(np.float16)
            tensors[f"layers.{s}.block{k}.weight"] = data.reshape(-1, 256) if n % 256 == 0 else data
            left -= n * 2
            k += 1
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file(tensors, folder / fname, metadata={"format": "pt"})
        weight_map.update({name: fname for name in tensors})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": per_shard * shards}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps({"model_type": "demo", "shards": shards}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A scheduler and N agents as real processes on loopback, each agent with its own store.

    Context manager: every process is terminated (then killed) on exit, even on errors.
    """

    def __init__(self, workdir: Path, peers: int, *, dead_after: float = 3.0, agent_args: list[str] | None = None,
                 env: dict | None = None, piece_size: str | None = None, token: bool = False):
        self.workdir = Path(workdir)
        self.peers = peers
        self.dead_after = dead_after
        self.agent_args = agent_args or []
        self.env = {**os.environ, **(env or {})}
        if piece_size:
            self.env["MODELDIST_PIECE_SIZE"] = piece_size
        self.address = f"127.0.0.1:{free_port()}"
        from .config import Config

        self.client_config = Config.load()
        if token:
            # a random cluster token per run: every gRPC call of the cluster must carry it
            import secrets

            self.workdir.mkdir(parents=True, exist_ok=True)
            path = self.workdir / "token"
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
            self.env["MODELDIST_TOKEN_FILE"] = str(path)
            self.client_config = Config.load(token_file=str(path))
        self.scheduler: subprocess.Popen | None = None
        self.agents: dict[str, subprocess.Popen] = {}
        self.logs = self.workdir / "logs"

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")
        try:
            return subprocess.Popen([sys.executable, "-m", "modeldist.cli", *args], stdout=log, stderr=log,
                                    env=self.env, start_new_session=True)
        finally:
            log.close()

    def store_of(self, node_id: str) -> Path:
        return self.workdir / f"store-{node_id}"

    def start_scheduler(self) -> None:
        self.scheduler = self._spawn("scheduler", ["scheduler", "--listen", self.address,
                                                   "--dead-after", str(self.dead_after)])

    def start_agent(self, node_id: str, extra: list[str] | None = None) -> subprocess.Popen:
        p = self._spawn(node_id, ["agent", "--scheduler", self.address, "--node-id", node_id,
                                  "--store", str(self.store_of(node_id)), *self.agent_args, *(extra or [])])
        self.agents[node_id] = p
        return p

    def wait_registered(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                st = get_status(self.address, timeout=2, config=self.client_config)
                if sum(1 for node in st.nodes if node[2]) >= n:
                    return
            except ModelDistError:
                pass
            for name, p in [("scheduler", self.scheduler), *self.agents.items()]:
                if p is not None and p.poll() is not None:
                    raise ModelDistError(f"{name} exited with {p.returncode}: see {self.logs / (name + '.log')}")
            if time.monotonic() > deadline:
                raise ModelDistError(f"agents did not register within {timeout:.0f}s (logs: {self.logs})")
            time.sleep(0.1)

    def __enter__(self) -> "LocalCluster":
        self.start_scheduler()
        for i in range(self.peers):
            self.start_agent(f"node{i}")
        self.wait_registered(self.peers)
        return self

    def kill(self, node_id: str) -> None:
        p = self.agents[node_id]
        p.kill()
        p.wait(timeout=10)

    def close(self) -> None:
        procs = [p for p in [*self.agents.values(), self.scheduler] if p is not None]
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 5
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)

    def __exit__(self, *exc) -> None:
        self.close()


def verify_store(store: Path, model: str, origin_dir: Path) -> list[str]:
    """Files of ``model`` in ``store`` that differ from the origin folder (empty = bit-identical)."""
    from .manifest import Manifest

    folder = store / model
    m = Manifest.from_json((folder / "manifest.json").read_bytes())
    bad = []
    if not (folder / ".modeldist" / "complete").exists():
        bad.append("<no completion marker>")
    for f in m.files:
        a, b = folder / f.path, origin_dir / f.path
        if not a.exists() or a.stat().st_size != b.stat().st_size or not _same(a, b):
            bad.append(f.path)
    return bad


def _same(a: Path, b: Path, chunk: int = 8 << 20) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if x != y:
                return False
            if not x:
                return True


def run_demo(*, peers: int, source: str | None, piece_size: str | None, size: int, keep: bool, console,
             progress) -> None:
    from rich.table import Table

    work = Path(tempfile.mkdtemp(prefix="modeldist-demo-"))
    try:
        if source is None:
            origin_dir = work / "origin"
            console.print(f"generating a {_human(size)} model in {origin_dir} ...")
            generate_model(origin_dir, size)
            source = str(origin_dir)
        origin_dir = Path(source)
        console.print(f"starting a scheduler and {peers} agents on loopback (logs in {work / 'logs'}) ...")
        with LocalCluster(work, peers, piece_size=piece_size, token=True) as cluster:
            t0 = time.monotonic()
            row = stage_all(cluster.address, os.path.abspath(source), console=None, progress=progress,
                            config=cluster.client_config)
            elapsed = time.monotonic() - t0
            console.print(node_table(row, title=f"broadcast of {_human(row.total_bytes)} to {peers} agents"))
            bad = {}
            if origin_dir.is_dir():
                for n in row.nodes:
                    diff = verify_store(cluster.store_of(n.node_id), row.model, origin_dir)
                    if diff:
                        bad[n.node_id] = diff
            origin = sum(n.origin_bytes for n in row.nodes)
            by_transport: dict[str, int] = {}
            for n in row.nodes:
                for k, v in n.bytes_by_transport.items():
                    by_transport[k] = by_transport.get(k, 0) + v
            summary = Table(title="summary", show_header=False)
            summary.add_column("", style="bold")
            summary.add_column("")
            for k, v in [
                ("model", f"{_human(row.total_bytes)}, {row.pieces} pieces, {row.stripes} stripes"),
                ("time to all nodes", f"{elapsed:.2f} s"),
                ("aggregate throughput", f"{_human(row.total_bytes * peers / max(elapsed, 1e-9))}/s"),
                ("origin bytes / model size", f"{origin / max(row.total_bytes, 1):.2f}"),
                ("bytes by transport", ", ".join(f"{k} {_human(v)}" for k, v in sorted(by_transport.items()))),
                ("verified", "[green]every byte on every node equals the origin[/]" if not bad and origin_dir.is_dir()
                 else ("not checked (origin is not a local folder)" if not bad else f"[red]{bad}[/]")),
            ]:
                summary.add_row(k, v)
            console.print(summary)
            if bad:
                raise ModelDistError(f"verification failed on {', '.join(bad)}")
    finally:
        if keep:
            console.print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
