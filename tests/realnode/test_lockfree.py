"""The lock-free allocation mode on real nodes: node1's device plugin runs `allocationmode: cdi`
(the sandbox's node config), node2's the node lock, in one cluster.

On node1 the kubelet's Allocate gets a CDI device name, its PreStartContainer has the plugin find
the container through the kubelet's PodResources API and write the CDI spec into node1's CDI
directory, and containerd (2.4, CDI on) applies it when it creates the container. Shown here: a
binpack burst pinned to node1 starts every container with its own card and limits exactly as the
scheduler decided; the specs go away with the pods; a device plugin restarted between a pod's
Allocate and its GPU container's start still hands that container its limits; a GPU init container
followed only by containers without GPUs (PodResources never lists its IDs) gets its card through
the kubelet's device checkpoint; node2 (lock mode) pods run beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from realnode_chart import HOLD, NAMESPACE, chart_installed, gpu_pod, hami_leading, probe_report

from hami.deviceplugin.cdi import SPEC_PREFIX
from hami.kube.client import KubeClient
from hami.kube.paths import api_path
from hami.protocol import keys
from hami.protocol.pod import decode_pod_devices
from hami.sandbox.cluster import Sandbox
from hami.sandbox.probe import PROBE
from hami.testing.helm import Helm
from hami.testing.stack import wait_for

pytestmark = pytest.mark.integration

LOCK_FREE, LOCKED = "node1", "node2"
BURST = 6


@pytest.fixture(scope="module")
def installed(sandbox: Sandbox) -> Iterator[Helm]:
    with chart_installed(sandbox) as helm:
        yield helm


@pytest.fixture
async def leading(installed: Helm, kc: KubeClient) -> None:
    await hami_leading(kc)


def pinned(name: str, node: str, mem: int, cores: int) -> dict[str, Any]:
    pod = gpu_pod(
        name,
        {"nvidia.com/gpu": 1, "nvidia.com/gpumem": mem, "nvidia.com/gpucores": cores},
        ["python3", "-c", HOLD],
    )
    pod["metadata"]["annotations"] = {
        keys.GPU_SCHEDULER_POLICY: "binpack",
        keys.NODE_SCHEDULER_POLICY: "binpack",
    }
    pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    return pod


def specs_of(sandbox: Sandbox, pod_uid: str) -> list[tuple[Path, dict[str, Any]]]:
    """node1's CDI spec files for the pod `pod_uid` (their mounts name its cache directory)."""
    out = []
    for path in sorted(sandbox.nodes[0].cdi_dir.glob(f"{SPEC_PREFIX}*.json")):
        with contextlib.suppress(FileNotFoundError):
            spec = json.loads(path.read_text())
            mounts = spec["devices"][0]["containerEdits"].get("mounts", [])
            if any(f"/containers/{pod_uid}_" in m["hostPath"] for m in mounts):
                out.append((path, spec))
    return out


async def decided(kc: KubeClient, ns: str, name: str) -> tuple[str, int, int]:
    """(card, MiB, cores) the scheduler decided for the pod's one container."""
    pod = await kc.get(api_path("v1", "pods", namespace=ns, name=name))
    [[d]] = [e for e in decode_pod_devices(pod["metadata"]["annotations"][keys.VGPU_DEVICES_ALLOCATED]) if e]
    return d.uuid, d.usedmem, d.usedcores


async def assert_own_slice(kc: KubeClient, ns: str, name: str, node: str) -> dict[str, Any]:
    seen = await probe_report(kc, ns, name)
    card, mem, cores = await decided(kc, ns, name)
    assert card.startswith(f"GPU-fake-{node}-")
    assert (seen["cards"], seen["memory"], seen["cores"]) == ([card], [f"{mem}m"], str(cores)), seen
    assert seen.get("total_mib") == mem, json.dumps(seen)
    assert seen["preload"].endswith("/vgpu/libvgpu.so")
    return seen


async def test_nodes_announce_their_mode(leading: None, kc: KubeClient) -> None:
    async def modes() -> dict[str, str | None] | None:
        out = {}
        for n in (LOCK_FREE, LOCKED):
            node = await kc.get(api_path("v1", "nodes", name=n))
            out[n] = node["metadata"].get("annotations", {}).get(keys.NODE_ALLOCATION_MODE)
        return out if out[LOCK_FREE] == keys.ALLOCATION_MODE_CDI else None

    assert await wait_for(modes, timeout=60, interval=0.5) == {LOCK_FREE: "cdi", LOCKED: None}


async def test_binpack_burst_to_the_lock_free_node(
    leading: None, kc: KubeClient, ns: str, sandbox: Sandbox
) -> None:
    pods = api_path("v1", "pods", namespace=ns)
    burst = [f"burst-{i}" for i in range(BURST)]
    await asyncio.gather(
        *(kc.create(pods, pinned(name, LOCK_FREE, 1000 + 100 * i, 5 + i)) for i, name in enumerate(burst)),
        kc.create(pods, pinned("locked", LOCKED, 2500, 25)),
    )
    for name in burst:
        await assert_own_slice(kc, ns, name, LOCK_FREE)
    await assert_own_slice(kc, ns, "locked", LOCKED)
    # binpack: the burst shares node1's cards, each container with its own limits
    cards = {(await decided(kc, ns, n))[0] for n in burst}
    assert len(cards) == 1, cards
    # one spec per allocation in node1's CDI directory (found by the pod's cache directory, which
    # the spec mounts), with that pod's limits; none on node2
    uids = {n: (await kc.get(api_path("v1", "pods", namespace=ns, name=n)))["metadata"]["uid"] for n in burst}
    for i, name in enumerate(burst):
        [(_, spec)] = specs_of(sandbox, uids[name])
        assert f"CUDA_DEVICE_MEMORY_LIMIT_0={1000 + 100 * i}m" in spec["devices"][0]["containerEdits"]["env"]
    assert not list(sandbox.nodes[1].cdi_dir.glob(f"{SPEC_PREFIX}*.json"))
    # the lock-free node's pods finished without the node lock; the lock-mode pod with it
    for name in [*burst, "locked"]:
        pod = await kc.get(api_path("v1", "pods", namespace=ns, name=name))
        assert pod["metadata"]["annotations"][keys.BIND_PHASE] == keys.BIND_PHASE_SUCCESS
    for n in (LOCK_FREE, LOCKED):
        node = await kc.get(api_path("v1", "nodes", name=n))
        assert keys.NODE_LOCK not in node["metadata"].get("annotations", {})

    await kc.request("DELETE", pods, params={"gracePeriodSeconds": 0})

    async def collected() -> bool:
        return not any(specs_of(sandbox, uid) for uid in uids.values())

    await wait_for(collected, timeout=120, interval=1)


async def test_plugin_restart_between_allocate_and_start(leading: None, kc: KubeClient, ns: str) -> None:
    pod = pinned("late", LOCK_FREE, 3000, 30)
    # the GPU container waits behind an init container, long enough to restart the plugin
    pod["spec"]["initContainers"] = [
        {
            "name": "wait",
            "image": pod["spec"]["containers"][0]["image"],
            "command": ["python3", "-c", "import time; time.sleep(12)"],
        }
    ]
    await kc.create(api_path("v1", "pods", namespace=ns), pod)

    async def init_running() -> bool:
        p = await kc.get(api_path("v1", "pods", namespace=ns, name="late"))
        states = [s.get("state", {}) for s in p["status"].get("initContainerStatuses") or []]
        return bool(states) and "running" in states[0]

    # the kubelet calls Allocate when it admits the pod, before its first container runs
    await wait_for(init_running, timeout=120, interval=0.25)
    plugins = await kc.list(
        api_path("v1", "pods", namespace=NAMESPACE),
        label_selector="app.kubernetes.io/component=device-plugin",
        field_selector=f"spec.nodeName={LOCK_FREE}",
    )
    [old] = plugins["items"]
    await kc.request(
        "DELETE",
        api_path("v1", "pods", namespace=NAMESPACE, name=old["metadata"]["name"]),
        params={"gracePeriodSeconds": 0},
    )
    seen = await assert_own_slice(kc, ns, "late", LOCK_FREE)
    assert seen["memory"] == ["3000m"]
    plugins = await kc.list(
        api_path("v1", "pods", namespace=NAMESPACE),
        label_selector="app.kubernetes.io/component=device-plugin",
        field_selector=f"spec.nodeName={LOCK_FREE}",
    )
    assert [p["metadata"]["uid"] for p in plugins["items"]] != [old["metadata"]["uid"]]


async def test_gpu_init_container_before_plain_containers(leading: None, kc: KubeClient, ns: str) -> None:
    # only the init container asks for a GPU: the kubelet's PodResources lists app containers and
    # sidecars only, so nothing there holds its IDs; the plugin finds the pod in the kubelet's
    # device checkpoint and the init container runs with its card and limits
    pod = pinned("initonly", LOCK_FREE, 2000, 20)
    [gpu] = pod["spec"]["containers"]
    gpu.update(name="warm", command=["python3", "-c", PROBE])
    pod["spec"]["initContainers"] = [gpu]
    pod["spec"]["containers"] = [
        {
            "name": "main",
            "image": gpu["image"],
            "command": ["python3", "-c", "import time; time.sleep(10**6)"],
        }
    ]
    await kc.create(api_path("v1", "pods", namespace=ns), pod)
    seen = await probe_report(kc, ns, "initonly", container="warm")
    card, mem, cores = await decided(kc, ns, "initonly")
    assert card.startswith(f"GPU-fake-{LOCK_FREE}-")
    assert (seen["cards"], seen["memory"], seen["cores"]) == ([card], [f"{mem}m"], str(cores)), seen
    assert (mem, cores) == (2000, 20)

    async def app_running() -> bool:
        p = await kc.get(api_path("v1", "pods", namespace=ns, name="initonly"))
        return bool(p["status"].get("phase") == "Running")

    await wait_for(app_running, timeout=120, interval=0.5)
