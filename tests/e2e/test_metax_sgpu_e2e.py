"""Metax sGPU behind a real kube-scheduler and kube-apiserver: the extender (``metax: {}``) places
sGPU pods on a node registered by ``metax-tech.com/node-gpu-devices``, binds them with HAMi's and
Metax's decision annotations, keeps pods of different QoS policies off a shared card, and a pod that
fits no card gets kube-scheduler's event naming the reason. With the webhook in front, a pod
without a QoS policy gets ``best-effort`` and a bad app class is refused naming the annotation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from hami.config.device import DeviceConfig, parse_device_config
from hami.devices.metax_sgpu_wire import SGPUDevice, encode_sgpu_devices
from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.errors import ApiError
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.testing.controlplane import SchedulerHandle
from hami.testing.gpucluster import create_node
from hami.testing.stack import Stack, wait_for
from hami.testing.webhooks import create_until_admitted_by_webhook, served_webhook
from hami.webhook.mutate import WebhookPolicy

ALLOCATED = "hami.io/metax-sgpu-devices-allocated"


def metax_config() -> DeviceConfig:
    config, _ = parse_device_config("metax: {}\n")
    return config


async def metax_node(client: KubeClient, namespace: str, cards: int) -> str:
    """A node of ``cards`` idle sGPU cards ``<namespace>-gpu-<i>`` (64 GiB, 16 slots each)."""
    node = f"{namespace}-mx"
    devices = [
        SGPUDevice(
            uuid=f"{namespace}-gpu-{i}", total_dev_count=16, total_compute=100, total_vram=65536, healthy=True
        )
        for i in range(cards)
    ]
    await create_node(
        client,
        node,
        labels={"hami-test": namespace},
        annotations={keys.METAX_SGPU_DEVICES: encode_sgpu_devices(devices)},
    )
    return node


def metax_stack(kube_config: KubeConfig, start_scheduler: Callable[..., SchedulerHandle]) -> Stack:
    stack = Stack(kube_config, start_scheduler)
    stack.device_config = metax_config()
    return stack


def sgpu_pod(
    name: str,
    namespace: str,
    vcore: int,
    annotations: dict[str, str],
    *,
    scheduler: str | None = "hami-scheduler",
) -> dict[str, Any]:
    limits = {"metax-tech.com/sgpu": 1, "metax-tech.com/vcore": vcore, "metax-tech.com/vmemory": 4}
    spec: dict[str, Any] = {"schedulerName": scheduler} if scheduler else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            **spec,
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


async def filtering_failed(client: KubeClient, namespace: str, pod: str) -> dict[str, Any]:
    """kube-scheduler's FilteringFailed event for ``pod`` (waits for it)."""

    async def found() -> dict[str, Any] | None:
        out = await client.get(api_path("v1", "events", namespace=namespace))
        for e in out.get("items") or []:
            if e.get("reason") == "FilteringFailed" and e["involvedObject"]["name"] == pod:
                return dict(e)
        return None

    event: dict[str, Any] = await wait_for(found, timeout=60)
    return event


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
        await kube_client.create(
            pods, sgpu_pod("fixed", namespace, 60, {keys.METAX_SGPU_QOS_POLICY: "fixed-share"})
        )
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
        await kube_client.create(
            pods, sgpu_pod("best", namespace, 30, {keys.METAX_SGPU_QOS_POLICY: "best-effort"})
        )
        best = await bound(kube_client, namespace, "best")
        assert best["metadata"]["annotations"][ALLOCATED] == f"{namespace}-gpu-0,Metax-SGPU,4096,30:;"

        # burst-share fits neither: kube-scheduler's event carries the extender's reason
        await kube_client.create(
            pods, sgpu_pod("burst", namespace, 10, {keys.METAX_SGPU_QOS_POLICY: "burst-share"})
        )

        event = await filtering_failed(kube_client, namespace, "burst")
        assert "2/2 CardQosPolicyMismatch" in event["message"], event["message"]
        burst = await kube_client.get(api_path("v1", "pods", namespace=namespace, name="burst"))
        assert not burst["spec"].get("nodeName")
        # the node side finished both binds: no lock left on the node
        n = await kube_client.get(api_path("v1", "nodes", name=node))
        assert keys.NODE_LOCK not in (n["metadata"].get("annotations") or {})


async def test_the_webhook_defaults_the_qos_policy_and_refuses_a_bad_app_class(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    node = await metax_node(kube_client, namespace, 1)
    policy = WebhookPolicy.from_config(metax_config())
    async with (
        served_webhook(kube_client, policy, namespace, every_pod=True),
        metax_stack(kube_config, start_scheduler),
    ):
        pods = api_path("v1", "pods", namespace=namespace)

        async def discard(pod: dict[str, Any]) -> None:
            await kube_client.delete(f"{pods}/{pod['metadata']['name']}")

        created = await create_until_admitted_by_webhook(
            lambda i: kube_client.create(pods, sgpu_pod(f"plain-{i}", namespace, 40, {}, scheduler=None)),
            lambda pod: pod["spec"]["schedulerName"] == "hami-scheduler",
            discard=discard,
        )
        assert created["metadata"]["annotations"][keys.METAX_SGPU_QOS_POLICY] == "best-effort"
        placed = await bound(kube_client, namespace, created["metadata"]["name"])
        assert placed["spec"]["nodeName"] == node
        assert placed["metadata"]["annotations"][ALLOCATED] == f"{namespace}-gpu-0,Metax-SGPU,4096,40:;"

        with pytest.raises(ApiError) as info:
            await kube_client.create(
                pods, sgpu_pod("batch", namespace, 40, {keys.METAX_SGPU_APP_CLASS: "batch"})
            )
        assert info.value.status == 400
        assert (
            f"metadata.annotations[{keys.METAX_SGPU_APP_CLASS}]: 'batch' must be one of online, offline"
            in str(info.value)
        )

        # the card is best-effort now: a fixed-share pod is refused for it
        await kube_client.create(
            pods, sgpu_pod("fixed", namespace, 10, {keys.METAX_SGPU_QOS_POLICY: "fixed-share"})
        )
        event = await filtering_failed(kube_client, namespace, "fixed")
        assert "1/1 CardQosPolicyMismatch" in event["message"], event["message"]
