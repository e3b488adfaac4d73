"""End-to-end scheduling throughput of DRA-mode pods beside kube-scheduler alone and the extender.

One run, four phases, each on a fresh control plane (etcd + kube-apiserver + kube-scheduler, the
consumable-capacity gate on every component, kube-controller-manager running the resourceclaim
controller) with N fake nodes x 8 cards of 80 GiB, P pods created as fast as the API accepts them;
pods/s is from the first creation to the last pod bound (``spec.nodeName`` set):

* ``baseline``: kube-scheduler alone, pods asking for the ``nvidia.com/gpu`` extended resource;
* ``extender``: hami's extender (device-plugin mode, 8000 MiB + 10 % cores per pod, binpack), the
  fake node agent completing each bind;
* ``dra-first-fit``: DRA-mode pods (the webhook's conversion of the same request: a claim on a
  template, consumable capacity) placed by kube-scheduler alone (no steering marker, default
  scheduler) — upstream DRA;
* ``dra``: the same pods through the hami-scheduler profile: kube-scheduler's DRA allocation plus
  hami's ``/dra/filter`` and ``/dra/prioritize`` (binpack) on the ledger fed by slices and claims.

No kubelet: nothing prepares the claims (binding is the end of scheduling).

Usage: python benchmarks/bench_dra.py [--nodes 500] [--pods 1000] [--phases baseline,extender,dra-first-fit,dra]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from typing import Any

from bench_e2e import BoundWatch, create_and_wait, pct, timed

from hami.config import DeviceConfig
from hami.kube.client import KubeClient
from hami.kube.informer import Informer
from hami.kube.paths import api_path
from hami.protocol import keys
from hami.testing.controlplane import ControlPlane
from hami.testing.dra import DRA_GATES, converted_pod, create_device_class, create_dra_node
from hami.testing.gpucluster import create_gpu_node, gpu_cards, gpu_pod
from hami.testing.stack import Stack
from hami.webhook.dra import DraPolicy
from hami.webhook.mutate import WebhookPolicy
from hami.webhook.runner import api_creator

PHASES = ("baseline", "extender", "dra-first-fit", "dra")
QPS = {"qps": 500, "burst": 1000}
DRA_ALL = WebhookPolicy.from_config(
    DeviceConfig.default(), dra=DraPolicy(default_mode=keys.OPERATING_MODE_DRA)
)


def dra_pods(count: int, *, steered: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``count`` converted pods (8000 MiB, 10 cores) and their (one) template; unsteered: without
    hami's marker, for kube-scheduler's default profile."""
    pods, templates = [], {}
    for i in range(count):
        pod, objs = converted_pod(
            gpu_pod(f"d-{i:05d}", mem=8000, cores=10, scheduler_name=None), "bench", DRA_ALL
        )
        for t in objs:
            templates[t["metadata"]["name"]] = t
        if not steered:
            for c in pod["spec"]["containers"]:
                c["resources"]["limits"].pop(keys.DRA_STEER_RESOURCE, None)
            pod["spec"]["schedulerName"] = "default-scheduler"
        pods.append(pod)
    return pods, list(templates.values())


async def phase(name: str, args: argparse.Namespace) -> dict[str, Any]:
    with ControlPlane(apiserver_args=DRA_GATES) as cp:
        kc = cp.kube_config()
        if name.startswith("dra"):
            cp.start_controller_manager(
                ["resourceclaim-controller"],
                extra_args=[*DRA_GATES, "--kube-api-qps=500", "--kube-api-burst=1000"],
            )
        async with KubeClient(kc) as client:
            await client.create(api_path("v1", "namespaces"), {"metadata": {"name": "bench"}})
            sem = asyncio.Semaphore(16)
            t0 = time.perf_counter()
            if name.startswith("dra"):
                await create_device_class(client)

            async def node(i: int) -> None:
                n = f"gpu-{i:04d}"
                async with sem:
                    if name.startswith("dra"):
                        await create_dra_node(client, n, gpu_cards(n, n=8, mem=81920))
                    else:
                        await create_gpu_node(client, n, gpu_cards(n, n=8, mem=81920))

            await asyncio.gather(*(node(i) for i in range(args.nodes)))
            print(f"[{name}] {args.nodes} nodes x 8 cards in {time.perf_counter() - t0:.1f}s", flush=True)
            if name in ("baseline", "dra-first-fit"):
                return await alone(cp, client, name, args, sem)
            return await with_hami(cp, kc, client, name, args, sem)


async def alone(
    cp: ControlPlane, client: KubeClient, name: str, args: argparse.Namespace, sem: asyncio.Semaphore
) -> dict[str, Any]:
    """kube-scheduler's default profile only."""
    sched = await asyncio.to_thread(
        cp.start_scheduler, {"clientConnection": QPS}, extra_args=DRA_GATES if name.startswith("dra") else ()
    )
    watch = Informer(client, api_path("v1", "pods", namespace="bench"), name="bench-pods")
    bound_watch = BoundWatch()
    bound_watch.attach(watch)
    watch.start()
    await watch.wait_synced(timeout=30)
    try:
        if name == "baseline":
            pods = []
            for i in range(args.pods):
                p = gpu_pod(f"b-{i:05d}", scheduler_name=None)
                p["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": 1}}
                pods.append(p)
        else:
            pods, templates = dra_pods(args.pods, steered=False)
            for t in templates:
                await api_creator(client)(t)
        bound, elapsed = await create_and_wait(client, pods, bound_watch, args.timeout)
        return result(name, args, bound, elapsed)
    finally:
        await watch.stop()
        sched.stop()


async def with_hami(
    cp: ControlPlane, kc: Any, client: KubeClient, name: str, args: argparse.Namespace, sem: asyncio.Semaphore
) -> dict[str, Any]:
    def start_sched(cfg: dict[str, Any], **kw: Any) -> Any:
        cfg["clientConnection"] = QPS
        if args.score_all_nodes:
            cfg["percentageOfNodesToScore"] = 100
        return cp.start_scheduler(cfg, **kw)

    stack_cm = Stack(kc, start_sched)
    if name == "dra":
        stack_cm.dra = True
        stack_cm.scheduler_args = DRA_GATES
    async with stack_cm as stack:
        ext = stack.extender
        assert ext is not None
        lat: list[float] = []
        if ext.dra is not None:
            ext.dra.prioritize = timed_sync(ext.dra.prioritize, lat)  # type: ignore[method-assign]
            pods, templates = dra_pods(args.pods, steered=True)
            for t in templates:
                await api_creator(client)(t)
        else:
            ext.service.filter = timed(ext.service.filter, lat)  # type: ignore[method-assign,assignment]
            pods = [gpu_pod(f"p-{i:05d}", mem=8000, cores=10) for i in range(args.pods)]
        bound_watch = BoundWatch()
        bound_watch.attach(ext.pods)
        bound, elapsed = await create_and_wait(client, pods, bound_watch, args.timeout)
        out = result(name, args, bound, elapsed)
        verb = "prioritize" if ext.dra is not None else "filter"
        out[f"{verb}_p50_ms"] = pct(lat, 0.5)
        out[f"{verb}_p99_ms"] = pct(lat, 0.99)
        if ext.dra is not None:
            out["claims_in_ledger"] = sum(1 for uid in ext.scheduler.state.pods if uid.startswith("claim:"))
        return out


def timed_sync(fn: Any, into: list[float]) -> Any:
    def wrapper(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            into.append(time.perf_counter() - t0)

    return wrapper


def result(name: str, args: argparse.Namespace, bound_nodes: list[str], elapsed: float) -> dict[str, Any]:
    return {
        "phase": name,
        "nodes": args.nodes,
        "pods": args.pods,
        "bound": len(bound_nodes),
        "nodes_used": len(set(bound_nodes)),
        "seconds": elapsed,
        "pods_per_s": len(bound_nodes) / elapsed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument(
        "--score-all-nodes",
        action="store_true",
        help="percentageOfNodesToScore: 100 for hami's profile (kube-scheduler otherwise stops filtering "
        "once it has found a share of feasible nodes, so hami scores only those)",
    )
    args = ap.parse_args()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    for p in phases:
        if p not in PHASES:
            ap.error(f"--phases: {p!r} is not one of {', '.join(PHASES)}")
    print(
        f"machine: {platform.machine()} ({os.cpu_count()} cores), python {platform.python_version()}",
        flush=True,
    )
    results = []
    for p in phases:
        r = asyncio.run(phase(p, args))
        results.append(r)
        print(
            "  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()),
            flush=True,
        )
    print("\n| phase | pods bound | seconds | pods/s | nodes used |\n|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['phase']} | {r['bound']}/{r['pods']} | {r['seconds']:.1f} | {r['pods_per_s']:.1f} | {r['nodes_used']} |"
        )


if __name__ == "__main__":
    main()
