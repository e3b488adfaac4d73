"""Cost of one node-monitor scrape: 100 containers x 8 cards, CPU per scrape and resident memory.

Builds a synthetic node in a temp dir: ``containers/<podUID>_<container>/<id>.cache`` regions in
libvgpu's real layout (ABI v1), one per container, each using all 8 cards (limit, usage, UUID,
core limit, utilisation) with ``--procs`` running processes whose slot liveness locks this process
holds, as the containers' processes would. The pod list holds the 100 pods (with their allocation
annotation); the cards come from the repository's fake NVML (`native/build/fake`, 8 cards) through
pynvml, as in the monitor.

A scrape is what the monitor's ``/metrics`` handler does: ``MonitorCollector.render()``, i.e. list
the directories, read and validate every region, query NVML for every card, build and render every
family; ``gzip`` adds the level-1 compression the handler applies when Prometheus asks for it
(it always does). ``feedback_pass`` is one priority-feedback pass over the same node (every 0.2 s
by default). For comparison, ``generic`` is the same collector rendered by prometheus-client's
``generate_latest``. CPU is ``time.process_time()`` per scrape (p50 / p99 / mean over
``--scrapes``); resident memory is the process's VmRSS and VmHWM after the scrapes (before the generic comparison), with every
module the running ``hami monitor`` imports (its runner, HTTP server, API client and informer)
loaded.

Usage: python benchmarks/bench_monitor.py [--containers 100] [--cards 8] [--procs 2]
                                          [--scrapes 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import gzip
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FAKE_NVML = ROOT / "native" / "build" / "fake" / "libnvidia-ml.so.1"
GiB = 1 << 30
MiB = 1 << 20


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--containers", type=int, default=100)
    ap.add_argument("--cards", type=int, default=8)
    ap.add_argument("--procs", type=int, default=2, help="running processes per container")
    ap.add_argument("--scrapes", type=int, default=200)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    os.environ["FAKECUDA_DEVICES"] = str(args.cards)
    os.environ["FAKECUDA_TOTAL_MEM"] = "80g"
    nvml = FAKE_NVML.exists()
    if nvml:  # pynvml dlopens "libnvidia-ml.so.1": the already-loaded fake answers to that soname
        ctypes.CDLL(str(FAKE_NVML), mode=ctypes.RTLD_GLOBAL)
    else:
        print(f"note: {FAKE_NVML} not built (make native): no host card metrics in the scrape")

    # everything `hami monitor` imports, so the resident size is the service's
    from prometheus_client import CollectorRegistry, generate_latest

    import hami.kube.client
    import hami.kube.informer
    import hami.monitor.cli
    import hami.monitor.http  # noqa: F401
    from hami.monitor.cards import CardReader
    from hami.monitor.layout import PodDirectory
    from hami.monitor.metrics import MonitorCollector
    from hami.testing.regions import FakeDevice, FakeProcess, FakeRegion, SlotHolder, write_region

    tmp = tempfile.mkdtemp(prefix="hami-bench-monitor-")
    root = Path(tmp) / "containers"
    root.mkdir()
    uuids = [f"GPU-face0000-0000-0000-0000-0000000000{d:02x}" for d in range(args.cards)]
    pods = PodDirectory()
    holder = SlotHolder()
    for i in range(args.containers):
        uid = f"{i:08x}-0000-4000-8000-000000000000"
        d = root / f"{uid}_main"
        d.mkdir()
        per_proc = [(300 + i) * MiB] * args.cards
        devices = [
            FakeDevice(
                uuid=uuids[c],
                limit=8 * GiB,
                used=per_proc[c] * args.procs,
                ctx_overhead=300 * MiB,
                sm_limit=25,
                limiting=True,
                util_x100=2000 + i,
            )
            for c in range(args.cards)
        ]
        procs = [FakeProcess(pid=100 + p, used=per_proc) for p in range(args.procs)]
        path = str(d / f"{i:032x}.cache")
        write_region(path, FakeRegion(devices=devices, processes=procs, last_kernel_ns=time.monotonic_ns()))
        holder.hold(path, range(args.procs))
        alloc = ":".join(f"{u},NVIDIA,8192,25" for u in uuids) + ";"
        pods.add(
            {
                "metadata": {
                    "uid": uid,
                    "name": f"pod-{i}",
                    "namespace": f"ns-{i % 10}",
                    "annotations": {"hami.io/vgpu-devices-allocated": alloc},
                },
                "spec": {"containers": [{"name": "main"}]},
            }
        )
    pods.mark_synced()

    collector = MonitorCollector(str(root), "node-0", pods, CardReader() if nvml else None)
    registry = CollectorRegistry()
    registry.register(collector)

    body = collector.render()  # warm-up (and NVML init)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))

    def timed(fn: Any, n: int) -> tuple[list[float], list[float]]:
        cpu, wall = [], []
        for _ in range(n):
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            cpu.append((time.process_time() - c0) * 1e3)
            wall.append((time.perf_counter() - w0) * 1e3)
        return sorted(cpu), sorted(wall)

    cpu_ms, wall_ms = timed(collector.render, args.scrapes)
    gz_ms, _ = timed(lambda: gzip.compress(collector.render(), 1), args.scrapes)
    gz_bytes = len(gzip.compress(body, 1))
    from hami.monitor.feedback import Feedback

    fb = Feedback(str(root))
    fb_ms, _ = timed(lambda: fb.step(time.monotonic_ns()), args.scrapes)
    rss, hwm = _status("VmRSS"), _status("VmHWM")  # before the generic renderer's own garbage
    generic_ms, _ = timed(lambda: generate_latest(registry), max(10, args.scrapes // 10))
    holder.close()
    res: dict[str, Any] = {
        "containers": args.containers,
        "cards": args.cards,
        "procs_per_container": args.procs,
        "scrapes": args.scrapes,
        "series": series,
        "body_bytes": len(body),
        "cpu_ms_p50": round(statistics.median(cpu_ms), 2),
        "cpu_ms_p99": round(cpu_ms[int(len(cpu_ms) * 0.99) - 1], 2),
        "cpu_ms_mean": round(statistics.fmean(cpu_ms), 2),
        "wall_ms_p50": round(statistics.median(wall_ms), 2),
        "gzip_cpu_ms_p50": round(statistics.median(gz_ms), 2),
        "gzip_body_bytes": gz_bytes,
        "generic_cpu_ms_p50": round(statistics.median(generic_ms), 2),
        "feedback_pass_cpu_ms_p50": round(statistics.median(fb_ms), 2),
        "rss_mb": round(rss / 1e6, 1),
        "rss_peak_mb": round(hwm / 1e6, 1),
        "nvml": "fake" if nvml else "none",
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
    }
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
