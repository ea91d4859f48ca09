#!/usr/bin/env bash
# Idempotent set-up for a fresh machine of this kind: system packages (only when missing), a virtual
# environment in .venv, and fastml installed in editable mode with its [dev] extra.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again at any time.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: liblmdb-dev (the native feature cache), rapidjson-dev (header-only JSON parser of the native
# HTTP intake), libnghttp2-dev (HTTP/2 under the native gRPC listener), libb64-0d (perf_analyzer), wrk (load),
# postgresql (registry tests on a real server), chromium (report rendering tests), graphviz (lineage DOT
# export is checked with `dot`), unzip, prometheus (promtool and a live Prometheus for deploy/prometheus and
# the Grafana dashboard's queries).
need=()
dpkg -s liblmdb-dev >/dev/null 2>&1 || need+=(liblmdb-dev)
dpkg -s rapidjson-dev >/dev/null 2>&1 || need+=(rapidjson-dev)
dpkg -s libnghttp2-dev >/dev/null 2>&1 || need+=(libnghttp2-dev)
dpkg -s libb64-0d >/dev/null 2>&1 || need+=(libb64-0d)
dpkg -s unzip >/dev/null 2>&1 || need+=(unzip)
if [ "${FASTML_SETUP_MINIMAL:-0}" != "1" ]; then
  dpkg -s wrk >/dev/null 2>&1 || need+=(wrk)
  dpkg -s postgresql >/dev/null 2>&1 || need+=(postgresql)
  dpkg -s chromium >/dev/null 2>&1 || need+=(chromium)
  dpkg -s graphviz >/dev/null 2>&1 || need+=(graphviz)
  dpkg -s prometheus >/dev/null 2>&1 || need+=(prometheus)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Reinstall only when the package metadata or native sources (C++ under csrc/, including its
# subdirectories, and Cython files) changed since the last install.
stamp=.venv/.fastml-installed
native_sources() {
  find csrc src -type f \( -name '*.cc' -o -name '*.h' -o -name '*.pyx' -o -name '*.pxd' \) | LC_ALL=C sort
}
sig=$({ cat pyproject.toml setup.py; native_sources | xargs cat; } | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$sig" ] || ! .venv/bin/python -c "import fastml._core, fastml._frames" 2>/dev/null; then
  echo "setup: pip install -e .[dev] (a few minutes on a fresh machine)"
  .venv/bin/pip install -q --upgrade pip setuptools wheel pybind11
  .venv/bin/pip install -q -e ".[dev]"
  echo "$sig" > "$stamp"
fi
# Bytecode for the editable source. pip compiles what it installs, but an editable install leaves src/ to the
# import system, which writes no bytecode where PYTHONDONTWRITEBYTECODE is set (as on these machines): every
# `fastml` command would compile the modules it imports again (~17 ms of `fastml predict`'s start). compileall
# rewrites only what changed; the import system still checks each file's timestamp against its bytecode.
.venv/bin/python -m compileall -q src/fastml >/dev/null
