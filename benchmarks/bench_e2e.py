"""End-to-end scheduling throughput through the real kube-scheduler + hami extender.

Starts etcd + kube-apiserver (binaries from ``HAMI_K8S_BIN`` or the cache that
``hack/build-k8s.sh`` fills) once, creates N fake GPU nodes x 8 cards, and measures each mode on
that one control plane, one after another in this process:

* ``baseline`` — the stock kube-scheduler alone: pods ask for the ``nvidia.com/gpu`` extended
  resource, no extender, kube-scheduler binds itself (the ceiling the API server allows here);
* ``null`` — kube-scheduler behind the null extender (:mod:`hami.testing.nullextender`): the same
  HTTP stack as hami's, ``/filter`` returns the candidates unchanged, ``/bind`` posts the Binding
  with no annotation, no informers — what kube-scheduler's extender protocol itself costs here;
  ``null-first`` the same, its filter answering only the first candidate (kube-scheduler then skips
  scoring, as it does after hami's filter, which answers the one node it chose);
* ``binpack-lock`` / ``spread-lock`` — hami's extender behind kube-scheduler, nodes on HAMi's lock
  protocol; a fake node agent completes each bind the way the device plugin's Allocate does
  (bind-phase ``success`` + node lock released: 2 writes);
* ``binpack-cdi`` / ``spread-cdi`` — the same nodes annotated ``hami.io/allocation-mode=cdi`` (the
  device plugin runs lock-free): the extender binds without the lock, and the agent does what the
  lock-free plugin does per pod at PreStartContainer: it takes the bound pod from its own watch
  (the plugin's watch of its node's pods, the copy confirmed by the kubelet's checkpoint UID), no
  request and no write; ``--agent-read get`` makes it read the pod with one GET instead (what the
  plugin falls back to when its watch has no confirmed copy).

For each: P pods (1 GPU, 8000 MiB, 10 %) are created as fast as the API takes them; pods/s runs
from the first creation to the last ``spec.nodeName``; the ratio is to the baseline of the same run.
Filter/bind latency is measured inside the extender; API writes per pod are the API server's own
``apiserver_request_total`` (mutating verbs) from the first creation until every allocation
finished, divided by P (the pod creations count, 1 per pod, in every mode); CPU seconds are read
from ``/proc/<pid>/stat`` of kube-apiserver, etcd and kube-scheduler, and of this process (the
extender, the node agent and the pod creator) over the same window. Between modes the pods are
deleted and the extender's ledger is waited empty.

Usage: python benchmarks/bench_e2e.py [--nodes 500] [--pods 1000] [--matrix | --modes binpack-cdi,...]
       [--repeat N] [--annotate-at-bind] [--bind-queue-limit N] [--agent-read get|watch] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import multiprocessing
import os
import platform
import re
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from hami.kube.client import KubeClient
from hami.kube.config import load_config
from hami.kube.informer import Informer
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.protocol.allocmode import is_lock_free
from hami.testing.controlplane import ControlPlane, SchedulerHandle
from hami.testing.gpucluster import (
    AllocationCompleter,
    create_gpu_node,
    gpu_cards,
    gpu_pod,
    set_allocation_mode,
)
from hami.testing.nullextender import NullExtender
from hami.testing.stack import Stack, extender_scheduler_config

NAMESPACE = "bench"
MATRIX = ("baseline", "null", "null-first", "binpack-lock", "binpack-cdi", "spread-lock", "spread-cdi")
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"})
_REQUEST_LINE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def mutating_requests(client: KubeClient) -> Counter[str]:
    """The API server's mutating requests so far, by ``VERB resource[/subresource]``."""
    out: Counter[str] = Counter()
    for line in (await client.get_text("/metrics")).splitlines():
        m = _REQUEST_LINE.match(line)
        if m is None:
            continue
        labels = dict(_LABEL.findall(m["labels"]))
        if labels.get("verb") in MUTATING:
            what = labels.get("resource", "") + (
                f"/{labels['subresource']}" if labels.get("subresource") else ""
            )
            out[f"{labels['verb']} {what}"] += int(float(m["value"]))
    return out


@dataclass
class Window:
    """CPU and API writes between :meth:`open` and :meth:`close`."""

    pids: dict[str, int]
    cpu: dict[str, float] = field(default_factory=dict)
    writes: Counter[str] = field(default_factory=Counter)
    #: with ``--profile DIR``: this process (the extender) under cProfile, in CPU time, dumped there
    profile: str | None = None

    async def open(self, client: KubeClient) -> None:
        self._writes0 = await mutating_requests(client)
        self._cpu0 = {k: cpu_seconds(p) for k, p in self.pids.items()}
        self._self0 = time.process_time()
        self._profiler = cProfile.Profile(time.process_time) if self.profile else None
        if self._profiler is not None:
            self._profiler.enable()

    async def close(self, client: KubeClient) -> None:
        self.cpu = {k: cpu_seconds(p) - self._cpu0[k] for k, p in self.pids.items()}
        self.cpu["this process"] = time.process_time() - self._self0
        if self._profiler is not None and self.profile:
            self._profiler.disable()
            self._profiler.dump_stats(self.profile)
        self.writes = await mutating_requests(client)
        self.writes.subtract(self._writes0)


@dataclass
class Row:
    mode: str
    pods: int
    bound: int
    seconds: float
    window: Window
    nodes_used: int
    filter_ms: tuple[float, float] = (float("nan"), float("nan"))
    bind_ms: tuple[float, float] = (float("nan"), float("nan"))

    @property
    def pods_per_s(self) -> float:
        return self.bound / self.seconds

    def writes_per_pod(self) -> float:
        return sum(v for v in self.window.writes.values() if v > 0) / self.pods


class BoundWatch:
    """Counts pods of the bench namespace as a watch shows them bound (a handler on an informer
    that runs anyway: polling LISTs, or scanning a cache, would load what is being measured)."""

    def __init__(self) -> None:
        self.reset(0)

    def reset(self, target: int) -> None:
        self.target = target
        self.nodes: list[str] = []
        self.uids: set[str] = set()
        self.done = asyncio.Event()

    def attach(self, informer: Informer) -> None:
        informer.add_handlers(on_update=self.update)

    def update(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        node = bodies.node_name(new)
        if node and not bodies.node_name(old) and bodies.namespace(new) == NAMESPACE:
            self.nodes.append(str(node))
            self.uids.add(bodies.uid(new))
            if len(self.nodes) >= self.target:
                self.done.set()


async def create_and_wait(
    client: KubeClient, pods: list[dict[str, Any]], bound: BoundWatch, timeout: float
) -> tuple[list[str], float]:
    """Create ``pods`` as fast as the API takes them (16 at a time); wait until all are bound.

    Returns the node of every bound pod and the seconds it took.
    """
    bound.reset(len(pods))
    start = time.perf_counter()
    sem = asyncio.Semaphore(16)

    async def create(p: dict[str, Any]) -> None:
        async with sem:
            await client.create(api_path("v1", "pods", namespace=NAMESPACE), p)

    creating = asyncio.gather(*(create(p) for p in pods))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(bound.done.wait(), timeout)
    elapsed = time.perf_counter() - start
    await creating
    return list(bound.nodes), elapsed


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(0.1)


async def delete_pods(client: KubeClient, cached: Callable[[], Iterable[dict[str, Any]]]) -> None:
    await client.request(
        "DELETE", api_path("v1", "pods", namespace=NAMESPACE), params={"gracePeriodSeconds": 0}
    )
    await wait_until(lambda: not any(bodies.namespace(p) == NAMESPACE for p in cached()), 120, "pods deleted")


async def create_nodes(client: KubeClient, count: int) -> list[str]:
    sem = asyncio.Semaphore(16)
    names = [f"gpu-{i:04d}" for i in range(count)]

    async def node(name: str) -> None:
        async with sem:
            await create_gpu_node(client, name, gpu_cards(name, n=8, mem=81920))

    await asyncio.gather(*(node(n) for n in names))
    return names


async def set_mode(client: KubeClient, stack: Stack, nodes: list[str], *, lock_free: bool) -> None:
    """Annotate (or un-annotate) every node and wait until the extender's node cache shows it."""
    assert stack.extender is not None
    cache = stack.extender.nodes
    if all(is_lock_free(cache.get(n)) == lock_free for n in nodes):
        return
    sem = asyncio.Semaphore(16)

    async def one(n: str) -> None:
        async with sem:
            await set_allocation_mode(client, n, lock_free=lock_free)

    await asyncio.gather(*(one(n) for n in nodes))
    await wait_until(
        lambda: all(is_lock_free(cache.get(n)) == lock_free for n in nodes), 60, "node modes cached"
    )


# ------------------------------------------------------------------------------ the driver process
# The pod creator and the fake node agent run in a process of their own, as users and node agents
# do in a cluster: the extender's process serves kube-scheduler and its own watches only.


def driver_main(kubeconfig: str, conn: Connection, read_from_api: bool = True) -> None:
    """Child process: create pods on command, report when they are bound and allocated."""
    asyncio.run(_driver(kubeconfig, conn, read_from_api))


async def _driver(kubeconfig: str, conn: Connection, read_from_api: bool) -> None:
    async with KubeClient(load_config(kubeconfig)) as client:
        agent = AllocationCompleter(client, read_from_api=read_from_api)
        bound = BoundWatch()
        bound.attach(agent.pods)
        await agent.start()
        conn.send("ready")
        try:
            while True:
                command, payload = await asyncio.to_thread(conn.recv)
                if command == "run":
                    pods, timeout, allocate = payload
                    nodes, elapsed = await create_and_wait(client, pods, bound, timeout)
                    if allocate:  # hami's pods: until the node side finished every allocation
                        await wait_until(
                            lambda: bound.uids <= agent.completed, timeout, "allocations finished"
                        )
                    conn.send((nodes, elapsed))
                elif command == "clear":
                    await delete_pods(client, agent.pods.values)
                    conn.send("cleared")
                else:
                    return
        finally:
            await agent.stop()


class Driver:
    """The parent's handle on the driver process."""

    def __init__(self, kubeconfig: str, *, read_from_api: bool = True) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=driver_main, args=(kubeconfig, child, read_from_api), daemon=True)

    async def start(self) -> None:
        self.process.start()
        assert await self._recv() == "ready"

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    async def _recv(self) -> Any:
        return await asyncio.to_thread(self._conn.recv)

    async def run(
        self, pods: list[dict[str, Any]], timeout: float, *, allocate: bool
    ) -> tuple[list[str], float]:
        """Create the pods; returns when all are bound (and, with ``allocate``, allocated by the
        node agent): (the node of each, seconds until the last was bound)."""
        self._conn.send(("run", (pods, timeout, allocate)))
        nodes, elapsed = await self._recv()
        return nodes, elapsed

    async def clear(self) -> None:
        self._conn.send(("clear", None))
        assert await self._recv() == "cleared"

    def stop(self) -> None:
        if self.process.is_alive():
            self._conn.send(("stop", None))
        self.process.join(timeout=30)


def pids(cp: ControlPlane, scheduler: SchedulerHandle, driver: Driver) -> dict[str, int]:
    assert scheduler.process is not None and cp.apiserver is not None and cp.etcd is not None
    return {
        "apiserver": cp.apiserver.pid,
        "etcd": cp.etcd.pid,
        "scheduler": scheduler.process.pid,
        "driver": driver.pid,
    }


StartScheduler = Callable[..., SchedulerHandle]


def profile_path(args: argparse.Namespace, mode: str) -> str | None:
    """Where ``--profile DIR`` puts this row's profile (``<mode>-<HHMMSS>.prof``), or None."""
    if not args.profile:
        return None
    os.makedirs(args.profile, exist_ok=True)
    return os.path.join(args.profile, f"{mode}-{time.strftime('%H%M%S')}.prof")


def hami_pods(tag: str, count: int, annotations: dict[str, str]) -> list[dict[str, Any]]:
    """``count`` pods for hami's scheduler: 1 GPU, 8000 MiB, 10 % each."""
    return [gpu_pod(f"{tag}-{i:05d}", mem=8000, cores=10, annotations=annotations) for i in range(count)]


async def unmanaged(
    cp: ControlPlane,
    client: KubeClient,
    driver: Driver,
    args: argparse.Namespace,
    sched: SchedulerHandle,
    mode: str,
    pods: list[dict[str, Any]],
) -> Row:
    """One row where nothing allocates on the node side (baseline, null): bound is done."""
    try:
        window = Window(pids(cp, sched, driver), profile=profile_path(args, mode))
        await window.open(client)
        bound_nodes, elapsed = await driver.run(pods, args.timeout, allocate=False)
        await window.close(client)
        await driver.clear()
        return Row(mode, args.pods, len(bound_nodes), elapsed, window, len(set(bound_nodes)))
    finally:
        sched.stop()


async def baseline(
    cp: ControlPlane,
    client: KubeClient,
    driver: Driver,
    args: argparse.Namespace,
    start_sched: StartScheduler,
) -> Row:
    sched = await asyncio.to_thread(start_sched, {})
    pods = []
    for i in range(args.pods):
        p = gpu_pod(f"b-{i:05d}", scheduler_name=None)
        p["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": 1}}
        pods.append(p)
    return await unmanaged(cp, client, driver, args, sched, "baseline", pods)


async def null(
    cp: ControlPlane,
    client: KubeClient,
    driver: Driver,
    args: argparse.Namespace,
    start_sched: StartScheduler,
    *,
    first_only: bool = False,
) -> Row:
    """hami's pods through kube-scheduler and the null extender (its CPU is this process's); with
    ``first_only`` its filter answers only the first candidate (mode ``null-first``)."""
    mode, tag = ("null-first", "f") if first_only else ("null", "n")
    async with NullExtender(cp.kube_config(), first_only=first_only) as ext:
        sched = await asyncio.to_thread(start_sched, extender_scheduler_config(ext.url))
        return await unmanaged(cp, client, driver, args, sched, mode, hami_pods(tag, args.pods, {}))


#: the rows without hami's extender, measured before it starts (its informers would load them)
UNMANAGED: dict[str, Callable[..., Awaitable[Row]]] = {
    "baseline": baseline,
    "null": null,
    "null-first": functools.partial(null, first_only=True),
}


async def hami(
    cp: ControlPlane,
    client: KubeClient,
    stack: Stack,
    driver: Driver,
    nodes: list[str],
    mode: str,
    args: argparse.Namespace,
) -> Row:
    policy, protocol = mode.split("-")
    ext = stack.extender
    assert ext is not None and stack.kube_scheduler is not None
    await set_mode(client, stack, nodes, lock_free=protocol == "cdi")
    svc = ext.service
    filter_lat: list[float] = []
    bind_lat: list[float] = []
    svc.filter = timed(type(svc).filter.__get__(svc), filter_lat)  # type: ignore[method-assign,assignment]
    svc.bind_pod = timed(type(svc).bind_pod.__get__(svc), bind_lat)  # type: ignore[method-assign,assignment]
    annotations = {} if policy == "binpack" else {keys.NODE_SCHEDULER_POLICY: "spread"}
    tag = f"{policy[0]}{protocol[0]}"
    pods = hami_pods(tag, args.pods, annotations)
    window = Window(pids(cp, stack.kube_scheduler, driver), profile=profile_path(args, mode))
    await window.open(client)
    bound_nodes, elapsed = await driver.run(pods, args.timeout, allocate=True)
    await window.close(client)
    await driver.clear()
    await wait_until(
        lambda: not any(a.namespace == NAMESPACE for a in ext.scheduler.state.pods.values()),
        60,
        "ledger empty",
    )
    return Row(
        mode
        + (" annotate-at-bind" if args.annotate_at_bind else "")
        + (" agent-read=watch" if args.agent_read == "watch" and protocol == "cdi" else ""),
        args.pods,
        len(bound_nodes),
        elapsed,
        window,
        len(set(bound_nodes)),
        (pct(filter_lat, 0.5), pct(filter_lat, 0.99)),
        (pct(bind_lat, 0.5), pct(bind_lat, 0.99)),
    )


async def run(cp: ControlPlane, args: argparse.Namespace, modes: list[str]) -> list[Row]:
    kc = cp.kube_config()
    rows: list[Row] = []
    driver = Driver(str(cp.kubeconfig_path), read_from_api=args.agent_read == "get")
    async with KubeClient(kc) as client:
        await client.create(api_path("v1", "namespaces"), {"metadata": {"name": NAMESPACE}})
        t0 = time.perf_counter()
        nodes = await create_nodes(client, args.nodes)
        print(f"created {args.nodes} nodes x 8 cards in {time.perf_counter() - t0:.1f}s", flush=True)
        await driver.start()

        def start_sched(cfg: dict[str, Any], **kw: Any) -> Any:
            cfg["clientConnection"] = {"qps": 500, "burst": 1000}
            return cp.start_scheduler(cfg, **kw)

        try:
            for _ in range(args.repeat):
                for mode, measure in UNMANAGED.items():
                    if mode in modes:
                        rows.append(await measure(cp, client, driver, args, start_sched))
                        print_row(rows[-1], rows)
                hami_modes = [m for m in modes if m not in UNMANAGED]
                if not hami_modes:
                    continue
                stack = Stack(kc, start_sched, completer=False)
                stack.annotate_at_filter = not args.annotate_at_bind
                stack.bind_queue_limit = args.bind_queue_limit
                async with stack:
                    for mode in hami_modes:
                        rows.append(await hami(cp, client, stack, driver, nodes, mode, args))
                        print_row(rows[-1], rows)
        finally:
            driver.stop()
    return rows


def print_row(row: Row, rows: list[Row]) -> None:
    base = [r.pods_per_s for r in rows if r.mode == "baseline"]
    ratio = f"{row.pods_per_s / statistics.median(base):.2f}" if base else "-"
    cpu = row.window.cpu
    writes = ", ".join(f"{k} {v / row.pods:.2f}" for k, v in sorted(row.window.writes.items()) if v > 0)
    print(
        f"| {row.mode} | {row.pods_per_s:.1f} | {ratio} | {row.filter_ms[0]:.2f} / {row.filter_ms[1]:.2f} "
        f"| {row.bind_ms[0]:.1f} / {row.bind_ms[1]:.1f} | {row.writes_per_pod():.2f} "
        f"| {cpu['apiserver']:.1f} | {cpu['etcd']:.1f} | {cpu['scheduler']:.1f} | {cpu['this process']:.1f} "
        f"| {cpu['driver']:.1f} "
        f"| {row.nodes_used} | {row.bound}/{row.pods} |",
        flush=True,
    )
    print(f"    writes per pod: {writes}", flush=True)


HEADER = (
    "| mode | pods/s | ratio to baseline | filter p50 / p99 ms | bind p50 / p99 ms | API writes/pod "
    "| apiserver CPU s | etcd CPU s | kube-scheduler CPU s | extender CPU s | creator+agent CPU s "
    "| nodes used | bound |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


#: the processes whose CPU the summary shows, in its column order (Window.cpu keys)
CPU_COLUMNS = ("apiserver", "etcd", "scheduler", "this process", "driver")
SUMMARY_HEADER = (
    "| mode (run 1 / run 2 ...) | pods/s | x baseline | filter p50 ms | filter p99 ms | bind p50 ms "
    "| API writes/pod | CPU-s per 1000 pods: apiserver | etcd | kube-scheduler | extender | creator+agent "
    "| all |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _side_by_side(values: Iterable[float], fmt: str = "{:.1f}") -> str:
    """``"1.0 / 2.0"``; a missing value (NaN) is ``-``."""
    return " / ".join("-" if v != v else fmt.format(v) for v in values)


def _cpu_per_1000(row: Row, key: str | None) -> float:
    """CPU seconds per 1000 pods of one process (``key``), or of all of them (None)."""
    cpu = row.window.cpu
    return (cpu[key] if key else sum(cpu[k] for k in CPU_COLUMNS)) * 1000 / row.pods


def summary(rows: list[Row]) -> str:
    """The markdown table for docs/benchmarks.md: one line per mode, each repeat's value side by side;
    the ratio is to the median of the run's baselines; CPU seconds per 1000 pods, per process."""
    base = [r.pods_per_s for r in rows if r.mode == "baseline"]
    lines = [SUMMARY_HEADER]
    for mode in dict.fromkeys(r.mode for r in rows):
        runs = [r for r in rows if r.mode == mode]
        ratio = (
            _side_by_side((r.pods_per_s / statistics.median(base) for r in runs), "{:.2f}") if base else "-"
        )
        p50 = _side_by_side((r.filter_ms[0] for r in runs), "{:.2f}")
        p99 = _side_by_side(r.filter_ms[1] for r in runs)
        cpu = " | ".join(_side_by_side(_cpu_per_1000(r, k) for r in runs) for k in (*CPU_COLUMNS, None))
        lines.append(
            f"| {mode} | {_side_by_side(r.pods_per_s for r in runs)} | {ratio} | {p50} | {p99} "
            f"| {_side_by_side((r.bind_ms[0] for r in runs), '{:.0f}')} "
            f"| {_side_by_side((r.writes_per_pod() for r in runs), '{:.2f}')} | {cpu} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--matrix", action="store_true", help="every mode: " + ", ".join(MATRIX))
    ap.add_argument("--modes", default="", help="comma-separated subset of: " + ", ".join(MATRIX))
    ap.add_argument(
        "--repeat", type=int, default=1, help="run the modes this many times (same control plane)"
    )
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--annotate-at-bind", action="store_true", help="extender --annotate-at-bind mode")
    ap.add_argument("--bind-queue-limit", type=int, default=0, help="extender --bind-queue-limit")
    ap.add_argument(
        "--agent-read",
        choices=("get", "watch"),
        default="watch",
        help="how the fake lock-free plugin reads a bound pod: from its own watch (as hami's plugin "
        "does) or one GET (the plugin's fallback)",
    )
    ap.add_argument(
        "--profile",
        metavar="DIR",
        help="cProfile this process (the extender, in CPU time) during each row, into DIR/<mode>-<time>.prof",
    )
    args = ap.parse_args()
    modes = list(MATRIX) if args.matrix else [m for m in args.modes.split(",") if m] or ["binpack-lock"]
    unknown = [m for m in modes if m not in MATRIX]
    if unknown:
        ap.error(f"--modes: unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MATRIX)}")
    print(
        f"machine: {platform.machine()} ({os.cpu_count()} cores), python {platform.python_version()}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(HEADER, flush=True)
    with ControlPlane() as cp:
        rows = asyncio.run(run(cp, args, modes))
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(HEADER)
    for r in rows:
        print_row(r, rows)
    print()
    print(summary(rows))


if __name__ == "__main__":
    main()
