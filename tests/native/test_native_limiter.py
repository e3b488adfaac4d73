"""Compute limiter accuracy on the simulated device: targets 10..90 % within +-5 points over 10 s.

All scenarios run at once (each on its own fake device and region, so they do not interfere), which
keeps the wall time near 12 s. Utilisation is read from the fake device's timeline, which is exact
and independent of host CPU load."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from native_helpers import (
    APP,
    REGION_RECENT_KERNEL,
    REGION_UTILIZATION_SWITCH,
    Sandbox,
    kv,
    lines,
    region_poke,
)

pytestmark = pytest.mark.native

WARM, SECS = "1", "10"
# (target %, launch path, kernel ns): every launch path the limiter covers, a range of kernel sizes
TARGETS = [
    (10, "kernel", 2_000_000),
    (20, "ptsz", 1_000_000),
    (30, "ex", 500_000),
    (40, "coop", 1_000_000),
    (50, "graph", 200_000),
    (60, "coop_ptsz", 2_000_000),
    (70, "graph_ptsz", 500_000),
    (80, "kernel", 1_000_000),
    (90, "ex", 300_000),
]


def _start(tmp: Path, name: str, mode: str, kns: int, threads: int = 1, **env: str) -> subprocess.Popen[str]:
    d = tmp / name
    d.mkdir(exist_ok=True)
    sb = Sandbox(d)
    return subprocess.Popen(
        [str(APP), f"launch:{mode}:{SECS}:{kns}:{WARM}:{threads}"],
        env=sb.make_env(FAKECUDA_GRAPH_NS=str(kns), **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def results(native_build: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[float]]:
    tmp = tmp_path_factory.mktemp("limiter")
    procs: dict[str, list[subprocess.Popen[str]]] = {}
    for target, mode, kns in TARGETS:
        procs[f"t{target}"] = [_start(tmp, f"t{target}", mode, kns, CUDA_DEVICE_SM_LIMIT=str(target))]
    # two processes of one container share one 40 % budget
    procs["shared40"] = [
        _start(tmp, "shared40", "kernel", 1_000_000, CUDA_DEVICE_SM_LIMIT="40") for _ in range(2)
    ]
    # heterogeneous kernels: a fixed 1x/0.1x/3x pattern, and a switch from 0.1 ms to 3 ms kernels halfway
    procs["mixed45"] = [_start(tmp, "mixed45", "mixed", 1_000_000, CUDA_DEVICE_SM_LIMIT="45")]
    procs["phase30"] = [_start(tmp, "phase30", "phase", 1_000_000, CUDA_DEVICE_SM_LIMIT="30")]
    # four threads of one process launching through the same bucket
    procs["threads35"] = [_start(tmp, "threads35", "kernel", 500_000, threads=4, CUDA_DEVICE_SM_LIMIT="35")]
    procs["disabled"] = [
        _start(
            tmp,
            "disabled",
            "kernel",
            1_000_000,
            CUDA_DEVICE_SM_LIMIT="30",
            GPU_CORE_UTILIZATION_POLICY="disable",
        )
    ]
    procs["force"] = [
        _start(
            tmp, "force", "kernel", 1_000_000, CUDA_DEVICE_SM_LIMIT="25", GPU_CORE_UTILIZATION_POLICY="FORCE"
        )
    ]
    out: dict[str, list[float]] = {}
    for name, ps in procs.items():
        utils = []
        for p in ps:
            stdout, stderr = p.communicate(timeout=90)
            got = lines(stdout, "launch ")
            assert got, f"{name}: {stdout} {stderr}"
            utils.append(float(kv(got[0])["util"]))
        out[name] = utils
    return out


@pytest.mark.parametrize(("target", "mode", "kns"), TARGETS, ids=[f"{t}%-{m}" for t, m, _ in TARGETS])
def test_accuracy(results: dict[str, list[float]], target: int, mode: str, kns: int) -> None:
    util = results[f"t{target}"][0]
    assert abs(util - target) <= 5.0, f"target {target}% via {mode} ({kns} ns kernels): measured {util:.1f}%"


def test_share_is_container_wide(results: dict[str, list[float]]) -> None:
    a, b = results["shared40"]
    assert abs(a + b - 40) <= 5.0, f"two processes of one container used {a:.1f}% + {b:.1f}%"
    assert min(a, b) > 10, f"one process starved: {a:.1f}% / {b:.1f}%"


def test_heterogeneous_kernels(results: dict[str, list[float]]) -> None:
    assert abs(results["mixed45"][0] - 45) <= 5.0, f"mixed kernel sizes: {results['mixed45'][0]:.1f}%"
    assert abs(results["phase30"][0] - 30) <= 5.0, f"kernels 30x longer halfway: {results['phase30'][0]:.1f}%"


def test_threads_share_one_budget(results: dict[str, list[float]]) -> None:
    assert abs(results["threads35"][0] - 35) <= 5.0, f"4 launching threads: {results['threads35'][0]:.1f}%"


def test_policy_disable_and_force(results: dict[str, list[float]]) -> None:
    assert results["disabled"][0] > 90, "GPU_CORE_UTILIZATION_POLICY=disable must not limit"
    assert abs(results["force"][0] - 25) <= 5.0


def test_default_policy_follows_the_monitor_switch(sandbox: Sandbox) -> None:
    env = {"CUDA_DEVICE_SM_LIMIT": "30"}
    assert sandbox.run("init", **env).returncode == 0  # creates the region
    region_poke(sandbox.cache, REGION_UTILIZATION_SWITCH, 0)  # monitor: no contention on this GPU
    r = sandbox.run("launch:kernel:2:1000000:0.5", **env)
    assert float(kv(lines(r.stdout, "launch ")[0])["util"]) > 90, r.stdout + r.stderr


def test_priority_block_from_the_monitor(sandbox: Sandbox) -> None:
    env = {"CUDA_DEVICE_SM_LIMIT": "50"}
    assert sandbox.run("init", **env).returncode == 0
    region_poke(sandbox.cache, REGION_RECENT_KERNEL, -1)  # monitor: a higher-priority task is active
    p = sandbox.popen("launch:kernel:2:1000000:0", **env)
    time.sleep(1.0)
    region_poke(sandbox.cache, REGION_RECENT_KERNEL, 0)
    out, err = p.communicate(timeout=30)
    util = float(kv(lines(out, "launch ")[0])["util"])
    assert 10 < util < 35, f"blocked ~1 s then 50 % for ~1 s, measured {util:.1f}% ({err})"
