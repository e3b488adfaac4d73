"""hami on a real node: real kubelet, containerd and runc, hami's image in real containers.

What the kubelet stand-in of the other tiers cannot show: kubelet's device-plugin registration and
its Allocate call, the container a GPU pod really gets (environment, mounts, preload), pods that
reach the API server in-cluster, and registration surviving a kubelet restart.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hami.kube.client import KubeClient
from hami.kube.paths import api_path
from hami.protocol import keys
from hami.sandbox.cluster import Sandbox
from hami.sandbox.probe import CUDA_OUT_OF_MEMORY, PROBE, report
from hami.testing.controlplane import Process
from hami.testing.stack import Stack, assert_no_overcommit, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NODE = "node1"
NODES = ("node1", "node2")
IMAGE = "hami.local/hami:0.1.0"
CARDS = 2
SPLIT = 10  # devicePlugin.deviceSplitCount default


@pytest.fixture(scope="module")
def device_plugin(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """hami's device plugin for node1 (as a host process: the chart's DaemonSet comes later), with
    the fake device source and libvgpu.so installed under its own hook path. node2 has none, so
    every GPU pod of this module lands on node1."""
    assert sandbox.cp is not None
    work = tmp_path_factory.mktemp("device-plugin")
    fake = work / "fake-node.yaml"
    fake.write_text(sandbox.fake_node_spec((ROOT / "examples" / "fake-node-small.yaml").read_text()))
    hook = work / "hook"
    hami = str(ROOT / ".venv" / "bin" / "hami")
    lib = ROOT / "native" / "build" / "libvgpu.so"
    install = Process(
        "install-host",
        [hami, "install-host", "--hook-path", str(hook), "--library", str(lib)],
        work / "install.log",
    )
    assert install.popen.wait(60) == 0, install.tail()
    proc = Process(
        "device-plugin",
        [
            hami,
            "device-plugin",
            "--node-name",
            NODE,
            "--fake-node",
            str(fake),
            "--kubeconfig",
            str(sandbox.cp.kubeconfig_path),
            "--hook-path",
            str(hook),
            # the node's own device-plugin directory (its kubelet sees it at the usual path)
            "--plugin-dir",
            str(sandbox.nodes[0].plugin_dir),
        ],
        work / "device-plugin.log",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield proc
    finally:
        proc.stop()


async def _allocatable(kc: KubeClient) -> int:
    node = await kc.get(api_path("v1", "nodes", name=NODE))
    return int((node["status"].get("allocatable") or {}).get("nvidia.com/gpu", "0"))


async def _finished(kc: KubeClient, ns: str, name: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        pod = await kc.get(api_path("v1", "pods", namespace=ns, name=name))
        return pod if pod["status"].get("phase") in ("Succeeded", "Failed") else None

    try:
        pod: dict[str, Any] = await wait_for(done, timeout=120, interval=0.5)
    except AssertionError:
        got = await kc.get(api_path("v1", "pods", namespace=ns, name=name))
        events = (await kc.get(api_path("v1", "events", namespace=ns))).get("items") or []
        seen = [(e["involvedObject"].get("name"), e.get("reason"), e.get("message")) for e in events]
        raise AssertionError(f"pod {name} did not finish: {got['status']}, events {seen}") from None
    return pod


async def _logs(kc: KubeClient, ns: str, name: str) -> str:
    return await kc.get_text(api_path("v1", "pods", namespace=ns, name=name) + "/log")


def _pod(name: str, command: list[str], limits: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": IMAGE, "command": command}
    if limits:
        container["resources"] = {"limits": limits}
    return {"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [container], **spec}}


@pytest.mark.parametrize("node", NODES)
async def test_a_pod_reaches_the_api_server_in_cluster(kc: KubeClient, ns: str, node: str) -> None:
    """On each node: CNI, service account token, the kubernetes Service IP and `kubectl logs`."""
    script = (
        "import asyncio\nfrom hami.kube.config import load_config\nfrom hami.kube.client import KubeClient\n"
        "async def m():\n    async with KubeClient(load_config()) as k:\n        print((await k.version())['gitVersion'])\n"
        "asyncio.run(m())\n"
    )
    pod = _pod("incluster", ["python3", "-c", script], nodeSelector={"kubernetes.io/hostname": node})
    await kc.create(api_path("v1", "pods", namespace=ns), pod)
    done = await _finished(kc, ns, "incluster")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["spec"]["nodeName"] == node
    assert (await _logs(kc, ns, "incluster")).strip() == "v1.34.4"


async def test_each_node_has_its_own_device_plugin_directory(
    sandbox: Sandbox, device_plugin: Process
) -> None:
    """Two kubelets on one machine: each listens in a device-plugin directory of its own (a starting
    kubelet deletes every other socket in it), and the host's own directory stays empty."""
    socks = [n.plugin_dir / "kubelet.sock" for n in sandbox.nodes]
    await wait_for(lambda: _all_exist(socks), timeout=30, interval=0.2)
    assert len({s.stat().st_ino for s in socks}) == len(socks)
    assert list(Path("/var/lib/kubelet/device-plugins").iterdir()) == []


async def _all_exist(paths: list[Path]) -> bool:
    return all(p.exists() for p in paths)


async def test_device_plugin_registers_with_the_real_kubelet(kc: KubeClient, device_plugin: Process) -> None:
    async def registered() -> bool:
        assert device_plugin.alive, device_plugin.tail()
        return await _allocatable(kc) == CARDS * SPLIT

    await wait_for(registered, timeout=60, interval=0.5)
    node = await kc.get(api_path("v1", "nodes", name=NODE))
    assert keys.NODE_NVIDIA_REGISTER in node["metadata"]["annotations"]


async def test_gpu_pod_runs_with_its_slice_through_the_real_kubelet(
    sandbox: Sandbox, kc: KubeClient, ns: str, device_plugin: Process
) -> None:
    """webhook-equivalent pod -> kube-scheduler -> hami extender -> kubelet Allocate -> container."""
    assert sandbox.cp is not None
    await wait_for(lambda: _is(_allocatable(kc), CARDS * SPLIT), timeout=60, interval=0.5)
    async with Stack(sandbox.kube_config(), sandbox.cp.start_scheduler, completer=False):
        pod = _pod(
            "gpu",
            ["python3", "-c", PROBE],
            {"nvidia.com/gpu": 1, "nvidia.com/gpumem": 3000, "nvidia.com/gpucores": 30},
            schedulerName="hami-scheduler",
        )
        await kc.create(api_path("v1", "pods", namespace=ns), pod)
        done = await _finished(kc, ns, "gpu")
    assert done["status"]["phase"] == "Succeeded", (done["status"], device_plugin.tail())
    ann = done["metadata"]["annotations"]
    assert ann[keys.BIND_PHASE] == keys.BIND_PHASE_SUCCESS
    seen = report(await _logs(kc, ns, "gpu"))
    assert seen["memory"] == ["3000m"] and seen["cores"] == "30"
    assert len(seen["cards"]) == 1 and seen["cards"][0].startswith(f"GPU-fake-{NODE}-")
    # libvgpu.so is preloaded from where the host installer put it, inside the container too,
    # and an unmodified CUDA program sees its slice, not the card, and is refused beyond it
    assert seen["preload"].endswith("/vgpu/libvgpu.so")
    assert (seen["cuInit"], seen["cuCtxCreate"]) == (0, 0), seen
    assert seen.get("total_mib") == 3000, seen
    assert (seen["alloc_half"], seen["alloc_beyond"]) == (0, CUDA_OUT_OF_MEMORY)


async def _is(value: Any, want: int) -> bool:
    return bool(await value == want)


def _socket_inode(path: Path) -> tuple[int, int] | None:
    """The socket file's identity: inode and change time (a freed inode number is often reused at
    once, so the number alone cannot tell a re-created socket from the old one)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_ctime_ns


#: how soon the plugin must register again once the restarted kubelet listens
REREGISTER_WITHIN_S = 5.0


async def test_kubelet_restart_the_plugin_registers_again(
    sandbox: Sandbox, kc: KubeClient, ns: str, device_plugin: Process
) -> None:
    """After a kubelet restart the plugin registers again within 5 s of the new kubelet socket
    (its own log says so); a GPU pod running across the restart keeps its card and allocation; a
    GPU pod admitted afterwards still gets its Allocate; no card is given out twice."""
    assert sandbox.cp is not None
    await wait_for(lambda: _is(_allocatable(kc), CARDS * SPLIT), timeout=60, interval=0.5)
    node = sandbox.nodes[0]
    kubelet_sock = node.plugin_dir / "kubelet.sock"
    async with Stack(sandbox.kube_config(), sandbox.cp.start_scheduler, completer=False):
        keeper = _pod(
            "keeper",
            ["python3", "-c", "import time; time.sleep(10**6)"],
            {"nvidia.com/gpu": 1, "nvidia.com/gpumem": 2000},
            schedulerName="hami-scheduler",
            terminationGracePeriodSeconds=1,
        )
        await kc.create(api_path("v1", "pods", namespace=ns), keeper)
        running = await _running(kc, ns, "keeper")
        allocation = running["metadata"]["annotations"][keys.VGPU_DEVICES_ALLOCATED]

        registrations = device_plugin.tail(100000).count("registered nvidia.com/gpu with kubelet")
        old_socket = _socket_inode(kubelet_sock)
        assert old_socket is not None
        node.restart_kubelet()

        async def new_socket() -> bool:
            return _socket_inode(kubelet_sock) not in (None, old_socket)

        await wait_for(new_socket, timeout=60, interval=0.05)

        async def re_registered() -> bool:
            assert device_plugin.alive, device_plugin.tail()
            return device_plugin.tail(100000).count("registered nvidia.com/gpu with kubelet") > registrations

        await wait_for(re_registered, timeout=REREGISTER_WITHIN_S, interval=0.1)
        # kubelet publishes the slices again with its next node status; until then the extender
        # counts the node's device plugin as gone (allocatable 0), as HAMi does
        await wait_for(lambda: _is(_allocatable(kc), CARDS * SPLIT), timeout=30, interval=0.2)

        pod = _pod(
            "after-restart",
            ["python3", "-c", PROBE],
            {"nvidia.com/gpu": 1},
            schedulerName="hami-scheduler",
        )
        await kc.create(api_path("v1", "pods", namespace=ns), pod)
        done = await _finished(kc, ns, "after-restart")
    assert done["status"]["phase"] == "Succeeded", (done["status"], device_plugin.tail())
    seen = report(await _logs(kc, ns, "after-restart"))
    assert seen["cards"][0].startswith(f"GPU-fake-{NODE}-")
    kept = await kc.get(api_path("v1", "pods", namespace=ns, name="keeper"))
    assert kept["status"]["phase"] == "Running"
    assert kept["status"]["containerStatuses"][0]["restartCount"] == 0
    assert kept["metadata"]["annotations"][keys.VGPU_DEVICES_ALLOCATED] == allocation
    await assert_no_overcommit(kc, ns, [NODE])


async def _running(kc: KubeClient, ns: str, name: str) -> dict[str, Any]:
    async def running() -> dict[str, Any] | None:
        pod = await kc.get(api_path("v1", "pods", namespace=ns, name=name))
        assert pod["status"].get("phase") not in ("Succeeded", "Failed"), pod["status"]
        return pod if pod["status"].get("phase") == "Running" else None

    pod: dict[str, Any] = await wait_for(running, timeout=120, interval=0.5)
    return pod


async def test_the_dra_steering_marker_is_ignored_by_the_kubelet(kc: KubeClient, ns: str) -> None:
    """A converted DRA pod carries ``hami.io/dra: 1`` (so kube-scheduler calls hami's DRA verbs);
    no node advertises it, and the real kubelet admits and runs the pod anyway (it drops extended
    resources its node lacks before its fit check; the device manager allocates only registered ones)."""
    pod = _pod("marked", ["python3", "-c", "pass"], {keys.DRA_STEER_RESOURCE: "1"}, nodeName=NODES[1])
    await kc.create(api_path("v1", "pods", namespace=ns), pod)
    done = await _finished(kc, ns, "marked")
    assert done["status"]["phase"] == "Succeeded", done["status"]
