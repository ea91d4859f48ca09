#!/usr/bin/env bash
# The end-to-end demo on embedded defaults (SQLite, LMDB, Parquet under a fresh FASTML_HOME).
set -euo pipefail
cd "$(dirname "$0")/.."
FASTML_SETUP_MINIMAL=${FASTML_SETUP_MINIMAL:-1} bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
