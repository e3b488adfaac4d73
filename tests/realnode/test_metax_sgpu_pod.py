"""A Metax sGPU pod through the real flow: webhook -> kube-scheduler -> extender -> bind -> kubelet.

The chart is installed with ``device-config.content: "metax: {}"`` and a fake node spec whose
``nodes.node1.vendors.metax`` section makes the fake node agent on node1 write
``metax-tech.com/node-gpu-devices`` (Metax's own JSON, MetaLink zone and QoS policy included)
beside its NVIDIA registration. HAMi's ``examples/metax/sgpu/default_use.yaml`` pod (no
schedulerName, no QoS policy) is created.

What the flow reaches, and this test asserts: the webhook routes the pod to hami-scheduler and
gives it ``metax-tech.com/sgpu-qos-policy: best-effort``; the extender places it on node1's
sGPU card, writes HAMi's and Metax's decision annotations, takes ``hami.io/mutex.lock`` in the
pod's name and binds it (``allocating``: Metax's device plugin, not part of hami, would go on);
kubelet, with no device plugin for ``metax-tech.com/*``, runs the container without a device.
The test releases the lock and removes the registration afterwards, as Metax's plugin would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from realnode_chart import bound_pod, chart_installed, vendor_leading, vendor_node_spec

from hami.kube.client import KubeClient
from hami.kube.paths import api_path
from hami.protocol import keys
from hami.protocol.nodelock import decode_node_lock
from hami.sandbox.cluster import Sandbox
from hami.testing.helm import Helm
from hami.testing.stack import wait_for

pytestmark = pytest.mark.integration

NODE = "node1"
CARD = "Metax-SGPU-fake-node1-0"


@pytest.fixture(scope="module")
def installed(sandbox: Sandbox) -> Iterator[Helm]:
    # one 64 GiB sGPU card on node1, in MetaLink zone 1, registered in best-effort
    custom = {"linkZone": 1, "qosPolicy": "best-effort"}
    metax = {"metax": {"card": {"memory": 65536, "slots": 16, "custominfo": custom}}}
    spec = vendor_node_spec(NODE, metax)
    with chart_installed(sandbox, {"device-config": {"content": "metax: {}\n"}}, fake_node=spec) as helm:
        yield helm


@pytest.fixture
async def leading(installed: Helm, kc: KubeClient) -> AsyncIterator[None]:
    async with vendor_leading(kc, NODE, [keys.METAX_SGPU_DEVICES]):
        yield


#: HAMi v2.10 examples/metax/sgpu/default_use.yaml (comments left out; the sandbox's ubuntu stand-in)
METAX_DEFAULT_USE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "gpu-pod"},
    "spec": {
        "containers": [
            {
                "name": "ubuntu-container",
                "image": "ubuntu:22.04",
                "imagePullPolicy": "IfNotPresent",
                "command": ["bash", "-c", "sleep 86400"],
                "resources": {
                    "limits": {
                        "metax-tech.com/sgpu": 1,
                        "metax-tech.com/vcore": 60,
                        "metax-tech.com/vmemory": 4,
                    }
                },
            }
        ]
    },
}


async def test_metax_sgpu_example_pod_is_defaulted_placed_bound_and_run(
    leading: None, kc: KubeClient, ns: str
) -> None:
    async def registered() -> str | None:
        node = await kc.get(api_path("v1", "nodes", name=NODE))
        value: str | None = (node["metadata"].get("annotations") or {}).get(keys.METAX_SGPU_DEVICES)
        return value

    inventory = await wait_for(registered, timeout=60, interval=0.5)
    assert orjson.loads(inventory) == [
        {
            "uuid": CARD,
            "totalDevCount": 16,
            "totalCompute": 100,
            "totalVRam": 65536,
            "healthy": True,
            "qosPolicy": "best-effort",
            "linkZone": 1,
        }
    ]
    created = await kc.create(api_path("v1", "pods", namespace=ns), METAX_DEFAULT_USE)
    assert created["spec"]["schedulerName"] == "hami-scheduler"
    assert created["metadata"]["annotations"][keys.METAX_SGPU_QOS_POLICY] == "best-effort"
    path = api_path("v1", "pods", namespace=ns, name="gpu-pod")
    pod = await bound_pod(kc, ns, "gpu-pod")
    ann = pod["metadata"]["annotations"]
    assert pod["spec"]["nodeName"] == NODE and ann[keys.VGPU_NODE] == NODE
    assert ann[keys.BIND_PHASE] == keys.BIND_PHASE_ALLOCATING  # no Metax device plugin to go further
    assert ann["hami.io/metax-sgpu-devices-allocated"] == f"{CARD},Metax-SGPU,4096,60:;"
    assert ann["hami.io/metax-sgpu-devices-to-allocate"] == f"{CARD},Metax-SGPU,4096,60:;"
    assert ann[keys.METAX_SGPU_ALLOCATED] == f'[[{{"uuid":"{CARD}","compute":60,"vRam":4096}}]]'
    assert ann[keys.METAX_PREDICATE_TIME].isdigit()
    assert keys.VGPU_DEVICES_ALLOCATED not in ann
    node = await kc.get(api_path("v1", "nodes", name=NODE))
    assert decode_node_lock(node["metadata"]["annotations"][keys.NODE_LOCK]).owned_by(ns, "gpu-pod")

    async def running() -> str | None:
        phase: str | None = (await kc.get(path))["status"].get("phase")
        return phase if phase in ("Running", "Succeeded", "Failed") else None

    assert await wait_for(running, timeout=120, interval=0.5) == "Running"
