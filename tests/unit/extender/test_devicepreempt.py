"""Device-only preemption's bookkeeping: when kube-scheduler has given up on a pod without preempting,
and the reservation of the freed card the moment the last victim leaves the ledger (so no other pod
takes it). The eviction itself runs against a real API server in tests/e2e/test_preemption_e2e.py."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from hami.devices.registry import default_registry
from hami.extender.devicepreempt import DevicePreemptor, Nomination, unschedulable_without_nomination
from hami.extender.reservations import Reservations
from hami.kube.client import KubeClient
from hami.protocol import keys
from hami.protocol.node import encode_node_devices
from hami.scheduling.decide import Scheduler
from hami.testing.gpucluster import gpu_cards, gpu_pod


def _pod(name: str, mem: int, **status: Any) -> dict[str, Any]:
    p = gpu_pod(name, mem=mem)
    p["metadata"].update(namespace="default", uid=f"uid-{name}")
    p["status"] = status
    return p


def _scheduler() -> Scheduler:
    sched = Scheduler(default_registry())
    cards = gpu_cards("n1", n=1, mem=16000)
    node = {
        "metadata": {"name": "n1", "annotations": {keys.NODE_NVIDIA_REGISTER: encode_node_devices(cards)}}
    }
    assert sched.observe_node(node) is None
    return sched


UNSCHEDULABLE = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}


def test_unschedulable_without_nomination() -> None:
    assert unschedulable_without_nomination({"status": {"conditions": [UNSCHEDULABLE]}})
    # kube-scheduler preempted (it nominated a node): hami stays out
    assert not unschedulable_without_nomination(
        {"status": {"conditions": [UNSCHEDULABLE], "nominatedNodeName": "n1"}}
    )
    # no cycle finished yet, or another reason (e.g. SchedulingGated)
    assert not unschedulable_without_nomination({"status": {}})
    assert not unschedulable_without_nomination({})
    gated = {**UNSCHEDULABLE, "reason": "SchedulingGated"}
    assert not unschedulable_without_nomination({"status": {"conditions": [gated]}})


async def test_the_freed_card_is_reserved_for_the_preemptor_when_the_last_victim_is_gone() -> None:
    sched = _scheduler()
    pods = {name: _pod(name, 8000) for name in ("lo-1", "lo-2")}
    for p in pods.values():
        assert sched.decide(p).node == "n1"
    hi = _pod("hi", 16000, conditions=[UNSCHEDULABLE])
    pods["hi"] = hi
    reservations: Reservations[asyncio.Task[None]] = Reservations()
    preemptor = DevicePreemptor(
        scheduler=sched,
        reservations=reservations,
        client=cast(KubeClient, None),  # settling makes no API call
        pod_lookup=lambda ns, name: pods.get(name),
    )
    preemptor.nominations["uid-hi"] = Nomination("default", "hi", "n1", ("uid-lo-1", "uid-lo-2"), at=0.0)

    sched.state.remove_pod("uid-lo-1")
    preemptor.pod_forgotten("uid-lo-1")
    assert "uid-hi" not in sched.state.pods  # lo-2 still holds the card
    sched.state.remove_pod("uid-lo-2")
    preemptor.pod_forgotten("uid-lo-2")
    assert sched.state.pods["uid-hi"].node == "n1" and reservations.is_assumed("uid-hi")
    # nobody else gets the card in the meantime; the preemptor itself does
    assert sched.decide(_pod("other", 8000)).node is None
    assert sched.decide(hi).node == "n1"
    # the preemptor bound: its nomination ends
    preemptor.pod_event({**hi, "spec": {**hi["spec"], "nodeName": "n1"}})
    assert preemptor.nominations == {}


async def test_no_reservation_when_the_preemptor_no_longer_fits() -> None:
    sched = _scheduler()
    pods = {"lo": _pod("lo", 8000), "hi": _pod("hi", 16000), "late": _pod("late", 1000)}
    assert sched.decide(pods["lo"]).node == "n1"
    reservations: Reservations[asyncio.Task[None]] = Reservations()
    preemptor = DevicePreemptor(
        scheduler=sched,
        reservations=reservations,
        client=cast(KubeClient, None),
        pod_lookup=lambda ns, n: pods.get(n),
    )
    preemptor.nominations["uid-hi"] = Nomination("default", "hi", "n1", ("uid-lo",), at=0.0)
    assert sched.decide(pods["late"]).node == "n1"  # took part of the card meanwhile
    sched.state.remove_pod("uid-lo")
    preemptor.pod_forgotten("uid-lo")
    assert "uid-hi" not in sched.state.pods and not reservations.is_assumed("uid-hi")
    assert preemptor.nominations == {}  # over: the pod may be tried again


async def test_a_try_held_back_or_without_victims_is_retried_by_a_timer() -> None:
    """kube-scheduler may not call the filter again for minutes: a try that the overall rate bound
    holds back, or that finds no victims yet, is made again by a timer, with no new event."""
    sched = _scheduler()
    # lo is of lower priority (a candidate), but even without it hi would not fit the card
    lo, hi = _pod("lo", 16000), _pod("hi", 32000, conditions=[UNSCHEDULABLE])
    lo["spec"]["priority"], hi["spec"]["priority"] = 0, 100
    pods = {"lo": lo, "hi": hi}
    assert sched.decide(lo).node == "n1"
    now = [100.0]
    preemptor = DevicePreemptor(
        scheduler=sched,
        reservations=Reservations(),
        client=cast(KubeClient, None),
        pod_lookup=lambda ns, n: pods.get(n),
        clock=lambda: now[0],
        retry_s=0.05,
        interval_s=0.05,
    )
    tries: list[str] = []
    preemptor.on_outcome = lambda result, _n: tries.append(result)
    preemptor._next_slot = now[0] + 0.05  # another pod was just planned: this one is held back
    preemptor.filter_failed(hi, ["n1"])
    assert tries == [] and preemptor.nominations == {}
    now[0] += 1.0
    await asyncio.sleep(0.2)
    # the timer fired in the booked slot: evicting lo would not make room (outcome recorded), and
    # the next try is armed
    assert tries and tries[0] == "no-victims"
    assert "uid-hi" in preemptor._timers
    preemptor.pod_event({**hi, "spec": {**hi["spec"], "nodeName": "n1"}})  # bound elsewhere
    assert preemptor._timers == {}
    await preemptor.stop()
