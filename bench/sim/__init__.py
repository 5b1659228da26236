"""The broadcast simulator: a flow-level event engine (``engine``), strategies driven by it
(``strategies``: the real modeldist planner, chain, binary tree, naive pull, BitTorrent-like swarm)
and scenarios (``run``: ``Scenario``, ``simulate``, ``predict``). See bench/README.md."""

from .run import Scenario, predict, simulate

__all__ = ["Scenario", "simulate", "predict"]
