#!/usr/bin/env bash
# Install everything (scripts/setup.sh) and run `modeldist demo`. Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/modeldist demo "$@"
