"""Ascend pods through the real chain (issue 13): the webhook (served over HTTPS and registered with
a real kube-apiserver) rounds the vNPU memory to its template and turns a 910C request of one NPU
into a module of two; the real kube-scheduler calls the extender for the Ascend resources
(managedResources from the configured chips); the extender places, annotates, locks and binds.

No Ascend device plugin runs here (it is Huawei's/HAMi's own project): the pods stay in bind-phase
``allocating`` holding ``hami.io/mutex.lock``, which the vendor's plugin would release.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from hami.config import parse_device_config
from hami.devices.ascend import encode_register
from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.protocol.node import DeviceInfo
from hami.testing.controlplane import SchedulerHandle
from hami.testing.gpucluster import create_node
from hami.testing.stack import Stack, wait_for
from hami.testing.webhooks import create_until_admitted_by_webhook, served_webhook
from hami.webhook.mutate import WebhookPolicy

CONFIG, _ = parse_device_config("vnpus: {}\n")


async def npu_node(client: KubeClient, name: str, word: str, namespace: str) -> None:
    cards = [
        DeviceInfo(id=f"{name}-npu-{i}", index=i, count=4, devmem=65536, devcore=20, type=word)
        for i in range(4)
    ]
    register = encode_register(cards, [{"NetworkID": 0}] * 4)
    await create_node(
        client,
        name,
        labels={"hami-test": namespace},
        annotations={f"hami.io/node-register-{word}": register},
        extra_capacity={f"huawei.com/{word}": "4"},
    )


def npu_pod(name: str, namespace: str, resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "main", "image": "registry.invalid/ascend:1", "resources": resources}],
            "nodeSelector": {"hami-test": namespace},
            "terminationGracePeriodSeconds": 0,
        },
    }


async def test_ascend_pods_are_admitted_placed_annotated_and_bound(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    b3, c = f"{namespace}-b3", f"{namespace}-c"
    await npu_node(kube_client, b3, "Ascend910B3", namespace)
    await npu_node(kube_client, c, "Ascend910C", namespace)
    stack = Stack(kube_config, start_scheduler, completer=False)
    stack.device_config = CONFIG
    pods = api_path("v1", "pods", namespace=namespace)

    async def discard(pod: dict[str, Any]) -> None:
        await kube_client.delete(f"{pods}/{pod['metadata']['name']}")

    async def admitted(name: str, resources: dict[str, Any]) -> dict[str, Any]:
        return await create_until_admitted_by_webhook(
            lambda i: kube_client.create(pods, npu_pod(f"{name}-{i}", namespace, resources)),
            lambda pod: pod["spec"]["schedulerName"] == "hami-scheduler",
            discard=discard,
        )

    async def bound(name: str) -> dict[str, Any]:
        path = api_path("v1", "pods", namespace=namespace, name=name)

        async def done() -> dict[str, Any] | None:
            p = await kube_client.get(path)
            return p if bodies.node_name(p) else None

        result: dict[str, Any] = await wait_for(done, timeout=60)
        return result

    async with (
        served_webhook(kube_client, WebhookPolicy.from_config(CONFIG), namespace, every_pod=True),
        stack,
    ):
        # a 2000 MiB vNPU: the webhook sets limit and request to the vir05_1c_16g template
        mem = "huawei.com/Ascend910B3-memory"
        slice_limits = {"huawei.com/Ascend910B3": "1", mem: "2000"}
        created = await admitted("vnpu", {"limits": slice_limits, "requests": dict(slice_limits)})
        res = created["spec"]["containers"][0]["resources"]
        assert res["limits"][mem] == "16384" and res["requests"][mem] == "16384"
        p = await bound(created["metadata"]["name"])
        ann = p["metadata"]["annotations"]
        assert p["spec"]["nodeName"] == b3
        assert ann["hami.io/Ascend910B3-devices-allocated"] == f"{b3}-npu-3,Ascend910B3,16384,0:;"
        assert ann["hami.io/Ascend910B3-devices-to-allocate"] == ann["hami.io/Ascend910B3-devices-allocated"]
        assert orjson.loads(ann["huawei.com/Ascend910B3"]) == [
            {"UUID": f"{b3}-npu-3", "temp": "vir05_1c_16g", "memory": 16384}
        ]
        assert ann[keys.PREDICATE_TIME] == ann[keys.VGPU_TIME]
        assert ann[keys.BIND_PHASE] == "allocating"
        node = await kube_client.get(api_path("v1", "nodes", name=b3))
        lock = node["metadata"]["annotations"][keys.NODE_LOCK]
        assert lock.endswith(f",{namespace},{p['metadata']['name']}")

        # a 910C request of one NPU is a whole module: two NPUs of one module
        created = await admitted("module", {"limits": {"huawei.com/Ascend910C": "1"}})
        assert created["spec"]["containers"][0]["resources"]["limits"]["huawei.com/Ascend910C"] == "2"
        p = await bound(created["metadata"]["name"])
        assert p["spec"]["nodeName"] == c
        devices = p["metadata"]["annotations"]["hami.io/Ascend910C-devices-allocated"]
        uuids = sorted(d.split(",")[0] for d in devices.rstrip(";").split(":") if d)
        assert uuids in ([f"{c}-npu-0", f"{c}-npu-1"], [f"{c}-npu-2", f"{c}-npu-3"])
