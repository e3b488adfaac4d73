"""hami installed by its own chart on a real node, then used as a user would.

``helm install charts/hami`` with the locally built images: kube-scheduler + extender + webhook in
the scheduler pod, the device plugin (fake device source) in its DaemonSet with the host installer
in front. Then a plain GPU pod (no schedulerName) goes webhook -> kube-scheduler -> extender ->
kubelet Allocate -> a running container that sees its slice, and a pod that cannot fit is told why.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from realnode_chart import (
    HOLD,
    NAMESPACE,
    gpu_pod,
    pods_summary,
    probe_report,
    workload_ready,
)

from hami.kube.client import KubeClient
from hami.kube.paths import api_path
from hami.protocol import keys
from hami.sandbox.cluster import Sandbox
from hami.sandbox.probe import CUDA_OUT_OF_MEMORY, PROBE, report
from hami.testing.helm import Helm
from hami.testing.stack import assert_no_overcommit, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NODES = ("node1", "node2")
CARDS, SPLIT = 2, 10  # per node (examples/fake-node-small.yaml; devicePlugin.deviceSplitCount)


async def test_chart_components_run_on_the_node(installed: Helm, sandbox: Sandbox, kc: KubeClient) -> None:
    async def running() -> bool:
        return await workload_ready(kc, "deployments", "hami-scheduler") and await workload_ready(
            kc, "daemonsets", "hami-device-plugin"
        )

    try:
        await wait_for(running, timeout=180, interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {await pods_summary(kc)}") from None

    async def registered() -> bool:
        for name in NODES:
            node = await kc.get(api_path("v1", "nodes", name=name))
            alloc = int((node["status"].get("allocatable") or {}).get("nvidia.com/gpu", "0"))
            if alloc != CARDS * SPLIT or keys.NODE_NVIDIA_REGISTER not in node["metadata"]["annotations"]:
                return False
        return True

    await wait_for(registered, timeout=60, interval=0.5)
    # on each node the installer (init container) put libvgpu.so and ld.so.preload on that node's
    # own hook path (the chart's gpuHookPath, private to each node like on separate machines)
    for node in sandbox.nodes:
        own = node.state / "hook" / "vgpu"
        assert (own / "libvgpu.so").stat().st_size > 0
        assert (own / "ld.so.preload").read_text().strip() == str(sandbox.hook_path / "vgpu" / "libvgpu.so")


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
    node = done["spec"]["nodeName"]
    assert node in NODES
    assert done["metadata"]["annotations"][keys.BIND_PHASE] == keys.BIND_PHASE_SUCCESS
    seen = report(await kc.get_text(api_path("v1", "pods", namespace=ns, name="train") + "/log"))
    assert seen["memory"] == ["4000m"] and seen["cards"][0].startswith(f"GPU-fake-{node}-")
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
    return gpu_pod(name, limits, ["python3", "-c", script])


async def _phase(
    kc: KubeClient, ns: str, name: str, phases: tuple[str, ...], timeout: float = 120
) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        p = await kc.get(api_path("v1", "pods", namespace=ns, name=name))
        return p if p["status"].get("phase") in phases else None

    try:
        pod: dict[str, Any] = await wait_for(reached, timeout=timeout, interval=0.5)
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
    node = keeper["spec"]["nodeName"]
    selector = "app.kubernetes.io/component=device-plugin"
    pods = api_path("v1", "pods", namespace=NAMESPACE)
    (old,) = [
        p
        for p in (await kc.list(pods, label_selector=selector))["items"]
        if p["spec"].get("nodeName") == node
    ]
    await kc.request("DELETE", f"{pods}/{old['metadata']['name']}", params={"gracePeriodSeconds": 0})

    async def started() -> tuple[str, datetime] | None:
        for p in (await kc.list(pods, label_selector=selector))["items"]:
            if p["metadata"]["uid"] == old["metadata"]["uid"] or p["spec"].get("nodeName") != node:
                continue
            for c in p["status"].get("containerStatuses") or []:
                since = ((c.get("state") or {}).get("running") or {}).get("startedAt")
                if c["name"] == "device-plugin" and since:
                    return str(p["metadata"]["name"]), datetime.fromisoformat(since)
        return None

    new, since = await wait_for(started, timeout=120, interval=0.2)

    async def registered() -> bool:
        log = await kc.get_text(f"{pods}/{new}/log", params={"container": "device-plugin"})
        return "registered nvidia.com/gpu with kubelet" in log

    await wait_for(registered, timeout=30, interval=0.2)
    # within 5 s of its container starting (startedAt has whole seconds: one more is allowed)
    took = (datetime.now(UTC) - since).total_seconds()
    assert took <= 6.0, f"the replacement plugin took {took:.1f} s to register"

    async def slices_back() -> bool:
        got = await kc.get(api_path("v1", "nodes", name=node))
        return int((got["status"].get("allocatable") or {}).get("nvidia.com/gpu", "0")) == CARDS * SPLIT

    await wait_for(slices_back, timeout=30, interval=0.2)
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
    await assert_no_overcommit(kc, ns, list(NODES))


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
        for name in NODES:
            node = await kc.get(api_path("v1", "nodes", name=name))
            if keys.NODE_LOCK in (node["metadata"].get("annotations") or {}):
                return False
        return True

    await wait_for(unlocked, timeout=30, interval=0.5)


BINPACK = {"hami.io/node-scheduler-policy": "binpack", "hami.io/gpu-scheduler-policy": "binpack"}


async def test_two_pods_on_one_card_each_see_their_own_limit_and_region(
    leading: None, sandbox: Sandbox, kc: KubeClient, ns: str
) -> None:
    """Two pods packed onto one card: each CUDA program sees its own memory limit, holds half of it
    while the other runs, and its own accounting shows only its own allocation — each container has
    a usage region of its own on its node, never a shared one."""
    uids: dict[str, str] = {}
    seen: dict[str, dict[str, Any]] = {}
    for name, mem in (("share-a", 3000), ("share-b", 5000)):
        pod = _gpu_pod(name, {"nvidia.com/gpu": 1, "nvidia.com/gpumem": mem}, HOLD)
        pod["metadata"]["annotations"] = BINPACK
        await kc.create(api_path("v1", "pods", namespace=ns), pod)
        running = await _phase(kc, ns, name, ("Running",))
        uids[name] = running["metadata"]["uid"]
        seen[name] = await probe_report(kc, ns, name, timeout=60)
    a = await kc.get(api_path("v1", "pods", namespace=ns, name="share-a"))
    b = await kc.get(api_path("v1", "pods", namespace=ns, name="share-b"))
    assert a["spec"]["nodeName"] == b["spec"]["nodeName"]
    assert seen["share-a"]["cards"] == seen["share-b"]["cards"] and len(seen["share-a"]["cards"]) == 1
    for name, mem in (("share-a", 3000), ("share-b", 5000)):
        got = seen[name]
        assert got["total_mib"] == mem and got["alloc_half"] == 0, got
        # only its own half is counted, although the other pod holds memory on the same card
        assert got["free_after_half_mib"] == mem - mem // 2, got
        assert got["alloc_beyond"] == CUDA_OUT_OF_MEMORY, got
    # each container's region is a file in a directory of its own on the node's hook path
    node = next(n for n in sandbox.nodes if n.name == a["spec"]["nodeName"])
    regions = []
    for name, uid in uids.items():
        own = node.state / "hook" / "vgpu" / "containers" / f"{uid}_main"
        files = sorted(own.glob("*.cache"))
        assert len(files) == 1, (name, files)
        assert Path(seen[name]["region"]).name == files[0].name
        regions.append(files[0].stat().st_ino)
    assert regions[0] != regions[1]
    await assert_no_overcommit(kc, ns, list(NODES))


# HAMi v2.10's NVIDIA example pods (examples/nvidia/*.yaml), their wire content transcribed as data
# (names, images, commands, resources, annotations; HAMi's comments left out). They are applied as
# they are: no schedulerName, ubuntu images (the sandbox imports a busybox stand-in under those
# names), `bash -c "sleep 86400"`.
def _example(name: str, image: str, limits: dict[str, int], annotations: dict[str, str] | None = None) -> str:
    meta = {"name": name, **({"annotations": annotations} if annotations else {})}
    container = {
        "name": "ubuntu-container",
        "image": image,
        "command": ["bash", "-c", "sleep 86400"],
        "resources": {"limits": limits},
    }
    return json.dumps(
        {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": [container]}}
    )


HAMI_EXAMPLES = {
    "default_use": [
        _example(
            "gpu-pod",
            "ubuntu:22.04",
            {"nvidia.com/gpu": 2, "nvidia.com/gpumem": 3000, "nvidia.com/gpucores": 30},
        )
    ],
    "use_exclusive_card": [
        _example(
            "gpu-pod1",
            "ubuntu:18.04",
            {"nvidia.com/gpu": 2, "nvidia.com/gpumem-percentage": 100, "nvidia.com/gpucores": 100},
        )
    ],
    "use_memory_fraction": [
        _example(
            "gpu-pod",
            "ubuntu:18.04",
            {"nvidia.com/gpu": 2, "nvidia.com/gpumem-percentage": 50, "nvidia.com/gpucores": 30},
        )
    ],
    "use_sharing_card": [
        _example(
            "gpu-pod1",
            "ubuntu:18.04",
            {"nvidia.com/gpu": 1, "nvidia.com/gpumem-percentage": 40, "nvidia.com/gpucores": 60},
        ),
        _example(
            "gpu-pod2",
            "ubuntu:18.04",
            {"nvidia.com/gpu": 1, "nvidia.com/gpumem-percentage": 60, "nvidia.com/gpucores": 40},
        ),
    ],
}
#: what each example's containers must be given on the sandbox's Tesla T4 (15360 MiB) cards:
#: pod -> (cards, MiB per card, cores per card)
EXPECTED = {
    "default_use": {"gpu-pod": (2, 3000, 30)},
    "use_exclusive_card": {"gpu-pod1": (2, 15360, 100)},
    "use_memory_fraction": {"gpu-pod": (2, 7680, 30)},
    "use_sharing_card": {"gpu-pod1": (1, 6144, 60), "gpu-pod2": (1, 9216, 40)},
}


def _container_env(sandbox: Sandbox, pod: dict[str, Any]) -> tuple[dict[str, str], Path]:
    """The environment of the pod's running container process, and its root, read on the host."""
    node = next(n for n in sandbox.nodes if n.name == pod["spec"]["nodeName"])
    cid = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    tasks = node.ctr("tasks", "ls").stdout.splitlines()[1:]
    (pid,) = [int(line.split()[1]) for line in tasks if line.split()[0] == cid]
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    env = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
    return env, Path(f"/proc/{pid}/root")


@pytest.mark.parametrize("example", sorted(HAMI_EXAMPLES))
async def test_hami_nvidia_example_runs_unchanged(
    example: str, leading: None, sandbox: Sandbox, kc: KubeClient, ns: str
) -> None:
    """webhook -> kube-scheduler -> extender -> real kubelet Allocate -> a running container whose
    process holds exactly the cards, memory and core limits the example asks for, with libvgpu.so
    preloaded; no card is given out beyond its capacity (HAMi's default card policy, spread, puts
    use_sharing_card's two pods on two cards; 40 % + 60 % could share one)."""
    for text in HAMI_EXAMPLES[example]:
        await kc.create(api_path("v1", "pods", namespace=ns), json.loads(text))
    for name, (count, mem, cores) in EXPECTED[example].items():
        pod = await _phase(kc, ns, name, ("Running",))
        assert pod["spec"]["schedulerName"] == "hami-scheduler"
        env, root = _container_env(sandbox, pod)
        cards = env["NVIDIA_VISIBLE_DEVICES"].split(",")
        assert len(cards) == count and all(
            c.startswith(f"GPU-fake-{pod['spec']['nodeName']}-") for c in cards
        )
        assert [env[f"CUDA_DEVICE_MEMORY_LIMIT_{i}"] for i in range(count)] == [f"{mem}m"] * count
        assert env["CUDA_DEVICE_SM_LIMIT"] == str(cores)
        assert (root / "etc" / "ld.so.preload").read_text().strip().endswith("/vgpu/libvgpu.so")
    await assert_no_overcommit(kc, ns, list(NODES))


async def test_hami_example_asking_for_a_card_type_the_cluster_lacks_waits_with_the_reason(
    leading: None, kc: KubeClient, ns: str
) -> None:
    """examples/nvidia/specify_card_type_to_use.yaml on a cluster of Tesla T4: Pending, and the
    scheduler's event says the card type is what does not match."""
    pod = _example("gpu-pod", "ubuntu:18.04", {"nvidia.com/gpu": 2}, {"nvidia.com/use-gputype": "A100,V100"})
    await kc.create(api_path("v1", "pods", namespace=ns), json.loads(pod))

    async def reason() -> str | None:
        events = (await kc.get(api_path("v1", "events", namespace=ns))).get("items") or []
        for e in events:
            message = str(e.get("message"))
            if e.get("reason") == "FailedScheduling" and "CardTypeMismatch" in message:
                return message
        return None

    message = await wait_for(reason, timeout=60, interval=0.5)
    assert "0/2 nodes are available" in message, message
    got = await kc.get(api_path("v1", "pods", namespace=ns, name="gpu-pod"))
    assert got["status"].get("phase") == "Pending"


async def test_a_high_priority_pod_preempts_the_low_priority_pods_on_one_card(
    leading: None, kc: KubeClient, ns: str
) -> None:
    """The chart's defaults (``scheduler.preemption.enabled``) on real kubelets: node1's two cards
    are full of card memory only (two LOW pods on card 0, two MID pods on card 1); a HIGH pod that
    needs a whole card on node1 makes hami's extender evict exactly the LOW pods (Eviction API, as
    the chart's scheduler identity); kubelet stops them and the HIGH pod runs on card 0."""
    classes = {"low": 10, "mid": 50, "high": 1000}
    pc = "/apis/scheduling.k8s.io/v1/priorityclasses"
    for cls, value in classes.items():
        await kc.create(pc, {"metadata": {"name": f"{ns}-{cls}"}, "value": value})
    hold = "import time\ntime.sleep(10**6)\n"
    try:
        for name, cls, card in (
            ("lo-1", "low", 0),
            ("lo-2", "low", 0),
            ("mid-1", "mid", 1),
            ("mid-2", "mid", 1),
        ):
            p = _gpu_pod(name, {"nvidia.com/gpu": 1, "nvidia.com/gpumem": 7680}, hold)
            p["metadata"]["annotations"] = {keys.NVIDIA_USE_GPUUUID: f"GPU-fake-node1-{card}"}
            p["spec"].update(
                priorityClassName=f"{ns}-{cls}", nodeSelector={"kubernetes.io/hostname": "node1"}
            )
            await kc.create(api_path("v1", "pods", namespace=ns), p)
        for name in ("lo-1", "lo-2", "mid-1", "mid-2"):
            await _phase(kc, ns, name, ("Running",))
        hi = _gpu_pod("hi", {"nvidia.com/gpu": 1, "nvidia.com/gpumem": 15360}, hold)
        hi["spec"].update(priorityClassName=f"{ns}-high", nodeSelector={"kubernetes.io/hostname": "node1"})
        await kc.create(api_path("v1", "pods", namespace=ns), hi)

        # kube-scheduler may leave the preemptor in its unschedulable queue until its 5-minute
        # flush (seen in 2 of 4 full runs; open product issue, see docs/testing.md): wait past it
        running = await _phase(kc, ns, "hi", ("Running",), timeout=330)
        assert running["spec"]["nodeName"] == "node1"
        assert running["metadata"]["annotations"][keys.VGPU_DEVICES_ALLOCATED].startswith("GPU-fake-node1-0,")
        left = {p["metadata"]["name"] for p in (await kc.get(api_path("v1", "pods", namespace=ns)))["items"]}
        assert left == {"hi", "mid-1", "mid-2"}
        events = (await kc.get(api_path("v1", "events", namespace=ns))).get("items") or []
        preempted = {e["involvedObject"]["name"] for e in events if e.get("reason") == "Preempted"}
        assert preempted == {"lo-1", "lo-2"}
        await assert_no_overcommit(kc, ns, ["node1"])
    finally:
        for cls in classes:
            await kc.request("DELETE", f"{pc}/{ns}-{cls}")
