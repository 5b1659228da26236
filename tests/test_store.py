"""Store behaviour with real processes: resume after kill -9, re-verification, ENOSPC, locking."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import modeldist
from modeldist.config import Config
from modeldist.errors import StoreError
from modeldist.staging import stage
from modeldist.store import COMPLETE_MARKER, Store

MIB = 1 << 20


def _model(folder: Path, mib: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per = 16 * MIB
    for s in range(max(1, mib * MIB // per)):
        save_file({f"w{s}": rng.integers(0, 255, size=per - 64, dtype=np.uint8)}, folder / f"part{s}.safetensors")
    (folder / "config.json").write_text('{"model_type": "test"}')
    return folder


def _bitmap(store: Path) -> bytes:
    (d,) = [p for p in store.iterdir() if len(p.name) == 64]
    return (d / ".modeldist" / "pieces").read_bytes()


@pytest.mark.slow
def test_kill_mid_staging_then_resume_fetches_only_missing(tmp_path, isolated_store):
    src = _model(tmp_path / "origin", 256)
    cmd = [sys.executable, "-m", "modeldist.cli", "stage", str(src), "--to", str(isolated_store),
           "--concurrency", "1", "--piece-size", "1MiB"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while True:
            if time.monotonic() > deadline:
                pytest.fail("staging never got half-way")
            try:
                bm = _bitmap(isolated_store)
            except (FileNotFoundError, ValueError):
                bm = b""
            if bm and 0.2 < bm.count(1) / len(bm) < 0.8:
                proc.send_signal(signal.SIGKILL)
                break
            if proc.poll() is not None:
                pytest.fail("staging finished before it could be killed")
            time.sleep(0.002)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    bm = _bitmap(isolated_store)
    present = bm.count(1)
    assert 0 < present < len(bm)
    cfg = Config.load(store=str(isolated_store), piece_size=MIB)
    seen = {}
    staged = stage(str(src), config=cfg, on_start=lambda m, missing: seen.update(missing=list(missing)))
    m = staged.manifest
    # only what the bitmap lacked moved (a piece committed at kill time is re-verified, not refetched)
    assert len(seen["missing"]) == len(bm) - present
    assert staged.origin_bytes == sum(m.pieces[i].length for i in seen["missing"])
    assert staged.origin_bytes < m.total_size
    for f in m.files:
        assert (staged.path / f.path).read_bytes() == (src / f.path).read_bytes()
    assert (staged.path / COMPLETE_MARKER).exists()


def test_corrupt_piece_found_on_resume_is_refetched(tmp_path, isolated_store):
    src = _model(tmp_path / "origin", 32)
    cfg = Config.load(store=str(isolated_store), piece_size=MIB)
    m = modeldist.Manifest.from_source(str(src), config=cfg)
    store = Store(config=cfg)
    # write half the pieces through the real staging path, then stop
    from modeldist.origin import open_origin
    from modeldist.staging import fill_from_origin

    half = list(range(0, len(m.pieces), 2))
    with open_origin(str(src), config=cfg) as origin, store.open(m) as buf:
        fill_from_origin(buf, origin, half, concurrency=2)
    victim = m.pieces[half[3]]
    path = store.path_of(m.digest) / victim.file
    with open(path, "r+b") as fh:
        fh.seek(victim.offset + 10)
        b = fh.read(1)
        fh.seek(victim.offset + 10)
        fh.write(bytes([b[0] ^ 0xFF]))
    seen = {}
    staged = stage(str(src), config=cfg, on_start=lambda mm, missing: seen.update(missing=set(missing)))
    assert half[3] in seen["missing"]
    assert len(seen["missing"]) == len(m.pieces) - len(half) + 1
    for f in m.files:
        assert (staged.path / f.path).read_bytes() == (src / f.path).read_bytes()


def test_store_full_is_a_clear_error(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        src = _model(tmp_path / "origin", 32)
        cfg = Config.load(store=str(mnt / "store"))
        with pytest.raises(StoreError) as info:
            stage(str(src), config=cfg)
        assert info.value.errno_ == errno.ENOSPC
        assert "no space" in str(info.value)
        assert not list((mnt / "store").glob(f"*/{COMPLETE_MARKER}"))
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_second_writer_waits_for_the_first(tmp_path, isolated_store):
    src = _model(tmp_path / "origin", 16)
    cfg = Config.load(store=str(isolated_store))
    m = modeldist.Manifest.from_source(str(src), config=cfg)
    store = Store(config=cfg)
    with store.open(m):
        with pytest.raises(StoreError, match="another process"):
            store.open(m, lock_timeout=0.2)
    with store.open(m, lock_timeout=1):
        pass


def test_complete_model_is_not_read_again(tmp_path, isolated_store):
    src = _model(tmp_path / "origin", 16)
    first = stage(str(src))
    assert first.origin_bytes == first.manifest.total_size
    again = stage(str(src))
    assert again.origin_bytes == 0 and again.path == first.path
    assert Store().models() == [(first.manifest.digest, True)]


def test_changed_origin_file_is_a_new_model(tmp_path, isolated_store):
    src = _model(tmp_path / "origin", 16)
    a = stage(str(src))
    time.sleep(0.01)
    (src / "config.json").write_text('{"model_type": "changed"}')
    b = stage(str(src))
    assert a.manifest.digest != b.manifest.digest
    assert (b.path / "config.json").read_text() == '{"model_type": "changed"}'
