"""kube-scheduler's own DRA allocation against the slices `hami dra-plugin` publishes: consumable
capacity (DRAConsumableCapacity, on in the test control plane) lets two claims share one card's
memory and cores, a third that exceeds what is left stays pending, and the plugin prepares an
allocated claim when called over its socket as the kubelet would."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hami.deviceplugin.sources.fake import FakeSource
from hami.draplugin.kubeops import ClientDraKube
from hami.draplugin.prepare import CDI_KIND
from hami.draplugin.runner import DraNodePlugin
from hami.draplugin.slices import slice_name
from hami.kube.client import KubeClient
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.protocol.dra import RESOURCE_API, claim_allocations
from hami.testing.controlplane import SchedulerHandle
from hami.testing.dra import claim_body, create_device_class, dra_plugin_in
from hami.testing.drakubelet import DraKubelet
from hami.testing.gpucluster import create_gpu_node
from hami.testing.stack import wait_for

pytestmark = pytest.mark.integration

CARD = "GPU-dra-int-0"


def gpu_claim(name: str, memory: str, cores: str) -> dict[str, Any]:
    return claim_body(name, memory=memory, cores=cores)


def claim_pod(name: str, claim: str, node: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "resourceClaims": [{"name": "gpu", "resourceClaimName": claim}],
            "containers": [{"name": "main", "image": "busybox", "resources": {"claims": [{"name": "gpu"}]}}],
        },
    }


@pytest.fixture
async def dra_node(kube_client: KubeClient, namespace: str) -> AsyncIterator[tuple[str, DraNodePlugin, Path]]:
    node = f"{namespace}-n0"
    await create_gpu_node(kube_client, node, [], labels={"kubernetes.io/hostname": node})
    await create_device_class(kube_client)
    root = Path(tempfile.mkdtemp(prefix="hdri", dir="/tmp"))
    source = FakeSource({"cards": [{"uuid": CARD, "memory": 40960, "model": "NVIDIA A100-SXM4-40GB"}]})
    plugin = dra_plugin_in(root, node, source, ClientDraKube(kube_client))
    await plugin.start()
    try:
        yield node, plugin, root
    finally:
        await plugin.stop()
        shutil.rmtree(root, ignore_errors=True)


async def test_scheduler_shares_one_card_by_capacity_and_the_plugin_prepares(
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
    dra_node: tuple[str, DraNodePlugin, Path],
) -> None:
    node, plugin, root = dra_node
    stored = await kube_client.get(api_path(RESOURCE_API, "resourceslices", name=slice_name(node)))
    (device,) = stored["spec"]["devices"]
    # the API server kept the consumable-capacity fields (it drops them with the gate off)
    assert device["allowMultipleAllocations"] is True
    assert device["capacity"]["memory"]["requestPolicy"]["validRange"] == {"min": "1Mi", "step": "1Mi"}
    # stored as written (40960 MiB is published as Kubernetes writes it back, 40Gi): no rewrites
    assert device["capacity"]["memory"]["value"] == "40Gi"
    assert await plugin.refresh() and plugin.publisher.published == 1

    start_scheduler()
    claims = api_path(RESOURCE_API, "resourceclaims", namespace=namespace)
    pods = api_path("v1", "pods", namespace=namespace)
    for name, memory, cores in (("c1", "10000Mi", "30"), ("c2", "20000Mi", "50"), ("c3", "20000Mi", "10")):
        await kube_client.create(claims, gpu_claim(name, memory, cores))
    await kube_client.create(pods, claim_pod("p1", "c1", node))
    await kube_client.create(pods, claim_pod("p2", "c2", node))

    async def allocated(name: str) -> dict[str, Any] | None:
        c = await kube_client.get(api_path(RESOURCE_API, "resourceclaims", namespace=namespace, name=name))
        return c if bodies.status(c).get("allocation") else None

    c1 = await wait_for(lambda: allocated("c1"), timeout=60)
    c2 = await wait_for(lambda: allocated("c2"), timeout=60)
    (a1,) = claim_allocations(c1)
    (a2,) = claim_allocations(c2)
    assert (a1.pool, a1.device, a1.memory_mib, a1.cores) == (node, "gpu-0", 10000, 30)
    assert (a2.pool, a2.device, a2.memory_mib, a2.cores) == (node, "gpu-0", 20000, 50)
    assert a1.share_id and a2.share_id and a1.share_id != a2.share_id

    # 20000 Mi more does not fit in the 10960 Mi left: the third pod stays unschedulable
    await kube_client.create(pods, claim_pod("p3", "c3", node))

    async def unschedulable() -> dict[str, Any] | None:
        p = await kube_client.get(api_path("v1", "pods", namespace=namespace, name="p3"))
        cond = next((c for c in bodies.conditions(p) if c.get("type") == "PodScheduled"), None)
        return p if cond and cond.get("reason") == "Unschedulable" else None

    p3 = await wait_for(unschedulable, timeout=60)
    assert not bodies.node_name(p3)
    assert await allocated("c3") is None

    kubelet = DraKubelet(root / "registry", keys.DRA_DRIVER)
    await kubelet.register()
    resp = await kubelet.prepare((namespace, bodies.uid(c1), "c1"))
    out = resp.claims[bodies.uid(c1)]
    assert out.error == ""
    assert [(d.device_name, list(d.cdi_device_ids)) for d in out.devices] == [
        ("gpu-0", [f"{CDI_KIND}={bodies.uid(c1)}-gpu"])
    ]
    spec = json.loads((root / "cdi" / f"{keys.DRA_DRIVER}-{bodies.uid(c1)}.json").read_text())
    env = spec["devices"][0]["containerEdits"]["env"]
    assert f"{keys.ENV_MEMORY_LIMIT}_0=10000m" in env and f"{keys.ENV_SM_LIMIT}=30" in env
    assert f"{keys.ENV_VISIBLE_DEVICES}={CARD}" in env
