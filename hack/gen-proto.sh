#!/usr/bin/env bash
# Generates the Python code for our .proto files with grpcio-tools.
#
#   hack/gen-proto.sh              -> writes src/hami/deviceplugin/api/api_pb2{,_grpc}.py and api_pb2.pyi
#                                     (device plugin API v1beta1) and the same three files in
#                                     src/hami/deviceplugin/podresources_api/ (PodResources API v1)
#   hack/gen-proto.sh OUT_DIR      -> writes them into OUT_DIR/api and OUT_DIR/podresources_api
#                                     (used by the drift test)
#
# Each .proto is staged under its package directory (hami/deviceplugin/<dir>/) so the generated
# *_grpc.py imports its sibling as `from hami.deviceplugin.<dir> import api_pb2` (protoc derives
# the import from -I). The proto `package` is what fixes the gRPC method paths, not the location.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[[ -x "$python" ]] || python="$(command -v python3)"
out="${1:-$root/src/hami/deviceplugin}"

stage="$(mktemp -d)"
gen="$(mktemp -d)"
trap 'rm -rf "$stage" "$gen"' EXIT

# <proto source under proto/> <package directory under hami/deviceplugin/>
for pair in "deviceplugin/v1beta1/api.proto api" "podresources/v1/api.proto podresources_api"; do
  read -r src dir <<<"$pair"
  mkdir -p "$stage/hami/deviceplugin/$dir"
  cp "$root/proto/$src" "$stage/hami/deviceplugin/$dir/api.proto"
  "$python" -m grpc_tools.protoc -I"$stage" \
    --python_out="$gen" --pyi_out="$gen" --grpc_python_out="$gen" \
    "$stage/hami/deviceplugin/$dir/api.proto"
  mkdir -p "$out/$dir"
  for f in api_pb2.py api_pb2.pyi api_pb2_grpc.py; do
    cp "$gen/hami/deviceplugin/$dir/$f" "$out/$dir/$f"
  done
done
