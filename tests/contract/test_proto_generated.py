"""The committed gRPC code (device plugin v1beta1, PodResources v1) must equal what
hack/gen-proto.sh generates now, and carry the upstream wire names and numbers."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from hami.testing.prereq import missing

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "src" / "hami" / "deviceplugin"
PACKAGES = ("api", "podresources_api")
FILES = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py")


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        missing("grpcio-tools is not installed (make venv installs the dev dependencies)")
    subprocess.run(
        ["bash", str(ROOT / "hack" / "gen-proto.sh"), str(tmp_path)],
        check=True,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
    )
    stale = [
        f"{p}/{f}"
        for p in PACKAGES
        for f in FILES
        if (tmp_path / p / f).read_bytes() != (GENERATED / p / f).read_bytes()
    ]
    assert not stale, f"generated code is stale, run hack/gen-proto.sh: {stale}"


def test_wire_names_and_numbers() -> None:
    from hami.deviceplugin.api import api_pb2

    fd = api_pb2.DESCRIPTOR
    assert fd.package == "v1beta1"
    services = {s.name: [m.name for m in s.methods] for s in fd.services_by_name.values()}
    assert services == {
        "Registration": ["Register"],
        "DevicePlugin": [
            "GetDevicePluginOptions",
            "ListAndWatch",
            "GetPreferredAllocation",
            "Allocate",
            "PreStartContainer",
        ],
    }
    assert fd.services_by_name["DevicePlugin"].methods_by_name["ListAndWatch"].server_streaming
    expected = {
        "RegisterRequest": {"version": 1, "endpoint": 2, "resource_name": 3, "options": 4},
        "DevicePluginOptions": {"pre_start_required": 1, "get_preferred_allocation_available": 2},
        "Device": {"ID": 1, "health": 2, "topology": 3},
        "TopologyInfo": {"nodes": 1},
        "NUMANode": {"ID": 1},
        "ListAndWatchResponse": {"devices": 1},
        "PreferredAllocationRequest": {"container_requests": 1},
        "ContainerPreferredAllocationRequest": {
            "available_deviceIDs": 1,
            "must_include_deviceIDs": 2,
            "allocation_size": 3,
        },
        "PreferredAllocationResponse": {"container_responses": 1},
        "ContainerPreferredAllocationResponse": {"deviceIDs": 1},
        "AllocateRequest": {"container_requests": 1},
        "ContainerAllocateRequest": {"devices_ids": 1},
        "AllocateResponse": {"container_responses": 1},
        "ContainerAllocateResponse": {
            "envs": 1,
            "mounts": 2,
            "devices": 3,
            "annotations": 4,
            "cdi_devices": 5,
        },
        "Mount": {"container_path": 1, "host_path": 2, "read_only": 3},
        "DeviceSpec": {"container_path": 1, "host_path": 2, "permissions": 3},
        "CDIDevice": {"name": 1},
        "PreStartContainerRequest": {"devices_ids": 1},
        "PreStartContainerResponse": {},
        "Empty": {},
    }
    got = {name: {f.name: f.number for f in fd.message_types_by_name[name].fields} for name in expected}
    assert got == expected
    car = fd.message_types_by_name["ContainerAllocateResponse"]
    assert car.fields_by_name["envs"].message_type.GetOptions().map_entry
    assert car.fields_by_name["annotations"].message_type.GetOptions().map_entry
    # Full method paths the kubelet calls.
    assert fd.services_by_name["DevicePlugin"].full_name == "v1beta1.DevicePlugin"
    assert fd.services_by_name["Registration"].full_name == "v1beta1.Registration"


def test_podresources_wire_names_and_numbers() -> None:
    from hami.deviceplugin.podresources_api import api_pb2

    fd = api_pb2.DESCRIPTOR
    assert fd.package == "v1"
    lister = fd.services_by_name["PodResourcesLister"]
    assert lister.full_name == "v1.PodResourcesLister"
    assert [m.name for m in lister.methods] == ["List", "GetAllocatableResources", "Get"]
    expected = {
        "AllocatableResourcesResponse": {"devices": 1, "cpu_ids": 2, "memory": 3},
        "ListPodResourcesResponse": {"pod_resources": 1},
        "PodResources": {"name": 1, "namespace": 2, "containers": 3},
        "ContainerResources": {"name": 1, "devices": 2, "cpu_ids": 3, "memory": 4, "dynamic_resources": 5},
        "ContainerMemory": {"memory_type": 1, "size": 2, "topology": 3},
        "ContainerDevices": {"resource_name": 1, "device_ids": 2, "topology": 3},
        "TopologyInfo": {"nodes": 1},
        "NUMANode": {"ID": 1},
        "DynamicResource": {"claim_name": 2, "claim_namespace": 3, "claim_resources": 4},
        "ClaimResource": {
            "cdi_devices": 1,
            "driver_name": 2,
            "pool_name": 3,
            "device_name": 4,
            "share_id": 5,
        },
        "CDIDevice": {"name": 1},
        "GetPodResourcesRequest": {"pod_name": 1, "pod_namespace": 2},
        "GetPodResourcesResponse": {"pod_resources": 1},
        "ListPodResourcesRequest": {},
        "AllocatableResourcesRequest": {},
    }
    got = {name: {f.name: f.number for f in fd.message_types_by_name[name].fields} for name in expected}
    assert got == expected
