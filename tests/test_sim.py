"""The broadcast simulator (bench/sim) models what the agents do: here, cut-through forwarding.

Must show: with relays forwarding 128 KiB slices (``Scenario.forward_bytes``) the modeldist plan
finishes sooner than store-and-forward of whole pieces, by about the depth term the planner's
ideal names, never below S/B; the baselines are unaffected by the option.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from sim.run import Scenario, simulate  # noqa: E402

MIB = 1 << 20


@pytest.fixture(scope="module")
def runs():
    base = dict(nodes=16, model_bytes=64 * MIB, piece_bytes=1 * MIB, link_bps=100e6)
    return {
        "store": simulate(Scenario(**base), "modeldist"),
        "cut": simulate(Scenario(**base, forward_bytes=128 << 10), "modeldist"),
        "chain": simulate(Scenario(**base), "chain"),
        "chain_cut": simulate(Scenario(**base, forward_bytes=128 << 10), "chain"),
    }


def test_cut_through_removes_the_depth_term(runs):
    store, cut = runs["store"], runs["cut"]
    sb = store["s_over_b_s"]
    assert sb <= cut["time_to_all_s"] < store["time_to_all_s"]
    depth, k = store["info_initial_plan"]["depth"], store["info_initial_plan"]["k"]
    saved = store["time_to_all_s"] - cut["time_to_all_s"]
    depth_term = depth * k * (MIB - (128 << 10)) / (100e6 / 8)
    assert saved == pytest.approx(depth_term, rel=0.35), (saved, depth_term)
    assert cut["ideal_s"] < store["ideal_s"]


def test_baselines_ignore_the_option(runs):
    assert runs["chain"]["time_to_all_s"] == pytest.approx(runs["chain_cut"]["time_to_all_s"])
