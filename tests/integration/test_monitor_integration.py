"""`hami monitor` as a real process against the real API server, scraped over HTTP.

A node's hook directory holds the region that the real libvgpu.so writes for a running program
(fake driver, LD_PRELOAD) in ``<podUID>_main``, whose pod exists in the API server with
``spec.nodeName`` set to the monitor's node, plus a directory of a pod that does not exist. The
monitor (``python -m hami.monitor``, as the chart runs it, NVML from the fake driver) must label
the program's usage with the pod's namespace/name/container, serve the host card families, run its
priority feedback on the region (heartbeat, core-limit switch off for a container alone), remove
the orphan's directory once its grace period is over and — after the pod is deleted — the pod's.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hami.kube.client import KubeClient
from hami.kube.paths import api_path
from hami.testing.controlplane import ControlPlane
from hami.testing.prereq import missing
from hami.testing.regions import FakeDevice, FakeRegion, write_region
from hami.testing.stack import wait_for

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "native" / "build"
MiB = 1 << 20
CARD0 = "GPU-face0000-0000-0000-0000-000000000000"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


async def _true(cond: Any) -> Any:
    return cond()


def _series(fams: dict[str, Any], name: str, **match: str) -> list[Any]:
    fam = fams.get(name)
    return [s for s in (fam.samples if fam else []) if all(s.labels.get(k) == v for k, v in match.items())]


async def test_monitor_labels_real_usage_and_collects_gone_pods(
    control_plane: ControlPlane, kube_client: KubeClient, namespace: str, tmp_path: Path
) -> None:
    for f in (BUILD / "libvgpu.so", BUILD / "tests" / "vgpuapp", BUILD / "fake" / "libnvidia-ml.so.1"):
        if not f.exists():
            missing(f"{f} is not built (make native)", integration=True)
    node = f"mon-{namespace}"[:63]
    pod = await kube_client.create(
        api_path("v1", "pods", namespace=namespace),
        {
            "metadata": {
                "name": "pa",
                "annotations": {"hami.io/vgpu-devices-allocated": f"{CARD0},NVIDIA,1024,40;"},
            },
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox"}]},
        },
    )
    uid = pod["metadata"]["uid"]
    containers = tmp_path / "hook" / "vgpu" / "containers"
    mine = containers / f"{uid}_main"
    mine.mkdir(parents=True)
    orphan = containers / f"{uuid.uuid4()}_main"
    orphan.mkdir()
    write_region(str(orphan / "x.cache"), FakeRegion(devices=[FakeDevice(CARD0, limit=1 << 30)]))
    os.utime(orphan / "x.cache", (0, 0))
    os.utime(orphan, (0, 0))

    fake = {
        "LD_LIBRARY_PATH": str(BUILD / "fake"),
        "FAKECUDA_STATE": str(tmp_path / "fake.state"),
        "FAKECUDA_DEVICES": "2",
        "FAKECUDA_TOTAL_MEM": "16g",
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_", "LD_PRELOAD", "FAKECUDA_"))}
    ready = tmp_path / "ready"
    app = subprocess.Popen(
        [str(BUILD / "tests" / "vgpuapp"), "ctx", "alloc:linear:100m", f"ready:{ready}", "sleep:120000"],
        env={
            **base,
            **fake,
            "LD_PRELOAD": str(BUILD / "libvgpu.so"),
            "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(mine / "abc.cache"),
            "CUDA_DEVICE_MEMORY_LIMIT_0": "1024m",
            "CUDA_DEVICE_SM_LIMIT_0": "40",
            "FAKECUDA_CTX_BYTES": "64m",
            "LIBVGPU_CONTEXT_OVERHEAD": "64m",
        },
    )
    port = _free_port()
    monitor = subprocess.Popen(
        [
            sys.executable, "-m", "hami.monitor", f"--node-name={node}",
            f"--hook-path={tmp_path / 'hook'}", f"--metrics-bind=127.0.0.1:{port}",
            f"--kubeconfig={control_plane.kubeconfig_path}", "--gc-grace=1", "--gc-interval=0.2",
        ],
        env={**base, **fake, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        await wait_for(lambda: _true(ready.exists), timeout=30)

        def labelled() -> dict[str, Any] | None:
            try:
                fams = _scrape(port)
            except OSError:
                return None
            return fams if _series(fams, "hami_vgpu_memory_used_bytes", pod="pa") else None

        fams = await wait_for(lambda: asyncio.to_thread(labelled), timeout=30)
        ident = {"zone": "vGPU", "namespace": namespace, "pod": "pa", "container": "main"}
        d0 = {**ident, "vdevice_index": "0", "device_uuid": CARD0}
        (used,) = _series(fams, "hami_vgpu_memory_used_bytes", **d0)
        assert used.value == 164 * MiB  # 100 MiB + the 64 MiB context, as libvgpu charged them
        (limit,) = _series(fams, "hami_vgpu_memory_limit_bytes", **d0)
        assert limit.value == 1024 * MiB
        assert _series(fams, "hami_vgpu_memory_context_bytes", **d0)[0].value == 64 * MiB
        assert _series(fams, "hami_vgpu_core_limit_ratio", **d0)[0].value == 40
        assert _series(fams, "hami_container_processes", **ident)[0].value == 1
        host = _series(fams, "hami_host_gpu_memory_used_bytes", node=node)
        assert sorted(s.labels["device_uuid"] for s in host)[0] == CARD0 and len(host) == 2
        assert _series(fams, "hami_build_info")
        ns = _series(fams, "hami_namespace_gpu_memory_used_bytes", namespace=namespace)
        assert ns[0].value == 164 * MiB

        # the priority feedback runs: its heartbeat is in the region, and the container, alone on
        # its card, has the core-limit switch off (policy default) and is not held
        switch, recent = struct.unpack_from("<ii", (mine / "abc.cache").read_bytes(), 40)
        (heartbeat,) = struct.unpack_from("<Q", (mine / "abc.cache").read_bytes(), 64)
        assert (switch, recent >= 0) == (0, True) and 0 < heartbeat <= time.monotonic_ns()
        assert _series(fams, "hami_container_priority", **ident)[0].value == 1
        assert _series(fams, "hami_container_priority_held", **ident)[0].value == 0

        # the orphan (no such pod, untouched for long) is collected; the live pod's is not
        await wait_for(lambda: _true(lambda: not orphan.exists()), timeout=30)
        assert mine.exists()

        # the pod goes: its container stops, the pod leaves the API, then its directory goes
        app.kill()
        app.wait()
        await kube_client.delete(
            api_path("v1", "pods", namespace=namespace, name="pa"), grace_period_seconds=0
        )
        await wait_for(lambda: _true(lambda: not mine.exists()), timeout=30)
        fams = _scrape(port)
        assert not _series(fams, "hami_vgpu_memory_used_bytes", pod="pa")
        rss = next(
            line
            for line in Path(f"/proc/{monitor.pid}/status").read_text().splitlines()
            if line.startswith("VmHWM")
        )
        print(f"monitor {rss}")
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
        monitor.send_signal(signal.SIGTERM)
        try:
            out, _ = monitor.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            monitor.kill()
            out, _ = monitor.communicate()
    assert monitor.returncode == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert "removed" in out and str(orphan) in out


@pytest.fixture(autouse=True)
def _time_limit() -> Any:
    start = time.monotonic()
    yield
    assert time.monotonic() - start < 120
