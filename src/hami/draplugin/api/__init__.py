"""Kubelet plugin registration (pluginregistration v1) and DRA (dra v1) APIs: generated
protobuf/gRPC code plus the protocol constants.

The generated modules come from `proto/pluginregistration/v1/api.proto` and
`proto/dra/v1/api.proto` through `hack/gen-proto.sh`; `tests/contract/test_proto_generated.py`
fails when they drift.
"""

from __future__ import annotations

#: PluginInfo.type of a DRA plugin.
PLUGIN_TYPE_DRA = "DRAPlugin"
#: The DRA gRPC service this plugin serves, as listed in PluginInfo.supported_versions (kubelet
#: 1.34 accepts "v1.DRAPlugin" and "v1beta1.DRAPlugin" and picks the first it knows).
DRA_SERVICE_V1 = "v1.DRAPlugin"
#: Where the kubelet watches for registration sockets.
PLUGINS_REGISTRY_DIR = "/var/lib/kubelet/plugins_registry"
#: Where plugins keep their own sockets and state.
PLUGINS_DIR = "/var/lib/kubelet/plugins"

__all__ = ["DRA_SERVICE_V1", "PLUGINS_DIR", "PLUGINS_REGISTRY_DIR", "PLUGIN_TYPE_DRA"]
