"""The fault matrix (issue #7), with real processes on loopback: what each fault leaves behind.

Every surviving node must end bit-identical to the origin, and nothing may be fetched from the
origin twice (origin bytes == model size + the header read of the scheduler, counted at the origin
by ``CountingProxy``, as in ``test_swarm.test_broadcast_from_s3_reads_origin_once``). The rows
already covered by ``test_swarm.py`` (kill -9 of an interior node, corrupting peer, restart on the
store, SIGSTOP seen by the scheduler) are not repeated; these are the rest:

- kill -9 of a **seed**, the stripe root reading its stripe from the origin, half-way through it;
- a relay that **stalls mid-piece** (SIGSTOP with part of a piece on the wire): its children hit
  their read deadline (``modeldist agent --stall-timeout``), are re-parented and complete;
- a peer whose **data plane stalls mid-piece while its control plane keeps reporting**.

A stalled peer whose control plane keeps reporting is taken out of the broadcast by the scheduler
as soon as a child reports a read deadline on a parent that holds pieces it owes that child. A
killed seed's unforwarded pieces are lost with it and read again, nothing else. The scenarios are plain functions
(``seed_kill``, ``stalled_relay``) returning what they measured: ``bench/faults.py`` runs them too.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from modeldist.cluster import ModelRow, start_stage
from modeldist.demo import LocalCluster, generate_model, verify_store
from modeldist.manifest import Manifest

from tests.swarm_helpers import CountingProxy, RoguePeer, s3_uri, wait_for
from tests.test_swarm import (  # noqa: F401 - s3 is a fixture, used by name
    BUCKET,
    S3,
    SLOW_ORIGIN,
    SMALL_PIECE,
    SYNTH,
    Clusters,
    children_of,
    clusters,
    header_bytes,
    model_row,
    premise,
    row_of,
    s3,
    wait_until,
    watch,
)

#: the stalled-relay scenario: a model bigger than a relay's socket send buffer (8 MiB on Linux
#: with modeldist's SO_SNDBUF), so a relay paced slower than it receives fills that buffer and is
#: blocked in the middle of a piece when it is stopped
BIG_BYTES = 48 << 20
BIG_PIECE = 256 << 10
#: the relay's pace per child (``--upload-bps`` = 4x this: a parent paces each child at
#: 0.98 x upload / max(k, children))
RELAY_PACE = 3 << 20
STALL_TIMEOUT = 2.0
#: the scheduler's silence timer in the stall scenarios: well above the children's read deadline,
#: so the two can be told apart
STALL_DEAD_AFTER = 12.0


# ------------------------------------------------------------------------------------------------
# helpers


class VerboseCluster(LocalCluster):
    """A LocalCluster whose processes log at INFO (``modeldist -v``): the agents' "stalled from X"
    lines and the scheduler's re-plans, with millisecond timestamps, are the evidence here."""

    def _spawn(self, name, args):
        return super()._spawn(name, ["-v", *args])


def start_verbose(clusters: Clusters, peers: int, **kw) -> LocalCluster:
    c = VerboseCluster(clusters.tmp / f"cluster{len(clusters.all)}", peers, **kw)
    clusters.all.append(c)  # torn down (and SIGCONT'ed) by the fixture even if the start fails
    c.__enter__()
    return c


def store_manifest(cluster: LocalCluster, node: str, model: str, timeout: float = 20) -> Manifest:
    """The manifest a node's agent wrote into its store (read there: asking the origin would count)."""
    path = cluster.store_of(node) / model / "manifest.json"
    wait_for(path.exists, timeout, f"{path}")
    return Manifest.from_json(path.read_bytes())


def bitmap(cluster: LocalCluster, node: str, model: str) -> bytes:
    """One byte per piece, 1 = verified and committed (the store's own record)."""
    return (cluster.store_of(node) / model / ".modeldist" / "pieces").read_bytes()


def held(cluster: LocalCluster, node: str, model: str, indices) -> set[int]:
    try:
        bm = bitmap(cluster, node, model)
    except FileNotFoundError:
        return set()
    return {i for i in indices if i < len(bm) and bm[i] == 1}


def stripe_pieces(manifest: Manifest, k: int, stripes) -> list[int]:
    return [i for s in stripes for i in range(s, len(manifest.pieces), k)]


def root_of(row: ModelRow) -> dict[int, str]:
    """Stripe -> the node reading it from the origin."""
    return {s: n.node_id for n in row.nodes for s, p in enumerate(n.parents) if p == "origin"}


def partial_pieces(store: Path, model: str, origin_dir: Path, indices) -> dict[int, int]:
    """Pieces of ``indices`` a store has not committed but holds the first bytes of: a piece cut
    off mid-way. Index -> how many leading bytes equal the origin's (0 < n < piece length)."""
    folder = store / model
    m = Manifest.from_json((folder / "manifest.json").read_bytes())
    bm = (folder / ".modeldist" / "pieces").read_bytes()
    out = {}
    for i in indices:
        if bm[i] == 1:
            continue
        p = m.pieces[i]
        with open(folder / p.file, "rb") as a, open(origin_dir / p.file, "rb") as b:
            a.seek(p.offset)
            b.seek(p.offset)
            x = np.frombuffer(a.read(p.length), np.uint8)
            y = np.frombuffer(b.read(p.length), np.uint8)
        n = min(len(x), len(y))
        diff = np.flatnonzero(x[:n] != y[:n])
        same = int(diff[0]) if diff.size else n
        if 0 < same < p.length:
            out[i] = same
    return out


#: sendto and sendmsg, by machine (the data plane sends pieces with sendmsg, the rest with sendall);
#: elsewhere the wait channel alone decides
_SEND_SYSCALLS = {"x86_64": {44, 46}, "aarch64": {206, 211}}.get(os.uname().machine)


def send_blocked(pid: int) -> bool:
    """A thread of ``pid`` sleeps inside a send syscall (a full socket buffer): mid-piece, since a
    piece is sent with one ``sendmsg`` of header + payload."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tids:
        try:
            wchan = Path(f"/proc/{pid}/task/{tid}/wchan").read_text().strip()
            call = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()[0]
        except (OSError, IndexError):
            continue
        if wchan in ("sk_stream_wait_memory", "wait_woken") and (
                _SEND_SYSCALLS is None or (call.isdigit() and int(call) in _SEND_SYSCALLS)):
            return True
    return False


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_lines(cluster: LocalCluster, name: str, needle: str) -> list[tuple[float, str]]:
    """(epoch seconds, line) of the lines of a process's log containing ``needle``."""
    path = cluster.logs / f"{name}.log"
    out = []
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        m = _STAMP.match(line)
        if m and needle in line:
            out.append((datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp(), line))
    return out


def differing(cluster: LocalCluster, model: str, nodes, origin_dir: Path) -> dict[str, list[str]]:
    """Per node, the files that differ from the origin (or a missing completion marker)."""
    out = {}
    for n in nodes:
        try:
            out[n] = verify_store(cluster.store_of(n), model, origin_dir)
        except OSError as exc:  # no manifest yet: nothing there at all
            out[n] = [f"<{exc}>"]
    return {n: v for n, v in out.items() if v}


# ------------------------------------------------------------------------------------------------
# scenario 1: kill -9 of a seed (a stripe root) half-way through its stripe


@dataclass
class SeedKill:
    model: str
    total: int            # model bytes
    headers: int          # what the scheduler's manifest read takes from the origin
    served: int           # object bytes the origin served (counted at the proxy)
    victim: str
    stripe: int
    new_root: str
    stripe_bytes: int
    victim_origin_at_kill: int   # bytes of its stripe the victim had read when killed
    reads: dict[int, int]        # piece -> full reads at the origin
    lengths: dict[int, int]      # piece -> bytes
    new_root_held: set[int]      # stripe pieces the promoted root held at the kill
    survivors_held: set[int]     # ... any survivor held at the kill
    survivors: list[str]
    bad: dict[str, list[str]]
    seconds: float               # stage -> every survivor complete
    kill_at: float               # seconds after the stage
    row: ModelRow = field(repr=False)
    timeline: list = field(default_factory=list, repr=False)

    @property
    def over_read(self) -> int:
        return self.served - self.total - self.headers

    @property
    def reread(self) -> dict[int, int]:
        return {i: n - 1 for i, n in self.reads.items() if n > 1}

    @property
    def reread_bytes(self) -> int:
        return sum(self.lengths[i] * n for i, n in self.reread.items())

    def describe(self) -> str:
        return (f"killed stripe-{self.stripe} root {self.victim} at {self.kill_at:.1f}s with "
                f"{self.victim_origin_at_kill}/{self.stripe_bytes} bytes of its stripe read; {self.new_root} "
                f"promoted; origin over-read {self.over_read} bytes = pieces read twice "
                f"{sorted(self.reread)}; re-read pieces another survivor held: "
                f"{sorted(set(self.reread) & self.survivors_held)}")


def _piece_reads(proxy: CountingProxy, manifest: Manifest, prefix: str) -> dict[int, int]:
    """Full reads of each piece at the origin (a ranged GET of exactly that piece) by the agents:
    the scheduler's own read of an index file (whole, as ``header_bytes`` counts it) is left out."""
    where = {(f"/{BUCKET}/{prefix}/{p.file}", p.offset, p.offset + p.length - 1): i
             for i, p in enumerate(manifest.pieces)}
    count: dict[int, int] = {}
    for g in proxy.stats.object_gets(BUCKET):
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", g.range)
        if not m or g.status not in (200, 206):
            continue
        i = where.get((g.path, int(m.group(1)), int(m.group(2))))
        if i is not None and g.nbytes == manifest.pieces[i].length:
            count[i] = count.get(i, 0) + 1
    sizes = {f.path: f.size for f in manifest.files}
    for i, p in enumerate(manifest.pieces):
        if p.file.endswith(".safetensors.index.json") and p.length == sizes[p.file] and count.get(i):
            count[i] -= 1
    return count


def seed_kill(s3: S3, clusters: Clusters, *, peers: int = 4, rate: float = SLOW_ORIGIN, stripe: int = 1,
              at: tuple[float, float] = (0.3, 0.6), cluster_kw: dict | None = None) -> SeedKill:
    """Broadcast the synthetic model from S3 (origin throttled to ``rate``); kill -9 the root of
    ``stripe`` once it has read between ``at`` of its stripe; wait for the survivors."""
    with CountingProxy(s3.port, rate=rate) as proxy:
        cluster = clusters.start(peers, piece_size=f"{SMALL_PIECE}", env=s3.env, **(cluster_kw or {}))
        t0 = time.monotonic()
        model, _, total = start_stage(cluster.address, s3_uri(proxy.port, BUCKET, SYNTH))
        row = model_row(cluster.address, model)
        victim = root_of(row)[stripe]
        manifest = store_manifest(cluster, victim, model)
        k = row.stripes
        mine = stripe_pieces(manifest, k, [stripe])
        stripe_bytes = sum(manifest.pieces[i].length for i in mine)
        before = wait_until(cluster.address, model,
                            lambda r: at[0] * stripe_bytes <= row_of(r, victim).origin_bytes <= at[1] * stripe_bytes,
                            60, f"{victim} to read {at[0]:.0%}-{at[1]:.0%} of stripe {stripe}")
        kill_at = time.monotonic() - t0
        cluster.kill(victim)
        survivors = sorted(n.node_id for n in row.nodes if n.node_id != victim)
        # right after the kill: which of the dead root's pieces the survivors hold
        at_kill = {n: held(cluster, n, model, mine) for n in survivors}
        w = watch(cluster.address, model, ignore=[victim], timeout=60)
        seconds = time.monotonic() - t0
        new_root = root_of(w.row)[stripe]
        return SeedKill(
            model=model, total=total, headers=header_bytes(s3.synth_dir), served=proxy.stats.object_bytes(BUCKET),
            victim=victim, stripe=stripe, new_root=new_root, stripe_bytes=stripe_bytes,
            victim_origin_at_kill=row_of(before, victim).origin_bytes,
            reads=_piece_reads(proxy, manifest, SYNTH),
            lengths={i: p.length for i, p in enumerate(manifest.pieces)}, new_root_held=at_kill.get(new_root, set()),
            survivors_held=set().union(*at_kill.values()), survivors=survivors,
            bad=differing(cluster, model, survivors, s3.synth_dir), seconds=seconds, kill_at=kill_at,
            row=w.row, timeline=w.timeline)


@pytest.fixture(scope="module")
def seed_killed(s3, tmp_path_factory):
    """One run of the seed-kill scenario, shared by the tests that check what it left behind."""
    with Clusters(tmp_path_factory.mktemp("seed-kill")) as cl:
        yield seed_kill(s3, cl)


@pytest.mark.timeout(120)
def test_kill_seed_mid_stripe_survivors_complete_bit_identical(seed_killed):
    r = seed_killed
    print(r.describe())
    premise(0 < r.victim_origin_at_kill < r.stripe_bytes, "the seed was not killed half-way through its stripe")
    assert not r.bad, f"stores differ from the origin: {r.bad}"
    assert all(row_of(r.row, n).complete for n in r.survivors), r.row
    assert row_of(r.row, r.victim).state == "dead"
    # a survivor took over the stripe: it reads from the origin only what it did not hold
    assert r.new_root in r.survivors and r.new_root != r.victim
    assert "origin" in row_of(r.row, r.new_root).parents
    assert r.victim in row_of(r.row, r.new_root).reparented_from
    for n in r.survivors:
        rn = row_of(r.row, n)
        assert rn.origin_bytes + rn.peer_bytes == r.total, rn
    # what the system guarantees at the origin: every piece is read at most twice, and a piece read
    # twice is one the promoted root did not hold when the seed died (nothing it held is re-read);
    # the over-read is exactly those pieces (no stray or partial reads)
    assert all(n <= 2 for n in r.reads.values()), r.reads
    assert not set(r.reread) & r.new_root_held, r.describe()
    assert r.over_read == r.reread_bytes, r.describe()


@pytest.mark.timeout(120)
def test_kill_seed_mid_stripe_rereads_only_what_died_with_it(seed_killed):
    """The origin is read twice only for what no survivor holds: the seed's in-flight reads
    (``seed_concurrency`` ranged GETs) and pieces it had read but not yet forwarded die with it.
    Nothing that exists anywhere in the cluster is read from the origin again."""
    r = seed_killed
    print(r.describe())
    assert not set(r.reread) & r.survivors_held, r.describe()
    assert r.over_read == r.reread_bytes


# ------------------------------------------------------------------------------------------------
# scenario 2: a relay stopped (SIGSTOP) with part of a piece on the wire


@dataclass
class StalledRelay:
    model: str
    total: int
    relay: str
    children: list[str]           # the relay's children when it was stopped (it was blocked mid-send)
    partial: dict[str, dict[int, int]]   # child -> {piece: leading bytes it got} once stalled
    stalled_after: float | None   # stop -> the first child's "stalled from <relay>" line (read deadline)
    reparented_after: float | None  # stop -> every child has another parent (status)
    declared_dead_why: str        # the scheduler's reason when it removed the relay
    seconds: float                # stop -> every survivor complete
    since_stage: float            # stage -> every survivor complete
    survivors: list[str]
    bad: dict[str, list[str]]
    origin_total: int             # the survivors' own origin counters
    row: ModelRow = field(repr=False)

    def describe(self) -> str:
        return (f"stopped relay {self.relay} (children {self.children}, stopped blocked in a send); "
                f"partial pieces at the children: {self.partial}; read deadline fired "
                f"{self.stalled_after if self.stalled_after is None else round(self.stalled_after, 2)}s after "
                f"the stop; re-parented {self.reparented_after if self.reparented_after is None else round(self.reparented_after, 2)}s "
                f"after it ({self.declared_dead_why!r}); all complete {self.seconds:.2f}s after it")


def stalled_relay(clusters: Clusters, origin_dir: Path, *, stall_timeout: float = STALL_TIMEOUT,
                  dead_after: float = STALL_DEAD_AFTER, pace: float = RELAY_PACE, piece: int = BIG_PIECE,
                  timeout: float = 45, stop: bool = True) -> StalledRelay:
    """Six agents; node4 (interior in stripe 0 below its root, with a child) paces each child at
    ``pace`` while its parent feeds it at local-origin speed, so its socket buffer fills and its
    sender blocks mid-piece; then SIGSTOP. The kernel drains what was queued, the child is left
    with part of a piece and hits its read deadline (``--stall-timeout``). ``stop=False``: the
    same broadcast without the fault (the benchmark's reference)."""
    relay = "node4"
    cluster = start_verbose(clusters, 0, piece_size=f"{piece}", dead_after=dead_after,
                            agent_args=["--stall-timeout", str(stall_timeout)])
    for i in range(6):
        node = f"node{i}"
        cluster.start_agent(node, ["--upload-bps", str(int(pace * 4 / 0.98) + 1)] if node == relay else None)
    cluster.wait_registered(6)
    t0 = time.monotonic()
    model, n_nodes, total = start_stage(cluster.address, str(origin_dir))
    premise(n_nodes == 6, f"6 nodes expected, got {n_nodes}")
    row = model_row(cluster.address, model)
    kids = sorted(children_of(row, relay))
    premise(bool(kids) and relay not in root_of(row).values(),
            f"{relay} is not an interior non-root node: {[(n.node_id, n.parents) for n in row.nodes]}")
    fed = {c: [s for s, p in enumerate(row_of(row, c).parents) if p == relay] for c in kids}
    pid = cluster.agents[relay].pid
    wait_for(lambda: send_blocked(pid), 20, f"{relay}'s upload to block on a full socket buffer")
    partial: dict[str, dict[int, int]] = {}
    first_stall = reparented = None
    if stop:
        os.kill(pid, signal.SIGSTOP)
    t_stop, wall_stop = time.monotonic(), time.time()
    if stop:
        # the kernel drains what the relay had queued; once the children's bytes stop changing (their
        # read deadline is still seconds away, and a re-plan refetches the piece right after it),
        # each holds the piece it was cut off in
        indices = {c: stripe_pieces(store_manifest(cluster, c, model), row.stripes, fed[c]) for c in kids}

        def settled():
            a = {c: partial_pieces(cluster.store_of(c), model, origin_dir, indices[c]) for c in kids}
            time.sleep(stall_timeout / 4)
            b = {c: partial_pieces(cluster.store_of(c), model, origin_dir, indices[c]) for c in kids}
            return b if a == b and all(b.values()) else None

        partial = wait_for(settled, timeout, f"{kids} cut off mid-piece", interval=0.0)
        wait_for(lambda: all(log_lines(cluster, c, f"stalled from {relay}") for c in kids), timeout,
                 f"the read deadline of {kids}")
        first_stall = min(t for c in kids for t, _ in log_lines(cluster, c, f"stalled from {relay}")) - wall_stop
        wait_until(cluster.address, model, lambda r: all(relay not in row_of(r, c).parents for c in kids),
                   timeout, f"{kids} re-parented away from {relay}")
        reparented = time.monotonic() - t_stop
    w = watch(cluster.address, model, ignore=[relay] if stop else (), timeout=timeout)
    now = time.monotonic()
    dead = log_lines(cluster, "scheduler", f"node {relay} declared dead")
    survivors = sorted(n.node_id for n in w.row.nodes if n.node_id != relay or not stop)
    return StalledRelay(
        model=model, total=total, relay=relay, children=kids, partial=partial,
        stalled_after=first_stall, reparented_after=reparented,
        declared_dead_why=dead[0][1].split("declared dead", 1)[1].strip() if dead else "",
        seconds=now - t_stop, since_stage=now - t0, survivors=survivors,
        bad=differing(cluster, model, survivors, origin_dir),
        origin_total=sum(row_of(w.row, n).origin_bytes for n in survivors), row=w.row)


@pytest.fixture(scope="module")
def big_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("big") / "model"
    generate_model(folder, BIG_BYTES)
    return folder


@pytest.fixture(scope="module")
def relay_stalled(big_model, tmp_path_factory):
    # closing SIGCONTs the stopped relay, then terminates everything
    with Clusters(tmp_path_factory.mktemp("stalled-relay")) as cl:
        yield stalled_relay(cl, big_model)


@pytest.mark.timeout(120)
def test_stalled_relay_mid_piece_children_reparented_bit_identical(relay_stalled, big_model):
    r = relay_stalled
    print(r.describe())
    # the stall really was mid-piece: every child holds the first bytes of a piece, not the rest
    assert all(len(p) == 1 for p in r.partial.values()), r.describe()
    assert r.stalled_after is not None and r.stalled_after >= STALL_TIMEOUT, r.describe()
    for c in r.children:
        rc = row_of(r.row, c)
        assert r.relay in rc.reparented_from and r.relay not in rc.parents, rc
    assert all(row_of(r.row, n).complete for n in r.survivors), r.row
    assert not r.bad, f"stores differ from the origin: {r.bad}"
    assert r.origin_total == r.total  # a relay is no seed: the origin was still read once


@pytest.mark.timeout(120)
def test_stalled_relay_children_reparented_at_their_read_deadline(relay_stalled):
    r = relay_stalled
    # re-planned within a few seconds of the first read deadline, not at the scheduler's silence timer
    assert r.reparented_after is not None and r.stalled_after is not None
    assert r.reparented_after - r.stalled_after < 3.0, r.describe()


# ------------------------------------------------------------------------------------------------
# scenario 3: a peer whose data plane stalls mid-piece while its control plane keeps reporting


def stall_mid_piece(peer: RoguePeer) -> list[tuple[str, int, int]]:
    """Make an honest ``RoguePeer`` (real gRPC, real TCP listener and handshake) send every data
    session the frame header and the first half of the first piece asked for, then nothing more,
    while its Report stream keeps beating: a wedged sender, not a dead node. Returns the list it
    appends (child, piece, bytes sent) to, one entry per stalled session."""
    from modeldist.transport.tcp import wire

    listener = peer.listener
    stalls: list[tuple[str, int, int]] = []
    lock = threading.Lock()

    def send_half_then_stall(conn, source, pending, state=None, *, stream=False) -> None:
        i = max(pending[:64], key=source.piece_length)  # a big one: cut off well inside it
        view = source.wait_piece(i, 5.0)
        half = len(view) // 2
        conn.sendall(wire.FRAME.pack(wire.T_PIECE, i, len(view)))
        conn.sendall(view[:half])
        source.sent(half, "tcp")
        with lock:
            stalls.append((source.child, i, half))
        listener._closed.wait(120)  # until the peer is closed

    listener._send_pieces = send_half_then_stall
    return stalls


@dataclass
class StalledPeer:
    model: str
    total: int
    peer: str
    children: list[str]
    stalls: list                 # (child, piece, bytes) per data session the peer stalled
    deadlines: dict[str, int]    # child -> read deadlines / failed handshakes it logged against the peer
    partial: dict[str, dict[int, int]]
    completed: bool              # every honest node complete within the wait
    seconds: float
    parents: dict[str, list[str]]  # honest node -> its parents at the end
    bad: dict[str, list[str]]    # honest nodes that completed but differ from the origin
    row: ModelRow = field(repr=False)

    def describe(self) -> str:
        return (f"{self.peer} stalled {len(self.stalls)} sessions mid-piece {self.stalls[:6]}...; children "
                f"{self.children} logged {self.deadlines} read deadlines/failed handshakes against it; "
                f"complete: {self.completed} after {self.seconds:.1f}s; parents at the end {self.parents}")


def stalled_live_peer(clusters: Clusters, origin_dir: Path, *, stall_timeout: float = STALL_TIMEOUT,
                      wait: float = 15.0) -> StalledPeer:
    """Three agents and a stalling peer (a stripe root) broadcast ``origin_dir``; wait up to
    ``wait`` seconds for the three to complete."""
    cluster = start_verbose(clusters, 0, piece_size="1MiB", agent_args=["--stall-timeout", str(stall_timeout)])
    for i in range(3):
        cluster.start_agent(f"node{i}")
    cluster.wait_registered(3)
    honest = ["node0", "node1", "node2"]
    with RoguePeer(cluster.address, origin_dir, node_id="stuck", corrupt=False) as peer:
        stalls = stall_mid_piece(peer)
        t0 = time.monotonic()
        model, n_nodes, total = start_stage(cluster.address, str(origin_dir))
        premise(n_nodes == 4, f"4 nodes expected, got {n_nodes}")
        row = model_row(cluster.address, model)
        kids = sorted(children_of(row, "stuck"))
        premise(bool(kids) and "stuck" in root_of(row).values(), f"the stalling peer feeds nobody: {row}")
        fed = {c: [s for s, p in enumerate(row_of(row, c).parents) if p == "stuck"] for c in kids}
        try:
            w = watch(cluster.address, model, ignore=["stuck"], timeout=wait)
            completed, row = True, w.row
        except TimeoutError:
            completed, row = False, model_row(cluster.address, model)
        seconds = time.monotonic() - t0
        partial = {}
        for c in kids:
            manifest = store_manifest(cluster, c, model)
            partial[c] = partial_pieces(cluster.store_of(c), model, origin_dir,
                                        stripe_pieces(manifest, row.stripes, fed[c]))
        deadlines = {c: len(log_lines(cluster, c, "from stuck:")) for c in kids}
        done = [n for n in honest if row_of(row, n).complete]
        return StalledPeer(model=model, total=total, peer="stuck", children=kids, stalls=list(stalls),
                           deadlines=deadlines, partial=partial, completed=completed, seconds=seconds,
                           parents={n: list(row_of(row, n).parents) for n in honest},
                           bad=differing(cluster, model, done, origin_dir), row=row)


@pytest.fixture(scope="module")
def peer_stalled(minilm_dir, tmp_path_factory):
    with Clusters(tmp_path_factory.mktemp("stalled-peer")) as cl:
        yield stalled_live_peer(cl, minilm_dir)


@pytest.mark.timeout(120)
def test_live_peer_stalled_mid_piece_hits_read_deadline_commits_nothing_bad(peer_stalled):
    r = peer_stalled
    print(r.describe())
    assert r.stalls and all(0 < n for _, _, n in r.stalls)
    # the first child to hit its read deadline reports it; the scheduler sees the stuck peer holds
    # pieces it owes that child and takes it out, so the other children may be re-parented before
    # their own deadline comes
    assert any(r.deadlines[c] >= 1 for c in r.children), r.describe()
    # a piece cut off mid-way is never committed: the child holds its first half, uncommitted
    assert all(p for p in r.partial.values()) or r.completed, r.describe()
    assert not r.bad, f"stores differ from the origin: {r.bad}"


@pytest.mark.timeout(120)
def test_live_peer_stalled_mid_piece_children_reparented_and_complete(peer_stalled):
    r = peer_stalled
    assert r.completed, r.describe()
    assert all("stuck" not in p for p in r.parents.values()), r.describe()


# ------------------------------------------------------------------------------------------------
# scenario 4: one node's store is full (ENOSPC)


@pytest.mark.timeout(120)
def test_store_full_node_fails_clearly_and_its_children_are_reparented(s3, clusters):
    """One agent's store is a 16 MiB tmpfs (the model is 24 MiB): it cannot take the model. It
    says so (state failed, the StoreError in its status), nothing there is marked complete, and the
    nodes it was to feed are re-parented and complete bit-identical; the origin is still read once."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    victim = "node3"
    with CountingProxy(s3.port, rate=SLOW_ORIGIN) as proxy:
        cluster = clusters.start(0, piece_size=f"{SMALL_PIECE}", env=s3.env)
        mnt = cluster.store_of(victim)
        mnt.mkdir(parents=True, exist_ok=True)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)]).returncode != 0:
            pytest.skip("cannot mount a tmpfs here")
        try:
            for i in range(4):
                cluster.start_agent(f"node{i}")
            cluster.wait_registered(4)
            model, _, total = start_stage(cluster.address, s3_uri(proxy.port, BUCKET, SYNTH))
            w = watch(cluster.address, model, ignore=[victim], timeout=60)
            row = w.row
            v = row_of(row, victim)
            assert v.state == "failed" and "StoreError" in v.error, v
            assert not v.complete
            assert not children_of(row, victim), "someone still waits for the failed node"
            survivors = [n.node_id for n in row.nodes if n.node_id != victim]
            assert all(row_of(row, n).complete for n in survivors), row
            assert not differing(cluster, model, survivors, s3.synth_dir)
            assert not (mnt / model / ".modeldist" / "complete").exists()
            assert sum(row_of(row, n).origin_bytes for n in survivors) == total
            assert proxy.stats.object_bytes(BUCKET) == total + header_bytes(s3.synth_dir)
        finally:
            for p in cluster.agents.values():
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=10)
            subprocess.run(["umount", "-l", str(mnt)])
