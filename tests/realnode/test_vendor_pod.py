"""A non-NVIDIA pod through the real flow: webhook -> kube-scheduler -> extender -> bind.

The chart is installed with ``device-config.content: "hygon: {}"`` (the Hygon backend on) and a
fake node spec whose ``nodes.node1.vendors`` section makes the fake node agent on node1 write
``hami.io/node-dcu-register`` (HAMi's legacy colon form) beside its NVIDIA registration; node2 has
NVIDIA cards only. HAMi's ``examples/hygon/default_use.yaml`` pod (no schedulerName) is created.

What the flow reaches, and this test asserts: the webhook routes the pod to hami-scheduler;
kube-scheduler (``hygon.com/*`` managed by the extender, ``ignoredByScheduler``) asks the extender,
which places it on node1 on one of its DCUs and writes HAMi's Hygon decision
(``hami.io/dcu-devices-to-allocate`` / ``-allocated``), takes ``hami.io/mutex.lock`` on node1 in
the pod's name and binds with ``hami.io/bind-phase: allocating``. Nothing goes further: Hygon's own
device plugin (not part of hami) would serve ``hygon.com/dcunum`` to kubelet, consume the
decision, set the bind phase and release the lock. kubelet, which knows no device plugin for the
resource, drops the missing extended resource at admission (it may be an extender's) and starts
the container without a device, so the pod runs. The test releases the lock and removes the Hygon
annotation afterwards, as the vendor's plugin and its uninstall would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from realnode_chart import chart_installed, created_and_bound, started_pod, vendor_leading, vendor_node_spec

from hami.kube.client import KubeClient
from hami.kube.paths import api_path
from hami.protocol import keys
from hami.protocol.node import decode_node_devices
from hami.protocol.nodelock import decode_node_lock
from hami.protocol.pod import decode_pod_devices
from hami.sandbox.cluster import Sandbox
from hami.testing.helm import Helm
from hami.testing.stack import wait_for

pytestmark = pytest.mark.integration

HYGON_NODE, OTHER_NODE = "node1", "node2"
DCU_REGISTER = "hami.io/node-dcu-register"
DCU_TO_ALLOCATE, DCU_ALLOCATED = "hami.io/dcu-devices-to-allocate", "hami.io/dcu-devices-allocated"
DCUS = ("DCU-fake-node1-0", "DCU-fake-node1-1")


@pytest.fixture(scope="module")
def installed(sandbox: Sandbox) -> Iterator[Helm]:
    hygon = {"hygon": {"count": 2, "card": {"type": "DCU-Z100", "memory": 32768, "slots": 4}}}
    with chart_installed(
        sandbox, {"device-config": {"content": "hygon: {}\n"}}, fake_node=vendor_node_spec(HYGON_NODE, hygon)
    ) as helm:
        yield helm


@pytest.fixture
async def leading(installed: Helm, kc: KubeClient) -> AsyncIterator[None]:
    async with vendor_leading(kc, HYGON_NODE, [DCU_REGISTER]):
        yield


#: HAMi v2.10 examples/hygon/default_use.yaml, its wire content (comments left out)
HYGON_DEFAULT_USE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "alexnet-tf-gpu-pod-mem", "labels": {"purpose": "demo-tf-amdgpu"}},
    "spec": {
        "containers": [
            {
                "name": "alexnet-tf-gpu-container",
                "image": "ubuntu:22.04",  # HAMi's pytorch:resnet50; the sandbox has the ubuntu stand-ins
                "command": ["bash", "-c", "sleep 86400"],  # HAMi's sleep infinity, in the stand-in's shell
                "resources": {
                    "limits": {"hygon.com/dcunum": 1, "hygon.com/dcumem": 2000, "hygon.com/dcucores": 60}
                },
            }
        ]
    },
}


async def test_the_fake_node_agent_registers_hygon_on_its_node_only(leading: None, kc: KubeClient) -> None:
    async def registered() -> dict[str, str] | None:
        node = await kc.get(api_path("v1", "nodes", name=HYGON_NODE))
        ann: dict[str, str] = node["metadata"].get("annotations") or {}
        return ann if DCU_REGISTER in ann and keys.NODE_NVIDIA_REGISTER in ann else None

    ann: dict[str, str] = await wait_for(registered, timeout=60, interval=0.5)
    assert ann[DCU_REGISTER] == (
        "DCU-fake-node1-0,4,32768,100,DCU-Z100,0,true,0,hami-core:DCU-fake-node1-1,4,32768,100,DCU-Z100,0,true,1,hami-core:"
    )
    assert [d.id for d in decode_node_devices(ann[DCU_REGISTER])] == list(DCUS)
    other = await kc.get(api_path("v1", "nodes", name=OTHER_NODE))
    assert DCU_REGISTER not in (other["metadata"].get("annotations") or {})


async def test_hygon_example_pod_is_placed_and_bound_with_hygon_decision(
    leading: None, kc: KubeClient, ns: str
) -> None:
    async def registered() -> bool:
        node = await kc.get(api_path("v1", "nodes", name=HYGON_NODE))
        return DCU_REGISTER in (node["metadata"].get("annotations") or {})

    await wait_for(registered, timeout=60, interval=0.5)
    name = HYGON_DEFAULT_USE["metadata"]["name"]
    ann = await created_and_bound(kc, ns, HYGON_DEFAULT_USE, HYGON_NODE)
    assert ann[keys.BIND_PHASE] == keys.BIND_PHASE_ALLOCATING  # no Hygon device plugin to go further
    assert ann[DCU_TO_ALLOCATE] == ann[DCU_ALLOCATED]
    ((dev,),) = decode_pod_devices(ann[DCU_ALLOCATED])
    # equal idle cards: the highest index, as HAMi
    assert (dev.uuid, dev.type, dev.usedmem, dev.usedcores) == (DCUS[1], "DCU", 2000, 60)
    # NVIDIA's decision keys are not written for a Hygon-only pod
    assert keys.VGPU_DEVICES_ALLOCATED not in ann and keys.VGPU_DEVICES_TO_ALLOCATE not in ann
    # the node lock names this pod: Hygon's device plugin would release it
    node = await kc.get(api_path("v1", "nodes", name=HYGON_NODE))
    lock = decode_node_lock(node["metadata"]["annotations"][keys.NODE_LOCK])
    assert lock.owned_by(ns, name)

    # kubelet drops the extended resource it has no device plugin for and runs the container
    started = await started_pod(kc, ns, name)
    assert started["status"]["phase"] == "Running", started["status"]
