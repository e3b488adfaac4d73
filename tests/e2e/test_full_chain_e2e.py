"""The whole control-plane chain on a real API server: webhook -> kube-scheduler -> extender -> bind.

A plain pod (no schedulerName, only ``nvidia.com/gpumem``) is created through the API. The
MutatingWebhookConfiguration from ``deploy/webhook.yaml`` (pointed at an in-process HTTPS webhook)
routes it to hami and applies HAMi's defaults; the real kube-scheduler calls the extender, which
places, locks and binds it; the fake node agent completes the allocation. A pod that tries to switch
enforcement off is denied at admission.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from hami.config import DeviceConfig
from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.errors import ApiError
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.protocol.pod import decode_pod_devices
from hami.testing.controlplane import SchedulerHandle
from hami.testing.gpucluster import create_gpu_node, gpu_cards
from hami.testing.stack import Stack, wait_for
from hami.testing.webhooks import create_until_admitted_by_webhook, served_webhook
from hami.webhook.mutate import WebhookPolicy


def plain_pod(
    name: str, namespace: str, limits: dict[str, Any], env: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": "registry.invalid/cuda:12",
        "resources": {"limits": limits},
    }
    if env:
        container["env"] = env
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [container],
            "nodeSelector": {"hami-test": namespace},
            "terminationGracePeriodSeconds": 0,
        },
    }


async def test_webhook_to_bound_pod(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    node = f"{namespace}-n0"
    await create_gpu_node(kube_client, node, gpu_cards(node, n=2, mem=16000), labels={"hami-test": namespace})
    async with (
        served_webhook(kube_client, WebhookPolicy.from_config(DeviceConfig.default()), namespace),
        Stack(kube_config, start_scheduler),
    ):
        pods = api_path("v1", "pods", namespace=namespace)

        async def discard(pod: dict[str, Any]) -> None:
            await kube_client.delete(f"{pods}/{pod['metadata']['name']}")

        created = await create_until_admitted_by_webhook(
            lambda i: kube_client.create(
                pods, plain_pod(f"train-{i}", namespace, {"nvidia.com/gpumem": "3000"})
            ),
            lambda pod: pod["spec"]["schedulerName"] == "hami-scheduler",
            discard=discard,
        )
        limits = created["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "1"  # defaultGPUNum added by the webhook
        name = created["metadata"]["name"]
        path = api_path("v1", "pods", namespace=namespace, name=name)

        async def bound() -> dict[str, Any] | None:
            p = await kube_client.get(path)
            ann = bodies.annotations(p)
            return p if ann.get(keys.BIND_PHASE) == keys.BIND_PHASE_SUCCESS else None

        pod = await wait_for(bound, timeout=60)
        assert pod["spec"]["nodeName"] == node
        [[dev]] = decode_pod_devices(pod["metadata"]["annotations"][keys.VGPU_DEVICES_ALLOCATED])
        assert dev.usedmem == 3000 and dev.uuid.startswith(f"GPU-{node}-")

        # enforcement cannot be switched off by a tenant: denied before it reaches the scheduler
        with pytest.raises(ApiError) as info:
            await kube_client.create(
                api_path("v1", "pods", namespace=namespace),
                plain_pod(
                    "sneaky",
                    namespace,
                    {"nvidia.com/gpu": 1},
                    env=[{"name": "GPU_CORE_UTILIZATION_POLICY", "value": "disable"}],
                ),
            )
        assert info.value.status == 403 and "GPU_CORE_UTILIZATION_POLICY" in str(info.value)
