#!/usr/bin/env bash
# Generates the Python code for our .proto files with grpcio-tools.
#
#   hack/gen-proto.sh              -> writes the generated modules under src/ (table below)
#   hack/gen-proto.sh OUT_ROOT     -> writes the same files under OUT_ROOT (used by the drift test)
#
#   proto/deviceplugin/v1beta1/api.proto      -> hami/deviceplugin/api/api_pb2{,_grpc}.py, .pyi
#   proto/pluginregistration/v1/api.proto     -> hami/draplugin/api/pluginregistration_pb2{,_grpc}.py, .pyi
#   proto/dra/v1/api.proto                    -> hami/draplugin/api/dra_pb2{,_grpc}.py, .pyi
#   proto/podresources/v1/api.proto           -> hami/deviceplugin/podresources_api/api_pb2{,_grpc}.py, .pyi
#
# Each .proto is staged under its Python package so the generated *_grpc.py imports its sibling
# as `from hami.<pkg>.api import <name>_pb2` (protoc derives the import from -I). The proto
# `package` is what fixes the gRPC method paths, not the file location.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[[ -x "$python" ]] || python="$(command -v python3)"
out="${1:-$root/src}"

stage="$(mktemp -d)"
gen="$(mktemp -d)"
trap 'rm -rf "$stage" "$gen"' EXIT

# source proto : staged path (relative to the Python root)
protos=(
  "proto/deviceplugin/v1beta1/api.proto:hami/deviceplugin/api/api.proto"
  "proto/pluginregistration/v1/api.proto:hami/draplugin/api/pluginregistration.proto"
  "proto/dra/v1/api.proto:hami/draplugin/api/dra.proto"
  "proto/podresources/v1/api.proto:hami/deviceplugin/podresources_api/api.proto"
)

for entry in "${protos[@]}"; do
  src="${entry%%:*}"
  dst="${entry#*:}"
  mkdir -p "$stage/$(dirname "$dst")"
  cp "$root/$src" "$stage/$dst"
  "$python" -m grpc_tools.protoc -I"$stage" \
    --python_out="$gen" --pyi_out="$gen" --grpc_python_out="$gen" "$stage/$dst"
  base="${dst%.proto}"
  mkdir -p "$out/$(dirname "$dst")"
  for suffix in _pb2.py _pb2.pyi _pb2_grpc.py; do
    cp "$gen/$base$suffix" "$out/$base$suffix"
  done
done
