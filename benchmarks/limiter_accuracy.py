#!/usr/bin/env python3
"""Compute limiter accuracy on the fake device by kernel length: alone, mixed, and without NVML.

Every scenario is one simulated container (its own region file and fake device) running
``native/build/tests/vgpuapp paced:<kernel ns>:<secs>:<warm>`` in one or two processes under
``LD_PRELOAD=<shim>``; vgpuapp launches without pause and prints the utilisation, read from the fake
device's exact timeline, over whole wait+kernel cycles from the first launch after ``warm`` seconds.
The scenarios of a batch run at once (they do not share anything but the host's CPUs).

* alone: one process per kernel length at 20 %;
* mixed: 1 ms kernels and a second process of each other length in one container at 30 %;
* no NVML: one process per kernel length at 30 % whose NVML cannot be loaded (paced by launch timing),
  and a container of two such processes, of 10 us and of 300 ms kernels (with the mixed batch).

    python3 benchmarks/limiter_accuracy.py [--shim native/build/libvgpu.so] [--secs 14] [--json out.json]

``--shim`` may name another build of the library (e.g. an older commit's, built in a scratch
directory) to measure before and after on the same fake driver.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "native" / "build"
APP = BUILD / "tests" / "vgpuapp"
LENGTHS = [10_000, 1_000_000, 100_000_000, 300_000_000, 1_000_000_000]
_SCRUB = ("CUDA_", "GPU_CORE_UTILIZATION_POLICY", "LIBCUDA_LOG_LEVEL", "LIBVGPU_", "FAKECUDA_", "LD_PRELOAD")


def _label(kns: int) -> str:
    return f"{kns // 1000} us" if kns < 1_000_000 else f"{kns // 1_000_000} ms"


def _env(shim: Path, box: Path, limit: int, nvml: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB)}
    env.update(
        LD_PRELOAD=str(shim),
        LD_LIBRARY_PATH=str(BUILD / ("fake" if nvml else "nonvml")),
        FAKECUDA_STATE=str(box / "fake.state"),
        CUDA_DEVICE_MEMORY_SHARED_CACHE=str(box / "vgpu.cache"),
        CUDA_DEVICE_SM_LIMIT=str(limit),
    )
    return env


def run_batch(
    shim: Path, scenarios: dict[str, tuple[int, bool, list[int]]], secs: float, warm: float
) -> dict[str, list[float]]:
    """scenarios: name -> (limit %, NVML loadable, kernel ns per process); returns each process's %"""
    with tempfile.TemporaryDirectory(prefix="limacc") as tmp:
        procs: dict[str, list[subprocess.Popen[str]]] = {}
        for name, (limit, nvml, kernels) in scenarios.items():
            box = Path(tmp) / name
            box.mkdir()
            env = _env(shim, box, limit, nvml)
            procs[name] = [
                subprocess.Popen(
                    [str(APP), f"paced:{k}:{secs}:{warm}"],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
                for k in kernels
            ]
        out: dict[str, list[float]] = {}
        for name, ps in procs.items():
            out[name] = []
            for p in ps:
                stdout, _ = p.communicate(timeout=secs * 4 + 60)
                line = next((ln for ln in stdout.splitlines() if ln.startswith("paced ")), "")
                fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
                out[name].append(float(fields.get("util", "nan")))
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shim", type=Path, default=BUILD / "libvgpu.so")
    ap.add_argument("--secs", type=float, default=14.0)
    ap.add_argument("--warm", type=float, default=3.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    subprocess.run(["make", "-C", str(ROOT / "native"), "-s"], check=True)
    first: dict[str, tuple[int, bool, list[int]]] = {f"alone {_label(k)}": (20, True, [k]) for k in LENGTHS}
    first |= {f"no NVML {_label(k)}": (30, False, [k]) for k in LENGTHS}
    mixed = {f"mixed 1 ms + {_label(k)}": (30, True, [1_000_000, k]) for k in LENGTHS if k != 1_000_000}
    mixed["no NVML mixed 10 us + 300 ms"] = (30, False, [10_000, 300_000_000])
    res = run_batch(args.shim, first, args.secs, args.warm) | run_batch(
        args.shim, mixed, args.secs, args.warm
    )
    print(f"shim {args.shim}, load average {os.getloadavg()[0]:.1f}")
    print("| scenario | target % | per process % | total % |\n|---|---:|---:|---:|")
    for name, utils in res.items():
        target = (first | mixed)[name][0]
        per = " + ".join(f"{u:.2f}" for u in utils)
        print(f"| {name} | {target} | {per} | {sum(utils):.2f} |")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
