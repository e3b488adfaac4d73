"""Namespace device quota on the real control plane: Kubernetes' own quota (admission plugin and the
kube-controller-manager's quota controller) beside hami's, pods racing for the last of a quota, and
an extender restart rebuilding quota usage from the cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import generate_latest

from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.errors import ApiError
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.testing.controlplane import BinariesMissingError, ControlPlane, SchedulerHandle
from hami.testing.gpucluster import create_gpu_node, gpu_cards, gpu_pod
from hami.testing.prereq import missing
from hami.testing.stack import Stack, list_pods, wait_for

MEM = "nvidia.com/gpumem"


async def setup(client: KubeClient, namespace: str, hard: dict[str, str]) -> list[str]:
    """One node with two 16000 MiB cards for this test, and a ResourceQuota ``gpu`` in its namespace."""
    name = f"{namespace}-n0"
    await create_gpu_node(client, name, gpu_cards(name, n=2, mem=16000), labels={"hami-test": namespace})
    await client.create(
        api_path("v1", "resourcequotas", namespace=namespace),
        {"metadata": {"name": "gpu"}, "spec": {"hard": hard}},
    )
    return [name]


async def create(client: KubeClient, namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
    pod["spec"]["nodeSelector"] = {"hami-test": namespace}
    return await client.create(api_path("v1", "pods", namespace=namespace), pod)


async def bound_names(client: KubeClient, namespace: str) -> set[str]:
    pods = await list_pods(client, namespace)
    return {bodies.name(p) for p in pods if bodies.annotations(p).get(keys.BIND_PHASE) == "success"}


async def wait_bound(client: KubeClient, namespace: str, names: set[str]) -> None:
    async def ok() -> bool:
        return names <= await bound_names(client, namespace)

    await wait_for(ok, timeout=90, interval=0.5)


async def filtering_failed(client: KubeClient, namespace: str, pod: str) -> str:
    async def message() -> str | None:
        out = await client.get(api_path("v1", "events", namespace=namespace))
        for e in out.get("items") or []:
            if e.get("reason") == "FilteringFailed" and e["involvedObject"]["name"] == pod:
                return str(e.get("message"))
        return None

    msg: str = await wait_for(message, timeout=60)
    return msg


@pytest.fixture
def quota_controller(control_plane: ControlPlane) -> Iterator[None]:
    """kube-controller-manager running only its ResourceQuota controller (fills ``status.used``)."""
    try:
        proc = control_plane.start_controller_manager(["resourcequota"])
    except BinariesMissingError as exc:
        missing(str(exc), integration=True)
    try:
        yield
    finally:
        proc.stop()
        control_plane.controller_manager = None


async def test_kubernetes_quota_and_hami_agree(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
    quota_controller: None,
) -> None:
    """The API server accepts ``limits.<extended resource>`` entries but Kubernetes counts extended
    resources only as ``requests.<name>``: it enforces ``requests.nvidia.com/gpu`` (at pod creation)
    and leaves ``limits.nvidia.com/gpumem`` to hami (at scheduling). Neither counts the other's."""
    hard = {f"limits.{MEM}": "8000", "limits.nvidia.com/gpucores": "100", "requests.nvidia.com/gpu": "3"}
    await setup(kube_client, namespace, hard)
    rq_path = api_path("v1", "resourcequotas", namespace=namespace, name="gpu")

    async def controller_synced() -> dict[str, Any] | None:
        status = bodies.status(await kube_client.get(rq_path))
        return status if "used" in status else None

    status = await wait_for(controller_synced, timeout=60)
    assert status["hard"][f"limits.{MEM}"] == "8k"  # the API server canonicalises the quantity
    async with Stack(kube_config, start_scheduler) as stack:
        await create(kube_client, namespace, gpu_pod("a", mem=5000, cores=30))
        await create(kube_client, namespace, gpu_pod("b", mem=3000, cores=30))
        await wait_bound(kube_client, namespace, {"a", "b"})
        # hami: 8000 of 8000 MiB used, one more MiB is refused with the numbers
        await create(kube_client, namespace, gpu_pod("c", mem=1, cores=0))
        msg = await filtering_failed(kube_client, namespace, "c")
        assert f"namespace {namespace}" in msg and f"limits.{MEM}" in msg, msg
        assert "limit 8000, used 8000, asked 1 MiB" in msg, msg
        # Kubernetes: the pending pod counts against requests.nvidia.com/gpu already; a fourth is
        # refused by the API server's quota admission
        with pytest.raises(ApiError) as refused:
            await create(kube_client, namespace, gpu_pod("d", mem=1, cores=0))
        assert refused.value.status == 403 and "requests.nvidia.com/gpu" in str(refused.value)

        async def k8s_used() -> dict[str, Any] | None:
            used = bodies.status(await kube_client.get(rq_path)).get("used") or {}
            return used if used.get("requests.nvidia.com/gpu") == "3" else None

        used = await wait_for(k8s_used, timeout=60)
        assert f"limits.{MEM}" not in used  # Kubernetes never counts it
        assert stack.extender is not None
        q = stack.extender.scheduler.state.quota
        assert q.used[namespace] == {MEM: 8000, "nvidia.com/gpucores": 60}
        text = generate_latest(stack.extender.metrics.registry).decode()
        assert (
            f'hami_resource_quota_used{{limit="8000",namespace="{namespace}",quota_name="{MEM}",zone="vGPU"}} 8000.0'
            in text
        )
        # deleting a pod releases its quota: the pending pod binds
        await kube_client.delete(api_path("v1", "pods", namespace=namespace, name="a"))
        await wait_bound(kube_client, namespace, {"c"})
        assert q.used[namespace][MEM] == 3001


async def test_pods_racing_for_the_last_quota(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    """Twelve pods of 3000 MiB created at once against 8000 MiB of quota: exactly two bind."""
    await setup(kube_client, namespace, {f"limits.{MEM}": "8000"})
    async with Stack(kube_config, start_scheduler) as stack:
        await asyncio.gather(
            *(create(kube_client, namespace, gpu_pod(f"r{i:02d}", mem=3000)) for i in range(12))
        )

        async def two() -> set[str] | None:
            done = await bound_names(kube_client, namespace)
            return done if len(done) >= 2 else None

        await wait_for(two, timeout=90, interval=0.5)
        await asyncio.sleep(3)  # give a wrongly admitted third pod time to show up
        assert len(await bound_names(kube_client, namespace)) == 2
        pods = await list_pods(kube_client, namespace)
        assert sum(1 for p in pods if bodies.node_name(p)) == 2
        assert stack.extender is not None
        assert stack.extender.scheduler.state.quota.used[namespace] == {MEM: 6000}


async def test_extender_restart_rebuilds_quota_usage(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    await setup(kube_client, namespace, {f"limits.{MEM}": "8000"})
    async with Stack(kube_config, start_scheduler) as stack:
        await create(kube_client, namespace, gpu_pod("a", mem=3000))
        await create(kube_client, namespace, gpu_pod("b", mem=3000))
        await wait_bound(kube_client, namespace, {"a", "b"})
        await stack.stop_extender()
        ext = await stack.start_extender()
        assert ext.scheduler.state.quota.used[namespace] == {MEM: 6000}
        await create(kube_client, namespace, gpu_pod("over", mem=3000))
        msg = await filtering_failed(kube_client, namespace, "over")
        assert "limit 8000, used 6000, asked 3000 MiB" in msg, msg
        await create(kube_client, namespace, gpu_pod("fits", mem=2000))
        await wait_bound(kube_client, namespace, {"fits"})
        assert ext.scheduler.state.quota.used[namespace] == {MEM: 8000}
