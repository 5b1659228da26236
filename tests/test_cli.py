"""The `modeldist` command as a user runs it (real subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "modeldist.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_inspect_real_model(minilm_dir):
    r = run("inspect", str(minilm_dir))
    assert r.returncode == 0, r.stderr
    assert "model.safetensors" in r.stdout and "104 tensors" in r.stdout
    j = run("inspect", str(minilm_dir), "--json")
    m = json.loads(j.stdout)
    assert m["weight_files"] == ["model.safetensors"] and len(m["tensors"]) == 104


def test_stage_then_inspect_shows_piece_digests(minilm_dir, isolated_store):
    r = run("stage", str(minilm_dir), "--to", str(isolated_store))
    assert r.returncode == 0, r.stderr
    folder = r.stdout.strip().splitlines()[-1]
    assert (isolated_store.resolve() / folder.rsplit("/", 1)[-1] / "model.safetensors").exists()
    j = json.loads(run("inspect", str(minilm_dir), "--json", "--store", str(isolated_store)).stdout)
    assert all(p[3] and len(p[3]) == 64 for p in j["pieces"])
    again = run("stage", str(minilm_dir), "--to", str(isolated_store))
    assert "already in store" in again.stdout


def test_errors_are_one_line(tmp_path):
    r = run("inspect", str(tmp_path / "missing"))
    assert r.returncode == 1
    assert r.stderr.strip().startswith("error:") and "Traceback" not in r.stderr
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 64)
    r = run("stage", str(bad), "--to", str(tmp_path / "s"))
    assert r.returncode == 1 and "error:" in r.stderr and "Traceback" not in r.stderr
    r = run("--debug", "inspect", str(tmp_path / "missing"))
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_cluster_stage_errors_are_clear(minilm_dir):
    r = run("stage", str(minilm_dir), "--scheduler", "127.0.0.1:1")
    assert r.returncode == 1 and "--all" in r.stderr
    r = run("stage", str(minilm_dir), "--all")
    assert r.returncode == 1 and "--scheduler" in r.stderr
    r = run("stage", str(minilm_dir), "--all", "--scheduler", "127.0.0.1:1", timeout=60)
    assert r.returncode == 1 and "unreachable" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_demo_single_node_runs_and_verifies():
    r = run("demo", "--peers", "0", "--size", "32MiB", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "every byte equal to the origin" in r.stdout
    assert "1.00" in r.stdout  # origin bytes / model size


@pytest.mark.slow
def test_demo_broadcast_to_agents_runs_and_verifies():
    r = run("demo", "--peers", "3", "--size", "32MiB", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "every byte on every node equals the origin" in r.stdout
    assert "origin bytes / model size │ 1.00" in r.stdout
