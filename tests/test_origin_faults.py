"""Fault matrix: a flaky origin (issue #7). A real S3 server (moto's, a subprocess on loopback)
behind ``swarm_helpers.CountingProxy`` with fault injection: HTTP 5xx answers with S3's XML error
body, connections dropped in the middle of a body, requests never answered.

Must show: staging (one node, and a swarm of 3 agents) survives the faults with modeldist's own
retries and backoff; every staged file is bit-identical to the origin; the origin's successful
deliveries add up to exactly the model plus the safetensors headers (each range delivered once,
only the failed ranges asked again); an origin that never recovers ends in a typed ``OriginError``
within a time derived from the config (``retries`` attempts of at most ``attempt_timeout`` each,
plus the backoff), with exactly one request per attempt (pyarrow's internal retries are off).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import modeldist
from modeldist import staging
from modeldist.cluster import start_stage, wait_model
from modeldist.demo import LocalCluster, verify_store
from modeldist.errors import OriginError
from modeldist.origin.fs import attempt_timeout

from tests.swarm_helpers import (
    CountingProxy,
    Fault,
    FlakyObjects,
    MotoServer,
    aws_env,
    header_bytes,
    s3_uri,
    sigcont,
)

BUCKET = "models"
MINI = "sentence-transformers/all-MiniLM-L6-v2"
#: 4 MiB pieces: moto copies the whole object for every ranged GET, so few and large ranges
PIECE = "4MiB"


@dataclass
class S3:
    port: int
    env: dict


@pytest.fixture(scope="module")
def s3(tmp_path_factory, minilm_dir):
    """moto's S3 server (subprocess) holding all-MiniLM-L6-v2 under s3://models/<MINI>/."""
    pytest.importorskip("moto")
    pytest.importorskip("boto3")
    work = tmp_path_factory.mktemp("s3faults")
    with MotoServer(work) as moto:
        moto.upload_folder(minilm_dir, BUCKET, MINI)
        yield S3(moto.port, aws_env(work))


@pytest.fixture
def aws(s3, monkeypatch):
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)


def model_files(folder: Path) -> dict[str, Path]:
    return {f.relative_to(folder).as_posix(): f for f in sorted(folder.rglob("*")) if f.is_file()}


def check_origin_traffic(proxy: CountingProxy, flaky: FlakyObjects, minilm_dir: Path) -> dict:
    """The origin's own view: faults injected as planned, every range delivered once, failed ranges
    (and only those) asked again, successful bytes = model + headers. Returns figures to print."""
    gets = proxy.stats.object_gets(BUCKET)
    ok = [g for g in gets if g.status in (200, 206) and not g.fault]
    failed = [g for g in gets if g.fault or g.status not in (200, 206)]
    faults = Counter(f.kind for f in proxy.stats.faults)
    assert faults["status"] > 0 and faults["drop"] > 0, f"no faults injected: {faults}"
    assert all(f.method == "GET" for f in proxy.stats.faults)
    # every failed GET is an injected fault (a 503 or a dropped body), nothing else failed
    assert len(failed) == sum(faults.values()), (len(failed), faults)
    assert all(g.status == 503 for g in failed if g.fault == "status")
    assert all(0 < g.nbytes for g in failed if g.fault == "drop")
    # no range delivered twice; every failed range was asked again and delivered once
    delivered = Counter((g.path, g.range) for g in ok)
    twice = {k: n for k, n in delivered.items() if n > 1}
    assert not twice, f"ranges delivered more than once: {twice}"
    assert all((g.path, g.range) in delivered for g in failed), "a failed range was never delivered"
    extra = len(gets) - len(delivered)
    assert extra == len(failed), f"{extra} GETs beyond one per range, {len(failed)} of them failed ones"
    # the faults were exactly the planned ones: each range's plan, in order, then success
    for key, n in delivered.items():
        kinds = [g.fault for g in failed if (g.path, g.range) == key]
        assert kinds == [f.kind for f in flaky.plan_of(*key)], (key, kinds)
    files = model_files(minilm_dir)
    total = sum(f.stat().st_size for f in files.values())
    served = proxy.stats.object_bytes(BUCKET)
    assert served == total + header_bytes(minilm_dir), (served, total, header_bytes(minilm_dir))
    # per object too: each file once (+ its header for the safetensors file)
    per_key = Counter()
    for g in ok:
        per_key[g.path] += g.nbytes
    for rel, f in files.items():
        extra_hdr = header_bytes(minilm_dir) if f.suffix == ".safetensors" else 0
        assert per_key[f"/{BUCKET}/{MINI}/{rel}"] == f.stat().st_size + extra_hdr, rel
    return {"faults": dict(faults), "gets": len(gets), "ok_gets": len(ok), "served": served,
            "model": total, "headers": served - total, "failed_bytes": proxy.stats.failed_bytes(BUCKET)}


# ------------------------------------------------------------------------------------------------
# (a) one node stages through the flaky origin


@pytest.mark.timeout(60)
@pytest.mark.parametrize("drop", ["fin", "rst"])
def test_single_node_stage_survives_flaky_s3(s3, aws, minilm_dir, isolated_store, drop):
    """Every 3rd range first answered 503, every 5th first cut after half its body (closed with a
    FIN, or with a TCP reset)."""
    flaky = FlakyObjects(BUCKET, status_every=3, drop_every=5, status=503, drop_fraction=0.5,
                         reset=drop == "rst")
    with CountingProxy(s3.port, faults=flaky) as proxy:
        uri = s3_uri(proxy.port, BUCKET, MINI)
        cfg = modeldist.Config(store=str(isolated_store), piece_size=4 << 20, concurrency=4, retry_backoff=0.05)
        t0 = time.monotonic()
        staged = staging.stage(uri, config=cfg)
        seconds = time.monotonic() - t0
        files = model_files(minilm_dir)
        total = sum(f.stat().st_size for f in files.values())
        assert staged.origin_bytes == total == staged.manifest.total_size
        # bit-identical, byte for byte
        folder = isolated_store / staged.manifest.digest
        assert sorted(f.path for f in staged.manifest.files) == sorted(files)
        for rel, f in files.items():
            assert (folder / rel).read_bytes() == f.read_bytes(), rel
        assert verify_store(isolated_store, staged.manifest.digest, minilm_dir) == []
        figures = check_origin_traffic(proxy, flaky, minilm_dir)
        print(f"single node ({drop}): staged in {seconds:.2f}s through {figures}")
        # load() finds the staged model (headers read again, every range now past its faults)
        tensors = modeldist.load(uri, config=cfg)
        ref = safetensors.numpy.load_file(str(minilm_dir / "model.safetensors"))
        assert tensors.keys() == ref.keys()
        for name, t in ref.items():
            assert tensors[name].dtype == t.dtype and np.array_equal(tensors[name], t), name


# ------------------------------------------------------------------------------------------------
# (b) an origin that never recovers: a typed error, in a time the config bounds


def _bound(cfg: modeldist.Config) -> float:
    """The most one read operation can take: ``retries`` attempts of at most ``attempt_timeout``
    each, and the largest backoff before each retry (the delay is backoff * 2**i * [0.5, 1.5], at
    most 10 s). Never more than ``retries * (read_timeout + max backoff)``."""
    backoff = sum(min(10.0, cfg.retry_backoff * 2 ** i) * 1.5 for i in range(cfg.retries - 1))
    bound = cfg.retries * attempt_timeout(cfg) + backoff
    assert bound <= cfg.retries * (cfg.read_timeout + min(10.0, cfg.retry_backoff * 2 ** cfg.retries) * 1.5)
    return bound


#: slack for process-local work (connecting, listing, HEADs) on a loaded 2-core machine
SLACK = 2.0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["503", "500", "stall", "closed"])
def test_dead_origin_is_typed_error_within_bound(s3, aws, isolated_store, how):
    cfg = modeldist.Config(store=str(isolated_store), retries=3, retry_backoff=0.1, read_timeout=3.0,
                           piece_size=4 << 20)
    assert attempt_timeout(cfg) == 1.0
    if how == "stall":
        policy = lambda req: Fault.stall(30) if req.method == "GET" and req.path.startswith(f"/{BUCKET}/{MINI}/") else None  # noqa: E731
    elif how in ("503", "500"):
        policy = FlakyObjects(BUCKET, status=int(how), always=True)
    else:
        policy = None
    with CountingProxy(s3.port, faults=policy) as proxy:
        uri = s3_uri(proxy.port, BUCKET, MINI)
        if how == "closed":
            proxy.close()  # connections refused from now on
        t0 = time.monotonic()
        with pytest.raises(OriginError) as info:
            staging.stage(uri, config=cfg)
        elapsed = time.monotonic() - t0
    err = info.value
    bound = _bound(cfg)
    print(f"{how}: OriginError after {elapsed:.2f}s (bound {bound:.2f}s + {SLACK}s slack): {err}")
    assert isinstance(err, OSError) and err.transient is True and "s3://" in (err.source or "")
    assert elapsed <= bound + SLACK, f"{elapsed:.2f}s > {bound:.2f}s + {SLACK}s"
    assert not any(isolated_store.glob("*/.modeldist/complete"))
    if how == "closed":
        assert f"after {cfg.retries} attempt(s)" in str(err)
        return
    # one request per attempt of ours: pyarrow's own retries are off
    tried = [g for g in proxy.stats.object_gets(BUCKET) if g.fault]
    assert tried and len({(g.path, g.range) for g in tried}) == 1, [(g.path, g.range) for g in tried]
    assert len(tried) == proxy.stats.injected()
    assert f"after {len(tried)} attempt(s)" in str(err)
    if how == "stall":
        # each attempt was ended by the per-attempt timeout (curl's low-speed time, whole seconds),
        # and the read_timeout deadline may cut the last retry
        assert 2 <= len(tried) <= cfg.retries
        for g in tried:
            assert 0.8 * attempt_timeout(cfg) <= g.ended - g.started <= attempt_timeout(cfg) + 1.0, g
    else:
        assert len(tried) == cfg.retries
        assert all(g.status == int(how) for g in tried)


# ------------------------------------------------------------------------------------------------
# (c) a swarm stages from the flaky origin


@pytest.mark.timeout(90)
def test_swarm_stages_from_flaky_s3(s3, tmp_path, minilm_dir):
    flaky = FlakyObjects(BUCKET, status_every=3, drop_every=5, status=503, drop_fraction=0.5)
    with CountingProxy(s3.port, faults=flaky) as proxy:
        env = {**s3.env, "MODELDIST_RETRY_BACKOFF": "0.05"}
        cluster = LocalCluster(tmp_path / "cluster", 3, piece_size=PIECE, env=env)
        try:
            cluster.__enter__()
            t0 = time.monotonic()
            model, n_nodes, total = start_stage(cluster.address, s3_uri(proxy.port, BUCKET, MINI))
            assert n_nodes == 3
            row = wait_model(cluster.address, model, timeout=60)
            seconds = time.monotonic() - t0
            nodes = sorted(n.node_id for n in row.nodes)
            assert nodes == ["node0", "node1", "node2"]
            assert all(n.complete and n.state == "complete" for n in row.nodes), row
            bad = {n: verify_store(cluster.store_of(n), model, minilm_dir) for n in nodes}
            assert not any(bad.values()), f"stores differ from the origin: {bad}"
            assert total == sum(f.stat().st_size for f in model_files(minilm_dir).values())
            # the agents' counters: the origin read once in total, whatever failed on the way
            assert sum(n.origin_bytes for n in row.nodes) == total
            for n in row.nodes:
                assert n.origin_bytes + n.peer_bytes == total, n
            figures = check_origin_traffic(proxy, flaky, minilm_dir)
            print(f"swarm of 3: complete in {seconds:.2f}s through {figures}")
        finally:
            for p in cluster.agents.values():
                if p.poll() is None:
                    sigcont(p.pid)
            cluster.close()
            for log in sorted(cluster.logs.glob("*.log")):
                print(f"----- {log} (last 20 lines)")
                print("\n".join(log.read_text(errors="replace").splitlines()[-20:]))
