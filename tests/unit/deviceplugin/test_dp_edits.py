"""Container edits as data: built per mode without I/O, rendered as an Allocate response and as a
CDI spec (plain functions: no event loop, no API double)."""

from __future__ import annotations

import json

import pytest

from hami.deviceplugin.edits import (
    CDI_VERSION,
    ContainerEdits,
    DeviceNode,
    Mount,
    allocate_response,
    cdi_spec,
)
from hami.deviceplugin.modes import decide_enforcement, hami_core_edits, mig_edits, mps_edits
from hami.deviceplugin.settings import NodeSettings
from hami.deviceplugin.sources.base import DriverEdits
from hami.protocol.pod import ContainerDevice

EDITS = ContainerEdits(
    env=(("NVIDIA_VISIBLE_DEVICES", "GPU-a,GPU-b"), ("CUDA_DEVICE_SM_LIMIT", "30")),
    mounts=(
        Mount(
            container_path="/usr/local/vgpu/libvgpu.so",
            host_path="/usr/local/vgpu/libvgpu.so",
            read_only=True,
        ),
        Mount(
            container_path="/usr/local/vgpu", host_path="/usr/local/vgpu/containers/u_main", read_only=False
        ),
    ),
    device_nodes=(DeviceNode("/dev/nvidia0"), DeviceNode("/dev/nvidiactl", host_path="/dev/nvidiactl-host")),
    annotations=(("hami.io/card", "GPU-a"),),
)


def test_allocate_response_carries_every_edit_in_order() -> None:
    car = allocate_response(EDITS)
    assert dict(car.envs) == {"NVIDIA_VISIBLE_DEVICES": "GPU-a,GPU-b", "CUDA_DEVICE_SM_LIMIT": "30"}
    assert [(m.container_path, m.host_path, m.read_only) for m in car.mounts] == [
        ("/usr/local/vgpu/libvgpu.so", "/usr/local/vgpu/libvgpu.so", True),
        ("/usr/local/vgpu", "/usr/local/vgpu/containers/u_main", False),
    ]
    assert [(d.container_path, d.host_path, d.permissions) for d in car.devices] == [
        ("/dev/nvidia0", "/dev/nvidia0", "rw"),
        ("/dev/nvidiactl", "/dev/nvidiactl-host", "rw"),
    ]
    assert dict(car.annotations) == {"hami.io/card": "GPU-a"}


def test_cdi_spec_renders_the_same_edits() -> None:
    spec = cdi_spec("hami.io/gpu", {"alloc-1": EDITS})
    assert spec == {
        "cdiVersion": "0.6.0",
        "kind": "hami.io/gpu",
        "devices": [
            {
                "name": "alloc-1",
                "annotations": {"hami.io/card": "GPU-a"},
                "containerEdits": {
                    "env": ["NVIDIA_VISIBLE_DEVICES=GPU-a,GPU-b", "CUDA_DEVICE_SM_LIMIT=30"],
                    "deviceNodes": [
                        {"path": "/dev/nvidia0", "permissions": "rw"},
                        {"path": "/dev/nvidiactl", "hostPath": "/dev/nvidiactl-host", "permissions": "rw"},
                    ],
                    "mounts": [
                        {
                            "hostPath": "/usr/local/vgpu/libvgpu.so",
                            "containerPath": "/usr/local/vgpu/libvgpu.so",
                            "options": ["ro", "nosuid", "nodev", "bind"],
                        },
                        {
                            "hostPath": "/usr/local/vgpu/containers/u_main",
                            "containerPath": "/usr/local/vgpu",
                            "options": ["rw", "nosuid", "nodev", "bind"],
                        },
                    ],
                },
            }
        ],
    }
    assert spec["cdiVersion"] == CDI_VERSION
    assert json.loads(json.dumps(spec)) == spec  # JSON-able as is


def test_cdi_spec_leaves_out_empty_sections() -> None:
    spec = cdi_spec("hami.io/gpu", {"a": mig_edits(["MIG-1"]), "b": ContainerEdits()})
    assert spec["devices"] == [
        {"name": "a", "containerEdits": {"env": ["NVIDIA_VISIBLE_DEVICES=MIG-1"]}},
        {"name": "b", "containerEdits": {}},
    ]


def test_edits_are_values() -> None:
    again = ContainerEdits(
        env=EDITS.env, mounts=EDITS.mounts, device_nodes=EDITS.device_nodes, annotations=EDITS.annotations
    )
    assert again == EDITS and hash(again) == hash(EDITS)
    with pytest.raises(AttributeError):
        EDITS.env = ()  # type: ignore[misc]
    with pytest.raises(ValueError, match="'A' given twice"):
        ContainerEdits(env=(("A", "1"), ("A", "2")))
    with pytest.raises(ValueError, match="annotation 'k' given twice"):
        ContainerEdits(annotations=(("k", "1"), ("k", "2")))


def test_with_defaults_never_overrides_what_is_set() -> None:
    base = ContainerEdits(env=(("A", "1"),), mounts=(Mount("/c", "/h", True),))
    merged = base.with_defaults({"A": "x", "B": "2"}, [Mount("/c2", "/h2", True)], [DeviceNode("/dev/x")])
    assert merged.env == (("A", "1"), ("B", "2"))
    assert [m.container_path for m in merged.mounts] == ["/c", "/c2"]
    assert merged.device_nodes == (DeviceNode("/dev/x"),)
    assert base.env == (("A", "1"),)  # unchanged


DEVS = (ContainerDevice("GPU-a", "NVIDIA", 3000, 30), ContainerDevice("GPU-b", "NVIDIA", 0, 30))


def test_hami_core_edits_are_pure_data() -> None:
    s = NodeSettings(node_name="n1", hook_path="/opt/h")
    enforcement = decide_enforcement({"name": "main"}, s, "default")
    edits = hami_core_edits(
        DEVS,
        {"name": "main"},
        s,
        enforcement=enforcement,
        cache_id="c0",
        cache_dir="/opt/h/vgpu/containers/u_main",
        driver=DriverEdits(
            env={"NVIDIA_VISIBLE_DEVICES": "no", "FAKE": "1"}, mounts=(("/lib/x.so", "/d/x.so"),)
        ),
    )
    assert edits.env_map["NVIDIA_VISIBLE_DEVICES"] == "GPU-a,GPU-b"  # hami's value wins
    assert edits.env_map["FAKE"] == "1"
    assert edits.env_map["CUDA_DEVICE_MEMORY_SHARED_CACHE"] == "/opt/h/vgpu/c0.cache"
    assert edits.env_map["CUDA_DISABLE_CONTROL"] == "false"
    assert edits.mounts[-1] == Mount("/lib/x.so", "/d/x.so", True)
    assert Mount("/etc/ld.so.preload", "/opt/h/vgpu/ld.so.preload", True) in edits.mounts


def test_opt_out_allowed_drops_preload_and_disable_control() -> None:
    s = NodeSettings(node_name="n1", enforcement_opt_out_namespaces=frozenset({"trusted"}))
    ctr = {"name": "main", "env": [{"name": "CUDA_DISABLE_CONTROL", "value": "true"}]}
    allowed = decide_enforcement(ctr, s, "trusted")
    assert (allowed.disable_control, allowed.denied, allowed.denial_message("main")) == (True, (), None)
    denied = decide_enforcement(ctr, s, "tenant")
    assert (denied.disable_control, denied.denied) == (False, ("CUDA_DISABLE_CONTROL",))
    assert denied.denial_message("main") == (
        "container 'main': CUDA_DISABLE_CONTROL ignored: namespace is not in hami.enforcementOptOutNamespaces"
    )
    edits = hami_core_edits(
        DEVS[:1], ctr, s, enforcement=allowed, cache_id="c", cache_dir="/d", driver=DriverEdits()
    )
    assert "CUDA_DISABLE_CONTROL" not in edits.env_map
    assert "/etc/ld.so.preload" not in [m.container_path for m in edits.mounts]


def test_mps_edits() -> None:
    devs = (DEVS[0], ContainerDevice("GPU-b", "NVIDIA", 2000, 30))
    edits = mps_edits(devs, NodeSettings(node_name="n1"))
    assert edits.env == (
        ("NVIDIA_VISIBLE_DEVICES", "GPU-a,GPU-b"),
        ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "30"),
        ("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "0=3000M,1=2000M"),
        ("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"),
        ("CUDA_MPS_LOG_DIRECTORY", "/tmp/nvidia-log"),
    )
    assert [m.read_only for m in edits.mounts] == [False, False]


def test_mps_edits_never_leave_a_card_without_a_pinned_limit() -> None:
    """A card left out of CUDA_MPS_PINNED_DEVICE_MEM_LIMIT is unlimited under MPS (HAMi dropped
    0-MiB cards from the list): a 0-MiB card is an error naming the card, never an omission."""
    with pytest.raises(ValueError, match="card GPU-b has no memory assigned"):
        mps_edits(DEVS, NodeSettings(node_name="n1"))
