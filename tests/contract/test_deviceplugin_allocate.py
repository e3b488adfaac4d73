"""Allocate and node registration through the real gRPC path (fake kubelet -> NodeAgent -> MemoryKube)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest

from hami.deviceplugin.agent import NodeAgent
from hami.deviceplugin.settings import NodeSettings
from hami.deviceplugin.sources.fake import FakeSource
from hami.protocol import keys
from hami.protocol.node import decode_node_devices
from hami.testing.kubelet import FakeKubelet
from hami.testing.memkube import MemoryKube

RES = "nvidia.com/gpu"
A, B = "GPU-aaaa", "GPU-bbbb"
LOCK = "2026-11-22T07:00:00Z,default,p1"


@pytest.fixture
def plugin_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="hdp", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def pending_pod(name: str, to_allocate: str) -> dict[str, object]:
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": f"uid-{name}",
            "annotations": {
                keys.VGPU_NODE: "n1",
                keys.BIND_PHASE: keys.BIND_PHASE_ALLOCATING,
                keys.VGPU_DEVICES_TO_ALLOCATE: to_allocate,
            },
        },
        "spec": {"nodeName": "n1", "containers": [{"name": "main"}]},
        "status": {"phase": "Pending"},
    }


@pytest.fixture
async def setup(plugin_dir: Path) -> AsyncIterator[tuple[FakeKubelet, NodeAgent, MemoryKube, FakeSource]]:
    kube = MemoryKube(
        [{"metadata": {"name": "n1", "annotations": {keys.NODE_LOCK: LOCK}}}],
        [pending_pod("p1", f"{A},NVIDIA,3000,30:;"), pending_pod("p2", f"{B},NVIDIA,1000,10:;")],
    )
    source = FakeSource(
        {"cards": [{"uuid": A, "memory": 40960}, {"uuid": B, "memory": 40960, "index": 1}]},
        poll_interval=0.05,
    )
    settings = NodeSettings(
        node_name="n1", split_count=4, hook_path=str(plugin_dir / "hook"), enable_preferred_allocation=True
    )
    kubelet = FakeKubelet(plugin_dir)
    await kubelet.start()
    agent = NodeAgent(source, settings, kube=kube, plugin_dir=plugin_dir, watch_interval=0.1)
    await agent.start()
    yield kubelet, agent, kube, source
    await agent.stop()
    await kubelet.stop()


async def test_allocate_over_grpc(setup: tuple[FakeKubelet, NodeAgent, MemoryKube, FakeSource]) -> None:
    kubelet, _agent, kube, _ = setup
    await kubelet.wait_for(lambda: len(kubelet.devices.get(RES, {})) == 8)
    client = kubelet.client(RES)
    # the scheduler's card (p1 holds the lock) is preferred
    assert await client.preferred([f"{B}-0", f"{B}-1", f"{A}-3"], 1) == [f"{A}-3"]
    resp = await client.allocate([f"{A}-3"])
    envs = resp.container_responses[0].envs
    assert envs["NVIDIA_VISIBLE_DEVICES"] == A
    assert envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "3000m"
    assert envs["CUDA_DEVICE_SM_LIMIT"] == "30"
    assert kube.pods[("default", "p1")]["metadata"]["annotations"][keys.BIND_PHASE] == "success"
    assert keys.NODE_LOCK not in kube.nodes["n1"]["metadata"]["annotations"]
    # p2 is now the single pending pod: it gets B, never A
    resp = await client.allocate([f"{A}-0"])
    assert resp.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == B


async def test_allocate_error_reaches_kubelet(
    setup: tuple[FakeKubelet, NodeAgent, MemoryKube, FakeSource],
) -> None:
    kubelet, _agent, kube, _ = setup
    await kubelet.wait_for(lambda: RES in kubelet.devices)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await kubelet.client(RES).allocate([f"{A}-0", f"{A}-1"])
    assert "device number not matched" in (err.value.details() or "")
    assert kube.pods[("default", "p1")]["metadata"]["annotations"][keys.BIND_PHASE] == "failed"


async def eventually(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_node_registration_follows_health(
    setup: tuple[FakeKubelet, NodeAgent, MemoryKube, FakeSource],
) -> None:
    kubelet, agent, kube, source = setup
    assert agent.registrar is not None

    def registered() -> list[bool]:
        value = kube.nodes["n1"]["metadata"]["annotations"].get(keys.NODE_NVIDIA_REGISTER)
        return [d.health for d in decode_node_devices(value)] if value else []

    await eventually(lambda: registered() == [True, True])
    source.inject_health(B, False, xid=79)
    await kubelet.wait_for(lambda: kubelet.devices.get(RES, {}).get(f"{B}-0") == "Unhealthy", timeout=5)
    await eventually(lambda: registered() == [True, False])
