"""A capacity-registered vendor's pod through the real flow: webhook -> kube-scheduler -> extender
-> bind -> kubelet admission -> the container running.

The chart is installed with ``device-config.content: "mthreads: {}"`` and a fake node spec whose
``nodes.node1.vendors.mthreads.resources`` makes the fake node agent on node1 serve
``mthreads.com/sgpu-core`` (32 devices) and ``mthreads.com/sgpu-memory`` (192) to node1's kubelet
as two more device-plugin resources beside ``nvidia.com/gpu``. kubelet publishes them as node1's
capacity, which is where HAMi's Mthreads backend reads a node's GPUs from: 32 / 16 = two GPUs of
192 x 512 x 16 / 32 = 49152 MiB. node2 has NVIDIA cards only. HAMi's
``examples/mthreads/default_use.yaml`` pod (no schedulerName) is created.

What the flow reaches, and this test asserts: kubelet publishes the capacity; the webhook routes the
pod to hami-scheduler; the extender places it on node1's higher GPU with HAMi's Mthreads decision
(``hami.io/mthreads-vgpu-devices-allocated``, ``mthreads.com/gpu-index``, ``predicate-node``,
``predicate-time``; Mthreads takes no node lock) and binds it; kubelet admits it, asking the fake
plugin's Allocate for 8 ``sgpu-core`` and 32 ``sgpu-memory`` devices, which answers empty container
responses (hami does not implement Mthreads' allocation: no device reaches the container; Moore
Threads' own plugin would), and the container runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from realnode_chart import chart_installed, created_and_bound, started_pod, vendor_leading, vendor_node_spec

from hami.kube.client import KubeClient
from hami.kube.paths import api_path
from hami.protocol import keys
from hami.sandbox.cluster import Sandbox
from hami.testing.helm import Helm
from hami.testing.stack import wait_for

pytestmark = pytest.mark.integration

MT_NODE, OTHER_NODE = "node1", "node2"
CORE, MEMORY = "mthreads.com/sgpu-core", "mthreads.com/sgpu-memory"
CAPACITY = {CORE: 32, MEMORY: 192}


@pytest.fixture(scope="module")
def installed(sandbox: Sandbox) -> Iterator[Helm]:
    mthreads = {"mthreads": {"resources": CAPACITY}}
    with chart_installed(
        sandbox,
        {"device-config": {"content": "mthreads: {}\n"}},
        fake_node=vendor_node_spec(MT_NODE, mthreads),
    ) as helm:
        yield helm


@pytest.fixture
async def leading(installed: Helm, kc: KubeClient) -> AsyncIterator[None]:
    async with vendor_leading(kc, MT_NODE, []):  # Mthreads writes no node annotation
        yield


#: HAMi v2.10 examples/mthreads/default_use.yaml, its wire content (comments left out)
MT_DEFAULT_USE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "gpushare-pod-default"},
    "spec": {
        "restartPolicy": "OnFailure",
        "containers": [
            {
                "name": "gpushare-pod-1",
                "image": "ubuntu:22.04",  # HAMi's mt-ai/lm-qy2 image; the sandbox has the ubuntu stand-ins
                "imagePullPolicy": "IfNotPresent",
                "command": ["sleep"],
                "args": ["100000"],
                "resources": {"limits": {"mthreads.com/vgpu": 1, MEMORY: 32, CORE: 8}},
            }
        ],
    },
}


async def status_of(kc: KubeClient, node: str, field: str) -> dict[str, str]:
    got: dict[str, str] = (await kc.get(api_path("v1", "nodes", name=node)))["status"].get(field) or {}
    return got


async def test_kubelet_publishes_the_served_capacity_on_its_node_only(leading: None, kc: KubeClient) -> None:
    async def published() -> dict[str, str] | None:
        capacity = await status_of(kc, MT_NODE, "capacity")
        return capacity if all(capacity.get(r) == str(n) for r, n in CAPACITY.items()) else None

    capacity: dict[str, str] = await wait_for(published, timeout=60, interval=0.5)
    assert capacity["nvidia.com/gpu"]  # NVIDIA's resource is served beside them
    assert CORE not in await status_of(kc, OTHER_NODE, "capacity")


async def test_mthreads_example_pod_is_placed_bound_and_runs(leading: None, kc: KubeClient, ns: str) -> None:
    async def allocatable() -> bool:
        have = await status_of(kc, MT_NODE, "allocatable")
        return all(have.get(r) == str(n) for r, n in CAPACITY.items())

    await wait_for(allocatable, timeout=60, interval=0.5)
    name = MT_DEFAULT_USE["metadata"]["name"]
    ann = await created_and_bound(kc, ns, MT_DEFAULT_USE, MT_NODE)
    # equal idle GPUs: the higher index, as HAMi; 32 x 512 MiB and 8 of 16 cores
    assert ann["hami.io/mthreads-vgpu-devices-allocated"] == "node1-mthreads-1,Mthreads,16384,8:;"
    assert ann["mthreads.com/gpu-index"] == "1"
    assert ann["mthreads.com/predicate-node"] == MT_NODE
    assert ann["mthreads.com/predicate-time"].isdigit()
    assert keys.VGPU_DEVICES_ALLOCATED not in ann  # no NVIDIA decision for an Mthreads-only pod
    node = await kc.get(api_path("v1", "nodes", name=MT_NODE))
    assert keys.NODE_LOCK not in (node["metadata"].get("annotations") or {})  # Mthreads takes no lock

    # kubelet admits it through the fake plugin's (empty) Allocate and runs the container
    started = await started_pod(kc, ns, name)
    assert started["status"]["phase"] == "Running", started["status"]
    (status,) = started["status"]["containerStatuses"]
    assert status["ready"], status
