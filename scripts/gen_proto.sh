#!/usr/bin/env bash
# Regenerate modeldist/proto/*_pb2*.py from modeldist/proto/modeldist.proto (needs grpcio-tools).
# Usage: scripts/gen_proto.sh [OUTDIR]   (default: modeldist/proto; tests pass a temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-modeldist/proto}
PY=${PYTHON:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/modeldist/proto"
cp modeldist/proto/modeldist.proto "$tmp/modeldist/proto/"
"$PY" -m grpc_tools.protoc -I "$tmp" --python_out="$tmp" --grpc_python_out="$tmp" --pyi_out="$tmp" \
  "$tmp/modeldist/proto/modeldist.proto"
mkdir -p "$out"
cp "$tmp"/modeldist/proto/modeldist_pb2.py "$tmp"/modeldist/proto/modeldist_pb2.pyi \
   "$tmp"/modeldist/proto/modeldist_pb2_grpc.py "$out"/
