"""Stream-ordered pools and retained VMM handles: the limit holds whatever the threads, devices,
streams and number of pools (issue 16, "Memory limits must hold without tampering")."""

from __future__ import annotations

import subprocess

import pytest
from native_helpers import BUILD, MiB, Sandbox, kv, lines

pytestmark = pytest.mark.native

GiB = 1 << 30


def rcs(out: str) -> list[str]:
    return [kv(a)["rc"] for a in lines(out, "alloc ")]


def test_two_threads_growing_one_pool_cannot_both_pass(sandbox: Sandbox) -> None:
    """Both threads see the same 600 MiB cached in the pool; only one of them may be served from it."""
    r = sandbox.run(
        "poolthreshold:max",
        "alloc:async:600m",
        "free:0",  # 600 MiB cached in the pool, charged
        "poolrace:600m",  # the driver takes 50 ms per pooled allocation: both read the cache first
        "info",
        CUDA_DEVICE_MEMORY_LIMIT="1g",
        FAKECUDA_POOL_NS="50000000",
    )
    assert kv(lines(r.stdout, "poolrace ")[0])["ok"] == "1", r.stdout + r.stderr
    assert int(kv(lines(r.stdout, "info ")[0])["free"]) == GiB - 600 * MiB, r.stdout


def on_device_1_from_device_0(
    sandbox: Sandbox, make: str, alloc: str, *more: str, **env: str
) -> tuple[list[str], int, int]:
    """`make` on device 1, `alloc` of 600 MiB with device 0 current, then `more` on device 1: the
    allocation return codes and each device's free memory (1 GiB limits)"""
    r = sandbox.run(
        "dev:1",
        make,
        "dev:0",
        alloc,
        "info",
        "dev:1",
        "info",
        *more,
        FAKECUDA_DEVICES="2",
        CUDA_DEVICE_MEMORY_LIMIT_0="1g",
        CUDA_DEVICE_MEMORY_LIMIT_1="1g",
        **env,
    )
    free0, free1 = (int(kv(i)["free"]) for i in lines(r.stdout, "info "))
    return rcs(r.stdout), free0, free1


def test_a_pool_of_device_1_is_charged_to_device_1(sandbox: Sandbox) -> None:
    got = on_device_1_from_device_0(sandbox, "poolcreate:1", "poolalloc:0:600m")
    assert got == (["0"], GiB, GiB - 600 * MiB)


@pytest.mark.parametrize(
    "driver",
    [
        pytest.param({}, id="cuStreamGetDevice"),
        # CUDA 12.0-12.7: no cuStreamGetDevice; the stream's device comes from its context
        pytest.param(
            {"LD_LIBRARY_PATH": str(BUILD / "pre128"), "FAKECUDA_DRIVER_VERSION": "12040"}, id="pre-12.8"
        ),
    ],
)
def test_alloc_async_on_another_devices_stream(sandbox: Sandbox, driver: dict[str, str]) -> None:
    """cuMemAllocAsync takes the current pool of the stream's device, not of the current device,
    whether or not the driver has cuStreamGetDevice."""
    if driver:  # the old driver really lacks it (read from its symbol table, not loaded here)
        syms = subprocess.run(
            ["nm", "-D", "--defined-only", driver["LD_LIBRARY_PATH"] + "/libcuda.so.1"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert "cuStreamGetCtx" in syms and "cuStreamGetDevice" not in syms
    got = on_device_1_from_device_0(sandbox, "stream", "allocstream:600m", "alloc:linear:600m", **driver)
    assert got == (["0", "2"], GiB, GiB - 600 * MiB)  # device 1 holds 600 MiB of its 1 GiB


def test_more_than_64_pools_keep_their_caches_charged(sandbox: Sandbox) -> None:
    """70 pools each keep 10 MiB: all 700 MiB are device memory, the 65th pool's included."""
    r = sandbox.run(
        "poolcreate:70",
        "poolcycle:10m",
        "info",
        "alloc:linear:354m",  # 700 + 354 > 1024
        "alloc:linear:300m",
        CUDA_DEVICE_MEMORY_LIMIT="1g",
    )
    assert kv(lines(r.stdout, "poolcreate ")[0])["n"] == "70", r.stdout + r.stderr
    assert kv(lines(r.stdout, "poolcycle ")[0])["fails"] == "0", r.stdout + r.stderr
    assert int(kv(lines(r.stdout, "info ")[0])["free"]) == GiB - 700 * MiB, r.stdout
    assert rcs(r.stdout) == ["2", "0"], r.stdout + r.stderr


def test_a_retained_handle_keeps_its_memory_charged(sandbox: Sandbox) -> None:
    """cuMemRetainAllocationHandle is a second reference: release + unmap of the first one frees nothing."""
    r = sandbox.run(
        "alloc:vmm:600m",
        "retain:0",
        "free:0",  # release the creation's reference, unmap
        "info",
        "alloc:linear:600m",  # the retained reference still holds 600 MiB
        "releaseretained",
        "info",
        "alloc:linear:600m",
        CUDA_DEVICE_MEMORY_LIMIT="1g",
    )
    assert kv(lines(r.stdout, "retain ")[0])["rc"] == "0", r.stdout + r.stderr
    assert rcs(r.stdout) == ["0", "2", "0"], r.stdout + r.stderr
    free = [int(kv(i)["free"]) for i in lines(r.stdout, "info ")]
    assert free == [GiB - 600 * MiB, GiB], r.stdout
