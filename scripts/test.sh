#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up (idempotent), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# perf_analyzer (Triton's load generator) for the server compatibility tests and the documented commands:
# a wrapper at .cache/perf_analyzer/pa, linked as .venv/bin/perf_analyzer so that `perf_analyzer` is on the
# PATH of the venv. When it cannot be installed the suite still runs and those tests skip, saying how.
mkdir -p .cache
if bash scripts/get_perf_analyzer.sh .cache/perf_analyzer "$PWD/.venv/bin/pip" >.cache/get_perf_analyzer.log 2>&1; then
  ln -sf ../../.cache/perf_analyzer/pa .venv/bin/perf_analyzer
else
  echo "test: perf_analyzer could not be installed (see .cache/get_perf_analyzer.log); its tests will skip"
fi
# Evidently needs pandas<3, which conflicts with the main environment: the drift tests compare with its
# own statistical tests through a separate interpreter at .cache/evidently-venv.
if [ ! -x .cache/evidently-venv/bin/python ]; then
  { python3 -m venv .cache/evidently-venv \
    && .cache/evidently-venv/bin/pip install -q evidently 'pandas<3'; } >/dev/null 2>&1 \
    || { rm -rf .cache/evidently-venv; echo "test: Evidently could not be installed; its comparison test will say so"; }
fi
exec .venv/bin/python -m pytest tests "$@"
