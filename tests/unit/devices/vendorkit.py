"""Small helpers for the per-vendor tests: nodes with a vendor's register annotation or capacity,
pods asking for a vendor's resources, and a scheduler with the vendor's backend beside NVIDIA."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from hami.devices.base import DeviceBackend
from hami.devices.registry import BackendRegistry
from hami.protocol.node import DeviceInfo, encode_node_devices, encode_node_devices_legacy
from hami.scheduling import Scheduler
from hami.scheduling.decide import Decision


def card(
    uuid: str, *, index: int = 0, type: str = "X", mem: int = 16384, cores: int = 100, count: int = 10
) -> DeviceInfo:
    return DeviceInfo(
        id=uuid, index=index, count=count, devmem=mem, devcore=cores, type=type, numa=0, health=True
    )


def register_node(
    name: str, key: str, cards: list[DeviceInfo], *, legacy: bool = False, **extra: Any
) -> dict[str, Any]:
    value = encode_node_devices_legacy(cards) if legacy else encode_node_devices(cards)
    return {"metadata": {"name": name, "annotations": {key: value}}, **extra}


def capacity_node(
    name: str, capacity: Mapping[str, str], labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "annotations": {}, "labels": dict(labels or {})},
        "status": {"capacity": dict(capacity), "allocatable": dict(capacity)},
    }


def pod(
    name: str, *containers: Mapping[str, Any], annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "annotations": dict(annotations or {}),
        },
        "spec": {
            "containers": [
                {"name": f"c{i}", "resources": {"limits": dict(limits)}}
                for i, limits in enumerate(containers)
            ]
        },
    }


def scheduler(backend: DeviceBackend, *nodes: dict[str, Any], gpu_policy: str = "spread") -> Scheduler:
    from hami.devices.nvidia import NvidiaBackend

    sched = Scheduler(
        BackendRegistry([NvidiaBackend(), backend]), node_policy="binpack", gpu_policy=gpu_policy
    )
    for n in nodes:
        assert sched.observe_node(n) is None
    return sched


def chosen(decision: Decision, vendor: str) -> list[list[str]]:
    return [[p.device.uuid for p in c] for c in decision.placements.get(vendor, [])]


def bound(p: dict[str, Any], annotations: Mapping[str, str]) -> dict[str, Any]:
    out = copy.deepcopy(p)
    out["metadata"]["annotations"].update(annotations)
    return out
