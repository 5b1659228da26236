#!/usr/bin/env bash
# Install everything (scripts/setup.sh) and run the whole default test suite. .ci/run calls this.
# Extra arguments go to pytest, e.g. scripts/test.sh -k manifest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
