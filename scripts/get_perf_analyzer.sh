#!/usr/bin/env bash
# Usage: scripts/get_perf_analyzer.sh DIR PIP
#
# Puts a working perf_analyzer (Triton's load generator) into DIR and writes the wrapper DIR/pa, which
# sets LD_LIBRARY_PATH and runs it. Idempotent: does nothing when DIR/pa already runs.
#
# Why this particular route:
# - the PyPI package `perf-analyzer` 0.1.0 is an empty placeholder;
# - tritonclient wheels from 2.61 on no longer carry the binary, and the 2.51-2.60 binaries need glibc 2.38
#   (Debian 12 has 2.36);
# - the tritonclient 2.50.0 wheel carries `tritonclient-2.50.0.data/data/bin/perf_analyzer`, which runs on
#   Debian 12 given libb64 (apt: libb64-0d) and libcudart.so.12. The CUDA runtime library is only loaded,
#   never used for HTTP load, so no GPU is needed; it comes from the nvidia-cuda-runtime-cu12 wheel
#   installed into DIR (not into any environment).
# PIP is the pip used for the downloads (any pip that reaches PyPI; nothing is installed into its env).
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 DIR PIP" >&2
  exit 2
fi
dir=$1
pip=$2
tritonclient_version=2.50.0
cudart_version=12.6.77

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

if [ -x "$dir/pa" ] && "$dir/pa" --version >/dev/null 2>&1; then
  exit 0
fi

command -v unzip >/dev/null || { echo "get_perf_analyzer: unzip is missing (apt-get install unzip)" >&2; exit 1; }

# The binary, taken out of the wheel without installing the wheel (its Python deps are not needed).
"$pip" download -q --no-deps --only-binary=:all: "tritonclient==$tritonclient_version" -d "$dir/wheel"
wheel=$(ls "$dir"/wheel/tritonclient-"$tritonclient_version"-*.whl | head -n 1)
unzip -o -q -j "$wheel" "tritonclient-$tritonclient_version.data/data/bin/perf_analyzer" -d "$dir"
chmod +x "$dir/perf_analyzer"

# libcudart.so.12, into DIR/cudart only.
"$pip" install -q --no-deps --target "$dir/cudart" "nvidia-cuda-runtime-cu12==$cudart_version"
libdir="$dir/cudart/nvidia/cuda_runtime/lib"
[ -f "$libdir/libcudart.so.12" ] || { echo "get_perf_analyzer: libcudart.so.12 not found in $libdir" >&2; exit 1; }

cat > "$dir/pa.tmp" <<WRAPPER
#!/bin/sh
# perf_analyzer $tritonclient_version with the CUDA runtime library it links against (written by get_perf_analyzer.sh).
export LD_LIBRARY_PATH="$libdir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$dir/perf_analyzer" "\$@"
WRAPPER
chmod +x "$dir/pa.tmp"
# Only a wrapper that runs replaces the old one, so a half-finished install is never taken for a working one.
if ! "$dir/pa.tmp" --version >/dev/null 2>&1; then
  echo "get_perf_analyzer: perf_analyzer does not run:" >&2
  LD_LIBRARY_PATH="$libdir" ldd "$dir/perf_analyzer" | grep 'not found' >&2 || "$dir/pa.tmp" --version >&2 || true
  echo "get_perf_analyzer: libb64.so.0d comes from: sudo apt-get install libb64-0d" >&2
  exit 1
fi
mv "$dir/pa.tmp" "$dir/pa"
rm -rf "$dir/wheel"
echo "get_perf_analyzer: $("$dir/pa" --version 2>&1 | head -n 1) at $dir/pa"
