"""The control-plane fixture's kube-scheduler really calls an HTTP extender (filter + bind) and can
be restarted: the pattern the extender and e2e tests build on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from hami.kube.client import KubeClient
from hami.kube.paths import api_path
from hami.protocol import bodies
from hami.testing.controlplane import SchedulerHandle

pytestmark = pytest.mark.integration


async def make_node(kc: KubeClient, name: str) -> None:
    await kc.create(
        api_path("v1", "nodes"), {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}
    )
    # No node controller runs to lift a not-ready taint (the control plane also disables the
    # TaintNodesByCondition admission plugin); clearing taints keeps this test independent of that.
    await kc.merge_patch(api_path("v1", "nodes", name=name), {"spec": {"taints": None}})
    res = {"cpu": "8", "memory": "32Gi", "pods": "110", "nvidia.com/gpu": "4"}
    await kc.merge_patch(
        api_path("v1", "nodes", name=name, subresource="status"),
        {
            "status": {
                "capacity": res,
                "allocatable": res,
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake"}
                ],
            }
        },
    )


def gpu_pod(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "schedulerName": "hami-scheduler",
            "containers": [
                {"name": "c", "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
            ],
        },
    }


async def wait_bound(kc: KubeClient, ns: str, name: str, timeout: float = 30) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        pod = await kc.get(api_path("v1", "pods", namespace=ns, name=name))
        if bodies.node_name(pod):
            return pod
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"pod {ns}/{name} not bound after {timeout}s: {pod.get('status')}")
        await asyncio.sleep(0.1)


async def test_scheduler_calls_extender_filter_and_bind(
    kube_client: KubeClient, namespace: str, start_scheduler: Callable[..., SchedulerHandle]
) -> None:
    calls: list[tuple[str, str]] = []
    node = f"gpu-{namespace}"[:60]

    async def filter_(request: web.Request) -> web.Response:
        args = await request.json()
        pod = args["Pod"]["metadata"]["name"]
        calls.append(("filter", pod))
        names = [n for n in args["NodeNames"] or [] if n == node]
        failed = {n: "not the test node" for n in args["NodeNames"] or [] if n != node}
        return web.json_response({"NodeNames": names, "FailedNodes": failed, "Error": ""})

    async def bind(request: web.Request) -> web.Response:
        args = await request.json()
        calls.append(("bind", args["PodName"]))
        await kube_client.bind_pod(
            args["PodNamespace"],
            args["PodName"],
            uid=args["PodUID"],
            node=args["Node"],
            annotations={"hami.io/bind-phase": "success"},
        )
        return web.json_response({"Error": ""})

    app = web.Application()
    app.router.add_post("/filter", filter_)
    app.router.add_post("/bind", bind)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    config = {
        "profiles": [{"schedulerName": "hami-scheduler"}],
        "extenders": [
            {
                "urlPrefix": f"http://127.0.0.1:{port}",
                "filterVerb": "filter",
                "bindVerb": "bind",
                "nodeCacheCapable": True,
                "enableHTTPS": False,
                "httpTimeout": "5s",
                "managedResources": [{"name": "nvidia.com/gpu", "ignoredByScheduler": True}],
            }
        ],
    }
    try:
        await make_node(kube_client, node)
        # start_scheduler blocks until /healthz; run it off the loop so the extender keeps serving.
        sched = await asyncio.to_thread(start_scheduler, config)
        assert sched.alive
        await kube_client.create(api_path("v1", "pods", namespace=namespace), gpu_pod("p1"))
        bound = await wait_bound(kube_client, namespace, "p1")
        assert bound["spec"]["nodeName"] == node
        assert bound["metadata"]["annotations"]["hami.io/bind-phase"] == "success"
        assert ("filter", "p1") in calls and ("bind", "p1") in calls

        await asyncio.to_thread(sched.restart)  # components can be restarted mid-test
        await kube_client.create(api_path("v1", "pods", namespace=namespace), gpu_pod("p2"))
        assert (await wait_bound(kube_client, namespace, "p2"))["spec"]["nodeName"] == node
        assert ("bind", "p2") in calls
        assert "kube-scheduler" in sched.name and sched.tail()
    finally:
        await runner.cleanup()
