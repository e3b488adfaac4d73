"""Fake GPU nodes and a fake node agent for tests and benchmarks on a real API server.

There is no kubelet: a node is a Node object whose status carries allocatable resources and whose
annotations carry HAMi's registration. :class:`AllocationCompleter` plays the node side of the
bind protocol that the device plugin performs: for every pod bound in bind-phase ``allocating``
(HAMi's lock protocol) it sets ``success`` and releases the node lock it holds, as Allocate does;
a pod first seen bound already in ``success`` was bound lock-free (``hami.io/allocation-mode=cdi``)
and gets what the lock-free plugin does at PreStartContainer: one GET of the pod, no write.
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
from hami.kube.poll import poll_until
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
    client: KubeClient,
    name: str,
    cards: Sequence[DeviceInfo],
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Create a Node carrying ``hami.io/node-nvidia-register`` (plus ``annotations``, e.g. the
    allocation mode) and allocatable pods/cpu/memory/GPUs."""
    return await create_node(
        client,
        name,
        labels={"gpu": "on", **(labels or {})},
        annotations={keys.NODE_NVIDIA_REGISTER: encode_node_devices(cards), **(annotations or {})},
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


def lock_free_annotations(lock_free: bool) -> dict[str, str]:
    """The node annotation of a lock-free device plugin (``{}`` for HAMi's lock protocol)."""
    return {keys.NODE_ALLOCATION_MODE: keys.ALLOCATION_MODE_CDI} if lock_free else {}


async def set_allocation_mode(client: KubeClient, node: str, *, lock_free: bool) -> None:
    """Switch a node's device plugin mode as its registration would: annotation set or removed."""
    value = keys.ALLOCATION_MODE_CDI if lock_free else None
    await client.merge_patch(
        api_path("v1", "nodes", name=node), {"metadata": {"annotations": {keys.NODE_ALLOCATION_MODE: value}}}
    )


class LockWatch:
    """Every node-lock value ever seen on the nodes (from a node watch), to prove a lock was or was
    never taken. ``seen[node]`` lists the distinct lock values in the order they appeared."""

    def __init__(self, client: KubeClient, *, key: str = keys.NODE_LOCK) -> None:
        self.key = key
        self.seen: dict[str, list[str]] = {}
        self.nodes = Informer(
            client,
            api_path("v1", "nodes"),
            on_add=self._look,
            on_update=lambda _o, n: self._look(n),
            name="lockwatch",
        )

    def _look(self, node: dict[str, Any]) -> None:
        value = bodies.annotations(node).get(self.key)
        if value:
            values = self.seen.setdefault(bodies.name(node), [])
            if value not in values:
                values.append(value)

    def held(self, node: str) -> str | None:
        """The lock on ``node`` in the watch cache now, if any."""
        obj = self.nodes.get(node)
        return bodies.annotations(obj).get(self.key) if obj is not None else None

    async def released(self, node: str, *, timeout: float = 30.0) -> None:
        """Wait until the watch shows ``node`` without a lock (TimeoutError otherwise)."""

        async def free() -> bool:
            return self.held(node) is None

        await poll_until(free, timeout=timeout, interval=0.1)

    async def __aenter__(self) -> LockWatch:
        self.nodes.start()
        await self.nodes.wait_synced(timeout=60)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nodes.stop()


class AllocationCompleter:
    """Completes the node side of binds: bind-phase ``allocating`` -> ``success``, lock released;
    a lock-free bind (``success`` from the start) is read once, as the lock-free plugin does (one
    GET of the pod). With ``read_from_api=False`` the lock-free read is the bound pod this agent's
    own watch delivered (no request): what a plugin fed by a watch would cost the API server."""

    def __init__(self, client: KubeClient, *, delay: float = 0.0, read_from_api: bool = True) -> None:
        self.client = client
        self.delay = delay
        self.read_from_api = read_from_api
        #: uids whose allocation this agent finished (either protocol)
        self.completed: set[str] = set()
        #: of those, the ones bound lock-free (read once, never written)
        self.lock_free: set[str] = set()
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
        if not bodies.node_name(pod) or uid in self.completed or uid in self._pending:
            return
        if phase == keys.BIND_PHASE_ALLOCATING:
            work = self._complete(pod)
        elif phase == keys.BIND_PHASE_SUCCESS:
            work = self._read(pod)
        else:
            return
        self._pending.add(uid)
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, pod: dict[str, Any]) -> None:
        """The lock-free plugin at PreStartContainer: the pod's allocation read from the API server."""
        meta = pod["metadata"]
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.read_from_api:
                await self.client.get(api_path("v1", "pods", namespace=meta["namespace"], name=meta["name"]))
            self.lock_free.add(meta["uid"])
            self.completed.add(meta["uid"])
        except KubeError:
            pass
        finally:
            self._pending.discard(meta["uid"])

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
