"""A synthetic cluster as raw API objects, for the web UI's tests, benchmark and screenshots.

:func:`cluster` makes ``n_nodes`` Nodes of ``cards`` NVIDIA cards each (HAMi's JSON registration
annotation) and Running pods bound to them with hami's allocation annotation, so that about
``busy`` of the cards hold one to three slices of common sizes; :func:`pending_pod` makes a pod
that waits. Deterministic for a given seed. :func:`ledger` feeds them to a scheduling core the
way the extender and the web UI do (:class:`~hami.extender.sync.LedgerSync`).
"""

from __future__ import annotations

import random
from typing import Any

from hami.devices.registry import default_registry
from hami.extender.sync import LedgerSync
from hami.protocol import keys
from hami.protocol.node import DeviceInfo, encode_node_devices
from hami.protocol.pod import ContainerDevice, encode_pod_devices
from hami.scheduling.decide import Scheduler

SCHEDULER = "hami-scheduler"
CARD_TYPE = "NVIDIA-H100-80GB-HBM3"
CARD_MEM = 81920
#: (MiB, percent) of the slices the running pods hold
SLICES = ((8000, 30), (16000, 20), (4000, 10), (24000, 50))


def node(name: str, cards: list[DeviceInfo]) -> dict[str, Any]:
    capacity = {"pods": "110", "nvidia.com/gpu": str(sum(c.count for c in cards))}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "labels": {"gpu": "on"},
            "annotations": {keys.NODE_NVIDIA_REGISTER: encode_node_devices(cards)},
        },
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def cards_of(node_name: str, n: int, *, mem: int = CARD_MEM, type: str = CARD_TYPE) -> list[DeviceInfo]:
    return [
        DeviceInfo(
            id=f"GPU-{node_name}-{j}",
            index=j,
            count=10,
            devmem=mem,
            devcore=100,
            type=type,
            numa=j * 2 // max(n, 1),
            mode="hami-core",
            health=True,
        )
        for j in range(n)
    ]


def _pod(
    name: str, namespace: str, annotations: dict[str, str], limits: dict[str, int], phase: str, **spec: str
) -> dict[str, Any]:
    """A one-container (``main``) pod of hami's scheduler asking ``limits``."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{namespace}-{name}",
            "annotations": annotations,
        },
        "spec": {
            "schedulerName": SCHEDULER,
            **spec,
            "containers": [
                {
                    "name": "main",
                    "image": "registry.invalid/cuda:12",
                    "resources": {"limits": {k: str(v) for k, v in limits.items()}},
                }
            ],
        },
        "status": {"phase": phase},
    }


def running_pod(name: str, namespace: str, node_name: str, devices: list[ContainerDevice]) -> dict[str, Any]:
    """A pod bound to ``node_name`` holding ``devices`` (hami's decision annotations), Running."""
    annotations = {
        keys.VGPU_NODE: node_name,
        keys.VGPU_DEVICES_ALLOCATED: encode_pod_devices([devices]),
        keys.BIND_PHASE: keys.BIND_PHASE_SUCCESS,
    }
    limits = {
        "nvidia.com/gpu": len(devices),
        "nvidia.com/gpumem": devices[0].usedmem,
        "nvidia.com/gpucores": devices[0].usedcores,
    }
    pod = _pod(name, namespace, annotations, limits, "Running", nodeName=node_name)
    pod["status"]["podIP"] = "10.0.0.1"
    return pod


def pending_pod(
    name: str, namespace: str, *, gpus: int = 1, mem: int = 8000, gputype: str = ""
) -> dict[str, Any]:
    """A pod waiting for hami's scheduler (``gputype``: ``nvidia.com/use-gputype``)."""
    annotations = {keys.NVIDIA_USE_GPUTYPE: gputype} if gputype else {}
    return _pod(name, namespace, annotations, {"nvidia.com/gpu": gpus, "nvidia.com/gpumem": mem}, "Pending")


def cluster(
    n_nodes: int, cards: int = 8, *, busy: float = 0.5, namespaces: int = 20, seed: int = 1
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(nodes, pods)``: every node's cards, about ``busy`` of them holding 1-3 running slices."""
    rng = random.Random(seed)
    nodes, pods = [], []
    for i in range(n_nodes):
        name = f"node-{i:04d}"
        infos = cards_of(name, cards)
        nodes.append(node(name, infos))
        for card in infos:
            if rng.random() >= busy:
                continue
            free_mem, free_cores = card.devmem, card.devcore
            for k in range(rng.randint(1, 3)):
                mem, cores = rng.choice(SLICES)
                if mem > free_mem or cores > free_cores:
                    break
                free_mem, free_cores = free_mem - mem, free_cores - cores
                dev = ContainerDevice(card.id, "NVIDIA", mem, cores)
                ns = f"team-{rng.randrange(namespaces):02d}"
                pods.append(running_pod(f"train-{i}-{card.index}-{k}", ns, name, [dev]))
    return nodes, pods


def ledger(nodes: list[dict[str, Any]], pods: list[dict[str, Any]]) -> LedgerSync:
    """A scheduling core holding ``nodes`` and ``pods`` (fed as watch events would be)."""
    sync = LedgerSync(Scheduler(default_registry()), scheduler_name=SCHEDULER)
    for n in nodes:
        sync.node_changed(n)
    for p in pods:
        sync.pod_changed(p)
    return sync
