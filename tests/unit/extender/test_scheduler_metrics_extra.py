"""``hami_pods_unschedulable{reason}`` (bounded, from PodScheduled) and ``--legacy-metrics``."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hami.devices.base import Card, Placement
from hami.extender.metrics import (
    LEGACY_NAMES,
    OTHER,
    UNSCHEDULABLE_REASONS,
    Metrics,
    unschedulable_reason,
    waiting_reason,
)
from hami.protocol import keys
from hami.protocol.pod import ContainerDevice
from hami.scheduling.state import ClusterState, PodAllocation

MiB = 1 << 20
SCHED = "hami-scheduler"


def waiting(name: str, message: str, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"schedulerName": SCHED, **spec},
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
            ],
        },
    }


def families(m: Metrics) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(generate_latest(m.registry).decode())}


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("0/2 nodes are available: 2 node(s) 2/2 CardInsufficientMemory.", "card_memory"),
        ("0/1 nodes are available: 1 1/1 CardInsufficientCore", "card_cores"),
        ("0/1 nodes are available: 1 CardComputeUnitsExhausted", "card_cores"),
        ("0/3 nodes are available: 3 0/1 NodeInsufficientDevice", "node_devices"),
        ("namespace ns: quota exceeded for limits.nvidia.com/gpumem (ResourceQuota gpu)", "quota"),
        (
            "0/2 nodes are available: 2 container 'main': nvidia.com/gpumem: 20000 MiB is more than the "
            "largest NVIDIA card in the cluster (15360 MiB).",
            "card_memory",
        ),
        ("0/1 nodes are available: 1 container 'main': nvidia.com/gpu: must be positive", "invalid_request"),
        ("0/1 nodes are available: 1 pod requests no managed device", "invalid_request"),
        ("0/1 nodes: 1 CardTypeMismatch", "card_type"),
        ("0/1 nodes: 1 NumaNotFit", "numa"),
        ("0/1 nodes are available: 1 node(s) had untolerated taint", OTHER),
        ("", OTHER),
    ],
)
def test_reason_of_message(message: str, reason: str) -> None:
    assert unschedulable_reason(message) == reason


def test_only_this_schedulers_unbound_unschedulable_pods_count() -> None:
    assert waiting_reason(waiting("a", "CardInsufficientMemory"), SCHED) == "card_memory"
    assert waiting_reason(waiting("b", "CardInsufficientMemory"), "other-scheduler") is None
    assert waiting_reason(waiting("c", "CardInsufficientMemory", nodeName="n1"), SCHED) is None
    scheduled = waiting("d", "x")
    scheduled["status"]["conditions"][0]["status"] = "True"
    assert waiting_reason(scheduled, SCHED) is None
    gated = waiting("e", "x")
    gated["status"]["conditions"][0]["reason"] = "SchedulingGated"
    assert waiting_reason(gated, SCHED) is None
    assert waiting_reason({"spec": {"schedulerName": SCHED}, "status": {}}, SCHED) is None


def test_unschedulable_family_has_every_reason_always() -> None:
    pods = [
        waiting("a", "2/2 CardInsufficientMemory"),
        waiting("b", "1 CardInsufficientMemory"),
        waiting("c", "exceeded quota"),
        waiting("d", "taint"),
        waiting("e", "CardInsufficientMemory", nodeName="n1"),
    ]
    fams = families(Metrics(ClusterState(), pods=lambda: pods, scheduler_name=SCHED))
    got = {s.labels["reason"]: s.value for s in fams["hami_pods_unschedulable"].samples}
    assert set(got) == {label for label, _ in UNSCHEDULABLE_REASONS} | {OTHER}  # bounded
    assert got["card_memory"] == 2 and got["quota"] == 1 and got[OTHER] == 1
    assert sum(got.values()) == 4
    assert all(s.labels["zone"] == "vGPU" for s in fams["hami_pods_unschedulable"].samples)
    # without a pod source the family is not exported
    assert "hami_pods_unschedulable" not in families(Metrics(ClusterState()))


def _state() -> ClusterState:
    s = ClusterState()
    card = Card(
        uuid="GPU-a", vendor="NVIDIA", type="NVIDIA-T4", count=10, totalmem=16000, totalcores=100, index=0
    )
    s.set_node("n1", [card])
    dev = ContainerDevice(uuid="GPU-a", type="NVIDIA", usedmem=4000, usedcores=30)
    s.add_pod(
        PodAllocation(
            uid="u1",
            namespace="team",
            name="p1",
            node="n1",
            containers={keys.VENDOR_NVIDIA: [(Placement(device=dev),)]},
            init_count=0,
        )
    )
    return s


def test_legacy_names_mirror_the_current_families() -> None:
    plain = families(Metrics(_state()))
    assert not set(LEGACY_NAMES.values()) & set(plain)
    fams = families(Metrics(_state(), legacy=True))
    for name in LEGACY_NAMES.values():
        assert name in fams, name
    (limit,) = fams["GPUDeviceMemoryLimit"].samples
    assert limit.labels == {
        "zone": "vGPU", "nodeid": "n1", "deviceuuid": "GPU-a", "deviceidx": "0", "devicetype": "NVIDIA-T4"
    }  # fmt: skip
    assert limit.value == 16000 * MiB
    (alloc,) = fams["vGPUMemoryAllocated"].samples
    assert alloc.value == 4000 * MiB
    assert alloc.labels["podnamespace"] == "team" and alloc.labels["podname"] == "p1"
    (cores,) = fams["GPUDeviceCoreAllocated"].samples
    assert cores.value == 30
    # the current families are unchanged by the flag
    for name in LEGACY_NAMES:
        assert [s.value for s in fams[name].samples] == [s.value for s in plain[name].samples], name


def test_cli_flag_reaches_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import hami.kube.config
    from hami import cliutil
    from hami.extender import cli, runner

    seen: list[runner.ExtenderSettings] = []

    class FakeExtender:
        def __init__(self, _config: Any, settings: runner.ExtenderSettings) -> None:
            seen.append(settings)

        async def run_forever(self) -> None:
            return None

    monkeypatch.setattr(hami.kube.config, "load_config", lambda _k: object())
    monkeypatch.setattr(runner, "Extender", FakeExtender)
    monkeypatch.setattr(cliutil, "run_until_stopped", lambda *_a, **_k: None)
    for args, want in (([], False), (["--legacy-metrics"], True)):
        result = CliRunner().invoke(cli.scheduler_command, args)
        assert result.exit_code == 0, result.output
        assert seen[-1].legacy_metrics is want
