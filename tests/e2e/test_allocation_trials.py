"""Randomized create/delete trials against the real control plane: no card is ever over-committed
and nothing leaks.

10,000 operations (``HAMI_TRIALS_OPS``) with a seeded RNG (``HAMI_TRIALS_SEED`` replays a run; the
seed is printed and named in every assertion): pods of random sizes — 1 or 2 cards, MiB or a
percentage of the card, some cores, some whole cards (100 % cores), binpack or spread — created in
random namespaces, and deletes of random existing pods, bound or still pending, with bounded
concurrency. The cluster is 6 nodes x 4 cards: 3 whose device plugin runs lock-free
(``hami.io/allocation-mode=cdi``) and 3 on HAMi's node lock, the real kube-apiserver and
kube-scheduler, the extender in-process and the fake node agent playing both plugins.

At checkpoints and at the end every card's usage is recomputed from the API objects (bound,
non-terminated pods' ``vgpu-devices-allocated``) against its capacity; once the cluster settles the
extender's ledger holds exactly the bound pods; after everything is deleted the ledger, the
reservations and the node locks are empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from hami.extender.runner import Extender
from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.errors import NotFoundError
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.testing.controlplane import SchedulerHandle
from hami.testing.gpucluster import create_gpu_node, gpu_cards, gpu_pod, lock_free_annotations
from hami.testing.stack import Stack, assert_no_overcommit, list_pods, wait_for

NODES = 6  # the first half lock-free
CARDS = 4
CHECKPOINTS = 4
CONCURRENCY = 12
TARGET_LIVE = 80  # more than fit: some pods always wait, and deleting them is part of the trial


def random_pod(rng: random.Random, name: str, label: str) -> dict[str, Any]:
    gpus = rng.choice((1, 1, 1, 2))
    roll = rng.random()
    mem: int | None = None
    percent: int | None = None
    if roll < 0.1:  # a whole card
        cores: int | None = 100
    else:
        cores = rng.choice((None, 0, 5, 10, 20, 30))
        if roll < 0.3:
            percent = rng.choice((10, 25, 50))
        else:
            mem = rng.choice((1000, 2000, 3000, 4000, 6000))
    policy = rng.choice(({}, {keys.NODE_SCHEDULER_POLICY: "spread"}))
    pod = gpu_pod(name, gpus=gpus, mem=mem, cores=cores, annotations=policy)
    if percent is not None:
        pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpumem-percentage"] = percent
    pod["spec"]["nodeSelector"] = {"hami-test": label}
    return pod


class Trials:
    """The operation stream and what it created (``live``: name -> namespace, create finished)."""

    def __init__(self, client: KubeClient, rng: random.Random, namespaces: list[str], label: str) -> None:
        self.client = client
        self.rng = rng
        self.namespaces = namespaces
        self.label = label
        self.live: dict[str, str] = {}
        self.uids: set[str] = set()
        self.creates = self.deletes = 0
        self._sem = asyncio.Semaphore(CONCURRENCY)
        self._tasks: set[asyncio.Task[None]] = set()

    async def _create(self, name: str, ns: str, pod: dict[str, Any]) -> None:
        try:
            made = await self.client.create(api_path("v1", "pods", namespace=ns), pod)
            self.uids.add(bodies.uid(made))
            self.live[name] = ns
        finally:
            self._sem.release()

    async def _delete(self, name: str, ns: str) -> None:
        try:
            path = api_path("v1", "pods", namespace=ns, name=name)
            with contextlib.suppress(NotFoundError):
                await self.client.delete(path, grace_period_seconds=0)
        finally:
            self._sem.release()

    async def step(self, i: int) -> None:
        """One operation, chosen now (so the seed fixes the stream), run with bounded concurrency."""
        create = not self.live or self.rng.random() < (0.65 if len(self.live) < TARGET_LIVE else 0.35)
        if create:
            name, ns = f"t{i:05d}", self.rng.choice(self.namespaces)
            work = self._create(name, ns, random_pod(self.rng, name, self.label))
            self.creates += 1
        else:
            name = self.rng.choice(sorted(self.live))
            ns = self.live.pop(name)
            work = self._delete(name, ns)
            self.deletes += 1
        await self._spawn(work)

    async def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        await self._sem.acquire()  # released by the operation
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def delete_all(self) -> None:
        """Delete every pod created, bound or pending, and wait for the deletes."""
        for name, ns in sorted(self.live.items()):
            await self._spawn(self._delete(name, ns))
        self.live.clear()
        await self.drain()

    async def drain(self) -> None:
        """Wait for every operation started so far."""
        await asyncio.gather(*list(self._tasks))


async def settled(client: KubeClient, ext: Extender, namespaces: list[str]) -> dict[str, Any] | None:
    """The cluster at rest: every bound pod allocated, the ledger exactly the bound pods, no
    decision waiting for its bind; None while not yet."""
    pods = [p for ns in namespaces for p in await list_pods(client, ns)]
    bound = {bodies.uid(p) for p in pods if bodies.node_name(p)}
    done = all(
        bodies.annotations(p).get(keys.BIND_PHASE) == keys.BIND_PHASE_SUCCESS
        for p in pods
        if bodies.node_name(p)
    )
    ledger = {a.uid for a in ext.scheduler.state.pods.values() if a.namespace in namespaces}
    if not done or ledger != bound or ext.reservations.pending_count():
        return None
    return {"pods": len(pods), "bound": len(bound)}


@pytest.mark.timeout(900)  # ~2 min on a quiet 2-core machine, 5+ when it is shared
async def test_10000_randomized_creates_and_deletes_never_overcommit_or_leak(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    seed = int(os.environ.get("HAMI_TRIALS_SEED") or random.SystemRandom().randrange(2**32))
    ops = int(os.environ.get("HAMI_TRIALS_OPS") or 10000)
    print(f"allocation trials: seed {seed}, {ops} operations (HAMI_TRIALS_SEED={seed} replays them)")
    rng = random.Random(seed)
    namespaces = [f"{namespace}-{x}" for x in "abc"]
    for ns in namespaces:
        await kube_client.create(api_path("v1", "namespaces"), {"metadata": {"name": ns}})
    nodes = []
    for i in range(NODES):
        name = f"{namespace}-n{i}"
        await create_gpu_node(
            kube_client,
            name,
            gpu_cards(name, n=CARDS, mem=16000),
            labels={"hami-test": namespace},
            annotations=lock_free_annotations(i < NODES // 2),
        )
        nodes.append(name)
    started = time.monotonic()
    async with Stack(kube_config, start_scheduler) as stack:
        ext, agent = stack.extender, stack.completer
        assert ext is not None and agent is not None
        trials = Trials(kube_client, rng, namespaces, namespace)
        for i in range(ops):
            await trials.step(i)
            if (i + 1) % (ops // CHECKPOINTS or 1) == 0:
                await trials.drain()
                usage = await assert_no_overcommit(kube_client, namespaces, nodes)
                print(
                    f"checkpoint {i + 1}: {sum(u[0] for u in usage.values())} slots in use, "
                    f"{time.monotonic() - started:.0f} s, seed {seed}"
                )
        await trials.drain()

        async def at_rest() -> dict[str, Any] | None:
            return await settled(kube_client, ext, namespaces)

        rest = await wait_for(at_rest, timeout=180, interval=1.0)
        await assert_no_overcommit(kube_client, namespaces, nodes)
        bound_total = len(agent.completed & trials.uids)
        lock_free = len(agent.lock_free & trials.uids)
        print(
            f"{trials.creates} creates, {trials.deletes} deletes; {bound_total} pods allocated "
            f"({lock_free} lock-free); at rest {rest}; {time.monotonic() - started:.0f} s"
        )
        assert 0 < lock_free < bound_total, f"both protocols must have run (seed {seed})"

        # delete everything: nothing may stay behind
        await trials.delete_all()

        async def empty() -> bool:
            pods = [p for ns in namespaces for p in await list_pods(kube_client, ns)]
            locks = [
                bodies.annotations(await kube_client.get(api_path("v1", "nodes", name=n))).get(keys.NODE_LOCK)
                for n in nodes
            ]
            ledger = [a for a in ext.scheduler.state.pods.values() if a.namespace in namespaces]
            held = ext.reservations.assumed & trials.uids
            return not pods and not any(locks) and not ledger and not held

        await wait_for(empty, timeout=120, interval=0.5)
        assert ext.reservations.pending_count() == 0, f"seed {seed}"
        assert ext.reservations.in_flight_count() == 0, f"seed {seed}"
        assert not [uid for uid in ext.sync.pod_errors if uid in trials.uids], f"seed {seed}"
