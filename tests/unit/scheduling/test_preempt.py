"""Device-aware victim selection: kube-scheduler's proposed victims, kept only where they free the right card."""

from __future__ import annotations

from typing import Any

from schedkit import A100, T4, all_usage, container, gpu, gpu_pod, node, pod, scheduler

from hami.protocol import keys
from hami.scheduling import Scheduler
from hami.scheduling.preempt import node_victims, plan_preemption, priority_of, select_victims

MEM = "nvidia.com/gpumem"


def on(sched: Scheduler, name: str, uuid: str, *, ns: str = "default", **res: Any) -> str:
    """Place pod ``name`` on card ``uuid`` (through the real decision); returns its uid."""
    res.setdefault("gpu", 1)
    p = pod(name, container("main", **res), namespace=ns, annotations={keys.NVIDIA_USE_GPUUUID: uuid})
    d = sched.decide(p)
    assert d.node is not None, d.reason
    assert [pl.device.uuid for pl in d.placements[keys.VENDOR_NVIDIA][0]] == [uuid]
    return f"uid-{name}"


def one_node(*cards: Any) -> Scheduler:
    return scheduler(node("n1", cards or [gpu("GPU-a"), gpu("GPU-b", index=1)]))


def test_keeps_only_the_victims_on_the_card_that_frees_enough() -> None:
    sched = one_node()
    a1 = on(sched, "a1", "GPU-a", mem=8000)
    a2 = on(sched, "a2", "GPU-a", mem=8000)
    b1 = on(sched, "b1", "GPU-b", mem=10000)
    on(sched, "b2", "GPU-b", mem=1000)  # not a victim (kube-scheduler did not propose it)
    before = all_usage(sched.state)
    # 16000 MiB: a whole card; evicting a1 and a2 frees GPU-a, evicting b1 leaves b2 on GPU-b
    big = gpu_pod("big", mem=16000)
    got = select_victims(sched, big, {"n1": [a1, a2, b1]}, {})
    assert got == {"n1": [a1, a2]}
    assert all_usage(sched.state) == before  # the trial left the ledger as it was
    assert set(sched.state.pods) == {a1, a2, b1, "uid-b2"}


def test_lowest_priority_is_evicted_first_higher_ones_are_reprieved() -> None:
    sched = one_node(gpu("GPU-a"))
    lo = on(sched, "lo", "GPU-a", mem=6000)
    hi = on(sched, "hi", "GPU-a", mem=6000)
    # 4000 free; 8000 asked: one of the two must go, the lower priority one
    p = gpu_pod("p", mem=8000)
    assert node_victims(sched, p, "n1", [hi, lo], {lo: 10, hi: 100}) == [lo]
    assert node_victims(sched, p, "n1", [hi, lo], {lo: 100, hi: 10}) == [hi]


def test_minimal_count_drops_victims_not_needed() -> None:
    sched = one_node(gpu("GPU-a"))
    small = [on(sched, f"s{i}", "GPU-a", mem=1000) for i in range(4)]
    big = on(sched, "big", "GPU-a", mem=10000)
    # 2000 free; 11000 asked: the four small ones free only 4000, big alone frees enough
    p = gpu_pod("p", mem=11000)
    assert node_victims(sched, p, "n1", [*small, big], {}) == [big]
    # even when big has the higher priority: it is needed, so the small ones are reprieved
    prio = {**dict.fromkeys(small, 1), big: 100}
    assert node_victims(sched, p, "n1", [*small, big], prio) == [big]


def test_no_subset_works_the_node_is_left_out() -> None:
    sched = one_node()
    b1 = on(sched, "b1", "GPU-b", mem=10000)
    a1 = on(sched, "a1", "GPU-a", mem=12000)
    p = gpu_pod("p", mem=16000)
    # only b1 proposed: GPU-b would be free, the pod fits -> kept
    assert select_victims(sched, p, {"n1": [b1]}, {}) == {"n1": [b1]}
    # a card that does not exist anywhere: nothing helps
    assert select_victims(sched, gpu_pod("huge", gpu=3, mem=1000), {"n1": [a1, b1]}, {}) == {}


def test_victims_on_a_card_of_the_wrong_type_free_nothing() -> None:
    sched = one_node(gpu("GPU-t4", type=T4), gpu("GPU-a100", type=A100, index=1))
    t = on(sched, "t", "GPU-t4", mem=16000)
    a = on(sched, "a", "GPU-a100", mem=16000)
    wants_a100 = gpu_pod("p", mem=8000, annotations={keys.NVIDIA_USE_GPUTYPE: "A100"})
    assert select_victims(sched, wants_a100, {"n1": [t]}, {}) == {}
    assert select_victims(sched, wants_a100, {"n1": [t, a]}, {}) == {"n1": [a]}


def test_a_slot_freed_but_not_enough_memory() -> None:
    sched = one_node(gpu("GPU-a", count=2, mem=16000))
    x = on(sched, "x", "GPU-a", mem=1000)
    y = on(sched, "y", "GPU-a", mem=14000)
    # the card has 2 slots, both taken; evicting y frees 14000 MiB and a slot; evicting x frees a
    # slot but leaves 1000 MiB free... only y's eviction serves 8000 MiB
    p = gpu_pod("p", mem=8000)
    assert node_victims(sched, p, "n1", [x, y], {x: 0, y: 0}) == [y]
    assert node_victims(sched, p, "n1", [x], {}) is None


def test_a_slot_freed_on_a_card_without_memory() -> None:
    sched = one_node(gpu("GPU-a", count=1, mem=16000), gpu("GPU-b", count=2, index=1, mem=16000))
    a = on(sched, "a", "GPU-a", mem=15000)
    on(sched, "b", "GPU-b", mem=15000)
    c = on(sched, "c", "GPU-b", mem=100)
    # GPU-a has no free slot, GPU-b has one but 900 MiB; c gone leaves GPU-b 1000 MiB: a 2000 MiB
    # pod needs a gone (GPU-a's slot and memory)
    p = gpu_pod("p", mem=2000)
    assert node_victims(sched, p, "n1", [c], {}) is None
    assert node_victims(sched, p, "n1", [c, a], {c: 0, a: 5}) == [a]


def test_fits_already_the_proposal_is_returned_unchanged() -> None:
    sched = one_node()
    a = on(sched, "a", "GPU-a", mem=1000)
    assert select_victims(sched, gpu_pod("p", mem=1000), {"n1": [a, "not-a-gpu-pod"]}, {}) == {
        "n1": [a, "not-a-gpu-pod"]
    }


def test_victims_holding_no_device_are_kept() -> None:
    sched = one_node(gpu("GPU-a"))
    a = on(sched, "a", "GPU-a", mem=16000)
    got = node_victims(sched, gpu_pod("p", mem=4000), "n1", ["cpu-only", a], {})
    assert got == ["cpu-only", a]


def test_unknown_node_and_empty_proposal() -> None:
    sched = one_node()
    assert select_victims(sched, gpu_pod("p", mem=1000), {"gone": ["x"]}, {}) == {}
    full = on(sched, "f", "GPU-a", mem=16000)
    on(sched, "g", "GPU-b", mem=16000)
    assert select_victims(sched, gpu_pod("p", mem=1000), {"n1": []}, {}) == {}
    assert full in sched.state.pods


def test_quota_victims_in_other_namespaces_free_cards_but_no_quota() -> None:
    sched = one_node(gpu("GPU-a"))
    sched.state.set_quota("team-a", "gpu", {f"limits.{MEM}": "10000"})
    mine = on(sched, "mine", "GPU-a", ns="team-a", mem=6000)
    theirs = on(sched, "theirs", "GPU-a", ns="team-b", mem=10000)
    p = pod("p", container("main", gpu=1, mem=8000), namespace="team-a")
    # evicting theirs frees the card, but team-a would hold 6000 + 8000 > 10000
    assert node_victims(sched, p, "n1", [theirs], {}) is None
    # evicting mine too frees the quota: both are needed
    assert node_victims(sched, p, "n1", [mine, theirs], {}) == [mine, theirs]
    assert sched.state.quota.used["team-a"] == {MEM: 6000}  # the trial discharged nothing for good


def test_quota_same_namespace_victim_frees_quota() -> None:
    sched = one_node()
    sched.state.set_quota("team-a", "gpu", {f"limits.{MEM}": "10000"})
    mine = on(sched, "mine", "GPU-a", ns="team-a", mem=6000)
    p = pod("p", container("main", gpu=1, mem=8000), namespace="team-a")
    # cards have room (GPU-b is empty); the quota is what blocks, and only mine frees it
    assert node_victims(sched, p, "n1", [mine], {}) == [mine]


def test_the_preemptors_own_reservation_survives_the_trial() -> None:
    sched = one_node(gpu("GPU-a"))
    a = on(sched, "a", "GPU-a", mem=12000)
    p = gpu_pod("p", mem=4000)
    d = sched.decide(p)  # reserved on GPU-a
    assert d.node == "n1"
    node_victims(sched, gpu_pod("p", mem=4000), "n1", [a], {})
    assert "uid-p" in sched.state.pods and a in sched.state.pods


def test_multi_card_request_needs_two_freed_cards() -> None:
    sched = one_node(gpu("GPU-a"), gpu("GPU-b", index=1), gpu("GPU-c", index=2))
    a = on(sched, "a", "GPU-a", mem=16000)
    b = on(sched, "b", "GPU-b", mem=16000)
    c = on(sched, "c", "GPU-c", mem=16000)
    p = gpu_pod("p", gpu=2, mem=16000)
    assert node_victims(sched, p, "n1", [a], {}) is None
    assert node_victims(sched, p, "n1", [a, b, c], {a: 1, b: 2, c: 3}) == [a, b]


def test_memory_freed_but_not_slots() -> None:
    sched = one_node(gpu("GPU-a", count=2), gpu("GPU-b", count=2, index=1))
    a1 = on(sched, "a1", "GPU-a", mem=1000)
    a2 = on(sched, "a2", "GPU-a", mem=1000)
    b = on(sched, "b", "GPU-b", mem=16000)
    # two cards of 4000 MiB: evicting b frees GPU-b's memory, but GPU-a has no free slot
    p = gpu_pod("p", gpu=2, mem=4000)
    assert node_victims(sched, p, "n1", [b], {}) is None
    assert node_victims(sched, p, "n1", [b, a1, a2], {b: 1, a1: 2, a2: 3}) == [b, a1]


# --- plan_preemption: device-only preemption chooses the node and the victims itself -------------------


def two_nodes() -> Scheduler:
    return scheduler(node("n1", [gpu("GPU-a")]), node("n2", [gpu("GPU-b")]))


def test_plan_picks_the_node_whose_victims_have_the_lowest_priority_then_the_fewest() -> None:
    sched = two_nodes()
    a1 = on(sched, "a1", "GPU-a", mem=8000)
    a2 = on(sched, "a2", "GPU-a", mem=8000)
    b1 = on(sched, "b1", "GPU-b", mem=16000)
    before = all_usage(sched.state)
    p = gpu_pod("p", mem=16000)
    cands = {"n1": [a1, a2], "n2": [b1]}
    # n2's single victim has priority 20, n1's two have 10: the lowest highest-priority wins
    assert plan_preemption(sched, p, cands, {a1: 10, a2: 10, b1: 20}) == ("n1", [a1, a2])
    # equal priorities: the fewest victims
    assert plan_preemption(sched, p, cands, {a1: 10, a2: 10, b1: 10}) == ("n2", [b1])
    assert all_usage(sched.state) == before and "uid-p" not in sched.state.pods


def test_plan_is_none_when_the_pod_fits_already_or_nothing_helps() -> None:
    sched = two_nodes()
    a1 = on(sched, "a1", "GPU-a", mem=8000)
    # GPU-b is empty: no eviction needed
    assert plan_preemption(sched, gpu_pod("p", mem=16000), {"n1": [a1], "n2": []}, {}) is None
    b1 = on(sched, "b1", "GPU-b", mem=8000)
    # a card of a type no node has: evicting everyone would not help
    wrong = gpu_pod("w", mem=1000, annotations={keys.NVIDIA_USE_GPUTYPE: "H100"})
    assert plan_preemption(sched, wrong, {"n1": [a1], "n2": [b1]}, {}) is None
    # no candidates on the only node that has them / unknown nodes
    assert plan_preemption(sched, gpu_pod("p", mem=16000), {"n1": [], "nx": ["u"]}, {}) is None


def test_plan_never_crosses_quota() -> None:
    sched = two_nodes()
    sched.state.set_quota("team-a", "gpu", {f"limits.{MEM}": "8000"})
    mine = on(sched, "mine", "GPU-a", ns="team-a", mem=8000)
    theirs = on(sched, "theirs", "GPU-b", ns="team-b", mem=16000)
    p = pod("p", container("main", gpu=1, mem=8000), namespace="team-a")
    # team-a is at its limit: evicting team-b's pod frees GPU-b but no team-a quota
    assert plan_preemption(sched, p, {"n2": [theirs]}, {}) is None
    # its own pod frees both the quota and the card
    assert plan_preemption(sched, p, {"n1": [mine], "n2": [theirs]}, {}) == ("n1", [mine])


def test_priority_of() -> None:
    assert priority_of({"spec": {"priority": 7}}) == 7
    assert priority_of({"spec": {"priority": True}}) == 0
    assert priority_of({"spec": {}}) == 0 and priority_of(None) == 0
