"""The library and the fake driver under AddressSanitizer + UndefinedBehaviorSanitizer, and valgrind."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from native_helpers import BUILD, Sandbox

from hami.testing.prereq import missing

pytestmark = pytest.mark.native

SCENARIO = (
    "alloc:linear:600m",
    "alloc:linear:600m",
    "alloc:vmm:100m",
    "alloc:array:10m",
    "alloc:array3d:10m",
    "alloc:mipmap:10m",
    "alloc:pitch:10m",
    "alloc:async:10m",
    "alloc:pool:10m",
    "alloc:managed:10m",
    "alloc:ctx:0",
    "info",
    "totalmem",
    "nvml",
    "freeall",
    "threads:4:300:1m",
    "fork:1m",
    "launch:kernel:0.6:1000000:0.3",
    "launch:graph_ptsz:0.3:1000000",
    "sync",
    "info",
)


def _env(sb: Sandbox, build: Path, preload: str) -> dict[str, str]:
    return sb.make_env(
        LD_LIBRARY_PATH=str(build / "fake"),
        LD_PRELOAD=preload,
        CUDA_DEVICE_MEMORY_LIMIT="1g",
        CUDA_DEVICE_SM_LIMIT="50",
        FAKECUDA_GRAPH_NS="1000000",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
        ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
    )


def _check(r: subprocess.CompletedProcess[str]) -> None:
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    assert "ERROR: AddressSanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr[-6000:]
    assert "fork child exit=0" in r.stdout and "freeall bad=0" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "info rc=0 free=1073741824 total=1073741824", r.stdout


def test_asan_ubsan(asan_build: Path, tmp_path: Path) -> None:
    libasan = subprocess.run(
        ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
    )
    preload = f"{libasan.stdout.strip()} {asan_build / 'libvgpu.so'}"  # the ASan runtime must come first
    sb = Sandbox(tmp_path)
    r = subprocess.run(
        [str(asan_build / "tests" / "vgpuapp"), *SCENARIO],
        env=_env(sb, asan_build, preload),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    _check(r)
    (tmp_path / "probe").mkdir()
    probe = subprocess.run(
        [str(asan_build / "tests" / "gpa_probe"), str(2 << 30)],
        env=_env(Sandbox(tmp_path / "probe"), asan_build, preload),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probe.returncode == 0 and "alloc via gpa rc=2" in probe.stdout, probe.stdout + probe.stderr[-4000:]


def test_valgrind_clean(native_build: Path, tmp_path: Path) -> None:
    if shutil.which("valgrind") is None:
        missing("valgrind is not installed (apt-get install valgrind; make test installs it as root)")
    sb = Sandbox(tmp_path)
    r = subprocess.run(
        [
            "valgrind",
            "-q",
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--show-possibly-lost=no",
            "--trace-children=no",
            str(BUILD / "tests" / "vgpuapp"),
            *SCENARIO,
        ],
        env=_env(sb, BUILD, str(BUILD / "libvgpu.so")),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    _check(r)
    assert "definitely lost" not in r.stderr and "Invalid" not in r.stderr, r.stderr[-6000:]
