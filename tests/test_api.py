"""The public Python API (DESIGN sections 2 and 9): load, stream, snapshot_download, Manifest, errors.

The real all-MiniLM-L6-v2 folder is the origin; ``safetensors.{numpy,torch}.load_file`` of its file
is the reference every tensor is compared with, byte for byte.
"""

from __future__ import annotations

import hashlib
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import modeldist
from modeldist import errors
from modeldist.errors import ConfigError
from modeldist.store import COMPLETE_MARKER, STATE_DIR


@pytest.fixture(scope="module")
def ref_np(minilm_dir):
    return safetensors.numpy.load_file(minilm_dir / "model.safetensors")


@pytest.fixture(scope="module")
def ref_pt(minilm_dir):
    torch_st = pytest.importorskip("safetensors.torch")
    return torch_st.load_file(minilm_dir / "model.safetensors")


def _bytes(t) -> bytes:
    if isinstance(t, np.ndarray):
        return t.tobytes()
    return t.detach().cpu().contiguous().numpy().tobytes()


def assert_equal_tensor(name: str, got, want) -> None:
    assert type(got) is type(want), f"{name}: {type(got)} != {type(want)}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    assert tuple(got.shape) == tuple(want.shape), f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert _bytes(got) == _bytes(want), f"{name}: bytes differ"


def _model_dirs(store: Path) -> list[Path]:
    return [p for p in store.iterdir() if p.is_dir()] if store.exists() else []


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------
# stream


def _collect_stream(src, ref, isolated_store, **kwargs):
    """Consume stream(); check each tensor when it is yielded, and that it is yielded only once."""
    cfg = kwargs.get("config")
    manifest = modeldist.Manifest.from_source(src, piece_size=cfg.piece_size if cfg is not None else None)
    seen: list[str] = []
    early = 0
    for name, t in modeldist.stream(src, **kwargs):
        assert name not in seen, f"{name} yielded twice"
        seen.append(name)
        assert name in ref, f"unexpected tensor {name}"
        # whole and verified by the time it is yielded: its bytes are already right, and every
        # piece under it is marked present in the store (or the model is complete)
        assert_equal_tensor(name, t, ref[name])
        folder = isolated_store / manifest.digest
        if not (folder / COMPLETE_MARKER).exists():
            bitmap = (folder / STATE_DIR / "pieces").read_bytes()
            entry = next(e for e in manifest.tensors if e.name == name)
            assert all(bitmap[i] == 1 for i in manifest.pieces_of_tensor(entry)), f"{name} yielded early"
            early += 1
    assert sorted(seen) == sorted(ref)
    return manifest, seen, early


def test_stream_fresh_store(minilm_dir, ref_np, isolated_store):
    assert _model_dirs(isolated_store) == []
    manifest, seen, early = _collect_stream(minilm_dir, ref_np, isolated_store)
    assert len(seen) == len(ref_np)
    print("yielded before completion:", early)
    assert (isolated_store / manifest.digest / COMPLETE_MARKER).is_file()


def test_stream_fresh_store_small_pieces_one_thread(minilm_dir, ref_np, isolated_store):
    """Many pieces per tensor and strictly ordered arrival: still every tensor exactly once."""
    cfg = modeldist.Config(store=str(isolated_store), piece_size=256 << 10, concurrency=1)
    manifest, seen, early = _collect_stream(minilm_dir, ref_np, isolated_store, config=cfg)
    assert len(manifest.pieces) > 300
    assert early > 0, "every tensor came only after the model was complete: nothing was streamed"
    print("yielded before completion:", early)
    assert (isolated_store / manifest.digest / COMPLETE_MARKER).is_file()


@pytest.mark.parametrize("framework", ["numpy", "pt"])
def test_stream_complete_store(minilm_dir, ref_np, ref_pt, isolated_store, framework):
    staged = modeldist.load(minilm_dir)  # completes the store
    assert len(staged) == len(ref_np)
    folders = _model_dirs(isolated_store)
    assert len(folders) == 1 and (folders[0] / COMPLETE_MARKER).is_file()
    before = (folders[0] / "model.safetensors").stat().st_mtime_ns
    ref = ref_np if framework == "numpy" else ref_pt
    seen = []
    for name, t in modeldist.stream(minilm_dir, framework=framework):
        assert name not in seen
        seen.append(name)
        assert_equal_tensor(name, t, ref[name])
    assert sorted(seen) == sorted(ref)
    assert (folders[0] / "model.safetensors").stat().st_mtime_ns == before  # nothing rewritten
    assert _model_dirs(isolated_store) == folders


def test_stream_stopped_early_still_completes_store(minilm_dir, ref_np, isolated_store):
    manifest = modeldist.Manifest.from_source(minilm_dir)
    gen = modeldist.stream(minilm_dir)
    name, t = next(gen)
    assert_equal_tensor(name, t, ref_np[name])
    gen.close()
    marker = isolated_store / manifest.digest / COMPLETE_MARKER
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline, "staging did not finish after the consumer stopped"
        time.sleep(0.05)
    assert _sha256(isolated_store / manifest.digest / "model.safetensors") == _sha256(minilm_dir / "model.safetensors")


# ------------------------------------------------------------------------------------------------
# refused arguments: raised before anything is staged


@pytest.mark.parametrize("kwargs", [{"scheduler": "x:1"}, {"agent": "/run/modeldist/agent.sock"},
                                    {"framework": "jax"}, {"framework": "numpy", "device": "cuda:0"}],
                         ids=["scheduler", "agent", "jax", "numpy-on-cuda"])
def test_load_refuses(minilm_dir, isolated_store, kwargs):
    with pytest.raises(ConfigError):
        modeldist.load(minilm_dir, **kwargs)
    assert _model_dirs(isolated_store) == []


@pytest.mark.parametrize("kwargs", [{"scheduler": "x:1"}, {"agent": "/run/modeldist/agent.sock"},
                                    {"framework": "jax"}], ids=["scheduler", "agent", "jax"])
def test_stream_refuses(minilm_dir, isolated_store, kwargs):
    with pytest.raises(ConfigError):
        next(iter(modeldist.stream(minilm_dir, **kwargs)))
    assert _model_dirs(isolated_store) == []


@pytest.mark.parametrize("env", ["MODELDIST_SCHEDULER", "MODELDIST_AGENT"])
def test_env_scheduler_or_agent_refused(minilm_dir, isolated_store, monkeypatch, env):
    monkeypatch.setenv(env, "127.0.0.1:1")
    with pytest.raises(ConfigError):
        modeldist.load(minilm_dir)
    with pytest.raises(ConfigError):
        modeldist.snapshot_download(minilm_dir)
    assert _model_dirs(isolated_store) == []


def test_config_error_is_value_error(minilm_dir):
    with pytest.raises(ValueError):
        modeldist.load(minilm_dir, framework="jax")


# ------------------------------------------------------------------------------------------------
# copy-on-write tensors


def test_loaded_numpy_tensors_are_private_copy_on_write(minilm_dir, ref_np, isolated_store):
    tensors = modeldist.load(minilm_dir)
    manifest = modeldist.Manifest.from_source(minilm_dir)
    on_disk = isolated_store / manifest.digest / "model.safetensors"
    digest_before = _sha256(on_disk)
    name = "embeddings.word_embeddings.weight"
    t = tensors[name]
    assert t.flags.writeable
    t[...] = 7.0
    t2 = tensors["encoder.layer.0.attention.self.query.weight"]
    t2[0, 0] += 1.0
    assert np.all(t == 7.0)
    assert t2[0, 0] == ref_np["encoder.layer.0.attention.self.query.weight"][0, 0] + np.float32(1.0)
    # the other tensors of the same load are untouched
    for other, want in ref_np.items():
        if other not in (name, "encoder.layer.0.attention.self.query.weight"):
            assert_equal_tensor(other, tensors[other], want)
    # the store file on disk is unchanged, and a second load sees the original bytes
    assert _sha256(on_disk) == digest_before == _sha256(minilm_dir / "model.safetensors")
    again = modeldist.load(minilm_dir)
    for key, want in ref_np.items():
        assert_equal_tensor(key, again[key], want)


def test_loaded_torch_tensors_are_private_copy_on_write(minilm_dir, ref_pt, isolated_store):
    torch = pytest.importorskip("torch")
    tensors = modeldist.load(minilm_dir, framework="pt")
    manifest = modeldist.Manifest.from_source(minilm_dir)
    on_disk = isolated_store / manifest.digest / "model.safetensors"
    name = "encoder.layer.5.output.dense.bias"
    tensors[name].add_(1.0)  # in place
    tensors["embeddings.position_ids"].zero_()
    assert torch.equal(tensors[name], ref_pt[name] + 1.0)
    assert _sha256(on_disk) == _sha256(minilm_dir / "model.safetensors")
    again = modeldist.load(minilm_dir, framework="pt")
    assert_equal_tensor(name, again[name], ref_pt[name])
    assert_equal_tensor("embeddings.position_ids", again["embeddings.position_ids"], ref_pt["embeddings.position_ids"])


def test_streamed_tensors_are_private_copy_on_write(minilm_dir, ref_np, isolated_store):
    manifest = modeldist.Manifest.from_source(minilm_dir)
    for name, t in modeldist.stream(minilm_dir):
        t.reshape(-1)[0] += 1  # every yielded tensor written to, while staging is still running
    on_disk = isolated_store / manifest.digest / "model.safetensors"
    assert _sha256(on_disk) == _sha256(minilm_dir / "model.safetensors")
    again = modeldist.load(minilm_dir)
    for key, want in ref_np.items():
        assert_equal_tensor(key, again[key], want)


# ------------------------------------------------------------------------------------------------
# public surface and errors


def test_public_surface_is_locked():
    assert modeldist.__all__ == ["load", "stream", "snapshot_download", "Manifest", "Config", "errors",
                                 "__version__"]
    for name in modeldist.__all__:
        assert hasattr(modeldist, name), name
    assert modeldist.errors is errors
    assert isinstance(modeldist.__version__, str) and modeldist.__version__


#: Every error class with constructor keywords and the builtin it must also be.
ERROR_CASES = {
    "ModelDistError": ({}, Exception),
    "ConfigError": ({}, ValueError),
    "ManifestError": ({}, ValueError),
    "OriginError": ({"source": "hf://org/name", "transient": True}, OSError),
    "StoreError": ({"path": "/dev/shm/modeldist/x", "errno_": 28}, OSError),
    "TransportError": ({"peer": "10.0.0.7:7070", "errno_": 104}, OSError),
    "RdmaUnavailableError": ({"peer": "node-3", "errno_": None}, OSError),
    "TlsError": ({"peer": "10.0.0.8:7071", "errno_": None}, OSError),
    "IntegrityError": ({"piece": 17, "path": "model.safetensors"}, Exception),
    "PlanError": ({}, Exception),
    "AuthError": ({}, PermissionError),
    "DtypeError": ({}, TypeError),
}


def test_error_family_is_complete():
    assert sorted(errors.__all__) == sorted(ERROR_CASES)
    assert issubclass(errors.RdmaUnavailableError, errors.TransportError)
    assert issubclass(errors.TlsError, errors.TransportError)


@pytest.mark.parametrize("name", sorted(ERROR_CASES))
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_errors_pickle_with_attributes(name, protocol):
    kwargs, builtin = ERROR_CASES[name]
    cls = getattr(errors, name)
    assert issubclass(cls, errors.ModelDistError) and issubclass(cls, builtin)
    exc = cls(f"{name}: something went wrong", **kwargs)
    try:
        raise exc
    except errors.ModelDistError as caught:
        back = pickle.loads(pickle.dumps(caught, protocol=protocol))
    assert type(back) is cls
    assert isinstance(back, builtin)
    assert str(back) == str(exc) == f"{name}: something went wrong"
    assert back.args == exc.args
    for key, value in kwargs.items():
        assert getattr(back, key) == value, key
    # and once more: a rebuilt error pickles again
    assert str(pickle.loads(pickle.dumps(back, protocol=protocol))) == str(exc)


def test_error_defaults_pickle():
    back = pickle.loads(pickle.dumps(errors.OriginError("gone")))
    assert (back.source, back.transient) == (None, False)
    back = pickle.loads(pickle.dumps(errors.TransportError("reset")))
    assert back.peer is None


# ------------------------------------------------------------------------------------------------
# Manifest


def test_manifest_digest_is_stable(minilm_dir):
    a = modeldist.Manifest.from_source(minilm_dir)
    b = modeldist.Manifest.from_source(str(minilm_dir))
    assert a.digest == b.digest
    assert len(a.digest) == 64 and all(c in "0123456789abcdef" for c in a.digest)
    assert a.to_json() == b.to_json()
    assert a.weight_files == ("model.safetensors",)
    assert {t.name for t in a.state_dict_tensors()} == set(safetensors.numpy.load_file(
        minilm_dir / "model.safetensors"))


def test_manifest_json_round_trip(minilm_dir):
    m = modeldist.Manifest.from_source(minilm_dir)
    data = m.to_json()
    back = modeldist.Manifest.from_json(data)
    assert back == m
    assert back.digest == m.digest
    assert back.to_json() == data
    assert modeldist.Manifest.from_json(data.decode()) == m


def test_staged_manifest_json_round_trip(minilm_dir, isolated_store):
    """With piece digests (a completed store's manifest.json): the digest names the same model."""
    modeldist.load(minilm_dir)
    plain = modeldist.Manifest.from_source(minilm_dir)
    stored = (isolated_store / plain.digest / "manifest.json").read_bytes()
    final = modeldist.Manifest.from_json(stored)
    assert final.complete and not plain.complete
    assert final.digest == plain.digest
    assert final.to_json() == stored
    assert final.content_digest is not None


def test_manifest_allow_patterns(minilm_dir):
    m = modeldist.Manifest.from_source(minilm_dir, allow_patterns=["*.json"])
    paths = {f.path for f in m.files}
    assert "model.safetensors" not in paths
    assert {"config.json", "tokenizer.json", "1_Pooling/config.json"} <= paths
    assert all(p.endswith(".json") for p in paths)
    assert m.tensors == () and m.weight_files == ()
    assert m.digest != modeldist.Manifest.from_source(minilm_dir).digest
    # a single pattern string works too
    assert modeldist.Manifest.from_source(minilm_dir, allow_patterns="*.json").digest == m.digest


def test_load_with_allow_patterns(minilm_dir, isolated_store):
    assert modeldist.load(minilm_dir, allow_patterns=["*.json"]) == {}
    path = Path(modeldist.snapshot_download(minilm_dir, allow_patterns=["*.json", "*.txt"]))
    assert (path / "vocab.txt").read_bytes() == (minilm_dir / "vocab.txt").read_bytes()
    assert not (path / "model.safetensors").exists()


# ------------------------------------------------------------------------------------------------
# devices


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda(), reason="checks the no-CUDA path")
def test_load_cuda_without_cuda_is_config_error(minilm_dir, isolated_store):
    """Refused before anything is staged, like every other refused argument."""
    pytest.importorskip("torch")
    with pytest.raises(ConfigError):
        modeldist.load(minilm_dir, framework="pt", device="cuda:0")
    assert _model_dirs(isolated_store) == [], "staged the whole model before refusing the device"


@pytest.mark.skipif(_cuda(), reason="checks the no-CUDA path")
def test_stream_cuda_without_cuda_is_config_error(minilm_dir, isolated_store):
    """stream(device=...) must refuse a device it cannot use the way load() does (ConfigError)."""
    pytest.importorskip("torch")
    with pytest.raises(ConfigError):
        for _ in modeldist.stream(minilm_dir, framework="pt", device="cuda:0"):
            pass
    assert _model_dirs(isolated_store) == [], "started staging before refusing the device"


@pytest.mark.gpu
def test_load_to_cuda(minilm_dir, ref_pt):
    import torch

    cpu = modeldist.load(minilm_dir, framework="pt")
    gpu = modeldist.load(minilm_dir, framework="pt", device="cuda:0")
    assert set(gpu) == set(ref_pt)
    for name, t in gpu.items():
        assert t.device == torch.device("cuda:0"), name
        assert t.dtype == ref_pt[name].dtype and t.shape == ref_pt[name].shape
        assert torch.equal(t.cpu(), cpu[name]), name
        assert _bytes(t) == _bytes(ref_pt[name]), name


@pytest.mark.gpu
def test_stream_to_cuda(minilm_dir, ref_pt):
    import torch

    seen = set()
    for name, t in modeldist.stream(minilm_dir, framework="pt", device="cuda:0"):
        assert t.device.type == "cuda", name
        assert _bytes(t) == _bytes(ref_pt[name]), name
        seen.add(name)
    assert seen == set(ref_pt)
