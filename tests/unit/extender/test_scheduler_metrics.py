"""The scheduler's HAMi families: names, labels (with zone="vGPU") and values, parsed back."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hami.devices.base import Card, Placement
from hami.extender.metrics import Metrics
from hami.protocol import keys
from hami.protocol.pod import ContainerDevice, MigAllocation
from hami.scheduling.state import ClusterState, PodAllocation

MiB = 1 << 20
CARD = ("zone", "node", "device_uuid", "device_index", "device_type")
POD = ("zone", "namespace", "node", "pod", "container_index", "device_uuid")


def place(uuid: str, mem: int, cores: int, mig: MigAllocation | None = None) -> Placement:
    return Placement(
        device=ContainerDevice(uuid=uuid, type="NVIDIA", usedmem=mem, usedcores=cores), payload=mig
    )


def scrape() -> dict[str, Any]:
    s = ClusterState()
    s.set_node(
        "n1",
        [
            Card(
                uuid="GPU-a",
                vendor="NVIDIA",
                type="NVIDIA-T4",
                count=10,
                totalmem=16000,
                totalcores=100,
                index=0,
            ),
            Card(
                uuid="GPU-b",
                vendor="NVIDIA",
                type="NVIDIA-A100",
                count=7,
                totalmem=40000,
                totalcores=100,
                index=1,
            ),
        ],
    )
    mig = MigAllocation(
        0, 0, "GPU-b", "1g.5gb", 2, 1, mig_uuid="MIG-x", gpu_instance_id=9, compute_instance_id=0
    )
    s.add_pod(
        PodAllocation(
            uid="u1", namespace="team", name="p1", node="n1",
            containers={keys.VENDOR_NVIDIA: [(place("GPU-a", 4000, 30),), (place("GPU-a", 2000, 20), place("GPU-b", 5000, 0, mig))]},
            init_count=0,
        )
    )  # fmt: skip
    text = generate_latest(Metrics(s).registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_card_families() -> None:
    f = scrape()
    for name in (
        "hami_gpu_memory_limit_bytes",
        "hami_gpu_core_limit_ratio",
        "hami_gpu_core_allocated_ratio",
        "hami_gpu_shared_count",
        "hami_node_gpu_memory_allocated_ratio",
    ):
        assert {tuple(sorted(s.labels)) for s in f[name].samples} == {tuple(sorted(CARD))}, name
    ov = {s.labels["device_uuid"]: s for s in f["hami_node_gpu_overview"].samples}
    assert ov["GPU-a"].value == 6000 * MiB
    assert ov["GPU-a"].labels == {
        "zone": "vGPU", "node": "n1", "device_uuid": "GPU-a", "device_index": "0", "device_type": "NVIDIA-T4",
        "device_cores": "100", "device_memory_limit": "16000",
    }  # fmt: skip
    ratio = {s.labels["device_uuid"]: s.value for s in f["hami_node_gpu_memory_allocated_ratio"].samples}
    assert ratio == {"GPU-a": 6000 / 16000, "GPU-b": 5000 / 40000}


def test_pod_families() -> None:
    f = scrape()
    mem = {
        (s.labels["container_index"], s.labels["device_uuid"]): s.value
        for s in f["hami_vgpu_memory_allocated_bytes"].samples
    }
    assert mem == {("0", "GPU-a"): 4000 * MiB, ("1", "GPU-a"): 2000 * MiB, ("1", "GPU-b"): 5000 * MiB}
    for s in f["hami_vgpu_core_allocated_ratio"].samples:
        assert tuple(sorted(s.labels)) == tuple(sorted(POD))
        assert (s.labels["namespace"], s.labels["pod"], s.labels["node"], s.labels["zone"]) == (
            "team",
            "p1",
            "n1",
            "vGPU",
        )
    (mig,) = f["hami_node_gpu_mig_instance_info"].samples
    assert mig.value == 1 and mig.labels == {
        "zone": "vGPU", "node": "n1", "device_uuid": "GPU-b", "device_index": "1", "mig_uuid": "MIG-x",
        "profile": "1g.5gb", "gpu_instance_id": "9", "compute_instance_id": "0", "placement_start": "2",
        "placement_size": "1",
    }  # fmt: skip
