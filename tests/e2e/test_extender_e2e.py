"""The extender behind a real kube-scheduler and kube-apiserver: placement, events, concurrency, restarts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.protocol.pod import decode_pod_devices
from hami.testing.controlplane import SchedulerHandle
from hami.testing.gpucluster import create_gpu_node, gpu_cards, gpu_pod
from hami.testing.stack import Stack, assert_no_overcommit, list_pods, wait_for


async def make_nodes(client: KubeClient, namespace: str, count: int, **card_kw: Any) -> list[str]:
    names = []
    for i in range(count):
        name = f"{namespace}-n{i}"
        await create_gpu_node(client, name, gpu_cards(name, **card_kw), labels={"hami-test": namespace})
        names.append(name)
    return names


def pinned(pod: dict[str, Any], namespace: str) -> dict[str, Any]:
    pod["spec"]["nodeSelector"] = {"hami-test": namespace}
    return pod


async def create(client: KubeClient, namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
    return await client.create(api_path("v1", "pods", namespace=namespace), pinned(pod, namespace))


async def test_pod_is_placed_bound_and_annotated(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    nodes = await make_nodes(kube_client, namespace, 2, n=2, mem=16000)
    async with Stack(kube_config, start_scheduler):
        pod = gpu_pod("infer", mem=4000, cores=30, init=[{"name": "setup", "image": "busybox"}])
        pod["spec"]["containers"].append({"name": "sidecar", "image": "busybox"})
        await create(kube_client, namespace, pod)
        path = api_path("v1", "pods", namespace=namespace, name="infer")

        async def bound() -> dict[str, Any] | None:
            p = await kube_client.get(path)
            ok = bodies.node_name(p) and bodies.annotations(p).get(keys.BIND_PHASE) == "success"
            return p if ok else None

        p = await wait_for(bound, timeout=60)
        ann = p["metadata"]["annotations"]
        node = p["spec"]["nodeName"]
        assert node in nodes and ann[keys.VGPU_NODE] == node
        assert p["metadata"]["labels"][keys.VGPU_NODE] == node
        # one entry per container, init first: [setup] [main] [sidecar]
        devices = decode_pod_devices(ann[keys.VGPU_DEVICES_ALLOCATED])
        assert [len(c) for c in devices] == [0, 1, 0]
        assert devices[1][0].usedmem == 4000 and devices[1][0].usedcores == 30
        assert ann[keys.VGPU_DEVICES_TO_ALLOCATE] == ann[keys.VGPU_DEVICES_ALLOCATED]
        assert int(ann[keys.BIND_TIME]) > 0
        # the device side released the lock
        n = await kube_client.get(api_path("v1", "nodes", name=node))
        assert keys.NODE_LOCK not in (n["metadata"].get("annotations") or {})


async def test_unschedulable_pod_gets_an_event_that_says_why(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    await make_nodes(kube_client, namespace, 2, n=2, mem=16000)
    async with Stack(kube_config, start_scheduler) as stack:
        await create(kube_client, namespace, gpu_pod("greedy", gpus=3))
        await create(kube_client, namespace, gpu_pod("typed", annotations={keys.NVIDIA_USE_GPUTYPE: "H100"}))

        async def events() -> list[dict[str, Any]] | None:
            out = await kube_client.get(api_path("v1", "events", namespace=namespace))
            mine = [e for e in out.get("items") or [] if e.get("reason") == "FilteringFailed"]
            return mine if len(mine) >= 2 else None

        evs = await wait_for(events, timeout=60)
        by_pod = {e["involvedObject"]["name"]: e for e in evs}
        assert by_pod["greedy"]["type"] == "Warning"
        assert (
            "2 nodes" in by_pod["greedy"]["message"]
            and "2/3 NodeInsufficientDevice" in by_pod["greedy"]["message"]
        )
        assert "2/2 CardTypeMismatch" in by_pod["typed"]["message"]
        for name in ("greedy", "typed"):
            p = await kube_client.get(api_path("v1", "pods", namespace=namespace, name=name))
            assert not p["spec"].get("nodeName")
        # unschedulable decisions reserve nothing
        assert stack.extender is not None
        assert not [a for a in stack.extender.scheduler.state.pods.values() if a.namespace == namespace]


async def test_200_concurrent_pods_never_overcommit(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    # 4 nodes x 4 cards x 16000 MiB: each card holds 5 pods of 3000 MiB -> 80 of the 200 fit
    nodes = await make_nodes(kube_client, namespace, 4, n=4, mem=16000)
    async with Stack(kube_config, start_scheduler) as stack:
        sem = asyncio.Semaphore(25)

        async def one(i: int) -> None:
            async with sem:
                await create(kube_client, namespace, gpu_pod(f"burst-{i:03d}", mem=3000, cores=10))

        await asyncio.gather(*(one(i) for i in range(200)))

        async def settled() -> int | None:
            pods = await list_pods(kube_client, namespace)
            done = [p for p in pods if bodies.annotations(p).get(keys.BIND_PHASE) == "success"]
            return len(done) if len(done) >= 80 else None

        assert await wait_for(settled, timeout=180, interval=1.0) == 80
        await asyncio.sleep(2)  # let any straggling bind finish
        usage = await assert_no_overcommit(kube_client, namespace, nodes)
        assert sum(u[0] for u in usage.values()) == 80
        pods = await list_pods(kube_client, namespace)
        assert sum(1 for p in pods if p["spec"].get("nodeName")) == 80
        assert stack.extender is not None
        ledger = [a for a in stack.extender.scheduler.state.pods.values() if a.namespace == namespace]
        assert len(ledger) == 80


async def test_extender_restart_mid_stream_loses_nothing(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    nodes = await make_nodes(kube_client, namespace, 3, n=4, mem=16000)  # 12 cards x 4 pods = 48 slots
    async with Stack(kube_config, start_scheduler) as stack:
        for i in range(20):
            await create(kube_client, namespace, gpu_pod(f"wave1-{i:02d}", mem=4000, cores=20))

        async def some_bound() -> bool:
            pods = await list_pods(kube_client, namespace)
            return sum(1 for p in pods if bodies.node_name(p)) >= 5

        await wait_for(some_bound, timeout=60)
        await stack.stop_extender()  # killed in the middle of the stream
        for i in range(20):
            await create(kube_client, namespace, gpu_pod(f"wave2-{i:02d}", mem=4000, cores=20))
        await asyncio.sleep(1.0)
        ext = await stack.start_extender()

        async def all_bound() -> bool:
            pods = await list_pods(kube_client, namespace)
            ok = [p for p in pods if bodies.annotations(p).get(keys.BIND_PHASE) == "success"]
            return len(ok) == 40

        await wait_for(all_bound, timeout=180, interval=1.0)
        await assert_no_overcommit(kube_client, namespace, nodes)
        # no leaked lock, and the new ledger is exactly what the API objects say
        for name in nodes:
            n = await kube_client.get(api_path("v1", "nodes", name=name))
            assert keys.NODE_LOCK not in (n["metadata"].get("annotations") or {})
        ledger = {a.key for a in ext.scheduler.state.pods.values() if a.namespace == namespace}
        assert ledger == {
            f"{namespace}/{p['metadata']['name']}" for p in await list_pods(kube_client, namespace)
        }


async def test_bind_refuses_a_replaced_pod(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    """A bind whose pod UID no longer matches (deleted and recreated) is refused; nothing leaks."""
    from hami.extender.wire import BindingArgs

    nodes = await make_nodes(kube_client, namespace, 1, n=1, mem=16000)
    stack = Stack(kube_config, start_scheduler)
    ext = await stack.start_extender()
    try:
        pod = await create(kube_client, namespace, gpu_pod("ghost", mem=1000, scheduler_name="nobody"))
        error = await ext.service.bind(BindingArgs("ghost", namespace, str(uuid.uuid4()), nodes[0]))
        assert "replaced" in error
        p = await kube_client.get(api_path("v1", "pods", namespace=namespace, name="ghost"))
        assert not p["spec"].get("nodeName")
        # the right UID binds (the extender re-decides, since it never filtered this pod)
        assert await ext.service.bind(BindingArgs("ghost", namespace, pod["metadata"]["uid"], nodes[0])) == ""
        p = await kube_client.get(api_path("v1", "pods", namespace=namespace, name="ghost"))
        assert p["spec"]["nodeName"] == nodes[0]
        assert p["metadata"]["annotations"][keys.BIND_PHASE] == "allocating"
        n = await kube_client.get(api_path("v1", "nodes", name=nodes[0]))
        assert n["metadata"]["annotations"][keys.NODE_LOCK].endswith(f",{namespace},ghost")
    finally:
        await stack.stop_extender()
