"""Metax sGPU behind a real kube-scheduler and kube-apiserver: the extender (``metax: {}``) places
sGPU pods on a node registered by ``metax-tech.com/node-gpu-devices``, binds them with HAMi's and
Metax's decision annotations, keeps pods of different QoS policies off a shared card, and a pod that
fits no card gets kube-scheduler's event naming the reason."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hami.config.device import parse_device_config
from hami.devices.metax_sgpu_wire import SGPUDevice, encode_sgpu_devices
from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.testing.controlplane import SchedulerHandle
from hami.testing.gpucluster import create_node
from hami.testing.stack import Stack, wait_for

ALLOCATED = "hami.io/metax-sgpu-devices-allocated"


def sgpu_pod(name: str, namespace: str, qos: str, vcore: int) -> dict[str, Any]:
    limits = {"metax-tech.com/sgpu": 1, "metax-tech.com/vcore": vcore, "metax-tech.com/vmemory": 4}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": {keys.METAX_SGPU_QOS_POLICY: qos}},
        "spec": {
            "schedulerName": "hami-scheduler",
            "nodeSelector": {"hami-test": namespace},
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {"name": "main", "image": "registry.invalid/metax:1", "resources": {"limits": limits}}
            ],
        },
    }


async def bound(client: KubeClient, namespace: str, name: str) -> dict[str, Any]:
    path = api_path("v1", "pods", namespace=namespace, name=name)

    async def done() -> dict[str, Any] | None:
        p = await client.get(path)
        ok = bodies.node_name(p) and bodies.annotations(p).get(keys.BIND_PHASE) == keys.BIND_PHASE_SUCCESS
        return p if ok else None

    result: dict[str, Any] = await wait_for(done, timeout=60)
    return result


async def test_sgpu_pods_are_bound_with_metax_annotations_and_kept_apart_by_qos(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    node = f"{namespace}-mx"
    cards = [
        SGPUDevice(
            uuid=f"{namespace}-gpu-{i}", total_dev_count=16, total_compute=100, total_vram=65536, healthy=True
        )
        for i in range(2)
    ]
    await create_node(
        kube_client,
        node,
        labels={"hami-test": namespace},
        annotations={keys.METAX_SGPU_DEVICES: encode_sgpu_devices(cards)},
    )
    stack = Stack(kube_config, start_scheduler)
    stack.device_config, _ = parse_device_config("metax: {}\n")
    async with stack:
        pods = api_path("v1", "pods", namespace=namespace)
        await kube_client.create(pods, sgpu_pod("fixed", namespace, "fixed-share", 60))
        fixed = await bound(kube_client, namespace, "fixed")
        ann = fixed["metadata"]["annotations"]
        gpu1 = f"{namespace}-gpu-1"  # spread: the highest index of equal cards
        assert fixed["spec"]["nodeName"] == node
        assert (
            ann[ALLOCATED] == ann["hami.io/metax-sgpu-devices-to-allocate"] == f"{gpu1},Metax-SGPU,4096,60:;"
        )
        assert ann[keys.METAX_SGPU_ALLOCATED] == f'[[{{"uuid":"{gpu1}","compute":60,"vRam":4096}}]]'
        assert ann[keys.METAX_PREDICATE_TIME].isdigit()

        # the card fixed-share holds is closed to best-effort pods: the other card
        await kube_client.create(pods, sgpu_pod("best", namespace, "best-effort", 30))
        best = await bound(kube_client, namespace, "best")
        assert best["metadata"]["annotations"][ALLOCATED] == f"{namespace}-gpu-0,Metax-SGPU,4096,30:;"

        # burst-share fits neither: kube-scheduler's event carries the extender's reason
        await kube_client.create(pods, sgpu_pod("burst", namespace, "burst-share", 10))

        async def refused() -> dict[str, Any] | None:
            out = await kube_client.get(api_path("v1", "events", namespace=namespace))
            for e in out.get("items") or []:
                if e.get("reason") == "FilteringFailed" and e["involvedObject"]["name"] == "burst":
                    return dict(e)
            return None

        event = await wait_for(refused, timeout=60)
        assert "2/2 CardQosPolicyMismatch" in event["message"], event["message"]
        burst = await kube_client.get(api_path("v1", "pods", namespace=namespace, name="burst"))
        assert not burst["spec"].get("nodeName")
        # the node side finished both binds: no lock left on the node
        n = await kube_client.get(api_path("v1", "nodes", name=node))
        assert keys.NODE_LOCK not in (n["metadata"].get("annotations") or {})
