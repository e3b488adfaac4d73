"""The node monitor reads regions written by the real libvgpu.so (fake driver, LD_PRELOAD).

A program runs in a simulated container directory ``<podUID>_<container>``; the monitor's decoder
and collector must report exactly what the library charged, while the program runs and after it
is gone (a dead process's slot stays in the table until reclaimed, but is not usage).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from native_helpers import MiB, Sandbox
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hami.monitor.layout import PodDirectory
from hami.monitor.metrics import MonitorCollector
from hami.monitor.region import read_region

pytestmark = pytest.mark.native

UID = "0b8a4f8e-1111-2222-3333-444455556666"
FAKE_UUID0 = "GPU-face0000-0000-0000-0000-000000000000"
FAKE_UUID1 = "GPU-face0000-0000-0000-0000-000000000001"


@pytest.fixture
def container(sandbox: Sandbox) -> Sandbox:
    d = sandbox.tmp / "containers" / f"{UID}_main"
    d.mkdir(parents=True)
    sandbox.env.update(
        CUDA_DEVICE_MEMORY_SHARED_CACHE=str(d / "abc.cache"),
        FAKECUDA_DEVICES="2",
        FAKECUDA_CTX_BYTES="64m",
        LIBVGPU_CONTEXT_OVERHEAD="64m",
        CUDA_DEVICE_MEMORY_LIMIT_0="1g",
        CUDA_DEVICE_MEMORY_LIMIT_1="512m",
        CUDA_DEVICE_SM_LIMIT_0="40",
        CUDA_TASK_PRIORITY="0",
        GPU_CORE_UTILIZATION_POLICY="force",
    )
    return sandbox


def _wait(path: Path, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.01)


def test_decoder_reads_what_libvgpu_charged(container: Sandbox) -> None:
    ready = container.tmp / "ready"
    p = container.popen(
        "ctx",
        "alloc:linear:100m",
        "launch:kernel:0.2:1000000",
        "dev:1",
        "alloc:linear:10m",
        f"ready:{ready}",
        "sleep:30000",
    )
    try:
        _wait(ready)
        r = read_region(container.env["CUDA_DEVICE_MEMORY_SHARED_CACHE"])
        assert (r.priority, r.policy) == (0, 1)
        assert 0 < r.last_kernel_ns <= time.monotonic_ns()
        d0, d1 = r.devices
        assert (d0.index, d0.uuid, d0.limit, d0.sm_limit, d0.ctx_overhead) == (
            0,
            FAKE_UUID0,
            1 << 30,
            40,
            64 * MiB,
        )
        assert (d1.index, d1.uuid, d1.limit) == (1, FAKE_UUID1, 512 * MiB)
        assert d0.used == 164 * MiB and d1.used == 74 * MiB  # allocations + one context each
        # 0.2 s of launches at a 40 % limit (and the last one's wait) waited on card 0 (ABI 1.2's
        # counter); none on card 1
        assert r.abi_minor == 3 and 0 < d0.throttled_ns < 0.5e9 and d1.throttled_ns == 0
        # the controller's heartbeat (ABI 1.3): this limited process leads and writes it as it runs
        assert 0 < r.controller_ns <= time.monotonic_ns()
        (proc,) = r.processes
        assert (proc.pid, proc.alive) == (p.pid, True)
        assert proc.used[:2] == (164 * MiB, 74 * MiB)
        assert r.held(0) == 164 * MiB and r.contexts_on(1) == 1
    finally:
        p.kill()
        p.wait()
    r = read_region(container.env["CUDA_DEVICE_MEMORY_SHARED_CACHE"])
    assert [pr.alive for pr in r.processes] == [False]  # killed: the slot remains, it is not usage
    assert r.held(0) == 0 and r.devices[0].used == 164 * MiB


def test_collector_over_a_real_region(container: Sandbox) -> None:
    ready = container.tmp / "ready"
    p = container.popen("ctx", "alloc:linear:200m", f"ready:{ready}", "sleep:30000")
    try:
        _wait(ready)
        pods = PodDirectory()
        pods.add(
            {
                "metadata": {"uid": UID, "name": "p", "namespace": "ns"},
                "spec": {"containers": [{"name": "main"}]},
            }
        )
        reg = CollectorRegistry()
        reg.register(MonitorCollector(str(container.tmp / "containers"), "n", pods, None))
        fams = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    finally:
        p.kill()
        p.wait()
    used = {s.labels["vdevice_index"]: s.value for s in fams["hami_vgpu_memory_used_bytes"].samples}
    assert used == {"0": 264 * MiB, "1": 0}
    (ctx,) = [s for s in fams["hami_vgpu_memory_context_bytes"].samples if s.labels["vdevice_index"] == "0"]
    assert ctx.value == 64 * MiB and ctx.labels["device_uuid"] == FAKE_UUID0
    (lim,) = [s for s in fams["hami_vgpu_memory_limit_bytes"].samples if s.labels["vdevice_index"] == "1"]
    assert lim.value == 512 * MiB and lim.labels["pod"] == "p" and lim.labels["container"] == "main"
