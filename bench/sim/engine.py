"""A flow-level event engine: transfers of whole pieces over per-node uplink/downlink capacities.

Model
-----
Every node has an uplink and a downlink capacity (bytes/s). A *flow* moves one piece from ``src``
to ``dst``. While active, a flow runs at

    rate = min(up[src] / (#active flows out of src), down[dst] / (#active flows into dst), cap)

(``cap``: the flow's own pacing limit, infinite unless the strategy sets one)

i.e. each link is shared equally among the flows using it and a flow gets the smaller of its two
shares (the usual "fair share of the bottleneck" fluid approximation; it is not max-min water-filling:
share left unused by a flow that is limited elsewhere is not handed to the others). A flow completes
when its bytes are through; the strategy is told and may start more flows (a node forwards a piece
only once it holds all of it, so pipelining is at piece granularity). No latency, no protocol
overhead, no core-network limit: links at the edge are the only resources.

Efficiency
----------
Completions are processed in batches (all flows ending within ``eps`` of each other: synchronous
trees end many flows at the same instant). After a batch only the flows at nodes whose *number* of
active flows changed get a new rate (a finished piece followed at once by the next piece on the same
link changes nothing), and the event heap is lazily invalidated (version numbers).
"""

from __future__ import annotations

import heapq
import math
from typing import Callable

__all__ = ["Flow", "Engine"]


class Flow:
    __slots__ = ("src", "dst", "piece", "size", "left", "t0", "rate", "ver", "tag", "alive", "cap")

    def __init__(self, src: int, dst: int, piece: int, size: float, t0: float, tag, cap: float = math.inf) -> None:
        self.src = src
        self.dst = dst
        self.piece = piece
        self.size = size
        self.left = size
        self.t0 = t0
        self.rate = 0.0
        self.ver = 0
        self.tag = tag
        self.alive = True
        self.cap = cap  # a pacing limit of its own (bytes/s), on top of the link shares


class Engine:
    def __init__(self, up: list[float], down: list[float], *, eps: float, fairness: str = "local") -> None:
        if fairness not in ("local", "maxmin"):
            raise ValueError(f"fairness must be local or maxmin, not {fairness!r}")
        self.fairness = fairness
        self.up = [float(x) for x in up]
        self.down = [float(x) for x in down]
        n = len(self.up)
        # dicts used as insertion-ordered sets: iteration order, hence every run, is deterministic
        self.ups: list[dict[Flow, None]] = [{} for _ in range(n)]
        self.downs: list[dict[Flow, None]] = [{} for _ in range(n)]
        self.sent = [0.0] * n  # bytes that left each node's uplink (finished and aborted flows)
        self.heap: list = []
        self.timers: list = []
        self.now = 0.0
        self.eps = eps
        self._seq = 0
        self._touched: dict[int, tuple[int, int]] = {}
        self._new: list[Flow] = []
        self.flows_done = 0
        self.flows_aborted = 0
        self.batches = 0
        self.on_complete: Callable[[list[Flow]], None] = lambda fs: None
        self.stop: Callable[[], bool] = lambda: False

    # -- flows --------------------------------------------------------------------------------

    def _touch(self, node: int) -> None:
        if node not in self._touched:
            self._touched[node] = (len(self.ups[node]), len(self.downs[node]))

    def start(self, src: int, dst: int, piece: int, size: float, tag=None, cap: float = math.inf) -> Flow:
        f = Flow(src, dst, piece, size, self.now, tag, cap)
        self._touch(src)
        self._touch(dst)
        self.ups[src][f] = None
        self.downs[dst][f] = None
        self._new.append(f)
        return f

    def abort(self, f: Flow) -> float:
        """Stop ``f`` now; returns the bytes it had moved (they count as sent, then are lost)."""
        if not f.alive:
            return 0.0
        moved = f.size - (f.left - f.rate * (self.now - f.t0))
        f.alive = False
        self._touch(f.src)
        self._touch(f.dst)
        self.ups[f.src].pop(f, None)
        self.downs[f.dst].pop(f, None)
        self.sent[f.src] += moved
        self.flows_aborted += 1
        return moved

    def at(self, t: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self.timers, (t, self._seq, fn))

    def _settle(self) -> None:
        """New rates for flows at nodes whose number of active flows changed, and for new flows."""
        if self.fairness == "maxmin":
            return self._settle_maxmin()
        ups, downs, up, down = self.ups, self.downs, self.up, self.down
        dirty = dict.fromkeys(self._new)
        for node, (nu, nd) in self._touched.items():
            if len(ups[node]) != nu:
                dirty.update(ups[node])
            if len(downs[node]) != nd:
                dirty.update(downs[node])
        self._touched = {}
        self._new = []
        for f in dirty:
            if not f.alive:
                continue
            a = up[f.src] / len(ups[f.src])
            b = down[f.dst] / len(downs[f.dst])
            r = a if a < b else b
            self._set_rate(f, f.cap if f.cap < r else r)

    def _set_rate(self, f: Flow, r: float) -> None:
        """``f`` runs at ``r`` from now on: bank what it moved at the old rate, reschedule its end."""
        if r == f.rate:
            return
        now = self.now
        if f.rate > 0.0:
            f.left -= f.rate * (now - f.t0)
        f.t0 = now
        f.rate = r
        f.ver += 1
        self._seq += 1
        heapq.heappush(self.heap, (now + f.left / r if r > 0 else math.inf, self._seq, f.ver, f))

    def _settle_maxmin(self) -> None:
        """Exact max-min fair rates of every active flow (progressive filling): slow, for checking
        the local rule on small runs."""
        import numpy as np

        self._touched = {}
        self._new = []
        flows = [f for d in self.ups for f in d]
        if not flows:
            return
        n = len(self.up)
        src = np.fromiter((f.src for f in flows), dtype=np.int64, count=len(flows))
        dst = np.fromiter((f.dst for f in flows), dtype=np.int64, count=len(flows)) + n
        resid = np.array(self.up + self.down, dtype=float)
        cap = np.fromiter((f.cap for f in flows), dtype=float, count=len(flows))
        rate = np.zeros(len(flows))
        todo = np.ones(len(flows), dtype=bool)
        while todo.any():
            cnt = np.bincount(src[todo], minlength=2 * n) + np.bincount(dst[todo], minlength=2 * n)
            with np.errstate(divide="ignore", invalid="ignore"):
                share = np.where(cnt > 0, resid / np.maximum(cnt, 1), np.inf)
            m = share.min()
            m_cap = cap[todo].min()
            if m_cap < m:  # a flow's own pacing limit binds before any link: it is fixed there
                m = m_cap
                hit = todo & (cap <= m * (1 + 1e-12))
            else:
                tight = share <= m * (1 + 1e-12)
                hit = todo & (tight[src] | tight[dst])
            rate[hit] = m
            np.subtract.at(resid, src[hit], m)
            np.subtract.at(resid, dst[hit], m)
            todo &= ~hit
        for f, r in zip(flows, rate.tolist()):
            self._set_rate(f, r)

    # -- loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        heap, timers, eps = self.heap, self.timers, self.eps
        self._settle()
        while True:
            while heap and (not heap[0][3].alive or heap[0][2] != heap[0][3].ver):
                heapq.heappop(heap)
            tf = heap[0][0] if heap else math.inf
            tt = timers[0][0] if timers else math.inf
            if tf == math.inf and tt == math.inf:
                return
            self.batches += 1
            if tt <= tf:
                self.now = tt
                while timers and timers[0][0] <= tt:
                    heapq.heappop(timers)[2]()
                self._settle()
                if self.stop():
                    return
                continue
            self.now = tf
            limit = tf + eps
            done = []
            while heap and heap[0][0] <= limit:
                _, _, ver, f = heapq.heappop(heap)
                if f.alive and ver == f.ver:
                    done.append(f)
            for f in done:
                f.alive = False
                f.left = 0.0
                self._touch(f.src)
                self._touch(f.dst)
                self.ups[f.src].pop(f, None)
                self.downs[f.dst].pop(f, None)
                self.sent[f.src] += f.size
            self.flows_done += len(done)
            self.on_complete(done)
            self._settle()
            if self.stop():
                return
