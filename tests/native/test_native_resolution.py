"""Symbol resolution: dlsym on the driver handle, cuGetProcAddress(_v2) per version and flags,
RTLD_NEXT for other interposers."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from native_helpers import APP, BUILD, FAKE, SHIM, Sandbox, base_env, kv, lines

from hami.testing.prereq import missing

pytestmark = pytest.mark.native

PROBE = BUILD / "tests" / "gpa_probe"


def _probe(sandbox: Sandbox, *args: str, **extra: str) -> dict[str, str]:
    env = sandbox.make_env(**extra)
    r = subprocess.run([str(PROBE), *args], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    out: dict[str, str] = {}
    for ln in r.stdout.splitlines():
        key, _, val = ln.partition(" -> ")
        out[key] = val
    return out


def _target(val: str) -> str:
    return val.split()[-1]


def test_exports_are_visible(native_build: object) -> None:
    syms = subprocess.run(
        ["nm", "-D", "--defined-only", str(SHIM)], capture_output=True, text=True, check=True
    )
    names = {ln.split()[-1] for ln in syms.stdout.splitlines()}
    hooks = re.findall(r"^CU_HOOK\((\w+),", (BUILD.parent / "src" / "hooks.def").read_text(), re.M)
    assert len(hooks) >= 38
    missing = [h for h in hooks if h not in names]
    assert not missing, f"hooks not exported: {missing}"
    assert {"dlsym", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetMemoryInfo_v2"} <= names
    internal = [n for n in names if n.startswith("vgpu_")]
    assert not internal, f"internal symbols leak: {internal}"


def test_dlsym_on_driver_handle(sandbox: Sandbox) -> None:
    out = _probe(sandbox, "1")
    assert out["dlsym cuGetProcAddress_v2"] == "libvgpu.so:cuGetProcAddress_v2"
    assert out["dlsym cuGetProcAddress"] == "libvgpu.so:cuGetProcAddress"
    assert out["dlsym cuMemAlloc_v2"] == "libvgpu.so:cuMemAlloc_v2"
    assert out["dlsym cuDeviceGetName"] == "libcuda.so.1:cuDeviceGetName", (
        "unhooked names stay with the driver"
    )
    assert out["dlsym cuNoSuchFunction"] == "NULL err=yes", "a missing symbol must still set dlerror()"


EXPECT = {
    # (symbol, version, flags) -> exported variant that must come back from the shim
    ("cuMemAlloc", 11080, 0): "libvgpu.so:cuMemAlloc_v2",
    # below 3020 only the 32-bit v1 variants existed: they are hooked too (the driver exports them)
    ("cuMemAlloc", 3000, 0): "libvgpu.so:cuMemAlloc",
    ("cuMemFree", 3000, 0): "libvgpu.so:cuMemFree",
    ("cuMemAllocPitch", 3000, 0): "libvgpu.so:cuMemAllocPitch",
    ("cuMemGetInfo", 3000, 0): "libvgpu.so:cuMemGetInfo",
    ("cuArrayCreate", 3000, 0): "libvgpu.so:cuArrayCreate",
    ("cuCtxCreate", 3000, 0): "libvgpu.so:cuCtxCreate",
    ("cuMemAllocPitch", 12020, 0): "libvgpu.so:cuMemAllocPitch_v2",
    ("cuLaunch", 12020, 0): "libvgpu.so:cuLaunch",
    ("cuLaunchGrid", 3000, 0): "libvgpu.so:cuLaunchGrid",
    ("cuLaunchGridAsync", 12020, 2): "libvgpu.so:cuLaunchGridAsync",
    ("cuCtxCreate", 11080, 0): "libvgpu.so:cuCtxCreate_v3",
    ("cuCtxCreate", 12020, 0): "libvgpu.so:cuCtxCreate_v3",
    ("cuCtxCreate", 13000, 0): "libvgpu.so:cuCtxCreate_v4",
    ("cuLaunchKernel", 12020, 0): "libvgpu.so:cuLaunchKernel",
    ("cuLaunchKernel", 12020, 1): "libvgpu.so:cuLaunchKernel",
    ("cuLaunchKernel", 12020, 2): "libvgpu.so:cuLaunchKernel_ptsz",
    ("cuLaunchKernelEx", 13000, 2): "libvgpu.so:cuLaunchKernelEx_ptsz",
    ("cuLaunchCooperativeKernel", 13000, 2): "libvgpu.so:cuLaunchCooperativeKernel_ptsz",
    ("cuGraphLaunch", 12020, 2): "libvgpu.so:cuGraphLaunch_ptsz",
    ("cuGraphLaunch", 12020, 0): "libvgpu.so:cuGraphLaunch",
    ("cuMemAllocAsync", 12020, 2): "libvgpu.so:cuMemAllocAsync_ptsz",
    ("cuMemFreeAsync", 12020, 0): "libvgpu.so:cuMemFreeAsync",
    ("cuGetProcAddress", 12020, 0): "libvgpu.so:cuGetProcAddress_v2",
    ("cuGetProcAddress", 11080, 0): "libvgpu.so:cuGetProcAddress",
    ("cuDeviceGetName", 12020, 0): "libcuda.so.1:cuDeviceGetName",
    ("cuStreamSynchronize", 12020, 2): "libcuda.so.1:cuStreamSynchronize_ptsz",
    ("cuNoSuchFunction", 12020, 0): "NULL",
    # CUDA 12 runtimes ask for the pre-11.0 name at 7000 (seen with libcudart 12.9)
    ("cuDevicePrimaryCtxRelease", 7000, 0): "libvgpu.so:cuDevicePrimaryCtxRelease",
    ("cuDevicePrimaryCtxRelease", 12020, 0): "libvgpu.so:cuDevicePrimaryCtxRelease_v2",
}


@pytest.mark.parametrize("alias", ["0", "1"], ids=["exported-pointers", "driver-internal-pointers"])
def test_get_proc_address_honours_version_and_flags(sandbox: Sandbox, alias: str) -> None:
    # alias=1: the fake hands out internal addresses (as a real driver may); the shim then picks the
    # variant from the table's version ladder and the per-thread flag instead of by pointer identity
    out = _probe(sandbox, "1", FAKECUDA_GPA_ALIAS=alias)
    for (sym, ver, flags), want in EXPECT.items():
        got = _target(out[f"gpa {sym} {ver} {flags}"])
        assert got == want, f"{sym}@{ver} flags={flags}: {got}"
    assert "st=1" in out["gpa cuNoSuchFunction 12020 0"]  # SYMBOL_NOT_FOUND passed through
    assert "st=2" in out["gpa cuMemAllocAsync 7000 0"]  # VERSION_NOT_SUFFICIENT passed through
    assert out["gpa cuMemAlloc 99000 0"] == "rc=1", "a version above the driver's is the driver's error"
    assert _target(out["gpa1 cuMemAlloc 12000 0"]) == "libvgpu.so:cuMemAlloc_v2"
    assert out["chained cuMemAlloc"] == "libvgpu.so:cuMemAlloc_v2"


def test_limit_enforced_through_get_proc_address(sandbox: Sandbox) -> None:
    env = sandbox.make_env(CUDA_DEVICE_MEMORY_LIMIT="1m")
    r = subprocess.run(
        [str(PROBE), str(2 << 20)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert "alloc via gpa rc=2" in r.stdout, r.stdout + r.stderr
    env["LD_PRELOAD"] = ""
    r = subprocess.run(
        [str(PROBE), str(2 << 20)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert "alloc via gpa rc=0" in r.stdout, "without the shim the fake driver allows it"


def test_rtld_next_of_a_later_interposer_is_not_broken(native_build: object) -> None:
    env = base_env()
    env["LD_LIBRARY_PATH"] = str(FAKE)
    libs = BUILD / "tests"
    env["LD_PRELOAD"] = f"{SHIM} {libs / 'libnexta.so'} {libs / 'libnextb.so'}"
    r = subprocess.run([str(PROBE), "next"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert r.stdout.strip() == "next B", r.stdout + r.stderr


def _can_overlay_etc(tmp: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    (tmp / "u").mkdir()
    (tmp / "w").mkdir()
    r = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", _overlay_cmd(tmp, "true")],
        capture_output=True,
        check=False,
        timeout=30,
    )
    return r.returncode == 0


def _overlay_cmd(tmp: Path, inner: str) -> str:
    # a private mount namespace with an overlay on /etc: the host's /etc is never touched
    return (
        f"mount -t overlay overlay -o lowerdir=/etc,upperdir={tmp}/u,workdir={tmp}/w /etc && "
        f"echo {SHIM} > /etc/ld.so.preload && {inner}"
    )


def test_etc_ld_so_preload(sandbox: Sandbox) -> None:
    """The Kubernetes path: /etc/ld.so.preload instead of LD_PRELOAD."""
    ov = sandbox.tmp / "ov"
    ov.mkdir()
    if not _can_overlay_etc(ov):
        missing(
            "overlaying /etc privately needs root and mount namespaces: `unshare --mount` and an "
            "overlay mount must work (in a container: run it privileged, or with CAP_SYS_ADMIN)"
        )
    env = sandbox.make_env(shim=False, CUDA_DEVICE_MEMORY_LIMIT="1g")
    inner = (
        f"{APP} alloc:linear:600m alloc:linear:600m && "
        "grep -c libvgpu /proc/self/maps && python3 -c 'print(\"python ok\")'"
    )
    r = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", _overlay_cmd(ov, inner)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert "LD_PRELOAD" not in env
    assert [kv(a)["rc"] for a in lines(r.stdout, "alloc ")] == ["0", "2"], r.stdout + r.stderr
    assert "python ok" in r.stdout, "unrelated programs keep working with the preload"


def test_driver_loaded_late_by_absolute_path(sandbox: Sandbox) -> None:
    """A lookup before libcuda is loadable by soname, then dlopen() by path: the shim adopts it."""
    env = sandbox.make_env(CUDA_DEVICE_MEMORY_LIMIT="1m", PROBE_LIBCUDA=str(FAKE / "libcuda.so.1"))
    env.pop("LD_LIBRARY_PATH")
    r = subprocess.run(
        [str(PROBE), str(2 << 20)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert "dlsym cuGetProcAddress_v2 -> libvgpu.so:cuGetProcAddress_v2" in r.stdout, r.stdout + r.stderr
    assert "alloc via gpa rc=2" in r.stdout, r.stdout + r.stderr


def _cudart() -> str:
    """libcudart.so.12: HAMI_TEST_CUDART, else the one the nvidia-cuda-runtime-cu12 dev dependency ships."""
    if os.environ.get("HAMI_TEST_CUDART"):
        return os.environ["HAMI_TEST_CUDART"]
    spec = importlib.util.find_spec("nvidia.cuda_runtime")
    assert spec is not None and spec.submodule_search_locations, (
        "install the dev dependency nvidia-cuda-runtime-cu12 (or set HAMI_TEST_CUDART)"
    )
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib" / "libcudart.so.12"
    assert lib.is_file(), f"{lib} missing"
    return str(lib)


def test_real_cudart_resolves_through_the_shim(sandbox: Sandbox) -> None:
    """A real CUDA runtime (libcudart 12 from PyPI) and no GPU: cudart's driver lookups must come back
    as the right hooked variants (it then fails at cuGetExportTable, which the fake does not provide)."""
    env = sandbox.make_env(LIBCUDA_LOG_LEVEL="4")
    r = subprocess.run(
        [str(BUILD / "tests" / "cudart_smoke"), _cudart()],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    for want in (
        "(cuMemAlloc, 3020, 0) = 0 -> cuMemAlloc_v2",
        "(cuLaunchKernel, 7000, 2) = 0 -> cuLaunchKernel_ptsz",
        "(cuGraphLaunch, 10000, 2) = 0 -> cuGraphLaunch_ptsz",
        "(cuMemAllocAsync, 11020, 2) = 0 -> cuMemAllocAsync_ptsz",
        "(cuDevicePrimaryCtxRelease, 7000, 0) = 0 -> cuDevicePrimaryCtxRelease",
        "(cuMemGetInfo, 3020, 0) = 0 -> cuMemGetInfo_v2",
    ):
        assert want in r.stderr, f"{want!r} not in the shim's log:\n{r.stderr[-3000:]}"
