"""Broadcast strategies driven by the flow engine: the real modeldist planner and four baselines.

Node indices: ``0 .. n_total-1`` are cluster nodes (the first ``nodes`` start at t=0, the rest are
late joiners), ``origin = n_total`` is the origin (it holds every piece; only its uplink matters).

Tree strategies (``modeldist``, ``chain``, ``binary``, ``naive``) share one mechanism: for every
stripe ``s`` (piece ``i`` is in stripe ``i % k``) a node has one parent (or the origin); the
parent->child link of a stripe sends that stripe's pieces in order, one piece at a time, each one
as soon as the parent holds it in full. After a failure or a parent change a child resumes from the
first piece of the stripe it lacks (a piece in flight from a dead parent is lost and refetched).
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np

from .engine import Engine, Flow

__all__ = ["Strategy", "TreeStrategy", "ModeldistPlan", "ModeldistSpare", "Chain", "BinaryTree", "NaivePull", "Swarm",
           "STRATEGIES"]


class Strategy:
    name = "?"

    def __init__(self, eng: Engine, *, n_initial: int, n_total: int, sizes: Sequence[float], up: Sequence[float],
                 down: Sequence[float], rng: np.random.Generator, options: dict) -> None:
        self.eng = eng
        self.n_initial = n_initial
        self.n_total = n_total
        self.origin = n_total
        self.sizes = list(sizes)
        self.P = len(self.sizes)
        self.up = up
        self.down = down
        self.rng = rng
        self.opt = options
        self.alive = [i < n_initial for i in range(n_total)] + [True]
        self.done = [math.nan] * n_total
        self.joined_at = [0.0 if i < n_initial else math.nan for i in range(n_total)]
        self.failed: set[int] = set()
        self.info: dict = {}
        eng.on_complete = self.on_complete

    def node_id(self, i: int) -> str:
        return f"n{i:05d}"

    # hooks
    def begin(self) -> None: ...

    def on_complete(self, flows: list[Flow]) -> None: ...

    def fail(self, nodes: list[int]) -> None: ...

    def repair(self, nodes: list[int]) -> None: ...

    def join(self, nodes: list[int]) -> None: ...

    def all_done(self) -> bool:
        return self.remaining_alive == 0


class TreeStrategy(Strategy):
    """In-order, piece-pipelined forwarding along per-stripe parent pointers."""

    def setup_trees(self, k: int, parent: list[list[int]]) -> None:
        self.k = k
        self.npcs = [len(range(s, self.P, k)) for s in range(k)]
        self.recv = [[0] * (self.n_total + 1) for _ in range(k)]
        for s in range(k):
            self.recv[s][self.origin] = self.npcs[s]
        self.busy: list[list[Flow | None]] = [[None] * self.n_total for _ in range(k)]
        self.left = [self.P] * self.n_total
        self.remaining_alive = self.n_initial
        self.set_parents(parent)

    def set_parents(self, parent: list[list[int]]) -> None:
        """``parent[s][v]``: node index, ``origin``, or -1 (none)."""
        self.parent = parent
        o = self.origin
        self.children = [[[] for _ in range(self.n_total)] for _ in range(self.k)]
        for s in range(self.k):
            ch = self.children[s]
            for v, p in enumerate(parent[s]):
                if p >= 0 and p != o:
                    ch[p].append(v)

    def try_start(self, v: int, s: int) -> None:
        if self.busy[s][v] is not None or not self.alive[v]:
            return
        i = self.recv[s][v]
        if i >= self.npcs[s]:
            return
        p = self.parent[s][v]
        if p < 0 or not self.alive[p] or self.recv[s][p] <= i:
            return
        piece = s + self.k * i
        self.busy[s][v] = self.eng.start(p, v, piece, self.sizes[piece], s, cap=self.pace_of(p, v))

    #: a parent paces each child at this share of min(its upload / children, the child's download
    #: / k), as the agents do (``Job.send_rate``) (None: unpaced)
    pace: float | None = None

    def pace_of(self, p: int, v: int) -> float:
        if self.pace is None or p == self.origin:
            return math.inf
        n = sum(len(ch[p]) for ch in self.children)
        return self.pace * min(self.up[p] / max(n, 1), self.down[v] / max(self.k, 1))

    def begin(self) -> None:
        for v in range(self.n_initial):
            for s in range(self.k):
                self.try_start(v, s)

    def on_complete(self, flows: list[Flow]) -> None:
        now = self.eng.now
        busy, recv, left = self.busy, self.recv, self.left
        for f in flows:
            v, s = f.dst, f.tag
            busy[s][v] = None
            recv[s][v] += 1
            left[v] -= 1
            if left[v] == 0:
                self.done[v] = now
                if self.alive[v]:
                    self.remaining_alive -= 1
        try_start, children = self.try_start, self.children
        for f in flows:
            v, s = f.dst, f.tag
            try_start(v, s)
            for c in children[s][v]:
                try_start(c, s)

    def fail(self, nodes: list[int]) -> None:
        eng = self.eng
        for v in nodes:
            if not self.alive[v]:
                continue
            self.alive[v] = False
            self.failed.add(v)
            if self.left[v] > 0:
                self.remaining_alive -= 1
            for f in list(eng.ups[v]) + list(eng.downs[v]):
                eng.abort(f)
                self.busy[f.tag][f.dst] = None

    def restart_all(self) -> None:
        for v in range(self.n_total):
            if self.alive[v]:
                for s in range(self.k):
                    self.try_start(v, s)

    def join(self, nodes: list[int]) -> None:
        for v in nodes:
            self.alive[v] = True
            self.joined_at[v] = self.eng.now
            self.remaining_alive += 1


class _FixedTree(TreeStrategy):
    """A baseline with one stripe and a fixed parent array; repair = nearest live ancestor."""

    def base_parents(self) -> list[int]:
        raise NotImplementedError

    def begin(self) -> None:
        self.orig = self.base_parents()
        self.setup_trees(1, [self.effective()])
        super().begin()

    def effective(self) -> list[int]:
        o = self.origin
        out = []
        for v in range(self.n_total):
            p = self.orig[v]
            while p != o and p >= 0 and p in self.failed:
                p = self.orig[p]
            out.append(p)
        return out

    def repair(self, nodes: list[int]) -> None:
        self.set_parents([self.effective()])
        self.restart_all()

    def join(self, nodes: list[int]) -> None:
        super().join(nodes)
        self.set_parents([self.effective()])
        for v in nodes:
            self.try_start(v, 0)


class Chain(_FixedTree):
    """origin -> n0 -> n1 -> ... (pipelined); late joiners append at the tail; repair: skip the dead node."""
    name = "chain"

    def base_parents(self) -> list[int]:
        return [self.origin] + list(range(self.n_total - 1))


class BinaryTree(_FixedTree):
    """A pipelined binary tree in heap order (fastest nodes on top); repair: grandparent adopts."""
    name = "binary"

    def base_parents(self) -> list[int]:
        order = sorted(range(self.n_initial), key=lambda v: (-self.up[v], v)) + list(range(self.n_initial, self.n_total))
        par = [0] * self.n_total
        for pos, v in enumerate(order):
            par[v] = self.origin if pos == 0 else order[(pos - 1) // 2]
        return par


class NaivePull(_FixedTree):
    """Every node reads the whole model from the origin at once."""
    name = "naive"

    def base_parents(self) -> list[int]:
        return [self.origin] * self.n_total


class ModeldistPlan(TreeStrategy):
    """The real planner: ``plan_broadcast``; ``remove_node`` on failure, ``add_node`` for late joiners.
    Parents pace each child as the agents do (``Job.send_rate``)."""
    name = "modeldist"
    pace = 0.98

    def begin(self) -> None:
        from modeldist.scheduler import planner as P

        self.P_mod = P
        self.index = {self.node_id(i): i for i in range(self.n_total)}
        infos = [self.nodeinfo(i) for i in range(self.n_initial)]
        t0 = time.perf_counter()
        self.plan = P.plan_broadcast(infos, stripes=self.opt.get("stripes"))
        self.info["plan_s"] = time.perf_counter() - t0
        self.info["initial_plan"] = self.describe(self.plan)
        self.setup_trees(self.plan.k, self.parents_from(self.plan))
        super().begin()

    def nodeinfo(self, i: int):
        return self.P_mod.NodeInfo(self.node_id(i), upload_bps=self.up[i] * 8, download_bps=self.down[i] * 8)

    def parents_from(self, plan) -> list[list[int]]:
        idx, o = self.index, self.origin
        out = []
        for t in plan.stripes:
            par = [-1] * self.n_total
            par[idx[t.root]] = o
            for c, p in t.parent.items():
                par[idx[c]] = idx[p]
            out.append(par)
        return out

    @staticmethod
    def describe(plan) -> dict:
        edges: dict[str, int] = {}
        for t in plan.stripes:
            for par in t.parent.values():
                edges[par] = edges.get(par, 0) + 1
        over = sum(1 for n, e in edges.items() if e > plan.slots.get(n, 1))
        off_home = sum(1 for t in plan.stripes for par in t.parent.values() if plan.home.get(par) != t.stripe)
        # the over-loaded uplinks: where they sit and how many nodes hang below them
        worst = []
        for t in plan.stripes:
            ch = t.children()
            size: dict[str, int] = {}

            def sub(x: str) -> int:
                stack, order = [x], []
                while stack:
                    y = stack.pop()
                    order.append(y)
                    stack.extend(ch.get(y, ()))
                for y in reversed(order):
                    size[y] = 1 + sum(size[c] for c in ch.get(y, ()))
                return size[x]

            for par, cs in ch.items():
                if edges.get(par, 0) > plan.slots.get(par, 1):
                    worst.append({"stripe": t.stripe, "node": par, "depth": t.depth_of(par), "children": len(cs),
                                  "children_all_stripes": edges[par], "slots": plan.slots.get(par, 1),
                                  "subtree": size[par] if par in size else sub(par), "is_root": par == t.root})
        worst.sort(key=lambda w: -w["subtree"])
        return {"k": plan.k, "fanout": plan.fanout, "depth": plan.depth(),
                "depth_per_stripe": [t.depth() for t in plan.stripes],
                "max_children": max(edges.values(), default=0),
                "nodes_over_slots": over, "edges_outside_home_stripe": off_home, "epoch": plan.epoch,
                "roots_over_slots": sum(1 for w in worst if w["is_root"]),
                "over_slots_largest_subtrees": worst[:6]}

    def repair(self, nodes: list[int]) -> None:
        t0 = time.perf_counter()
        for v in nodes:
            self.plan = self.P_mod.remove_node(self.plan, self.node_id(v))
        self.info["repair_s"] = self.info.get("repair_s", 0.0) + time.perf_counter() - t0
        self.info["plan_after_repair"] = self.describe(self.plan)
        self.set_parents(self.parents_from(self.plan))
        self.restart_all()

    def join(self, nodes: list[int]) -> None:
        super().join(nodes)
        t0 = time.perf_counter()
        for v in nodes:
            self.plan = self.P_mod.add_node(self.plan, self.nodeinfo(v))
        self.info["join_s"] = self.info.get("join_s", 0.0) + time.perf_counter() - t0
        self.info["plan_after_join"] = self.describe(self.plan)
        self.set_parents(self.parents_from(self.plan))
        self.restart_all()


class ModeldistSpare(ModeldistPlan):
    """WHAT-IF, not the planner's behaviour: the real plan, then, after every plan change, edges of
    nodes over their slot count (all stripes together) move to nodes with unused upload slots in
    *any* stripe (SplitStream's spare capacity group), progress-aware: a moved child goes to a node
    that is at most (tree depth + 2) pieces of that stripe behind it (least behind first, then
    shallowest); leaf children move first; a subtree moves only under a node outside it. Shows what
    the planner leaves on the table; the planner itself does not do this."""
    name = "modeldist+spare"

    def set_parents(self, parent: list[list[int]]) -> None:
        super().set_parents(parent)
        if getattr(self, "_rebalancing", False):
            return
        self._rebalancing = True
        try:
            self.rebalance()
        finally:
            self._rebalancing = False

    def cap_of(self, v: int) -> int:
        nid = self.node_id(v)
        if nid in self.plan.slots:
            return self.plan.slots[nid]
        ups = sorted(self.up[i] for i in range(self.n_total) if self.alive[i])
        med = ups[len(ups) // 2]
        return max(1, round(self.plan.fanout * self.up[v] / med))

    def rebalance(self) -> None:
        k, o, n = self.k, self.origin, self.n_total
        alive = self.alive
        par = [list(p) for p in self.parent]
        load = [0] * n
        for s in range(k):
            for c, p in enumerate(par[s]):
                if p >= 0 and p != o and alive[c]:
                    load[p] += 1
        cap = [self.cap_of(v) if alive[v] else 0 for v in range(n)]
        nkids = [[0] * n for _ in range(k)]
        for s in range(k):
            for c, p in enumerate(par[s]):
                if p >= 0 and p != o and alive[c]:
                    nkids[s][p] += 1
        depth = []
        for s in range(k):
            d = [-1] * n
            for v in range(n):
                if not alive[v] or par[s][v] < 0:
                    continue
                path, x = [], v
                while x != o and d[x] < 0:
                    path.append(x)
                    x = par[s][x]
                base = -1 if x == o else d[x]
                for y in reversed(path):
                    base += 1
                    d[y] = base
            depth.append(d)
        moved = 0
        lag = max(max(d) for d in depth) + 2  # pieces a target may be behind the child (the child waits)
        over = sorted((v for v in range(n) if alive[v] and load[v] > cap[v]), key=lambda v: min(depth[s][v] for s in range(k)))
        for x in over:
            while load[x] > cap[x]:
                best = None
                spare = [y for y in range(n) if alive[y] and load[y] < cap[y]]
                for s in range(k):
                    for c in self.children[s][x]:
                        if par[s][c] != x or not alive[c]:
                            continue
                        prog = self.recv[s][c] - lag
                        for y in spare:
                            if y == c or y == x or par[s][y] < 0 or self.recv[s][y] < prog:
                                continue
                            if nkids[s][c]:  # c carries a subtree: y must not be in it
                                a = y
                                while a != o and a != c:
                                    a = par[s][a]
                                if a == c:
                                    continue
                            # leaves first, then the target least behind the child, then the shallowest
                            key = (nkids[s][c] > 0, max(0, self.recv[s][c] - self.recv[s][y]), depth[s][y], y)
                            if best is None or key < best[0]:
                                best = (key, s, c, y)
                if best is None:
                    break
                _, s, c, y = best
                par[s][c] = y
                load[x] -= 1
                load[y] += 1
                nkids[s][x] -= 1
                nkids[s][y] += 1
                shift = depth[s][y] + 1 - depth[s][c]
                if shift:  # c and its subtree move
                    stack = [c]
                    while stack:
                        z = stack.pop()
                        depth[s][z] += shift
                        stack.extend(w for w in self.children[s][z])
                self.children[s][x].remove(c)
                self.children[s][y].append(c)
                moved += 1
        self.info["spare_moves"] = self.info.get("spare_moves", 0) + moved
        self.info["over_slots_after_moves"] = sum(1 for v in range(n) if alive[v] and load[v] > cap[v])
        self.parent = par


class Swarm(Strategy):
    """BitTorrent-like random swarm. A random peer graph: each node links to ``degree/2`` random
    others (links are both ways, so about ``degree`` neighbours each); the origin is a seed linked to
    ``origin_degree`` random nodes. Every node (the origin too) uploads to at most ``upload_slots``
    peers at a time (BitTorrent's unchoke slots, default 4) and keeps up to ``slots`` downloads in
    flight (default 4), each from a different random neighbour that holds the piece and has a free
    upload slot. Pieces are picked rarest first among the neighbours (a fixed random tie-break per node). Finished
    nodes keep seeding. No tit-for-tat, no end-game mode, no optimistic unchoke."""
    name = "swarm"

    def begin(self) -> None:
        import random

        n, P, o = self.n_total, self.P, self.origin
        rng = self.rng
        self.pyrng = random.Random(int(rng.integers(1 << 31)))
        self.slots = int(self.opt.get("swarm_slots", 4))
        D = int(self.opt.get("swarm_degree", 32))
        Do = int(self.opt.get("origin_degree", D))
        us = int(self.opt.get("upload_slots", 4))
        self.upfree = [us] * n + [int(self.opt.get("origin_upload_slots", us))]
        self.have = np.zeros((n + 1, P), dtype=bool)
        self.have[o] = True
        self.want = np.ones((n, P), dtype=bool)  # lacks the piece and has no download of it in flight
        # rarest-first key: alive neighbours holding the piece + a fixed random tie-break in [0, 1)
        self.score = rng.random((n + 1, P), dtype=np.float32)
        nb: list[set[int]] = [set() for _ in range(n + 1)]
        m = self.n_initial
        half = max(1, min(D // 2, m - 1))
        for v in range(m):
            if m <= 1:
                break
            for u in rng.choice(m - 1, half, replace=False):
                u = int(u) + (u >= v)
                nb[v].add(u)
                nb[u].add(v)
        for u in rng.choice(m, min(Do, m), replace=False):
            nb[o].add(int(u))
            nb[int(u)].add(o)
        self.nbl = [sorted(s) for s in nb]
        self.nbs = [frozenset(s) for s in self.nbl]
        self.nba = [np.array(s, dtype=np.intp) for s in self.nbl]
        for v in range(m):
            if o in nb[v]:
                self.score[v] += 1
        self.active = [0] * n
        self.serving: list[dict[int, int]] = [dict() for _ in range(n)]
        self.count = [0] * n
        self.waiting: set[int] = set()
        self.remaining_alive = m
        self.info["degree_mean"] = float(np.mean([len(s) for s in self.nbl[:m]]))
        for v in range(m):
            self.fill(v)

    def fill(self, v: int) -> None:
        free = self.slots - self.active[v]
        if free <= 0 or not self.alive[v] or self.count[v] == self.P:
            self.waiting.discard(v)
            return
        upfree, alive = self.upfree, self.alive
        src = [u for u in self.nbl[v] if upfree[u] > 0 and alive[u]]
        if not src:
            self.waiting.add(v)
            return
        have = self.have
        want = self.want[v]
        avail = np.logical_or.reduce(have[src], axis=0) if len(src) > 1 else have[src[0]]
        idx = np.flatnonzero(avail & want)
        if idx.size == 0:
            self.waiting.add(v)
            return
        key = self.score[v, idx]
        if idx.size > 4 * free:
            part = np.argpartition(key, 4 * free - 1)[:4 * free]
            order = idx[part[np.argsort(key[part])]]
        else:
            order = idx[np.argsort(key)]
        serving, rnd = self.serving[v], self.pyrng
        for p in order.tolist():
            hs = [u for u in src if upfree[u] > 0 and have[u, p]]
            if not hs:
                continue
            pool = [u for u in hs if u not in serving] or hs
            u = pool[int(rnd.random() * len(pool))]
            self.eng.start(u, v, p, self.sizes[p])
            self.want[v, p] = False
            self.active[v] += 1
            upfree[u] -= 1
            serving[u] = serving.get(u, 0) + 1
            free -= 1
            if free == 0:
                break
        if free:
            self.waiting.add(v)
        else:
            self.waiting.discard(v)

    def _unserve(self, v: int, u: int) -> None:
        s = self.serving[v]
        c = s[u] - 1
        if c:
            s[u] = c
        else:
            del s[u]
        self.upfree[u] += 1

    def _offer(self, u: int, p: int | None) -> None:
        """``u`` has a free upload slot (and, if ``p`` is given, a new piece ``p``): waiting neighbours,
        in random order, each take the rarest piece they lack from ``u``, until its slots are full.
        (A waiting node found nothing to fetch at its last look; since then only ``u`` changed.)"""
        waiting = self.waiting  # never holds a dead node
        if not waiting or not self.alive[u] or self.upfree[u] <= 0:
            return
        have, want = self.have, self.want
        ws = sorted(waiting.intersection(self.nbs[u]))
        if p is not None:
            ws = [w for w in ws if want[w, p]]
        if not ws:
            return
        r = int(self.pyrng.random() * len(ws))  # random rotation: who asks first
        ws = ws[r:] + ws[:r]
        need = have[u] & want[ws]  # (waiting neighbours) x pieces
        for j in np.flatnonzero(need.any(axis=1)).tolist():
            w = ws[j]
            idx = np.flatnonzero(need[j])
            q = int(idx[np.argmin(self.score[w, idx])])
            self.eng.start(u, w, q, self.sizes[q])
            want[w, q] = False
            self.active[w] += 1
            self.upfree[u] -= 1
            sv = self.serving[w]
            sv[u] = sv.get(u, 0) + 1
            if self.active[w] >= self.slots:
                waiting.discard(w)
            if self.upfree[u] <= 0:
                return

    def on_complete(self, flows: list[Flow]) -> None:
        now = self.eng.now
        have, score, nba, count, P = self.have, self.score, self.nba, self.count, self.P
        for f in flows:
            v, p = f.dst, f.piece
            have[v, p] = True
            self.active[v] -= 1
            self._unserve(v, f.src)
            score[nba[v], p] += 1
            count[v] += 1
            if count[v] == P:
                self.done[v] = now
                if self.alive[v]:
                    self.remaining_alive -= 1
        fill, offer = self.fill, self._offer
        for f in flows:
            fill(f.dst)
            offer(f.src, None)
            offer(f.dst, f.piece)

    def fail(self, nodes: list[int]) -> None:
        eng = self.eng
        refill = set()
        for v in nodes:
            if not self.alive[v]:
                continue
            self.alive[v] = False
            self.failed.add(v)
            if self.count[v] < self.P:
                self.remaining_alive -= 1
            for f in list(eng.ups[v]):
                eng.abort(f)
                self.want[f.dst, f.piece] = True
                self.active[f.dst] -= 1
                self._unserve(f.dst, v)
                refill.add(f.dst)
            for f in list(eng.downs[v]):
                eng.abort(f)
                self._unserve(v, f.src)
                refill.add(f.src)
            self.score[self.nba[v]] -= self.have[v]
            self.waiting.discard(v)
        for w in sorted(refill):
            if w == self.origin or not self.alive[w]:
                continue
            self.fill(w)
        for w in sorted(refill):  # uploaders that lost a downloader have a free slot
            self._offer(w, None)

    def join(self, nodes: list[int]) -> None:
        D = int(self.opt.get("swarm_degree", 32))
        for v in nodes:
            self.alive[v] = True
            self.joined_at[v] = self.eng.now
            self.remaining_alive += 1
            pool = [u for u in range(self.n_total) if self.alive[u] and u != v]
            pick = sorted(int(pool[i]) for i in self.rng.choice(len(pool), min(max(1, D // 2), len(pool)), replace=False))
            self.nbl[v] = pick
            for u in pick + [v]:
                if u != v:
                    self.nbl[u] = sorted(self.nbl[u] + [v])
                self.nbs[u] = frozenset(self.nbl[u])
                self.nba[u] = np.array(self.nbl[u], dtype=np.intp)
            self.score[v] += self.have[pick].sum(axis=0)
        for v in nodes:
            self.fill(v)


STRATEGIES = {c.name: c for c in (ModeldistPlan, Chain, BinaryTree, NaivePull, Swarm, ModeldistSpare)}
