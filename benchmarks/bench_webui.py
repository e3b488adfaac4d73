"""Server-side render time of every web UI page for a large cluster (default 1000 nodes x 8 cards).

The cluster comes from :mod:`hami.testing.webuiseed`: about half the cards hold 1-3 running slices
of common sizes (fed to the scheduling core as watch events would be), plus ``--pending`` pods
that cannot fit (their explanation runs the core's decision over every node), and live usage for
every running container and card. Each page is rendered ``--runs`` times (the first page of rows:
200 per page) exactly as the server does (:class:`hami.webui.server.Renderer`), the fragmentation
counts included; the first overview render is reported apart (it fills the per-card-state cache of
the fragmentation counts), then p50/p99 of the rest.

Usage: python benchmarks/bench_webui.py [--nodes 1000] [--cards 8] [--runs 20] [--pending 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time

from hami.extender.sync import LedgerSync
from hami.protocol import bodies
from hami.testing import webuiseed
from hami.webui.explain import FitCounter
from hami.webui.server import PAGES, Query, Renderer
from hami.webui.usage import CardUse, ContainerUse, LiveUsage
from hami.webui.views import Snapshot

MiB = 1 << 20


def live_usage(sync: LedgerSync) -> LiveUsage:
    usage = LiveUsage(sources=["bench"])
    for alloc in sync.scheduler.state.pods.values():
        for per_container in alloc.containers.values():
            for placements in per_container:
                for p in placements:
                    key = (alloc.namespace, alloc.name, "main", p.device.uuid)
                    usage.containers[key] = ContainerUse(p.device.usedmem * MiB * 3 // 4, 42.0)
    for node in sync.scheduler.state.nodes.values():
        for card in node.cards:
            usage.cards[card.uuid] = CardUse(card.usedmem * MiB * 3 // 4, 40.0)
    return usage


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--cards", type=int, default=8)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--pending", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    nodes, pods = webuiseed.cluster(args.nodes, args.cards)
    # two shapes no node can hold, so each explanation evaluates every node: a card type the
    # cluster lacks, and eight cards of 60000 MiB
    pods += [
        webuiseed.pending_pod(f"wait-{i}", "team-00", gputype="A100")
        if i % 2
        else webuiseed.pending_pod(f"wait-{i}", "team-01", gpus=8, mem=60000)
        for i in range(args.pending)
    ]
    sync = webuiseed.ledger(nodes, pods)
    snap = Snapshot(
        scheduler=sync.scheduler,
        pods=pods,
        nodes=nodes,
        usage=live_usage(sync),
        scheduler_name=webuiseed.SCHEDULER,
        fit_counter=FitCounter(sync.scheduler),
        # the web UI looks pods up in its informer's cache
        pod_lookup={bodies.pod_key(p): p for p in pods}.get,
    )
    renderer = Renderer()
    results: dict[str, dict[str, float]] = {}
    gc.collect()
    started = time.perf_counter()
    renderer.render(PAGES[0], snap, Query())
    first_overview = time.perf_counter() - started
    for page in PAGES:
        times = []
        size = 0
        for _ in range(args.runs):
            t0 = time.perf_counter()
            html = renderer.render(page, snap, Query())
            times.append(time.perf_counter() - t0)
            size = len(html)
        times.sort()
        results[page.name] = {
            "p50_ms": statistics.median(times) * 1000,
            "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))] * 1000,
            "html_kib": size / 1024,
        }
    out = {
        "nodes": args.nodes,
        "cards": args.nodes * args.cards,
        "running_pods": len(sync.scheduler.state.pods),
        "pending_pods": sum(1 for p in pods if not bodies.node_name(p)),
        "first_overview_ms": first_overview * 1000,
        "pages": results,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(
        f"{out['nodes']} nodes, {out['cards']} cards, {out['running_pods']} running pods, "
        f"{out['pending_pods']} pending; first overview (fit cache cold) {first_overview * 1000:.0f} ms"
    )
    print(f"{'page':<12} {'p50 ms':>8} {'p99 ms':>8} {'HTML KiB':>9}")
    for name, r in results.items():
        print(f"{name:<12} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['html_kib']:>9.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
