"""The broadcast planner: nodes -> a striped multi-tree plan (SplitStream). Pure: no I/O, no clocks.

Pieces are split into ``k`` stripes (piece ``i`` is in stripe ``i % k``). Every node is interior
(forwards) in at most one stripe, its *home*, and a leaf in the others; each stripe tree has one
root that reads that stripe from the origin, so the origin is read once in total. An interior node
gets about ``k`` child slots, scaled by its upload bandwidth relative to the median, so every
uplink carries about one copy of the model and the depth is about log_k(N). Leaves prefer a parent
in their rack, then their zone, then the shallowest parent with a free slot.

A restarted scheduler rebuilds a running plan from what its nodes say they execute
(``restore_plan``): the trees stay as they are, so no data session has to move.

Repair is incremental: ``remove_node`` re-parents only the dead node's children (a dead root is
replaced by one of its interior children); ``add_node`` attaches a late joiner as a leaf in every
stripe to parents with spare slots. Both return a new plan with ``epoch + 1``.

Determinism: ties are broken by node id, so equal inputs give equal plans.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field, replace
from statistics import median
from typing import Iterable, Mapping, Sequence

from ..errors import PlanError

__all__ = ["NodeInfo", "StripeTree", "BroadcastPlan", "plan_broadcast", "remove_node", "add_node",
           "restore_plan", "default_stripes"]


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    addr: str = ""
    upload_bps: float = 0.0   # 0 = unknown: counted as the median
    download_bps: float = 0.0
    zone: str = ""
    rack: str = ""
    #: Holds the whole model already: a root that needs no origin.
    complete: bool = False

    def __post_init__(self) -> None:
        if not self.node_id:
            raise PlanError("node_id must not be empty")
        if not (0 <= self.upload_bps < math.inf and 0 <= self.download_bps < math.inf):  # NaN fails too
            raise PlanError(f"{self.node_id}: bandwidth must be a finite number >= 0")


@dataclass(frozen=True)
class StripeTree:
    stripe: int
    root: str
    #: node -> its parent, for every node of the tree but the root.
    parent: Mapping[str, str]

    def children(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for child, par in sorted(self.parent.items()):
            out.setdefault(par, []).append(child)
        return out

    def depth_of(self, node: str) -> int:
        d, cur = 0, node
        while cur != self.root:
            cur = self.parent[cur]
            d += 1
            if d > len(self.parent) + 1:
                raise PlanError(f"stripe {self.stripe}: cycle at {node}")
        return d

    def depth(self) -> int:
        depths: dict[str, int] = {self.root: 0}

        def walk(n: str) -> int:
            path = []
            while n not in depths:
                path.append(n)
                n = self.parent[n]
                if len(path) > len(self.parent) + 1:
                    raise PlanError(f"stripe {self.stripe}: cycle")
            d = depths[n]
            for m in reversed(path):
                d += 1
                depths[m] = d
            return d

        return max((walk(n) for n in self.parent), default=0)

    def nodes(self) -> set[str]:
        return {self.root, *self.parent}


@dataclass(frozen=True)
class BroadcastPlan:
    stripes: tuple[StripeTree, ...]
    nodes: Mapping[str, NodeInfo]
    #: node -> the stripe it forwards in (None: a leaf everywhere, e.g. a late joiner).
    home: Mapping[str, int | None]
    fanout: int
    epoch: int = 0
    #: child slots per node in its home stripe.
    slots: Mapping[str, int] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return len(self.stripes)

    def stripe_of(self, piece: int) -> int:
        return piece % self.k

    def pieces_of_stripe(self, stripe: int, n_pieces: int) -> range:
        return range(stripe, n_pieces, self.k)

    def parents_of(self, node: str) -> list[str | None]:
        """Per stripe: the parent node id, or None where the node reads from the origin (root)."""
        return [None if t.root == node else t.parent[node] for t in self.stripes]

    def children_of(self, node: str) -> set[str]:
        return {c for t in self.stripes for c, p in t.parent.items() if p == node}

    def depth(self) -> int:
        return max((t.depth() for t in self.stripes), default=0)

    def roots(self) -> list[str]:
        return [t.root for t in self.stripes]


def default_stripes(n_nodes: int) -> int:
    """k = 4 (depth log_4 N; 4 parents per node), fewer for tiny clusters."""
    return max(1, min(4, n_nodes))


def plan_broadcast(nodes: Iterable[NodeInfo], *, stripes: int | None = None, fanout: int | None = None,
                   epoch: int = 0) -> BroadcastPlan:
    """The striped multi-tree plan for ``nodes``."""
    ordered = _order(nodes)
    if not ordered:
        raise PlanError("no nodes to plan for")
    ids = [n.node_id for n in ordered]
    if len(set(ids)) != len(ids):
        raise PlanError("duplicate node ids")
    k = default_stripes(len(ordered)) if stripes is None else stripes
    if k < 1:
        raise PlanError("stripes must be >= 1")
    f = max(2, k) if fanout is None else fanout
    if f < 1:
        raise PlanError("fanout must be >= 1")
    slots = _slots(ordered, f)
    home: dict[str, int | None] = {}
    members: list[list[NodeInfo]] = [[] for _ in range(k)]
    in_zone: list[dict[str, int]] = [{} for _ in range(k)]
    for n in ordered:  # fastest first, dealt in rounds of k: every stripe gets a similar speed mix;
        # within a round, stripes with fewer forwarders in the node's zone first, so every stripe has
        # forwarders in every zone and leaves find a parent in their own zone
        s = min(range(k), key=lambda i: (len(members[i]), in_zone[i].get(n.zone, 0), i))
        home[n.node_id] = s
        members[s].append(n)
        in_zone[s][n.zone] = in_zone[s].get(n.zone, 0) + 1
    complete = [n for n in ordered if n.complete]
    trees = []
    for s in range(k):
        interior = list(members[s])
        root_node = _pick_root(interior, complete)
        trees.append(_build_tree(s, root_node, interior, ordered, slots))
    return BroadcastPlan(tuple(trees), {n.node_id: n for n in ordered}, home, f, epoch, slots)


def remove_node(plan: BroadcastPlan, node_id: str) -> BroadcastPlan:
    """The plan without ``node_id``: its children re-parented, a dead root replaced."""
    if node_id not in plan.nodes:
        raise PlanError(f"unknown node {node_id!r}")
    nodes = {k: v for k, v in plan.nodes.items() if k != node_id}
    if not nodes:
        raise PlanError("no nodes left")
    home = {k: v for k, v in plan.home.items() if k != node_id}
    trees = []
    for t in plan.stripes:
        parent = dict(t.parent)
        parent.pop(node_id, None)
        orphans = sorted(c for c, p in parent.items() if p == node_id)
        root = t.root
        if root == node_id:
            # promote the fastest orphan that forwards in this stripe (else any orphan, else anyone)
            cands = [c for c in orphans if home.get(c) == t.stripe] or orphans or sorted(parent)
            root = min(cands, key=lambda c: (-_up(nodes[c]), c))
            parent.pop(root, None)
            orphans = [c for c in orphans if c != root]
            if home.get(root) is None:
                home[root] = t.stripe
        for c in orphans:
            parent.pop(c)
        gp = root if root != t.root else t.parent.get(node_id)
        # forwarding orphans (with subtrees) take the dead node's place under its parent, pushing
        # leaf children of that parent down if it is full (SplitStream's push-down): the depth
        # stays bounded because only leaves, which have no subtree, move deeper
        forwarding = sorted((c for c in orphans if home.get(c) == t.stripe), key=lambda c: (-_up(nodes[c]), c))
        rest = [c for c in orphans if home.get(c) != t.stripe]
        if gp is not None:
            kids_of: dict[str, list[str]] = {}
            for c, p in parent.items():
                kids_of.setdefault(p, []).append(c)

            def cap(x: str) -> int:
                return plan.slots.get(x, 1)

            def leaf_kid(x: str) -> str | None:
                leaves = [c for c in kids_of.get(x, ()) if home.get(c) != t.stripe]
                return min(leaves) if leaves else None

            def adopt(x: str, c: str) -> None:
                parent[c] = x
                kids_of.setdefault(x, []).append(c)
                if len(kids_of[x]) > cap(x) and (ev := leaf_kid(x)) is not None:
                    parent.pop(ev)
                    kids_of[x].remove(ev)
                    rest.append(ev)

            def rank(x: str) -> tuple:  # room first, then a leaf to push down, then the least loaded
                n = len(kids_of.get(x, ()))
                return (0 if n < cap(x) else 1 if leaf_kid(x) is not None else 2, (n + 1) / cap(x), x)

            promoted = root != t.root
            own = [] if not promoted else sorted(
                (c for c in kids_of.get(gp, ()) if home.get(c) == t.stripe), key=lambda c: (_up(nodes[c]), c))
            placed: list[str] = []
            for c in forwarding:
                if promoted or len(kids_of.get(gp, ())) < cap(gp) or leaf_kid(gp) is not None:
                    adopt(gp, c)
                    placed.append(c)
                    continue
                # gp is full of forwarders: c goes one level down, under a forwarding child of gp (room
                # first): it keeps the depth it had under the dead node, and no single uplink takes
                # all the dead node's children
                sibs = [x for x in kids_of.get(gp, ()) if home.get(x) == t.stripe]
                adopt(min(sibs, key=rank) if sibs else gp, c)
            # a promoted root keeps the dead root's children one level under the origin; if that puts
            # it over its slots, its own former children (slowest first) move under them: they keep
            # their depth (two), and the root's uplink stays within its slots
            while promoted and placed and own and len(kids_of[gp]) > cap(gp):
                x = own.pop(0)
                kids_of[gp].remove(x)
                adopt(min(placed, key=rank), x)
            forwarding = []
        tree = StripeTree(t.stripe, root, parent)
        trees.append(_attach(tree, forwarding + rest, nodes, home, plan.slots))
    return replace(plan, stripes=tuple(trees), nodes=nodes, home=home, epoch=plan.epoch + 1)


def add_node(plan: BroadcastPlan, node: NodeInfo) -> BroadcastPlan:
    """``node`` joins late: a leaf in every stripe, under parents with spare upload."""
    if node.node_id in plan.nodes:
        raise PlanError(f"node {node.node_id!r} is already in the plan")
    nodes = {**plan.nodes, node.node_id: node}
    home = {**plan.home, node.node_id: None}
    trees = tuple(_attach(t, [node.node_id], nodes, home, plan.slots) for t in plan.stripes)
    return replace(plan, stripes=trees, nodes=nodes, home=home, epoch=plan.epoch + 1)


def restore_plan(nodes: Iterable[NodeInfo], parents: Mapping[str, Sequence[str | None]], *, epoch: int = 0,
                 fanout: int | None = None) -> BroadcastPlan:
    """The plan the nodes are executing, rebuilt from each one's parents per stripe (None = origin).

    ``nodes`` may hold nodes that did not say (``parents`` has no entry: they are gone, or never
    came back): they are placed under each stripe's root (or as the root of a stripe nobody else
    roots) and then removed with ``remove_node``, which re-parents their children as after any
    failure. Raises PlanError when the reports do not form one tree per stripe (two roots, a
    cycle, unknown parents, different stripe counts); the caller then plans afresh.
    """
    infos = {n.node_id: n for n in nodes}
    if not parents:
        raise PlanError("no node reported its parents")
    unknown = set(parents) - set(infos)
    if unknown:
        raise PlanError(f"parents reported for unknown nodes: {sorted(unknown)[:3]}")
    ks = {len(ps) for ps in parents.values()}
    if len(ks) != 1 or 0 in ks:
        raise PlanError(f"nodes report different stripe counts: {sorted(ks)}")
    k = ks.pop()
    ghosts = sorted(set(infos) - set(parents))
    trees = []
    for s in range(k):
        roots = sorted(n for n, ps in parents.items() if ps[s] is None)
        parent = {n: ps[s] for n, ps in parents.items() if ps[s] is not None}
        for c, p in parent.items():
            if p not in infos or p == c:
                raise PlanError(f"stripe {s}: {c} names an unknown parent {p!r}")
        if len(roots) > 1:
            raise PlanError(f"stripe {s}: {len(roots)} roots ({', '.join(roots[:3])})")
        if not roots:
            # the root did not report; it must be a ghost that someone names as its parent
            named = sorted({p for p in parent.values() if p in ghosts})
            if not named:
                raise PlanError(f"stripe {s}: no root")
            root = named[0]
        else:
            root = roots[0]
        for g in ghosts:
            if g != root and g not in parent:
                parent[g] = root
        tree = StripeTree(s, root, parent)
        tree.depth()  # PlanError on a cycle
        if tree.nodes() != set(infos):
            raise PlanError(f"stripe {s}: nodes not connected to its root")
        trees.append(tree)
    ordered = _order(infos.values())
    f = max(2, k) if fanout is None else fanout
    home: dict[str, int | None] = {n: None for n in infos}
    for t in trees:
        for n in sorted({t.root, *t.parent.values()}):
            if home[n] is None:
                home[n] = t.stripe
    plan = BroadcastPlan(tuple(trees), {n.node_id: n for n in ordered}, home, f, epoch, _slots(ordered, f))
    for g in ghosts:
        if len(plan.nodes) > 1:
            plan = remove_node(plan, g)
    return plan


# ----------------------------------------------------------------------------------------------


def _order(nodes: Iterable[NodeInfo]) -> list[NodeInfo]:
    nodes = list(nodes)
    known = [n.upload_bps for n in nodes if n.upload_bps > 0]
    med = median(known) if known else 0.0
    # 0 = unknown: counted as the median, as in _slots (not as the slowest)
    return sorted(nodes, key=lambda n: (-(n.upload_bps or med), n.node_id))


def _up(n: NodeInfo) -> float:
    return n.upload_bps or 1.0


def _slots(ordered: Sequence[NodeInfo], fanout: int) -> dict[str, int]:
    known = [n.upload_bps for n in ordered if n.upload_bps > 0]
    med = median(known) if known else 0.0
    out = {}
    for n in ordered:
        ratio = (n.upload_bps / med) if (med and n.upload_bps) else 1.0
        out[n.node_id] = max(1, round(fanout * ratio))
    return out


def _pick_root(interior: list[NodeInfo], complete: list[NodeInfo]) -> NodeInfo | None:
    for n in interior:
        if n.complete:
            return n
    return complete[0] if complete else (interior[0] if interior else None)


def _build_tree(s: int, root: NodeInfo | None, interior: list[NodeInfo], everyone: list[NodeInfo],
                slots: Mapping[str, int]) -> StripeTree:
    if root is None:  # fewer nodes than stripes cannot happen with default_stripes; be safe anyway
        root = everyone[0]
    parent: dict[str, str] = {}
    tree = StripeTree(s, root.node_id, parent)
    # interior nodes first, breadth-first under the root: they must sit high to carry the leaves
    inner = [n.node_id for n in interior if n.node_id != root.node_id]
    queue = [root.node_id]
    used: dict[str, int] = {}
    qi = 0
    for nid in inner:
        while used.get(queue[qi], 0) >= slots[queue[qi]] and qi < len(queue) - 1:
            qi += 1
        parent[nid] = queue[qi]
        used[queue[qi]] = used.get(queue[qi], 0) + 1
        queue.append(nid)
    in_tree = {root.node_id, *inner}
    leaves = [n.node_id for n in everyone if n.node_id not in in_tree]
    nodes = {n.node_id: n for n in everyone}
    home = {nid: s for nid in in_tree}
    return _attach(StripeTree(s, root.node_id, parent), leaves, nodes, home, slots, used=used)


def _attach(tree: StripeTree, new: Sequence[str], nodes: Mapping[str, NodeInfo], home: Mapping[str, int | None],
            slots: Mapping[str, int], *, prefer: str | None = None, force_prefer: bool = False,
            used: dict[str, int] | None = None) -> StripeTree:
    """Attach ``new`` nodes (and their subtrees, if any) under this stripe's forwarders."""
    if not new:
        return tree
    parent = dict(tree.parent)
    s = tree.stripe
    if used is None:
        used = {}
        for p in parent.values():
            used[p] = used.get(p, 0) + 1
    depth = _depths(tree.root, parent)
    # subtrees of the nodes being attached may not become their own parents (no cycles)
    kids: dict[str, list[str]] = {}
    for c, p in parent.items():
        kids.setdefault(p, []).append(c)
    banned: set[str] = set()
    for n in new:
        stack = [n]
        while stack:
            x = stack.pop()
            if x in banned:
                continue
            banned.add(x)
            stack.extend(kids.get(x, ()))
    forwarders = [nid for nid in nodes if (home.get(nid) == s or nid == tree.root) and nid not in banned
                  and (nid == tree.root or nid in parent)]
    if not forwarders:
        forwarders = [tree.root]

    def cap(nid: str) -> int:
        return slots.get(nid, 1)

    heaps: dict[tuple, list] = {}

    def push(nid: str) -> None:
        n = nodes[nid]
        entry = (depth.get(nid, 0), -_up(n), nid)
        for key in (("rack", n.zone, n.rack), ("zone", n.zone), ("all",)):
            heapq.heappush(heaps.setdefault(key, []), entry)

    for nid in forwarders:
        if used.get(nid, 0) < cap(nid):
            push(nid)

    def pop_free(key: tuple) -> str | None:
        h = heaps.get(key)
        while h:
            d, _, nid = h[0]
            if used.get(nid, 0) < cap(nid) and depth.get(nid, 0) == d:
                return nid
            heapq.heappop(h)
        return None

    order = sorted(new, key=lambda nid: (-_up(nodes[nid]), nid))
    for nid in order:
        n = nodes[nid]
        choice = None
        if prefer is not None and prefer in nodes and prefer not in banned and (
                home.get(prefer) == s or prefer == tree.root) and (force_prefer or used.get(prefer, 0) < cap(prefer)):
            choice = prefer
        if choice is None and n.rack:
            choice = pop_free(("rack", n.zone, n.rack))
        if choice is None and n.zone:
            choice = pop_free(("zone", n.zone))
        if choice is None:
            choice = pop_free(("all",))
        if choice is None:  # every forwarder is full: overflow onto the least loaded one
            choice = min(forwarders, key=lambda x: ((used.get(x, 0) + 1) / cap(x), depth.get(x, 0), x))
        parent[nid] = choice
        used[choice] = used.get(choice, 0) + 1
        base = depth.get(choice, 0) + 1
        # the attached node and its subtree move: refresh their depths
        stack = [(nid, base)]
        while stack:
            x, d = stack.pop()
            depth[x] = d
            stack.extend((c, d + 1) for c in kids.get(x, ()))
        if home.get(nid) == s and used.get(nid, 0) < cap(nid):
            push(nid)
    return StripeTree(s, tree.root, parent)


def _depths(root: str, parent: Mapping[str, str]) -> dict[str, int]:
    kids: dict[str, list[str]] = {}
    for c, p in parent.items():
        kids.setdefault(p, []).append(c)
    depth = {root: 0}
    stack = [root]
    while stack:
        x = stack.pop()
        for c in kids.get(x, ()):
            depth[c] = depth[x] + 1
            stack.append(c)
    return depth
