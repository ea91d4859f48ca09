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
# TensorFlow/Keras conversion (tests/convert/test_tensorflow.py) needs the [tensorflow] extra: about 1.4 GB and a few
# minutes to install, so it is not in [dev] and is installed here only when missing. Without it those tests skip.
if ! .venv/bin/python -c "import tensorflow, tf2onnx" >/dev/null 2>&1; then
  echo "test: installing the [tensorflow] extra (TensorFlow for the Keras/SavedModel conversion tests; a few minutes)"
  # The extra's requirements as pyproject.toml lists them (not `-e .[tensorflow]`, which would rebuild the native core).
  .venv/bin/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['tensorflow']))" \
    | xargs .venv/bin/pip install -q >.cache/tensorflow-install.log 2>&1 \
    || echo "test: TensorFlow could not be installed (see .cache/tensorflow-install.log); its tests will skip"
fi
# Two pytest runs. First every test not marked serial, on two pytest-xdist workers that take tests one at a
# time (--dist load; a worker given a docs block runs the earlier blocks of its file first, in its own
# workspace). Not loadgroup: pytest-xdist 3.8 renames grouped tests through a node attribute pytest 9 no longer
# reads, so its groups are silently ignored. Not loadfile: it would put all of tests/test_docs.py (about 2.5
# minutes alone) on one worker, collected near the end. Then the serial tests alone: benchmarks, load
# and overload runs, perf_analyzer and Ray, whose measurements and deadlines a second busy core would skew.
# Both always run; the status is the first failure's (pytest's 5, "no tests collected", only when both say it).
set +e
.venv/bin/python -m pytest tests -n 2 --dist load -m "not serial" "$@"
parallel=$?
.venv/bin/python -m pytest tests -m serial "$@"
serial=$?
set -e
for rc in "$parallel" "$serial"; do
  if [ "$rc" != 0 ] && [ "$rc" != 5 ]; then exit "$rc"; fi
done
if [ "$parallel" = 5 ] && [ "$serial" = 5 ]; then exit 5; fi
exit 0
