"""The extender on nodes whose device plugin runs lock-free, behind a real kube-scheduler and API server.

A node annotated ``hami.io/allocation-mode=cdi`` gets its pods bound without the node lock (a node
watch proves no lock value ever appears on it) and with the finished allocation in the Binding;
nodes without the annotation keep HAMi's lock protocol in the same cluster, and a node whose
annotation is removed goes back to the lock at its next bind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from hami.extender.runner import Extender
from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.protocol.allocmode import is_lock_free
from hami.protocol.pod import decode_pod_devices
from hami.testing.controlplane import SchedulerHandle
from hami.testing.gpucluster import (
    AllocationCompleter,
    LockWatch,
    create_gpu_node,
    gpu_cards,
    gpu_pod,
    lock_free_annotations,
    set_allocation_mode,
)
from hami.testing.stack import Stack, assert_no_overcommit, list_pods, wait_for


async def make_node(client: KubeClient, namespace: str, suffix: str, *, lock_free: bool) -> str:
    name = f"{namespace}-{suffix}"
    await create_gpu_node(
        client,
        name,
        gpu_cards(name, n=4, mem=16000),
        labels={"hami-test": namespace, "hami-node": name},
        annotations=lock_free_annotations(lock_free),
    )
    return name


async def create_on(client: KubeClient, namespace: str, node: str, pod: dict[str, Any]) -> dict[str, Any]:
    pod["spec"]["nodeSelector"] = {"hami-node": node}
    return await client.create(api_path("v1", "pods", namespace=namespace), pod)


async def all_allocated(client: KubeClient, namespace: str, count: int) -> list[dict[str, Any]]:
    async def done() -> list[dict[str, Any]] | None:
        pods = await list_pods(client, namespace)
        ok = [p for p in pods if bodies.annotations(p).get(keys.BIND_PHASE) == keys.BIND_PHASE_SUCCESS]
        return ok if len(ok) == count else None

    result: list[dict[str, Any]] = await wait_for(done, timeout=120, interval=0.5)
    return result


async def cached_mode(ext: Extender, node: str, *, lock_free: bool) -> None:
    """Wait until the extender's node cache shows the mode (the next bind reads it from there)."""

    async def seen() -> bool:
        return is_lock_free(ext.nodes.get(node)) == lock_free

    await wait_for(seen, timeout=30)


def completer_of(stack: Stack) -> AllocationCompleter:
    """The stack's fake node agent (it watches every namespace: filter its sets by uid)."""
    assert stack.completer is not None
    return stack.completer


async def test_a_binpack_burst_on_a_cdi_node_binds_without_any_node_lock(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    node = await make_node(kube_client, namespace, "cdi", lock_free=True)
    async with LockWatch(kube_client) as locks, Stack(kube_config, start_scheduler) as stack:
        # 4 cards x 16000 MiB, binpack: all 40 pods of 1000 MiB land on the one node at once
        await asyncio.gather(
            *(
                create_on(kube_client, namespace, node, gpu_pod(f"p{i:02d}", mem=1000, cores=5))
                for i in range(40)
            )
        )
        pods = await all_allocated(kube_client, namespace, 40)
        for p in pods:
            ann = bodies.annotations(p)
            assert bodies.node_name(p) == node
            entries = decode_pod_devices(ann[keys.VGPU_DEVICES_ALLOCATED])
            assert [len(c) for c in entries] == [1] and entries[0][0].usedmem == 1000
            assert ann[keys.VGPU_DEVICES_TO_ALLOCATE] == ";"  # nothing left for a plugin to consume
            assert int(ann[keys.BIND_TIME]) > 0
        assert locks.seen.get(node) is None  # not once in the node's whole history
        uids = {bodies.uid(p) for p in pods}
        ext = stack.extender
        assert ext is not None

        async def settled() -> bool:
            # the agent's read of each pod and the extender's view of each bind arrive by watch,
            # after the pods are seen bound here
            return (
                uids <= completer_of(stack).lock_free
                and not ext.reservations.assumed
                and ext.reservations.in_flight(node) == 0
            )

        await wait_for(settled, timeout=30)
        await assert_no_overcommit(kube_client, namespace, [node])


async def test_a_mixed_cluster_locks_only_the_lock_nodes(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    cdi = await make_node(kube_client, namespace, "cdi", lock_free=True)
    lck = await make_node(kube_client, namespace, "lck", lock_free=False)
    async with LockWatch(kube_client) as locks, Stack(kube_config, start_scheduler) as stack:
        made = await asyncio.gather(
            *(
                create_on(kube_client, namespace, node, gpu_pod(f"{node[-3:]}-{i}", mem=2000, cores=10))
                for i in range(6)
                for node in (cdi, lck)
            )
        )
        await all_allocated(kube_client, namespace, 12)
        uids = {
            node: {bodies.uid(p) for p in made if p["spec"]["nodeSelector"]["hami-node"] == node}
            for node in (cdi, lck)
        }
        assert completer_of(stack).lock_free & (uids[cdi] | uids[lck]) == uids[cdi]
        assert locks.seen.get(cdi) is None
        # every lock-node pod held the lock in turn, and the last one was released
        assert {v.split(",")[-1] for v in locks.seen[lck]} == {f"lck-{i}" for i in range(6)}
        await locks.released(lck)
        await assert_no_overcommit(kube_client, namespace, [cdi, lck])


async def test_a_node_whose_cdi_annotation_is_removed_uses_the_lock_again(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    node = await make_node(kube_client, namespace, "n", lock_free=True)
    async with LockWatch(kube_client) as locks, Stack(kube_config, start_scheduler) as stack:
        first = await create_on(kube_client, namespace, node, gpu_pod("before", mem=1000))
        await all_allocated(kube_client, namespace, 1)
        assert locks.seen.get(node) is None
        await set_allocation_mode(kube_client, node, lock_free=False)
        ext = stack.extender
        assert ext is not None
        await cached_mode(ext, node, lock_free=False)
        second = await create_on(kube_client, namespace, node, gpu_pod("after", mem=1000))
        await all_allocated(kube_client, namespace, 2)
        assert completer_of(stack).lock_free & {bodies.uid(first), bodies.uid(second)} == {bodies.uid(first)}
        assert [v.split(",")[-1] for v in locks.seen[node]] == ["after"]
        assert bodies.uid(second) in completer_of(stack).completed
        await locks.released(node)
        # and back: the next pod is lock-free again
        await set_allocation_mode(kube_client, node, lock_free=True)
        await cached_mode(ext, node, lock_free=True)
        third = await create_on(kube_client, namespace, node, gpu_pod("again", mem=1000))
        await all_allocated(kube_client, namespace, 3)
        assert bodies.uid(third) in completer_of(stack).lock_free
        assert [v.split(",")[-1] for v in locks.seen[node]] == ["after"]


async def test_a_lock_whose_pod_is_deleted_before_allocation_is_released(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    """No device plugin completes the allocation (kubelet never calls Allocate for a pod deleted
    first): the extender releases the deleted pod's lock instead of leaving it to expire."""
    node = await make_node(kube_client, namespace, "lck", lock_free=False)
    async with LockWatch(kube_client) as locks, Stack(kube_config, start_scheduler, completer=False):
        await create_on(kube_client, namespace, node, gpu_pod("doomed", mem=1000))

        async def locked() -> str | None:
            return locks.held(node)

        assert (await wait_for(locked, timeout=60)).endswith(f",{namespace},doomed")
        path = api_path("v1", "pods", namespace=namespace, name="doomed")
        assert bodies.annotations(await kube_client.get(path))[keys.BIND_PHASE] == keys.BIND_PHASE_ALLOCATING
        await kube_client.delete(path, grace_period_seconds=0)
        await locks.released(node)
