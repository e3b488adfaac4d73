"""Kubelet device plugin API v1beta1: generated protobuf/gRPC code plus the protocol constants.

The generated modules (`api_pb2`, `api_pb2_grpc`) come from `proto/deviceplugin/v1beta1/api.proto`
through `hack/gen-proto.sh`; `tests/contract/test_proto_generated.py` fails when they drift.
"""

from __future__ import annotations

#: Device plugin API version sent in RegisterRequest.version.
VERSION = "v1beta1"
#: Directory holding kubelet.sock and the plugins' sockets.
DEVICE_PLUGIN_PATH = "/var/lib/kubelet/device-plugins/"
#: File name of the kubelet's Registration socket inside DEVICE_PLUGIN_PATH.
KUBELET_SOCKET_NAME = "kubelet.sock"
#: Full path of the kubelet's Registration socket.
KUBELET_SOCKET = DEVICE_PLUGIN_PATH + KUBELET_SOCKET_NAME
#: Device.health values.
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
#: Seconds the kubelet waits for PreStartContainer.
KUBELET_PRESTART_CONTAINER_RPC_TIMEOUT_SECS = 30

__all__ = [
    "DEVICE_PLUGIN_PATH",
    "HEALTHY",
    "KUBELET_PRESTART_CONTAINER_RPC_TIMEOUT_SECS",
    "KUBELET_SOCKET",
    "KUBELET_SOCKET_NAME",
    "UNHEALTHY",
    "VERSION",
]
