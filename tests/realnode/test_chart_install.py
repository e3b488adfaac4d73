"""hami installed by its own chart on a real node, then used as a user would.

``helm install charts/hami`` with the locally built images: kube-scheduler + extender + webhook in
the scheduler pod, the device plugin (fake device source) in its DaemonSet with the host installer
in front. Then a plain GPU pod (no schedulerName) goes webhook -> kube-scheduler -> extender ->
kubelet Allocate -> a running container that sees its slice, and a pod that cannot fit is told why.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hami.kube.client import KubeClient
from hami.kube.errors import KubeError
from hami.kube.paths import api_path
from hami.protocol import keys
from hami.sandbox.cluster import Sandbox
from hami.sandbox.probe import CUDA_OUT_OF_MEMORY, PROBE, report
from hami.testing.helm import Helm, HelmMissingError, find_helm
from hami.testing.prereq import missing
from hami.testing.stack import assert_no_overcommit, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RELEASE, NAMESPACE = "hami", "hami-system"
NODE = "node1"
CARDS, SPLIT = 2, 10


@pytest.fixture(scope="module")
def installed(sandbox: Sandbox) -> Iterator[Helm]:
    """The chart installed into the sandbox (uninstalled again at the end of the module)."""
    assert sandbox.cp is not None
    try:
        helm = Helm(find_helm())
    except HelmMissingError as exc:
        missing(str(exc), integration=True)
    values = sandbox.chart_values((ROOT / "examples" / "fake-node-small.yaml").read_text())
    kubeconfig = str(sandbox.cp.kubeconfig_path)
    helm.release(
        "install",
        RELEASE,
        namespace=NAMESPACE,
        kubeconfig=kubeconfig,
        chart=ROOT / "charts" / "hami",
        values=values,
    )
    try:
        yield helm
    finally:
        helm.release("uninstall", RELEASE, namespace=NAMESPACE, kubeconfig=kubeconfig)


async def _ready(kc: KubeClient, kind: str, name: str) -> bool:
    obj = await kc.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/{kind}/{name}")
    status = obj.get("status") or {}
    if kind == "deployments":
        return bool(status.get("availableReplicas", 0) >= (obj["spec"].get("replicas") or 1))
    return bool(
        status.get("desiredNumberScheduled", 0) >= 1
        and status.get("numberReady") == status.get("desiredNumberScheduled")
    )


@pytest.fixture
async def leading(installed: Helm, kc: KubeClient) -> None:
    """hami is up and its extender leads: the scheduler pod's /readyz (through the API server's pod
    proxy) says "ok", not "ok (follower)" — the extender follows kube-scheduler's Lease, and until it
    sees it, kube-scheduler's first attempts are answered "not the leader" and retried later."""

    async def ready() -> bool:
        if not (
            await _ready(kc, "deployments", "hami-scheduler")
            and await _ready(kc, "daemonsets", "hami-device-plugin")
        ):
            return False
        pods = await kc.list(
            api_path("v1", "pods", namespace=NAMESPACE),
            label_selector="app.kubernetes.io/component=scheduler",
        )
        for p in pods["items"]:
            proxy = (
                f"{api_path('v1', 'pods', namespace=NAMESPACE, name=p['metadata']['name'])}:9395/proxy/readyz"
            )
            try:
                said = await kc.get_text(proxy)
            except KubeError:
                continue
            if said.strip() == "ok":
                return True
        return False

    try:
        await wait_for(ready, timeout=180, interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {await _pods_summary(kc)}") from None


async def _pods_summary(kc: KubeClient) -> list[Any]:
    pods = (await kc.get(api_path("v1", "pods", namespace=NAMESPACE))).get("items") or []
    return [
        (p["metadata"]["name"], p["status"].get("phase"), p["status"].get("containerStatuses")) for p in pods
    ]


async def test_chart_components_run_on_the_node(installed: Helm, sandbox: Sandbox, kc: KubeClient) -> None:
    async def running() -> bool:
        return await _ready(kc, "deployments", "hami-scheduler") and await _ready(
            kc, "daemonsets", "hami-device-plugin"
        )

    try:
        await wait_for(running, timeout=180, interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {await _pods_summary(kc)}") from None

    async def registered() -> bool:
        node = await kc.get(api_path("v1", "nodes", name=NODE))
        alloc = int((node["status"].get("allocatable") or {}).get("nvidia.com/gpu", "0"))
        return alloc == CARDS * SPLIT and keys.NODE_NVIDIA_REGISTER in node["metadata"]["annotations"]

    await wait_for(registered, timeout=60, interval=0.5)
    # the installer (init container) put libvgpu.so and ld.so.preload on the node's hook path
    vgpu = sandbox.state / "hook" / "vgpu"
    assert (vgpu / "libvgpu.so").stat().st_size > 0
    assert (vgpu / "ld.so.preload").read_text().strip() == str(vgpu / "libvgpu.so")


async def test_plain_gpu_pod_runs_with_its_slice(leading: None, kc: KubeClient, ns: str) -> None:
    pod = {
        "metadata": {"name": "train"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "hami.local/hami:0.1.0",
                    "command": ["python3", "-c", PROBE],
                    "resources": {"limits": {"nvidia.com/gpu": 1, "nvidia.com/gpumem": 4000}},
                }
            ],
        },
    }
    created = await kc.create(api_path("v1", "pods", namespace=ns), pod)
    assert created["spec"]["schedulerName"] == "hami-scheduler"  # the webhook routed it

    async def finished() -> dict[str, Any] | None:
        p = await kc.get(api_path("v1", "pods", namespace=ns, name="train"))
        return p if p["status"].get("phase") in ("Succeeded", "Failed") else None

    done: dict[str, Any] = await wait_for(finished, timeout=120, interval=0.5)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["spec"]["nodeName"] == NODE
    assert done["metadata"]["annotations"][keys.BIND_PHASE] == keys.BIND_PHASE_SUCCESS
    seen = report(await kc.get_text(api_path("v1", "pods", namespace=ns, name="train") + "/log"))
    assert seen["memory"] == ["4000m"] and seen["cards"][0].startswith(f"GPU-fake-{NODE}-")
    assert seen["preload"].endswith("/vgpu/libvgpu.so")
    # the CUDA driver API inside the container reports the slice and refuses more
    assert seen.get("total_mib") == 4000, json.dumps(seen)
    assert (seen["alloc_half"], seen["alloc_beyond"]) == (0, CUDA_OUT_OF_MEMORY)


async def test_a_pod_that_cannot_fit_is_told_why(leading: None, kc: KubeClient, ns: str) -> None:
    pod = {
        "metadata": {"name": "too-big"},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "hami.local/hami:0.1.0",
                    "command": ["python3", "-c", "pass"],
                    "resources": {"limits": {"nvidia.com/gpu": 1, "nvidia.com/gpumem": 100000}},
                }
            ]
        },
    }
    await kc.create(api_path("v1", "pods", namespace=ns), pod)

    async def reasons() -> list[str]:
        events = (await kc.get(api_path("v1", "events", namespace=ns))).get("items") or []
        return [
            str(e.get("message"))
            for e in events
            if (e.get("involvedObject") or {}).get("name") == "too-big"
            and e.get("reason") == "FailedScheduling"
            # hami's verdict, not a transient "not the leader" from before the extender led
            and "container 'main'" in str(e.get("message"))
        ]

    messages = await wait_for(reasons, timeout=60, interval=0.5)
    # kube-scheduler's event carries hami's reason: which container asks for what, and why no card fits
    assert any(
        "container 'main'" in m and "nvidia.com/gpumem: 100000 MiB" in m and "largest" in m for m in messages
    ), messages


def _gpu_pod(name: str, limits: dict[str, Any], script: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": "hami.local/hami:0.1.0",
                    "command": ["python3", "-c", script],
                    "resources": {"limits": limits},
                }
            ],
        },
    }


async def _phase(kc: KubeClient, ns: str, name: str, phases: tuple[str, ...]) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        p = await kc.get(api_path("v1", "pods", namespace=ns, name=name))
        return p if p["status"].get("phase") in phases else None

    try:
        pod: dict[str, Any] = await wait_for(reached, timeout=120, interval=0.5)
    except AssertionError:
        got = await kc.get(api_path("v1", "pods", namespace=ns, name=name))
        events = (await kc.get(api_path("v1", "events", namespace=ns))).get("items") or []
        seen = [(e.get("involvedObject", {}).get("name"), e.get("reason"), e.get("message")) for e in events]
        raise AssertionError(
            f"pod {name} never reached {phases}: status {got['status']}, annotations "
            f"{got['metadata'].get('annotations')}, events {seen}"
        ) from None
    return pod


async def test_device_plugin_pod_deleted_comes_back_and_running_pods_keep_their_cards(
    leading: None, kc: KubeClient, ns: str
) -> None:
    """The DaemonSet replaces a deleted plugin pod, which registers with kubelet again; a pod
    running meanwhile keeps its card untouched, and a pod admitted afterwards gets Allocate."""
    await kc.create(
        api_path("v1", "pods", namespace=ns),
        _gpu_pod(
            "keeper", {"nvidia.com/gpu": 1, "nvidia.com/gpumem": 2000}, "import time; time.sleep(10**6)"
        ),
    )
    keeper = await _phase(kc, ns, "keeper", ("Running",))
    allocation = keeper["metadata"]["annotations"][keys.VGPU_DEVICES_ALLOCATED]
    selector = "app.kubernetes.io/component=device-plugin"
    pods = api_path("v1", "pods", namespace=NAMESPACE)
    (old,) = (await kc.list(pods, label_selector=selector))["items"]
    await kc.request("DELETE", f"{pods}/{old['metadata']['name']}", params={"gracePeriodSeconds": 0})

    async def replaced() -> str | None:
        for p in (await kc.list(pods, label_selector=selector))["items"]:
            ready = any(c.get("ready") for c in p["status"].get("containerStatuses") or [])
            if p["metadata"]["uid"] != old["metadata"]["uid"] and ready:
                log = await kc.get_text(
                    f"{pods}/{p['metadata']['name']}/log", params={"container": "device-plugin"}
                )
                if "registered nvidia.com/gpu with kubelet" in log:
                    return str(p["metadata"]["name"])
        return None

    await wait_for(replaced, timeout=120, interval=0.5)
    await kc.create(
        api_path("v1", "pods", namespace=ns),
        _gpu_pod("after", {"nvidia.com/gpu": 1, "nvidia.com/gpumem": 2000}, "pass"),
    )
    after = await _phase(kc, ns, "after", ("Succeeded", "Failed"))
    assert after["status"]["phase"] == "Succeeded", after["status"]
    keeper = await kc.get(api_path("v1", "pods", namespace=ns, name="keeper"))
    assert keeper["status"]["phase"] == "Running"
    assert keeper["status"]["containerStatuses"][0]["restartCount"] == 0
    assert keeper["metadata"]["annotations"][keys.VGPU_DEVICES_ALLOCATED] == allocation
    await assert_no_overcommit(kc, ns, [NODE])


async def test_pods_deleted_before_they_start_leave_no_reservation_or_lock(
    leading: None, kc: KubeClient, ns: str
) -> None:
    """Both cards asked for whole, the pods deleted at once: afterwards both cards are free again
    for two new whole-card pods, and the node lock is not left behind."""
    whole = {"nvidia.com/gpu": 1, "nvidia.com/gpumem-percentage": 100}
    for i in range(CARDS):
        await kc.create(
            api_path("v1", "pods", namespace=ns),
            _gpu_pod(f"gone-{i}", whole, "import time; time.sleep(10**6)"),
        )
    for i in range(CARDS):
        await kc.request(
            "DELETE", api_path("v1", "pods", namespace=ns, name=f"gone-{i}"), params={"gracePeriodSeconds": 0}
        )
    for i in range(CARDS):
        await kc.create(api_path("v1", "pods", namespace=ns), _gpu_pod(f"next-{i}", whole, "pass"))
    for i in range(CARDS):
        done = await _phase(kc, ns, f"next-{i}", ("Succeeded", "Failed"))
        assert done["status"]["phase"] == "Succeeded", done["status"]

    async def unlocked() -> bool:
        node = await kc.get(api_path("v1", "nodes", name=NODE))
        return keys.NODE_LOCK not in (node["metadata"].get("annotations") or {})

    await wait_for(unlocked, timeout=30, interval=0.5)
