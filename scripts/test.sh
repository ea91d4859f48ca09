#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up (idempotent), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# perf_analyzer for the server compatibility tests (a wrapper at .cache/perf_analyzer/pa).
if [ ! -x .cache/perf_analyzer/pa ] && [ -f ../shared/bench/get_perf_analyzer.sh ]; then
  bash ../shared/bench/get_perf_analyzer.sh .cache/perf_analyzer "$PWD/.venv/bin/pip" >/dev/null 2>&1 \
    || echo "test: perf_analyzer could not be installed; its tests will say so"
fi
# Evidently needs pandas<3, which conflicts with the main environment: the drift tests compare with its
# own statistical tests through a separate interpreter at .cache/evidently-venv.
if [ ! -x .cache/evidently-venv/bin/python ]; then
  { python3 -m venv .cache/evidently-venv \
    && .cache/evidently-venv/bin/pip install -q evidently 'pandas<3'; } >/dev/null 2>&1 \
    || { rm -rf .cache/evidently-venv; echo "test: Evidently could not be installed; its comparison test will say so"; }
fi
exec .venv/bin/python -m pytest tests "$@"
