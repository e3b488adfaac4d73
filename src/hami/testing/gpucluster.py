"""Fake GPU nodes and a fake node agent for tests and benchmarks on a real API server.

There is no kubelet: a node is a Node object whose status carries allocatable resources and whose
annotations carry HAMi's registration. :class:`AllocationCompleter` plays the node side of the
bind protocol that the device plugin's Allocate performs: for every pod bound in bind-phase
``allocating`` it sets ``success`` and releases the node lock it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

from hami.kube.client import KubeClient
from hami.kube.errors import ConflictError, KubeError, NotFoundError
from hami.kube.informer import Informer
from hami.kube.nodelock import ClientNodes, release_node_lock
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.protocol.node import DeviceInfo, encode_node_devices


def gpu_cards(
    node: str,
    n: int = 4,
    *,
    mem: int = 16384,
    split: int = 10,
    type: str = "NVIDIA-A100",
    numa_nodes: int = 1,
) -> list[DeviceInfo]:
    return [
        DeviceInfo(
            id=f"GPU-{node}-{i}",
            index=i,
            count=split,
            devmem=mem,
            devcore=100,
            type=type,
            numa=i * numa_nodes // n,
            mode="hami-core",
            health=True,
        )
        for i in range(n)
    ]


async def create_gpu_node(
    client: KubeClient, name: str, cards: Sequence[DeviceInfo], *, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """Create a Node carrying ``hami.io/node-nvidia-register`` and allocatable pods/cpu/memory/GPUs."""
    return await create_node(
        client,
        name,
        labels={"gpu": "on", **(labels or {})},
        annotations={keys.NODE_NVIDIA_REGISTER: encode_node_devices(cards)},
        extra_capacity={"nvidia.com/gpu": str(sum(c.count for c in cards))},
    )


async def create_node(
    client: KubeClient,
    name: str,
    *,
    labels: dict[str, str],
    annotations: dict[str, str] | None = None,
    extra_capacity: dict[str, str] | None = None,
    pods: int = 500,
) -> dict[str, Any]:
    """Create a Ready Node with allocatable pods/cpu/memory plus ``extra_capacity``."""
    body = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": dict(annotations or {})},
    }
    await client.create(api_path("v1", "nodes"), body)
    capacity = {"pods": str(pods), "cpu": "256", "memory": "1Ti", **(extra_capacity or {})}
    return await set_node_status(client, name, capacity)


async def set_node_status(client: KubeClient, name: str, capacity: dict[str, str]) -> dict[str, Any]:
    """Make the node Ready with ``capacity`` as its capacity and allocatable (no kubelet does it)."""
    status = {
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Fake",
                    "lastHeartbeatTime": None,
                    "lastTransitionTime": None,
                }
            ],
        }
    }
    return await client.patch(
        api_path("v1", "nodes", name=name, subresource="status"),
        status,
        content_type="application/strategic-merge-patch+json",
    )


def gpu_pod(
    name: str,
    *,
    gpus: int = 1,
    mem: int | None = None,
    cores: int | None = None,
    scheduler_name: str | None = "hami-scheduler",
    annotations: dict[str, str] | None = None,
    init: Iterable[dict[str, Any]] = (),
) -> dict[str, Any]:
    limits: dict[str, Any] = {"nvidia.com/gpu": gpus}
    if mem is not None:
        limits["nvidia.com/gpumem"] = mem
    if cores is not None:
        limits["nvidia.com/gpucores"] = cores
    spec: dict[str, Any] = {
        "containers": [
            {"name": "main", "image": "registry.invalid/cuda:12", "resources": {"limits": limits}}
        ],
        "terminationGracePeriodSeconds": 0,
    }
    if scheduler_name:
        spec["schedulerName"] = scheduler_name
    init = list(init)
    if init:
        spec["initContainers"] = init
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": dict(annotations or {})},
        "spec": spec,
    }


class AllocationCompleter:
    """Completes the node side of binds: bind-phase ``allocating`` -> ``success``, lock released."""

    def __init__(self, client: KubeClient, *, delay: float = 0.0) -> None:
        self.client = client
        self.delay = delay
        self.completed: set[str] = set()
        self._pending: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.pods = Informer(
            client,
            api_path("v1", "pods"),
            on_add=self._seen,
            on_update=lambda _o, n: self._seen(n),
            name="completer",
        )

    def _seen(self, pod: dict[str, Any]) -> None:
        uid = bodies.uid(pod)
        phase = bodies.annotations(pod).get(keys.BIND_PHASE)
        if phase != keys.BIND_PHASE_ALLOCATING or not bodies.node_name(pod):
            return
        if uid in self.completed or uid in self._pending:
            return
        self._pending.add(uid)
        task = asyncio.create_task(self._complete(pod))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _complete(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        node = pod["spec"]["nodeName"]
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            await self.client.merge_patch(
                api_path("v1", "pods", namespace=ns, name=name),
                {
                    "metadata": {
                        "annotations": {keys.BIND_PHASE: keys.BIND_PHASE_SUCCESS},
                        "labels": {keys.VGPU_NODE: node},
                    }
                },
            )
            await release_node_lock(ClientNodes(self.client), node, ns, name)
            self.completed.add(uid)
        except (NotFoundError, ConflictError):
            pass
        except KubeError:
            pass
        finally:
            self._pending.discard(uid)

    async def start(self) -> None:
        self.pods.start()
        await self.pods.wait_synced(timeout=60)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.pods.stop()
