"""End-to-end scheduling throughput through the real kube-scheduler + hami extender.

Starts etcd + kube-apiserver + kube-scheduler (binaries from ``HAMI_K8S_BIN`` or the cache that
``hack/build-k8s.sh`` fills), creates N fake GPU nodes x 8 cards, runs the extender in-process and
a fake node agent that completes each bind the way the device plugin's Allocate does (bind-phase
success + node lock released). Then it creates P pods as fast as the API accepts them and measures:

* pods/s from the first creation to the last pod bound (``spec.nodeName`` set);
* the extender's /filter and /bind latency (p50/p99) as seen inside the service.

With ``--baseline`` it measures the stock kube-scheduler alone on the same machine (pods asking for
the ``nvidia.com/gpu`` extended resource, no extender, kube-scheduler binds itself): the ceiling
the API server and kube-scheduler allow here.

Usage: python benchmarks/bench_e2e.py [--nodes 500] [--pods 1000] [--policy binpack|spread] [--baseline]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from hami.kube.client import KubeClient
from hami.kube.informer import Informer
from hami.kube.paths import api_path
from hami.testing.controlplane import ControlPlane
from hami.testing.gpucluster import create_gpu_node, gpu_cards, gpu_pod
from hami.testing.stack import Stack


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * q))] * 1e3 if s else float("nan")


def timed(fn: Callable[..., Awaitable[Any]], into: list[float]) -> Callable[..., Awaitable[Any]]:
    async def wrapper(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await fn(*a, **kw)
        finally:
            into.append(time.perf_counter() - t0)

    return wrapper


async def create_and_wait(
    client: KubeClient,
    sem: asyncio.Semaphore,
    pods: list[dict[str, Any]],
    cached_pods: Callable[[], Iterable[dict[str, Any]]],
    timeout: float,
) -> tuple[list[str], float]:
    """Create ``pods`` in namespace bench as fast as the API takes them; wait until all are bound.

    Returns the node of every bound pod (read from a watch cache) and the seconds it took.
    """
    start = time.perf_counter()

    async def create(p: dict[str, Any]) -> None:
        async with sem:
            await client.create(api_path("v1", "pods", namespace="bench"), p)

    creating = asyncio.gather(*(create(p) for p in pods))
    nodes: list[str] = []
    while len(nodes) < len(pods) and time.perf_counter() - start < timeout:
        await asyncio.sleep(0.1)
        nodes = [
            p["spec"]["nodeName"]
            for p in cached_pods()
            if (p.get("metadata") or {}).get("namespace") == "bench" and (p.get("spec") or {}).get("nodeName")
        ]
    elapsed = time.perf_counter() - start
    await creating
    return nodes, elapsed


async def run(cp: ControlPlane, args: argparse.Namespace) -> dict[str, Any]:
    kc = cp.kube_config()
    async with KubeClient(kc) as client:
        await client.create(api_path("v1", "namespaces"), {"metadata": {"name": "bench"}})
        t0 = time.perf_counter()
        sem = asyncio.Semaphore(16)

        async def node(i: int) -> None:
            async with sem:
                await create_gpu_node(client, f"gpu-{i:04d}", gpu_cards(f"gpu-{i:04d}", n=8, mem=81920))

        await asyncio.gather(*(node(i) for i in range(args.nodes)))
        print(f"created {args.nodes} nodes x 8 cards in {time.perf_counter() - t0:.1f}s")

        if args.baseline:
            return await baseline(cp, client, args, sem)

        def start_sched(cfg: dict[str, Any], **kw: Any) -> Any:
            cfg["clientConnection"] = {"qps": 500, "burst": 1000}
            return cp.start_scheduler(cfg, **kw)

        stack_cm = Stack(kc, start_sched)
        stack_cm.annotate_at_filter = not args.annotate_at_bind
        stack_cm.bind_queue_limit = args.bind_queue_limit
        async with stack_cm as stack:
            assert stack.extender is not None
            svc = stack.extender.service
            filter_lat: list[float] = []
            bind_lat: list[float] = []
            svc.filter = timed(svc.filter, filter_lat)  # type: ignore[method-assign]
            svc.bind = timed(svc.bind, bind_lat)  # type: ignore[method-assign]
            annotations = {} if args.policy == "binpack" else {"hami.io/node-scheduler-policy": "spread"}
            pods = [
                gpu_pod(f"p-{i:05d}", mem=8000, cores=10, annotations=annotations) for i in range(args.pods)
            ]
            # count from the extender's watch cache: polling LISTs would load the API server
            bound_nodes, elapsed = await create_and_wait(
                client, sem, pods, lambda: stack.extender.pods.values(), args.timeout
            )
            bound = len(bound_nodes)
            used = set(bound_nodes)
            return {
                "nodes_used": len(used),
                "nodes": args.nodes,
                "pods": args.pods,
                "bound": bound,
                "policy": args.policy
                + (" annotate-at-bind" if args.annotate_at_bind else "")
                + (f" bind-queue-limit={args.bind_queue_limit}" if args.bind_queue_limit else ""),
                "seconds": elapsed,
                "pods_per_s": bound / elapsed,
                "filter_p50_ms": pct(filter_lat, 0.5),
                "filter_p99_ms": pct(filter_lat, 0.99),
                "filter_mean_ms": statistics.fmean(filter_lat) * 1e3 if filter_lat else float("nan"),
                "bind_p50_ms": pct(bind_lat, 0.5),
                "bind_p99_ms": pct(bind_lat, 0.99),
                "filter_calls": len(filter_lat),
                "bind_calls": len(bind_lat),
            }


async def baseline(
    cp: ControlPlane, client: KubeClient, args: argparse.Namespace, sem: asyncio.Semaphore
) -> dict[str, Any]:
    sched = await asyncio.to_thread(cp.start_scheduler, {"clientConnection": {"qps": 500, "burst": 1000}})
    watch = Informer(client, api_path("v1", "pods", namespace="bench"), name="bench-pods")
    watch.start()
    await watch.wait_synced(timeout=30)
    try:
        pods = []
        for i in range(args.pods):
            p = gpu_pod(f"b-{i:05d}", scheduler_name=None)
            p["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": 1}}
            pods.append(p)
        bound_nodes, elapsed = await create_and_wait(client, sem, pods, watch.values, args.timeout)
        bound = len(bound_nodes)
        return {
            "nodes": args.nodes,
            "pods": args.pods,
            "bound": bound,
            "policy": "kube-scheduler only",
            "seconds": elapsed,
            "pods_per_s": bound / elapsed,
        }
    finally:
        await watch.stop()
        sched.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--policy", choices=["binpack", "spread"], default="binpack")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--baseline", action="store_true", help="stock kube-scheduler alone, for comparison")
    ap.add_argument("--annotate-at-bind", action="store_true", help="extender --annotate-at-bind mode")
    ap.add_argument("--bind-queue-limit", type=int, default=0, help="extender --bind-queue-limit")
    args = ap.parse_args()
    print(
        f"machine: {platform.machine()} ({__import__('os').cpu_count()} cores), python {platform.python_version()}"
    )
    with ControlPlane() as cp:
        r = asyncio.run(run(cp, args))
    for k, v in r.items():
        print(f"{k:>16}: {v:.2f}" if isinstance(v, float) else f"{k:>16}: {v}")


if __name__ == "__main__":
    main()
