"""Helpers for the native tier (kept out of conftest.py so the import name is unique)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NATIVE = ROOT / "native"
BUILD = NATIVE / "build"
SHIM = BUILD / "libvgpu.so"
FAKE = BUILD / "fake"
APP = BUILD / "tests" / "vgpuapp"

# environment variables that would leak the caller's settings into a test
MiB = 1 << 20

_SCRUB = ("CUDA_", "GPU_CORE_UTILIZATION_POLICY", "LIBCUDA_LOG_LEVEL", "LIBVGPU_", "FAKECUDA_", "LD_PRELOAD")


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB)}


@dataclass
class Sandbox:
    """One simulated container: a private region file, a private fake device."""

    tmp: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def cache(self) -> Path:
        return self.tmp / "vgpu.cache"

    def make_env(self, shim: bool = True, **extra: str) -> dict[str, str]:
        env = base_env()
        env.update(
            LD_LIBRARY_PATH=str(FAKE),
            FAKECUDA_STATE=str(self.tmp / "fake.state"),
            CUDA_DEVICE_MEMORY_SHARED_CACHE=str(self.cache),
        )
        if shim:
            env["LD_PRELOAD"] = str(SHIM)
        env.update(self.env)
        env.update(extra)
        return env

    def run(
        self, *ops: str, shim: bool = True, timeout: float = 60, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(APP), *ops],
            env=self.make_env(shim, **extra),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def popen(self, *ops: str, shim: bool = True, **extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(APP), *ops],
            env=self.make_env(shim, **extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def lines(out: str, prefix: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith(prefix)]


def kv(line: str) -> dict[str, str]:
    """'info rc=0 free=1 total=2' -> {'rc': '0', 'free': '1', 'total': '2'}"""
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


# offsets in the shared region (ABI v1, asserted in native/src/region.c)
REGION_UTILIZATION_SWITCH = 40
REGION_RECENT_KERNEL = 44
REGION_MONITOR_NS = 64  # the node monitor's heartbeat (CLOCK_MONOTONIC ns): a hold needs a fresh one
# dev[0] starts at 192; its limiter's gain_ppm (u64, 1e6 = 1.0) sits at 184 within it (native/src/vgpu.h)
REGION_DEV0_GAIN_PPM = 192 + 184


def region_poke(path: Path, offset: int, value: int) -> None:
    """Writes an int32 into a region file, as a node monitor would."""
    import mmap
    import struct

    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 4096) as mm:
        struct.pack_into("<i", mm, offset, value)


def region_poke64(path: Path, offset: int, value: int) -> None:
    """Writes a uint64 into a region file."""
    import mmap
    import struct

    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 4096) as mm:
        struct.pack_into("<Q", mm, offset, value)


def region_state(path: Path) -> dict[str, Any]:
    """The region as native/build/vgpuctl reports it (JSON)."""
    import json

    r = subprocess.run(
        [str(BUILD / "vgpuctl"), str(path)], capture_output=True, text=True, check=True, timeout=30
    )
    state: dict[str, Any] = json.loads(r.stdout)
    return state


CONF_PATH = "/etc/hami/vgpu.conf"  # VGPU_CONF_PATH in native/src/vgpu.h


def can_unshare() -> bool:
    """Root with mount namespaces (as the Kubernetes-path tests need)."""
    import shutil

    return os.geteuid() == 0 and shutil.which("unshare") is not None


def run_in_pod(
    sandbox: Sandbox, conf: dict[str, str] | None, script: str, timeout: float = 120, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Runs `script` (sh) as a pod would: in a private mount namespace with an overlay on /etc, the
    library in /etc/ld.so.preload and, when `conf` is given, the device plugin's configuration file
    bind-mounted read-only at CONF_PATH. $APP is vgpuapp; the host's /etc is never touched."""
    ov = sandbox.tmp / "ov"
    for d in ("u", "w"):
        (ov / d).mkdir(parents=True, exist_ok=True)
    setup = [
        f"mount -t overlay overlay -o lowerdir=/etc,upperdir={ov}/u,workdir={ov}/w /etc",
        f"echo {SHIM} > /etc/ld.so.preload",
    ]
    if conf is not None:
        src = sandbox.tmp / "vgpu.conf"
        src.write_text("".join(f"{k}={v}\n" for k, v in conf.items()))
        setup += [
            "mkdir -p /etc/hami",
            f": > {CONF_PATH}",
            f"mount --bind {src} {CONF_PATH}",
            f"mount -o remount,bind,ro {CONF_PATH}",
        ]
    env = sandbox.make_env(shim=False, APP=str(APP), **extra)
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", " && ".join(setup) + "\n" + script],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
