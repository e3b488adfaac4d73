"""HAMi's Ascend example pod through the real flow: webhook -> kube-scheduler -> extender -> bind.

The chart is installed with ``device-config.content: "vnpus: {}"`` (hami's default Ascend chips on)
and a fake node spec whose ``nodes.node1.vendors.vnpus`` entry makes the fake node agent on node1
write ``hami.io/node-register-Ascend910B3`` (HAMi's JSON with each card's ``custominfo.NetworkID``)
and ``hami-vnpu-core: "false"``, as the Ascend device plugin does. HAMi's
``examples/ascend/job-910B3.yaml`` pod (no schedulerName) is created.

The flow reaches, and this test asserts: the chart's webhook matchConditions send the pod to the
webhook, which routes it to hami-scheduler and sets its memory to the ``vir05_1c_16g`` template;
kube-scheduler (``huawei.com/*`` managed by the extender) asks the extender, which places it on
node1, writes HAMi's Ascend decision, takes ``hami.io/mutex.lock`` in the pod's name and binds
with ``hami.io/bind-phase: allocating``. The Ascend device plugin (not part of hami) would go
further; the test releases the lock and removes the registration afterwards, as it would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from realnode_chart import bound_pod, chart_installed, vendor_leading, vendor_node_spec

from hami.devices.ascend import decode_network_ids
from hami.kube.client import KubeClient
from hami.kube.paths import api_path
from hami.protocol import keys
from hami.protocol.nodelock import decode_node_lock
from hami.sandbox.cluster import Sandbox
from hami.testing.helm import Helm
from hami.testing.stack import wait_for

pytestmark = pytest.mark.integration

NPU_NODE = "node1"
REGISTER = "hami.io/node-register-Ascend910B3"
ALLOCATED = "hami.io/Ascend910B3-devices-allocated"
MEM = "huawei.com/Ascend910B3-memory"


#: two Ascend 910B3 NPUs on node1, as the Ascend device plugin registers them
NPUS = {
    "vnpus": {
        "chip": "Ascend910B3",
        "annotations": {keys.ASCEND_NODE_HAMI_CORE: "false"},
        "count": 2,
        "card": {"memory": 65536, "cores": 20, "slots": 4, "custominfo": {"NetworkID": 0}},
    }
}


@pytest.fixture(scope="module")
def installed(sandbox: Sandbox) -> Iterator[Helm]:
    with chart_installed(
        sandbox, {"device-config": {"content": "vnpus: {}\n"}}, fake_node=vendor_node_spec(NPU_NODE, NPUS)
    ) as helm:
        yield helm


@pytest.fixture
async def leading(installed: Helm, kc: KubeClient) -> AsyncIterator[None]:
    async with vendor_leading(kc, NPU_NODE, [REGISTER, keys.ASCEND_NODE_HAMI_CORE]):
        yield


#: HAMi v2.10 examples/ascend/job-910B3.yaml, its wire content (comments left out)
JOB_910B3: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "ascend910b3-job"},
    "spec": {
        "containers": [
            {
                "name": "ubuntu-container",
                "image": "ubuntu:22.04",  # HAMi's ascend-mindspore image; the sandbox has the ubuntu stand-ins
                "command": ["bash", "-c", "sleep 86400"],
                "resources": {"limits": {"huawei.com/Ascend910B3": 1, MEM: 2000}},
            }
        ]
    },
}


async def test_ascend_example_pod_is_admitted_placed_and_bound(
    leading: None, kc: KubeClient, ns: str
) -> None:
    async def registered() -> dict[str, str] | None:
        node = await kc.get(api_path("v1", "nodes", name=NPU_NODE))
        ann: dict[str, str] = node["metadata"].get("annotations") or {}
        return ann if REGISTER in ann else None

    node_ann: dict[str, str] = await wait_for(registered, timeout=60, interval=0.5)
    assert decode_network_ids(node_ann[REGISTER]) == {
        "Ascend910B3-fake-node1-0": 0,
        "Ascend910B3-fake-node1-1": 0,
    }
    assert node_ann[keys.ASCEND_NODE_HAMI_CORE] == "false"

    created = await kc.create(api_path("v1", "pods", namespace=ns), JOB_910B3)
    assert created["spec"]["schedulerName"] == "hami-scheduler"  # the webhook routed it
    assert created["spec"]["containers"][0]["resources"]["limits"][MEM] == "16384"  # vir05_1c_16g
    name = JOB_910B3["metadata"]["name"]
    pod = await bound_pod(kc, ns, name)
    assert pod["spec"]["nodeName"] == NPU_NODE
    ann = pod["metadata"]["annotations"]
    assert ann[keys.BIND_PHASE] == keys.BIND_PHASE_ALLOCATING  # no Ascend device plugin to go further
    assert ann[ALLOCATED] == "Ascend910B3-fake-node1-1,Ascend910B3,16384,0:;"
    assert ann["hami.io/Ascend910B3-devices-to-allocate"] == ann[ALLOCATED]
    assert orjson.loads(ann["huawei.com/Ascend910B3"]) == [
        {"UUID": "Ascend910B3-fake-node1-1", "temp": "vir05_1c_16g", "memory": 16384}
    ]
    assert ann[keys.PREDICATE_TIME] == ann[keys.VGPU_TIME]
    node = await kc.get(api_path("v1", "nodes", name=NPU_NODE))
    assert decode_node_lock(node["metadata"]["annotations"][keys.NODE_LOCK]).owned_by(ns, name)
