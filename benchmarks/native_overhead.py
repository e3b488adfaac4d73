#!/usr/bin/env python3
"""Latency libvgpu.so adds per intercepted call, against the fake CUDA driver.

Runs native/build/tests/bench_overhead (a loop of cuLaunchKernel, and of cuMemAlloc+cuMemFree)
with and without LD_PRELOAD=libvgpu.so, interleaving the configurations round by round so that
machine noise hits all of them alike, and reports the median ns per call and the median added
over the no-shim baseline measured in the same run.

    python3 benchmarks/native_overhead.py [--rounds 6] [--batches 40] [--per 20000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "native" / "build"
BENCH = BUILD / "tests" / "bench_overhead"

CONFIGS: dict[str, dict[str, str]] = {
    "no shim": {},
    "libvgpu, no limits": {"LD_PRELOAD": str(BUILD / "libvgpu.so")},
    "libvgpu, memory limit": {"LD_PRELOAD": str(BUILD / "libvgpu.so"), "CUDA_DEVICE_MEMORY_LIMIT": "8g"},
    # limiter on; the fake's kernels take no GPU time, so once the controller has learnt that, the bucket
    # never runs dry and this measures the fast path of a limited launch (one atomic on the shared bucket)
    "libvgpu, memory + SM limit (tokens available)": {
        "LD_PRELOAD": str(BUILD / "libvgpu.so"),
        "CUDA_DEVICE_MEMORY_LIMIT": "8g",
        "CUDA_DEVICE_SM_LIMIT": "99",
    },
}


def run_once(env_extra: dict[str, str], tmp: Path, batches: int, per: int) -> dict[str, list[float]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_", "LD_PRELOAD", "FAKECUDA_"))}
    for f in tmp.glob("*"):
        f.unlink()
    env.update(
        LD_LIBRARY_PATH=str(BUILD / "fake"),
        FAKECUDA_STATE=str(tmp / "fake.state"),
        FAKECUDA_KERNEL_NS="0",
        CUDA_DEVICE_MEMORY_SHARED_CACHE=str(tmp / "vgpu.cache"),
        LIBCUDA_LOG_LEVEL="0",
    )
    env.update(env_extra)
    warm = "3" if "CUDA_DEVICE_SM_LIMIT" in env_extra else "0.3"
    out = subprocess.run(
        [str(BENCH), str(batches), str(per), warm],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    res: dict[str, list[float]] = {"launch": [], "allocfree": []}
    for ln in out.splitlines():
        op, val = ln.split()
        res[op].append(float(val))
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--per", type=int, default=20000, help="launches per batch (alloc/free: a tenth)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    subprocess.run(["make", "-s", "-C", str(ROOT / "native")], check=True)
    samples: dict[str, dict[str, list[float]]] = {c: {"launch": [], "allocfree": []} for c in CONFIGS}
    with tempfile.TemporaryDirectory() as td:
        for _ in range(args.rounds):
            for name, extra in CONFIGS.items():
                r = run_once(extra, Path(td), args.batches, args.per)
                for op, vals in r.items():
                    samples[name][op].extend(vals)
    med = {c: {op: statistics.median(v) for op, v in ops.items()} for c, ops in samples.items()}
    base = med["no shim"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}")
    print(
        f"{args.rounds} rounds x {args.batches} batches x {args.per} launches ({args.per // 10} alloc+free)\n"
    )
    print("| configuration | cuLaunchKernel ns/call | added | cuMemAlloc+cuMemFree ns/pair | added |")
    print("|---|---:|---:|---:|---:|")
    for c, m in med.items():
        dl, da = m["launch"] - base["launch"], m["allocfree"] - base["allocfree"]
        added_l = "-" if c == "no shim" else f"{dl:+.1f}"
        added_a = "-" if c == "no shim" else f"{da:+.1f}"
        print(f"| {c} | {m['launch']:.1f} | {added_l} | {m['allocfree']:.1f} | {added_a} |")
    if args.json:
        args.json.write_text(json.dumps({"median_ns": med, "samples": samples}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
