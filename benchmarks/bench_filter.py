"""Filter + score latency of the scheduling core per pod, at 100 / 1000 / 5000 nodes x 8 cards.

About half the cards are in use (pre-loaded running pods). For each cluster size it times
``Scheduler.decide`` for a stream of pods, with the candidate list kube-scheduler would send
(every node name), in three cases:

* ``fits``: 1 GPU / 8000 MiB / 30 % pods that fit somewhere (the common case), reserved as they go;
* ``spread``: the same pods with ``hami.io/node-scheduler-policy: spread``;
* ``nofit``: a pod no node can hold (it asks for a UUID nobody has), so every card of every node is
  examined to give each node a reason.

``--all-vendors`` registers every built-in backend (examples/device-config.yaml) on the same
NVIDIA-only cluster: registering more backends must not slow NVIDIA filtering.

Usage: python benchmarks/bench_filter.py [--sizes 100,1000,5000] [--pods 2000] [--all-vendors] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

from hami.config import load_device_config
from hami.devices.registry import BackendRegistry, default_registry
from hami.protocol.node import DeviceInfo, encode_node_devices
from hami.protocol.pod import ContainerDevice, encode_pod_devices
from hami.scheduling.decide import Scheduler

CARDS = 8
CARD_MEM = 81920


def all_vendors_registry() -> BackendRegistry:
    """Every built-in backend registered (the example device-config's sections), NVIDIA first."""
    cfg, _ = load_device_config(Path(__file__).resolve().parents[1] / "examples" / "device-config.yaml")
    return default_registry(cfg)


def build(n_nodes: int, rng: random.Random, all_vendors: bool = False) -> tuple[Scheduler, list[str]]:
    sched = Scheduler(all_vendors_registry() if all_vendors else default_registry())
    names = []
    for i in range(n_nodes):
        name = f"node-{i:05d}"
        names.append(name)
        devs = [
            DeviceInfo(
                id=f"GPU-{i:05d}-{j}",
                index=j,
                count=10,
                devmem=CARD_MEM,
                devcore=100,
                type="NVIDIA-H100-80GB-HBM3",
                numa=j // 4,
                mode="hami-core",
                health=True,
            )
            for j in range(CARDS)
        ]
        sched.observe_node(
            {
                "metadata": {
                    "name": name,
                    "annotations": {"hami.io/node-nvidia-register": encode_node_devices(devs)},
                }
            }
        )
        # about half the cards in use, by one or two running slices each
        for j in range(CARDS):
            if rng.random() < 0.5:
                for k in range(rng.randint(1, 2)):
                    dev = ContainerDevice(
                        f"GPU-{i:05d}-{j}",
                        "NVIDIA",
                        rng.choice([8000, 16000, 24000]),
                        rng.choice([10, 20, 30]),
                    )
                    pod = {
                        "metadata": {
                            "name": f"run-{i}-{j}-{k}",
                            "namespace": "bench",
                            "uid": f"u-{i}-{j}-{k}",
                            "annotations": {"hami.io/vgpu-devices-allocated": encode_pod_devices([[dev]])},
                        },
                        "spec": {"containers": [{"name": "c"}]},
                    }
                    alloc = sched.allocation_of(pod, name)
                    assert alloc is not None
                    sched.state.add_pod(alloc)
    return sched, names


def pod(
    i: int, *, mem: int = 8000, cores: int = 30, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"p{i}",
            "namespace": "bench",
            "uid": f"p-{i}",
            "annotations": annotations or {},
        },
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "resources": {
                        "limits": {
                            "nvidia.com/gpu": 1,
                            "nvidia.com/gpumem": mem,
                            "nvidia.com/gpucores": cores,
                        }
                    },
                }
            ]
        },
    }


def measure(sched: Scheduler, names: list[str], pods: list[dict[str, Any]]) -> dict[str, float]:
    lat = []
    gc.collect()
    start_all = time.perf_counter()
    for p in pods:
        t0 = time.perf_counter()
        sched.decide(p, candidates=names, now=0)
        lat.append(time.perf_counter() - t0)
    total = time.perf_counter() - start_all
    lat.sort()
    return {
        "p50_ms": statistics.median(lat) * 1e3,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3,
        "max_ms": lat[-1] * 1e3,
        "pods_per_s": len(pods) / total,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000,5000")
    ap.add_argument("--pods", type=int, default=2000)
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--no-gc-freeze",
        dest="gc_freeze",
        action="store_false",
        help="do not move the built cluster state out of the GC's generations",
    )
    ap.add_argument(
        "--all-vendors",
        action="store_true",
        help="register every built-in backend (the NVIDIA-only cluster is filtered the same way)",
    )
    args = ap.parse_args()
    results = []
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"{'nodes':>6} {'case':<7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'pods/s':>9}")
    for size in (int(s) for s in args.sizes.split(",")):
        rng = random.Random(size)
        sched, names = build(size, rng, args.all_vendors)
        if args.gc_freeze:
            gc.collect()
            gc.freeze()  # what the extender does after its first informer sync
        n_pods = args.pods if size <= 1000 else max(200, args.pods // 4)
        cases = {
            "fits": [pod(i) for i in range(n_pods)],
            "spread": [
                pod(n_pods + i, annotations={"hami.io/node-scheduler-policy": "spread"})
                for i in range(n_pods)
            ],
            # a UUID no node has: every card of every node is examined and rejected
            "nofit": [
                pod(2 * n_pods + i, annotations={"nvidia.com/use-gpuuuid": "GPU-none"})
                for i in range(max(20, n_pods // 20))
            ],
        }
        for case, pods in cases.items():
            r: dict[str, Any] = {
                **measure(sched, names, pods),
                "nodes": size,
                "case": case,
                "pods": len(pods),
            }
            results.append(r)
            print(
                f"{size:>6} {case:<7} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['max_ms']:>8.3f} "
                f"{r['pods_per_s']:>9.0f}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
