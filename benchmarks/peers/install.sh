#!/usr/bin/env bash
# Install a peer server into its own virtual environment: .cache/peers/<name>/ (their pins conflict
# with ours and with each other, so each gets its own).
#
#   benchmarks/peers/install.sh kserve|mlserver|pytriton|all [PYTHON]
#
# PYTHON defaults to python3.11 (PyTriton 0.7 bundles a Triton build for CPython 3.8-3.12; the
# others accept 3.11 too). Needs network access to PyPI. Re-running an installed peer is a no-op.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
name=${1:?usage: install.sh kserve|mlserver|pytriton|all [PYTHON]}
python=${2:-python3.11}
command -v "$python" >/dev/null || python=python3

install_one() {
  local peer=$1 venv="$root/.cache/peers/$1" pkgs module=$1
  case "$peer" in
    # uvloop 0.21: newer uvloop releases break MLServer 1.7's worker start-up.
    mlserver) pkgs="mlserver==1.7.1 uvloop==0.21.0 onnxruntime numpy" ;;
    kserve) pkgs="kserve==0.21.0 onnxruntime numpy" ;;
    # PyTriton's bundled Triton needs numpy 1.x in the python backend stub.
    pytriton) pkgs="nvidia-pytriton==0.7.0 onnxruntime numpy<2" ;;
    *) echo "unknown peer: $peer (kserve, mlserver, pytriton)" >&2; return 2 ;;
  esac
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import $module" 2>/dev/null; then
    echo "$peer: already installed in $venv"; return 0
  fi
  echo "$peer: installing into $venv ($pkgs)"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  # shellcheck disable=SC2086  # word splitting of the package list is intended
  "$venv/bin/pip" install -q $pkgs
  "$venv/bin/python" -c "import $module, onnxruntime; print('$peer ok: onnxruntime', onnxruntime.__version__)"
}

if [ "$name" = all ]; then
  for p in kserve mlserver pytriton; do install_one "$p"; done
else
  install_one "$name"
fi
