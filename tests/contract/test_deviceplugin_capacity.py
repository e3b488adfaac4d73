"""Capacity-registered vendors on a simulated node, over real unix sockets with the fake kubelet:
the node agent registers one fake device-plugin resource per ``resources:`` name of the fake
source's ``vendors:`` section beside NVIDIA's, kubelet lists that many devices (its capacity), and
the vendor's scheduler backend reads the node's cards from that capacity."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from hami.config.device import parse_device_config
from hami.deviceplugin.agent import NodeAgent
from hami.deviceplugin.capacity import socket_name
from hami.deviceplugin.settings import NodeSettings
from hami.deviceplugin.sources.fake import FakeSource
from hami.devices.registry import default_registry
from hami.scheduling.decide import Scheduler
from hami.testing.kubelet import FakeKubelet

CORE, MEMORY = "mthreads.com/sgpu-core", "mthreads.com/sgpu-memory"
SPEC: dict[str, Any] = {
    "cards": [{"model": "Tesla T4", "memory": 15360}],
    "vendors": {"mthreads": {"resources": {CORE: 32, MEMORY: 192}}},
}
RESOURCES = ("nvidia.com/gpu", CORE, MEMORY)


@pytest.fixture
def plugin_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="hcap", dir="/tmp"))  # unix socket paths: 108 bytes at most
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def kubelet(plugin_dir: Path) -> AsyncIterator[FakeKubelet]:
    async with FakeKubelet(plugin_dir) as k:
        yield k


@pytest.fixture
async def agent(plugin_dir: Path, kubelet: FakeKubelet) -> AsyncIterator[NodeAgent]:
    a = NodeAgent(
        FakeSource(SPEC, node_name="mt"),
        NodeSettings(node_name="mt"),
        plugin_dir=plugin_dir,
        watch_interval=0.1,
    )
    await a.start()
    yield a
    await a.stop()


async def listed(kubelet: FakeKubelet) -> dict[str, int]:
    """Wait until kubelet lists every resource; the number of healthy devices of each."""
    await kubelet.wait_for(lambda: all(r in kubelet.devices for r in RESOURCES))
    return {r: sum(h == "Healthy" for h in kubelet.devices[r].values()) for r in RESOURCES}


def first_device(kubelet: FakeKubelet, resource: str) -> str:
    return sorted(kubelet.devices[resource])[0]


async def test_each_capacity_resource_is_its_own_registration(kubelet: FakeKubelet, agent: NodeAgent) -> None:
    assert await listed(kubelet) == {"nvidia.com/gpu": 10, CORE: 32, MEMORY: 192}
    by_resource = {r.resource_name: r for r in kubelet.registrations}
    assert sorted(by_resource) == sorted(RESOURCES)
    assert by_resource[CORE].endpoint == socket_name(CORE) == "hami-capacity-mthreads.com_sgpu-core.sock"
    assert by_resource["nvidia.com/gpu"].endpoint == "nvidia-gpu.sock"  # NVIDIA's is unchanged
    assert f"{CORE}-fake-mt-31-0" in kubelet.devices[CORE]


async def test_allocate_answers_an_empty_response_per_container(
    kubelet: FakeKubelet, agent: NodeAgent
) -> None:
    await listed(kubelet)
    resp = await kubelet.client(CORE).allocate([f"{CORE}-fake-mt-0-0"], [f"{CORE}-fake-mt-1-0"])
    assert len(resp.container_responses) == 2
    assert all(c.ByteSize() == 0 for c in resp.container_responses)  # no env, mounts or devices
    with pytest.raises(grpc.aio.AioRpcError, match="unknown device IDs"):
        await kubelet.client(MEMORY).allocate([f"{CORE}-fake-mt-0-0"])
    # NVIDIA's plugin still answers its own Allocate (standalone: it needs the API server)
    with pytest.raises(grpc.aio.AioRpcError, match="needs the Kubernetes API"):
        await kubelet.client("nvidia.com/gpu").allocate([first_device(kubelet, "nvidia.com/gpu")])


async def test_a_kubelet_restart_brings_every_registration_back(
    plugin_dir: Path, kubelet: FakeKubelet, agent: NodeAgent
) -> None:
    await listed(kubelet)
    await kubelet.restart()  # wipes every socket in the directory, as kubelet does
    await kubelet.wait_registrations(2 * len(RESOURCES))
    await kubelet.wait_for(lambda: all(kubelet.updates.get(r, 0) >= 2 for r in RESOURCES))  # new streams
    assert await listed(kubelet) == {"nvidia.com/gpu": 10, CORE: 32, MEMORY: 192}
    await agent.stop()
    assert not list(plugin_dir.glob("hami-capacity-*.sock"))  # each server removes its socket


async def test_the_vendor_backend_reads_the_published_capacity(
    kubelet: FakeKubelet, agent: NodeAgent
) -> None:
    """kubelet publishes capacity = allocatable = the devices listed; Mthreads' backend makes
    ``sgpu-core`` / 16 GPUs of ``sgpu-memory`` x 512 x 16 / cores MiB and places HAMi's
    ``mthreads/default_use`` pod (8 cores, 32 x 512 MiB) on the higher one."""
    quantities = {r: str(n) for r, n in (await listed(kubelet)).items()}
    node = {"metadata": {"name": "mt"}, "status": {"capacity": quantities, "allocatable": quantities}}
    config, _ = parse_device_config("mthreads: {}\n")
    sched = Scheduler(default_registry(config))
    assert sched.observe_node(node) is None
    limits = {"mthreads.com/vgpu": 1, MEMORY: 32, CORE: 8}
    pod = {
        "metadata": {"name": "gpushare-pod-default", "namespace": "default", "uid": "u1"},
        "spec": {"containers": [{"name": "gpushare-pod-1", "resources": {"limits": limits}}]},
    }
    decision = sched.decide(pod)
    assert decision.node == "mt", decision.reason
    assert (
        decision.annotations["hami.io/mthreads-vgpu-devices-allocated"] == "mt-mthreads-1,Mthreads,16384,8:;"
    )
