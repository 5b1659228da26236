"""Origins with the real all-MiniLM-L6-v2 as the origin (DESIGN sections 2, 4, 9).

Every origin kind modeldist reads from is exercised for real: a local folder, a single local file,
``file://`` through ``pyarrow.fs``, S3 through moto's standalone server on loopback (a real
subprocess speaking HTTP), and a Hugging Face cache laid out exactly as ``huggingface_hub`` lays it
out (blobs, refs, snapshots of relative symlinks). What comes out must be bit-identical to
``safetensors.{numpy,torch}.load_file`` of the origin file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

import modeldist
from modeldist import staging
from modeldist.errors import IntegrityError, ModelDistError, OriginError
from modeldist.origin import is_transient, open_origin
from modeldist.store import COMPLETE_MARKER, Store

REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"
HF_REPO_DIR = "models--sentence-transformers--all-MiniLM-L6-v2"
#: A 40-hex commit id for the fake-but-faithful HF cache (any commit id works offline).
COMMIT = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"
REPO_ROOT = Path(modeldist.__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# reference and comparison helpers


@pytest.fixture(scope="module")
def ref_np(minilm_dir):
    return safetensors.numpy.load_file(minilm_dir / "model.safetensors")


@pytest.fixture(scope="module")
def ref_pt(minilm_dir):
    torch_st = pytest.importorskip("safetensors.torch")
    return torch_st.load_file(minilm_dir / "model.safetensors")


def assert_same_numpy(got: dict, ref: dict) -> None:
    assert set(got) == set(ref), f"names differ: {sorted(set(got) ^ set(ref))[:5]}"
    for name, want in ref.items():
        t = got[name]
        assert isinstance(t, np.ndarray), f"{name}: {type(t)}"
        assert t.dtype == want.dtype, f"{name}: dtype {t.dtype} != {want.dtype}"
        assert t.shape == want.shape, f"{name}: shape {t.shape} != {want.shape}"
        assert t.tobytes() == want.tobytes(), f"{name}: bytes differ"


def assert_same_torch(got: dict, ref: dict) -> None:
    import torch

    assert set(got) == set(ref), f"names differ: {sorted(set(got) ^ set(ref))[:5]}"
    for name, want in ref.items():
        t = got[name]
        assert isinstance(t, torch.Tensor), f"{name}: {type(t)}"
        assert t.device.type == "cpu"
        assert t.dtype == want.dtype, f"{name}: dtype {t.dtype} != {want.dtype}"
        assert tuple(t.shape) == tuple(want.shape), f"{name}: shape {tuple(t.shape)} != {tuple(want.shape)}"
        assert t.contiguous().numpy().tobytes() == want.contiguous().numpy().tobytes(), f"{name}: bytes differ"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _subprocess_env(**extra: str) -> dict[str, str]:
    """The current environment (store and HF settings monkeypatched in) plus the repo on sys.path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------------------
# local folder, single file, file://


def _local_sources(minilm_dir: Path) -> dict[str, str]:
    return {
        "folder": str(minilm_dir),
        "file": str(minilm_dir / "model.safetensors"),
        "file-uri-folder": (minilm_dir).as_uri(),
        "file-uri-file": (minilm_dir / "model.safetensors").as_uri(),
    }


@pytest.mark.parametrize("kind", ["folder", "file", "file-uri-folder", "file-uri-file"])
def test_local_origin_numpy_bit_identical(minilm_dir, ref_np, kind):
    src = _local_sources(minilm_dir)[kind]
    assert_same_numpy(modeldist.load(src), ref_np)


@pytest.mark.parametrize("kind", ["folder", "file", "file-uri-folder"])
def test_local_origin_torch_bit_identical(minilm_dir, ref_pt, kind):
    src = _local_sources(minilm_dir)[kind]
    assert_same_torch(modeldist.load(src, framework="pt"), ref_pt)


def test_local_folder_store_holds_every_file(minilm_dir, isolated_store):
    """The store copy of a folder origin has every file of the folder, byte for byte."""
    manifest = modeldist.Manifest.from_source(minilm_dir)
    modeldist.load(minilm_dir)
    folder = isolated_store / manifest.digest
    assert (folder / COMPLETE_MARKER).is_file()
    expected = sorted(p.relative_to(minilm_dir).as_posix() for p in minilm_dir.rglob("*") if p.is_file())
    assert sorted(f.path for f in manifest.files) == expected
    for rel in expected:
        assert (folder / rel).read_bytes() == (minilm_dir / rel).read_bytes(), rel


def test_single_file_origin_lists_one_file(minilm_dir):
    m = modeldist.Manifest.from_source(minilm_dir / "model.safetensors")
    assert [f.path for f in m.files] == ["model.safetensors"]
    assert m.weight_files == ("model.safetensors",)
    assert m.total_size == (minilm_dir / "model.safetensors").stat().st_size


# ------------------------------------------------------------------------------------------------
# S3 on loopback: moto's standalone server as a real subprocess

AWS_KEY = "modeldist-test-key"
AWS_SECRET = "modeldist-test-secret"
BUCKET = "models"
PREFIX = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory):
    pytest.importorskip("moto")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("moto") / "server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto server exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"moto server did not answer on port {port} within 30s")
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


@pytest.fixture(scope="module")
def s3_model(moto_server, minilm_dir):
    """The model folder uploaded to s3://models/<PREFIX>/ on the moto server; returns the port."""
    boto3 = pytest.importorskip("boto3")
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto_server}", region_name="us-east-1",
                          aws_access_key_id=AWS_KEY, aws_secret_access_key=AWS_SECRET)
    client.create_bucket(Bucket=BUCKET)
    for path in sorted(minilm_dir.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"{PREFIX}/{path.relative_to(minilm_dir).as_posix()}")
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX + "/")
    assert listed["KeyCount"] == sum(1 for p in minilm_dir.rglob("*") if p.is_file())
    return moto_server


@pytest.fixture
def s3_env(monkeypatch, tmp_path):
    """Dummy credentials for pyarrow's S3 client; nothing from the user's AWS config leaks in."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)


def _s3_uri(port: int, key: str = PREFIX, bucket: str = BUCKET) -> str:
    return f"s3://{bucket}/{key}?endpoint_override=127.0.0.1:{port}&scheme=http"


@pytest.mark.slow
def test_s3_origin_bit_identical(s3_model, s3_env, ref_np, ref_pt, minilm_dir, isolated_store):
    uri = _s3_uri(s3_model)
    staged = staging.stage(uri)
    assert staged.origin_bytes == staged.manifest.total_size
    assert sorted(f.path for f in staged.manifest.files) == sorted(
        p.relative_to(minilm_dir).as_posix() for p in minilm_dir.rglob("*") if p.is_file())
    assert_same_numpy(modeldist.load(uri), ref_np)
    # second call: a store hit, torch this time
    assert_same_torch(modeldist.load(uri, framework="pt"), ref_pt)
    assert (isolated_store / staged.manifest.digest / "tokenizer.json").read_bytes() == \
        (minilm_dir / "tokenizer.json").read_bytes()


@pytest.mark.slow
def test_s3_single_object_origin(s3_model, s3_env, ref_np):
    assert_same_numpy(modeldist.load(_s3_uri(s3_model, key=f"{PREFIX}/model.safetensors")), ref_np)


@pytest.mark.parametrize("what", ["bucket", "key"])
def test_s3_missing_is_origin_error_quickly(s3_model, s3_env, isolated_store, what):
    uri = _s3_uri(s3_model, bucket="no-such-bucket") if what == "bucket" else _s3_uri(s3_model, key="no/such/key")
    cfg = modeldist.Config(store=str(isolated_store), retries=2, retry_backoff=0.01)
    t0 = time.monotonic()
    with pytest.raises(OriginError) as info:
        modeldist.load(uri, config=cfg)
    assert time.monotonic() - t0 < 10
    assert info.value.source is not None and "s3://" in info.value.source
    assert isinstance(info.value, OSError)
    assert not any(isolated_store.glob(f"*/{COMPLETE_MARKER}"))


def test_s3_missing_key_with_env_retries(s3_model, s3_env, monkeypatch):
    monkeypatch.setenv("MODELDIST_RETRIES", "2")
    monkeypatch.setenv("MODELDIST_RETRY_BACKOFF", "0.01")
    t0 = time.monotonic()
    with pytest.raises(OriginError):
        modeldist.load(_s3_uri(s3_model, key="absent"))
    assert time.monotonic() - t0 < 10


# ------------------------------------------------------------------------------------------------
# Hugging Face cache, laid out exactly as huggingface_hub does


def git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def build_hf_cache(hf_home: Path, model_dir: Path, *, corrupt: bool = False) -> Path:
    """``<hf_home>/hub/models--org--name/{blobs,refs/main,snapshots/<commit>}`` from a model folder.

    LFS files (``*.safetensors``) are stored under their sha256, the others under their git blob
    sha1; snapshot entries are relative symlinks into ``blobs``. ``corrupt`` flips one byte of the
    safetensors blob's data region (same size, same name: the name still claims the good sha256).
    """
    repo = hf_home / "hub" / HF_REPO_DIR
    blobs = repo / "blobs"
    snap = repo / "snapshots" / COMMIT
    blobs.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)  # no newline, as huggingface_hub writes it
    for path in sorted(model_dir.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(model_dir)
        content = path.read_bytes()
        if path.suffix == ".safetensors":
            name = hashlib.sha256(content).hexdigest()
            if corrupt:
                buf = bytearray(content)
                buf[-1] ^= 0x01  # last byte: inside the last tensor's data, not the header
                content = bytes(buf)
        else:
            name = git_blob_sha1(content)
        blob = blobs / name
        if not blob.exists():
            blob.write_bytes(content)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    return repo


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory, minilm_dir) -> Path:
    home = tmp_path_factory.mktemp("hf_home")
    build_hf_cache(home, minilm_dir)
    return home


def _point_hf_at(monkeypatch, home: Path) -> None:
    """HF_HOME + offline, in the environment and in huggingface_hub.constants (read at import)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    hub = str(home / "hub")
    for name, value in (("HF_HOME", str(home)), ("HF_HUB_CACHE", hub), ("HUGGINGFACE_HUB_CACHE", hub),
                        ("HF_HUB_OFFLINE", True)):
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)
    assert constants.HF_HUB_OFFLINE is True and constants.HF_HUB_CACHE == hub


@pytest.fixture
def hf_env(hf_home, monkeypatch) -> Path:
    _point_hf_at(monkeypatch, hf_home)
    return hf_home


def test_hf_cache_layout_is_what_huggingface_hub_reads(hf_env, minilm_dir):
    """Guard for the fixture itself: huggingface_hub resolves our cache to the snapshot folder."""
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(REPO_ID, local_files_only=True))
    assert folder == hf_env / "hub" / HF_REPO_DIR / "snapshots" / COMMIT
    assert (folder / "model.safetensors").is_symlink()
    assert not os.path.isabs(os.readlink(folder / "1_Pooling" / "config.json"))
    assert (folder / "1_Pooling" / "config.json").read_bytes() == (minilm_dir / "1_Pooling" / "config.json").read_bytes()


def test_hf_load_bit_identical(hf_env, ref_np):
    assert_same_numpy(modeldist.load(f"hf://{REPO_ID}"), ref_np)


def test_hf_load_torch_bit_identical(hf_env, ref_pt):
    assert_same_torch(modeldist.load(f"hf://{REPO_ID}", framework="pt"), ref_pt)


def test_hf_manifest_carries_lfs_sha256(hf_env, minilm_dir):
    m = modeldist.Manifest.from_source(f"hf://{REPO_ID}")
    entry = m.file_map["model.safetensors"]
    assert entry.kind == "safetensors"
    assert entry.sha256 == hashlib.sha256((minilm_dir / "model.safetensors").read_bytes()).hexdigest()
    cfg = m.file_map["config.json"]
    assert cfg.sha256 is None  # not an LFS file: the origin gives no sha256 for it
    assert cfg.version == f"git:{git_blob_sha1((minilm_dir / 'config.json').read_bytes())}"
    assert m.file_map["1_Pooling/config.json"].size == (minilm_dir / "1_Pooling" / "config.json").stat().st_size


def test_hf_revision_main(hf_env, ref_np):
    assert_same_numpy(modeldist.load(f"hf://{REPO_ID}@main"), ref_np)
    # revision= keyword and the commit id itself name the same model
    plain = modeldist.Manifest.from_source(f"hf://{REPO_ID}")
    assert modeldist.Manifest.from_source(f"hf://{REPO_ID}", revision="main").digest == plain.digest
    assert modeldist.Manifest.from_source(f"hf://{REPO_ID}@{COMMIT}").digest == plain.digest


def test_hf_unknown_revision_is_origin_error(hf_env):
    with pytest.raises(OriginError):
        modeldist.load(f"hf://{REPO_ID}@no-such-branch")


def test_hf_repo_not_in_cache_is_origin_error(hf_env, isolated_store):
    t0 = time.monotonic()
    with pytest.raises(OriginError) as info:
        modeldist.load("hf://sentence-transformers/not-in-the-cache")
    assert time.monotonic() - t0 < 5
    assert "not-in-the-cache" in str(info.value)
    assert not any(isolated_store.glob(f"*/{COMPLETE_MARKER}"))


def test_hf_bad_repo_id_is_origin_error(hf_env):
    with pytest.raises(OriginError):
        modeldist.load("hf://../../etc")


def test_hf_corrupted_blob_is_integrity_error(tmp_path, minilm_dir, monkeypatch, isolated_store):
    home = tmp_path / "hf_corrupt"
    build_hf_cache(home, minilm_dir, corrupt=True)
    _point_hf_at(monkeypatch, home)
    manifest = modeldist.Manifest.from_source(f"hf://{REPO_ID}")
    good_sha = hashlib.sha256((minilm_dir / "model.safetensors").read_bytes()).hexdigest()
    assert manifest.file_map["model.safetensors"].sha256 == good_sha  # the blob name still claims it
    with pytest.raises(IntegrityError) as info:
        modeldist.load(f"hf://{REPO_ID}")
    assert info.value.path == "model.safetensors"
    folder = isolated_store / manifest.digest
    assert folder.is_dir(), "staging should have started in the store"
    assert not (folder / COMPLETE_MARKER).exists()
    assert not Store(isolated_store).is_complete(manifest.digest)
    # and it stays refused: a second try re-reads the bad bytes and fails the same way
    with pytest.raises(IntegrityError):
        modeldist.load(f"hf://{REPO_ID}")
    assert not (folder / COMPLETE_MARKER).exists()


_HF_SUBPROCESS = textwrap.dedent("""
    import hashlib, json, sys
    import huggingface_hub.constants as c
    import modeldist, safetensors.numpy
    ref = safetensors.numpy.load_file(sys.argv[1])
    got = modeldist.load("hf://%s")
    m = modeldist.Manifest.from_source("hf://%s")
    same = set(got) == set(ref) and all(
        got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape and got[k].tobytes() == ref[k].tobytes()
        for k in ref)
    print(json.dumps({"offline": c.HF_HUB_OFFLINE, "cache": c.HF_HUB_CACHE, "same": same, "n": len(got),
                      "sha256": m.file_map["model.safetensors"].sha256, "modeldist": modeldist.__file__}))
""" % (REPO_ID, REPO_ID))


@pytest.mark.slow
def test_hf_load_in_subprocess_with_env(hf_home, minilm_dir, monkeypatch, ref_np):
    """The most faithful form: HF_HOME/HF_HUB_OFFLINE set before huggingface_hub is imported."""
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    proc = subprocess.run([sys.executable, "-c", _HF_SUBPROCESS, str(minilm_dir / "model.safetensors")],
                          env=_subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["offline"] is True
    assert out["cache"] == str(hf_home / "hub")
    assert out["modeldist"] == str(REPO_ROOT / "modeldist" / "__init__.py")
    assert out["n"] == len(ref_np)
    assert out["same"] is True
    assert out["sha256"] == hashlib.sha256((minilm_dir / "model.safetensors").read_bytes()).hexdigest()


_HF_UNREACHABLE = textwrap.dedent("""
    import json, sys
    import huggingface_hub.constants as c
    import modeldist
    from modeldist.errors import OriginError
    assert not c.HF_HUB_OFFLINE
    got = modeldist.load("hf://%s")
    try:
        modeldist.load("hf://sentence-transformers/not-in-the-cache")
        missing = "loaded"
    except OriginError as exc:
        missing = str(exc)
    print(json.dumps({"n": len(got), "missing": missing,
                      "sha256": modeldist.Manifest.from_source("hf://%s").file_map["model.safetensors"].sha256}))
""" % (REPO_ID, REPO_ID))


def test_hf_unreachable_hub_falls_back_to_cache(hf_home, minilm_dir, monkeypatch, ref_np):
    """Online mode, but the hub (HF_ENDPOINT) refuses connections: the cache serves the model."""
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_free_port()}")  # nobody listens there
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _HF_UNREACHABLE], env=_subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.monotonic() - t0 < 60
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n"] == len(ref_np)
    assert "not in the local Hugging Face cache" in out["missing"]
    assert out["sha256"] == hashlib.sha256((minilm_dir / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.slow
def test_snapshot_download_works_with_transformers(hf_env, minilm_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    path = modeldist.snapshot_download(REPO_ID)
    folder = Path(path)
    assert folder.is_dir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "1_Pooling/config.json"):
        assert (folder / name).read_bytes() == (minilm_dir / name).read_bytes(), name
    # the same folder again (a store hit), and through hf:// and revision= spellings
    assert modeldist.snapshot_download(REPO_ID) == path
    assert modeldist.snapshot_download(f"hf://{REPO_ID}", revision="main") == path

    def embed(folder: str | Path) -> "torch.Tensor":
        tok = transformers.AutoTokenizer.from_pretrained(folder)
        model = transformers.AutoModel.from_pretrained(folder)
        model.eval()
        enc = tok(["modeldist moves model weights to every GPU node, fast."], return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1)

    torch.manual_seed(0)
    want = embed(minilm_dir)
    got = embed(path)
    assert got.shape == (1, 384)
    assert torch.isfinite(got).all()
    assert torch.equal(got, want)


# ------------------------------------------------------------------------------------------------
# retry classification and permanent errors


def _real_exceptions() -> dict[str, BaseException]:
    """Real exceptions, raised by the OS or a library, not constructed by hand."""
    out: dict[str, BaseException] = {}
    try:
        open("/nonexistent/modeldist/file", "rb")
    except FileNotFoundError as exc:
        out["FileNotFoundError"] = exc
    fd = os.open("/", os.O_RDONLY)
    try:
        os.read(fd, 1)
    except IsADirectoryError as exc:
        out["IsADirectoryError"] = exc
    finally:
        os.close(fd)
    try:
        open("/etc/passwd/x", "rb")
    except NotADirectoryError as exc:
        out["NotADirectoryError"] = exc
    port = _free_port()  # nobody listens there now
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError as exc:
        out["ConnectionRefusedError"] = exc
    a, b = socket.socketpair()
    a.settimeout(0.01)
    try:
        a.recv(1)
    except TimeoutError as exc:
        out["TimeoutError"] = exc
    b.close()
    try:
        for _ in range(64):
            a.send(b"x" * 65536)
    except (BrokenPipeError, ConnectionResetError) as exc:
        out["BrokenPipeError"] = exc
    a.close()
    try:
        pickle.loads(b"")
    except EOFError as exc:
        out["EOFError"] = exc
    try:
        json.loads("{")
    except ValueError as exc:
        out["ValueError"] = exc
    import pyarrow.fs as pafs

    try:
        pafs.LocalFileSystem().open_input_file("/nonexistent/modeldist/file")
    except FileNotFoundError as exc:
        out["pyarrow-FileNotFoundError"] = exc
    try:
        modeldist.Manifest.from_json(b"{}")
    except ModelDistError as exc:
        out["ManifestError"] = exc
    try:
        modeldist.load("/nonexistent/modeldist/model")
    except OriginError as exc:
        out["OriginError-permanent"] = exc
    return out


TRANSIENT = {"ConnectionRefusedError", "TimeoutError", "BrokenPipeError", "EOFError"}
PERMANENT = {"FileNotFoundError", "IsADirectoryError", "NotADirectoryError", "ValueError",
             "pyarrow-FileNotFoundError", "ManifestError", "OriginError-permanent"}


def test_is_transient_with_real_exceptions():
    excs = _real_exceptions()
    assert set(excs) == TRANSIENT | PERMANENT, f"could not provoke: {(TRANSIENT | PERMANENT) - set(excs)}"
    for name in TRANSIENT:
        assert is_transient(excs[name]) is True, name
    for name in PERMANENT:
        assert is_transient(excs[name]) is False, name
    # an OriginError says itself whether it is transient
    assert is_transient(OriginError("flaky", transient=True)) is True
    assert is_transient(OriginError("gone", transient=False)) is False
    assert is_transient(PermissionError(errno.EACCES, "denied")) is False
    assert is_transient(IntegrityError("bad bytes")) is False


# with retries=5 and a 2 s first backoff, a single retry would sleep at least 1 s
SLOW_RETRIES = dict(retries=5, retry_backoff=2.0)


def test_missing_local_path_fails_fast(isolated_store, tmp_path):
    cfg = modeldist.Config(store=str(isolated_store), **SLOW_RETRIES)
    t0 = time.monotonic()
    with pytest.raises(OriginError) as info:
        modeldist.load(tmp_path / "no-such-model", config=cfg)
    assert time.monotonic() - t0 < 1.0
    assert info.value.transient is False
    assert isinstance(info.value, OSError)


def test_missing_file_uri_fails_fast_without_retry(isolated_store, tmp_path):
    cfg = modeldist.Config(store=str(isolated_store), **SLOW_RETRIES)
    t0 = time.monotonic()
    with pytest.raises(OriginError) as info:
        modeldist.load((tmp_path / "no-such-model").as_uri(), config=cfg)
    assert time.monotonic() - t0 < 1.0
    assert info.value.transient is False
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_file_vanishing_after_listing_fails_fast(isolated_store, tmp_path, minilm_dir):
    """A permanent read error (the file is gone) is raised at once, not retried."""
    model = tmp_path / "model"
    shutil.copytree(minilm_dir, model)
    cfg = modeldist.Config(store=str(isolated_store), **SLOW_RETRIES)
    origin = open_origin(str(model), config=cfg)
    with origin:
        files = {f.path for f in origin.list_files()}
        assert "vocab.txt" in files
        (model / "vocab.txt").unlink()
        t0 = time.monotonic()
        with pytest.raises(OriginError) as info:
            origin.read("vocab.txt", 0, 16)
        assert time.monotonic() - t0 < 1.0
    assert info.value.transient is False
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_file_truncated_after_listing_fails_fast(isolated_store, tmp_path, minilm_dir):
    """A file shorter than the origin listed: unexpected end of file, permanent, no retries."""
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(minilm_dir / "model.safetensors", model / "model.safetensors")
    cfg = modeldist.Config(store=str(isolated_store), **SLOW_RETRIES)
    origin, manifest = staging.resolve(str(model), config=cfg)
    try:
        size = manifest.total_size
        os.truncate(model / "model.safetensors", size - 1000)
        t0 = time.monotonic()
        with pytest.raises(OriginError) as info:
            origin.read("model.safetensors", size - 2000, 2000)
        assert time.monotonic() - t0 < 1.0
        assert "end of file" in str(info.value)
    finally:
        origin.close()


# ------------------------------------------------------------------------------------------------
# origin byte counting


def _header_bytes(path: Path) -> int:
    with open(path, "rb") as fh:
        return 8 + int.from_bytes(fh.read(8), "little")


def test_stage_reads_origin_once(minilm_dir, isolated_store):
    first = staging.stage(str(minilm_dir))
    assert first.origin_bytes == first.manifest.total_size
    assert first.manifest.total_size == sum(p.stat().st_size for p in minilm_dir.rglob("*") if p.is_file())
    assert first.path == isolated_store / first.manifest.digest
    assert first.manifest.complete
    second = staging.stage(str(minilm_dir))
    assert second.origin_bytes == 0
    assert second.manifest == first.manifest
    assert second.path == first.path


def test_origin_bytes_are_size_plus_headers(minilm_dir, isolated_store):
    """Manifest: exactly the safetensors header; staging: exactly every byte once more."""
    cfg = modeldist.Config(store=str(isolated_store))
    origin, manifest = staging.resolve(str(minilm_dir), config=cfg)
    with origin:
        header = _header_bytes(minilm_dir / "model.safetensors")
        assert origin.bytes_read == header
        assert manifest.file_map["model.safetensors"].data_start == header
        with Store(config=cfg).open(manifest) as buf:
            staging.fill_from_origin(buf, origin, buf.missing(), concurrency=4)
            buf.finish()
        assert origin.bytes_read == manifest.total_size + header
        assert origin.reads == len(manifest.pieces) + 2  # one read per piece, plus length and header
