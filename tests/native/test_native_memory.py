"""Memory limits inside one process: every allocation family, virtualised queries, parsing."""

from __future__ import annotations

import subprocess

import pytest
from native_helpers import BUILD, MiB, Sandbox, kv, lines

pytestmark = pytest.mark.native

GiB = 1 << 30


def test_parser_unit(native_build: object) -> None:
    r = subprocess.run([str(BUILD / "tests" / "parse_test")], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize(
    "kind", ["linear", "managed", "pitch", "async", "async_ptsz", "pool", "vmm", "array", "array3d", "mipmap"]
)
def test_every_allocation_family_is_limited(sandbox: Sandbox, kind: str) -> None:
    r = sandbox.run(
        f"alloc:{kind}:600m",
        f"alloc:{kind}:600m",  # 1.2 GiB > 1 GiB: refused with CUDA_ERROR_OUT_OF_MEMORY
        "info",
        "free:0",
        "sync",  # a stream-ordered pool gives memory back at synchronisation
        "info",
        f"alloc:{kind}:600m",  # room again after the free
        CUDA_DEVICE_MEMORY_LIMIT="1g",
    )
    allocs = lines(r.stdout, "alloc ")
    assert [kv(a)["rc"] for a in allocs] == ["0", "2", "0"], r.stdout + r.stderr
    infos = [kv(i) for i in lines(r.stdout, "info ")]
    assert int(infos[0]["total"]) == GiB
    assert int(infos[0]["free"]) <= GiB - 600 * MiB  # charged at least the request
    assert int(infos[1]["free"]) == GiB  # fully uncharged: no drift
    assert "OOM dev=0" in r.stderr and "CUDA_ERROR_OUT_OF_MEMORY" in r.stderr


def test_vmm_stays_charged_until_last_unmap(sandbox: Sandbox) -> None:
    # do_free releases the handle first and unmaps second; between the two the memory is still mapped
    r = sandbox.run(
        "alloc:vmm:512m", "alloc:linear:600m", "free:0", "alloc:linear:600m", CUDA_DEVICE_MEMORY_LIMIT="1g"
    )
    assert [kv(a)["rc"] for a in lines(r.stdout, "alloc ")] == ["0", "2", "0"], r.stdout


def test_per_device_limit_overrides_global(sandbox: Sandbox) -> None:
    r = sandbox.run(
        "alloc:linear:300m", "info", CUDA_DEVICE_MEMORY_LIMIT="1g", CUDA_DEVICE_MEMORY_LIMIT_0="256Mi"
    )
    assert kv(lines(r.stdout, "alloc ")[0])["rc"] == "2"
    assert int(kv(lines(r.stdout, "info ")[0])["total"]) == 256 * MiB


def test_no_limit_passes_through(sandbox: Sandbox) -> None:
    r = sandbox.run("alloc:linear:8g", "info")
    assert kv(lines(r.stdout, "alloc ")[0])["rc"] == "0"
    assert int(kv(lines(r.stdout, "info ")[0])["total"]) == 16 * GiB  # the fake card


@pytest.mark.parametrize("value", ["1.5g", "08x", "-1", "0x10000000", "8 g", "lots"])
def test_malformed_limit_denies_and_logs(sandbox: Sandbox, value: str) -> None:
    r = sandbox.run("alloc:linear:1m", CUDA_DEVICE_MEMORY_LIMIT=value)
    assert kv(lines(r.stdout, "alloc ")[0])["rc"] == "2", "a malformed limit must never mean unlimited"
    assert "CUDA_DEVICE_MEMORY_LIMIT" in r.stderr and "malformed" in r.stderr


def test_leading_zero_is_decimal_not_octal(sandbox: Sandbox) -> None:
    r = sandbox.run("info", CUDA_DEVICE_MEMORY_LIMIT="010m")
    assert int(kv(lines(r.stdout, "info ")[0])["total"]) == 10 * MiB


def test_queries_agree_and_never_underflow(sandbox: Sandbox) -> None:
    # the context alone (64 MiB on the fake) exceeds a 32 MiB limit: free must be 0, not 2^64 - x
    r = sandbox.run("info", "totalmem", "nvml", CUDA_DEVICE_MEMORY_LIMIT="32m", FAKECUDA_CTX_BYTES="64m")
    info = kv(lines(r.stdout, "info ")[0])
    assert info["rc"] == "0" and int(info["free"]) == 0 and int(info["total"]) == 32 * MiB
    assert int(kv(lines(r.stdout, "totalmem ")[0])["total"]) == 32 * MiB
    nv = kv(lines(r.stdout, "nvml ")[0])
    assert int(nv["total"]) == 32 * MiB and int(nv["free"]) == 0 and int(nv["used"]) == 32 * MiB
    assert int(nv["total2"]) == 32 * MiB and int(nv["free2"]) == 0


def test_nvml_reports_the_slice(sandbox: Sandbox) -> None:
    r = sandbox.run("alloc:linear:100m", "nvml", "info", CUDA_DEVICE_MEMORY_LIMIT="1g")
    nv = kv(lines(r.stdout, "nvml ")[0])
    info = kv(lines(r.stdout, "info ")[0])
    assert int(nv["total"]) == GiB and int(nv["used"]) == 100 * MiB
    assert int(nv["free"]) == int(info["free"]) == GiB - 100 * MiB


def test_context_overhead_is_measured_and_charged(sandbox: Sandbox) -> None:
    r = sandbox.run(
        "info",
        "alloc:ctx:0",
        "info",
        "free:0",
        "info",
        CUDA_DEVICE_MEMORY_LIMIT="1g",
        FAKECUDA_CTX_BYTES="100m",
    )
    frees = [int(kv(i)["free"]) for i in lines(r.stdout, "info ")]
    # primary context measured through NVML (100 MiB), then a second context charged and released
    assert frees == [GiB - 100 * MiB, GiB - 200 * MiB, GiB - 100 * MiB], r.stdout + r.stderr


def test_configured_context_overhead_refuses_a_context_that_does_not_fit(sandbox: Sandbox) -> None:
    # primary context 200 MiB + 700 MiB = 900 MiB; a second context would need another 200 MiB
    r = sandbox.run(
        "alloc:linear:700m", "alloc:ctx:0", CUDA_DEVICE_MEMORY_LIMIT="1g", LIBVGPU_CONTEXT_OVERHEAD="200m"
    )
    assert [kv(a)["rc"] for a in lines(r.stdout, "alloc ")] == ["0", "2"], r.stdout


def test_log_level(sandbox: Sandbox) -> None:
    quiet = sandbox.run("alloc:linear:2g", CUDA_DEVICE_MEMORY_LIMIT="1g", LIBCUDA_LOG_LEVEL="0")
    assert "OOM dev=0" in quiet.stderr and "INFO" not in quiet.stderr  # errors always print
    loud = sandbox.run("alloc:linear:1m", CUDA_DEVICE_MEMORY_LIMIT="1g", LIBCUDA_LOG_LEVEL="4")
    assert "DEBUG" in loud.stderr and "memory limit 1024.0 MiB" in loud.stderr


def test_without_nvml_memory_limit_holds_and_limiter_paces_by_launch_timing(sandbox: Sandbox) -> None:
    r = sandbox.run(
        "alloc:linear:600m",
        "alloc:linear:600m",
        "launch:kernel:1:1000000",
        LD_LIBRARY_PATH=str(BUILD / "nonvml"),
        CUDA_DEVICE_MEMORY_LIMIT="1g",
        CUDA_DEVICE_SM_LIMIT="20",
    )
    assert [kv(a)["rc"] for a in lines(r.stdout, "alloc ")] == ["0", "2"], r.stdout + r.stderr
    assert r.stderr.count("paced by launch timing") == 1, r.stderr
    util = float(kv(lines(r.stdout, "launch ")[0])["util"])
    # paced from the first launch (before: the limiter stood down, ~100 %), never blocked
    assert 5 < util < 35, f"20 % without NVML: {util:.1f}% {r.stderr[-300:]}"


def test_two_devices_have_independent_limits(sandbox: Sandbox) -> None:
    r = sandbox.run(
        "alloc:linear:600m",  # device 0: 1 GiB
        "dev:1",
        "alloc:linear:300m",  # device 1: 256 MiB -> refused
        "alloc:vmm:200m",
        "info",
        "totalmem",
        "nvml",
        FAKECUDA_DEVICES="2",
        CUDA_DEVICE_MEMORY_LIMIT_0="1g",
        CUDA_DEVICE_MEMORY_LIMIT_1="256m",
    )
    assert [kv(a)["rc"] for a in lines(r.stdout, "alloc ")] == ["0", "2", "0"], r.stdout + r.stderr
    info = kv(lines(r.stdout, "info ")[0])
    assert int(info["total"]) == 256 * MiB and int(info["free"]) == 56 * MiB
    assert int(kv(lines(r.stdout, "totalmem ")[0])["total"]) == 256 * MiB
    nv = kv(lines(r.stdout, "nvml ")[0])
    assert int(nv["total"]) == 256 * MiB and int(nv["used"]) == 200 * MiB, "NVML maps device 1 by UUID"


def test_old_driver_missing_symbols_are_tolerated(sandbox: Sandbox) -> None:
    """A driver without the stream-ordered allocator, cuLaunchKernelEx, cuCtxCreate_v3/v4 and
    cuGetProcAddress_v2 (native/fake/olddrv.map): the rest keeps working and stays limited."""
    r = sandbox.run(
        "alloc:linear:600m",
        "alloc:linear:600m",
        "alloc:async:1m",  # the application calls an entry point the driver does not have
        "alloc:vmm:100m",
        "info",
        LD_LIBRARY_PATH=str(BUILD / "olddrv"),
        FAKECUDA_DRIVER_VERSION="11010",
        CUDA_DEVICE_MEMORY_LIMIT="1g",
        LIBCUDA_LOG_LEVEL="4",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert [kv(a)["rc"] for a in lines(r.stdout, "alloc ")] == ["0", "2", "500", "0"], r.stdout + r.stderr
    assert "43 of 56 hooked entry points present" in r.stderr
    assert int(kv(lines(r.stdout, "info ")[0])["free"]) == (1 << 30) - 700 * MiB


def test_memory_a_pool_keeps_stays_charged(sandbox: Sandbox) -> None:
    """Freed stream-ordered memory stays in the pool (release threshold) and is still device memory."""
    r = sandbox.run(
        "poolthreshold:max",  # what PyTorch's cudaMallocAsync backend does
        "alloc:async:600m",
        "free:0",
        "alloc:async:600m",  # served from the pool's cache: no second charge, no false OOM
        "free:1",
        "sync",
        "alloc:linear:600m",  # the pool still holds 600 MiB of the 1 GiB
        "poolthreshold:0",
        "sync",  # the pool trims itself
        "alloc:linear:600m",
        "info",
        CUDA_DEVICE_MEMORY_LIMIT="1g",
    )
    assert [kv(a)["rc"] for a in lines(r.stdout, "alloc ")] == ["0", "0", "2", "0"], r.stdout + r.stderr
    assert int(kv(lines(r.stdout, "info ")[0])["free"]) == GiB - 600 * MiB


# Every family's charge for these vgpuapp sizes is exactly the size asked (pitch rows of 512 KiB are
# already 512-aligned, arrays are whole 512-byte multiples), so the accounting unit here is the byte.
FAMILIES = ["linear", "managed", "pitch", "async", "async_ptsz", "pool", "vmm", "array", "array3d", "mipmap"]
HALF = 512 * MiB


@pytest.mark.parametrize("kind", FAMILIES)
def test_exact_fit_is_admitted(sandbox: Sandbox, kind: str) -> None:
    """Usage may reach the limit exactly (from empty and from half full); one byte more is refused."""
    r = sandbox.run(
        f"alloc:{kind}:1g",  # the whole slice in one allocation
        "info",
        "alloc:linear:1",  # the slice is full: not one more byte
        "freeall",
        "sync",  # pools give their memory back at synchronisation
        f"alloc:{kind}:{HALF}",
        f"alloc:{kind}:{HALF}",  # usage > 0 and reaches the limit exactly
        "info",
        "alloc:linear:1",
        CUDA_DEVICE_MEMORY_LIMIT="1g",
    )
    assert [kv(a)["rc"] for a in lines(r.stdout, "alloc ")] == ["0", "2", "0", "0", "2"], r.stdout + r.stderr
    for info in lines(r.stdout, "info "):
        assert (int(kv(info)["free"]), int(kv(info)["total"])) == (0, GiB), r.stdout


@pytest.mark.parametrize("kind", FAMILIES)
def test_one_byte_over_the_limit_is_refused(sandbox: Sandbox, kind: str) -> None:
    """The same allocations against a limit one byte smaller: each one that would end one byte over is
    refused, and the byte-exact remainder still fits."""
    r = sandbox.run(
        f"alloc:{kind}:1g",
        f"alloc:{kind}:{HALF}",
        f"alloc:{kind}:{HALF}",  # would end at 1 GiB = limit + 1
        f"alloc:linear:{HALF - 1}",  # ends exactly at the limit
        "info",
        CUDA_DEVICE_MEMORY_LIMIT=str(GiB - 1),
    )
    assert [kv(a)["rc"] for a in lines(r.stdout, "alloc ")] == ["2", "0", "2", "0"], r.stdout + r.stderr
    assert int(kv(lines(r.stdout, "info ")[0])["free"]) == 0, r.stdout


@pytest.mark.parametrize(("limit", "expect"), [(GiB, ["0", "0", "0", "2"]), (GiB - 1, ["0", "0", "2", "2"])])
def test_context_overhead_exact_fit(sandbox: Sandbox, limit: int, expect: list[str]) -> None:
    """Contexts charge their overhead through the same admission: the primary context and three
    created ones are exactly 1 GiB."""
    r = sandbox.run(
        *["alloc:ctx:0"] * 4,
        CUDA_DEVICE_MEMORY_LIMIT=str(limit),
        LIBVGPU_CONTEXT_OVERHEAD="256m",
    )
    assert [kv(a)["rc"] for a in lines(r.stdout, "alloc ")] == expect, r.stdout + r.stderr


@pytest.mark.parametrize(
    "env",
    [
        {"CUDA_DEVICE_MEMORY_LIMIT": "0m"},
        {"CUDA_DEVICE_MEMORY_LIMIT": "0"},
        {"CUDA_DEVICE_MEMORY_LIMIT_0": "0m"},  # a card registered with 0 MiB
        {"CUDA_DEVICE_MEMORY_LIMIT": "1g", "CUDA_DEVICE_MEMORY_LIMIT_0": "0Mi"},
    ],
)
def test_zero_limit_is_a_misconfiguration_not_unlimited(sandbox: Sandbox, env: dict[str, str]) -> None:
    r = sandbox.run("alloc:linear:1m", "info", **env)
    assert kv(lines(r.stdout, "alloc ")[0])["rc"] == "2", "0 must never mean unlimited: " + r.stdout
    assert "zero memory limit" in r.stderr and "misconfiguration" in r.stderr


@pytest.mark.parametrize("kind", ["v1linear", "v1pitch", "v1array", "v1array3d"])
def test_pre_3_2_v1_allocation_api_is_limited(sandbox: Sandbox, kind: str) -> None:
    """cuMemAlloc, cuMemAllocPitch, cuArrayCreate, cuArray3DCreate without _v2 (32-bit sizes): what
    cuGetProcAddress hands out below version 3020. Limited, uncharged on free, and cuMemGetInfo (v1)
    reports the slice."""
    r = sandbox.run(
        f"alloc:{kind}:600m",
        f"alloc:{kind}:600m",
        "info1",
        "free:0",
        "info1",
        f"alloc:{kind}:600m",
        CUDA_DEVICE_MEMORY_LIMIT="1g",
    )
    assert [kv(a)["rc"] for a in lines(r.stdout, "alloc ")] == ["0", "2", "0"], r.stdout + r.stderr
    infos = [kv(i) for i in lines(r.stdout, "info1 ")]
    assert int(infos[0]["total"]) == GiB and int(infos[0]["free"]) == GiB - 600 * MiB, r.stdout
    assert int(infos[1]["free"]) == GiB, r.stdout
