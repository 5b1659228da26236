"""The generated gRPC modules match modeldist.proto (regenerated into a temp dir and compared)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh(tmp_path):
    pytest.importorskip("grpc_tools")
    subprocess.run(["bash", str(ROOT / "scripts/gen_proto.sh"), str(tmp_path)], check=True,
                   env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    for name in ("modeldist_pb2.py", "modeldist_pb2.pyi", "modeldist_pb2_grpc.py"):
        fresh = (tmp_path / name).read_text()
        current = (ROOT / "modeldist/proto" / name).read_text()
        assert fresh == current, f"modeldist/proto/{name} is stale: run scripts/gen_proto.sh"
