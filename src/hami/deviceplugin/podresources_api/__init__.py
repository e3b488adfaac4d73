"""Kubelet PodResources API v1: generated protobuf/gRPC code plus the protocol constants.

The generated modules (`api_pb2`, `api_pb2_grpc`) come from `proto/podresources/v1/api.proto`
through `hack/gen-proto.sh`; `tests/contract/test_proto_generated.py` fails when they drift.
"""

from __future__ import annotations

#: Where the kubelet serves PodResourcesLister (`<kubelet root dir>/pod-resources/kubelet.sock`).
POD_RESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"

__all__ = ["POD_RESOURCES_SOCKET"]
