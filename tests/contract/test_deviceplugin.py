"""Device plugin gRPC contract over real unix sockets, driven by the fake kubelet harness."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from hami.deviceplugin.server import DevicePluginServer
from hami.deviceplugin.settings import NodeSettings
from hami.deviceplugin.sources.fake import FakeSource
from hami.testing.kubelet import FakeKubelet

RES = "nvidia.com/gpu"
GPU0 = "GPU-00000000-0000-0000-0000-000000000000"
GPU1 = "GPU-11111111-1111-1111-1111-111111111111"


@pytest.fixture
def plugin_dir() -> Iterator[Path]:
    # Short path: unix socket paths are limited to 108 bytes.
    d = Path(tempfile.mkdtemp(prefix="hdp", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def spec(**extra: Any) -> dict[str, Any]:
    return {
        "cards": [
            {"uuid": GPU0, "model": "NVIDIA A100-SXM4-40GB", "memory": 40960, "numa": 0},
            {"uuid": GPU1, "model": "Tesla T4", "memory": 15360, "numa": 1},
        ],
        **extra,
    }


@pytest.fixture
async def kubelet(plugin_dir: Path) -> AsyncIterator[FakeKubelet]:
    k = FakeKubelet(plugin_dir)
    await k.start()
    yield k
    await k.stop()


def make_plugin(plugin_dir: Path, source: FakeSource, **settings: Any) -> DevicePluginServer:
    return DevicePluginServer(
        source,
        NodeSettings(node_name="n1", split_count=settings.pop("split_count", 3), **settings),
        plugin_dir=plugin_dir,
        watch_interval=0.1,
    )


@pytest.fixture
async def plugin(plugin_dir: Path, kubelet: FakeKubelet) -> AsyncIterator[DevicePluginServer]:
    p = make_plugin(plugin_dir, FakeSource(spec(), poll_interval=0.05))
    await p.start()
    yield p
    await p.stop()


async def test_register_request(kubelet: FakeKubelet, plugin: DevicePluginServer) -> None:
    req = await kubelet.wait_registrations(1)
    assert req.version == "v1beta1"
    assert req.endpoint == "nvidia-gpu.sock"
    assert req.resource_name == RES
    assert not req.options.pre_start_required
    assert not req.options.get_preferred_allocation_available
    assert (plugin.plugin_dir / "nvidia-gpu.sock").is_socket()


async def test_list_and_watch_initial_devices(kubelet: FakeKubelet, plugin: DevicePluginServer) -> None:
    await kubelet.wait_for(lambda: RES in kubelet.devices)
    assert kubelet.devices[RES] == {f"{g}-{i}": "Healthy" for g in (GPU0, GPU1) for i in range(3)}
    assert all(not nodes for nodes in kubelet.topology[RES].values())  # NUMA topology off by default


async def test_numa_topology_and_options(plugin_dir: Path, kubelet: FakeKubelet) -> None:
    p = make_plugin(
        plugin_dir,
        FakeSource(spec()),
        split_count=2,
        enable_numa_topology=True,
        enable_preferred_allocation=True,
    )
    await p.start()
    try:
        await kubelet.wait_for(lambda: RES in kubelet.devices)
        assert kubelet.topology[RES] == {
            f"{GPU0}-0": [0],
            f"{GPU0}-1": [0],
            f"{GPU1}-0": [1],
            f"{GPU1}-1": [1],
        }
        opts = kubelet.options(RES)
        assert opts is not None and opts.get_preferred_allocation_available
        assert kubelet.registrations[0].options.get_preferred_allocation_available
    finally:
        await p.stop()


async def test_health_file_marks_all_slices_unhealthy_within_5s(
    plugin_dir: Path, kubelet: FakeKubelet
) -> None:
    health = plugin_dir / "health.txt"
    p = make_plugin(plugin_dir, FakeSource(spec(health_file=str(health)), poll_interval=0.05))
    await p.start()
    try:
        await kubelet.wait_for(lambda: RES in kubelet.devices)
        health.write_text(f"{GPU1} 79\n")
        t0 = time.monotonic()
        await kubelet.wait_for(
            lambda: all(kubelet.devices[RES][f"{GPU1}-{i}"] == "Unhealthy" for i in range(3)), timeout=5
        )
        assert time.monotonic() - t0 < 5
        assert all(kubelet.devices[RES][f"{GPU0}-{i}"] == "Healthy" for i in range(3))
        # recovery is reported too
        health.write_text("")
        await kubelet.wait_for(lambda: set(kubelet.devices[RES].values()) == {"Healthy"}, timeout=5)
    finally:
        await p.stop()


async def test_scheduled_failure_and_application_xid(plugin_dir: Path, kubelet: FakeKubelet) -> None:
    failures = [
        {"uuid": GPU0, "after_seconds": 0.3, "xid": 13},  # application error: ignored
        {"uuid": GPU1, "after_seconds": 0.3, "xid": 48},  # double-bit ECC: card unhealthy
    ]
    p = make_plugin(plugin_dir, FakeSource(spec(failures=failures), poll_interval=0.05))
    await p.start()
    try:
        await kubelet.wait_for(
            lambda: kubelet.devices.get(RES, {}).get(f"{GPU1}-0") == "Unhealthy",
            timeout=5,
        )
        await asyncio.sleep(0.3)
        assert {kubelet.devices[RES][f"{GPU0}-{i}"] for i in range(3)} == {"Healthy"}
        assert {kubelet.devices[RES][f"{GPU1}-{i}"] for i in range(3)} == {"Unhealthy"}
    finally:
        await p.stop()


async def test_kubelet_restart_reregisters(kubelet: FakeKubelet, plugin: DevicePluginServer) -> None:
    await kubelet.wait_registrations(1)
    await kubelet.wait_for(lambda: RES in kubelet.devices)
    kubelet.devices.clear()
    await kubelet.restart(wipe=True, downtime=0.3)  # kubelet wipes our socket too
    req = await kubelet.wait_registrations(2, timeout=10)
    assert req.resource_name == RES
    await kubelet.wait_for(lambda: len(kubelet.devices.get(RES, {})) == 6)
    assert (plugin.plugin_dir / "nvidia-gpu.sock").is_socket()
    await plugin.wait_registered(5)
    assert plugin.registrations == 2


async def test_plugin_waits_for_a_late_kubelet_and_stops_without_one(plugin_dir: Path) -> None:
    p = make_plugin(plugin_dir, FakeSource(spec()))
    await p.start()  # no kubelet yet: serving, registration retried in the background
    assert (plugin_dir / "nvidia-gpu.sock").is_socket()
    async with FakeKubelet(plugin_dir) as k:
        await k.wait_registrations(1, timeout=10)
        await k.wait_for(lambda: len(k.devices.get(RES, {})) == 6)
    await p.stop()
    assert not (plugin_dir / "nvidia-gpu.sock").exists()
    lonely = make_plugin(plugin_dir, FakeSource(spec()))
    await lonely.start()
    await asyncio.wait_for(lonely.stop(), 5)  # never blocks on the absent kubelet


async def test_preferred_allocation_prestart_and_allocate_without_allocator(
    kubelet: FakeKubelet, plugin: DevicePluginServer
) -> None:
    await kubelet.wait_for(lambda: RES in kubelet.devices)
    client = kubelet.client(RES)
    available = [f"{GPU0}-0", f"{GPU0}-1", f"{GPU0}-2", f"{GPU1}-0"]
    got = await client.preferred(available, 2)
    assert {g.rsplit("-", 1)[0] for g in got} == {GPU0, GPU1}  # distinct physical cards
    assert await client.preferred(available, 2, must_include=[f"{GPU0}-2"]) == [f"{GPU0}-2", f"{GPU1}-0"]
    await client.pre_start([f"{GPU0}-0"])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.allocate([f"{GPU0}-0"])
    assert "allocator" in (err.value.details() or "")


async def test_stop_removes_socket_and_ends_stream(kubelet: FakeKubelet, plugin_dir: Path) -> None:
    p = make_plugin(plugin_dir, FakeSource(spec()))
    await p.start()
    await kubelet.wait_for(lambda: RES in kubelet.devices)
    await p.stop()
    assert not (plugin_dir / "nvidia-gpu.sock").exists()
    assert (plugin_dir / "kubelet.sock").exists()  # never touches the kubelet's socket


def test_sigterm_stops_cli_cleanly(plugin_dir: Path, tmp_path: Path) -> None:
    import yaml

    node = tmp_path / "node.yaml"
    node.write_text(yaml.safe_dump(spec()))

    async def scenario() -> None:
        async with FakeKubelet(plugin_dir) as k:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "from hami.deviceplugin.cli import device_plugin; device_plugin()",
                "--fake-node",
                str(node),
                "--plugin-dir",
                str(plugin_dir),
                "--node-name",
                "n1",
                "--device-split-count",
                "2",
                "--standalone",
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            try:
                await k.wait_for(lambda: len(k.devices.get(RES, {})) == 4, timeout=20)
                assert (plugin_dir / "nvidia-gpu.sock").is_socket()
                proc.send_signal(signal.SIGTERM)
                rc = await asyncio.wait_for(proc.wait(), 10)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            out = (await proc.stdout.read()).decode() if proc.stdout else ""
            assert rc == 0, out
            assert not (plugin_dir / "nvidia-gpu.sock").exists(), out

    asyncio.run(scenario())
