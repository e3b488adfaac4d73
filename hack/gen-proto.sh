#!/usr/bin/env bash
# Generates the Python code for our .proto files with grpcio-tools.
#
#   hack/gen-proto.sh              -> writes src/hami/deviceplugin/api/api_pb2{,_grpc}.py and api_pb2.pyi
#   hack/gen-proto.sh OUT_DIR      -> writes the same files into OUT_DIR (used by the drift test)
#
# The .proto is staged under hami/deviceplugin/api/ so the generated *_grpc.py imports its
# sibling as `from hami.deviceplugin.api import api_pb2` (protoc derives the import from -I).
# The proto `package v1beta1` is what fixes the gRPC method paths, not the file location.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[[ -x "$python" ]] || python="$(command -v python3)"
out="${1:-$root/src/hami/deviceplugin/api}"

stage="$(mktemp -d)"
gen="$(mktemp -d)"
trap 'rm -rf "$stage" "$gen"' EXIT

mkdir -p "$stage/hami/deviceplugin/api"
cp "$root/proto/deviceplugin/v1beta1/api.proto" "$stage/hami/deviceplugin/api/api.proto"

"$python" -m grpc_tools.protoc -I"$stage" \
  --python_out="$gen" --pyi_out="$gen" --grpc_python_out="$gen" \
  "$stage/hami/deviceplugin/api/api.proto"

mkdir -p "$out"
for f in api_pb2.py api_pb2.pyi api_pb2_grpc.py; do
  cp "$gen/hami/deviceplugin/api/$f" "$out/$f"
done
