"""The benchmark's null extender behind a real kube-scheduler and API server.

It must be a working extender (else the ``null`` row of ``benchmarks/bench_e2e.py`` measures
nothing): kube-scheduler calls ``/filter`` and ``/bind`` on it, every candidate passes, pods end
up bound by its Binding with no hami annotation; a bad body is refused with HTTP 400 naming the
field, and a Binding the API server refuses comes back as the answer's ``Error``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.testing.controlplane import SchedulerHandle
from hami.testing.gpucluster import create_gpu_node, gpu_cards, gpu_pod
from hami.testing.nullextender import NullExtender
from hami.testing.stack import extender_scheduler_config, list_pods, wait_for


async def test_kube_scheduler_binds_through_the_null_extender(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    node = f"{namespace}-n"
    await create_gpu_node(kube_client, node, gpu_cards(node, n=2, mem=16000), labels={"hami-node": node})
    async with NullExtender(kube_config) as ext:
        sched = await asyncio.to_thread(start_scheduler, extender_scheduler_config(ext.url))
        try:
            for i in range(5):
                pod = gpu_pod(f"p{i}", mem=1000, cores=5)
                pod["spec"]["nodeSelector"] = {"hami-node": node}
                await kube_client.create(api_path("v1", "pods", namespace=namespace), pod)

            async def all_bound() -> list[str] | None:
                nodes = [bodies.node_name(p) for p in await list_pods(kube_client, namespace)]
                return [str(n) for n in nodes] if all(nodes) and len(nodes) == 5 else None

            assert await wait_for(all_bound, timeout=60) == [node] * 5
        finally:
            sched.stop()
        for p in await list_pods(kube_client, namespace):
            # the null extender bound it: no hami decision, no bind phase
            assert keys.BIND_PHASE not in bodies.annotations(p)
            assert keys.VGPU_DEVICES_ALLOCATED not in bodies.annotations(p)


async def test_the_null_extender_answers_bad_input_and_refused_binds(
    kube_config: KubeConfig, kube_client: KubeClient, namespace: str
) -> None:
    async with NullExtender(kube_config) as ext, aiohttp.ClientSession() as http:
        async with http.post(f"{ext.url}/filter", json={"Pod": {"metadata": {}}, "NodeNames": "a"}) as r:
            assert r.status == 400
            assert "ExtenderArgs" in await r.text()
        async with http.post(f"{ext.url}/bind", json={"PodName": "x", "PodNamespace": namespace}) as r:
            assert r.status == 400
            assert "ExtenderBindingArgs.PodUID" in await r.text()
        pod = {"metadata": {"name": "x", "namespace": namespace, "uid": "u1"}}
        async with http.post(f"{ext.url}/filter", json={"Pod": pod, "NodeNames": ["a", "b"]}) as r:
            assert (await r.json())["NodeNames"] == ["a", "b"]
        async with (
            NullExtender(kube_config, first_only=True) as first,
            http.post(f"{first.url}/filter", json={"Pod": pod, "NodeNames": ["a", "b"]}) as r,
        ):
            assert (await r.json())["NodeNames"] == ["a"]
        missing = {"PodName": "nope", "PodNamespace": namespace, "PodUID": "u1", "Node": "a"}
        async with http.post(f"{ext.url}/bind", json=missing) as r:
            assert r.status == 200
            assert f"binding pod {namespace}/nope" in (await r.json())["Error"]
