"""Device-aware preemption on the real control plane: kube-scheduler v1.34's DefaultPreemption with
PriorityClasses, asking hami's ``preemptVerb`` which of its victims free the right card.

kube-scheduler chooses victims with its in-tree plugins only, and hami's resources are
``ignoredByScheduler``: it proposes victims when something it counts is short. Here that is CPU —
each node has 4 CPUs, every pod asks for some — so kube-scheduler's proposal is deterministic (it
reprieves the higher priorities first) and hami decides whether that proposal frees a card the
preemptor can use. There is no kubelet: victims are given a grace period, stay terminating (holding
their card) until the test finishes them the way a kubelet would, and the preemptor must not bind
before that.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import pytest

from hami.extender.devicepreempt import DevicePreemptor
from hami.extender.wire import PreemptionArgs
from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.errors import NotFoundError
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.protocol.node import DeviceInfo
from hami.protocol.pod import decode_pod_devices
from hami.testing.controlplane import SchedulerHandle
from hami.testing.gpucluster import create_gpu_node, gpu_cards, gpu_pod
from hami.testing.stack import Stack, assert_no_overcommit, list_pods, wait_for

LOW, MID, HIGH = 10, 50, 1000


@pytest.fixture
async def priorities(kube_client: KubeClient, namespace: str) -> AsyncIterator[dict[int, str]]:
    """PriorityClasses ``<ns>-p<value>`` for LOW, MID and HIGH (cluster-scoped: removed after)."""
    names = {v: f"{namespace}-p{v}" for v in (LOW, MID, HIGH)}
    for value, name in names.items():
        await kube_client.create(
            api_path("scheduling.k8s.io/v1", "priorityclasses"), {"metadata": {"name": name}, "value": value}
        )
    yield names
    for name in names.values():
        with contextlib.suppress(NotFoundError):
            await kube_client.delete(api_path("scheduling.k8s.io/v1", "priorityclasses", name=name))


async def gpu_node(client: KubeClient, namespace: str, cards: list[DeviceInfo]) -> str:
    """A node with these cards and 4 CPUs, labelled for this test only."""
    name = f"{namespace}-n0"
    await create_gpu_node(client, name, cards, labels={"hami-test": namespace})
    cpu = {"cpu": "4"}
    await client.patch(
        api_path("v1", "nodes", name=name, subresource="status"),
        {"status": {"capacity": cpu, "allocatable": cpu}},
        content_type="application/strategic-merge-patch+json",
    )
    return name


def pod(
    name: str, priority: str, *, mem: int, cpu: str, card: str | None = None, grace: int = 0, **kw: Any
) -> dict[str, Any]:
    """A GPU pod with a PriorityClass and a CPU request, pinned to ``card`` when given."""
    p = gpu_pod(name, mem=mem, **kw)
    if card is not None:
        p["metadata"]["annotations"][keys.NVIDIA_USE_GPUUUID] = card
    p["spec"]["priorityClassName"] = priority
    p["spec"]["terminationGracePeriodSeconds"] = grace
    p["spec"]["containers"][0]["resources"]["requests"] = {"cpu": cpu}
    return p


async def create(client: KubeClient, namespace: str, p: dict[str, Any]) -> None:
    p["spec"]["nodeSelector"] = {"hami-test": namespace}
    await client.create(api_path("v1", "pods", namespace=namespace), p)


async def by_name(client: KubeClient, namespace: str) -> dict[str, dict[str, Any]]:
    return {bodies.name(p): p for p in await list_pods(client, namespace)}


def allocated(p: dict[str, Any]) -> bool:
    return bodies.annotations(p).get(keys.BIND_PHASE) == keys.BIND_PHASE_SUCCESS


async def wait_bound(client: KubeClient, namespace: str, names: set[str]) -> dict[str, dict[str, Any]]:
    async def ok() -> dict[str, dict[str, Any]] | None:
        pods = await by_name(client, namespace)
        return pods if all(n in pods and allocated(pods[n]) for n in names) else None

    result: dict[str, dict[str, Any]] = await wait_for(ok, timeout=90, interval=0.5)
    return result


async def fill_two_cards(
    client: KubeClient, namespace: str, priorities: dict[int, str], node: str, *, cpu: str
) -> dict[str, dict[str, Any]]:
    """card 0: ``lo-1``, ``lo-2`` (LOW); card 1: ``mid-1``, ``mid-2`` (MID); 8000 MiB each, a grace
    period (without a kubelet an evicted pod stays terminating, holding its card). Waits until bound."""
    for name, prio, index in (("lo-1", LOW, 0), ("lo-2", LOW, 0), ("mid-1", MID, 1), ("mid-2", MID, 1)):
        card = f"GPU-{node}-{index}"
        await create(client, namespace, pod(name, priorities[prio], mem=8000, cpu=cpu, card=card, grace=300))
    return await wait_bound(client, namespace, {"lo-1", "lo-2", "mid-1", "mid-2"})


async def wait_terminating(client: KubeClient, namespace: str) -> set[str]:
    """The names of the pods that have a deletionTimestamp, once there are some."""

    async def terminating() -> set[str] | None:
        pods = await by_name(client, namespace)
        return {n for n, p in pods.items() if p["metadata"].get("deletionTimestamp")} or None

    found: set[str] = await wait_for(terminating, timeout=60, interval=0.25)
    return found


async def waits_then_binds(
    client: KubeClient, namespace: str, node: str, victims: set[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """While the victims terminate (holding their card) ``hi`` must not bind and no card is
    over-committed; then the victims finish as a kubelet would finish them and ``hi`` binds.
    Returns the pods seen while waiting and once ``hi`` is bound."""
    for _ in range(12):
        waiting = await by_name(client, namespace)
        assert not bodies.node_name(waiting["hi"]), "bound while its victims still hold the card"
        await assert_no_overcommit(client, namespace, [node])
        await asyncio.sleep(0.25)
    for name in sorted(victims):
        await client.delete(api_path("v1", "pods", namespace=namespace, name=name), grace_period_seconds=0)
    bound = await wait_bound(client, namespace, {"hi"})
    await assert_no_overcommit(client, namespace, [node])
    return waiting, bound


def record_preempt(stack: Stack) -> list[tuple[dict[str, list[str]], dict[str, list[str]]]]:
    """Every preempt call the extender answers: (kube-scheduler's victims, hami's answer), by uid."""
    assert stack.extender is not None
    service = stack.extender.service
    calls: list[tuple[dict[str, list[str]], dict[str, list[str]]]] = []
    real = service.preempt

    async def preempt(args: PreemptionArgs) -> dict[str, list[str]]:
        answer = await real(args)
        calls.append((args.victims, answer))
        return answer

    service.preempt = preempt  # type: ignore[method-assign]
    return calls


def uids(pods: dict[str, dict[str, Any]], *names: str) -> list[str]:
    return sorted(bodies.uid(pods[n]) for n in names)


def cards_of(p: dict[str, Any]) -> set[str]:
    value = bodies.annotations(p).get(keys.VGPU_DEVICES_ALLOCATED, "")
    return {d.uuid for c in decode_pod_devices(value) for d in c}


def t4_then_a100(node: str) -> list[DeviceInfo]:
    """Two 16000 MiB cards: index 0 a T4, index 1 an A100."""
    return [*gpu_cards(node, n=1, mem=16000, type="NVIDIA-Tesla-T4"), *gpu_cards(node, n=2, mem=16000)[1:]]


def preempting_stack(kube_config: KubeConfig, start_scheduler: Callable[..., SchedulerHandle]) -> Stack:
    """The stack with the extender's preempt verb registered."""
    stack = Stack(kube_config, start_scheduler)
    stack.preempt = True
    return stack


async def assert_nobody_evicted(client: KubeClient, namespace: str, placed: Iterable[str]) -> None:
    """The placed pods are all there, none terminating, and the preemptor `hi` is neither bound
    nor nominated."""
    pods = await by_name(client, namespace)
    assert set(pods) == {*placed, "hi"}
    assert not any(p["metadata"].get("deletionTimestamp") for p in pods.values())
    assert not bodies.node_name(pods["hi"]) and not pods["hi"]["status"].get("nominatedNodeName")


async def test_high_priority_pod_preempts_exactly_the_pods_on_one_card(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
    priorities: dict[int, str],
) -> None:
    node = await gpu_node(kube_client, namespace, gpu_cards(f"{namespace}-n0", n=2, mem=16000))
    card0 = f"GPU-{node}-0"
    stack = preempting_stack(kube_config, start_scheduler)
    try:
        async with stack:
            # card0: two LOW pods; card1: two MID pods; each 8000 MiB and 1 CPU: node and cards full
            before = await fill_two_cards(kube_client, namespace, priorities, node, cpu="1")
            calls = record_preempt(stack)
            # a whole card and 2 CPUs: kube-scheduler proposes the two LOW pods (it reprieves MID
            # first); hami agrees, their card is the one that frees 16000 MiB
            await create(kube_client, namespace, pod("hi", priorities[HIGH], mem=16000, cpu="2"))
            victims = await wait_terminating(kube_client, namespace)
            assert victims == {"lo-1", "lo-2"}
            lows = uids(before, "lo-1", "lo-2")
            assert [({node: sorted(v[node])}, {node: sorted(a[node])}) for v, a in calls[:1]] == [
                ({node: lows}, {node: lows})
            ]
            # the victims are terminating and still hold card0: the preemptor waits, nominated
            waiting, pods = await waits_then_binds(kube_client, namespace, node, victims)
            assert waiting["hi"]["status"].get("nominatedNodeName") == node
            assert cards_of(pods["hi"]) == {card0}
            assert set(pods) == {"hi", "mid-1", "mid-2"}
    finally:
        await kube_client.delete(api_path("v1", "nodes", name=node))


@pytest.mark.parametrize("case", ["memory", "card-type"])
async def test_no_preemption_when_the_victims_would_not_free_the_right_card(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
    priorities: dict[int, str],
    case: str,
) -> None:
    """kube-scheduler proposes the two LOW pods (CPU); hami refuses, so nothing is evicted.

    * ``memory``: one LOW pod on each card, a MID pod beside each: no card would be free;
    * ``card-type``: the LOW pods are on the T4, the preemptor asks for an A100.
    """
    n = f"{namespace}-n0"
    if case == "memory":
        cards = gpu_cards(n, n=2, mem=16000)
        placement = {"lo-1": 0, "lo-2": 1, "mid-1": 0, "mid-2": 1}
        extra: dict[str, str] = {}
    else:
        cards = t4_then_a100(n)
        placement = {"lo-1": 0, "lo-2": 0, "mid-1": 1, "mid-2": 1}
        extra = {keys.NVIDIA_USE_GPUTYPE: "A100"}
    node = await gpu_node(kube_client, namespace, cards)
    stack = preempting_stack(kube_config, start_scheduler)
    try:
        async with stack:
            for name, index in placement.items():
                prio = priorities[LOW if name.startswith("lo") else MID]
                await create(
                    kube_client,
                    namespace,
                    pod(name, prio, mem=8000, cpu="1", card=f"GPU-{n}-{index}", grace=300),
                )
            before = await wait_bound(kube_client, namespace, set(placement))
            calls = record_preempt(stack)
            await create(
                kube_client, namespace, pod("hi", priorities[HIGH], mem=16000, cpu="2", annotations=extra)
            )

            async def failed_once() -> bool:
                out = await kube_client.get(api_path("v1", "events", namespace=namespace))
                return any(
                    e.get("reason") == "FailedScheduling" and e["involvedObject"]["name"] == "hi"
                    for e in out.get("items") or []
                )

            await wait_for(failed_once, timeout=60)
            await asyncio.sleep(5)  # several scheduling attempts, each with a preemption try
            await assert_nobody_evicted(kube_client, namespace, placement)
            await assert_no_overcommit(kube_client, namespace, [node])
            # kube-scheduler asked (its CPU choice: the LOW pods) and hami answered: nowhere
            assert calls and all(v == {node: v[node]} and a == {} for v, a in calls)
            assert sorted(calls[0][0][node]) == uids(before, "lo-1", "lo-2")
    finally:
        await kube_client.delete(api_path("v1", "nodes", name=node))


# --- device-only shortage: kube-scheduler proposes nothing, hami's extender preempts ------------------


def preemptor_of(stack: Stack) -> DevicePreemptor:
    assert stack.extender is not None and stack.extender.preemptor is not None
    return stack.extender.preemptor


async def events_for(client: KubeClient, namespace: str, name: str) -> list[dict[str, Any]]:
    out = await client.get(api_path("v1", "events", namespace=namespace))
    return [e for e in out.get("items") or [] if e["involvedObject"]["name"] == name]


async def test_card_memory_shortage_preempts_exactly_the_lower_priority_pods_on_one_card(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
    priorities: dict[int, str],
) -> None:
    """CPU and pods are plentiful; both cards are full. kube-scheduler finds nothing to preempt (it
    cannot see card memory) and never calls the preempt verb; hami's extender evicts the two LOW
    pods on card 0 through the Eviction API, keeps card 0 while they terminate, and the pod binds."""
    node = await gpu_node(kube_client, namespace, gpu_cards(f"{namespace}-n0", n=2, mem=16000))
    card0 = f"GPU-{node}-0"
    # the preempt verb registered, as the chart does: kube-scheduler still proposes nothing
    stack = preempting_stack(kube_config, start_scheduler)
    try:
        async with stack:
            await fill_two_cards(kube_client, namespace, priorities, node, cpu="100m")
            calls = record_preempt(stack)
            await create(kube_client, namespace, pod("hi", priorities[HIGH], mem=16000, cpu="100m"))
            victims = await wait_terminating(kube_client, namespace)
            assert victims == {"lo-1", "lo-2"}
            assert calls == []  # kube-scheduler proposed no victim: the extender alone preempted
            pods = await by_name(kube_client, namespace)
            assert preemptor_of(stack).outcomes[bodies.uid(pods["hi"])] == "evicted"
            for name in ("lo-1", "lo-2"):
                assert any(e["reason"] == "Preempted" for e in await events_for(kube_client, namespace, name))
            assert any(e["reason"] == "Preempting" for e in await events_for(kube_client, namespace, "hi"))
            # the victims still hold card0 while they terminate: the preemptor waits, then binds
            waiting, pods = await waits_then_binds(kube_client, namespace, node, victims)
            assert {n for n, p in waiting.items() if p["metadata"].get("deletionTimestamp")} == victims
            assert cards_of(pods["hi"]) == {card0}
            assert set(pods) == {"hi", "mid-1", "mid-2"}
    finally:
        await kube_client.delete(api_path("v1", "nodes", name=node))


@pytest.mark.parametrize("case", ["memory", "card-type", "same-priority", "never", "pdb"])
async def test_card_shortage_evicts_nobody_when_it_would_not_help(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
    priorities: dict[int, str],
    case: str,
) -> None:
    """Only card memory is short and hami's extender looks for victims, but evicts nobody:

    * ``memory``: a MID pod asks a whole card; the LOW pods (the only lower ones) are one per card,
      beside MID pods: evicting them frees no whole card;
    * ``card-type``: the LOW pods are on the T4, the MID pod asks for an A100;
    * ``same-priority``: every pod is LOW, the preemptor too: equal priority never preempts;
    * ``never``: the LOW pods share card 0 (evicting them would free it), but the HIGH preemptor has
      ``preemptionPolicy: Never``;
    * ``pdb``: the same, HIGH may preempt, but a PodDisruptionBudget covers ``lo-1`` (Running): the
      Eviction API refuses it in the dry run, so ``lo-2`` is not evicted either.
    """
    n = f"{namespace}-n0"
    extra: dict[str, str] = {}
    lo, mid = priorities[LOW], priorities[MID]
    if case == "card-type":
        cards = t4_then_a100(n)
        placement = {"lo-1": (0, lo), "lo-2": (0, lo), "mid-1": (1, mid), "mid-2": (1, mid)}
        extra = {keys.NVIDIA_USE_GPUTYPE: "A100"}
    else:
        cards = gpu_cards(n, n=2, mem=16000)
        placement = {"lo-1": (0, lo), "lo-2": (1, lo), "mid-1": (0, mid), "mid-2": (1, mid)}
        if case == "same-priority":
            placement = {name: (index, lo) for name, (index, _) in placement.items()}
        if case in ("never", "pdb"):
            placement = {"lo-1": (0, lo), "lo-2": (0, lo), "mid-1": (1, mid), "mid-2": (1, mid)}
    preemptor = {"same-priority": lo, "pdb": priorities[HIGH]}.get(case, mid)
    if case == "pdb":
        await kube_client.create(
            api_path("policy/v1", "poddisruptionbudgets", namespace=namespace),
            {
                "metadata": {"name": "keep-lo-1"},
                "spec": {"minAvailable": 1, "selector": {"matchLabels": {"keep": "lo-1"}}},
            },
        )
    if case == "never":  # the API server sets spec.preemptionPolicy from the PriorityClass
        preemptor = f"{namespace}-never"
        await kube_client.create(
            api_path("scheduling.k8s.io/v1", "priorityclasses"),
            {"metadata": {"name": preemptor}, "value": HIGH, "preemptionPolicy": "Never"},
        )
    node = await gpu_node(kube_client, namespace, cards)
    stack = preempting_stack(kube_config, start_scheduler)
    try:
        async with stack:
            for name, (index, prio) in placement.items():
                p = pod(name, prio, mem=8000, cpu="100m", card=f"GPU-{n}-{index}", grace=300)
                p["metadata"]["labels"] = {"keep": name}
                await create(kube_client, namespace, p)
            await wait_bound(kube_client, namespace, set(placement))
            if case == "pdb":  # what a kubelet reports: the Eviction API ignores PDBs for Pending pods
                for name in placement:
                    await kube_client.merge_patch(
                        api_path("v1", "pods", namespace=namespace, name=name, subresource="status"),
                        {"status": {"phase": "Running"}},
                    )
            await create(
                kube_client, namespace, pod("hi", preemptor, mem=16000, cpu="100m", annotations=extra)
            )
            hi = bodies.uid((await by_name(kube_client, namespace))["hi"])

            async def tried() -> str | None:
                return preemptor_of(stack).outcomes.get(hi)

            expected = {"never": "never", "pdb": "refused"}.get(case, "no-victims")
            assert await wait_for(tried, timeout=60) == expected
            await assert_nobody_evicted(kube_client, namespace, placement)
            hi_events = {e["reason"] for e in await events_for(kube_client, namespace, "hi")}
            assert "Preempting" not in hi_events
            assert ("PreemptionFailed" in hi_events) is (case == "pdb")
            await assert_no_overcommit(kube_client, namespace, [node])
    finally:
        await kube_client.delete(api_path("v1", "nodes", name=node))
        if case == "never":
            await kube_client.delete(api_path("scheduling.k8s.io/v1", "priorityclasses", name=preemptor))
