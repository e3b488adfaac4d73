"""DRA mode on a real node: hami's chart with `draPlugin.enabled`, node1 in DRA mode
(`operatingmode: dra`), the real kubelet registering `hami dra-plugin` and calling it, containerd
injecting the claim's CDI device — a pod whose two containers share one claim runs with the
claim's limits in both."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from realnode_chart import IMAGE, NAMESPACE, chart_installed, pods_summary, workload_ready

from hami.kube.client import KubeClient
from hami.kube.errors import NotFoundError
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.protocol.dra import RESOURCE_API
from hami.sandbox.cluster import Sandbox
from hami.sandbox.probe import PROBE, report
from hami.testing.dra import SANDBOX_DEVICES, claim_body
from hami.testing.helm import Helm
from hami.testing.stack import wait_for

pytestmark = pytest.mark.integration

DRA_NODE = "node1"


def gpu_claim(name: str) -> dict[str, Any]:
    request = {
        "name": "gpu",
        "exactly": {
            "deviceClassName": keys.DRA_DEVICE_CLASS,
            "capacity": {"requests": {"memory": "3000Mi", "cores": "30"}},
        },
    }
    return {"metadata": {"name": name}, "spec": {"devices": {"requests": [request]}}}


def claim_pod(
    name: str, claim: str, containers: tuple[str, ...], init: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Containers running the probe, all referencing the claim."""
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 1,
        "resourceClaims": [{"name": "gpu", "resourceClaimName": claim}],
        "containers": [
            {
                "name": c,
                "image": IMAGE,
                "command": ["python3", "-c", PROBE],
                "resources": {"claims": [{"name": "gpu"}]},
            }
            for c in containers
        ],
    }
    if init:
        spec["initContainers"] = init
    return {"metadata": {"name": name}, "spec": spec}


async def finished(kc: KubeClient, ns: str, name: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        p = await kc.get(api_path("v1", "pods", namespace=ns, name=name))
        return p if p["status"].get("phase") in ("Succeeded", "Failed") else None

    try:
        pod: dict[str, Any] = await wait_for(done, timeout=180, interval=0.5)
        return pod
    except AssertionError as exc:
        p = await kc.get(api_path("v1", "pods", namespace=ns, name=name))
        raise AssertionError(f"{exc}: {p.get('status')}") from None


async def assert_limits(kc: KubeClient, ns: str, pod: str, container: str) -> None:
    log = await kc.get_text(
        api_path("v1", "pods", namespace=ns, name=pod) + "/log", params={"container": container}
    )
    seen = report(log)
    assert seen["memory"] == ["3000m"], seen
    assert seen["cards"][0].startswith(f"GPU-fake-{DRA_NODE}-"), seen
    assert seen["preload"].endswith("/vgpu/libvgpu.so"), seen
    assert seen.get("total_mib") == 3000, seen


@pytest.fixture(scope="module")
def dra_installed(sandbox: Sandbox) -> Iterator[Helm]:
    # the sandbox's cards: node1's A100s 0 and 1 are MIG-capable (partitionable devices)
    fake_node = SANDBOX_DEVICES.read_text()
    node_config = json.dumps({"nodeconfig": [{"name": DRA_NODE, "operatingmode": "dra"}]})
    # chart_installed merges only the top level: keep the sandbox's devicePlugin values (fakeNode)
    device_plugin = {
        **sandbox.chart_values(fake_node)["devicePlugin"],
        "nodeConfiguration": {"config": node_config},
    }
    extra = {"draPlugin": {"enabled": True}, "devicePlugin": device_plugin}
    with chart_installed(sandbox, extra, fake_node=fake_node) as helm:
        yield helm


async def slice_published(kc: KubeClient) -> dict[str, Any]:
    """node1's ResourceSlice once the DRA plugin DaemonSet is ready and has published it."""
    slice_path = api_path(RESOURCE_API, "resourceslices", name=f"{DRA_NODE}-hami-core-gpu")

    async def published() -> dict[str, Any] | None:
        if not await workload_ready(kc, "daemonsets", "hami-dra-plugin"):
            return None
        try:
            return await kc.get(slice_path)
        except NotFoundError:
            return None

    try:
        stored: dict[str, Any] = await wait_for(published, timeout=180, interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {await pods_summary(kc)}") from None
    return stored


async def test_a_mig_claim_runs_on_its_mig_instance(dra_installed: Helm, kc: KubeClient, ns: str) -> None:
    """A claim on the MIG DeviceClass for a 1g.5gb placement: kube-scheduler allocates a MIG device
    of node1's MIG-capable A100 by the slice's counters, the plugin makes the instance and the
    container gets it through the CDI device (``NVIDIA_VISIBLE_DEVICES=MIG-…``, no libvgpu.so)."""

    # first in the module: kube-scheduler v1.34 checks every request's capacity against the slice's
    # first device (docs/dra.md), so the MIG request (whose default is the whole card) fits only
    # while no claim shares gpu-0; the shared claims of the tests below then land on gpu-1
    await slice_published(kc)
    profile = f'device.attributes["{keys.DRA_DRIVER}"].{keys.DRA_ATTR_MIG_PROFILE} == "1g.5gb"'
    claim = claim_body("mig", device_class=keys.DRA_MIG_DEVICE_CLASS, selectors=[profile])
    await kc.create(api_path(RESOURCE_API, "resourceclaims", namespace=ns), claim)
    show = "import os; print(os.environ.get('NVIDIA_VISIBLE_DEVICES'), os.path.exists('/etc/ld.so.preload'))"
    pod = claim_pod("mig", "mig", ("main",))
    pod["spec"]["resourceClaims"] = [{"name": "gpu", "resourceClaimName": "mig"}]
    pod["spec"]["containers"][0]["command"] = ["python3", "-c", show]
    await kc.create(api_path("v1", "pods", namespace=ns), pod)
    done = await finished(kc, ns, "mig")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    allocated = await kc.get(api_path(RESOURCE_API, "resourceclaims", namespace=ns, name="mig"))
    [result] = allocated["status"]["allocation"]["devices"]["results"]
    assert (result["pool"], result["device"]) == (DRA_NODE, "gpu-0-mig-1g5gb-0"), result
    log = await kc.get_text(api_path("v1", "pods", namespace=ns, name="mig") + "/log")
    visible, preload = log.split()
    assert visible.startswith("MIG-") and preload == "False", log


async def test_a_pod_whose_containers_share_a_claim_runs_with_its_limits(
    dra_installed: Helm, kc: KubeClient, ns: str
) -> None:
    stored = await slice_published(kc)
    assert stored["spec"]["devices"], stored
    # node2 is not in DRA mode: its DRA plugin publishes nothing
    with pytest.raises(NotFoundError):
        await kc.get(api_path(RESOURCE_API, "resourceslices", name="node2-hami-core-gpu"))
    node1 = await kc.get(api_path("v1", "nodes", name=DRA_NODE))
    assert keys.NODE_NVIDIA_REGISTER not in bodies.annotations(node1)

    await kc.create(api_path(RESOURCE_API, "resourceclaims", namespace=ns), gpu_claim("shared"))
    await kc.create(api_path("v1", "pods", namespace=ns), claim_pod("dra", "shared", ("a", "b")))

    done = await finished(kc, ns, "dra")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["spec"]["nodeName"] == DRA_NODE
    for name in ("a", "b"):
        await assert_limits(kc, ns, "dra", name)


async def test_plugin_restart_between_prepare_and_container_start(
    dra_installed: Helm, sandbox: Sandbox, kc: KubeClient, ns: str
) -> None:
    """The claim is prepared, the DRA plugin pod is replaced while the pod's init container holds
    it back; the container still starts with the claim's limits, and the new plugin instance
    unprepares the claim the old one prepared (from its checkpoint) when the pod is done."""
    node = next(n for n in sandbox.nodes if n.name == DRA_NODE)
    gate = node.private["/tmp/vgpulock"] / f"go-{ns}"
    wait = f"import os, time\nwhile not os.path.exists('/gate/go-{ns}'): time.sleep(0.2)\n"
    init = [
        {
            "name": "hold",
            "image": IMAGE,
            "command": ["python3", "-c", wait],
            "volumeMounts": [{"name": "gate", "mountPath": "/gate"}],
        }
    ]
    pod = claim_pod("held", "held", ("main",), init)
    pod["spec"]["volumes"] = [{"name": "gate", "hostPath": {"path": "/tmp/vgpulock"}}]
    pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": DRA_NODE}
    claim = await kc.create(api_path(RESOURCE_API, "resourceclaims", namespace=ns), gpu_claim("held"))
    await kc.create(api_path("v1", "pods", namespace=ns), pod)
    spec_file = node.state / "cdi" / f"{keys.DRA_DRIVER}-{claim['metadata']['uid']}.json"

    async def holding() -> bool:
        p = await kc.get(api_path("v1", "pods", namespace=ns, name="held"))
        statuses = p["status"].get("initContainerStatuses") or []
        return bool(statuses and "running" in (statuses[0].get("state") or {}))

    await wait_for(holding, timeout=180, interval=0.5)
    assert spec_file.is_file()  # prepared before any container of the pod started

    plugins = api_path("v1", "pods", namespace=NAMESPACE)
    old = next(
        p
        for p in (await kc.list(plugins, label_selector="app.kubernetes.io/component=dra-plugin"))["items"]
        if p["spec"].get("nodeName") == DRA_NODE
    )
    await kc.delete(api_path("v1", "pods", namespace=NAMESPACE, name=old["metadata"]["name"]))

    async def replaced() -> bool:
        for p in (await kc.list(plugins, label_selector="app.kubernetes.io/component=dra-plugin"))["items"]:
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in bodies.conditions(p))
            if p["spec"].get("nodeName") == DRA_NODE and bodies.uid(p) != bodies.uid(old) and ready:
                return True
        return False

    await wait_for(replaced, timeout=120, interval=0.5)
    gate.touch()
    done = await finished(kc, ns, "held")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    await assert_limits(kc, ns, "held", "main")

    async def unprepared() -> bool:
        return not spec_file.exists()

    await wait_for(unprepared, timeout=120, interval=0.5)
