"""The sandbox's GPU probe (hami.sandbox.probe) under the real libvgpu.so and the fake driver, as a
sandbox GPU container runs it: its launches go through libvgpu's launch gate, so the region records
the container's last launch (what the monitor's time-since-last-kernel reads), and the kernel loop
runs for the time it is given and reports how many kernels it launched."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from native_helpers import Sandbox

from hami.monitor.region import read_region
from hami.sandbox.probe import KERNEL_LOOP, PROBE, report

pytestmark = pytest.mark.native


def test_the_probe_launches_kernels_through_libvgpu(sandbox: Sandbox) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE + "\nimport time\ntime.sleep(0.5)\n"],
        env=sandbox.make_env(CUDA_DEVICE_MEMORY_LIMIT="1g"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    seen = report(out.stdout)
    assert (seen["cuInit"], seen["alloc_half"], seen["launch"]) == (0, 0, 0), out.stdout + out.stderr
    r = read_region(str(sandbox.cache))
    # libvgpu's watcher stamped the launches (it ticks every 100 ms while the process lives)
    assert 0 < r.last_kernel_ns <= time.monotonic_ns()


def test_the_kernel_loop_runs_for_its_time_then_idles(sandbox: Sandbox) -> None:
    p = subprocess.Popen(
        [sys.executable, "-c", KERNEL_LOOP],
        env=sandbox.make_env(PROBE_LOOP_SECONDS="0.5"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None
        first = json.loads(p.stdout.readline())
        assert first["launch"] == 0, first
        done = json.loads(p.stdout.readline())
        assert done["loop_rc"] == 0 and done["loop_done"] > 10, done
        assert p.poll() is None  # idles, holding its memory, until it is stopped
    finally:
        p.kill()
        p.wait()
    assert read_region(str(sandbox.cache)).last_kernel_ns > 0
