#!/usr/bin/env bash
# Regenerate src/fastml/server/proto/*_pb2.py and *_pb2_grpc.py from the .proto files beside them.
#
#   scripts/gen_proto.sh [PYTHON]     (default: .venv/bin/python, which needs grpcio-tools)
#
# The messages live in our package (fastml.inference) so they never clash with tritonclient's classes
# in one process; the service path on the wire must be Triton's (/inference.GRPCInferenceService/...),
# so the generated service name is rewritten to it after protoc runs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${1:-$root/.venv/bin/python}
out=$root/src/fastml/server/proto
cd "$root/src"
"$python" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
  fastml/server/proto/model_config.proto fastml/server/proto/grpc_service.proto
sed -i -e 's#/fastml\.inference\.GRPCInferenceService/#/inference.GRPCInferenceService/#g' \
  -e "s#'fastml\.inference\.GRPCInferenceService'#'inference.GRPCInferenceService'#g" \
  "$out/grpc_service_pb2_grpc.py"
rm -f "$out/model_config_pb2_grpc.py"
grep -q "'/inference.GRPCInferenceService/ModelInfer'" "$out/grpc_service_pb2_grpc.py" || {
  echo "gen_proto.sh: the service path rewrite did not apply; check grpcio-tools' output" >&2; exit 1; }
echo "generated: $(cd "$out" && ls ./*_pb2*.py* | tr '\n' ' ')"
