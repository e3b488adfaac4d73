#!/usr/bin/env python3
"""Validate libvgpu.so on a real NVIDIA GPU with PyTorch.

Checks, each in a fresh child process with LD_PRELOAD=native/build/libvgpu.so and its own region file:
  1. memory: under CUDA_DEVICE_MEMORY_LIMIT a tensor that fits is allocated and one that does not raises
     torch.cuda.OutOfMemoryError (a clean OOM, the process survives); torch.cuda.mem_get_info(),
     NVML (pynvml) and nvidia-smi all report the slice, not the card.
  2. compute: CUDA_DEVICE_SM_LIMIT 25/50/75 (policy force) on a saturating matmul loop; utilisation is
     sampled from NVML by this (unshimmed) parent, and the throughput ratio against an unlimited run is
     reported too. Pass: within +-5 points.
  3. overhead: a loop of small kernels (and a CUDA-graph replay loop) with and without the shim.

Usage (on the GPU host, from the repo root):
    make -C native && python3 scripts/validate_gpu.py [--device 0] [--json out.json]
Requires: an NVIDIA driver, torch with CUDA, nvidia-ml-py (pynvml); nvidia-smi optional.
Exit status 0 when every check passes. Paste the printed markdown into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHIM = ROOT / "native" / "build" / "libvgpu.so"
MiB = 1 << 20

CHILD_MEMORY = textwrap.dedent(
    """
    import json, sys, torch
    limit = int(sys.argv[1])
    out = {}
    free, total = torch.cuda.mem_get_info()
    out["mem_get_info_total"] = total
    a = torch.empty(limit // 2, dtype=torch.uint8, device="cuda")  # fits
    out["half_ok"] = True
    try:
        b = torch.empty(limit, dtype=torch.uint8, device="cuda")  # cannot fit
        out["oom"] = False
    except torch.cuda.OutOfMemoryError as e:
        out["oom"] = True
        out["oom_message"] = str(e).splitlines()[0][:200]
    c = torch.ones(1024, device="cuda")  # still usable after the OOM
    out["alive_after_oom"] = float(c.sum().item()) == 1024.0
    free2, total2 = torch.cuda.mem_get_info()
    out["free_after"] = free2
    print(json.dumps(out))
    """
)

CHILD_SATURATE = textwrap.dedent(
    """
    import sys, time, torch
    secs, n = float(sys.argv[1]), int(sys.argv[2])
    x = torch.randn(n, n, device="cuda")
    y = torch.randn(n, n, device="cuda")
    torch.cuda.synchronize()
    print("ready", flush=True)
    t0 = time.monotonic(); it = 0
    while time.monotonic() - t0 < secs:
        for _ in range(8):
            y = x @ y
            y = y / (y.norm() + 1.0)
        torch.cuda.synchronize()
        it += 8
    print(f"iters {it / (time.monotonic() - t0):.3f}", flush=True)
    """
)

CHILD_SMALL = textwrap.dedent(
    """
    import sys, time, torch
    n = int(sys.argv[1])
    x = torch.zeros(256, device="cuda")
    for _ in range(2000): x.add_(1.0)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n): x.add_(1.0)
    torch.cuda.synchronize()
    eager = (time.perf_counter() - t0) / n
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        for _ in range(3): x.add_(1.0)
    torch.cuda.synchronize()
    with torch.cuda.graph(g):
        for _ in range(20): x.add_(1.0)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n // 20): g.replay()
    torch.cuda.synchronize()
    graph = (time.perf_counter() - t0) / (n // 20)
    print(f"{eager * 1e9:.1f} {graph * 1e9:.1f}")
    """
)


def child_env(tmp: Path, shim: bool, device: int, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CUDA_DEVICE_", "GPU_CORE_", "LD_PRELOAD"))
    }
    env["CUDA_VISIBLE_DEVICES"] = str(device)
    cache = tmp / f"vgpu-{time.monotonic_ns()}.cache"
    env["CUDA_DEVICE_MEMORY_SHARED_CACHE"] = str(cache)
    if shim:
        env["LD_PRELOAD"] = str(SHIM)
    env.update(extra)
    return env


def nvml_handle(device: int) -> tuple[Any, Any]:
    import pynvml

    pynvml.nvmlInit()
    return pynvml, pynvml.nvmlDeviceGetHandleByIndex(device)


def check_memory(tmp: Path, device: int, limit_mib: int) -> dict[str, Any]:
    limit = limit_mib * MiB
    env = child_env(tmp, True, device, CUDA_DEVICE_MEMORY_LIMIT=f"{limit_mib}m")
    r = subprocess.run(
        [sys.executable, "-c", CHILD_MEMORY, str(limit)], env=env, capture_output=True, text=True
    )
    res: dict[str, Any] = {"limit_bytes": limit, "rc": r.returncode, "stderr_tail": r.stderr[-800:]}
    if r.returncode == 0:
        res.update(json.loads(r.stdout.strip().splitlines()[-1]))
    # NVML inside the slice (pynvml loads libnvidia-ml.so.1 with dlopen+dlsym: the shim's path). NVML
    # ignores CUDA_VISIBLE_DEVICES, so it is asked for the physical index.
    probe = (
        f"import pynvml,sys; pynvml.nvmlInit(); h=pynvml.nvmlDeviceGetHandleByIndex({device}); "
        "m=pynvml.nvmlDeviceGetMemoryInfo(h); print(m.total, m.used, m.free)"
    )
    r2 = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    if r2.returncode == 0:
        total, used, free = (int(v) for v in r2.stdout.split())
        res["nvml_total"], res["nvml_used"], res["nvml_free"] = total, used, free
    if shutil.which("nvidia-smi"):
        r3 = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=memory.total,memory.used",
                "--format=csv,noheader,nounits",
                "-i",
                str(device),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        res["nvidia_smi"] = r3.stdout.strip()
    ok = (
        res.get("oom") is True
        and res.get("alive_after_oom") is True
        and res.get("mem_get_info_total") == limit
        and res.get("nvml_total") == limit
    )
    if res.get("nvidia_smi"):
        ok = ok and int(str(res["nvidia_smi"]).split(",")[0]) == limit_mib
    res["pass"] = ok
    return res


def run_saturating(tmp: Path, device: int, secs: float, n: int, limit: int | None) -> dict[str, Any]:
    extra = {"CUDA_DEVICE_SM_LIMIT": str(limit), "GPU_CORE_UTILIZATION_POLICY": "force"} if limit else {}
    env = child_env(tmp, limit is not None, device, **extra)
    p = subprocess.Popen(
        [sys.executable, "-c", CHILD_SATURATE, str(secs), str(n)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    pynvml, h = nvml_handle(device)
    time.sleep(min(2.0, secs / 4))  # let the controller settle
    t_end = time.monotonic() + secs * 0.6
    samples, dev_samples, last = [], [], int(time.time() * 1e6)
    while time.monotonic() < t_end:
        time.sleep(0.5)
        try:
            for s in pynvml.nvmlDeviceGetProcessUtilization(h, last):
                if s.pid == p.pid:
                    samples.append(s.smUtil)
        except pynvml.NVMLError:
            pass
        dev_samples.append(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
        last = int(time.time() * 1e6)
    out, _ = p.communicate(timeout=secs + 60)
    iters = float(out.split()[-1])
    return {
        "iters_per_s": iters,
        "proc_util": statistics.mean(samples) if samples else float("nan"),
        "device_util": statistics.mean(dev_samples),
    }


def check_limiter(tmp: Path, device: int, secs: float, n: int) -> dict[str, Any]:
    base = run_saturating(tmp, device, secs, n, None)
    res: dict[str, Any] = {"unlimited": base, "targets": {}}
    ok = True
    for target in (25, 50, 75):
        r = run_saturating(tmp, device, secs, n, target)
        r["throughput_share"] = 100.0 * r["iters_per_s"] / base["iters_per_s"]
        util = r["proc_util"] if r["proc_util"] == r["proc_util"] else r["device_util"]
        r["pass"] = abs(util - target) <= 5.0
        ok = ok and bool(r["pass"])
        res["targets"][target] = r
    res["pass"] = ok
    return res


def check_overhead(tmp: Path, device: int, n: int, rounds: int) -> dict[str, Any]:
    vals: dict[str, list[list[float]]] = {"native": [], "shim": [], "shim+memlimit": []}
    for _ in range(rounds):
        for name in vals:
            extra = {"CUDA_DEVICE_MEMORY_LIMIT": "64g"} if name == "shim+memlimit" else {}
            env = child_env(tmp, name != "native", device, **extra)
            r = subprocess.run(
                [sys.executable, "-c", CHILD_SMALL, str(n)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            vals[name].append([float(v) for v in r.stdout.split()])
    med = {
        k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in vals.items()
    }
    nat = med["native"]
    return {
        name: {
            "eager_ns_per_kernel": m[0],
            "graph_ns_per_replay": m[1],
            "eager_overhead_pct": 100.0 * (m[0] - nat[0]) / nat[0],
            "graph_overhead_pct": 100.0 * (m[1] - nat[1]) / nat[1],
        }
        for name, m in med.items()
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--limit-mib", type=int, default=4096)
    ap.add_argument("--secs", type=float, default=20.0, help="seconds per limiter run")
    ap.add_argument("--matmul", type=int, default=4096, help="matrix size of the saturating loop")
    ap.add_argument("--small-iters", type=int, default=200000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not SHIM.exists():
        subprocess.run(["make", "-C", str(ROOT / "native")], check=True)
    try:
        import torch
    except ImportError:
        print("validate_gpu.py needs PyTorch with CUDA (and nvidia-ml-py) on a GPU host", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("no CUDA device visible to torch: nothing to validate", file=sys.stderr)
        return 2
    pynvml, h = nvml_handle(args.device)
    gpu = pynvml.nvmlDeviceGetName(h)
    report: dict[str, Any] = {
        "gpu": gpu if isinstance(gpu, str) else gpu.decode(),
        "driver": pynvml.nvmlSystemGetDriverVersion(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host": platform.platform(),
    }
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        report["memory"] = check_memory(tmp, args.device, args.limit_mib)
        report["limiter"] = check_limiter(tmp, args.device, args.secs, args.matmul)
        report["overhead"] = check_overhead(tmp, args.device, args.small_iters, args.rounds)
    print(json.dumps(report, indent=1, default=str))
    mem, lim, ovh = report["memory"], report["limiter"], report["overhead"]
    print(
        f"\n### {report['gpu']}, driver {report['driver']}, torch {report['torch']} (CUDA {report['cuda']})\n"
    )
    print(
        f"- memory limit {args.limit_mib} MiB: pass={mem['pass']} (OOM={mem.get('oom')}, "
        f"mem_get_info total={mem.get('mem_get_info_total')}, NVML total={mem.get('nvml_total')}, "
        f"nvidia-smi={mem.get('nvidia_smi')})"
    )
    print("\n| SM limit | NVML process util % | device util % | throughput vs unlimited % | pass |")
    print("|---:|---:|---:|---:|---|")
    for t, r in lim["targets"].items():
        print(
            f"| {t} | {r['proc_util']:.1f} | {r['device_util']:.1f} | {r['throughput_share']:.1f} | {r['pass']} |"
        )
    print("\n| configuration | small kernel ns | overhead % | graph replay ns | overhead % |")
    print("|---|---:|---:|---:|---:|")
    for name, o in ovh.items():
        print(
            f"| {name} | {o['eager_ns_per_kernel']:.0f} | {o['eager_overhead_pct']:+.2f} | "
            f"{o['graph_ns_per_replay']:.0f} | {o['graph_overhead_pct']:+.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0 if mem["pass"] and lim["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
