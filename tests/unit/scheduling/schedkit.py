"""Small builders for the scheduling tests: Node and Pod manifests, a scheduler, usage snapshots.

Nodes carry ``hami.io/node-nvidia-register`` written by the real codec
(:func:`hami.protocol.node.encode_node_devices`), so every test goes through the same path as a
real cluster. Pods are plain manifests (dicts), as the extender receives them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from hami.config import NvidiaConfig
from hami.devices import BackendRegistry
from hami.devices.nvidia import NvidiaBackend
from hami.protocol import keys
from hami.protocol.node import (
    DeviceInfo,
    MigPlacement,
    MigProfile,
    encode_node_devices,
    encode_pair_scores,
)
from hami.scheduling import ClusterState, Decision, Scheduler

T4 = "NVIDIA-Tesla T4"
A100 = "NVIDIA-A100-SXM4-40GB"


def gpu(
    uuid: str,
    *,
    mem: int = 16000,
    cores: int = 100,
    count: int = 10,
    type: str = T4,
    numa: int = 0,
    index: int = 0,
    mode: str = keys.MODE_HAMI_CORE,
    health: bool = True,
    mig_profiles: tuple[MigProfile, ...] = (),
) -> DeviceInfo:
    return DeviceInfo(
        id=uuid,
        count=count,
        devmem=mem,
        devcore=cores,
        type=type,
        index=index,
        numa=numa,
        mode=mode,
        health=health,
        mig_profiles=mig_profiles,
    )


# A100-40GB-like MIG geometry: 8 memory slices; 1g can go at 0..6, 2g at 0/2/4, 3g at 0/4, 7g at 0.
MIG_1G = MigProfile(
    name="1g.5gb",
    memory_mb=4864,
    core=15,
    slice_count=1,
    placements=tuple(MigPlacement(start=s, size=1) for s in range(7)),
)
MIG_2G = MigProfile(
    name="2g.10gb",
    memory_mb=9856,
    core=29,
    slice_count=2,
    placements=tuple(MigPlacement(start=s, size=2) for s in (0, 2, 4)),
)
MIG_3G = MigProfile(
    name="3g.20gb",
    memory_mb=19968,
    core=43,
    slice_count=4,
    placements=(MigPlacement(start=0, size=4), MigPlacement(start=4, size=4)),
)
MIG_7G = MigProfile(
    name="7g.40gb", memory_mb=40192, core=100, slice_count=8, placements=(MigPlacement(start=0, size=8),)
)
MIG_PROFILES = (MIG_1G, MIG_2G, MIG_3G, MIG_7G)


def mig_gpu(uuid: str, *, index: int = 0, profiles: tuple[MigProfile, ...] = MIG_PROFILES) -> DeviceInfo:
    return gpu(uuid, mem=40960, count=7, type=A100, index=index, mode=keys.MODE_MIG, mig_profiles=profiles)


def node(
    name: str,
    devices: Iterable[DeviceInfo],
    *,
    annotations: Mapping[str, str] | None = None,
    pair_scores: Mapping[str, Mapping[str, int]] | None = None,
) -> dict[str, Any]:
    ann = {keys.NODE_NVIDIA_REGISTER: encode_node_devices(devices)}
    if pair_scores is not None:
        ann[keys.NODE_NVIDIA_SCORE] = encode_pair_scores(pair_scores)
    ann.update(annotations or {})
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "annotations": ann}}


def container(
    name: str = "c",
    *,
    gpu: int | str | None = None,
    mem: int | str | None = None,
    pct: int | str | None = None,
    cores: int | str | None = None,
    priority: int | str | None = None,
    requests: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A container whose ``limits`` hold the given NVIDIA resources (``requests`` set verbatim)."""
    limits: dict[str, Any] = {}
    for resource, value in (
        ("nvidia.com/gpu", gpu),
        ("nvidia.com/gpumem", mem),
        ("nvidia.com/gpumem-percentage", pct),
        ("nvidia.com/gpucores", cores),
        ("nvidia.com/priority", priority),
    ):
        if value is not None:
            limits[resource] = value
    resources: dict[str, Any] = {}
    if limits:
        resources["limits"] = limits
    if requests:
        resources["requests"] = dict(requests)
    return {"name": name, "image": "busybox", "resources": resources}


def pod(
    name: str = "p",
    *containers: dict[str, Any],
    init: Iterable[dict[str, Any]] = (),
    annotations: Mapping[str, str] | None = None,
    uid: str | None = None,
    namespace: str = "default",
    node_name: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": list(containers) or [container()]}
    init = list(init)
    if init:
        spec["initContainers"] = init
    if node_name is not None:
        spec["nodeName"] = node_name
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": uid or f"uid-{name}",
        "annotations": dict(annotations or {}),
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def gpu_pod(name: str = "p", *, annotations: Mapping[str, str] | None = None, **res: Any) -> dict[str, Any]:
    """A one-container pod asking for NVIDIA resources (``gpu=1`` unless given)."""
    res.setdefault("gpu", 1)
    return pod(name, container("main", **res), annotations=annotations)


def registry(config: NvidiaConfig | None = None) -> BackendRegistry:
    return BackendRegistry([NvidiaBackend(config)])


def scheduler(
    *nodes: dict[str, Any],
    node_policy: str = "binpack",
    gpu_policy: str = "spread",
    config: NvidiaConfig | None = None,
) -> Scheduler:
    sched = Scheduler(registry(config), node_policy=node_policy, gpu_policy=gpu_policy)
    for n in nodes:
        assert sched.observe_node(n) is None
    return sched


CardUsage = tuple[int, int, int]


def usage(state: ClusterState, node_name: str) -> dict[str, CardUsage]:
    """``uuid -> (used slots, used MiB, used cores)`` for every card of a node."""
    return {c.uuid: (c.used, c.usedmem, c.usedcores) for c in state.nodes[node_name].cards}


def all_usage(state: ClusterState) -> dict[str, dict[str, CardUsage]]:
    return {name: usage(state, name) for name in sorted(state.nodes)}


def idle(state: ClusterState) -> bool:
    return all(u == (0, 0, 0) for per in all_usage(state).values() for u in per.values())


def chosen(decision: Decision, vendor: str = keys.VENDOR_NVIDIA) -> list[list[str]]:
    """The chosen card UUIDs per container."""
    return [[p.device.uuid for p in c] for c in decision.placements.get(vendor, [])]


def with_annotations(p: dict[str, Any], annotations: Mapping[str, str], node_name: str) -> dict[str, Any]:
    """The pod as the API server holds it after the decision was patched on and the pod bound."""
    meta = dict(p["metadata"])
    meta["annotations"] = {**meta.get("annotations", {}), **annotations}
    return {**p, "metadata": meta, "spec": {**p["spec"], "nodeName": node_name}}
