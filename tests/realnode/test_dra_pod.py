"""DRA mode on a real node: hami's chart with `draPlugin.enabled`, node1 in DRA mode
(`operatingmode: dra`), the real kubelet registering `hami dra-plugin` and calling it, containerd
injecting the claim's CDI device — a pod whose two containers share one claim runs with the
claim's limits in both."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from realnode_chart import IMAGE, ROOT, chart_installed, pods_summary, workload_ready

from hami.kube.client import KubeClient
from hami.kube.errors import NotFoundError
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.protocol.dra import RESOURCE_API
from hami.sandbox.cluster import Sandbox
from hami.sandbox.probe import PROBE, report
from hami.testing.helm import Helm
from hami.testing.stack import wait_for

pytestmark = pytest.mark.integration

DRA_NODE = "node1"


@pytest.fixture(scope="module")
def dra_installed(sandbox: Sandbox) -> Iterator[Helm]:
    fake_node = (ROOT / "examples" / "fake-node-small.yaml").read_text()
    node_config = json.dumps({"nodeconfig": [{"name": DRA_NODE, "operatingmode": "dra"}]})
    # chart_installed merges only the top level: keep the sandbox's devicePlugin values (fakeNode)
    device_plugin = {
        **sandbox.chart_values(fake_node)["devicePlugin"],
        "nodeConfiguration": {"config": node_config},
    }
    extra = {"draPlugin": {"enabled": True}, "devicePlugin": device_plugin}
    with chart_installed(sandbox, extra, fake_node=fake_node) as helm:
        yield helm


async def test_a_pod_whose_containers_share_a_claim_runs_with_its_limits(
    dra_installed: Helm, kc: KubeClient, ns: str
) -> None:
    slice_path = api_path(RESOURCE_API, "resourceslices", name=f"{DRA_NODE}-hami-core-gpu")

    async def published() -> dict[str, Any] | None:
        if not await workload_ready(kc, "daemonsets", "hami-dra-plugin"):
            return None
        try:
            return await kc.get(slice_path)
        except NotFoundError:
            return None

    try:
        stored = await wait_for(published, timeout=180, interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {await pods_summary(kc)}") from None
    assert stored["spec"]["devices"], stored
    # node2 is not in DRA mode: its DRA plugin publishes nothing
    with pytest.raises(NotFoundError):
        await kc.get(api_path(RESOURCE_API, "resourceslices", name="node2-hami-core-gpu"))
    node1 = await kc.get(api_path("v1", "nodes", name=DRA_NODE))
    assert keys.NODE_NVIDIA_REGISTER not in bodies.annotations(node1)

    claim = {
        "metadata": {"name": "shared"},
        "spec": {
            "devices": {
                "requests": [
                    {
                        "name": "gpu",
                        "exactly": {
                            "deviceClassName": keys.DRA_DEVICE_CLASS,
                            "capacity": {"requests": {"memory": "3000Mi", "cores": "30"}},
                        },
                    }
                ]
            }
        },
    }
    await kc.create(api_path(RESOURCE_API, "resourceclaims", namespace=ns), claim)
    containers = [
        {
            "name": name,
            "image": IMAGE,
            "command": ["python3", "-c", PROBE],
            "resources": {"claims": [{"name": "gpu"}]},
        }
        for name in ("a", "b")
    ]
    pod = {
        "metadata": {"name": "dra"},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "resourceClaims": [{"name": "gpu", "resourceClaimName": "shared"}],
            "containers": containers,
        },
    }
    await kc.create(api_path("v1", "pods", namespace=ns), pod)

    async def finished() -> dict[str, Any] | None:
        p = await kc.get(api_path("v1", "pods", namespace=ns, name="dra"))
        return p if p["status"].get("phase") in ("Succeeded", "Failed") else None

    try:
        done = await wait_for(finished, timeout=180, interval=0.5)
    except AssertionError as exc:
        p = await kc.get(api_path("v1", "pods", namespace=ns, name="dra"))
        raise AssertionError(f"{exc}: {p.get('status')}") from None
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["spec"]["nodeName"] == DRA_NODE
    for name in ("a", "b"):
        log = await kc.get_text(
            api_path("v1", "pods", namespace=ns, name="dra") + "/log", params={"container": name}
        )
        seen = report(log)
        assert seen["memory"] == ["3000m"], seen
        assert seen["cards"][0].startswith(f"GPU-fake-{DRA_NODE}-"), seen
        assert seen["preload"].endswith("/vgpu/libvgpu.so"), seen
        assert seen.get("total_mib") == 3000, seen
