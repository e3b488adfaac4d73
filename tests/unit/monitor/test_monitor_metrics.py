"""The collector's exposition: HAMi v2.10 family names, labels and values, parsed back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hami.monitor.cards import CardReader, HostCard
from hami.monitor.layout import PodDirectory
from hami.monitor.metrics import MonitorCollector
from hami.testing.regions import FakeDevice, FakeProcess, FakeRegion, SlotHolder, write_region

MiB = 1 << 20
GiB = 1 << 30
UID = "0b8a4f8e-1111-2222-3333-444455556666"
UID2 = "9c9a4f8e-1111-2222-3333-444455556666"
UID3 = "3c3a4f8e-1111-2222-3333-444455556666"
GONE = "77777777-1111-2222-3333-444455556666"
CARD0 = "GPU-00000000-0000-0000-0000-000000000000"
CARD1 = "GPU-11111111-0000-0000-0000-000000000000"
NOW_NS = 50 * 10**9

CTR = ("zone", "namespace", "pod", "container", "vdevice_index", "device_uuid")
HOST = ("zone", "node", "device_index", "device_uuid", "device_type")
MONITOR_FAMILIES = {
    "hami_host_gpu_memory_used_bytes": HOST,
    "hami_host_gpu_utilization_ratio": HOST,
    "hami_host_gpu_memory_controller_utilization_ratio": HOST,
    "hami_vgpu_memory_used_bytes": CTR,
    "hami_vgpu_memory_limit_bytes": CTR,
    "hami_container_device_memory_bytes": CTR,
    "hami_container_device_utilization_ratio": CTR,
    "hami_container_last_kernel_elapsed_seconds": CTR,
    "hami_mig_device_info": (*CTR, "mig_uuid", "profile", "gpu_instance_id", "compute_instance_id"),
    "hami_vgpu_memory_context_bytes": CTR,
    "hami_vgpu_memory_module_bytes": CTR,
    "hami_vgpu_memory_buffer_bytes": CTR,
    # hami's own counter (the parser names the family without `_total`)
    "hami_container_throttled_seconds": CTR,
}


class FakeCards(CardReader):
    def __init__(self, cards: list[HostCard]) -> None:
        super().__init__()
        self.cards = cards

    def read(self) -> list[HostCard]:
        return self.cards


def pod(uid: str, name: str, ns: str, containers: list[str], **ann: str) -> dict[str, Any]:
    return {
        "metadata": {"uid": uid, "name": name, "namespace": ns, "annotations": ann},
        "spec": {"containers": [{"name": c} for c in containers]},
    }


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Path, PodDirectory]]:
    root = tmp_path / "containers"
    root.mkdir()
    holder = SlotHolder()
    # a: two cards, two running processes and one dead one
    (root / f"{UID}_a").mkdir()
    a = str(root / f"{UID}_a" / "x.cache")
    write_region(
        a,
        FakeRegion(
            devices=[
                FakeDevice(
                    CARD0,
                    limit=2 * GiB,
                    used=700 * MiB,
                    peak=900 * MiB,
                    ctx_overhead=100 * MiB,
                    sm_limit=30,
                    limiting=True,
                    throttled=True,
                    util_x100=2500,
                    throttled_ns=3_250_000_000,
                ),
                FakeDevice(CARD1, limit=GiB, used=0),
            ],
            processes=[
                FakeProcess(1, [300 * MiB]),
                FakeProcess(2, [200 * MiB]),
                FakeProcess(3, [200 * MiB]),  # killed: its slot is not reclaimed yet
            ],
            last_kernel_ns=NOW_NS - 2 * 10**9,
        ),
    )
    holder.hold(a, [0, 1])
    # b: no process has run yet (no uuid in the region): the pod's annotation names the card,
    # no limit: the card's memory is the limit; a MIG instance
    (root / f"{UID2}_b").mkdir()
    write_region(
        str(root / f"{UID2}_b" / "y.cache"), FakeRegion(devices=[FakeDevice(sm_limit=0, limit=0, used=1)])
    )
    # unreadable, unknown pod, empty
    (root / f"{UID2}_c").mkdir()
    (root / f"{UID2}_c" / "z.cache").write_bytes(b"short")
    (root / f"{GONE}_d").mkdir()
    write_region(str(root / f"{GONE}_d" / "w.cache"), FakeRegion(devices=[FakeDevice(CARD0, limit=GiB)]))
    (root / f"{UID2}_e").mkdir()
    pods = PodDirectory()
    pods.add(pod(UID, "pa", "team-a", ["a"]))
    mig = json.dumps(
        [
            {
                "containerIndex": 0,
                "deviceIndex": 0,
                "gpuUUID": CARD1,
                "profile": "1g.10gb",
                "placement": {"start": 0, "size": 1},
                "migUUID": "MIG-1",
                "gpuInstanceID": 7,
                "computeInstanceID": 0,
            }
        ]
    )
    pods.add(
        pod(
            UID2,
            "pb",
            "team-b",
            ["b", "c", "e"],
            **{
                "hami.io/vgpu-devices-allocated": f"{CARD1},NVIDIA,1000,0;;;",
                "hami.io/vgpu-mig-allocations": mig,
            },
        )
    )
    # a MIG container: no libvgpu, so no region directory; its instance is still reported
    pods.add(pod(UID3, "pm", "team-b", ["m"], **{"hami.io/vgpu-mig-allocations": mig}))
    yield root, pods
    holder.close()


def scrape(root: Path, pods: PodDirectory, cards: list[HostCard]) -> dict[str, Any]:
    reg = CollectorRegistry()
    reg.register(
        MonitorCollector(str(root), "n1", pods, FakeCards(cards), version="9.9", monotonic_ns=lambda: NOW_NS)
    )
    text = generate_latest(reg).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def values(fam: Any) -> dict[tuple[str, ...], float]:
    return {tuple(s.labels[k] for k in sorted(s.labels)): s.value for s in fam.samples}


def by(fam: Any, **match: str) -> float:
    (v,) = [s.value for s in fam.samples if all(s.labels.get(k) == x for k, x in match.items())]
    return float(v)


CARDS = [
    HostCard(0, CARD0, "NVIDIA A100", 40 * GiB, 5 * GiB, 37.0, 12.0),
    HostCard(1, CARD1, "NVIDIA A100", 40 * GiB, None, None, None),
]


def test_family_names_and_label_sets(node: tuple[Path, PodDirectory]) -> None:
    fams = scrape(*node, CARDS)
    for name, labels in MONITOR_FAMILIES.items():
        # the parser drops the _bytes/_ratio/_seconds suffix only for counters; gauges keep the name
        assert name in fams, name
        for s in fams[name].samples:
            assert tuple(sorted(s.labels)) == tuple(sorted(labels)), (name, s.labels)
            assert s.labels["zone"] == "vGPU"
    (info,) = fams["hami_build_info"].samples
    assert set(info.labels) == {"version", "revision", "build_date", "go_version", "compiler", "platform"}
    assert info.labels["version"] == "9.9" and info.value == 1


def test_host_values(node: tuple[Path, PodDirectory]) -> None:
    f = scrape(*node, CARDS)
    assert values(f["hami_host_gpu_memory_used_bytes"]) == {
        ("0", "NVIDIA A100", CARD0, "n1", "vGPU"): 5 * GiB
    }
    assert by(f["hami_host_gpu_utilization_ratio"], device_uuid=CARD0) == 37.0
    assert by(f["hami_host_gpu_memory_controller_utilization_ratio"], device_index="0") == 12.0
    assert len(f["hami_host_gpu_utilization_ratio"].samples) == 1  # card 1's NVML query failed: absent


def test_container_values(node: tuple[Path, PodDirectory]) -> None:
    f = scrape(*node, CARDS)
    a0 = {"pod": "pa", "namespace": "team-a", "container": "a", "vdevice_index": "0", "device_uuid": CARD0}
    # the dead process's 200 MiB is not counted
    assert by(f["hami_vgpu_memory_used_bytes"], **a0) == 500 * MiB
    assert by(f["hami_container_device_memory_bytes"], **a0) == 500 * MiB
    assert by(f["hami_vgpu_memory_limit_bytes"], **a0) == 2 * GiB
    assert by(f["hami_container_device_utilization_ratio"], **a0) == 25.0
    assert by(f["hami_container_last_kernel_elapsed_seconds"], **a0) == 2.0
    assert by(f["hami_vgpu_memory_context_bytes"], **a0) == 200 * MiB  # 2 running processes x 100 MiB
    assert by(f["hami_vgpu_memory_buffer_bytes"], **a0) == 300 * MiB
    assert by(f["hami_vgpu_memory_module_bytes"], **a0) == 0
    assert by(f["hami_vgpu_memory_peak_bytes"], **a0) == 900 * MiB
    assert by(f["hami_vgpu_core_limit_ratio"], **a0) == 30
    assert by(f["hami_container_device_throttled"], **a0) == 1
    # the region's cumulative wait, in seconds; a card no launch waited on: 0
    throttled = f["hami_container_throttled_seconds"]
    assert throttled.type == "counter"
    assert by(throttled, **a0) == 3.25
    assert by(throttled, **{**a0, "vdevice_index": "1", "device_uuid": CARD1}) == 0
    assert by(f["hami_container_processes"], pod="pa") == 2
    a1 = {**a0, "vdevice_index": "1", "device_uuid": CARD1}
    assert by(f["hami_vgpu_memory_used_bytes"], **a1) == 0
    assert by(f["hami_vgpu_memory_limit_bytes"], **a1) == GiB
    # b: the annotation names the card; no limit in the region: the card's memory
    b0 = {"pod": "pb", "container": "b", "vdevice_index": "0"}
    assert by(f["hami_vgpu_memory_limit_bytes"], **b0, device_uuid=CARD1) == 40 * GiB
    assert by(f["hami_vgpu_memory_used_bytes"], **b0) == 0  # no running process
    assert by(f["hami_vgpu_core_limit_ratio"], **b0) == 100
    assert not [s for s in f["hami_container_last_kernel_elapsed_seconds"].samples if s.labels["pod"] == "pb"]
    mig, no_region = sorted(f["hami_mig_device_info"].samples, key=lambda s: s.labels["pod"])
    assert no_region.labels["pod"] == "pm" and no_region.labels["container"] == "m"
    assert no_region.labels["mig_uuid"] == "MIG-1" and no_region.value == 1
    assert mig.labels == {
        "zone": "vGPU",
        "namespace": "team-b",
        "pod": "pb",
        "container": "b",
        "vdevice_index": "0",
        "device_uuid": CARD1,
        "mig_uuid": "MIG-1",
        "profile": "1g.10gb",
        "gpu_instance_id": "7",
        "compute_instance_id": "0",
    }
    # only known pods with readable regions have series
    assert {s.labels["pod"] for s in f["hami_vgpu_memory_used_bytes"].samples} == {"pa", "pb"}


def test_namespace_and_region_state_totals(node: tuple[Path, PodDirectory]) -> None:
    f = scrape(*node, CARDS)
    assert values(f["hami_namespace_gpu_memory_used_bytes"]) == {
        ("team-a", "n1", "vGPU"): 500 * MiB,
        ("team-b", "n1", "vGPU"): 0,
    }
    assert values(f["hami_namespace_gpu_memory_limit_bytes"]) == {
        ("team-a", "n1", "vGPU"): 3 * GiB,
        ("team-b", "n1", "vGPU"): 40 * GiB,
    }
    assert {s.labels["state"]: s.value for s in f["hami_monitor_regions"].samples} == {
        "ok": 2,
        "unknown_pod": 1,
        "unreadable": 1,
        "empty": 1,
    }


def test_bad_region_warns_once(node: tuple[Path, PodDirectory], caplog: pytest.LogCaptureFixture) -> None:
    root, pods = node
    reg = CollectorRegistry()
    reg.register(MonitorCollector(str(root), "n1", pods, None))
    generate_latest(reg)
    assert caplog.text.count("truncated: 5 bytes") == 1
    caplog.clear()
    generate_latest(reg)
    assert "truncated" not in caplog.text


def test_no_nvml_no_host_series(node: tuple[Path, PodDirectory]) -> None:
    f = scrape(*node, [])
    assert f["hami_host_gpu_memory_used_bytes"].samples == []
    assert not [s for s in f["hami_vgpu_memory_limit_bytes"].samples if s.labels["pod"] == "pb"]


def test_fast_render_equals_prometheus_client(node: tuple[Path, PodDirectory]) -> None:
    root, pods = node
    odd = [HostCard(0, CARD0, 'Card "X" \\ 1\nB', 40 * GiB, 5, 0.25, 1e-9)]
    collector = MonitorCollector(
        str(root), "n1", pods, FakeCards(odd), version="1", monotonic_ns=lambda: NOW_NS
    )
    reg = CollectorRegistry()
    reg.register(collector)

    def parsed(text: str) -> list[tuple[str, list[tuple[str, tuple[tuple[str, str], ...], float]]]]:
        return [
            (f.name, sorted((s.name, tuple(sorted(s.labels.items())), s.value) for s in f.samples))
            for f in text_string_to_metric_families(text)
        ]

    fast = collector.render().decode()
    assert parsed(fast) == parsed(generate_latest(reg).decode())
    assert 'device_type="Card \\"X\\" \\\\ 1\\nB"' in fast


def test_without_nvml_the_reader_is_empty_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    r = CardReader(library="/nonexistent/libnvidia-ml.so.1")
    assert r.read() == [] and r.read() == []
    assert caplog.text.count("NVML unavailable") == 1  # retried at most once a minute
    r.close()


def test_legacy_names_only_when_asked(node: tuple[Path, PodDirectory]) -> None:
    root, pods = node
    assert "HostGPUMemoryUsage" not in scrape(root, pods, CARDS)
    collector = MonitorCollector(
        str(root), "n1", pods, FakeCards(CARDS), legacy=True, monotonic_ns=lambda: NOW_NS
    )
    reg = CollectorRegistry()
    reg.register(collector)
    f = {m.name: m for m in text_string_to_metric_families(generate_latest(reg).decode())}
    assert {m.name for m in text_string_to_metric_families(collector.render().decode())} == set(f)
    (host,) = [s for s in f["HostGPUMemoryUsage"].samples if s.labels["deviceuuid"] == CARD0]
    assert host.value == 5 * GiB and host.labels == {
        "zone": "vGPU", "nodeid": "n1", "deviceidx": "0", "deviceuuid": CARD0, "devicetype": "NVIDIA A100"
    }  # fmt: skip
    a0 = {"podnamespace": "team-a", "podname": "pa", "ctrname": "a", "vdeviceid": "0", "deviceuuid": CARD0}
    assert by(f["vGPU_device_memory_usage_in_bytes"], **a0) == 500 * MiB
    assert by(f["vGPU_device_memory_limit_in_bytes"], **a0) == 2 * GiB
    assert by(f["Device_utilization_desc_of_container"], **a0) == 25.0
    assert by(f["Device_last_kernel_of_container"], **a0) == 2.0
    (desc,) = [s for s in f["Device_memory_desc_of_container"].samples if s.labels["podname"] == "pa"
               and s.labels["vdeviceid"] == "0"]  # fmt: skip
    assert desc.value == 500 * MiB
    split = (desc.labels["context"], desc.labels["module"], desc.labels["data"], desc.labels["offset"])
    assert split == (str(200 * MiB), "0", str(300 * MiB), "0")
    assert "hami_vgpu_memory_used_bytes" in f  # the current names stay
